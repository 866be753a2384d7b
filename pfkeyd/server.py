"""The trio shell of pfkeyd: Unix sockets in, the daemon layer, Unix sockets out.

Theory of operation
-------------------
Each listening socket is an ``AF_UNIX``/``SOCK_SEQPACKET`` socket with a dialect
(freebsd or linux).  One datagram carries one PF_KEY message, so a client reads a
whole message with one ``recv()``, as it does on a kernel PF_KEY socket.

Every accepted client gets a nursery holding two tasks:

* the **reader** receives a datagram, hands it to :meth:`Daemon.receive`
  (:mod:`pfkeyd.daemon`: decoding, the hot path, the engine, encoding, error
  replies, all without I/O) and queues what it returns.  That call is synchronous,
  so every message caused by one request is queued before any other request is
  handled: requests are processed in the order each client sent them, and a
  broadcast can never overtake the reply that caused it.
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
slows only that client.  Broadcasts (:class:`~pfkeyd.daemon.Broadcast`) must not
wait: a copy that would take a client's outbox past ``knobs.client_buffer`` is
dropped for that client only, counted (``broadcast_buffer_full``) and logged with a
rate limit.  FreeBSD's keysock drops silently, even replies and dump entries
(reference §1.6, §8.1); this is the fix.

Ordering.  The outbox is one FIFO, so broadcasts queued while a dump is being
streamed follow its last entry.  setkey(8) ends a dump at the first message with
seq 0 whatever its type (reference §8.5), so an interleaved broadcast could cut its
dump short.

Keys, promiscuous framing, dump rendering and error replies (including the
header-only answer where the dialect's kernel would fail the ``send()``) are the
daemon layer's (:mod:`pfkeyd.daemon`): the shell sends the bytes it is given.  A
dump arrives as a :class:`~pfkeyd.daemon.DumpStream`, which the writer renders one
entry at a time as the socket drains.

Time.  One timer task sleeps until :meth:`Daemon.next_deadline`, or until a
request moved that deadline earlier, then calls :meth:`Daemon.tick` for at most
``TICK_BATCH`` due deadlines at a time, with a checkpoint between the calls: an
expiry storm is served in slices between other clients' requests.  The
monotonic time is trio's clock (tests drive it with the autojump clock); the wall
clock is injected.

Durable state (``--state-dir``, :mod:`pfkeyd.statedir`).  After each step (a
request, a tick, a control command, the data plane's effects) ``_send_out`` has
the durable state capture what the step changed into a journal record; what the
step sends waits, in order, until that record is on disk, and nothing sent later
overtakes it.  The committer's callback (``_release``) sends what may go.  A
control answer waits the same way.

Failure.  A client that disconnects, never reads, or sends garbage affects only
itself: whatever a PF_KEY request holds, :meth:`Daemon.receive` answers it (an
internal error there is answered EINVAL and logged here, with a rate limit and
its traceback).  Only ``OSError`` is caught around socket I/O; anything else is a
bug and propagates: it ends the daemon with a traceback.  So is a control
request: whatever its bytes, and whatever goes wrong while its command runs, it is
answered with an error, logged with a rate limit and counted
(``control_bad_request``, ``control_failed``), and the daemon goes on.  Warnings
that a peer can cause (refused peers, accept() failing under fd exhaustion) are
rate-limited too.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import trio

from pfkeyd.control_socket import (
    CONTROL_REQUEST_MAX,
    CONTROL_TIMEOUT,
    EX_SOFTWARE,
    EX_USAGE,
    ControlHook,
    ControlRequestError,
    clip,
    control_answer,
    parse_control_request,
    serve_peer,
)
from pfkeyd.daemon import Broadcast, Daemon, DumpStream, EngineLike, Outgoing, Reply
from pfkeyd.defaults import control_path
from pfkeyd.effects import ClientId, Effect, Instant
from pfkeyd.knobs import Knobs
from pfkeyd.sockets import (
    SUN_PATH_MAX,
    Endpoint,
    Listener,
    ServerError,
    close_listener,
    listen,
    peer_credentials,
    socket_acl,
    uid_allowed,
)
from pfkeyd.wire import Dialect
from pfkeyd.wire.framing import MAX_DATAGRAM

__all__ = [
    "CONTROL_REQUEST_MAX",
    "CONTROL_TIMEOUT",
    "ControlHook",
    "ControlRequestError",
    "Endpoint",
    "DurableLike",
    "EngineLike",
    "SUN_PATH_MAX",
    "Server",
    "ServerError",
    "ServerStatistics",
    "control_answer",
    "parse_control_request",
    "peer_credentials",
    "socket_acl",
    "uid_allowed",
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
#: accept() failing with these means the process is out of descriptors or memory:
#: pause ACCEPT_PAUSE seconds and retry, rather than end the daemon.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE = 0.1


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


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """The shell's own figures (the engine counts messages; see ``engine.stats``)."""

    clients: int
    queued_bytes: int  #: bytes waiting in all outboxes now
    peak_queued_bytes: int  #: the most any one outbox ever held
    dumps_in_progress: int
    broadcast_drops: int
    refused_peers: int


class _ClientGone(Exception):
    """The peer went away; raised by :meth:`Server._send` to end the client's tasks."""


class _Client:
    """One connected PF_KEY socket and its outbox."""

    __slots__ = (
        "broken",
        "closing",
        "dialect",
        "drop_logged_at",
        "drops",
        "drops_unlogged",
        "dumps",
        "id",
        "outbox",
        "path",
        "queued",
        "reader_scope",
        "reading",
        "room",
        "sock",
        "uid",
        "work",
    )

    def __init__(self, cid: ClientId, sock: socket.socket, endpoint: Endpoint, uid: int) -> None:
        self.id = cid
        self.sock = sock
        self.dialect = endpoint.dialect
        self.path = endpoint.path
        self.uid = uid
        self.outbox: deque[bytes | DumpStream] = deque()
        self.queued = 0  # bytes of encoded messages in the outbox
        self.dumps = 0  # dump streams in the outbox
        self.work = trio.lowlevel.ParkingLot()  # the writer waits here for items
        self.room = trio.lowlevel.ParkingLot()  # the reader waits here for the outbox to drain
        self.reader_scope = trio.CancelScope()
        self.reading = True
        self.closing = False
        self.broken = False  # a send found the peer gone
        self.drops = 0
        self.drops_unlogged = 0
        self.drop_logged_at = -math.inf


class DurableLike(Protocol):
    """The durable state as the server sees it (:class:`pfkeyd.statedir.Durable`)."""

    appended: int
    committed: int
    on_commit: Callable[[int], None] | None

    def capture(self) -> int: ...

    async def wait(self, seq: int) -> None: ...


class Server:
    """Serve pfkeyd's daemon layer on one or more PF_KEY-over-SEQPACKET sockets.

    ``daemon`` is a :class:`~pfkeyd.daemon.Daemon` (an engine is wrapped in one).
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
        daemon: Daemon | EngineLike,
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
        self._daemon = daemon if isinstance(daemon, Daemon) else Daemon(daemon)
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
        self._listeners: list[Listener] = []
        self._control = control
        self._control_listeners: list[Listener] = []
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

    @property
    def daemon(self) -> Daemon:
        return self._daemon

    def stop(self) -> None:
        """Begin an orderly shutdown; :meth:`serve` returns when it is done."""
        self._stop.set()

    def emit(self, effects: Sequence[Effect]) -> None:
        """Carry out effects that arose outside any request (the data plane's ACQUIREs
        and EXPIREs): the daemon layer encodes them as it does a request's, and they
        go out as its messages do."""
        if effects:
            level = self._trace_level()
            self._send_out(self._daemon.deliver(effects, "data plane", trace=bool(level)), level)
        self._wake_timer()

    def set_knobs(self, knobs: Knobs) -> None:
        """Give the daemon new knob values (SIGHUP's reload); they hold from the next
        message and the next tick, as a ``sysctl`` change does."""
        self._daemon.knobs = knobs
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
            allow = sorted(self._allow - {0, self._own_uid})
            for endpoint in self._endpoints:
                self._listeners.append(listen(endpoint, group=self._group, allow=allow))
                if self._control is not None:
                    ctl = Endpoint(control_path(endpoint.path), endpoint.dialect, endpoint.control_fd)
                    self._control_listeners.append(listen(ctl, group=self._group, allow=allow))
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
                    # No new messages from here on: no timer, no requests.
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

    def _close_listeners(self) -> None:
        close = getattr(self._pending, "close", None)  # an epoll object is a descriptor
        if close is not None:
            close()
        self._pending = self._client_nursery = None
        while self._listeners or self._control_listeners:
            listener = (self._listeners or self._control_listeners).pop()
            trio.lowlevel.notify_closing(listener.sock)
            close_listener(listener)

    async def _accept_loop(self, listener: Listener, nursery: trio.Nursery, *, control: bool = False) -> None:
        """Accept peers on one socket; PF_KEY clients get a reader and a writer, control
        peers one request and one answer.  Both pass the same credential check."""
        while True:
            try:
                sock, _ = listener.sock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener.sock)
                continue
            except OSError as exc:
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    self._log_limited(
                        ("accept", listener.endpoint.path),
                        logging.WARNING,
                        "accept on %s: %s; pausing 100 ms",
                        listener.endpoint.path,
                        exc.strerror,
                    )
                    await trio.sleep(ACCEPT_PAUSE)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the peer left before it was accepted
                raise
            sock.setblocking(False)
            if control:
                if self._credentials(sock, listener.endpoint) is not None:
                    dialect = listener.endpoint.dialect
                    nursery.start_soon(
                        partial(serve_peer, sock, partial(self._control_request, dialect=dialect), settle=self._settle)
                    )
            else:
                client = self._admit(sock, listener.endpoint)
                if client is not None:
                    nursery.start_soon(self._run_client, client)
            await trio.lowlevel.checkpoint()

    async def _settle(self) -> None:
        """Before a control answer leaves: with durable state, until what the
        command changed (a knob) is on disk."""
        if self._durable is not None:
            await self._durable.wait(self._durable.appended)

    def _control_request(self, data: bytes, dialect: Dialect) -> bytes:
        """Run one control request and return the answer.

        This is the one boundary of a control request: a request that cannot be
        read, and a command that fails, are answered with an error, logged (with a
        rate limit) and counted, and the daemon goes on.  A failing command is a bug
        in pfkeyd, so its log line carries the traceback.
        """
        assert self._control is not None
        daemon = self._daemon
        try:
            argv = parse_control_request(data)
        except ControlRequestError as exc:
            daemon.dropped(None, "control_bad_request")
            self._log_limited(
                ("control", "bad"), logging.WARNING, "bad control request of %d bytes: %s", len(data), exc
            )
            return control_answer(EX_USAGE, err=f"pfkeyd: bad control request: {exc}\n")
        try:
            status, out, err, effects = self._control(argv, self._now(), dialect)
            self._send_out(daemon.deliver(effects, "control", trace=bool(self._trace_level())))
            self._wake_timer()
            return control_answer(status, out, err)
        except Exception:  # the boundary: the daemon and its other clients go on
            daemon.dropped(None, "control_failed")
            self._log_limited(
                ("control", "failed"), logging.ERROR, "control command %s failed", clip(repr(argv[:1])), exc_info=True
            )
            return control_answer(
                EX_SOFTWARE,
                err="pfkeyd: the command failed inside the daemon "
                "(an internal error; the daemon's log has the details)\n",
            )

    def _log_limited(
        self, key: tuple[str, str], level: int, fmt: str, *args: object, exc_info: bool | BaseException = False
    ) -> None:
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
            self._log_limited(
                ("no credentials", endpoint.path),
                logging.WARNING,
                "refused a peer on %s: no credentials (%s)",
                endpoint.path,
                exc.strerror,
            )
            creds = None
        if creds is None or not uid_allowed(creds[1], own_uid=self._own_uid, allow=self._allow):
            self._refused += 1
            if creds is not None:
                self._log_limited(
                    ("refused", endpoint.path),
                    logging.WARNING,
                    "refused peer uid %d pid %d on %s",
                    creds[1],
                    creds[0],
                    endpoint.path,
                )
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
        self._daemon.opened(cid, endpoint.dialect)
        log.debug("client %d: uid %d pid %d on %s", cid, creds[1], creds[0], endpoint.path)
        return client

    def _watch_pending(self, nursery: trio.Nursery) -> None:
        # epoll, not poll: this runs before every request (bench/README.md).
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
            self._daemon.closed(client.id)
            trio.lowlevel.notify_closing(client.sock)
            client.sock.close()
            log.debug("client %d: closed", client.id)

    # ------------------------------------------------------------------ reading

    async def _reader(self, client: _Client) -> bool:
        """Receive and handle requests; True at end of file, False when stopped."""
        sock = client.sock
        # Every reader receives into the server's one buffer: the datagram is copied
        # out before the next await, and readers take turns, so an idle client holds
        # no buffer at all (the memory figures are in bench/README.md).
        view = self._recv_view
        handled = 0
        with client.reader_scope:
            while True:
                while client.queued >= self._daemon.knobs.client_buffer or client.dumps:
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
                pending = self._pending
                if pending is not None and pending.poll(0):
                    self._accept_pending()
                level = self._trace_level()
                out = self._daemon.receive(client.id, data, self._now(), length=size, trace=bool(level))
                self._send_out(out, level)
                self._wake_timer()
                handled += 1
                if handled % READ_BATCH == 0:
                    await trio.lowlevel.checkpoint()  # a few datagrams, then everyone else's turn
        return False

    def _trace_level(self) -> int:
        """The level of the per-message trace: INFO while net.inet.ipsec.debug is set
        (sysctl switches it at run time), DEBUG under -d, otherwise none (0)."""
        if self._daemon.knobs.debug:
            return logging.INFO
        return logging.DEBUG if log.isEnabledFor(logging.DEBUG) else 0

    def _wake_timer(self) -> None:
        """Wake the timer task if the daemon's next deadline moved before its alarm."""
        deadline = self._daemon.next_deadline()
        if deadline is not None and deadline < self._timer_at:
            self._timer_wake.unpark_all()

    # ------------------------------------------------------------------ routing

    def _send_out(self, out: Sequence[Outgoing], level: int = 0) -> None:
        """Send what one step (a request, a tick, a control command) made now, or,
        with durable state, once the journal record of its changes is on disk:
        nothing leaves before what it acknowledges is durable, and nothing
        overtakes what waits."""
        durable = self._durable
        if durable is not None:
            seq = durable.capture()
            if seq > durable.committed or self._held:
                self._held.append((seq, partial(self._deliver_out, out, level)))
                return
        self._deliver_out(out, level)

    def _release(self, committed: int) -> None:
        """The durable state's committer: records up to ``committed`` are on disk."""
        held = self._held
        while held and held[0][0] <= committed:
            held.popleft()[1]()
        self._held_room.unpark_all()
        if not held and self._stop.is_set():
            for client in self._clients.values():
                client.work.unpark_all()  # writers that wait for the last replies to leave

    def _deliver_out(self, out: Sequence[Outgoing], level: int = 0) -> None:
        """Queue every outgoing message, in order, without blocking."""
        clients = self._clients
        for item in out:
            if isinstance(item, Reply):
                data = item.data
                for cid in item.to:
                    client = clients.get(cid)
                    if client is not None and not client.closing:
                        self._enqueue(client, data)
            elif isinstance(item, Broadcast):
                data = item.data
                limit = self._daemon.knobs.client_buffer
                for cid in item.to:
                    client = clients.get(cid)
                    if client is None or client.closing:
                        continue
                    if client.queued + len(data) > limit:
                        self._drop_broadcast(client)
                    else:
                        self._enqueue(client, data)
            elif isinstance(item, DumpStream):
                client = clients.get(item.to)
                if client is not None and not client.closing:
                    client.outbox.append(item)
                    client.dumps += 1
                    client.work.unpark_all()
            elif item.kind == "trace":
                log.log(level or self._trace_level() or logging.DEBUG, item.fmt, *item.args)
            elif item.kind == "internal":
                self._log_limited(("internal", ""), logging.ERROR, item.fmt, *item.args, exc_info=item.exc or False)
            else:
                log.warning(item.fmt, *item.args)

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
        self._daemon.dropped(client.id, "broadcast_buffer_full")
        self._broadcast_drops += 1
        client.drops += 1
        client.drops_unlogged += 1
        now = trio.current_time()
        if now - client.drop_logged_at >= DROP_LOG_INTERVAL:
            log.warning(
                "client %d (%s): receive buffer full, %d broadcast(s) dropped (%d in all)",
                client.id,
                client.path,
                client.drops_unlogged,
                client.drops,
            )
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
            self._daemon.dropped(client.id, "message_too_large")
            log.warning("client %d: a %d-byte message does not fit the socket", client.id, len(data))
            return
        log.debug("client %d: send failed: %s", client.id, exc)
        client.broken = True
        client.work.unpark_all()  # the writer ends the client

    async def _stream_dump(self, client: _Client, stream: DumpStream) -> None:
        sock = client.sock
        for i, data in enumerate(stream, 1):
            # A trio checkpoint per entry would cost more than the entry: yield to
            # the other clients every DUMP_BATCH entries (and whenever the socket
            # is full, which waits anyway).  The common case, a socket with room,
            # is a plain send.
            if i % DUMP_BATCH:
                try:
                    sock.send(data)
                    continue
                except OSError:
                    await self._send(client, data, checkpoint=False)
            else:
                await self._send(client, data)
        if stream.skipped:
            log.debug(
                "client %d: %d dump entries cannot be carried by the %s dialect",
                client.id,
                stream.skipped,
                client.dialect.value,
            )

    # ------------------------------------------------------------------ time

    def _now(self) -> Instant:
        return Instant(trio.current_time(), int(self._wall_clock()))

    async def _timer(self) -> None:
        daemon = self._daemon
        with self._timer_scope:
            while True:
                deadline = daemon.next_deadline()
                if deadline is not None and deadline <= trio.current_time():
                    # A bounded batch, then everyone else's turn; the loop comes
                    # back while anything is still due.
                    level = self._trace_level()
                    self._send_out(daemon.tick(self._now(), TICK_BATCH, trace=bool(level)), level)
                    await trio.lowlevel.checkpoint()
                    continue
                self._timer_at = math.inf if deadline is None else deadline
                with trio.move_on_at(self._timer_at):
                    await self._timer_wake.park()
                self._timer_at = math.inf


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
