"""NAT-T (RFC 3948): UDP encapsulation of ESP, keepalives, the non-ESP marker, FreeBSD's port
rule, and the transport-mode checksum fix-up with NAT-OA (checked against scapy's checksums)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from pfkeyd.packet import esp, ip, natt
from pfkeyd.packet.counters import Drop
from pfkeyd.packet.sa import TransformSA
from pfkeyd.sad import NatT
from pfkeyd.wire import SockAddr
from pfkeyd.wire.constants import EncAlg, Mode
from tests.packet.esp_helpers import DST4, DST6, SRC4, SRC6, esp_sa, runtime, v4, v6
from tests.packet.ipkit import sent

NATT_SA = NatT(2, 4500, 4501)


def _sa(src: bytes = SRC4, dst: bytes = DST4) -> TransformSA:
    return replace(esp_sa(EncAlg.X_AESGCM16, b"n" * 20), natt=NATT_SA, src=src, dst=dst)


def test_encapsulate_puts_udp_with_the_sas_ports_and_a_zero_ipv4_checksum() -> None:
    sa = _sa()
    protected = esp.protect(sa, runtime(sa), v4(17, b"hello"))
    assert isinstance(protected, bytes)
    out = natt.encapsulate(sa, protected)
    assert isinstance(out, bytes)
    pkt = IP(out)
    assert pkt.proto == 17 and pkt[UDP].sport == 4500 and pkt[UDP].dport == 4501
    assert pkt[UDP].chksum == 0 and pkt[UDP].len == 8 + len(protected) - 20
    assert (
        IP(ip.join(out, ip.split(out) or pytest.fail("not IP"), 17, out[20:])).chksum == pkt.chksum
    )  # header checksum right
    assert bytes(pkt[UDP].payload) == protected[20:]


def test_ipv6_encapsulation_carries_a_valid_checksum() -> None:
    sa = _sa(src=SRC6, dst=DST6)
    protected = esp.protect(sa, runtime(sa), v6(17, b"hello6"))
    assert isinstance(protected, bytes)
    out = natt.encapsulate(sa, protected)
    assert isinstance(out, bytes)
    pkt = IPv6(out)
    want = pkt[UDP].chksum
    del pkt[UDP].chksum
    assert IPv6(bytes(pkt))[UDP].chksum == want != 0


def test_decapsulate_returns_esp_and_the_ports_and_round_trips() -> None:
    sa = _sa()
    datagram = v4(6, b"segment!")
    wire = natt.encapsulate(sa, sent(esp.protect(sa, runtime(sa), datagram)))
    assert isinstance(wire, bytes)
    got = natt.decapsulate(wire)
    assert isinstance(got, natt.Received)
    assert (got.sport, got.dport) == (4500, 4501)
    assert natt.ports_match(sa, got.sport, got.dport)
    assert esp.unprotect(sa, runtime(sa), got.datagram) == datagram


def test_ports_must_equal_the_sas_as_freebsd_checks_them() -> None:
    sa = _sa()
    assert not natt.ports_match(sa, 4501, 4500)  # swapped (openiked-portable#93)
    assert not natt.ports_match(replace(sa, natt=None), 4500, 4501)


def test_keepalive_and_non_esp_marker_are_told_apart_from_esp() -> None:
    ka = natt.keepalive(4500, 4500, SRC4, DST4)
    assert bytes(IP(ka)[UDP].payload) == b"\xff"
    assert natt.decapsulate(ka) == Drop("natt", "keepalive")
    ike = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=4500, dport=4500) / Raw(b"\0\0\0\0" + b"ike" * 10))
    assert natt.decapsulate(ike) == Drop("natt", "ike")
    short = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=4500, dport=4500) / Raw(b"\x01\x02\x03"))
    assert natt.decapsulate(short) == Drop("natt", "hdrops")
    assert natt.decapsulate(v4(6, b"not udp at all")) == Drop("natt", "hdrops")
    ka6 = natt.keepalive(4500, 4500, SRC6, DST6)
    assert natt.decapsulate(ka6) == Drop("natt", "keepalive")


# ------------------------------------------------------------------ checksum fix-up

OA_SRC, OA_DST = "10.1.1.1", "10.2.2.2"  # what the peer saw before the NAT
NOW_SRC, NOW_DST = "192.0.2.1", "192.0.2.2"  # what the packet carries here


def _segment(kind: str, payload: bytes, src: str, dst: str) -> bytes:
    layer = TCP(sport=1234, dport=80, flags="PA", seq=7) if kind == "tcp" else UDP(sport=53, dport=5353)
    return bytes(IP(src=src, dst=dst, id=1) / layer / Raw(payload))


def _nat(datagram: bytes, src: str, dst: str) -> bytes:
    """Rewrite the addresses as a NAT does, leaving the inner checksum alone."""
    pkt = IP(datagram)
    pkt.src, pkt.dst = src, dst
    del pkt.chksum
    return bytes(pkt)


def _sa_oa(oai: str | None, oar: str | None, mode: int = Mode.TRANSPORT) -> TransformSA:
    oa = [SockAddr(IPv4Address(a)) if a else None for a in (oai, oar)]
    return replace(esp_sa(EncAlg.NULL, b""), natt=NatT(2, 4500, 4500, oa[0], oa[1]), mode=mode)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["tcp", "udp"]), st.binary(max_size=64), st.sampled_from([(1, 1), (1, 0), (0, 1)]))
def test_incremental_fix_with_nat_oa_matches_a_full_checksum(kind: str, payload: bytes, which: tuple[int, int]) -> None:
    src = OA_SRC if which[0] else NOW_SRC
    dst = OA_DST if which[1] else NOW_DST
    sent = _segment(kind, payload, src, dst)  # checksummed for the original addresses
    received = _nat(sent, NOW_SRC, NOW_DST)
    sa = _sa_oa(OA_SRC if which[0] else None, OA_DST if which[1] else None)
    fixed = natt.fix_checksum(sa, received, policy=0)
    assert fixed == _segment(kind, payload, NOW_SRC, NOW_DST)


def test_without_nat_oa_udp_gets_zero_and_tcp_is_recomputed() -> None:
    sa = _sa_oa(None, None)
    udp = _nat(_segment("udp", b"q", OA_SRC, OA_DST), NOW_SRC, NOW_DST)
    assert IP(natt.fix_checksum(sa, udp))[UDP].chksum == 0
    tcp = _nat(_segment("tcp", b"q", OA_SRC, OA_DST), NOW_SRC, NOW_DST)
    assert natt.fix_checksum(sa, tcp) == _segment("tcp", b"q", NOW_SRC, NOW_DST)


def test_zero_udp_checksum_stays_zero_and_policy_1_recomputes() -> None:
    sa = _sa_oa(OA_SRC, OA_DST)
    zero = bytearray(_nat(_segment("udp", b"z", OA_SRC, OA_DST), NOW_SRC, NOW_DST))
    zero[26:28] = b"\0\0"
    assert natt.fix_checksum(sa, bytes(zero)) == bytes(zero)
    assert natt.fix_checksum(sa, bytes(zero), policy=1) == _segment("udp", b"z", NOW_SRC, NOW_DST)


@pytest.mark.parametrize("case", ["tunnel", "no natt", "icmp"])
def test_fix_leaves_other_datagrams_alone(case: str) -> None:
    dg = _nat(_segment("tcp", b"t", OA_SRC, OA_DST), NOW_SRC, NOW_DST)
    sa = _sa_oa(OA_SRC, OA_DST, Mode.TUNNEL if case == "tunnel" else Mode.TRANSPORT)
    if case == "no natt":
        sa = replace(sa, natt=None)
    if case == "icmp":
        dg = v4(1, b"\x08\x00\x00\x00ping")
    assert natt.fix_checksum(sa, dg) == dg


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_never_raise(junk: bytes) -> None:
    assert isinstance(natt.decapsulate(junk), (natt.Received, Drop))
    assert isinstance(natt.decapsulate(v4(17, junk)), (natt.Received, Drop))
    assert isinstance(natt.fix_checksum(_sa_oa(OA_SRC, None), v4(6, junk)), bytes)
    assert isinstance(natt.fix_checksum(_sa_oa(OA_SRC, None), v4(17, junk)), bytes)
    assert isinstance(natt.encapsulate(_sa(), junk), (bytes, Drop))
