"""Usage feeding end to end: packets through the library -> report_usage -> EXPIREs and setkey -D."""

from __future__ import annotations

from pfkeyd.effects import Effect
from pfkeyd.engine import KeyEngine
from pfkeyd.packet import bundle, sa, usage
from pfkeyd.packet.bundle import Bound
from pfkeyd.packet.counters import Counters
from pfkeyd.packet.ip import PacketKnobs
from pfkeyd.packet.runtime import SaRuntime
from pfkeyd.wire import ExtType, Lifetime, MsgType, SaState, SaType
from setkey.dump import DumpOptions, format_sa
from tests.engine.conftest import FB, FB2, add, at, get, hard, make_engine, ok, received, register, soft
from tests.packet.ipkit import udp4

SPI = 0x1000


def engine_with_sa(hard_lt: Lifetime | None = None, soft_lt: Lifetime | None = None) -> KeyEngine:
    engine = make_engine()
    ok(engine, FB2, register(SaType.ESP))
    ok(engine, FB, add(SaType.ESP, SPI, s="192.0.2.1", d="192.0.2.2", hard_lt=hard_lt, soft_lt=soft_lt))
    return engine


def bound_of(engine: KeyEngine) -> Bound:
    record = engine.sad.get(SPI)
    assert record is not None
    t = sa.from_sad(record, engine.knobs)
    return Bound(t, SaRuntime.for_sa(t.window, esn=t.esn, cycseq=t.cycseq))


def send(b: Bound, n: int) -> int:
    """Protect ``n`` packets; the bytes they took on the wire."""
    total = 0
    for _ in range(n):
        wire = bundle.protect([b], udp4(), PacketKnobs(), Counters())
        assert isinstance(wire, bytes)
        total += len(wire)
    return total


def test_pending_reports_differences_and_forgets_dead_sas() -> None:
    a, b = SaRuntime.for_sa(32), SaRuntime.for_sa(0)
    a.bytes, a.packets, a.seq = 100, 2, 2
    reports, seen = usage.pending([(1, a), (2, b)], {})
    assert reports == [usage.Report(1, 100, 2, 2)]
    a.bytes, a.packets, a.seq = 150, 3, 3
    reports, seen = usage.pending([(1, a), (2, b)], seen)
    assert reports == [usage.Report(1, 50, 1, 3)]
    # an SPI reused by a new SA: the new runtime counts from zero
    fresh = SaRuntime.for_sa(32)
    fresh.bytes, fresh.packets = 10, 1
    reports, seen = usage.pending([(1, fresh)], seen)
    assert reports == [usage.Report(1, 10, 1, 0)] and set(seen) == {1}


def test_soft_and_hard_byte_limits_expire_through_the_packet_path() -> None:
    engine = engine_with_sa(hard_lt=hard(nbytes=1000), soft_lt=soft(nbytes=500))
    b = bound_of(engine)
    seen: usage.Reported = {}
    per_packet = send(b, 1)
    reports, seen = usage.pending([(SPI, b.state)], seen)
    assert usage.feed(engine, reports, at(1)) == []
    sent = per_packet
    effects: list[Effect] = []
    while not effects:
        sent += send(b, 1)
        reports, seen = usage.pending([(SPI, b.state)], seen)
        effects = usage.feed(engine, reports, at(2))
    assert sent > 500 and sent - per_packet <= 500
    (msg,) = received(effects, FB2)
    assert msg.type == MsgType.EXPIRE and msg.has(ExtType.LIFETIME_SOFT)
    assert msg.lifetime_current is not None and msg.lifetime_current.bytes == sent
    record = engine.sad.get(SPI)
    assert record is not None and record.state == SaState.DYING
    effects = []
    while not effects:
        sent += send(b, 1)
        reports, seen = usage.pending([(SPI, b.state)], seen)
        effects = usage.feed(engine, reports, at(3))
    (msg,) = received(effects, FB2)
    assert msg.has(ExtType.LIFETIME_HARD) and sent > 1000
    assert engine.sad.get(SPI) is None


def test_allocation_limits_count_packets() -> None:
    engine = engine_with_sa(hard_lt=hard(allocations=3), soft_lt=soft(allocations=2))
    b = bound_of(engine)
    seen: usage.Reported = {}
    kinds = []
    for t in range(4):
        send(b, 1)
        reports, seen = usage.pending([(SPI, b.state)], seen)
        for m in received(usage.feed(engine, reports, at(t)), FB2):
            kinds.append("hard" if m.has(ExtType.LIFETIME_HARD) else "soft")
    assert kinds == ["soft", "hard"]


def test_setkey_dump_shows_current_bytes_and_the_sequence_counter() -> None:
    engine = engine_with_sa()
    b = bound_of(engine)
    sent = send(b, 3)
    reports, _ = usage.pending([(SPI, b.state)], {})
    usage.feed(engine, reports, at(5))
    (reply,) = received(ok(engine, FB, get(SaType.ESP, SPI, s="192.0.2.1", d="192.0.2.2")), FB)
    assert reply.lifetime_current is not None
    assert (reply.lifetime_current.bytes, reply.lifetime_current.allocations) == (sent, 3)
    assert reply.sa2 is not None and reply.sa2.sequence == 3
    text = format_sa(reply, at(5).wall, DumpOptions())
    assert f"\tcurrent: {sent}(bytes)\t" in text
    assert "\tallocated: 3\t" in text
    assert "\tseq=0x00000003 " in text
