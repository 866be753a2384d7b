"""UDP encapsulation of ESP (RFC 3948) as FreeBSD's ``udpencap.c`` does it.

Theory of operation
-------------------
Outbound, :func:`encapsulate` puts a UDP header with the SA's NAT-T ports between
the IP header and ESP of a datagram ESP already protected (after the whole bundle,
as ``ipsec_process_done`` does).  The IPv4 UDP checksum is 0 (RFC 3948 §2.1, what
FreeBSD sends); over IPv6 it is computed, as IPv6 requires.

Inbound, :func:`decapsulate` reads a datagram that arrived on the NAT-T port and
says what it is: a NAT keepalive (the single byte 0xFF, RFC 3948 §2.3), an IKE
message behind the non-ESP marker (four zero bytes, §2.2), or ESP, which it
returns as a plain ESP datagram (UDP header removed, protocol 50) together with
the UDP ports.  After the SAD lookup, :func:`ports_match` applies FreeBSD's rule
(``udp_ipsec_input``): the SA must have NAT-T state and its ports must equal the
datagram's source and destination ports.

After ESP is removed in transport mode, the TCP or UDP checksum inside was made
for the addresses before the NAT.  :func:`fix_checksum` repairs it as
``udp_ipsec_adjust_cksum`` does: with ``natt_cksum_policy`` 0, an incremental
update from the original addresses (NAT-OA: the SAD keeps OAI for the SA's source
and OAR for its destination when they differ) to the ones the packet carries; a
UDP checksum of 0 stays 0; without NAT-OA a UDP checksum becomes 0 and a TCP
checksum is recomputed (FreeBSD only marks it valid inside its kernel; a datagram
written to a TUN must carry a right one).  With policy 1 the checksum is always
recomputed.  Only IPv4 (NAT-OA addresses are IPv4; FreeBSD fixes IPv4 only).

Nothing here raises on packet bytes.
"""

from __future__ import annotations

from pfkeyd.packet import ip
from pfkeyd.packet.counters import NATT, Drop
from pfkeyd.packet.sa import TransformSA
from pfkeyd.record import record
from pfkeyd.wire.constants import Mode

__all__ = [
    "NATT_PORT",
    "KEEPALIVE",
    "IKE",
    "ESP",
    "Received",
    "encapsulate",
    "decapsulate",
    "ports_match",
    "keepalive",
    "fix_checksum",
]

NATT_PORT = 4500
_UDP = 17
_TCP = 6
_ESP_PROTO = 50

KEEPALIVE = "keepalive"
IKE = "ike"
ESP = "esp"

_HDROPS = Drop(NATT, "hdrops")
_KEEPALIVE = Drop(NATT, "keepalive")
_IKE = Drop(NATT, "ike")


@record
class Received:
    """An ESP datagram taken out of UDP: ``datagram`` (protocol 50) and the UDP ports."""

    datagram: bytes
    sport: int
    dport: int


def _transport_checksum(sp: ip.Split, proto: int, segment: bytes) -> int:
    """The TCP/UDP checksum of ``segment`` (its checksum field as it is) under ``sp``'s addresses."""
    if sp.version == 4:
        pseudo = sp.src + sp.dst + bytes((0, proto)) + len(segment).to_bytes(2, "big")
    else:
        pseudo = sp.src + sp.dst + len(segment).to_bytes(4, "big") + bytes((0, 0, 0, proto))
    return ip.inet_checksum(pseudo + segment)


def encapsulate(sa: TransformSA, datagram: bytes) -> bytes | Drop:
    """``datagram`` (IP + ESP) with a UDP header from the SA's NAT-T ports, or ``natt.hdrops``
    when it is not an ESP datagram or the SA has no NAT-T; ESP's own ``toobig`` when it
    would not fit."""
    natt = sa.natt
    sp = ip.split(datagram)
    if natt is None or sp is None or sp.proto != _ESP_PROTO:
        return _HDROPS
    payload = datagram[sp.hlen :]
    length = 8 + len(payload)
    if not ip.fits(sp, length):
        return Drop("esp", "toobig")
    header = natt.sport.to_bytes(2, "big") + natt.dport.to_bytes(2, "big") + length.to_bytes(2, "big")
    if sp.version == 4:
        udp = header + b"\0\0" + payload  # RFC 3948 §2.1: SHOULD be zero over IPv4
    else:
        ck = _transport_checksum(sp, _UDP, header + b"\0\0" + payload) or 0xFFFF
        udp = header + ck.to_bytes(2, "big") + payload
    return ip.join(datagram, sp, _UDP, udp)


def keepalive(sport: int, dport: int, src: bytes, dst: bytes) -> bytes:
    """A NAT keepalive datagram (RFC 3948 §2.3: one 0xFF byte) from ``src``:``sport`` to ``dst``:``dport``."""
    udp = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + b"\x00\x09\x00\x00\xff"
    if len(src) == 16:
        ck = _transport_checksum(ip.Split(6, 40, _UDP, 6, src, dst), _UDP, udp) or 0xFFFF
        udp = udp[:6] + ck.to_bytes(2, "big") + udp[8:]
        return bytes.fromhex("60000000") + len(udp).to_bytes(2, "big") + bytes((_UDP, 64)) + src + dst + udp
    head = bytearray(20)
    head[0], head[8], head[9] = 0x45, 64, _UDP
    head[2:4] = (20 + len(udp)).to_bytes(2, "big")
    head[12:16], head[16:20] = src, dst
    head[10:12] = ip.ipv4_checksum(bytes(head)).to_bytes(2, "big")
    return bytes(head) + udp


def decapsulate(datagram: bytes) -> Received | Drop:
    """What arrived on the NAT-T port: :class:`Received` ESP, or a Drop naming a keepalive
    (``natt.keepalive``), an IKE message (``natt.ike``: for the IKE daemon, not ESP) or
    a malformed datagram (``natt.hdrops``)."""
    sp = ip.split(datagram, inbound=True)
    if sp is None or sp.proto != _UDP or len(datagram) - sp.hlen < 8:
        return _HDROPS
    udp = datagram[sp.hlen :]
    length = int.from_bytes(udp[4:6], "big")
    if length < 8 or length > len(udp):
        return _HDROPS
    payload = udp[8:length]
    if payload == b"\xff":
        return _KEEPALIVE
    if len(payload) >= 4 and payload[:4] == b"\0\0\0\0":
        return _IKE
    if len(payload) < 8:  # an ESP header (SPI, Seq) at least
        return _HDROPS
    sport, dport = int.from_bytes(udp[0:2], "big"), int.from_bytes(udp[2:4], "big")
    return Received(ip.join(datagram, sp, _ESP_PROTO, payload), sport, dport)


def ports_match(sa: TransformSA, sport: int, dport: int) -> bool:
    """FreeBSD's ``udp_ipsec_input`` test: the SA has NAT-T and the datagram's ports are its ports."""
    natt = sa.natt
    return natt is not None and natt.sport == sport and natt.dport == dport


def _fold(n: int) -> int:
    while n > 0xFFFF:
        n = (n & 0xFFFF) + (n >> 16)
    return n


def _words(b: bytes) -> int:
    return sum(int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2))


def fix_checksum(sa: TransformSA, datagram: bytes, policy: int = 0) -> bytes:
    """The transport-mode datagram ESP gave back, with its TCP/UDP checksum fixed for NAT
    (see the module doc); anything else (tunnel mode, no NAT-T, IPv6, another protocol,
    a truncated segment) is returned unchanged."""
    natt = sa.natt
    if natt is None or sa.mode == Mode.TUNNEL:
        return datagram
    sp = ip.split(datagram, inbound=True)
    if sp is None or sp.version != 4 or sp.proto not in (_TCP, _UDP):
        return datagram
    off = sp.hlen + (16 if sp.proto == _TCP else 6)
    if len(datagram) < off + 2 or (sp.proto == _TCP and len(datagram) < sp.hlen + 20):
        return datagram
    old = int.from_bytes(datagram[off : off + 2], "big")
    segment = datagram[sp.hlen :]

    def recompute() -> bytes:
        zeroed = segment[: off - sp.hlen] + b"\0\0" + segment[off - sp.hlen + 2 :]
        ck = _transport_checksum(sp, sp.proto, zeroed)
        if sp.proto == _UDP and ck == 0:
            ck = 0xFFFF
        return datagram[:off] + ck.to_bytes(2, "big") + datagram[off + 2 :]

    if policy != 0:
        return recompute()
    pairs = [(natt.oai, sp.src), (natt.oar, sp.dst)]
    original = [(o.ip.packed, now) for o, now in pairs if o is not None]
    if not original:
        if sp.proto == _TCP:
            return recompute()
        return datagram[:off] + b"\0\0" + datagram[off + 2 :]
    if sp.proto == _UDP and old == 0:
        return datagram
    # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') over each changed 16-bit word.
    total = (~old) & 0xFFFF
    for was, now in original:
        total += (0xFFFF * 2 - _words(was)) + _words(now)
    new = ~_fold(_fold(total)) & 0xFFFF
    if sp.proto == _UDP and new == 0:
        new = 0xFFFF  # 0 would mean "no checksum"
    return datagram[:off] + new.to_bytes(2, "big") + datagram[off + 2 :]
