"""Slow, absent and vanishing readers: replies and dump entries wait, broadcasts drop."""

from __future__ import annotations

import gc
import logging
import random
import tracemalloc

import pytest
import trio
import trio.testing

from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import Knobs
from pfkeyd.wire import Dialect, Message, MsgType, SaType
from tests.server.peers import add_msg, sa_msg, start_daemon
from tests.server.test_routing import Table, dump_engine, make_render

LINUX, FREEBSD = Dialect.LINUX, Dialect.FREEBSD


@pytest.mark.slow
async def test_a_100k_entry_dump_to_a_pausing_reader_is_complete_and_memory_stays_flat(
    nursery: trio.Nursery, sockdir: str
) -> None:
    n = 100_000
    traced = 2_000  # tracemalloc slows everything tenfold: watch the first entries only
    table = Table(n)
    engine = dump_engine(table, make_render())
    d = await start_daemon(nursery, sockdir, engine)
    peer = await d.connect(FREEBSD, pid=1234)
    other = await d.connect(LINUX)

    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        await peer.send(Message(MsgType.DUMP))
        expected = n - 1
        zeros = 0
        for i in range(n):
            if i in (10, traced // 2, n // 2):
                # The reader pauses: the daemon blocks on this one socket, renders
                # no more than that socket holds, and keeps serving everyone else.
                await trio.testing.wait_all_tasks_blocked()
                touched = table.touched
                assert touched - i < 5000
                stats = d.server.statistics()
                assert stats.dumps_in_progress == 1
                assert stats.queued_bytes == 0
                assert (await other.request(Message(MsgType.FLUSH))).type == MsgType.FLUSH
                await trio.testing.wait_all_tasks_blocked()
                assert table.touched == touched
            if i == traced:
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            raw = await peer.recv_raw()
            seq = int.from_bytes(raw[8:12], "little")
            assert seq == expected
            expected -= 1
            zeros += seq == 0
    finally:
        tracemalloc.stop()
    assert zeros == 1
    assert table.touched == n
    assert await peer.quiet()
    # A receive buffer is 512 KiB (the largest PF_KEY message) until recv() trims it;
    # the dump rendered ahead of the reader would be some 10 MB (100 bytes an entry).
    assert peak - base < 2_000_000, peak - base
    assert d.server.statistics().peak_queued_bytes < 1000


async def test_a_client_vanishing_mid_dump_disturbs_nobody(nursery: trio.Nursery, sockdir: str) -> None:
    table = Table(50_000)
    engine = dump_engine(table, make_render())
    d = await start_daemon(nursery, sockdir, engine)
    quitter = await d.connect(LINUX)
    stayer = await d.connect(FREEBSD)
    await quitter.send(Message(MsgType.DUMP))
    for _ in range(5):
        await quitter.recv_raw()
    quitter.close()
    await trio.testing.wait_all_tasks_blocked()
    assert d.server.statistics().clients == 1
    assert len(engine.clients) == 1
    assert table.touched < table.n  # the rest was never rendered
    for seq in range(1, 4):
        reply = await stayer.request(Message(MsgType.FLUSH, 0, seq))
        assert reply.seq == seq
    await stayer.send(Message(MsgType.DUMP))
    assert (await stayer.recv()).seq == table.n - 1


async def test_a_full_buffer_drops_broadcasts_only_never_replies_or_dump_entries(
    nursery: trio.Nursery, sockdir: str, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    # The mock clock stands still while nothing sleeps: the warning's rate limit
    # (one per client per 10 s) then allows exactly one.
    caplog.set_level(logging.WARNING, logger="pfkeyd.server")
    engine = KeyEngine(Knobs(client_buffer=16 * 1024), rng=random.Random(5))
    d = await start_daemon(nursery, sockdir, engine)
    sleeper = await d.connect(LINUX, pid=500)
    actor = await d.connect(FREEBSD, pid=600)

    for spi in (0x7001, 0x7002, 0x7003):
        await actor.request(add_msg(spi))
    flushes = 3000
    for seq in range(1, flushes + 1):
        # FLUSH of an SA type with no SAs: a reply to the actor, a broadcast to the sleeper.
        reply = await actor.request(Message(MsgType.FLUSH, SaType.AH, seq))
        assert reply.seq == seq  # the actor is never slowed by the sleeper
    dropped = engine.stats.drops["broadcast_buffer_full"]
    assert dropped > 0
    assert d.server.statistics().broadcast_drops == dropped

    # The sleeper now asks for things while its buffer is still full, then reads.
    await sleeper.send(sa_msg(MsgType.GET, 0x7002).replace(seq=77))
    await sleeper.send(Message(MsgType.DUMP, SaType.ESP, 78))
    got = []
    while True:
        msg = await sleeper.recv()
        got.append(msg)
        if msg.type == MsgType.DUMP and msg.seq == 0:
            break
    assert await sleeper.quiet()
    broadcasts = [m for m in got if m.pid == 600]
    assert len(broadcasts) + dropped == 3 + flushes
    assert [m.seq for m in broadcasts if m.type == MsgType.FLUSH] == sorted(
        m.seq for m in broadcasts if m.type == MsgType.FLUSH
    )
    mine = [m for m in got if m.pid == 500]
    assert (mine[0].type, mine[0].seq, mine[0].errno) == (MsgType.GET, 77, 0)
    assert [m.seq for m in mine[1:]] == [2, 1, 0]
    assert sorted(m.sa.spi for m in mine[1:] if m.sa is not None) == [0x7001, 0x7002, 0x7003]
    warnings = [r for r in caplog.records if "broadcast" in r.getMessage()]
    assert len(warnings) == 1
    assert "dropped" in warnings[0].getMessage()
