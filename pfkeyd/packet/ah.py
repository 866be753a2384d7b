"""AH (RFC 4302) as FreeBSD's ``xform_ah.c`` does it: a pure transform on datagrams.

Theory of operation
-------------------
The AH header goes where :func:`pfkeyd.packet.ip.split` says (after the IPv4 header
and options, or after the IPv6 header and the extension headers that precede AH).
It is 12 bytes (next header, length, reserved, SPI, sequence number; 8 without the
sequence number for an ``SADB_X_EXT_OLD`` SA, whose ICV is 16 bytes) plus the ICV,
padded with zeros to 4 bytes over IPv4 and 8 over IPv6 (``ah_hdrsiz``).

The ICV covers the whole datagram with the fields that may change in transit
"massaged" (``ah_massage_headers``): IPv4 TTL, checksum, the TOS byte when
``ah_cleartos`` is set, and ``ip_off`` masked with ``ah_offsetmask`` (0: zeroed);
every IPv4 option but the security ones and router alert is zeroed whole, after a
source route has lent its final hop to the destination address (output only).  IPv6:
traffic class, flow label and hop limit zeroed, the embedded scope of link-local
addresses cleared, options with the "may change" bit (0x20) zeroed whole, routing
headers as they stand.  With ESN the high 32 bits of the sequence number follow the
datagram in the ICV input, never on the wire (RFC 4302 §2.5.1).

Inbound, the checks run in FreeBSD's order: replay window (before the ICV), AH
length, the massage, the ICV, then the window is updated.  A drop leaves the SA's
state as it was.
"""

from __future__ import annotations

import hmac

from pfkeyd.packet import ip
from pfkeyd.packet.counters import AH, Drop
from pfkeyd.packet.runtime import SaRuntime
from pfkeyd.packet.sa import TransformSA

__all__ = ["protect", "unprotect", "massage_ipv4", "massage_ipv6", "header_size", "AH_OLD_ICV"]

#: The ICV of an SADB_X_EXT_OLD (RFC 1826) SA: 16 bytes, no sequence number.
AH_OLD_ICV = 16

_IPOPT_EOL = 0
_IPOPT_NOP = 1
_IPOPT_LSRR = 0x83
_IPOPT_SSRR = 0x89
#: Options FreeBSD leaves in the ICV: security 0x82, 0x85, 0x86, router alert
#: 0x94 and RFC 1770's 0x95.
_IMMUTABLE_OPTS = frozenset((0x82, 0x85, 0x86, 0x94, 0x95))
_IP6OPT_PAD1 = 0
_IP6OPT_MUTABLE = 0x20


def header_size(icv_len: int, version: int, old: bool = False) -> int:
    """``ah_hdrsiz``: the AH header with its ICV, aligned to 4 (IPv4) or 8 (IPv6)."""
    size = (8 if old else 12) + (AH_OLD_ICV if old else icv_len)
    align = 8 if version == 6 else 4
    return -(-size // align) * align


def massage_ipv4(head: bytes, *, cleartos: bool, offsetmask: int, out: bool) -> bytes | None:
    """The IPv4 header part (options included) as the ICV sees it, or None for a
    malformed option (FreeBSD: EINVAL, counted as ``hdrops``)."""
    h = bytearray(head)
    if cleartos:
        h[1] = 0
    h[8] = 0  # ttl
    h[10:12] = b"\0\0"
    h[6:8] = (int.from_bytes(h[6:8], "big") & offsetmask).to_bytes(2, "big")
    skip = len(h)
    off = 20
    while off < skip:
        opt = h[off]
        if opt == _IPOPT_EOL:
            break
        if opt == _IPOPT_NOP:
            off += 1
            continue
        if off + 1 >= skip or h[off + 1] < 2:
            return None
        olen = h[off + 1]
        if off + olen > skip:
            return None
        if opt not in _IMMUTABLE_OPTS:
            if opt in (_IPOPT_LSRR, _IPOPT_SSRR) and out:
                # The receiver sees the last hop of the route as the destination.
                if olen < 7:
                    return None
                h[16:20] = h[off + olen - 4 : off + olen]
            h[off : off + olen] = bytes(olen)
        off += olen
    return bytes(h)


def _linklocal(addr: bytearray | bytes) -> bool:
    # IN6_IS_SCOPE_LINKLOCAL: fe80::/10 or link-local multicast ff02::/16.
    return (addr[0] == 0xFE and addr[1] & 0xC0 == 0x80) or (addr[0] == 0xFF and addr[1] & 0x0F == 0x02)


def massage_ipv6(head: bytes) -> bytes | None:
    """The IPv6 header and the extension headers in front of AH as the ICV sees
    them, or None when one of them is malformed or of a kind that may not precede
    AH (FreeBSD: EINVAL)."""
    h = bytearray(head)
    h[0:4] = b"\x60\0\0\0"  # version 6, traffic class and flow label 0
    h[7] = 0  # hop limit
    for at in (8, 24):
        if _linklocal(h[at : at + 16]):
            h[at + 2 : at + 4] = b"\0\0"  # KAME's embedded scope
    nxt, off, skip = h[6], 40, len(h)
    while off < skip:
        if off + 2 > skip:
            return None
        noff = off + (h[off + 1] + 1) * 8
        if noff > skip:
            return None
        if nxt in (ip.IPPROTO_HOPOPTS, ip.IPPROTO_DSTOPTS):
            count = off + 2
            while count < noff:
                if h[count] == _IP6OPT_PAD1:
                    count += 1
                    continue
                if count + 1 >= noff:
                    return None
                ad = h[count + 1] + 2
                if count + ad > noff:
                    return None
                if h[count] & _IP6OPT_MUTABLE:
                    h[count : count + ad] = bytes(ad)
                count += ad
        elif nxt != ip.IPPROTO_ROUTING:
            return None
        nxt, off = h[off], noff
    return bytes(h)


def _massage(sp: ip.Split, head: bytes, sa: TransformSA, *, out: bool) -> bytes | None:
    if sp.version == 4:
        return massage_ipv4(head, cleartos=sa.ah_cleartos, offsetmask=sa.ah_offsetmask, out=out)
    return massage_ipv6(head)


def protect(sa: TransformSA, state: SaRuntime, datagram: bytes) -> bytes | Drop:
    """``ah_output``: insert the AH header behind the IP header part of ``datagram``.

    Drops (nothing in ``state`` changes): ``hdrops`` for a malformed datagram,
    ``badopt`` for an IPv4 option or IPv6 extension header the massage refuses,
    ``noxform`` for an SA without a MAC or with RFC 1826 framing (not implemented),
    ``toobig`` past 65535 bytes, ``wrap`` when the sequence number would wrap.
    """
    mac = sa.mac
    if mac is None or sa.old:
        return Drop(AH, "noxform")
    sp = ip.split(datagram)
    if sp is None:
        return Drop(AH, "hdrops")
    icv_len = mac.icv
    size = header_size(icv_len, sp.version)
    payload = datagram[sp.hlen :]
    if not ip.fits(sp, len(payload) + size):
        return Drop(AH, "toobig")
    blank = bytes(size - 12)
    # The final header (length, next header 51) is what the receiver massages.
    final = ip.join(datagram, sp, ip.IPPROTO_AH, b"")
    head = final[: sp.hlen]
    if sp.version == 4:
        head = head[:2] + (sp.hlen + size + len(payload)).to_bytes(2, "big") + head[4:]
    else:
        head = head[:4] + (sp.hlen - 40 + size + len(payload)).to_bytes(2, "big") + head[6:]
    massaged = _massage(sp, head, sa, out=True)
    if massaged is None:
        return Drop(AH, "badopt")
    seq = state.next_seq(esn=sa.esn, cycseq=sa.cycseq)
    if seq is None:
        return Drop(AH, "wrap")
    fixed = bytes((sp.proto, (size - 8) // 4, 0, 0)) + sa.spi.to_bytes(4, "big") + (seq & 0xFFFFFFFF).to_bytes(4, "big")
    trailer = (seq >> 32).to_bytes(4, "big") if sa.esn else b""
    icv = mac.digest(massaged + fixed + blank + payload, trailer)
    return ip.join(datagram, sp, ip.IPPROTO_AH, fixed + icv + blank[icv_len:] + payload)


def unprotect(sa: TransformSA, state: SaRuntime, datagram: bytes) -> bytes | Drop:
    """``ah_input`` and ``ah_input_cb``: verify and remove the AH header.

    The order is FreeBSD's: replay window (``replay``, or ``wrap`` past the end of
    the sequence space), the AH length against the SA's (``badauthl``), the
    massage (``badopt``), the ICV (``badauth``), then the window is updated.  A drop
    leaves ``state`` as it was.
    """
    mac = sa.mac
    if mac is None or sa.old:
        return Drop(AH, "noxform")
    sp = ip.split(datagram, inbound=True)
    if sp is None or sp.proto != ip.IPPROTO_AH or len(datagram) < sp.hlen + 12:
        return Drop(AH, "hdrops")
    at = sp.hlen
    seq = int.from_bytes(datagram[at + 8 : at + 12], "big")
    seq64 = seq
    window = state.replay
    if window is not None:
        got = window.check(seq)
        if got is None:
            return Drop(AH, "wrap" if window.wrapped(seq) else "replay")
        seq64 = got
    icv_len = mac.icv
    size = header_size(icv_len, sp.version)
    if 8 + datagram[at + 1] * 4 != size or len(datagram) < at + size:
        return Drop(AH, "badauthl")
    massaged = _massage(sp, datagram[:at], sa, out=False)
    if massaged is None:
        return Drop(AH, "badopt")
    trailer = (seq64 >> 32).to_bytes(4, "big") if sa.esn else b""
    zeroed = datagram[at : at + 12] + bytes(icv_len) + datagram[at + 12 + icv_len :]
    icv = mac.digest(massaged + zeroed, trailer)
    if not hmac.compare_digest(icv, datagram[at + 12 : at + 12 + icv_len]):
        return Drop(AH, "badauth")
    if window is not None and not window.update(seq):
        return Drop(AH, "replay")
    return ip.join(datagram, sp, datagram[at], datagram[at + size :])
