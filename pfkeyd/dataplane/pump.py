"""The packet thread: one OS thread with a blocking epoll over the data plane's descriptors.

Theory of operation
-------------------
Trio pays for every wake-up: each ``wait_readable`` registers the descriptor with
epoll again (an ``epoll_ctl`` per wait) and the scheduler runs a task step before
any packet is touched.  Measured with two empty forwarders (TUN <-> raw socket, no
crypto; ``bench/dataplane.py``), trio tasks added 1.5 to 3 times what a plain
blocking epoll loop adds to an echo's round trip (bench/README.md).  So the data plane's packets are
moved by a :class:`PacketLoop` in a thread of its own, while the trio thread keeps
PF_KEY, the control socket, the timers and the routes.

* The descriptors (TUN, raw receivers, NAT-T sockets) are registered once,
  level-triggered, each with a handler that drains what is ready (a bounded batch,
  so that one busy descriptor does not starve the others) and processes it.
* A :class:`Wake` (an eventfd) is registered too.  Writing it from any thread wakes
  the loop: to stop, or to call ``on_wake`` (the trio side uses it when the SAD or
  the SPD changed, so that held flows are decided again).
* ``timeout()`` tells the loop how long it may sleep (the hold queue's next
  deadline, on the thread's own monotonic clock); ``after()`` runs after every
  wake-up (expired held flows, the pcap file's flush).
* Sending waits, never queues: a handler that meets EAGAIN calls
  :meth:`PacketLoop.send`, which ``poll``\\s the descriptor for POLLOUT together
  with the wake eventfd, so that a stop request interrupts a wait on a stuck
  device (:class:`Stopping`).

**The compiled loop.**  Given a compiled loop (``pfkeyd.packet.espfast.Loop``,
see the data plane's module doc), the loop waits in it instead of in its own
epoll: it watches the TUN and the ESP receiver itself, moves the packets of the
flows and SAs the data plane installed without running Python, and hands back
the rest as items, in order: a readable descriptor (the wake eventfd, the other
receivers) goes to its handler as before, everything else to ``on_items`` (each
run of consecutive items in one call).

**Failures.**  The handlers guard each packet themselves (the data plane counts a
packet whose processing raised as ``thread.error``, logs it with a rate limit and
goes on: no packet can stop the daemon).  Anything that escapes a handler or the
loop is a failure of the loop's own descriptors or a bug outside a packet: the loop
ends and keeps the exception in :attr:`PacketLoop.failure`; ``on_exit`` always runs,
and the data plane turns the failure into a clear error that ends the daemon (exit 1)
rather than leave a daemon that looks alive and carries nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable
from typing import Any

from pfkeyd.dataplane.io import blocked_on
from pfkeyd.packet.crypto import espfast

__all__ = ["PacketLoop", "PacketThreadError", "Stopping", "Wake"]


class PacketThreadError(RuntimeError):
    """The packet loop failed (not a packet: its own descriptors, or a bug outside
    the per-packet guard); the daemon ends with this as its error."""

    def __init__(self, cause: BaseException | None) -> None:
        what = f"{type(cause).__name__}: {cause}" if cause is not None else "ended unexpectedly"
        super().__init__(f"packet thread failed: {what}")
        self.cause = cause


class Stopping(BaseException):
    """Raised inside the packet thread by a wait that a stop request interrupted (a
    BaseException, so that no per-packet ``except Exception`` can swallow it)."""


class Wake:
    """An eventfd that any thread sets and the packet loop waits on (with the others)."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def set(self) -> None:
        """Wake the loop (callable from any thread; repeated sets coalesce)."""
        with contextlib.suppress(BlockingIOError):  # at its maximum: it is set anyway
            os.eventfd_write(self.fd, 1)

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PacketLoop:
    """A blocking epoll loop run by one OS thread (see the module doc)."""

    def __init__(
        self,
        *,
        on_wake: Callable[[], None] = lambda: None,
        timeout: Callable[[], float | None] = lambda: None,
        after: Callable[[], None] = lambda: None,
        name: str = "pfkeyd-packets",
        compiled: espfast.Loop | None = None,
        on_items: Callable[[list[tuple[int, Any, Any, Any]]], None] = lambda items: None,
    ) -> None:
        self.wake = Wake()
        self._epoll = select.epoll()
        self._compiled = compiled
        self._on_items = on_items
        if compiled is not None:
            compiled.watch(self.wake.fd)
        else:
            self._epoll.register(self.wake.fd, select.EPOLLIN)
        self._handlers: dict[int, Callable[[], None]] = {}
        self._on_wake = on_wake
        self._timeout = timeout
        self._after = after
        self._stop = False
        self._woken = False
        self._name = name
        self._thread: threading.Thread | None = None
        #: How many sends had to wait for room (EAGAIN): backpressure at work.
        self.waits = 0
        #: What ended the loop, if it ended by itself.
        self.failure: BaseException | None = None

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        """Call ``handler()`` (in the packet thread) whenever ``fd`` is readable."""
        if self._compiled is not None:
            self._compiled.watch(fd)
        else:
            self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = handler

    # ------------------------------------------------------------- the thread
    def start(self, on_exit: Callable[[], None]) -> None:
        """Run the loop in a new thread; ``on_exit()`` is called in it when it ends."""
        self._thread = threading.Thread(target=self._main, args=(on_exit,), name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end (from any thread); :meth:`join` waits for it."""
        self._stop = True
        self.wake.set()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Release the epoll and eventfd descriptors (after :meth:`join`)."""
        self._epoll.close()
        self.wake.close()

    def _main(self, on_exit: Callable[[], None]) -> None:
        try:
            self.run()
        except Stopping:
            pass
        except BaseException as e:  # handed to the trio side, which ends the daemon with it
            self.failure = e
        finally:
            on_exit()

    def run(self) -> None:
        """The loop itself (the thread's body; a test may call it directly)."""
        if self._compiled is not None:
            self._run_compiled(self._compiled)
            return
        poll = self._epoll.poll
        while not self._stop:
            timeout = self._timeout()
            for fd, _events in poll(-1 if timeout is None else max(timeout, 0.0)):
                self._readable(fd)
            if not self._after_wait():
                return

    def _run_compiled(self, compiled: espfast.Loop) -> None:
        fd_item = espfast.ITEM_FD
        while not self._stop:
            timeout = self._timeout()
            items = compiled.wait(-1.0 if timeout is None else max(timeout, 0.0))
            run: list[tuple[int, Any, Any, Any]] = []
            for item in items:
                if item[0] != fd_item:
                    run.append(item)
                    continue
                if run:
                    self._on_items(run)
                    run = []
                self._readable(item[1])
            if run and not self._stop:
                self._on_items(run)
            if not self._after_wait():
                return

    def _readable(self, fd: int) -> None:
        """One descriptor the wait found readable: the wake eventfd, or a handler's."""
        if fd == self.wake.fd:
            self.wake.clear()
            self._woken = True
        elif not self._stop:
            self._handlers[fd]()

    def _after_wait(self) -> bool:
        """What follows every wake-up (``on_wake`` if woken, then ``after``); False
        when the loop is to end."""
        if self._stop:
            return False
        if self._woken:
            self._woken = False
            self._on_wake()
        self._after()
        return True

    # ---------------------------------------------------------------- sending
    def wait_writable(self, fd: int) -> None:
        """Block until ``fd`` can be written, or raise :class:`Stopping` if a stop
        request comes first.  Another wake-up (the SAD changed) is noted for the loop,
        which acts on it once the handler that is sending returns."""
        self.waits += 1
        p = select.poll()
        p.register(fd, select.POLLOUT)
        p.register(self.wake.fd, select.POLLIN)
        while not self._stop:
            for got, _events in p.poll():
                if got == fd:
                    return
                self.wake.clear()
                self._woken = True
        raise Stopping

    def send(self, send_now: Callable[..., bool], fd: int, *args: Any) -> bool:
        """``send_now(*args)``, waiting (see :meth:`wait_writable`) while it raises
        EAGAIN: the packet thread's way to send without queueing."""
        while True:
            try:
                return send_now(*args)
            except BlockingIOError as e:
                self.wait_writable(blocked_on(e, fd))
