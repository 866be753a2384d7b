"""What an idle client costs the daemon (issue 10, item 4): at most 16 KiB each,
and nothing kept once it has gone.  Measured with tracemalloc, which sees every
Python allocation (a receive buffer per client was 512 KiB of them)."""

from __future__ import annotations

import gc
import tracemalloc

import trio.testing

from pfkeyd.wire import Dialect, Message, MsgType
from tests.server.peers import Daemon, Peer

#: The budget per idle client (the kernel's socket buffers are not the daemon's memory).
PER_CLIENT = 16 * 1024
CLIENTS = 64


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_an_idle_client_costs_the_daemon_at_most_16_kib_and_nothing_once_gone(daemon: Daemon) -> None:
    # One request first, so that whatever the daemon allocates once (its receive
    # buffer, the codec's caches) is there before the count starts.
    first = await daemon.connect(Dialect.LINUX)
    reply = await first.request(Message(MsgType.FLUSH, 0, 1))
    assert reply.errno == 0
    tracemalloc.start()
    try:
        before = traced()
        peers = [
            Peer(daemon.paths[Dialect.LINUX if i % 2 else Dialect.FREEBSD], Dialect.LINUX if i % 2 else Dialect.FREEBSD)
            for i in range(CLIENTS)
        ]
        await trio.testing.wait_all_tasks_blocked()
        assert daemon.server.statistics().clients == CLIENTS + 1
        with_clients = traced()
        for peer in peers:
            peer.close()
        await trio.testing.wait_all_tasks_blocked()
        assert daemon.server.statistics().clients == 1
        del peers
        after = traced()
    finally:
        tracemalloc.stop()
    per_client = (with_clients - before) / CLIENTS
    assert per_client <= PER_CLIENT, f"{per_client:.0f} bytes per idle client"
    # What stays is the grown tables of a few dicts (the client tables, trio's
    # registry of descriptors), well under a KiB per client that came and went.
    assert after - before <= CLIENTS * 1024, f"{after - before} bytes kept after the clients left"
    # Still serving.
    reply = await first.request(Message(MsgType.FLUSH, 0, 2))
    assert reply.errno == 0
