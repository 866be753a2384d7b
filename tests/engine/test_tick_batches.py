"""Expiry in bounded batches (issue 10, item 5): ``tick(now, limit=n)`` takes on at
most n due deadlines, leaves the rest due, and a run of such ticks ends exactly
where one unbounded tick does.  The shell relies on this to serve other clients
between the slices of an expiry storm."""

from __future__ import annotations

import pytest

from pfkeyd.effects import Effect
from pfkeyd.engine import KeyEngine
from pfkeyd.sad import STALE_POPS
from pfkeyd.wire import SaType
from tests.engine.conftest import FB, FB2, LX2, at, flush, getspi, hard, make_engine, mature, ok, register, soft
from tests.engine.spd_helpers import hard_lifetime, spd_msg


def storm_engine() -> KeyEngine:
    """LARVAL SAs, SAs with soft and hard lifetimes and policies with lifetimes, all
    due by t=40; two registered sockets hear the EXPIREs and SPDEXPIREs."""
    engine = make_engine(larval_lifetime=30)
    ok(engine, FB2, register(SaType.ESP))
    ok(engine, LX2, register(SaType.AH))
    for i in range(40):
        ok(engine, FB, getspi(spirange=(0x2000 + i, 0x2000 + i), d=f"10.1.0.{i}"))
    for i in range(20):
        mature(
            engine, FB, 0x3000 + i, d=f"10.2.0.{i}", hard_lt=hard(addtime=20 + i % 3), soft_lt=soft(addtime=10 + i % 5)
        )
    for i in range(15):
        ok(engine, FB, spd_msg(dst=f"10.3.0.{i}", hard=hard_lifetime(25 + i % 4)))
    return engine


def drain(engine: KeyEngine, t: float, limit: int) -> list[list[Effect]]:
    """Tick at ``t`` in batches of ``limit`` until nothing is due; the effects of each."""
    batches = []
    while (deadline := engine.next_deadline()) is not None and deadline <= t:
        batches.append(engine.tick(at(t), limit=limit))
        assert len(batches) < 10_000, "ticks that never finish"
    return batches


def test_a_limited_tick_takes_on_at_most_limit_larval_sas_and_the_rest_stays_due() -> None:
    engine = make_engine(larval_lifetime=30)
    for i in range(300):
        ok(engine, FB, getspi(spirange=(0x2000 + i, 0x2000 + i), d=f"10.1.{i // 256}.{i % 256}"))
    assert engine.tick(at(31), limit=100) == []  # LARVAL SAs die silently
    assert len(engine.sad) == 200
    deadline = engine.next_deadline()
    assert deadline is not None and deadline <= 31
    engine.tick(at(31), limit=100)
    assert len(engine.sad) == 100
    engine.tick(at(31), limit=100)
    assert len(engine.sad) == 0
    assert engine.next_deadline() is None


@pytest.mark.parametrize("limit", [1, 7, 64])
def test_ticks_in_batches_end_where_one_unbounded_tick_ends(limit: int) -> None:
    whole, sliced = storm_engine(), storm_engine()
    t = 40
    one = whole.tick(at(t))
    batches = drain(sliced, t, limit)
    assert len(batches) > 1
    # The same messages to the same sockets (SAs and policies interleave differently).
    assert sorted(map(repr, one)) == sorted(repr(e) for b in batches for e in b)
    assert dict(whole.sad.by_spi) == dict(sliced.sad.by_spi)
    assert whole.spd.by_id == sliced.spd.by_id
    assert whole.next_deadline() == sliced.next_deadline()
    assert whole.statistics() == sliced.statistics()


def test_each_limited_tick_pops_at_most_limit_deadlines_of_sas_and_of_policies() -> None:
    engine = storm_engine()
    sa_heap, policy_heap = engine.sad._deadlines, engine._policy_deadlines
    while (deadline := engine.next_deadline()) is not None and deadline <= 40:
        sas, policies = len(sa_heap), len(policy_heap)
        engine.tick(at(40), limit=3)
        assert sas - len(sa_heap) <= 3  # (an SA that goes DYING pushes its hard deadline again)
        assert policies - len(policy_heap) <= 3


def test_tick_limit_must_be_positive() -> None:
    engine = make_engine()
    with pytest.raises(ValueError, match="not positive"):
        engine.tick(at(1), limit=0)


def test_next_deadline_after_flushing_many_sas_discards_a_bounded_number_of_stale_entries() -> None:
    """After a FLUSH every deadline of the flushed SAs is stale.  next_deadline()
    throws away at most STALE_POPS of them a call (the rest go in bounded ticks), and
    its answer may come early but never late."""
    engine = make_engine()
    count = 20 * STALE_POPS
    for i in range(count):
        mature(engine, FB, 0x3000 + i, d=f"10.2.{i // 256}.{i % 256}", hard_lt=hard(addtime=50), soft_lt=soft())
    ok(engine, FB, flush())
    mature(engine, FB, 0x9000, d="10.9.0.1", hard_lt=hard(addtime=100), soft_lt=soft())
    heap = engine.sad._deadlines
    before = len(heap)
    early = engine.next_deadline()
    assert before - len(heap) <= STALE_POPS
    assert early is not None and early <= 100
    assert all(batch == [] for batch in drain(engine, 60, 128))
    assert engine.next_deadline() == 100
    assert engine.tick(at(100)) == []  # nobody is registered; the SA dies all the same
    assert engine.sad.get(0x9000) is None
