"""The pipelined path of pfkeyd.client (request_many_raw, and request_many over it)
against a running daemon: replies matched by their headers, whatever their order and
whatever else arrives between them."""

from __future__ import annotations

import errno
import random

import pytest
import trio
import trio.testing

import pfkeyd.client
from pfkeyd.client import Connection, PfkeyReplyError, RawReply
from pfkeyd.effects import ClientId, Effect, Instant, Send
from pfkeyd.wire import Dialect, Message, MsgType, SaType, encode
from tests.server.peers import Daemon, FakeEngine, add_msg, start_daemon

LINUX, FREEBSD = Dialect.LINUX, Dialect.FREEBSD
DIALECTS = pytest.mark.parametrize("dialect", [LINUX, FREEBSD])
OTHER_PID = 777


def spi_of(reply: RawReply | Message | PfkeyReplyError) -> int:
    msg = reply.message if isinstance(reply, RawReply) else reply.reply if isinstance(reply, PfkeyReplyError) else reply
    assert msg.sa is not None
    return msg.sa.spi


async def batch(conn: Connection, msgs: list[Message], raw: bool, window: int = 64) -> list[int]:
    """The SPIs of the replies to ``msgs``, through request_many_raw or request_many."""
    if raw:
        replies = await conn.request_many_raw(msgs, window=window)
        assert all(r.errno == 0 for r in replies)
        return [spi_of(r) for r in replies]
    results = await conn.request_many(msgs, window=window)
    assert all(isinstance(r, Message) for r in results)
    return [spi_of(r) for r in results]


@DIALECTS
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "decoded"])
async def test_replies_are_matched_out_of_order_among_broadcasts_and_promiscuous_copies(
    nursery: trio.Nursery, sockdir: str, dialect: Dialect, raw: bool
) -> None:
    count = 40
    held: list[tuple[ClientId, Message]] = []

    def handle(client: ClientId, msg: Message) -> list[Effect]:
        held.append((client, msg))
        if len(held) < count:
            return []
        # Every request is in (the window is wider than the batch): answer them in
        # a shuffled order, each reply behind a broadcast of the same type and seq
        # from another process and a promiscuous copy.
        order = list(range(count))
        random.Random(2367).shuffle(order)
        effects: list[Effect] = []
        for i in order:
            to, request = held[i]
            effects += [
                Send((to,), request.replace(pid=OTHER_PID)),
                Send((to,), request, promisc=True),
                Send((to,), request, reply=True),
            ]
        return effects

    d = await start_daemon(nursery, sockdir, FakeEngine(handle))
    async with pfkeyd.client.open(d.paths[dialect], dialect, pid=31) as conn:
        msgs = [add_msg(0x9000 + i) for i in range(count)]
        assert await batch(conn, msgs, raw) == [0x9000 + i for i in range(count)]
        assert not conn._waiters
        # The broadcasts and the copies are events, none lost and none taken for a reply.
        events = list(conn._events)
        assert len(events) == 2 * count
        assert sorted(m.pid for m in events) == [31] * count + [OTHER_PID] * count
        assert sorted(spi_of(m) for m in events) == sorted(2 * [0x9000 + i for i in range(count)])


@DIALECTS
async def test_an_error_in_the_middle_of_a_batch_is_that_requests_result(
    nursery: trio.Nursery, sockdir: str, dialect: Dialect
) -> None:
    def handle(client: ClientId, msg: Message) -> list[Effect]:
        failing = msg.sa is not None and msg.sa.spi == 0x5005
        return [Send((client,), msg.replace(errno=errno.ENOBUFS) if failing else msg, reply=True)]

    d = await start_daemon(nursery, sockdir, FakeEngine(handle))
    async with pfkeyd.client.open(d.paths[dialect], dialect) as conn:
        msgs = [add_msg(0x5000 + i) for i in range(12)]
        raw = await conn.request_many_raw(msgs, window=4)
        assert [r.errno for r in raw] == [0] * 5 + [errno.ENOBUFS] + [0] * 6
        # The header carries the dialect's number (FreeBSD's ENOBUFS is 55, Linux's
        # 105); errno is the host's, as decode() reads it.
        assert raw[5].data[2] == dialect.spec.errno_to_wire(errno.ENOBUFS)
        assert raw[5].message.errno == errno.ENOBUFS
        assert [spi_of(r) for r in raw] == [0x5000 + i for i in range(12)]

        decoded = await conn.request_many(msgs, window=4)
        failure = decoded[5]
        assert isinstance(failure, PfkeyReplyError) and failure.errno == errno.ENOBUFS
        assert all(isinstance(r, Message) for i, r in enumerate(decoded) if i != 5)
        assert not conn._waiters and not conn._events


async def test_request_many_raw_takes_encoded_messages_and_fills_in_seq_and_pid(
    nursery: trio.Nursery, sockdir: str
) -> None:
    def echo(client: ClientId, msg: Message) -> list[Effect]:
        return [Send((client,), msg, reply=True)]

    d = await start_daemon(nursery, sockdir, FakeEngine(echo))
    async with pfkeyd.client.open(d.paths[LINUX], LINUX, pid=5) as conn:
        fresh = encode(Message(MsgType.FLUSH, SaType.ESP), LINUX)  # seq 0, pid 0
        fixed = encode(Message(MsgType.FLUSH, SaType.AH, 77, 0), LINUX)
        first, second, third = await conn.request_many_raw([fresh, fixed, Message(MsgType.X_SPDFLUSH)])
        assert (first.type, first.satype, first.pid) == (MsgType.FLUSH, SaType.ESP, 5) and first.seq != 0
        assert (second.type, second.satype, second.seq, second.pid) == (MsgType.FLUSH, SaType.AH, 77, 5)
        assert (third.type, third.pid, third.errno) == (MsgType.X_SPDFLUSH, 5, 0)
        assert third.seq == first.seq + 1  # fresh seqs are handed out in order
        assert first.message is first.message  # decoded once, on demand
        assert first.message.seq == first.seq
        assert repr(second) == "RawReply(FLUSH, satype=2, seq=77, pid=5, errno=0, 16 bytes)"

        # Requests that share a key (an explicit seq) are answered in the order sent.
        same = [Message(MsgType.FLUSH, satype, 9) for satype in (SaType.ESP, SaType.AH, SaType.UNSPEC)]
        assert [r.satype for r in await conn.request_many_raw(same)] == [SaType.ESP, SaType.AH, SaType.UNSPEC]
        assert not conn._waiters

        with pytest.raises(ValueError, match="at least 16 bytes"):
            await conn.request_many_raw([fresh[:8]])
        with pytest.raises(ValueError, match="window"):
            await conn.request_many_raw([fresh], window=0)


async def test_the_daemon_going_away_mid_batch_raises_broken_resource(nursery: trio.Nursery, sockdir: str) -> None:
    arrived = trio.Event()
    seen = 0

    def handle(client: ClientId, msg: Message) -> list[Effect]:
        nonlocal seen
        seen += 1
        if seen == 10:
            arrived.set()
        return [Send((client,), msg, reply=True)] if seen <= 5 else []

    d = await start_daemon(nursery, sockdir, FakeEngine(handle))

    async def stop_when_half_answered() -> None:
        await arrived.wait()
        d.server.stop()

    async with pfkeyd.client.open(d.paths[LINUX], LINUX) as conn:
        async with trio.open_nursery() as inner:
            inner.start_soon(stop_when_half_answered)
            with pytest.raises(trio.BrokenResourceError, match="closed the connection"):
                await conn.request_many_raw([add_msg(0x100 + i) for i in range(20)], window=16)
        assert conn.closed and not conn._waiters
        with pytest.raises(trio.BrokenResourceError):
            await conn.request_many([add_msg(0x200)])


async def test_aclose_mid_batch_raises_closed_resource_and_the_connection_exits_cleanly(
    nursery: trio.Nursery, sockdir: str
) -> None:
    arrived = trio.Event()

    def handle(client: ClientId, msg: Message) -> list[Effect]:
        arrived.set()
        return []  # never answered

    d = await start_daemon(nursery, sockdir, FakeEngine(handle))
    async with pfkeyd.client.open(d.paths[FREEBSD], FREEBSD) as conn:

        async def close_when_sent() -> None:
            await arrived.wait()
            await conn.aclose()

        async with trio.open_nursery() as inner:
            inner.start_soon(close_when_sent)
            with pytest.raises(trio.ClosedResourceError):
                await conn.request_many_raw([add_msg(0x300 + i) for i in range(8)])
        with pytest.raises(trio.ClosedResourceError):
            await conn.request(Message(MsgType.FLUSH))
        await trio.testing.wait_all_tasks_blocked()  # the receive task has seen the close
    # (leaving the block raised nothing: the receive task's wait ended quietly)


@DIALECTS
async def test_dumps_work_after_a_batch_and_around_one(daemon: Daemon, dialect: Dialect) -> None:
    async with pfkeyd.client.open(daemon.paths[dialect], dialect) as conn:
        replies = await conn.request_many_raw([add_msg(0x7000 + i) for i in range(300)], window=128)
        assert [r.errno for r in replies] == [0] * 300
        assert len([m async for m in conn.dump(SaType.ESP)]) == 300
        # More entries than the read-ahead: the batch's replies come behind the
        # dump, so the receive task must read past the limit while they are due.
        gets = [add_msg(0x7000 + i, msgtype=MsgType.GET) for i in range(100)]
        seen = 0
        with trio.fail_after(10):
            async for _entry in conn.dump():
                if seen == 0:
                    await trio.testing.wait_all_tasks_blocked()  # the read-ahead is full: reading stopped
                    assert conn._dump is not None
                    assert len(conn._dump.queue) == pfkeyd.client.connection._DUMP_READ_AHEAD
                    got = await conn.request_many_raw(gets, window=32)
                    assert [spi_of(r) for r in got] == [0x7000 + i for i in range(100)]
                seen += 1
        assert seen == 300
        assert len([m async for m in conn.dump()]) == 300


async def test_a_cancelled_batch_has_its_late_replies_discarded(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    engine = FakeEngine()
    held: list[tuple[ClientId, Message]] = []

    def handle(client: ClientId, msg: Message) -> list[Effect]:
        if msg.type == MsgType.ADD:  # answered ten seconds late
            held.append((client, msg))
            engine.deadline = trio.current_time() + 10
            return []
        return [Send((client,), msg, reply=True)]

    def tick(now: Instant) -> list[Effect]:
        engine.deadline = None
        late: list[Effect] = [Send((client,), msg, reply=True) for client, msg in held]
        held.clear()
        return late

    engine.on_handle, engine.on_tick = handle, tick
    d = await start_daemon(nursery, sockdir, engine)
    async with pfkeyd.client.open(d.paths[LINUX], LINUX) as conn:
        with trio.move_on_after(5):
            await conn.request_many_raw([add_msg(0x400 + i) for i in range(50)], window=64)
        assert len(conn._waiters) == 50  # sent: their replies will be thrown away
        await trio.sleep(10)
        assert (await conn.request(Message(MsgType.FLUSH))).type == MsgType.FLUSH
        assert not conn._events and not conn._waiters


@pytest.mark.parametrize(
    ("interval", "per_tick", "limit"),
    [
        (0.001, 1, 0.400 + 0.030),  # 1 000 answers/s: the reads are coalesced
        (0.000025, 16, 0.003),  # 640 000 answers/s: a coalescing sleep would idle the daemon, so none
    ],
    ids=["slow", "fast"],
)
async def test_coalesced_reads_keep_the_window_full_and_the_daemon_busy(
    nursery: trio.Nursery,
    sockdir: str,
    autojump_clock: trio.testing.MockClock,
    interval: float,
    per_tick: int,
    limit: float,
) -> None:
    # Every `interval` the daemon answers the `per_tick` oldest requests.  The
    # receive task may sleep between reads (see Connection._receive_loop), but
    # never so long that the daemon runs out of requests while it could answer.
    engine = FakeEngine()
    held: list[tuple[ClientId, Message]] = []
    peak = 0

    def handle(client: ClientId, msg: Message) -> list[Effect]:
        nonlocal peak
        held.append((client, msg))
        peak = max(peak, len(held))
        if engine.deadline is None:
            engine.deadline = trio.current_time() + interval
        return []

    def tick(now: Instant) -> list[Effect]:
        answers: list[Effect] = [Send((client,), msg, reply=True) for client, msg in held[:per_tick]]
        del held[:per_tick]
        engine.deadline = now.mono + interval if held else None
        return answers

    engine.on_handle, engine.on_tick = handle, tick
    d = await start_daemon(nursery, sockdir, engine)
    async with pfkeyd.client.open(d.paths[LINUX], LINUX) as conn:
        start = trio.current_time()
        replies = await conn.request_many_raw([add_msg(0x800 + i) for i in range(400)], window=64)
        elapsed = trio.current_time() - start
    assert peak == 64
    assert [spi_of(r) for r in replies] == [0x800 + i for i in range(400)]
    assert elapsed < limit
