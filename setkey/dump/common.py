"""What the dump formats share: the options, the two reference tools' styles,
libipsec's words and error texts, and the helpers that print times, addresses
and keys."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import field
from ipaddress import IPv4Address, IPv6Address

from pfkeyd import algorithms
from pfkeyd.algorithms import Kind
from pfkeyd.record import record
from pfkeyd.wire import (
    UNKNOWN,
    Dialect,
    Key,
    Message,
    MsgType,
    SaType,
    SockAddr,
)
from pfkeyd.wire.sockaddr import AnySockAddr
from pfkeyd.words import DIRECTION_WORDS, LEVEL_WORDS, MODE_WORDS, POLICY_WORDS, REQUEST_PROTO_WORDS, word_list

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def _no_ifname(index: int) -> str | None:
    return None


#: Upper-layer protocol names, as ``getprotobynumber`` finds them in a stock
#: ``/etc/protocols`` (IANA keywords in lower case; Debian's netbase and FreeBSD's
#: file agree on these).  setkey prints the number for anything missing here.
#: The CLI may pass the system's own file through :func:`parse_protocols`.
PROTOCOLS: Mapping[int, str] = {
    0: "ip",
    1: "icmp",
    2: "igmp",
    3: "ggp",
    4: "ipencap",
    5: "st",
    6: "tcp",
    8: "egp",
    9: "igp",
    12: "pup",
    17: "udp",
    20: "hmp",
    22: "xns-idp",
    27: "rdp",
    29: "iso-tp4",
    33: "dccp",
    36: "xtp",
    37: "ddp",
    38: "idpr-cmtp",
    41: "ipv6",
    43: "ipv6-route",
    44: "ipv6-frag",
    45: "idrp",
    46: "rsvp",
    47: "gre",
    50: "esp",
    51: "ah",
    57: "skip",
    58: "ipv6-icmp",
    59: "ipv6-nonxt",
    60: "ipv6-opts",
    73: "rspf",
    81: "vmtp",
    88: "eigrp",
    89: "ospf",
    93: "ax.25",
    94: "ipip",
    97: "etherip",
    98: "encap",
    103: "pim",
    108: "ipcomp",
    112: "vrrp",
    115: "l2tp",
    124: "isis",
    132: "sctp",
    133: "fc",
    135: "mobility-header",
    136: "udplite",
    137: "mpls-in-ip",
    138: "manet",
    139: "hip",
    140: "shim6",
    141: "wesp",
    142: "rohc",
    143: "ethernet",
}


def parse_protocols(text: str) -> dict[int, str]:
    """Number -> name from the text of an ``/etc/protocols`` file (the first name
    listed for a number wins, as ``getprotobynumber`` returns the first match)."""
    table: dict[int, str] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[1].isdigit():
            table.setdefault(int(words[1]), words[0])
    return table


@record
class DumpOptions:
    """How to render: which reference tool to imitate and the options that change
    its output.

    ``dialect``
        ``freebsd`` or ``linux``: the daemon's dialect picks the reference tool;
    ``show_dead``
        ``-a``: also print SAs in state dead;
    ``short``
        ``-l``: one line per SA in DUMP replies (:func:`format_short`);
    ``ports``
        ``-p`` (ipsec-tools only): ``addr[port]`` on the first line of an SA and on
        the tunnel endpoints of a policy; ignored in the freebsd format;
    ``json``
        ``--json``: one JSON object per SA or policy;
    ``script_line``
        the script line a reply belongs to; FreeBSD prefixes error replies with
        ``The result of line N:`` in ``-c``/``-f``/``-e`` modes;
    ``localtime``, ``protocols``, ``ifname``
        the environment: local time of an epoch second, upper-layer protocol
        names, interface name of an index (None: print the number).
    """

    dialect: Dialect = Dialect.FREEBSD
    show_dead: bool = False
    short: bool = False
    ports: bool = False
    json: bool = False
    script_line: int | None = None
    localtime: Callable[[float], time.struct_time] = time.localtime
    protocols: Mapping[int, str] = field(default_factory=lambda: PROTOCOLS)
    ifname: Callable[[int], str | None] = _no_ifname

    def __post_init__(self) -> None:
        object.__setattr__(self, "dialect", Dialect(self.dialect))


# --------------------------------------------------------------------- styles


@record
class _Style:
    """Everything that differs between the two reference tools' output."""

    linux: bool
    #: upper-layer protocols whose selector ports are not printed (str_prefport)
    portless: frozenset[int]
    #: upper-layer protocols whose ports print as "type,code" after the protocol
    typecode: frozenset[int]
    #: IPSEC_DIR_* words (ipsp_dir_strs)
    dirs: tuple[str, ...]
    #: ipsecrequest protocols ipsec_dump_ipsecrequest names
    request_protos: Mapping[int, str]
    #: satype 11 passes pfkey_check (SADB_X_SATYPE_TCPSIGNATURE is defined)
    tcp_satype: bool
    #: extension types kdebug_sadb knows, and the printer for each
    debug_exts: Mapping[int, str]


_ICMP, _ICMPV6, _GRE, _MH, _IPV4 = 1, 58, 47, 135, 4

# libipsec's string tables (pfkey_dump.c); an index past the end prints the number.
_SATYPE_WORDS = (
    "unspec",
    "unknown",
    "ah",
    "esp",
    "unknown",
    "rsvp",
    "ospfv2",
    "ripv2",
    "mip",
    "ipcomp",
    "policy",
    "tcp",
)
_MODE_WORDS = word_list(MODE_WORDS)
_STATE_WORDS = ("larval", "mature", "dying", "dead")
_POLICY_WORDS = word_list(POLICY_WORDS)
_LEVEL_WORDS = word_list(LEVEL_WORDS)
_DIR_WORDS = word_list(DIRECTION_WORDS)
_SCOPE_WORDS = {1: "global", 2: "ifnet", 4: "pcb"}

# kdebug_sadb's dispatch (wire extension number -> printer name); the two
# versions differ from 23 on, as the two headers do.
_DEBUG_COMMON = {
    1: "sa",
    2: "lifetime",
    3: "lifetime",
    4: "lifetime",
    5: "address",
    6: "address",
    7: "address",
    8: "key",
    9: "key",
    10: "ident",
    11: "ident",
    12: "",
    13: "prop",
    14: "supported",
    15: "supported",
    16: "",
    17: "",
    18: "policy",
    19: "sa2",
    20: "natt_type",
    21: "natt_port",
    22: "natt_port",
    23: "address",
}

_STYLES: dict[Dialect, _Style] = {
    Dialect.FREEBSD: _Style(
        linux=False,
        portless=frozenset({_ICMPV6}),
        typecode=frozenset({_ICMPV6}),
        dirs=_DIR_WORDS[:3],
        request_protos=REQUEST_PROTO_WORDS,
        tcp_satype=True,
        debug_exts={**_DEBUG_COMMON, 24: "address", 26: "sa_replay", 27: "address", 28: "address"},
    ),
    Dialect.LINUX: _Style(
        linux=True,
        portless=frozenset({_ICMP, _ICMPV6, _MH, _GRE}),
        typecode=frozenset({_ICMP, _ICMPV6, _MH}),
        dirs=(*_DIR_WORDS, "in(socket)", "out(socket)"),
        request_protos=REQUEST_PROTO_WORDS,
        tcp_satype=False,
        debug_exts={**_DEBUG_COMMON, 25: "kmaddress"},
    ),
}


# libipsec's ipsec_strerror() texts used by the dumps.
_EIPSEC_INVAL_SATYPE = "Invalid SA type"
_EIPSEC_NOT_SUPPORTED = "Not supported"
_EIPSEC_PROTO_MISMATCH = "Protocol mismatch"
_EIPSEC_FAMILY_MISMATCH = "Family mismatch"
_EIPSEC_INVAL_FAMILY = "Invalid address family"
_EIPSEC_INVAL_DIR = "Invalid direciton"  # sic, libipsec's spelling
_EIPSEC_INVAL_POLICY = "Invalid security policy"
_EIPSEC_INVAL_PROTO = "Invalid ipsec protocol"
_EIPSEC_INVAL_MODE = "Invalid ipsec mode"
_EIPSEC_INVAL_LEVEL = "Invalid ipsec level"
_EIPSEC_INVAL_ADDRESS = "Invalid address specification"


def _num(value: int) -> int:
    """The wire number of a canonical value (drops the LINUX_ONLY/UNKNOWN bits)."""
    return value & 0xFF if value > 0xFF else value


def _word(table: tuple[str, ...], value: int) -> str:
    """GETMSGSTR: the table's word or the number, always followed by a space."""
    return f"{table[value]} " if 0 <= value < len(table) and table[value] else f"{value} "


def _alg_name(kind: Kind, value: int, dialect: Dialect) -> str:
    """GETMSGV2S over the dialect's dump names (pfkeyd.algorithms), with its space."""
    alg = algorithms.by_id(kind, value)
    if alg is None and value & UNKNOWN:
        alg = algorithms.by_id(kind, value & ~UNKNOWN)
    return (alg.dump_name(dialect) if alg is not None else str(_num(value))) + " "


def _signed64(value: int) -> int:
    value &= _U64
    return value - (1 << 64) if value >> 63 else value


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def ctime20(seconds: int, localtime: Callable[[float], time.struct_time] = time.localtime) -> str:
    """libipsec's str_time(): ``ctime()`` without the weekday, 20 characters
    (``Mar  5 10:15:02 2024``); 0 gives 20 spaces, a time ctime() cannot convert
    gives 20 ``?`` (ipsec-tools; FreeBSD would crash)."""
    if seconds == 0:
        return " " * 20
    try:
        tm = localtime(_signed64(seconds))
    except (OverflowError, OSError, ValueError):
        return "?" * 20
    if not 0 <= tm.tm_year <= 9999:
        return "?" * 20
    text = f"{_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {tm.tm_year}\n"
    return text[:20]


def _ntop(ip: IPv4Address | IPv6Address) -> str:
    """inet_ntop()/getnameinfo(NI_NUMERICHOST) text: RFC 5952 compression as the
    BIND-derived code in both C libraries does it, with the dotted quad kept in
    IPv4-mapped and IPv4-compatible addresses."""
    if ip.version == 4:
        return str(ip)
    words = struct.unpack("!8H", ip.packed)
    best_base, best_len, base, length = -1, 0, -1, 0
    for i, w in enumerate(words):
        if w == 0:
            base, length = (i, length + 1) if length else (i, 1)
            if length > best_len:
                best_base, best_len = base - length + 1, length
        else:
            length = 0
    if best_base == 0 and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)):
        return ("::ffff:" if best_len == 5 else "::") + str(IPv4Address(ip.packed[12:]))
    return str(ip)


def _host(sa: AnySockAddr | None, opts: DumpOptions) -> str | None:
    """getnameinfo(NI_NUMERICHOST): None where it fails (not an inet family)."""
    if not isinstance(sa, SockAddr):
        return None
    text = _ntop(sa.ip)
    if sa.ip.version == 6 and sa.scope_id:
        named = opts.ifname(sa.scope_id) if _zone_is_an_interface(sa.ip.packed, opts.dialect) else None
        text += "%" + (named or str(sa.scope_id))
    return text


def _zone_is_an_interface(packed: bytes, dialect: Dialect) -> bool:
    """Whether getnameinfo() writes the zone of this IPv6 address as an interface
    name (else as the number): glibc's does for link-local unicast and multicast,
    FreeBSD's (ip6_sa2str) for interface-local multicast too."""
    if packed[0] == 0xFE and packed[1] & 0xC0 == 0x80:  # fe80::/10
        return True
    if packed[0] != 0xFF:
        return False
    scope = packed[1] & 0x0F
    return scope == 2 or (scope == 1 and dialect is Dialect.FREEBSD)


def _cstr(text: str | None) -> str:
    return "(null)" if text is None else text


def _key_hex(data: bytes) -> str:
    """ipsec_hexdump(): a space before every 4 bytes, a bare newline after every 32."""
    out = []
    for i, byte in enumerate(data):
        if i and i % 32 == 0:
            out.append("\n")
        if i % 4 == 0:
            out.append(" ")
        out.append(f"{byte:02x}")
    return "".join(out)


def _key_bytes(key: Key) -> bytes:
    return key.data[: key.bits // 8]


# -------------------------------------------------------------- pfkey_check


def _pfkey_check(msg: Message, style: _Style) -> str | None:
    """libipsec pfkey_check(): the satype against the message type, then the
    SRC/DST pair.  Returns the ipsec_strerror() text of a failure."""
    problem = _satype_problem(msg.satype, msg.type, style)
    if problem is not None:
        return problem
    src, dst = msg.src, msg.dst
    if src is not None and dst is not None:
        if src.proto != dst.proto:
            return _EIPSEC_PROTO_MISMATCH
        if _family(src.addr) != _family(dst.addr):
            return _EIPSEC_FAMILY_MISMATCH
        if not isinstance(src.addr, SockAddr):
            return _EIPSEC_INVAL_FAMILY
    return None


def _satype_problem(satype: int, mtype: int, style: _Style) -> str | None:
    """pfkey_check()'s switch on the satype."""
    if satype == SaType.UNSPEC:
        return _EIPSEC_INVAL_SATYPE if mtype in _SA_TYPES else None
    if satype in (SaType.ESP, SaType.AH, SaType.X_IPCOMP) or (satype == SaType.X_TCPSIGNATURE and style.tcp_satype):
        return _EIPSEC_INVAL_SATYPE if mtype in _SPD_TYPES else None
    if satype in (SaType.RSVP, SaType.OSPFV2, SaType.RIPV2, SaType.MIP):
        return _EIPSEC_NOT_SUPPORTED
    if not (satype == 1 and mtype == MsgType.X_PROMISC):
        return _EIPSEC_INVAL_SATYPE
    return None


_SA_TYPES = frozenset(
    {MsgType.GETSPI, MsgType.UPDATE, MsgType.ADD, MsgType.DELETE, MsgType.GET, MsgType.ACQUIRE, MsgType.EXPIRE}
)
_SPD_TYPES = frozenset({MsgType.X_SPDADD, MsgType.X_SPDDELETE, MsgType.X_SPDGET, MsgType.X_SPDDUMP, MsgType.X_SPDFLUSH})


def _family(sa: AnySockAddr) -> int:
    return sa.ip.version if isinstance(sa, SockAddr) else -sa.family
