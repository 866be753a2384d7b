"""Warnings a peer can cause are rate-limited: at most one per kind and socket every
DROP_LOG_INTERVAL seconds, the next one saying how many were suppressed."""

from __future__ import annotations

import logging
import os
import resource

import pytest
import trio
import trio.testing

import pfkeyd.server
from pfkeyd.effects import ClientId, Effect, Send
from pfkeyd.server import DROP_LOG_INTERVAL
from pfkeyd.wire import Dialect, Message, MsgType
from tests.server.peers import FakeEngine, Peer, start_daemon


def echo(client: ClientId, msg: Message) -> list[Effect]:
    return [Send((client,), msg, reply=True)]


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_refused_peers_are_logged_once_per_interval_with_the_count_suppressed(
    nursery: trio.Nursery,
    sockdir: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.WARNING, logger="pfkeyd.server")
    monkeypatch.setattr(pfkeyd.server, "peer_credentials", lambda sock: (31337, 4242))
    d = await start_daemon(nursery, sockdir, FakeEngine(echo))
    for _ in range(200):
        (await d.connect(Dialect.LINUX)).close()
    assert d.server.statistics().refused_peers == 200
    assert warnings(caplog, "refused peer") == [f"refused peer uid 4242 pid 31337 on {d.paths[Dialect.LINUX]}"]
    await trio.sleep(DROP_LOG_INTERVAL)
    (await d.connect(Dialect.LINUX)).close()
    (await d.connect(Dialect.FREEBSD)).close()  # another socket has its own limit
    assert warnings(caplog, "refused peer") == [
        f"refused peer uid 4242 pid 31337 on {d.paths[Dialect.LINUX]}",
        f"refused peer uid 4242 pid 31337 on {d.paths[Dialect.LINUX]} (199 more suppressed in the last 10 s)",
        f"refused peer uid 4242 pid 31337 on {d.paths[Dialect.FREEBSD]}",
    ]


def _lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


async def test_accept_errors_under_fd_exhaustion_are_logged_once_per_interval(
    nursery: trio.Nursery,
    sockdir: str,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.WARNING, logger="pfkeyd.server")
    d = await start_daemon(nursery, sockdir, FakeEngine(echo))
    path = d.paths[Dialect.LINUX]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    peer = Peer(path, Dialect.LINUX)  # connected: waiting in the listener's backlog
    try:
        # Every descriptor below the limit is taken: accept() fails with EMFILE.
        resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_fd(), hard))
        await trio.sleep(35)  # the accept loop retries every 100 ms: 350 failures
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    lines = warnings(caplog, f"accept on {path}")
    assert len(lines) == 4, lines  # at 0, 10, 20 and 30 s
    assert lines[0] == f"accept on {path}: Too many open files; pausing 100 ms"
    assert all(line.endswith("more suppressed in the last 10 s)") for line in lines[1:])
    # Descriptors again: the waiting peer is accepted and served.
    assert (await peer.request(Message(MsgType.FLUSH, 0, 5))).seq == 5
    peer.close()
