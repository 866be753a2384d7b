"""The key engine: PF_KEY semantics as a pure, synchronous state machine.

Theory of operation
-------------------
The trio shell decodes each datagram and calls ``handle(client, msg, now)``; the
engine answers with a list of :mod:`pfkeyd.effects` values (send this message to
these clients, send an error reply, stream this dump).  Timers are the shell's
business too: it asks ``next_deadline()`` and calls ``tick(now)`` when that moment
comes (``tick(now, limit=n)`` takes on at most n due deadlines, so that a storm of
expiries can be served in slices).  The engine never reads a clock, never touches a socket and never logs; it
counts (``stats``).

Semantics follow FreeBSD's key.c message by message (reference §3, §7, §8).  The
engine is written once for both dialects: it only knows a client's dialect to
answer in that dialect's own terms where the kernels genuinely differ in what they
can express (the algorithms REGISTER advertises, extensions a dialect has no number
for, the errno for a message type no handler serves).

Dispatch is a table (``HANDLERS``), like key.c's ``key_typesw``.  A handler raises a
:class:`~pfkeyd.errors.PfkeyError`; ``handle`` turns it into the error reply in one
place.  Every handler checks everything before it changes anything, so a rejected
request leaves every table as it was.

Key material travels only in replies to the socket that asked (GET, DUMP); every
broadcast (ADD/UPDATE/DELETE replies to ALL, EXPIRE, promiscuous copies) is built
without keys — stricter than Linux, which broadcasts them.
"""

from __future__ import annotations

import errno as E
import heapq
import random
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pfkeyd import algorithms
from pfkeyd.acquire import AcquireTable
from pfkeyd.effects import ClientId, Dump, Effect, Error, Instant, Send, SendEncoded
from pfkeyd.errors import (
    AlreadyExists,
    DecodeError,
    InvalidArgument,
    NoBuffers,
    NoEntry,
    NoSuchEntry,
    PfkeyError,
    ProtocolNotSupported,
)
from pfkeyd.hotpath import HotPath
from pfkeyd.knobs import Knobs
from pfkeyd.packet import sa as packet_sa
from pfkeyd.packet.counters import Counters as PacketCounters
from pfkeyd.record import record
from pfkeyd.sad import (
    DEADLINE_HARD,
    DEADLINE_LARVAL,
    DEADLINE_SOFT,
    NatT,
    Sad,
    SaIndex,
    SecAssoc,
    Usage,
)
from pfkeyd.spd import Flow, SecPolicy, Selector, Spd
from pfkeyd.stats import Statistics, Stats
from pfkeyd.wire import (
    Address,
    AuthAlg,
    Dialect,
    Direction,
    EncAlg,
    Extension,
    ExtType,
    Filter,
    IpProto,
    IpsecRequest,
    Key,
    Level,
    Lifetime,
    Message,
    Mode,
    MsgType,
    NatTPort,
    NatTTypeExt,
    Policy,
    PolicyScope,
    PolicyType,
    Prop,
    Sa,
    Sa2,
    SaFlag,
    SaReplay,
    SaState,
    SaType,
    SockAddr,
    encode,
)
from pfkeyd.wire.constants import IPSEC_MANUAL_REQID_MAX, KEY_FLAGS_MAX, PROTO_SATYPE, SATYPE_PROTO, X_EXT_OLD
from pfkeyd.wire.dialect import DialectSpec
from pfkeyd.wire.message import check_request_generic

__all__ = [
    "KeyEngine", "ClientState", "Decision", "RequestOutcome", "HANDLERS", "sa_message", "sp_message",
]

#: The errno a kernel answers for a message type it has no handler for (reference §1.3, §1.4).
NO_HANDLER_ERRNO = {Dialect.FREEBSD: E.EINVAL, Dialect.LINUX: E.EOPNOTSUPP}
#: What an X_MIGRATE notification carries (pfkey_send_migrate).
_MIGRATE_EXTS = frozenset({ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST, ExtType.X_POLICY, ExtType.X_KMADDRESS})

#: The requests the hot path learns (pfkeyd.hotpath).
_HOT_TYPES = frozenset({MsgType.ADD, MsgType.X_SPDADD})
#: Extensions a FreeBSD ADD/UPDATE reply copies from the request, in order (key_getmsgbuf_x1).
_X1_EXTS = tuple(int(t) for t in (
    ExtType.SA, ExtType.X_SA2, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST,
    ExtType.LIFETIME_HARD, ExtType.LIFETIME_SOFT, ExtType.IDENTITY_SRC, ExtType.IDENTITY_DST,
    ExtType.X_NAT_T_TYPE, ExtType.X_NAT_T_SPORT, ExtType.X_NAT_T_DPORT, ExtType.X_NAT_T_OAI,
    ExtType.X_NAT_T_OAR, ExtType.X_NEW_ADDRESS_SRC, ExtType.X_NEW_ADDRESS_DST, ExtType.X_SEC_CTX,
))

#: Extensions that exist in only one dialect: left out of messages built for the other.
_DIALECT_ONLY = {
    Dialect.LINUX: frozenset({ExtType.X_NAT_T_OAR, ExtType.X_NAT_T_FRAG, ExtType.X_SA_REPLAY,
                              ExtType.X_NEW_ADDRESS_SRC, ExtType.X_NEW_ADDRESS_DST}),
    Dialect.FREEBSD: frozenset({ExtType.X_SEC_CTX, ExtType.X_KMADDRESS, ExtType.X_FILTER}),
}

_DERIV = int(SaFlag.X_EXT_DERIV)
_RAWCPI = int(SaFlag.X_EXT_RAWCPI)
_REFCNT = 1  # what FreeBSD writes in sadb_msg_reserved of the SA and SP messages it builds
_REGISTRABLE = frozenset({SaType.AH, SaType.ESP, SaType.X_IPCOMP, SaType.X_TCPSIGNATURE})
_MAX_SA_REPLAY = 2**32 - 33


@dataclass
class ClientState:
    """What the engine knows of one PF_KEY socket."""

    dialect: Dialect
    registered: set[int] = field(default_factory=set)
    promisc: bool = False


@record
class _Request:
    client: ClientId
    msg: Message
    now: Instant
    dialect: Dialect


Handler = Callable[["KeyEngine", _Request], list[Effect]]


def _for_dialect(exts: Iterable[Extension], dialect: Dialect) -> tuple[Extension, ...]:
    drop = _DIALECT_ONLY[dialect]
    return tuple(e for e in exts if e.exttype not in drop)


def _in_dialect(msg: Message, dialect: Dialect) -> Message:
    """``msg`` without the extensions ``dialect`` has no number for (a FreeBSD
    requester's NAT_T_OAR or SA_REPLAY broadcast to a linux socket, and the like)."""
    drop = _DIALECT_ONLY[dialect]
    if not any(e.exttype in drop for e in msg.exts):
        return msg
    return msg.replace(exts=_for_dialect(msg.exts, dialect))


# ---------------------------------------------------------------------------- SA messages


def _host(exttype: ExtType, sa: SockAddr) -> Address:
    return Address(exttype, sa, sa.max_prefix, IpProto.ANY)


def _current(sa: SecAssoc) -> Lifetime:
    return Lifetime(ExtType.LIFETIME_CURRENT, sa.packets, sa.bytes, sa.created_wall, sa.first_used_wall)


def sa_message(
    sa: SecAssoc, msgtype: int, seq: int, pid: int, dialect: Dialect, *, keys: bool = True
) -> Message:
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
    exts += [_current(sa), _host(ExtType.ADDRESS_SRC, idx.src), _host(ExtType.ADDRESS_DST, idx.dst)]
    if keys:
        if sa.key_auth is not None:
            exts.append(sa.key_auth)
        if sa.key_encrypt is not None:
            exts.append(sa.key_encrypt)
    natt = sa.natt
    if natt is not None:
        exts += [NatTTypeExt(natt.type), NatTPort(ExtType.X_NAT_T_SPORT, natt.sport),
                 NatTPort(ExtType.X_NAT_T_DPORT, natt.dport)]
        if natt.oai is not None:
            exts.append(_host(ExtType.X_NAT_T_OAI, natt.oai))
        if natt.oar is not None and dialect is Dialect.FREEBSD:
            exts.append(_host(ExtType.X_NAT_T_OAR, natt.oar))
    return Message(msgtype, sa.satype, seq, pid, 0, _REFCNT, tuple(exts))


def _render_sa(sa: SecAssoc, dialect: Dialect, seq: int, pid: int) -> bytes:
    """One SADB_DUMP entry.  A dump of a million SAs renders a million of these, so
    the common shape (no NAT-T, no SA_REPLAY, algorithm ids the dialect knows) is
    packed directly; it gives exactly the bytes of the generic path, which every
    other SA takes (a test compares the two)."""
    fast = _render_sa_fast(sa, dialect, seq, pid)
    if fast is not None:
        return fast
    return encode(sa_message(sa, MsgType.DUMP, seq, pid, dialect), dialect)


_SA_EXT = struct.Struct("=HH4sBBBBI")
_SA2_EXT = struct.Struct("=HHBBHII")
_CURRENT_EXT = struct.Struct("=HHIQQQ")
_KEY_HEAD = struct.Struct("=HHHH")
_MSG_HEAD = struct.Struct("=BBBBHHII")
_FAST_SATYPES = frozenset({SaType.ESP, SaType.AH})
#: (sockaddr, exttype, sockaddr layout) -> the encoded address extension.
_HOST_BYTES: dict[tuple[SockAddr, int, bool], bytes] = {}


def _host_bytes(addr: SockAddr, exttype: ExtType, spec: DialectSpec) -> bytes:
    key = (addr, exttype, spec.sockaddr_has_len)
    done = _HOST_BYTES.get(key)
    if done is None:
        if len(_HOST_BYTES) >= 8192:
            _HOST_BYTES.clear()
        done = _HOST_BYTES[key] = _host(exttype, addr).encode(spec, 0)
    return done


def _key_bytes(key: Key, exttype: int) -> bytes | None:
    data = key.data
    if (key.bits + 7) // 8 != len(data):
        return None
    total = (8 + len(data) + 7) & ~7
    return _KEY_HEAD.pack(total // 8, exttype, key.bits, 0) + data + bytes(total - 8 - len(data))


def _render_sa_fast(sa: SecAssoc, dialect: Dialect, seq: int, pid: int) -> bytes | None:
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
        _SA_EXT.pack(2, ExtType.SA, sa.spi.to_bytes(4, "big"), min(sa.replay, 255), sa.state, auth, enc,
                     sa.flags & KEY_FLAGS_MAX),
        _SA2_EXT.pack(2, ExtType.X_SA2, mode, 0, 0, sa.replay_seq & 0xFFFFFFFF, idx.reqid),
    ]
    if sa.hard is not None:
        parts.append(sa.hard.encode(spec, sa.satype))
    if sa.soft is not None:
        parts.append(sa.soft.encode(spec, sa.satype))
    parts += [
        _CURRENT_EXT.pack(4, ExtType.LIFETIME_CURRENT, sa.packets, sa.bytes, sa.created_wall, sa.first_used_wall),
        _host_bytes(idx.src, ExtType.ADDRESS_SRC, spec),
        _host_bytes(idx.dst, ExtType.ADDRESS_DST, spec),
    ]
    for key, exttype in ((sa.key_auth, ExtType.KEY_AUTH), (sa.key_encrypt, ExtType.KEY_ENCRYPT)):
        if key is not None:
            packed = _key_bytes(key, exttype)
            if packed is None:
                return None
            parts.append(packed)
    body = b"".join(parts)
    return _MSG_HEAD.pack(2, MsgType.DUMP, 0, sa.satype, (16 + len(body)) // 8, _REFCNT, seq, pid) + body


def _expire_message(sa: SecAssoc, which: Lifetime) -> Message:
    """SADB_EXPIRE (reference §7.2): SA, SA2, (SA_REPLAY), CURRENT, HARD or SOFT, SRC,
    DST; seq = the SA's stored seq, pid 0; no keys, no NAT-T."""
    idx = sa.index
    exts: list[Extension] = [
        Sa(sa.spi, min(sa.replay, 255), sa.state, sa.auth, sa.encrypt, sa.flags & KEY_FLAGS_MAX),
        Sa2(idx.mode, sa.replay_seq & 0xFFFFFFFF, idx.reqid),
    ]
    if sa.replay_window > 255 * 8:
        exts.append(SaReplay(sa.replay_window))
    exts += [_current(sa), which, _host(ExtType.ADDRESS_SRC, idx.src), _host(ExtType.ADDRESS_DST, idx.dst)]
    return Message(MsgType.EXPIRE, sa.satype, sa.seq, 0, 0, _REFCNT, tuple(exts))


# ------------------------------------------------------------------------------- helpers


def _proto_of(satype: int) -> int:
    proto = SATYPE_PROTO.get(satype)  # type: ignore[call-overload]
    if proto is None:
        msg = f"satype {satype} does not name an SA protocol"
        raise InvalidArgument(msg)
    return int(proto)


def _addresses(msg: Message) -> tuple[Address, Address]:
    src, dst = msg.src, msg.dst
    if src is None or dst is None:
        msg_ = "ADDRESS_SRC and ADDRESS_DST are required"
        raise InvalidArgument(msg_)
    return src, dst


def _inet(a: Address, what: str) -> SockAddr:
    sa = a.addr
    if not isinstance(sa, SockAddr):
        msg = f"{what}: address family {sa.family} is not supported"
        raise InvalidArgument(msg)
    return sa.without_port()


def _sa_index(msg: Message, proto: int) -> SaIndex:
    src, dst = _addresses(msg)
    s, d = _inet(src, "source"), _inet(dst, "destination")
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


def _lifetimes(msg: Message, dialect: Dialect) -> tuple[Lifetime | None, Lifetime | None]:
    hard, soft = msg.lifetime_hard, msg.lifetime_soft
    if (hard is None) != (soft is None) and _LIFETIMES_PAIRED[dialect]:
        msg_ = "LIFETIME_HARD and LIFETIME_SOFT must come together"
        raise InvalidArgument(msg_)
    return hard, soft


def _same_head(a: SaIndex, b: SaIndex) -> bool:
    """key_cmpsaidx(CMP_HEAD): protocol and addresses."""
    return a.proto == b.proto and a.src == b.src and a.dst == b.dst


# -------------------------------------------------------------------------------- engine


class KeyEngine:
    """The SAD, the registrations and the PF_KEY message handlers."""

    def __init__(self, knobs: Knobs | None = None, *, rng: random.Random | None = None) -> None:
        self._knobs = knobs if knobs is not None else Knobs()
        self.rng = rng if rng is not None else random.SystemRandom()
        self.sad = Sad()
        self.clients: dict[ClientId, ClientState] = {}
        self.stats = Stats()
        # The packet path's counters (espstat, ahstat, ipcompstat and NAT-T); the
        # data plane fills them, `pfkeyd stats` prints them.
        self.packet_counters = PacketCounters()
        self.spd = Spd()
        self.acquires = AcquireTable()
        self._policy_deadlines: list[tuple[float, int]] = []  # (when, policy id), checked when due
        self._policy_ids = 0
        self._reqids = 0x4000
        self._deflev: tuple[Knobs, dict[tuple[int, int, int], int]] | None = None
        self._promiscuous = 0  # how many clients are in promiscuous mode
        self._dialect_count = dict.fromkeys(Dialect, 0)  # clients per dialect
        self._ints: dict[int, int] = {}  # see _shared
        self.hot = HotPath()  # the hot path's learned request shapes
        #: Moves whenever the SPD, the SAD or the knobs may have changed (a request,
        #: a tick, a knob, an expiry from traffic): the data plane's caches check it.
        self.generation = 0

    # ---------------------------------------------------------------- clients

    def client_opened(self, client: ClientId, dialect: Dialect | str = Dialect.LINUX) -> None:
        self.client_closed(client)
        state = self.clients[client] = ClientState(Dialect(dialect))
        self._dialect_count[state.dialect] += 1

    def client_closed(self, client: ClientId) -> None:
        """The socket is gone: its registrations and promiscuous mode go with it."""
        state = self.clients.pop(client, None)
        if state is not None:
            self._dialect_count[state.dialect] -= 1
            self._promiscuous = sum(s.promisc for s in self.clients.values())

    def same_dialect_audience(self, client: ClientId, dialect: Dialect) -> tuple[ClientId, ...] | None:
        """Every client, ``client`` first, if all speak ``dialect`` and none is
        promiscuous (then one keyless message serves them all); else None."""
        clients = self.clients
        if self._promiscuous or self._dialect_count[dialect] != len(clients) or client not in clients:
            return None
        if len(clients) == 1:
            return (client,)
        return (client, *[c for c in clients if c != client])

    @property
    def knobs(self) -> Knobs:
        return self._knobs

    @knobs.setter
    def knobs(self, knobs: Knobs) -> None:
        """New knob values, effective from the next message and the next tick."""
        old, self._knobs = self._knobs, knobs
        self.generation += 1
        self.hot.clear()
        if knobs.larval_lifetime != old.larval_lifetime:
            # key_timehandler measures every LARVAL SA against the current
            # net.key.larval_lifetime (reference §7.1): move their deadlines too.
            for head in self.sad.heads.values():
                for sa in head.larval.values():
                    self._schedule(sa)

    def set_knob(self, name: str, value: int | str) -> None:
        """Change one knob; effective from the next message (raises KnobError)."""
        self.knobs = self.knobs.set(name, value)

    def allocators(self) -> tuple[int, int, int]:
        """What the policy-id, reqid and policy-order counters last gave (the
        durable state keeps them, so that ids are not given twice)."""
        return (self._policy_ids, self._reqids, self.spd._order)

    def resume(self, allocators: tuple[int, int, int]) -> None:
        """The SAD and the SPD were filled from the durable state (pfkeyd.state):
        continue the counters where they were and schedule every SA's and policy's
        deadlines; those that passed while the daemon was down fire at the next
        tick (an SA past its hard lifetime is removed with its hard EXPIRE)."""
        self._policy_ids, self._reqids, self.spd._order = allocators
        for sa in self.sad.by_spi.values():
            self._schedule(sa)
        for sp in self.spd.by_id.values():
            self._schedule_policy(sp)

    def statistics(self) -> Statistics:
        return self.stats.snapshot(clients=len(self.clients), sas=len(self.sad), policies=len(self.spd),
                                   packets=self.packet_counters.snapshot())

    # --------------------------------------------------------------- dispatch

    def serve_hot(self, client: ClientId, data: bytes, now: Instant) -> list[Effect] | None:
        """Answer the undecoded request ``data`` on the hot path (:mod:`pfkeyd.hotpath`),
        or return None having changed nothing: then decode it and call :meth:`handle`
        with ``raw=data``."""
        state = self.clients.get(client)
        if state is None or not self._knobs.hot_path:
            return None
        self.generation += 1
        return self.hot.serve(self, client, state.dialect, data, now)

    def handle(self, client: ClientId, msg: Message, now: Instant, *, raw: bytes | None = None) -> list[Effect]:
        """Handle one decoded request from ``client``; ``raw``, its bytes, lets the hot
        path learn the request's shape."""
        state = self.clients.get(client)
        if state is None:
            self.client_opened(client)
            state = self.clients[client]
        self.generation += 1
        self.stats.note_in(msg.type)
        req = _Request(client, msg, now, state.dialect)
        try:
            try:
                check_request_generic(msg)
            except DecodeError as exc:
                raise PfkeyError(str(exc), errno=exc.errno) from None
            if msg.satype == SaType.X_TCPSIGNATURE and msg.satype not in state.dialect.spec.satypes:
                # Linux has no satype 11: pfkey_satype2proto gives 0 -> EINVAL, and
                # REGISTER refuses satype > SADB_SATYPE_MAX (reference §3.7, §5.1).
                raise InvalidArgument(f"satype {msg.satype} is not defined in the {state.dialect.value} dialect")
            handler = HANDLERS.get(msg.type)
            if handler is None:
                name = MsgType(msg.type).name if msg.type in MsgType._value2member_map_ else msg.type
                error = f"no handler for message type {name}"
                raise PfkeyError(error, errno=NO_HANDLER_ERRNO[state.dialect])
            effects = handler(self, req)
        except PfkeyError as exc:
            self.stats.note_error(exc.errno)
            return [Error(client, exc.errno)]
        self._count(effects)
        if raw is not None and msg.type in _HOT_TYPES and self._knobs.hot_path:
            self._teach(client, state.dialect, raw, msg, effects)
        return effects

    def _teach(self, client: ClientId, dialect: Dialect, raw: bytes, msg: Message, effects: list[Effect]) -> None:
        """Show the hot path a successful ADD or SPDADD whose answer it could have
        given: one keyless message to every socket, all of the requester's dialect."""
        audience = self.same_dialect_audience(client, dialect)
        first = effects[0]
        if audience is None or not isinstance(first, Send) or first.to != (client,):
            return
        to: list[ClientId] = []
        for eff in effects:
            if not isinstance(eff, Send) or eff.msg is not first.msg or eff.promisc:
                return
            to += eff.to
        if tuple(to) != audience:
            return
        stored: SecAssoc | SecPolicy | None = None
        if msg.type == MsgType.ADD:
            sa_ext = msg.sa
            stored = self.sad.get(sa_ext.spi) if sa_ext is not None else None
        else:
            policy = first.msg.policy
            stored = self.spd.by_id.get(policy.id) if policy is not None else None
        if stored is not None:
            self.hot.learn(self, dialect, raw, stored, first.msg)

    def _count(self, effects: Sequence[Effect]) -> None:
        for eff in effects:
            if isinstance(eff, Send):
                self.stats.note_out(eff.msg.type, len(eff.to))
            elif isinstance(eff, SendEncoded):
                self.stats.note_out(eff.msgtype, len(eff.to))
            elif isinstance(eff, Dump):
                self.stats.note_out(eff.msgtype, len(eff.items))

    # ------------------------------------------------------------- delivery

    def _fan_out(
        self, clients: Iterable[ClientId], build: Callable[[Dialect], Message], *, promisc: bool = False
    ) -> list[Effect]:
        """Broadcast to ``clients``, each getting ``build`` of its dialect; clients whose
        messages are equal share one Send (in the common case, one Send for all)."""
        messages: list[Message] = []
        groups: list[list[ClientId]] = []
        slot_of: dict[Dialect, int] = {}
        for c in clients:
            d = self.clients[c].dialect
            slot = slot_of.get(d)
            if slot is None:
                m = build(d)
                slot = next((i for i, x in enumerate(messages) if x == m), len(messages))
                if slot == len(messages):
                    messages.append(m)
                    groups.append([])
                slot_of[d] = slot
            groups[slot].append(c)
        return [Send(tuple(cs), m, promisc=promisc) for m, cs in zip(messages, groups)]

    def _promisc(self, build: Message | Callable[[Dialect], Message]) -> list[Effect]:
        """The keyless copies for promiscuous sockets, each in terms its dialect can say."""
        if not self._promiscuous:
            return []
        listeners = [c for c, s in self.clients.items() if s.promisc]

        def copy(d: Dialect) -> Message:
            return _in_dialect((build(d) if callable(build) else build).without_keys(), d)

        return self._fan_out(listeners, copy, promisc=True)

    def _to_one(self, req: _Request, msg: Message) -> list[Effect]:
        """KEY_SENDUP_ONE: the requester only (keys allowed)."""
        return [Send((req.client,), msg, reply=True), *self._promisc(msg)]

    def _to_all(self, req: _Request | None, msg: Message) -> list[Effect]:
        """KEY_SENDUP_ALL: every socket, the requester's copy being its reply."""
        msg = msg.without_keys()
        me = req.client if req is not None else None
        out: list[Effect] = []
        if me is not None:
            out.append(Send((me,), msg, reply=True))
            if len(self.clients) == 1:
                return out + self._promisc(msg)
        others = [c for c in self.clients if c != me]
        out += self._fan_out(others, lambda d: _in_dialect(msg, d))
        return out + self._promisc(msg)

    def _to_registered(
        self, build: Message | Callable[[Dialect], Message], requester: ClientId | None = None
    ) -> list[Effect]:
        """KEY_SENDUP_REGISTERED: every socket registered for any satype, plus the
        requester (whose copy is its reply).  ``build`` may give each dialect its own
        message (the algorithm lists of REGISTER and ACQUIRE differ)."""
        made: dict[Dialect, Message] = {}

        def message(d: Dialect) -> Message:
            if d not in made:
                made[d] = _in_dialect((build(d) if callable(build) else build).without_keys(), d)
            return made[d]

        out: list[Effect] = []
        if requester is not None:
            out.append(Send((requester,), message(self.clients[requester].dialect), reply=True))
        for d in Dialect:
            targets = tuple(c for c, s in self.clients.items() if s.registered and c != requester and s.dialect is d)
            if targets:
                out.append(Send(targets, message(d)))
        if not out:
            return []
        return out + self._promisc(message)

    def registered_clients(self) -> tuple[ClientId, ...]:
        return tuple(c for c, s in self.clients.items() if s.registered)

    # ---------------------------------------------------------------- SPI

    def _new_spi(self, proto: int, lo: int, hi: int) -> int:
        """key_do_getnewspi (reference §3.1)."""
        if proto == IpProto.IPCOMP:
            lo, hi = min(lo, 0xFFFF), min(hi, 0xFFFF)
        if lo > hi:
            lo, hi = hi, lo
        by_spi = self.sad.by_spi
        if lo == hi:
            if lo in by_spi:
                msg = f"SPI {lo:#x} is in use"
                raise AlreadyExists(msg)
            spi = lo
        else:
            for _ in range(self.knobs.spi_trycnt):
                spi = lo + self.rng.randrange(hi - lo + 1)
                if spi not in by_spi:
                    break
            else:
                msg = f"no free SPI in {lo:#x}..{hi:#x} after {self.knobs.spi_trycnt} attempts"
                raise AlreadyExists(msg)
        if proto != IpProto.IPCOMP and spi <= 255:
            msg = f"SPI {spi} is reserved (RFC 4302)"
            raise InvalidArgument(msg)
        return spi

    def _check_capacity(self) -> None:
        if len(self.sad) >= self.knobs.max_sas:
            msg = f"the SAD holds {len(self.sad)} SAs (pfkeyd.max_sas)"
            raise NoBuffers(msg)

    # ----------------------------------------------------------- deadlines

    def _schedule(self, sa: SecAssoc) -> None:
        """Push the deadlines of ``sa`` (its version makes older ones stale)."""
        sad = self.sad
        if sa.state == SaState.LARVAL:
            sad.schedule(sa.created + self.knobs.larval_lifetime, sa, DEADLINE_LARVAL)
            return
        for lt, kind in ((sa.hard, DEADLINE_HARD), (sa.soft, DEADLINE_SOFT)):
            if lt is None or (kind == DEADLINE_SOFT and sa.state != SaState.MATURE):
                continue
            if lt.addtime:
                sad.schedule(sa.created + lt.addtime, sa, kind)
            if lt.usetime and sa.first_used is not None:
                sad.schedule(sa.first_used + lt.usetime, sa, kind)

    def next_deadline(self) -> float | None:
        """When ``tick`` is next needed (monotonic seconds), or None.  The shell asks
        after every request, so the common case (nothing pending but SAs) is cheap."""
        best = self.sad.next_deadline()
        if self.acquires.by_index:
            t = self.acquires.next_deadline(self.knobs.blockacq_lifetime)
            if t is not None and (best is None or t < best):
                best = t
        if self._policy_deadlines:
            t = self._policy_deadlines[0][0]
            if best is None or t < best:
                best = t
        return best

    def tick(self, now: Instant, *, limit: int | None = None) -> list[Effect]:
        """Expire what is due at ``now`` (reference §7.1, §7.2).

        ``limit`` bounds how many deadline entries of SAs, and how many of
        policies, this call takes on; what is left stays due, so
        ``next_deadline()`` is still at or before ``now`` and the caller calls again.  A shell that lets other
        work run between such calls never stalls on an expiry storm (200 000 SAs
        due at once).
        """
        if limit is not None and limit < 1:
            msg = f"tick limit {limit} is not positive"
            raise ValueError(msg)
        self.generation += 1
        effects: list[Effect] = []
        due = self.sad.due(now.mono, limit)
        for sa, kind in due:
            current = self.sad.get(sa.spi)
            if current is not sa:
                continue  # an earlier deadline in this tick changed it
            # A deadline names an SPI and a version, and a new SA of a reused SPI
            # starts at version 0 again: an entry acts only if its limit has
            # really come for the SA that holds the SPI now.
            if kind == DEADLINE_LARVAL:
                if sa.state != SaState.LARVAL or now.mono < sa.created + self.knobs.larval_lifetime:
                    continue  # another SA, or the lifetime grew since (its later deadline is scheduled)
                self.sad.remove(sa)  # silently, as key_timehandler does
            elif _hard_due(sa, now.mono):
                # HARD is checked first: a tick that finds both limits passed sends
                # only the hard EXPIRE (reference §7.2).
                effects += self._expire_hard(sa)
            elif kind == DEADLINE_SOFT and _soft_due(sa, now.mono):
                effects += self._expire_soft(sa)
        self.acquires.expire(now.mono, self.knobs.blockacq_lifetime)
        effects += self._expire_policies(now, limit)
        self._count(effects)
        return effects

    def _expire_hard(self, sa: SecAssoc) -> list[Effect]:
        self.sad.remove(sa)
        assert sa.hard is not None
        return self._to_registered(_expire_message(sa.evolve(state=SaState.DEAD), sa.hard))

    def _expire_soft(self, sa: SecAssoc) -> list[Effect]:
        if sa.state != SaState.MATURE:
            return []
        dying = sa.evolve(state=SaState.DYING)
        self.sad.replace(sa, dying)
        self._schedule(dying)
        assert sa.soft is not None
        return self._to_registered(_expire_message(dying, sa.soft))

    def report_usage(self, spi: int, nbytes: int, packets: int, now: Instant, *,
                     replay_seq: int | None = None) -> list[Effect]:
        """Account traffic on an SA (the packet path calls this, through
        :mod:`pfkeyd.packet.usage`); enforces the byte and allocation limits and starts
        the use-time lifetimes on first use.  ``replay_seq`` is the SA's replay counter
        now (what SADB_X_SA2 reports), if the caller knows it."""
        sa = self.sad.get(spi)
        if sa is None or not sa.alive:
            return []
        first = sa.first_used is None
        usage = Usage(sa.bytes + nbytes, sa.packets + packets,
                      now.mono if first else sa.first_used, now.wall if first else sa.first_used_wall,
                      sa.replay_seq if replay_seq is None else replay_seq)
        new = sa.evolve(usage=usage) if first else sa.counted(usage)
        self.sad.replace(sa, new)
        if first:
            self._schedule(new)
        effects: list[Effect] = []
        if _over(new.hard, new):
            effects = self._expire_hard(new)
            self.generation += 1
        elif new.state == SaState.MATURE and _over(new.soft, new):
            effects = self._expire_soft(new)
            self.generation += 1
        self._count(effects)
        return effects

    # ------------------------------------------------------------ SA values

    def _sa_values(self, req: _Request, proto: int) -> dict[str, Any]:
        """key_setsaval: every check of reference §7.3, and the values an ADD or a
        LARVAL-completing UPDATE sets.  Changes nothing."""
        msg, satype = req.msg, req.msg.satype
        sa = msg.sa
        assert sa is not None
        flags = sa.flags
        if flags & ~KEY_FLAGS_MAX:
            error = f"flags {flags:#x} outside {KEY_FLAGS_MAX:#x}"
            raise InvalidArgument(error)
        replay, window = sa.replay, 0
        if flags & X_EXT_OLD:
            replay = 0
        ext_replay = msg.sa_replay
        if ext_replay is not None:
            if ext_replay.replay > _MAX_SA_REPLAY:
                error = f"replay window {ext_replay.replay} is too large"
                raise InvalidArgument(error)
            # The kernel keeps (n + 7) / 8 bitmap bytes and reports bytes x 8 (§4.16).
            window = (ext_replay.replay + 7) // 8 * 8
            replay = min(window // 8, 255)
        key_auth, key_enc = msg.key_auth, msg.key_encrypt
        if key_auth is not None:
            if proto == IpProto.IPCOMP:
                raise InvalidArgument("IPComp SAs take no authentication key")
            if not key_auth.data and sa.auth != AuthAlg.X_NULL:
                raise InvalidArgument("empty authentication key")
        if key_enc is not None:
            if proto in (IpProto.AH, IpProto.TCP):
                raise InvalidArgument("AH and TCP-MD5 SAs take no encryption key")
            if proto == IpProto.ESP and not key_enc.data and sa.encrypt != EncAlg.NULL:
                raise InvalidArgument("empty encryption key")
            if proto == IpProto.IPCOMP and key_enc.data:
                raise InvalidArgument("an IPComp SA's encryption key must be empty")
        if proto == IpProto.AH:
            if flags & _DERIV or sa.encrypt != EncAlg.NONE:
                raise InvalidArgument("AH SAs take neither the DERIV flag nor an encryption algorithm")
        elif proto == IpProto.ESP:
            if flags & X_EXT_OLD and flags & _DERIV:
                raise InvalidArgument("the OLD and DERIV flags exclude each other")
        elif proto == IpProto.IPCOMP:
            if sa.auth != AuthAlg.NONE:
                raise InvalidArgument("IPComp SAs take no authentication algorithm")
            if sa.spi >= 0x10000 and not flags & _RAWCPI:
                raise InvalidArgument(f"CPI {sa.spi:#x} needs the RAWCPI flag")
        elif proto == IpProto.TCP:
            if sa.encrypt != EncAlg.NONE:
                raise InvalidArgument("TCP-MD5 SAs take no encryption algorithm")
        else:
            raise ProtocolNotSupported(f"satype {satype} is not supported")
        hard, soft = _lifetimes(msg, req.dialect)
        _identities(msg)
        algorithms.check_sa(proto, sa.auth, sa.encrypt, key_auth, key_enc, flags, req.dialect)
        # The packet path must be able to run every SA it may be handed: refused here,
        # never when a packet arrives (issue 12).
        packet_sa.check(proto, sa.auth, sa.encrypt, key_auth, key_enc, flags, req.dialect)
        auth = sa.auth
        if proto == IpProto.ESP and key_enc is not None:
            # esp_init records the GMAC/Poly1305 id of a combined-mode SA.
            auth = algorithms.implied_auth(sa.encrypt, (key_enc.bits + 7) // 8) or auth
        return {
            "auth": auth, "encrypt": sa.encrypt, "flags": flags, "replay": replay,
            "replay_window": window, "key_auth": key_auth, "key_encrypt": key_enc,
            "hard": hard, "soft": soft, "natt": _natt(msg, proto),
            "created": req.now.mono, "created_wall": self._shared(req.now.wall),
        }

    def _shared(self, value: int) -> int:
        """One int object per distinct pid or creation second: a million SAs made by a
        few processes within a few seconds then share them (memory per SA)."""
        known = self._ints.get(value)
        if known is not None:
            return known
        if len(self._ints) >= 4096:
            self._ints.clear()
        self._ints[value] = value
        return value

    def acqdone(self, index: SaIndex, seq: int) -> None:
        """A GETSPI or ADD that carries an ACQUIRE's seq completes it (reference §7.4)."""
        self.acquires.done(index, seq)

    # -------------------------------------------------------------- handlers

    def _getspi(self, req: _Request) -> list[Effect]:
        """<base, address(SD), (SPI range), (SA2)> -> <base, SA(*), address(SD)>"""
        msg = req.msg
        proto = _proto_of(msg.satype)
        index = _sa_index(msg, proto)
        rng = msg.spirange
        lo, hi = (rng.min, rng.max) if rng is not None else (self.knobs.spi_minval, self.knobs.spi_maxval)
        self._check_capacity()
        spi = self._new_spi(proto, lo, hi)
        sa = SecAssoc(spi, msg.satype, index, SaState.LARVAL, 0, 0, 0, 0, 0, None, None, msg.seq,
                      self._shared(msg.pid), req.now.mono, self._shared(req.now.wall))
        self.sad.insert(sa)
        self._schedule(sa)
        if msg.seq:
            self.acqdone(index, msg.seq)
        src, dst = _addresses(msg)
        reply = Message(MsgType.GETSPI, msg.satype, msg.seq, msg.pid, 0, 0, (Sa(spi), src, dst))
        return self._to_one(req, reply)

    def _update(self, req: _Request) -> list[Effect]:
        """<base, SA, (SA2), address(SD), (lifetime(HS)), (key(AE)), (identity(SD)),
        (NAT-T)> -> <base, SA, (SA2), address(SD), (lifetime(HS)), ...> to ALL"""
        msg = req.msg
        sa_ext = msg.sa
        if sa_ext is None:
            raise InvalidArgument("SA extension is required")
        proto = _proto_of(msg.satype)
        _lifetimes(msg, req.dialect)
        index = _sa_index(msg, proto)
        sa = self.sad.get(sa_ext.spi)
        if sa is None:
            raise InvalidArgument(f"no SA with SPI {sa_ext.spi:#x}")  # EINVAL, not ESRCH (key.c)
        if sa.pid != msg.pid:
            raise InvalidArgument(f"SA {sa_ext.spi:#x} belongs to pid {sa.pid}")
        if not _index_matches(sa.index, index):
            raise NoSuchEntry(f"SA {sa_ext.spi:#x} has another SA index")
        if sa.state == SaState.LARVAL:
            if (proto == IpProto.ESP and msg.key_encrypt is None) or (proto == IpProto.AH and msg.key_auth is None):
                raise InvalidArgument("the SA needs its key")
            values = self._sa_values(req, proto)
            new = sa.evolve(state=SaState.MATURE, **values)
        else:
            if msg.key_auth is not None or msg.key_encrypt is not None:
                raise InvalidArgument("the keys of a mature SA cannot change")
            hard, soft = _lifetimes(msg, req.dialect)
            if hard is None and soft is None and sa.state == SaState.DYING:
                hard, soft = sa.hard, sa.soft  # a DYING SA keeps its limits
            new = sa.evolve(state=SaState.MATURE, hard=hard, soft=soft)
            new = self._natt_changed(new, msg, proto)
            new = self._moved(new, msg)
        self.sad.replace(sa, new)
        self._schedule(new)
        return self._to_all(req, _x1_reply(msg))

    def _natt_changed(self, sa: SecAssoc, msg: Message, proto: int) -> SecAssoc:
        """FreeBSD's clone path for an alive SA that has NAT-T state or is given a
        NAT_T_TYPE: without a new address it needs TYPE, SPORT and DPORT (reference §3.2)."""
        if sa.natt is None and msg.nat_t_type is None:
            return sa
        moving = msg.has(ExtType.X_NEW_ADDRESS_SRC) or msg.has(ExtType.X_NEW_ADDRESS_DST)
        if msg.nat_t_type is None or msg.nat_t_sport is None or msg.nat_t_dport is None:
            if moving:
                return sa
            raise InvalidArgument("an UPDATE of a NAT-T SA needs NAT_T_TYPE, NAT_T_SPORT and NAT_T_DPORT")
        return sa.evolve(natt=_natt(msg, proto))

    def _moved(self, sa: SecAssoc, msg: Message) -> SecAssoc:
        """FreeBSD's NEW_ADDRESS_SRC/DST on an alive SA: the SA moves to a new SA index."""
        new_src, new_dst = msg.address(ExtType.X_NEW_ADDRESS_SRC), msg.address(ExtType.X_NEW_ADDRESS_DST)
        if new_src is None and new_dst is None:
            return sa
        idx = sa.index
        src = _inet(new_src, "new source") if new_src is not None else idx.src
        dst = _inet(new_dst, "new destination") if new_dst is not None else idx.dst
        if src.version != dst.version:
            raise InvalidArgument("new addresses of different families")
        return sa.evolve(index=SaIndex(idx.proto, idx.mode, idx.reqid, src, dst))

    def _add(self, req: _Request) -> list[Effect]:
        """<base, SA, (SA2), address(SD), (lifetime(HS)), key(AE), (identity(SD)),
        (NAT-T)> -> <base, SA, (SA2), address(SD), (lifetime(HS)), ...> to ALL"""
        msg = req.msg
        sa_ext = msg.sa
        if sa_ext is None:
            raise InvalidArgument("SA extension is required")
        _addresses(msg)
        _lifetimes(msg, req.dialect)
        if (msg.satype == SaType.ESP and msg.key_encrypt is None) or (
            msg.satype == SaType.AH and msg.key_auth is None
        ):
            raise InvalidArgument("the SA needs its key")
        proto = _proto_of(msg.satype)
        index = _sa_index(msg, proto)
        spi = sa_ext.spi
        if proto == IpProto.TCP:
            if self.sad.heads_for(proto, index.src, index.dst):
                raise AlreadyExists("a TCP-MD5 SA for these addresses exists")
            spi = self._tcpmd5_spi(spi)
        elif spi in self.sad.by_spi:
            raise AlreadyExists(f"SPI {spi:#x} is in use")
        if proto in (IpProto.ESP, IpProto.AH) and spi <= 255:
            raise InvalidArgument(f"SPI {spi} is reserved (RFC 4302)")
        self._check_capacity()
        values = self._sa_values(req, proto)
        sa = SecAssoc(spi, msg.satype, index, SaState.MATURE, seq=msg.seq, pid=self._shared(msg.pid), **values)
        self.sad.insert(sa)
        self._schedule(sa)
        if msg.seq:
            self.acqdone(index, msg.seq)
        return self._to_all(req, _x1_reply(msg))

    def _tcpmd5_spi(self, spi: int) -> int:
        """TCP-MD5 SAs are unique by address pair; a clashing SPI is replaced silently."""
        if spi not in self.sad.by_spi:
            return spi
        return self._new_spi(IpProto.TCP, 0x1000, 0xFFFFFFFF)

    def _delete(self, req: _Request) -> list[Effect]:
        """<base, (SA), address(SD)> -> <base, (SA), address(SD)> to ALL.  Without SA
        (a FreeBSD extension) every MATURE and DYING SA of the addresses goes."""
        msg = req.msg
        proto = _proto_of(msg.satype)
        index = _sa_index(msg, proto)
        src, dst = _addresses(msg)
        sa_ext = msg.sa
        if sa_ext is None:
            for head in self.sad.heads_for(index.proto, index.src, index.dst):
                for sa in list(head.alive.values()):
                    self.sad.remove(sa)
            return self._to_all(req, Message(MsgType.DELETE, msg.satype, msg.seq, msg.pid, 0, 0, (src, dst)))
        sa = self._lookup(sa_ext.spi, index)
        self.sad.remove(sa)
        return self._to_all(req, Message(MsgType.DELETE, msg.satype, msg.seq, msg.pid, 0, 0, (sa_ext, src, dst)))

    def _lookup(self, spi: int, index: SaIndex) -> SecAssoc:
        if index.proto == IpProto.TCP:
            heads = self.sad.heads_for(index.proto, index.src, index.dst)
            found = next((sa for h in heads for sa in h.alive.values()), None)
        else:
            found = self.sad.get(spi)
        if found is None or not _same_head(found.index, index):
            raise NoSuchEntry(f"no SA with SPI {spi:#x} for these addresses")
        return found

    def _get(self, req: _Request) -> list[Effect]:
        """<base, SA, address(SD)> -> <base, SA, (lifetimes), address(SD), (keys)> to ONE"""
        msg = req.msg
        sa_ext = msg.sa
        if sa_ext is None:
            raise InvalidArgument("SA extension is required")
        proto = _proto_of(msg.satype)
        index = _sa_index(msg, proto)
        sa = self._lookup(sa_ext.spi, index)
        return self._to_one(req, sa_message(sa, MsgType.GET, msg.seq, msg.pid, req.dialect))

    def _register(self, req: _Request) -> list[Effect]:
        """<base> -> <base, supported> to REGISTERED and the requester"""
        msg = req.msg
        state = self.clients[req.client]
        if msg.satype != SaType.UNSPEC:
            if msg.satype not in _REGISTRABLE:
                raise InvalidArgument(f"satype {msg.satype} cannot be registered")
            if msg.satype in state.registered:
                raise AlreadyExists(f"already registered for satype {msg.satype}")
        if msg.satype != SaType.UNSPEC:
            state.registered.add(msg.satype)

        def reply(dialect: Dialect) -> Message:
            return Message(MsgType.REGISTER, msg.satype, msg.seq, msg.pid, 0, 0, algorithms.supported_exts(dialect))

        # REGISTERED plus the requester; each socket gets its own dialect's lists.
        return self._to_registered(reply, requester=req.client)

    def _flush(self, req: _Request) -> list[Effect]:
        """<base> -> <base> to ALL: every SA of the satype's protocol (all for UNSPEC)."""
        msg = req.msg
        proto = None if msg.satype == SaType.UNSPEC else _proto_of(msg.satype)
        for sa in self.sad.of_proto(proto):
            self.sad.remove(sa)
        return self._to_all(req, Message(MsgType.FLUSH, msg.satype, msg.seq, msg.pid, 0, 0, ()))

    def _dump(self, req: _Request) -> list[Effect]:
        """<base> -> <base, SA, ...> * n, seq counting down to 0, to the requester."""
        msg = req.msg
        proto = None if msg.satype == SaType.UNSPEC else _proto_of(msg.satype)
        items = self.sad.snapshot(proto)
        flt = msg.get(ExtType.X_FILTER)
        if isinstance(flt, Filter):
            items = _filtered(items, flt)
        if not items:
            raise NoEntry("no SAD entries")
        return [Dump(req.client, items, _render_sa, msg.pid)]

    def _promisc_mode(self, req: _Request) -> list[Effect]:
        """<base> (satype 1 on, 0 off) -> the same message to ALL."""
        msg = req.msg
        if not msg.exts:
            if msg.satype not in (0, 1):
                raise InvalidArgument(f"X_PROMISC takes satype 0 or 1, not {msg.satype}")
            self.clients[req.client].promisc = msg.satype == 1
            self._promiscuous = sum(s.promisc for s in self.clients.values())
        return self._to_all(req, msg.replace(errno=0))

    def _acquire(self, req: _Request) -> list[Effect]:
        """SADB_ACQUIRE from a key manager: a failure report (header only) or, rarely,
        a request for an SA (reference §3.6)."""
        msg = req.msg
        if not msg.exts:
            if msg.seq and msg.errno:
                self.acquires.failed(msg.seq, req.now.mono)
            return []
        proto = _proto_of(msg.satype)
        index = _sa_index(msg, proto)
        if msg.proposal is None:
            raise InvalidArgument("PROPOSAL is required")
        if any(_index_matches(h.index, index) for h in self.sad.heads_for(index.proto, index.src, index.dst)):
            raise AlreadyExists("an SA index for these addresses exists")
        rec = self.acquires.trigger(index, req.now.mono, self.knobs.blockacq_count)
        return [] if rec is None else self._acquire_message(rec.seq, index, msg.satype, None, None)

    def _acquire_message(
        self, seq: int, index: SaIndex, satype: int, sp: SecPolicy | None, flow_sel: Selector | None
    ) -> list[Effect]:
        """SADB_ACQUIRE to the registered sockets (reference §7.4 step 4)."""
        src_ext, dst_ext = _host(ExtType.ADDRESS_SRC, index.src), _host(ExtType.ADDRESS_DST, index.dst)
        if sp is not None and flow_sel is not None and sp.selector.proto in (IpProto.TCP, IpProto.UDP):
            # The policy's TCP/UDP selector travels: its protocol, its port and prefix.
            sel = sp.selector
            proto = sel.proto
            src_ext = Address(ExtType.ADDRESS_SRC, _with_port(index.src, sel.src.port),
                              sel.src_len if sel.src.port else index.src.max_prefix, proto)
            dst_ext = Address(ExtType.ADDRESS_DST, _with_port(index.dst, sel.dst.port),
                              sel.dst_len if sel.dst.port else index.dst.max_prefix, proto)
        head: list[Extension] = [src_ext, dst_ext]
        if sp is not None:
            # key_setsadbxpolicy fills type, direction, id and priority only: the scope
            # byte stays 0 (which the linux dialect, where it is reserved, can carry).
            head.append(Policy(sp.type, sp.dir, sp.id, sp.priority))
        if index.reqid:
            head.append(Sa2(index.mode, 0, index.reqid))
        knobs = self.knobs

        def build(dialect: Dialect) -> Message:
            exts = list(head)
            combs = algorithms.proposal(index.proto, knobs, dialect)
            if combs:
                exts.append(Prop(32, combs))
            return Message(MsgType.ACQUIRE, satype, seq, 0, 0, 0, tuple(exts))

        return self._to_registered(build)
    # ------------------------------------------------------------ SPD handlers

    def _policy_from(self, req: _Request, *, for_delete: bool = False) -> tuple[Policy, Selector, Address, Address]:
        """The checks of key_spdadd/key_spddelete on <address(SD), policy>."""
        msg = req.msg
        pol = msg.policy
        src, dst = msg.src, msg.dst
        if pol is None or src is None or dst is None:
            raise InvalidArgument("ADDRESS_SRC, ADDRESS_DST and X_POLICY are required")
        if pol.dir not in _POLICY_DIRS:
            raise InvalidArgument(f"policy direction {pol.dir & 0xFF} is invalid")
        if pol.type not in _SPD_TYPES:
            raise InvalidArgument(f"policy type {pol.type} is not valid in the SPD")
        if pol.type == PolicyType.IPSEC and not pol.requests and not for_delete:
            raise InvalidArgument("an ipsec policy needs at least one request")
        s, d = src.addr, dst.addr
        if not isinstance(s, SockAddr) or not isinstance(d, SockAddr):
            raise InvalidArgument("selector addresses must be IPv4 or IPv6")
        if s.version != d.version:
            raise InvalidArgument("selector address families differ")
        if src.prefixlen > s.max_prefix or dst.prefixlen > d.max_prefix:
            raise InvalidArgument("selector prefix too long")
        if src.proto != dst.proto:
            raise InvalidArgument("selector protocols differ")
        sel = Selector(s, src.prefixlen, d, dst.prefixlen, src.proto)
        return pol, sel, src, dst

    def _requests(self, req: _Request, pol: Policy) -> tuple[IpsecRequest, ...]:
        """Validate the ipsecrequests (reference §6.3) and allocate unique reqids."""
        limit = _MAX_REQUESTS[req.dialect]
        out: list[IpsecRequest] = []
        for i, r in enumerate(pol.requests):
            # Counted as parsed, as key_msg2sp and parse_ipsecrequest do: the requests
            # before the one past the limit are checked first.
            if i >= limit[0]:
                raise PfkeyError(f"more than {limit[0]} ipsecrequests", errno=limit[1])
            if r.proto not in (IpProto.ESP, IpProto.AH, IpProto.IPCOMP):
                raise ProtocolNotSupported(f"ipsecrequest protocol {r.proto}")
            if r.mode not in (Mode.TRANSPORT, Mode.TUNNEL):
                raise InvalidArgument(f"ipsecrequest mode {r.mode & 0xFF} is invalid")
            if r.level not in _LEVELS:
                raise InvalidArgument(f"ipsecrequest level {r.level} is invalid")
            if r.mode == Mode.TUNNEL:
                if r.src is None or r.dst is None:
                    raise InvalidArgument("a tunnel-mode request needs its endpoints")
                if not isinstance(r.src, SockAddr) or not isinstance(r.dst, SockAddr) or \
                        r.src.version != r.dst.version:
                    raise InvalidArgument("tunnel endpoints must be of one family")
            elif r.src is not None and (not isinstance(r.src, SockAddr) or not isinstance(r.dst, SockAddr)):
                raise InvalidArgument("request endpoints must be IPv4 or IPv6")
            reqid = 0
            if r.level == Level.UNIQUE:
                reqid = r.reqid if 0 < r.reqid <= IPSEC_MANUAL_REQID_MAX else self._new_reqid()
            out.append(IpsecRequest(r.proto, r.mode, r.level, reqid, r.src, r.dst))
        return tuple(out)

    def _new_reqid(self) -> int:
        """key_newreqid: a counter from 0x4001; past 0xffffffff it restarts at 0x4000."""
        self._reqids = 0x4000 if self._reqids >= 0xFFFFFFFF else self._reqids + 1
        return self._reqids

    def _new_policy_id(self, dir_: int) -> int:
        """A unique non-zero id.  Like Linux's xfrm_gen_index, id % 8 is the direction
        less one, which Linux-built setkey relies on to tell socket policies apart;
        FreeBSD clients only need uniqueness."""
        for _ in range(self.knobs.spi_trycnt):
            self._policy_ids = (self._policy_ids + 1) % (1 << 29)
            pid = (self._policy_ids << 3) | ((dir_ - 1) & 7)
            if pid and pid not in self.spd.by_id:
                return pid
        raise NoBuffers("no free policy id")

    def _spdadd(self, req: _Request) -> list[Effect]:
        """<base, address(SD), policy, (lifetime(H))> -> <base, policy, (lifetime(H)),
        address(SD)> to ALL.  SPDUPDATE replaces; SPDADD and SPDSETIDX refuse a duplicate."""
        msg = req.msg
        pol, sel, src, dst = self._policy_from(req)
        old = self.spd.find(pol.dir, sel)
        if old is not None and msg.type != MsgType.X_SPDUPDATE:
            raise AlreadyExists("a policy with this selector exists")
        if old is None and len(self.spd) >= self.knobs.max_policies:
            raise NoBuffers(f"the SPD holds {len(self.spd)} policies (pfkeyd.max_policies)")
        requests = self._requests(req, pol) if pol.type == PolicyType.IPSEC else ()
        hard = msg.lifetime_hard
        sp = SecPolicy(
            self._new_policy_id(pol.dir), pol.dir, sel, pol.type, requests, pol.priority,
            self.spd.next_order(), req.now.mono, req.now.wall,
            hard.addtime if hard is not None else 0, hard.usetime if hard is not None else 0,
            PolicyScope.GLOBAL,
        )
        if old is not None:
            self.spd.remove(old)
        self.spd.insert(sp)
        self._schedule_policy(sp)
        # The reply carries the request's X_POLICY with the id filled in and the UNIQUE
        # reqids key_msg2sp rewrote; every other byte is echoed as sent (§3.12).
        echoed = tuple(IpsecRequest(r.proto, r.mode, r.level, s.reqid, r.src, r.dst) if r.level == Level.UNIQUE
                       else r for r, s in zip(pol.requests, requests)) if requests else pol.requests
        reply_pol = Policy(pol.type, pol.dir, sp.id, pol.priority, pol.scope, echoed)
        exts: list[Extension] = [reply_pol]
        if hard is not None:
            exts.append(hard)
        exts += [src, dst]
        return self._to_all(req, Message(msg.type, msg.satype, msg.seq, msg.pid, 0, 0, tuple(exts)))

    def _spddelete(self, req: _Request) -> list[Effect]:
        """<base, address(SD), policy(*)> -> <base, policy, address(SD)> to ALL."""
        msg = req.msg
        pol, sel, src, dst = self._policy_from(req, for_delete=True)
        sp = self.spd.find(pol.dir, sel)
        if sp is None:
            raise InvalidArgument("no such policy")  # FreeBSD: EINVAL (Linux: ENOENT)
        self.spd.remove(sp)
        reply_pol = Policy(pol.type, pol.dir, sp.id, pol.priority, pol.scope, pol.requests)
        return self._to_all(req, Message(msg.type, msg.satype, msg.seq, msg.pid, 0, 0, (reply_pol, src, dst)))

    def _policy_by_id(self, req: _Request) -> tuple[Policy, SecPolicy | None]:
        pol = req.msg.policy
        if pol is None:
            raise InvalidArgument("X_POLICY is required")
        return pol, self.spd.by_id.get(pol.id)

    def _spddelete2(self, req: _Request) -> list[Effect]:
        """<base, policy(*)> -> <base, policy(*)> to ALL: delete by id."""
        msg = req.msg
        pol, sp = self._policy_by_id(req)
        if sp is None:
            raise InvalidArgument(f"no policy with id {pol.id}")  # FreeBSD: EINVAL
        self.spd.remove(sp)
        return self._to_all(req, Message(msg.type, msg.satype, msg.seq, msg.pid, 0, 0, (pol,)))

    def _spdget(self, req: _Request) -> list[Effect]:
        """<base, policy(*)> -> <base, address(SD), policy, (lifetimes)> to ONE."""
        msg = req.msg
        pol, sp = self._policy_by_id(req)
        if sp is None:
            raise NoEntry(f"no policy with id {pol.id}")
        return self._to_one(req, sp_message(sp, MsgType.X_SPDGET, msg.seq, msg.pid, req.dialect))

    def _spdflush(self, req: _Request) -> list[Effect]:
        """<base> -> <base> to ALL: every policy goes."""
        msg = req.msg
        if msg.exts:
            raise InvalidArgument("X_SPDFLUSH takes no extensions")
        for sp in list(self.spd.by_id.values()):
            self.spd.remove(sp)
        self._policy_deadlines.clear()
        return self._to_all(req, Message(msg.type, msg.satype, msg.seq, msg.pid, 0, 0, ()))

    def _spddump(self, req: _Request) -> list[Effect]:
        """<base> -> <base, address(SD), policy, ...> * n, seq down to 0, to the requester.
        satype is FreeBSD's scope mask: 0 any, 1 global, 2 ifnet, 4 pcb; pfkeyd has
        only global policies."""
        msg = req.msg
        scope = msg.satype or 0xFF
        items = list(self.spd.ordered()) if scope & PolicyScope.GLOBAL else []
        if not items:
            raise NoEntry("no SPD entries")
        return [Dump(req.client, items, _render_sp, msg.pid, MsgType.X_SPDDUMP)]

    # ---------------------------------------------------------- policy timers

    def _schedule_policy(self, sp: SecPolicy) -> None:
        when = _policy_expiry(sp)
        if when is not None:
            heapq.heappush(self._policy_deadlines, (when, sp.id))

    def _expire_policies(self, now: Instant, limit: int | None = None) -> list[Effect]:
        """Remove policies past their lifetime or validtime; SPDEXPIRE to REGISTERED.
        At most ``limit`` due deadlines are taken on."""
        out: list[Effect] = []
        heap = self._policy_deadlines
        left = -1 if limit is None else limit
        while heap and heap[0][0] <= now.mono and left:
            left -= 1
            _, pid = heapq.heappop(heap)
            sp = self.spd.by_id.get(pid)
            if sp is None:
                continue
            when = _policy_expiry(sp)
            if when is None:
                continue
            if when > now.mono:
                heapq.heappush(heap, (when, pid))  # used since: the validtime moved on
                continue
            self.spd.remove(sp)
            out += self._to_registered(_spdexpire_message(sp))
        return out

    # ---------------------------------------------------------------- migrate

    def _migrate(self, req: _Request) -> list[Effect]:
        """SADB_X_MIGRATE (Linux pfkey_migrate, xfrm_migrate): <base, address(SD),
        policy(dir, pairs of old/new tunnel requests), (kmaddress)> moves the tunnel
        endpoints of the policy with that selector and the SAs of each old endpoint
        pair to the new one, then tells every socket in the same layout (seq 0, pid 0).
        The requester gets no other answer."""
        msg = req.msg
        src, dst, pol = msg.src, msg.dst, msg.policy
        if src is None or dst is None or pol is None:
            raise InvalidArgument("ADDRESS_SRC, ADDRESS_DST and X_POLICY are required")
        s, d = src.addr, dst.addr
        if not isinstance(s, SockAddr) or not isinstance(d, SockAddr) or s.version != d.version:
            raise InvalidArgument("selector addresses of one family are required")
        if pol.dir not in _POLICY_DIRS:
            raise InvalidArgument(f"policy direction {pol.dir & 0xFF} is invalid")
        pairs = list(zip(pol.requests[0::2], pol.requests[1::2]))
        if not pairs or len(pol.requests) % 2:
            raise InvalidArgument("X_MIGRATE needs pairs of old and new ipsecrequests")
        for old, new in pairs:
            for r in (old, new):
                if r.proto not in (IpProto.ESP, IpProto.AH, IpProto.IPCOMP) or r.mode not in (
                        Mode.TRANSPORT, Mode.TUNNEL, Mode.BEET):
                    raise InvalidArgument("an ipsecrequest of X_MIGRATE has a bad protocol or mode")
                if not isinstance(r.src, SockAddr) or not isinstance(r.dst, SockAddr):
                    raise InvalidArgument("each ipsecrequest of X_MIGRATE carries its endpoints")
            if old.proto != new.proto or old.mode != new.mode:
                raise InvalidArgument("an old and a new ipsecrequest must agree on protocol and mode")
        sp = self.spd.find(pol.dir, Selector(s, src.prefixlen, d, dst.prefixlen, src.proto))
        if sp is None:
            raise NoEntry("no policy with this selector and direction")
        requests = list(sp.requests)
        moves: list[tuple[SaIndex, SockAddr, SockAddr]] = []
        for old, new in pairs:
            assert isinstance(old.src, SockAddr) and isinstance(old.dst, SockAddr)
            assert isinstance(new.src, SockAddr) and isinstance(new.dst, SockAddr)
            for i, r in enumerate(requests):
                if (r.proto, r.mode, r.src, r.dst) == (old.proto, old.mode, old.src, old.dst) and (
                        not old.reqid or r.reqid == old.reqid):
                    requests[i] = IpsecRequest(r.proto, r.mode, r.level, r.reqid, new.src, new.dst)
            moves.append((SaIndex(old.proto, old.mode, old.reqid, old.src.without_port(), old.dst.without_port()),
                          new.src.without_port(), new.dst.without_port()))
        self.spd.replace(sp, replace(sp, requests=tuple(requests)))
        for index, new_src, new_dst in moves:
            for head in self.sad.heads_for(index.proto, index.src, index.dst):
                if head.index.mode != index.mode or (index.reqid and head.index.reqid != index.reqid):
                    continue
                for sa in [*head.larval.values(), *head.alive.values()]:
                    moved = sa.evolve(index=SaIndex(sa.index.proto, sa.index.mode, sa.index.reqid, new_src, new_dst))
                    self.sad.replace(sa, moved)
                    self._schedule(moved)
        note = Message(MsgType.X_MIGRATE, msg.satype, 0, 0, 0, 0,
                       tuple(e for e in msg.exts if e.exttype in _MIGRATE_EXTS))
        return self._to_all(None, note)

    # ---------------------------------------------------------------- lookup

    def lookup(self, dir_: int, flow: Flow, now: Instant) -> tuple[Decision, list[Effect]]:
        """Decide a flow as the packet path will (reference §6.2, §6.4, §7.4).

        Finds the policy, then for each ipsecrequest the SA that output would use;
        a request without a usable SA triggers a (paced) ACQUIRE.  Returns the
        decision and the effects (ACQUIREs) to carry out.
        """
        sp = self.spd.lookup(dir_, flow)
        if sp is None:
            action = "discard" if self.knobs.def_policy == 0 else "pass"
            return Decision(action, None, default=True), []
        sp.touch(now.mono, now.wall)
        if sp.type != PolicyType.IPSEC:
            return Decision("discard" if sp.type == PolicyType.DISCARD else "pass", sp), []
        effects: list[Effect] = []
        outcomes: list[RequestOutcome] = []
        held = False
        # The packet's addresses as each request of the bundle finds them: a request
        # whose tunnel was applied leaves the outer header, and the later requests are
        # resolved against it (FreeBSD: ipsec_process_done -> ipsec4_perform_request
        # (idx + 1) -> ipsec4_allocsa reads the mbuf's IP header; Linux:
        # xfrm_tmpl_resolve_one moves daddr/saddr to a found tunnel state's).  A
        # request bypassed at level use leaves the packet, and the addresses, as
        # they were.
        src, dst = flow.src.without_port(), flow.dst.without_port()
        for r in sp.requests:
            level = self._level(r, flow.src.version)
            index = _request_index(r, src, dst)
            if held and dir_ != Direction.INBOUND:
                # An earlier request needed an SA it has not got: the packet was
                # dropped there, and neither kernel looks at the later requests.
                outcomes.append(RequestOutcome(r, level, index, None, reached=False))
                continue
            sa = self._usable_sa(index)
            acquire_seq = recipients = 0
            if dir_ == Direction.INBOUND:
                # A clear packet that a REQUIRE/UNIQUE request should have protected is
                # dropped (ipsec_in_reject); inbound traffic never triggers an ACQUIRE.
                held = held or level in (Level.REQUIRE, Level.UNIQUE)
            elif sa is None:
                # key_allocsa_policy -> key_acquire(saidx): the ACQUIRE names this
                # request's SA index, so a later request's carries the outer addresses.
                rec = self.acquires.trigger(index, now.mono, self.knobs.blockacq_count)
                if rec is not None:
                    acquire_seq = rec.seq
                    satype = PROTO_SATYPE[index.proto]
                    sent = self._acquire_message(rec.seq, index, satype, sp, sp.selector)
                    recipients = len({c for e in sent if isinstance(e, Send) and not e.promisc for c in e.to})
                    effects += sent
                if level in (Level.REQUIRE, Level.UNIQUE):
                    held = True
            if sa is not None and r.mode == Mode.TUNNEL:
                src, dst = index.src, index.dst
            outcomes.append(RequestOutcome(r, level, index, sa, acquire_seq, recipients))
        self._count(effects)
        action = "discard" if held else "ipsec"
        return Decision(action, sp, requests=tuple(outcomes), held=held), effects

    def _level(self, r: IpsecRequest, version: int) -> int:
        """ipsec_get_reqlevel: DEFAULT resolves through the *_deflev knobs; a knob
        outside 1..3 means REQUIRE; IPComp is always USE."""
        if r.proto == IpProto.IPCOMP:
            return Level.USE
        if r.level != Level.DEFAULT:
            return r.level
        table = self._deflev_table()
        level = table.get((version, r.proto, r.mode), Level.REQUIRE)
        return level if level in (Level.USE, Level.REQUIRE, Level.UNIQUE) else Level.REQUIRE

    def _deflev_table(self) -> dict[tuple[int, int, int], int]:
        """(IP version, protocol, mode) -> the *_deflev knob's level, per knobs value."""
        k = self.knobs
        cached = self._deflev
        if cached is not None and cached[0] is k:
            return cached[1]
        table: dict[tuple[int, int, int], int] = {
            (4, IpProto.ESP, Mode.TRANSPORT): k.esp_trans_deflev, (4, IpProto.ESP, Mode.TUNNEL): k.esp_net_deflev,
            (4, IpProto.AH, Mode.TRANSPORT): k.ah_trans_deflev, (4, IpProto.AH, Mode.TUNNEL): k.ah_net_deflev,
            (6, IpProto.ESP, Mode.TRANSPORT): k.esp6_trans_deflev, (6, IpProto.ESP, Mode.TUNNEL): k.esp6_net_deflev,
            (6, IpProto.AH, Mode.TRANSPORT): k.ah6_trans_deflev, (6, IpProto.AH, Mode.TUNNEL): k.ah6_net_deflev,
        }
        self._deflev = (k, table)
        return table

    def _usable_sa(self, index: SaIndex) -> SecAssoc | None:
        """key_allocsa_policy: an alive SA of a matching SA index; the oldest with
        net.key.preferred_oldsa (the default), else the newest.  Never LARVAL."""
        best: SecAssoc | None = None
        oldest = bool(self.knobs.preferred_oldsa)
        for head in self.sad.heads_for(index.proto, index.src, index.dst):
            if not head.alive or not _index_matches(head.index, index):
                continue
            values = head.alive.values()
            sa = next(iter(values)) if oldest else next(reversed(values))
            if best is None or (sa.created < best.created if oldest else sa.created > best.created):
                best = sa
        return best



def _x1_reply(msg: Message) -> Message:
    """key_getmsgbuf_x1: the request header and these of its extensions, in this order."""
    index = msg._by_type()
    return Message(msg.type, msg.satype, msg.seq, msg.pid, 0, 0, tuple([index[t] for t in _X1_EXTS if t in index]))


def _index_matches(sah: SaIndex, req: SaIndex) -> bool:
    """key_cmpsaidx(CMP_MODE_REQID): protocol and addresses; the mode if the SA
    head's is not ANY; the reqid if the request's is not 0."""
    if not _same_head(sah, req):
        return False
    if sah.mode not in (Mode.ANY, req.mode):
        return False
    return not (req.reqid and sah.reqid != req.reqid)


def _identities(msg: Message) -> None:
    """Identities must come in pairs of one type; they are then discarded (§4.6)."""
    src, dst = msg.get(ExtType.IDENTITY_SRC), msg.get(ExtType.IDENTITY_DST)
    if (src is None) != (dst is None):
        raise InvalidArgument("IDENTITY_SRC and IDENTITY_DST must come together")
    if src is not None and dst is not None and getattr(src, "idtype", None) != getattr(dst, "idtype", None):
        raise InvalidArgument("identities of different types")


def _natt(msg: Message, proto: int) -> NatT | None:
    """NAT-T applies to ESP SAs with all of TYPE, SPORT and DPORT (§4.15)."""
    t, sport, dport = msg.nat_t_type, msg.nat_t_sport, msg.nat_t_dport
    if proto != IpProto.ESP or t is None or sport is None or dport is None:
        return None
    if t.type != 2:
        raise InvalidArgument(f"NAT-T type {t.type} is not UDP_ENCAP_ESPINUDP")
    if not sport.port or not dport.port:
        raise InvalidArgument("NAT-T ports must not be 0")
    src, dst = _addresses(msg)
    oa: list[SockAddr | None] = []
    for exttype, own in ((ExtType.X_NAT_T_OAI, src), (ExtType.X_NAT_T_OAR, dst)):
        a = msg.address(exttype)
        if a is None:
            oa.append(None)
            continue
        addr = _inet(a, "NAT-T original address")
        if addr.version != 4:
            raise InvalidArgument("NAT-T original addresses are IPv4 only")
        oa.append(None if addr == _inet(own, "address") else addr)
    return NatT(t.type, sport.port, dport.port, oa[0], oa[1])


def _hard_due(sa: SecAssoc, now: float) -> bool:
    """The hard add-time or use-time limit of ``sa`` has been reached at ``now``."""
    lt = sa.hard
    if lt is None:
        return False
    if lt.addtime and now >= sa.created + lt.addtime:
        return True
    return bool(lt.usetime and sa.first_used is not None and now >= sa.first_used + lt.usetime)


def _soft_due(sa: SecAssoc, now: float) -> bool:
    """The soft add-time or use-time limit of ``sa`` has been reached at ``now``."""
    lt = sa.soft
    if lt is None:
        return False
    if lt.addtime and now >= sa.created + lt.addtime:
        return True
    return bool(lt.usetime and sa.first_used is not None and now >= sa.first_used + lt.usetime)


def _over(limit: Lifetime | None, sa: SecAssoc) -> bool:
    if limit is None:
        return False
    return bool((limit.bytes and sa.bytes > limit.bytes) or (limit.allocations and sa.packets > limit.allocations))


def _filtered(items: list[SecAssoc], flt: Filter) -> list[SecAssoc]:
    """Linux SADB_X_EXT_FILTER: SAs whose addresses fall in both prefixes."""
    if flt.splen >= 128 or flt.dplen >= 128:
        raise InvalidArgument("filter prefix lengths must be below 128")
    import ipaddress

    if flt.family not in (4, 6) or isinstance(flt.saddr, bytes) or isinstance(flt.daddr, bytes):
        return []
    snet = ipaddress.ip_network(f"{flt.saddr}/{min(flt.splen, flt.saddr.max_prefixlen)}", strict=False)
    dnet = ipaddress.ip_network(f"{flt.daddr}/{min(flt.dplen, flt.daddr.max_prefixlen)}", strict=False)
    return [sa for sa in items if sa.index.src.ip in snet and sa.index.dst.ip in dnet]


# --------------------------------------------------------------------------- SPD pieces

_SPD_TYPES = frozenset({PolicyType.DISCARD, PolicyType.NONE, PolicyType.IPSEC})
_LEVELS = frozenset({Level.DEFAULT, Level.USE, Level.REQUIRE, Level.UNIQUE})
#: What SPDADD accepts as a direction: in and out, and Linux's fwd.  The codec gives a
#: freebsd socket's wire 3 an UNKNOWN value, so fwd can only come from a linux socket.
_POLICY_DIRS = frozenset({Direction.INBOUND, Direction.OUTBOUND, Direction.FWD})
#: The most ipsecrequests a policy may have, and the errno beyond (IPSEC_MAXREQ; XFRM_MAX_DEPTH).
_MAX_REQUESTS = {Dialect.FREEBSD: (4, E.EINVAL), Dialect.LINUX: (6, E.ELOOP)}


@record
class RequestOutcome:
    """What one ipsecrequest of the matching policy found."""

    request: IpsecRequest
    level: int
    index: SaIndex
    sa: SecAssoc | None
    acquire_seq: int = 0  # the seq of the ACQUIRE sent now (0: none sent)
    acquire_recipients: int = 0  # how many registered key managers it went to
    #: False for an outbound request after one that dropped the packet (level
    #: require or unique, no SA): no SA was looked for and no ACQUIRE sent.
    reached: bool = True


@record
class Decision:
    """The outcome of a lookup: ``action`` is "ipsec", "pass" or "discard"."""

    action: str
    policy: SecPolicy | None
    default: bool = False
    requests: tuple[RequestOutcome, ...] = ()
    held: bool = False


def _with_port(sa: SockAddr, port: int) -> SockAddr:
    return SockAddr(sa.ip, port, sa.flowinfo, sa.scope_id)


def _request_index(r: IpsecRequest, src: SockAddr, dst: SockAddr) -> SaIndex:
    """The SA index a request needs for a packet from ``src`` to ``dst`` (without
    ports): the tunnel endpoints in tunnel mode, the packet's addresses in transport
    mode (ipsec4_allocsa, ipsec_setup_saidx); reqid for unique."""
    if r.mode == Mode.TUNNEL and isinstance(r.src, SockAddr) and isinstance(r.dst, SockAddr):
        src, dst = r.src.without_port(), r.dst.without_port()
    reqid = r.reqid if r.level == Level.UNIQUE else 0
    return SaIndex(r.proto, r.mode, reqid, src, dst)


def _policy_expiry(sp: SecPolicy) -> float | None:
    """When a policy's lifetime or validtime runs out (reference §6.6)."""
    times = []
    if sp.lifetime:
        times.append(sp.created + sp.lifetime)
    if sp.validtime:
        times.append((sp.last_used if sp.last_used is not None else sp.created) + sp.validtime)
    return min(times) if times else None


def _selector_exts(sp: SecPolicy) -> tuple[Address, Address]:
    sel = sp.selector
    return (Address(ExtType.ADDRESS_SRC, sel.src, sel.src_len, sel.proto),
            Address(ExtType.ADDRESS_DST, sel.dst, sel.dst_len, sel.proto))


def _policy_ext(sp: SecPolicy) -> Policy:
    return Policy(sp.type, sp.dir, sp.id, sp.priority, sp.scope, sp.requests)


def _sp_lifetimes(sp: SecPolicy, dialect: Dialect = Dialect.FREEBSD) -> tuple[Lifetime, Lifetime]:
    # key_spdadd starts lastused at the creation time, so an unused policy reports
    # it; Linux's xfrm policy has no use time until a packet matches.
    never = sp.created_wall if dialect is Dialect.FREEBSD else 0
    last_used = sp.last_used_wall if sp.last_used is not None else never
    return (Lifetime(ExtType.LIFETIME_CURRENT, 0, 0, sp.created_wall, last_used),
            Lifetime(ExtType.LIFETIME_HARD, 0, 0, sp.lifetime, sp.validtime))


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


def _render_sp(sp: SecPolicy, dialect: Dialect, seq: int, pid: int) -> bytes:
    return encode(sp_message(sp, MsgType.X_SPDDUMP, seq, pid, dialect), dialect)


def _spdexpire_message(sp: SecPolicy) -> Callable[[Dialect], Message]:
    """SADB_X_SPDEXPIRE (reference §6.6): CURRENT, HARD, SRC, DST, X_POLICY; seq, pid and
    reserved 0 (key_spdexpire writes no reference count)."""

    def build(dialect: Dialect) -> Message:
        src, dst = _selector_exts(sp)
        current, hard = _sp_lifetimes(sp)
        pol = _policy_ext(sp) if dialect is Dialect.FREEBSD else Policy(sp.type, sp.dir, sp.id, sp.priority, 0,
                                                                        sp.requests)
        return Message(MsgType.X_SPDEXPIRE, SaType.UNSPEC, 0, 0, 0, 0, (current, hard, src, dst, pol))

    return build


HANDLERS: dict[int, Handler] = {
    MsgType.GETSPI: KeyEngine._getspi,
    MsgType.UPDATE: KeyEngine._update,
    MsgType.ADD: KeyEngine._add,
    MsgType.DELETE: KeyEngine._delete,
    MsgType.GET: KeyEngine._get,
    MsgType.ACQUIRE: KeyEngine._acquire,
    MsgType.REGISTER: KeyEngine._register,
    MsgType.FLUSH: KeyEngine._flush,
    MsgType.DUMP: KeyEngine._dump,
    MsgType.X_PROMISC: KeyEngine._promisc_mode,
    MsgType.X_SPDUPDATE: KeyEngine._spdadd,
    MsgType.X_SPDADD: KeyEngine._spdadd,
    MsgType.X_SPDSETIDX: KeyEngine._spdadd,
    MsgType.X_SPDDELETE: KeyEngine._spddelete,
    MsgType.X_SPDDELETE2: KeyEngine._spddelete2,
    MsgType.X_SPDGET: KeyEngine._spdget,
    MsgType.X_SPDFLUSH: KeyEngine._spdflush,
    MsgType.X_SPDDUMP: KeyEngine._spddump,
    MsgType.X_MIGRATE: KeyEngine._migrate,
}

