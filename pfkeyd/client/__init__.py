"""pfkeyd.client: an async (trio) PF_KEY client for tests, tools and IKE daemons.

A connection is one PF_KEY socket: a SOCK_SEQPACKET connection to pfkeyd, speaking
one dialect (``"linux"`` or ``"freebsd"``).  Messages are :class:`pfkeyd.wire.Message`
values; the bytes are always made and read by :mod:`pfkeyd.wire`.

    import pfkeyd.client
    from pfkeyd.wire import AuthAlg, EncAlg, SaType

    async with pfkeyd.client.open("/run/pfkeyd.sock", "linux") as conn:
        await conn.register(SaType.ESP)
        reply = await conn.getspi(SaType.ESP, "10.0.0.2", "10.0.0.1")
        spi = reply.sa.spi
        await conn.update(SaType.ESP, "10.0.0.2", "10.0.0.1", spi,
                          enc=(EncAlg.X_AESCBC, key), auth=(AuthAlg.X_SHA2_256, akey))
        async for sa in conn.dump(SaType.ESP):
            print(sa)

API
---
``open(path=None, dialect=None, *, pid=None, event_buffer=1024, reply_timeout=None)``
    An async context manager yielding a :class:`Connection`.  ``path`` defaults to
    ``$PFKEY_SOCKET``, then to the daemon's default socket; ``dialect`` to the one
    the daemon reports for that socket (:func:`socket_dialect`), else to the
    host's own (linux on Linux, freebsd on the BSDs); ``pid`` (what goes in
    ``sadb_msg_pid``) to ``os.getpid()``.  With ``reply_timeout`` (seconds),
    nothing the connection waits for from the daemon (a reply, the next entry of
    a dump, room to send, the connection itself) waits longer than that without
    progress: :class:`ReplyTimeout` is raised instead.  None waits as long as it
    takes.

``await socket_dialect(path=None, *, timeout=5.0) -> Dialect | None``
    The dialect pfkeyd reports for its PF_KEY socket ``path`` (the ``dialect``
    command of the control socket beside it), or None when no pfkeyd control
    socket answers there (nothing listens, or a daemon without the command).
    Raises :class:`ReplyTimeout` when the control socket takes the question and
    gives no answer within ``timeout`` seconds.

``await control(argv, path=None, *, timeout=None) -> (status, out, err)``
    Run a control command (sysctl, stats, lookup, dialect; see pfkeyd.control) on
    the daemon whose PF_KEY socket is ``path``, through the control socket beside
    it; ``timeout`` as ``reply_timeout``.

``Connection``
    ``await request(msg, *, assign_seq=True) -> Message``
        Send ``msg`` and return the reply, matched by (type, seq, pid).  A ``seq`` of
        0 is replaced by a fresh one unless ``assign_seq=False``; a ``pid`` of 0 by
        the connection's.  A reply with ``errno`` != 0 raises
        :class:`PfkeyReplyError`.
    ``await send(msg)``
        Send without waiting for anything (``pid`` 0 is filled in, ``seq`` is not).
    ``await request_many(msgs, *, window=64) -> list[Message | PfkeyReplyError]``
        Pipeline requests, at most ``window`` unanswered at a time; the replies (or
        the errors, not raised) in the order of ``msgs``.
    ``await request_many_raw(msgs, *, window=64) -> list[RawReply]``
        As ``request_many``, for bulk loads: the replies are not decoded.  Each is
        a :class:`RawReply`; an error reply is one too (``errno`` != 0), nothing is
        raised for it.  ``msgs`` may hold encoded messages (``bytes`` in the
        connection's dialect) as well as ``Message`` values; a seq or pid of 0 in
        either is filled in as ``request`` does.  ``msgs`` is read as the window
        opens, so a generator that makes the messages works while the daemon
        does; if it raises, the call ends with that exception (what was sent has
        its replies discarded).  ``request_many`` encodes everything first.
    ``async for m in dump(satype=0)`` / ``async for m in spddump()``
        Every entry of SADB_DUMP / SADB_X_SPDDUMP, ending at the entry with seq 0.
        An ENOENT reply means an empty table: the loop simply ends.  One dump at a
        time per connection; breaking out early is fine (the rest is discarded).
    ``async for m in events()``
        Unsolicited messages: ACQUIRE, EXPIRE, broadcasts that answered no request
        of this connection, promiscuous copies (unwrapped from the freebsd
        SADB_X_PROMISC header).  They are kept, oldest dropped first, in a buffer of
        ``event_buffer`` messages (``events_dropped`` counts the losses) so that
        nobody has to read them.  The loop ends when the connection closes.
    Helpers, each returning the reply message (or raising PfkeyReplyError):
        ``register(satype)``, ``getspi(satype, src, dst, *, spirange=None,
        mode=Mode.ANY, reqid=0, seq=0)``, ``add(satype, src, dst, spi, *, enc=None,
        auth=None, mode=Mode.ANY, reqid=0, replay=0, flags=0, hard=None, soft=None,
        extra=())``, ``update(...)`` (as add), ``delete(satype, src, dst, spi)``,
        ``get(satype, src, dst, spi)``, ``flush(satype=0)``, ``spdflush()``,
        ``promisc(on=True)``, ``spdadd(src, dst, direction, policy_type, *,
        requests=(), proto=255, priority=0, hard=None, update=False)``,
        ``spdget(policy_id)``, ``spddelete2(policy_id)``; add and update take
        ``seq=`` too, to answer an ACQUIRE.  Addresses are strings (``"10.0.0.1"``,
        ``"fe80::1%2"``, ``"10.0.0.0/24"``), ``ipaddress`` objects, ``SockAddr`` or
        ``Address`` values; ``enc`` and ``auth`` are ``(algorithm, key bytes)``.
    ``await aclose()``; attributes ``path``, ``dialect``, ``pid``,
    ``events_dropped``, ``closed``.

``PfkeyReplyError``
    The kernel's answer was an error: ``.errno`` and ``.reply`` (the message).

``ReplyTimeout``
    The daemon sent nothing for ``.seconds`` while the connection waited for
    ``.waiting_for`` (a text: "the reply to SADB_ADD (seq 7)") on ``.path``.

``RawReply``
    One reply of ``request_many_raw`` as it came off the socket: ``.data`` (the
    datagram), the header fields ``.type``, ``.satype``, ``.errno`` (the host's
    errno, translated from the dialect's number as ``decode`` does), ``.seq``,
    ``.pid``, and ``.message``, which decodes the datagram on first use (and
    raises ``pfkeyd.errors.DecodeError`` if it cannot).

When the daemon goes away, waiting requests and dumps raise
``trio.BrokenResourceError`` and ``events()`` ends; after ``aclose()`` they raise
``trio.ClosedResourceError``.

Matching.  Replies echo the request's type, seq and pid, so a fresh random-based
seq per request keeps two connections of one process apart.  Replies are matched
by those header fields before anything is decoded, and decoded by the task that
asked (or never, with ``request_many_raw``).  A dump's entries are recognised by
type and pid.  A request cancelled after it was sent has its reply
discarded when it comes.  On a linux socket a promiscuous copy looks exactly like
the message it copies: the first copy answers a waiting request, the second is an
event.  While a dump is being read, at most 256 entries are read ahead of the
loop, except while a request waits for its reply (the daemon sends that reply
after the dump), so ``await conn.get(...)`` inside ``async for ... in
conn.dump()`` works.
"""

from __future__ import annotations

import errno as E
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

import trio

from pfkeyd.client.connection import AddressLike, Connection, PfkeyReplyError, RawReply, ReplyTimeout
from pfkeyd.defaults import SOCKET_ENV, control_path, default_socket_path, native_dialect
from pfkeyd.wire import Dialect

__all__ = [
    "open",
    "control",
    "socket_dialect",
    "Connection",
    "PfkeyReplyError",
    "ReplyTimeout",
    "RawReply",
    "AddressLike",
]

log = logging.getLogger("pfkeyd.client")

#: How long socket_dialect() waits for the daemon's answer by default, in seconds.
DIALECT_TIMEOUT = 5.0


def _socket_path(path: str | os.PathLike[str] | None) -> str:
    if path is None:
        path = os.environ.get(SOCKET_ENV) or default_socket_path()
        if path is None:
            msg = f"no PF_KEY socket: set {SOCKET_ENV} or XDG_RUNTIME_DIR, or pass a path"
            raise OSError(E.ENOENT, msg)
    return os.fspath(path)


@contextmanager
def _deadline(timeout: float | None, path: str, waiting_for: str) -> Iterator[None]:
    """Raise :class:`ReplyTimeout` if the body takes longer than ``timeout`` seconds."""
    if timeout is None:
        yield
        return
    with trio.move_on_after(timeout) as scope:
        yield
    if scope.cancelled_caught:
        raise ReplyTimeout(path, waiting_for, timeout)


async def control(
    argv: Sequence[str], path: str | os.PathLike[str] | None = None, *, timeout: float | None = None
) -> tuple[int, str, str]:
    """Run a control command (``["lookup", "out", "10.0.0.1", "10.0.0.2"]``,
    ``["sysctl", "net.key.spi_minval=4096"]``, ``["stats"]``) on the daemon whose
    PF_KEY socket is ``path``; returns (exit status, output, error text)."""
    ctl = control_path(_socket_path(path))
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sock:
        with _deadline(timeout, ctl, "the control socket to take the connection"):
            await sock.connect(ctl)
        await sock.send(json.dumps({"argv": list(argv)}).encode())
        with _deadline(timeout, ctl, f"the answer to the {argv[0] if argv else 'empty'} command"):
            data = await sock.recv(4 * 1024 * 1024)
    answer = json.loads(data or b"{}")
    return int(answer.get("status", 1)), str(answer.get("out", "")), str(answer.get("err", ""))


async def socket_dialect(
    path: str | os.PathLike[str] | None = None, *, timeout: float | None = DIALECT_TIMEOUT
) -> Dialect | None:
    """The dialect pfkeyd reports for its PF_KEY socket ``path``, or None when no
    pfkeyd control socket answers beside it; see the module docstring."""
    try:
        status, out, _err = await control(["dialect"], path, timeout=timeout)
    except (OSError, ValueError, AttributeError) as exc:
        # Nothing listens there, it hung up (another user's daemon refuses us:
        # the PF_KEY socket will say so), or what answered is not pfkeyd.
        log.debug("no dialect from the control socket of %s: %s", path, exc)
        return None
    if status != 0 or out.strip() not in Dialect._value2member_map_:
        return None  # a pfkeyd without the command
    return Dialect(out.strip())


@asynccontextmanager
async def open(  # the module's verb: pfkeyd.client.open(...), shadowing the builtin here only
    path: str | os.PathLike[str] | None = None,
    dialect: Dialect | str | None = None,
    *,
    pid: int | None = None,
    event_buffer: int = 1024,
    reply_timeout: float | None = None,
) -> AsyncIterator[Connection]:
    """Connect to pfkeyd; see the module docstring."""
    path = _socket_path(path)
    if dialect is None:
        timeout = DIALECT_TIMEOUT if reply_timeout is None else reply_timeout
        dialect = await socket_dialect(path, timeout=timeout) or native_dialect()
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    raw.setblocking(False)
    sock = trio.socket.from_stdlib_socket(raw)
    try:
        with _deadline(reply_timeout, path, "the daemon to take the connection"):
            await sock.connect(path)
    except OSError as exc:
        sock.close()
        if exc.filename is None and exc.errno is not None:
            # connect() does not say which socket it could not reach
            raise OSError(exc.errno, exc.strerror, path) from None
        raise
    except BaseException:
        sock.close()
        raise
    conn = Connection(
        sock, raw, path, Dialect(dialect), os.getpid() if pid is None else pid, event_buffer, reply_timeout
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn._receive_loop)
            nursery.start_soon(conn._watch_replies)
            try:
                yield conn
            finally:
                nursery.cancel_scope.cancel()
    finally:
        conn._close()
