"""A socket gets every broadcast from the moment its connect() returns (issue 10,
item 2), as a kernel PF_KEY socket does from the moment socket() returns.

Each trial connects a new socket and at once has another client ADD an SA; once
the adder has its reply the new socket must already hold the ADD broadcast (the
daemon routes a request's reply and broadcasts together).  Before the fix the
accept loop could come after the request, and 57-64 in 100 new sockets missed it.
"""

from __future__ import annotations

import pytest

from pfkeyd.wire import Dialect, MsgType, decode
from tests.server.peers import Daemon, Peer, add_msg

TRIALS = 1000
LINUX, FREEBSD = Dialect.LINUX, Dialect.FREEBSD


@pytest.mark.parametrize(
    ("new", "adder"),
    [(LINUX, LINUX), (FREEBSD, FREEBSD), (LINUX, FREEBSD), (FREEBSD, LINUX)],
    ids=["linux", "freebsd", "linux-from-freebsd", "freebsd-from-linux"],
)
async def test_a_socket_gets_every_broadcast_sent_after_its_connect_returned(
    daemon: Daemon, new: Dialect, adder: Dialect
) -> None:
    """Same-dialect pairs go through the hot path (one dialect, no promiscuous
    socket), mixed pairs through the generic one."""
    sender = await daemon.connect(adder, pid=77)
    misses = []
    for i in range(TRIALS):
        fresh = Peer(daemon.paths[new], new, pid=1000 + i)  # connect() has returned
        try:
            spi = 0x10000 + i
            reply = await sender.request(add_msg(spi, dst=f"10.{i // 256}.{i % 256}.2", seq=i + 1))
            assert (reply.type, reply.seq, reply.errno) == (MsgType.ADD, i + 1, 0)
            if not fresh.pending():
                misses.append(i)
                continue
            copy = decode(fresh.sock.recv(65536), new, request=False)
            assert (copy.type, copy.seq, copy.pid) == (MsgType.ADD, i + 1, 77)
            assert copy.sa is not None and copy.sa.spi == spi
        finally:
            fresh.close()
    assert misses == [], f"{len(misses)} of {TRIALS} new sockets missed the ADD broadcast"
    assert await sender.quiet()
