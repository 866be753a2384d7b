"""The hot path: ADD and SPDADD requests of a shape already seen, served from their bytes.

Theory of operation
-------------------
``setkey -f`` scripts and IKE daemons send ADDs and SPDADDs in long runs that differ
only in a few fields: seq and pid in the header, the IP addresses, and for an ADD the
SPI and the key bytes.  Everything the generic path (decode, ``KeyEngine.handle``,
encode) decides about such a request -- every check of the decoder, of key_parse, of
key_setsaval or key_spdadd, every value of the new record but those fields, every
byte of the reply but those fields -- is a function of the request's other bytes,
its *shape*.  The generic path reads the variable fields in only a few places, and
the hot path makes the same checks there, by calling the very admission steps the
generic handlers call (:class:`pfkeyd.engine.core.EngineCore`: ``check_spi``,
``check_sa_room``, ``insert_sa``, ``check_policy_room``, ``new_policy_id``,
``insert_policy``), so that a new rule is written once:

* ADD: the SPI must not be reserved (<= 255) nor in use, the SAD must have room, and
  an ACQUIRE with the request's seq is completed (seq 0 completes none);
* SPDADD: no policy may have the same selector, the SPD must have room; the new
  policy takes the next id and the next insertion order.

So the first requests of each shape take the generic path.  The second time a shape
succeeds there, the engine derives a template from it and checks the template against
what the generic path just did: the record the template builds from the request must
equal the record stored, and the reply it cuts out of the request must equal, byte
for byte, the reply the codec encoded.  Only a template that passes is kept; a shape
that fails is remembered as generic-only.  A later request of a kept shape costs a
few slices, the checks above, one record and its insertion.

The hot path declines (returns None, having changed nothing) whenever anything the
template cannot see matters: a socket of another dialect or a promiscuous socket
would need its own copy, a check above fails, the message is longer than
``pfkeyd.max_message_size``.  The generic path then answers as always.  Templates
are dropped when a knob changes, and tests run random request streams through both
paths and compare every datagram and the tables.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from operator import itemgetter

from pfkeyd.effects import ClientId, Effect, Instant, SendEncoded
from pfkeyd.engine.core import EngineCore
from pfkeyd.engine.extensions import EXTENSIONS
from pfkeyd.engine.messages import X1_EXTS
from pfkeyd.errors import PfkeyError
from pfkeyd.record import record
from pfkeyd.sad import SaIndex, SecAssoc
from pfkeyd.spd import SecPolicy, Selector
from pfkeyd.wire import (
    Dialect,
    ExtType,
    IpsecRequest,
    Key,
    Level,
    Lifetime,
    Message,
    MsgType,
    SaState,
    SaType,
    SockAddr,
    encode,
)

__all__ = ["HotPath"]

_EXT_HDR = struct.Struct("=HH")
_SEQ_PID = struct.Struct("=II")
_POLICY_ID = struct.Struct("=I")
_HOT_SATYPES = frozenset({SaType.ESP, SaType.AH})
_KEYS = frozenset({ExtType.KEY_AUTH, ExtType.KEY_ENCRYPT})
# Read per ADD: bound once (an Enum member read through its class costs about ten
# times a global; bench/README.md).
_MATURE, _KEY_AUTH, _KEY_ENCRYPT = SaState.MATURE, ExtType.KEY_AUTH, ExtType.KEY_ENCRYPT
#: Per message type: the extensions a request of the hot path may carry (each at
#: most once), and the reply's extensions in the order the generic path writes them
#: (key_getmsgbuf_x1 for ADD; keys are never among them).  Other extensions
#: (identities, NAT-T, SA_REPLAY, security contexts, ...) always take the generic
#: path.  What a request must carry is the one table's (pfkeyd.engine.extensions).
_SERVED = frozenset(
    {
        ExtType.SA,
        ExtType.X_SA2,
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
        ExtType.KEY_AUTH,
        ExtType.KEY_ENCRYPT,
        ExtType.LIFETIME_HARD,
        ExtType.LIFETIME_SOFT,
    }
)
_HOT_SHAPES: dict[int, tuple[frozenset[ExtType], tuple[ExtType, ...]]] = {
    MsgType.ADD: (_SERVED, tuple(ExtType(t) for t in X1_EXTS if t in _SERVED and t not in _KEYS)),
    MsgType.X_SPDADD: (
        frozenset({ExtType.X_POLICY, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST, ExtType.LIFETIME_HARD}),
        (ExtType.X_POLICY, ExtType.LIFETIME_HARD, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST),
    ),
}
#: An address extension's length -> where the IP address lies after the 8-byte
#: sadb_address header: sockaddr_in (len/family, port, address, zero) and
#: sockaddr_in6 (len/family, port, flowinfo, address, scope id), in both dialects.
_ADDRESS_AT = {24: (4, 4), 40: (8, 16)}
_POLICY_ID_AT = 8  # sadb_x_policy_id, after len, exttype, type, dir and a reserved byte
#: How many shapes are remembered (kept templates, refusals and first sightings).
_MAX_SHAPES = 1024
_MAX_ADDRESSES = 8192

Headers = tuple[tuple[int, int], ...]
#: The parts of a sockaddr that are not the IP address: port, flowinfo, scope id.
Tail = tuple[int, int, int]


class _Layout:
    """Where the variable fields lie in the requests of one message type and one
    sequence of extension headers, and the shapes of that layout seen so far.
    ``fixed`` cuts out everything but the variable fields: the header and every
    extension header are among what it keeps, so a request whose fixed bytes equal a
    learned shape's has this layout."""

    __slots__ = (
        "dst",
        "fixed",
        "keys",
        "kind",
        "policy_id_at",
        "reply",
        "reply_after",
        "seen",
        "size",
        "spi_at",
        "src",
        "templates",
    )

    def __init__(self, kind: int, size: int, fixed: list[slice], src: slice, dst: slice) -> None:
        self.kind = kind
        self.size = size
        self.fixed: Callable[[bytes], tuple[bytes, ...]] = itemgetter(*fixed, slice(0, 0))  # always a tuple
        self.src = src
        self.dst = dst
        self.spi_at = 0  # ADD: where the SPI lies
        self.keys: dict[ExtType, tuple[int, int]] = {}  # ADD: (offset, length) of each key extension
        self.policy_id_at = 0  # SPDADD: where the policy id lies
        #: The request's bytes that make the reply after the header, in order; an
        #: SPDADD's policy scope and new policy id go between ``reply`` and ``reply_after``.
        self.reply: tuple[slice, ...] = ()
        self.reply_after: tuple[slice, ...] = ()
        self.templates: dict[tuple[bytes, ...], _SaTemplate | _PolicyTemplate | None] = {}
        self.seen: set[tuple[bytes, ...]] = set()  # shapes that succeeded once, generically


@record
class _SaTemplate:
    """What the generic path decided for one ADD shape."""

    head: bytes  # the reply's first 8 header bytes (version ... reserved)
    satype: int
    proto: int
    mode: int
    reqid: int
    src_tail: Tail
    dst_tail: Tail
    auth: int
    encrypt: int
    flags: int
    replay: int
    replay_window: int
    key_auth: tuple[slice, int] | None  # where the key lies in the request, and its bits
    key_encrypt: tuple[slice, int] | None
    hard: Lifetime | None
    soft: Lifetime | None


@record
class _PolicyTemplate:
    """What the generic path decided for one SPDADD shape."""

    head: bytes
    scope_byte: bytes  # the reply's sadb_x_policy_scope (FreeBSD fills it in; Linux echoes it)
    dir: int
    type: int
    requests: tuple[IpsecRequest, ...]
    priority: int
    lifetime: int
    validtime: int
    scope: int
    src_len: int
    dst_len: int
    proto: int
    src_tail: Tail
    dst_tail: Tail


def _headers(data: bytes) -> Headers | None:
    """The (units, wire type) of each extension, or None if they do not tile the message."""
    size = len(data)
    off = 16
    out = []
    unpack = _EXT_HDR.unpack_from
    while off + 4 <= size:
        units, wire = unpack(data, off)
        if not units:
            return None
        out.append((units, wire))
        off += units * 8
    return tuple(out) if off == size else None


def _layout(kind: int, dialect: Dialect, headers: Headers) -> _Layout | None:
    """The layout of a request with these extensions, if the hot path can serve it."""
    allowed, reply_order = _HOT_SHAPES[kind]
    required = EXTENSIONS[kind].required
    from_wire = dialect.spec.ext.from_wire
    at: dict[ExtType, tuple[int, int]] = {}
    off = 16
    for units, wire in headers:
        canonical = from_wire.get(wire)
        size = units * 8
        if canonical is None or canonical not in allowed or canonical in at:
            return None
        at[ExtType(canonical)] = (off, size)
        off += size
    if any(t not in at for t in required):
        return None
    variable = [(8, 16)]  # seq, pid
    addresses = []
    for which in (ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST):
        a_off, a_len = at[which]
        where = _ADDRESS_AT.get(a_len)
        if where is None:
            return None
        start = a_off + 8 + where[0]
        addresses.append(slice(start, start + where[1]))
        variable.append((start, start + where[1]))
    if kind == MsgType.ADD:
        sa_off, sa_len = at[ExtType.SA]
        if sa_len != 16:
            return None
        variable.append((sa_off + 4, sa_off + 8))
        keys = {}
        for which in (ExtType.KEY_AUTH, ExtType.KEY_ENCRYPT):
            if which in at:
                k_off, k_len = at[which]
                keys[which] = (k_off, k_len)
                variable.append((k_off + 8, k_off + k_len))
    elif at[ExtType.X_POLICY][1] < 16:
        return None
    variable.sort()
    fixed = []
    pos = 0
    for start, end in variable:
        if start > pos:
            fixed.append(slice(pos, start))
        pos = end
    if pos < off:
        fixed.append(slice(pos, off))
    layout = _Layout(kind, off, fixed, addresses[0], addresses[1])
    reply = [slice(at[t][0], at[t][0] + at[t][1]) for t in reply_order if t in at]
    if kind == MsgType.ADD:
        layout.spi_at = at[ExtType.SA][0] + 4
        layout.keys = keys
        layout.reply = tuple(reply)
    else:
        policy = reply[0]  # the policy is the reply's first extension
        layout.policy_id_at = policy.start + _POLICY_ID_AT
        layout.reply = (slice(policy.start, layout.policy_id_at - 1),)
        layout.reply_after = (slice(layout.policy_id_at + 4, policy.stop), *reply[1:])
    return layout


class HotPath:
    """The learned shapes of one engine, and the hot path that uses them."""

    def __init__(self) -> None:
        self._layouts: dict[tuple[int, Dialect, Headers], _Layout | None] = {}
        #: (dialect, message size) -> the layouts of that size: where the hot path looks
        self._by_size: dict[tuple[Dialect, int], list[_Layout]] = {}
        self._shapes = 0  # shapes remembered, over all layouts
        self._addresses: dict[tuple[bytes, Tail], SockAddr] = {}
        self.served = 0  # requests answered by the hot path (a statistic for tests and benchmarks)

    def clear(self) -> None:
        """Forget every shape (a knob changed: what the generic path decides may differ)."""
        self._layouts.clear()
        self._by_size.clear()
        self._shapes = 0

    # ------------------------------------------------------------------ serving

    def serve(
        self, engine: EngineCore, client: ClientId, dialect: Dialect, data: bytes, now: Instant
    ) -> list[Effect] | None:
        """Answer a request of a known shape, or return None having changed nothing."""
        layouts = self._by_size.get((dialect, len(data)))
        if layouts is None:
            return None
        for layout in layouts:
            template = layout.templates.get(layout.fixed(data))
            if template is not None:
                break
        else:
            return None
        if len(data) > engine.knobs.max_message_size:
            return None
        to = engine.same_dialect_audience(client, dialect)
        if to is None:
            return None
        if isinstance(template, _SaTemplate):
            reply = self._add(engine, layout, template, data, now)
        else:
            reply = self._spdadd(engine, layout, template, data, now)
        if reply is None:
            return None
        stats = engine.stats
        stats.note_in(layout.kind)
        stats.note_out(layout.kind, len(to))
        self.served += 1
        return [SendEncoded(to[0], to[1:], reply, layout.kind)]

    def _add(self, engine: EngineCore, layout: _Layout, t: _SaTemplate, data: bytes, now: Instant) -> bytes | None:
        spi = int.from_bytes(data[layout.spi_at : layout.spi_at + 4], "big")
        try:
            # The generic ADD's checks on the fields that vary: the template holds
            # everything else, checked when it was learned.
            engine.check_spi(t.proto, spi)
            engine.check_sa_room()
        except PfkeyError:
            return None  # the generic path answers
        engine.insert_sa(self._sa(t, layout, spi, engine, data, now))
        return _sa_reply(t, layout, data)

    def _spdadd(
        self, engine: EngineCore, layout: _Layout, t: _PolicyTemplate, data: bytes, now: Instant
    ) -> bytes | None:
        spd = engine.spd
        selector = self._selector(t, layout, data)
        if spd.find(t.dir, selector) is not None:
            return None  # SPDADD's EEXIST, or an SPDUPDATE's replacement: the generic path's
        try:
            engine.check_policy_room(None)
            policy_id = engine.new_policy_id(t.dir)
        except PfkeyError:
            return None  # the generic path answers
        sp = self._policy(t, selector, policy_id, spd.next_order(), now.mono, now.wall)
        engine.insert_policy(sp)
        return _policy_reply(t, layout, data, policy_id)

    def _sa(self, t: _SaTemplate, layout: _Layout, spi: int, engine: EngineCore, data: bytes, now: Instant) -> SecAssoc:
        seq, pid = _SEQ_PID.unpack_from(data, 8)
        ka, ke = t.key_auth, t.key_encrypt
        return SecAssoc(
            spi,
            t.satype,
            SaIndex(
                t.proto,
                t.mode,
                t.reqid,
                self._address(data[layout.src], t.src_tail),
                self._address(data[layout.dst], t.dst_tail),
            ),
            _MATURE,
            t.auth,
            t.encrypt,
            t.flags,
            t.replay,
            t.replay_window,
            None if ka is None else Key(_KEY_AUTH, data[ka[0]], ka[1]),
            None if ke is None else Key(_KEY_ENCRYPT, data[ke[0]], ke[1]),
            seq,
            engine.shared(pid),
            now.mono,
            engine.shared(now.wall),
            t.hard,
            t.soft,
        )

    @staticmethod
    def _policy(
        t: _PolicyTemplate, selector: Selector, policy_id: int, order: int, mono: float, wall: int
    ) -> SecPolicy:
        return SecPolicy(
            policy_id,
            t.dir,
            selector,
            t.type,
            t.requests,
            t.priority,
            order,
            mono,
            wall,
            t.lifetime,
            t.validtime,
            t.scope,
        )

    def _selector(self, t: _PolicyTemplate, layout: _Layout, data: bytes) -> Selector:
        return Selector(
            self._address(data[layout.src], t.src_tail),
            t.src_len,
            self._address(data[layout.dst], t.dst_tail),
            t.dst_len,
            t.proto,
        )

    def _address(self, packed: bytes, tail: Tail) -> SockAddr:
        """The SockAddr of an SA index or a selector; equal addresses share one value."""
        key = (packed, tail)
        found = self._addresses.get(key)
        if found is None:
            if len(self._addresses) >= _MAX_ADDRESSES:
                self._addresses.clear()
            ip = IPv4Address(packed) if len(packed) == 4 else IPv6Address(packed)
            found = self._addresses[key] = SockAddr(ip, *tail)
        return found

    # ----------------------------------------------------------------- learning

    def _layout_of(self, kind: int, dialect: Dialect, data: bytes) -> _Layout | None:
        headers = _headers(data)
        if headers is None:
            return None
        key = (kind, dialect, headers)
        if key in self._layouts:
            return self._layouts[key]
        if len(self._layouts) >= _MAX_SHAPES:
            self.clear()
        layout = self._layouts[key] = _layout(kind, dialect, headers)
        if layout is not None:
            self._by_size.setdefault((dialect, layout.size), []).append(layout)
        return layout

    def learn(
        self, engine: EngineCore, dialect: Dialect, data: bytes, stored: SecAssoc | SecPolicy, answer: Message
    ) -> None:
        """The generic path has just stored ``stored`` (an SA for an ADD, a policy for
        an SPDADD) for ``data`` and answered ``answer`` (keyless) to every socket: keep
        a template for the shape the second time it gets here, if the template gives
        exactly these results."""
        kind = data[1]
        if kind not in _HOT_SHAPES or (kind == MsgType.ADD and data[3] not in _HOT_SATYPES):
            return
        layout = self._layout_of(kind, dialect, data)
        if layout is None:
            return
        shape = layout.fixed(data)
        if shape in layout.templates:
            return
        if self._shapes >= _MAX_SHAPES:
            self.clear()
            return
        if shape not in layout.seen:
            layout.seen.add(shape)
            self._shapes += 1
            return
        layout.seen.discard(shape)
        reply = encode(answer, dialect)
        template: _SaTemplate | _PolicyTemplate | None
        if isinstance(stored, SecAssoc):
            template = _sa_template(layout, stored, reply)
            if template is not None and (
                self._sa(template, layout, stored.spi, engine, data, Instant(stored.created, stored.created_wall))
                != stored
                or _sa_reply(template, layout, data) != reply
            ):
                template = None
        else:
            template = _policy_template(stored, reply)
            if template is not None:
                sel = self._selector(template, layout, data)
                rebuilt = self._policy(template, sel, stored.id, stored.order, stored.created, stored.created_wall)
                if rebuilt != stored or _policy_reply(template, layout, data, stored.id) != reply:
                    template = None
        layout.templates[shape] = template


def _tail(sa: SockAddr) -> Tail:
    return (sa.port, sa.flowinfo, sa.scope_id)


def _sa_template(layout: _Layout, sa: SecAssoc, reply: bytes) -> _SaTemplate | None:
    """The template that would rebuild ``sa`` and ``reply``; checked by the caller."""
    if sa.natt is not None or sa.usage is not None or sa.version:
        return None
    keys: dict[ExtType, tuple[slice, int]] = {}
    for exttype, key in ((ExtType.KEY_AUTH, sa.key_auth), (ExtType.KEY_ENCRYPT, sa.key_encrypt)):
        where = layout.keys.get(exttype)
        if (where is None) != (key is None):
            return None
        if where is not None and key is not None:
            off, length = where
            # Key.decode's bytes: ceil(bits / 8), or what the extension holds.
            keys[exttype] = (slice(off + 8, off + 8 + min((key.bits + 7) // 8, length - 8)), key.bits)
    idx = sa.index
    return _SaTemplate(
        reply[:8],
        sa.satype,
        idx.proto,
        idx.mode,
        idx.reqid,
        _tail(idx.src),
        _tail(idx.dst),
        sa.auth,
        sa.encrypt,
        sa.flags,
        sa.replay,
        sa.replay_window,
        keys.get(ExtType.KEY_AUTH),
        keys.get(ExtType.KEY_ENCRYPT),
        sa.hard,
        sa.soft,
    )


def _sa_reply(t: _SaTemplate, layout: _Layout, data: bytes) -> bytes:
    return b"".join([t.head, data[8:16], *[data[s] for s in layout.reply]])


def _policy_reply(t: _PolicyTemplate, layout: _Layout, data: bytes, policy_id: int) -> bytes:
    return b"".join(
        [
            t.head,
            data[8:16],
            *[data[s] for s in layout.reply],
            t.scope_byte,
            _POLICY_ID.pack(policy_id),
            *[data[s] for s in layout.reply_after],
        ]
    )


def _policy_template(sp: SecPolicy, reply: bytes) -> _PolicyTemplate | None:
    """The template that would rebuild ``sp`` and ``reply`` (whose first extension is
    the policy); checked by the caller."""
    if any(r.level == Level.UNIQUE for r in sp.requests):
        return None  # each such policy gets a reqid of its own: generic
    sel = sp.selector
    scope = reply[16 + _POLICY_ID_AT - 1 : 16 + _POLICY_ID_AT]
    return _PolicyTemplate(
        reply[:8],
        scope,
        sp.dir,
        sp.type,
        sp.requests,
        sp.priority,
        sp.lifetime,
        sp.validtime,
        sp.scope,
        sel.src_len,
        sel.dst_len,
        sel.proto,
        _tail(sel.src),
        _tail(sel.dst),
    )
