"""The security association database: immutable SA records and their indexes.

Theory of operation
-------------------
An SA is a frozen :class:`SecAssoc`.  Every change (UPDATE, usage reports, the
soft lifetime) replaces the record, so a dump can take a snapshot by copying
references and keep streaming it while the table changes.

The SAD is organised as FreeBSD's key.c organises it (reference §7.1):

* ``by_spi``: the global SPI namespace — one SPI identifies at most one SA,
  whatever its protocol and addresses;
* ``heads``: one :class:`SaHead` per SA index (protocol, mode, reqid, source,
  destination), in creation order; each holds its LARVAL SAs and its alive
  (MATURE and DYING) SAs in creation order.  A head left without SAs is removed.

Dumps walk the heads newest first and, in each, the LARVAL SAs then the alive
ones, newest first — FreeBSD's order.  Ports are never part of an SA index.

Time: ``created`` is the engine's monotonic clock (deadlines); ``created_wall`` is
what LIFETIME_CURRENT reports.  Deadlines live in a heap with lazy deletion: an
entry is acted on only if the SA it names still carries the same ``version``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import field, replace
from types import MappingProxyType

from pfkeyd.record import record
from pfkeyd.wire import Key, Lifetime, SaState, SockAddr

__all__ = [
    "CHANGE_DEL",
    "CHANGE_PUT",
    "CHANGE_SP_DEL",
    "CHANGE_SP_PUT",
    "SaIndex",
    "NatT",
    "Usage",
    "SecAssoc",
    "SaHead",
    "Sad",
    "DEADLINE_LARVAL",
    "DEADLINE_SOFT",
    "DEADLINE_HARD",
]

DEADLINE_LARVAL = 0
DEADLINE_HARD = 1
DEADLINE_SOFT = 2
#: The states in which an SA carries traffic, bound once (an Enum member read
#: through its class costs about ten times a global; bench/README.md).
_ALIVE = (SaState.MATURE, SaState.DYING)
#: Entries of the change log (``Sad.changes``, ``Spd.changes``): an SA or policy
#: stored (inserted or replaced), or removed.
CHANGE_PUT = 0
CHANGE_DEL = 1
CHANGE_SP_PUT = 2
CHANGE_SP_DEL = 3


@record
class SaIndex:
    """FreeBSD's secasindex: what an SA is for.  Addresses carry no port."""

    proto: int
    mode: int
    reqid: int
    src: SockAddr
    dst: SockAddr
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        # Hashed by every SAD and ACQUIRE lookup: computed once.
        h = self._hash
        if h is None:
            h = hash((self.proto, self.mode, self.reqid, self.src, self.dst))
            object.__setattr__(self, "_hash", h)
        return h


@record
class NatT:
    """UDP encapsulation of an ESP SA (reference §4.15)."""

    type: int
    sport: int
    dport: int
    oai: SockAddr | None = None
    oar: SockAddr | None = None


@record
class Usage:
    """Traffic on an SA: bytes, packets, when it was first used, the sequence counter."""

    bytes: int = 0
    packets: int = 0
    first_used: float | None = None
    first_used_wall: int = 0
    replay_seq: int = 0


@record
class SecAssoc:
    """One SA.  ``replay`` is ``sadb_sa_replay`` as given (KAME: window bytes);
    ``replay_window`` the window that SA_REPLAY set, in packets rounded up to whole
    bitmap bytes as the kernel keeps it (0: none)."""

    spi: int
    satype: int
    index: SaIndex
    state: int
    auth: int
    encrypt: int
    flags: int
    replay: int
    replay_window: int
    key_auth: Key | None
    key_encrypt: Key | None
    seq: int
    pid: int
    created: float
    created_wall: int
    hard: Lifetime | None = None
    soft: Lifetime | None = None
    natt: NatT | None = None
    usage: Usage | None = None  # None until traffic is reported (most SAs, most of the time)
    version: int = 0

    # The usage counters, read through the record (they cost one slot while unused).
    @property
    def bytes(self) -> int:
        return self.usage.bytes if self.usage is not None else 0

    @property
    def packets(self) -> int:
        return self.usage.packets if self.usage is not None else 0

    @property
    def first_used(self) -> float | None:
        return self.usage.first_used if self.usage is not None else None

    @property
    def first_used_wall(self) -> int:
        return self.usage.first_used_wall if self.usage is not None else 0

    @property
    def replay_seq(self) -> int:
        return self.usage.replay_seq if self.usage is not None else 0

    @property
    def alive(self) -> bool:
        return self.state in _ALIVE

    def evolve(self, **changes: object) -> SecAssoc:
        """A copy with ``changes`` and a new version: the deadlines scheduled for the
        old version no longer fire; the engine schedules the new record's."""
        return replace(self, version=self.version + 1, **changes)  # type: ignore[arg-type]

    def counted(self, usage: Usage) -> SecAssoc:
        """A copy with new usage counters; its deadlines stay valid."""
        return replace(self, usage=usage)


class SaHead:
    """The SAs of one SA index (FreeBSD's secashead)."""

    __slots__ = ("_larval", "alive", "index")

    def __init__(self, index: SaIndex) -> None:
        self.index = index
        self.alive: dict[int, SecAssoc] = {}  # creation order; MATURE and DYING
        self._larval: dict[int, SecAssoc] | None = None  # most heads never hold one

    @property
    def larval(self) -> Mapping[int, SecAssoc]:
        return self._larval if self._larval is not None else _NO_SAS

    def _list_for(self, sa: SecAssoc) -> dict[int, SecAssoc]:
        if sa.alive:
            return self.alive
        if self._larval is None:
            self._larval = {}
        return self._larval

    def __len__(self) -> int:
        return len(self.alive) + (len(self._larval) if self._larval else 0)

    def dump_order(self) -> Iterator[SecAssoc]:
        if self._larval:
            yield from reversed(self._larval.values())
        yield from reversed(self.alive.values())


_NO_SAS: Mapping[int, SecAssoc] = MappingProxyType({})


#: How many stale deadline entries one ``Sad.next_deadline`` call discards at most.
STALE_POPS = 64


class Sad:
    """The SA database (pure data structure; the engine decides what happens)."""

    def __init__(self) -> None:
        self.by_spi: dict[int, SecAssoc] = {}
        self.heads: dict[SaIndex, SaHead] = {}
        # (proto, src, dst) -> the heads of those addresses, whatever mode and reqid
        self.by_pair: dict[tuple[int, SockAddr, SockAddr], list[SaHead]] = {}
        self._deadlines: list[tuple[float, int, int, int]] = []  # (when, spi, version, kind)
        #: The change log: while it is a list, every insertion, replacement and
        #: removal appends (CHANGE_PUT, new SA) or (CHANGE_DEL, SA) to it, for the
        #: durable state (pfkeyd.state) to drain after each request and tick.
        self.changes: list[tuple[int, object]] | None = None

    def __len__(self) -> int:
        return len(self.by_spi)

    def get(self, spi: int) -> SecAssoc | None:
        return self.by_spi.get(spi)

    def head(self, index: SaIndex) -> SaHead | None:
        return self.heads.get(index)

    def heads_for(self, proto: int, src: SockAddr, dst: SockAddr) -> list[SaHead]:
        """The heads of one protocol and address pair (key_cmpsaidx CMP_HEAD), oldest first."""
        group = self.by_pair.get((proto, src, dst))
        return list(group) if group else []

    def insert(self, sa: SecAssoc) -> None:
        head = self.heads.get(sa.index)
        if head is None:
            idx = sa.index
            head = self.heads[idx] = SaHead(idx)
            self.by_pair.setdefault((idx.proto, idx.src, idx.dst), []).append(head)
        head._list_for(sa)[sa.spi] = sa
        self.by_spi[sa.spi] = sa
        if self.changes is not None:
            self.changes.append((CHANGE_PUT, sa))

    def replace(self, old: SecAssoc, new: SecAssoc) -> None:
        """Swap ``old`` for ``new`` (same SPI).  A LARVAL SA that matures moves to
        the end (the newest) of the alive list; otherwise the position is kept."""
        head = self.heads[old.index]
        if new.index != old.index:
            self.remove(old)
            self.insert(new)
            return
        if old.alive == new.alive:
            head._list_for(new)[new.spi] = new
        else:
            head._list_for(old).pop(old.spi)
            head._list_for(new)[new.spi] = new
        self.by_spi[new.spi] = new
        if self.changes is not None:
            self.changes.append((CHANGE_PUT, new))

    def remove(self, sa: SecAssoc) -> None:
        head = self.heads[sa.index]
        head._list_for(sa).pop(sa.spi)
        del self.by_spi[sa.spi]
        if self.changes is not None:
            self.changes.append((CHANGE_DEL, sa))
        if not len(head):
            idx = sa.index
            del self.heads[idx]
            pair = (idx.proto, idx.src, idx.dst)
            group = self.by_pair[pair]
            group.remove(head)
            if not group:
                del self.by_pair[pair]

    def snapshot(self, proto: int | None = None) -> list[SecAssoc]:
        """Every LARVAL, MATURE and DYING SA (of ``proto``), in FreeBSD's dump order."""
        out: list[SecAssoc] = []
        for index, head in reversed(self.heads.items()):
            if proto is None or index.proto == proto:
                out.extend(head.dump_order())
        return out

    def of_proto(self, proto: int | None) -> list[SecAssoc]:
        if proto is None:
            return list(self.by_spi.values())
        return [sa for sa in self.by_spi.values() if sa.index.proto == proto]

    # ----------------------------------------------------------------- deadlines

    def schedule(self, when: float, sa: SecAssoc, kind: int) -> None:
        heapq.heappush(self._deadlines, (when, sa.spi, sa.version, kind))

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None.  Stale entries (their SA changed or went
        away) at the head are discarded, at most ``STALE_POPS`` of them a call: after
        a FLUSH of 200 000 SAs the head may be stale, and its time is returned, an
        alarm that can only come early, never late (``due`` discards the rest)."""
        heap = self._deadlines
        stale = 0
        while heap:
            when, spi, version, _ = heap[0]
            sa = self.by_spi.get(spi)
            if (sa is not None and sa.version == version) or stale == STALE_POPS:
                return when
            heapq.heappop(heap)  # the SA changed or went away: a stale entry
            stale += 1
        return None

    def due(self, now: float, limit: int | None = None) -> list[tuple[SecAssoc, int]]:
        """Pop the deadlines that have come, with the SA (still current) they name;
        at most ``limit`` entries, stale ones included, are popped."""
        heap = self._deadlines
        out: list[tuple[SecAssoc, int]] = []
        left = -1 if limit is None else limit
        while left and heap and heap[0][0] <= now:
            left -= 1
            _, spi, version, kind = heapq.heappop(heap)
            sa = self.by_spi.get(spi)
            if sa is not None and sa.version == version:
                out.append((sa, kind))
        return out
