"""The daemon without I/O: one function from (client, datagram, now) to datagrams out.

Theory of operation
-------------------
:class:`Daemon` is to pfkeyd what h11's ``Connection`` is to HTTP: everything
between the bytes a PF_KEY socket received and the bytes the sockets must send,
with no socket, no trio, no logging and no clock.  The trio shell
(:mod:`pfkeyd.server`) moves bytes; the fuzz tests and the hot path's differential
tests call this same layer, so the path they check is the path the sockets take.

One request, :meth:`Daemon.receive`:

1. a datagram of impossible length (empty, or longer than any PF_KEY message) is
   refused as the dialect's kernel refuses the ``send()``: a header-only error reply
   (``send_failure_reply``), counted as ``send_would_fail``;
2. the hot path (:mod:`pfkeyd.engine.hotpath`) answers an ADD or SPDADD of a shape seen
   before without decoding it;
3. otherwise the datagram is decoded (a malformed one is answered with the errno
   the reference kernel gives, or refused as its ``send()`` would be), and the key
   engine handles the message;
4. the engine's effects become :data:`Outgoing` values: encoded once per dialect,
   keys stripped from every copy but the requester's reply, promiscuous copies
   framed (an SADB_X_PROMISC header for freebsd sockets), error replies built from
   the request's bytes.

This is the one boundary of a PF_KEY request: an exception that escapes the
decoder, the hot path or the engine is a bug in pfkeyd, and no input may end the
daemon.  It is answered EINVAL in the client's dialect, counted
(``internal_error``) and reported as a :class:`Log` record carrying the
exception, which the shell logs with a rate limit and the traceback.  The engine's
handlers check everything before they change anything, so a request that fails
leaves the state as it was.

What goes out says what it is, not where it sits in a list: a :class:`Reply` must
reach its client however slowly it reads; a :class:`Broadcast` copy may be
dropped for a client whose buffer is full (the shell reports that back through
:meth:`Daemon.dropped`); a :class:`DumpStream` is rendered one entry at a time as
the client's socket drains; a :class:`Log` record is for the shell's log (the
``-d``/``net.inet.ipsec.debug`` trace, warnings, internal errors) and names
messages and extensions, never their contents.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, NamedTuple, Protocol, assert_never

from pfkeyd.effects import ClientId, Dump, Effect, Error, Instant, Send, SendEncoded
from pfkeyd.engine import Decision, KeyEngine
from pfkeyd.errors import DecodeError, EncodeError
from pfkeyd.knobs import Knobs
from pfkeyd.spd import Flow
from pfkeyd.stats import Statistics, Stats
from pfkeyd.wire import HEADER, Dialect, ExtType, Message, MsgType, decode, encode, error_reply
from pfkeyd.wire.framing import MAX_DATAGRAM, promisc_wrap
from pfkeyd.wire.message import send_failure_reply

__all__ = [
    "Daemon",
    "EngineLike",
    "Reply",
    "Broadcast",
    "DumpStream",
    "Log",
    "Outgoing",
]

#: The errno of a send() of a datagram of impossible size: FreeBSD's length check
#: (EINVAL), Linux's (EMSGSIZE).
SEND_FAILS_WITH = {Dialect.FREEBSD: errno.EINVAL, Dialect.LINUX: errno.EMSGSIZE}

_SEQ = struct.Struct("=I")
_SEQ_OFFSET = 8
_KEY_EXTS = frozenset({int(ExtType.KEY_AUTH), int(ExtType.KEY_ENCRYPT)})


class Reply(NamedTuple):
    """``data`` for each client of ``to``, never dropped: the shell waits for room
    (backpressure slows only that client).  The answer to a request, and the copies
    a kernel sends as answers (KEY_SENDUP_ALL's requester copy)."""

    to: tuple[ClientId, ...]
    data: bytes


class Broadcast(NamedTuple):
    """``data`` for each client of ``to``, which the shell drops for a client whose
    buffer is full (and reports through :meth:`Daemon.dropped`): ACQUIRE, EXPIRE,
    the copies of a change for the other sockets, promiscuous copies."""

    to: tuple[ClientId, ...]
    data: bytes


class Log(NamedTuple):
    """A line for the shell's log.  ``kind`` is ``"trace"`` (the per-message trace,
    logged at INFO under net.inet.ipsec.debug, else DEBUG), ``"warning"``, or
    ``"internal"`` (a bug caught at the boundary: logged as an error with a rate
    limit and ``exc``'s traceback).  ``fmt % args`` is the text."""

    kind: str
    fmt: str
    args: tuple[object, ...]
    exc: BaseException | None = None


class DumpStream:
    """One DUMP or SPDDUMP answer, rendered as the client's socket drains.

    Iterating yields the encoded messages in order: ``seq`` counts down, and the
    last message yielded has seq 0 (one rendered entry is held back so that it can
    be patched), which is how every client knows the dump is over.  An entry the
    client's dialect cannot carry is skipped and counted (``dump_unencodable``;
    :attr:`skipped` says how many).  A dump with nothing the client can read yields
    the ENOENT error reply alone, as for an empty table.
    """

    __slots__ = ("_daemon", "_dump", "_request", "dialect", "skipped", "to")

    def __init__(self, daemon: Daemon, dump: Dump, dialect: Dialect, request: bytes) -> None:
        self._daemon = daemon
        self._dump = dump
        self._request = request
        self.to = dump.to
        self.dialect = dialect
        self.skipped = 0

    @property
    def msgtype(self) -> int:
        return self._dump.msgtype

    def __len__(self) -> int:
        """How many entries the snapshot holds."""
        return len(self._dump.items)

    def __iter__(self) -> Iterator[bytes]:
        dump, dialect = self._dump, self.dialect
        items, render, pid = dump.items, dump.render, dump.pid
        count = len(items)
        held: bytes | None = None
        held_seq = 0
        skipped = 0
        for i in range(count):
            seq = count - 1 - i
            try:
                data = render(items[i], dialect, seq, pid)
            except EncodeError:
                skipped += 1
                continue
            if held is not None:
                yield held
            held, held_seq = data, seq
        if skipped:
            self.skipped = skipped
            self._daemon.engine.stats.note_drop("dump_unencodable", skipped)
        if held is None:
            yield error_reply(self._request, errno.ENOENT, dialect)
            return
        if held_seq != 0:
            patched = bytearray(held)
            _SEQ.pack_into(patched, _SEQ_OFFSET, 0)
            held = bytes(patched)
        yield held


#: What the daemon asks the shell to do.
Outgoing = Reply | Broadcast | DumpStream | Log


def type_name(t: int) -> str:
    """A message type's RFC name (``ADD``, ``X_SPDADD``), or its number if it has none."""
    return MsgType(t).name if t in MsgType._value2member_map_ else str(t)


def ext_name(t: int) -> str:
    """An extension type's RFC name, or its number if it has none."""
    return ExtType(t).name if t in ExtType._value2member_map_ else str(t)


def recipients(to: Sequence[ClientId]) -> str:
    """The recipients of a message as the trace names them (at most eight)."""
    clients = ",".join(str(c) for c in to[:8]) + (",..." if len(to) > 8 else "")
    return f"client{'s' * (len(to) != 1)} {clients}" if to else "no client"


class EngineLike(Protocol):
    """What the daemon layer needs of :class:`pfkeyd.engine.KeyEngine` (tests give it
    a scripted engine)."""

    @property
    def knobs(self) -> Knobs: ...

    @knobs.setter
    def knobs(self, knobs: Knobs) -> None: ...

    @property
    def stats(self) -> Stats: ...

    def client_opened(self, client: ClientId, dialect: Dialect) -> None: ...

    def client_closed(self, client: ClientId) -> None: ...

    def serve_hot(self, client: ClientId, data: bytes, now: Instant) -> list[Effect] | None: ...

    def handle(self, client: ClientId, msg: Message, now: Instant, *, raw: bytes | None = None) -> list[Effect]: ...

    def tick(self, now: Instant, *, limit: int | None = None) -> list[Effect]: ...

    def next_deadline(self) -> float | None: ...


class Daemon:
    """pfkeyd between its sockets: decoding, the hot path, the key engine, encoding.

    The shell reports sockets (:meth:`opened`, :meth:`closed`), datagrams
    (:meth:`receive`), the passing of time (:meth:`tick` when :meth:`next_deadline`
    is due) and broadcasts it had to drop (:meth:`dropped`); every call returns
    what must go out, in order.
    """

    def __init__(self, engine: EngineLike | None = None) -> None:
        self.engine: EngineLike = engine if engine is not None else KeyEngine()
        self._dialects: dict[ClientId, Dialect] = {}  # every open socket's

    # ------------------------------------------------------------- sockets

    def opened(self, client: ClientId, dialect: Dialect) -> None:
        """A PF_KEY socket of ``dialect`` was connected; it is on every broadcast
        list from now on."""
        self._dialects[client] = dialect
        self.engine.client_opened(client, dialect)

    def closed(self, client: ClientId) -> None:
        """The socket is gone: its registrations and promiscuous mode go with it."""
        if self._dialects.pop(client, None) is not None:
            self.engine.client_closed(client)

    @property
    def clients(self) -> int:
        """How many sockets are open."""
        return len(self._dialects)

    # ------------------------------------------------------------- knobs, figures

    def _set_knobs(self, knobs: Knobs) -> None:
        self.engine.knobs = knobs

    # The shell reads it per request: a C getter, no Python frame (as EngineCore.knobs).
    if TYPE_CHECKING:

        @property
        def knobs(self) -> Knobs: ...

        @knobs.setter
        def knobs(self, knobs: Knobs) -> None: ...

    else:
        knobs = property(
            attrgetter("engine.knobs"),
            _set_knobs,
            doc="The engine's knob values; a new value is effective from the next message and the next tick.",
        )

    def statistics(self) -> Statistics:
        return _key_engine(self.engine).statistics()

    def dropped(self, client: ClientId | None, reason: str) -> None:
        """The shell could not deliver a message to ``client``: ``broadcast_buffer_full``
        (a broadcast copy met a full buffer), ``message_too_large`` (larger than the
        socket's send buffer); or a control request failed (``control_bad_request``,
        ``control_failed``; no client).  Counted per reason."""
        self.engine.stats.note_drop(reason)

    # ------------------------------------------------------------- requests

    def receive(
        self, client: ClientId, datagram: bytes, now: Instant, *, length: int | None = None, trace: bool = False
    ) -> list[Outgoing]:
        """Everything that must go out because ``client`` sent ``datagram``.

        ``length`` is the datagram's real length when the shell had to cut it
        (a datagram longer than :data:`MAX_DATAGRAM`).  ``trace`` asks for the trace
        records (they are also made while net.inet.ipsec.debug is set).
        """
        try:
            return self._receive(
                client,
                datagram,
                now,
                len(datagram) if length is None else length,
                trace or bool(self.engine.knobs.debug),
            )
        except Exception as exc:  # the boundary: no input may end the daemon
            return self._internal_error(client, datagram, exc)

    def _receive(self, client: ClientId, data: bytes, now: Instant, length: int, trace: bool) -> list[Outgoing]:
        engine = self.engine
        dialect = self._dialects.get(client)
        if dialect is None:  # a socket the shell did not announce: a linux one, as the engine assumes
            dialect = Dialect.LINUX
            self.opened(client, dialect)
        if not data or length > MAX_DATAGRAM:
            # Empty, or longer than any PF_KEY message can be: both kernels fail such a send().
            return self._send_fails(client, data, SEND_FAILS_WITH[dialect], dialect)
        if not trace:
            # The hot path needs no decoding; the trace wants the decoded message,
            # so it is off while tracing.
            hot = engine.serve_hot(client, data, now)
            if hot is not None:
                (sent,) = hot  # the hot path answers with one SendEncoded
                assert isinstance(sent, SendEncoded)
                if sent.others:
                    return [Reply((client,), sent.data), Broadcast(sent.others, sent.data)]
                return [Reply((client,), sent.data)]
        out: list[Outgoing] = []
        try:
            msg = decode(data, dialect, max_size=engine.knobs.max_message_size)
        except DecodeError as exc:
            if exc.reply:
                engine.stats.note_error(exc.errno)
                out.append(Reply((client,), error_reply(data, exc.errno, dialect)))
            else:
                out += self._send_fails(client, data, exc.errno, dialect)
            if trace:
                out.insert(
                    0,
                    Log(
                        "trace",
                        "client %d: malformed request (%s, errno %d%s)",
                        (client, exc, exc.errno, "" if exc.reply else ", where the kernel's send() fails"),
                    ),
                )
            return out
        if trace:
            # The trace names the message and its extensions, never their contents:
            # no key material reaches a log.
            out.append(
                Log(
                    "trace",
                    "client %d: %s satype %d seq %d pid %d, %d bytes, extensions %s",
                    (
                        client,
                        type_name(msg.type),
                        msg.satype,
                        msg.seq,
                        msg.pid,
                        len(data),
                        ",".join(ext_name(e.exttype) for e in msg.exts) or "none",
                    ),
                )
            )
        effects = engine.handle(client, msg, now, raw=data)
        return self._route(effects, client, data, f"client {client}", trace, out)

    def _send_fails(self, client: ClientId, data: bytes, err: int, dialect: Dialect) -> list[Outgoing]:
        """A request the dialect's kernel refuses at send(): the sender learns it at
        once from the failed call.  pfkeyd cannot fail a send, so it answers with the
        header alone carrying that errno (pfkey(4)), rather than leave the client
        waiting for a reply that never comes; counted as ``send_would_fail``."""
        stats = self.engine.stats
        stats.note_error(err)
        stats.note_drop("send_would_fail")
        return [Reply((client,), send_failure_reply(data, err, dialect))]

    def _internal_error(self, client: ClientId, data: bytes, exc: Exception) -> list[Outgoing]:
        stats = self.engine.stats
        stats.note_error(errno.EINVAL)
        stats.note_drop("internal_error")
        out: list[Outgoing] = [
            Log(
                "internal",
                "client %d: internal error handling a %d-byte request of type %s",
                (client, len(data), type_name(data[1]) if len(data) > 1 else "?"),
                exc,
            )
        ]
        dialect = self._dialects.get(client)
        if dialect is not None:
            out.append(
                Reply(
                    (client,),
                    error_reply(data, errno.EINVAL, dialect)
                    if len(data) >= HEADER.size
                    else send_failure_reply(data, errno.EINVAL, dialect),
                )
            )
        return out

    # ------------------------------------------------------------- time

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do next (monotonic seconds), or None."""
        return self.engine.next_deadline()

    def tick(self, now: Instant, limit: int | None = None, *, trace: bool = False) -> list[Outgoing]:
        """What is due by ``now`` (at most ``limit`` deadlines): EXPIRE, ACQUIRE
        retries, SPDEXPIRE."""
        return self._route(
            self.engine.tick(now, limit=limit), None, None, "timer", trace or bool(self.engine.knobs.debug)
        )

    # ------------------------------------------------------------- control

    def lookup(self, dir_: int, flow: Flow, now: Instant, *, trace: bool = False) -> tuple[Decision, list[Outgoing]]:
        """The SPD's decision for a packet of ``flow``, and the ACQUIRE it may send."""
        decision, effects = _key_engine(self.engine).lookup(dir_, flow, now)
        return decision, self.deliver(effects, "control", trace=trace)

    def deliver(self, effects: Sequence[Effect], origin: str, *, trace: bool = False) -> list[Outgoing]:
        """The outgoing form of effects the engine returned outside a request
        (a control command's lookup, the data plane's); ``origin`` names their
        cause in the trace."""
        return self._route(effects, None, None, origin, trace or bool(self.engine.knobs.debug))

    # ------------------------------------------------------------- routing

    def _route(
        self,
        effects: Sequence[Effect],
        requester: ClientId | None,
        request: bytes | None,
        origin: str,
        trace: bool,
        out: list[Outgoing] | None = None,
    ) -> list[Outgoing]:
        if out is None:
            out = []
        for effect in effects:
            if isinstance(effect, SendEncoded):  # first: the hot path's, the common case
                if trace:
                    out.append(
                        Log(
                            "trace",
                            "%s: %s to %s",
                            (origin, type_name(effect.msgtype), recipients((effect.requester, *effect.others))),
                        )
                    )
                out.append(Reply((effect.requester,), effect.data))
                if effect.others:
                    out.append(Broadcast(effect.others, effect.data))
            elif isinstance(effect, Send):
                if trace:
                    out.append(_trace_send(origin, effect))
                self._encode_send(effect, requester, request, out)
            elif isinstance(effect, Error):
                self._route_error(effect, request, origin, trace, out)
            elif isinstance(effect, Dump):
                self._route_dump(effect, request, origin, trace, out)
            else:
                assert_never(effect)
        return out

    def _route_error(self, effect: Error, request: bytes | None, origin: str, trace: bool, out: list[Outgoing]) -> None:
        if request is None:
            msg = f"the engine returned {effect!r} outside a request"
            raise RuntimeError(msg)
        if trace:
            out.append(Log("trace", "%s: answered errno %d", (origin, effect.errno)))
        dialect = self._dialects.get(effect.to)
        if dialect is not None:
            out.append(Reply((effect.to,), error_reply(request, effect.errno, dialect)))

    def _route_dump(self, effect: Dump, request: bytes | None, origin: str, trace: bool, out: list[Outgoing]) -> None:
        if request is None:
            msg = f"the engine returned a dump to client {effect.to} outside a request"
            raise RuntimeError(msg)
        if trace:
            out.append(Log("trace", "%s: %s of %d entries", (origin, type_name(effect.msgtype), len(effect.items))))
        dialect = self._dialects.get(effect.to)
        if dialect is not None:
            out.append(DumpStream(self, effect, dialect, request))

    def _encode_send(self, send: Send, requester: ClientId | None, request: bytes | None, out: list[Outgoing]) -> None:
        """One Send as datagrams: one encoding per (dialect, keys kept, framed) variant."""
        dialects = self._dialects
        groups: dict[tuple[Dialect, bool, bool], list[ClientId]] = {}
        for cid in send.to:
            dialect = dialects.get(cid)
            if dialect is None:
                continue
            private = send.reply and not send.promisc and cid == requester
            variant = (dialect, private, send.promisc and dialect is Dialect.FREEBSD)
            group = groups.get(variant)
            if group is None:
                groups[variant] = [cid]
            else:
                group.append(cid)
        kind: Callable[[tuple[ClientId, ...], bytes], Outgoing] = Reply if send.reply else Broadcast
        for (dialect, private, wrap), cids in groups.items():
            data = self._encode(send.msg, dialect, private, wrap, out)
            if data is None:
                if private and request is not None:
                    # The answer cannot be said in this client's dialect; it still gets one.
                    out.append(Reply(tuple(cids), error_reply(request, errno.EINVAL, dialect)))
                continue
            out.append(kind(tuple(cids), data))

    def _encode(self, msg: Message, dialect: Dialect, private: bool, wrap: bool, out: list[Outgoing]) -> bytes | None:
        try:
            data = encode(msg if private else msg.without_keys(), dialect)
            return promisc_wrap(data) if wrap else data
        except EncodeError as exc:
            self.engine.stats.note_drop("unencodable")
            out.append(
                Log("warning", "cannot send %s in the %s dialect: %s", (type_name(msg.type), dialect.value, exc))
            )
            return None


def _key_engine(engine: EngineLike) -> KeyEngine:
    if not isinstance(engine, KeyEngine):
        msg = f"{type(engine).__name__} is not a KeyEngine"
        raise TypeError(msg)
    return engine


def _trace_send(origin: str, send: Send) -> Log:
    """The trace of one message the daemon sends: a reply, a broadcast or a
    promiscuous copy, whatever caused it (a request, the timer, a control command).
    It names the message and its extensions, never their contents; the key
    extensions of a copy that is not a reply are not even named."""
    m = send.msg
    kind = "promiscuous copy of " if send.promisc else "" if send.reply else "broadcast "
    return Log(
        "trace",
        "%s: %s%s satype %d seq %d pid %d to %s, extensions %s",
        (
            origin,
            kind,
            type_name(m.type),
            m.satype,
            m.seq,
            m.pid,
            recipients(send.to),
            ",".join(ext_name(e.exttype) for e in m.exts if send.reply or e.exttype not in _KEY_EXTS) or "none",
        ),
    )
