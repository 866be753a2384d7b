"""The connection of :mod:`pfkeyd.client`: one PF_KEY socket, its pipelined requests,
dumps and events.  The package docstring is the API guide."""

from __future__ import annotations

import errno as E
import logging
import math
import os
import random
import socket
import struct
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_interface
from itertools import islice
from typing import Any

import trio

from pfkeyd.errors import DecodeError
from pfkeyd.wire import (
    HEADER,
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
from pfkeyd.wire.framing import MAX_DATAGRAM, promisc_unwrap

__all__ = ["Connection", "PfkeyReplyError", "ReplyTimeout", "RawReply", "AddressLike"]

log = logging.getLogger("pfkeyd.client")

#: Dump entries read ahead of the consumer before the connection stops reading
#: (it keeps reading past this while a request waits for its reply).
_DUMP_READ_AHEAD = 256
#: Datagrams the receive task takes off the socket, without waiting, before it
#: lets the other tasks run.
_DRAIN = 512
#: Coalescing (see Connection._receive_loop): with at least _COALESCE_MIN requests
#: unanswered, the receive task may sleep _COALESCE seconds between two reads
#: (epoll's timeout has a resolution of a millisecond).
_COALESCE_MIN = 32
#: Datagrams made ahead of their sends when a window is refilled (see Connection._burst).
_SUB_BURST = 16
_COALESCE = 0.001
#: sadb_msg_seq and sadb_msg_pid, the last 8 bytes of the base header (HEADER).
_SEQ_PID = struct.Struct("=II")
_SEQ_OFFSET = HEADER.size - _SEQ_PID.size

AddressLike = str | IPv4Address | IPv6Address | SockAddr | Address


class PfkeyReplyError(Exception):
    """The reply to a request carried ``sadb_msg_errno`` != 0."""

    def __init__(self, reply: Message) -> None:
        self.reply = reply
        self.errno = reply.errno
        name = MsgType(reply.type).name if reply.type in MsgType._value2member_map_ else str(reply.type)
        super().__init__(f"{name}: {os.strerror(reply.errno)} (errno {reply.errno})")


class ReplyTimeout(Exception):
    """The daemon sent nothing for ``seconds`` while ``waiting_for`` was awaited on ``path``."""

    def __init__(self, path: str, waiting_for: str, seconds: float) -> None:
        self.path = path
        self.waiting_for = waiting_for
        self.seconds = seconds
        super().__init__(f"{path}: nothing from the daemon for {seconds:g} s while waiting for {waiting_for}")


def _type_name(mtype: int) -> str:
    return f"SADB_{MsgType(mtype).name}" if mtype in MsgType._value2member_map_ else f"message type {mtype}"


class RawReply:
    """A reply as it came off the socket: the header read, the rest decoded on demand.

    ``data`` is the datagram.  ``type``, ``satype``, ``errno``, ``seq`` and ``pid``
    come from its ``struct sadb_msg`` (RFC 2367 §2.1); ``errno`` is the host's
    number, translated from the dialect's as :func:`pfkeyd.wire.decode` does.
    ``message`` decodes the whole datagram the first time it is asked for.
    """

    __slots__ = ("_message", "data", "dialect")

    def __init__(self, data: bytes, dialect: Dialect) -> None:
        self.data = data
        self.dialect = dialect
        self._message: Message | None = None

    @property
    def type(self) -> int:
        return self.data[1]

    @property
    def errno(self) -> int:
        wire = self.data[2]
        return self.dialect.spec.errno_from_wire(wire) if wire else 0

    @property
    def satype(self) -> int:
        return self.data[3]

    @property
    def seq(self) -> int:
        seq: int = _SEQ_PID.unpack_from(self.data, _SEQ_OFFSET)[0]
        return seq

    @property
    def pid(self) -> int:
        pid: int = _SEQ_PID.unpack_from(self.data, _SEQ_OFFSET)[1]
        return pid

    @property
    def message(self) -> Message:
        """The decoded reply; raises :class:`~pfkeyd.errors.DecodeError` if it cannot be read."""
        if self._message is None:
            self._message = decode(self.data, self.dialect, request=False)
        return self._message

    def __repr__(self) -> str:
        name = MsgType(self.type).name if self.type in MsgType._value2member_map_ else str(self.type)
        return (
            f"RawReply({name}, satype={self.satype}, seq={self.seq}, pid={self.pid}, errno={self.errno}, "
            f"{len(self.data)} bytes)"
        )


_Key = tuple[int, int, int]  # (type, seq, pid): what a reply echoes of its request


class _Batch:
    """Requests sent together and the replies that came for them.

    The receive task files each reply's datagram under its request's index and
    counts down; the sending task sleeps on one parking lot until at most
    ``wake_at`` requests are left unanswered (room for a burst of sends, or the
    end of the batch) or the connection fails.  One object per batch, not an
    Event per request: a reply costs a dict lookup and a list store.
    """

    __slots__ = ("failure", "lot", "outstanding", "replies", "wake_at")

    def __init__(self) -> None:
        self.replies: list[bytes] = []  # b"" until the reply comes
        self.outstanding = 0
        self.wake_at = 0
        self.lot = trio.lowlevel.ParkingLot()
        self.failure: BaseException | None = None

    def land(self, index: int, data: bytes) -> None:
        self.replies[index] = data
        self.outstanding -= 1
        if self.outstanding <= self.wake_at and self.lot:
            self.lot.unpark_all()

    def fail(self, failure: BaseException) -> None:
        self.failure = failure
        self.lot.unpark_all()


#: Where a reply goes: a batch and the index of its request there.
_Slot = tuple[_Batch, int]


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

    def __init__(
        self,
        sock: trio.socket.SocketType,
        raw: socket.socket,
        path: str,
        dialect: Dialect,
        pid: int,
        event_buffer: int,
        reply_timeout: float | None = None,
    ) -> None:
        self._sock = sock
        self.reply_timeout = reply_timeout
        self._raw = raw  # the same socket, for sends and receives that need not wait
        self.path = path
        self.dialect = dialect
        self.pid = pid
        self.events_dropped = 0
        self.closed = False
        # Why the connection ended: (exception class, message); new instances are raised.
        self._gone: tuple[type[trio.BrokenResourceError | trio.ClosedResourceError], str] | None = None
        self._seq = random.SystemRandom().randrange(1, 2**31)
        self._send_lock = trio.Lock()
        # Requests sent and not yet answered, by the key their replies echo.  A key
        # normally has one slot; requests sent with the same key (an explicit seq)
        # share a deque and are answered in the order they went out.
        self._waiters: dict[_Key, _Slot | deque[_Slot]] = {}
        self._events: deque[Message] = deque()
        self._event_buffer = event_buffer
        self._events_ready = trio.lowlevel.ParkingLot()
        self._dump: _DumpState | None = None
        self._dump_room = trio.lowlevel.ParkingLot()
        #: When the receive task last read something (trio time; -inf: never).
        self._heard = -math.inf
        # Batches waiting for replies, with when each began to wait, for the
        # watchdog (_watch_replies); it sleeps on _watch_idle while none waits.
        self._parked: dict[_Batch, float] = {}
        self._watch_idle = trio.lowlevel.ParkingLot()

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

    def _datagram(self, item: Message | bytes) -> tuple[bytes, _Key]:
        """``item`` encoded, with a seq and pid of 0 filled in (as :meth:`_prepare`
        does), and the key its reply will echo.  The two fields are patched into
        the encoded header rather than re-encoding a changed message."""
        if isinstance(item, Message):
            data = encode(item, self.dialect)
        else:
            data = bytes(item)
            if len(data) < HEADER.size:
                msg = f"a PF_KEY message is at least {HEADER.size} bytes, not {len(data)}"
                raise ValueError(msg)
        seq, pid = _SEQ_PID.unpack_from(data, _SEQ_OFFSET)
        if seq == 0 or pid == 0:
            seq = seq or self._next_seq()
            pid = pid or self.pid
            data = b"".join((data[:_SEQ_OFFSET], _SEQ_PID.pack(seq, pid), data[HEADER.size :]))
        return data, (data[1], seq, pid)

    def _expect(self, key: _Key, slot: _Slot) -> None:
        """File ``slot`` for the reply with ``key``; the request has just been sent."""
        waiters = self._waiters
        first = waiters.setdefault(key, slot)
        if first is not slot:
            if isinstance(first, deque):
                first.append(slot)
            else:
                waiters[key] = deque((first, slot))

    def _failure(self) -> BaseException:
        assert self._gone is not None
        cls, text = self._gone
        return cls(text)

    async def _send_now(self, data: bytes) -> None:
        """Send one datagram; the caller holds the send lock.  A socket with room takes
        it at once, without a trip through the scheduler."""
        while True:
            if self._gone is not None:
                raise self._failure()
            try:
                self._raw.send(data)
                return
            except BlockingIOError:
                # The replies may be behind a dump's read-ahead: keep reading.
                self._dump_room.unpark_all()
                if self.reply_timeout is None:
                    await trio.lowlevel.wait_writable(self._raw)
                    continue
                with trio.move_on_after(self.reply_timeout) as scope:
                    await trio.lowlevel.wait_writable(self._raw)
                if scope.cancelled_caught:
                    raise ReplyTimeout(
                        self.path, f"room to send {_type_name(data[1])} (the daemon reads nothing)", self.reply_timeout
                    ) from None
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
        (raw,) = await self._pipeline(iter([(data, (msg.type, msg.seq, msg.pid))]), 1)
        reply = decode(raw, self.dialect, request=False)
        if reply.errno:
            raise PfkeyReplyError(reply)
        return reply

    async def request_many(self, msgs: Iterable[Message], *, window: int = 64) -> list[Message | PfkeyReplyError]:
        """Pipeline ``msgs`` with at most ``window`` unanswered; replies or errors in order."""
        _check_window(window)
        # Everything is encoded before anything is sent: a message the dialect
        # cannot carry raises EncodeError with nothing of the batch gone out.
        datagrams = [self._datagram(m) for m in msgs]
        results: list[Message | PfkeyReplyError] = []
        for raw in await self._pipeline(iter(datagrams), window):
            reply = decode(raw, self.dialect, request=False)
            results.append(PfkeyReplyError(reply) if reply.errno else reply)
        return results

    async def request_many_raw(self, msgs: Iterable[Message | bytes], *, window: int = 64) -> list[RawReply]:
        """As :meth:`request_many`, but the replies (errors included) are left
        undecoded: :class:`RawReply` values, in the order of ``msgs``.

        ``msgs`` is read as the window opens, so the work of a generator that
        makes the messages overlaps the daemon's work on those in flight.  If
        it raises (or a message cannot be encoded), the exception ends the call
        and the replies to what was sent are discarded when they come.
        """
        _check_window(window)
        dialect = self.dialect
        datagrams = (self._datagram(m) for m in msgs)
        return [RawReply(raw, dialect) for raw in await self._pipeline(datagrams, window)]

    async def _pipeline(self, datagrams: Iterator[tuple[bytes, _Key]], window: int) -> list[bytes]:
        """Send ``datagrams`` (each with the key its reply echoes) with at most
        ``window`` unanswered; the replies' datagrams, in order.

        The receive task reads replies while this one sends or sleeps, so a full
        socket in either direction cannot stall the pipeline.  The window is
        refilled in bursts of plain sends under one hold of the send lock, and
        this task sleeps until half of it has room again: a handful of trips
        through the scheduler per window, not one per reply.  If this task is
        cancelled, the replies to what it sent are discarded when they come.
        """
        batch = _Batch()
        refill_at = window - max(1, window // 2)
        more = True
        while True:
            if batch.failure is not None:
                raise batch.failure
            if more and batch.outstanding < window:
                async with self._send_lock:
                    more = await self._burst(batch, datagrams, window)
                continue
            if not more and batch.outstanding == 0:
                return batch.replies
            batch.wake_at = refill_at if more else 0
            if self.reply_timeout is None:
                await batch.lot.park()
                continue
            # The watchdog fails the batch if it waits ``reply_timeout`` with
            # nothing from the daemon (see _watch_replies): no deadline of its
            # own per wait, which would cost more than a reply with window 1.
            parked = self._parked
            if self._watch_idle:
                self._watch_idle.unpark_all()  # the watchdog, idle while no batch waited
            parked[batch] = trio.current_time()
            try:
                await batch.lot.park()
            finally:
                del parked[batch]

    async def _watch_replies(self) -> None:
        """Fail each batch that has waited ``reply_timeout`` seconds in which nothing
        came from the daemon (the wait's start or the receive task's last read,
        whichever is later) with :class:`ReplyTimeout`; runs beside the receive task.

        The deadline is for a time in which nothing came: a batch wakes only after
        many replies, so a sleep here may end while replies are still coming; the
        watchdog then sleeps again, until ``reply_timeout`` after the last thing
        the receive task read.  One sleep covers every wait of that time, so a
        request answered in time costs no deadline of its own.
        """
        parked = self._parked
        while True:
            timeout = self.reply_timeout
            if not parked or timeout is None:
                await self._watch_idle.park()
                continue
            now = trio.current_time()
            due = math.inf
            for batch, since in list(parked.items()):
                if batch.failure is not None or batch.outstanding <= batch.wake_at:
                    continue  # woken already (landed as the deadline passed)
                at = max(self._heard, since) + timeout
                if at <= now:
                    batch.fail(ReplyTimeout(self.path, self._oldest_unanswered(batch), timeout))
                else:
                    due = min(due, at)
            if due < math.inf:
                await trio.sleep_until(due)
            else:
                await trio.lowlevel.checkpoint()  # the woken batches leave ``parked``

    def _oldest_unanswered(self, batch: _Batch) -> str:
        """What ``batch`` waits for first: "the reply to SADB_ADD (seq 7)"."""
        oldest: tuple[int, _Key] | None = None
        for key, entry in self._waiters.items():
            for owner, index in entry if isinstance(entry, deque) else (entry,):
                if owner is batch and (oldest is None or index < oldest[0]):
                    oldest = (index, key)
        if oldest is None:  # pragma: no cover - a batch that waits has a request filed
            return "a reply"
        mtype, seq, _pid = oldest[1]
        more = batch.outstanding - 1
        tail = f", and {more} more" if more > 0 else ""
        return f"the reply to {_type_name(mtype)} (seq {seq}{tail})"

    async def _burst(self, batch: _Batch, datagrams: Iterator[tuple[bytes, _Key]], window: int) -> bool:
        """Fill the window from ``datagrams``; the caller holds the send lock.  False
        once ``datagrams`` is exhausted.

        The burst is made and sent ``_SUB_BURST`` datagrams at a time: sends that
        follow each other closely find the daemon awake (one wake-up, not one
        each), and the daemon works on them while the next ones are being made.
        """
        room = window - batch.outstanding
        try:
            while room > 0:
                burst = list(islice(datagrams, min(_SUB_BURST, room)))
                for data, key in burst:
                    await self._send_now(data)
                    self._expect(key, (batch, len(batch.replies)))
                    batch.replies.append(b"")
                    batch.outstanding += 1
                if len(burst) < min(_SUB_BURST, room):
                    return False
                room -= len(burst)
        finally:
            self._dump_room.unpark_all()  # a reply may be behind dump entries: keep reading
        return True

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
            timeout = self.reply_timeout
            entries = 0
            while True:
                while not state.queue:
                    if timeout is None:
                        await state.ready.park()
                        continue
                    with trio.move_on_after(timeout) as scope:
                        await state.ready.park()
                    if scope.cancelled_caught and not state.queue:
                        self._end_dump(state)  # another dump may start; late entries become events
                        what = "its first entry" if entries == 0 else f"entry {entries + 1}"
                        raise ReplyTimeout(self.path, f"{_type_name(msg.type)} (seq {msg.seq}): {what}", timeout)
                item = state.queue.popleft()
                entries += 1
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

    async def events(self) -> AsyncGenerator[Message, None]:
        """Unsolicited messages, oldest first, until the connection closes."""
        while True:
            while not self._events:
                if self.closed:
                    return
                await self._events_ready.park()
            yield self._events.popleft()

    # ------------------------------------------------------------ receiving

    async def _receive_loop(self) -> None:
        # This task is the socket's only reader.  One buffer serves every receive
        # (asking for the largest possible message would allocate half a megabyte
        # per datagram).  Whatever is queued is taken with plain non-blocking
        # receives, up to _DRAIN datagrams between two trips through the
        # scheduler; the task waits only when the socket is empty.
        #
        # Coalescing.  Against a daemon slower than this side, waiting for the
        # socket to become readable wakes this process for every reply or two,
        # and each wake-up costs both processes more than the reply itself (in
        # the scheduler and in the kernel).  So while many requests wait for
        # replies and the last pass showed the daemon answering fewer than half
        # of them per _COALESCE, the task sleeps for _COALESCE instead: the
        # daemon still has work queued when it wakes, and a wake-up reads a
        # dozen replies instead of one.  A fast daemon, or a few requests in
        # flight (request() alone, a dump), and it waits for readability.
        buffer = bytearray(MAX_DATAGRAM)
        view = memoryview(buffer)
        raw = self._raw
        dispatch = self._dispatch
        waiters = self._waiters
        since = trio.current_time()  # when the last wait began
        drained = 0  # datagrams read since then
        # The daemon's recent pace: datagrams per second of time, both decayed
        # by half at every pass.
        count = 0.0
        seconds = 0.0
        try:
            while True:
                for _ in range(_DRAIN):
                    while self._dump is not None and len(self._dump.queue) >= _DUMP_READ_AHEAD and not waiters:
                        await self._dump_room.park()
                    try:
                        size = raw.recv_into(view)
                    except BlockingIOError:
                        now = trio.current_time()
                        if drained:
                            self._heard = now
                        count = count / 2 + drained
                        seconds = seconds / 2 + (now - since)
                        due = len(waiters)
                        since = now
                        drained = 0
                        if due >= _COALESCE_MIN and count * _COALESCE < seconds * due / 2:
                            await trio.sleep(_COALESCE)
                        else:
                            await trio.lowlevel.wait_readable(raw)
                        break
                    if not size:
                        return
                    drained += 1
                    dispatch(bytes(view[:size]))
                else:
                    self._heard = trio.current_time()
                    await trio.lowlevel.checkpoint()
        except OSError as exc:
            log.debug("receive from %s failed: %s", self.path, exc)
        except trio.ClosedResourceError:
            pass  # aclose() closed the socket under the wait: nothing more to read
        finally:
            self._shut(trio.BrokenResourceError, f"pfkeyd at {self.path} closed the connection")

    def _shut(self, cls: type[trio.BrokenResourceError | trio.ClosedResourceError], text: str) -> None:
        if self._gone is None:
            self._gone = (cls, text)
        self.closed = True
        for entry in self._waiters.values():
            for batch, _index in entry if isinstance(entry, deque) else (entry,):
                if batch.failure is None:
                    batch.fail(self._failure())
        self._waiters.clear()
        state = self._dump
        if state is not None:
            state.queue.append(self._failure())
            state.ready.unpark_all()
            self._end_dump(state)
        self._events_ready.unpark_all()

    def _dispatch(self, data: bytes) -> None:
        """Route one datagram by its header: a promiscuous copy, a dump entry, the
        reply to a request (not decoded here), or an event."""
        if len(data) >= HEADER.size:
            _v, mtype, _e, _s, _l, _r, seq, pid = HEADER.unpack_from(data)
            if mtype == MsgType.X_PROMISC:
                inner = promisc_unwrap(data)
                if inner is not None:
                    self._event_bytes(inner)
                    return
            state = self._dump
            if state is not None and mtype == state.type and pid == state.pid:
                self._dump_entry(state, data)
                return
            entry = self._waiters.pop((mtype, seq, pid), None)
            if entry is not None:
                if isinstance(entry, deque):
                    slot = entry.popleft()
                    if entry:
                        self._waiters[(mtype, seq, pid)] = entry
                else:
                    slot = entry
                batch, index = slot
                batch.land(index, data)
                return
        self._event_bytes(data)

    def _dump_entry(self, state: _DumpState, data: bytes) -> None:
        try:
            msg = decode(data, self.dialect, request=False)
        except DecodeError as exc:
            # A dump entry this side cannot read (a dialect mismatch, most likely):
            # the dump fails rather than waiting for a seq 0 that may have been in it.
            if not state.abandoned:
                state.queue.append(exc)
                state.ready.unpark_all()
            self._end_dump(state)
            return
        if not state.abandoned:
            state.queue.append(msg)
            state.ready.unpark_all()
        if msg.errno or msg.seq == 0:
            self._end_dump(state)

    def _event_bytes(self, data: bytes) -> None:
        try:
            msg = decode(data, self.dialect, request=False)
        except DecodeError as exc:
            log.warning("undecodable message from %s: %s", self.path, exc)
            return
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
        self,
        satype: int,
        src: AddressLike,
        dst: AddressLike,
        *,
        spirange: tuple[int, int] | None = None,
        mode: int = Mode.ANY,
        reqid: int = 0,
        seq: int = 0,
    ) -> Message:
        """SADB_GETSPI: a LARVAL SA; the SPI is ``reply.sa.spi``."""
        exts: list[Extension] = [
            Sa2(mode, 0, reqid),
            _address(ExtType.ADDRESS_SRC, src),
            _address(ExtType.ADDRESS_DST, dst),
        ]
        if spirange is not None:
            exts.append(SpiRange(*spirange))
        return await self.request(Message(MsgType.GETSPI, satype, seq, 0, exts=tuple(exts)))

    async def add(
        self,
        satype: int,
        src: AddressLike,
        dst: AddressLike,
        spi: int,
        *,
        enc: tuple[int, bytes] | None = None,
        auth: tuple[int, bytes] | None = None,
        mode: int = Mode.ANY,
        reqid: int = 0,
        replay: int = 0,
        flags: int = 0,
        hard: Lifetime | None = None,
        soft: Lifetime | None = None,
        extra: Sequence[Extension] = (),
        seq: int = 0,
    ) -> Message:
        """SADB_ADD of a complete SA."""
        msg = _sa_request(MsgType.ADD, satype, src, dst, spi, enc, auth, mode, reqid, replay, flags, hard, soft, extra)
        return await self.request(msg.replace(seq=seq))

    async def update(
        self,
        satype: int,
        src: AddressLike,
        dst: AddressLike,
        spi: int,
        *,
        enc: tuple[int, bytes] | None = None,
        auth: tuple[int, bytes] | None = None,
        mode: int = Mode.ANY,
        reqid: int = 0,
        replay: int = 0,
        flags: int = 0,
        hard: Lifetime | None = None,
        soft: Lifetime | None = None,
        extra: Sequence[Extension] = (),
        seq: int = 0,
    ) -> Message:
        """SADB_UPDATE: complete the LARVAL SA that GETSPI made (same pid), or change lifetimes."""
        msg = _sa_request(
            MsgType.UPDATE, satype, src, dst, spi, enc, auth, mode, reqid, replay, flags, hard, soft, extra
        )
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
        self,
        src: AddressLike,
        dst: AddressLike,
        direction: int,
        policy_type: int,
        *,
        requests: Sequence[IpsecRequest] = (),
        proto: int = IpProto.ANY,
        priority: int = 0,
        hard: Lifetime | None = None,
        update: bool = False,
    ) -> Message:
        """SADB_X_SPDADD (SPDUPDATE with ``update``); the policy id is ``reply.policy.id``."""
        exts: list[Extension] = [
            Policy(policy_type, direction, 0, priority, 0, tuple(requests)),
            replace(_address(ExtType.ADDRESS_SRC, src), proto=proto),
            replace(_address(ExtType.ADDRESS_DST, dst), proto=proto),
        ]
        if hard is not None:
            exts.append(replace(hard, exttype=ExtType.LIFETIME_HARD))
        return await self.request(Message(MsgType.X_SPDUPDATE if update else MsgType.X_SPDADD, exts=tuple(exts)))

    async def spdget(self, policy_id: int) -> Message:
        """SADB_X_SPDGET: the policy with that id."""
        return await self.request(Message(MsgType.X_SPDGET, exts=(Policy(0, 0, policy_id),)))

    async def spddelete2(self, policy_id: int) -> Message:
        """SADB_X_SPDDELETE2: delete the policy with that id."""
        return await self.request(Message(MsgType.X_SPDDELETE2, exts=(Policy(0, 0, policy_id),)))


def _check_window(window: int) -> None:
    if window < 1:
        msg = "window must be at least 1"
        raise ValueError(msg)


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
    msgtype: int,
    satype: int,
    src: AddressLike,
    dst: AddressLike,
    spi: int,
    enc: tuple[int, bytes] | None,
    auth: tuple[int, bytes] | None,
    mode: int,
    reqid: int,
    replay: int,
    flags: int,
    hard: Lifetime | None,
    soft: Lifetime | None,
    extra: Sequence[Extension],
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
