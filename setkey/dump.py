"""What setkey prints for the PF_KEY messages it receives: SA and policy dumps,
error replies, the ``-l`` short format, ``-v``/``-x`` debug dumps, ``-h`` hex dumps
and the ``--json`` lines.

Theory of operation
-------------------
Every function here is pure: it takes decoded :class:`~pfkeyd.wire.Message` values
(or raw bytes, for the debug and hex dumps) and returns text.  Nothing reads the
clock, the time zone database, ``/etc/protocols`` or the interface list: the
current time comes in as ``now``, local time through ``DumpOptions.localtime``
(``time.localtime`` by default; tests pass ``time.gmtime`` or fix ``TZ``),
protocol names through ``DumpOptions.protocols`` and interface names through
``DumpOptions.ifname``.

The text imitates the reference tool of the daemon's dialect, byte for byte:

``freebsd``
    FreeBSD's setkey and libipsec (``pfkey_sadump``, ``pfkey_spdump``,
    ``ipsec_dump_policy``, ``shortdump``, ``postproc`` and the userland
    ``kdebug_sadb`` of ``sys/netipsec/key_debug.c``), current sources;
``linux``
    ipsec-tools 0.8.2 setkey built on Linux (the same functions in its
    ``libipsec``, with priorities and ``fwd`` compiled in).

The choices that differ are collected in one :class:`_Style` per dialect, so
the rendering code reads as one program.  Where the reference prints a C NULL
string (``printf("%s", NULL)``) both C libraries print ``(null)``, and so do we.

Two reference behaviours are deliberately not copied: with ``-v`` both setkeys
run ``kdebug_sadb`` a second time on the bytes *after* each dump message in
their receive buffer (left-over garbage), and FreeBSD 15's offload lines
(``hw offl if:``, ``sw offl use:``) need extensions 29-31 that the codec does
not carry.

``--json``
----------
No reference setkey has it.  Each SA or policy is one JSON object on one line
(JSON Lines); keys always appear, in the order below, with ``null`` for what the
message lacks.  Names are lower case; a number that has no name is emitted as
the integer.  Key material and addresses are strings; times are integers
(seconds since the epoch for ``current`` lifetimes, seconds for ``hard`` and
``soft``), never local time.  The schema is the same for both dialects.

SA (from GET and DUMP)::

    {"type": "sa",
     "msg": {"type": "DUMP", "satype": 3, "seq": 0, "pid": 2301, "refcnt": 1},
     "satype": "esp",                         # ah esp ipcomp tcp ..., or the number
     "src": {"address": "192.0.2.1", "port": 0, "prefixlen": 32, "proto": 255},
     "dst": {...},
     "spi": 4097,
     "mode": "transport",                     # any transport tunnel, or the number
     "reqid": 5,
     "sequence": 0,                           # sadb_x_sa2_sequence
     "replay": 4,                             # window in bytes, as setkey -r
     "state": "mature",                       # larval mature dying dead, or the number
     "flags": 64,
     "encryption": {"algorithm": "aes-cbc", "id": 12, "bits": 128, "key": "0011..."},
     "authentication": {"algorithm": "hmac-sha2-512", "id": 7, "bits": 512, "key": "..."},
     "compression": {"algorithm": "deflate", "id": 2},
     "nat_t": {"type": 2, "sport": 4500, "dport": 4500, "oai": "10.0.0.9", "oar": null},
     "lifetime": {"current": {"allocations": 0, "bytes": 0, "addtime": 1709633702, "usetime": 0},
                  "hard": {...}, "soft": {...}},
     "sec_ctx": {"doi": 1, "alg": 1, "context": "system_u:..."}}

``encryption``, ``authentication``, ``compression``, ``nat_t``, ``sec_ctx`` and
each lifetime may be ``null``.  ``algorithm`` is the project-wide setkey name of
the algorithm (the first spelling in :mod:`pfkeyd.algorithms`), ``null`` when it
has none; ``id`` is the number on the wire.  ``key`` (lower-case hex) and
``bits`` (``sadb_key_bits``) are there only when the message carries the key;
an algorithm id without a key (FreeBSD's implied GMAC id of an AES-GCM SA)
gives ``{"algorithm": null, "id": 11}``.  ``encryption`` is filled from KEY_ENCRYPT for an
ESP SA and ``compression`` from ``sadb_sa_encrypt`` for an IPComp SA.

Policy (from SPDDUMP and SPDGET)::

    {"type": "policy",
     "msg": {"type": "X_SPDDUMP", "satype": 0, "seq": 1, "pid": 2301, "refcnt": 1},
     "id": 8,                                 # spid
     "src": {"address": "10.1.0.0", "port": 0, "prefixlen": 16, "proto": 255},
     "dst": {...},
     "upper": 255,                            # upper-layer protocol (255: any)
     "dir": "out",                            # any in out fwd, or the number
     "action": "ipsec",                       # discard none ipsec entrust bypass, or the number
     "priority": 2147483648,
     "scope": "global",                       # global ifnet pcb (freebsd), null (linux)
     "requests": [{"proto": "esp", "mode": "tunnel", "level": "require", "reqid": 0,
                   "src": {"address": "192.0.2.1", "port": 0},
                   "dst": {"address": "198.51.100.2", "port": 0}}],
     "lifetime": {"current": {...}, "hard": {...}},
     "sec_ctx": null}

A request's ``proto`` is ``esp``, ``ah``, ``ipcomp`` or the number; its ``src``
and ``dst`` are ``null`` when the request names no endpoints.

Error reply::

    {"type": "error", "msg": {...}, "errno": 3, "message": "No such process"}

An empty table (DUMP or SPDDUMP answered with ENOENT) prints nothing in JSON
mode; dead SAs are left out unless ``-a`` is given, as in the text formats.
"""

from __future__ import annotations

import errno as E
import json
import os
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pfkeyd import algorithms
from pfkeyd.algorithms import Kind
from pfkeyd.record import record
from pfkeyd.wire import (
    HEADER,
    UNKNOWN,
    Address,
    Dialect,
    ExtType,
    IpsecRequest,
    Key,
    Lifetime,
    Message,
    MsgType,
    Policy,
    SaState,
    SaType,
    SockAddr,
)
from pfkeyd.wire.constants import IPSEC_MANUAL_REQID_MAX
from pfkeyd.wire.framing import promisc_unwrap
from pfkeyd.wire.sockaddr import AnySockAddr
from pfkeyd.words import DIRECTION_WORDS, LEVEL_WORDS, MODE_WORDS, POLICY_WORDS, REQUEST_PROTO_WORDS, word_list
from setkey.commands import PRIORITY_DEFAULT, PRIORITY_HIGH, PRIORITY_LOW

__all__ = [
    "DumpOptions",
    "PROTOCOLS",
    "SHORT_HEADER",
    "parse_protocols",
    "ctime20",
    "render_reply",
    "priority_warning",
    "format_sa",
    "format_policy",
    "format_short",
    "error_text",
    "format_error",
    "to_json",
    "format_json",
    "hexdump",
    "kdebug",
    "debug_block",
    "timestamp",
    "promisc_block",
]

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def _no_ifname(index: int) -> str | None:
    return None


#: Upper-layer protocol names, as ``getprotobynumber`` finds them in a stock
#: ``/etc/protocols`` (IANA keywords in lower case; Debian's netbase and FreeBSD's
#: file agree on these).  setkey prints the number for anything missing here.
#: The CLI may pass the system's own file through :func:`parse_protocols`.
PROTOCOLS: Mapping[int, str] = {
    0: "ip", 1: "icmp", 2: "igmp", 3: "ggp", 4: "ipencap", 5: "st", 6: "tcp", 8: "egp", 9: "igp",
    12: "pup", 17: "udp", 20: "hmp", 22: "xns-idp", 27: "rdp", 29: "iso-tp4", 33: "dccp", 36: "xtp",
    37: "ddp", 38: "idpr-cmtp", 41: "ipv6", 43: "ipv6-route", 44: "ipv6-frag", 45: "idrp", 46: "rsvp",
    47: "gre", 50: "esp", 51: "ah", 57: "skip", 58: "ipv6-icmp", 59: "ipv6-nonxt", 60: "ipv6-opts",
    73: "rspf", 81: "vmtp", 88: "eigrp", 89: "ospf", 93: "ax.25", 94: "ipip", 97: "etherip",
    98: "encap", 103: "pim", 108: "ipcomp", 112: "vrrp", 115: "l2tp", 124: "isis", 132: "sctp",
    133: "fc", 135: "mobility-header", 136: "udplite", 137: "mpls-in-ip", 138: "manet", 139: "hip",
    140: "shim6", 141: "wesp", 142: "rohc", 143: "ethernet",
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
_SATYPE_WORDS = ("unspec", "unknown", "ah", "esp", "unknown", "rsvp", "ospfv2", "ripv2", "mip", "ipcomp",
                 "policy", "tcp")
_MODE_WORDS = word_list(MODE_WORDS)
_STATE_WORDS = ("larval", "mature", "dying", "dead")
_POLICY_WORDS = word_list(POLICY_WORDS)
_LEVEL_WORDS = word_list(LEVEL_WORDS)
_DIR_WORDS = word_list(DIRECTION_WORDS)
_SCOPE_WORDS = {1: "global", 2: "ifnet", 4: "pcb"}

# kdebug_sadb's dispatch (wire extension number -> printer name); the two
# versions differ from 23 on, as the two headers do.
_DEBUG_COMMON = {
    1: "sa", 2: "lifetime", 3: "lifetime", 4: "lifetime", 5: "address", 6: "address", 7: "address",
    8: "key", 9: "key", 10: "ident", 11: "ident", 12: "", 13: "prop", 14: "supported", 15: "supported",
    16: "", 17: "", 18: "policy", 19: "sa2", 20: "natt_type", 21: "natt_port", 22: "natt_port",
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
    satype, mtype = msg.satype, msg.type
    if satype == SaType.UNSPEC:
        if mtype in _SA_TYPES:
            return _EIPSEC_INVAL_SATYPE
    elif satype in (SaType.ESP, SaType.AH, SaType.X_IPCOMP) or (
            satype == SaType.X_TCPSIGNATURE and style.tcp_satype):
        if mtype in _SPD_TYPES:
            return _EIPSEC_INVAL_SATYPE
    elif satype in (SaType.RSVP, SaType.OSPFV2, SaType.RIPV2, SaType.MIP):
        return _EIPSEC_NOT_SUPPORTED
    elif not (satype == 1 and mtype == MsgType.X_PROMISC):
        return _EIPSEC_INVAL_SATYPE
    src, dst = msg.src, msg.dst
    if src is not None and dst is not None:
        if src.proto != dst.proto:
            return _EIPSEC_PROTO_MISMATCH
        if _family(src.addr) != _family(dst.addr):
            return _EIPSEC_FAMILY_MISMATCH
        if not isinstance(src.addr, SockAddr):
            return _EIPSEC_INVAL_FAMILY
    return None


_SA_TYPES = frozenset({MsgType.GETSPI, MsgType.UPDATE, MsgType.ADD, MsgType.DELETE, MsgType.GET,
                       MsgType.ACQUIRE, MsgType.EXPIRE})
_SPD_TYPES = frozenset({MsgType.X_SPDADD, MsgType.X_SPDDELETE, MsgType.X_SPDGET, MsgType.X_SPDDUMP,
                        MsgType.X_SPDFLUSH})


def _family(sa: AnySockAddr) -> int:
    return sa.ip.version if isinstance(sa, SockAddr) else -sa.family


# ------------------------------------------------------------------ SA dump


def format_sa(msg: Message, now: int, opts: DumpOptions) -> str:
    """``pfkey_sadump()``: one SA of a GET or DUMP reply, newline-terminated.

    ``now`` is the current time (epoch seconds) printed as ``current:`` and used
    for ``diff:``.
    """
    style = _STYLES[opts.dialect]
    problem = _pfkey_check(msg, style)
    if problem is not None:
        return problem + "\n"
    src, dst, sa, sa2 = msg.src, msg.dst, msg.sa, msg.sa2
    natt = msg.nat_t_type
    # FreeBSD treats any NAT_T_TYPE extension as NAT-T; ipsec-tools a non-zero type.
    use_natt = natt is not None and (not style.linux or natt.type != 0)
    sport, dport = msg.nat_t_sport, msg.nat_t_dport
    if src is None:
        return "no ADDRESS_SRC extension.\n"

    def endpoint(a: Address, port: int | None) -> str:
        text = _cstr(_host(a.addr, opts))
        if style.linux and opts.ports:
            text += f"[{a.addr.port if isinstance(a.addr, SockAddr) else 0}]"
        if use_natt and port is not None:
            text += f"[{port}]"
        return text

    s_port = sport.port if sport is not None else None
    d_port = dport.port if dport is not None else None
    if style.linux:
        head = endpoint(src, s_port) + " "
        if dst is None:
            return head + " no ADDRESS_DST extension.\n"
        head += endpoint(dst, d_port) + " "
        lead = ""
    else:
        head = endpoint(src, s_port)
        if dst is None:
            return head + "\nno ADDRESS_DST extension.\n"
        head += " " + endpoint(dst, d_port)
        lead = "\n"
    if sa is None:
        return head + lead + "no SA extension.\n"
    if sa2 is None:
        return head + lead + "no SA2 extension.\n"

    out = [head, "\n\t"]
    if use_natt and msg.satype == SaType.ESP:
        out.append("esp-udp ")
    else:
        if use_natt and style.linux:  # ipsec-tools marks a NAT-T SA that is not ESP
            out.append("natt+")
        out.append(_word(_SATYPE_WORDS, msg.satype))
    out.append("mode=" + _word(_MODE_WORDS, _num(sa2.mode)))
    out.append(f"spi={sa.spi}(0x{sa.spi:08x}) reqid={sa2.reqid}(0x{sa2.reqid:08x})\n")

    if style.linux:
        oa = msg.address(ExtType.X_NAT_T_OA)
        if use_natt and oa is not None:
            out.append(f"\tNAT OA={_cstr(_host(oa.addr, opts))}\n")
    else:
        oai, oar = msg.address(ExtType.X_NAT_T_OAI), msg.address(ExtType.X_NAT_T_OAR)
        if natt is not None and (oai is not None or oar is not None):
            out.append("\tNAT:")
            if oai is not None:
                out.append(f" OAI={_cstr(_host(oai.addr, opts))}")
            if oar is not None:
                out.append(f" OAR={_cstr(_host(oar.addr, opts))}")
            out.append("\n")

    enc_key, auth_key = msg.key_encrypt, msg.key_auth
    if msg.satype == SaType.X_IPCOMP:
        # No newline: the seq= line continues this one (reference example SA-4).
        out.append("\tC: " + _alg_name(Kind.COMPRESS, sa.encrypt, opts.dialect))
    elif msg.satype == SaType.ESP and enc_key is not None:
        out.append("\tE: " + _alg_name(Kind.ENCRYPT, sa.encrypt, opts.dialect) + _key_hex(_key_bytes(enc_key)) + "\n")
    if auth_key is not None:
        out.append("\tA: " + _alg_name(Kind.AUTH, sa.auth, opts.dialect) + _key_hex(_key_bytes(auth_key)) + "\n")

    replay = sa.replay
    sa_replay = msg.sa_replay
    if not style.linux and sa_replay is not None:
        replay = sa_replay.replay >> 3  # FreeBSD: the window in packets, shown in bytes
    out.append(f"\tseq=0x{sa2.sequence:08x} replay={replay} flags=0x{sa.flags:08x} "
               f"state={_word(_STATE_WORDS, sa.state)}\n")

    current = msg.lifetime_current
    if current is not None:
        out.append(_sa_lifetimes(current, msg.lifetime_hard, msg.lifetime_soft, now, opts))
    ctx = msg.sec_ctx
    if style.linux and ctx is not None:
        out.append(_sec_ctx_lines(ctx.doi, ctx.alg, ctx.ctx))
    out.append(f"\tsadb_seq={msg.seq} pid={msg.pid} refcnt={msg.reserved}\n")
    return "".join(out)


def _lifetime_bytes(lt: Lifetime | None) -> str:
    # str_lifetime_byte() prints the counter through a double with "%.0f".
    return "0" if lt is None else f"{float(lt.bytes):.0f}"


def _sa_lifetimes(c: Lifetime, h: Lifetime | None, s: Lifetime | None, now: int, opts: DumpOptions) -> str:
    diff = 0 if c.addtime == 0 else (now - c.addtime) & _U64

    def get(lt: Lifetime | None, name: str) -> int:
        return 0 if lt is None else int(getattr(lt, name))

    return (
        f"\tcreated: {ctime20(c.addtime, opts.localtime)}\tcurrent: {ctime20(now, opts.localtime)}\n"
        f"\tdiff: {diff}(s)\thard: {get(h, 'addtime')}(s)\tsoft: {get(s, 'addtime')}(s)\n"
        f"\tlast: {ctime20(c.usetime, opts.localtime)}\thard: {get(h, 'usetime')}(s)\tsoft: {get(s, 'usetime')}(s)\n"
        f"\tcurrent: {_lifetime_bytes(c)}(bytes)\thard: {_lifetime_bytes(h)}(bytes)"
        f"\tsoft: {_lifetime_bytes(s)}(bytes)\n"
        f"\tallocated: {c.allocations}\thard: {get(h, 'allocations')}\tsoft: {get(s, 'allocations')}\n"
    )


def _sec_ctx_lines(doi: int, alg: int, ctx: bytes) -> str:
    text = ctx.split(b"\0", 1)[0].decode("utf-8", "replace")
    return (f"\tsecurity context doi: {doi}\n\tsecurity context algorithm: {alg}\n"
            f"\tsecurity context length: {len(ctx)}\n\tsecurity context: {text}\n")


# ---------------------------------------------------------------- SPD dump


def _prefport(a: Address, ulp: int, style: _Style) -> str:
    """str_prefport(): ``/prefix`` unless full, then ``[port]``/``[any]`` unless the
    upper-layer protocol carries a type and code instead of ports."""
    sa = a.addr
    assert isinstance(sa, SockAddr)
    pref = "" if a.prefixlen == sa.max_prefix else f"/{a.prefixlen}"
    if ulp in style.portless:
        return pref
    return pref + ("[any]" if sa.port == 0 else f"[{sa.port}]")


def _upperspec(ulp: int, p1: int, p2: int, style: _Style, opts: DumpOptions) -> str:
    """str_upperspec(): the upper-layer protocol and, for ICMP-like ones, type,code."""
    if not style.linux and ulp == 255:
        return "any"
    if not style.linux and ulp == _ICMPV6:
        text = "icmp6"
    elif not style.linux and ulp == _IPV4:
        text = "ip4"
    else:
        text = opts.protocols.get(ulp, str(ulp))
    if p1 == 0 and p2 == 0:
        return text
    if ulp in style.typecode:
        return f"{text} {p1},{p2}"
    if style.linux and ulp == _GRE:
        return f"{text} {(p1 << 16) + p2}"
    return text


def _priority_text(priority: int) -> str:
    """ipsec-tools' rendering of sadb_x_policy_priority: ``prio <band> [+|- n]``."""
    if priority == 0:
        return ""
    if priority < (PRIORITY_DEFAULT // 4) * 3:
        base, word = PRIORITY_HIGH, "prio high"
    elif priority < (PRIORITY_DEFAULT // 4) * 5:
        base, word = PRIORITY_DEFAULT, "prio def"
    else:
        base, word = PRIORITY_LOW, "prio low"
    offset = _int32(-_int32(priority - base))  # the sign as the user would type it
    if offset == 0:
        return word
    op = "-" if offset < 0 else "+"
    return f"{word} {op} {(-offset if offset < 0 else offset) & _U32}"


def _int32(value: int) -> int:
    value &= _U32
    return value - (1 << 32) if value >> 31 else value


def _endpoint_text(sa: AnySockAddr, with_port: bool, opts: DumpOptions) -> str | None:
    host = _host(sa, opts)
    if host is None:
        return None
    return f"{host}[{sa.port}]" if with_port and isinstance(sa, SockAddr) else host


def _request_text(req: IpsecRequest, style: _Style, opts: DumpOptions) -> str | tuple[str]:
    """ipsec_dump_ipsecrequest(); a 1-tuple carries the libipsec error instead."""
    proto = style.request_protos.get(req.proto)
    if proto is None:
        return (_EIPSEC_INVAL_PROTO,)
    mode = _num(req.mode)
    if mode >= len(_MODE_WORDS):
        return (_EIPSEC_INVAL_MODE,)
    addrs = ""
    if req.src is not None and req.dst is not None:
        with_port = style.linux and opts.ports
        s, d = _endpoint_text(req.src, with_port, opts), _endpoint_text(req.dst, with_port, opts)
        if s is None or d is None:
            return (_EIPSEC_INVAL_ADDRESS,)
        addrs = f"{s}-{d}"
    if not 0 <= req.level < len(_LEVEL_WORDS):
        return (_EIPSEC_INVAL_LEVEL,)
    text = f"{proto}/{_MODE_WORDS[mode]}/{addrs}/{_LEVEL_WORDS[req.level]}"
    if req.reqid:
        text += f"{'#' if req.reqid > IPSEC_MANUAL_REQID_MAX else ':'}{req.reqid}"
    return text


def _policy_text(pol: Policy, style: _Style, opts: DumpOptions) -> str | tuple[str]:
    """ipsec_dump_policy(policy, "\\n\\t"); a 1-tuple carries the libipsec error."""
    direction = _num(pol.dir)
    if not 0 <= direction < len(style.dirs):
        return (_EIPSEC_INVAL_DIR,)
    if not 0 <= pol.type < len(_POLICY_WORDS):
        return (_EIPSEC_INVAL_POLICY,)
    prio = _priority_text(pol.priority) if style.linux else ""
    parts = [style.dirs[direction]] + ([prio] if prio else []) + [_POLICY_WORDS[pol.type]]
    text = " ".join(parts)
    if pol.type != 2:  # IPSEC_POLICY_IPSEC
        return text
    for req in pol.requests:
        req_text = _request_text(req, style, opts)
        if isinstance(req_text, tuple):
            return req_text
        text += "\n\t" + req_text
    return text


def format_policy(msg: Message, opts: DumpOptions) -> str:
    """``pfkey_spdump()``: one policy of an SPDDUMP (or, for ipsec-tools, SPDGET)
    reply, newline-terminated."""
    style = _STYLES[opts.dialect]
    problem = _pfkey_check(msg, style)
    if problem is not None:
        return problem + "\n"
    src, dst, pol = msg.src, msg.dst, msg.policy
    out: list[str] = []
    # Linux always sends selectors; ipsec-tools recognises per-socket policies by
    # the direction Linux encodes in the low bits of the policy id.
    if style.linux and pol is not None and pol.id % 8 >= 3:
        out.append("(per-socket policy) ")
    elif src is not None and dst is not None:
        ulp = src.proto
        ports = []
        for a in (src, dst):
            if isinstance(a.addr, SockAddr):
                out.append(f"{_host(a.addr, opts)}{_prefport(a, ulp, style)} ")
                ports.append(a.addr.port)
            else:
                out.append("unknown-af ")
                ports.append(0)
        if src.proto != dst.proto:
            out.append("upper layer protocol mismatched.\n")
            return "".join(out)
        out.append(_upperspec(ulp, ports[0], ports[1], style, opts))
    else:
        out.append("(no selector, probably per-socket policy) ")

    if pol is None:
        out.append("no X_POLICY extension.\n")
        return "".join(out)
    text = _policy_text(pol, style, opts)
    if isinstance(text, tuple):
        # FreeBSD passes the NULL result to printf; ipsec-tools names the error.
        out.append(f"\n\tPolicy:[{text[0]}]\n" if style.linux else "\n\t(null)\n")
    else:
        out.append(f"\n\t{text}\n")

    current, hard = msg.lifetime_current, msg.lifetime_hard
    if current is not None:
        out.append(f"\tcreated: {ctime20(current.addtime, opts.localtime)}  "
                   f"lastused: {ctime20(current.usetime, opts.localtime)}\n")
    if hard is not None:
        out.append(f"\tlifetime: {hard.addtime}(s) validtime: {hard.usetime}(s)\n")
    ctx = msg.sec_ctx
    if style.linux and ctx is not None:
        out.append(_sec_ctx_lines(ctx.doi, ctx.alg, ctx.ctx))
    out.append(f"\tspid={pol.id} seq={msg.seq} pid={msg.pid}")
    if not style.linux:
        out.append(" scope=" + _SCOPE_WORDS.get(pol.scope, str(pol.scope)) + " ")
        if pol.scope == 2:  # IPSEC_POLICYSCOPE_IFNET: the priority field is the ifindex
            name = opts.ifname(pol.priority)
            if name is not None:
                out.append(f"ifname={name}")
    out.append(f"\n\trefcnt={msg.reserved}\n")
    return "".join(out)


# ------------------------------------------------------------- short format

#: The ``-l`` header, printed once before the first dump.
SHORT_HEADER = "time p   s spi      ltime   src -> dst\n"

_SHORT_SATYPE = {2: "ah", 3: "esp"}
_SHORT_STATE = ("L", "M", "D", "d")
_SHORT_PROTO = {0: "ip", 1: "icmp", 2: "igmp", 3: "ggp", 4: "ip4", 6: "tcp", 8: "egp", 17: "udp", 22: "idp",
                29: "tp", 41: "ip6", 43: "rt6", 44: "frag6", 46: "rsvp", 47: "gre", 50: "esp", 51: "ah",
                58: "icmp6", 59: "none", 60: "dst6"}


def _short_addr(a: Address | None, opts: DumpOptions) -> str:
    if a is None:
        return "?"
    text = f"{_SHORT_PROTO.get(a.proto, f'#{a.proto}')} " if a.proto else ""
    host = _host(a.addr, opts) or ""
    port = a.addr.port if isinstance(a.addr, SockAddr) else 0
    return text + (f"{host}[{port}]" if port else host)


def format_short(msg: Message, now: int, opts: DumpOptions) -> str:
    """``shortdump()``: the ``-l`` line of one SA (both setkeys print the same).

    The time column is the minute and second of ``now`` counted from the epoch,
    not local time, as the reference computes it.
    """
    out = [f"{now % 3600 // 60:02d}{now % 60:02d}", f" {_SHORT_SATYPE.get(msg.satype, f'#{msg.satype}'):<3}"]
    sa = msg.sa
    if sa is not None:
        state = _SHORT_STATE[sa.state] if 0 <= sa.state < len(_SHORT_STATE) else f"#{sa.state}"
        out.append(f" {state:<1} {sa.spi:08x}")
    else:
        out.append(f"{'?':<1} {'?':<8}")  # no leading space: as the reference prints it
    c, h, s = msg.lifetime_current, msg.lifetime_hard, msg.lifetime_soft
    if c is not None and h is not None and s is not None:
        age = 0 if c.addtime == 0 else (now - c.addtime) & _U32  # a u_int in the reference
        out.append(" big/" if age >= 1000 else f" {age:3d}/")
        hard = h.addtime & _U32
        out.append("big" if hard >= 1000 else f"{hard:<3d}")
    else:
        out.append(" ???/???")
    out.append(f" {_short_addr(msg.src, opts)} -> {_short_addr(msg.dst, opts)}\n")
    return "".join(out)


# ------------------------------------------------------------------- errors

#: strerror() texts of the errnos PF_KEY replies carry, where the two C libraries
#: differ from each other; the rest come from the host's os.strerror().
_STRERROR: dict[Dialect, dict[int, str]] = {
    Dialect.FREEBSD: {
        E.ENOENT: "No such file or directory",
        E.ESRCH: "No such process",
        E.EEXIST: "File exists",
        E.EINVAL: "Invalid argument",
        E.ENOBUFS: "No buffer space available",
        E.EAFNOSUPPORT: "Address family not supported by protocol family",
        E.EPROTONOSUPPORT: "Protocol not supported",
        E.EOPNOTSUPP: "Operation not supported",
        E.EBUSY: "Device busy",
        E.EMSGSIZE: "Message too long",
        E.EPERM: "Operation not permitted",
        E.EACCES: "Permission denied",
        E.ENOSYS: "Function not implemented",
        E.ELOOP: "Too many levels of symbolic links",
        E.ENOMEM: "Cannot allocate memory",
        E.ETIMEDOUT: "Operation timed out",
    },
    Dialect.LINUX: {
        E.ENOENT: "No such file or directory",
        E.ESRCH: "No such process",
        E.EEXIST: "File exists",
        E.EINVAL: "Invalid argument",
        E.ENOBUFS: "No buffer space available",
        E.EAFNOSUPPORT: "Address family not supported by protocol",
        E.EPROTONOSUPPORT: "Protocol not supported",
        E.EOPNOTSUPP: "Operation not supported",
        E.EBUSY: "Device or resource busy",
        E.EMSGSIZE: "Message too long",
        E.EPERM: "Operation not permitted",
        E.EACCES: "Permission denied",
        E.ENOSYS: "Function not implemented",
        E.ELOOP: "Too many levels of symbolic links",
        E.ENOMEM: "Cannot allocate memory",
        E.ETIMEDOUT: "Connection timed out",
    },
}

#: postproc()'s words for ENOENT, by the type of the reply.
_NO_ENTRY: dict[int, str] = {
    MsgType.DELETE: "No entry",
    MsgType.GET: "No entry",
    MsgType.X_SPDDELETE: "No entry",
    MsgType.DUMP: "No SAD entries",
    MsgType.X_SPDDUMP: "No SPD entries",
}


def error_text(msg: Message, dialect: Dialect | str = Dialect.FREEBSD) -> str:
    """What setkey says about an error reply, without the final period.

    ENOENT reads ``No entry``, ``No SAD entries`` or ``No SPD entries`` by message
    type (``(null)`` for other types, as the reference prints its NULL string);
    other errnos read as strerror().
    """
    if msg.errno == E.ENOENT:
        return _NO_ENTRY.get(msg.type, "(null)")
    return _STRERROR[Dialect(dialect)].get(msg.errno) or os.strerror(msg.errno)


def format_error(msg: Message, opts: DumpOptions) -> str:
    """postproc()'s line for an error reply on stdout: ``No SAD entries.``, or in
    FreeBSD script mode ``The result of line N: File exists.``.

    ipsec-tools reports script-mode errors on stderr instead
    (``setkey: <file>,<line>: <text>``, no period); build that from
    :func:`error_text`.
    """
    prefix = ""
    if opts.script_line is not None and opts.dialect is Dialect.FREEBSD:
        prefix = f"The result of line {opts.script_line}: "
    return f"{prefix}{error_text(msg, opts.dialect)}.\n"


# --------------------------------------------------------------- dispatcher


def _dump_sa(msg: Message, now: int, opts: DumpOptions) -> str:
    sa = msg.sa
    if not opts.show_dead and sa is not None and sa.state == SaState.DEAD:
        return ""
    return format_short(msg, now, opts) if opts.short else format_sa(msg, now, opts)


def _policy(msg: Message, now: int, opts: DumpOptions) -> str:
    return format_policy(msg, opts)


_Renderer = Callable[[Message, int, DumpOptions], str]

#: postproc(): which replies print what, per reference tool.  FreeBSD's setkey
#: ignores SPDGET replies; ipsec-tools prints them like dump entries.
_RENDERERS: dict[Dialect, dict[int, _Renderer]] = {
    Dialect.FREEBSD: {MsgType.GET: format_sa, MsgType.DUMP: _dump_sa, MsgType.X_SPDDUMP: _policy},
    Dialect.LINUX: {MsgType.GET: format_sa, MsgType.DUMP: _dump_sa, MsgType.X_SPDDUMP: _policy,
                    MsgType.X_SPDGET: _policy},
}


def render_reply(msg: Message, now: int, opts: DumpOptions) -> str:
    """Everything setkey prints for one reply (postproc): the error line, the SA or
    policy, the ``-l`` line or the JSON line; ``""`` for replies it does not print
    (dead SAs without ``-a``, ADD/DELETE/FLUSH acknowledgements, ...)."""
    if opts.json:
        return format_json(msg, opts)
    if msg.errno:
        return format_error(msg, opts)
    render = _RENDERERS[opts.dialect].get(msg.type)
    return "" if render is None else render(msg, now, opts)


def priority_warning(request: Message, reply: Message, opts: DumpOptions) -> str:
    """ipsec-tools' check that the kernel kept a policy priority (linux format only).

    After an SPDADD request with a non-zero priority, the first SPDADD reply that
    carries setkey's own pid is compared with it; a different priority prints
    ``WARNING: Kernel does not support policy priorities``.  ipsec-tools does this
    once per run: the caller keeps that state and calls this for the first such
    reply only.  Returns the text to print on stdout, or ``""``.
    """
    if opts.dialect is not Dialect.LINUX or request.type != MsgType.X_SPDADD or reply.type != MsgType.X_SPDADD:
        return ""
    sent = request.policy
    if sent is None or sent.priority == 0 or reply.pid != request.pid:
        return ""
    problem = _pfkey_check(reply, _STYLES[opts.dialect])
    if problem is not None:
        return problem + "\n"
    got = reply.policy
    if got is None:
        return "no X_POLICY extension.\n"
    return "" if got.priority == sent.priority else "WARNING: Kernel does not support policy priorities\n"


# --------------------------------------------------------------------- JSON


def _name_or_number(table: tuple[str, ...], value: int) -> str | int:
    return table[value] if 0 <= value < len(table) and table[value] not in ("", "unknown") else value


def _lifetime_json(lt: Lifetime | None) -> dict[str, int] | None:
    if lt is None:
        return None
    return {"allocations": lt.allocations, "bytes": lt.bytes, "addtime": lt.addtime, "usetime": lt.usetime}


def _address_json(a: Address | None, opts: DumpOptions) -> dict[str, Any] | None:
    if a is None:
        return None
    port = a.addr.port if isinstance(a.addr, SockAddr) else 0
    return {"address": _host(a.addr, opts), "port": port, "prefixlen": a.prefixlen, "proto": a.proto}


def _sockaddr_json(sa: AnySockAddr | None, opts: DumpOptions) -> dict[str, Any] | None:
    if sa is None:
        return None
    return {"address": _host(sa, opts), "port": sa.port if isinstance(sa, SockAddr) else 0}


def _alg_json(kind: Kind, value: int, key: Key | None) -> dict[str, Any]:
    alg = algorithms.by_id(kind, value)
    if alg is None and value & UNKNOWN:
        alg = algorithms.by_id(kind, value & ~UNKNOWN)
    out: dict[str, Any] = {"algorithm": alg.names[0] if alg is not None and alg.names else None,
                           "id": _num(value)}
    if key is not None:
        out["bits"] = key.bits
        out["key"] = key.data.hex()
    return out


def _msg_json(msg: Message) -> dict[str, Any]:
    mtype: str | int = MsgType(msg.type).name if msg.type in MsgType._value2member_map_ else msg.type
    return {"type": mtype, "satype": msg.satype, "seq": msg.seq, "pid": msg.pid, "refcnt": msg.reserved}


def _sec_ctx_json(msg: Message) -> dict[str, Any] | None:
    ctx = msg.sec_ctx
    if ctx is None:
        return None
    return {"doi": ctx.doi, "alg": ctx.alg, "context": ctx.ctx.split(b"\0", 1)[0].decode("utf-8", "replace")}


def _sa_json(msg: Message, opts: DumpOptions) -> dict[str, Any]:
    sa, sa2 = msg.sa, msg.sa2
    replay = None if sa is None else sa.replay
    if msg.sa_replay is not None:
        replay = msg.sa_replay.replay >> 3
    encryption = authentication = compression = None
    if sa is not None:
        if msg.satype == SaType.X_IPCOMP:
            compression = _alg_json(Kind.COMPRESS, sa.encrypt, None)
        elif msg.key_encrypt is not None or sa.encrypt:
            encryption = _alg_json(Kind.ENCRYPT, sa.encrypt, msg.key_encrypt)
        if msg.key_auth is not None or sa.auth:
            authentication = _alg_json(Kind.AUTH, sa.auth, msg.key_auth)
    natt = None
    if msg.nat_t_type is not None:
        oai, oar = msg.address(ExtType.X_NAT_T_OAI), msg.address(ExtType.X_NAT_T_OAR)
        natt = {
            "type": msg.nat_t_type.type,
            "sport": None if msg.nat_t_sport is None else msg.nat_t_sport.port,
            "dport": None if msg.nat_t_dport is None else msg.nat_t_dport.port,
            "oai": None if oai is None else _host(oai.addr, opts),
            "oar": None if oar is None else _host(oar.addr, opts),
        }
    return {
        "type": "sa",
        "msg": _msg_json(msg),
        "satype": _name_or_number(_SATYPE_WORDS, msg.satype),
        "src": _address_json(msg.src, opts),
        "dst": _address_json(msg.dst, opts),
        "spi": None if sa is None else sa.spi,
        "mode": None if sa2 is None else _name_or_number(_MODE_WORDS, _num(sa2.mode)),
        "reqid": None if sa2 is None else sa2.reqid,
        "sequence": None if sa2 is None else sa2.sequence,
        "replay": replay,
        "state": None if sa is None else _name_or_number(_STATE_WORDS, sa.state),
        "flags": None if sa is None else sa.flags,
        "encryption": encryption,
        "authentication": authentication,
        "compression": compression,
        "nat_t": natt,
        "lifetime": {"current": _lifetime_json(msg.lifetime_current), "hard": _lifetime_json(msg.lifetime_hard),
                     "soft": _lifetime_json(msg.lifetime_soft)},
        "sec_ctx": _sec_ctx_json(msg),
    }




def _policy_json(msg: Message, opts: DumpOptions) -> dict[str, Any]:
    pol = msg.policy
    src = msg.src
    requests = [] if pol is None else [
        {"proto": REQUEST_PROTO_WORDS.get(r.proto, r.proto), "mode": _name_or_number(_MODE_WORDS, _num(r.mode)),
         "level": _name_or_number(_LEVEL_WORDS, r.level), "reqid": r.reqid,
         "src": _sockaddr_json(r.src, opts), "dst": _sockaddr_json(r.dst, opts)}
        for r in pol.requests
    ]
    scope: str | int | None = None
    if pol is not None and opts.dialect is Dialect.FREEBSD:
        scope = _SCOPE_WORDS.get(pol.scope, pol.scope)
    return {
        "type": "policy",
        "msg": _msg_json(msg),
        "id": None if pol is None else pol.id,
        "src": _address_json(src, opts),
        "dst": _address_json(msg.dst, opts),
        "upper": None if src is None else src.proto,
        "dir": None if pol is None else _name_or_number(_DIR_WORDS, _num(pol.dir)),
        "action": None if pol is None else _name_or_number(_POLICY_WORDS, pol.type),
        "priority": None if pol is None else pol.priority,
        "scope": scope,
        "requests": requests,
        "lifetime": {"current": _lifetime_json(msg.lifetime_current), "hard": _lifetime_json(msg.lifetime_hard)},
        "sec_ctx": _sec_ctx_json(msg),
    }


_JSON_KINDS: dict[int, Callable[[Message, DumpOptions], dict[str, Any]]] = {
    MsgType.GET: _sa_json,
    MsgType.DUMP: _sa_json,
    MsgType.X_SPDDUMP: _policy_json,
    MsgType.X_SPDGET: _policy_json,
}


def to_json(msg: Message, opts: DumpOptions) -> dict[str, Any] | None:
    """The JSON object of one reply (schema in the module docstring), or None when
    nothing is printed for it: an empty table, a dead SA without ``-a``, a reply
    that is neither an SA nor a policy."""
    if msg.errno:
        if msg.errno == E.ENOENT and msg.type in (MsgType.DUMP, MsgType.X_SPDDUMP):
            return None
        return {"type": "error", "msg": _msg_json(msg), "errno": msg.errno,
                "message": error_text(msg, opts.dialect)}
    build = _JSON_KINDS.get(msg.type)
    if build is None:
        return None
    sa = msg.sa
    if msg.type == MsgType.DUMP and not opts.show_dead and sa is not None and sa.state == SaState.DEAD:
        return None
    return build(msg, opts)


def format_json(msg: Message, opts: DumpOptions) -> str:
    """:func:`to_json` as one line of compact JSON with a newline, or ``""``."""
    obj = to_json(msg, opts)
    return "" if obj is None else json.dumps(obj, separators=(",", ":")) + "\n"


# ---------------------------------------------------------------- hex dumps


def hexdump(data: bytes) -> str:
    """``-h`` (FreeBSD) / ``-H`` (ipsec-tools): ``%08x: `` at each 16-byte row,
    ``%02x `` per byte, a newline after each row and after a partial last row."""
    out = []
    for i, byte in enumerate(data):
        if i % 16 == 0:
            out.append(f"{i:08x}: ")
        out.append(f"{byte:02x} ")
        if i % 16 == 15:
            out.append("\n")
    if len(data) % 16:
        out.append("\n")
    return "".join(out)


def timestamp(sec: int, usec: int, *, raw: bool = False, utcoffset: int = 0) -> str:
    """The line ``-x`` prints before each message: ``HH:MM:SS.uuuuuu `` in local
    time (``utcoffset``: seconds east of UTC, taken once at start-up as setkey
    does), or with ``-xx`` ``<sec>.<usec> ``; newline-terminated."""
    if raw:
        return f"{sec & _U32}.{usec:06d} \n"
    s = (sec + utcoffset) % 86400
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}.{usec:06d} \n"


# ----------------------------------------------------------------- kdebug

_MSG_NAMES = {m.value: m.name for m in MsgType if m.value <= MsgType.X_SPDDELETE2}
_FREEBSD_EXT_NAMES = {
    0: "RESERVED", 1: "SA", 2: "LIFETIME_CURRENT", 3: "LIFETIME_HARD", 4: "LIFETIME_SOFT", 5: "ADDRESS_SRC",
    6: "ADDRESS_DST", 7: "ADDRESS_PROXY", 8: "KEY_AUTH", 9: "KEY_ENCRYPT", 10: "IDENTITY_SRC",
    11: "IDENTITY_DST", 12: "SENSITIVITY", 13: "PROPOSAL", 14: "SUPPORTED_AUTH", 15: "SUPPORTED_ENCRYPT",
    16: "SPIRANGE", 17: "KMPRIVATE", 18: "POLICY", 19: "SA2", 20: "NAT_T_TYPE", 21: "NAT_T_SPORT",
    22: "NAT_T_DPORT", 23: "NAT_T_OAI", 24: "NAT_T_OAR", 25: "NAT_T_FRAG", 26: "SA_REPLAY",
    27: "NEW_ADDRESS_SRC", 28: "NEW_ADDRESS_DST",
}


class _Raw:
    """Little readers over one message's bytes, in host order as the C code reads."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def u8(self, off: int) -> int:
        return self.data[off] if off < len(self.data) else 0

    def u16(self, off: int) -> int:
        return int(struct.unpack_from("=H", self._pad(off, 2), 0)[0])

    def u32(self, off: int) -> int:
        return int(struct.unpack_from("=I", self._pad(off, 4), 0)[0])

    def u64(self, off: int) -> int:
        return int(struct.unpack_from("=Q", self._pad(off, 8), 0)[0])

    def be16(self, off: int) -> int:
        return int.from_bytes(self._pad(off, 2), "big")

    def be32(self, off: int) -> int:
        return int.from_bytes(self._pad(off, 4), "big")

    def take(self, off: int, n: int) -> bytes:
        return self.data[off : off + max(n, 0)]

    def _pad(self, off: int, n: int) -> bytes:
        # The C code reads whatever follows; a short message reads as zeros here.
        return self.data[off : off + n].ljust(n, b"\0")


class _Kdebug:
    """kdebug_sadb() of one dialect over raw bytes."""

    def __init__(self, data: bytes, dialect: Dialect) -> None:
        self.raw = _Raw(data)
        self.dialect = dialect
        self.style = _STYLES[dialect]
        self.freebsd = dialect is Dialect.FREEBSD
        self.out: list[str] = []

    def p(self, text: str) -> None:
        self.out.append(text)

    def run(self) -> str:
        r = self.raw
        mtype = r.u8(1)
        name = f"({_MSG_NAMES.get(mtype, 'UNKNOWN')})" if self.freebsd else ""
        self.p(f"sadb_msg{{ version={r.u8(0)} type={mtype}{name} errno={r.u8(2)} satype={r.u8(3)}\n")
        units = r.u16(4)
        self.p(f"  len={units} reserved={r.u16(6)} seq={r.u32(8)} pid={r.u32(12)}\n")
        tlen = units * 8 - 16
        off = 16
        while tlen > 0:
            if off + 4 > len(r.data):
                break  # the C code would read past the datagram
            elen, etype = r.u16(off), r.u16(off + 2)
            ename = f"({_FREEBSD_EXT_NAMES.get(etype, 'UNKNOWN')})" if self.freebsd else ""
            self.p(f"sadb_ext{{ len={elen} type={etype}{ename} }}\n")
            if elen == 0:
                self.p("kdebug_sadb: invalid ext_len=0 was passed.\n")
                break
            if elen > tlen:  # both compare units with bytes, as the reference does
                self.p(f"kdebug_sadb: ext_len too big ({elen} > {tlen}).\n" if self.freebsd
                       else "kdebug_sadb: ext_len exceeds end of buffer.\n")
                break
            printer = self.style.debug_exts.get(etype)
            if printer is None:
                self.p(f"kdebug_sadb: invalid ext_type {etype}\n" if self.freebsd
                       else f"kdebug_sadb: invalid ext_type {etype} was passed.\n")
                break
            if printer:
                getattr(self, "ext_" + printer)(off, elen * 8, etype)
            tlen -= elen * 8
            off += elen * 8
        return "".join(self.out)

    # -- extension printers (same names as the C functions, minus kdebug_sadb_)

    def ext_sa(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p(f"sadb_sa{{ spi={r.be32(off + 4)} replay={r.u8(off + 8)} state={r.u8(off + 9)}\n")
        self.p(f"  auth={r.u8(off + 10)} encrypt={r.u8(off + 11)} flags=0x{r.u32(off + 12):08x} }}\n")

    def ext_lifetime(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p(f"sadb_lifetime{{ alloc={r.u32(off + 4)}, bytes={r.u64(off + 8) & _U32}\n")
        self.p(f"  addtime={r.u64(off + 16) & _U32}, usetime={r.u64(off + 24) & _U32} }}\n")

    def ext_address(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p(f"sadb_address{{ proto={r.u8(off + 4)} prefixlen={r.u8(off + 5)} "
               f"reserved=0x{r.u8(off + 6):02x}{r.u8(off + 7):02x} }}\n")
        self.sockaddr(off + 8)

    def ext_key(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        bits = r.u16(off + 4)
        self.p(f"sadb_key{{ bits={bits} reserved={r.u16(off + 6)}\n  key=")
        if bits >> 3 > length - 8:
            self.p(f"kdebug_sadb_key: key length mismatch, bit:{bits >> 3} len:{length - 8}.\n")
        self.p(_key_hex(r.take(off + 8, bits >> 3)) + " }\n")

    def ext_ident(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        itype, ident = r.u16(off + 4), r.u64(off + 8)
        self.p(f"sadb_ident_{'src' if etype == 10 else 'dst'}{{ type={itype} id={ident}")
        body = r.take(off + 16, length - 16)
        if body:
            chars = []
            for b in body.split(b"\0", 1)[0]:
                chars.append(chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}")
            self.p('\n  str="' + "".join(chars) + '"')
        self.p(" }\n")

    def ext_prop(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p(f"sadb_prop{{ replay={r.u8(off + 4)}\n")
        for i in range((length - 8) // 72):
            c = off + 8 + 72 * i
            self.p(f"sadb_comb{{ auth={r.u8(c)} encrypt={r.u8(c + 1)} flags=0x{r.u16(c + 2):04x} "
                   f"reserved=0x{r.u32(c + 12):08x}\n")
            self.p(f"  auth_minbits={r.u16(c + 4)} auth_maxbits={r.u16(c + 6)} "
                   f"encrypt_minbits={r.u16(c + 8)} encrypt_maxbits={r.u16(c + 10)}\n")
            self.p(f"  soft_alloc={r.u32(c + 16)} hard_alloc={r.u32(c + 20)} "
                   f"soft_bytes={r.u64(c + 24)} hard_bytes={r.u64(c + 32)}\n")
            # The reference labels the four time fields with the names above again.
            self.p(f"  soft_alloc={r.u64(c + 40)} hard_alloc={r.u64(c + 48)} "
                   f"soft_bytes={r.u64(c + 56)} hard_bytes={r.u64(c + 64)} }}\n")
        self.p("}\n")

    def ext_supported(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p("sadb_sup{\n")
        for i in range((length - 8) // 8):
            a = off + 8 + 8 * i
            self.p(f"  {{ id={r.u8(a)} ivlen={r.u8(a + 1)} min={r.u16(a + 2)} max={r.u16(a + 4)} }}\n")
        self.p("}\n")

    def ext_policy(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        ptype, pdir, scope, pid, prio = r.u16(off + 4), r.u8(off + 6), r.u8(off + 7), r.u32(off + 8), r.u32(off + 12)
        if self.freebsd:
            label = "ifindex" if scope == 2 else "priority"
            self.p(f"sadb_x_policy{{ type={ptype} dir={pdir} id={pid:x} scope={scope} {label}={prio} }}\n")
        else:
            self.p(f"sadb_x_policy{{ type={ptype} dir={pdir} id={pid:x} priority={prio} }}\n")
        if ptype != 2:
            return
        fixed = 8 if self.freebsd else 16
        tlen = length - 16
        x = off + 16
        while tlen > 0:
            rlen, proto, mode, level = r.u16(x), r.u16(x + 2), r.u8(x + 4), r.u8(x + 5)
            reqid = r.u16(x + 6) if self.freebsd else r.u32(x + 8)
            self.p(f" {{ len={rlen} proto={proto} mode={mode} level={level} reqid={reqid}\n")
            if rlen > fixed:
                first = x + fixed
                self.sockaddr(first)
                self.sockaddr(first + self.sa_len(first))
            self.p(" }\n")
            if rlen == 0:
                self.p("kdebug_sadb_x_policy: wrong policy struct.\n")
                return
            if rlen > tlen:
                self.p(f"kdebug_sadb_x_policy: invalid ipsec policy length ({rlen} > {tlen})\n" if self.freebsd
                       else "invalid ipsec policy length\n")
                return
            tlen -= rlen
            x += rlen

    def ext_sa2(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p(f"sadb_x_sa2{{ mode={r.u8(off + 4)} reqid={r.u32(off + 12)}\n")
        self.p(f"  reserved1={r.u8(off + 5)} reserved2={r.u16(off + 6)} sequence={r.u32(off + 8)} }}\n")

    def ext_sa_replay(self, off: int, length: int, etype: int) -> None:
        self.p(f"sadb_x_sa_replay{{ replay={self.raw.u32(off + 4)} }}\n")

    def ext_natt_type(self, off: int, length: int, etype: int) -> None:
        self.p(f"sadb_x_nat_t_type{{ type={self.raw.u8(off + 4)} }}\n")

    def ext_natt_port(self, off: int, length: int, etype: int) -> None:
        self.p(f"sadb_x_nat_t_port{{ port={self.raw.be16(off + 4)} }}\n")

    def ext_kmaddress(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p("sadb_x_kmaddress{ reserved=0x" + "".join(f"{r.u8(off + 4 + i):02x}" for i in range(4)) + " }\n")
        first = off + 8
        self.sockaddr(first)
        self.sockaddr(first + self.sa_len(first))

    # -- sockaddrs

    def family(self, off: int) -> int:
        return self.raw.u8(off + 1) if self.freebsd else self.raw.u16(off)

    def sa_len(self, off: int) -> int:
        """sa_len (BSD) or sysdep_sa_len() by family (Linux: 16 unless AF_INET6)."""
        if self.freebsd:
            return self.raw.u8(off)
        return 28 if self.family(off) == 10 else 16

    def sockaddr(self, off: int) -> None:
        r = self.raw
        family = self.family(off)
        inet, inet6 = (2, 28) if self.freebsd else (2, 10)
        if self.freebsd:
            # FreeBSD's userland kdebug_sockaddr: the address through inet_ntop,
            # link-local addresses with their numeric scope.
            if family == inet:
                addr = str(IPv4Address(r.take(off + 4, 4).ljust(4, b"\0")))
            elif family == inet6:
                ip6 = IPv6Address(r.take(off + 8, 16).ljust(16, b"\0"))
                addr = _ntop(ip6) + (f"%{r.u32(off + 24)}" if ip6.is_link_local else "")
            else:
                addr = "unknown"
            self.p(f"sockaddr{{ len={self.sa_len(off)} family={family} addr={addr} }}\n")
            return
        self.p(f"sockaddr{{ len={self.sa_len(off)} family={family}")
        if family == inet:
            self.p(f" port={r.be16(off + 2)}\n" + _key_hex(r.take(off + 4, 4)))
        elif family == inet6:
            self.p(f" port={r.be16(off + 2)}\n  flowinfo=0x{r.u32(off + 4):08x}, scope_id=0x{r.u32(off + 24):08x}\n"
                   + _key_hex(r.take(off + 8, 16)))
        self.p("  }\n")


def kdebug(data: bytes, dialect: Dialect | str) -> str:
    """``kdebug_sadb()`` of one raw message: what ``-v`` prints for every message
    sent and received and ``-x`` for every message seen (FreeBSD names the message
    and extension types, ipsec-tools prints numbers only)."""
    return _Kdebug(bytes(data), Dialect(dialect)).run()


def debug_block(data: bytes, dialect: Dialect | str) -> str:
    """``-v``: :func:`kdebug` followed by the blank line setkey prints after it."""
    return kdebug(data, dialect) + "\n"


def promisc_block(
    data: bytes,
    dialect: Dialect | str,
    *,
    sec: int,
    usec: int,
    raw_time: bool = False,
    utcoffset: int = 0,
    with_hex: bool = False,
) -> str:
    """What ``-x`` prints for one received datagram: the time stamp line, with
    ``-h``/``-H`` the hex dump of the whole datagram, then the kdebug dump of the
    message and a blank line.  An X_PROMISC message longer than its header wraps
    the message it reports (FreeBSD); a bare 16-byte X_PROMISC (the echo of the
    request) prints the time stamp only."""
    out = [timestamp(sec, usec, raw=raw_time, utcoffset=utcoffset)]
    if with_hex:
        out.append(hexdump(data))
    inner: bytes | None = bytes(data)
    if len(data) > HEADER.size and data[1] == MsgType.X_PROMISC:
        # a wrapped copy prints the message inside; a wrapper that does not frame
        # a whole message prints as it arrived
        inner = promisc_unwrap(data) or inner
    elif len(data) >= 2 and data[1] == MsgType.X_PROMISC:
        inner = None
    if inner is not None:
        out.append(debug_block(inner, dialect))
    return "".join(out)
