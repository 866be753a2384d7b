"""One-step paths, out and in, for the commonest bundle: one ESP tunnel SA, IPv4 in IPv4, AEAD.

Theory of operation
-------------------
The general path (:func:`pfkeyd.packet.bundle.protect`) encapsulates first (an IPv4
outer header in front of the inner datagram, :func:`pfkeyd.packet.ip.encapsulate`)
and then applies ESP in transport fashion to that datagram (:func:`pfkeyd.packet.esp.protect`),
which rebuilds the outer header with the new length and protocol.  For a policy
whose bundle is a single ESP SA in tunnel mode with IPv4 addresses, no NAT-T and a
combined-mode cipher (AES-GCM-16 or ChaCha20-Poly1305, the SAs ESP's own fast path
takes), carrying a well-formed IPv4 datagram without options and with a correct
header checksum (what the kernel writes into a TUN), :func:`protect` builds the
outer header, already with protocol 50 and the final length, and the ESP header
around the sealed inner datagram in one step: one header built, one checksum, one
join.

It does exactly what the general path does, in the same order and with the same
counting: the outer ID is drawn from ``random(2)`` before anything else, a protocol
disabled by ``esp_enable`` drops the packet (``pdrops``), the sequence counter
refuses to wrap (``wrap``), ``output``/``obytes`` and the SA's bytes and packets
are counted, DF comes from ``dfbit``, the TOS through ``ecn_ingress``.  A property
test (tests/packet/test_fasttunnel.py) holds the two equal, bytes, drops, counters
and SA state.  Anything else returns None and the caller takes the general path.

Where ESP's plan has the compiled module's ``EspV4`` (``pfkeyd.packet.espfast``),
the inner header check and the sealing go there in two calls (``ipv4_ok`` and
``tunnel``: outer header, ESP header, IV, trailer, AAD, seal and tag in one
allocation); every decision above stays here, in the same order.

Inbound, the general path (:func:`pfkeyd.packet.bundle.unprotect`) splits the
datagram, peeks at the SPI, looks the SA up, runs ESP
(:func:`pfkeyd.packet.esp.unprotect`, whose compiled branch is the replay check,
``EspV4.open`` and the replay update), splits again for the decapsulation
(:func:`pfkeyd.packet.ip.decapsulate`: inner header checks, TFC padding cut off,
ECN egress), counts, and looks at the inner datagram to see whether more is to be
undone.  :func:`unprotect` does the same for an IPv4 ESP datagram without options
whose SA is an ESP tunnel SA on the compiled path without NAT-T, in one function:
the same checks in the same order, ``notdb`` for an SPI no SA answers, the replay
window moved as ESP moves it (before and after the ICV, and after it for a bad
trailer), and the outer header stripped by one slice when the decapsulation can
change nothing (outer ECN Not-ECT or ECT(0), which every ECN mode passes through;
an IPv4 inner datagram that fills the payload exactly); any other decapsulation
is the general path's own.  An inner datagram that may carry more ESP, AH, IPComp
or IP-in-IP goes on through :func:`pfkeyd.packet.bundle.resume`.  What it does not
take (another shape, ESP disabled, another kind of SA) it declines before counting
or changing anything.  A property test holds it equal to the general path over
random inner datagrams, ECN modes, replays, reordering, tampering, truncation and
wrong SPIs: results, counters and SA state.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from pfkeyd.packet import bundle, esp, ip
from pfkeyd.packet.bundle import Accepted, Bound, Lookup, Peek
from pfkeyd.packet.counters import ESP, Counters, Drop
from pfkeyd.packet.crypto import espfast
from pfkeyd.packet.ip import PacketKnobs
from pfkeyd.packet.runtime import U32, U64, SaRuntime

__all__ = ["eligible", "finish", "protect", "unprotect"]

_OUTER = struct.Struct("!BBHHHBBH4s4s")
_IP_DF = 0x4000
_PDROPS = Drop(ESP, "pdrops")
_WRAP = Drop(ESP, "wrap")
_NOTDB = Drop(ESP, "notdb")
_SPI_SEQ = struct.Struct("!II")
#: Source, destination and SPI of an inbound ESP datagram -> its lookup key.
_PEEKS: dict[bytes, Peek] = {}
_ADDR_SUMS: dict[bytes, int] = {}


def eligible(chain: tuple[Bound, ...]) -> bool:
    """Whether :func:`protect` can take this bundle (it still checks each datagram)."""
    if len(chain) != 1:
        return False
    sa = chain[0].sa
    if (
        sa.proto != ip.IPPROTO_ESP
        or not sa.tunnel
        or sa.natt is not None
        or len(sa.src) != 4
        or len(sa.dst) != 4
        or sa.cipher is None
    ):
        return False
    return bool(esp.plan_of(sa).fast)


def protect(
    chain: tuple[Bound, ...],
    dg: bytes,
    knobs: PacketKnobs,
    counters: Counters,
    *,
    random: Callable[[int], bytes] = os.urandom,
) -> bytes | Drop | None:
    """The protected datagram, the Drop that stopped it (counted), or None when this
    datagram needs the general path.  ``chain`` must be :func:`eligible`."""
    bound = chain[0]
    sa, state = bound.sa, bound.state
    plan = esp.plan_of(sa)
    native = plan.native
    n = len(dg)
    if n > 65535 - 20 - 36 - 3 - 16:
        return None
    if native is not None:
        if not espfast.ipv4_ok(dg):
            return None  # as below, in one call
    elif n < 20 or dg[0] != 0x45 or n != (dg[2] << 8 | dg[3]) or ip.inet_checksum(dg[:20]):
        return None  # the general path fixes the inner header first
    if not knobs.esp_enable:
        return counters.drop(_PDROPS)
    ident = int.from_bytes(random(2), "big")
    seq = state.seq
    mask = plan.wrap_mask
    if mask and seq & mask == mask:
        return counters.drop(_WRAP)
    seq = state.seq = (seq + 1) & U64
    counter = state.iv_counter
    state.iv_counter = (counter + 1) & U64
    dfbit = knobs.dfbit
    off = _IP_DF if dfbit == 1 or (dfbit >= 2 and dg[6] & 0x40) else 0
    tos = ip.ecn_ingress(knobs.ecn, dg[1])
    if native is not None:
        # The outer header as a template: tunnel() sets its length, protocol and checksum.
        outer = _OUTER.pack(0x45, tos, 0, ident, off, knobs.ttl & 0xFF, 0, 0, sa.src, sa.dst)
        out = native.tunnel(outer, dg, seq, counter)
        return _count(counters, state, n, out)
    iv = counter.to_bytes(8, "big")
    lo = (seq & U32).to_bytes(4, "big")
    aad = plan.spi + (seq >> 32).to_bytes(4, "big") + lo if sa.esn else plan.spi + lo
    ct = plan.encrypt(plan.salt + iv, dg + plan.trailers[n % plan.blks * 256 + ip.IPPROTO_IPV4], aad)
    total = 36 + len(ct)
    ttl_proto = (knobs.ttl & 0xFF) << 8 | ip.IPPROTO_ESP
    # The header checksum from its 16-bit words (the addresses' share once per pair):
    # the same number inet_checksum computes, without packing the header twice.
    addr = _ADDR_SUMS.get(sa.src + sa.dst)
    if addr is None:
        addr = _ADDR_SUMS[sa.src + sa.dst] = sum(struct.unpack("!4H", sa.src + sa.dst))
        if len(_ADDR_SUMS) > 4096:
            _ADDR_SUMS.clear()
    s = (0x4500 + tos + total + ident + off + ttl_proto + addr) % 0xFFFF or 0xFFFF
    out = b"".join(
        (
            _OUTER.pack(0x45, tos, total, ident, off, ttl_proto >> 8, ip.IPPROTO_ESP, ~s & 0xFFFF, sa.src, sa.dst),
            plan.spi,
            lo,
            iv,
            ct,
        )
    )
    return _count(counters, state, n, out)


def _count(counters: Counters, state: SaRuntime, n: int, out: bytes) -> bytes:
    """Count a datagram of ``n`` bytes that went out as ``out``, as the general path does."""
    counters.add(ESP, "output")
    counters.add(ESP, "obytes", n)
    state.bytes += len(out)
    state.packets += 1
    return out


def unprotect(dg: bytes, lookup: Lookup, knobs: PacketKnobs, counters: Counters) -> Accepted | Drop | None:
    """What :func:`pfkeyd.packet.bundle.unprotect` returns for ``dg`` (counted the same
    way), or None, before anything was counted or changed, when ``dg`` is not an
    IPv4 ESP datagram without options of a shape the compiled open takes, ESP is
    disabled, or the SA the lookup finds is not a tunnel-mode SA on the compiled
    path without NAT-T: the caller then takes the general path (which looks up
    again)."""
    n = len(dg)
    # What EspV4.peek takes: IPv4 without options, ESP, the total length right, a
    # multiple of 4, more than the headers and the ICV.
    if n <= 52 or n & 3 or dg[0] != 0x45 or dg[9] != ip.IPPROTO_ESP or (dg[2] << 8 | dg[3]) != n:
        return None
    if not knobs.esp_enable:
        return None  # the general path counts pdrops
    spi, seq = _SPI_SEQ.unpack_from(dg, 20)
    # The lookup key, one record per source, destination and SPI (building one costs
    # more than the slice and the dict lookup; records are immutable, so one serves all).
    ends = dg[12:24]
    key = _PEEKS.get(ends)
    if key is None:
        if len(_PEEKS) >= 4096:
            _PEEKS.clear()
        key = _PEEKS[ends] = Peek(ip.IPPROTO_ESP, spi, dg[12:16], dg[16:20])
    bound = lookup(key)
    if bound is None:
        return counters.drop(_NOTDB)
    sa = bound.sa
    if sa.proto != ip.IPPROTO_ESP:
        return counters.drop(_NOTDB)
    if not sa.tunnel or sa.natt is not None:
        return None
    plan = esp.plan_of(sa)
    native = plan.native
    if native is None:
        return None
    state = bound.state
    # ESP: the compiled steps esp.unprotect takes too (one function, esp.open_compiled).
    if spi != plan.spi_int:
        return counters.drop(_NOTDB)
    opened = esp.open_compiled(native, state, dg, seq)
    if isinstance(opened, Drop):
        return counters.drop(opened)
    return finish(dg, opened, bound, lookup, knobs, counters)


def finish(
    dg: bytes, opened: bytes, bound: Bound, lookup: Lookup, knobs: PacketKnobs, counters: Counters
) -> Accepted | Drop:
    """What :func:`unprotect` does once ESP is undone: ``opened`` is ``dg`` opened with
    ``bound``'s SA (the window already moved), the outer header still in front.  The
    data plane's compiled loop hands the datagrams whose decapsulation it does not
    take to this."""
    # The outer header (ip.decapsulate): an IPv4 inner datagram that is whole, with
    # ECN egress a no-op (the outer ECN field Not-ECT or ECT(0): every mode keeps the
    # inner TOS) is the inner datagram as it is.  Anything else goes the general way.
    m = len(opened)
    inner: bytes | Drop
    done = False  # whether inner is the answer (nothing more of ours can follow)
    if m >= 40 and opened[9] == ip.IPPROTO_IPV4 and not dg[1] & 1 and opened[20] >> 4 == 4 and opened[20] & 0x0F >= 5:
        length = opened[22] << 8 | opened[23]
        if length == m - 20 and (opened[20] & 0x0F) * 4 <= length:
            inner = opened[20:]
            # What the general loop looks at next: a whole datagram (this one is) whose
            # next header cannot carry more of ours is the answer.
            done = inner[9] not in bundle._MAYBE_MORE
        else:
            inner = _decap(opened, knobs)
    else:
        inner = _decap(opened, knobs)
    if isinstance(inner, Drop):
        return counters.drop(inner)
    counters.add(ESP, "input")
    counters.add(ESP, "ibytes", len(dg) - 20)
    state = bound.state
    state.bytes += len(inner)
    state.packets += 1
    if done:
        return Accepted(inner, (bound,))
    return bundle.resume(inner, [bound], lookup, knobs, counters)


def _decap(opened: bytes, knobs: PacketKnobs) -> bytes | Drop:
    """The general path's decapsulation of an opened tunnel-mode datagram."""
    return bundle._decap_tunnel(ESP, opened, ip.Split(4, 20, opened[9], 9, opened[12:16], opened[16:20]), knobs)
