"""The daemon's tunables: the sysctl variables of ipsec(4) and net.key.*, plus its own.

One table (:data:`KNOBS`) holds every variable's sysctl name, default, range, unit
and one-line description; :class:`Knobs` is an immutable set of values.  A change at
run time builds a new :class:`Knobs` (``knobs.set(name, value)``), which the engine
uses from the next message on.  There is no global mutable state.

Where FreeBSD has one variable behind two names (the IPv4 and IPv6 ``def_policy`` and
``debug`` nodes share one object) the table lists both names for one attribute.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from pfkeyd.wire.framing import MAX_DATAGRAM

__all__ = ["KnobSpec", "KNOBS", "Knobs", "KnobError", "ALIASES", "parse_integer"]


class KnobError(ValueError):
    """A bad sysctl name or value; ``kind`` says which, as sysctl(8) does."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind  # "unknown", "invalid", "readonly"


@dataclass(frozen=True, slots=True)
class KnobSpec:
    """One sysctl variable."""

    name: str
    attr: str
    default: int
    minimum: int
    maximum: int
    unit: str
    description: str
    writable: bool = True


_U32 = 0xFFFFFFFF
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
# The *_deflev sysctls are plain ints: FreeBSD takes any value and treats one
# outside 1..3 as REQUIRE when a DEFAULT-level request is used (reference §6.4).
_LEVEL = "level (1 use, 2 require, 3 unique; any other value means require)"

#: Every variable, in the order `pfkeyd sysctl -a` prints them.
KNOBS: tuple[KnobSpec, ...] = (
    # net.inet.ipsec (FreeBSD ipsec.c); the IPv6 node shares def_policy and debug
    KnobSpec(
        "net.inet.ipsec.def_policy",
        "def_policy",
        1,
        0,
        1,
        "policy (0 discard, 1 none)",
        "Policy for packets that match no security policy",
    ),
    KnobSpec(
        "net.inet.ipsec.esp_trans_deflev",
        "esp_trans_deflev",
        1,
        _INT_MIN,
        _INT_MAX,
        _LEVEL,
        "Level of IPv4 ESP transport-mode requests at level default",
    ),
    KnobSpec(
        "net.inet.ipsec.esp_net_deflev",
        "esp_net_deflev",
        1,
        _INT_MIN,
        _INT_MAX,
        _LEVEL,
        "Level of IPv4 ESP tunnel-mode requests at level default",
    ),
    KnobSpec(
        "net.inet.ipsec.ah_trans_deflev",
        "ah_trans_deflev",
        1,
        _INT_MIN,
        _INT_MAX,
        _LEVEL,
        "Level of IPv4 AH transport-mode requests at level default",
    ),
    KnobSpec(
        "net.inet.ipsec.ah_net_deflev",
        "ah_net_deflev",
        1,
        _INT_MIN,
        _INT_MAX,
        _LEVEL,
        "Level of IPv4 AH tunnel-mode requests at level default",
    ),
    KnobSpec(
        "net.inet.ipsec.ah_cleartos",
        "ah_cleartos",
        1,
        0,
        1,
        "boolean",
        "Clear the IPv4 TOS byte while computing the AH ICV",
    ),
    KnobSpec(
        "net.inet.ipsec.ah_offsetmask",
        "ah_offsetmask",
        0,
        0,
        0xFFFF,
        "mask",
        "Mask of the IPv4 fragment offset and flags in the AH ICV",
    ),
    KnobSpec(
        "net.inet.ipsec.dfbit", "dfbit", 0, 0, 2, "0 clear, 1 set, 2 copy", "Outer IPv4 DF bit on tunnel encapsulation"
    ),
    KnobSpec(
        "net.inet.ipsec.min_pmtu", "min_pmtu", 576, 68, 65535, "bytes", "Lowest path MTU accepted for IPsec traffic"
    ),
    KnobSpec(
        "net.inet.ipsec.ecn", "ecn", 0, -1, 1, "-1 ignore, 0 forbidden, 1 allowed", "ECN handling of IPv4 tunnels"
    ),
    KnobSpec("net.inet.ipsec.debug", "debug", 0, 0, 1, "boolean", "Log each PF_KEY message (never key material)"),
    KnobSpec(
        "net.inet.ipsec.crypto_support",
        "crypto_support",
        0x03000000,
        0,
        _U32,
        "flags",
        "Crypto drivers that may serve IPsec (hardware 0x01000000, software 0x02000000)",
    ),
    KnobSpec("net.inet.ipsec.async_crypto", "async_crypto", 0, 0, 1, "boolean", "Run crypto operations asynchronously"),
    KnobSpec(
        "net.inet.ipsec.check_policy_history",
        "check_policy_history",
        0,
        0,
        1,
        "boolean",
        "Check inbound packets against the history of applied transforms",
    ),
    KnobSpec(
        "net.inet.ipsec.natt_cksum_policy",
        "natt_cksum_policy",
        0,
        0,
        1,
        "0 incremental, 1 recompute",
        "Transport-mode NAT-T TCP/UDP checksum handling",
    ),
    KnobSpec(
        "net.inet.ipsec.filtertunnel",
        "filtertunnel",
        0,
        0,
        1,
        "boolean",
        "Let packet filters see packets decapsulated from IPv4 tunnels",
    ),
    KnobSpec(
        "net.inet.ipsec.esp_randpad",
        "esp_randpad",
        -1,
        -1,
        255,
        "bytes (-1 off)",
        "Random ESP padding (FreeBSD 11 and older; kept for compatibility)",
    ),
    # net.inet6.ipsec6
    KnobSpec(
        "net.inet6.ipsec6.def_policy",
        "def_policy",
        1,
        0,
        1,
        "policy (0 discard, 1 none)",
        "Policy for packets that match no security policy (shared with IPv4)",
    ),
    KnobSpec(
        "net.inet6.ipsec6.esp_trans_deflev",
        "esp6_trans_deflev",
        1,
        _INT_MIN,
        _INT_MAX,
        _LEVEL,
        "Level of IPv6 ESP transport-mode requests at level default",
    ),
    KnobSpec(
        "net.inet6.ipsec6.esp_net_deflev",
        "esp6_net_deflev",
        1,
        _INT_MIN,
        _INT_MAX,
        _LEVEL,
        "Level of IPv6 ESP tunnel-mode requests at level default",
    ),
    KnobSpec(
        "net.inet6.ipsec6.ah_trans_deflev",
        "ah6_trans_deflev",
        1,
        _INT_MIN,
        _INT_MAX,
        _LEVEL,
        "Level of IPv6 AH transport-mode requests at level default",
    ),
    KnobSpec(
        "net.inet6.ipsec6.ah_net_deflev",
        "ah6_net_deflev",
        1,
        _INT_MIN,
        _INT_MAX,
        _LEVEL,
        "Level of IPv6 AH tunnel-mode requests at level default",
    ),
    KnobSpec(
        "net.inet6.ipsec6.ecn", "ecn6", 0, -1, 1, "-1 ignore, 0 forbidden, 1 allowed", "ECN handling of IPv6 tunnels"
    ),
    KnobSpec("net.inet6.ipsec6.debug", "debug", 0, 0, 1, "boolean", "Log each PF_KEY message (shared with IPv4)"),
    KnobSpec(
        "net.inet6.ipsec6.filtertunnel",
        "filtertunnel6",
        0,
        0,
        1,
        "boolean",
        "Let packet filters see packets decapsulated from IPv6 tunnels",
    ),
    # per-protocol switches
    KnobSpec("net.inet.esp.esp_enable", "esp_enable", 1, 0, 1, "boolean", "Process ESP"),
    KnobSpec(
        "net.inet.esp.ctr_compatibility",
        "ctr_compatibility",
        1,
        0,
        1,
        "boolean",
        "Align AES-CTR frames to the AES block size",
    ),
    KnobSpec("net.inet.ah.ah_enable", "ah_enable", 1, 0, 1, "boolean", "Process AH"),
    KnobSpec(
        "net.inet.ah.ah_cleartos",
        "ah_cleartos",
        1,
        0,
        1,
        "boolean",
        "Clear the IPv4 TOS byte while computing the AH ICV (same as net.inet.ipsec.ah_cleartos)",
    ),
    KnobSpec("net.inet.ipcomp.ipcomp_enable", "ipcomp_enable", 1, 0, 1, "boolean", "Process IPComp"),
    # net.key (FreeBSD key.c, keysock.c)
    KnobSpec("net.key.debug", "key_debug", 0, 0, _U32, "bit mask", "Key engine debug flags (KEYDBG)"),
    KnobSpec(
        "net.key.spi_trycnt",
        "spi_trycnt",
        1000,
        1,
        1_000_000,
        "count",
        "Random attempts to find a free SPI or policy id",
    ),
    KnobSpec("net.key.spi_minval", "spi_minval", 0x100, 0, _U32, "SPI", "Lowest automatically allocated SPI"),
    KnobSpec("net.key.spi_maxval", "spi_maxval", 0x0FFFFFFF, 0, _U32, "SPI", "Highest automatically allocated SPI"),
    KnobSpec(
        "net.key.int_random",
        "int_random",
        60,
        1,
        86400,
        "seconds",
        "Historical random reseed interval (kept for compatibility; unused)",
    ),
    KnobSpec(
        "net.key.larval_lifetime",
        "larval_lifetime",
        30,
        1,
        86400,
        "seconds",
        "Lifetime of a LARVAL SA that GETSPI created and no UPDATE completed",
    ),
    KnobSpec(
        "net.key.blockacq_count",
        "blockacq_count",
        10,
        0,
        _U32,
        "count",
        "Triggers suppressed before an ACQUIRE for the same SA index is sent again",
    ),
    KnobSpec(
        "net.key.blockacq_lifetime",
        "blockacq_lifetime",
        20,
        1,
        86400,
        "seconds",
        "Age at which an ACQUIRE record is forgotten",
    ),
    KnobSpec(
        "net.key.esp_keymin", "esp_keymin", 256, 0, 2048, "bits", "Smallest encryption key offered in ACQUIRE proposals"
    ),
    KnobSpec(
        "net.key.esp_auth", "esp_auth", 0, 0, 1, "boolean", "Include authentication algorithms in ESP ACQUIRE proposals"
    ),
    KnobSpec(
        "net.key.ah_keymin",
        "ah_keymin",
        128,
        0,
        2048,
        "bits",
        "Smallest authentication key offered in AH ACQUIRE proposals",
    ),
    KnobSpec(
        "net.key.preferred_oldsa",
        "preferred_oldsa",
        1,
        0,
        1,
        "boolean",
        "Use the oldest usable SA for output (0: the newest)",
    ),
    KnobSpec(
        "net.key.spdcache.maxentries",
        "spdcache_maxentries",
        0,
        0,
        0,
        "entries",
        "Size of FreeBSD's policy lookup cache (a boot-time tunable; pfkeyd's index needs none)",
        writable=False,
    ),
    KnobSpec(
        "net.key.spdcache.threshold",
        "spdcache_threshold",
        32,
        0,
        _U32,
        "policies",
        "Policies needed before the lookup cache is used (kept for compatibility)",
    ),
    KnobSpec(
        "net.key.sendspace",
        "sendspace",
        8192,
        1024,
        16 * 1024 * 1024,
        "bytes",
        "PF_KEY socket send buffer reservation (kept for compatibility)",
    ),
    KnobSpec(
        "net.key.recvspace",
        "recvspace",
        8192,
        1024,
        16 * 1024 * 1024,
        "bytes",
        "PF_KEY socket receive buffer reservation (kept for compatibility)",
    ),
    # pfkeyd's own
    KnobSpec(
        "pfkeyd.client_buffer",
        "client_buffer",
        4 * 1024 * 1024,
        16 * 1024,
        1024 * 1024 * 1024,
        "bytes",
        "Per-client limit of queued broadcasts; broadcasts beyond it are dropped for that client",
    ),
    KnobSpec(
        "pfkeyd.max_sas",
        "max_sas",
        2_000_000,
        1,
        100_000_000,
        "SAs",
        "Most SAs the SAD holds; ADD and GETSPI beyond it get ENOBUFS",
    ),
    KnobSpec(
        "pfkeyd.max_policies",
        "max_policies",
        1_000_000,
        1,
        100_000_000,
        "policies",
        "Most policies the SPD holds; SPDADD beyond it gets ENOBUFS",
    ),
    KnobSpec(
        "pfkeyd.max_message_size",
        "max_message_size",
        2048,
        256,
        MAX_DATAGRAM,
        "bytes",
        "Largest request accepted (FreeBSD: ENOBUFS beyond; Linux: EMSGSIZE)",
    ),
    # net.enc (FreeBSD if_enc.c): what enc0 and the pcap file of the data plane show
    KnobSpec(
        "net.enc.in.ipsec_bpf_mask",
        "enc_in_bpf_mask",
        1,
        0,
        3,
        "mask (1 before, 2 after)",
        "Inbound packets shown on enc0: 1 before, 2 after the outer header is stripped",
    ),
    KnobSpec(
        "net.enc.out.ipsec_bpf_mask",
        "enc_out_bpf_mask",
        3,
        0,
        3,
        "mask (1 before, 2 after)",
        "Outbound packets shown on enc0: 1 before, 2 after the outer header is added",
    ),
    KnobSpec(
        "pfkeyd.hot_path",
        "hot_path",
        1,
        0,
        1,
        "boolean",
        "Answer ADDs and SPDADDs shaped like earlier ones from their bytes (the answers are the same)",
    ),
)

#: Spellings accepted on input only.
ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "net.key.prefered_oldsa": "net.key.preferred_oldsa",  # the KAME spelling
    }
)

_BY_NAME: dict[str, KnobSpec] = {k.name: k for k in KNOBS}


@dataclass(frozen=True, slots=True)
class Knobs:
    """One immutable set of knob values; attributes are named by :attr:`KnobSpec.attr`."""

    def_policy: int = 1
    esp_trans_deflev: int = 1
    esp_net_deflev: int = 1
    ah_trans_deflev: int = 1
    ah_net_deflev: int = 1
    ah_cleartos: int = 1
    ah_offsetmask: int = 0
    dfbit: int = 0
    min_pmtu: int = 576
    ecn: int = 0
    debug: int = 0
    crypto_support: int = 0x03000000
    async_crypto: int = 0
    check_policy_history: int = 0
    natt_cksum_policy: int = 0
    filtertunnel: int = 0
    esp_randpad: int = -1
    esp6_trans_deflev: int = 1
    esp6_net_deflev: int = 1
    ah6_trans_deflev: int = 1
    ah6_net_deflev: int = 1
    ecn6: int = 0
    filtertunnel6: int = 0
    esp_enable: int = 1
    ctr_compatibility: int = 1
    ah_enable: int = 1
    ipcomp_enable: int = 1
    key_debug: int = 0
    spi_trycnt: int = 1000
    spi_minval: int = 0x100
    spi_maxval: int = 0x0FFFFFFF
    int_random: int = 60
    larval_lifetime: int = 30
    blockacq_count: int = 10
    blockacq_lifetime: int = 20
    esp_keymin: int = 256
    esp_auth: int = 0
    ah_keymin: int = 128
    preferred_oldsa: int = 1
    spdcache_maxentries: int = 0
    spdcache_threshold: int = 32
    sendspace: int = 8192
    recvspace: int = 8192
    client_buffer: int = 4 * 1024 * 1024
    max_sas: int = 2_000_000
    max_policies: int = 1_000_000
    max_message_size: int = 2048
    enc_in_bpf_mask: int = 1
    enc_out_bpf_mask: int = 3
    hot_path: int = 1

    def __post_init__(self) -> None:
        for spec in KNOBS:
            value = getattr(self, spec.attr)
            if not spec.minimum <= value <= spec.maximum:
                msg = f"{spec.name}: {value} is out of range {spec.minimum}..{spec.maximum}"
                raise KnobError(msg, "invalid")

    @staticmethod
    def spec(name: str) -> KnobSpec:
        spec = _BY_NAME.get(ALIASES.get(name, name))
        if spec is None:
            msg = f"unknown oid '{name}'"
            raise KnobError(msg, "unknown")
        return spec

    def get(self, name: str) -> int:
        return int(getattr(self, self.spec(name).attr))

    def set(self, name: str, value: int | str) -> Knobs:
        """A copy with ``name`` set; the value is checked against the knob's range."""
        spec = self.spec(name)
        if not spec.writable:
            msg = f"oid '{spec.name}' is read only"
            raise KnobError(msg, "readonly")
        if isinstance(value, str):
            value = parse_integer(value)
        if not spec.minimum <= value <= spec.maximum:
            msg = f"{spec.name}: {value} is out of range {spec.minimum}..{spec.maximum}"
            raise KnobError(msg, "invalid")
        if spec.attr in ("spi_minval", "spi_maxval"):
            lo = value if spec.attr == "spi_minval" else self.spi_minval
            hi = value if spec.attr == "spi_maxval" else self.spi_maxval
            if lo > hi:
                msg = f"{spec.name}: net.key.spi_minval must not exceed net.key.spi_maxval"
                raise KnobError(msg, "invalid")
        return replace(self, **{spec.attr: value})

    def items(self) -> Iterator[tuple[KnobSpec, int]]:
        for spec in KNOBS:
            yield spec, int(getattr(self, spec.attr))


#: A knob value as text: decimal, 0x hexadecimal or 0o octal, ASCII digits only.
#: (int(text, 0) alone would also take "١٢٣", "1_000" and " 7 ".)
_INTEGER = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0|[1-9][0-9]*)\Z")
#: Longer than any value of any knob: such text is refused before it is converted.
_INTEGER_MAX_LEN = 24


def parse_integer(text: str) -> int:
    """A knob value written as sysctl(8) takes it: ``123``, ``-5``, ``0x1f``, ``0o17``.

    Raises :class:`KnobError` (kind "invalid") for anything else; the message quotes
    at most the first 32 characters of ``text``.
    """
    if len(text) > _INTEGER_MAX_LEN or not _INTEGER.match(text):
        shown = text if len(text) <= 32 else text[:32] + "..."
        msg = f"invalid integer {shown!r}"
        raise KnobError(msg, "invalid")
    return int(text, 0)  # the pattern has left only what int() reads as intended


def mdoc_list() -> str:
    """The knob table as an mdoc tag list, as man/pfkeyd.8 carries it between its
    ``BEGIN KNOBS`` and ``END KNOBS`` markers (tools/update_man.py writes it there)."""
    lines = [".Bl -tag -width indent"]
    for k in KNOBS:
        rng = f"{k.minimum}..{k.maximum}" if k.minimum != k.maximum else f"{k.minimum}"
        access = "" if k.writable else ", read only"
        lines += [
            f".It Va {k.name}",
            f"{k.description}.",
            f"Default {k.default}, range {rng}, unit: {k.unit}{access}.",
        ]
    lines.append(".El")
    return "\n".join(lines) + "\n"
