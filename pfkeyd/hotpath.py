"""The hot path: ADD requests of a shape already seen, served from their bytes.

Theory of operation
-------------------
``setkey -f`` scripts and IKE daemons send ADDs in long runs that differ only in a
few fields: seq and pid in the header, the SPI, the two IP addresses and the key
bytes.  Everything the generic path (decode, ``KeyEngine.handle``, encode) decides
about such a request -- every check of the decoder, of key_parse and of
key_setsaval, every value of the new SA but those fields, every byte of the reply
but those fields -- is a function of the request's other bytes, its *shape*.  The
generic path reads the variable fields in only three places, and the hot path makes
the same three checks: the SPI must not be reserved (<= 255) nor in use, and an ACQUIRE
with the request's seq is completed (seq 0 completes none).  The SAD's room is
checked too, before anything else, as ``_add`` does.

So the first ADDs of each shape take the generic path.  The second time a shape
succeeds there, the engine derives a :class:`_Template` from it and checks the
template against what the generic path just did: the SA the template builds from
the request must equal the SA stored, and the reply it cuts out of the request must
equal, byte for byte, the reply the codec encoded.  Only a template that passes is
kept; a shape that fails is remembered as generic-only.  A later ADD of a kept shape
costs a few slices, the SPI checks, one SecAssoc and its insertion.

The hot path declines (returns None, having changed nothing) whenever anything the
template cannot see matters: a socket of another dialect or a promiscuous socket
would need its own copy, the SPI is reserved or taken, the SAD is full, the message
is longer than ``pfkeyd.max_message_size``.  The generic path then answers as
always.  Templates are dropped when a knob changes, and tests run every request
through both paths and compare the replies and the tables.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from operator import itemgetter
from typing import TYPE_CHECKING

from pfkeyd.effects import ClientId, Instant, SendEncoded
from pfkeyd.record import record
from pfkeyd.sad import SaIndex, SecAssoc
from pfkeyd.wire import Dialect, ExtType, Key, Lifetime, Message, MsgType, SaState, SaType, SockAddr, encode

if TYPE_CHECKING:
    from pfkeyd.engine import KeyEngine

__all__ = ["AddTemplates"]

_EXT_HDR = struct.Struct("=HH")
_SEQ_PID = struct.Struct("=II")
_HEAD = struct.Struct("=BBBBHH")
_HOT_SATYPES = frozenset({SaType.ESP, SaType.AH})
#: The extensions an ADD of the hot path may carry, each at most once.  Others
#: (identities, NAT-T, SA_REPLAY, security contexts, ...) always take the generic path.
_HOT_EXTS = frozenset({
    ExtType.SA, ExtType.X_SA2, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST,
    ExtType.KEY_AUTH, ExtType.KEY_ENCRYPT, ExtType.LIFETIME_HARD, ExtType.LIFETIME_SOFT,
})
#: The reply's extensions, in key_getmsgbuf_x1's order (keys are never among them).
_REPLY_ORDER = (ExtType.SA, ExtType.X_SA2, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST,
                ExtType.LIFETIME_HARD, ExtType.LIFETIME_SOFT)
#: An address extension's length -> where the IP address lies after the 8-byte
#: sadb_address header: sockaddr_in (len/family, port, address, zero) and
#: sockaddr_in6 (len/family, port, flowinfo, address, scope id), in both dialects.
_ADDRESS_AT = {24: (4, 4), 40: (8, 16)}
#: How many shapes are remembered (kept templates, refusals and first sightings).
_MAX_SHAPES = 1024
_MAX_ADDRESSES = 8192

Headers = tuple[tuple[int, int], ...]


class _Layout:
    """Where the variable fields lie in the ADDs of one sequence of extension headers,
    and the shapes of that layout seen so far.  ``fixed`` cuts out everything but the
    variable fields: the header and every extension header are among what it keeps,
    so a request whose fixed bytes equal a learned shape's has this layout."""

    __slots__ = ("dialect", "dst", "fixed", "keys", "reply", "seen", "size", "spi_at", "src", "templates")

    def __init__(self, dialect: Dialect, size: int, fixed: list[slice], spi_at: int, src: slice, dst: slice,
                 keys: tuple[tuple[ExtType, int, int], ...], reply: tuple[slice, ...]) -> None:
        self.dialect = dialect
        self.size = size
        self.fixed: Callable[[bytes], tuple[bytes, ...]] = itemgetter(*fixed, slice(0, 0))  # always a tuple
        self.spi_at = spi_at
        self.src = src
        self.dst = dst
        self.keys = keys  # (type, offset, length) of each key extension
        self.reply = reply  # the request's extensions that make the reply, in order
        #: shape -> its template, or None: generic only
        self.templates: dict[tuple[bytes, ...], _Template | None] = {}
        self.seen: set[tuple[bytes, ...]] = set()  # shapes that succeeded once, generically


@record
class _Template:
    """What the generic path decided for one shape."""

    layout: _Layout
    head: bytes  # the reply's first 8 header bytes (version ... reserved)
    satype: int
    proto: int
    mode: int
    reqid: int
    v6_tail: tuple[int, int] | None  # IPv6 (flowinfo, scope id) of both addresses; None for IPv4
    auth: int
    encrypt: int
    flags: int
    replay: int
    replay_window: int
    key_auth: tuple[slice, int] | None  # where the key lies in the request, and its bits
    key_encrypt: tuple[slice, int] | None
    hard: Lifetime | None
    soft: Lifetime | None


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


def _layout(dialect: Dialect, headers: Headers) -> _Layout | None:
    """The layout of an ADD with these extensions, if the hot path can serve it."""
    from_wire = dialect.spec.ext.from_wire
    at: dict[ExtType, tuple[int, int]] = {}
    off = 16
    for units, wire in headers:
        canonical = from_wire.get(wire)
        size = units * 8
        if canonical is None or canonical not in _HOT_EXTS or canonical in at:
            return None
        at[ExtType(canonical)] = (off, size)
        off += size
    if ExtType.SA not in at or ExtType.ADDRESS_SRC not in at or ExtType.ADDRESS_DST not in at:
        return None
    variable = [(8, 16)]  # seq, pid
    sa_off, sa_len = at[ExtType.SA]
    if sa_len != 16:
        return None
    variable.append((sa_off + 4, sa_off + 8))
    addresses = []
    for which in (ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST):
        a_off, a_len = at[which]
        where = _ADDRESS_AT.get(a_len)
        if where is None:
            return None
        start = a_off + 8 + where[0]
        addresses.append(slice(start, start + where[1]))
        variable.append((start, start + where[1]))
    keys = []
    for which in (ExtType.KEY_AUTH, ExtType.KEY_ENCRYPT):
        if which in at:
            k_off, k_len = at[which]
            keys.append((which, k_off, k_len))
            variable.append((k_off + 8, k_off + k_len))
    variable.sort()
    fixed = []
    pos = 0
    for start, end in variable:
        if start > pos:
            fixed.append(slice(pos, start))
        pos = end
    if pos < off:
        fixed.append(slice(pos, off))
    reply = tuple(slice(at[t][0], at[t][0] + at[t][1]) for t in _REPLY_ORDER if t in at)
    return _Layout(dialect, off, fixed, sa_off + 4, addresses[0], addresses[1], tuple(keys), reply)


class AddTemplates:
    """The learned ADD shapes of one engine, and the hot path that uses them."""

    def __init__(self) -> None:
        self._layouts: dict[tuple[Dialect, Headers], _Layout | None] = {}
        #: (dialect, message size) -> the layouts of that size: where the hot path looks
        self._by_size: dict[tuple[Dialect, int], list[_Layout]] = {}
        self._shapes = 0  # shapes remembered, over all layouts
        self._addresses: dict[tuple[bytes, tuple[int, int] | None], SockAddr] = {}
        self.served = 0  # requests answered by the hot path (a statistic for tests and benchmarks)

    def clear(self) -> None:
        """Forget every shape (a knob changed: what the generic path decides may differ)."""
        self._layouts.clear()
        self._by_size.clear()
        self._shapes = 0

    # ------------------------------------------------------------------ serving

    def serve(self, engine: KeyEngine, client: ClientId, dialect: Dialect, data: bytes,
              now: Instant) -> list[SendEncoded] | None:
        """Answer an ADD of a known shape, or return None having changed nothing."""
        layouts = self._by_size.get((dialect, len(data)))
        if layouts is None or data[1] != MsgType.ADD:
            return None
        for layout in layouts:
            template = layout.templates.get(layout.fixed(data))
            if template is not None:
                break
        else:
            return None
        knobs = engine.knobs
        sad = engine.sad
        if len(data) > knobs.max_message_size or len(sad) >= knobs.max_sas:
            return None
        spi = int.from_bytes(data[layout.spi_at : layout.spi_at + 4], "big")
        if spi <= 255 or spi in sad.by_spi:
            return None
        to = engine.same_dialect_audience(client, dialect)
        if to is None:
            return None
        sa = self._build(template, spi, engine, data, now)
        sad.insert(sa)
        if sa.hard is not None:
            engine._schedule(sa)
        if sa.seq:
            engine.acqdone(sa.index, sa.seq)
        reply = b"".join([template.head, data[8:16], *[data[s] for s in layout.reply]])
        stats = engine.stats
        stats.note_in(MsgType.ADD)
        stats.note_out(MsgType.ADD, len(to))
        self.served += 1
        return [SendEncoded(to, reply, MsgType.ADD)]

    def _build(self, t: _Template, spi: int, engine: KeyEngine, data: bytes, now: Instant) -> SecAssoc:
        layout = t.layout
        seq, pid = _SEQ_PID.unpack_from(data, 8)
        src = self._address(data[layout.src], t.v6_tail)
        dst = self._address(data[layout.dst], t.v6_tail)
        ka, ke = t.key_auth, t.key_encrypt
        key_auth = None if ka is None else Key(ExtType.KEY_AUTH, data[ka[0]], ka[1])
        key_enc = None if ke is None else Key(ExtType.KEY_ENCRYPT, data[ke[0]], ke[1])
        return SecAssoc(
            spi, t.satype,
            SaIndex(t.proto, t.mode, t.reqid, src, dst), SaState.MATURE, t.auth, t.encrypt, t.flags,
            t.replay, t.replay_window, key_auth, key_enc, seq, engine._shared(pid), now.mono,
            engine._shared(now.wall), t.hard, t.soft,
        )

    def _address(self, packed: bytes, v6_tail: tuple[int, int] | None) -> SockAddr:
        """The port-less SockAddr of an SA index; equal addresses share one value."""
        key = (packed, v6_tail)
        found = self._addresses.get(key)
        if found is None:
            if len(self._addresses) >= _MAX_ADDRESSES:
                self._addresses.clear()
            if v6_tail is None:
                found = SockAddr(IPv4Address(packed))
            else:
                found = SockAddr(IPv6Address(packed), 0, v6_tail[0], v6_tail[1])
            self._addresses[key] = found
        return found

    # ----------------------------------------------------------------- learning

    def _layout_of(self, dialect: Dialect, data: bytes) -> _Layout | None:
        headers = _headers(data)
        if headers is None:
            return None
        key = (dialect, headers)
        if key in self._layouts:
            return self._layouts[key]
        if len(self._layouts) >= _MAX_SHAPES:
            self.clear()
        layout = self._layouts[key] = _layout(dialect, headers)
        if layout is not None:
            self._by_size.setdefault((dialect, layout.size), []).append(layout)
        return layout

    def learn(self, engine: KeyEngine, dialect: Dialect, data: bytes, stored: SecAssoc, answer: Message) -> None:
        """The generic path has just added ``stored`` for ``data`` and answered
        ``answer`` (keyless) to every socket: keep a template for the shape the
        second time it gets here, if the template gives exactly these results."""
        if data[3] not in _HOT_SATYPES:
            return
        layout = self._layout_of(dialect, data)
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
        template = _template(layout, stored, reply)
        if template is not None and (
            self._build(template, stored.spi, engine, data, Instant(stored.created, stored.created_wall)) != stored
            or b"".join([template.head, data[8:16], *[data[s] for s in layout.reply]]) != reply
        ):
            template = None
        layout.templates[shape] = template


def _template(layout: _Layout, sa: SecAssoc, reply: bytes) -> _Template | None:
    """The template that would rebuild ``sa`` and ``reply``; checked by the caller."""
    if sa.natt is not None or sa.usage is not None or sa.version:
        return None
    src, dst = sa.index.src, sa.index.dst
    v6_tail = None
    if src.version == 6:
        v6_tail = (src.flowinfo, src.scope_id)
        if (dst.flowinfo, dst.scope_id) != v6_tail:
            return None  # the two addresses would need their own tails: rare, generic
    stored = {ExtType.KEY_AUTH: sa.key_auth, ExtType.KEY_ENCRYPT: sa.key_encrypt}
    keys: dict[ExtType, tuple[slice, int]] = {}
    for exttype, off, length in layout.keys:
        key = stored[exttype]
        if key is None:
            return None
        # Key.decode's bytes: ceil(bits / 8), or what the extension holds.
        keys[exttype] = (slice(off + 8, off + 8 + min((key.bits + 7) // 8, length - 8)), key.bits)
    idx = sa.index
    return _Template(layout, reply[:8], sa.satype, idx.proto, idx.mode, idx.reqid, v6_tail, sa.auth, sa.encrypt,
                     sa.flags, sa.replay, sa.replay_window, keys.get(ExtType.KEY_AUTH), keys.get(ExtType.KEY_ENCRYPT),
                     sa.hard, sa.soft)
