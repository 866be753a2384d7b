"""The trio shell of pfkeyd: Unix sockets in, key engine, Unix sockets out.

Theory of operation
-------------------
Each listening socket is an ``AF_UNIX``/``SOCK_SEQPACKET`` socket with a dialect
(freebsd or linux).  One datagram carries one PF_KEY message, so a client reads a
whole message with one ``recv()``, as it does on a kernel PF_KEY socket.

Every accepted client gets a nursery holding two tasks:

* the **reader** receives a datagram, decodes it, hands the message to
  :meth:`KeyEngine.handle` and routes the effects it returns.  Decoding, handling and
  routing are synchronous, so every effect of one request is queued before any other
  request is handled: requests are processed in the order each client sent them,
  and a broadcast can never overtake the reply that caused it.
* the **writer** drains the client's outbox, a FIFO of encoded messages and dump
  jobs.  A dump job renders one entry at a time as the socket drains, so a dump of
  any size costs one encoded message of memory plus the engine's snapshot.

A message for a client whose outbox is empty goes straight into its socket (a
non-blocking send) before the reader looks at the next datagram, so a reply is
there as soon as a kernel's would be; the outbox and the writer only come into play
when a socket is full.  The sockets are plain non-blocking sockets driven with
``trio.lowlevel.wait_readable``/``wait_writable``.

Backpressure.  Replies and dump entries are never dropped.  Before the reader
receives the next request it waits until the client's outbox holds less than
``knobs.client_buffer`` bytes and no unfinished dump: a client that does not read
stops being served, and its further requests wait unread in its own socket.  This
slows only that client.  Broadcasts (``Send(reply=False)``) must not
wait: a copy that would take a client's outbox past ``knobs.client_buffer`` is
dropped for that client only, counted (``broadcast_buffer_full``) and logged with a
rate limit.  FreeBSD's keysock drops silently, even replies and dump entries
(reference §1.6, §8.1); this is the fix.

Ordering.  The outbox is one FIFO, so broadcasts queued while a dump is being
streamed follow its last entry.  setkey(8) ends a dump at the first message with
seq 0 whatever its type (reference §8.5), so an interleaved broadcast could cut its
dump short.

Keys.  Key material only reaches the client whose request is being answered, in a
reply.  Every other copy (broadcasts, promiscuous copies, replies to anyone else)
has its KEY_AUTH and KEY_ENCRYPT extensions removed before encoding, whatever the
engine asked for.

Promiscuous copies are wrapped in a 16-byte SADB_X_PROMISC header for freebsd
sockets (keysock.c) and sent bare to linux sockets (af_key.c).

Dumps.  ``seq`` counts down from n-1; an entry the client's dialect cannot carry is
skipped and counted, and one encoded entry is always held back so that the last
message actually sent can have its seq rewritten to 0, which is how every client
knows the dump is over.  A dump with nothing the client can read is answered
ENOENT, as an empty table is.

Time.  One timer task sleeps until :meth:`KeyEngine.next_deadline`, or until a
request moved that deadline earlier, then calls :meth:`KeyEngine.tick`.  The
monotonic time is trio's clock (tests drive it with the autojump clock); the wall
clock is injected.

Failure.  A client that disconnects, never reads, or sends garbage affects only
itself.  Only ``OSError`` is caught around socket I/O; anything else is a bug and
propagates: it ends the daemon with a traceback.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import select
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, assert_never

import trio

from pfkeyd.defaults import control_path
from pfkeyd.effects import ClientId, Dump, Effect, Error, Instant, Send, SendEncoded
from pfkeyd.errors import DecodeError, EncodeError
from pfkeyd.knobs import Knobs
from pfkeyd.stats import Stats
from pfkeyd.wire import HEADER, PF_KEY_V2, Dialect, ExtType, Message, MsgType, decode, encode, error_reply

__all__ = [
    "Endpoint",
    "EngineLike",
    "Server",
    "ServerError",
    "ServerStatistics",
    "RECV_SIZE",
    "peer_credentials",
    "uid_allowed",
    "promisc_wrap",
]

log = logging.getLogger("pfkeyd.server")

#: The largest PF_KEY message: sadb_msg_len is 16 bits of 8-byte units.
RECV_SIZE = 0xFFFF * 8
#: At most one "broadcasts dropped" warning per client in this many seconds.
DROP_LOG_INTERVAL = 10.0
#: A reader yields to the other tasks after this many requests in a row (and always
#: when its socket is empty, which waits).
READ_BATCH = 8
#: A dump yields to the other tasks every this many entries.
DUMP_BATCH = 32
#: How long stop() lets writers flush what is already queued.
DEFAULT_SHUTDOWN_GRACE = 2.0

_SEQ = struct.Struct("=I")
_SEQ_OFFSET = 8
_UCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid (Linux SO_PEERCRED)
_XUCRED = struct.Struct("=II")  # struct xucred: cr_version, cr_uid (FreeBSD LOCAL_PEERCRED)
_XUCRED_SIZE = 88


class EngineLike(Protocol):
    """What the shell needs of :class:`pfkeyd.engine.KeyEngine`."""

    @property
    def knobs(self) -> Knobs: ...

    @property
    def stats(self) -> Stats: ...

    def client_opened(self, client: ClientId, dialect: Dialect) -> None: ...

    def client_closed(self, client: ClientId) -> None: ...

    def serve_hot(self, client: ClientId, data: bytes, now: Instant) -> list[Effect] | None: ...

    def handle(self, client: ClientId, msg: Message, now: Instant, *, raw: bytes | None = None) -> list[Effect]: ...

    def tick(self, now: Instant) -> list[Effect]: ...

    def next_deadline(self) -> float | None: ...


#: A control hook: (argv, now, dialect) -> (exit status, stdout text, stderr text,
#: effects); ``dialect`` is that of the PF_KEY socket the control socket is beside.
ControlHook = Callable[[Sequence[str], Instant, Dialect], tuple[int, str, str, Sequence[Effect]]]

#: The largest control request accepted.
CONTROL_REQUEST_MAX = 64 * 1024


class ServerError(Exception):
    """The daemon cannot start: a socket path in use, not a socket, not writable."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One listening socket: where it is and which dialect it speaks."""

    path: str
    dialect: Dialect


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """The shell's own figures (the engine counts messages; see ``engine.stats``)."""

    clients: int
    queued_bytes: int  #: bytes waiting in all outboxes now
    peak_queued_bytes: int  #: the most any one outbox ever held
    dumps_in_progress: int
    broadcast_drops: int
    refused_peers: int


def uid_allowed(uid: int, *, own_uid: int, allow: Iterable[int] = ()) -> bool:
    """Whether a peer of ``uid`` may use the daemon: root, the daemon's user, the allow list."""
    return uid in (0, own_uid) or uid in allow


def peer_credentials(sock: socket.socket) -> tuple[int, int] | None:
    """The (pid, uid) of the process at the other end of a Unix socket, None if unknown.

    Linux: SO_PEERCRED.  FreeBSD: LOCAL_PEERCRED (xucred carries no pid before
    FreeBSD 13; -1 then).
    """
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is not None:
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, so_peercred, _UCRED.size))
        return pid, uid
    local_peercred = getattr(socket, "LOCAL_PEERCRED", None)  # pragma: no cover - FreeBSD, macOS
    if local_peercred is None:  # pragma: no cover
        return None
    raw = sock.getsockopt(0, local_peercred, _XUCRED_SIZE)  # pragma: no cover - SOL_LOCAL is 0
    version, uid = _XUCRED.unpack_from(raw)  # pragma: no cover
    return (-1, uid) if version == 0 else None  # pragma: no cover


def promisc_wrap(body: bytes) -> bytes:
    """A promiscuous copy as FreeBSD's keysock delivers it: behind an SADB_X_PROMISC header.

    The header's ``len`` covers the whole datagram; every other field is 0.
    """
    total = HEADER.size + len(body)
    units = total // 8
    if units > 0xFFFF:
        msg = "promiscuous copy longer than 65535 units"
        raise EncodeError(msg)
    return HEADER.pack(PF_KEY_V2, MsgType.X_PROMISC, 0, 0, units, 0, 0, 0) + body


def _ext_name(t: int) -> str:
    try:
        return ExtType(t).name
    except ValueError:
        return str(t)


def _type_name(t: int) -> str:
    return MsgType(t).name if t in MsgType._value2member_map_ else str(t)


class _ClientGone(Exception):
    """The peer went away; raised by :meth:`Server._send` to end the client's tasks."""


@dataclass(slots=True)
class _DumpJob:
    dump: Dump
    request: bytes  # the raw DUMP/SPDDUMP request, for the error reply if nothing can be sent


_Item = bytes | _DumpJob


class _Client:
    """One connected PF_KEY socket and its outbox."""

    __slots__ = (
        "broken", "closing", "dialect", "drop_logged_at", "drops", "drops_unlogged", "dumps", "id", "outbox",
        "path", "queued", "reader_scope", "reading", "room", "sock", "uid", "work",
    )

    def __init__(self, cid: ClientId, sock: socket.socket, endpoint: Endpoint, uid: int) -> None:
        self.id = cid
        self.sock = sock
        self.dialect = endpoint.dialect
        self.path = endpoint.path
        self.uid = uid
        self.outbox: deque[_Item] = deque()
        self.queued = 0  # bytes of encoded messages in the outbox
        self.dumps = 0  # dump jobs in the outbox
        self.work = trio.lowlevel.ParkingLot()  # the writer waits here for items
        self.room = trio.lowlevel.ParkingLot()  # the reader waits here for the outbox to drain
        self.reader_scope = trio.CancelScope()
        self.reading = True
        self.closing = False
        self.broken = False  # a send found the peer gone
        self.drops = 0
        self.drops_unlogged = 0
        self.drop_logged_at = -math.inf


@dataclass(slots=True)
class _Listener:
    endpoint: Endpoint
    sock: socket.socket
    ident: tuple[int, int]  # (st_dev, st_ino) of the socket file we made


class Server:
    """Serve a key engine on one or more PF_KEY-over-SEQPACKET sockets.

    ``await nursery.start(server.serve)`` returns once every socket listens;
    :meth:`stop` makes :meth:`serve` stop accepting, stop reading requests, let the
    replies already queued go out (for at most ``shutdown_grace`` seconds), remove
    the socket files and return.

    ``group`` (a gid) makes the sockets mode 0660 and owned by that group; otherwise
    they are 0600.  Peers are accepted if their uid is root's, the daemon's or in
    ``allow_uids``.  ``wall_clock`` gives the seconds since the epoch that
    lifetimes report; the monotonic clock is trio's.
    """

    def __init__(
        self,
        engine: EngineLike,
        endpoints: Sequence[Endpoint],
        *,
        group: int | None = None,
        allow_uids: Iterable[int] = (),
        wall_clock: Callable[[], float] = time.time,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        control: ControlHook | None = None,
    ) -> None:
        if not endpoints:
            msg = "a server needs at least one endpoint"
            raise ValueError(msg)
        self._engine = engine
        self._endpoints = tuple(endpoints)
        self._group = group
        self._allow = frozenset(allow_uids)
        self._own_uid = os.geteuid()
        self._wall_clock = wall_clock
        self._grace = shutdown_grace
        self._clients: dict[ClientId, _Client] = {}
        self._next_id = 1
        self._stop = trio.Event()
        self._timer_wake = trio.lowlevel.ParkingLot()
        self._timer_at = math.inf
        self._timer_scope = trio.CancelScope()
        self._peak_queued = 0
        self._broadcast_drops = 0
        self._refused = 0
        self._listeners: list[_Listener] = []
        self._control = control
        self._control_listeners: list[_Listener] = []

    # ------------------------------------------------------------------ public

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    def stop(self) -> None:
        """Begin an orderly shutdown; :meth:`serve` returns when it is done."""
        self._stop.set()

    def emit(self, effects: Sequence[Effect]) -> None:
        """Carry out effects that arose outside any request (the data plane's ACQUIREs
        and EXPIREs), as those of a request are carried out."""
        self._route(effects, None, None)
        self._wake_timer()

    def statistics(self) -> ServerStatistics:
        clients = self._clients.values()
        return ServerStatistics(
            clients=len(self._clients),
            queued_bytes=sum(c.queued for c in clients),
            peak_queued_bytes=self._peak_queued,
            dumps_in_progress=sum(c.dumps for c in clients),
            broadcast_drops=self._broadcast_drops,
            refused_peers=self._refused,
        )

    async def serve(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, serve until :meth:`stop`, then shut down in order.

        Raises :class:`ServerError` (before reporting readiness) when a socket
        cannot be set up.
        """
        try:
            for endpoint in self._endpoints:
                self._listeners.append(self._listen(endpoint))
                if self._control is not None:
                    ctl = Endpoint(control_path(endpoint.path), endpoint.dialect)
                    self._control_listeners.append(self._listen(ctl))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer)
                async with trio.open_nursery() as clients:
                    async with trio.open_nursery() as acceptors:
                        for listener in self._listeners:
                            acceptors.start_soon(self._accept_loop, listener, clients)
                        for listener in self._control_listeners:
                            acceptors.start_soon(partial(self._accept_loop, listener, clients, control=True))
                        task_status.started(self)
                        await self._stop.wait()
                        acceptors.cancel_scope.cancel()
                    log.info("shutting down")
                    # No new effects from here on: no timer, no requests.
                    self._timer_scope.cancel()
                    self._close_listeners()
                    for client in self._clients.values():
                        client.reader_scope.cancel()
                    # Writers exit once their outbox is empty; a client that does not
                    # read gets shutdown_grace seconds.
                    clients.cancel_scope.deadline = trio.current_time() + self._grace
                nursery.cancel_scope.cancel()
        finally:
            self._close_listeners()

    # ------------------------------------------------------------------ sockets

    def _listen(self, endpoint: Endpoint) -> _Listener:
        path = endpoint.path
        _clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            sock.bind(path)
            st = os.lstat(path)
            # Permissions are set before listen(): until then every connect() is refused.
            if self._group is not None:
                os.chown(path, -1, self._group)
                os.chmod(path, 0o660)
            else:
                os.chmod(path, 0o600)
            sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            sock.close()
            msg = f"{path}: {exc.strerror or exc}"
            raise ServerError(msg) from exc
        log.info("listening on %s (%s)", path, endpoint.dialect.value)
        return _Listener(endpoint, sock, (st.st_dev, st.st_ino))

    def _close_listeners(self) -> None:
        while self._listeners or self._control_listeners:
            listener = (self._listeners or self._control_listeners).pop()
            trio.lowlevel.notify_closing(listener.sock)
            listener.sock.close()
            path = listener.endpoint.path
            try:
                st = os.lstat(path)
                # Remove the file only if it is still ours, not a successor's.
                if (st.st_dev, st.st_ino) == listener.ident:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc.strerror)

    async def _accept_loop(self, listener: _Listener, nursery: trio.Nursery, *, control: bool = False) -> None:
        """Accept peers on one socket; PF_KEY clients get a reader and a writer, control
        peers one request and one answer.  Both pass the same credential check."""
        while True:
            try:
                sock, _ = listener.sock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener.sock)
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("accept on %s: %s; pausing 100 ms", listener.endpoint.path, exc.strerror)
                    await trio.sleep(0.1)
                    continue
                raise
            sock.setblocking(False)
            if control:
                if self._credentials(sock, listener.endpoint) is not None:
                    nursery.start_soon(self._control_session, sock, listener.endpoint.dialect)
            else:
                client = self._admit(sock, listener.endpoint)
                if client is not None:
                    nursery.start_soon(self._run_client, client)
            await trio.lowlevel.checkpoint()

    async def _control_session(self, sock: socket.socket, dialect: Dialect) -> None:
        assert self._control is not None
        try:
            with trio.move_on_after(10):
                while True:
                    try:
                        data = sock.recv(CONTROL_REQUEST_MAX)
                        break
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(sock)
                try:
                    argv = json.loads(data)["argv"]
                    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
                        raise TypeError("argv must be a list of strings")
                except (ValueError, TypeError, KeyError) as exc:
                    answer = {"status": 64, "out": "", "err": f"pfkeyd: bad control request: {exc}\n"}
                else:
                    status, out, err, effects = self._control(argv, self._now(), dialect)
                    self._route(effects, None, None)
                    self._wake_timer()
                    answer = {"status": status, "out": out, "err": err}
                payload = json.dumps(answer).encode()
                while True:
                    try:
                        sock.send(payload)
                        break
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(sock)
        except OSError as exc:
            log.debug("control connection: %s", exc.strerror)
        finally:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def _credentials(self, sock: socket.socket, endpoint: Endpoint) -> tuple[int, int] | None:
        """The peer's (pid, uid) if it may use the daemon; otherwise close it and log."""
        try:
            creds = peer_credentials(sock)
        except OSError as exc:
            log.warning("refused a peer on %s: no credentials (%s)", endpoint.path, exc.strerror)
            creds = None
        if creds is None or not uid_allowed(creds[1], own_uid=self._own_uid, allow=self._allow):
            self._refused += 1
            if creds is not None:
                log.warning("refused peer uid %d pid %d on %s", creds[1], creds[0], endpoint.path)
            sock.close()
            return None
        return creds

    def _admit(self, sock: socket.socket, endpoint: Endpoint) -> _Client | None:
        creds = self._credentials(sock, endpoint)
        if creds is None:
            return None
        cid = self._next_id
        self._next_id += 1
        client = _Client(cid, sock, endpoint, creds[1])
        self._clients[cid] = client
        self._engine.client_opened(cid, endpoint.dialect)
        log.debug("client %d: uid %d pid %d on %s", cid, creds[1], creds[0], endpoint.path)
        return client

    async def _run_client(self, client: _Client) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, client, nursery.cancel_scope)
                eof = await self._reader(client)
                client.reading = False
                if eof:
                    nursery.cancel_scope.cancel()
                else:
                    client.work.unpark_all()  # stopping: the writer drains, then returns
        finally:
            client.closing = True
            del self._clients[client.id]
            self._engine.client_closed(client.id)
            trio.lowlevel.notify_closing(client.sock)
            client.sock.close()
            log.debug("client %d: closed", client.id)

    # ------------------------------------------------------------------ reading

    async def _reader(self, client: _Client) -> bool:
        """Receive and handle requests; True at end of file, False when stopped."""
        sock = client.sock
        # One buffer for every receive: asking recvmsg() for the largest possible
        # message would allocate (and map) half a megabyte per datagram.
        buffer = bytearray(RECV_SIZE)
        view = memoryview(buffer)
        handled = 0
        with client.reader_scope:
            while True:
                while client.queued >= self._engine.knobs.client_buffer or client.dumps:
                    await client.room.park()
                try:
                    # With MSG_TRUNC a SEQPACKET receive returns the datagram's whole
                    # length, even one longer than the buffer (which is then cut).
                    size = sock.recv_into(view, 0, socket.MSG_TRUNC)
                    data = bytes(view[:size])
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                except OSError as exc:
                    log.debug("client %d: receive failed: %s", client.id, exc)
                    return True
                if not data and _hung_up(sock):
                    return True
                if not data or size > RECV_SIZE:
                    # Empty, or longer than any PF_KEY message can be: both kernels
                    # fail such a send() and answer nothing.
                    self._engine.stats.note_error(_SEND_FAILS_WITH[client.dialect])
                    self._engine.stats.note_drop("malformed_no_reply")
                else:
                    self._request(client, data)
                handled += 1
                if handled % READ_BATCH == 0:
                    await trio.lowlevel.checkpoint()  # a few datagrams, then everyone else's turn
        return False

    def _request(self, client: _Client, data: bytes) -> None:
        engine = self._engine
        level = self._trace_level()
        if not level:
            # The hot path (an ADD of a shape seen before) needs no decoding; the
            # trace wants the decoded message, so it is off while tracing.
            effects = engine.serve_hot(client.id, data, self._now())
            if effects is not None:
                self._route(effects, client, data)
                self._wake_timer()
                return
        try:
            msg = decode(data, client.dialect, max_size=engine.knobs.max_message_size)
        except DecodeError as exc:
            engine.stats.note_error(exc.errno)
            if exc.reply:
                self._enqueue(client, error_reply(data, exc.errno, client.dialect))
            else:
                engine.stats.note_drop("malformed_no_reply")
            if level:
                log.log(level, "client %d: malformed request (%s, errno %d%s)", client.id, exc, exc.errno,
                        "" if exc.reply else ", no reply")
            return
        if level:
            # The trace names the message and its extensions, never their contents:
            # no key material reaches a log.
            log.log(level, "client %d: %s satype %d seq %d pid %d, %d bytes, extensions %s", client.id,
                    _type_name(msg.type), msg.satype, msg.seq, msg.pid, len(data),
                    ",".join(_ext_name(e.exttype) for e in msg.exts) or "none")
        effects = engine.handle(client.id, msg, self._now(), raw=data)
        self._route(effects, client, data)
        self._wake_timer()
        if level:
            for eff in effects:
                if isinstance(eff, Error):
                    log.log(level, "client %d: answered errno %d", client.id, eff.errno)
                elif isinstance(eff, Dump):
                    log.log(level, "client %d: dump of %d entries", client.id, len(eff.items))
                elif isinstance(eff, SendEncoded):
                    log.log(level, "client %d: %s to %d client(s)", client.id, _type_name(eff.msgtype), len(eff.to))
                else:
                    log.log(level, "client %d: %s to %d client(s)%s", client.id, _type_name(eff.msg.type),
                            len(eff.to), " (promiscuous)" if eff.promisc else "")

    def _trace_level(self) -> int:
        """The level of the per-message trace: INFO while net.inet.ipsec.debug is set
        (sysctl switches it at run time), DEBUG under -d, otherwise none (0)."""
        if self._engine.knobs.debug:
            return logging.INFO
        return logging.DEBUG if log.isEnabledFor(logging.DEBUG) else 0

    def _wake_timer(self) -> None:
        """Wake the timer task if the engine's next deadline moved before its alarm."""
        deadline = self._engine.next_deadline()
        if deadline is not None and deadline < self._timer_at:
            self._timer_wake.unpark_all()

    # ------------------------------------------------------------------ routing

    def _route(self, effects: Iterable[Effect], requester: _Client | None, request: bytes | None) -> None:
        """Queue every effect, in order, without blocking."""
        for effect in effects:
            if isinstance(effect, Send):
                self._deliver(effect, requester, request)
            elif isinstance(effect, SendEncoded):
                self._deliver_encoded(effect)
            elif isinstance(effect, Error):
                if request is None:
                    msg = f"the engine returned {effect!r} outside a request"
                    raise RuntimeError(msg)
                target = self._clients.get(effect.to)
                if target is not None and not target.closing:
                    self._enqueue(target, error_reply(request, effect.errno, target.dialect))
            elif isinstance(effect, Dump):
                if request is None:
                    msg = f"the engine returned a dump to client {effect.to} outside a request"
                    raise RuntimeError(msg)
                target = self._clients.get(effect.to)
                if target is not None and not target.closing:
                    target.outbox.append(_DumpJob(effect, request))
                    target.dumps += 1
                    target.work.unpark_all()
            else:
                assert_never(effect)

    def _deliver(self, send: Send, requester: _Client | None, request: bytes | None) -> None:
        encoded: dict[tuple[Dialect, bool, bool], bytes | None] = {}
        for cid in send.to:
            client = self._clients.get(cid)
            if client is None or client.closing:
                continue
            private = send.reply and not send.promisc and client is requester
            wrap = send.promisc and client.dialect is Dialect.FREEBSD
            variant = (client.dialect, private, wrap)
            if variant in encoded:
                data = encoded[variant]
            else:
                data = encoded[variant] = self._encode(send.msg, client.dialect, private, wrap)
            if data is None:
                if private and request is not None:
                    # The answer cannot be said in this client's dialect; it still gets one.
                    self._enqueue(client, error_reply(request, errno.EINVAL, client.dialect))
                continue
            if send.reply:
                self._enqueue(client, data)
            elif client.queued + len(data) > self._engine.knobs.client_buffer:
                self._drop_broadcast(client)
            else:
                self._enqueue(client, data)

    def _deliver_encoded(self, send: SendEncoded) -> None:
        """The reply to ``send.to[0]`` and broadcast copies to the rest, as ``_deliver``
        does for the equivalent Send values."""
        data = send.data
        limit = self._engine.knobs.client_buffer
        for i, cid in enumerate(send.to):
            client = self._clients.get(cid)
            if client is None or client.closing:
                continue
            if i and client.queued + len(data) > limit:
                self._drop_broadcast(client)
            else:
                self._enqueue(client, data)

    def _encode(self, msg: Message, dialect: Dialect, private: bool, wrap: bool) -> bytes | None:
        try:
            data = encode(msg if private else msg.without_keys(), dialect)
            return promisc_wrap(data) if wrap else data
        except EncodeError as exc:
            self._engine.stats.note_drop("unencodable")
            log.warning("cannot send %s in the %s dialect: %s", _type_name(msg.type), dialect.value, exc)
            return None

    def _enqueue(self, client: _Client, data: bytes) -> None:
        if client.broken:
            return
        if not client.outbox:
            # Nothing queued ahead of it: hand it to the kernel now, as a kernel's
            # PF_KEY does before send() returns, and spare the writer a wake-up.
            try:
                client.sock.send(data)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                self._send_failed(client, data, exc)
                return
        client.outbox.append(data)
        client.queued += len(data)
        self._peak_queued = max(self._peak_queued, client.queued)
        client.work.unpark_all()

    def _drop_broadcast(self, client: _Client) -> None:
        self._engine.stats.note_drop("broadcast_buffer_full")
        self._broadcast_drops += 1
        client.drops += 1
        client.drops_unlogged += 1
        now = trio.current_time()
        if now - client.drop_logged_at >= DROP_LOG_INTERVAL:
            log.warning("client %d (%s): receive buffer full, %d broadcast(s) dropped (%d in all)",
                        client.id, client.path, client.drops_unlogged, client.drops)
            client.drop_logged_at = now
            client.drops_unlogged = 0

    # ------------------------------------------------------------------ writing

    async def _writer(self, client: _Client, scope: trio.CancelScope) -> None:
        try:
            while True:
                while not client.outbox:
                    if client.broken:
                        raise _ClientGone
                    if not client.reading:
                        return
                    await client.work.park()
                item = client.outbox[0]
                if isinstance(item, bytes):
                    await self._send(client, item)
                    client.queued -= len(item)
                else:
                    await self._stream_dump(client, item)
                    client.dumps -= 1
                client.outbox.popleft()
                client.room.unpark_all()
        except _ClientGone:
            scope.cancel()

    async def _send(self, client: _Client, data: bytes, *, checkpoint: bool = True) -> None:
        sock = client.sock
        while True:
            try:
                sock.send(data)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                checkpoint = False  # waiting was one
            except OSError as exc:
                self._send_failed(client, data, exc)
                if client.broken:
                    raise _ClientGone from exc
                return
        if checkpoint:
            await trio.lowlevel.checkpoint()

    def _send_failed(self, client: _Client, data: bytes, exc: OSError) -> None:
        if exc.errno == errno.EMSGSIZE:
            # Larger than the socket's send buffer: lose this message, not the client.
            self._engine.stats.note_drop("message_too_large")
            log.warning("client %d: a %d-byte message does not fit the socket", client.id, len(data))
            return
        log.debug("client %d: send failed: %s", client.id, exc)
        client.broken = True
        client.work.unpark_all()  # the writer ends the client

    async def _stream_dump(self, client: _Client, job: _DumpJob) -> None:
        dump = job.dump
        items = dump.items
        count = len(items)
        sock = client.sock
        held: bytes | None = None
        held_seq = 0
        skipped = 0
        for i in range(count):
            seq = count - 1 - i
            try:
                data = dump.render(items[i], client.dialect, seq, dump.pid)
            except EncodeError:
                skipped += 1
                continue
            if held is not None:
                # A trio checkpoint per entry would cost more than the entry: yield
                # to the other clients every DUMP_BATCH entries (and whenever the
                # socket is full, which waits anyway).  The common case, a socket
                # with room, is a plain send.
                if i % DUMP_BATCH:
                    try:
                        sock.send(held)
                    except OSError:
                        await self._send(client, held, checkpoint=False)
                else:
                    await self._send(client, held)
            held, held_seq = data, seq
        if skipped:
            self._engine.stats.note_drop("dump_unencodable", skipped)
            log.debug("client %d: %d dump entries cannot be carried by the %s dialect",
                      client.id, skipped, client.dialect.value)
        if held is None:
            # Nothing this client can read: answer as for an empty table.
            await self._send(client, error_reply(job.request, errno.ENOENT, client.dialect))
            return
        if held_seq != 0:
            patched = bytearray(held)
            _SEQ.pack_into(patched, _SEQ_OFFSET, 0)
            held = bytes(patched)
        await self._send(client, held)

    # ------------------------------------------------------------------ time

    def _now(self) -> Instant:
        return Instant(trio.current_time(), int(self._wall_clock()))

    async def _timer(self) -> None:
        with self._timer_scope:
            while True:
                deadline = self._engine.next_deadline()
                if deadline is not None and deadline <= trio.current_time():
                    self._route(self._engine.tick(self._now()), None, None)
                    await trio.lowlevel.checkpoint()
                    continue
                self._timer_at = math.inf if deadline is None else deadline
                with trio.move_on_at(self._timer_at):
                    await self._timer_wake.park()
                self._timer_at = math.inf


#: The errno of a send() of a datagram of impossible size: FreeBSD's length check
#: (EINVAL), Linux's (EMSGSIZE).
_SEND_FAILS_WITH = {Dialect.FREEBSD: errno.EINVAL, Dialect.LINUX: errno.EMSGSIZE}


def _hung_up(sock: socket.socket) -> bool:
    """After recv() returned nothing: did the peer close, or send an empty datagram?

    SEQPACKET reports both as a zero-length read; POLLRDHUP (Linux) tells them
    apart.  Where it does not exist, an empty read is taken as the end.  (An empty
    datagram followed by more requests and then a close loses those requests of a
    client that has gone anyway.)
    """
    rdhup = getattr(select, "POLLRDHUP", None)
    if rdhup is None:  # pragma: no cover - not Linux
        return True
    poller = select.poll()
    poller.register(sock.fileno(), rdhup)
    return bool(poller.poll(0))


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a daemon that died; refuse a live one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        msg = f"{path}: {exc.strerror}"
        raise ServerError(msg) from exc
    if not stat.S_ISSOCK(st.st_mode):
        msg = f"{path}: exists and is not a socket"
        raise ServerError(msg)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    probe.setblocking(False)  # a full backlog must not block the daemon's start
    with probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            # Nobody listens: the file outlived its daemon.
            os.unlink(path)
            log.info("removed stale socket %s", path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            msg = f"{path}: in use ({exc.strerror})"
            raise ServerError(msg) from exc
    msg = f"{path}: another daemon is listening there"
    raise ServerError(msg)
