"""IPComp (RFC 3173) with DEFLATE (RFC 2394), as FreeBSD's ``xform_ipcomp.c`` does it.

Theory of operation
-------------------
Outbound (``ipcomp_output``): a datagram of at most :data:`THRESHOLD` bytes, IP
header included, goes out as it is (``ipcomps_threshold``); otherwise everything
behind the IP header (behind the unfragmentable IPv6 extension headers) is
compressed with raw deflate, window 2**12, level 6, memLevel 8, as FreeBSD's
``cryptodeflate.c`` calls zlib.  Only a result strictly shorter than the payload is
used (the 4-byte header is not counted: ``crp_ilen - skip > crp_olen``); otherwise
the datagram goes out as it is (``ipcomps_uncompr``).  The header carries the
original next header, flags 0 and the CPI, the low 16 bits of the SPI.

Inbound (``ipcomp_input``): an IPComp header whose next header is IPComp again is
refused before any work ("recursive compression"); the payload is inflated with a
32 KB window until the end of the deflate stream; the result must fit an IP datagram.

An IPComp SA has no replay window and no integrity: no per-SA state changes here.
Small packets of a tunnel-mode IPComp SA travel as plain IP-in-IP; FreeBSD accepts
them through an encap hook (``ipcomp_encapcheck``: an IPComp tunnel SA for the
outer source and destination).  :func:`accepts_plain` states that rule; the bundle
applies it.
"""

from __future__ import annotations

import zlib

from pfkeyd.packet import ip
from pfkeyd.packet.counters import IPCOMP, Drop
from pfkeyd.record import record

__all__ = [
    "THRESHOLD",
    "HEADER_LEN",
    "Uncompressed",
    "cpi_of",
    "spi_of_cpi",
    "compress",
    "decompress",
    "protect",
    "unprotect",
    "accepts_plain",
]

#: ``comp_algo_deflate.minlen``: a whole datagram this long or shorter is not compressed.
THRESHOLD = 90
HEADER_LEN = 4

# cryptodeflate.c: deflateInit2(Z_DEFAULT_COMPRESSION, Z_METHOD, -DEFLATE_WINDOW_BITS
# (12), DEFLATE_MEMLEVEL (8), Z_DEFAULT_STRATEGY); inflateInit2(-MAX_WBITS).
_LEVEL = 6
_WBITS_OUT = -12
_MEMLEVEL = 8
_WBITS_IN = -15


@record
class Uncompressed:
    """A datagram the SA sends as it is, and why: ``"threshold"`` (too small to try)
    or ``"uncompr"`` (compression did not make it smaller).  Not a drop."""

    datagram: bytes
    reason: str


def cpi_of(spi: int) -> int:
    """The CPI on the wire: ``htons((u_int16_t)ntohl(sav->spi))``."""
    return spi & 0xFFFF


def spi_of_cpi(cpi: int) -> int:
    """The SPI an inbound CPI is looked up by (``ntohl(htons(cpi))``)."""
    return cpi & 0xFFFF


def compress(data: bytes) -> bytes:
    c = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS_OUT, _MEMLEVEL)
    return c.compress(data) + c.flush(zlib.Z_FINISH)


def decompress(data: bytes, limit: int) -> bytes | None:
    """Inflate a raw deflate stream, or None if it is not one, does not end, has
    bytes after its end, or inflates to more than ``limit`` bytes."""
    d = zlib.decompressobj(_WBITS_IN)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or not d.eof or d.unused_data:
        return None
    return out


def protect(spi: int, datagram: bytes) -> bytes | Uncompressed | Drop:
    """Compress ``datagram`` for the IPComp SA ``spi`` (``ipcomp_output``)."""
    if len(datagram) <= THRESHOLD:
        return Uncompressed(datagram, "threshold")
    sp = ip.split(datagram)
    if sp is None:
        return Drop(IPCOMP, "hdrops")
    if not ip.fits(sp, len(datagram) - sp.hlen + HEADER_LEN):
        return Drop(IPCOMP, "toobig")
    payload = datagram[sp.hlen :]
    packed = compress(payload)
    if len(payload) <= len(packed):
        return Uncompressed(datagram, "uncompr")
    header = bytes((sp.proto, 0)) + cpi_of(spi).to_bytes(2, "big")
    return ip.join(datagram, sp, ip.IPPROTO_IPCOMP, header + packed)


def unprotect(datagram: bytes, sp: ip.Split | None = None) -> bytes | Drop:
    """Decompress an IPComp datagram (``ipcomp_input``); ``sp`` is its inbound split
    if the caller has it."""
    if sp is None:
        sp = ip.split(datagram, inbound=True)
    if sp is None or sp.proto != ip.IPPROTO_IPCOMP or len(datagram) < sp.hlen + HEADER_LEN:
        return Drop(IPCOMP, "hdrops")
    nxt = datagram[sp.hlen]
    if nxt == ip.IPPROTO_IPCOMP:
        return Drop(IPCOMP, "recursive")
    room = 0xFFFF - sp.hlen if sp.version == 4 else 0xFFFF - (sp.hlen - 40)
    plain = decompress(datagram[sp.hlen + HEADER_LEN :], room)
    if plain is None:
        return Drop(IPCOMP, "badcomp")
    return ip.join(datagram, sp, nxt, plain)


def accepts_plain(sa_tunnel: bool, sa_src: bytes, sa_dst: bytes, sp: ip.Split) -> bool:
    """``ipcomp_encapcheck``: an uncompressed IP-in-IP datagram (``sp``) arrives for a
    tunnel-mode IPComp SA from ``sa_src`` to ``sa_dst``: FreeBSD takes it as that
    SA's traffic (it was too small, or did not shrink)."""
    return sa_tunnel and sp.proto in (ip.IPPROTO_IPV4, ip.IPPROTO_IPV6) and sp.src == sa_src and sp.dst == sa_dst
