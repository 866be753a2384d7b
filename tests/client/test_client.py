"""pfkeyd.client against a running daemon, in both dialects."""

from __future__ import annotations

import errno
import inspect
import os
import random
import struct
from collections.abc import Sequence

import pytest
import trio
import trio.testing

import pfkeyd.client
from pfkeyd.client import Connection, PfkeyReplyError
from pfkeyd.effects import ClientId, Dump, Effect, Instant, Send
from pfkeyd.wire import (
    AuthAlg,
    Dialect,
    EncAlg,
    ExtType,
    Lifetime,
    Message,
    MsgType,
    Policy,
    SaState,
    SaType,
    encode,
)
from pfkeyd.wire.framing import promisc_unwrap
from tests.server.peers import Daemon, FakeEngine, add_msg, addr, has_keys, start_daemon

LINUX, FREEBSD = Dialect.LINUX, Dialect.FREEBSD
DIALECTS = pytest.mark.parametrize("dialect", [LINUX, FREEBSD])
ENC = (EncAlg.X_AESCBC, bytes(range(16)))
AUTH = (AuthAlg.X_SHA2_256, bytes(range(32)))

PUBLIC_METHODS = {
    "request",
    "send",
    "request_many",
    "request_many_raw",
    "dump",
    "spddump",
    "events",
    "aclose",
    "register",
    "getspi",
    "add",
    "update",
    "delete",
    "get",
    "flush",
    "spdflush",
    "promisc",
    "spdadd",
    "spdget",
    "spddelete2",
}


def test_the_public_api_is_pinned() -> None:
    assert pfkeyd.client.__all__ == [
        "open",
        "control",
        "socket_dialect",
        "Connection",
        "PfkeyReplyError",
        "ReplyTimeout",
        "RawReply",
        "AddressLike",
    ]
    methods = {name for name, _ in inspect.getmembers(Connection, inspect.isfunction) if not name.startswith("_")}
    assert methods == PUBLIC_METHODS
    assert list(inspect.signature(pfkeyd.client.open).parameters) == [
        "path",
        "dialect",
        "pid",
        "event_buffer",
        "reply_timeout",
    ]
    assert list(inspect.signature(pfkeyd.client.socket_dialect).parameters) == ["path", "timeout"]
    assert list(inspect.signature(pfkeyd.client.control).parameters) == ["argv", "path", "timeout"]
    assert list(inspect.signature(Connection.request).parameters) == ["self", "msg", "assign_seq"]
    assert list(inspect.signature(Connection.request_many).parameters) == ["self", "msgs", "window"]
    assert list(inspect.signature(Connection.request_many_raw).parameters) == ["self", "msgs", "window"]
    raw_fields = {name for name, _ in inspect.getmembers(pfkeyd.client.RawReply) if not name.startswith("_")}
    assert raw_fields == {"data", "dialect", "type", "satype", "errno", "seq", "pid", "message"}
    assert list(inspect.signature(Connection.dump).parameters) == ["self", "satype"]
    for name in sorted(PUBLIC_METHODS | raw_fields | {"RawReply", "ReplyTimeout", "socket_dialect", "reply_timeout"}):
        assert name in (pfkeyd.client.__doc__ or ""), f"{name} is not documented in the module docstring"


@DIALECTS
async def test_an_sa_lifecycle_through_the_helpers(daemon: Daemon, dialect: Dialect) -> None:
    async with pfkeyd.client.open(daemon.paths[dialect], dialect) as conn:
        registered = await conn.register(SaType.ESP)
        assert registered.supported_encrypt is not None and registered.pid == os.getpid()
        larval = await conn.getspi(SaType.ESP, "10.0.0.2", "10.0.0.1")
        assert larval.sa is not None
        spi = larval.sa.spi
        updated = await conn.update(SaType.ESP, "10.0.0.2", "10.0.0.1", spi, enc=ENC, auth=AUTH)
        assert updated.type == MsgType.UPDATE and not has_keys(updated)
        await conn.add(
            SaType.ESP,
            "10.0.0.1",
            "10.0.0.2",
            0x1000,
            enc=ENC,
            auth=AUTH,
            hard=Lifetime(ExtType.LIFETIME_HARD, addtime=600),
            soft=Lifetime(ExtType.LIFETIME_SOFT, addtime=500),
        )
        got = await conn.get(SaType.ESP, "10.0.0.2", "10.0.0.1", spi)
        assert got.sa is not None and got.sa.state == SaState.MATURE
        assert got.key_encrypt is not None and got.key_encrypt.data == ENC[1]
        assert sorted(m.sa.spi for m in [m async for m in conn.dump(SaType.ESP)] if m.sa) == sorted([spi, 0x1000])
        await conn.delete(SaType.ESP, "10.0.0.2", "10.0.0.1", spi)
        with pytest.raises(PfkeyReplyError) as info:
            await conn.get(SaType.ESP, "10.0.0.2", "10.0.0.1", spi)
        assert info.value.errno == errno.ESRCH
        assert info.value.reply.type == MsgType.GET
        flushed = await conn.flush()
        assert flushed.type == MsgType.FLUSH
        assert [m async for m in conn.dump()] == []  # ENOENT: an empty table


async def test_request_fills_in_a_fresh_seq_and_the_pid(daemon: Daemon) -> None:
    async with pfkeyd.client.open(daemon.paths[LINUX], LINUX, pid=777) as conn:
        first = await conn.request(Message(MsgType.FLUSH))
        second = await conn.request(Message(MsgType.FLUSH))
        assert first.pid == second.pid == 777
        assert first.seq != 0 and second.seq != 0 and first.seq != second.seq
        kept = await conn.request(Message(MsgType.FLUSH, 0, 0, 5), assign_seq=False)
        assert (kept.seq, kept.pid) == (0, 5)
        explicit = await conn.request(Message(MsgType.FLUSH, 0, 1234))
        assert explicit.seq == 1234


async def test_path_defaults_to_pfkey_socket(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFKEY_SOCKET", daemon.paths[FREEBSD])
    async with pfkeyd.client.open(dialect="freebsd") as conn:
        assert conn.path == daemon.paths[FREEBSD]
        assert (await conn.flush()).errno == 0


async def test_broadcasts_for_others_become_events_not_replies(daemon: Daemon) -> None:
    async with (
        pfkeyd.client.open(daemon.paths[LINUX], LINUX, pid=1) as me,
        pfkeyd.client.open(daemon.paths[FREEBSD], FREEBSD, pid=2) as other,
    ):
        # The other socket's ADD reaches us (as a broadcast) before our own reply.
        await other.add(SaType.ESP, "10.0.0.1", "10.0.0.2", 0x2000, enc=ENC, auth=AUTH)
        mine = await me.add(SaType.ESP, "10.0.0.1", "10.0.0.2", 0x2001, enc=ENC, auth=AUTH)
        assert mine.sa is not None and mine.sa.spi == 0x2001 and mine.pid == 1
        events = me.events()
        event = await events.__anext__()
        assert (event.type, event.pid) == (MsgType.ADD, 2)
        assert event.sa is not None and event.sa.spi == 0x2000
        theirs = await other.events().__anext__()
        assert (theirs.type, theirs.pid) == (MsgType.ADD, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert not me._events  # our own reply was not an event


async def test_expire_and_acquire_style_messages_arrive_as_events(
    daemon: Daemon, autojump_clock: trio.testing.MockClock
) -> None:
    async with pfkeyd.client.open(daemon.paths[FREEBSD], FREEBSD) as ike:
        await ike.register(SaType.ESP)
        await ike.add(
            SaType.ESP,
            "10.0.0.1",
            "10.0.0.2",
            0x3000,
            enc=ENC,
            auth=AUTH,
            hard=Lifetime(ExtType.LIFETIME_HARD, addtime=20),
            soft=Lifetime(ExtType.LIFETIME_SOFT, addtime=10),
        )
        kinds = []
        async for event in ike.events():
            assert event.type == MsgType.EXPIRE
            kinds.append("hard" if event.lifetime_hard is not None else "soft")
            if len(kinds) == 2:
                break
        assert kinds == ["soft", "hard"]


async def test_an_unread_event_buffer_drops_the_oldest(daemon: Daemon) -> None:
    async with (
        pfkeyd.client.open(daemon.paths[LINUX], LINUX, event_buffer=3) as quiet,
        pfkeyd.client.open(daemon.paths[LINUX], LINUX) as busy,
    ):
        for seq in range(1, 6):
            await busy.request(Message(MsgType.FLUSH, 0, seq))
        await quiet.flush()  # everything before our reply has been read
        assert quiet.events_dropped == 2
        assert [m.seq for m in list(quiet._events)] == [3, 4, 5]


async def test_request_many_returns_replies_and_errors_in_order(daemon: Daemon) -> None:
    async with pfkeyd.client.open(daemon.paths[LINUX], LINUX) as conn:
        msgs = [add_msg(0x5000 + i) for i in range(100)]
        msgs[40] = add_msg(0x5000)  # a duplicate: EEXIST
        results = await conn.request_many(msgs, window=8)
        assert len(results) == 100
        assert isinstance(results[40], PfkeyReplyError) and results[40].errno == errno.EEXIST
        for i, result in enumerate(results):
            if i != 40:
                assert isinstance(result, Message)
                assert result.sa is not None and result.sa.spi == 0x5000 + i
        assert [r.reply.seq if isinstance(r, PfkeyReplyError) else r.seq for r in results] == sorted(
            r.reply.seq if isinstance(r, PfkeyReplyError) else r.seq for r in results
        )
        with pytest.raises(ValueError, match="window"):
            await conn.request_many(msgs, window=0)


async def test_request_many_keeps_at_most_window_requests_unanswered(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    # The engine holds every request and answers the oldest one a second later.
    engine = FakeEngine()
    held: list[tuple[ClientId, Message]] = []
    peak = 0

    def handle(client: ClientId, msg: Message) -> list[Effect]:
        nonlocal peak
        held.append((client, msg))
        peak = max(peak, len(held))
        engine.deadline = trio.current_time() + 1
        return []

    def tick(now: Instant) -> list[Effect]:
        client, msg = held.pop(0)
        engine.deadline = now.mono + 1 if held else None
        return [Send((client,), msg, reply=True)]

    engine.on_handle, engine.on_tick = handle, tick
    d = await start_daemon(nursery, sockdir, engine)
    async with pfkeyd.client.open(d.paths[LINUX], LINUX) as conn:
        results = await conn.request_many([Message(MsgType.FLUSH) for _ in range(10)], window=4)
    assert peak == 4
    assert len(results) == 10
    seqs = [r.seq for r in results if isinstance(r, Message)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10


@DIALECTS
async def test_a_dump_ends_at_seq_0_and_can_be_left_early(daemon: Daemon, dialect: Dialect) -> None:
    async with pfkeyd.client.open(daemon.paths[dialect], dialect) as conn:
        await conn.request_many([add_msg(0x6000 + i) for i in range(500)])
        entries = [m async for m in conn.dump(SaType.ESP)]
        assert len(entries) == 500
        assert [m.seq for m in entries] == list(range(499, -1, -1))
        async for m in conn.dump():
            if m.seq == 400:
                break
        # The rest of the first dump is read and thrown away; the next one is whole.
        assert len([m async for m in conn.dump()]) == 500
        assert (await conn.flush()).type == MsgType.FLUSH


async def test_a_request_made_inside_a_dump_loop_does_not_deadlock(daemon: Daemon) -> None:
    async with pfkeyd.client.open(daemon.paths[LINUX], LINUX) as conn:
        await conn.request_many([add_msg(0x6100 + i) for i in range(2000)])
        seen = 0
        with trio.fail_after(30):
            async for _entry in conn.dump():
                if seen == 0:
                    got = await conn.get(SaType.ESP, "10.0.0.1", "10.0.0.2", 0x6100)
                    assert got.sa is not None
                seen += 1
        assert seen == 2000


async def test_spddump_reads_policies_until_seq_0(nursery: trio.Nursery, sockdir: str) -> None:
    policies = [
        Message(
            MsgType.X_SPDDUMP,
            0,
            0,
            0,
            exts=(addr(ExtType.ADDRESS_SRC, f"10.9.0.{i}"), addr(ExtType.ADDRESS_DST, "10.9.1.1"), Policy(1, 2, i + 1)),
        )
        for i in range(5)
    ]

    def render(item: Message, dialect: Dialect, seq: int, pid: int) -> bytes:
        return encode(item.replace(seq=seq, pid=pid), dialect)

    def handle(client: ClientId, msg: Message) -> list[Effect]:
        if msg.type == MsgType.X_SPDDUMP:
            return [Dump(client, policies, render, msg.pid)]
        return [Send((client,), msg, reply=True)]

    d = await start_daemon(nursery, sockdir, FakeEngine(handle))
    async with pfkeyd.client.open(d.paths[FREEBSD], FREEBSD) as conn:
        got = [m async for m in conn.spddump()]
        assert [m.policy.id for m in got if m.policy] == [1, 2, 3, 4, 5]
        assert got[-1].seq == 0
        assert (await conn.spdflush()).type == MsgType.X_SPDFLUSH


@DIALECTS
async def test_promiscuous_copies_arrive_as_unwrapped_events(daemon: Daemon, dialect: Dialect) -> None:
    async with (
        pfkeyd.client.open(daemon.paths[dialect], dialect, pid=9) as watcher,
        pfkeyd.client.open(daemon.paths[LINUX], LINUX, pid=10) as actor,
    ):
        await watcher.promisc()
        await actor.add(SaType.ESP, "10.0.0.1", "10.0.0.2", 0x7000, enc=ENC, auth=AUTH)
        await watcher.flush(SaType.AH)  # a round trip: everything before it has been read
        adds = [m for m in watcher._events if m.type == MsgType.ADD and m.pid == 10]
        assert len(adds) == 2  # the broadcast to ALL and the promiscuous copy
        assert not any(has_keys(m) for m in watcher._events)
        await watcher.promisc(on=False)


async def test_when_the_daemon_goes_away_requests_fail_and_events_end(daemon: Daemon) -> None:
    async with pfkeyd.client.open(daemon.paths[LINUX], LINUX) as conn:
        await conn.flush()
        daemon.server.stop()
        ended = [m async for m in conn.events()]
        assert all(m.type == MsgType.FLUSH for m in ended)
        assert conn.closed
        with pytest.raises(trio.BrokenResourceError):
            await conn.flush()
        with pytest.raises(trio.BrokenResourceError):
            [m async for m in conn.dump()]


async def test_a_closed_connection_refuses_requests(daemon: Daemon) -> None:
    async with pfkeyd.client.open(daemon.paths[LINUX], LINUX) as conn:
        await conn.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await conn.flush()
        with pytest.raises(trio.ClosedResourceError):
            await conn.request_many([Message(MsgType.FLUSH)] * 3)
        assert not conn._waiters  # nothing was sent, so nothing is left waiting


async def test_a_reply_to_a_cancelled_request_is_discarded(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    engine = FakeEngine()
    held: list[tuple[ClientId, Message]] = []

    def handle(client: ClientId, msg: Message) -> list[Effect]:
        if msg.seq == 1:  # answered ten seconds late
            held.append((client, msg))
            engine.deadline = trio.current_time() + 10
            return []
        return [Send((client,), msg, reply=True)]

    def tick(now: Instant) -> list[Effect]:
        engine.deadline = None
        client, msg = held.pop()
        return [Send((client,), msg, reply=True)]

    engine.on_handle, engine.on_tick = handle, tick
    d = await start_daemon(nursery, sockdir, engine)
    async with pfkeyd.client.open(d.paths[LINUX], LINUX) as conn:
        with trio.move_on_after(5):
            await conn.request(Message(MsgType.FLUSH, 0, 1))
        await trio.sleep(10)
        assert (await conn.request(Message(MsgType.FLUSH, 0, 2))).seq == 2
        assert not conn._events and not conn._waiters


async def test_send_waits_for_nothing_and_fills_in_the_pid(daemon: Daemon) -> None:
    async with pfkeyd.client.open(daemon.paths[FREEBSD], FREEBSD, pid=31) as conn:
        await conn.send(Message(MsgType.FLUSH, 0, 44))
        reply = await conn.events().__anext__()  # nobody waited for it: an event
        assert (reply.type, reply.seq, reply.pid) == (MsgType.FLUSH, 44, 31)


def test_open_without_any_socket_path_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PFKEY_SOCKET", raising=False)
    monkeypatch.setattr(pfkeyd.client, "default_socket_path", lambda: None)

    async def main() -> None:
        async with pfkeyd.client.open():
            pass

    with pytest.raises(OSError, match="PFKEY_SOCKET"):
        trio.run(main)


def test_unwrap_recognises_only_a_whole_promisc_wrapper() -> None:
    inner = encode(Message(MsgType.FLUSH, 0, 1, 2), LINUX)
    head = struct.pack("=BBBBHHII", 2, MsgType.X_PROMISC, 0, 0, (16 + len(inner)) // 8, 0, 0, 0)
    assert promisc_unwrap(head + inner) == inner
    assert promisc_unwrap(inner) is None
    assert promisc_unwrap(head + inner[:4] + struct.pack("=H", 3) + inner[6:]) is None
    assert promisc_unwrap(head[:4] + struct.pack("=H", 5) + head[6:] + inner) is None


@DIALECTS
async def test_policy_helpers_and_the_control_call(nursery: trio.Nursery, sockdir: str, dialect: Dialect) -> None:
    from pfkeyd import control as control_commands
    from pfkeyd.engine import KeyEngine
    from pfkeyd.wire import Direction, IpsecRequest, Level, Mode, PolicyType

    engine = KeyEngine(rng=random.Random(9))

    def hook(argv: Sequence[str], now: Instant, dialect: Dialect) -> tuple[int, str, str, Sequence[Effect]]:
        out = control_commands.run(engine, argv, now, dialect)
        return out.status, out.out, out.err, out.effects

    d = await start_daemon(nursery, sockdir, engine, control=hook)
    path = d.paths[dialect]
    async with pfkeyd.client.open(path, dialect) as conn:
        esp = IpsecRequest(50, Mode.TRANSPORT, Level.REQUIRE)
        reply = await conn.spdadd(
            "10.0.0.1", "10.0.0.2", Direction.OUTBOUND, PolicyType.IPSEC, requests=[esp], priority=7
        )
        assert reply.policy is not None and reply.policy.id and reply.policy.priority == 7
        got = await conn.spdget(reply.policy.id)
        assert got.policy is not None and got.policy.requests[0].level == Level.REQUIRE
        status, out, err = await pfkeyd.client.control(["lookup", "out", "10.0.0.1", "10.0.0.2"], path)
        assert status == 0 and f"policy {reply.policy.id}:" in out and err == ""
        status, out, _ = await pfkeyd.client.control(["sysctl", "net.key.spi_minval=4096"], path)
        assert status == 0 and engine.knobs.spi_minval == 4096
        await conn.spddelete2(reply.policy.id)
        with pytest.raises(pfkeyd.client.PfkeyReplyError):
            await conn.spdget(reply.policy.id)


async def test_a_dump_entry_the_client_cannot_decode_fails_the_dump_instead_of_hanging(
    nursery: trio.Nursery, sockdir: str
) -> None:
    from pfkeyd.engine import KeyEngine
    from pfkeyd.errors import DecodeError

    engine = KeyEngine(rng=random.Random(4))
    d = await start_daemon(nursery, sockdir, engine)
    async with pfkeyd.client.open(d.paths[FREEBSD], FREEBSD) as bsd:
        await bsd.add(SaType.ESP, "10.0.0.1", "10.0.0.2", 0x4444, enc=ENC, auth=AUTH)
    # A linux-built client on the freebsd socket: the entry's sockaddrs do not parse.
    async with pfkeyd.client.open(d.paths[FREEBSD], LINUX) as wrong:
        with trio.fail_after(5), pytest.raises(DecodeError):
            async for _ in wrong.dump():
                pass
