"""Helpers for the setkey command-line tests: a pfkeyd in a thread of the test
process, and setkey's main() run against it with every stream captured.

The daemon is the real server and key engine on real Unix sockets, one per
dialect, with a fixed wall clock (:data:`WALL`), so dumps are reproducible to
the byte.  It runs its own trio loop in a thread, which leaves the test's main
thread free to call ``setkey.cli.main`` (which runs trio itself) or to start
setkey as a subprocess.
"""

from __future__ import annotations

import io
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from pfkeyd import control
from pfkeyd.effects import Effect, Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.server import Endpoint, Server
from pfkeyd.wire import Dialect
from setkey import cli

#: The daemon's wall clock: Tue Nov 14 22:13:20 2023 UTC.
WALL = 1_700_000_000
#: setkey's clock in these tests: seven seconds after the SAs were made.
NOW = WALL + 7

T = TypeVar("T")


class ThreadDaemon:
    """pfkeyd (server + key engine) serving ``<dir>/linux.sock`` and ``<dir>/freebsd.sock``,
    with the control sockets beside them if ``control``."""

    def __init__(self, sockdir: str, *, control: bool = False) -> None:
        self.paths = {Dialect.LINUX: f"{sockdir}/linux.sock", Dialect.FREEBSD: f"{sockdir}/freebsd.sock"}
        self.engine = KeyEngine(rng=random.Random(2367))
        self.server = Server(
            self.engine,
            [Endpoint(p, d) for d, p in self.paths.items()],
            wall_clock=lambda: WALL,
            control=self._control if control else None,
        )
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="pfkeyd", daemon=True)

    def _main(self) -> None:
        async def serve() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.server.serve)
                self._ready.set()

        try:
            trio.run(serve)
        except BaseException as exc:  # handed to the test thread
            self._failure = exc
        finally:
            self._ready.set()

    def _control(self, argv: Sequence[str], now: Instant, dialect: Dialect) -> tuple[int, str, str, Sequence[Effect]]:
        outcome = control.run(self.engine, argv, now, dialect)
        return outcome.status, outcome.out, outcome.err, outcome.effects

    def start(self) -> ThreadDaemon:
        self._thread.start()
        if not self._ready.wait(30) or self._failure is not None:
            raise RuntimeError(f"pfkeyd did not start: {self._failure!r}")
        return self

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the daemon's thread (the engine is not thread-safe)."""
        assert self._token is not None
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def counts(self) -> tuple[int, int]:
        """(SAs, policies) in the daemon's databases."""
        return self.call(lambda: (len(self.engine.sad), len(self.engine.spd)))

    def clients(self) -> int:
        return self.call(lambda: self.server.statistics().clients)

    def stop(self) -> None:
        if self._token is not None and self._thread.is_alive():
            self.call(self.server.stop)
        self._thread.join(30)
        if self._failure is not None:
            raise self._failure


@dataclass
class Result:
    status: int
    out: str
    err: str


def run(
    argv: Sequence[str], *, stdin: str = "", dialect: Dialect | None = None, socket: str | None = None, **runtime: Any
) -> Result:
    """``setkey argv`` in this process, with TZ=UTC and the clock at :data:`NOW`;
    ``--dialect`` and ``--socket`` are added when given."""
    args = list(argv)
    if dialect is not None:
        args = ["--dialect", dialect.value, *args]
    if socket is not None:
        args = ["--socket", socket, *args]
    out, err = io.StringIO(), io.StringIO()
    settings: dict[str, Any] = {"clock": lambda: float(NOW), "localtime": time.gmtime, "environ": {}, "interval": 0.0}
    settings.update(runtime)
    rt = cli.Runtime(stdin=io.StringIO(stdin), stdout=out, stderr=err, **settings)
    status = cli.main(args, rt)
    return Result(status, out.getvalue(), err.getvalue())


def against(daemon: ThreadDaemon, dialect: Dialect) -> Callable[..., Result]:
    """:func:`run` bound to one of ``daemon``'s sockets."""

    def bound(argv: Sequence[str], **kwargs: Any) -> Result:
        return run(argv, dialect=dialect, socket=daemon.paths[dialect], **kwargs)

    return bound


PID = os.getpid()
