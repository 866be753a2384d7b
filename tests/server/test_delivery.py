"""Who receives what: the real key engine behind real sockets, in both dialects."""

from __future__ import annotations

import errno
import struct

import pytest
import trio

from pfkeyd.wire import HEADER, Dialect, ExtType, Message, MsgType, SaType, decode
from tests.server.peers import (
    Daemon,
    add_msg,
    addr,
    has_keys,
    raw_has_key,
    sa_msg,
)

LINUX, FREEBSD = Dialect.LINUX, Dialect.FREEBSD
BOTH = pytest.mark.parametrize(("mine", "other"), [(LINUX, FREEBSD), (FREEBSD, LINUX)])


def getspi_msg(seq: int) -> Message:
    return Message(
        MsgType.GETSPI,
        SaType.ESP,
        seq,
        0,
        exts=(addr(ExtType.ADDRESS_SRC, "10.0.0.1"), addr(ExtType.ADDRESS_DST, "10.0.0.2")),
    )


@BOTH
async def test_getspi_reply_goes_to_the_requester_only(daemon: Daemon, mine: Dialect, other: Dialect) -> None:
    a, b = await daemon.connect(mine), await daemon.connect(other, pid=77)
    reply = await a.request(getspi_msg(7))
    assert (reply.type, reply.seq, reply.pid, reply.errno) == (MsgType.GETSPI, 7, a.pid, 0)
    assert reply.sa is not None and reply.sa.spi >= 0x100
    assert await a.quiet()
    assert await b.quiet()


@BOTH
async def test_add_answers_the_requester_and_tells_every_other_socket_without_keys(
    daemon: Daemon, mine: Dialect, other: Dialect
) -> None:
    a, b, c = await daemon.connect(mine), await daemon.connect(other), await daemon.connect(mine)
    await a.send(add_msg(0x1000, seq=5))
    for peer in (a, b, c):
        raw = await peer.recv_raw()
        msg = decode(raw, peer.dialect, request=False)
        assert (msg.type, msg.seq, msg.pid, msg.errno) == (MsgType.ADD, 5, a.pid, 0)
        assert msg.sa is not None and msg.sa.spi == 0x1000
        assert not raw_has_key(raw)
    for peer in (a, b, c):
        assert await peer.quiet()


async def test_get_reply_carries_keys_to_the_requester_alone(daemon: Daemon) -> None:
    a, b = await daemon.connect(LINUX), await daemon.connect(FREEBSD)
    await a.request(add_msg(0x1001))
    await b.recv()  # the ADD broadcast
    raw = await a.request_raw(sa_msg(MsgType.GET, 0x1001))
    assert raw_has_key(raw)
    assert has_keys(decode(raw, LINUX, request=False))
    assert await b.quiet()


async def test_errors_go_to_the_requester_only(daemon: Daemon) -> None:
    a, b = await daemon.connect(FREEBSD), await daemon.connect(LINUX)
    reply = await a.request(sa_msg(MsgType.GET, 0x4242))
    assert reply.errno == errno.ESRCH
    assert await b.quiet()


async def test_register_reply_reaches_the_registered_sockets_and_the_requester(daemon: Daemon) -> None:
    registered = await daemon.connect(LINUX)
    idle = await daemon.connect(FREEBSD)
    first = await registered.request(Message(MsgType.REGISTER, SaType.AH))
    assert first.type == MsgType.REGISTER and first.errno == 0
    assert await idle.quiet()

    newcomer = await daemon.connect(FREEBSD, pid=99)
    reply = await newcomer.request(Message(MsgType.REGISTER, SaType.ESP))
    assert (reply.type, reply.satype, reply.pid) == (MsgType.REGISTER, SaType.ESP, 99)
    assert reply.supported_encrypt is not None
    copy = await registered.recv()
    assert (copy.type, copy.satype, copy.pid) == (MsgType.REGISTER, SaType.ESP, 99)
    assert await idle.quiet()
    assert await registered.quiet()


async def test_expire_messages_reach_registered_sockets_when_their_time_comes(
    daemon: Daemon, autojump_clock: trio.testing.MockClock
) -> None:
    manager, other = await daemon.connect(FREEBSD), await daemon.connect(LINUX)
    await manager.request(Message(MsgType.REGISTER, SaType.ESP))
    start = trio.current_time()
    await other.request(add_msg(0x2000, soft=3, hard=5))
    assert (await manager.recv()).type == MsgType.ADD  # the broadcast of the ADD

    soft = await manager.recv()
    assert soft.type == MsgType.EXPIRE and soft.lifetime_soft is not None
    assert trio.current_time() - start == pytest.approx(3)
    hard = await manager.recv()
    assert hard.type == MsgType.EXPIRE and hard.lifetime_hard is not None
    assert trio.current_time() - start == pytest.approx(5)
    assert not has_keys(soft) and not has_keys(hard)
    assert await other.quiet()


async def test_a_request_that_brings_a_deadline_forward_wakes_the_timer(
    daemon: Daemon, autojump_clock: trio.testing.MockClock
) -> None:
    manager = await daemon.connect(LINUX)
    await manager.request(Message(MsgType.REGISTER, SaType.ESP))
    await manager.request(add_msg(0x3000, soft=900, hard=1000))
    start = trio.current_time()
    await manager.request(add_msg(0x3001, soft=4, hard=8))
    soft = await manager.recv()
    assert soft.type == MsgType.EXPIRE and soft.sa is not None and soft.sa.spi == 0x3001
    assert trio.current_time() - start == pytest.approx(4)


@pytest.mark.parametrize("dialect", [LINUX, FREEBSD])
async def test_promiscuous_copies_are_wrapped_for_freebsd_and_bare_for_linux(daemon: Daemon, dialect: Dialect) -> None:
    watcher = await daemon.connect(dialect, pid=55)
    actor = await daemon.connect(LINUX)
    await watcher.send(Message(MsgType.X_PROMISC, 1))
    while not await watcher.quiet():
        await watcher.recv_raw()
    while not await actor.quiet():
        await actor.recv_raw()

    await actor.request(add_msg(0x5000, seq=9))
    got = []
    while not await watcher.quiet():
        got.append(await watcher.recv_raw())
    assert not any(raw_has_key(raw) for raw in got)
    if dialect is FREEBSD:
        wrapped = [raw for raw in got if raw[1] == MsgType.X_PROMISC]
        assert len(wrapped) == 1
        raw = wrapped[0]
        version, mtype, err, satype, units, reserved, seq, pid = HEADER.unpack_from(raw)
        assert (version, mtype, err, satype, reserved, seq, pid) == (2, MsgType.X_PROMISC, 0, 0, 0, 0, 0)
        assert units * 8 == len(raw)
        inner = decode(raw[16:], FREEBSD, request=False)
        assert (inner.type, inner.seq, inner.pid) == (MsgType.ADD, 9, actor.pid)
        bare = [raw for raw in got if raw[1] == MsgType.ADD]
        assert len(bare) == 1  # the ordinary broadcast to ALL
    else:
        assert all(raw[1] == MsgType.ADD for raw in got)
        assert len(got) == 2  # the broadcast to ALL and the promiscuous copy
        assert {decode(raw, LINUX, request=False).seq for raw in got} == {9}


@pytest.mark.parametrize("dialect", [LINUX, FREEBSD])
async def test_keys_in_a_reply_never_reach_a_promiscuous_socket(daemon: Daemon, dialect: Dialect) -> None:
    watcher = await daemon.connect(dialect, pid=55)
    actor = await daemon.connect(FREEBSD)
    await actor.request(add_msg(0x5100))
    await watcher.send(Message(MsgType.X_PROMISC, 1))
    while not await watcher.quiet():
        await watcher.recv_raw()
    while not await actor.quiet():
        await actor.recv_raw()

    raw = await actor.request_raw(sa_msg(MsgType.GET, 0x5100))
    assert raw_has_key(raw)
    copies = []
    while not await watcher.quiet():
        copies.append(await watcher.recv_raw())
    assert copies, "a promiscuous socket sees the GET reply"
    assert not any(raw_has_key(c) for c in copies)


async def test_requests_are_answered_in_the_order_they_were_sent(daemon: Daemon) -> None:
    peer = await daemon.connect(LINUX)
    for seq in range(1, 201):
        await peer.send(getspi_msg(seq))
    seqs = [(await peer.recv()).seq for _ in range(200)]
    assert seqs == list(range(1, 201))


@pytest.mark.parametrize("dialect", [LINUX, FREEBSD])
async def test_dump_streams_every_sa_counting_down_to_zero(daemon: Daemon, dialect: Dialect) -> None:
    loader = await daemon.connect(LINUX)
    spis = list(range(0x10000, 0x10000 + 300))
    for spi in spis:
        await loader.send(add_msg(spi))
    for _ in spis:
        await loader.recv()
    peer = await daemon.connect(dialect, pid=31337)
    await peer.send(Message(MsgType.DUMP, SaType.ESP))
    entries = [await peer.recv() for _ in spis]
    assert [m.seq for m in entries] == list(range(len(spis) - 1, -1, -1))
    assert {m.type for m in entries} == {MsgType.DUMP}
    assert {m.pid for m in entries} == {31337}
    assert sorted(m.sa.spi for m in entries if m.sa is not None) == spis
    assert await peer.quiet()


@pytest.mark.parametrize("dialect", [LINUX, FREEBSD])
async def test_dump_of_an_empty_table_is_one_enoent_reply(daemon: Daemon, dialect: Dialect) -> None:
    peer = await daemon.connect(dialect)
    raw = await peer.request_raw(Message(MsgType.DUMP, 0, 3))
    assert raw[2] == errno.ENOENT
    assert struct.unpack_from("=I", raw, 8)[0] == 3  # the request's seq, echoed
    assert len(raw) == 16
    assert await peer.quiet()


async def test_a_closed_socket_loses_its_registration(daemon: Daemon) -> None:
    peer = await daemon.connect(LINUX)
    await peer.request(Message(MsgType.REGISTER, SaType.ESP))
    assert daemon.engine.registered_clients()
    peer.close()
    await trio.testing.wait_all_tasks_blocked()
    assert not daemon.engine.registered_clients()
    assert daemon.server.statistics().clients == 0


@pytest.mark.parametrize("dialect", [LINUX, FREEBSD])
async def test_a_run_of_adds_served_hot_reaches_every_socket_as_the_generic_path_would(
    daemon: Daemon, dialect: Dialect
) -> None:
    """After two ADDs of one shape the engine answers the rest from their bytes
    (pfkeyd.engine.hotpath): the requester and the other socket of its dialect still get
    the keyless reply, with the request's seq, pid and SPI, and GET finds each SA
    complete with its keys."""
    a, b = await daemon.connect(dialect), await daemon.connect(dialect)
    for i in range(20):
        await a.send(add_msg(0x3000 + i, dst=f"10.1.0.{i}", seq=100 + i))
        for peer in (a, b):
            raw = await peer.recv_raw()
            assert not raw_has_key(raw)
            msg = decode(raw, dialect, request=False)
            assert (msg.type, msg.seq, msg.pid, msg.errno) == (MsgType.ADD, 100 + i, a.pid, 0)
            assert msg.sa is not None and msg.sa.spi == 0x3000 + i
    assert daemon.engine.hot.served == 18
    for i in (0, 2, 19):
        got = await a.request(sa_msg(MsgType.GET, 0x3000 + i, dst=f"10.1.0.{i}"))
        assert got.errno == 0 and has_keys(got)
    assert await b.quiet()
