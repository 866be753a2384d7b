"""The TUN's offloads: frames behind a virtio_net_hdr, finished and cut as a NIC would.

``espfast.tun_frames`` (the compiled loop's own step, and what ``TunDevice`` reads
through) is checked against scapy, an independent implementation: each TCP/IPv4
GSO segment must become exactly the segments scapy builds from the same headers
(IDs counted up, lengths, sequence numbers, FIN/PSH on the last and CWR on the
first only, both checksums computed by scapy), and a datagram whose L4 checksum
the kernel left to finish (the pseudo-header's sum in the field) must come out
with the checksum scapy computes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from pfkeyd.packet.crypto import espfast

pytestmark = pytest.mark.skipif(espfast is None, reason="the compiled module was not built")

NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6 = 0, 1, 4


def vnet(flags: int, gso: int, hdr_len: int, size: int, start: int, offset: int) -> bytes:
    """A struct virtio_net_hdr as the kernel writes it on this (little-endian) host."""
    return struct.pack("<BBHHHH", flags, gso, hdr_len, size, start, offset)


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _words(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    return sum(struct.unpack(f"!{len(b) // 2}H", b))


def partial(dg: bytes, start: int, offset: int, pseudo: bytes) -> bytes:
    """``dg`` as the kernel hands it over with CHECKSUM_PARTIAL: the checksum field
    holds the folded (not complemented) sum of the pseudo-header."""
    field = _fold(_words(pseudo)).to_bytes(2, "big")
    return dg[: start + offset] + field + dg[start + offset + 2 :]


def pseudo4(ip: bytes, proto: int, l4len: int) -> bytes:
    return ip[12:20] + bytes((0, proto)) + l4len.to_bytes(2, "big")


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.integers(0, 40), st.integers(1000, 6000)),
    st.integers(200, 1460),
    st.integers(0, 0xFFFF),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["A", "PA", "FPA", "FA", "CEA", "CPA", "UA", "SA", ""]),
    st.sampled_from([[], [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]]),
    st.sampled_from([[], [("MSS", 1360)]]),
    st.integers(0, 255),
    st.booleans(),
)
def test_a_tcp_gso_segment_is_cut_as_scapy_builds_the_pieces(
    length: int,
    mss: int,
    ident: int,
    seq: int,
    flags: str,
    options: list[tuple[str, object]],
    extra: list[tuple[str, object]],
    tos: int,
    df: bool,
) -> None:
    payload = (bytes(range(251)) * 24)[:length]
    big = IP(src="10.1.0.1", dst="10.2.0.1", id=ident, tos=tos, flags="DF" if df else 0) / TCP(
        sport=40000, dport=5001, seq=seq, ack=7, flags=flags, window=500, options=options + extra
    )
    head = bytes(big)
    ihl, hl = 20, len(head)
    dg = bytes(IP(head + payload))  # lengths and checksums right, then the TCP field made partial
    dg = partial(dg, ihl, 16, pseudo4(dg, 6, len(dg) - ihl))
    got = espfast.tun_frames(vnet(NEEDS_CSUM, GSO_TCPV4, hl, mss, ihl, 16) + dg)
    want = []
    chunks = [payload[i : i + mss] for i in range(0, len(payload), mss)] or [b""]
    for i, chunk in enumerate(chunks):
        p = IP(head)
        p.id = (ident + i) & 0xFFFF
        p.len = None
        p.chksum = None
        t = p[TCP]
        t.seq = (seq + i * mss) & 0xFFFFFFFF
        t.chksum = None
        f = int(t.flags)
        if i < len(chunks) - 1:
            f &= ~0x09  # FIN and PSH stay on the last piece
        if i > 0:
            f &= ~0x80  # CWR stays on the first
        t.flags = f
        want.append(bytes(p / Raw(chunk)) if chunk else bytes(p))
    assert got == want


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("size", [0, 1, 57, 1300])
def test_a_checksum_left_to_finish_is_the_one_scapy_computes(proto: str, family: int, size: int) -> None:
    l4 = UDP(sport=500, dport=4500) if proto == "udp" else TCP(sport=1, dport=2, flags="PA")
    body = bytes(range(256)) * 6
    if family == 4:
        whole = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / l4 / Raw(body[:size]))
        start = 20
        pseudo = pseudo4(whole, 17 if proto == "udp" else 6, len(whole) - 20)
    else:
        whole = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / l4 / Raw(body[:size]))
        start = 40
        pseudo = whole[8:40] + (len(whole) - 40).to_bytes(4, "big") + bytes((0, 0, 0, 17 if proto == "udp" else 6))
    offset = 6 if proto == "udp" else 16
    frame = vnet(NEEDS_CSUM, GSO_NONE, 0, 0, start, offset) + partial(whole, start, offset, pseudo)
    assert espfast.tun_frames(frame) == [whole]


def test_a_frame_with_nothing_to_do_is_the_datagram_and_what_cannot_be_taken_is_refused() -> None:
    dg = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP() / Raw(b"x" * 30))
    assert espfast.tun_frames(vnet(0, GSO_NONE, 0, 0, 0, 0) + dg) == [dg]
    tcp6 = bytes(IPv6() / TCP() / Raw(b"y" * 3000))
    assert espfast.tun_frames(vnet(NEEDS_CSUM, GSO_TCPV6, 60, 1000, 40, 16) + tcp6) is None  # not asked for
    assert espfast.tun_frames(b"\0" * 9) is None  # no header
    assert espfast.tun_frames(vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 60, 16) + dg) is None  # field past the end
    assert espfast.tun_frames(vnet(0, GSO_TCPV4, 40, 0, 20, 16) + dg) is None  # UDP, and no size


@settings(max_examples=500, deadline=None)
@given(
    st.tuples(
        st.integers(0, 3),
        st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, 3, 0x81, 255]),
        st.integers(0, 200),
        st.integers(0, 3000),
        st.integers(0, 120),
        st.integers(0, 40),
    ),
    st.binary(max_size=3000),
    st.booleans(),
)
def test_any_frame_gives_whole_datagrams_or_a_refusal_never_a_crash(
    header: tuple[int, int, int, int, int, int], body: bytes, plausible: bool
) -> None:
    """Whatever a TUN (or anything writing to the data plane) hands over: a list of
    datagrams, none longer than the frame's payload and each a whole IPv4 or IPv6
    header's worth when cut from a GSO segment, or None."""
    if plausible:  # a real TCP/IPv4 header in front, so that the cutting runs
        body = bytes(IP(src="10.1.0.1", dst="10.2.0.1") / TCP(flags="A") / Raw(body))
    got = espfast.tun_frames(vnet(*header) + body)
    if got is None:
        return
    assert got
    assert all(len(d) <= max(len(body), 40) + 60 for d in got)
    if header[1] == GSO_TCPV4:
        for d in got:
            assert d[0] >> 4 == 4 and int.from_bytes(d[2:4], "big") == len(d)
