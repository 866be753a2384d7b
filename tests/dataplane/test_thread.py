"""The packet thread's boundary with the trio thread, with real descriptors and a real
key engine: socketpairs stand in for the TUN and the wire (no namespaces needed), and
:meth:`DataPlane.run` starts the thread as the daemon does."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from pfkeyd.dataplane.io import TunDevice
from pfkeyd.dataplane.plane import WATCH_INTERVAL, DataPlane
from pfkeyd.dataplane.pump import PacketLoop, PacketThreadError
from pfkeyd.dataplane.seam import EngineSeam
from pfkeyd.dataplane.sockpol import HEAD, SocketPolicies, parse_request
from pfkeyd.effects import Effect, Instant, Send
from pfkeyd.engine import Decision, KeyEngine
from pfkeyd.spd import Flow
from pfkeyd.wire import Message, MsgType, PolicyType, SaType
from tests.dataplane.test_plane import A, B, add_gcm, udp
from tests.engine.conftest import PID, make_engine
from tests.engine.spd_helpers import ALONE, KM, ME, TRANSPORT, send, spd_msg


class PipeSender:
    """A sender for one family writing to a socketpair (the 'wire')."""

    def __init__(self, sock: socket.socket, fail: OSError | None = None) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.fail = fail
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_now(self, datagram: bytes) -> bool:
        if self.fail is not None:
            raise self.fail
        self.sock.send(datagram)  # BlockingIOError when the peer does not read
        return True

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class Clock:
    """The packet thread's monotonic clock, moved by the test."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Emitted:
    """The server's effect router: records what arrives and in which thread."""

    def __init__(self) -> None:
        self.effects: list[Effect] = []
        self.threads: set[int] = set()
        self.arrived = trio.Event()

    def __call__(self, effects: Sequence[Effect]) -> None:
        self.threads.add(threading.get_ident())
        self.effects += effects
        self.arrived.set()


class Rig:
    def __init__(self, eng: KeyEngine, *, seam: Any = None, clock: Clock | None = None, sndbuf: int = 0) -> None:
        self.emitted = Emitted()
        self.app, tun_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.wire, tx_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.wire.setblocking(False)  # the trio thread must never block: the packet thread may wait for it
        if sndbuf:
            tx_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.tun = TunDevice(tun_end.detach(), "t0")
        self.sender = PipeSender(tx_end)
        self.clock = clock or Clock(5.0)
        self.plane = DataPlane(
            seam or EngineSeam(eng, self.emitted),
            tun=self.tun,
            senders={socket.AF_INET: self.sender},  # type: ignore[dict-item]  # a socketpair for the wire
            monotonic=self.clock,
        )

    async def from_wire(self) -> bytes:
        while True:
            try:
                return self.wire.recv(65535)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.wire)

    def close(self) -> None:
        self.app.close()
        self.wire.close()


async def until(cond: Callable[[], bool]) -> None:
    """Wait for the packet thread to reach a state (bounded; the trio clock is mocked)."""
    for _ in range(2000):
        if cond():
            return
        await trio.to_thread.run_sync(time.sleep, 0.005)
    raise AssertionError("the packet thread never got there")


def require_engine() -> KeyEngine:
    eng = make_engine(clients=ALONE)
    eng.client_opened(KM, eng.clients[ME].dialect)
    send(eng, KM, Message(MsgType.REGISTER, SaType.ESP, 0, PID + 1, 0, 0, ()))
    send(eng, ME, spd_msg(src=A, dst=B, dir=2))  # out, ipsec esp transport require
    return eng


async def test_a_packet_acquires_through_trio_with_trios_time_and_a_new_sa_releases_it(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.jump(1000)
    eng = require_engine()
    rig = Rig(eng)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.plane.run)
        loop = rig.plane._loop
        assert loop is not None and loop.alive
        rig.app.send(udp(A, B, 1, 2, b"first"))
        await rig.emitted.arrived.wait()
        # The ACQUIRE reached the server's router in the trio thread ...
        assert rig.emitted.threads == {threading.get_ident()}
        acquires = [e for e in rig.emitted.effects if isinstance(e, Send) and e.msg.type == MsgType.ACQUIRE]
        assert len(acquires) == 1 and KM in acquires[0].to
        # ... and the engine decided at trio's time, not the packet thread's clock (5.0).
        assert eng.next_deadline() == 1000 + eng.knobs.blockacq_lifetime
        await until(lambda: rig.plane.statistics()["held_flows"] == 1)
        deadline = next(iter(rig.plane._held.values()))[0]
        assert deadline == 5.0 + rig.plane.hold_time  # the hold queue runs on the thread's clock

        # The key manager's SA arrives (in the trio thread); the trio side sees the
        # generation move at its next watch, wakes the thread, which sends the packet.
        add_gcm(eng, 0x2001, A, B, mode=TRANSPORT)
        mock_clock.jump(WATCH_INTERVAL)
        out = await rig.from_wire()
        assert out[9] == 50 and int.from_bytes(out[20:24], "big") == 0x2001
        assert rig.plane.statistics()["counters"]["hold.sent"] == 1
        nursery.cancel_scope.cancel()
    rig.close()


async def test_traffic_is_reported_to_the_engine_from_the_trio_side(mock_clock: trio.testing.MockClock) -> None:
    eng = require_engine()
    add_gcm(eng, 0x2001, A, B, mode=TRANSPORT)
    rig = Rig(eng)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.plane.run)
        for i in range(3):
            rig.app.send(udp(A, B, 1, 2, bytes([i])))
            await rig.from_wire()
        mock_clock.jump(WATCH_INTERVAL)
        await trio.testing.wait_all_tasks_blocked()
        sa = eng.sad.get(0x2001)
        assert sa is not None and sa.packets == 3 and sa.first_used is not None
        nursery.cancel_scope.cancel()
    rig.close()


async def test_what_the_thread_carried_is_reported_when_it_stops(mock_clock: trio.testing.MockClock) -> None:
    eng = require_engine()
    add_gcm(eng, 0x2001, A, B, mode=TRANSPORT)
    rig = Rig(eng)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.plane.run)
        for i in range(2):
            rig.app.send(udp(A, B, 1, 2, bytes([i])))
            await rig.from_wire()
        nursery.cancel_scope.cancel()  # before any watch: the stop reports
    sa = eng.sad.get(0x2001)
    assert sa is not None and sa.packets == 2
    rig.close()


class FailingOnce(EngineSeam):
    """A seam whose first decision raises (a bug met by one packet)."""

    def __init__(self, engine: KeyEngine, emit: Callable[[Sequence[Effect]], None]) -> None:
        super().__init__(engine, emit)
        self.failed = False

    def decide(self, dir_: int, flow: Flow, now: Instant) -> tuple[Decision, list[Effect]]:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug met by one packet")
        return super().decide(dir_, flow, now)


async def test_a_packet_whose_processing_raises_is_counted_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    eng = make_engine(clients=ALONE, def_policy=1)  # no policy: sent in the clear
    rig = Rig(eng)
    rig.plane.home = rig.plane.seam = FailingOnce(eng, rig.emitted)
    with caplog.at_level(logging.ERROR, "pfkeyd.dataplane"):
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.plane.run)
            rig.app.send(udp(A, B, 1, 2, b"first"))  # its decision raises: dropped
            second = udp(A, B, 3, 4, b"second")
            rig.app.send(second)
            assert await rig.from_wire() == second
            assert rig.plane.statistics()["counters"]["thread.error"] == 1
            assert rig.plane._loop is not None and rig.plane._loop.alive
            nursery.cancel_scope.cancel()
    assert "packet thread: a packet out raised RuntimeError" in caplog.text
    rig.close()


async def test_a_failure_of_the_loop_itself_ends_run_with_a_clear_error() -> None:
    eng = make_engine(clients=ALONE, def_policy=1)
    rig = Rig(eng)
    rig.sender.fail = OSError(errno.EBADF, "Bad file descriptor")  # not a per-packet drop
    rig.app.send(udp(A, B, 1, 2))  # waiting in the TUN when the thread starts
    with pytest.raises(PacketThreadError, match=r"packet thread failed: OSError: .*Bad file descriptor"):
        await rig.plane.run()
    # It cleaned up as after a stop.
    assert rig.tun.fd == -1 and rig.sender.closed and rig.plane._loop is None
    rig.close()


async def test_shutdown_interrupts_a_send_waiting_for_room_joins_the_thread_and_closes_everything() -> None:
    eng = make_engine(clients=ALONE, def_policy=1)
    rig = Rig(eng, sndbuf=4096)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.plane.run)
            loop = rig.plane._loop
            assert isinstance(loop, PacketLoop)
            rig.app.setblocking(False)
            sent = 0
            with contextlib.suppress(BlockingIOError):
                for i in range(200):  # nobody reads the wire: the sender fills and waits
                    rig.app.send(udp(A, B, 1, 2, bytes(1000) + i.to_bytes(2, "big")))
                    sent += 1
            await until(lambda: loop.waits > 0)  # the thread waits in poll(POLLOUT)
            nursery.cancel_scope.cancel()
    assert not loop.alive
    assert rig.tun.fd == -1 and rig.sender.closed and loop.wake.fd == -1
    assert rig.plane._loop is None
    # Backpressure, not a queue: what the wire did not take was never read from the TUN.
    assert rig.plane.counters["out.clear"] < sent
    rig.close()


class FailingPlane:
    """A plane whose packet thread fails once it has started."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.lowlevel.checkpoint()
        raise PacketThreadError(OSError(errno.EBADF, "Bad file descriptor"))


async def test_a_failed_packet_thread_ends_the_daemon_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pfkeyd import cli
    from pfkeyd.dataplane import daemon

    monkeypatch.setattr(daemon, "open_dataplane", lambda *args, **kwargs: (FailingPlane(), []))

    class Server:
        def emit(self, effects: Sequence[Effect]) -> None:
            pass

    failure: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            opts = daemon.DataplaneOptions()
            assert await cli._start_dataplane(nursery, opts, make_engine(), Server(), [], frozenset(), failure)  # type: ignore[arg-type]
            await trio.sleep_forever()  # the server's part: ended by the failure
    assert failure == ["data plane: packet thread failed: OSError: [Errno 9] Bad file descriptor"]


def test_socket_policies_of_one_port_come_and_go_each_as_a_whole_tuple() -> None:
    # The packet thread matches while the trio thread adds and removes: each
    # (protocol, port) entry is replaced whole, never changed in place.
    pols = SocketPolicies()
    head = HEAD.pack(1, socket.AF_INET, 17, 500, bytes(16))
    bypass = struct.pack("=HHHBBII", 2, 18, PolicyType.BYPASS, 2, 0, 0, 0)
    discard = struct.pack("=HHHBBII", 2, 18, PolicyType.DISCARD, 2, 0, 0, 0)
    pols.add(parse_request(head + bypass, 1))
    seen = pols._out[(17, 500)]
    pols.add(parse_request(head + discard, 2))
    assert isinstance(seen, tuple) and len(seen) == 1  # what a reader held is unchanged
    key = (socket.inet_aton(A), socket.inet_aton(B), 17, 500, 500)
    first = pols.match(key)
    assert first is not None and first.type == PolicyType.BYPASS
    assert pols.remove_owner(1) == 1
    second = pols.match(key)
    assert second is not None and second.type == PolicyType.DISCARD
    assert pols.remove_owner(2) == 1
    assert pols.match(key) is None and not pols._out
