"""Named packet counters and the :class:`Drop` verdict, after FreeBSD's espstat, ahstat and ipcompstat.

Theory of operation
-------------------
A transform never raises on packet bytes: it returns the packet it made or a
:class:`Drop` naming the protocol and the reason, one of the closed table
:data:`COUNTERS` (FreeBSD's ``esps_*``/``ahs_*``/``ipcomps_*`` names without the
prefix, plus a few of pfkeyd's own where FreeBSD lumps things together: ``badpad``
for a trailer whose last pad byte is wrong, which FreeBSD counts as ``badenc``, and
``dummy`` for RFC 4303 dummy packets, which FreeBSD frees without counting).
Transforms do not count; whoever applies them (the bundle) adds each verdict to a
:class:`Counters`, so a packet is counted exactly once however it travelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pfkeyd.record import record

__all__ = ["ESP", "AH", "IPCOMP", "NATT", "COUNTERS", "DESCRIPTIONS", "Drop", "Counters"]

ESP = "esp"
AH = "ah"
IPCOMP = "ipcomp"
NATT = "natt"

# Shared by the three protocols, as in netipsec/{esp,ah,ipcomp}_var.h.
_COMMON: dict[str, str] = {
    "hdrops": "packet shorter than header shows",
    "nopf": "protocol family not supported",
    "notdb": "no SA for the SPI",
    "badkcr": "SA unusable (not mature or dying)",
    "noxform": "algorithm not implemented",
    "qfull": "queue full",
    "pdrops": "protocol disabled (esp_enable/ah_enable/ipcomp_enable = 0)",
    "toobig": "packet would exceed the maximum IP length",
    "crypto": "crypto processing failure",
    "tunnel": "tunnel sanity check failed",
    "ecn": "ECN egress refused the decapsulated packet (CE outside: Not-ECT inside, or ecn forbidden)",
    "badinner": "tunnel-mode SA: the inner datagram is malformed",
    "input": "packets in",
    "output": "packets out",
    "ibytes": "bytes in",
    "obytes": "bytes out",
    "invalid": "SA not valid",
}

#: Every counter name per protocol, with its description (the closed table).
DESCRIPTIONS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        ESP: MappingProxyType(
            {
                **_COMMON,
                "badilen": "bad length (alignment, payload not a multiple of the block, trailer)",
                "wrap": "sequence number would wrap (outbound) or wrapped (inbound)",
                "badenc": "bad encryption detected",
                "badauth": "integrity check failed",
                "replay": "replayed or too old",
                "badpad": "last pad byte differs from the pad length",
                "dummy": "dummy packet (next header 59) dropped",
            }
        ),
        AH: MappingProxyType(
            {
                **_COMMON,
                "badauth": "integrity check failed",
                "badauthl": "AH length differs from the SA's",
                "wrap": "sequence number would wrap (outbound) or wrapped (inbound)",
                "replay": "replayed or too old",
                "badopt": "bad IPv4 option or IPv6 extension header",
            }
        ),
        IPCOMP: MappingProxyType(
            {
                **_COMMON,
                "wrap": "sequence number would wrap",
                "threshold": "packet at or below the 90-byte threshold sent uncompressed",
                "uncompr": "compression did not shrink the packet: sent uncompressed",
                "minlen": "packet too short to be compressed",
                "recursive": "IPComp inside IPComp refused",
                "badcomp": "payload does not decompress",
            }
        ),
        NATT: MappingProxyType(
            {
                "keepalive": "NAT keepalives (0xFF) received",
                "ike": "non-ESP-marked (IKE) datagrams received",
                "hdrops": "datagram too short or malformed",
                "badport": "UDP ports differ from the SA's NAT-T ports",
                "input": "ESP-in-UDP datagrams in",
                "output": "ESP-in-UDP datagrams out",
            }
        ),
    }
)

#: name -> set of counter names, per protocol.
COUNTERS: Mapping[str, frozenset[str]] = MappingProxyType({p: frozenset(d) for p, d in DESCRIPTIONS.items()})


@record
class Drop:
    """A packet dropped by ``proto`` (``"esp"``, ``"ah"``, ``"ipcomp"``, ``"natt"``) for ``reason``.

    ``reason`` is a counter name of that protocol (checked at construction: a typo is a
    bug and fails loudly, never at packet time by surprise).
    """

    proto: str
    reason: str

    def __post_init__(self) -> None:
        names = COUNTERS.get(self.proto)
        if names is None or self.reason not in names:
            msg = f"no {self.proto} counter {self.reason!r}"
            raise ValueError(msg)

    def __str__(self) -> str:
        return f"{self.proto}.{self.reason}"


class Counters:
    """The counters of one packet engine: ``proto.name`` -> count, all starting at 0."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {p: dict.fromkeys(sorted(n), 0) for p, n in DESCRIPTIONS.items()}

    def add(self, proto: str, name: str, n: int = 1) -> None:
        """Add ``n`` to ``proto.name`` (a name outside the table raises KeyError: a bug)."""
        table = self._counts[proto]
        if name not in table:
            raise KeyError(f"{proto}.{name}")
        table[name] += n

    def drop(self, drop: Drop) -> Drop:
        """Count ``drop`` and return it (so a caller can ``return counters.drop(d)``)."""
        self._counts[drop.proto][drop.reason] += 1
        return drop

    def __getitem__(self, key: str) -> int:
        proto, _, name = key.partition(".")
        return self._counts[proto][name]

    def table(self, proto: str) -> dict[str, int]:
        """The live table of ``proto`` (name -> count), for a counter that adds to it
        directly: the data plane's compiled loop (it adds only names of the table)."""
        return self._counts[proto]

    def snapshot(self) -> dict[str, int]:
        """Every counter as ``{"esp.badauth": n, ...}``, in table order."""
        return {f"{p}.{n}": v for p, table in self._counts.items() for n, v in table.items()}
