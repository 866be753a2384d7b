"""SA bundles: the transforms of one policy applied in FreeBSD's order, counted.

Theory of operation
-------------------
Outbound (``ipsec4_process_packet``, ``ipsec_process_done``): the SAs of a policy's
requests are applied in the order the policy lists them, the first one innermost
(``ipcomp/tunnel ... esp/transport ... ah/transport`` gives IPComp, then ESP, then
AH).  Before each transform, ``ipsec_encap`` wraps the datagram in an outer header
from the SA's addresses when the SA is in tunnel mode, when its address family is
not the datagram's, or when its destination is neither unspecified nor the
datagram's.  A protocol switched off by its ``*_enable`` knob drops the packet
(``pdrops``).  After the last transform an ESP SA with NAT-T puts the datagram in
UDP (RFC 3948).

Inbound (``ipsec_common_input``, ``ipsec4_common_input_cb``): while the datagram's
next header is ESP, AH or IPComp, :func:`peek` reads the SPI (for IPComp the CPI)
and destination, the caller's ``lookup`` finds the SA (FreeBSD: destination,
protocol and SPI only), the transform runs, and a tunnel-mode SA whose payload is
IP-in-IP has its outer header stripped (:func:`pfkeyd.packet.ip.decapsulate`, with
ECN egress).  Plain IP-in-IP is accepted for an IPComp tunnel SA of its outer
source and destination: the small packets that SA sent uncompressed
(``ipcomp_encapcheck``).  What comes out is the inner datagram and the SAs that
were applied, for the caller's inbound policy check.

Every verdict is counted once here (the transforms never count): packets and bytes
per protocol (``output``/``obytes``, ``input``/``ibytes``, as the ``*stat``
structures count them) and each :class:`~pfkeyd.packet.counters.Drop`.  Each SA's
:class:`~pfkeyd.packet.runtime.SaRuntime` gains the bytes and packets it carried
(``key_sa_recordxfer``: the protected datagram outbound, the recovered one inbound),
which :mod:`pfkeyd.packet.usage` hands to the key engine.  No input raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from pfkeyd.packet import ah, esp, ip, ipcomp, natt
from pfkeyd.packet.counters import AH, ESP, IPCOMP, NATT, Counters, Drop
from pfkeyd.packet.ip import PacketKnobs
from pfkeyd.packet.runtime import SaRuntime
from pfkeyd.packet.sa import TransformSA
from pfkeyd.record import record

__all__ = [
    "Bound",
    "Peek",
    "Accepted",
    "Lookup",
    "peek",
    "protect",
    "unprotect",
    "resume",
    "unprotect_udp",
    "MAX_DEPTH",
]

#: IP protocol number -> counter table name.
_NAMES: dict[int, str] = {ip.IPPROTO_ESP: ESP, ip.IPPROTO_AH: AH, ip.IPPROTO_IPCOMP: IPCOMP}

#: Next headers after which an inbound datagram may still carry something of ours:
#: ESP, AH, IPComp, IP-in-IP, and the IPv6 extension headers in front of them.
_MAYBE_MORE = frozenset(
    (
        ip.IPPROTO_ESP,
        ip.IPPROTO_AH,
        ip.IPPROTO_IPCOMP,
        ip.IPPROTO_IPV4,
        ip.IPPROTO_IPV6,
        ip.IPPROTO_HOPOPTS,
        ip.IPPROTO_ROUTING,
        ip.IPPROTO_DSTOPTS,
    )
)

#: Most headers one datagram may shed on the way in (nested tunnels included);
#: deeper nesting is dropped as ``hdrops`` of the protocol that would go next.
MAX_DEPTH = 8


@record
class Bound:
    """An SA and its traffic state: one step of a bundle."""

    sa: TransformSA
    state: SaRuntime


@record
class Peek:
    """What the SAD lookup needs (``ipsec_common_input``): the protocol, the SPI (the
    IPComp CPI as an SPI; 0 for plain IP-in-IP, protocol 4 or 41) and the outer
    source and destination addresses as raw bytes."""

    proto: int
    spi: int
    src: bytes
    dst: bytes


@record
class Accepted:
    """An inbound datagram that passed: the inner datagram and the SAs applied, outermost first."""

    datagram: bytes
    applied: tuple[Bound, ...]


#: The caller's SAD lookup: a :class:`Peek` -> the SA, or None (``notdb``).  For
#: plain IP-in-IP (``proto`` 4 or 41) it returns the IPComp tunnel SA of the source
#: and destination, if there is one.
Lookup = Callable[[Peek], Bound | None]


def _enabled(knobs: PacketKnobs, proto: int) -> bool:
    if proto == ip.IPPROTO_ESP:
        return bool(knobs.esp_enable)
    if proto == ip.IPPROTO_AH:
        return bool(knobs.ah_enable)
    return bool(knobs.ipcomp_enable)


def peek(datagram: bytes) -> Peek | Drop | None:
    """The lookup key of an inbound datagram; a Drop (``hdrops``) when an ESP, AH or
    IPComp datagram has fewer than 8 bytes behind its IP header, None when the
    datagram is not an IP datagram carrying ESP, AH, IPComp or IP-in-IP."""
    sp = ip.split(datagram, inbound=True)
    if sp is None:
        return None
    return _peek(datagram, sp)


def _peek(datagram: bytes, sp: ip.Split) -> Peek | Drop | None:
    proto, at = sp.proto, sp.hlen
    name = _NAMES.get(proto)
    if name is None:
        if proto in (ip.IPPROTO_IPV4, ip.IPPROTO_IPV6):
            return Peek(proto, 0, sp.src, sp.dst)
        return None
    if len(datagram) < at + 8:
        return Drop(name, "hdrops")
    if proto == ip.IPPROTO_ESP:
        spi = int.from_bytes(datagram[at : at + 4], "big")
    elif proto == ip.IPPROTO_AH:
        spi = int.from_bytes(datagram[at + 4 : at + 8], "big")
    else:
        spi = ipcomp.spi_of_cpi(int.from_bytes(datagram[at + 2 : at + 4], "big"))
    return Peek(proto, spi, sp.src, sp.dst)


def protect(
    chain: Sequence[Bound],
    datagram: bytes,
    knobs: PacketKnobs,
    counters: Counters,
    *,
    random: Callable[[int], bytes] = os.urandom,
) -> bytes | Drop:
    """Apply the bundle ``chain`` (the policy's request order, innermost first) to
    ``datagram``: the protected datagram, or the Drop that stopped it (counted)."""
    dg = datagram
    for bound in chain:
        sa, state = bound.sa, bound.state
        proto = sa.proto
        name = _NAMES.get(proto)
        if name is None:
            continue  # no packet transform (TCP-MD5 SAs never reach a bundle)
        if not _enabled(knobs, proto):
            return counters.drop(Drop(name, "pdrops"))
        # Only what the encapsulation test needs; the transform parses the rest.
        n = len(dg)
        first = dg[0] if n else 0
        if first >> 4 == 4 and n >= 20:
            hlen = (first & 0x0F) * 4
            pdst = dg[16:20]
        elif first >> 4 == 6 and n >= 40:
            hlen = 0  # known after the extension-header walk, if needed
            pdst = dg[24:40]
        else:
            return counters.drop(Drop(name, "hdrops"))
        sdst = sa.dst
        # ipsec_encap runs for tunnel mode, another address family, or a proxy
        # destination (neither unspecified nor the datagram's).
        if sa.tunnel or len(sdst) != len(pdst) or (sdst != pdst and any(sdst)):
            # The outer IPv4 ID is random (FreeBSD's ip_fillid with random_id=1).
            ident = int.from_bytes(random(2), "big") if len(sdst) == 4 else 0
            outer = ip.encapsulate(dg, sa.src, sdst, knobs, ident)
            if outer is None:
                reason = "hdrops" if ip.split(dg) is None else "toobig"
                return counters.drop(Drop(name, reason))
            dg = outer
            hlen = 20 if len(sdst) == 4 else 40
        result, counted = _transform(bound, dg, counters, random)
        if isinstance(result, Drop):
            return counters.drop(result)
        if counted:
            if not hlen:
                sp = ip.split(dg)
                hlen = sp.hlen if sp is not None else 40
            counters.add(name, "output")
            counters.add(name, "obytes", len(dg) - hlen)
        state.bytes += len(result)
        state.packets += 1
        dg = result
    if chain and chain[-1].sa.natt is not None and chain[-1].sa.proto == ip.IPPROTO_ESP:
        # ipsec_process_done: UDP encapsulation after the last transform.
        udp = natt.encapsulate(chain[-1].sa, dg)
        if isinstance(udp, Drop):
            return counters.drop(udp)
        counters.add(NATT, "output")
        dg = udp
    return dg


def _transform(
    bound: Bound, dg: bytes, counters: Counters, random: Callable[[int], bytes]
) -> tuple[bytes | Drop, bool]:
    """One SA's transform of an outbound datagram, and whether FreeBSD counts it
    (output and obytes, counted before transforming)."""
    sa, state = bound.sa, bound.state
    if sa.proto == ip.IPPROTO_ESP:
        return esp.protect(sa, state, dg, random=random), True
    if sa.proto == ip.IPPROTO_AH:
        return ah.protect(sa, state, dg), True
    packed = ipcomp.protect(sa.spi, dg)
    if isinstance(packed, ipcomp.Uncompressed):
        counters.add(IPCOMP, packed.reason)
        return packed.datagram, packed.reason != "threshold"  # ipcomp_output returns before counting
    return packed, True


def _decap_drop(name: str, reason: str) -> Drop:
    """The counter of a failed decapsulation: ``ecn`` (egress refused) or ``badinner``."""
    return Drop(name, "ecn" if reason == ip.DECAP_ECN else "badinner")


def unprotect(datagram: bytes, lookup: Lookup, knobs: PacketKnobs, counters: Counters) -> Accepted | Drop:
    """Undo every ESP, AH and IPComp header of an inbound ``datagram`` (and the outer
    headers of tunnel-mode SAs): the inner datagram with the SAs applied, or the
    Drop that stopped it (counted).  A datagram that carries none of them comes back
    unchanged with no SA applied."""
    return resume(datagram, [], lookup, knobs, counters)


def resume(
    datagram: bytes, applied: list[Bound], lookup: Lookup, knobs: PacketKnobs, counters: Counters
) -> Accepted | Drop:
    """:func:`unprotect` from a datagram that the steps of ``applied`` (outermost
    first, each counted) have already taken apart: what the one-step path
    (:mod:`pfkeyd.packet.fasttunnel`) hands on when the inner datagram carries more."""
    dg = datagram
    # Each step of the loop either returns or applies one SA: len(applied) steps are done.
    for _ in range(MAX_DEPTH + 1 - len(applied)):
        if applied:
            # After a step, a quick look: a well-formed datagram whose next header
            # cannot lead to ESP, AH, IPComp or IP-in-IP is the answer.
            version = ip.well_formed(dg)
            if version and (dg[9] if version == 4 else dg[6]) not in _MAYBE_MORE:
                return Accepted(dg, tuple(applied))
        sp = ip.split(dg, inbound=True)
        if sp is None:
            guess = dg[9] if len(dg) >= 20 and dg[0] >> 4 == 4 else dg[6] if len(dg) >= 40 else 0
            return counters.drop(
                Drop(_NAMES.get(guess, ESP) if not applied else _NAMES[applied[-1].sa.proto], "hdrops")
            )
        key = _peek(dg, sp)
        if key is None:
            return Accepted(dg, tuple(applied))
        if isinstance(key, Drop):
            return counters.drop(key)
        if key.proto in (ip.IPPROTO_IPV4, ip.IPPROTO_IPV6):
            taken = _take_plain_ipip(dg, sp, key, lookup, knobs)
            if taken is None:
                return Accepted(dg, tuple(applied))
            if isinstance(taken, Drop):
                return counters.drop(taken)
            taker, dg = taken
            counters.add(IPCOMP, "input")
            counters.add(IPCOMP, "ibytes", len(dg))
            taker.state.bytes += len(dg)
            taker.state.packets += 1
            applied.append(taker)
            continue
        name = _NAMES[key.proto]
        if len(applied) >= MAX_DEPTH:
            return counters.drop(Drop(name, "hdrops"))
        if not _enabled(knobs, key.proto):
            return counters.drop(Drop(name, "pdrops"))
        bound = lookup(key)
        if bound is None or bound.sa.proto != key.proto:
            return counters.drop(Drop(name, "notdb"))
        state = bound.state
        result = _untransform(name, bound, dg, sp, knobs)
        if isinstance(result, Drop):
            return counters.drop(result)
        counters.add(name, "input")
        counters.add(name, "ibytes", len(dg) - sp.hlen)
        state.bytes += len(result)
        state.packets += 1
        applied.append(bound)
        dg = result
    return counters.drop(Drop(_NAMES[applied[-1].sa.proto] if applied else ESP, "hdrops"))


def _take_plain_ipip(
    dg: bytes, sp: ip.Split, key: Peek, lookup: Lookup, knobs: PacketKnobs
) -> tuple[Bound, bytes] | Drop | None:
    """Plain IP-in-IP is ours only if an IPComp tunnel SA of these ends takes it (it
    was sent uncompressed): that SA and the inner datagram, a Drop, or None (not ours)."""
    if not knobs.ipcomp_enable:
        return None
    bound = lookup(key)
    if (
        bound is None
        or bound.sa.proto != ip.IPPROTO_IPCOMP
        or not ipcomp.accepts_plain(bound.sa.tunnel, bound.sa.src, bound.sa.dst, sp)
    ):
        return None
    inner = ip.decapsulate(dg, sp, knobs)
    if isinstance(inner, str):
        return _decap_drop(IPCOMP, inner)
    return bound, inner


def _untransform(name: str, bound: Bound, dg: bytes, sp: ip.Split, knobs: PacketKnobs) -> bytes | Drop:
    """One SA's transform undone on an inbound datagram, and for a tunnel-mode SA its
    outer header too."""
    sa = bound.sa
    result: bytes | Drop
    if sa.proto == ip.IPPROTO_ESP:
        result = esp.unprotect(sa, bound.state, dg)
    elif sa.proto == ip.IPPROTO_AH:
        result = ah.unprotect(sa, bound.state, dg)
    else:
        result = ipcomp.unprotect(dg, sp)
    if isinstance(result, Drop) or not sa.tunnel:
        return result
    # A refused inner datagram is dropped after the transform passed (its state
    # moved, as FreeBSD's does).
    return _decap_tunnel(name, result, sp, knobs)


def _decap_tunnel(name: str, result: bytes, sp: ip.Split, knobs: PacketKnobs) -> bytes | Drop:
    """The inner datagram of a tunnel-mode SA's result (unchanged when it carries no IP-in-IP)."""
    if len(result) <= sp.hlen or result[sp.proto_at] not in (ip.IPPROTO_IPV4, ip.IPPROTO_IPV6):
        return result
    # The transform kept the header part and restored the next header: no need to
    # parse the datagram again.
    inner_sp = ip.Split(sp.version, sp.hlen, result[sp.proto_at], sp.proto_at, sp.src, sp.dst)
    inner = ip.decapsulate(result, inner_sp, knobs)
    return _decap_drop(name, inner) if isinstance(inner, str) else inner


def unprotect_udp(datagram: bytes, lookup: Lookup, knobs: PacketKnobs, counters: Counters) -> Accepted | Drop:
    """A datagram that arrived on the NAT-T port (RFC 3948): keepalives and IKE
    messages come back as ``natt.keepalive`` / ``natt.ike`` (counted; not ESP),
    ESP-in-UDP is taken out of UDP and, if the SA it names has NAT-T state with
    exactly these ports (FreeBSD's ``udp_ipsec_input``; ``natt.badport`` otherwise),
    goes through :func:`unprotect`.  In transport mode the TCP/UDP checksum of the
    result is then fixed for the NAT (``natt_cksum_policy``)."""
    got = natt.decapsulate(datagram)
    if isinstance(got, Drop):
        return counters.drop(got)
    key = peek(got.datagram)
    if not isinstance(key, Peek):
        return counters.drop(key if isinstance(key, Drop) else Drop(NATT, "hdrops"))
    first = lookup(key)
    if first is not None and first.sa.proto == ip.IPPROTO_ESP and not natt.ports_match(first.sa, got.sport, got.dport):
        return counters.drop(Drop(NATT, "badport"))
    counters.add(NATT, "input")
    result = unprotect(got.datagram, lookup, knobs, counters)
    if isinstance(result, Drop) or not result.applied:
        return result
    fixed = natt.fix_checksum(result.applied[0].sa, result.datagram, knobs.natt_cksum_policy)
    return Accepted(fixed, result.applied)
