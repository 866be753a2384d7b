"""SADB_X_SPDADD, SADB_X_SPDUPDATE and SADB_X_SPDSETIDX (reference §3.12, §4.12, §4.13, §6.3).

Each check of key_spdadd/key_msg2sp is exercised with its errno, in the kernel's
order, through the wire codec of the sending client's dialect.  Every refused request
must leave the SPD exactly as it was.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from pfkeyd.engine import KeyEngine
from pfkeyd.wire import (
    UNKNOWN,
    Address,
    Dialect,
    ExtType,
    IpProto,
    IpsecRequest,
    Lifetime,
    Message,
    MsgType,
    PolicyScope,
    PolicyType,
    RawSockAddr,
    SaType,
    SockAddr,
    decode,
)
from tests.engine.conftest import PID, T0, ext_types, make_engine, reply
from tests.engine.spd_helpers import (
    AH,
    ALONE,
    DIALECTS,
    ESP,
    FREEBSD,
    FWD,
    IN,
    IPCOMP,
    KM,
    LINUX,
    ME,
    OTHER,
    OUT,
    REQUIRE,
    TRANSPORT,
    TUNNEL,
    UNIQUE,
    USE,
    add_policy,
    by_id_msg,
    delivered,
    errno_of,
    hard_lifetime,
    register_km,
    request,
    send,
    spd_msg,
    spd_state,
    tunnel,
)

ADD_TYPES = (MsgType.X_SPDADD, MsgType.X_SPDUPDATE, MsgType.X_SPDSETIDX)
#: The destination of the outbound policy _populated() holds (priority 5); spd_msg()'s
#: default selector (10.0.0.1 -> 10.0.0.2) is free.
TAKEN = "10.0.0.3"
CAPTURE = Path(__file__).resolve().parents[2] / "examples" / "captures" / "linux-setkey-spdadd.hex"


def _populated(dialect: Dialect = FREEBSD) -> KeyEngine:
    """An engine holding a few policies, so that a refused request has something to damage."""
    eng = make_engine(clients={ME: dialect})
    add_policy(eng, src="10.0.0.1", dst=TAKEN, dir=OUT, priority=5)
    add_policy(eng, src="10.0.0.2", dst="10.0.0.1", dir=IN)
    add_policy(eng, src="10.1.0.0", dst="10.2.0.0", splen=16, dplen=16, ptype=PolicyType.DISCARD)
    return eng


def assert_refused(eng: KeyEngine, msg: Message, expected: int, client: int = ME) -> None:
    """``msg`` is answered with ``expected`` and the SPD does not change."""
    before = spd_state(eng)
    assert errno_of(send(eng, client, msg)) == expected
    assert spd_state(eng) == before


def _stored(eng: KeyEngine, policy_id: int) -> Message:
    """The policy as SPDGET reports it to ME."""
    return reply(send(eng, ME, by_id_msg(MsgType.X_SPDGET, policy_id)))


# ------------------------------------------------------------------ the reply


@pytest.mark.parametrize("mtype", ADD_TYPES)
def test_spdadd_reply_goes_to_all_with_policy_hard_src_dst_in_order(mtype: int) -> None:
    eng = make_engine(clients={ME: FREEBSD, OTHER: LINUX, KM: FREEBSD})
    register_km(eng, KM)
    hard = hard_lifetime(3600, 600)
    effects = send(eng, ME, spd_msg(mtype, hard=hard, priority=0x80000000, seq=77))
    msg = reply(effects)
    assert msg.type == mtype and msg.satype == 0 and msg.errno == 0
    assert (msg.seq, msg.pid) == (77, PID)
    assert ext_types(msg) == [ExtType.X_POLICY, ExtType.LIFETIME_HARD, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST]
    pol = msg.policy
    assert pol is not None
    assert pol.id != 0 and pol.id in eng.spd.by_id
    assert pol.priority == 0x80000000
    assert msg.lifetime_hard == hard
    # ALL: the requester (its reply) and every other socket, registered or not.
    seen = delivered(eng, effects)
    assert sorted(seen) == [ME, OTHER, KM]
    for copy in seen.values():
        assert copy.policy is not None and copy.policy.id == pol.id
        assert copy.policy.priority == 0x80000000


def test_spdadd_reply_without_lifetime_is_policy_src_dst() -> None:
    eng = make_engine(clients=ALONE)
    msg = reply(send(eng, ME, spd_msg()))
    assert ext_types(msg) == [ExtType.X_POLICY, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST]


def test_spdadd_reply_does_not_echo_a_soft_lifetime() -> None:
    eng = make_engine(clients=ALONE)
    msg = spd_msg(hard=hard_lifetime(60))
    msg = msg.replace(exts=(*msg.exts, Lifetime(ExtType.LIFETIME_SOFT, 0, 0, 30, 0)))
    out = reply(send(eng, ME, msg))
    assert ExtType.LIFETIME_SOFT not in ext_types(out)
    assert out.lifetime_hard == hard_lifetime(60)


def test_spdadd_reply_echoes_selector_addresses_as_sent() -> None:
    eng = make_engine(clients=ALONE)
    msg = reply(
        send(
            eng,
            ME,
            spd_msg(src="10.1.2.0", dst="10.9.0.0", splen=24, dplen=16, proto=IpProto.TCP, sport=1234, dport=443),
        )
    )
    assert msg.src is not None and msg.dst is not None
    src, dst = msg.src.addr, msg.dst.addr
    assert isinstance(src, SockAddr) and isinstance(dst, SockAddr)
    assert (str(src.ip), msg.src.prefixlen, msg.src.proto, src.port) == ("10.1.2.0", 24, 6, 1234)
    assert (str(dst.ip), msg.dst.prefixlen, msg.dst.proto, dst.port) == ("10.9.0.0", 16, 6, 443)


def test_linux_setkey_spdadd_capture_gets_priority_echoed() -> None:
    # real-clients.md §0 item 5, §3.2: setkey compares the priority it sent with the reply's.
    data = bytes.fromhex(
        "".join(line.split("#")[0] for line in CAPTURE.read_text().splitlines() if not line.startswith("#"))
    )
    assert len(data) == 96
    eng = make_engine(clients={ME: LINUX, OTHER: LINUX})
    effects = eng.handle(ME, decode(data, LINUX), T0)
    msg = reply(effects)
    assert (msg.type, msg.seq, msg.pid) == (MsgType.X_SPDADD, 0, 0x3455)
    assert msg.policy is not None
    assert msg.policy.priority == 0x80000000
    assert msg.policy.id != 0
    assert msg.policy.requests == (IpsecRequest(ESP, TRANSPORT, REQUIRE, 0),)
    assert sorted(delivered(eng, effects)) == [ME, OTHER]


@pytest.mark.parametrize("mtype", ADD_TYPES)
def test_spdadd_stores_the_policy_as_sent(mtype: int) -> None:
    eng = make_engine(clients=ALONE)
    reqs = (request(ESP, TRANSPORT, REQUIRE), tunnel("192.0.2.1", "192.0.2.2", USE, proto=AH))
    pid = add_policy(
        eng,
        mtype=mtype,
        src="10.0.0.0",
        splen=8,
        dst="10.1.0.0",
        dplen=16,
        proto=IpProto.UDP,
        dport=53,
        priority=7,
        requests=reqs,
        dir=IN,
    )
    sp = eng.spd.by_id[pid]
    assert (sp.dir, sp.type, sp.priority, sp.requests) == (IN, PolicyType.IPSEC, 7, reqs)
    sel = sp.selector
    assert (str(sel.src.ip), sel.src_len, str(sel.dst.ip), sel.dst_len, sel.proto, sel.dst.port) == (
        "10.0.0.0",
        8,
        "10.1.0.0",
        16,
        17,
        53,
    )
    assert sp.scope == PolicyScope.GLOBAL


# ------------------------------------------------------- checks and their errnos


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("missing", [ExtType.X_POLICY, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST])
def test_spdadd_without_a_required_extension_replies_einval(dialect: Dialect, missing: ExtType) -> None:
    eng = _populated(dialect)
    assert_refused(eng, spd_msg(omit=[missing]), errno.EINVAL)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("direction", [0, UNKNOWN | 4, UNKNOWN | 200])
def test_spdadd_with_a_bad_direction_replies_einval(dialect: Dialect, direction: int) -> None:
    eng = _populated(dialect)
    assert_refused(eng, spd_msg(dir=direction), errno.EINVAL)


def test_spdadd_fwd_from_a_freebsd_socket_replies_einval() -> None:
    # FreeBSD has no IPSEC_DIR_FWD: wire direction 3 is invalid there (§6.1).
    eng = _populated(FREEBSD)
    assert_refused(eng, spd_msg(dir=UNKNOWN | 3), errno.EINVAL)


def test_spdadd_fwd_from_a_linux_socket_is_stored() -> None:
    eng = make_engine(clients={ME: LINUX})
    pid = add_policy(eng, dir=FWD)
    assert eng.spd.by_id[pid].dir == FWD
    got = _stored(eng, pid).policy
    assert got is not None and got.dir == FWD


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("ptype", [PolicyType.ENTRUST, PolicyType.BYPASS, 5, 0xFFFF])
def test_spdadd_of_a_socket_only_or_unknown_policy_type_replies_einval(dialect: Dialect, ptype: int) -> None:
    eng = _populated(dialect)
    assert_refused(eng, spd_msg(ptype=ptype, requests=()), errno.EINVAL)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_spdadd_ipsec_without_requests_replies_einval(dialect: Dialect) -> None:
    eng = _populated(dialect)
    assert_refused(eng, spd_msg(requests=()), errno.EINVAL)


@pytest.mark.parametrize("ptype", [PolicyType.DISCARD, PolicyType.NONE])
def test_spdadd_discard_and_none_need_no_requests(ptype: int) -> None:
    eng = make_engine(clients=ALONE)
    pid = add_policy(eng, ptype=ptype)
    assert eng.spd.by_id[pid].type == ptype and eng.spd.by_id[pid].requests == ()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_spdadd_with_mixed_address_families_replies_einval(dialect: Dialect) -> None:
    eng = _populated(dialect)
    assert_refused(eng, spd_msg(src="10.0.0.1", dst="2001:db8::1"), errno.EINVAL)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_spdadd_with_a_prefix_longer_than_the_family_replies_einval(dialect: Dialect) -> None:
    eng = _populated(dialect)
    assert_refused(eng, spd_msg(splen=33), errno.EINVAL)
    assert_refused(eng, spd_msg(src="2001:db8::1", dst="2001:db8::2", dplen=129), errno.EINVAL)


def test_spdadd_with_an_unsupported_address_family_replies_eafnosupport() -> None:
    eng = _populated(FREEBSD)
    unix = RawSockAddr(1, bytes(14))  # AF_UNIX, sa_len 16
    msg = spd_msg()
    msg = msg.replace(exts=(msg.exts[0], Address(ExtType.ADDRESS_SRC, unix, 0), Address(ExtType.ADDRESS_DST, unix, 0)))
    assert_refused(eng, msg, errno.EAFNOSUPPORT)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_spdadd_with_different_upper_layer_protocols_replies_einval(dialect: Dialect) -> None:
    eng = _populated(dialect)
    msg = spd_msg(proto=IpProto.TCP)
    src, dst = msg.src, msg.dst
    assert src is not None and dst is not None
    msg = msg.replace(exts=(msg.exts[0], src, Address(ExtType.ADDRESS_DST, dst.addr, dst.prefixlen, IpProto.UDP)))
    assert_refused(eng, msg, errno.EINVAL)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_spdadd_satype_other_than_unspec_replies_einval(dialect: Dialect) -> None:
    eng = _populated(dialect)
    assert_refused(eng, spd_msg(satype=SaType.ESP), errno.EINVAL)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("proto", [0, IpProto.TCP, IpProto.UDP, 255])
def test_spdadd_request_for_an_unknown_protocol_replies_eprotonosupport(dialect: Dialect, proto: int) -> None:
    eng = _populated(dialect)
    assert_refused(eng, spd_msg(requests=[request(proto)]), errno.EPROTONOSUPPORT)


@pytest.mark.parametrize("proto", [ESP, AH, IPCOMP])
def test_spdadd_accepts_esp_ah_and_ipcomp_requests(proto: int) -> None:
    eng = make_engine(clients=ALONE)
    pid = add_policy(eng, requests=[request(proto)])
    assert eng.spd.by_id[pid].requests[0].proto == proto


@pytest.mark.parametrize(
    ("dialect", "mode"),
    [
        (FREEBSD, 0),
        (FREEBSD, 3),
        (FREEBSD, UNKNOWN | 9),
        (LINUX, 0),
        (LINUX, UNKNOWN | 9),
    ],
)
def test_spdadd_request_with_a_bad_mode_replies_einval(dialect: Dialect, mode: int) -> None:
    eng = _populated(dialect)
    assert_refused(eng, spd_msg(requests=[request(mode=mode)]), errno.EINVAL)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("level", [4, 255])
def test_spdadd_request_with_a_bad_level_replies_einval(dialect: Dialect, level: int) -> None:
    eng = _populated(dialect)
    assert_refused(eng, spd_msg(requests=[request(level=level)]), errno.EINVAL)


@pytest.mark.parametrize(("dialect", "limit", "beyond"), [(FREEBSD, 4, errno.EINVAL), (LINUX, 6, errno.ELOOP)])
def test_spdadd_request_count_limit_per_dialect(dialect: Dialect, limit: int, beyond: int) -> None:
    # IPSEC_MAXREQ (FreeBSD, EINVAL) and XFRM_MAX_DEPTH (Linux, ELOOP), §4.13.
    eng = _populated(dialect)
    assert_refused(eng, spd_msg(src="10.5.0.1", requests=[request(AH)] * (limit + 1)), beyond)
    pid = add_policy(eng, src="10.5.0.1", requests=[request(AH)] * limit)
    assert len(eng.spd.by_id[pid].requests) == limit


@pytest.mark.parametrize("dialect", DIALECTS)
def test_spdadd_tunnel_request_without_endpoints_replies_einval(dialect: Dialect) -> None:
    eng = _populated(dialect)
    # FreeBSD's key_msg2sp refuses it; Linux's parser already does (endpoints are
    # what makes a Linux tunnel-mode request).
    assert_refused(eng, spd_msg(requests=[IpsecRequest(ESP, TUNNEL, REQUIRE)]), errno.EINVAL)


def test_spdadd_transport_request_may_carry_endpoints_on_freebsd() -> None:
    eng = make_engine(clients=ALONE)
    reqs = [request(ESP, TRANSPORT, REQUIRE, endpoints=("10.0.0.1", "10.0.0.2"))]
    pid = add_policy(eng, requests=reqs)
    assert eng.spd.by_id[pid].requests[0].dst is not None


def test_spdadd_tunnel_endpoints_of_mixed_families_replies_einval() -> None:
    eng = _populated(FREEBSD)
    assert_refused(eng, spd_msg(requests=[tunnel("192.0.2.1", "2001:db8::2")]), errno.EINVAL)


# ------------------------------------------------------------ order of the checks


def test_spdadd_checks_direction_before_requests() -> None:
    eng = _populated(FREEBSD)
    assert_refused(eng, spd_msg(dir=0, requests=[request(IpProto.TCP)]), errno.EINVAL)


def test_spdadd_checks_type_before_duplicates() -> None:
    eng = _populated(FREEBSD)
    assert_refused(eng, spd_msg(dst=TAKEN, ptype=PolicyType.BYPASS, requests=(), priority=5), errno.EINVAL)


def test_spdadd_checks_missing_requests_before_duplicates() -> None:
    eng = _populated(FREEBSD)
    assert_refused(eng, spd_msg(dst=TAKEN, requests=()), errno.EINVAL)


def test_spdadd_checks_duplicates_before_parsing_requests() -> None:
    # key_spdadd looks the selector up before key_msg2sp parses the requests.
    eng = _populated(FREEBSD)
    assert_refused(eng, spd_msg(dst=TAKEN, requests=[request(IpProto.TCP)]), errno.EEXIST)


def test_spdadd_address_family_check_precedes_every_handler_check() -> None:
    # key_parse refuses the sockaddr pair (§1.3 step 6) before key_spdadd runs.
    eng = _populated(FREEBSD)
    unix = RawSockAddr(1, bytes(14))
    msg = spd_msg(dir=0, requests=())
    msg = msg.replace(exts=(msg.exts[0], Address(ExtType.ADDRESS_SRC, unix, 0), Address(ExtType.ADDRESS_DST, unix, 0)))
    assert_refused(eng, msg, errno.EAFNOSUPPORT)


def test_spdadd_requests_are_parsed_in_order_proto_then_mode() -> None:
    eng = _populated(FREEBSD)
    assert_refused(eng, spd_msg(src="10.7.0.1", requests=[request(IpProto.TCP, mode=0)]), errno.EPROTONOSUPPORT)
    assert_refused(eng, spd_msg(src="10.7.0.1", requests=[request(ESP, mode=0), request(IpProto.TCP)]), errno.EINVAL)
    assert_refused(
        eng, spd_msg(src="10.7.0.1", requests=[request(ESP), request(IpProto.TCP, mode=0)]), errno.EPROTONOSUPPORT
    )


def test_spdadd_counts_requests_as_it_parses_them_on_freebsd() -> None:
    # key_msg2sp checks IPSEC_MAXREQ when it reaches the fifth request, after the
    # first four have been validated one by one.
    eng = _populated(FREEBSD)
    first_bad = [request(IpProto.TCP)] + [request(AH)] * 4
    fifth_bad = [request(AH)] * 4 + [request(IpProto.TCP)]
    assert_refused(eng, spd_msg(src="10.7.0.1", requests=first_bad), errno.EPROTONOSUPPORT)
    assert_refused(eng, spd_msg(src="10.7.0.1", requests=fifth_bad), errno.EINVAL)


def test_spdadd_counts_requests_as_it_parses_them_on_linux() -> None:
    # parse_ipsecrequest refuses the seventh request with ELOOP whatever it holds.
    eng = _populated(LINUX)
    seventh_bad = [request(AH)] * 6 + [request(IpProto.TCP)]
    assert_refused(eng, spd_msg(src="10.7.0.1", requests=seventh_bad), errno.ELOOP)


# ------------------------------------------------------------ duplicates, update


@pytest.mark.parametrize("mtype", [MsgType.X_SPDADD, MsgType.X_SPDSETIDX])
@pytest.mark.parametrize("priority", [5, 0, 0x80000000])
def test_spdadd_same_selector_replies_eexist_whatever_the_priority(mtype: int, priority: int) -> None:
    eng = _populated(FREEBSD)  # holds 10.0.0.1 -> TAKEN out, priority 5
    assert_refused(eng, spd_msg(mtype, dst=TAKEN, priority=priority), errno.EEXIST)


def test_spdadd_same_selector_with_another_type_replies_eexist() -> None:
    eng = _populated(FREEBSD)
    assert_refused(eng, spd_msg(dst=TAKEN, ptype=PolicyType.DISCARD), errno.EEXIST)


@pytest.mark.parametrize(
    "change",
    [
        {"dir": IN},
        {"splen": 24},
        {"dplen": 31},
        {"proto": IpProto.TCP},
        {"sport": 1},
        {"dport": 80},
        {"src": "10.0.0.3"},
    ],
)
def test_spdadd_selectors_differing_in_one_identity_field_coexist(change: dict[str, Any]) -> None:
    eng = make_engine(clients=ALONE)
    first = add_policy(eng)
    second = add_policy(eng, **change)
    assert first != second and len(eng.spd) == 2


def test_spdadd_host_bits_beyond_the_prefix_are_part_of_the_identity() -> None:
    # §6.2: exact identity compares the full sockaddrs, not the masked networks.
    eng = make_engine(clients=ALONE)
    add_policy(eng, src="10.0.0.1", splen=24)
    add_policy(eng, src="10.0.0.2", splen=24)
    assert len(eng.spd) == 2


def test_spdadd_ipv6_scope_id_is_part_of_the_identity() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, src="fe80::1%1", dst="fe80::2%1")
    add_policy(eng, src="fe80::1%2", dst="fe80::2%2")
    assert len(eng.spd) == 2
    assert errno_of(send(eng, ME, spd_msg(src="fe80::1%2", dst="fe80::2%2"))) == errno.EEXIST


def test_spdupdate_replaces_the_policy_with_a_new_id() -> None:
    eng = make_engine(clients={ME: FREEBSD, OTHER: LINUX})
    old = add_policy(eng, priority=5)
    effects = send(eng, ME, spd_msg(MsgType.X_SPDUPDATE, ptype=PolicyType.DISCARD, priority=9))
    new_pol = reply(effects).policy
    assert new_pol is not None
    new = new_pol.id
    assert new not in (0, old)
    assert list(eng.spd.by_id) == [new]
    assert (eng.spd.by_id[new].type, eng.spd.by_id[new].priority) == (PolicyType.DISCARD, 9)
    assert errno_of(send(eng, ME, by_id_msg(MsgType.X_SPDGET, old))) == errno.ENOENT
    assert sorted(delivered(eng, effects)) == [ME, OTHER]


def test_spdupdate_puts_the_replacement_after_policies_of_equal_priority() -> None:
    eng = make_engine(clients=ALONE)
    a = add_policy(eng, dst="10.0.0.2", priority=1)
    b = add_policy(eng, dst="10.0.0.3", priority=1)
    reply(send(eng, ME, spd_msg(MsgType.X_SPDUPDATE, dst="10.0.0.2", priority=1)))
    order = [sp.id for sp in eng.spd.ordered()]
    assert order[0] == b and a not in order and len(order) == 2


def test_spdupdate_of_an_unknown_selector_adds_it() -> None:
    eng = make_engine(clients=ALONE)
    reply(send(eng, ME, spd_msg(MsgType.X_SPDUPDATE)))
    assert len(eng.spd) == 1


def test_spdupdate_refused_keeps_the_old_policy() -> None:
    eng = _populated(FREEBSD)
    assert_refused(
        eng, spd_msg(MsgType.X_SPDUPDATE, dst=TAKEN, priority=5, requests=[request(IpProto.TCP)]), errno.EPROTONOSUPPORT
    )


def test_spdsetidx_is_handled_exactly_like_spdadd() -> None:
    eng = make_engine(clients=ALONE)
    pid = add_policy(eng, mtype=MsgType.X_SPDSETIDX, requests=[request(ESP, TRANSPORT, UNIQUE)])
    sp = eng.spd.by_id[pid]
    assert sp.requests[0].reqid == 0x4001  # the full request list is kept, not only the index
    assert errno_of(send(eng, ME, spd_msg(MsgType.X_SPDSETIDX))) == errno.EEXIST


# ---------------------------------------------------------------------- reqids


def test_unique_requests_without_reqid_get_reqids_from_0x4001() -> None:
    eng = make_engine(clients=ALONE)
    out = reply(send(eng, ME, spd_msg(requests=[request(ESP, level=UNIQUE), request(AH, level=UNIQUE)])))
    assert out.policy is not None
    assert [r.reqid for r in out.policy.requests] == [0x4001, 0x4002]
    out2 = reply(send(eng, ME, spd_msg(dst="10.0.0.9", requests=[request(level=UNIQUE)])))
    assert out2.policy is not None and out2.policy.requests[0].reqid == 0x4003
    stored = _stored(eng, out.policy.id).policy
    assert stored is not None and [r.reqid for r in stored.requests] == [0x4001, 0x4002]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_unique_reqid_above_manual_range_is_replaced(dialect: Dialect) -> None:
    eng = make_engine(clients={ME: dialect})
    out = reply(send(eng, ME, spd_msg(requests=[request(level=UNIQUE, reqid=0x4000)])))
    assert out.policy is not None and out.policy.requests[0].reqid == 0x4001


def test_unique_manual_reqid_is_kept() -> None:
    eng = make_engine(clients=ALONE)
    out = reply(
        send(eng, ME, spd_msg(requests=[request(level=UNIQUE, reqid=0x3FFF), request(AH, level=UNIQUE, reqid=1)]))
    )
    assert out.policy is not None and [r.reqid for r in out.policy.requests] == [0x3FFF, 1]
    assert eng.spd.by_id[out.policy.id].requests[0].reqid == 0x3FFF


def test_non_unique_reqid_is_stored_as_zero_but_echoed_in_the_reply() -> None:
    # §6.3: for levels other than UNIQUE the reqid is ignored (stored as 0); the
    # reply is the request's X_POLICY with only the rewritten reqids changed (§3.12).
    eng = make_engine(clients=ALONE)
    out = reply(send(eng, ME, spd_msg(requests=[request(level=REQUIRE, reqid=7), request(AH, level=UNIQUE)])))
    assert out.policy is not None
    assert [r.reqid for r in out.policy.requests] == [7, 0x4001]
    stored = _stored(eng, out.policy.id).policy
    assert stored is not None and [r.reqid for r in stored.requests] == [0, 0x4001]


def test_reqid_allocation_does_not_happen_for_refused_duplicates() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, requests=[request(level=UNIQUE)])
    assert errno_of(send(eng, ME, spd_msg(requests=[request(level=UNIQUE)]))) == errno.EEXIST
    out = reply(send(eng, ME, spd_msg(dst="10.0.0.7", requests=[request(level=UNIQUE)])))
    assert out.policy is not None and out.policy.requests[0].reqid == 0x4002


# ----------------------------------------------------------------- policy ids


def test_policy_ids_are_unique_and_non_zero() -> None:
    eng = make_engine(clients={ME: LINUX})
    ids = []
    for i in range(120):
        direction = (IN, OUT, FWD)[i % 3]
        ids.append(add_policy(eng, dst=f"10.0.{i // 250}.{i % 250}", dir=direction))
    # replace and delete some, add more: ids stay unique among the living
    for i in range(0, 120, 7):
        reply(send(eng, ME, spd_msg(MsgType.X_SPDUPDATE, dst=f"10.0.0.{i}", dir=(IN, OUT, FWD)[i % 3])))
    for pid in ids[1::5]:
        if pid in eng.spd.by_id:
            reply(send(eng, ME, by_id_msg(MsgType.X_SPDDELETE2, pid)))
    for i in range(40):
        ids.append(add_policy(eng, dst=f"10.9.0.{i}"))
    live = [sp.id for sp in eng.spd.ordered()]
    assert 0 not in live
    assert len(live) == len(set(live)) == len(eng.spd)
    assert len(ids) == len(set(ids))  # never reused either


def test_policy_id_in_the_reply_finds_the_policy() -> None:
    eng = make_engine(clients=ALONE)
    for d in ("10.0.0.2", "10.0.0.3"):
        pid = add_policy(eng, dst=d)
        got = _stored(eng, pid)
        assert got.dst is not None and isinstance(got.dst.addr, SockAddr) and str(got.dst.addr.ip) == d
