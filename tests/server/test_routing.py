"""How the shell carries out effects, with a scripted engine: keys, dialects, dumps."""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence

import pytest
import trio

from pfkeyd.effects import ClientId, Dump, DumpRender, Effect, Error, Instant, Send
from pfkeyd.errors import EncodeError
from pfkeyd.wire import Alg, AuthAlg, Dialect, ExtType, Message, MsgType, Sa, SaType, Supported, encode
from pfkeyd.wire.framing import promisc_wrap
from tests.server.peers import WALL, FakeEngine, add_msg, addr, has_keys, raw_has_key, start_daemon

LINUX, FREEBSD = Dialect.LINUX, Dialect.FREEBSD
KEYED = add_msg(0x1234).replace(seq=1)


async def test_keys_reach_only_the_requester_in_its_reply(nursery: trio.Nursery, sockdir: str) -> None:
    engine = FakeEngine()
    d = await start_daemon(nursery, sockdir, engine)
    a, b, c, p = (await d.connect(LINUX), await d.connect(FREEBSD), await d.connect(LINUX), await d.connect(FREEBSD))
    ids = sorted(engine.clients)

    def handle(client: ClientId, msg: Message) -> list[Effect]:
        # An engine that forgot to strip keys everywhere: the shell must not forward them.
        others = tuple(i for i in ids if i != client)
        return [
            Send((client,), KEYED, reply=True),
            Send(others[:1], KEYED),
            Send(others[1:2], KEYED, reply=True),
            Send(others[2:], KEYED, promisc=True),
        ]

    engine.on_handle = handle
    await a.send(Message(MsgType.GET, SaType.ESP))
    mine = await a.recv()
    assert has_keys(mine)
    for peer in (b, c, p):
        raw = await peer.recv_raw()
        assert not raw_has_key(raw)
    assert await a.quiet() and await b.quiet() and await c.quiet() and await p.quiet()


async def test_each_dialect_gets_its_own_encoding_and_promisc_wrapping(nursery: trio.Nursery, sockdir: str) -> None:
    engine = FakeEngine()
    d = await start_daemon(nursery, sockdir, engine)
    peers = [await d.connect(LINUX), await d.connect(FREEBSD)]
    everyone = tuple(engine.clients)
    msg = Message(
        MsgType.ADD,
        SaType.ESP,
        3,
        9,
        exts=(Sa(0x4000), addr(ExtType.ADDRESS_SRC, "fe80::1"), addr(ExtType.ADDRESS_DST, "fe80::2")),
    )
    engine.on_handle = lambda client, m: [Send(everyone, msg, promisc=True)]
    await peers[0].send(Message(MsgType.FLUSH))
    assert await peers[0].recv_raw() == encode(msg, LINUX)
    assert await peers[1].recv_raw() == promisc_wrap(encode(msg, FREEBSD))


async def test_an_unencodable_reply_becomes_an_einval_error_reply(nursery: trio.Nursery, sockdir: str) -> None:
    engine = FakeEngine()
    d = await start_daemon(nursery, sockdir, engine)
    bsd, lin = await d.connect(FREEBSD), await d.connect(LINUX)
    everyone = tuple(engine.clients)
    migrate = Message(MsgType.X_MIGRATE, SaType.ESP, 1, 1)  # Linux only
    engine.on_handle = lambda client, m: [Send((client,), migrate, reply=True), Send(everyone, migrate)]
    request = encode(Message(MsgType.FLUSH, 0, 5, 6), FREEBSD)
    await bsd.send_raw(request)
    reply = await bsd.recv_raw()
    assert reply == request[:2] + bytes([errno.EINVAL]) + request[3:]
    assert (await lin.recv()).type == MsgType.X_MIGRATE
    assert await bsd.quiet()
    assert engine.stats.drops["unencodable"] == 2  # the reply and the broadcast copy to bsd


async def test_error_effect_answers_in_the_clients_dialect(nursery: trio.Nursery, sockdir: str) -> None:
    engine = FakeEngine(lambda client, m: [Error(client, errno.EEXIST)])
    d = await start_daemon(nursery, sockdir, engine)
    bsd, lin = await d.connect(FREEBSD), await d.connect(LINUX)
    request = add_msg(0x999).replace(pid=1, seq=2)
    raw = encode(request, FREEBSD)
    await bsd.send_raw(raw)
    assert await bsd.recv_raw() == raw[:2] + bytes([errno.EEXIST]) + raw[3:]  # the whole request, keys too
    raw = encode(request, LINUX)
    await lin.send_raw(raw)
    reply = await lin.recv_raw()
    assert len(reply) == 16 and reply[2] == errno.EEXIST and reply[8:16] == raw[8:16]


class Table(Sequence[int]):
    """A snapshot whose items cost nothing until asked for (the shell must not copy it).

    Only integer indexing is offered: the shell must take items one at a time.
    """

    def __init__(self, n: int, bad: frozenset[int] = frozenset()) -> None:
        self.n = n
        self.bad = bad
        self.touched = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:  # type: ignore[override]  # a fake: integer indices only
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.touched += 1
        return i


def make_render(bad: frozenset[int] = frozenset()) -> DumpRender:
    templates = {
        dialect: encode(
            Message(
                MsgType.DUMP,
                SaType.ESP,
                exts=(Sa(0x100), addr(ExtType.ADDRESS_SRC, "10.1.0.1"), addr(ExtType.ADDRESS_DST, "10.1.0.2")),
            ),
            dialect,
        )
        for dialect in Dialect
    }

    def render(item: int, dialect: Dialect, seq: int, pid: int) -> bytes:
        if item in bad:
            raise EncodeError("not in this dialect")
        buf = bytearray(templates[dialect])
        struct.pack_into("=II", buf, 8, seq, pid)
        struct.pack_into("!I", buf, 20, 0x100 + item)  # sadb_sa_spi
        return bytes(buf)

    return render


def dump_engine(table: Sequence[int], render: DumpRender) -> FakeEngine:
    def handle(client: ClientId, msg: Message) -> list[Effect]:
        if msg.type == MsgType.DUMP:
            return [Dump(client, table, render, msg.pid)]
        return [Send((client,), msg, reply=True)]

    return FakeEngine(handle)


@pytest.mark.parametrize("bad", [frozenset({3, 9}), frozenset({8, 9}), frozenset({0, 1, 2})])
async def test_dump_skips_entries_the_dialect_cannot_carry_and_still_ends_at_seq_0(
    nursery: trio.Nursery, sockdir: str, bad: frozenset[int]
) -> None:
    engine = dump_engine(Table(10), make_render(bad))
    d = await start_daemon(nursery, sockdir, engine)
    peer = await d.connect(FREEBSD, pid=7)
    await peer.send(Message(MsgType.DUMP))
    got = [await peer.recv() for _ in range(10 - len(bad))]
    assert await peer.quiet()
    spis = [m.sa.spi - 0x100 for m in got if m.sa is not None]
    assert spis == [i for i in range(10) if i not in bad]
    seqs = [m.seq for m in got]
    assert seqs[-1] == 0 and seqs.count(0) == 1
    assert seqs[:-1] == [9 - i for i in spis[:-1]]
    assert {m.pid for m in got} == {7}
    assert engine.stats.drops["dump_unencodable"] == len(bad)


async def test_a_dump_with_nothing_the_client_can_read_is_answered_enoent(nursery: trio.Nursery, sockdir: str) -> None:
    engine = dump_engine(Table(3), make_render(frozenset({0, 1, 2})))
    d = await start_daemon(nursery, sockdir, engine)
    peer = await d.connect(LINUX)
    reply = await peer.request(Message(MsgType.DUMP, 0, 11))
    assert (reply.type, reply.errno, reply.seq) == (MsgType.DUMP, errno.ENOENT, 11)
    assert await peer.quiet()


async def test_the_timer_ticks_at_the_engines_deadline_with_the_injected_wall_clock(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    engine = FakeEngine()
    d = await start_daemon(nursery, sockdir, engine)
    peer = await d.connect(LINUX)
    everyone = tuple(engine.clients)
    expire = Message(MsgType.EXPIRE, SaType.ESP, 0, 0)

    def tick(now: Instant) -> list[Effect]:
        engine.deadline = None
        return [Send(everyone, expire)]

    engine.on_tick = tick
    start = trio.current_time()
    engine.deadline = start + 42
    engine.on_handle = lambda client, m: [Send((client,), m, reply=True)]
    await peer.request(Message(MsgType.FLUSH))  # handle() may move the deadline: the timer re-reads it
    assert (await peer.recv()).type == MsgType.EXPIRE
    assert trio.current_time() == pytest.approx(start + 42)
    assert len(engine.ticks) == 1
    assert engine.ticks[0].mono == pytest.approx(start + 42)
    assert engine.ticks[0].wall == WALL
    assert engine.handled[0][2].wall == WALL


async def test_an_error_effect_outside_a_request_is_a_loud_bug(
    sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    engine = FakeEngine()
    engine.deadline = trio.current_time() + 1
    engine.on_tick = lambda now: [Error(1, errno.EINVAL)]
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await start_daemon(nursery, sockdir, engine)
            await trio.sleep_forever()
    assert info.group_contains(RuntimeError)


async def test_a_message_larger_than_the_socket_buffer_is_dropped_not_the_client(
    nursery: trio.Nursery, sockdir: str
) -> None:
    huge = Supported(ExtType.SUPPORTED_AUTH, tuple(Alg(AuthAlg.X_SHA2_256) for _ in range(40_000)))  # 320 KB

    def handle(client: ClientId, msg: Message) -> list[Effect]:
        if msg.seq == 1:
            return [Send((client,), msg.replace(exts=(huge,)), reply=True)]
        return [Send((client,), msg, reply=True)]

    engine = FakeEngine(handle)
    d = await start_daemon(nursery, sockdir, engine)
    peer = await d.connect(LINUX)
    await peer.send(Message(MsgType.FLUSH, 0, 1))
    assert (await peer.request(Message(MsgType.FLUSH, 0, 2))).seq == 2
    assert engine.stats.drops["message_too_large"] == 1
