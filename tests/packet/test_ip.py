"""IPv4/IPv6 headers of the packet library: split/join, checksums, the outer header rules."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.packet import Raw

from pfkeyd.knobs import Knobs
from pfkeyd.packet import ip
from pfkeyd.packet.ip import PacketKnobs

A4, B4 = ipaddress.IPv4Address("192.0.2.1").packed, ipaddress.IPv4Address("192.0.2.2").packed
A6, B6 = ipaddress.IPv6Address("2001:db8::1").packed, ipaddress.IPv6Address("2001:db8::2").packed


def v4(tos: int = 0, flags: str = "", payload: bytes = b"x" * 20) -> bytes:
    return bytes(IP(src="10.1.0.1", dst="10.2.0.1", tos=tos, flags=flags, id=7) / UDP(sport=1, dport=2) / Raw(payload))


def v6(tc: int = 0, payload: bytes = b"y" * 20) -> bytes:
    return bytes(IPv6(src="fd00::1", dst="fd00::2", tc=tc, fl=0x12345) / UDP(sport=1, dport=2) / Raw(payload))


# ------------------------------------------------------------------ checksums


def test_inet_checksum_matches_rfc1071_example_and_scapy() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ip.ipv4_checksum(header) == 0xB861
    pkt = v4()
    assert ip.ipv4_checksum(pkt[:20]) == IP(pkt).chksum


def test_inet_checksum_edge_values() -> None:
    assert ip.inet_checksum(b"") == 0xFFFF
    assert ip.inet_checksum(b"\xff\xff") == 0  # a sum of 0xFFFF (negative zero)
    assert ip.inet_checksum(b"\x01") == 0xFEFF  # odd length: padded with a zero byte


@given(st.binary(max_size=200))
def test_inet_checksum_equals_the_word_loop(data: bytes) -> None:
    padded = data + b"\0" * (len(data) & 1)
    s = 0
    for i in range(0, len(padded), 2):
        s += (padded[i] << 8) | padded[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    assert ip.inet_checksum(data) == ~s & 0xFFFF


# ---------------------------------------------------------------- split / join


def test_split_ipv4_with_options() -> None:
    pkt = bytes(IP(src="10.1.0.1", dst="10.2.0.1", options=b"\x94\x04\x00\x00") / UDP() / Raw(b"z"))
    sp = ip.split(pkt)
    assert sp is not None
    assert (sp.version, sp.hlen, sp.proto, sp.proto_at) == (4, 24, 17, 9)
    assert sp.src == bytes([10, 1, 0, 1]) and sp.dst == bytes([10, 2, 0, 1])


def test_split_refuses_a_length_that_disagrees() -> None:
    pkt = v4()
    assert ip.split(pkt + b"\0") is None
    assert ip.split(pkt[:-1]) is None
    bad6 = v6()
    assert ip.split(bad6 + b"\0") is None


def test_split_ipv6_outbound_keeps_hop_by_hop_and_routing_in_front() -> None:
    pkt = bytes(
        IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=["fd00::3"])
        / IPv6ExtHdrDestOpt()
        / UDP()
        / Raw(b"z")
    )
    sp = ip.split(pkt)
    assert sp is not None
    # IPv6 (40) + HBH (8) + DST before routing (8) + routing with one address (24) stay in front;
    # the final destination options header goes behind the IPsec header.
    assert sp.hlen == 40 + 8 + 8 + 24
    assert sp.proto == ip.IPPROTO_DSTOPTS
    assert pkt[sp.proto_at] == ip.IPPROTO_DSTOPTS
    inbound = ip.split(pkt, inbound=True)
    assert inbound is not None and inbound.hlen == sp.hlen + 8 and inbound.proto == 17


def test_split_ipv6_final_destination_options_go_behind() -> None:
    pkt = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrDestOpt() / UDP() / Raw(b"z"))
    sp = ip.split(pkt)
    assert sp is not None and (sp.hlen, sp.proto, sp.proto_at) == (40, ip.IPPROTO_DSTOPTS, 6)


def test_join_fixes_lengths_checksum_and_next_header() -> None:
    pkt = v4()
    sp = ip.split(pkt)
    assert sp is not None
    out = ip.join(pkt, sp, 50, b"\xaa" * 33)
    parsed = IP(out)
    assert parsed.len == 20 + 33 and parsed.proto == 50
    assert ip.ipv4_checksum(out[:20]) == parsed.chksum
    pkt6 = v6()
    sp6 = ip.split(pkt6)
    assert sp6 is not None
    out6 = ip.join(pkt6, sp6, 51, b"\xbb" * 17)
    assert IPv6(out6).plen == 17 and IPv6(out6).nh == 51


@given(st.binary(max_size=120), st.booleans())
def test_split_never_raises(data: bytes, inbound: bool) -> None:
    sp = ip.split(data, inbound=inbound)
    if sp is not None:
        assert sp.hlen <= len(data) and 0 <= sp.proto_at < sp.hlen and data[sp.proto_at] == sp.proto


# ----------------------------------------------------------------- ECN tables

NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3


@pytest.mark.parametrize(
    ("mode", "inner", "outer"),
    [
        # FORBIDDEN: DSCP copied, ECN cleared
        (ip.ECN_FORBIDDEN, 0xB8 | NOT_ECT, 0xB8),
        (ip.ECN_FORBIDDEN, 0xB8 | ECT0, 0xB8),
        (ip.ECN_FORBIDDEN, 0xB8 | ECT1, 0xB8),
        (ip.ECN_FORBIDDEN, 0xB8 | CE, 0xB8),
        # ALLOWED (RFC 6040 normal mode): copied, CE becomes ECT(0)
        (ip.ECN_ALLOWED, 0x28 | NOT_ECT, 0x28),
        (ip.ECN_ALLOWED, 0x28 | ECT0, 0x28 | ECT0),
        (ip.ECN_ALLOWED, 0x28 | ECT1, 0x28 | ECT1),
        (ip.ECN_ALLOWED, 0x28 | CE, 0x28 | ECT0),
        # NOCARE: copied as it is, CE included
        (ip.ECN_NOCARE, 0x28 | CE, 0x28 | CE),
        (ip.ECN_NOCARE, 0x28 | ECT1, 0x28 | ECT1),
    ],
)
def test_ecn_ingress(mode: int, inner: int, outer: int) -> None:
    assert ip.ecn_ingress(mode, inner) == outer


@pytest.mark.parametrize(
    ("mode", "outer", "inner", "result"),
    [
        # ALLOWED, RFC 6040 §4.2 table
        (ip.ECN_ALLOWED, CE, NOT_ECT, None),
        (ip.ECN_ALLOWED, CE, ECT0, CE),
        (ip.ECN_ALLOWED, CE, ECT1, CE),
        (ip.ECN_ALLOWED, CE, CE, CE),
        (ip.ECN_ALLOWED, ECT1, ECT0, ECT1),
        (ip.ECN_ALLOWED, ECT0, ECT1, ECT1),
        (ip.ECN_ALLOWED, ECT0, NOT_ECT, NOT_ECT),
        (ip.ECN_ALLOWED, NOT_ECT, ECT0, ECT0),
        # FORBIDDEN: a CE mark the inner could not have had -> drop
        (ip.ECN_FORBIDDEN, CE, ECT0, None),
        (ip.ECN_FORBIDDEN, NOT_ECT, ECT0, ECT0),
        (ip.ECN_FORBIDDEN, ECT1, ECT0, ECT0),
        # NOCARE: nothing
        (ip.ECN_NOCARE, CE, NOT_ECT, NOT_ECT),
        (ip.ECN_NOCARE, CE, ECT0, ECT0),
    ],
)
def test_ecn_egress(mode: int, outer: int, inner: int, result: int | None) -> None:
    dscp = 0xB8
    got = ip.ecn_egress(mode, 0x20 | outer, dscp | inner)
    assert got == (None if result is None else dscp | result)


# ----------------------------------------------------------------- tunnel mode


@pytest.mark.parametrize("outer_v", [4, 6])
@pytest.mark.parametrize("inner_v", [4, 6])
def test_encapsulate_and_decapsulate_every_family_pair(inner_v: int, outer_v: int) -> None:
    inner = v4(tos=0x28 | ECT0) if inner_v == 4 else v6(tc=0x28 | ECT0)
    src, dst = (A4, B4) if outer_v == 4 else (A6, B6)
    knobs = PacketKnobs(ecn=ip.ECN_ALLOWED, ecn6=ip.ECN_ALLOWED)
    outer = ip.encapsulate(inner, src, dst, knobs, ident=0x1234)
    assert outer is not None
    nh = 4 if inner_v == 4 else 41
    if outer_v == 4:
        o = IP(outer)
        assert (o.src, o.dst, o.proto, o.ttl, o.id, o.len, o.tos) == (
            "192.0.2.1",
            "192.0.2.2",
            nh,
            64,
            0x1234,
            len(outer),
            0x28 | ECT0,
        )
        assert ip.ipv4_checksum(outer[:20]) == o.chksum
    else:
        o6 = IPv6(outer)
        assert (o6.src, o6.dst, o6.nh, o6.hlim, o6.fl, o6.plen, o6.tc) == (
            "2001:db8::1",
            "2001:db8::2",
            nh,
            64,
            0,
            len(inner),
            0x28 | ECT0,
        )
    sp = ip.split(outer, inbound=True)
    assert sp is not None
    assert ip.decapsulate(outer, sp, knobs) == inner


@pytest.mark.parametrize(
    ("dfbit", "inner_df", "outer_df"),
    [
        (0, False, False),
        (0, True, False),
        (1, False, True),
        (1, True, True),
        (2, False, False),
        (2, True, True),
    ],
)
def test_outer_df_follows_dfbit(dfbit: int, inner_df: bool, outer_df: bool) -> None:
    inner = v4(flags="DF" if inner_df else "")
    outer = ip.encapsulate(inner, A4, B4, PacketKnobs(dfbit=dfbit))
    assert outer is not None
    assert bool(IP(outer).flags.DF) is outer_df


def test_ipv6_in_ipv4_with_dfbit_2_sets_df() -> None:
    # FreeBSD reads an uninitialised variable here; pfkeyd treats IPv6 as "DF set".
    outer = ip.encapsulate(v6(), A4, B4, PacketKnobs(dfbit=2))
    assert outer is not None and IP(outer).flags.DF


def test_encapsulate_recomputes_a_stale_inner_checksum() -> None:
    inner = bytearray(v4())
    inner[10:12] = b"\xde\xad"
    outer = ip.encapsulate(bytes(inner), A4, B4, PacketKnobs())
    assert outer is not None
    assert ip.ipv4_checksum(outer[20:40]) == int.from_bytes(outer[30:32], "big")


def test_encapsulate_uses_the_ecn_knob_of_the_outer_family() -> None:
    inner = v4(tos=CE)
    k = PacketKnobs(ecn=ip.ECN_NOCARE, ecn6=ip.ECN_FORBIDDEN)
    out4 = ip.encapsulate(inner, A4, B4, k)
    out6 = ip.encapsulate(inner, A6, B6, k)
    assert out4 is not None and out6 is not None
    assert IP(out4).tos == CE and IPv6(out6).tc == 0


def test_decapsulate_marks_ce_and_fixes_the_inner_checksum() -> None:
    inner = v4(tos=ECT0)
    k = PacketKnobs(ecn=ip.ECN_ALLOWED)
    outer = bytearray(ip.encapsulate(inner, A4, B4, k) or b"")
    outer[1] = CE  # a router marked congestion on the way
    sp = ip.split(bytes(outer), inbound=True)
    assert sp is not None
    got = ip.decapsulate(bytes(outer), sp, k)
    assert isinstance(got, bytes)
    assert IP(got).tos == CE and ip.ipv4_checksum(got[:20]) == IP(got).chksum


def test_decapsulate_drops_ce_over_not_ect_and_under_forbidden() -> None:
    for mode, inner in ((ip.ECN_ALLOWED, v4(tos=NOT_ECT)), (ip.ECN_FORBIDDEN, v4(tos=ECT0))):
        k = PacketKnobs(ecn=mode)
        outer = bytearray(ip.encapsulate(inner, A4, B4, k) or b"")
        outer[1] = CE
        sp = ip.split(bytes(outer), inbound=True)
        assert sp is not None
        assert ip.decapsulate(bytes(outer), sp, k) == ip.DECAP_ECN


def test_decapsulate_cuts_tfc_padding_and_refuses_a_bad_inner() -> None:
    inner = v4()
    k = PacketKnobs()
    outer = ip.encapsulate(inner, A4, B4, k)
    assert outer is not None
    padded = ip.join(outer, ip.split(outer) or pytest.fail(), 4, outer[20:] + b"\0" * 12)
    sp = ip.split(padded, inbound=True)
    assert sp is not None and ip.decapsulate(padded, sp, k) == inner
    # IPv6 inside a datagram that says IPv4
    wrong = ip.join(outer, sp, 4, v6())
    sp2 = ip.split(wrong, inbound=True)
    assert sp2 is not None and ip.decapsulate(wrong, sp2, k) == ip.DECAP_BADINNER
    short = ip.join(outer, sp, 4, inner[:-1])
    sp3 = ip.split(short, inbound=True)
    assert sp3 is not None and ip.decapsulate(short, sp3, k) == ip.DECAP_BADINNER


def test_packet_knobs_view_of_knobs() -> None:
    knobs = (
        Knobs().set("net.inet.ipsec.dfbit", "2").set("net.inet6.ipsec6.ecn", "1").set("net.inet.ah.ah_cleartos", "0")
    )
    view = PacketKnobs.of(knobs)
    assert (view.dfbit, view.ecn, view.ecn6, view.ah_cleartos) == (2, 0, 1, 0)


@given(st.binary(max_size=100), st.sampled_from([(A4, B4), (A6, B6)]))
def test_encapsulate_and_decapsulate_never_raise(data: bytes, ends: tuple[bytes, bytes]) -> None:
    k = PacketKnobs(ecn=ip.ECN_ALLOWED)
    ip.encapsulate(data, ends[0], ends[1], k)
    sp = ip.split(data, inbound=True)
    if sp is not None:
        ip.decapsulate(data, sp, k)


def test_fits_is_the_65535_byte_limit_of_each_family() -> None:
    sp4 = ip.Split(4, 24, 17, 9, A4, B4)
    assert ip.fits(sp4, 65535 - 24) and not ip.fits(sp4, 65535 - 23)
    sp6 = ip.Split(6, 48, 17, 40, A6, B6)  # payload length counts the 8 extension bytes
    assert ip.fits(sp6, 65535 - 8) and not ip.fits(sp6, 65535 - 7)


def test_well_formed_checks_the_length_fields_only() -> None:
    assert ip.well_formed(v4()) == 4 and ip.well_formed(v6()) == 6
    assert ip.well_formed(v4()[:-1]) == 0 and ip.well_formed(v6() + b"\0") == 0
    assert ip.well_formed(b"\x44" + v4()[1:]) == 0  # IHL 4
    assert ip.well_formed(b"") == 0
