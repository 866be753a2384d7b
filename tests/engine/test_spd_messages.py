"""SPDDELETE, SPDDELETE2, SPDGET, SPDFLUSH, SPDDUMP and SPDEXPIRE
(reference §3.13 to §3.18, §6.6, §8.3)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from pfkeyd.effects import Dump, Send
from pfkeyd.engine import KeyEngine
from pfkeyd.errors import EncodeError
from pfkeyd.wire import (
    Dialect,
    ExtType,
    IpProto,
    Lifetime,
    Message,
    MsgType,
    Policy,
    PolicyScope,
    PolicyType,
    SaType,
    SockAddr,
    decode,
)
from tests.engine.conftest import PID, T0, at, ext_types, make_engine, reply, sends
from tests.engine.spd_helpers import (
    AH,
    ALONE,
    DIALECTS,
    ESP,
    FREEBSD,
    FWD,
    IN,
    KM,
    LINUX,
    ME,
    OTHER,
    OUT,
    UNIQUE,
    add_policy,
    by_id_msg,
    delivered,
    errno_of,
    flow,
    hard_lifetime,
    on_wire,
    recipients,
    register_km,
    request,
    send,
    spd_msg,
    spd_state,
    tunnel,
)


def assert_refused(eng: KeyEngine, msg: Message, expected: int) -> None:
    before = spd_state(eng)
    assert errno_of(send(eng, ME, msg)) == expected
    assert spd_state(eng) == before


def _delete_msg(**kw: Any) -> Message:
    """setkey's spddelete (real-clients §3.3): X_POLICY of 16 bytes, type DISCARD, no requests."""
    kw.setdefault("ptype", PolicyType.DISCARD)
    return spd_msg(MsgType.X_SPDDELETE, **kw)


# ------------------------------------------------------------------ SPDDELETE


def test_spddelete_removes_the_exact_selector_and_replies_to_all() -> None:
    eng = make_engine(clients={ME: FREEBSD, OTHER: LINUX})
    pid = add_policy(eng, proto=IpProto.TCP, dport=22, splen=24)
    keep = add_policy(eng, dir=IN)
    effects = send(eng, ME, _delete_msg(proto=IpProto.TCP, dport=22, splen=24, seq=3))
    msg = reply(effects)
    assert (msg.type, msg.seq, msg.pid, msg.errno) == (MsgType.X_SPDDELETE, 3, PID, 0)
    assert ext_types(msg) == [ExtType.X_POLICY, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST]
    assert msg.policy is not None and msg.policy.id == pid
    assert list(eng.spd.by_id) == [keep]
    seen = delivered(eng, effects)
    assert sorted(seen) == [ME, OTHER]
    broadcast = seen[OTHER].policy
    assert broadcast is not None and broadcast.id == pid


def test_spddelete_ignores_type_priority_and_requests() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, priority=3, requests=[request(ESP), request(AH)])
    reply(send(eng, ME, _delete_msg(priority=99)))
    assert len(eng.spd) == 0


@pytest.mark.parametrize(
    "change",
    [
        {"dir": IN},
        {"splen": 31},
        {"dplen": 0},
        {"proto": IpProto.UDP},
        {"sport": 500},
        {"dport": 500},
        {"src": "10.0.0.9"},
    ],
)
def test_spddelete_of_a_near_miss_replies_einval_and_deletes_nothing(change: dict[str, object]) -> None:
    # FreeBSD answers EINVAL for a missing policy (Linux: ENOENT), §3.13.
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    assert_refused(eng, _delete_msg(**change), errno.EINVAL)


def test_spddelete_on_an_empty_spd_replies_einval() -> None:
    eng = make_engine(clients=ALONE)
    assert_refused(eng, _delete_msg(), errno.EINVAL)


@pytest.mark.parametrize("bad", [{"dir": 0}, {"ptype": PolicyType.BYPASS}, {"ptype": PolicyType.ENTRUST}])
def test_spddelete_checks_direction_and_type_like_spdadd(bad: dict[str, object]) -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    assert_refused(eng, _delete_msg(**bad), errno.EINVAL)


@pytest.mark.parametrize("missing", [ExtType.X_POLICY, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST])
def test_spddelete_without_a_required_extension_replies_einval(missing: ExtType) -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    assert_refused(eng, _delete_msg(omit=[missing]), errno.EINVAL)


# ----------------------------------------------------------------- SPDDELETE2


def test_spddelete2_removes_by_id_and_echoes_the_policy_extension() -> None:
    eng = make_engine(clients={ME: FREEBSD, OTHER: FREEBSD})
    pid = add_policy(eng)
    other = add_policy(eng, dir=IN)
    request_msg = by_id_msg(MsgType.X_SPDDELETE2, pid, seq=9)
    effects = send(eng, ME, request_msg)
    msg = reply(effects)
    assert (msg.type, msg.seq, msg.pid) == (MsgType.X_SPDDELETE2, 9, PID)
    assert msg.exts == request_msg.exts
    assert list(eng.spd.by_id) == [other]
    assert recipients(effects) == [ME, OTHER]


def test_spddelete2_of_an_unknown_id_replies_einval() -> None:
    eng = make_engine(clients=ALONE)
    pid = add_policy(eng)
    assert_refused(eng, by_id_msg(MsgType.X_SPDDELETE2, pid + 1), errno.EINVAL)
    assert_refused(eng, by_id_msg(MsgType.X_SPDDELETE2, 0), errno.EINVAL)


def test_spddelete2_without_policy_extension_replies_einval() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    assert_refused(eng, Message(MsgType.X_SPDDELETE2, 0, 0, PID), errno.EINVAL)


def test_spddelete2_satype_must_be_unspec() -> None:
    eng = make_engine(clients=ALONE)
    pid = add_policy(eng)
    assert_refused(eng, by_id_msg(MsgType.X_SPDDELETE2, pid).replace(satype=SaType.AH), errno.EINVAL)


# --------------------------------------------------------------------- SPDGET


def test_spdget_replies_to_the_requester_only() -> None:
    eng = make_engine(clients={ME: FREEBSD, OTHER: FREEBSD, KM: LINUX})
    register_km(eng, KM)
    pid = add_policy(eng)
    effects = send(eng, ME, by_id_msg(MsgType.X_SPDGET, pid, seq=5))
    assert recipients(effects) == [ME]
    msg = reply(effects)
    assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno) == (MsgType.X_SPDGET, 0, 5, PID, 0)


def test_spdget_of_an_unknown_id_replies_enoent() -> None:
    eng = make_engine(clients=ALONE)
    pid = add_policy(eng)
    assert_refused(eng, by_id_msg(MsgType.X_SPDGET, pid + 8), errno.ENOENT)


def test_spdget_freebsd_message_is_src_dst_policy_with_global_scope() -> None:
    eng = make_engine(clients=ALONE)
    reqs = [request(ESP, level=UNIQUE), tunnel("192.0.2.1", "192.0.2.2", proto=AH)]
    pid = add_policy(
        eng, src="10.1.0.0", splen=16, dst="10.2.0.9", proto=IpProto.UDP, dport=53, priority=11, requests=reqs
    )
    msg = on_wire(reply(send(eng, ME, by_id_msg(MsgType.X_SPDGET, pid))), FREEBSD)
    assert ext_types(msg) == [ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST, ExtType.X_POLICY]
    assert msg.src is not None and msg.dst is not None and msg.policy is not None
    src, dst = msg.src.addr, msg.dst.addr
    assert isinstance(src, SockAddr) and isinstance(dst, SockAddr)
    assert (str(src.ip), msg.src.prefixlen, msg.src.proto, src.port) == ("10.1.0.0", 16, 17, 0)
    assert (str(dst.ip), msg.dst.prefixlen, msg.dst.proto, dst.port) == ("10.2.0.9", 32, 17, 53)
    pol = msg.policy
    assert (pol.type, pol.dir, pol.id, pol.priority, pol.scope) == (PolicyType.IPSEC, OUT, pid, 11, PolicyScope.GLOBAL)
    assert [(r.proto, r.mode, r.level, r.reqid) for r in pol.requests] == [(ESP, 1, UNIQUE, 0x4001), (AH, 2, 2, 0)]
    assert pol.requests[1].src is not None and str(pol.requests[1].src) == "192.0.2.1"


def test_spdget_linux_message_always_carries_lifetimes_before_the_policy() -> None:
    eng = make_engine(clients={ME: LINUX})
    pid = add_policy(eng, dir=FWD)
    msg = on_wire(reply(send(eng, ME, by_id_msg(MsgType.X_SPDGET, pid))), LINUX)
    assert ext_types(msg) == [
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
        ExtType.LIFETIME_HARD,
        ExtType.LIFETIME_SOFT,
        ExtType.LIFETIME_CURRENT,
        ExtType.X_POLICY,
    ]
    assert msg.policy is not None and (msg.policy.dir, msg.policy.id, msg.policy.scope) == (FWD, pid, 0)


def test_spdget_freebsd_shows_lifetimes_only_for_a_policy_with_a_lifetime() -> None:
    # key_setdumpsp: CURRENT and HARD only when sp->lifetime != 0 (§6.6, §8.3).
    eng = make_engine(clients=ALONE)
    with_lifetime = add_policy(eng, dst="10.0.0.2", hard=hard_lifetime(3600, 60), now=at(5))
    only_validtime = add_policy(eng, dst="10.0.0.3", hard=hard_lifetime(0, 60))
    none = add_policy(eng, dst="10.0.0.4")
    msg = reply(send(eng, ME, by_id_msg(MsgType.X_SPDGET, with_lifetime)))
    assert ext_types(msg) == [
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
        ExtType.X_POLICY,
        ExtType.LIFETIME_CURRENT,
        ExtType.LIFETIME_HARD,
    ]
    assert msg.lifetime_hard == Lifetime(ExtType.LIFETIME_HARD, 0, 0, 3600, 60)
    assert msg.lifetime_current is not None and msg.lifetime_current.addtime == at(5).wall
    for pid in (only_validtime, none):
        msg = reply(send(eng, ME, by_id_msg(MsgType.X_SPDGET, pid)))
        assert ext_types(msg) == [ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST, ExtType.X_POLICY]


def test_spdget_current_lifetime_reports_creation_and_last_use() -> None:
    # key_spdadd sets lastused = created; a lookup moves it (§6.6).
    eng = make_engine(clients=ALONE)
    pid = add_policy(eng, hard=hard_lifetime(3600), now=at(1))
    cur = reply(send(eng, ME, by_id_msg(MsgType.X_SPDGET, pid))).lifetime_current
    assert cur is not None and (cur.addtime, cur.usetime) == (at(1).wall, at(1).wall)
    eng.lookup(OUT, flow(), at(40))
    cur = reply(send(eng, ME, by_id_msg(MsgType.X_SPDGET, pid))).lifetime_current
    assert cur is not None and (cur.addtime, cur.usetime) == (at(1).wall, at(40).wall)


# ------------------------------------------------------------------- SPDFLUSH


def test_spdflush_removes_every_policy_and_replies_header_to_all() -> None:
    eng = make_engine(clients={ME: LINUX, OTHER: FREEBSD})
    for d in (IN, OUT, FWD):
        add_policy(eng, dir=d)
    add_policy(eng, dst="2001:db8::2", src="2001:db8::1", hard=hard_lifetime(10))
    effects = send(eng, ME, Message(MsgType.X_SPDFLUSH, 0, 12, PID))
    msg = reply(effects)
    assert (msg.type, msg.satype, msg.seq, msg.pid, msg.exts) == (MsgType.X_SPDFLUSH, 0, 12, PID, ())
    assert recipients(effects) == [ME, OTHER]
    assert len(eng.spd) == 0
    assert errno_of(send(eng, ME, Message(MsgType.X_SPDDUMP, 0, 0, PID))) == errno.ENOENT
    assert eng.tick(at(11)) == []  # the flushed policy's lifetime no longer fires


def test_spdflush_of_an_empty_spd_succeeds() -> None:
    eng = make_engine(clients=ALONE)
    assert reply(send(eng, ME, Message(MsgType.X_SPDFLUSH, 0, 0, PID))).exts == ()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_spdflush_with_any_extension_replies_einval(dialect: Dialect) -> None:
    eng = make_engine(clients={ME: dialect})
    add_policy(eng)
    assert_refused(eng, Message(MsgType.X_SPDFLUSH, 0, 0, PID, exts=(Policy(PolicyType.NONE, OUT),)), errno.EINVAL)


def test_spdflush_with_an_sa_satype_replies_einval() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    assert_refused(eng, Message(MsgType.X_SPDFLUSH, SaType.ESP, 0, PID), errno.EINVAL)


# -------------------------------------------------------------------- SPDDUMP


def _dump(eng: KeyEngine, satype: int = 0, pid: int = PID) -> Dump:
    effects = send(eng, ME, Message(MsgType.X_SPDDUMP, satype, 0, pid))
    assert len(effects) == 1 and isinstance(effects[0], Dump), effects
    return effects[0]


def test_spddump_of_an_empty_spd_replies_enoent() -> None:
    eng = make_engine(clients=ALONE)
    assert errno_of(send(eng, ME, Message(MsgType.X_SPDDUMP, 0, 0, PID))) == errno.ENOENT


def test_spddump_lists_inbound_outbound_then_forward_each_by_priority_then_age() -> None:
    eng = make_engine(clients={ME: LINUX})
    spec = [  # (name, dir, priority) in insertion order
        ("o-p5-a", OUT, 5),
        ("i-p9", IN, 9),
        ("f-p1", FWD, 1),
        ("o-p1", OUT, 1),
        ("i-p0", IN, 0),
        ("o-p5-b", OUT, 5),
        ("i-p9-b", IN, 9),
        ("o-hi", OUT, 0xFFFFFFFF),
        ("o-p0", OUT, 0),
        ("f-p0", FWD, 0),
    ]
    ids = {}
    for n, (name, d, prio) in enumerate(spec):
        ids[name] = add_policy(eng, dst=f"10.0.1.{n}", dir=d, priority=prio)
    dump = _dump(eng)
    expected = ["i-p0", "i-p9", "i-p9-b", "o-p0", "o-p1", "o-p5-a", "o-p5-b", "o-hi", "f-p0", "f-p1"]
    assert [sp.id for sp in dump.items] == [ids[name] for name in expected]
    assert dump.to == ME and dump.pid == PID


@pytest.mark.parametrize("scope", [0, 1])
def test_spddump_scope_any_or_global_lists_the_policies(scope: int) -> None:
    # satype 0 means every scope (0xff), 1 the global policies (§3.17).
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    assert len(_dump(eng, scope).items) == 1


@pytest.mark.parametrize("scope", [3, 5, 9, 255])
def test_spddump_with_an_invalid_scope_replies_einval(scope: int) -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    assert errno_of(send(eng, ME, Message(MsgType.X_SPDDUMP, scope, 0, PID))) == errno.EINVAL


def test_spddump_scope_2_and_4_find_nothing() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    for scope in (2, 4):
        assert errno_of(send(eng, ME, Message(MsgType.X_SPDDUMP, scope, 0, PID))) == errno.ENOENT


@pytest.mark.parametrize("dialect", DIALECTS)
def test_spddump_render_produces_decodable_spddump_messages(dialect: Dialect) -> None:
    eng = make_engine(clients={ME: dialect})
    add_policy(eng, requests=[request(ESP, level=UNIQUE), tunnel()], hard=hard_lifetime(100, 10), priority=3)
    add_policy(eng, src="2001:db8::", splen=64, dst="2001:db8:1::1", dir=IN, ptype=PolicyType.DISCARD)
    add_policy(eng, proto=IpProto.ICMP, sport=8, dst="10.0.0.8", ptype=PolicyType.NONE)
    dump = _dump(eng, pid=777)
    n = len(dump.items)
    for i, sp in enumerate(dump.items):
        seq = n - 1 - i
        msg = decode(dump.render(sp, dialect, seq, dump.pid), dialect, request=False)
        assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno) == (MsgType.X_SPDDUMP, 0, seq, 777, 0)
        assert msg.policy is not None and msg.policy.id == sp.id
        assert msg.policy.requests == sp.requests
        assert msg.src is not None and msg.src.addr == sp.selector.src and msg.src.prefixlen == sp.selector.src_len
        assert msg.dst is not None and msg.dst.addr == sp.selector.dst and msg.dst.proto == sp.selector.proto


def test_spddump_render_of_a_forward_policy_cannot_be_carried_by_freebsd() -> None:
    eng = make_engine(clients={ME: LINUX})
    add_policy(eng, dir=FWD)
    dump = _dump(eng)
    assert decode(dump.render(dump.items[0], LINUX, 0, PID), LINUX, request=False).policy is not None
    with pytest.raises(EncodeError):
        dump.render(dump.items[0], FREEBSD, 0, PID)


def test_spddump_is_a_snapshot_of_the_moment_of_the_request() -> None:
    eng = make_engine(clients=ALONE)
    first = add_policy(eng)
    dump = _dump(eng)
    reply(send(eng, ME, by_id_msg(MsgType.X_SPDDELETE2, first)))
    add_policy(eng, dst="10.0.0.5")
    assert [sp.id for sp in dump.items] == [first]


def test_spddump_does_not_change_the_spd() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    before = spd_state(eng)
    _dump(eng)
    assert spd_state(eng) == before


# ----------------------------------------------------------------- SPDEXPIRE


def _expiring(**kw: Any) -> tuple[KeyEngine, int]:
    eng = make_engine(clients={ME: FREEBSD, OTHER: FREEBSD, KM: LINUX})
    register_km(eng, KM)
    pid = add_policy(eng, **kw)
    return eng, pid


def test_policy_lifetime_ends_with_spdexpire_to_registered_only() -> None:
    eng, pid = _expiring(hard=hard_lifetime(30), requests=[request(ESP, level=UNIQUE)], priority=4)
    assert eng.next_deadline() == pytest.approx(T0.mono + 30)
    assert eng.tick(at(29)) == []
    assert pid in eng.spd.by_id
    effects = eng.tick(at(31))
    assert pid not in eng.spd.by_id
    assert recipients(effects) == [KM]
    assert all(s.msg.type == MsgType.X_SPDEXPIRE for s in sends(effects, promisc=False))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_spdexpire_message_contents(dialect: Dialect) -> None:
    # §6.6: satype 0, seq 0, pid 0; CURRENT, HARD, SRC, DST, the full X_POLICY.
    eng = make_engine(clients={KM: dialect, ME: FREEBSD})
    register_km(eng, KM)
    reqs = [request(ESP, level=UNIQUE), tunnel(proto=AH)]
    pid = add_policy(
        eng,
        hard=hard_lifetime(30, 20),
        requests=reqs,
        priority=4,
        now=at(2),
        src="10.3.0.0",
        splen=16,
        proto=IpProto.TCP,
        dport=25,
    )
    eng.lookup(OUT, flow("10.3.1.1", "10.0.0.2", IpProto.TCP, 4000, 25), at(12))
    effects = eng.tick(at(33))
    msg = delivered(eng, effects)[KM]
    assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno, msg.reserved) == (MsgType.X_SPDEXPIRE, 0, 0, 0, 0, 0)
    assert ext_types(msg) == [
        ExtType.LIFETIME_CURRENT,
        ExtType.LIFETIME_HARD,
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
        ExtType.X_POLICY,
    ]
    cur, hard = msg.lifetime_current, msg.lifetime_hard
    assert cur is not None and (cur.addtime, cur.usetime) == (at(2).wall, at(12).wall)
    assert hard is not None and (hard.addtime, hard.usetime) == (30, 20)
    assert msg.src is not None and isinstance(msg.src.addr, SockAddr)
    assert (str(msg.src.addr.ip), msg.src.prefixlen, msg.src.proto) == ("10.3.0.0", 16, 6)
    assert msg.dst is not None and isinstance(msg.dst.addr, SockAddr) and msg.dst.addr.port == 25
    assert msg.policy is not None
    assert (msg.policy.id, msg.policy.priority, msg.policy.dir) == (pid, 4, OUT)
    assert [r.reqid for r in msg.policy.requests] == [0x4001, 0]


def test_policy_validtime_counts_from_the_last_use() -> None:
    eng, pid = _expiring(hard=hard_lifetime(0, 10))
    eng.lookup(OUT, flow(), at(5))
    assert eng.tick(at(12)) == [] and pid in eng.spd.by_id  # last used at 5: valid until 15
    eng.lookup(OUT, flow(), at(14))
    assert eng.tick(at(23)) == [] and pid in eng.spd.by_id  # last used at 14: valid until 24
    effects = eng.tick(at(25))
    assert pid not in eng.spd.by_id
    msg = delivered(eng, effects)[KM]
    assert msg.lifetime_current is not None and msg.lifetime_current.usetime == at(14).wall


def test_policy_validtime_without_use_counts_from_creation() -> None:
    eng, pid = _expiring(hard=hard_lifetime(0, 10))
    assert eng.tick(at(9)) == []
    eng.tick(at(11))
    assert pid not in eng.spd.by_id


def test_policy_lifetime_is_not_extended_by_use() -> None:
    eng, pid = _expiring(hard=hard_lifetime(20, 100))
    eng.lookup(OUT, flow(), at(19))
    eng.tick(at(21))
    assert pid not in eng.spd.by_id


def test_policy_expiry_without_registered_sockets_is_silent() -> None:
    eng = make_engine(clients={ME: FREEBSD, OTHER: FREEBSD})
    pid = add_policy(eng, hard=hard_lifetime(5))
    assert eng.tick(at(6)) == []
    assert pid not in eng.spd.by_id


def test_expired_policy_no_longer_matches() -> None:
    eng, _ = _expiring(hard=hard_lifetime(5), ptype=PolicyType.DISCARD)
    assert eng.lookup(OUT, flow(), at(1))[0].action == "discard"
    eng.tick(at(6))
    decision, _ = eng.lookup(OUT, flow(), at(7))
    assert decision.default and decision.action == "pass"


def test_spdupdate_without_lifetime_cancels_the_old_policys_expiry() -> None:
    eng, _ = _expiring(hard=hard_lifetime(10))
    new = reply(send(eng, ME, spd_msg(MsgType.X_SPDUPDATE), at(5))).policy
    assert new is not None
    assert eng.tick(at(11)) == []
    assert list(eng.spd.by_id) == [new.id]


def test_deleted_policy_never_expires() -> None:
    eng, pid = _expiring(hard=hard_lifetime(10))
    reply(send(eng, ME, by_id_msg(MsgType.X_SPDDELETE2, pid)))
    assert eng.tick(at(11)) == []


def test_policies_expire_in_deadline_order_within_one_tick() -> None:
    eng, first = _expiring(hard=hard_lifetime(10))
    second = add_policy(eng, dst="10.0.0.3", hard=hard_lifetime(5), now=at(1))
    third = add_policy(eng, dst="10.0.0.4", hard=hard_lifetime(50))
    effects = eng.tick(at(20))
    gone = [s.msg.policy.id for s in sends(effects, promisc=False) if isinstance(s, Send) and s.msg.policy is not None]
    assert gone == [second, first]
    assert list(eng.spd.by_id) == [third]
