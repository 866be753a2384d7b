"""SADB_DUMP (reference §8.1, §8.2, §8.4), SADB_X_PROMISC (§3.11, §1.6) and SADB_ACQUIRE
from a key manager (§3.6, §7.4)."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address

import pytest

from pfkeyd import algorithms
from pfkeyd.engine import KeyEngine, sa_message
from pfkeyd.sad import SecAssoc
from pfkeyd.wire import (
    Dialect,
    ExtType,
    Filter,
    IpProto,
    Message,
    Mode,
    MsgType,
    Prop,
    Sa2,
    SaReplay,
    SaType,
    decode,
    encode,
)
from tests.engine.conftest import (
    A6,
    B6,
    DIALECT_OF,
    FB,
    FB2,
    LX,
    LX2,
    PID,
    T0,
    A,
    B,
    C,
    acquire_error,
    acquire_request,
    add,
    at,
    dump,
    dump_of,
    ext_types,
    fails,
    get,
    has_keys,
    key_auth,
    key_enc,
    larval,
    make_engine,
    mature,
    ok,
    promisc,
    promisc_copies,
    received,
    register,
    reply,
    sends,
    targets,
    update,
)

# ----------------------------------------------------------------------------- DUMP


def test_dump_of_an_empty_sad_replies_enoent(engine: KeyEngine, me: int) -> None:
    assert fails(engine, me, dump()) == errno.ENOENT


def test_dump_of_a_satype_without_sas_replies_enoent(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, SaType.ESP)
    assert fails(engine, FB, dump(SaType.AH)) == errno.ENOENT


def test_dump_with_an_undefined_satype_replies_einval(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000)
    assert fails(engine, FB, Message(MsgType.DUMP, 1)) == errno.EINVAL


def _spis(items: Sequence[SecAssoc]) -> list[int]:
    return [sa.spi for sa in items]


def test_dump_snapshot_is_in_freebsd_order(engine: KeyEngine) -> None:
    # Head 1 (A->B, mode any): two alive SAs and two larval ones.
    mature(engine, FB, 0x1001, now=at(1))
    mature(engine, FB, 0x1002, now=at(2))
    larval(engine, FB, 0x2001, now=at(3))
    larval(engine, FB, 0x2002, now=at(4))
    mature(engine, FB, 0x1003, d=C, now=at(5))  # head 2
    mature(engine, FB, 0x1004, sa2=Sa2(Mode.TUNNEL, 0, 5), now=at(6))  # head 3
    d = dump_of(ok(engine, FB, dump()))
    # Newest head first; in each, larval SAs first, then alive ones, newest first.
    assert _spis(d.items) == [0x1004, 0x1003, 0x2002, 0x2001, 0x1002, 0x1001]


def test_dump_shows_a_completed_larval_sa_as_the_newest_alive(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2001, now=at(0))
    mature(engine, FB, 0x1001, now=at(1))
    mature(engine, FB, 0x1002, now=at(2))
    ok(engine, FB, update(spi=0x2001), at(3))
    assert _spis(dump_of(ok(engine, FB, dump())).items) == [0x2001, 0x1002, 0x1001]


def test_dump_head_emptied_and_refilled_becomes_the_newest(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1001)
    mature(engine, FB, 0x1002, d=C)
    ok(engine, FB, get(spi=0x1001))
    from tests.engine.conftest import delete

    ok(engine, FB, delete(spi=0x1001))
    mature(engine, FB, 0x1003)
    assert _spis(dump_of(ok(engine, FB, dump())).items) == [0x1003, 0x1002]


def test_dump_filters_by_satype(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1001, SaType.ESP)
    mature(engine, FB, 0x1002, SaType.AH)
    larval(engine, FB, 0x2001, SaType.AH)
    mature(engine, FB, 0x1003, SaType.X_IPCOMP)
    assert _spis(dump_of(ok(engine, FB, dump(SaType.AH))).items) == [0x2001, 0x1002]


def test_dump_goes_to_the_requester_with_its_pid_and_is_a_snapshot(engine: KeyEngine, me: int) -> None:
    mature(engine, FB, 0x1001)
    mature(engine, FB, 0x1002)
    d = dump_of(ok(engine, me, dump(seq=7, pid=PID + 5)))
    assert (d.to, d.pid) == (me, PID + 5)
    ok(engine, FB, dump().replace(type=MsgType.FLUSH))
    assert _spis(d.items) == [0x1002, 0x1001]  # the table changed; the snapshot did not


@pytest.mark.parametrize("dialect", [Dialect.FREEBSD, Dialect.LINUX], ids=["freebsd", "linux"])
def test_dump_render_makes_decodable_messages_with_seq_pid_and_keys(dialect: Dialect) -> None:
    engine = make_engine()
    mature(engine, FB, 0x1001, seq=99, sa2=Sa2(Mode.TRANSPORT, 0, 3))
    larval(engine, FB, 0x2001)
    d = dump_of(ok(engine, FB, dump()))
    for seq, item in zip((1, 0), d.items):
        raw = d.render(item, dialect, seq, 777)
        msg = decode(raw, dialect, request=False)
        assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno) == (MsgType.DUMP, SaType.ESP, seq, 777, 0)
        # The same content as GET: the SA's complete description.
        assert msg.exts == sa_message(item, MsgType.GET, 0, 0, dialect).exts
    first = decode(d.render(d.items[1], dialect, 0, 1), dialect, request=False)
    assert first.get(ExtType.KEY_AUTH) == key_auth(32) and first.get(ExtType.KEY_ENCRYPT) == key_enc(16)


def test_dump_render_of_a_big_replay_window_differs_by_dialect(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1001, extra=[SaReplay(4096)])
    (item,) = dump_of(ok(engine, FB, dump())).items
    fb = decode(engine_render(engine, item, Dialect.FREEBSD), Dialect.FREEBSD, request=False)
    lx = decode(engine_render(engine, item, Dialect.LINUX), Dialect.LINUX, request=False)
    assert fb.get(ExtType.X_SA_REPLAY) == SaReplay(4096)
    assert ExtType.X_SA_REPLAY not in ext_types(lx)


def engine_render(engine: KeyEngine, item: SecAssoc, dialect: Dialect) -> bytes:
    d = dump_of(ok(engine, FB, dump()))
    return d.render(item, dialect, 0, 1)


def _filter(s: str, splen: int, d: str, dplen: int) -> Filter:
    return Filter(4, IPv4Address(s), IPv4Address(d), splen, dplen)


def test_dump_linux_filter_restricts_by_prefixes(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1001, s="10.0.0.1", d="10.1.0.1")
    mature(engine, FB, 0x1002, s="10.0.0.2", d="10.2.0.1")
    mature(engine, FB, 0x1003, s="192.0.2.1", d="10.1.0.2")
    mature(engine, FB, 0x1004, s=A6, d=B6)
    d = dump_of(ok(engine, LX, dump(extra=[_filter("10.0.0.0", 8, "10.1.0.0", 16)])))
    assert sorted(_spis(d.items)) == [0x1001]
    d = dump_of(ok(engine, LX, dump(extra=[_filter("0.0.0.0", 0, "10.0.0.0", 8)])))
    assert sorted(_spis(d.items)) == [0x1001, 0x1002, 0x1003]


def test_dump_linux_filter_for_ipv6(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1001, s=A6, d=B6)
    mature(engine, FB, 0x1002)
    flt = Filter(6, IPv6Address("2001:db8::"), IPv6Address("2001:db8::"), 32, 32)
    assert _spis(dump_of(ok(engine, LX, dump(extra=[flt]))).items) == [0x1001]


def test_dump_linux_filter_matching_nothing_replies_enoent(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1001)
    assert fails(engine, LX, dump(extra=[_filter("192.168.0.0", 16, "0.0.0.0", 0)])) == errno.ENOENT


@pytest.mark.parametrize(("splen", "dplen"), [(128, 0), (0, 128), (200, 8)])
def test_dump_linux_filter_prefix_of_128_or_more_replies_einval(engine: KeyEngine, splen: int, dplen: int) -> None:
    mature(engine, FB, 0x1001)
    assert fails(engine, LX, dump(extra=[_filter("10.0.0.0", splen, "10.0.0.0", dplen)])) == errno.EINVAL


# ----------------------------------------------------------------------------- X_PROMISC


def test_promisc_on_and_off_sets_the_sockets_mode(engine: KeyEngine, me: int) -> None:
    ok(engine, me, promisc(1))
    assert engine.clients[me].promisc
    ok(engine, me, promisc(0))
    assert not engine.clients[me].promisc


def test_promisc_echoes_the_request_to_all(engine: KeyEngine, me: int) -> None:
    request = promisc(1, seq=4, pid=PID)
    effects = ok(engine, me, request)
    assert reply(effects, me) == request
    assert targets(effects) == {FB, FB2, LX, LX2}
    # Now promiscuous, the requester also gets a copy (FreeBSD delivers it twice, §3.11).
    assert promisc_copies(effects, me) == [request]


@pytest.mark.parametrize(
    "satype", [SaType.AH, SaType.ESP, SaType.X_IPCOMP, SaType.X_TCPSIGNATURE], ids=lambda s: s.name
)
def test_promisc_with_another_satype_replies_einval(engine: KeyEngine, satype: SaType) -> None:
    assert fails(engine, FB, promisc(satype)) == errno.EINVAL


def test_promisc_with_an_rfc_satype_replies_eopnotsupp(engine: KeyEngine) -> None:
    assert fails(engine, FB, promisc(SaType.RSVP)) == errno.EOPNOTSUPP


def test_promisc_mode_ends_with_client_closed(engine: KeyEngine) -> None:
    ok(engine, FB2, promisc(1))
    engine.client_closed(FB2)
    assert promisc_copies(ok(engine, FB, add())) == []


def test_promisc_listener_gets_a_keyless_copy_of_every_message_sent(engine: KeyEngine) -> None:
    ok(engine, FB2, promisc(1))
    ok(engine, LX2, promisc(1))
    ok(engine, LX, register(SaType.ESP))
    for msg in (add(), get(), dump().replace(type=MsgType.FLUSH), register(SaType.AH)):
        effects = ok(engine, FB, msg)
        copies = [s for s in sends(effects) if s.promisc]
        assert copies, msg
        for s in copies:
            assert not has_keys(s.msg) and not s.reply
            assert set(s.to) <= {FB2, LX2}
        assert targets(effects, promisc=True) == {FB2, LX2}


def test_promisc_copies_can_be_said_in_each_listeners_dialect(engine: KeyEngine) -> None:
    ok(engine, FB2, promisc(1))
    ok(engine, LX2, promisc(1))
    ok(engine, LX, register(SaType.AH))
    effects = ok(engine, FB, register(SaType.ESP))  # freebsd lists name ChaCha, Linux has no number for it
    effects += ok(engine, FB2, acquire_request())  # so do freebsd ESP proposals
    for s in sends(effects):
        for c in s.to:
            encode(s.msg, DIALECT_OF[c])


# ----------------------------------------------------------------------------- ACQUIRE from a key manager


def test_acquire_request_sends_an_acquire_to_registered_sockets(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    ok(engine, LX2, register(SaType.AH))
    effects = ok(engine, FB, acquire_request(seq=5))
    assert targets(effects) == {FB2, LX2}  # not the requester, which is not registered
    assert not any(s.reply for s in sends(effects))
    for c in (FB2, LX2):
        (msg,) = received(effects, c)
        assert (msg.type, msg.satype, msg.pid, msg.errno) == (MsgType.ACQUIRE, SaType.ESP, 0, 0)
        assert msg.seq == engine.acquires.by_seq[msg.seq].seq
        assert ext_types(msg) == [ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST, ExtType.PROPOSAL]
        assert msg.src is not None and msg.src.prefixlen == 32 and msg.src.proto == IpProto.ANY
        prop = msg.proposal
        assert isinstance(prop, Prop) and prop.replay == 32
        assert prop.combs == algorithms.proposal(IpProto.ESP, engine.knobs, DIALECT_OF[c])


def test_acquire_request_with_a_reqid_carries_sa2(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    effects = ok(engine, FB, acquire_request(sa2=Sa2(Mode.TUNNEL, 0, 9)))
    (msg,) = received(effects, FB2)
    assert msg.sa2 == Sa2(Mode.TUNNEL, 0, 9)


def test_acquire_request_with_no_registered_socket_sends_nothing(engine: KeyEngine) -> None:
    assert ok(engine, FB, acquire_request()) == []


@pytest.mark.parametrize("missing", [ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST, ExtType.PROPOSAL], ids=lambda t: t.name)
def test_acquire_request_without_a_required_extension_replies_einval(engine: KeyEngine, missing: ExtType) -> None:
    ok(engine, FB2, register(SaType.ESP))
    assert fails(engine, FB, acquire_request(omit=[missing])) == errno.EINVAL


def test_acquire_request_for_an_existing_sa_index_replies_eexist(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    mature(engine, FB, 0x1000)
    assert fails(engine, FB, acquire_request()) == errno.EEXIST
    ok(engine, FB, acquire_request(d=C))


def test_acquire_request_is_paced(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    first = ok(engine, FB, acquire_request())
    (msg,) = received(first, FB2)
    suppressed = [ok(engine, FB, acquire_request()) for _ in range(engine.knobs.blockacq_count + 1)]
    assert all(e == [] for e in suppressed)
    (again,) = received(ok(engine, FB, acquire_request()), FB2)
    assert again.seq == msg.seq


def test_acquire_error_report_resets_pacing_without_a_reply(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    (msg,) = received(ok(engine, FB, acquire_request(), at(0)), FB2)
    for _ in range(5):
        ok(engine, FB, acquire_request(), at(1))
    assert engine.next_deadline() == 20.0  # net.key.blockacq_lifetime after the record's creation
    assert ok(engine, FB2, acquire_error(msg.seq, errno.ETIMEDOUT), at(7)) == []
    rec = engine.acquires.by_seq[msg.seq]
    assert (rec.count, rec.created) == (0, 7.0)
    assert engine.next_deadline() == 27.0


@pytest.mark.parametrize(("seq", "err"), [(0, errno.ETIMEDOUT), (1, 0)])
def test_acquire_header_without_seq_or_errno_is_ignored_silently(engine: KeyEngine, seq: int, err: int) -> None:
    ok(engine, FB2, register(SaType.ESP))
    ok(engine, FB, acquire_request(), at(0))
    ok(engine, FB, acquire_request(), at(1))
    before = [(r.seq, r.count, r.created) for r in engine.acquires.by_index.values()]
    assert ok(engine, FB2, acquire_error(seq, err), at(5)) == []
    assert [(r.seq, r.count, r.created) for r in engine.acquires.by_index.values()] == before


def test_acquire_error_report_for_an_unknown_seq_is_ignored(engine: KeyEngine) -> None:
    assert ok(engine, FB2, acquire_error(12345, errno.ETIMEDOUT)) == []


def test_acquire_record_is_forgotten_after_blockacq_lifetime(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    (msg,) = received(ok(engine, FB, acquire_request(), T0), FB2)
    engine.tick(at(20))
    assert len(engine.acquires) == 0
    (again,) = received(ok(engine, FB, acquire_request(), at(21)), FB2)
    assert again.seq == msg.seq + 1


def test_acquire_then_getspi_update_by_the_key_manager(engine: KeyEngine) -> None:
    ok(engine, LX2, register(SaType.ESP))
    (acq,) = received(ok(engine, FB, acquire_request(s=A, d=B)), LX2)
    from tests.engine.conftest import getspi

    got = reply(ok(engine, LX2, getspi(seq=acq.seq)), LX2).sa
    assert got is not None
    spi = got.spi
    assert len(engine.acquires) == 0
    ok(engine, LX2, update(spi=spi, seq=acq.seq))
    stored = engine.sad.get(spi)
    assert stored is not None and stored.state == 1
