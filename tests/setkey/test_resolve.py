"""Host names to socket addresses: numeric forms without lookups, names
through an injected getaddrinfo, and what each statement keeps."""

from __future__ import annotations

import socket
from ipaddress import ip_address

from pfkeyd.wire.sockaddr import SockAddr
from setkey.parser import parse
from setkey.resolve import Resolver, resolve


def fake_getaddrinfo(host: str, port: object, family: int = 0, *args: object) -> list[tuple[object, ...]]:
    table = {"gw.example": ["192.0.2.1", "2001:db8::1"], "v4.example": ["192.0.2.7"]}
    out: list[tuple[object, ...]] = []
    for addr in table[host]:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        if family in (0, fam):
            out.append((fam, socket.SOCK_DGRAM, 17, "", (addr, 0, 0, 5) if ":" in addr else (addr, 0)))
    if not out:
        raise socket.gaierror(socket.EAI_ADDRFAMILY, "no address of that family")
    return out


def resolver() -> Resolver:
    return Resolver(
        getaddrinfo=fake_getaddrinfo,
        if_nametoindex=lambda name: 4,
        getservbyname=lambda name, proto: {"ntp": 123, "l2tp": 1701}[name],
    )


def sa(text: str, port: int = 0, scope: int = 0) -> SockAddr:
    return SockAddr(ip_address(text), port, 0, scope)


def test_numeric_addresses_ports_and_scopes() -> None:
    (v4, v6) = resolve(
        parse("add 10.0.0.1[4500] 10.0.0.2 esp 1 -E null; add fe80::1%em0 fe80::2%7 esp 1 -E null;"),
        resolver=resolver(),
    )
    assert (v4.src, v4.dst) == ((sa("10.0.0.1", 4500),), (sa("10.0.0.2"),))
    assert (v6.src, v6.dst) == ((sa("fe80::1", 0, 4),), (sa("fe80::2", 0, 7),))


def test_names_give_every_address_and_the_flags_pick_the_family() -> None:
    r = resolver()
    (item,) = resolve(parse("add gw.example 10.0.0.2 esp 1 -E null;"), resolver=r)
    assert item.src == (sa("192.0.2.1"), sa("2001:db8::1", 0, 5))
    (item,) = resolve(parse("add -6 gw.example ::2 esp 1 -E null;"), resolver=r)
    assert item.src == (sa("2001:db8::1", 0, 5),)


def test_selectors_service_ports_and_upper_layer_ports() -> None:
    items = resolve(
        parse("""
        spdadd 0.0.0.0/0[l2tp] v4.example[ntp] udp -P in none;
        spdadd ::/0 ::/0 icmp6 135,0 -P in none;
        spdadd 10.0.0.0/24 10.0.1.0/24 any -P out ipsec esp/tunnel/fe80::1%em0[500]-fe80::2[4500]/require;
    """),
        resolver=resolver(),
    )
    assert (items[0].src, items[0].dst) == ((sa("0.0.0.0", 1701),), (sa("192.0.2.7", 123),))
    assert (items[1].src, items[1].dst) == ((sa("::", 135),), (sa("::", 0),))
    assert items[2].tunnels == ((sa("fe80::1", 500, 4), sa("fe80::2", 4500)),)


def test_natt_original_addresses() -> None:
    (udp, natt) = resolve(
        parse("""
        add 10.0.0.1 10.0.0.2 esp-udp gw.example 1 -E null;
        add 10.0.0.1 10.0.0.2 esp 1 -natt 10.0.0.1[4500] v4.example[4500] -E null "";
    """),
        resolver=resolver(),
    )
    assert udp.natt_oa == sa("192.0.2.1")
    assert (natt.natt_oa, natt.natt_oar) == (sa("10.0.0.1"), sa("192.0.2.7"))


def test_statements_without_hosts_resolve_to_themselves() -> None:
    items = resolve(parse("flush; spddump; exit;"))
    assert [i.src for i in items] == [(), (), ()]
