"""What each SA carried, handed to the key engine: byte and allocation lifetimes, ``setkey -D``.

Theory of operation
-------------------
The bundle adds each packet an SA protects or accepts to that SA's
:class:`~pfkeyd.packet.runtime.SaRuntime` (``bytes``, ``packets``: FreeBSD's
``key_sa_recordxfer``).  The key engine keeps the SA's current lifetime and acts on
its byte and allocation limits in :meth:`pfkeyd.engine.KeyEngine.report_usage`.
This module connects the two: :func:`pending` compares the runtimes' totals with
what was already reported and yields the differences (one :class:`Report` per SA
that carried traffic since), and :func:`feed` passes them to the engine, returning
the EXPIRE effects for the shell to send.  The data plane calls them as often as
it likes (its trio side, every few milliseconds); reporting more often only makes an expiry
arrive sooner.

The report also carries the SA's replay counter as FreeBSD's SADB_X_SA2 shows it
(``sav->replay->count``): the last sequence number sent on an outbound SA, the
number of packets accepted on an inbound one.
"""

from __future__ import annotations

from collections.abc import Iterable

from pfkeyd.effects import Effect, Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.packet.runtime import SaRuntime
from pfkeyd.record import record

__all__ = ["Report", "Reported", "replay_counter", "pending", "feed"]


@record
class Report:
    """Traffic on SA ``spi`` since the last report."""

    spi: int
    nbytes: int
    packets: int
    replay_seq: int


#: What was reported so far, per runtime: (SPI, bytes, packets).  Keyed by the
#: runtime object, so an SPI reused by a new SA starts from zero.
Reported = dict[int, tuple[SaRuntime, int, int]]


def replay_counter(state: SaRuntime) -> int:
    """``sav->replay->count``: the outbound sequence counter, else the accepted count."""
    if state.seq:
        return state.seq
    return state.replay.count if state.replay is not None else 0


def pending(live: Iterable[tuple[int, SaRuntime]], reported: Reported) -> tuple[list[Report], Reported]:
    """The reports due for the live SAs ``(spi, runtime)``, and the new ``reported``
    map (SAs no longer live are forgotten).  Pure: ``reported`` is not changed."""
    reports: list[Report] = []
    after: Reported = {}
    for spi, state in live:
        seen = reported.get(spi)
        done_bytes, done_packets = (seen[1], seen[2]) if seen is not None and seen[0] is state else (0, 0)
        # Each total is read once: the packet thread may add to it meanwhile, and
        # what it adds after this read belongs to the next report.
        total_bytes, total_packets = state.bytes, state.packets
        nbytes, packets = total_bytes - done_bytes, total_packets - done_packets
        if nbytes or packets:
            reports.append(Report(spi, nbytes, packets, replay_counter(state)))
        after[spi] = (state, total_bytes, total_packets)
    return reports, after


def feed(engine: KeyEngine, reports: Iterable[Report], now: Instant) -> list[Effect]:
    """Give ``reports`` to the engine (:meth:`~pfkeyd.engine.KeyEngine.report_usage`);
    the effects are the EXPIREs that crossing a soft or hard limit sends."""
    effects: list[Effect] = []
    for r in reports:
        effects += engine.report_usage(r.spi, r.nbytes, r.packets, now, replay_seq=r.replay_seq)
    return effects
