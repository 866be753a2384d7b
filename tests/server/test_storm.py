"""An expiry storm is served in slices (issue 10, item 5): the timer hands the
engine at most TICK_BATCH due deadlines at a time and yields between them, so a
client's request is answered while thousands of SAs are still waiting to expire."""

from __future__ import annotations

import random

import trio
import trio.testing

from pfkeyd.effects import Effect, Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import Knobs
from pfkeyd.server import TICK_BATCH
from pfkeyd.wire import Address, Dialect, ExtType, Message, MsgType, SaType, SpiRange, encode
from tests.server.peers import WALL, start_daemon

STORM = 20 * TICK_BATCH


class WatchedEngine(KeyEngine):
    """The real engine; it records each tick's limit and runs ``on_tick`` once, at
    the start of the first tick."""

    def __init__(self) -> None:
        super().__init__(Knobs(larval_lifetime=30), rng=random.Random(7))
        self.limits: list[int | None] = []
        self.on_tick: list[object] = []

    def tick(self, now: Instant, *, limit: int | None = None) -> list[Effect]:
        self.limits.append(limit)
        while self.on_tick:
            action = self.on_tick.pop()
            assert callable(action)
            action()
        return super().tick(now, limit=limit)


def getspi(i: int) -> Message:
    return Message(
        MsgType.GETSPI,
        SaType.ESP,
        i,
        99,
        exts=(
            Address.host(ExtType.ADDRESS_SRC, "10.0.0.1"),
            Address.host(ExtType.ADDRESS_DST, f"10.1.{i // 256}.{i % 256}"),
            SpiRange(0x10000 + i, 0x10000 + i),
        ),
    )


async def test_a_request_made_during_an_expiry_storm_is_answered_before_the_storm_ends(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    engine = WatchedEngine()
    d = await start_daemon(nursery, sockdir, engine)
    keeper = await d.connect(Dialect.FREEBSD, pid=99)
    other = await d.connect(Dialect.LINUX, pid=77)
    # STORM LARVAL SAs made at one instant: all due together 30 s later.
    now = Instant(trio.current_time(), WALL)
    keeper_id = min(engine.clients)
    for i in range(STORM):
        engine.handle(keeper_id, getspi(i), now)
    assert len(engine.sad) == STORM
    # Any request makes the timer read the new deadline.
    reply = await keeper.request(Message(MsgType.REGISTER, SaType.AH, 1))
    assert reply.errno == 0 and len(engine.sad) == STORM

    # When the storm begins, `other` asks for something.
    register = encode(Message(MsgType.REGISTER, SaType.ESP, 5, other.pid), Dialect.LINUX)
    engine.on_tick.append(lambda: other.sock.send(register))
    answer = await other.recv()
    assert (answer.type, answer.seq, answer.errno) == (MsgType.REGISTER, 5, 0)
    assert trio.current_time() >= now.mono + 30
    assert len(engine.sad) >= STORM - 4 * TICK_BATCH  # answered between the first few slices

    await trio.testing.wait_all_tasks_blocked()
    assert len(engine.sad) == 0
    assert engine.limits == [TICK_BATCH] * len(engine.limits)
    assert len(engine.limits) >= STORM // TICK_BATCH
