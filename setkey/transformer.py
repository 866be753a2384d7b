"""From the parse to :mod:`setkey.commands` values: numbers, keys, names.

The transformer only builds values: no DNS, no sockets, no global state.  Host
names stay text (:mod:`setkey.resolve` turns them into addresses later); the
policy text after ``-P`` is parsed with ``policy.lark`` (memoised, since scripts
repeat the same few policies) by :func:`setkey.parser.parse_policy`.

Tokens reach the callbacks as strings, whichever parser drives the grammar
(setkey/parser.py): lark's own parser passes its Tokens (strings that know their
line and column), the fast driver plain strings, except for the keyword that
starts a statement, which always knows where it is.  The callbacks of sub-rules
only group tokens; each statement's callback converts and checks them and
returns the command, or a :class:`Rejected` holding the first
:class:`~setkey.errors.SetkeyValueError` of the statement, so that one bad value
does not stop the parse and every statement is checked.  An error about a value
names the value (``hint``) and the statement; the parser finds its column.

Values that scripts repeat (hosts, option sets, algorithm sets) are memoised:
the dataclasses are frozen, so one value can stand in many commands.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from lark import Transformer, v_args

from pfkeyd import algorithms as alg
from pfkeyd.record import record
from pfkeyd.wire.constants import Direction, IpProto, Level, Mode, PolicyType, SaFlag
from pfkeyd.words import DIRECTION_BY_WORD, LEVEL_BY_WORD, MODE_BY_WORD, POLICY_BY_WORD, REQUEST_PROTO_BY_WORD
from setkey.commands import (
    DEFAULT_OPTIONS,
    NO_FLAGS,
    PRIORITY_DEFAULT,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    Add,
    AddrFlags,
    Algorithms,
    AlgSpec,
    Delete,
    DeleteAll,
    Dump,
    Endpoints,
    Exit,
    Flush,
    Get,
    GetSpi,
    Host,
    NatT,
    Policy,
    Proto,
    Request,
    SaOptions,
    SaStatement,
    SecContext,
    SpdAdd,
    SpdDelete,
    SpdDump,
    SpdFlush,
    SpdStatement,
    SpdTagged,
    SpdUpdate,
    Update,
)
from setkey.errors import SetkeyError, SetkeyValueError
from setkey.numeric import ip_from_text

__all__ = [
    "Located",
    "Rejected",
    "SetkeyTransformer",
    "PolicyTransformer",
    "UPPER_PROTOCOLS",
    "UPPER_NAMES",
    "group",
]

U8 = 0xFF
U16 = 0xFFFF
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
IFNAMSIZ = 16


class Located(str):
    """A token's text that knows where it was written (the fast driver's
    statement keywords; lark's Tokens have the same two attributes)."""

    line: int
    column: int

    @classmethod
    def at(cls, text: str, line: int, column: int) -> Located:
        word = cls(text)
        word.line = line
        word.column = column
        return word


@record
class Rejected:
    """A statement that parsed but holds a value that cannot be used."""

    error: SetkeyError


def group(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a callback that returns its children as a tuple, unchanged: the
    fast driver builds the tuple itself instead of calling it."""
    method.__setkey_group__ = True  # type: ignore[attr-defined]
    return method


def _fail(message: str, tok: str, nth: int = 0) -> SetkeyValueError:
    line = getattr(tok, "line", None)
    if line:
        return SetkeyValueError(message, line, tok.column)  # type: ignore[attr-defined]
    return SetkeyValueError(message, hint=str(tok), nth=nth)


def _placed(exc: SetkeyError, kw: str) -> Rejected:
    """The statement's error, placed in the statement that starts with ``kw``."""
    if not exc.line:
        exc.line = kw.line  # type: ignore[attr-defined]
        exc.column = kw.column  # type: ignore[attr-defined]
    return Rejected(exc)


def _number(tok: str, what: str, limit: int) -> int:
    value = int(tok, 16) if tok[1:2] in ("x", "X") else int(tok)
    if value > limit:
        shown = f"{limit:#x}" if tok[1:2] in ("x", "X") else str(limit)
        raise _fail(f"{what} {tok} is out of range (at most {shown})", tok)
    return value


@functools.lru_cache(maxsize=1024)
def _key(tok: str) -> bytes:
    """A key: 0x-hexadecimal (an odd digit count gets a leading 0 nibble) or "text"."""
    if tok[0] != '"':
        digits = tok[2:]
        return bytes.fromhex("0" + digits if len(digits) % 2 else digits)
    # Quoted text: the bytes between the quotes.  Scripts are read as UTF-8 with
    # surrogateescape, which gives back the file's bytes exactly.
    return tok[1:-1].encode("utf-8", "surrogateescape")


def _quoted(tok: str) -> str:
    return tok[1:-1]


# ------------------------------------------------------------------ hosts


def _port(tok: str) -> int | str:
    if tok == "any":
        return 0
    if tok.isdigit():
        return _number(tok, "port", U16)
    return str(tok)  # a UDP service name, looked up by setkey.resolve


@functools.lru_cache(maxsize=4096)
def _host(name: str, prefix: str | None = None, port: str | None = None) -> Host:
    """A host from its tokens (memoised by their text: scripts repeat hosts)."""
    return Host(
        str(name), 0 if port is None else _port(port), None if prefix is None else _number(prefix, "prefix length", 128)
    )


@functools.lru_cache(maxsize=4096)
def _sa_host(toks: tuple[str, ...]) -> Host:
    # STRING [LSQB x RSQB]
    return Host(str(toks[0]), _port(toks[2]) if len(toks) > 1 else 0)


@functools.lru_cache(maxsize=4096)
def _spd_host(toks: tuple[str, ...]) -> Host:
    # STRING [SLASH DEC] [LSQB x RSQB]: 1, 3, 4 or 6 tokens
    n = len(toks)
    port = _port(toks[-2]) if n in (4, 6) else 0
    return Host(str(toks[0]), port, _number(toks[2], "prefix length", 128) if n in (3, 6) else None)


# ------------------------------------------------------------------ protocols

_PROTO_WORDS = {p.value: p for p in Proto if p is not Proto.UNSPEC}

#: Upper-layer protocol names: the entries of a usual /etc/protocols (netbase,
#: FreeBSD), plus the words setkey itself knows (any, icmp6, ip4).  setkey asks
#: getprotobyname(3); a fixed table keeps a script's meaning independent of the
#: machine.  Matching ignores case, as the aliases in /etc/protocols are
#: upper-case spellings of the names.
UPPER_PROTOCOLS: dict[str, int] = {
    "ip": 0,
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ggp": 3,
    "ipencap": 4,
    "ipv4": 4,
    "ip4": 4,
    "ip-encap": 4,
    "st": 5,
    "tcp": 6,
    "egp": 8,
    "igp": 9,
    "pup": 12,
    "udp": 17,
    "hmp": 20,
    "xns-idp": 22,
    "rdp": 27,
    "iso-tp4": 29,
    "dccp": 33,
    "xtp": 36,
    "ddp": 37,
    "idpr-cmtp": 38,
    "ipv6": 41,
    "ipv6-route": 43,
    "ipv6-frag": 44,
    "idrp": 45,
    "rsvp": 46,
    "gre": 47,
    "esp": 50,
    "ipsec-esp": 50,
    "ah": 51,
    "ipsec-ah": 51,
    "skip": 57,
    "ipv6-icmp": 58,
    "icmp6": 58,
    "icmpv6": 58,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "rspf": 73,
    "vmtp": 81,
    "eigrp": 88,
    "ospf": 89,
    "ospfigp": 89,
    "ax.25": 93,
    "ipip": 94,
    "etherip": 97,
    "encap": 98,
    "pim": 103,
    "ipcomp": 108,
    "vrrp": 112,
    "carp": 112,
    "l2tp": 115,
    "isis": 124,
    "sctp": 132,
    "fc": 133,
    "mobility-header": 135,
    "mh": 135,
    "udplite": 136,
    "mpls-in-ip": 137,
    "manet": 138,
    "hip": 139,
    "shim6": 140,
    "wesp": 141,
    "rohc": 142,
    "ethernet": 143,
    "pfsync": 240,
    "any": 255,
}

#: The names the formatter writes (a number otherwise).
UPPER_NAMES: dict[int, str] = {
    IpProto.ICMP: "icmp",
    IpProto.TCP: "tcp",
    IpProto.UDP: "udp",
    IpProto.GRE: "gre",
    IpProto.ESP: "esp",
    IpProto.AH: "ah",
    IpProto.IPV6_ICMP: "icmp6",
    IpProto.IPCOMP: "ipcomp",
    135: "mh",
    4: "ipv4",
    41: "ipv6",
    255: "any",
}

_ICMP_LIKE = (IpProto.ICMP, IpProto.IPV6_ICMP, 135)


@functools.lru_cache(maxsize=1024)
def _upper(toks: tuple[str, ...]) -> tuple[int, tuple[int, int] | None]:
    first = toks[0]
    if first.isdigit():
        proto = _number(first, "upper-layer protocol", U8)
    else:
        found = UPPER_PROTOCOLS.get(first.lower())
        if found is None:
            raise _fail(f'unknown upper-layer protocol "{first}"', first)
        proto = found
    if len(toks) == 1:
        return proto, None
    return proto, _upper_ports(proto, toks[1])


def _upper_ports(proto: int, tok: str) -> tuple[int, int]:
    """The ``type,code`` (icmp, icmp6, mh) or key (gre) after the upper-layer
    protocol, as the (source, destination) port values (ipsec-tools fix_portstr)."""
    if proto in _ICMP_LIKE:
        parts = tok.split(",")
        if len(parts) <= 2 and all(p.isdigit() for p in parts):
            values = [int(p) for p in parts] + [0]
            if max(values) <= U8:
                return values[0], values[1]
        raise _fail(f'invalid upper-layer specification "{tok}": expected type or type,code (0 to 255)', tok)
    if proto == IpProto.GRE:
        octets = tok.split(".")
        if len(octets) == 4 and all(o.isdigit() and int(o) <= U8 for o in octets):
            a, b, c, d = (int(o) for o in octets)
            return (a << 8) + b, (c << 8) + d
        if tok.isdigit() and int(tok) <= U32:
            key = int(tok)
            return key >> 16, key & U16
        raise _fail(f'invalid gre key "{tok}": expected a number or a.b.c.d', tok)
    raise _fail(f'an upper-layer specification ("{tok}") is only valid for icmp, icmp6, mh and gre', tok)


# ------------------------------------------------------------------ SA options

_NUMBER_OPTIONS: dict[str, tuple[str, str, int]] = {
    "-u": ("reqid", "reqid", U32),
    "-r": ("replay", "replay window", U32),
    "-lh": ("lifetime_hard", "hard lifetime", U64),
    "-ls": ("lifetime_soft", "soft lifetime", U64),
    "-bh": ("bytes_hard", "hard byte lifetime", U64),
    "-bs": ("bytes_soft", "soft byte lifetime", U64),
    "-natt_mtu": ("natt_mtu", "NAT-T fragment size", U16),
}
_PAD = {"random-pad": SaFlag.X_EXT_PRAND, "zero-pad": SaFlag.X_EXT_PZERO, "seq-pad": 0}


def _natt_option(opt: tuple[str, ...]) -> NatT:
    # -natt oai [sport] oar [dport]
    return NatT(
        _host(opt[1]),
        _number(opt[3], "NAT-T source port", U16),
        _host(opt[5]),
        _number(opt[7], "NAT-T destination port", U16),
    )


def _hwif_option(opt: tuple[str, ...]) -> str:
    if len(opt[1]) >= IFNAMSIZ:
        raise _fail(f'interface name "{opt[1]}" is longer than {IFNAMSIZ - 1} characters', opt[1])
    return str(opt[1])


@functools.lru_cache(maxsize=1024)
def _options(opts: tuple[tuple[str, ...], ...], old: bool) -> SaOptions:
    """Fold the options as setkey does (the last -m, -u, ... wins; -f flags add up)."""
    fields: dict[str, Any] = {}
    pad = 0
    for opt in opts:
        word = opt[0]
        if word == "-f":
            if opt[1] == "nocyclic-seq":
                fields["cyclic_seq"] = False
            else:
                pad |= _PAD[opt[1]]
        elif word in _NUMBER_OPTIONS:
            name, what, limit = _NUMBER_OPTIONS[word]
            value = _number(opt[1], what, limit)
            if word == "-r" and old:
                raise _fail("replay prevention cannot be used with ah-old or esp-old", word)
            fields[name] = value
        elif word in _OPTION_READERS:
            name, read = _OPTION_READERS[word]
            fields[name] = read(opt)
        else:  # pragma: no cover - the grammar has no other option
            raise AssertionError(word)
    if pad:
        fields["pad"] = pad
    return SaOptions(**fields) if fields else DEFAULT_OPTIONS


def _context(toks: tuple[str, ...]) -> SecContext:
    # -ctx doi algorithm "label"
    return SecContext(
        _number(toks[1], "security context DOI", U8),
        _number(toks[2], "security context algorithm", U8),
        _quoted(toks[3]),
    )


#: The options that set one field from their words: field name, reader.
_OPTION_READERS: dict[str, tuple[str, Callable[[tuple[str, ...]], Any]]] = {
    "-m": ("mode", lambda opt: MODE_BY_WORD[opt[1]]),
    "-ctx": ("context", _context),
    "-natt": ("natt", _natt_option),
    "-esn": ("esn", lambda opt: True),
    "-hwif": ("hwif", _hwif_option),
}


# ------------------------------------------------------------------ algorithms

_KNOWN = {kind: frozenset(n for a in alg.algorithms(kind) for n in a.names) for kind in alg.Kind}


def _alg(kind: alg.Kind, flag: str, name: str, key: str | None) -> AlgSpec:
    if name not in _KNOWN[kind]:
        raise _fail(f'unknown {kind.value} algorithm "{name}" after {flag}', name)
    return AlgSpec(str(name), None if key is None else _key(str(key)))


@functools.lru_cache(maxsize=1024)
def _algorithms(toks: tuple[str, ...]) -> Algorithms:
    flag = toks[0]
    if flag == "-E":
        # -E name [key] [-A name [key]]
        enc_key = toks[2] if len(toks) > 2 and toks[2] != "-A" else None
        rest = toks[3:] if enc_key is not None else toks[2:]
        auth = None
        if rest:
            auth = _alg(alg.Kind.AUTH, rest[0], rest[1], rest[2] if len(rest) > 2 else None)
        return Algorithms(encrypt=_alg(alg.Kind.ENCRYPT, flag, toks[1], enc_key), auth=auth)
    if flag == "-A":
        return Algorithms(auth=_alg(alg.Kind.AUTH, flag, toks[1], toks[2] if len(toks) > 2 else None))
    return Algorithms(compress=_alg(alg.Kind.COMPRESS, flag, toks[1], None), rawcpi=len(toks) > 2)


# ------------------------------------------------------------------ the transformer

_SA_CLASSES: dict[str, type[SaStatement]] = {
    "add": Add,
    "update": Update,
    "getspi": GetSpi,
    "get": Get,
    "delete": Delete,
}
_SPD_CLASSES: dict[str, type[SpdStatement]] = {"spdadd": SpdAdd, "spdupdate": SpdUpdate, "spddelete": SpdDelete}


@functools.lru_cache(maxsize=64)
def _aiflags(toks: tuple[str, ...]) -> AddrFlags:
    family = 0
    numeric = False
    for tok in toks:
        for c in tok[1:]:
            if c == "n":
                numeric = True
            else:
                family = int(c)
    return AddrFlags(family, numeric)


@functools.lru_cache(maxsize=1024)
def _protocol(toks: tuple[str, ...]) -> tuple[Proto, Host | None]:
    if not toks:
        return Proto.UNSPEC, None
    return _PROTO_WORDS[toks[0]], (_host(toks[1]) if len(toks) > 1 else None)


# Hashable keys for the memoised helpers: lark's Tokens compare as strings but
# carry positions, so the fast driver's plain strings and lark's Tokens share
# the caches.  (A cached value never holds a position.)


@v_args(inline=True)
class SetkeyTransformer(Transformer[Any, Any]):
    """Callbacks of setkey.lark.  ``policy`` parses the text after -P; see
    :func:`setkey.parser.parse_policy`."""

    def __init__(self, policy: Callable[[str], Policy]) -> None:
        super().__init__(visit_tokens=False)
        self._policy = policy

    def start(self, *items: Any) -> list[Any]:
        # start: (start statement)?  -- the list is the parse's own, built in place
        if not items:
            return []
        commands: list[Any] = items[0]
        commands.append(items[1])
        return commands

    # -- grouping rules: no conversion here, so nothing can fail mid-parse

    def aiflags(self, *items: Any) -> tuple[Any, ...]:
        # a left-recursive list: (list item)?
        return (*items[0], items[1]) if items else ()

    sa_options = aiflags

    @group
    def sa_src(self, *toks: str) -> tuple[str, ...]:
        return toks

    sa_dst = sa_src
    spd_src = sa_src
    spd_dst = sa_src
    upper = sa_src
    context = sa_src
    protocol = sa_src
    protocol_udp = sa_src
    opt_mode = sa_src
    opt_number = sa_src
    opt_flag = sa_src
    opt_ctx = sa_src
    opt_natt = sa_src
    opt_esn = sa_src
    opt_hwif = sa_src
    algorithms_esp = sa_src
    algorithms_ah = sa_src
    algorithms_ipcomp = sa_src

    # -- statements

    def _sa(
        self,
        kw: str,
        flags: tuple[str, ...],
        src: tuple[str, ...],
        dst: tuple[str, ...],
        proto: tuple[str, ...],
        spi: str,
        options: tuple[tuple[str, ...], ...],
        algorithms: tuple[str, ...] | None,
    ) -> Any:
        try:
            # (in the order of the statement, which decides the error reported)
            p, natt_oa = _protocol(proto)
            cls = _SA_CLASSES[kw]
            how = _aiflags(flags) if flags else NO_FLAGS
            src_host, dst_host, spi_value = _sa_host(src), _sa_host(dst), _number(spi, "SPI", U32)
            opts = _options(options, p.old) if options else DEFAULT_OPTIONS
            line, column = kw.line, kw.column  # type: ignore[attr-defined]
            if algorithms is None:
                return cls(
                    flags=how,
                    src=src_host,
                    dst=dst_host,
                    proto=p,
                    natt_oa=natt_oa,
                    spi=spi_value,
                    options=opts,
                    line=line,
                    column=column,
                )
            return cls(  # type: ignore[call-arg]  # add or update
                flags=how,
                src=src_host,
                dst=dst_host,
                proto=p,
                natt_oa=natt_oa,
                spi=spi_value,
                options=opts,
                line=line,
                column=column,
                algorithms=_algorithms(algorithms),
            )
        except SetkeyError as exc:
            return _placed(exc, kw)

    def add(
        self, kw: str, flags: Any, src: Any, dst: Any, proto: Any, spi: str, options: Any, algorithms: Any, semi: str
    ) -> Any:
        return self._sa(kw, flags, src, dst, proto, spi, options, algorithms)

    update = add

    def get(self, kw: str, flags: Any, src: Any, dst: Any, proto: Any, spi: str, options: Any, semi: str) -> Any:
        return self._sa(kw, flags, src, dst, proto, spi, options, None)

    getspi = get
    delete = get

    def deleteall(self, kw: str, flags: Any, src: str, dst: str, proto: tuple[str, ...], semi: str) -> Any:
        try:
            p, natt_oa = _protocol(proto)
            return DeleteAll(
                flags=_aiflags(flags) if flags else NO_FLAGS,
                src=_host(src),
                dst=_host(dst),
                proto=p,
                natt_oa=natt_oa,
                line=kw.line,  # type: ignore[attr-defined]
                column=kw.column,  # type: ignore[attr-defined]
            )
        except SetkeyError as exc:
            return _placed(exc, kw)

    def flush(self, kw: str, *rest: str) -> Flush:
        return Flush(proto=_PROTO_WORDS[rest[0]] if len(rest) > 1 else Proto.UNSPEC, line=kw.line, column=kw.column)  # type: ignore[attr-defined]

    def dump(self, kw: str, *rest: str) -> Dump:
        return Dump(proto=_PROTO_WORDS[rest[0]] if len(rest) > 1 else Proto.UNSPEC, line=kw.line, column=kw.column)  # type: ignore[attr-defined]

    def spdadd(self, kw: str, flags: Any, src: Any, dst: Any, upper: Any, *rest: Any) -> Any:
        # rest: [context] -P policy ;
        try:
            proto, ports = _upper(upper)
            return _SPD_CLASSES[kw](
                flags=_aiflags(flags) if flags else NO_FLAGS,
                src=_spd_host(src),
                dst=_spd_host(dst),
                upper=proto,
                upper_ports=ports,
                context=_context(rest[0]) if len(rest) == 4 else None,
                policy=self._policy(rest[-2]),
                line=kw.line,  # type: ignore[attr-defined]
                column=kw.column,  # type: ignore[attr-defined]
            )
        except SetkeyError as exc:
            return _placed(exc, kw)

    spdupdate = spdadd
    spddelete = spdadd

    def spd_tagged(self, kw: str, tagged: str, tag: str, opt: str, policy: str, semi: str) -> Any:
        try:
            return SpdTagged(
                keyword=str(kw),
                tag=_quoted(tag),
                policy=self._policy(policy),
                line=kw.line,  # type: ignore[attr-defined]
                column=kw.column,  # type: ignore[attr-defined]
            )
        except SetkeyError as exc:
            return _placed(exc, kw)

    def spdflush(self, kw: str, semi: str) -> SpdFlush:
        return SpdFlush(line=kw.line, column=kw.column)  # type: ignore[attr-defined]

    def spddump(self, kw: str, semi: str) -> SpdDump:
        return SpdDump(line=kw.line, column=kw.column)  # type: ignore[attr-defined]

    def exit(self, kw: str, semi: str) -> Exit:
        return Exit(line=kw.line, column=kw.column)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ policies

#: setkey also takes "tcp" (FreeBSD's TCP-MD5) as a request protocol.
_REQUEST_PROTOS = {**REQUEST_PROTO_BY_WORD, "tcp": IpProto.TCP}
_BASES = {"low": PRIORITY_LOW, "def": PRIORITY_DEFAULT, "high": PRIORITY_HIGH}

#: ipsec-tools' limits on priority offsets (libipsec policy_parse.y).
PRIORITY_OFFSET_UP_MAX = 0x80000000  # "priority N": N <= 2^31
PRIORITY_OFFSET_DOWN_MAX = 0x7FFFFFFF  # "priority -N"
PRIORITY_BASE_UP_MAX = 0x40000000  # "priority base + N"
PRIORITY_BASE_DOWN_MAX = 0x3FFFFFFF  # "priority base - N"


def _offset(tok: str, limit: int, what: str) -> int:
    value = int(tok)
    if value > limit:
        raise _fail(f"priority offset {value} is out of range ({what} at most {limit})", tok)
    return value


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> IPv4Address | IPv6Address | None:
    return ip_from_text(text)


def _bad_address(tok: str, nth: int) -> SetkeyValueError:
    return _fail(f'invalid tunnel end point "{tok}": a numeric IPv4 or IPv6 address is needed', tok, nth)


@v_args(inline=True)
class PolicyTransformer(Transformer[Any, Any]):
    """Callbacks of policy.lark: the checks of libipsec's policy parser
    (rule_check and the grammar actions)."""

    def __init__(self) -> None:
        super().__init__(visit_tokens=False)

    def direction(self, tok: str) -> str:
        return tok

    action = direction

    def level(self, tok: str) -> tuple[Level, int]:
        if tok[:7] in ("unique:", "unique#"):
            reqid = int(tok[7:])
            if reqid > U32:
                raise _fail(f"reqid {reqid} is out of range (at most {U32})", tok)
            return Level.UNIQUE, reqid
        return LEVEL_BY_WORD[tok], 0

    def priority_up(self, kw: str, n: str) -> int:
        # "priority N" is N above the default: the value gets smaller.
        return (PRIORITY_DEFAULT - _offset(n, PRIORITY_OFFSET_UP_MAX, "priority N:")) & U32

    def priority_down(self, kw: str, minus: str, n: str) -> int:
        return PRIORITY_DEFAULT + _offset(n, PRIORITY_OFFSET_DOWN_MAX, "priority -N:")

    def priority_base(self, kw: str, base: str) -> int:
        return _BASES[base]

    def priority_base_up(self, kw: str, base: str, plus: str, n: str) -> int:
        return _BASES[base] - _offset(n, PRIORITY_BASE_UP_MAX, "priority base + N:")

    def priority_base_down(self, kw: str, base: str, minus: str, n: str) -> int:
        return _BASES[base] + _offset(n, PRIORITY_BASE_DOWN_MAX, "priority base - N:")

    @group
    def endpoints(self, *toks: str) -> tuple[str, ...]:
        return toks

    def requests(self, *items: Any) -> tuple[Any, ...]:
        return (*items[0], items[1]) if items else ()

    def request(self, proto: str, slash: str, mode: str, *rest: Any) -> tuple[Any, ...]:
        # proto / mode [/ [endpoints] [/ [level]]]: keep the words, policy() builds
        endpoints = None
        level: tuple[Level, int] = (Level.DEFAULT, 0)
        for item in rest:
            if isinstance(item, tuple):
                if isinstance(item[0], Level):
                    level = item
                else:
                    endpoints = item
        return proto, mode, endpoints, level

    def policy_bare(self, direction: str) -> Policy:
        return Policy(DIRECTION_BY_WORD[direction])

    def policy(self, direction: str, *rest: Any) -> Policy:
        d = DIRECTION_BY_WORD[direction]
        priority = rest[0] if len(rest) == 3 else None
        action = POLICY_BY_WORD[rest[-2]]
        raw = rest[-1]
        requests = tuple(_request(d, action, raw, i) for i in range(len(raw)))
        return Policy(d, action, priority, requests)


def _nth(raw: tuple[tuple[Any, ...], ...], index: int, word: str) -> int:
    """How often ``word`` occurs in the requests before request ``index`` (so
    that an error names the right one of several equal words in a policy)."""
    count = 0
    for proto, _mode, endpoints, _level in raw[:index]:
        count += (proto == word) + (sum(w == word for w in endpoints) if endpoints else 0)
    return count


def _request(direction: Direction, action: PolicyType, raw: tuple[tuple[Any, ...], ...], index: int) -> Request:
    """Request ``index`` of a policy, checked as libipsec does."""
    proto, mode_word, endpoints, (level, reqid) = raw[index]
    mode = Mode.TRANSPORT if mode_word == "transport" else Mode.TUNNEL
    ends = None
    anchor = ""
    if endpoints is not None:
        first = endpoints[0]
        if len(endpoints) == 3 and first in ("me", "any") and endpoints[2] in ("me", "any"):
            anchor = f"{first}-{endpoints[2]}"
            wanted = Direction.OUTBOUND if anchor == "me-any" else Direction.INBOUND
            if direction != wanted:
                raise _fail(
                    f'"{anchor}" is only valid in an "{"out" if anchor == "me-any" else "in"}" policy',
                    first,
                    _nth(raw, index, first),
                )
        else:
            if len(endpoints) == 3:  # a - b
                src_tok, dst_tok, sport, dport = endpoints[0], endpoints[2], 0, 0
            else:  # a [p] - b [p]
                src_tok, dst_tok = endpoints[0], endpoints[5]
                sport = _number(endpoints[2], "port", U16)
                dport = _number(endpoints[7], "port", U16)
            src = _ip(str(src_tok))
            if src is None:
                raise _bad_address(src_tok, _nth(raw, index, src_tok))
            dst = _ip(str(dst_tok))
            if dst is None:
                raise _bad_address(dst_tok, _nth(raw, index, dst_tok) + (src_tok == dst_tok))
            if action == PolicyType.IPSEC and src.version != dst.version:
                raise _fail("tunnel end points of different address families", src_tok, _nth(raw, index, src_tok))
            ends = Endpoints(src, dst, sport, dport)
    if action == PolicyType.IPSEC and ends is None and mode != Mode.TRANSPORT:
        raise _fail("tunnel mode needs the tunnel end points (src-dst)", proto, _nth(raw, index, proto))
    return Request(_REQUEST_PROTOS[proto], mode, level, reqid, ends, anchor)
