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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from pfkeyd.effects import Effect, Instant
from pfkeyd.engine import Decision, KeyEngine
from pfkeyd.knobs import Knobs
from pfkeyd.packet.counters import Counters
from pfkeyd.sad import SecAssoc
from pfkeyd.spd import Flow, SecPolicy
from pfkeyd.wire import Direction, PolicyType, SockAddr

__all__ = ["EngineSeam", "Seam"]


class Seam(Protocol):
    """What the data plane needs of the daemon (see the module doc)."""

    @property
    def knobs(self) -> Knobs: ...

    @property
    def packet_counters(self) -> Counters: ...

    def generation(self) -> int: ...

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
