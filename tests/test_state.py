"""Durable state, the pure part (pfkeyd.state): the change log, journal records,
snapshots, replay, and the CRC framing's handling of a torn or corrupt tail."""

from __future__ import annotations

import marshal
import random
import zlib
from typing import Any

import pytest

from pfkeyd import state
from pfkeyd.effects import Instant, Send
from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import Knobs
from pfkeyd.wire import Direction, IpProto, Level, Mode, MsgType, PolicyType, SaType
from tests.engine import conftest as sa_helpers
from tests.engine import spd_helpers as sp

#: Wall minus monotonic seconds: exactly representable, so that times survive
#: the conversion bit for bit.
OFFSET = 1_700_000_000.0
CLIENT = sa_helpers.LX


def tables(engine: KeyEngine) -> tuple[Any, ...]:
    """Everything the durable state keeps, in the order that shows in a dump."""
    sad, spd = engine.sad, engine.spd
    heads = tuple((idx, tuple(h.larval.items()), tuple(h.alive.items())) for idx, h in sad.heads.items())
    pairs = tuple((pair, tuple(h.index for h in group)) for pair, group in sad.by_pair.items())
    return (
        dict(sad.by_spi),
        heads,
        pairs,
        tuple(spd.by_id.items()),
        tuple(p.id for p in spd.ordered()),
        engine.allocators(),
        engine.knobs,
    )


def fresh() -> KeyEngine:
    return sa_helpers.make_engine(clients=(CLIENT,))


def at(t: float) -> Instant:
    return Instant(t, int(OFFSET + t))


def random_step(engine: KeyEngine, rng: random.Random, t: float) -> None:
    """One request of a random kind, valid or not, or a tick."""
    spi = rng.randrange(0x1000, 0x1040)
    peer = f"10.0.0.{rng.randrange(2, 6)}"
    kind = rng.randrange(10)
    now = at(t)
    if kind == 0:
        msg = sa_helpers.getspi(SaType.ESP, spirange=(spi, spi), d=peer)
    elif kind in (1, 2):
        hard = sa_helpers.hard(addtime=rng.choice([0, 5, 50])) if rng.random() < 0.5 else None
        msg = sa_helpers.add(
            SaType.ESP, spi, d=peer, hard_lt=hard, soft_lt=sa_helpers.soft(addtime=3) if rng.random() < 0.3 else None
        )
    elif kind == 3:
        msg = sa_helpers.update(SaType.ESP, spi, d=peer)
    elif kind == 4:
        msg = sa_helpers.delete(SaType.ESP, spi, d=peer)
    elif kind in (5, 6):
        requests = [sp.request(level=rng.choice([Level.REQUIRE, Level.UNIQUE]))]
        msg = sp.spd_msg(
            rng.choice([MsgType.X_SPDADD, MsgType.X_SPDUPDATE]),
            "10.0.0.1",
            peer,
            dir=rng.choice([Direction.INBOUND, Direction.OUTBOUND]),
            requests=requests,
            priority=rng.randrange(3),
            hard=sp.hard_lifetime(rng.choice([0, 20])),
        )
    elif kind == 7 and engine.spd.by_id:
        msg = sp.by_id_msg(MsgType.X_SPDDELETE2, rng.choice(list(engine.spd.by_id)))
    elif kind == 8:
        msg = sa_helpers.flush(SaType.ESP) if rng.random() < 0.05 else sa_helpers.get(SaType.ESP, spi, d=peer)
    else:
        engine.tick(now)
        return
    sp.send(engine, CLIENT, msg, now)


def replay(journal: list[bytes], snapshot: list[bytes] | None = None) -> KeyEngine:
    engine = fresh()
    codec = state.Codec(OFFSET)
    counters = engine.allocators()
    knobs: tuple[tuple[str, int], ...] = ()
    if snapshot is not None:
        counters, knobs = state.restore_snapshot(engine.sad, engine.spd, snapshot, codec, "snapshot")
    for rec in journal:
        found = state.scan(rec, 0)
        assert not found.problem and len(found.payloads) == 1
        counters, changed = state.apply_ops(engine.sad, engine.spd, found.payloads[0], codec)
        if changed is not None:
            knobs = changed
    engine.knobs = state.apply_knobs(Knobs(), knobs)[0]
    engine.resume(counters)
    return engine


@pytest.mark.parametrize("seed", range(6))
def test_replaying_the_journal_rebuilds_the_tables_after_every_step(seed: int) -> None:
    rng = random.Random(seed)
    engine = fresh()
    recorder = state.Recorder(engine, Knobs())
    journal: list[bytes] = []
    t = 0.0
    for step in range(160):
        t += rng.choice([0.0, 0.5, 2.0, 7.0])
        random_step(engine, rng, t)
        if step == 80:
            engine.set_knob("net.key.blockacq_count", 3)
        rec = recorder.drain(OFFSET)
        if rec is not None:
            journal.append(rec)
        if step % 20 == 19:
            assert tables(replay(journal)) == tables(engine)
    assert tables(replay(journal)) == tables(engine)
    assert len(engine.sad) and len(engine.spd), "the random steps must leave something to restore"
    # A snapshot of the tables then the rest of the journal gives the same.
    sas, policies = state.table_order(engine.sad, engine.spd)
    snap = b"".join(state.snapshot_records(sas, policies, engine.allocators(), recorder.overrides, OFFSET))
    found = state.scan(snap, 0)
    assert not found.problem
    assert tables(replay([], found.payloads)) == tables(engine)
    # The replayed engine's deadlines fire as the original's do.
    copy = replay(journal)
    for later in (t + 4, t + 30, t + 1000):
        engine.tick(at(later))
        copy.tick(at(later))
        assert tables(copy) == tables(engine)


def test_a_rejected_request_records_nothing() -> None:
    engine = fresh()
    recorder = state.Recorder(engine, Knobs())
    sp.send(engine, CLIENT, sa_helpers.add(SaType.ESP, 0x1000), at(0))
    assert recorder.drain(OFFSET) is not None
    sp.send(engine, CLIENT, sa_helpers.add(SaType.ESP, 0x1000), at(1))  # EEXIST
    sp.send(engine, CLIENT, sa_helpers.get(SaType.ESP, 0x1000), at(1))  # reads only
    assert recorder.drain(OFFSET) is None


def test_one_request_is_one_record() -> None:
    engine = fresh()
    recorder = state.Recorder(engine, Knobs())
    for spi in (0x1000, 0x1001, 0x1002):
        sp.send(engine, CLIENT, sa_helpers.add(SaType.ESP, spi), at(0))
        assert recorder.drain(OFFSET) is not None
    sp.send(engine, CLIENT, sa_helpers.flush(SaType.ESP), at(1))
    rec = recorder.drain(OFFSET)
    assert rec is not None
    ops, _ = marshal.loads(state.scan(rec, 0).payloads[0])
    assert [op[0] for op in ops] == [1, 1, 1]  # three removals, all or nothing


def test_knob_changes_are_recorded_against_the_baseline() -> None:
    baseline = Knobs().set("net.key.esp_keymin", 128)
    engine = KeyEngine(baseline)
    recorder = state.Recorder(engine, baseline)
    assert recorder.drain(OFFSET) is None
    engine.set_knob("net.key.blockacq_count", 3)
    rec = recorder.drain(OFFSET)
    assert rec is not None
    ops, _ = marshal.loads(state.scan(rec, 0).payloads[0])
    assert ops == ((state.CHANGE_KNOBS, (("net.key.blockacq_count", 3),)),)
    # Restored over the same baseline, and a changed value that is no longer
    # allowed is skipped and named.
    knobs, skipped = state.apply_knobs(baseline, [("net.key.blockacq_count", 3), ("net.key.nonesuch", 1)])
    assert knobs.get("net.key.blockacq_count") == 3 and knobs.get("net.key.esp_keymin") == 128
    assert skipped and "net.key.nonesuch" in skipped[0]


def test_times_on_disk_are_wall_clock_times() -> None:
    engine = fresh()
    recorder = state.Recorder(engine, Knobs())
    sp.send(engine, CLIENT, sa_helpers.add(SaType.ESP, 0x1000, hard_lt=sa_helpers.hard(addtime=100)), at(10))
    rec = recorder.drain(OFFSET)
    assert rec is not None
    # Restored by a process whose monotonic clock reads 5000 at wall OFFSET + 60:
    # the SA was added 50 s ago, so it has 50 s left.
    later = KeyEngine()
    state.apply_ops(later.sad, later.spd, state.scan(rec, 0).payloads[0], state.Codec(OFFSET + 60 - 5000))
    later.resume(engine.allocators())
    sa = later.sad.get(0x1000)
    assert sa is not None and sa.created == 5000 - 50
    assert later.next_deadline() == 5000 + 50


def test_scan_stops_at_a_torn_or_corrupt_record() -> None:
    records = [state.frame(marshal.dumps(("r", i), 4)) for i in range(5)]
    data = state.header(state.JOURNAL_MAGIC, 7) + b"".join(records)
    whole = state.scan(data)
    assert (len(whole.payloads), whole.end, whole.problem) == (5, len(data), "")
    end_of_4 = len(data) - len(records[4])
    for cut in range(end_of_4 + 1, len(data)):  # every torn last record
        found = state.scan(data[:cut])
        assert (len(found.payloads), found.end) == (4, end_of_4)
        assert found.problem
    flipped = bytearray(data)
    flipped[end_of_4 - 3] ^= 0x40  # inside record 3's payload
    found = state.scan(bytes(flipped))
    assert (len(found.payloads), found.end) == (3, end_of_4 - len(records[3]))
    assert "fails its CRC" in found.problem
    assert state.read_header(data, state.JOURNAL_MAGIC, "j") == 7
    # The zeros reserved after the last record end the records cleanly; anything
    # but zeros after the end marker is damage.
    reserved = data + bytes(1000)
    assert (len(state.scan(reserved).payloads), state.scan(reserved).problem) == (5, "")
    assert state.scan(reserved).end == len(data)
    junk = data + bytes(100) + b"\x01" + bytes(10)
    found = state.scan(junk)
    assert (len(found.payloads), found.end) == (5, len(data))
    assert "data after the end of the records" in found.problem


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"short", "shorter than its header"),
        (state.header(state.SNAPSHOT_MAGIC, 1), "not a pfkeyd state file"),
        (state.HEADER.pack(state.JOURNAL_MAGIC, 2, 1), "format version 2; this pfkeyd reads version 1"),
    ],
)
def test_a_file_not_of_this_format_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(state.StateError, match=message):
        state.read_header(data, state.JOURNAL_MAGIC, "j")


def test_a_snapshot_without_its_end_or_with_wrong_counts_is_refused() -> None:
    engine = fresh()
    for spi in range(0x1000, 0x1003):
        sp.send(engine, CLIENT, sa_helpers.add(SaType.ESP, spi), at(0))
    sas, policies = state.table_order(engine.sad, engine.spd)
    payloads = state.scan(b"".join(state.snapshot_records(sas, policies, (0, 0, 0), (), OFFSET)), 0).payloads
    with pytest.raises(state.StateError, match="cut short"):
        state.restore_snapshot(fresh().sad, fresh().spd, payloads[:-1], state.Codec(OFFSET), "s")
    bad_end = marshal.dumps(("end", 4, 0), 4)
    with pytest.raises(state.StateError, match="counts 4 SAs"):
        state.restore_snapshot(fresh().sad, fresh().spd, [*payloads[:-1], bad_end], state.Codec(OFFSET), "s")


def test_every_field_of_an_sa_and_a_policy_round_trips() -> None:
    engine = fresh()
    sp.send(
        engine,
        CLIENT,
        sa_helpers.add(
            SaType.ESP,
            0x1000,
            replay=32,
            hard_lt=sa_helpers.hard(addtime=9, nbytes=5),
            soft_lt=sa_helpers.soft(usetime=4),
        ),
        at(1),
    )
    engine.report_usage(0x1000, 100, 2, at(2), replay_seq=7)
    sp.send(
        engine,
        CLIENT,
        sp.spd_msg(
            requests=[sp.request(IpProto.ESP, Mode.TUNNEL, Level.UNIQUE, 0, ("192.0.2.1", "192.0.2.2"))],
            ptype=PolicyType.IPSEC,
            priority=5,
        ),
        at(3),
    )
    codec = state.Codec(OFFSET)
    for sa in engine.sad.by_spi.values():
        assert codec.unsa(marshal.loads(marshal.dumps(codec.sa(sa), 4))) == sa
    for pol in engine.spd.by_id.values():
        assert codec.unsp(marshal.loads(marshal.dumps(codec.sp(pol), 4))) == pol
    assert zlib.crc32(b"") == 0  # the framing's CRC is zlib's


def test_an_sa_that_expired_while_the_daemon_was_down_goes_at_the_first_tick_with_its_hard_expire() -> None:
    engine = fresh()
    recorder = state.Recorder(engine, Knobs())
    sp.send(engine, CLIENT, sa_helpers.add(SaType.ESP, 0x1000, hard_lt=sa_helpers.hard(addtime=100)), at(0))
    sp.send(engine, CLIENT, sa_helpers.add(SaType.ESP, 0x1001, hard_lt=sa_helpers.hard(addtime=1000)), at(0))
    rec = recorder.drain(OFFSET)
    assert rec is not None
    # Restarted 500 s of wall clock later, in a process whose monotonic clock reads 7.
    later = sa_helpers.make_engine(clients=(CLIENT,))
    sp.send(later, CLIENT, sa_helpers.register(SaType.ESP), Instant(7.0, int(OFFSET) + 500))
    state.apply_ops(later.sad, later.spd, state.scan(rec, 0).payloads[0], state.Codec(OFFSET + 500 - 7))
    later.resume(engine.allocators())
    deadline = later.next_deadline()
    assert deadline is not None and deadline <= 7.0  # due at once
    effects = later.tick(Instant(7.0, int(OFFSET) + 500))
    expired = [e.msg for e in effects if isinstance(e, Send) and e.msg.type == MsgType.EXPIRE]
    assert [m.sa.spi for m in expired if m.sa is not None] == [0x1000]
    assert expired[0].lifetime_hard is not None and expired[0].lifetime_hard.addtime == 100
    assert later.sad.get(0x1000) is None
    sa = later.sad.get(0x1001)
    assert sa is not None and later.next_deadline() == pytest.approx(7.0 + 500)  # 1000 s from the add
