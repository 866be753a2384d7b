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
``open(path=None, dialect=None, *, pid=None, event_buffer=1024)``
    An async context manager yielding a :class:`Connection`.  ``path`` defaults to
    ``$PFKEY_SOCKET``, then to the daemon's default socket; ``dialect`` to the
    host's own (linux on Linux, freebsd on the BSDs); ``pid`` (what goes in
    ``sadb_msg_pid``) to ``os.getpid()``.

``await control(argv, path=None) -> (status, out, err)``
    Run a control command (sysctl, stats, lookup; see pfkeyd.control) on the
    daemon whose PF_KEY socket is ``path``, through the control socket beside it.

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

When the daemon goes away, waiting requests and dumps raise
``trio.BrokenResourceError`` and ``events()`` ends; after ``aclose()`` they raise
``trio.ClosedResourceError``.

Matching.  Replies echo the request's type, seq and pid, so a fresh random-based
seq per request keeps two connections of one process apart.  A dump's entries are
recognised by type and pid.  A request cancelled after it was sent has its reply
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
import random
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_interface
from typing import Any

import trio

from pfkeyd.defaults import SOCKET_ENV, control_path, default_socket_path, native_dialect
from pfkeyd.errors import DecodeError
from pfkeyd.wire import (
    HEADER,
    PF_KEY_V2,
    Address,
    Dialect,
    Extension,
    ExtType,
    IpProto,
    IpsecRequest,
    Key,
    Lifetime,
    Message,
    Mode,
    MsgType,
    Policy,
    Sa,
    Sa2,
    SockAddr,
    SpiRange,
    decode,
    encode,
)

__all__ = ["open", "control", "Connection", "PfkeyReplyError", "AddressLike"]

log = logging.getLogger("pfkeyd.client")

_RECV_SIZE = 0xFFFF * 8
#: Dump entries read ahead of the consumer before the connection stops reading
#: (it keeps reading past this while a request waits for its reply).
_DUMP_READ_AHEAD = 256
_DUMP_TYPES = frozenset({MsgType.DUMP, MsgType.X_SPDDUMP})

AddressLike = str | IPv4Address | IPv6Address | SockAddr | Address


class PfkeyReplyError(Exception):
    """The reply to a request carried ``sadb_msg_errno`` != 0."""

    def __init__(self, reply: Message) -> None:
        self.reply = reply
        self.errno = reply.errno
        name = MsgType(reply.type).name if reply.type in MsgType._value2member_map_ else str(reply.type)
        super().__init__(f"{name}: {os.strerror(reply.errno)} (errno {reply.errno})")


class _Waiter:
    """One request waiting for its reply."""

    __slots__ = ("abandoned", "done", "key", "result", "sent")

    def __init__(self, key: tuple[int, int, int]) -> None:
        self.key = key
        self.done = trio.Event()
        self.result: Message | BaseException | None = None
        self.abandoned = False
        self.sent = False

    def resolve(self, result: Message | BaseException) -> None:
        self.result = result
        self.done.set()

    async def wait(self) -> Message:
        await self.done.wait()
        if isinstance(self.result, BaseException):
            raise self.result
        assert self.result is not None
        return self.result


class _DumpState:
    __slots__ = ("abandoned", "finished", "pid", "queue", "ready", "type")

    def __init__(self, msgtype: int, pid: int) -> None:
        self.type = msgtype
        self.pid = pid
        self.queue: deque[Message | BaseException] = deque()
        self.ready = trio.lowlevel.ParkingLot()
        self.finished = trio.Event()
        self.abandoned = False


class Connection:
    """One PF_KEY socket to pfkeyd; made by :func:`open`."""

    def __init__(self, sock: trio.socket.SocketType, raw: socket.socket, path: str, dialect: Dialect, pid: int,
                 event_buffer: int) -> None:
        self._sock = sock
        self._raw = raw  # the same socket, for sends that need not wait
        self.path = path
        self.dialect = dialect
        self.pid = pid
        self.events_dropped = 0
        self.closed = False
        # Why the connection ended: (exception class, message); new instances are raised.
        self._gone: tuple[type[trio.BrokenResourceError | trio.ClosedResourceError], str] | None = None
        self._seq = random.SystemRandom().randrange(1, 2**31)
        self._send_lock = trio.Lock()
        self._waiters: dict[tuple[int, int, int], deque[_Waiter]] = {}
        self._events: deque[Message] = deque()
        self._event_buffer = event_buffer
        self._events_ready = trio.lowlevel.ParkingLot()
        self._dump: _DumpState | None = None
        self._dump_room = trio.lowlevel.ParkingLot()

    # ------------------------------------------------------------ requests

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = self._seq % 0xFFFFFFFF + 1  # 1 .. 2**32-1: 0 means "no seq"
        return seq

    def _prepare(self, msg: Message, assign_seq: bool) -> Message:
        changes: dict[str, Any] = {}
        if msg.pid == 0:
            changes["pid"] = self.pid
        if assign_seq and msg.seq == 0:
            changes["seq"] = self._next_seq()
        return msg.replace(**changes) if changes else msg

    def _expect(self, msg: Message) -> _Waiter:
        key = (msg.type, msg.seq, msg.pid)
        waiter = _Waiter(key)
        self._waiters.setdefault(key, deque()).append(waiter)
        self._dump_room.unpark_all()  # a reply may be behind dump entries: keep reading
        return waiter

    def _forget(self, waiter: _Waiter) -> None:
        if waiter.done.is_set():
            return
        if waiter.sent:
            # Cancelled before the reply came: it will be discarded when it does.
            waiter.abandoned = True
            return
        queue = self._waiters.get(waiter.key)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._waiters[waiter.key]

    def _failure(self) -> BaseException:
        assert self._gone is not None
        cls, text = self._gone
        return cls(text)

    async def _send_now(self, data: bytes) -> None:
        """Send one datagram; the caller holds the send lock.  A socket with room takes
        it at once, without a trip through the scheduler."""
        if self._gone is not None:
            raise self._failure()
        while True:
            try:
                self._raw.send(data)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._raw)
            except OSError as exc:
                msg = f"send to {self.path} failed: {exc.strerror}"
                raise trio.BrokenResourceError(msg) from exc

    async def _send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self._send_now(data)
        await trio.lowlevel.checkpoint()

    async def send(self, msg: Message) -> None:
        """Send ``msg`` and wait for nothing; a ``pid`` of 0 becomes the connection's."""
        await self._send_bytes(encode(self._prepare(msg, assign_seq=False), self.dialect))

    async def request(self, msg: Message, *, assign_seq: bool = True) -> Message:
        """Send ``msg`` and return its reply; raise :class:`PfkeyReplyError` on errno != 0."""
        msg = self._prepare(msg, assign_seq)
        data = encode(msg, self.dialect)
        waiter = self._expect(msg)
        try:
            await self._send_bytes(data)
            waiter.sent = True
            reply = await waiter.wait()
        finally:
            self._forget(waiter)
        if reply.errno:
            raise PfkeyReplyError(reply)
        return reply

    async def request_many(self, msgs: Iterable[Message], *, window: int = 64) -> list[Message | PfkeyReplyError]:
        """Pipeline ``msgs`` with at most ``window`` unanswered; replies or errors in order."""
        if window < 1:
            msg = "window must be at least 1"
            raise ValueError(msg)
        prepared = [self._prepare(m, assign_seq=True) for m in msgs]
        encoded = [encode(m, self.dialect) for m in prepared]
        results: list[Message | PfkeyReplyError] = []
        pending: deque[_Waiter] = deque()
        sent = 0
        # The receive task reads replies while this one waits to send, so a full
        # socket in either direction cannot stall the pipeline.  The window is
        # refilled in bursts of plain sends under one hold of the send lock.
        while sent < len(prepared) or pending:
            if sent < len(prepared) and len(pending) < window:
                async with self._send_lock:
                    while sent < len(prepared) and len(pending) < window:
                        waiter = self._expect(prepared[sent])
                        try:
                            await self._send_now(encoded[sent])
                        except BaseException:
                            self._forget(waiter)
                            raise
                        waiter.sent = True
                        pending.append(waiter)
                        sent += 1
            waiter = pending.popleft()
            try:
                reply = await waiter.wait()
            finally:
                self._forget(waiter)
            results.append(PfkeyReplyError(reply) if reply.errno else reply)
        return results

    # ------------------------------------------------------------ dumps

    def dump(self, satype: int = 0) -> AsyncIterator[Message]:
        """Every SA of ``satype`` (0: all), as SADB_DUMP entries, ending at seq 0."""
        return self._dump_iter(Message(MsgType.DUMP, satype))

    def spddump(self) -> AsyncIterator[Message]:
        """Every policy, as SADB_X_SPDDUMP entries, ending at seq 0."""
        return self._dump_iter(Message(MsgType.X_SPDDUMP))

    async def _dump_iter(self, request: Message) -> AsyncIterator[Message]:
        while self._dump is not None:
            await self._dump.finished.wait()  # one dump at a time on one socket
        msg = self._prepare(request, assign_seq=True)
        state = _DumpState(msg.type, msg.pid)
        self._dump = state
        try:
            await self._send_bytes(encode(msg, self.dialect))
            while True:
                while not state.queue:
                    await state.ready.park()
                item = state.queue.popleft()
                self._dump_room.unpark_all()
                if isinstance(item, BaseException):
                    raise item
                if item.errno or item.seq == 0:
                    self._end_dump(state)
                if item.errno:
                    if item.errno == E.ENOENT:
                        return  # an empty table
                    raise PfkeyReplyError(item)
                yield item
                if item.seq == 0:
                    return
        finally:
            if not state.finished.is_set():
                # Left early: the rest of this dump is read and discarded.
                state.abandoned = True
                state.queue.clear()
                self._dump_room.unpark_all()

    def _end_dump(self, state: _DumpState) -> None:
        if self._dump is state:
            self._dump = None
        state.finished.set()

    # ------------------------------------------------------------ events

    async def events(self) -> AsyncIterator[Message]:
        """Unsolicited messages, oldest first, until the connection closes."""
        while True:
            while not self._events:
                if self.closed:
                    return
                await self._events_ready.park()
            yield self._events.popleft()

    # ------------------------------------------------------------ receiving

    async def _receive_loop(self) -> None:
        # One buffer for every receive (asking for the largest possible message would
        # allocate half a megabyte per datagram), and every datagram that is already
        # there is handled before the loop waits again.
        buffer = bytearray(_RECV_SIZE)
        view = memoryview(buffer)
        try:
            while True:
                while (
                    self._dump is not None and len(self._dump.queue) >= _DUMP_READ_AHEAD and not self._waiters
                ):
                    await self._dump_room.park()
                try:
                    size = await self._sock.recv_into(view)
                except OSError as exc:
                    log.debug("receive from %s failed: %s", self.path, exc)
                    break
                if not size:
                    break
                self._dispatch(bytes(view[:size]))
        finally:
            self._shut(trio.BrokenResourceError, f"pfkeyd at {self.path} closed the connection")

    def _shut(self, cls: type[trio.BrokenResourceError | trio.ClosedResourceError], text: str) -> None:
        if self._gone is None:
            self._gone = (cls, text)
        self.closed = True
        for queue in self._waiters.values():
            for waiter in queue:
                waiter.resolve(self._failure())
        self._waiters.clear()
        state = self._dump
        if state is not None:
            state.queue.append(self._failure())
            state.ready.unpark_all()
            self._end_dump(state)
        self._events_ready.unpark_all()

    def _dispatch(self, data: bytes) -> None:
        inner = _unwrap_promisc(data)
        if inner is not None:
            msg = self._decode(inner)
            if msg is not None:
                self._event(msg)
            return
        msg = self._decode(data)
        if msg is None:
            return
        state = self._dump
        if state is not None and msg.type == state.type and msg.pid == state.pid:
            if not state.abandoned:
                state.queue.append(msg)
                state.ready.unpark_all()
            if msg.errno or msg.seq == 0:
                self._end_dump(state)
            return
        queue = self._waiters.get((msg.type, msg.seq, msg.pid))
        if queue:
            waiter = queue.popleft()
            if not queue:
                del self._waiters[waiter.key]
            if not waiter.abandoned:
                waiter.resolve(msg)
            return
        self._event(msg)

    def _decode(self, data: bytes) -> Message | None:
        try:
            return decode(data, self.dialect, request=False)
        except DecodeError as exc:
            if len(data) >= HEADER.size:
                _v, mtype, _e, _s, _l, _r, seq, pid = HEADER.unpack_from(data)
                queue = self._waiters.pop((mtype, seq, pid), None)
                if queue:
                    for waiter in queue:
                        waiter.resolve(exc)
                    return None
                state = self._dump
                if state is not None and mtype == state.type and pid == state.pid:
                    # A dump entry this side cannot read (a dialect mismatch, most
                    # likely): the dump fails rather than waiting for a seq 0 that
                    # may have been in it.
                    if not state.abandoned:
                        state.queue.append(exc)
                        state.ready.unpark_all()
                    self._end_dump(state)
                    return None
            log.warning("undecodable message from %s: %s", self.path, exc)
            return None

    def _event(self, msg: Message) -> None:
        if len(self._events) >= self._event_buffer:
            self._events.popleft()
            self.events_dropped += 1
        self._events.append(msg)
        self._events_ready.unpark_all()

    async def aclose(self) -> None:
        """Close the socket; waiting requests fail."""
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        if not self.closed:
            self._shut(trio.ClosedResourceError, "the PF_KEY connection is closed")
        self._sock.close()

    # ------------------------------------------------------------ helpers

    async def register(self, satype: int) -> Message:
        """SADB_REGISTER: the reply carries the supported algorithms."""
        return await self.request(Message(MsgType.REGISTER, satype))

    async def getspi(
        self, satype: int, src: AddressLike, dst: AddressLike, *, spirange: tuple[int, int] | None = None,
        mode: int = Mode.ANY, reqid: int = 0, seq: int = 0,
    ) -> Message:
        """SADB_GETSPI: a LARVAL SA; the SPI is ``reply.sa.spi``."""
        exts: list[Extension] = [Sa2(mode, 0, reqid), _address(ExtType.ADDRESS_SRC, src),
                                 _address(ExtType.ADDRESS_DST, dst)]
        if spirange is not None:
            exts.append(SpiRange(*spirange))
        return await self.request(Message(MsgType.GETSPI, satype, seq, 0, exts=tuple(exts)))

    async def add(
        self, satype: int, src: AddressLike, dst: AddressLike, spi: int, *,
        enc: tuple[int, bytes] | None = None, auth: tuple[int, bytes] | None = None,
        mode: int = Mode.ANY, reqid: int = 0, replay: int = 0, flags: int = 0,
        hard: Lifetime | None = None, soft: Lifetime | None = None, extra: Sequence[Extension] = (),
        seq: int = 0,
    ) -> Message:
        """SADB_ADD of a complete SA."""
        msg = _sa_request(MsgType.ADD, satype, src, dst, spi, enc, auth, mode, reqid, replay, flags, hard, soft,
                          extra)
        return await self.request(msg.replace(seq=seq))

    async def update(
        self, satype: int, src: AddressLike, dst: AddressLike, spi: int, *,
        enc: tuple[int, bytes] | None = None, auth: tuple[int, bytes] | None = None,
        mode: int = Mode.ANY, reqid: int = 0, replay: int = 0, flags: int = 0,
        hard: Lifetime | None = None, soft: Lifetime | None = None, extra: Sequence[Extension] = (),
        seq: int = 0,
    ) -> Message:
        """SADB_UPDATE: complete the LARVAL SA that GETSPI made (same pid), or change lifetimes."""
        msg = _sa_request(MsgType.UPDATE, satype, src, dst, spi, enc, auth, mode, reqid, replay, flags, hard, soft,
                          extra)
        return await self.request(msg.replace(seq=seq))

    async def delete(self, satype: int, src: AddressLike, dst: AddressLike, spi: int) -> Message:
        """SADB_DELETE of one SA."""
        exts = (Sa(spi), _address(ExtType.ADDRESS_SRC, src), _address(ExtType.ADDRESS_DST, dst))
        return await self.request(Message(MsgType.DELETE, satype, exts=exts))

    async def get(self, satype: int, src: AddressLike, dst: AddressLike, spi: int) -> Message:
        """SADB_GET: the whole SA, keys included."""
        exts = (Sa(spi), _address(ExtType.ADDRESS_SRC, src), _address(ExtType.ADDRESS_DST, dst))
        return await self.request(Message(MsgType.GET, satype, exts=exts))

    async def flush(self, satype: int = 0) -> Message:
        """SADB_FLUSH: every SA of ``satype`` (0: all of them)."""
        return await self.request(Message(MsgType.FLUSH, satype))

    async def spdflush(self) -> Message:
        """SADB_X_SPDFLUSH: every policy."""
        return await self.request(Message(MsgType.X_SPDFLUSH))

    async def promisc(self, on: bool = True) -> Message:
        """SADB_X_PROMISC: receive a copy of every message the daemon sends."""
        return await self.request(Message(MsgType.X_PROMISC, 1 if on else 0))

    async def spdadd(
        self, src: AddressLike, dst: AddressLike, direction: int, policy_type: int, *,
        requests: Sequence[IpsecRequest] = (), proto: int = IpProto.ANY, priority: int = 0,
        hard: Lifetime | None = None, update: bool = False,
    ) -> Message:
        """SADB_X_SPDADD (SPDUPDATE with ``update``); the policy id is ``reply.policy.id``."""
        exts: list[Extension] = [Policy(policy_type, direction, 0, priority, 0, tuple(requests)),
                                 replace(_address(ExtType.ADDRESS_SRC, src), proto=proto),
                                 replace(_address(ExtType.ADDRESS_DST, dst), proto=proto)]
        if hard is not None:
            exts.append(replace(hard, exttype=ExtType.LIFETIME_HARD))
        return await self.request(Message(MsgType.X_SPDUPDATE if update else MsgType.X_SPDADD, exts=tuple(exts)))

    async def spdget(self, policy_id: int) -> Message:
        """SADB_X_SPDGET: the policy with that id."""
        return await self.request(Message(MsgType.X_SPDGET, exts=(Policy(0, 0, policy_id),)))

    async def spddelete2(self, policy_id: int) -> Message:
        """SADB_X_SPDDELETE2: delete the policy with that id."""
        return await self.request(Message(MsgType.X_SPDDELETE2, exts=(Policy(0, 0, policy_id),)))


def _unwrap_promisc(data: bytes) -> bytes | None:
    """The message inside a FreeBSD promiscuous copy, or None if ``data`` is not one.

    keysock.c puts an SADB_X_PROMISC header whose length covers the whole datagram
    in front of the copy; setkey -x recognises it the same way.
    """
    size = HEADER.size
    if len(data) < 2 * size:
        return None
    version, mtype, _e, _s, units, _r, _seq, _pid = HEADER.unpack_from(data)
    if version != PF_KEY_V2 or mtype != MsgType.X_PROMISC or units * 8 != len(data):
        return None
    inner_version, _t, _e2, _s2, inner_units, _r2, _q, _p = HEADER.unpack_from(data, size)
    if inner_version != PF_KEY_V2 or inner_units * 8 != len(data) - size:
        return None
    return data[size:]


def _address(exttype: ExtType, value: AddressLike) -> Address:
    if isinstance(value, Address):
        return replace(value, exttype=exttype)
    if isinstance(value, SockAddr):
        return Address(exttype, value, value.max_prefix, IpProto.ANY)
    if isinstance(value, IPv4Address | IPv6Address):
        return Address(exttype, SockAddr(value), value.max_prefixlen, IpProto.ANY)
    text, _, prefix = value.partition("/")
    sa = SockAddr.parse(text)
    plen = int(ip_interface(f"{sa.ip}/{prefix}").network.prefixlen) if prefix else sa.max_prefix
    return Address(exttype, sa, plen, IpProto.ANY)


def _sa_request(
    msgtype: int, satype: int, src: AddressLike, dst: AddressLike, spi: int,
    enc: tuple[int, bytes] | None, auth: tuple[int, bytes] | None, mode: int, reqid: int, replay: int,
    flags: int, hard: Lifetime | None, soft: Lifetime | None, extra: Sequence[Extension],
) -> Message:
    exts: list[Extension] = [
        Sa(spi, replay, 0, auth[0] if auth else 0, enc[0] if enc else 0, flags),
        Sa2(mode, 0, reqid),
        _address(ExtType.ADDRESS_SRC, src),
        _address(ExtType.ADDRESS_DST, dst),
    ]
    if hard is not None:
        exts.append(replace(hard, exttype=ExtType.LIFETIME_HARD))
    if soft is not None:
        exts.append(replace(soft, exttype=ExtType.LIFETIME_SOFT))
    if auth is not None:
        exts.append(Key(ExtType.KEY_AUTH, auth[1]))
    if enc is not None:
        exts.append(Key(ExtType.KEY_ENCRYPT, enc[1]))
    exts.extend(extra)
    return Message(msgtype, satype, exts=tuple(exts))


async def control(argv: Sequence[str], path: str | os.PathLike[str] | None = None) -> tuple[int, str, str]:
    """Run a control command (``["lookup", "out", "10.0.0.1", "10.0.0.2"]``,
    ``["sysctl", "net.key.spi_minval=4096"]``, ``["stats"]``) on the daemon whose
    PF_KEY socket is ``path``; returns (exit status, output, error text)."""
    if path is None:
        path = os.environ.get(SOCKET_ENV) or default_socket_path()
        if path is None:
            msg = f"no PF_KEY socket: set {SOCKET_ENV} or XDG_RUNTIME_DIR, or pass a path"
            raise OSError(E.ENOENT, msg)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sock:
        await sock.connect(control_path(os.fspath(path)))
        await sock.send(json.dumps({"argv": list(argv)}).encode())
        answer = json.loads(await sock.recv(4 * 1024 * 1024) or b"{}")
    return int(answer.get("status", 1)), str(answer.get("out", "")), str(answer.get("err", ""))


@asynccontextmanager
async def open(  # the module's verb: pfkeyd.client.open(...), shadowing the builtin here only
    path: str | os.PathLike[str] | None = None,
    dialect: Dialect | str | None = None,
    *,
    pid: int | None = None,
    event_buffer: int = 1024,
) -> AsyncIterator[Connection]:
    """Connect to pfkeyd; see the module docstring."""
    if path is None:
        path = os.environ.get(SOCKET_ENV) or default_socket_path()
        if path is None:
            msg = f"no PF_KEY socket: set {SOCKET_ENV} or XDG_RUNTIME_DIR, or pass a path"
            raise OSError(E.ENOENT, msg)
    path = os.fspath(path)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    raw.setblocking(False)
    sock = trio.socket.from_stdlib_socket(raw)
    try:
        await sock.connect(path)
    except BaseException:
        sock.close()
        raise
    conn = Connection(sock, raw, path, Dialect(dialect) if dialect is not None else native_dialect(),
                      os.getpid() if pid is None else pid, event_buffer)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn._receive_loop)
            try:
                yield conn
            finally:
                nursery.cancel_scope.cancel()
    finally:
        conn._close()
