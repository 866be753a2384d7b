"""pfkeyd.dataplane.netlink over a real TUN in a namespace: link state, routes by
mode, reference counts, the fwmark rules, and cleanup that leaves nothing."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator
from functools import partial

import pytest
from pyroute2 import IPRoute

from pfkeyd.dataplane.netlink import (
    DEFAULT_FWMARK,
    DEFAULT_TABLE,
    NetlinkFailure,
    Route,
    Routing,
    RoutingConfig,
    SocketRoute,
    transport_route,
    tunnel_route,
)
from pfkeyd.dataplane.tun import open_tun
from tests.netns import Namespace, Pair, snapshot


def _table(family: int, table: int = DEFAULT_TABLE) -> list[tuple[str, int, str | None]]:
    with IPRoute() as ipr:
        return sorted(
            (
                (m.get("dst"), m["dst_len"], m.get("prefsrc"))
                for m in ipr.route("dump", family=family)
                if m.get("table") == table
            ),
            key=repr,
        )


def _rules(family: int) -> list[tuple[int, int, int, int | None]]:
    with IPRoute() as ipr:
        return sorted(
            (m.get("priority") or 0, m.get("table"), m["flags"], m.get("fwmark")) for m in ipr.get_rules(family=family)
        )


@pytest.fixture
def routing(netpair: Pair) -> Iterator[tuple[Namespace, Routing, int]]:
    ns = netpair.a
    clean = ns.snapshot()
    with ns.inside():
        fd = open_tun("ipsec0")
        r = Routing(RoutingConfig(mtu=1380, addresses=(ipaddress.ip_interface("10.1.0.1/32"),)))
        r.setup()
    try:
        yield ns, r, fd
    finally:
        with ns.inside():
            r.close()
            if fd >= 0:
                os.close(fd)
        # Everything the daemon added is gone, before the namespace is.
        assert ns.snapshot() == clean


def test_setup_brings_the_tun_up_with_mtu_address_and_both_rules(routing: tuple[Namespace, Routing, int]) -> None:
    ns, r, _ = routing
    with ns.inside(), IPRoute() as ipr:
        link = ipr.get_links(r.index)[0]
        assert link.get("ifname") == "ipsec0"
        assert link.get("mtu") == 1380
        assert link["flags"] & 1  # IFF_UP
        assert [a.get("address") for a in ipr.get_addr(index=r.index, family=socket.AF_INET)] == ["10.1.0.1"]
        # no link-local address: the kernel sends nothing into the TUN by itself
        assert not list(ipr.get_addr(index=r.index, family=socket.AF_INET6))
        for fam in (socket.AF_INET, socket.AF_INET6):
            rules = _rules(fam)
            assert (5050, 254, 0, DEFAULT_FWMARK) in rules
            assert (5051, DEFAULT_TABLE, 2, DEFAULT_FWMARK) in rules  # 2 = FIB_RULE_INVERT ("not fwmark")


def test_tunnel_and_transport_routes_go_into_the_table_and_are_counted(
    routing: tuple[Namespace, Routing, int],
) -> None:
    ns, r, _ = routing
    remote = tunnel_route("10.2.0.0/24", "10.1.0.1")
    remote6 = tunnel_route("2001:db8:2::/64")
    peer = transport_route(Pair.V4[1])
    with ns.inside():
        assert r.add_route(remote) is True
        assert r.add_route(remote) is False  # a second policy shares it
        assert r.add_route(remote6) is True
        assert r.add_route(peer) is True
        assert _table(socket.AF_INET) == [("10.2.0.0", 24, "10.1.0.1"), ("192.0.2.2", 32, None)]
        assert _table(socket.AF_INET6) == [("2001:db8:2::", 64, None)]
        assert r.remove_route(remote) is False  # one policy still needs it
        assert _table(socket.AF_INET) == [("10.2.0.0", 24, "10.1.0.1"), ("192.0.2.2", 32, None)]
        assert r.remove_route(remote) is True
        assert r.remove_route(remote6) is True
        assert _table(socket.AF_INET) == [("192.0.2.2", 32, None)]
        assert _table(socket.AF_INET6) == []
        with pytest.raises(KeyError):
            r.remove_route(remote)
        assert r.routes() == {peer: 1}
    # close() (in the fixture) removes the peer route, the rules and the link


def test_routing_sends_unmarked_packets_into_the_tun_and_marked_ones_past_it(
    routing: tuple[Namespace, Routing, int],
) -> None:
    ns, r, _ = routing
    with ns.inside():
        r.add_route(transport_route(Pair.V4[1]))
        r.add_route(transport_route(Pair.V6[1]))
        with IPRoute() as ipr:
            for addr, fam in ((Pair.V4[1], socket.AF_INET), (Pair.V6[1], socket.AF_INET6)):
                plain = ipr.route("get", dst=addr, family=fam)[0]
                marked = ipr.route("get", dst=addr, family=fam, mark=DEFAULT_FWMARK)[0]
                o0 = ipr.link_lookup(ifname="o0")[0]
                assert plain.get("oif") == r.index
                assert marked.get("oif") == o0


def test_setup_removes_what_a_killed_run_left(netpair: Pair) -> None:
    ns = netpair.a
    clean = ns.snapshot()
    with ns.inside():
        fd = open_tun("ipsec0")
        first = Routing(RoutingConfig())
        first.setup()
        first.add_route(tunnel_route("10.9.0.0/16"))
        first.add_socket_route(SocketRoute(6, socket.IPPROTO_UDP, 500, None))
        # SIGKILL: no close(); the TUN goes with its descriptor, the rules stay
        os.close(fd)
        first._ipr.close()
        assert any(x[3] == DEFAULT_FWMARK for x in _rules(socket.AF_INET))
        fd = open_tun("ipsec0")
        second = Routing(RoutingConfig())
        second.setup()
        # one copy of each rule, not two
        assert [x for x in _rules(socket.AF_INET) if x[3] == DEFAULT_FWMARK] == [
            (5050, 254, 0, DEFAULT_FWMARK),
            (5051, DEFAULT_TABLE, 2, DEFAULT_FWMARK),
        ]
        # and no socket rule of the killed run
        assert not [x for x in _rules(socket.AF_INET6) if x[0] == 5052]
        second.close()
        os.close(fd)
    assert ns.snapshot() == clean


def test_close_tolerates_routes_the_kernel_already_dropped(netpair: Pair) -> None:
    ns = netpair.a
    clean = ns.snapshot()
    with ns.inside():
        fd = open_tun("ipsec0")
        r = Routing(RoutingConfig())
        r.setup()
        r.add_route(tunnel_route("10.2.0.0/24"))
        os.close(fd)  # the TUN and its routes vanish first (daemon's fd closed on exit)
        r.close()
        r.close()  # idempotent
    assert ns.snapshot() == clean


def test_setup_without_the_tun_fails_with_enodev_and_changes_nothing(netpair: Pair) -> None:
    ns = netpair.a
    clean = ns.snapshot()
    with ns.inside(), pytest.raises(NetlinkFailure) as info:
        Routing(RoutingConfig(ifname="nosuch0")).setup()
    assert info.value.errno == errno.ENODEV
    assert ns.snapshot() == clean


def test_a_route_the_kernel_refuses_raises_with_its_errno(routing: tuple[Namespace, Routing, int]) -> None:
    ns, r, _ = routing
    with ns.inside():
        # a preferred source that is not an address of this host
        with pytest.raises(NetlinkFailure) as info:
            r.add_route(tunnel_route("10.3.0.0/24", "10.99.0.1"))
        assert info.value.errno == errno.EINVAL
        assert r.routes() == {}


@pytest.mark.parametrize(
    "make",
    [
        partial(RoutingConfig, mtu=10),
        partial(RoutingConfig, table=254),
        partial(RoutingConfig, table=0),
        partial(RoutingConfig, fwmark=0),
        partial(RoutingConfig, priority=40000),
    ],
    ids=["mtu=10", "table=254", "table=0", "fwmark=0", "priority=40000"],
)
def test_bad_configuration_is_refused(make: Callable[[], RoutingConfig]) -> None:
    with pytest.raises(ValueError):
        make()


def test_route_of_mixed_families_is_refused() -> None:
    with pytest.raises(ValueError):
        Route(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_address("2001:db8::1"))


def test_snapshot_sees_rules(netpair: Pair) -> None:
    # the leftover check would be blind if snapshots missed rules or routes
    ns = netpair.a
    before = ns.snapshot()
    with ns.inside(), IPRoute() as ipr:
        ipr.rule("add", table=77, priority=777)
        assert snapshot() != before
        ipr.rule("del", table=77, priority=777)
    assert ns.snapshot() == before


def test_setup_flushes_routes_left_in_the_table_including_a_default_route(netpair: Pair) -> None:
    # A TUN that outlived its daemon (made persistent by someone, or reused) keeps its
    # routes; a fresh setup starts from an empty table.
    ns = netpair.a
    clean = ns.snapshot()
    with ns.inside():
        fd = open_tun("ipsec0")
        first = Routing(RoutingConfig())
        first.setup()
        first.add_route(tunnel_route("0.0.0.0/0"))
        first.add_route(tunnel_route("::/0"))
        first.add_route(transport_route("192.0.2.2"))
        assert len(_table(socket.AF_INET)) == 2 and len(_table(socket.AF_INET6)) == 1
        first._ipr.close()  # killed: nothing removed
        second = Routing(RoutingConfig())
        second.setup()
        assert _table(socket.AF_INET) == [] and _table(socket.AF_INET6) == []
        second.close()
        os.close(fd)
    assert ns.snapshot() == clean


def test_a_socket_rule_routes_that_sockets_packets_into_the_tun_and_goes_at_close(
    routing: tuple[Namespace, Routing, int],
) -> None:
    ns, r, fd = routing
    sock_route = SocketRoute(4, socket.IPPROTO_UDP, 6000, ipaddress.ip_address("192.0.2.1"))
    with ns.inside():
        r.add_socket_route(sock_route)
        r.add_socket_route(sock_route)  # idempotent
        default = _table(socket.AF_INET, DEFAULT_TABLE + 1)  # the default route into the TUN
        assert [(d[0] or None, d[1]) for d in default] == [(None, 0)]
        with IPRoute() as ipr:
            got = [
                (m.get("priority"), m.get("ip_proto"), m.get("FRA_SPORT_RANGE"), m.get("src"))
                for m in ipr.get_rules(family=socket.AF_INET)
                if m.get("priority") == 5052
            ]
        assert got == [(5052, 17, "6000:6000", "192.0.2.1")]
        # The socket's datagrams, to any destination, arrive in the TUN; other ports' do not.
        for port, dst in ((6000, "198.51.100.7"), (6001, "192.0.2.2")):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("192.0.2.1", port))
                s.sendto(b"x", (dst, 9))
        got_dgs = []
        while True:
            try:
                got_dgs.append(os.read(fd, 2048))
            except BlockingIOError:
                break
        assert [(d[16:20], int.from_bytes(d[20:22], "big")) for d in got_dgs if d[9] == 17] == [
            (socket.inet_aton("198.51.100.7"), 6000)
        ]
        r.remove_socket_route(sock_route)
        with IPRoute() as ipr:
            assert not [m for m in ipr.get_rules(family=socket.AF_INET) if m.get("priority") == 5052]
        r.add_socket_route(sock_route)  # left for close() to remove (the fixture checks)
