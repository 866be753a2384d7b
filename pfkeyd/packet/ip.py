"""IPv4 and IPv6 headers for the packet transforms: parse, rebuild, encapsulate.

Theory of operation
-------------------
A transform never parses more of a datagram than it must.  :func:`split` finds where
an IPsec header goes (outbound) or sits (inbound): after the IPv4 header with its
options, or after the IPv6 header and the extension headers that stay in front of
ESP, AH and IPComp (RFC 4303 §3.1.1, RFC 4302 §3.1.1).  The transform works on the
bytes behind that point and :func:`join` puts the header back in front, with the
next header, the length and the IPv4 header checksum fixed, as FreeBSD's
``esp_output``/``ipsec4_common_input_cb`` do.

Tunnel mode is IP-in-IP first and then the protocol in transport fashion on the
outer datagram (FreeBSD's ``ipsec_encap``): :func:`encapsulate` builds the outer
header from the knobs (TTL or hop limit 64, the IP ID the caller chose, DF by
``dfbit``, the TOS or traffic class through ``ip_ecn_ingress``); :func:`decapsulate`
strips it and applies ``ip_ecn_egress`` (RFC 6040 for ALLOWED).

Every function is total on bytes: malformed input gives ``None`` or a reason string,
never an exception.  Nothing here has state, a clock or I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pfkeyd.knobs import Knobs
from pfkeyd.record import record

__all__ = [
    "IPPROTO_IPV4",
    "IPPROTO_IPV6",
    "IPPROTO_NONE",
    "IPPROTO_HOPOPTS",
    "IPPROTO_ROUTING",
    "IPPROTO_FRAGMENT",
    "IPPROTO_DSTOPTS",
    "IPPROTO_ESP",
    "IPPROTO_AH",
    "IPPROTO_IPCOMP",
    "ECN_NOCARE",
    "ECN_FORBIDDEN",
    "ECN_ALLOWED",
    "DEFAULT_TTL",
    "Split",
    "PacketKnobs",
    "split",
    "join",
    "fits",
    "inet_checksum",
    "ipv4_checksum",
    "tos_of",
    "ecn_ingress",
    "ecn_egress",
    "well_formed",
    "encapsulate",
    "decapsulate",
    "DECAP_BADINNER",
    "DECAP_ECN",
]

IPPROTO_HOPOPTS = 0
IPPROTO_IPV4 = 4
IPPROTO_IPV6 = 41
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
IPPROTO_IPCOMP = 108

#: ip_ecn.h: the three modes of net.inet.ipsec.ecn / net.inet6.ipsec6.ecn.
ECN_NOCARE = -1
ECN_FORBIDDEN = 0
ECN_ALLOWED = 1

_ECN_MASK = 0x03
_ECT1 = 0x01
_ECT0 = 0x02
_CE = 0x03

#: FreeBSD net.inet.ip.ttl and net.inet6.ip6.hlim defaults: the outer TTL / hop limit.
DEFAULT_TTL = 64

_IP_DF = 0x4000

#: Reasons :func:`decapsulate` gives instead of an inner datagram.
DECAP_BADINNER = "badinner"  # the inner datagram is not a well-formed IPv4/IPv6 datagram
DECAP_ECN = "ecn"  # ip_ecn_egress refused the packet (CE outside, Not-ECT inside)


@record
class Split:
    """Where a datagram's IPsec header goes (outbound) or sits (inbound).

    ``hlen`` is the length of everything in front of it; ``proto`` the next-header
    value stored at offset ``proto_at`` (IPv4: the protocol field, IPv6: the header's
    or the last kept extension header's next header); ``src`` and ``dst`` are the
    raw 4 or 16 address bytes.
    """

    version: int
    hlen: int
    proto: int
    proto_at: int
    src: bytes
    dst: bytes


@dataclass(frozen=True, slots=True)
class PacketKnobs:
    """The knobs the packet library reads: a small immutable view of :class:`Knobs`
    (``PacketKnobs.of(engine.knobs)``), so a transform never sees the rest."""

    dfbit: int = 0
    ecn: int = ECN_FORBIDDEN
    ecn6: int = ECN_FORBIDDEN
    ah_cleartos: int = 1
    ah_offsetmask: int = 0
    esp_enable: int = 1
    ah_enable: int = 1
    ipcomp_enable: int = 1
    ctr_compatibility: int = 1
    natt_cksum_policy: int = 0
    ttl: int = DEFAULT_TTL
    hlim: int = DEFAULT_TTL

    @classmethod
    def of(cls, knobs: Knobs) -> PacketKnobs:
        return cls(
            dfbit=knobs.dfbit,
            ecn=knobs.ecn,
            ecn6=knobs.ecn6,
            ah_cleartos=knobs.ah_cleartos,
            ah_offsetmask=knobs.ah_offsetmask,
            esp_enable=knobs.esp_enable,
            ah_enable=knobs.ah_enable,
            ipcomp_enable=knobs.ipcomp_enable,
            ctr_compatibility=knobs.ctr_compatibility,
            natt_cksum_policy=knobs.natt_cksum_policy,
        )


# --------------------------------------------------------------------- checksums


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``.

    The one's-complement sum of 16-bit words equals the number the bytes spell,
    modulo 0xFFFF (2**16 = 1 mod 0xFFFF), with a non-zero multiple of 0xFFFF
    summing to 0xFFFF: one big-integer operation instead of a loop.
    """
    if len(data) & 1:
        data += b"\0"
    n = int.from_bytes(data, "big")
    s = n % 0xFFFF
    if s == 0 and n:
        s = 0xFFFF
    return ~s & 0xFFFF


def ipv4_checksum(header: bytes) -> int:
    """The IPv4 header checksum of ``header`` with its checksum field taken as 0."""
    return inet_checksum(header[:10] + b"\0\0" + header[12:])


# ------------------------------------------------------------------ the headers

_V4_FIXED = struct.Struct("!BBHHHBBH4s4s")


def split(datagram: bytes, *, inbound: bool = False) -> Split | None:
    """Find where the IPsec header goes in ``datagram`` (or None if it is malformed).

    IPv4: after the header and its options.  The total length must equal the
    datagram's length.

    IPv6 outbound: after the hop-by-hop header, a routing header and the destination
    options in front of a routing header (RFC 4303 §3.1.1; FreeBSD's ``ip6_splithdr``
    keeps the same ones in front).  IPv6 inbound: after every hop-by-hop, destination
    options and routing header, as ``ip6_input`` hands the packet on header by header
    until it reaches a protocol.  The payload length must match; jumbograms are
    refused as FreeBSD's AH and ESP refuse them.
    """
    n = len(datagram)
    if n < 20:
        return None
    version = datagram[0] >> 4
    if version == 4:
        ihl = (datagram[0] & 0x0F) * 4
        if ihl < 20 or n < ihl or int.from_bytes(datagram[2:4], "big") != n:
            return None
        return Split(4, ihl, datagram[9], 9, datagram[12:16], datagram[16:20])
    if version != 6 or n < 40 or int.from_bytes(datagram[4:6], "big") != n - 40:
        return None
    proto, proto_at, off = datagram[6], 6, 40
    if inbound:
        while proto in (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS, IPPROTO_ROUTING):
            if proto == IPPROTO_HOPOPTS and off != 40:
                return None  # hop-by-hop only directly after the IPv6 header (RFC 8200 §4.3)
            if off + 8 > n:
                return None
            elen = (datagram[off + 1] + 1) * 8
            if off + elen > n:
                return None
            proto, proto_at, off = datagram[off], off, off + elen
        return Split(6, off, proto, proto_at, datagram[8:24], datagram[24:40])
    # Outbound: keep hop-by-hop, routing, and destination options followed by a
    # routing header; anything else (a final destination options header included)
    # goes behind the IPsec header.
    kept_proto, kept_at, kept_off = proto, proto_at, off
    while proto in (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS, IPPROTO_ROUTING):
        if proto == IPPROTO_HOPOPTS and off != 40:
            return None
        if off + 8 > n:
            return None
        elen = (datagram[off + 1] + 1) * 8
        if off + elen > n:
            return None
        this = proto
        proto, proto_at, off = datagram[off], off, off + elen
        if this != IPPROTO_DSTOPTS or proto == IPPROTO_ROUTING:
            kept_proto, kept_at, kept_off = proto, proto_at, off
    return Split(6, kept_off, kept_proto, kept_at, datagram[8:24], datagram[24:40])


def join(datagram: bytes, sp: Split, proto: int, payload: bytes) -> bytes:
    """``datagram``'s header part (``datagram[:sp.hlen]``) in front of ``payload``,
    with the next header set to ``proto`` and the lengths (and the IPv4 header
    checksum) fixed.  The caller keeps the total within 65535 (:func:`fits`)."""
    head = bytearray(datagram[: sp.hlen])
    head[sp.proto_at] = proto
    total = sp.hlen + len(payload)
    if sp.version == 4:
        head[2:4] = total.to_bytes(2, "big")
        head[10:12] = b"\0\0"
        head[10:12] = inet_checksum(bytes(head)).to_bytes(2, "big")
    else:
        head[4:6] = (total - 40).to_bytes(2, "big")
    return bytes(head) + payload


def fits(sp: Split, payload_len: int) -> bool:
    """Whether ``payload_len`` bytes behind ``sp``'s header part fit the length field
    (IP_MAXPACKET / IPV6_MAXPACKET: FreeBSD's ESP and AH output fail with EMSGSIZE)."""
    if sp.version == 4:
        return sp.hlen + payload_len <= 0xFFFF
    return sp.hlen - 40 + payload_len <= 0xFFFF


# ------------------------------------------------------------------------ ECN


def tos_of(datagram: bytes) -> int:
    """The IPv4 TOS byte or the IPv6 traffic class of a datagram (at least 2 bytes)."""
    if datagram[0] >> 4 == 6:
        return ((datagram[0] & 0x0F) << 4) | (datagram[1] >> 4)
    return datagram[1]


def ecn_ingress(mode: int, inner: int) -> int:
    """FreeBSD ``ip_ecn_ingress``: the outer TOS for an inner TOS.

    FORBIDDEN copies the DSCP and clears ECN (Not-ECT); ALLOWED copies the byte and
    turns CE into ECT(0) (RFC 6040 §4.1, normal mode); NOCARE copies the byte."""
    if mode == ECN_ALLOWED:
        return inner & ~_ECT1 if inner & _ECN_MASK == _CE else inner
    if mode == ECN_NOCARE:
        return inner
    return inner & ~_ECN_MASK  # FORBIDDEN and any other value, as ip_ecn.c's default case


def ecn_egress(mode: int, outer: int, inner: int) -> int | None:
    """``ip_ecn_egress``: the inner TOS after decapsulation, or None to drop.

    ALLOWED follows RFC 6040 §4.2: CE outside marks an ECT inside as CE and drops a
    Not-ECT one; ECT(1) outside turns ECT(0) inside into ECT(1).  FORBIDDEN drops
    what was marked CE on the way (the inner could not carry it).  NOCARE passes the
    inner unchanged.  The DSCP inside is never touched."""
    o = outer & _ECN_MASK
    if mode == ECN_ALLOWED:
        i = inner & _ECN_MASK
        if o == _CE:
            return None if i == 0 else inner | _CE
        if o == _ECT1 and i == _ECT0:
            return (inner & ~_ECN_MASK) | _ECT1
        return inner
    if mode == ECN_NOCARE:
        return inner
    return None if o == _CE else inner


def _with_tos(datagram: bytes, tos: int) -> bytes:
    """``datagram`` with its TOS (IPv4, checksum fixed) or traffic class (IPv6) set."""
    if tos == tos_of(datagram):
        return datagram
    b = bytearray(datagram)
    if b[0] >> 4 == 6:
        b[0] = 0x60 | (tos >> 4)
        b[1] = ((tos & 0x0F) << 4) | (b[1] & 0x0F)
        return bytes(b)
    b[1] = tos
    ihl = (b[0] & 0x0F) * 4
    b[10:12] = b"\0\0"
    b[10:12] = inet_checksum(bytes(b[:ihl])).to_bytes(2, "big")
    return bytes(b)


# ---------------------------------------------------------------- tunnel mode


def well_formed(datagram: bytes) -> int:
    """4 or 6 when ``datagram`` is a whole IPv4 or IPv6 datagram (header and length
    fields agree with its size), else 0: what encapsulation needs, without the walk
    of :func:`split`."""
    n = len(datagram)
    if n < 20:
        return 0
    first = datagram[0]
    if first >> 4 == 4:
        return 4 if first & 0x0F >= 5 and (first & 0x0F) * 4 <= n and (datagram[2] << 8 | datagram[3]) == n else 0
    if first >> 4 == 6 and n >= 40 and (datagram[4] << 8 | datagram[5]) == n - 40:
        return 6
    return 0


def encapsulate(inner: bytes, src: bytes, dst: bytes, knobs: PacketKnobs, ident: int = 0) -> bytes | None:
    """IP-in-IP with FreeBSD's outer header (``ipsec_encap``), or None if ``inner`` is
    not a well-formed datagram or the result would not fit.

    The outer family is that of ``src``/``dst`` (4 or 16 bytes).  An inner IPv4 header
    gets its checksum recomputed first (FreeBSD fixes the inner length and checksum
    before encapsulating).  Outer IPv4: TTL ``knobs.ttl``, ID ``ident``, DF by
    ``dfbit`` (0 clear, 1 set, 2 or more copied from an inner IPv4 header; an inner
    IPv6 datagram counts as DF set, as Linux does, since FreeBSD reads an
    uninitialised variable there); TOS through :func:`ecn_ingress` with ``ecn``.
    Outer IPv6: hop limit ``knobs.hlim``, flow label 0, traffic class through
    :func:`ecn_ingress` with ``ecn6``.
    """
    version = well_formed(inner)
    if not version or len(src) != len(dst) or len(src) not in (4, 16):
        return None
    if version == 4:
        ihl = (inner[0] & 0x0F) * 4
        if inet_checksum(inner[:ihl]):  # a header that sums to 0 is already right
            h = bytearray(inner[:ihl])
            h[10] = h[11] = 0
            ck = inet_checksum(bytes(h))
            h[10], h[11] = ck >> 8, ck & 0xFF
            inner = bytes(h) + inner[ihl:]
        nh, inner_df, tos = IPPROTO_IPV4, bool(inner[6] & 0x40), inner[1]
    else:
        nh, inner_df, tos = IPPROTO_IPV6, True, ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)
    if len(src) == 4:
        total = 20 + len(inner)
        if total > 0xFFFF:
            return None
        df = knobs.dfbit == 1 or (knobs.dfbit >= 2 and inner_df)
        fields = (0x45, ecn_ingress(knobs.ecn, tos), total, ident & 0xFFFF, _IP_DF if df else 0, knobs.ttl & 0xFF, nh)
        ck = inet_checksum(_V4_FIXED.pack(*fields, 0, src, dst))
        return _V4_FIXED.pack(*fields, ck, src, dst) + inner
    if len(inner) > 0xFFFF:
        return None
    tc = ecn_ingress(knobs.ecn6, tos)
    first = (0x60000000 | (tc << 20)).to_bytes(4, "big")
    return b"".join((first, struct.pack("!HBB", len(inner), nh, knobs.hlim & 0xFF), src, dst, inner))


def decapsulate(outer: bytes, sp: Split, knobs: PacketKnobs) -> bytes | str:
    """The inner datagram of an IP-in-IP datagram whose outer header part is ``sp``
    (``sp.proto`` 4 or 41), or a reason to drop it (:data:`DECAP_BADINNER`,
    :data:`DECAP_ECN`).

    The inner datagram must be one of the family ``sp.proto`` names and must fit in
    what follows the outer header; bytes behind it (TFC padding, RFC 4303 §2.7) are
    cut off.  ``ip_ecn_egress`` runs with the outer family's ECN knob.  Current
    FreeBSD skips this step (it strips the outer header as it is); pfkeyd follows
    the older ``ipip_input`` and RFC 6040.
    """
    body = outer[sp.hlen :]
    if len(body) < 20:
        return DECAP_BADINNER
    version = body[0] >> 4
    if sp.proto == IPPROTO_IPV4 and version == 4:
        length = int.from_bytes(body[2:4], "big")
    elif sp.proto == IPPROTO_IPV6 and version == 6 and len(body) >= 40:
        length = 40 + int.from_bytes(body[4:6], "big")
    else:
        return DECAP_BADINNER
    if length > len(body):
        return DECAP_BADINNER
    inner = body[:length]
    if not well_formed(inner):
        return DECAP_BADINNER
    mode = knobs.ecn if sp.version == 4 else knobs.ecn6
    tos = ecn_egress(mode, tos_of(outer), tos_of(inner))
    if tos is None:
        return DECAP_ECN
    return _with_tos(inner, tos)
