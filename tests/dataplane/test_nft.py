"""The firewall table that drops cleartext under inbound require policies
(pfkeyd.dataplane.nft): the rules as text from policies and knobs (pure), and the
table itself in a namespace of its own through the real ``nft``."""

from __future__ import annotations

import errno
import json
import shutil
import socket
from collections.abc import Iterator, Sequence

import pytest

from pfkeyd.dataplane.nft import Firewall, FirewallConfig, FirewallError, rules
from pfkeyd.dataplane.sockpol import HEAD, SocketPolicy, parse_request
from pfkeyd.knobs import Knobs
from pfkeyd.spd import SecPolicy, Selector
from pfkeyd.wire import Dialect, IpProto, IpsecRequest, Level, Mode, Policy, PolicyType, SockAddr
from tests.netns import Namespace, skip_reason

ESP, AH, IPCOMP = IpProto.ESP, IpProto.AH, IpProto.IPCOMP
DROP = 'counter name "in_polvio" drop'
HEAD_RULES = [
    'iifname { "ipsec0", "lo" } accept',
    "meta l4proto { 50, 51, 108 } accept",
    "udp dport 4500 accept",
    "icmpv6 type { 133, 134, 135, 136, 137 } accept",
]


def sp(
    src: str,
    slen: int,
    dst: str,
    dlen: int,
    ptype: int = PolicyType.IPSEC,
    requests: tuple[IpsecRequest, ...] = (),
    *,
    proto: int = IpProto.ANY,
    sport: int = 0,
    dport: int = 0,
) -> SecPolicy:
    sel = Selector(SockAddr.parse(src, sport), slen, SockAddr.parse(dst, dport), dlen, proto)
    return SecPolicy(0, 1, sel, ptype, requests, 0, 0, 0.0, 0)


def req(proto: int = ESP, level: int = Level.REQUIRE) -> IpsecRequest:
    return IpsecRequest(proto, Mode.TRANSPORT, level)


def sock(addr: str, port: int, ptype: int, requests: tuple[IpsecRequest, ...] = (), proto: int = 17) -> SocketPolicy:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    head = HEAD.pack(1, fam, proto, port, socket.inet_pton(fam, addr).ljust(16, b"\0"))
    return parse_request(head + Policy(ptype, 1, 0, 0, 0, requests).encode(Dialect.LINUX.spec, 0), 1)


def test_each_inbound_policy_becomes_a_rule_in_lookup_order() -> None:
    got = rules(
        FirewallConfig(),
        [
            sp("192.0.2.2", 32, "192.0.2.1", 32, PolicyType.NONE, proto=17, dport=7777),
            sp("192.0.2.2", 32, "192.0.2.1", 32, requests=(req(),)),
            sp("10.0.0.0", 8, "0.0.0.0", 0, PolicyType.DISCARD, proto=6),
            sp("10.1.0.0", 16, "10.2.0.0", 16, requests=(req(ESP, Level.USE), req(IPCOMP))),
            sp("2001:db8::", 64, "::", 0, requests=(req(AH, Level.UNIQUE),), proto=58, sport=128),
        ],
        [],
        Knobs(),
    )
    assert got == [
        *HEAD_RULES,
        "meta nfproto ipv4 ip saddr 192.0.2.2/32 ip daddr 192.0.2.1/32 meta l4proto 17 th dport 7777 accept",
        f"meta nfproto ipv4 ip saddr 192.0.2.2/32 ip daddr 192.0.2.1/32 {DROP}",
        f"meta nfproto ipv4 ip saddr 10.0.0.0/8 meta l4proto 6 {DROP}",
        # use and IPComp do not require protection: cleartext passes
        "meta nfproto ipv4 ip saddr 10.1.0.0/16 ip daddr 10.2.0.0/16 accept",
        f"meta nfproto ipv6 ip6 saddr 2001:db8::/64 meta l4proto 58 icmpv6 type 128 {DROP}",
    ]


def test_ports_on_any_protocol_match_the_ported_protocols_and_icmp_type_and_code() -> None:
    got = rules(FirewallConfig(natt_port=0), [sp("0.0.0.0", 0, "0.0.0.0", 0, requests=(req(),), sport=8)], [], Knobs())
    assert "udp dport 4500 accept" not in got  # NAT-T off
    assert got[-3:] == [
        f"meta nfproto ipv4 meta l4proto {{ 6, 17, 132, 136 }} th sport 8 {DROP}",
        f"meta nfproto ipv4 meta l4proto 1 icmp type 8 {DROP}",
        f"meta nfproto ipv4 meta l4proto 58 icmpv6 type 8 {DROP}",
    ]
    # Ports on a protocol that has none never match a packet (the SPD sees port 0).
    assert rules(FirewallConfig(), [sp("0.0.0.0", 0, "0.0.0.0", 0, proto=47, dport=1)], [], Knobs()) == HEAD_RULES


def test_level_default_follows_the_deflev_knobs_and_def_policy_0_drops_the_rest() -> None:
    pol = [sp("192.0.2.2", 32, "192.0.2.1", 32, requests=(req(ESP, Level.DEFAULT),))]
    assert rules(FirewallConfig(), pol, [], Knobs())[-1].endswith(" accept")  # esp_trans_deflev 1: use
    strict = Knobs().set("net.inet.ipsec.esp_trans_deflev", 2).set("net.inet.ipsec.def_policy", 0)
    assert rules(FirewallConfig(), pol, [], strict)[-2:] == [
        f"meta nfproto ipv4 ip saddr 192.0.2.2/32 ip daddr 192.0.2.1/32 {DROP}",
        DROP,
    ]


def test_inbound_socket_policies_come_before_the_spd() -> None:
    got = rules(
        FirewallConfig(ifname="tun7"),
        [sp("0.0.0.0", 0, "0.0.0.0", 0, requests=(req(),))],
        [
            sock("0.0.0.0", 500, PolicyType.BYPASS),
            sock("192.0.2.1", 6000, PolicyType.IPSEC, (req(),)),
            sock("2001:db8::1", 6001, PolicyType.IPSEC, (req(ESP, Level.USE),)),
            sock("192.0.2.1", 80, PolicyType.DISCARD, proto=6),
            sock("192.0.2.1", 0, PolicyType.BYPASS),  # never bound: no datagram is for it
        ],
        Knobs(),
    )
    assert got[0] == 'iifname { "tun7", "lo" } accept'
    assert got[4:] == [
        "meta nfproto ipv4 meta l4proto 17 th dport 500 accept",
        f"meta nfproto ipv4 meta l4proto 17 ip daddr 192.0.2.1 th dport 6000 {DROP}",
        "meta nfproto ipv6 meta l4proto 17 ip6 daddr 2001:db8::1 th dport 6001 accept",
        f"meta nfproto ipv4 meta l4proto 6 ip daddr 192.0.2.1 th dport 80 {DROP}",
        f"meta nfproto ipv4 {DROP}",
    ]


# ------------------------------------------------------------------ the real table


@pytest.fixture
def ns() -> Iterator[Namespace]:
    reason = skip_reason() or (None if shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin") else "no nft(8)")
    if reason:
        pytest.skip(reason)
    n = Namespace("nft")
    try:
        yield n
    finally:
        n.remove()


def tables(ns: Namespace) -> list[str]:
    out = ns.run("nft", "-j", "list", "tables").stdout
    return [t["table"]["name"] for t in json.loads(out)["nftables"] if "table" in t]


def test_the_table_is_made_kept_in_step_counted_and_removed(ns: Namespace) -> None:
    # A table a killed daemon left behind, with a rule of its own:
    ns.run("nft", "add table inet pfkeyd; add chain inet pfkeyd stale; add rule inet pfkeyd stale drop")
    fw = ns.call(Firewall, FirewallConfig())
    ns.call(fw.setup)
    listing = ns.run("nft", "list", "table", "inet", "pfkeyd").stdout
    assert "stale" not in listing and "hook input" in listing and "hook forward" in listing
    chain = rules(FirewallConfig(), [sp("127.0.0.0", 8, "0.0.0.0", 0, requests=(req(),))], [], Knobs())
    assert ns.call(fw.apply, chain) and not ns.call(fw.apply, chain)  # the same rules are not sent again
    # lo is exempt: cleartext on it is never refused.
    ns.run("ip", "link", "set", "lo", "up")
    with ns.inside(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", ("127.0.0.1", 9))
    assert ns.call(fw.dropped) == 0
    # Without the exemption for lo the policy drops it, and the counter says so.
    ns.call(fw.apply, [r for r in chain if '"lo"' not in r])
    with ns.inside(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(3):
            s.sendto(b"x", ("127.0.0.1", 9))
    assert ns.call(fw.dropped) == 3
    # A ruleset nft refuses is an error that leaves the rules as they were.
    with pytest.raises(FirewallError) as info:
        ns.call(fw.apply, ["this is not a rule"])
    assert info.value.errno == errno.EINVAL and "nft refused" in str(info.value)
    assert "127.0.0.0/8" in ns.run("nft", "list", "chain", "inet", "pfkeyd", "spd_in").stdout
    ns.call(fw.close)
    ns.call(fw.close)  # idempotent
    assert "pfkeyd" not in tables(ns)


# ------------------------------------------------------------ the plane keeps it in step


class Recorder:
    """An ``nft`` that records the scripts it is given, and refuses on request."""

    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.refuse = False

    def __call__(self, argv: Sequence[str], stdin: str) -> str:
        if self.refuse:
            raise FirewallError(errno.EINVAL, "nft refused the ruleset: test")
        self.scripts.append(stdin)
        return '{"nftables": [{"counter": {"packets": 5}}]}'


def test_the_plane_rewrites_the_chain_when_policies_or_socket_policies_change_and_survives_a_refusal() -> None:
    from tests.dataplane.test_plane import plane
    from tests.engine.conftest import make_engine
    from tests.engine.spd_helpers import ALONE, IN, ME, send, spd_msg

    eng = make_engine(clients=ALONE)
    dp, _ = plane(eng)
    nft = Recorder()
    dp.firewall = Firewall(FirewallConfig(), nft="nft", run=nft)
    dp.firewall.setup()
    dp.sync_firewall()
    assert nft.scripts[-1] == "flush chain inet pfkeyd spd_in\n" + "".join(
        f"add rule inet pfkeyd spd_in {r}\n" for r in HEAD_RULES
    )
    n = len(nft.scripts)
    dp.sync_firewall()
    assert len(nft.scripts) == n  # nothing changed: nothing sent
    send(eng, ME, spd_msg(src="192.0.2.2", dst="192.0.2.1", dir=IN))
    dp.sync_firewall()
    assert f"ip saddr 192.0.2.2/32 ip daddr 192.0.2.1/32 {DROP}" in nft.scripts[-1]
    dp.socket_policies.add(sock("0.0.0.0", 500, PolicyType.BYPASS))
    dp.sync_firewall()
    assert "meta nfproto ipv4 meta l4proto 17 th dport 500 accept" in nft.scripts[-1]
    nft.refuse = True
    dp.socket_policies.remove_owner(1)
    dp.sync_firewall()  # logged and counted, never raised
    assert dp.counters["firewall.error"] == 1
    nft.refuse = False
    counters = dp.statistics()["counters"]
    assert counters["policy.in_clear_reject"] == 5 and counters["policy.in_polvio"] == 5
    dp.firewall.close()  # as DataPlane.close does first
    assert nft.scripts[-1] == "add table inet pfkeyd\ndelete table inet pfkeyd\n"
