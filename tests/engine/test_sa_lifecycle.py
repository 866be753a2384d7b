"""The SA lifecycle with time passed in (reference §7.1, §7.2, §7.6, §9.2):
larval lifetime, soft and hard limits, SADB_EXPIRE, usage reports, deadlines."""

from __future__ import annotations

import pytest

from pfkeyd.effects import Effect
from pfkeyd.engine import KeyEngine
from pfkeyd.wire import (
    AuthAlg,
    Dialect,
    EncAlg,
    ExtType,
    IpProto,
    Lifetime,
    Message,
    Mode,
    MsgType,
    Sa,
    Sa2,
    SaReplay,
    SaState,
    SaType,
    encode,
)
from tests.engine.conftest import (
    DIALECT_OF,
    FB,
    FB2,
    LX,
    LX2,
    A,
    at,
    delete,
    ext_types,
    getspi,
    hard,
    has_keys,
    larval,
    lifetimes_update,
    make_engine,
    mature,
    ok,
    promisc,
    received,
    register,
    sends,
    soft,
    targets,
    update,
)

EPS = 1e-6


def registered_engine() -> KeyEngine:
    """FB2 registered for AH and LX2 for ESP; FB and LX are not registered."""
    engine = make_engine()
    ok(engine, FB2, register(SaType.AH))
    ok(engine, LX2, register(SaType.ESP))
    return engine


def expires(effects: list[Effect]) -> list[Message]:
    return [s.msg for s in sends(effects) if not s.promisc and s.msg.type == MsgType.EXPIRE]


def the_expire(effects: list[Effect], client: int = FB2) -> Message:
    (msg,) = received(effects, client)
    assert msg.type == MsgType.EXPIRE
    return msg


# ----------------------------------------------------------------------------- larval


def test_larval_sa_is_removed_silently_after_larval_lifetime() -> None:
    engine = registered_engine()
    larval(engine, FB, 0x2000, now=at(0))
    assert engine.next_deadline() == 30.0
    assert engine.tick(at(30 - EPS)) == []
    assert engine.sad.get(0x2000) is not None
    assert engine.tick(at(30)) == []  # no EXPIRE, even to registered sockets
    assert engine.sad.get(0x2000) is None
    assert engine.sad.heads == {}
    assert engine.next_deadline() is None


def test_a_stale_larval_deadline_spares_a_new_sa_of_the_same_spi() -> None:
    """The LARVAL SA's deadline outlives it in the heap; the SA added later with
    its SPI (version 0 again) is not LARVAL and must not be removed by it."""
    engine = registered_engine()
    larval(engine, FB, 0x2000, now=at(0))
    ok(engine, FB, delete(SaType.ESP, 0x2000), at(1))
    mature(engine, FB, 0x2000, now=at(2))
    assert engine.tick(at(40)) == []
    assert engine.sad.get(0x2000) is not None


def test_a_stale_hard_deadline_spares_a_new_sa_of_the_same_spi() -> None:
    engine = registered_engine()
    mature(engine, FB, 0x1000, now=at(0), hard_lt=hard(addtime=10), soft_lt=soft(addtime=5))
    ok(engine, FB, delete(SaType.ESP, 0x1000), at(1))
    mature(engine, FB, 0x1000, now=at(2))  # no lifetimes
    assert engine.tick(at(20)) == []
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.state == SaState.MATURE


def test_larval_lifetime_changed_at_run_time_applies_to_the_next_getspi(engine: KeyEngine) -> None:
    engine.set_knob("net.key.larval_lifetime", 5)
    larval(engine, FB, 0x2000, now=at(10))
    assert engine.next_deadline() == 15.0
    engine.tick(at(15))
    assert engine.sad.get(0x2000) is None


def test_larval_lifetime_shortened_at_run_time_applies_to_existing_larval_sas(engine: KeyEngine) -> None:
    # key_timehandler compares each LARVAL SA's age with the knob's current value.
    larval(engine, FB, 0x2000, now=at(0))
    engine.set_knob("net.key.larval_lifetime", 5)
    assert engine.next_deadline() == 5.0
    engine.tick(at(5))
    assert engine.sad.get(0x2000) is None


def test_larval_lifetime_lengthened_at_run_time_applies_to_existing_larval_sas(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000, now=at(0))
    engine.set_knob("net.key.larval_lifetime", 60)
    engine.tick(at(30))
    assert engine.sad.get(0x2000) is not None
    assert engine.next_deadline() == 60.0
    engine.tick(at(60))
    assert engine.sad.get(0x2000) is None


def test_larval_lifetime_replaced_with_the_whole_knob_set_applies_too(engine: KeyEngine) -> None:
    # pfkeyd sysctl assigns engine.knobs at once (pfkeyd/control.py).
    larval(engine, FB, 0x2000, now=at(0))
    engine.knobs = engine.knobs.set("net.key.larval_lifetime", 7)
    assert engine.next_deadline() == 7.0
    engine.tick(at(7))
    assert engine.sad.get(0x2000) is None


def test_each_larval_sa_has_its_own_deadline(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000, now=at(0))
    larval(engine, FB, 0x2001, now=at(10))
    engine.tick(at(30))
    assert sorted(engine.sad.by_spi) == [0x2001]
    assert engine.next_deadline() == 40.0


# ----------------------------------------------------------------------------- soft


def test_soft_addtime_makes_the_sa_dying_and_sends_expire_soft_to_registered() -> None:
    engine = registered_engine()
    ok(engine, FB, promisc(1))
    mature(
        engine,
        FB,
        0x1000,
        seq=42,
        pid=7,
        sa2=Sa2(Mode.TUNNEL, 0, 3),
        hard_lt=hard(addtime=100),
        soft_lt=soft(addtime=10),
        now=at(0),
    )
    assert engine.next_deadline() == 10.0
    assert engine.tick(at(10 - EPS)) == []
    effects = engine.tick(at(10))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.state == SaState.DYING
    # Every registered socket, whatever satype it registered; nobody else.
    assert targets(effects) == {FB2, LX2}
    msg = the_expire(effects)
    assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno) == (MsgType.EXPIRE, SaType.ESP, 42, 0, 0)
    assert ext_types(msg) == [
        ExtType.SA,
        ExtType.X_SA2,
        ExtType.LIFETIME_CURRENT,
        ExtType.LIFETIME_SOFT,
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
    ]
    assert msg.sa == Sa(0x1000, 0, SaState.DYING, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, 0)
    assert msg.sa2 == Sa2(Mode.TUNNEL, 0, 3)
    assert msg.lifetime_soft == soft(addtime=10)
    assert msg.lifetime_current == Lifetime(ExtType.LIFETIME_CURRENT, 0, 0, at(0).wall, 0)
    assert msg.src is not None and (msg.src.prefixlen, msg.src.proto) == (32, IpProto.ANY)
    assert not any(has_keys(s.msg) for s in sends(effects))
    assert [m for s in sends(effects) if s.promisc for m in [s.msg]] == [msg]


def test_expire_seq_is_the_one_stored_at_getspi(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    larval(engine, FB, 0x2000, seq=7)
    ok(engine, FB, update(spi=0x2000, seq=9, hard_lt=hard(addtime=20), soft_lt=soft(addtime=10)))
    assert the_expire(engine.tick(at(10))).seq == 7


def test_soft_expire_is_sent_once(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=100), soft_lt=soft(addtime=10))
    assert len(expires(engine.tick(at(10)))) == 1
    assert engine.tick(at(11)) == []
    assert engine.tick(at(50)) == []
    assert engine.next_deadline() == 100.0


def test_soft_then_hard_at_their_own_times() -> None:
    engine = registered_engine()
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=20), soft_lt=soft(addtime=10))
    assert the_expire(engine.tick(at(10))).has(ExtType.LIFETIME_SOFT)
    assert engine.next_deadline() == 20.0
    effects = engine.tick(at(20))
    msg = the_expire(effects)
    assert ext_types(msg) == [
        ExtType.SA,
        ExtType.X_SA2,
        ExtType.LIFETIME_CURRENT,
        ExtType.LIFETIME_HARD,
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
    ]
    assert msg.lifetime_hard == hard(addtime=20)
    assert engine.sad.get(0x1000) is None
    assert engine.next_deadline() is None


def test_hard_addtime_deletes_the_sa_and_sends_expire_hard() -> None:
    engine = registered_engine()
    mature(engine, FB, 0x1000, seq=5, hard_lt=hard(addtime=30), soft_lt=soft())
    effects = engine.tick(at(30))
    assert engine.sad.get(0x1000) is None
    assert targets(effects) == {FB2, LX2}
    msg = the_expire(effects, LX2)
    assert (msg.seq, msg.pid, msg.lifetime_hard) == (5, 0, hard(addtime=30))
    assert not has_keys(msg)


def test_a_linux_sa_with_only_a_soft_lifetime_goes_dying_and_stays() -> None:
    engine = registered_engine()
    mature(engine, LX, 0x1000, soft_lt=soft(addtime=10), now=at(0))
    msg = the_expire(engine.tick(at(10)), LX2)
    assert msg.lifetime_soft == soft(addtime=10) and not msg.has(ExtType.LIFETIME_HARD)
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.state == SaState.DYING
    assert engine.next_deadline() is None  # no hard limit: it lives on
    assert engine.tick(at(10_000)) == []


def test_a_linux_sa_with_only_a_hard_lifetime_expires_hard_without_a_soft_expire() -> None:
    engine = registered_engine()
    mature(engine, LX, 0x1000, hard_lt=hard(addtime=30), now=at(0))
    assert engine.next_deadline() == 30.0
    assert engine.tick(at(29)) == []
    msg = the_expire(engine.tick(at(30)), LX2)
    assert msg.lifetime_hard == hard(addtime=30) and not msg.has(ExtType.LIFETIME_SOFT)
    assert engine.sad.get(0x1000) is None


def test_hard_wins_when_soft_and_hard_are_due_at_once() -> None:
    engine = registered_engine()
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=10), soft_lt=soft(addtime=10))
    effects = engine.tick(at(10))
    assert [m.has(ExtType.LIFETIME_HARD) for m in expires(effects)] == [True, True]
    assert engine.sad.get(0x1000) is None


def test_hard_wins_when_a_late_tick_finds_both_limits_passed() -> None:
    # The timer checks HARD first (§7.2): one hard EXPIRE, no soft one.
    engine = registered_engine()
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=20), soft_lt=soft(addtime=10))
    effects = engine.tick(at(25))
    msgs = expires(effects)
    assert msgs and all(m.has(ExtType.LIFETIME_HARD) and not m.has(ExtType.LIFETIME_SOFT) for m in msgs)
    assert engine.sad.get(0x1000) is None
    assert engine.next_deadline() is None


def test_expire_without_registered_sockets_is_not_sent_but_the_sa_dies(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=10), soft_lt=soft(addtime=5))
    assert engine.tick(at(5)) == []
    stored = engine.sad.get(0x1000)
    assert stored is not None and stored.state == SaState.DYING
    assert engine.tick(at(10)) == []
    assert engine.sad.get(0x1000) is None


def test_expire_reaches_registered_sockets_of_both_dialects_in_their_terms() -> None:
    engine = registered_engine()
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=10), soft_lt=soft(addtime=5), extra=[SaReplay(4096)])
    effects = engine.tick(at(5)) + engine.tick(at(10))
    for s in sends(effects):
        for c in s.to:
            encode(s.msg, DIALECT_OF[c])
    fb, lx = received(effects, FB2), received(effects, LX2)
    assert len(fb) == len(lx) == 2
    assert all(m.get(ExtType.X_SA_REPLAY) == SaReplay(4096) for m in fb)
    assert all(not m.has(ExtType.X_SA_REPLAY) for m in lx)


def test_update_of_a_dying_sa_with_new_limits_lets_it_expire_again(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=100), soft_lt=soft(addtime=10), now=at(0))
    engine.tick(at(10))
    ok(engine, FB, lifetimes_update(spi=0x1000, hard_lt=hard(addtime=100), soft_lt=soft(addtime=50)), at(20))
    assert engine.next_deadline() == 50.0
    msg = the_expire(engine.tick(at(50)))
    assert msg.sa is not None and msg.sa.state == SaState.DYING


# ----------------------------------------------------------------------------- usage


def test_usetime_lifetimes_start_at_first_use() -> None:
    engine = registered_engine()
    mature(engine, FB, 0x1000, hard_lt=hard(usetime=20), soft_lt=soft(usetime=10), now=at(0))
    assert engine.next_deadline() is None
    assert engine.tick(at(1000)) == []
    assert engine.report_usage(0x1000, 100, 1, at(1000)) == []
    assert engine.next_deadline() == 1010.0
    engine.report_usage(0x1000, 100, 1, at(1005))  # later use does not move the deadlines
    assert engine.next_deadline() == 1010.0
    msg = the_expire(engine.tick(at(1010)))
    assert msg.lifetime_current == Lifetime(ExtType.LIFETIME_CURRENT, 2, 200, at(0).wall, at(1000).wall)
    assert msg.lifetime_soft == soft(usetime=10)
    assert the_expire(engine.tick(at(1020))).has(ExtType.LIFETIME_HARD)
    assert engine.sad.get(0x1000) is None


def test_usage_is_counted_in_the_current_lifetime(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, now=at(3))
    engine.report_usage(0x1000, 1500, 1, at(4))
    engine.report_usage(0x1000, 500, 2, at(9))
    sa = engine.sad.get(0x1000)
    assert sa is not None
    assert (sa.bytes, sa.packets, sa.first_used, sa.first_used_wall) == (2000, 3, 4.0, at(4).wall)


def test_byte_limits_are_enforced_at_report_usage() -> None:
    engine = registered_engine()
    mature(engine, FB, 0x1000, hard_lt=hard(nbytes=2000), soft_lt=soft(nbytes=1000))
    assert engine.report_usage(0x1000, 1000, 1, at(1)) == []  # "more than" the limit
    effects = engine.report_usage(0x1000, 1, 1, at(2))
    assert the_expire(effects).has(ExtType.LIFETIME_SOFT)
    stored = engine.sad.get(0x1000)
    assert stored is not None and stored.state == SaState.DYING
    assert engine.report_usage(0x1000, 999, 1, at(3)) == []
    effects = engine.report_usage(0x1000, 1, 1, at(4))
    msg = the_expire(effects)
    assert msg.lifetime_hard == hard(nbytes=2000)
    assert msg.lifetime_current is not None and msg.lifetime_current.bytes == 2001
    assert engine.sad.get(0x1000) is None


def test_allocation_limits_are_enforced_at_report_usage() -> None:
    engine = registered_engine()
    mature(engine, FB, 0x1000, hard_lt=hard(allocations=3), soft_lt=soft(allocations=2))
    assert engine.report_usage(0x1000, 10, 2, at(1)) == []
    assert the_expire(engine.report_usage(0x1000, 10, 1, at(2))).has(ExtType.LIFETIME_SOFT)
    assert the_expire(engine.report_usage(0x1000, 10, 1, at(3))).has(ExtType.LIFETIME_HARD)
    assert engine.sad.get(0x1000) is None


def test_hard_wins_when_one_report_passes_both_byte_limits() -> None:
    engine = registered_engine()
    mature(engine, FB, 0x1000, hard_lt=hard(nbytes=2000), soft_lt=soft(nbytes=1000))
    msgs = expires(engine.report_usage(0x1000, 5000, 1, at(1)))
    assert msgs and all(m.has(ExtType.LIFETIME_HARD) for m in msgs)
    assert engine.sad.get(0x1000) is None


def test_report_usage_of_unknown_or_larval_spi_does_nothing(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000)
    assert engine.report_usage(0x9999, 100, 1, at(1)) == []
    assert engine.report_usage(0x2000, 100, 1, at(1)) == []
    sa = engine.sad.get(0x2000)
    assert sa is not None and (sa.bytes, sa.packets, sa.first_used) == (0, 0, None)


# ----------------------------------------------------------------------------- deadlines


def test_next_deadline_is_none_with_nothing_to_do(engine: KeyEngine) -> None:
    assert engine.next_deadline() is None
    mature(engine, FB, 0x1000)
    assert engine.next_deadline() is None
    assert engine.tick(at(10**6)) == []


def test_next_deadline_is_the_earliest_of_all_sas(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=300), soft_lt=soft(addtime=200), now=at(0))
    larval(engine, FB, 0x2000, now=at(100))
    mature(engine, FB, 0x1001, hard_lt=hard(addtime=90), soft_lt=soft(), now=at(50))
    times = []
    while (t := engine.next_deadline()) is not None:
        times.append(t)
        count = len(engine.sad)
        engine.tick(at(t - EPS))
        assert len(engine.sad) == count and engine.next_deadline() == t
        engine.tick(at(t))
    assert times == [130.0, 140.0, 200.0, 300.0]


def test_deleted_sa_leaves_no_deadline(engine: KeyEngine) -> None:
    from tests.engine.conftest import delete

    mature(engine, FB, 0x1000, hard_lt=hard(addtime=10), soft_lt=soft(addtime=5))
    ok(engine, FB, delete(spi=0x1000))
    assert engine.next_deadline() is None


def test_lifetime_deadlines_use_the_monotonic_clock_and_report_the_wall_clock() -> None:
    engine = registered_engine()
    from pfkeyd.effects import Instant

    mature(engine, FB, 0x1000, hard_lt=hard(addtime=10), soft_lt=soft(), now=Instant(100.0, 5_000))
    msg = the_expire(engine.tick(Instant(110.0, 9_999_999)))
    assert msg.lifetime_current is not None and msg.lifetime_current.addtime == 5_000


@pytest.mark.parametrize("dialect", [Dialect.FREEBSD, Dialect.LINUX], ids=["freebsd", "linux"])
def test_larval_sa_from_either_dialect_times_out(dialect: Dialect) -> None:
    engine = make_engine()
    client = FB if dialect is Dialect.FREEBSD else LX
    ok(engine, client, getspi(spirange=(0x2000, 0x2000), s=A))
    engine.tick(at(30))
    assert len(engine.sad) == 0
