"""The key engine's state and the steps every handler shares.

:class:`EngineCore` holds the SAD, the SPD, the ACQUIRE records, the clients and
their registrations, the knobs and the counters.  Its methods are the steps the
message handlers (:mod:`pfkeyd.engine.sa`, :mod:`pfkeyd.engine.policy`) and the hot
path (:mod:`pfkeyd.engine.hotpath`) have in common, so that a rule lives in one
place:

* **admission**: ``check_sa_room``, ``check_spi``, ``new_spi``, ``check_policy_room``,
  ``new_policy_id``, ``new_reqid`` -- checks that raise a
  :class:`~pfkeyd.errors.PfkeyError` before anything changes, and allocations;
* **insertion**: ``insert_sa``, ``insert_policy`` -- store a record, schedule its
  deadlines, complete the ACQUIRE it answers;
* **fan-out**: ``to_one``, ``to_all``, ``to_registered`` -- key_sendup_mbuf's ONE,
  ALL and REGISTERED as :mod:`pfkeyd.effects` values, with promiscuous copies;
* **time**: ``schedule``, ``next_deadline``, ``tick``, ``report_usage``.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING

from pfkeyd.acquire import AcquireTable
from pfkeyd.effects import ClientId, Dump, Effect, Instant, Send, SendEncoded
from pfkeyd.engine.messages import (
    expire_message,
    in_dialect,
    spdexpire_message,
)
from pfkeyd.errors import (
    AlreadyExists,
    InvalidArgument,
    NoBuffers,
)
from pfkeyd.knobs import Knobs
from pfkeyd.packet.counters import Counters as PacketCounters
from pfkeyd.record import record
from pfkeyd.sad import (
    DEADLINE_HARD,
    DEADLINE_LARVAL,
    DEADLINE_SOFT,
    Sad,
    SaIndex,
    SecAssoc,
    Usage,
)
from pfkeyd.spd import SecPolicy, Spd
from pfkeyd.stats import Statistics, Stats
from pfkeyd.wire import (
    Dialect,
    IpProto,
    Lifetime,
    Message,
    SaState,
)

__all__ = ["ClientState", "EngineCore", "Request"]

# Enum members that every ADD reads, bound once: reading a member as an attribute
# of its class costs about ten times a global (bench/README.md).
_SPI_RESERVED_FOR = frozenset({IpProto.ESP, IpProto.AH})
_LARVAL = SaState.LARVAL


@dataclass
class ClientState:
    """What the engine knows of one PF_KEY socket."""

    dialect: Dialect
    registered: set[int] = field(default_factory=set)
    promisc: bool = False


@record
class Request:
    client: ClientId
    msg: Message
    now: Instant
    dialect: Dialect


class EngineCore:
    """The SAD, the SPD, the registrations and the steps the handlers share."""

    def __init__(self, knobs: Knobs | None = None, *, rng: random.Random | None = None) -> None:
        self._knobs = knobs if knobs is not None else Knobs()
        self.rng = rng if rng is not None else random.SystemRandom()
        self.sad = Sad()
        self.clients: dict[ClientId, ClientState] = {}
        self.stats = Stats()
        # The packet path's counters (espstat, ahstat, ipcompstat and NAT-T); the
        # data plane fills them, `pfkeyd stats` prints them.
        self.packet_counters = PacketCounters()
        self.spd = Spd()
        self.acquires = AcquireTable()
        self._policy_deadlines: list[tuple[float, int]] = []  # (when, policy id), checked when due
        self._policy_ids = 0
        self._reqids = 0x4000
        self._deflev: tuple[Knobs, dict[tuple[int, int, int], int]] | None = None
        self._promiscuous = 0  # how many clients are in promiscuous mode
        self._dialect_count = dict.fromkeys(Dialect, 0)  # clients per dialect
        self._ints: dict[int, int] = {}  # see shared()
        #: Moves whenever the SPD, the SAD or the knobs may have changed (a request,
        #: a tick, a knob, an expiry from traffic): the data plane's caches check it.
        self.generation = 0

    # ---------------------------------------------------------------- clients

    def client_opened(self, client: ClientId, dialect: Dialect | str = Dialect.LINUX) -> None:
        self.client_closed(client)
        state = self.clients[client] = ClientState(Dialect(dialect))
        self._dialect_count[state.dialect] += 1

    def client_closed(self, client: ClientId) -> None:
        """The socket is gone: its registrations and promiscuous mode go with it."""
        state = self.clients.pop(client, None)
        if state is not None:
            self._dialect_count[state.dialect] -= 1
            self._promiscuous = sum(s.promisc for s in self.clients.values())

    def same_dialect_audience(self, client: ClientId, dialect: Dialect) -> tuple[ClientId, ...] | None:
        """Every client, ``client`` first, if all speak ``dialect`` and none is
        promiscuous (then one keyless message serves them all); else None."""
        clients = self.clients
        if self._promiscuous or self._dialect_count[dialect] != len(clients) or client not in clients:
            return None
        if len(clients) == 1:
            return (client,)
        return (client, *[c for c in clients if c != client])

    def _set_knobs(self, knobs: Knobs) -> None:
        old, self._knobs = self._knobs, knobs
        self.generation += 1
        self._knobs_changed()
        if knobs.larval_lifetime != old.larval_lifetime:
            # key_timehandler measures every LARVAL SA against the current
            # net.key.larval_lifetime (reference §7.1): move their deadlines too.
            for head in self.sad.heads.values():
                for sa in head.larval.values():
                    self.schedule(sa)

    # Read several times per request: the getter is a C callable, so a read makes
    # no Python frame (bench/README.md, "The daemon's ADD and DUMP").
    if TYPE_CHECKING:

        @property
        def knobs(self) -> Knobs: ...

        @knobs.setter
        def knobs(self, knobs: Knobs) -> None: ...

    else:
        knobs = property(
            attrgetter("_knobs"),
            _set_knobs,
            doc="The knob values; a new value is effective from the next message and the next tick.",
        )

    def _knobs_changed(self) -> None:
        """Called when the knobs change (the hot path drops what it learned)."""

    def set_knob(self, name: str, value: int | str) -> None:
        """Change one knob; effective from the next message (raises KnobError)."""
        self.knobs = self.knobs.set(name, value)

    def allocators(self) -> tuple[int, int, int]:
        """What the policy-id, reqid and policy-order counters last gave (the
        durable state keeps them, so that ids are not given twice)."""
        return (self._policy_ids, self._reqids, self.spd._order)

    def resume(self, allocators: tuple[int, int, int]) -> None:
        """The SAD and the SPD were filled from the durable state (pfkeyd.state):
        continue the counters where they were and schedule every SA's and policy's
        deadlines; those that passed while the daemon was down fire at the next
        tick (an SA past its hard lifetime is removed with its hard EXPIRE)."""
        self._policy_ids, self._reqids, self.spd._order = allocators
        for sa in self.sad.by_spi.values():
            self.schedule(sa)
        for sp in self.spd.by_id.values():
            self._schedule_policy(sp)

    def statistics(self) -> Statistics:
        return self.stats.snapshot(
            clients=len(self.clients),
            sas=len(self.sad),
            policies=len(self.spd),
            packets=self.packet_counters.snapshot(),
        )

    def _count(self, effects: Sequence[Effect]) -> None:
        for eff in effects:
            if isinstance(eff, Send):
                self.stats.note_out(eff.msg.type, len(eff.to))
            elif isinstance(eff, SendEncoded):
                self.stats.note_out(eff.msgtype, 1 + len(eff.others))
            elif isinstance(eff, Dump):
                self.stats.note_out(eff.msgtype, len(eff.items))

    # ------------------------------------------------------------- delivery

    def _fan_out(
        self, clients: Iterable[ClientId], build: Callable[[Dialect], Message], *, promisc: bool = False
    ) -> list[Effect]:
        """Broadcast to ``clients``, each getting ``build`` of its dialect; clients whose
        messages are equal share one Send (in the common case, one Send for all)."""
        messages: list[Message] = []
        groups: list[list[ClientId]] = []
        slot_of: dict[Dialect, int] = {}
        for c in clients:
            d = self.clients[c].dialect
            slot = slot_of.get(d)
            if slot is None:
                m = build(d)
                slot = next((i for i, x in enumerate(messages) if x == m), len(messages))
                if slot == len(messages):
                    messages.append(m)
                    groups.append([])
                slot_of[d] = slot
            groups[slot].append(c)
        return [Send(tuple(cs), m, promisc=promisc) for m, cs in zip(messages, groups)]

    def _promisc(self, build: Message | Callable[[Dialect], Message]) -> list[Effect]:
        """The keyless copies for promiscuous sockets, each in terms its dialect can say."""
        if not self._promiscuous:
            return []
        listeners = [c for c, s in self.clients.items() if s.promisc]

        def copy(d: Dialect) -> Message:
            return in_dialect((build(d) if callable(build) else build).without_keys(), d)

        return self._fan_out(listeners, copy, promisc=True)

    def to_one(self, req: Request, msg: Message) -> list[Effect]:
        """KEY_SENDUP_ONE: the requester only (keys allowed)."""
        return [Send((req.client,), msg, reply=True), *self._promisc(msg)]

    def to_all(self, req: Request | None, msg: Message) -> list[Effect]:
        """KEY_SENDUP_ALL: every socket, the requester's copy being its reply."""
        msg = msg.without_keys()
        me = req.client if req is not None else None
        out: list[Effect] = []
        if me is not None:
            out.append(Send((me,), msg, reply=True))
            if len(self.clients) == 1:
                return out + self._promisc(msg)
        others = [c for c in self.clients if c != me]
        out += self._fan_out(others, lambda d: in_dialect(msg, d))
        return out + self._promisc(msg)

    def to_registered(
        self, build: Message | Callable[[Dialect], Message], requester: ClientId | None = None
    ) -> list[Effect]:
        """KEY_SENDUP_REGISTERED: every socket registered for any satype, plus the
        requester (whose copy is its reply).  ``build`` may give each dialect its own
        message (the algorithm lists of REGISTER and ACQUIRE differ)."""
        made: dict[Dialect, Message] = {}

        def message(d: Dialect) -> Message:
            if d not in made:
                made[d] = in_dialect((build(d) if callable(build) else build).without_keys(), d)
            return made[d]

        out: list[Effect] = []
        if requester is not None:
            out.append(Send((requester,), message(self.clients[requester].dialect), reply=True))
        for d in Dialect:
            targets = tuple(c for c, s in self.clients.items() if s.registered and c != requester and s.dialect is d)
            if targets:
                out.append(Send(targets, message(d)))
        if not out:
            return []
        return out + self._promisc(message)

    def registered_clients(self) -> tuple[ClientId, ...]:
        return tuple(c for c, s in self.clients.items() if s.registered)

    # ------------------------------------------------------------ admission

    def new_spi(self, proto: int, lo: int, hi: int) -> int:
        """key_do_getnewspi (reference §3.1)."""
        if proto == IpProto.IPCOMP:
            lo, hi = min(lo, 0xFFFF), min(hi, 0xFFFF)
        if lo > hi:
            lo, hi = hi, lo
        by_spi = self.sad.by_spi
        if lo == hi:
            if lo in by_spi:
                msg = f"SPI {lo:#x} is in use"
                raise AlreadyExists(msg)
            spi = lo
        else:
            for _ in range(self.knobs.spi_trycnt):
                spi = lo + self.rng.randrange(hi - lo + 1)
                if spi not in by_spi:
                    break
            else:
                msg = f"no free SPI in {lo:#x}..{hi:#x} after {self.knobs.spi_trycnt} attempts"
                raise AlreadyExists(msg)
        if proto != IpProto.IPCOMP and spi <= 255:
            msg = f"SPI {spi} is reserved (RFC 4302)"
            raise InvalidArgument(msg)
        return spi

    def check_sa_room(self) -> None:
        if len(self.sad) >= self.knobs.max_sas:
            msg = f"the SAD holds {len(self.sad)} SAs (pfkeyd.max_sas)"
            raise NoBuffers(msg)

    def check_spi(self, proto: int, spi: int) -> None:
        """An ADD's SPI: not in use (EEXIST), not reserved for ESP and AH (EINVAL)."""
        if spi in self.sad.by_spi:
            msg = f"SPI {spi:#x} is in use"
            raise AlreadyExists(msg)
        if spi <= 255 and proto in _SPI_RESERVED_FOR:
            msg = f"SPI {spi} is reserved (RFC 4302)"
            raise InvalidArgument(msg)

    def insert_sa(self, sa: SecAssoc) -> None:
        """Store a new SA that passed the checks: schedule its deadlines, and complete
        the ACQUIRE its seq answers (reference §7.4; seq 0 completes none)."""
        self.sad.insert(sa)
        if sa.state == _LARVAL or sa.hard is not None or sa.soft is not None:
            self.schedule(sa)
        if sa.seq:
            self.acqdone(sa.index, sa.seq)

    def shared(self, value: int) -> int:
        """One int object per distinct pid or creation second: a million SAs made by a
        few processes within a few seconds then share them (memory per SA)."""
        known = self._ints.get(value)
        if known is not None:
            return known
        if len(self._ints) >= 4096:
            self._ints.clear()
        self._ints[value] = value
        return value

    def acqdone(self, index: SaIndex, seq: int) -> None:
        """A GETSPI or ADD that carries an ACQUIRE's seq completes it (reference §7.4)."""
        self.acquires.done(index, seq)

    def check_policy_room(self, replacing: SecPolicy | None) -> None:
        """A new policy needs room in the SPD (ENOBUFS); one that replaces another does not."""
        if replacing is None and len(self.spd) >= self.knobs.max_policies:
            msg = f"the SPD holds {len(self.spd)} policies (pfkeyd.max_policies)"
            raise NoBuffers(msg)

    def new_policy_id(self, dir_: int) -> int:
        """A unique non-zero id.  Like Linux's xfrm_gen_index, id % 8 is the direction
        less one, which Linux-built setkey relies on to tell socket policies apart;
        FreeBSD clients only need uniqueness."""
        counter = self._policy_ids
        for _ in range(self.knobs.spi_trycnt):
            counter = (counter + 1) % (1 << 29)
            pid = (counter << 3) | ((dir_ - 1) & 7)
            if pid and pid not in self.spd.by_id:
                self._policy_ids = counter
                return pid
        raise NoBuffers("no free policy id")  # the counter is as it was

    def new_reqid(self) -> int:
        """key_newreqid: a counter from 0x4001; past 0xffffffff it restarts at 0x4000."""
        self._reqids = 0x4000 if self._reqids >= 0xFFFFFFFF else self._reqids + 1
        return self._reqids

    def insert_policy(self, sp: SecPolicy, replacing: SecPolicy | None = None) -> None:
        """Store a policy that passed the checks (in place of ``replacing``) and
        schedule its expiry."""
        if replacing is not None:
            self.spd.remove(replacing)
        self.spd.insert(sp)
        self._schedule_policy(sp)

    # ----------------------------------------------------------- deadlines

    def schedule(self, sa: SecAssoc) -> None:
        """Push the deadlines of ``sa`` (its version makes older ones stale)."""
        sad = self.sad
        if sa.state == SaState.LARVAL:
            sad.schedule(sa.created + self.knobs.larval_lifetime, sa, DEADLINE_LARVAL)
            return
        for lt, kind in ((sa.hard, DEADLINE_HARD), (sa.soft, DEADLINE_SOFT)):
            if lt is None or (kind == DEADLINE_SOFT and sa.state != SaState.MATURE):
                continue
            if lt.addtime:
                sad.schedule(sa.created + lt.addtime, sa, kind)
            if lt.usetime and sa.first_used is not None:
                sad.schedule(sa.first_used + lt.usetime, sa, kind)

    def next_deadline(self) -> float | None:
        """When ``tick`` is next needed (monotonic seconds), or None.  The shell asks
        after every request, so the common case (nothing pending but SAs) is cheap."""
        best = self.sad.next_deadline()
        if self.acquires.by_index:
            t = self.acquires.next_deadline(self.knobs.blockacq_lifetime)
            if t is not None and (best is None or t < best):
                best = t
        if self._policy_deadlines:
            t = self._policy_deadlines[0][0]
            if best is None or t < best:
                best = t
        return best

    def tick(self, now: Instant, *, limit: int | None = None) -> list[Effect]:
        """Expire what is due at ``now`` (reference §7.1, §7.2).

        ``limit`` bounds how many deadline entries of SAs, and how many of
        policies, this call takes on; what is left stays due, so
        ``next_deadline()`` is still at or before ``now`` and the caller calls again.  A shell that lets other
        work run between such calls never stalls on an expiry storm (200 000 SAs
        due at once).
        """
        if limit is not None and limit < 1:
            msg = f"tick limit {limit} is not positive"
            raise ValueError(msg)
        self.generation += 1
        effects: list[Effect] = []
        due = self.sad.due(now.mono, limit)
        for sa, kind in due:
            current = self.sad.get(sa.spi)
            if current is not sa:
                continue  # an earlier deadline in this tick changed it
            # A deadline names an SPI and a version, and a new SA of a reused SPI
            # starts at version 0 again: an entry acts only if its limit has
            # really come for the SA that holds the SPI now.
            if kind == DEADLINE_LARVAL:
                if sa.state != SaState.LARVAL or now.mono < sa.created + self.knobs.larval_lifetime:
                    continue  # another SA, or the lifetime grew since (its later deadline is scheduled)
                self.sad.remove(sa)  # silently, as key_timehandler does
            elif hard_due(sa, now.mono):
                # HARD is checked first: a tick that finds both limits passed sends
                # only the hard EXPIRE (reference §7.2).
                effects += self._expire_hard(sa)
            elif kind == DEADLINE_SOFT and soft_due(sa, now.mono):
                effects += self._expire_soft(sa)
        self.acquires.expire(now.mono, self.knobs.blockacq_lifetime)
        effects += self._expire_policies(now, limit)
        self._count(effects)
        return effects

    def _expire_hard(self, sa: SecAssoc) -> list[Effect]:
        self.sad.remove(sa)
        assert sa.hard is not None
        return self.to_registered(expire_message(sa.evolve(state=SaState.DEAD), sa.hard))

    def _expire_soft(self, sa: SecAssoc) -> list[Effect]:
        if sa.state != SaState.MATURE:
            return []
        dying = sa.evolve(state=SaState.DYING)
        self.sad.replace(sa, dying)
        self.schedule(dying)
        assert sa.soft is not None
        return self.to_registered(expire_message(dying, sa.soft))

    def report_usage(
        self, spi: int, nbytes: int, packets: int, now: Instant, *, replay_seq: int | None = None
    ) -> list[Effect]:
        """Account traffic on an SA (the packet path calls this, through
        :mod:`pfkeyd.packet.usage`); enforces the byte and allocation limits and starts
        the use-time lifetimes on first use.  ``replay_seq`` is the SA's replay counter
        now (what SADB_X_SA2 reports), if the caller knows it."""
        sa = self.sad.get(spi)
        if sa is None or not sa.alive:
            return []
        first = sa.first_used is None
        usage = Usage(
            sa.bytes + nbytes,
            sa.packets + packets,
            now.mono if first else sa.first_used,
            now.wall if first else sa.first_used_wall,
            sa.replay_seq if replay_seq is None else replay_seq,
        )
        new = sa.evolve(usage=usage) if first else sa.counted(usage)
        self.sad.replace(sa, new)
        if first:
            self.schedule(new)
        effects: list[Effect] = []
        if over(new.hard, new):
            effects = self._expire_hard(new)
            self.generation += 1
        elif new.state == SaState.MATURE and over(new.soft, new):
            effects = self._expire_soft(new)
            self.generation += 1
        self._count(effects)
        return effects

    def _schedule_policy(self, sp: SecPolicy) -> None:
        when = policy_expiry(sp)
        if when is not None:
            heapq.heappush(self._policy_deadlines, (when, sp.id))

    def _expire_policies(self, now: Instant, limit: int | None = None) -> list[Effect]:
        """Remove policies past their lifetime or validtime; SPDEXPIRE to REGISTERED.
        At most ``limit`` due deadlines are taken on."""
        out: list[Effect] = []
        heap = self._policy_deadlines
        left = -1 if limit is None else limit
        while heap and heap[0][0] <= now.mono and left:
            left -= 1
            _, pid = heapq.heappop(heap)
            sp = self.spd.by_id.get(pid)
            if sp is None:
                continue
            when = policy_expiry(sp)
            if when is None:
                continue
            if when > now.mono:
                heapq.heappush(heap, (when, pid))  # used since: the validtime moved on
                continue
            self.spd.remove(sp)
            out += self.to_registered(spdexpire_message(sp))
        return out


def hard_due(sa: SecAssoc, now: float) -> bool:
    """The hard add-time or use-time limit of ``sa`` has been reached at ``now``."""
    lt = sa.hard
    if lt is None:
        return False
    if lt.addtime and now >= sa.created + lt.addtime:
        return True
    return bool(lt.usetime and sa.first_used is not None and now >= sa.first_used + lt.usetime)


def soft_due(sa: SecAssoc, now: float) -> bool:
    """The soft add-time or use-time limit of ``sa`` has been reached at ``now``."""
    lt = sa.soft
    if lt is None:
        return False
    if lt.addtime and now >= sa.created + lt.addtime:
        return True
    return bool(lt.usetime and sa.first_used is not None and now >= sa.first_used + lt.usetime)


def over(limit: Lifetime | None, sa: SecAssoc) -> bool:
    if limit is None:
        return False
    return bool((limit.bytes and sa.bytes > limit.bytes) or (limit.allocations and sa.packets > limit.allocations))


def policy_expiry(sp: SecPolicy) -> float | None:
    """When a policy's lifetime or validtime runs out (reference §6.6)."""
    times = []
    if sp.lifetime:
        times.append(sp.created + sp.lifetime)
    if sp.validtime:
        times.append((sp.last_used if sp.last_used is not None else sp.created) + sp.validtime)
    return min(times) if times else None
