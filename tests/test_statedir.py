"""The state directory's shell (pfkeyd.statedir) inside a server: replies wait for
the sync of their record, bursts share syncs, compaction, reload."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
import trio
import trio.testing

from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import Knobs
from pfkeyd.statedir import Durable, StateDir
from pfkeyd.wire import Dialect, SaType
from tests.engine import conftest as sa_helpers
from tests.server.peers import start_daemon


@pytest.fixture
def tmp() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="pfsd", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class GatedDir(StateDir):
    """A state directory whose writes wait until the test opens the gate."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()

    def write(self, data: bytes) -> None:
        self.gate.wait(30)
        super().write(data)


def reload(path: str) -> KeyEngine:
    engine = KeyEngine(rng=random.Random(1))
    store = StateDir(path)
    store.open()
    try:
        store.load(engine, Knobs(), 0.0)
    finally:
        store.close()
    return engine


async def test_a_reply_leaves_only_once_its_record_is_synced(tmp: str) -> None:
    engine = KeyEngine(rng=random.Random(1))
    store = GatedDir(f"{tmp}/state")
    store.open()
    durable = Durable(store, engine)
    durable.load(Knobs())
    async with trio.open_nursery() as nursery:
        await nursery.start(durable.run)
        daemon = await start_daemon(nursery, tmp, engine, durable=durable)
        peer = await daemon.connect(Dialect.LINUX)
        store.gate.clear()
        await peer.send(sa_helpers.add(SaType.ESP, 0x1000, seq=1))
        await peer.send(sa_helpers.get(SaType.ESP, 0x1000, seq=2))  # reads only, but must not overtake
        await trio.testing.wait_all_tasks_blocked()
        assert engine.sad.get(0x1000) is not None  # done in memory ...
        assert not peer.pending()  # ... but not acknowledged: the sync has not happened
        store.gate.set()
        assert [(await peer.recv()).seq for _ in range(2)] == [1, 2]
        daemon.server.stop()
        peer.close()
        nursery.cancel_scope.cancel()
    store.close()


async def test_bursts_share_syncs_and_compaction_keeps_the_state(tmp: str) -> None:
    engine = KeyEngine(rng=random.Random(1))
    store = StateDir(f"{tmp}/state")
    store.open()
    durable = Durable(store, engine, compact_min=20_000)
    durable.load(Knobs())
    async with trio.open_nursery() as nursery:
        await nursery.start(durable.run)
        daemon = await start_daemon(nursery, tmp, engine, durable=durable)
        peer = await daemon.connect(Dialect.LINUX)
        n = 400
        for i in range(n):
            await peer.send(sa_helpers.add(SaType.ESP, 0x1000 + i, seq=i + 1, d=f"10.0.{i >> 8}.{i & 255}"))
        replies = [await peer.recv() for _ in range(n)]
        assert all(r.errno == 0 for r in replies)
        assert durable.commits < n  # group commit
        await durable.wait_compacted(1)
        for i in range(0, n, 2):
            await peer.send(sa_helpers.delete(SaType.ESP, 0x1000 + i, seq=i + 1, d=f"10.0.{i >> 8}.{i & 255}"))
        deleted = [await peer.recv() for _ in range(0, n, 2)]
        assert all(r.errno == 0 for r in deleted)
        daemon.server.stop()
        peer.close()
        nursery.cancel_scope.cancel()
    store.close()
    names = sorted(os.listdir(f"{tmp}/state"))
    assert "snapshot" in names and "journal.0" not in names, names
    assert same(reload(f"{tmp}/state")) == same(engine)
    assert len(engine.sad) == n // 2


def same(engine: KeyEngine) -> tuple[object, ...]:
    """The tables, with the monotonic creation times (another clock in each
    process) left out."""
    sad = engine.sad
    heads = [(idx, list(h.larval), list(h.alive)) for idx, h in sad.heads.items()]
    return (
        {spi: replace(sa, created=0.0) for spi, sa in sad.by_spi.items()},
        heads,
        [replace(p, created=0.0) for p in engine.spd.by_id.values()],
        engine.allocators(),
    )


async def test_changes_no_reply_waits_for_are_written_within_a_second(
    tmp: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The data plane's usage reports change SAs without a request: the committer
    takes them itself, so the change log stays short and they reach the disk."""
    engine = KeyEngine(rng=random.Random(1))
    store = StateDir(f"{tmp}/state")
    store.open()
    durable = Durable(store, engine)
    durable.load(Knobs())
    async with trio.open_nursery() as nursery:
        await nursery.start(durable.run)
        daemon = await start_daemon(nursery, tmp, engine, durable=durable)
        peer = await daemon.connect(Dialect.LINUX)
        assert (await peer.request(sa_helpers.add(SaType.ESP, 0x1000, seq=1))).errno == 0
        assert engine.report_usage(0x1000, 1500, 3, daemon.server._now()) == []
        assert durable.recorder.changes  # not yet written
        await trio.sleep(1.5)
        assert not durable.recorder.changes
        await durable.wait(durable.appended)
        daemon.server.stop()
        peer.close()
        nursery.cancel_scope.cancel()
    store.close()
    sa = reload(f"{tmp}/state").sad.get(0x1000)
    assert sa is not None and (sa.bytes, sa.packets) == (1500, 3)
