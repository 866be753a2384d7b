"""A closed socket's policies outlive it until the packets it sent before closing,
still queued in the TUN, have been decided (FreeBSD applies a socket's policy when it
sends); the socket-policy listener asks the plane, whose ``drained`` watches the TUN."""

from __future__ import annotations

import errno
import socket
import struct
from pathlib import Path

import trio
import trio.testing

from pfkeyd.dataplane.netlink import tunnel_route
from pfkeyd.dataplane.plane import DataPlane
from pfkeyd.dataplane.seam import EngineSeam
from pfkeyd.dataplane.sockpol import HEAD, SocketPolicies, SocketPolicyListener
from pfkeyd.wire import PolicyType
from tests.dataplane.test_io import Host, host_a
from tests.engine.conftest import make_engine
from tests.engine.spd_helpers import ALONE
from tests.netns import Pair

__all__ = ["host_a"]  # the fixture, used below


async def test_drained_returns_once_the_tun_queue_has_been_read(
    netpair: Pair, host_a: Host, autojump_clock: trio.testing.MockClock
) -> None:
    dp = DataPlane(EngineSeam(make_engine(clients=ALONE), lambda e: None), tun=host_a.tun, senders={})
    with netpair.a.inside():
        host_a.routing.add_route(tunnel_route("10.2.0.0/24"))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.sendto(b"last words", ("10.2.0.1", 9))  # queued in the TUN, not yet read
    done = trio.Event()

    async def wait() -> None:
        await dp.drained()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.sleep(5)
        assert not done.is_set()
        (dg,) = await host_a.tun.receive_batch()
        assert dg.endswith(b"last words")
        with trio.fail_after(1):
            await done.wait()


async def test_a_closed_sockets_policies_go_only_once_the_plane_has_drained(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = str(tmp_path / "p.sockpol")
    policies = SocketPolicies()
    gate = trio.Event()
    changes: list[int] = []

    async def drained() -> None:
        await gate.wait()

    listener = SocketPolicyListener(path, policies, on_change=lambda: changes.append(len(policies)), drained=drained)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.serve)
        conn = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        await conn.connect(path)
        head = HEAD.pack(1, socket.AF_INET, 17, 500, bytes(16))
        await conn.send(head + struct.pack("=HHHBBII", 2, 18, PolicyType.BYPASS, 2, 0, 0, 0))
        assert struct.unpack("=i", await conn.recv(4)) == (0,)
        assert len(policies) == 1 and changes == [1]  # routes and firewall followed before the answer
        bad = head + struct.pack("=HHHBBII", 2, 18, PolicyType.BYPASS, 3, 0, 0, 0)
        await conn.send(bad)
        assert struct.unpack("=i", await conn.recv(4)) == (errno.EINVAL,)
        assert changes == [1]  # a refusal changes nothing
        conn.close()
        await trio.sleep(DRAIN_WAIT)
        assert len(policies) == 1  # the TUN is not drained yet: the policy stays
        gate.set()
        await trio.sleep(DRAIN_WAIT)
        assert len(policies) == 0 and changes == [1, 0]
        nursery.cancel_scope.cancel()


DRAIN_WAIT = 0.1  # below the listener's DRAIN_TIMEOUT (0.25 s)
