"""The listening sockets: files, modes, stale files, live daemons, peer credentials, stop."""

from __future__ import annotations

import logging
import os
import socket
import stat

import pytest
import trio
import trio.testing

import pfkeyd.server
from pfkeyd.effects import ClientId, Effect, Send
from pfkeyd.server import Endpoint, Server, ServerError, uid_allowed
from pfkeyd.wire import Alg, AuthAlg, Dialect, ExtType, Message, MsgType, Supported
from tests.server.peers import FakeEngine, Peer, start_daemon

LINUX, FREEBSD = Dialect.LINUX, Dialect.FREEBSD


def echo(client: ClientId, msg: Message) -> list[Effect]:
    return [Send((client,), msg, reply=True)]


async def test_sockets_are_private_by_default_and_removed_on_stop(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        d = await start_daemon(nursery, sockdir, FakeEngine(echo))
        for path in d.paths.values():
            st = os.lstat(path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600
        d.server.stop()
    assert not any(os.path.exists(p) for p in d.paths.values())


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
async def test_a_group_makes_the_sockets_group_accessible(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        d = await start_daemon(nursery, sockdir, FakeEngine(echo), group=4242)
        for path in d.paths.values():
            st = os.lstat(path)
            assert stat.S_IMODE(st.st_mode) == 0o660
            assert st.st_gid == 4242
        d.server.stop()


async def test_a_stale_socket_file_is_replaced(sockdir: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pfkeyd.server")
    path = f"{sockdir}/linux.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dead.bind(path)  # a daemon that died without removing its socket
    dead.close()
    async with trio.open_nursery() as nursery:
        d = await start_daemon(nursery, sockdir, FakeEngine(echo))
        peer = await d.connect(LINUX)
        assert (await peer.request(Message(MsgType.FLUSH, 0, 1))).seq == 1
        peer.close()
        d.server.stop()
    assert any("removed stale socket" in r.getMessage() for r in caplog.records)


async def test_a_live_daemon_on_the_path_is_an_error_and_keeps_serving(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        first = await start_daemon(nursery, sockdir, FakeEngine(echo))
        fresh = f"{sockdir}/fresh.sock"
        second = Server(FakeEngine(echo), [Endpoint(fresh, LINUX), Endpoint(first.paths[LINUX], LINUX)])
        with pytest.raises(ServerError, match="another daemon is listening"):
            await nursery.start(second.serve)
        assert not os.path.exists(fresh)  # what the failed start made is gone again
        peer = await first.connect(LINUX)
        assert (await peer.request(Message(MsgType.FLUSH, 0, 2))).seq == 2
        peer.close()
        first.server.stop()


async def test_a_file_that_is_not_a_socket_is_left_alone(sockdir: str) -> None:
    path = f"{sockdir}/linux.sock"
    with open(path, "w") as fh:
        fh.write("precious")
    server = Server(FakeEngine(echo), [Endpoint(path, LINUX)])
    async with trio.open_nursery() as nursery:
        with pytest.raises(ServerError, match="not a socket"):
            await nursery.start(server.serve)
    with open(path) as fh:
        assert fh.read() == "precious"


def test_uid_check_admits_root_the_daemon_user_and_the_allow_list() -> None:
    assert uid_allowed(0, own_uid=1000)
    assert uid_allowed(1000, own_uid=1000)
    assert uid_allowed(1001, own_uid=1000, allow={1001})
    assert not uid_allowed(1002, own_uid=1000, allow={1001})


async def test_a_peer_of_another_user_is_refused_and_logged(
    nursery: trio.Nursery, sockdir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pfkeyd.server")
    monkeypatch.setattr(pfkeyd.server, "peer_credentials", lambda sock: (31337, 4242))
    engine = FakeEngine(echo)
    d = await start_daemon(nursery, sockdir, engine)
    peer = await d.connect(FREEBSD)
    assert await peer.recv_raw() == b""  # closed at once
    with pytest.raises(BrokenPipeError):
        await peer.send(Message(MsgType.FLUSH))
    assert not engine.clients and not engine.handled
    assert d.server.statistics().refused_peers == 1
    assert any("refused peer uid 4242 pid 31337" in r.getMessage() for r in caplog.records)


async def test_an_allowed_uid_is_admitted(nursery: trio.Nursery, sockdir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pfkeyd.server, "peer_credentials", lambda sock: (31337, 4242))
    d = await start_daemon(nursery, sockdir, FakeEngine(echo), allow_uids=[4242])
    peer = await d.connect(LINUX)
    assert (await peer.request(Message(MsgType.FLUSH, 0, 3))).seq == 3


async def test_peer_credentials_are_read_from_the_socket(nursery: trio.Nursery, sockdir: str) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        assert pfkeyd.server.peer_credentials(a) == (os.getpid(), os.geteuid())


BIG = Supported(ExtType.SUPPORTED_AUTH, tuple(Alg(AuthAlg.X_SHA2_256) for _ in range(7500)))


def big_reply(client: ClientId, msg: Message) -> list[Effect]:
    # About 60 KB each: a few of them fill the socket, the rest wait in the outbox.
    return [Send((client,), msg.replace(exts=(BIG,)), reply=True)]


async def test_stop_delivers_the_replies_already_queued(sockdir: str) -> None:
    engine = FakeEngine(big_reply)
    async with trio.open_nursery() as nursery:
        d = await start_daemon(nursery, sockdir, engine)
        peer = await d.connect(LINUX)
        for seq in range(1, 11):
            await peer.send(Message(MsgType.FLUSH, 0, seq))
        await trio.testing.wait_all_tasks_blocked()
        assert len(engine.handled) == 10
        assert d.server.statistics().queued_bytes > 0
        d.server.stop()
        seqs = [(await peer.recv()).seq for _ in range(10)]
        assert seqs == list(range(1, 11))
    assert await peer.recv_raw() == b""
    assert not os.path.exists(d.paths[LINUX])
    peer.close()


async def test_stop_gives_a_client_that_never_reads_a_grace_period(
    sockdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    engine = FakeEngine(big_reply)
    async with trio.open_nursery() as nursery:
        d = await start_daemon(nursery, sockdir, engine, shutdown_grace=5)
        sleeper = await d.connect(FREEBSD)
        for seq in range(1, 11):
            await sleeper.send(Message(MsgType.FLUSH, 0, seq))
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        d.server.stop()
    assert trio.current_time() - start == pytest.approx(5)
    assert engine.clients == {}
    sleeper.close()


async def test_stop_closes_idle_clients_at_once(sockdir: str) -> None:
    engine = FakeEngine(echo)
    async with trio.open_nursery() as nursery:
        d = await start_daemon(nursery, sockdir, engine)
        peer = await d.connect(LINUX)
        assert (await peer.request(Message(MsgType.FLUSH, 0, 1))).seq == 1
        d.server.stop()
    assert await peer.recv_raw() == b""
    with pytest.raises(BrokenPipeError):
        await peer.send(Message(MsgType.FLUSH, 0, 2))
    assert len(engine.handled) == 1
    assert engine.clients == {}
    peer.close()


def test_a_path_too_long_for_af_unix_is_a_server_error(sockdir: str) -> None:
    path = f"{sockdir}/{'x' * 120}.sock"
    server = Server(FakeEngine(echo), [Endpoint(path, LINUX)])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)

    with pytest.raises(BaseExceptionGroup) as info:
        trio.run(main)
    assert info.group_contains(ServerError)


def test_peer_helper_sees_the_daemon_as_a_seqpacket_socket(sockdir: str) -> None:
    # A stream client cannot connect: the type is part of the protocol (one datagram,
    # one message).
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            d = await start_daemon(nursery, sockdir, FakeEngine(echo))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with s, pytest.raises(OSError):
                s.connect(d.paths[LINUX])
            Peer(d.paths[LINUX], LINUX).close()
            d.server.stop()

    trio.run(main)
