"""Resolved commands to the PF_KEY messages setkey sends (pure: no I/O).

Each dialect's messages are those of its reference setkey, extension by
extension and in the same order (real-clients.md §3 has the captures of a
Linux-built ipsec-tools setkey; FreeBSD's are read from sbin/setkey/parse.y):

========== ==================================================================
statement  extensions, in order
========== ==================================================================
add        KEY_ENCRYPT?, KEY_AUTH?, LIFETIME_HARD?, LIFETIME_SOFT?,
update     [linux: X_SEC_CTX?], [getspi: SPIRANGE if spi != 0], SA, X_SA2,
getspi     [freebsd: X_SA_REPLAY if -r > 255], NAT-T (below), ADDRESS_SRC,
           ADDRESS_DST, [esp-udp: X_NAT_T_SPORT, X_NAT_T_DPORT]
get/delete SA, X_SA2, [freebsd: X_SA_REPLAY], ADDRESS_SRC, ADDRESS_DST
deleteall  freebsd: DELETE with ADDRESS_SRC, ADDRESS_DST and no SA; linux:
           a DUMP of the satype first, then one DELETE per SPI whose
           addresses match byte for byte (:func:`deleteall_deletes`)
spd*       X_POLICY, ADDRESS_SRC, ADDRESS_DST (proto = upper layer, prefix),
           [linux: X_SEC_CTX?]; linux sends every "-P in" policy a second
           time with direction fwd (ipsec-tools' RFC mode, setkey -r)
others     the header alone (flush, dump, spdflush, spddump)
========== ==================================================================

* sadb_sa_flags start as SADB_X_EXT_CYCSEQ (0x40): -f nocyclic-seq clears it,
  -f random-pad / zero-pad, esp-old/ah-old (OLD), -R (RAWCPI), -esn (ESN) and
  des-deriv / des-32iv add their bits.
* One message per source and destination address of the same family (setkey
  sends every combination getaddrinfo gives).
* A key-less ``-E`` algorithm (ipsec-tools' ``null``, ``simple``) still sends
  an empty KEY_ENCRYPT on linux (parse.y sets the key to ""); FreeBSD sends
  none.  ``-A null`` sends no KEY_AUTH anywhere.
* NAT-T: ipsec-tools' ``esp-udp [oa]`` sends X_NAT_T_TYPE (ESPINUDP), the
  original address (proto 255) before the addresses and the ports (those of
  the SA hosts, 4500 when 0) after them; FreeBSD's ``-natt oai[sp] oar[dp]``
  sends TYPE, OAI, SPORT, OAR, DPORT (the addresses with proto 0) and
  X_NAT_T_FRAG for -natt_mtu, before the addresses.
* FreeBSD's ``-hwif`` on an SA is never sent: its setkey appends the
  extension after the message has gone.  X_POLICY priority: linux sends the
  written one, 0x80000000 by default and 0 for a bare ``-P dir``; freebsd 0.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from pfkeyd import algorithms as alg
from pfkeyd.wire.constants import ExtType, MsgType, NatTType, PolicyType, SaFlag, SaType
from pfkeyd.wire.dialect import Dialect
from pfkeyd.wire.ext import (
    Address,
    Extension,
    IpsecRequest,
    Key,
    Lifetime,
    NatTFrag,
    NatTPort,
    Policy,
    Sa,
    Sa2,
    SaReplay,
    SecCtx,
    SpiRange,
)
from pfkeyd.wire.ext import NatTType as NatTTypeExt
from pfkeyd.wire.message import Message
from pfkeyd.wire.sockaddr import SockAddr, encode_sockaddr
from setkey import commands
from setkey.commands import (
    PRIORITY_DEFAULT,
    Add,
    Algorithms,
    Delete,
    DeleteAll,
    Dump,
    Flush,
    Get,
    GetSpi,
    Proto,
    SaOptions,
    SaStatement,
    SecContext,
    SpdAdd,
    SpdDelete,
    SpdDump,
    SpdFlush,
    SpdStatement,
    SpdUpdate,
    Update,
)
from setkey.resolve import Resolved

__all__ = ["build", "needs_dump", "deleteall_deletes", "sa_flags", "NATT_PORT"]

#: ipsec-tools' DEFAULT_NATT_PORT: an esp-udp host without a port.
NATT_PORT = 4500
_U8 = 0xFF

_SA_TYPES: dict[type, MsgType] = {
    Add: MsgType.ADD,
    Update: MsgType.UPDATE,
    GetSpi: MsgType.GETSPI,
    Get: MsgType.GET,
    Delete: MsgType.DELETE,
}
_SPD_TYPES: dict[type, MsgType] = {
    SpdAdd: MsgType.X_SPDADD,
    SpdUpdate: MsgType.X_SPDUPDATE,
    SpdDelete: MsgType.X_SPDDELETE,
}


def sa_flags(proto: Proto, options: SaOptions, algorithms: Algorithms | None, dialect: Dialect | str) -> int:
    """sadb_sa_flags of an SA statement (parse_init's CYCSEQ and what changes it)."""
    flags = SaFlag.X_EXT_CYCSEQ if options.cyclic_seq else 0
    flags |= options.pad
    if proto.old:
        flags |= SaFlag.PFS  # SADB_X_EXT_OLD
    if options.esn:
        flags |= SaFlag.X_ESN
    if algorithms is not None:
        if algorithms.rawcpi:
            flags |= SaFlag.X_EXT_RAWCPI
        if algorithms.encrypt is not None:
            found = alg.by_spelling(alg.Kind.ENCRYPT, algorithms.encrypt.name, dialect)
            if found is not None:
                flags |= found[1].flags
    return int(flags)


def _alg_id(kind: alg.Kind, name: str, dialect: Dialect) -> int:
    found = alg.by_spelling(kind, name, dialect) or None
    row = found[0] if found is not None else alg.by_name(kind, name)
    if row is None:  # pragma: no cover - setkey.check refuses unknown names
        msg = f"unknown {kind.value} algorithm {name!r}"
        raise ValueError(msg)
    return int(row.id)


def _plen(sa: SockAddr) -> int:
    return sa.max_prefix


def _pairs(src: Sequence[SockAddr], dst: Sequence[SockAddr]) -> list[tuple[SockAddr, SockAddr]]:
    """Every source with every destination of the same family, sources first."""
    if len(src) == 1 and len(dst) == 1:  # the usual case, without the loops
        s, d = src[0], dst[0]
        return [(s, d)] if s.version == d.version else []
    return [(s, d) for s in src for d in dst if s.version == d.version]


def _sec_ctx(context: SecContext | None, dialect: Dialect) -> list[Extension]:
    # ipsec-tools sends the label with its NUL, and only for a non-zero DOI.
    if context is None or not context.doi or dialect is not Dialect.LINUX:
        return []
    return [SecCtx(context.alg, context.doi, context.label.encode("utf-8", "surrogateescape") + b"\0")]


def _replay(replay: int, dialect: Dialect) -> tuple[int, list[Extension]]:
    """sadb_sa_replay and, on FreeBSD, SADB_X_EXT_SA_REPLAY for a window over 255 bytes."""
    if dialect is Dialect.FREEBSD and replay > _U8:
        return _U8, [SaReplay((replay << 3) & 0xFFFFFFFF)]
    return replay & _U8, []


#: An SA statement's extensions but SA itself (before it, after it) and the
#: fields of SA but the SPI.
_SaParts = tuple[tuple[Extension, ...], tuple[int, int, int, int, int], tuple[Extension, ...]]


@functools.lru_cache(maxsize=1024)
def _sa_parts(proto: Proto, opts: SaOptions, algorithms: Algorithms | None, dialect: Dialect) -> _SaParts:
    """What the messages of SA statements with the same protocol, options and
    algorithms share, whatever their SPIs and addresses: the extensions before SA
    (keys, lifetimes, security context), the fields of sadb_sa after the SPI, and
    the extensions after SA (X_SA2 and FreeBSD's X_SA_REPLAY).

    The transformer shares one options value and one algorithms value between the
    statements that write the same ones, and the extensions are frozen values, so
    a script's thousands of SAs build these once.  ``algorithms`` is None for
    getspi, get and delete, which send no keys.
    """
    before = [*_keys(proto, algorithms, dialect), *_lifetimes(opts), *_sec_ctx(opts.context, dialect)]
    replay, replay_ext = _replay(opts.replay, dialect)
    auth = encrypt = 0
    if algorithms is not None:
        if algorithms.auth is not None:
            auth = _alg_id(alg.Kind.AUTH, algorithms.auth.name, dialect)
        if algorithms.encrypt is not None:
            encrypt = _alg_id(alg.Kind.ENCRYPT, algorithms.encrypt.name, dialect)
        elif algorithms.compress is not None:
            encrypt = _alg_id(alg.Kind.COMPRESS, algorithms.compress.name, dialect)
    flags = sa_flags(proto, opts, algorithms, dialect)
    return tuple(before), (replay, 0, auth, encrypt, flags), (Sa2(opts.mode, 0, opts.reqid), *replay_ext)


def _lifetimes(opts: SaOptions) -> list[Extension]:
    out: list[Extension] = []
    if opts.lifetime_hard or opts.bytes_hard:
        out.append(Lifetime(ExtType.LIFETIME_HARD, 0, opts.bytes_hard, opts.lifetime_hard, 0))
    if opts.lifetime_soft or opts.bytes_soft:
        out.append(Lifetime(ExtType.LIFETIME_SOFT, 0, opts.bytes_soft, opts.lifetime_soft, 0))
    return out


def _keys(proto: Proto, algorithms: Algorithms | None, dialect: Dialect) -> list[Extension]:
    out: list[Extension] = []
    if algorithms is None:
        return out
    enc = algorithms.encrypt
    if enc is not None and proto.satype != SaType.X_IPCOMP:
        if enc.key is not None:
            out.append(Key(ExtType.KEY_ENCRYPT, enc.key))
        elif dialect is Dialect.LINUX:
            out.append(Key(ExtType.KEY_ENCRYPT, b""))
    if algorithms.auth is not None and algorithms.auth.key is not None:
        out.append(Key(ExtType.KEY_AUTH, algorithms.auth.key))
    return out


def _addresses(
    s: SockAddr, d: SockAddr, proto: int = 255, splen: int | None = None, dplen: int | None = None
) -> list[Extension]:
    return [
        Address(ExtType.ADDRESS_SRC, s, _plen(s) if splen is None else splen, proto),
        Address(ExtType.ADDRESS_DST, d, _plen(d) if dplen is None else dplen, proto),
    ]


def _sa_messages(item: Resolved, dialect: Dialect, pid: int) -> list[Message]:
    cmd = item.command
    assert isinstance(cmd, SaStatement)
    mtype = _SA_TYPES[type(cmd)]
    satype = cmd.proto.satype
    opts = cmd.options
    algorithms = cmd.algorithms if isinstance(cmd, Add | Update) else None
    before, sa_fields, after = _sa_parts(cmd.proto, opts, algorithms, dialect)
    sa = Sa(cmd.spi, *sa_fields)
    if mtype in (MsgType.GET, MsgType.DELETE):
        # setkeymsg_addr: SA and X_SA2 (no algorithms), then the addresses
        return [
            Message(mtype, satype, 0, pid, exts=(sa, *after, *_addresses(s, d))) for s, d in _pairs(item.src, item.dst)
        ]
    # setkeymsg_add
    head = list(before)
    if mtype == MsgType.GETSPI and cmd.spi:
        head.append(SpiRange(cmd.spi, cmd.spi))
    head.append(sa)
    head += after
    udp = False
    if opts.natt is not None and item.natt_oa is not None and item.natt_oar is not None:
        # FreeBSD -natt: the original addresses with proto 0 and port 0
        oai = SockAddr(item.natt_oa.ip, 0, item.natt_oa.flowinfo, item.natt_oa.scope_id)
        oar = SockAddr(item.natt_oar.ip, 0, item.natt_oar.flowinfo, item.natt_oar.scope_id)
        head += [
            NatTTypeExt(NatTType.ESPINUDP),
            Address(ExtType.X_NAT_T_OAI, oai, _plen(oai), 0),
            NatTPort(ExtType.X_NAT_T_SPORT, opts.natt.sport),
            Address(ExtType.X_NAT_T_OAR, oar, _plen(oar), 0),
            NatTPort(ExtType.X_NAT_T_DPORT, opts.natt.dport),
        ]
        if opts.natt_mtu is not None:
            head.append(NatTFrag(opts.natt_mtu))
    elif cmd.proto is Proto.ESP_UDP:
        # ipsec-tools esp-udp [oa]
        udp = True
        head.append(NatTTypeExt(NatTType.ESPINUDP))
        if item.natt_oa is not None:
            head.append(Address(ExtType.X_NAT_T_OA, item.natt_oa, _plen(item.natt_oa), 255))
    out = []
    for s, d in _pairs(item.src, item.dst):
        exts = [*head, *_addresses(s, d)]
        if udp:
            exts += [
                NatTPort(ExtType.X_NAT_T_SPORT, s.port or NATT_PORT),
                NatTPort(ExtType.X_NAT_T_DPORT, d.port or NATT_PORT),
            ]
        out.append(Message(mtype, satype, 0, pid, exts=tuple(exts)))
    return out


#: The request tunnels of a resolved SPD statement (Resolved.tunnels).
_Tunnels = tuple[tuple[SockAddr, SockAddr] | None, ...]


@functools.lru_cache(maxsize=1024)
def _policies(p: commands.Policy, tunnels: _Tunnels, dialect: Dialect, fwd_copies: bool) -> tuple[Policy, ...]:
    """The X_POLICY of an SPD statement, and its fwd copy when one is sent.

    The parser shares one value between the statements that write the same
    policy text, and the extensions are frozen values, so a script builds each
    policy once.
    """
    if dialect is Dialect.LINUX:
        priority = p.priority if p.priority is not None else (PRIORITY_DEFAULT if p.action is not None else 0)
    else:
        priority = 0
    requests = []
    for request, tunnel in zip(p.requests, tunnels, strict=True):
        src, dst = tunnel if tunnel is not None else (None, None)
        requests.append(IpsecRequest(request.proto, request.mode, request.level, request.reqid, src, dst))
    ptype = p.action if p.action is not None else PolicyType.DISCARD
    policy = Policy(ptype, p.direction, 0, priority, 0, tuple(requests))
    if not (dialect is Dialect.LINUX and fwd_copies and policy.dir == 1):  # IPSEC_DIR_INBOUND
        return (policy,)
    # ipsec-tools' RFC mode: the same policy for forwarded traffic; a unique
    # first request becomes require with reqid 0 (only the first, as in
    # setkeymsg_spdaddr).
    if requests and requests[0].level == 3:  # IPSEC_LEVEL_UNIQUE
        first = requests[0]
        requests[0] = IpsecRequest(first.proto, first.mode, 2, 0, first.src, first.dst)
    return policy, Policy(policy.type, 3, policy.id, policy.priority, policy.scope, tuple(requests))


def _spd_messages(item: Resolved, dialect: Dialect, pid: int, fwd_copies: bool) -> list[Message]:
    cmd = item.command
    assert isinstance(cmd, SpdStatement)
    mtype = _SPD_TYPES[type(cmd)]
    (s,), (d,) = item.src, item.dst
    tail = _sec_ctx(cmd.context, dialect)
    addresses = _addresses(s, d, cmd.upper, cmd.src.prefix, cmd.dst.prefix)
    return [
        Message(mtype, 0, 0, pid, exts=(policy, *addresses, *tail))
        for policy in _policies(cmd.policy, item.tunnels, dialect, fwd_copies)
    ]


def needs_dump(cmd: object, dialect: Dialect | str) -> bool:
    """True for a deleteall on linux: the CLI sends :func:`build`'s DUMP, reads
    the dump and sends :func:`deleteall_deletes` of it."""
    return isinstance(cmd, DeleteAll) and Dialect(dialect) is Dialect.LINUX


def build(item: Resolved, dialect: Dialect | str, pid: int = 0, *, fwd_copies: bool = True) -> list[Message]:
    """The messages setkey sends for one resolved statement, in order (seq 0).

    ``fwd_copies`` is ipsec-tools' RFC mode (``setkey -r``, the default on
    Linux); False is its kernel mode (``-k``).  A linux deleteall yields the
    DUMP that starts it (see :func:`needs_dump`).  exit and the statements that
    :func:`setkey.check.check` refuses yield nothing.
    """
    d = Dialect(dialect)
    cmd = item.command
    if isinstance(cmd, SaStatement):
        return _sa_messages(item, d, pid)
    if isinstance(cmd, SpdStatement):
        return _spd_messages(item, d, pid, fwd_copies)
    if isinstance(cmd, DeleteAll):
        satype = cmd.proto.satype
        if d is Dialect.LINUX:
            return [Message(MsgType.DUMP, satype, 0, pid)]
        return [
            Message(MsgType.DELETE, satype, 0, pid, exts=tuple(_addresses(s, t))) for s, t in _pairs(item.src, item.dst)
        ]
    if isinstance(cmd, Flush):
        return [Message(MsgType.FLUSH, cmd.proto.satype, 0, pid)]
    if isinstance(cmd, Dump):
        return [Message(MsgType.DUMP, cmd.proto.satype, 0, pid)]
    if isinstance(cmd, SpdFlush):
        return [Message(MsgType.X_SPDFLUSH, 0, 0, pid)]
    if isinstance(cmd, SpdDump):
        return [Message(MsgType.X_SPDDUMP, 0, 0, pid)]
    return []


def deleteall_deletes(item: Resolved, dump: Iterable[Message], dialect: Dialect | str, pid: int = 0) -> list[Message]:
    """ipsec-tools' deleteall on Linux: one DELETE per SA of the dump whose source
    and destination sockaddrs equal, byte for byte, one of the statement's
    (sendkeymsg_spigrep), for every source and destination pair, in dump order."""
    d = Dialect(dialect)
    cmd = item.command
    assert isinstance(cmd, DeleteAll)
    spec = d.spec
    srcs = {encode_sockaddr(s, spec) for s in item.src}
    dsts = {encode_sockaddr(t, spec) for t in item.dst}
    flags = sa_flags(cmd.proto, SaOptions(), None, d)
    out = []
    for entry in dump:
        src, dst, sa = entry.src, entry.dst, entry.sa
        if src is None or dst is None or sa is None or entry.errno:
            continue
        if encode_sockaddr(src.addr, spec) in srcs and encode_sockaddr(dst.addr, spec) in dsts:
            head = (Sa(sa.spi, 0, 0, 0, 0, flags), Sa2(0, 0, 0))
            out += [
                Message(MsgType.DELETE, cmd.proto.satype, 0, pid, exts=(*head, *_addresses(s, t)))
                for s, t in _pairs(item.src, item.dst)
            ]
    return out
