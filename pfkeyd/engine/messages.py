"""Building the messages the engine sends, and reading the fields of requests.

Pure functions of records and messages: an SA or a policy as the message that
reports it (GET, DUMP entries, EXPIRE, SPDEXPIRE), a request's addresses, SA
index, lifetimes and NAT-T values, each checked as key.c checks them.  Nothing
here holds state but two caches of encoded bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from pfkeyd.errors import (
    InvalidArgument,
)
from pfkeyd.sad import (
    NatT,
    SaIndex,
    SecAssoc,
)
from pfkeyd.spd import SecPolicy
from pfkeyd.wire import (
    Address,
    Dialect,
    Extension,
    ExtType,
    IpProto,
    Key,
    Lifetime,
    Message,
    Mode,
    MsgType,
    NatTPort,
    NatTTypeExt,
    Policy,
    Sa,
    Sa2,
    SaReplay,
    SaType,
    SockAddr,
    encode,
)
from pfkeyd.wire.constants import KEY_FLAGS_MAX, SATYPE_PROTO
from pfkeyd.wire.dialect import DialectSpec

#: Extensions a FreeBSD ADD/UPDATE reply copies from the request, in order (key_getmsgbuf_x1).
#: Extensions a FreeBSD ADD/UPDATE reply copies from the request, in order (key_getmsgbuf_x1).
X1_EXTS = tuple(
    int(t)
    for t in (
        ExtType.SA,
        ExtType.X_SA2,
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
        ExtType.LIFETIME_HARD,
        ExtType.LIFETIME_SOFT,
        ExtType.IDENTITY_SRC,
        ExtType.IDENTITY_DST,
        ExtType.X_NAT_T_TYPE,
        ExtType.X_NAT_T_SPORT,
        ExtType.X_NAT_T_DPORT,
        ExtType.X_NAT_T_OAI,
        ExtType.X_NAT_T_OAR,
        ExtType.X_NEW_ADDRESS_SRC,
        ExtType.X_NEW_ADDRESS_DST,
        ExtType.X_SEC_CTX,
    )
)

#: Extensions that exist in only one dialect: left out of messages built for the other.
DIALECT_ONLY = {
    Dialect.LINUX: frozenset(
        {
            ExtType.X_NAT_T_OAR,
            ExtType.X_NAT_T_FRAG,
            ExtType.X_SA_REPLAY,
            ExtType.X_NEW_ADDRESS_SRC,
            ExtType.X_NEW_ADDRESS_DST,
        }
    ),
    Dialect.FREEBSD: frozenset({ExtType.X_SEC_CTX, ExtType.X_KMADDRESS, ExtType.X_FILTER}),
}

_REFCNT = 1  # what FreeBSD writes in sadb_msg_reserved of the SA and SP messages it builds


def _for_dialect(exts: Iterable[Extension], dialect: Dialect) -> tuple[Extension, ...]:
    drop = DIALECT_ONLY[dialect]
    return tuple(e for e in exts if e.exttype not in drop)


def in_dialect(msg: Message, dialect: Dialect) -> Message:
    """``msg`` without the extensions ``dialect`` has no number for (a FreeBSD
    requester's NAT_T_OAR or SA_REPLAY broadcast to a linux socket, and the like)."""
    drop = DIALECT_ONLY[dialect]
    if not any(e.exttype in drop for e in msg.exts):
        return msg
    return msg.replace(exts=_for_dialect(msg.exts, dialect))


# ---------------------------------------------------------------------------- SA messages


def host_ext(exttype: ExtType, sa: SockAddr) -> Address:
    return Address(exttype, sa, sa.max_prefix, IpProto.ANY)


def _current(sa: SecAssoc) -> Lifetime:
    return Lifetime(ExtType.LIFETIME_CURRENT, sa.packets, sa.bytes, sa.created_wall, sa.first_used_wall)


def sa_message(sa: SecAssoc, msgtype: int, seq: int, pid: int, dialect: Dialect, *, keys: bool = True) -> Message:
    """The full SA message of GET and DUMP (reference §8.2), in this order: SA, SA2,
    (SA_REPLAY), (HARD), (SOFT), CURRENT, SRC, DST, (keys), (NAT-T)."""
    idx = sa.index
    replay = sa.replay
    exts: list[Extension] = [
        Sa(sa.spi, min(replay, 255), sa.state, sa.auth, sa.encrypt, sa.flags & KEY_FLAGS_MAX),
        Sa2(idx.mode, sa.replay_seq & 0xFFFFFFFF, idx.reqid),
    ]
    if sa.replay_window > 255 * 8 and dialect is Dialect.FREEBSD:
        exts.append(SaReplay(sa.replay_window))
    if sa.hard is not None:
        exts.append(sa.hard)
    if sa.soft is not None:
        exts.append(sa.soft)
    exts += [_current(sa), host_ext(ExtType.ADDRESS_SRC, idx.src), host_ext(ExtType.ADDRESS_DST, idx.dst)]
    if keys:
        if sa.key_auth is not None:
            exts.append(sa.key_auth)
        if sa.key_encrypt is not None:
            exts.append(sa.key_encrypt)
    natt = sa.natt
    if natt is not None:
        exts += [
            NatTTypeExt(natt.type),
            NatTPort(ExtType.X_NAT_T_SPORT, natt.sport),
            NatTPort(ExtType.X_NAT_T_DPORT, natt.dport),
        ]
        if natt.oai is not None:
            exts.append(host_ext(ExtType.X_NAT_T_OAI, natt.oai))
        if natt.oar is not None and dialect is Dialect.FREEBSD:
            exts.append(host_ext(ExtType.X_NAT_T_OAR, natt.oar))
    return Message(msgtype, sa.satype, seq, pid, 0, _REFCNT, tuple(exts))


def render_sa(sa: SecAssoc, dialect: Dialect, seq: int, pid: int) -> bytes:
    """One SADB_DUMP entry.  A dump of a million SAs renders a million of these, so
    the common shape (no NAT-T, no SA_REPLAY, algorithm ids the dialect knows) is
    packed directly; it gives exactly the bytes of the generic path, which every
    other SA takes (a test compares the two)."""
    fast = render_sa_fast(sa, dialect, seq, pid)
    if fast is not None:
        return fast
    return encode(sa_message(sa, MsgType.DUMP, seq, pid, dialect), dialect)


_SA_EXT = struct.Struct("=HH4sBBBBI")
_SA2_EXT = struct.Struct("=HHBBHII")
_CURRENT_EXT = struct.Struct("=HHIQQQ")
_KEY_HEAD = struct.Struct("=HHHH")
_MSG_HEAD = struct.Struct("=BBBBHHII")
_FAST_SATYPES = frozenset({SaType.ESP, SaType.AH})
# The members render_sa_fast reads per entry, bound once: an Enum member read
# through its class costs about ten times a global (bench/README.md).
_X_SA, _X_SA2, _X_CURRENT = ExtType.SA, ExtType.X_SA2, ExtType.LIFETIME_CURRENT
_X_SRC, _X_DST, _X_KEY_AUTH, _X_KEY_ENCRYPT = (
    ExtType.ADDRESS_SRC,
    ExtType.ADDRESS_DST,
    ExtType.KEY_AUTH,
    ExtType.KEY_ENCRYPT,
)
_DUMP = MsgType.DUMP
#: (sockaddr, exttype, sockaddr layout) -> the encoded address extension.
_HOST_BYTES: dict[tuple[SockAddr, int, bool], bytes] = {}


def _host_bytes(addr: SockAddr, exttype: ExtType, spec: DialectSpec) -> bytes:
    key = (addr, exttype, spec.sockaddr_has_len)
    done = _HOST_BYTES.get(key)
    if done is None:
        if len(_HOST_BYTES) >= 8192:
            _HOST_BYTES.clear()
        done = _HOST_BYTES[key] = host_ext(exttype, addr).encode(spec, 0)
    return done


def _key_bytes(key: Key, exttype: int) -> bytes | None:
    data = key.data
    if (key.bits + 7) // 8 != len(data):
        return None
    total = (8 + len(data) + 7) & ~7
    return _KEY_HEAD.pack(total // 8, exttype, key.bits, 0) + data + bytes(total - 8 - len(data))


def render_sa_fast(sa: SecAssoc, dialect: Dialect, seq: int, pid: int) -> bytes | None:
    if sa.natt is not None or sa.replay_window > 255 * 8 or sa.satype not in _FAST_SATYPES:
        return None
    spec = dialect.spec
    auth = spec.auth.to_wire.get(sa.auth)
    enc = spec.enc.to_wire.get(sa.encrypt)
    idx = sa.index
    mode = spec.mode.to_wire.get(idx.mode)
    if auth is None or enc is None or mode is None or sa.spi > 0xFFFFFFFF:
        return None
    parts = [
        _SA_EXT.pack(
            2, _X_SA, sa.spi.to_bytes(4, "big"), min(sa.replay, 255), sa.state, auth, enc, sa.flags & KEY_FLAGS_MAX
        ),
        _SA2_EXT.pack(2, _X_SA2, mode, 0, 0, sa.replay_seq & 0xFFFFFFFF, idx.reqid),
    ]
    if sa.hard is not None:
        parts.append(sa.hard.encode(spec, sa.satype))
    if sa.soft is not None:
        parts.append(sa.soft.encode(spec, sa.satype))
    parts += [
        _CURRENT_EXT.pack(4, _X_CURRENT, sa.packets, sa.bytes, sa.created_wall, sa.first_used_wall),
        _host_bytes(idx.src, _X_SRC, spec),
        _host_bytes(idx.dst, _X_DST, spec),
    ]
    for key, exttype in ((sa.key_auth, _X_KEY_AUTH), (sa.key_encrypt, _X_KEY_ENCRYPT)):
        if key is not None:
            packed = _key_bytes(key, exttype)
            if packed is None:
                return None
            parts.append(packed)
    body = b"".join(parts)
    return _MSG_HEAD.pack(2, _DUMP, 0, sa.satype, (16 + len(body)) // 8, _REFCNT, seq, pid) + body


def expire_message(sa: SecAssoc, which: Lifetime) -> Message:
    """SADB_EXPIRE (reference §7.2): SA, SA2, (SA_REPLAY), CURRENT, HARD or SOFT, SRC,
    DST; seq = the SA's stored seq, pid 0; no keys, no NAT-T."""
    idx = sa.index
    exts: list[Extension] = [
        Sa(sa.spi, min(sa.replay, 255), sa.state, sa.auth, sa.encrypt, sa.flags & KEY_FLAGS_MAX),
        Sa2(idx.mode, sa.replay_seq & 0xFFFFFFFF, idx.reqid),
    ]
    if sa.replay_window > 255 * 8:
        exts.append(SaReplay(sa.replay_window))
    exts += [_current(sa), which, host_ext(ExtType.ADDRESS_SRC, idx.src), host_ext(ExtType.ADDRESS_DST, idx.dst)]
    return Message(MsgType.EXPIRE, sa.satype, sa.seq, 0, 0, _REFCNT, tuple(exts))


# ------------------------------------------------------------------------------- helpers


def proto_of(satype: int) -> int:
    proto = SATYPE_PROTO.get(satype)  # type: ignore[call-overload]
    if proto is None:
        msg = f"satype {satype} does not name an SA protocol"
        raise InvalidArgument(msg)
    return int(proto)


def addresses(msg: Message) -> tuple[Address, Address]:
    src, dst = msg.src, msg.dst
    if src is None or dst is None:
        msg_ = "ADDRESS_SRC and ADDRESS_DST are required"
        raise InvalidArgument(msg_)
    return src, dst


def inet(a: Address, what: str) -> SockAddr:
    sa = a.addr
    if not isinstance(sa, SockAddr):
        msg = f"{what}: address family {sa.family} is not supported"
        raise InvalidArgument(msg)
    return sa.without_port()


def sa_index(msg: Message, proto: int) -> SaIndex:
    src, dst = addresses(msg)
    s, d = inet(src, "source"), inet(dst, "destination")
    if s.version != d.version:
        msg_ = "source and destination families differ"
        raise InvalidArgument(msg_)
    sa2 = msg.sa2
    mode, reqid = (Mode.ANY, 0) if sa2 is None else (sa2.mode, sa2.reqid)
    return SaIndex(proto, mode, reqid, s, d)


#: Whether a dialect's kernel wants an ADD's or UPDATE's LIFETIME_HARD and
#: LIFETIME_SOFT together or not at all: FreeBSD's key_add and key_update refuse
#: one alone (EINVAL); Linux's pfkey_msg2xfrm_state takes either alone and leaves
#: the other limit unset, and scripts written for Linux rely on it.
_LIFETIMES_PAIRED = {Dialect.FREEBSD: True, Dialect.LINUX: False}


def lifetimes(msg: Message, dialect: Dialect) -> tuple[Lifetime | None, Lifetime | None]:
    hard, soft = msg.lifetime_hard, msg.lifetime_soft
    if (hard is None) != (soft is None) and _LIFETIMES_PAIRED[dialect]:
        msg_ = "LIFETIME_HARD and LIFETIME_SOFT must come together"
        raise InvalidArgument(msg_)
    return hard, soft


def same_head(a: SaIndex, b: SaIndex) -> bool:
    """key_cmpsaidx(CMP_HEAD): protocol and addresses."""
    return a.proto == b.proto and a.src == b.src and a.dst == b.dst


# -------------------------------------------------------------------------------- engine


def x1_reply(msg: Message) -> Message:
    """key_getmsgbuf_x1: the request header and these of its extensions, in this order."""
    index = msg._by_type()
    return Message(msg.type, msg.satype, msg.seq, msg.pid, 0, 0, tuple([index[t] for t in X1_EXTS if t in index]))


def index_matches(sah: SaIndex, req: SaIndex) -> bool:
    """key_cmpsaidx(CMP_MODE_REQID): protocol and addresses; the mode if the SA
    head's is not ANY; the reqid if the request's is not 0."""
    if not same_head(sah, req):
        return False
    if sah.mode not in (Mode.ANY, req.mode):
        return False
    return not (req.reqid and sah.reqid != req.reqid)


def identities(msg: Message) -> None:
    """Identities must come in pairs of one type; they are then discarded (§4.6)."""
    src, dst = msg.get(ExtType.IDENTITY_SRC), msg.get(ExtType.IDENTITY_DST)
    if (src is None) != (dst is None):
        raise InvalidArgument("IDENTITY_SRC and IDENTITY_DST must come together")
    if src is not None and dst is not None and getattr(src, "idtype", None) != getattr(dst, "idtype", None):
        raise InvalidArgument("identities of different types")


def natt_of(msg: Message, proto: int) -> NatT | None:
    """NAT-T applies to ESP SAs with all of TYPE, SPORT and DPORT (§4.15)."""
    t, sport, dport = msg.nat_t_type, msg.nat_t_sport, msg.nat_t_dport
    if proto != IpProto.ESP or t is None or sport is None or dport is None:
        return None
    if t.type != 2:
        raise InvalidArgument(f"NAT-T type {t.type} is not UDP_ENCAP_ESPINUDP")
    if not sport.port or not dport.port:
        raise InvalidArgument("NAT-T ports must not be 0")
    src, dst = addresses(msg)
    oa: list[SockAddr | None] = []
    for exttype, own in ((ExtType.X_NAT_T_OAI, src), (ExtType.X_NAT_T_OAR, dst)):
        a = msg.address(exttype)
        if a is None:
            oa.append(None)
            continue
        addr = inet(a, "NAT-T original address")
        if addr.version != 4:
            raise InvalidArgument("NAT-T original addresses are IPv4 only")
        oa.append(None if addr == inet(own, "address") else addr)
    return NatT(t.type, sport.port, dport.port, oa[0], oa[1])


def with_port(sa: SockAddr, port: int) -> SockAddr:
    return SockAddr(sa.ip, port, sa.flowinfo, sa.scope_id)


# --------------------------------------------------------------------------- SP messages


def _selector_exts(sp: SecPolicy) -> tuple[Address, Address]:
    sel = sp.selector
    return (
        Address(ExtType.ADDRESS_SRC, sel.src, sel.src_len, sel.proto),
        Address(ExtType.ADDRESS_DST, sel.dst, sel.dst_len, sel.proto),
    )


def _policy_ext(sp: SecPolicy) -> Policy:
    return Policy(sp.type, sp.dir, sp.id, sp.priority, sp.scope, sp.requests)


def _sp_lifetimes(sp: SecPolicy, dialect: Dialect = Dialect.FREEBSD) -> tuple[Lifetime, Lifetime]:
    # key_spdadd starts lastused at the creation time, so an unused policy reports
    # it; Linux's xfrm policy has no use time until a packet matches.
    never = sp.created_wall if dialect is Dialect.FREEBSD else 0
    last_used = sp.last_used_wall if sp.last_used is not None else never
    return (
        Lifetime(ExtType.LIFETIME_CURRENT, 0, 0, sp.created_wall, last_used),
        Lifetime(ExtType.LIFETIME_HARD, 0, 0, sp.lifetime, sp.validtime),
    )


def sp_message(sp: SecPolicy, msgtype: int, seq: int, pid: int, dialect: Dialect) -> Message:
    """The full policy message of SPDGET and SPDDUMP (reference §8.3).

    FreeBSD: SRC, DST, X_POLICY, then CURRENT and HARD only for a policy with a
    lifetime.  Linux always sends its lifetimes, before X_POLICY.  The scope byte
    exists only in FreeBSD's layout.
    """
    src, dst = _selector_exts(sp)
    current, hard = _sp_lifetimes(sp, dialect)
    if dialect is Dialect.LINUX:
        soft = Lifetime(ExtType.LIFETIME_SOFT)
        pol = Policy(sp.type, sp.dir, sp.id, sp.priority, 0, sp.requests)
        exts: tuple[Extension, ...] = (src, dst, hard, soft, current, pol)
    else:
        exts = (src, dst, _policy_ext(sp))
        if sp.lifetime:  # key_setdumpsp: a validtime alone is not shown
            exts += (current, hard)
    return Message(msgtype, SaType.UNSPEC, seq, pid, 0, _REFCNT, exts)


def render_sp(sp: SecPolicy, dialect: Dialect, seq: int, pid: int) -> bytes:
    return encode(sp_message(sp, MsgType.X_SPDDUMP, seq, pid, dialect), dialect)


def spdexpire_message(sp: SecPolicy) -> Callable[[Dialect], Message]:
    """SADB_X_SPDEXPIRE (reference §6.6): CURRENT, HARD, SRC, DST, X_POLICY; seq, pid and
    reserved 0 (key_spdexpire writes no reference count)."""

    def build(dialect: Dialect) -> Message:
        src, dst = _selector_exts(sp)
        current, hard = _sp_lifetimes(sp)
        pol = (
            _policy_ext(sp)
            if dialect is Dialect.FREEBSD
            else Policy(sp.type, sp.dir, sp.id, sp.priority, 0, sp.requests)
        )
        return Message(MsgType.X_SPDEXPIRE, SaType.UNSPEC, 0, 0, 0, 0, (current, hard, src, dst, pol))

    return build
