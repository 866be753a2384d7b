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

New clients.  Each listener has an accept loop, but before a request is handled
the connections already waiting on the PF_KEY listeners are admitted too, so a
socket whose ``connect()`` has returned is on the broadcast lists of every request
sent after that (a kernel's PF_KEY socket is from ``socket()`` on).  Readers share
one receive buffer: an idle client holds none.

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
request moved that deadline earlier, then calls :meth:`KeyEngine.tick` for at most
``TICK_BATCH`` due deadlines at a time, with a checkpoint between the calls: an
expiry storm is served in slices between other clients' requests.  The
monotonic time is trio's clock (tests drive it with the autojump clock); the wall
clock is injected.

Send failures.  Where the dialect's kernel would fail the ``send()`` of a
malformed request, the client gets a header-only error reply with that errno
instead (``send_failure_reply``), counted as ``send_would_fail``: a client must
not be left waiting for an answer that never comes.

Failure.  A client that disconnects, never reads, or sends garbage affects only
itself.  Only ``OSError`` is caught around socket I/O; anything else is a bug and
propagates: it ends the daemon with a traceback.  The one exception is a control
request: whatever its bytes, and whatever goes wrong while its command runs, it is
answered with an error, logged with a rate limit and counted
(``control_bad_request``, ``control_failed``), and the daemon goes on.  Warnings
that a peer can cause (refused peers, accept() failing under fd exhaustion) are
rate-limited too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import secrets
import select
import socket
import stat
import struct
import sys
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
from pfkeyd.wire import Dialect, ExtType, Message, MsgType, decode, encode, error_reply
from pfkeyd.wire.framing import MAX_DATAGRAM, promisc_wrap
from pfkeyd.wire.message import send_failure_reply

__all__ = [
    "Endpoint",
    "EngineLike",
    "Server",
    "ControlRequestError",
    "ServerError",
    "ServerStatistics",
    "control_answer",
    "parse_control_request",
    "peer_credentials",
    "uid_allowed",
    "socket_acl",
]

log = logging.getLogger("pfkeyd.server")

#: At most one warning of a kind in this many seconds: broadcasts dropped (per client),
#: peers refused and accept() failing (per socket), control requests failing.  The
#: next warning says how many were suppressed.
DROP_LOG_INTERVAL = 10.0
#: A reader yields to the other tasks after this many requests in a row (and always
#: when its socket is empty, which waits).
READ_BATCH = 8
#: A dump yields to the other tasks every this many entries.
DUMP_BATCH = 32
#: The most due deadlines one tick takes on; the timer yields to the other tasks
#: between ticks, so an expiry storm (200 000 SAs due at once) never stalls them.
TICK_BATCH = 128
#: With durable state, a reader stops reading while this many steps wait for the
#: journal (their replies may not leave yet).
HELD_MAX = 16384
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


#: A control hook: (argv, now, dialect) -> (exit status, stdout text, stderr text,
#: effects); ``dialect`` is that of the PF_KEY socket the control socket is beside.
ControlHook = Callable[[Sequence[str], Instant, Dialect], tuple[int, str, str, Sequence[Effect]]]

#: The largest control request accepted; a longer one is answered "request too long".
CONTROL_REQUEST_MAX = 64 * 1024
#: How long a control peer has to send its request.
CONTROL_TIMEOUT = 10.0
#: Exit statuses of control answers the daemon gives itself (sysexits.h).
EX_USAGE, EX_SOFTWARE = 64, 70


class DurableLike(Protocol):
    """The durable state as the server sees it (:class:`pfkeyd.statedir.Durable`)."""

    appended: int
    committed: int
    on_commit: Callable[[int], None] | None

    def capture(self) -> int: ...

    async def wait(self, seq: int) -> None: ...


class ControlRequestError(ValueError):
    """A control request that is not ``{"argv": [str, ...]}`` in UTF-8 JSON."""


def parse_control_request(data: bytes) -> list[str]:
    """The argv of one control request (one datagram), or :class:`ControlRequestError`.

    The request is a UTF-8 JSON object whose ``argv`` is a list of strings; the
    strings are text (no lone surrogates) without NUL.  Any other bytes, however
    deep their nesting or long their numbers, raise ControlRequestError.
    """
    if len(data) > CONTROL_REQUEST_MAX:
        raise ControlRequestError("request too long")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ControlRequestError("not UTF-8") from None
    try:
        request = json.loads(text)
    except RecursionError:
        raise ControlRequestError("not JSON: nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError, an integer of too many digits
        raise ControlRequestError(f"not JSON: {_clip(str(exc))}") from None
    argv = request.get("argv") if isinstance(request, dict) else None
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise ControlRequestError('expected {"argv": [string, ...]}')
    for arg in argv:
        if "\0" in arg:
            raise ControlRequestError("an argument holds a NUL character")
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise ControlRequestError("an argument is not text (a lone surrogate)") from None
    return argv


def control_answer(status: int, out: str = "", err: str = "") -> bytes:
    """One control answer datagram."""
    return json.dumps({"status": status, "out": out, "err": err}).encode()


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _LogLimit:
    """At most one log line per ``interval`` seconds for one kind of event; the next
    line that gets through says how many were suppressed meanwhile."""

    __slots__ = ("at", "interval", "suppressed")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.at = -math.inf
        self.suppressed = 0

    def admit(self, now: float) -> int | None:
        """None if this event is not to be logged; else how many were suppressed."""
        if now - self.at < self.interval:
            self.suppressed += 1
            return None
        suppressed, self.suppressed, self.at = self.suppressed, 0, now
        return suppressed


class ServerError(Exception):
    """The daemon cannot start: a socket path in use, not a socket, not writable."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One listening socket: where it is and which dialect it speaks.

    ``fd`` is a socket already listening at ``path`` that was passed in (systemd
    socket activation), and ``control_fd`` that of its control socket; the server
    takes them over as they are and leaves their files in place at exit.
    """

    path: str
    dialect: Dialect
    fd: int | None = None
    control_fd: int | None = None


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
    dir_fd: int  # the directory it is in, to remove it from there


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
        durable: DurableLike | None = None,
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
        self._log_limits: dict[tuple[str, str], _LogLimit] = {}
        self._recv_view = memoryview(bytearray(MAX_DATAGRAM))  # shared by every reader
        # Durable state: what may leave only once the journal record of its step
        # is on disk, (sequence number, send it), in order.
        self._durable = durable
        self._held: deque[tuple[int, Callable[[], None]]] = deque()
        self._held_room = trio.lowlevel.ParkingLot()
        if durable is not None:
            durable.on_commit = self._release
        # The PF_KEY listeners, polled before each request (see _accept_pending), and
        # the nursery their clients run in; None when not accepting.
        self._pending: select.epoll | select.poll | None = None
        self._client_nursery: trio.Nursery | None = None

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
        self._emit(effects, None, None, "data plane")
        self._wake_timer()

    def set_knobs(self, knobs: Knobs) -> None:
        """Give the engine new knob values (SIGHUP's reload); they hold from the next
        message and the next tick, as a ``sysctl`` change does."""
        self._engine.knobs = knobs
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
                    ctl = Endpoint(control_path(endpoint.path), endpoint.dialect, endpoint.control_fd)
                    self._control_listeners.append(self._listen(ctl))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer)
                async with trio.open_nursery() as clients:
                    self._watch_pending(clients)
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
        if endpoint.fd is not None:
            passed = socket.socket(fileno=endpoint.fd)
            passed.setblocking(False)
            log.info("listening on %s (%s), passed in", path, endpoint.dialect.value)
            return _Listener(endpoint, passed, (0, 0), -1)  # dir_fd -1: not ours to remove
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            if len(os.fsencode(path)) > SUN_PATH_MAX:
                # The file could be made (see _bind_privately), but no client could connect to it.
                msg = f"{path}: too long for a Unix socket (at most {SUN_PATH_MAX} bytes)"
                raise ServerError(msg)
            parent = os.path.dirname(os.path.abspath(path))
            _check_directory(parent, os.stat(parent))
            _clear_stale_socket(path)
            ident = _bind_privately(sock, path, mode=0o600 if self._group is None else 0o660, group=self._group,
                                    allow=sorted(self._allow - {0, self._own_uid}))
        except ServerError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            msg = f"{path}: {exc.strerror or exc}"
            raise ServerError(msg) from exc
        log.info("listening on %s (%s)", path, endpoint.dialect.value)
        return _Listener(endpoint, sock, *ident)

    def _close_listeners(self) -> None:
        close = getattr(self._pending, "close", None)  # an epoll object is a descriptor
        if close is not None:
            close()
        self._pending = self._client_nursery = None
        while self._listeners or self._control_listeners:
            listener = (self._listeners or self._control_listeners).pop()
            trio.lowlevel.notify_closing(listener.sock)
            listener.sock.close()
            if listener.dir_fd < 0:
                continue  # passed in: the file belongs to whoever made it
            path = listener.endpoint.path
            name = os.path.basename(path)
            try:
                # In the directory it was linked into, whatever the path leads to now;
                # and only if it is still ours, not a successor's.
                st = os.stat(name, dir_fd=listener.dir_fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == listener.ident:
                    os.unlink(name, dir_fd=listener.dir_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc.strerror)
            finally:
                os.close(listener.dir_fd)

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
                    self._log_limited(("accept", listener.endpoint.path), logging.WARNING,
                                      "accept on %s: %s; pausing 100 ms", listener.endpoint.path, exc.strerror)
                    await trio.sleep(0.1)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the peer left before it was accepted
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
        try:
            with trio.move_on_after(CONTROL_TIMEOUT):
                while True:
                    try:
                        # One byte more than the limit tells a request that is too long.
                        data = sock.recv(CONTROL_REQUEST_MAX + 1)
                        break
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(sock)
                payload = self._control_request(data, dialect)
                if self._durable is not None:
                    await self._durable.wait(self._durable.appended)  # a knob change is on disk
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

    def _control_request(self, data: bytes, dialect: Dialect) -> bytes:
        """Run one control request and return the answer.

        This is the one boundary of a control request: a request that cannot be
        read, and a command that fails, are answered with an error, logged (with a
        rate limit) and counted, and the daemon goes on.  A failing command is a bug
        in pfkeyd, so its log line carries the traceback.
        """
        assert self._control is not None
        stats = self._engine.stats
        try:
            argv = parse_control_request(data)
        except ControlRequestError as exc:
            stats.note_drop("control_bad_request")
            self._log_limited(("control", "bad"), logging.WARNING, "bad control request of %d bytes: %s",
                              len(data), exc)
            return control_answer(EX_USAGE, err=f"pfkeyd: bad control request: {exc}\n")
        try:
            status, out, err, effects = self._control(argv, self._now(), dialect)
            self._emit(effects, None, None, "control")
            self._wake_timer()
            return control_answer(status, out, err)
        except Exception:  # the boundary: the daemon and its other clients go on
            stats.note_drop("control_failed")
            self._log_limited(("control", "failed"), logging.ERROR, "control command %s failed",
                              _clip(repr(argv[:1])), exc_info=True)
            return control_answer(EX_SOFTWARE, err="pfkeyd: the command failed inside the daemon "
                                  "(an internal error; the daemon's log has the details)\n")

    def _log_limited(self, key: tuple[str, str], level: int, fmt: str, *args: object,
                     exc_info: bool = False) -> None:
        """Log at most once per DROP_LOG_INTERVAL seconds for ``key``, saying how many
        lines were suppressed since the last one."""
        limit = self._log_limits.get(key)
        if limit is None:
            limit = self._log_limits[key] = _LogLimit(DROP_LOG_INTERVAL)
        suppressed = limit.admit(trio.current_time())
        if suppressed is None:
            return
        if suppressed:
            fmt += " (%d more suppressed in the last %g s)"
            args = (*args, suppressed, DROP_LOG_INTERVAL)
        log.log(level, fmt, *args, exc_info=exc_info)

    def _credentials(self, sock: socket.socket, endpoint: Endpoint) -> tuple[int, int] | None:
        """The peer's (pid, uid) if it may use the daemon; otherwise close it and log."""
        try:
            creds = peer_credentials(sock)
        except OSError as exc:
            self._log_limited(("no credentials", endpoint.path), logging.WARNING,
                              "refused a peer on %s: no credentials (%s)", endpoint.path, exc.strerror)
            creds = None
        if creds is None or not uid_allowed(creds[1], own_uid=self._own_uid, allow=self._allow):
            self._refused += 1
            if creds is not None:
                self._log_limited(("refused", endpoint.path), logging.WARNING, "refused peer uid %d pid %d on %s",
                                  creds[1], creds[0], endpoint.path)
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

    def _watch_pending(self, nursery: trio.Nursery) -> None:
        # epoll_wait() on a ready list costs about half of a poll() over the
        # listeners, and it runs before every request.
        poller: select.epoll | select.poll
        if hasattr(select, "epoll"):
            poller = select.epoll()
            for listener in self._listeners:
                poller.register(listener.sock, select.EPOLLIN)
        else:  # pragma: no cover - not Linux
            poller = select.poll()
            for listener in self._listeners:
                poller.register(listener.sock, select.POLLIN)
        self._pending, self._client_nursery = poller, nursery

    def _accept_pending(self) -> None:
        """Admit every connection already waiting on a PF_KEY listener.

        A kernel's PF_KEY socket receives broadcasts from the moment ``socket()``
        returns; here a client exists once its ``connect()`` has returned, which is
        when the connection is queued on the listener.  Called before each request
        is handled, this puts every such client on the broadcast lists before the
        engine chooses the recipients, whichever task the accept loop is.  (Only
        requests can broadcast to a socket that has not asked for anything yet:
        EXPIRE, ACQUIRE and SPDEXPIRE go to registered sockets.)  One poll() when
        nothing is waiting (the caller's); errors are left to the accept loop, which
        retries and logs them.
        """
        nursery = self._client_nursery
        if nursery is None or self._stop.is_set():
            return
        for listener in self._listeners:
            while True:
                try:
                    sock, _ = listener.sock.accept()
                except OSError:  # BlockingIOError: none left; anything else: the accept loop's
                    break
                sock.setblocking(False)
                client = self._admit(sock, listener.endpoint)
                if client is not None:
                    nursery.start_soon(self._run_client, client)

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
        # Every reader receives into the server's one buffer: the datagram is copied
        # out before the next await, and readers take turns, so an idle client holds
        # no buffer at all.  (A buffer per reader cost 512 KiB of RSS per client;
        # asking recv() for the largest possible message would allocate and map
        # that much per datagram.)
        view = self._recv_view
        handled = 0
        with client.reader_scope:
            while True:
                while client.queued >= self._engine.knobs.client_buffer or client.dumps:
                    await client.room.park()
                while len(self._held) >= HELD_MAX:
                    await self._held_room.park()
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
                if not data or size > MAX_DATAGRAM:
                    # Empty, or longer than any PF_KEY message can be: both kernels
                    # fail such a send().
                    self._send_fails(client, data, _SEND_FAILS_WITH[client.dialect])
                else:
                    self._request(client, data)
                handled += 1
                if handled % READ_BATCH == 0:
                    await trio.lowlevel.checkpoint()  # a few datagrams, then everyone else's turn
        return False

    def _request(self, client: _Client, data: bytes) -> None:
        pending = self._pending
        if pending is not None and pending.poll(0):
            self._accept_pending()
        engine = self._engine
        level = self._trace_level()
        if not level:
            # The hot path (an ADD of a shape seen before) needs no decoding; the
            # trace wants the decoded message, so it is off while tracing.
            effects = engine.serve_hot(client.id, data, self._now())
            if effects is not None:
                self._emit(effects, client, data, trace=False)  # tracing is off here
                self._wake_timer()
                return
        try:
            msg = decode(data, client.dialect, max_size=engine.knobs.max_message_size)
        except DecodeError as exc:
            if exc.reply:
                engine.stats.note_error(exc.errno)
                self._reply(client, error_reply(data, exc.errno, client.dialect))
            else:
                self._send_fails(client, data, exc.errno)
            if level:
                log.log(level, "client %d: malformed request (%s, errno %d%s)", client.id, exc, exc.errno,
                        "" if exc.reply else ", where the kernel's send() fails")
            return
        if level:
            # The trace names the message and its extensions, never their contents:
            # no key material reaches a log.
            log.log(level, "client %d: %s satype %d seq %d pid %d, %d bytes, extensions %s", client.id,
                    _type_name(msg.type), msg.satype, msg.seq, msg.pid, len(data),
                    ",".join(_ext_name(e.exttype) for e in msg.exts) or "none")
        effects = engine.handle(client.id, msg, self._now(), raw=data)
        self._emit(effects, client, data)
        self._wake_timer()

    def _send_fails(self, client: _Client, data: bytes, err: int) -> None:
        """A request the dialect's kernel refuses at send(): the sender learns it at
        once from the failed call.  pfkeyd cannot fail a send, so it answers with the
        header alone carrying that errno (pfkey(4)), rather than leave the client
        waiting for a reply that never comes; counted as ``send_would_fail``."""
        self._engine.stats.note_error(err)
        self._engine.stats.note_drop("send_would_fail")
        self._reply(client, send_failure_reply(data, err, client.dialect))

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

    def _emit(self, effects: Sequence[Effect], requester: _Client | None, request: bytes | None,
              origin: str = "timer", *, trace: bool = True) -> None:
        """Route the effects of one step (request, tick, control command) now, or,
        with durable state, once the journal record of its changes is on disk:
        nothing leaves before what it acknowledges is durable, and nothing
        overtakes what waits."""
        durable = self._durable
        if durable is not None:
            seq = durable.capture()
            if seq > durable.committed or self._held:
                self._held.append((seq, partial(self._route, effects, requester, request, origin, trace=trace)))
                return
        self._route(effects, requester, request, origin, trace=trace)

    def _reply(self, client: _Client, data: bytes) -> None:
        """A reply the shell makes itself (a malformed request's), in its turn."""
        if self._held:
            assert self._durable is not None
            self._held.append((self._durable.appended, partial(self._enqueue_open, client, data)))
        else:
            self._enqueue(client, data)

    def _enqueue_open(self, client: _Client, data: bytes) -> None:
        if not client.closing:
            self._enqueue(client, data)

    def _release(self, committed: int) -> None:
        """The durable state's committer: records up to ``committed`` are on disk."""
        held = self._held
        while held and held[0][0] <= committed:
            held.popleft()[1]()
        self._held_room.unpark_all()
        if not held and self._stop.is_set():
            for client in self._clients.values():
                client.work.unpark_all()  # writers that wait for the last replies to leave


    def _route(self, effects: Sequence[Effect], requester: _Client | None, request: bytes | None,
               origin: str = "timer", *, trace: bool = True) -> None:
        """Queue every effect, in order, without blocking.  ``origin`` names what
        caused effects without a requester in the trace ("timer", "control")."""
        if trace and effects:
            level = self._trace_level()
            if level:
                _trace(level, f"client {requester.id}" if requester is not None else origin, effects)
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
                    if not client.reading and not self._held:
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
                    # A bounded batch, then everyone else's turn; the loop comes
                    # back while anything is still due.
                    self._emit(self._engine.tick(self._now(), limit=TICK_BATCH), None, None)
                    await trio.lowlevel.checkpoint()
                    continue
                self._timer_at = math.inf if deadline is None else deadline
                with trio.move_on_at(self._timer_at):
                    await self._timer_wake.park()
                self._timer_at = math.inf


def _trace(level: int, origin: str, effects: Sequence[Effect]) -> None:
    """The -d trace of what the daemon sends: replies, broadcasts, promiscuous
    copies, errors and dumps, whether a request, the timer (ACQUIRE retries,
    EXPIRE, SPDEXPIRE) or a control command (the ACQUIRE of a lookup) caused them.
    It names messages and extensions, never their contents: no key material."""
    for eff in effects:
        if isinstance(eff, Error):
            log.log(level, "%s: answered errno %d", origin, eff.errno)
        elif isinstance(eff, Dump):
            log.log(level, "%s: %s of %d entries", origin, _type_name(eff.msgtype), len(eff.items))
        elif isinstance(eff, SendEncoded):
            log.log(level, "%s: %s to %s", origin, _type_name(eff.msgtype), _recipients(eff.to))
        else:
            m = eff.msg
            kind = "promiscuous copy of " if eff.promisc else "" if eff.reply else "broadcast "
            log.log(level, "%s: %s%s satype %d seq %d pid %d to %s, extensions %s", origin, kind,
                    _type_name(m.type), m.satype, m.seq, m.pid, _recipients(eff.to),
                    ",".join(_ext_name(e.exttype) for e in m.exts if eff.reply or not _is_key(e.exttype))
                    or "none")


def _recipients(to: Sequence[ClientId]) -> str:
    clients = ",".join(str(c) for c in to[:8]) + (",..." if len(to) > 8 else "")
    return f"client{'s' * (len(to) != 1)} {clients}" if to else "no client"


def _is_key(exttype: int) -> bool:
    return exttype in (ExtType.KEY_AUTH, ExtType.KEY_ENCRYPT)


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


def _check_directory(parent: str, st: os.stat_result) -> None:
    """Refuse a socket directory where another user could replace the socket file:
    writable by group or others without the sticky bit, or owned by a user other
    than root and the daemon's."""
    if not stat.S_ISDIR(st.st_mode):
        msg = f"{parent}: not a directory"
        raise ServerError(msg)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        msg = (f"{parent}: other users may write to this directory (mode {stat.S_IMODE(st.st_mode):04o}, "
               "no sticky bit) and could replace the socket; use a directory only its owner can write, "
               "or one with the sticky bit")
        raise ServerError(msg)
    if st.st_uid not in (0, os.geteuid()):
        msg = f"{parent}: owned by uid {st.st_uid}, who could replace the socket; use a directory of your own"
        raise ServerError(msg)


#: The longest path a Unix socket address holds (sun_path is 108 bytes on Linux, 104
#: on the BSDs, with its NUL).
SUN_PATH_MAX = 107 if sys.platform.startswith("linux") else 103

#: Linux's POSIX ACL xattr (include/uapi/linux/posix_acl_xattr.h): a version word,
#: then (tag, permissions, id) entries sorted by tag and id.
_ACL_XATTR = "system.posix_acl_access"
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_ACL_NO_ID = 0xFFFFFFFF
_RW = 6


def socket_acl(mode: int, uids: Sequence[int]) -> bytes:
    """The access ACL that gives ``uids`` read and write on a socket file of ``mode``
    (0600 or 0660): the owner and the group keep their bits, nobody else gets any."""
    entries = [(_ACL_USER_OBJ, (mode >> 6) & 7, _ACL_NO_ID)]
    entries += [(_ACL_USER, _RW, uid) for uid in sorted(set(uids))]
    entries += [(_ACL_GROUP_OBJ, (mode >> 3) & 7, _ACL_NO_ID), (_ACL_MASK, _RW, _ACL_NO_ID),
                (_ACL_OTHER, 0, _ACL_NO_ID)]
    return _ACL_HEADER.pack(_ACL_VERSION) + b"".join(_ACL_ENTRY.pack(*e) for e in entries)


def _bind_privately(sock: socket.socket, path: str, *, mode: int, group: int | None,
                    allow: Sequence[int]) -> tuple[tuple[int, int], int]:
    """Bind ``sock`` to ``path`` and listen, so that nothing done to the file can be redirected.

    The socket is bound inside a new directory of mode 0700 beside ``path``, which
    no other user can enter or change; it gets its group, mode and (for ``allow``,
    the --allow-uid users) an ACL there, through a descriptor of that directory,
    and is then hard-linked to ``path``.  link() neither follows a symlink nor
    replaces anything at ``path``: a file that appeared there meanwhile is an
    error.  Returns the file's (st_dev, st_ino) and a descriptor of the directory
    it is in (the caller closes it).
    """
    parent, base = os.path.split(os.path.abspath(path))
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    done = False
    try:
        _check_directory(parent, os.fstat(parent_fd))  # the directory itself, whatever its path leads to now
        for _ in range(100):
            private = f".pfk{secrets.token_hex(3)}"
            try:
                os.mkdir(private, 0o700, dir_fd=parent_fd)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 collisions of 24 random bits
            msg = f"{parent}: cannot make a private directory"
            raise ServerError(msg)
        try:
            dir_fd = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            try:
                ident = _setup_in(sock, dir_fd, os.path.join(parent, private, "s"), path, base, parent_fd,
                                  mode=mode, group=group, allow=allow)
                done = True
                return ident, parent_fd
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink("s", dir_fd=dir_fd)
                os.close(dir_fd)
        finally:
            os.rmdir(private, dir_fd=parent_fd)
    finally:
        if not done:
            os.close(parent_fd)


def _setup_in(sock: socket.socket, dir_fd: int, bind_path: str, path: str, base: str, parent_fd: int, *,
              mode: int, group: int | None, allow: Sequence[int]) -> tuple[int, int]:
    own = os.fstat(dir_fd)
    if own.st_uid != os.geteuid() or stat.S_IMODE(own.st_mode) & 0o077:
        msg = f"{path}: the private directory beside it was replaced while starting"
        raise ServerError(msg)
    sock.bind(bind_path)
    st = os.stat("s", dir_fd=dir_fd, follow_symlinks=False)  # the file bind() made, seen through our descriptor
    if not stat.S_ISSOCK(st.st_mode):  # pragma: no cover - only we can write the private directory
        msg = f"{path}: the private directory beside it was tampered with while starting"
        raise ServerError(msg)
    if group is not None:
        os.chown("s", -1, group, dir_fd=dir_fd, follow_symlinks=False)
    os.chmod("s", mode, dir_fd=dir_fd)  # no symlink can be there: the directory is ours alone
    if allow:
        _grant(path, dir_fd, mode, allow)
    # Nobody could reach the file before it is linked into place with its final
    # mode, owner and ACL, and it listens from the moment it appears.
    sock.listen(socket.SOMAXCONN)
    try:
        os.link("s", base, src_dir_fd=dir_fd, dst_dir_fd=parent_fd)
    except FileExistsError:
        msg = f"{path}: a file appeared there while starting"
        raise ServerError(msg) from None
    return st.st_dev, st.st_ino


def _grant(path: str, dir_fd: int, mode: int, allow: Sequence[int]) -> None:
    """Let the --allow-uid users reach the socket file: a POSIX ACL naming them."""
    setxattr = getattr(os, "setxattr", None)
    if setxattr is None:  # pragma: no cover - not Linux
        msg = f"{path}: --allow-uid needs POSIX ACLs (Linux) to let those users reach the socket; use --group"
        raise ServerError(msg)
    try:
        # /proc/self/fd/N is our private directory itself, whatever its path now.
        setxattr(f"/proc/self/fd/{dir_fd}/s", _ACL_XATTR, socket_acl(mode, allow), follow_symlinks=False)
    except OSError as exc:
        msg = (f"{path}: cannot let the --allow-uid users reach the socket: no POSIX ACL "
               f"({exc.strerror}); use --group with a group of those users")
        raise ServerError(msg) from exc


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
