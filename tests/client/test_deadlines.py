"""pfkeyd.client never waits forever when told not to, and learns a socket's dialect.

A daemon that takes requests and never answers is a listening socket whose peer
reads everything and sends nothing; trio's autojump clock makes its silence pass
at once.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence

import pytest
import trio
import trio.testing

import pfkeyd.client
from pfkeyd import control
from pfkeyd.client import ReplyTimeout
from pfkeyd.defaults import control_path, native_dialect
from pfkeyd.effects import Effect, Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.server import ControlHook
from pfkeyd.wire import Dialect, Message, MsgType, SaType, decode, encode
from tests.server.peers import start_daemon

DIALECTS = pytest.mark.parametrize("dialect", list(Dialect), ids=[d.value for d in Dialect])

Peer = Callable[[trio.socket.SocketType], Awaitable[None]]


async def serve(nursery: trio.Nursery, path: str, peer: Peer) -> None:
    """Listen on ``path``; each peer that connects is handed to ``peer``."""
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    await listener.bind(path)
    listener.listen()

    async def accept_loop() -> None:
        with listener:
            while True:
                sock, _ = await listener.accept()
                nursery.start_soon(peer, sock)

    nursery.start_soon(accept_loop)


async def silent(sock: trio.socket.SocketType) -> None:
    """Read everything, answer nothing."""
    with sock:
        while await sock.recv(1 << 16):
            pass


def slow_echo(delay: float) -> Peer:
    """Answer each request with its header (errno 0), ``delay`` seconds after it came."""

    async def peer(sock: trio.socket.SocketType) -> None:
        with sock:
            while data := await sock.recv(1 << 16):
                await trio.sleep(delay)
                reply = decode(data, Dialect.LINUX, request=False)
                await sock.send(encode(Message(reply.type, reply.satype, reply.seq, reply.pid), Dialect.LINUX))

    return peer


def hook(engine: KeyEngine) -> ControlHook:
    """The control hook as `pfkeyd` builds it."""

    def run(argv: Sequence[str], now: Instant, dialect: Dialect) -> tuple[int, str, str, Sequence[Effect]]:
        outcome = control.run(engine, argv, now, dialect)
        return outcome.status, outcome.out, outcome.err, outcome.effects

    return run


# ------------------------------------------------------------------ learning the dialect


@DIALECTS
async def test_the_daemon_reports_each_sockets_dialect(
    nursery: trio.Nursery, sockdir: str, engine: KeyEngine, dialect: Dialect
) -> None:
    d = await start_daemon(nursery, sockdir, engine, control=hook(engine))
    assert await pfkeyd.client.socket_dialect(d.paths[dialect]) is dialect
    assert await pfkeyd.client.control(["dialect"], d.paths[dialect]) == (0, f"{dialect.value}\n", "")
    d.server.stop()


async def test_a_socket_of_the_other_dialect_works_without_naming_it(
    nursery: trio.Nursery, sockdir: str, engine: KeyEngine
) -> None:
    # Before, a client on Linux spoke linux to the freebsd socket, and a
    # request could wait for ever for a reply it would not recognise.
    d = await start_daemon(nursery, sockdir, engine, control=hook(engine))
    other = Dialect.FREEBSD if native_dialect() is Dialect.LINUX else Dialect.LINUX
    async with pfkeyd.client.open(d.paths[other], reply_timeout=5) as conn:
        assert conn.dialect is other
        reply = await conn.register(SaType.ESP)
        assert reply.supported_encrypt is not None
        assert [m async for m in conn.dump()] == []
    d.server.stop()


async def test_without_a_control_socket_the_hosts_dialect_is_assumed(
    nursery: trio.Nursery, sockdir: str, engine: KeyEngine
) -> None:
    d = await start_daemon(nursery, sockdir, engine)  # no control hook: no .ctl beside the sockets
    assert await pfkeyd.client.socket_dialect(d.paths[Dialect.FREEBSD]) is None
    async with pfkeyd.client.open(d.paths[native_dialect()]) as conn:
        assert conn.dialect is native_dialect()
        await conn.register(SaType.ESP)
    d.server.stop()


async def test_an_answer_that_is_not_a_dialect_is_no_dialect(nursery: trio.Nursery, sockdir: str) -> None:
    path = f"{sockdir}/old.sock"

    async def old_daemon(sock: trio.socket.SocketType) -> None:  # a pfkeyd without the command
        with sock:
            await sock.recv(1 << 16)
            await sock.send(json.dumps({"status": 64, "out": "", "err": "unknown control command\n"}).encode())

    await serve(nursery, control_path(path), old_daemon)
    assert await pfkeyd.client.socket_dialect(path) is None


# ------------------------------------------------------------------ deadlines


async def test_a_request_to_a_silent_daemon_times_out(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    path = f"{sockdir}/silent.sock"
    await serve(nursery, path, silent)
    async with pfkeyd.client.open(path, Dialect.LINUX, reply_timeout=4) as conn:
        start = trio.current_time()
        with pytest.raises(ReplyTimeout) as caught:
            await conn.register(SaType.ESP)
        assert trio.current_time() - start == pytest.approx(4)
        err = caught.value
        assert (err.path, err.seconds) == (path, 4)
        assert err.waiting_for.startswith("the reply to SADB_REGISTER (seq ")
        assert str(err) == f"{path}: nothing from the daemon for 4 s while waiting for {err.waiting_for}"
        with pytest.raises(ReplyTimeout) as caught:
            await conn.request_many([Message(MsgType.FLUSH, SaType.UNSPEC)] * 3)
        assert caught.value.waiting_for.endswith(", and 2 more)")


async def test_a_dump_from_a_silent_daemon_times_out_and_another_may_start(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    path = f"{sockdir}/silent.sock"
    await serve(nursery, path, silent)
    async with pfkeyd.client.open(path, Dialect.FREEBSD, reply_timeout=2.5) as conn:
        for _ in range(2):
            start = trio.current_time()
            with pytest.raises(ReplyTimeout) as caught:
                _ = [m async for m in conn.spddump()]
            assert trio.current_time() - start == pytest.approx(2.5)
            assert caught.value.waiting_for.startswith("SADB_X_SPDDUMP (seq ")
            assert caught.value.waiting_for.endswith("): its first entry")


async def test_a_slow_daemon_that_keeps_answering_is_not_timed_out(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    # The deadline is for a time without replies, not for the whole pipeline.
    path = f"{sockdir}/slow.sock"
    await serve(nursery, path, slow_echo(3))
    async with pfkeyd.client.open(path, Dialect.LINUX, reply_timeout=5) as conn:
        start = trio.current_time()
        replies = await conn.request_many([Message(MsgType.FLUSH, SaType.UNSPEC)] * 4)
        assert trio.current_time() - start == pytest.approx(12)
        assert [r.type if isinstance(r, Message) else r for r in replies] == [MsgType.FLUSH] * 4


async def test_the_deadline_runs_from_the_last_reply(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    # The first of two requests is answered after 3 s, the second never: the
    # wait ends 5 s after that reply (at 8 s), not at a multiple of 5 s.
    path = f"{sockdir}/half.sock"

    async def answers_once(sock: trio.socket.SocketType) -> None:
        with sock:
            first = await sock.recv(1 << 16)
            await sock.recv(1 << 16)
            await trio.sleep(3)
            reply = decode(first, Dialect.LINUX, request=False)
            await sock.send(encode(Message(reply.type, reply.satype, reply.seq, reply.pid), Dialect.LINUX))
            await trio.sleep_forever()

    await serve(nursery, path, answers_once)
    async with pfkeyd.client.open(path, Dialect.LINUX, reply_timeout=5) as conn:
        start = trio.current_time()
        with pytest.raises(ReplyTimeout) as caught:
            await conn.request_many([Message(MsgType.FLUSH, SaType.UNSPEC), Message(MsgType.X_SPDFLUSH)])
        assert trio.current_time() - start == pytest.approx(8)
        assert caught.value.waiting_for.startswith("the reply to SADB_X_SPDFLUSH (seq ")


async def test_a_control_socket_that_never_answers_times_out(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    path = f"{sockdir}/stuck.sock"
    await serve(nursery, control_path(path), silent)
    start = trio.current_time()
    with pytest.raises(ReplyTimeout) as caught:
        await pfkeyd.client.socket_dialect(path, timeout=3)
    assert trio.current_time() - start == pytest.approx(3)
    assert caught.value.path == control_path(path)
    assert caught.value.waiting_for == "the answer to the dialect command"


async def test_a_daemon_that_reads_nothing_times_out_the_send(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    path = f"{sockdir}/deaf.sock"
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    await listener.bind(path)
    listener.listen()  # connections wait in the backlog, and nobody reads them
    with listener:
        async with pfkeyd.client.open(path, Dialect.LINUX, reply_timeout=1) as conn:
            big = Message(MsgType.FLUSH, SaType.UNSPEC)
            with pytest.raises(ReplyTimeout) as caught:
                await conn.request_many([big] * 100_000, window=100_000)
            assert caught.value.waiting_for == "room to send SADB_FLUSH (the daemon reads nothing)"


async def test_a_missing_socket_raises_its_errno_and_names_the_path(sockdir: str) -> None:
    missing = f"{sockdir}/none.sock"
    with pytest.raises(FileNotFoundError) as caught:
        async with pfkeyd.client.open(missing):
            pass
    assert (caught.value.errno, caught.value.filename) == (errno.ENOENT, missing)


async def test_of_two_pipelines_only_the_unanswered_one_times_out(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    # FLUSH is answered after 1 s each, SPDFLUSH never: one watchdog keeps each
    # wait's own deadline, from its own start or the last reply.
    path = f"{sockdir}/picky.sock"

    async def flushes_only(sock: trio.socket.SocketType) -> None:
        with sock:
            while data := await sock.recv(1 << 16):
                if data[1] == MsgType.FLUSH:
                    await trio.sleep(1)
                    reply = decode(data, Dialect.LINUX, request=False)
                    await sock.send(encode(Message(reply.type, reply.satype, reply.seq, reply.pid), Dialect.LINUX))

    await serve(nursery, path, flushes_only)
    async with pfkeyd.client.open(path, Dialect.LINUX, reply_timeout=4) as conn:
        start = trio.current_time()
        flushed: list[float] = []
        failed: list[float] = []

        async def flushes() -> None:
            for _ in range(10):
                await conn.flush()
            flushed.append(trio.current_time() - start)

        async def spdflush() -> None:
            await trio.sleep(2)
            with pytest.raises(ReplyTimeout) as caught:
                await conn.spdflush()
            assert caught.value.waiting_for.startswith("the reply to SADB_X_SPDFLUSH (seq ")
            failed.append(trio.current_time() - start)

        async with trio.open_nursery() as both:
            both.start_soon(flushes)
            both.start_soon(spdflush)
        # The FLUSH replies keep coming until 10 s, so the SPDFLUSH that began at
        # 2 s has heard from the daemon until then: it fails at 14 s.
        assert flushed == [pytest.approx(10)]
        assert failed == [pytest.approx(14)]


async def test_a_reply_in_time_costs_no_deadline_of_its_own(nursery: trio.Nursery, sockdir: str) -> None:
    # One request at a time (setkey's window 1) must not open and close a
    # cancel scope per reply: that cost more than the reply (bench/README.md).
    path = f"{sockdir}/echo.sock"
    await serve(nursery, path, slow_echo(0))
    enter = trio.CancelScope.__enter__.__code__
    entered = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal entered
        if event == "call" and getattr(frame, "f_code", None) is enter:
            entered += 1

    async with pfkeyd.client.open(path, Dialect.LINUX, reply_timeout=5) as conn:
        await conn.flush()
        sys.setprofile(count)
        try:
            for _ in range(50):
                await conn.flush()
        finally:
            sys.setprofile(None)
    assert entered <= 2  # the watchdog's sleep, once per timeout period at most
