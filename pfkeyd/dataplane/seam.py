"""The one seam between the data plane and the daemon: what the packet path asks of it.

Theory of operation
-------------------
The data plane (:mod:`pfkeyd.dataplane.plane`) never imports the server or reaches
into the key engine.  It is handed a :class:`Seam`, whose few methods are everything
it needs:

* ``decide(dir, flow, now)``: the SPD decision that ``pfkeyd lookup`` shows (policy,
  levels, the SA per request, ACQUIREs with their pacing) and the effects it caused;
  ``resolve(dir, flow, policy, now)`` the same for a policy found elsewhere (a
  per-socket policy, applied before the SPD);
* ``sa(spi)`` and ``sa_between(proto, src, dst)``: the SA an inbound packet names
  (FreeBSD looks up by destination, protocol and SPI; plain IP-in-IP finds the
  IPComp tunnel SA of its two ends);
* ``report_usage``: the traffic an SA carried (lifetimes by bytes and allocations);
* ``knobs``, ``generation`` (a number that changes whenever the SPD, the SAD or the
  knobs may have changed, so that caches know when to forget), ``outbound_policies``
  (for the routes), ``inbound_policies`` (all of them, in lookup order, for the
  firewall table of :mod:`pfkeyd.dataplane.nft`), ``packet_counters`` (the engine's per-protocol table that
  ``pfkeyd stats`` prints);
* ``emit(effects)``: hand effects (ACQUIRE, EXPIRE) to the server, which has the
  daemon layer (:class:`pfkeyd.daemon.Daemon`) encode them as it encodes those of a
  PF_KEY request, and sends what it returns.

:class:`EngineSeam` implements it over the daemon layer's
:class:`pfkeyd.engine.KeyEngine` and :meth:`pfkeyd.server.Server.emit`.

**Across the thread boundary.**  The packet loop runs in a thread of its own
(:mod:`pfkeyd.dataplane.pump`), while the engine belongs to the trio thread: nothing
in the packet thread may change the engine or iterate its tables, since the trio
thread may change them between any two bytecodes.  :class:`ThreadSeam` is the seam
the packet thread is given; it wraps the trio thread's seam:

* marshalled and waited for (``trio.from_thread.run_sync`` with the trio token):
  ``decide`` (the lookup changes the engine: ACQUIRE pacing; its effects are handed
  to ``emit`` in the same trio step), ``sa_between`` (walks the SAD heads; only
  IPComp without a CPI-bearing header needs it), ``outbound_policies``;
* marshalled without waiting (``TrioToken.run_sync_soon``): ``report_usage`` with its
  effects, and ``emit``.  The calls run in order, each guarded: an exception in a
  ``run_sync_soon`` callback would end the trio run, so it is logged and counted
  (:attr:`ThreadSeam.errors`) instead;
* read directly, because each is one operation the GIL makes atomic on a value the
  trio thread replaces rather than mutates: ``generation()`` (an int attribute),
  ``knobs`` (an attribute holding an immutable :class:`~pfkeyd.knobs.Knobs`),
  ``sa(spi)`` (one ``dict.get`` on the SAD's SPI index, which holds immutable
  :class:`~pfkeyd.sad.SecAssoc` records: an SA changes by being replaced), and
  ``packet_counters`` (the same object for the engine's life; only the packet thread
  adds to it, and its tables never change size, so the trio thread's snapshot
  cannot fail; a count read mid-batch is merely a moment old).

Time: the engine's ``now`` is the trio thread's (``trio.current_time()``, the
autojump clock in tests), taken when the marshalled call runs; the ``now`` the plane
passes is its own clock's (the hold queue's deadlines) and is not handed to the
engine.  A cache miss (the first packet of a flow after the generation moved) costs
one round trip to the trio thread.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import trio

from pfkeyd.effects import Effect, Instant
from pfkeyd.engine import Decision, KeyEngine
from pfkeyd.knobs import Knobs
from pfkeyd.packet.counters import Counters
from pfkeyd.sad import SecAssoc
from pfkeyd.spd import Flow, SecPolicy
from pfkeyd.wire import Direction, PolicyType, SockAddr

__all__ = ["EngineSeam", "Seam", "ThreadSeam"]

log = logging.getLogger("pfkeyd.dataplane")


class Seam(Protocol):
    """What the data plane needs of the daemon (see the module doc)."""

    @property
    def knobs(self) -> Knobs: ...

    @property
    def packet_counters(self) -> Counters: ...

    def generation(self) -> int: ...

    def generation_source(self) -> tuple[object, str]:
        """The object and attribute whose value :meth:`generation` returns (the data
        plane's compiled loop reads it after every wake-up without running Python)."""
        ...

    def decide(self, dir_: int, flow: Flow, now: Instant) -> tuple[Decision, list[Effect]]: ...

    def resolve(self, dir_: int, flow: Flow, sp: SecPolicy, now: Instant) -> tuple[Decision, list[Effect]]: ...

    def sa(self, spi: int) -> SecAssoc | None: ...

    def sa_between(self, proto: int, src: SockAddr, dst: SockAddr) -> SecAssoc | None: ...

    def report_usage(
        self, spi: int, nbytes: int, packets: int, now: Instant, *, replay_seq: int | None = None
    ) -> list[Effect]: ...

    def outbound_policies(self) -> Iterable[SecPolicy]: ...

    def inbound_policies(self) -> Iterable[SecPolicy]: ...

    def emit(self, effects: Sequence[Effect]) -> None: ...


class EngineSeam:
    """:class:`Seam` over a :class:`KeyEngine`; ``emit`` is the server's effect router."""

    def __init__(self, engine: KeyEngine, emit: Callable[[Sequence[Effect]], None]) -> None:
        self._engine = engine
        self._emit = emit

    @property
    def knobs(self) -> Knobs:
        return self._engine.knobs

    @property
    def packet_counters(self) -> Counters:
        return self._engine.packet_counters

    def generation(self) -> int:
        return self._engine.generation

    def generation_source(self) -> tuple[object, str]:
        return self._engine, "generation"

    def decide(self, dir_: int, flow: Flow, now: Instant) -> tuple[Decision, list[Effect]]:
        return self._engine.lookup(dir_, flow, now)

    def resolve(self, dir_: int, flow: Flow, sp: SecPolicy, now: Instant) -> tuple[Decision, list[Effect]]:
        return self._engine.resolve(dir_, flow, sp, now)

    def sa(self, spi: int) -> SecAssoc | None:
        return self._engine.sad.get(spi)

    def sa_between(self, proto: int, src: SockAddr, dst: SockAddr) -> SecAssoc | None:
        for head in self._engine.sad.heads_for(proto, src, dst):
            for sa in head.alive.values():
                return sa
        return None

    def report_usage(
        self, spi: int, nbytes: int, packets: int, now: Instant, *, replay_seq: int | None = None
    ) -> list[Effect]:
        return self._engine.report_usage(spi, nbytes, packets, now, replay_seq=replay_seq)

    def outbound_policies(self) -> Iterable[SecPolicy]:
        return [sp for sp in self._engine.spd.ordered((Direction.OUTBOUND,)) if sp.type == PolicyType.IPSEC]

    def inbound_policies(self) -> Iterable[SecPolicy]:
        return list(self._engine.spd.ordered((Direction.INBOUND,)))

    def emit(self, effects: Sequence[Effect]) -> None:
        if effects:
            self._emit(effects)


class ThreadSeam:
    """The :class:`Seam` of the packet thread: ``home`` (the trio thread's seam) reached
    through ``token`` (see the module doc).  ``clock()`` is the engine's time, called
    in the trio thread."""

    def __init__(self, home: Seam, token: trio.lowlevel.TrioToken, clock: Callable[[], Instant]) -> None:
        self._home = home
        self._token = token
        self._clock = clock
        #: Marshalled calls that raised in the trio thread (logged there).
        self.errors = 0

    # direct reads: atomic under the GIL (module doc)
    @property
    def knobs(self) -> Knobs:
        return self._home.knobs

    @property
    def packet_counters(self) -> Counters:
        return self._home.packet_counters

    def generation(self) -> int:
        return self._home.generation()

    def generation_source(self) -> tuple[object, str]:
        return self._home.generation_source()

    def sa(self, spi: int) -> SecAssoc | None:
        return self._home.sa(spi)

    # waited for
    def decide(self, dir_: int, flow: Flow, now: Instant) -> tuple[Decision, list[Effect]]:
        return self._ask(self._home.decide, dir_, flow)

    def resolve(self, dir_: int, flow: Flow, sp: SecPolicy, now: Instant) -> tuple[Decision, list[Effect]]:
        return self._ask(self._home.resolve, dir_, flow, sp)

    def _ask(self, lookup: Callable[..., tuple[Decision, list[Effect]]], *args: Any) -> tuple[Decision, list[Effect]]:
        """``lookup(*args, now)`` in the trio thread at the engine's time; its effects
        (an ACQUIRE) are sent there, so none come back."""

        def call() -> tuple[Decision, list[Effect]]:
            decision, effects = lookup(*args, self._clock())
            self._home.emit(effects)
            return decision, []

        return trio.from_thread.run_sync(call, trio_token=self._token)

    def sa_between(self, proto: int, src: SockAddr, dst: SockAddr) -> SecAssoc | None:
        return trio.from_thread.run_sync(self._home.sa_between, proto, src, dst, trio_token=self._token)

    def outbound_policies(self) -> Iterable[SecPolicy]:
        return trio.from_thread.run_sync(lambda: list(self._home.outbound_policies()), trio_token=self._token)

    def inbound_policies(self) -> Iterable[SecPolicy]:
        return trio.from_thread.run_sync(lambda: list(self._home.inbound_policies()), trio_token=self._token)

    # fire and forget
    def report_usage(
        self, spi: int, nbytes: int, packets: int, now: Instant, *, replay_seq: int | None = None
    ) -> list[Effect]:
        self._post(self._report, spi, nbytes, packets, replay_seq)
        return []

    def _report(self, spi: int, nbytes: int, packets: int, replay_seq: int | None) -> None:
        self._home.emit(self._home.report_usage(spi, nbytes, packets, self._clock(), replay_seq=replay_seq))

    def emit(self, effects: Sequence[Effect]) -> None:
        if effects:
            self._post(self._home.emit, list(effects))

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        def call() -> None:
            try:
                fn(*args)
            except Exception:  # the boundary: a raising callback would end the trio run
                self.errors += 1
                log.error("data plane: %s from the packet thread failed", getattr(fn, "__name__", fn), exc_info=True)

        with contextlib.suppress(trio.RunFinishedError):  # the daemon is gone, and its clients
            self._token.run_sync_soon(call)
