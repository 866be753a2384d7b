"""IPComp (RFC 3173) with FreeBSD's deflate parameters and rules."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from pfkeyd.packet import ip, ipcomp
from pfkeyd.packet.counters import Drop
from tests.packet.ipkit import udp4, udp6


def test_threshold_is_the_whole_datagram_at_90_bytes() -> None:
    # 20 (IP) + 8 (UDP) + 62 = 90 bytes: sent as it is, however compressible.
    at = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP() / Raw(b"a" * 62))
    assert len(at) == 90
    assert ipcomp.protect(0x1234, at) == ipcomp.Uncompressed(at, "threshold")
    above = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP() / Raw(b"a" * 63))
    out = ipcomp.protect(0x1234, above)
    assert isinstance(out, bytes) and out[9] == 108


def test_header_cpi_and_raw_deflate_with_freebsd_parameters() -> None:
    dg = udp4(b"compress me " * 40)
    out = ipcomp.protect(0xABCD1234, dg)
    assert isinstance(out, bytes)
    assert out[20] == 17 and out[21] == 0 and out[22:24] == b"\x12\x34"  # CPI = low 16 bits of the SPI
    c = zlib.compressobj(6, zlib.DEFLATED, -12, 8)
    assert out[24:] == c.compress(dg[20:]) + c.flush()
    # an independent inflater (zlib, 32 KB window) gets the payload back
    assert zlib.decompress(out[24:], -15) == dg[20:]
    assert IP(out).len == len(out) and ip.ipv4_checksum(out[:20]) == IP(out).chksum
    assert ipcomp.unprotect(out) == dg


def test_ipv6_round_trip() -> None:
    dg = udp6(b"six " * 100)
    out = ipcomp.protect(0x0102, dg)
    assert isinstance(out, bytes) and out[6] == 108 and out[40] == 17
    assert ipcomp.unprotect(out) == dg


def test_incompressible_payload_goes_out_unchanged() -> None:
    noise = random.Random(1).randbytes(300)
    dg = udp4(noise)
    assert ipcomp.protect(0x1234, dg) == ipcomp.Uncompressed(dg, "uncompr")


def test_non_expansion_ignores_the_4_byte_header() -> None:
    # FreeBSD compresses when payload > compressed (crp_ilen - skip > crp_olen), even
    # when compressed + 4 is not smaller than the payload: RFC 3173 would not.
    noise = random.Random(7).randbytes(200)
    for k in range(60):
        dg = udp4(b"\0" * k + noise)
        packed = ipcomp.compress(dg[20:])
        if len(dg) - 20 > len(packed) >= len(dg) - 20 - 4:
            out = ipcomp.protect(0x1234, dg)
            assert isinstance(out, bytes) and len(out) >= len(dg)
            assert ipcomp.unprotect(out) == dg
            return
    raise AssertionError("no payload in the range hits the boundary case")


def test_recursive_compression_is_refused() -> None:
    dg = udp4(b"x" * 200)
    out = ipcomp.protect(0x1234, dg)
    assert isinstance(out, bytes)
    twice = bytearray(out)
    twice[20] = 108
    assert ipcomp.unprotect(bytes(twice)) == Drop("ipcomp", "recursive")


def test_garbage_payload_and_truncation_are_badcomp() -> None:
    dg = udp4(b"y" * 200)
    out = ipcomp.protect(0x1234, dg)
    assert isinstance(out, bytes)
    cut = ip.join(out, ip.split(out, inbound=True) or pytest.fail("not IP"), 108, out[20:-3])
    assert ipcomp.unprotect(cut) == Drop("ipcomp", "badcomp")
    extra = ip.join(out, ip.split(out, inbound=True) or pytest.fail("not IP"), 108, out[20:] + b"\x01")
    assert ipcomp.unprotect(extra) == Drop("ipcomp", "badcomp")


def test_decompression_bomb_is_bounded() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = bomb.compress(b"\0" * 200_000) + bomb.flush()
    head = bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=108))[:20]
    sp = ip.split(head + b"") or ip.Split(4, 20, 108, 9, head[12:16], head[16:20])
    dg = ip.join(head, sp, 108, b"\x11\x00\x12\x34" + data)
    assert ipcomp.unprotect(dg) == Drop("ipcomp", "badcomp")


def test_accepts_plain_ip_in_ip_only_for_a_tunnel_sa_of_those_ends() -> None:
    a, b = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
    outer = ip.encapsulate(udp4(), a, b, ip.PacketKnobs())
    assert outer is not None
    sp = ip.split(outer, inbound=True)
    assert sp is not None
    assert ipcomp.accepts_plain(True, a, b, sp)
    assert not ipcomp.accepts_plain(False, a, b, sp)
    assert not ipcomp.accepts_plain(True, b, a, sp)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert isinstance(ipcomp.unprotect(data), (bytes, Drop))
    assert isinstance(ipcomp.protect(1, data), (bytes, Drop, ipcomp.Uncompressed))


@given(st.binary(min_size=100, max_size=1500))
def test_round_trip(payload: bytes) -> None:
    dg = udp4(payload)
    out = ipcomp.protect(0x4321, dg)
    if isinstance(out, bytes):
        assert ipcomp.unprotect(out) == dg
    else:
        assert isinstance(out, ipcomp.Uncompressed) and out.datagram == dg
