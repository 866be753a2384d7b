"""Policy lookup: order and priority, selectors, the index, levels, the default policy
and the choice of SA (reference §6.2, §6.4, §7.4 step 1, §9.1, §9.2)."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfkeyd.engine import Decision, KeyEngine
from pfkeyd.spd import Flow, SecPolicy, Selector, Spd
from pfkeyd.wire import (
    CompAlg,
    Dialect,
    ExtType,
    IpProto,
    IpsecRequest,
    Lifetime,
    Message,
    MsgType,
    PolicyType,
    Sa,
    Sa2,
    SaState,
    SaType,
    SockAddr,
)
from tests.engine.conftest import PID, at, make_engine, reply, sends
from tests.engine.spd_helpers import (
    AH,
    ALONE,
    DEFAULT,
    ESP,
    FREEBSD,
    FWD,
    IN,
    IPCOMP,
    KM,
    LINUX,
    ME,
    OUT,
    REQUIRE,
    TRANSPORT,
    TUNNEL,
    UNIQUE,
    USE,
    add_policy,
    add_sa,
    address,
    flow,
    new_larval,
    register_km,
    request,
    send,
    tunnel,
)

DISCARD, NONE, IPSEC = PolicyType.DISCARD, PolicyType.NONE, PolicyType.IPSEC


def matched(eng: KeyEngine, f: Flow, direction: int = OUT) -> int | None:
    """The id of the policy a lookup picks (None: the default policy)."""
    decision, _ = eng.lookup(direction, f, at(1))
    return None if decision.policy is None else decision.policy.id


# ------------------------------------------------------------ order, priority


def test_lower_priority_value_wins_whatever_the_insertion_order() -> None:
    eng = make_engine(clients=ALONE)
    broad = add_policy(eng, dst="10.0.0.0", dplen=8, priority=20, ptype=DISCARD)
    narrow = add_policy(eng, dst="10.0.0.2", priority=10, ptype=NONE)
    assert matched(eng, flow()) == narrow
    eng2 = make_engine(clients=ALONE)
    narrow2 = add_policy(eng2, dst="10.0.0.2", priority=30, ptype=NONE)
    broad2 = add_policy(eng2, dst="10.0.0.0", dplen=8, priority=20, ptype=DISCARD)
    assert matched(eng2, flow()) == broad2
    assert broad and narrow2  # both installed


def test_equal_priorities_match_in_insertion_order() -> None:
    eng = make_engine(clients=ALONE)
    first = add_policy(eng, dst="10.0.0.0", dplen=24, priority=7, ptype=DISCARD)
    add_policy(eng, dst="10.0.0.2", priority=7, ptype=NONE)
    add_policy(eng, src="10.0.0.0", splen=8, dst="0.0.0.0", dplen=0, priority=7)
    assert matched(eng, flow()) == first


def test_priority_compares_as_unsigned_32_bits() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, dst="10.0.0.2", priority=0xFFFFFFFF, ptype=DISCARD)
    mid = add_policy(eng, dst="10.0.0.0", dplen=8, priority=0x80000000, ptype=NONE)
    assert matched(eng, flow()) == mid
    low = add_policy(eng, dst="0.0.0.0", dplen=0, priority=0, ptype=DISCARD)
    assert matched(eng, flow()) == low


def test_the_first_match_wins_not_the_most_specific() -> None:
    eng = make_engine(clients=ALONE)
    catch_all = add_policy(eng, src="0.0.0.0", splen=0, dst="0.0.0.0", dplen=0, ptype=NONE)
    add_policy(eng, proto=IpProto.TCP, dport=80, ptype=DISCARD)
    assert matched(eng, flow(proto=IpProto.TCP, dport=80)) == catch_all


def test_direction_selects_the_list() -> None:
    eng = make_engine(clients={ME: LINUX})
    out = add_policy(eng, dir=OUT)
    inbound = add_policy(eng, dir=IN, src="10.0.0.1", dst="10.0.0.2", ptype=NONE)
    fwd = add_policy(eng, dir=FWD, ptype=DISCARD)
    assert matched(eng, flow(), OUT) == out
    assert matched(eng, flow(), IN) == inbound
    assert matched(eng, flow(), FWD) == fwd


# ------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("dst", "dplen", "hits"),
    [
        ("10.0.0.0", 24, ["10.0.0.2", "10.0.0.255"]),
        ("10.0.0.128", 25, ["10.0.0.200"]),
        ("0.0.0.0", 0, ["10.0.0.2", "192.0.2.1"]),
        ("10.0.0.2", 32, ["10.0.0.2"]),
    ],
)
def test_ipv4_prefixes_select_networks(dst: str, dplen: int, hits: list[str]) -> None:
    eng = make_engine(clients=ALONE)
    pid = add_policy(eng, src="0.0.0.0", splen=0, dst=dst, dplen=dplen)
    net = ipaddress.ip_network(f"{dst}/{dplen}")
    for d in ["10.0.0.2", "10.0.0.255", "10.0.0.200", "10.0.1.2", "192.0.2.1", "10.0.0.1"]:
        expect = pid if ipaddress.ip_address(d) in net else None
        assert matched(eng, flow("10.9.9.9", d)) == expect, d
        if d in hits:
            assert expect == pid


def test_ipv6_prefixes_select_networks() -> None:
    eng = make_engine(clients=ALONE)
    pid = add_policy(eng, src="2001:db8:1::", splen=48, dst="2001:db8:2:3::", dplen=64)
    assert matched(eng, flow("2001:db8:1:ffff::1", "2001:db8:2:3::99")) == pid
    assert matched(eng, flow("2001:db8:1:ffff::1", "2001:db8:2:4::99")) is None
    assert matched(eng, flow("2001:db8:9::1", "2001:db8:2:3::99")) is None


def test_an_ipv4_policy_never_matches_an_ipv6_flow() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, src="0.0.0.0", splen=0, dst="0.0.0.0", dplen=0)
    assert matched(eng, flow("::1", "::2")) is None
    add_policy(eng, src="::", splen=0, dst="::", dplen=0)
    assert matched(eng, flow("10.0.0.1", "10.0.0.2")) is not None


def test_ports_zero_is_any_and_nonzero_must_equal() -> None:
    eng = make_engine(clients=ALONE)
    web = add_policy(eng, proto=IpProto.TCP, dport=443)
    assert matched(eng, flow(proto=IpProto.TCP, sport=50000, dport=443)) == web
    assert matched(eng, flow(proto=IpProto.TCP, sport=50000, dport=80)) is None
    dns = add_policy(eng, proto=IpProto.UDP, sport=53, dst="10.0.0.3")
    assert matched(eng, flow(dst="10.0.0.3", proto=IpProto.UDP, sport=53, dport=1234)) == dns
    assert matched(eng, flow(dst="10.0.0.3", proto=IpProto.UDP, sport=54, dport=1234)) is None


def test_upper_layer_protocol_any_matches_every_protocol() -> None:
    eng = make_engine(clients=ALONE)
    tcp = add_policy(eng, proto=IpProto.TCP, priority=1)
    anyp = add_policy(eng, dst="10.0.0.0", dplen=24, priority=2)
    assert matched(eng, flow(proto=IpProto.TCP)) == tcp
    for p in (IpProto.UDP, IpProto.ICMP, IpProto.GRE, IpProto.ANY):
        assert matched(eng, flow(proto=p)) == anyp


def test_icmp_type_and_code_travel_in_the_port_fields() -> None:
    # For ICMP the source "port" is the type and the destination "port" the code.
    eng = make_engine(clients=ALONE)
    echo = add_policy(eng, proto=IpProto.ICMP, sport=8, dport=0, ptype=NONE)
    unreach_frag = add_policy(eng, proto=IpProto.ICMP, sport=3, dport=4, ptype=NONE)
    assert matched(eng, flow(proto=IpProto.ICMP, sport=8, dport=0)) == echo
    assert matched(eng, flow(proto=IpProto.ICMP, sport=3, dport=4)) == unreach_frag
    assert matched(eng, flow(proto=IpProto.ICMP, sport=3, dport=1)) is None
    assert matched(eng, flow(proto=IpProto.ICMP, sport=0, dport=0)) is None


def test_icmpv6_type_and_code_travel_in_the_port_fields() -> None:
    eng = make_engine(clients=ALONE)
    ns = add_policy(eng, src="::", splen=0, dst="::", dplen=0, proto=IpProto.IPV6_ICMP, sport=135, ptype=NONE)
    assert matched(eng, flow("fe80::1", "ff02::1:ff00:1", IpProto.IPV6_ICMP, 135, 0)) == ns
    assert matched(eng, flow("fe80::1", "ff02::1:ff00:1", IpProto.IPV6_ICMP, 136, 0)) is None
    assert matched(eng, flow("fe80::1", "ff02::1:ff00:1", IpProto.ICMP, 135, 0)) is None


def test_ipv6_scope_id_zero_is_a_wildcard() -> None:
    eng = make_engine(clients=ALONE)
    anyscope = add_policy(eng, src="fe80::1", dst="fe80::2", ptype=NONE, priority=9)
    scoped = add_policy(eng, src="fe80::1%3", dst="fe80::2%3", ptype=DISCARD, priority=1)
    assert matched(eng, flow("fe80::1%3", "fe80::2%3")) == scoped
    assert matched(eng, flow("fe80::1%2", "fe80::2%2")) == anyscope


# --------------------------------------------------- the index against a scan


@dataclass(frozen=True)
class _Net:
    version: int
    addrs: tuple[str, ...]
    prefixes: tuple[int, ...]


_V4 = _Net(
    4,
    ("10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.130", "10.0.1.1", "10.1.0.1", "192.0.2.1"),
    (0, 8, 16, 23, 24, 25, 31, 32),
)
_V6 = _Net(
    6,
    ("2001:db8::", "2001:db8::1", "2001:db8::2", "2001:db8:0:1::1", "2001:db8:1::1", "fe80::1"),
    (0, 16, 32, 48, 63, 64, 127, 128),
)
_PROTOS = (IpProto.ANY, IpProto.TCP, IpProto.UDP, IpProto.ICMP, IpProto.IPV6_ICMP)
_PORTS = (0, 0, 53, 80)
_PRIORITIES = (0, 0, 1, 2, 0x80000000, 0xFFFFFFFF)
_DIRS = (IN, OUT, FWD)


def _sockaddr(net: _Net, draw: st.DrawFn, *, port: int = 0) -> SockAddr:
    scope = draw(st.sampled_from((0, 0, 1, 2))) if net.version == 6 else 0
    return SockAddr(ipaddress.ip_address(draw(st.sampled_from(net.addrs))), port, 0, scope)


@st.composite
def _policy(draw: st.DrawFn, order: int) -> SecPolicy:
    net = draw(st.sampled_from((_V4, _V6)))
    sel = Selector(
        _sockaddr(net, draw, port=draw(st.sampled_from(_PORTS))),
        draw(st.sampled_from(net.prefixes)),
        _sockaddr(net, draw, port=draw(st.sampled_from(_PORTS))),
        draw(st.sampled_from(net.prefixes)),
        draw(st.sampled_from(_PROTOS)),
    )
    return SecPolicy(
        order, draw(st.sampled_from(_DIRS)), sel, NONE, (), draw(st.sampled_from(_PRIORITIES)), order, 0.0, 0
    )


@st.composite
def _flow(draw: st.DrawFn) -> Flow:
    net = draw(st.sampled_from((_V4, _V6)))
    return Flow(
        _sockaddr(net, draw),
        _sockaddr(net, draw),
        draw(st.sampled_from(_PROTOS)),
        draw(st.sampled_from(_PORTS)),
        draw(st.sampled_from(_PORTS)),
    )


def _naive_matches(sel: Selector, f: Flow) -> bool:
    """key_allocsp's match, written from reference §6.2 without the index."""
    if sel.src.version != f.src.version:
        return False
    for mine, theirs, plen in ((sel.src, f.src, sel.src_len), (sel.dst, f.dst, sel.dst_len)):
        if theirs.ip not in ipaddress.ip_network(f"{mine.ip}/{plen}", strict=False):
            return False
        if mine.scope_id and mine.scope_id != theirs.scope_id:
            return False
    if sel.proto != IpProto.ANY and sel.proto != f.proto:
        return False
    if sel.src.port and sel.src.port != f.sport:
        return False
    return not (sel.dst.port and sel.dst.port != f.dport)


def _naive_lookup(policies: list[SecPolicy], direction: int, f: Flow) -> SecPolicy | None:
    """A linear scan in (priority, insertion) order; the first match wins."""
    for sp in sorted((p for p in policies if p.dir == direction), key=lambda p: (p.priority, p.order)):
        if _naive_matches(sp.selector, f):
            return sp
    return None


def _identity(sp: SecPolicy) -> tuple[object, ...]:
    s = sp.selector
    return (sp.dir, s.src, s.src_len, s.dst, s.dst_len, s.proto)


@st.composite
def _spd_and_flows(draw: st.DrawFn) -> tuple[Spd, list[SecPolicy], list[Flow]]:
    spd = Spd()
    live: dict[tuple[object, ...], SecPolicy] = {}
    for _ in range(draw(st.integers(0, 40))):
        action = draw(st.sampled_from(("add", "add", "add", "remove", "use")))
        if action == "add":
            sp = draw(_policy(spd.next_order()))
            if _identity(sp) in live:
                continue
            spd.insert(sp)
            live[_identity(sp)] = sp
        elif live:
            key = draw(st.sampled_from(sorted(live, key=repr)))
            old = live[key]
            if action == "remove":
                spd.remove(old)
                del live[key]
            else:
                new = dataclasses.replace(old, lifetime=old.lifetime + 5)
                spd.replace(old, new)
                live[key] = new
    flows = draw(st.lists(_flow(), min_size=1, max_size=25))
    return spd, list(live.values()), flows


@settings(max_examples=150)
@given(_spd_and_flows())
def test_indexed_lookup_equals_a_linear_scan(case: tuple[Spd, list[SecPolicy], list[Flow]]) -> None:
    spd, policies, flows = case
    assert len(spd) == len(policies)
    assert sorted(spd.ordered(), key=lambda p: p.order) == sorted(policies, key=lambda p: p.order)
    for f in flows:
        for d in _DIRS:
            assert spd.lookup(d, f) == _naive_lookup(policies, d, f)


@settings(max_examples=40)
@given(st.lists(_policy(0), max_size=15), st.lists(_flow(), min_size=1, max_size=10))
def test_engine_lookup_through_spdadd_equals_a_linear_scan(policies: list[SecPolicy], flows: list[Flow]) -> None:
    eng = make_engine(clients={ME: LINUX})
    for sp in policies:
        sel = sp.selector
        if eng.spd.find(sp.dir, sel) is None:
            add_policy(
                eng,
                src=str(sel.src),
                dst=str(sel.dst),
                splen=sel.src_len,
                dplen=sel.dst_len,
                proto=sel.proto,
                sport=sel.src.port,
                dport=sel.dst.port,
                dir=sp.dir,
                priority=sp.priority,
                ptype=NONE,
            )
    stored = list(eng.spd.by_id.values())
    for f in flows:
        for d in _DIRS:
            expect = _naive_lookup(stored, d, f)
            decision, _ = eng.lookup(d, f, at(1))
            assert (decision.policy.id if decision.policy else None) == (expect.id if expect else None)


# ------------------------------------------------------- actions and def_policy


def test_none_and_discard_policies_decide_without_acquire() -> None:
    eng = make_engine(clients={ME: FREEBSD, KM: FREEBSD})
    register_km(eng, KM)
    add_policy(eng, dst="10.0.0.2", ptype=NONE)
    add_policy(eng, dst="10.0.0.3", ptype=DISCARD)
    d1, e1 = eng.lookup(OUT, flow(dst="10.0.0.2"), at(1))
    d2, e2 = eng.lookup(OUT, flow(dst="10.0.0.3"), at(1))
    assert (d1.action, d1.default, e1) == ("pass", False, [])
    assert (d2.action, d2.default, e2) == ("discard", False, [])


def test_unmatched_flow_gets_the_default_policy_none() -> None:
    eng = make_engine(clients=ALONE)
    decision, effects = eng.lookup(OUT, flow(), at(1))
    assert (decision.action, decision.default, decision.policy, effects) == ("pass", True, None, [])
    add_policy(eng, dst="10.0.0.9", ptype=DISCARD)
    decision, _ = eng.lookup(OUT, flow(), at(1))
    assert (decision.action, decision.default) == ("pass", True)


@pytest.mark.parametrize("knob", ["net.inet.ipsec.def_policy", "net.inet6.ipsec6.def_policy"])
def test_def_policy_discard_applies_to_both_families(knob: str) -> None:
    eng = make_engine(clients=ALONE)
    eng.set_knob(knob, 0)
    for f in (flow(), flow("2001:db8::1", "2001:db8::2")):
        decision, _ = eng.lookup(IN, f, at(1))
        assert (decision.action, decision.default) == ("discard", True)


# --------------------------------------------------------------------- levels


_DEFLEV_CASES = [
    ("net.inet.ipsec.esp_trans_deflev", ("10.0.0.1", "10.0.0.2"), ESP, TRANSPORT),
    ("net.inet.ipsec.esp_net_deflev", ("10.0.0.1", "10.0.0.2"), ESP, TUNNEL),
    ("net.inet.ipsec.ah_trans_deflev", ("10.0.0.1", "10.0.0.2"), AH, TRANSPORT),
    ("net.inet.ipsec.ah_net_deflev", ("10.0.0.1", "10.0.0.2"), AH, TUNNEL),
    ("net.inet6.ipsec6.esp_trans_deflev", ("2001:db8::1", "2001:db8::2"), ESP, TRANSPORT),
    ("net.inet6.ipsec6.esp_net_deflev", ("2001:db8::1", "2001:db8::2"), ESP, TUNNEL),
    ("net.inet6.ipsec6.ah_trans_deflev", ("2001:db8::1", "2001:db8::2"), AH, TRANSPORT),
    ("net.inet6.ipsec6.ah_net_deflev", ("2001:db8::1", "2001:db8::2"), AH, TUNNEL),
]


def _default_level_engine(addrs: tuple[str, str], proto: int, mode: int) -> KeyEngine:
    eng = make_engine(clients=ALONE)
    ends = ("192.0.2.1", "192.0.2.2") if ":" not in addrs[0] else ("2001:db8:f::1", "2001:db8:f::2")
    req = request(proto, mode, DEFAULT, endpoints=ends if mode == TUNNEL else None)
    add_policy(eng, src=addrs[0], dst=addrs[1], requests=[req])
    return eng


@pytest.mark.parametrize(("knob", "addrs", "proto", "mode"), _DEFLEV_CASES)
def test_default_level_follows_its_deflev_knob(knob: str, addrs: tuple[str, str], proto: int, mode: int) -> None:
    eng = _default_level_engine(addrs, proto, mode)
    f = flow(*addrs)
    decision, _ = eng.lookup(OUT, f, at(1))
    assert decision.requests[0].level == USE and not decision.held and decision.action == "ipsec"
    for value, held in ((2, True), (3, True), (1, False)):
        eng.set_knob(knob, value)
        decision, _ = eng.lookup(OUT, f, at(2))
        assert decision.requests[0].level == value
        assert decision.held is held and decision.action == ("discard" if held else "ipsec")


@pytest.mark.parametrize(("knob", "addrs", "proto", "mode"), _DEFLEV_CASES)
def test_default_level_ignores_the_other_knobs(knob: str, addrs: tuple[str, str], proto: int, mode: int) -> None:
    eng = _default_level_engine(addrs, proto, mode)
    for other, *_ in _DEFLEV_CASES:
        if other != knob:
            eng.set_knob(other, 2)
    decision, _ = eng.lookup(OUT, flow(*addrs), at(1))
    assert decision.requests[0].level == USE


@pytest.mark.parametrize("value", [0, 4, -1, 100])
def test_deflev_outside_1_to_3_means_require(value: int) -> None:
    # §6.4 / §9.1: the sysctl takes any integer; ipsec_get_reqlevel treats a value
    # outside USE..UNIQUE as REQUIRE.
    eng = _default_level_engine(("10.0.0.1", "10.0.0.2"), ESP, TRANSPORT)
    eng.set_knob("net.inet.ipsec.esp_trans_deflev", value)
    decision, _ = eng.lookup(OUT, flow(), at(1))
    assert decision.requests[0].level == REQUIRE and decision.held


@pytest.mark.parametrize("level", [DEFAULT, USE, REQUIRE, UNIQUE])
def test_ipcomp_is_always_use(level: int) -> None:
    eng = make_engine(clients=ALONE)
    for name, *_ in _DEFLEV_CASES:
        eng.set_knob(name, 2)
    add_policy(eng, requests=[request(IPCOMP, level=level)])
    decision, _ = eng.lookup(OUT, flow(), at(1))
    assert decision.requests[0].level == USE
    assert not decision.held and decision.action == "ipsec"


def test_explicit_levels_ignore_the_deflev_knobs() -> None:
    eng = make_engine(clients=ALONE)
    eng.set_knob("net.inet.ipsec.esp_trans_deflev", 3)
    add_policy(eng, requests=[request(ESP, level=USE), request(AH, level=REQUIRE)])
    decision, _ = eng.lookup(OUT, flow(), at(1))
    assert [o.level for o in decision.requests] == [USE, REQUIRE]


def test_inbound_require_without_protection_is_dropped_without_acquire() -> None:
    eng = make_engine(clients={ME: FREEBSD, KM: FREEBSD})
    register_km(eng, KM)
    add_policy(eng, dir=IN, requests=[request(ESP, level=REQUIRE)])
    decision, effects = eng.lookup(IN, flow(), at(1))
    assert decision.held and decision.action == "discard" and effects == []


def test_inbound_use_passes_without_acquire() -> None:
    eng = make_engine(clients={ME: FREEBSD, KM: FREEBSD})
    register_km(eng, KM)
    add_policy(eng, dir=IN, requests=[request(ESP, level=USE)])
    decision, effects = eng.lookup(IN, flow(), at(1))
    assert not decision.held and effects == []


# ------------------------------------------------------------- choice of SA


def _sa_of(eng: KeyEngine, f: Flow | None = None, now: float = 50) -> int | None:
    decision, _ = eng.lookup(OUT, f or flow(), at(now))
    sa = decision.requests[0].sa
    return None if sa is None else sa.spi


def _three_sas(eng: KeyEngine) -> None:
    for i, spi in enumerate((0x1001, 0x1002, 0x1003)):
        add_sa(eng, spi, now=at(i))


def test_preferred_oldsa_picks_the_oldest_alive_sa() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    _three_sas(eng)
    assert _sa_of(eng) == 0x1001
    decision, _ = eng.lookup(OUT, flow(), at(50))
    assert decision.action == "ipsec" and not decision.held


def test_preferred_oldsa_zero_picks_the_newest_alive_sa() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    _three_sas(eng)
    eng.set_knob("net.key.preferred_oldsa", 0)
    assert _sa_of(eng) == 0x1003
    eng.set_knob("net.key.prefered_oldsa", 1)  # the KAME spelling is accepted too
    assert _sa_of(eng) == 0x1001


def test_larval_sas_are_never_used() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    spi = new_larval(eng, now=at(0))
    assert eng.sad.by_spi[spi].state == SaState.LARVAL
    assert _sa_of(eng, now=1) is None
    add_sa(eng, 0x2001, now=at(2))
    new_larval(eng, now=at(3))  # a newer LARVAL SA
    eng.set_knob("net.key.preferred_oldsa", 0)
    assert _sa_of(eng, now=4) == 0x2001


def test_dying_sas_are_used_like_mature_ones() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    add_sa(
        eng,
        0x1001,
        now=at(0),
        soft=Lifetime(ExtType.LIFETIME_SOFT, 0, 0, 5, 0),
        hard=Lifetime(ExtType.LIFETIME_HARD, 0, 0, 500, 0),
    )
    add_sa(eng, 0x1002, now=at(1))
    eng.tick(at(6))
    assert eng.sad.by_spi[0x1001].state == SaState.DYING
    assert _sa_of(eng, now=7) == 0x1001


def test_dead_sas_are_never_used() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng)
    add_sa(eng, 0x1001, now=at(0), hard=Lifetime(ExtType.LIFETIME_HARD, 0, 0, 5, 0))
    add_sa(eng, 0x1002, now=at(1))
    eng.tick(at(6))
    assert 0x1001 not in eng.sad.by_spi
    assert _sa_of(eng, now=7) == 0x1002
    delete = Message(
        MsgType.DELETE,
        SaType.ESP,
        0,
        PID,
        0,
        0,
        (Sa(0x1002), address(ExtType.ADDRESS_SRC, "10.0.0.1"), address(ExtType.ADDRESS_DST, "10.0.0.2")),
    )
    reply(send(eng, ME, delete))
    assert _sa_of(eng, now=8) is None


def test_unique_request_needs_an_sa_with_its_reqid() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, requests=[request(ESP, level=UNIQUE)])  # reqid 0x4001
    add_sa(eng, 0x1001, reqid=0, now=at(0))
    add_sa(eng, 0x1002, reqid=0x4002, now=at(1))
    assert _sa_of(eng) is None
    add_sa(eng, 0x1003, reqid=0x4001, now=at(2))
    assert _sa_of(eng) == 0x1003


def test_non_unique_request_accepts_an_sa_of_any_reqid() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, requests=[request(ESP, level=REQUIRE)])
    add_sa(eng, 0x1001, reqid=77, now=at(0))
    assert _sa_of(eng) == 0x1001


def test_sa_mode_must_be_the_requests_or_any() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, requests=[request(ESP, TRANSPORT, REQUIRE)])
    add_sa(eng, 0x1001, mode=TUNNEL, now=at(0))
    assert _sa_of(eng) is None
    add_sa(eng, 0x1002, mode=0, now=at(1))  # SA2 mode ANY
    assert _sa_of(eng) == 0x1002


def test_tunnel_requests_use_sas_between_the_tunnel_endpoints() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, src="10.1.0.0", splen=16, dst="10.2.0.0", dplen=16, requests=[tunnel("192.0.2.1", "192.0.2.2")])
    add_sa(eng, 0x1001, "10.1.1.1", "10.2.2.2", mode=TUNNEL, now=at(0))  # inner addresses: not it
    f = flow("10.1.1.1", "10.2.2.2")
    assert _sa_of(eng, f) is None
    add_sa(eng, 0x1002, "192.0.2.1", "192.0.2.2", mode=TUNNEL, now=at(1))
    assert _sa_of(eng, f) == 0x1002


def test_transport_requests_ignore_ports_when_choosing_the_sa() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, proto=IpProto.TCP, dport=22)
    add_sa(eng, 0x1001, now=at(0))
    assert _sa_of(eng, flow(proto=IpProto.TCP, sport=40000, dport=22)) == 0x1001


def test_every_request_finds_its_own_sa() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, requests=[request(ESP, level=REQUIRE), request(IPCOMP, level=USE)])
    add_sa(eng, 0x1001, now=at(0))
    decision, _ = eng.lookup(OUT, flow(), at(5))
    assert [None if o.sa is None else o.sa.spi for o in decision.requests] == [0x1001, None]
    assert [o.index.proto for o in decision.requests] == [ESP, IPCOMP]
    assert not decision.held  # IPComp is USE: it may go without


def test_lookup_records_the_last_use_of_the_policy() -> None:
    eng = make_engine(clients=ALONE)
    pid = add_policy(eng)
    eng.lookup(OUT, flow(), at(33))
    assert eng.spd.by_id[pid].last_used == at(33).mono
    assert eng.spd.by_id[pid].last_used_wall == at(33).wall


def test_lookup_acquire_effects_go_only_to_registered_sockets() -> None:
    eng = make_engine(clients={ME: FREEBSD, KM: FREEBSD})
    register_km(eng, KM)
    add_policy(eng)
    _, effects = eng.lookup(OUT, flow(), at(1))
    assert [s.to for s in sends(effects, promisc=False)] == [(KM,)]


def test_request_outcomes_list_every_request() -> None:
    eng = make_engine(clients=ALONE)
    reqs = [request(ESP), IpsecRequest(AH, TRANSPORT, USE)]
    add_policy(eng, requests=reqs)
    decision, _ = eng.lookup(OUT, flow(), at(1))
    assert [o.request for o in decision.requests] == reqs
    assert decision.policy is not None and decision.policy.type == IPSEC


# ------------------------------------------------------------------- bundles
#
# Each request of a bundle is resolved against the packet as the earlier requests
# left it: after a tunnel request whose SA was found, the outer addresses (FreeBSD
# ipsec_process_done -> ipsec4_perform_request(idx + 1) -> ipsec4_allocsa; Linux
# xfrm_tmpl_resolve_one).  The shapes are those of setkey.8's examples.


def add_ipcomp_sa(eng: KeyEngine, cpi: int, src: str, dst: str, mode: int = TUNNEL) -> None:
    msg = Message(
        MsgType.ADD,
        SaType.X_IPCOMP,
        0,
        PID,
        0,
        0,
        (
            Sa(cpi, 0, 0, 0, CompAlg.DEFLATE, 0),
            Sa2(mode, 0, 0),
            address(ExtType.ADDRESS_SRC, src),
            address(ExtType.ADDRESS_DST, dst),
        ),
    )
    reply(send(eng, ME, msg))


def _spis(decision: Decision) -> list[int | None]:
    return [None if o.sa is None else o.sa.spi for o in decision.requests]


@pytest.mark.parametrize("dialect", [FREEBSD, LINUX])
def test_after_an_ipcomp_tunnel_esp_transport_uses_the_tunnel_endpoints(dialect: Dialect) -> None:
    # The KAME layout: ipcomp/tunnel/192.0.2.1-192.0.2.2/use esp/transport//require.
    eng = make_engine(clients={ME: dialect})
    add_policy(
        eng,
        src="10.1.0.1",
        dst="10.2.0.1",
        requests=[tunnel("192.0.2.1", "192.0.2.2", level=USE, proto=IPCOMP), request(ESP, TRANSPORT, REQUIRE)],
    )
    add_ipcomp_sa(eng, 0x3001, "192.0.2.1", "192.0.2.2")
    add_sa(eng, 0x3002, "192.0.2.1", "192.0.2.2")
    add_sa(eng, 0x3009, "10.1.0.1", "10.2.0.1")  # between the inner addresses: not the one
    decision, effects = eng.lookup(OUT, flow("10.1.0.1", "10.2.0.1"), at(1))
    assert _spis(decision) == [0x3001, 0x3002]
    assert [(str(o.index.src), str(o.index.dst)) for o in decision.requests] == [("192.0.2.1", "192.0.2.2")] * 2
    assert (decision.action, decision.held, effects) == ("ipsec", False, [])


def test_esp_tunnel_then_ah_transport_over_the_tunnel_packet() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(
        eng,
        src="10.3.0.0",
        splen=16,
        dst="10.4.0.0",
        dplen=16,
        requests=[tunnel("192.0.2.1", "198.51.100.2"), request(AH, TRANSPORT, REQUIRE)],
    )
    add_sa(eng, 0x3003, "192.0.2.1", "198.51.100.2", mode=TUNNEL)
    decision, _ = eng.lookup(OUT, flow("10.3.1.1", "10.4.2.2"), at(1))
    assert _spis(decision) == [0x3003, None]  # no AH SA yet
    assert (str(decision.requests[1].index.src), str(decision.requests[1].index.dst)) == ("192.0.2.1", "198.51.100.2")


def test_transport_after_transport_keeps_the_flow_addresses() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(eng, dst="10.0.0.3", requests=[request(ESP), request(AH)])
    add_sa(eng, 0x3005, "10.0.0.1", "10.0.0.3")
    decision, _ = eng.lookup(OUT, flow("10.0.0.1", "10.0.0.3"), at(1))
    assert _spis(decision)[0] == 0x3005
    assert [(str(o.index.src), str(o.index.dst)) for o in decision.requests] == [("10.0.0.1", "10.0.0.3")] * 2


def test_a_bypassed_tunnel_leaves_the_inner_addresses() -> None:
    # No IPComp SA: at level use the packet goes on uncompressed and untunnelled, so
    # the ESP request finds the packet's own addresses.
    eng = make_engine(clients=ALONE)
    add_policy(
        eng,
        src="10.1.0.1",
        dst="10.2.0.1",
        requests=[tunnel("192.0.2.1", "192.0.2.2", level=USE, proto=IPCOMP), request(ESP, TRANSPORT, REQUIRE)],
    )
    add_sa(eng, 0x3002, "192.0.2.1", "192.0.2.2")
    add_sa(eng, 0x3009, "10.1.0.1", "10.2.0.1")
    decision, _ = eng.lookup(OUT, flow("10.1.0.1", "10.2.0.1"), at(1))
    assert _spis(decision) == [None, 0x3009]


def test_a_tunnel_inside_a_tunnel_chains_the_endpoints() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(
        eng,
        src="10.1.0.1",
        dst="10.2.0.1",
        requests=[
            tunnel("192.0.2.1", "192.0.2.2"),
            tunnel("198.51.100.1", "198.51.100.2"),
            request(AH, TRANSPORT, REQUIRE),
        ],
    )
    add_sa(eng, 0x4001, "192.0.2.1", "192.0.2.2", mode=TUNNEL)
    add_sa(eng, 0x4002, "198.51.100.1", "198.51.100.2", mode=TUNNEL)
    decision, _ = eng.lookup(OUT, flow("10.1.0.1", "10.2.0.1"), at(1))
    assert [(str(o.index.src), str(o.index.dst)) for o in decision.requests] == [
        ("192.0.2.1", "192.0.2.2"),
        ("198.51.100.1", "198.51.100.2"),
        ("198.51.100.1", "198.51.100.2"),
    ]
    assert _spis(decision) == [0x4001, 0x4002, None]


def test_inbound_bundles_report_the_sa_between_the_tunnel_endpoints() -> None:
    eng = make_engine(clients=ALONE)
    add_policy(
        eng,
        dir=IN,
        src="10.2.0.1",
        dst="10.1.0.1",
        requests=[tunnel("192.0.2.2", "192.0.2.1", level=USE, proto=IPCOMP), request(ESP, TRANSPORT, REQUIRE)],
    )
    add_ipcomp_sa(eng, 0x5001, "192.0.2.2", "192.0.2.1")
    add_sa(eng, 0x5002, "192.0.2.2", "192.0.2.1")
    decision, effects = eng.lookup(IN, flow("10.2.0.1", "10.1.0.1"), at(1))
    assert _spis(decision) == [0x5001, 0x5002] and effects == []
