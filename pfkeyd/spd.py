"""The security policy database: immutable policies, ordered lookup through an index.

Theory of operation
-------------------
A policy is a frozen :class:`SecPolicy`.  FreeBSD keeps one list per direction in
ascending priority, a new policy going before the first one with a strictly greater
priority, so that among equal priorities the older comes first; the first match
wins (reference §6.2).  That order is the key ``(priority, order)``, ``order`` being
an insertion counter.

Lookups must not scan every policy.  Policies are indexed per direction by the pair
of prefix lengths of their selector; inside one such *shape*, a dict maps the
masked (destination, source) networks to the policies with exactly those prefixes,
sorted by ``(priority, order)``.  A lookup masks the packet's addresses once per
shape present (a handful: /32 hosts, a few subnets, the /0 catch-all) and takes the
best first match among the buckets it hits.  The cost grows with the number of
distinct shapes, not with the number of policies.

Exact identity — what SPDADD's EEXIST and SPDDELETE compare — is the direction, both
full sockaddrs (ports and scope included), both prefix lengths and the upper-layer
protocol; the priority is not part of it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import field

from pfkeyd.record import record
from pfkeyd.sad import CHANGE_SP_DEL, CHANGE_SP_PUT
from pfkeyd.wire import Direction, IpProto, IpsecRequest, SockAddr

__all__ = ["Selector", "SecPolicy", "Spd", "Flow"]

_MASKS = {
    4: [((1 << 32) - 1) ^ ((1 << (32 - n)) - 1) for n in range(33)],
    6: [((1 << 128) - 1) ^ ((1 << (128 - n)) - 1) for n in range(129)],
}
_ICMP = (IpProto.ICMP, IpProto.IPV6_ICMP)


@record
class Selector:
    """What a policy applies to: prefixes (with ports) and the upper-layer protocol.

    For ICMP and ICMPv6 the ports carry the type (source) and the code (destination).
    """

    src: SockAddr
    src_len: int
    dst: SockAddr
    dst_len: int
    proto: int = IpProto.ANY

    @property
    def version(self) -> int:
        return self.src.version


@record
class Flow:
    """One packet's view for a lookup: addresses at full length, protocol, ports."""

    src: SockAddr
    dst: SockAddr
    proto: int = IpProto.ANY
    sport: int = 0
    dport: int = 0


@record
class SecPolicy:
    """One policy.  ``lifetime``/``validtime`` are seconds (0: unlimited)."""

    id: int
    dir: int
    selector: Selector
    type: int
    requests: tuple[IpsecRequest, ...]
    priority: int
    order: int
    created: float
    created_wall: int
    lifetime: int = 0
    validtime: int = 0
    scope: int = 1
    # When a lookup last matched the policy: [monotonic, wall], or [None, 0].  The one
    # mutable cell of the record, so that a lookup does not copy the policy.
    use: list[float | int | None] = field(default_factory=lambda: [None, 0], compare=False, repr=False)

    @property
    def key(self) -> tuple[int, int]:
        return (self.priority, self.order)

    @property
    def last_used(self) -> float | None:
        value = self.use[0]
        return None if value is None else float(value)

    @property
    def last_used_wall(self) -> int:
        return int(self.use[1] or 0)

    def touch(self, mono: float, wall: int) -> None:
        """A lookup matched the policy now (validtime counts from here)."""
        self.use[0] = mono
        self.use[1] = wall


def _identity(dir_: int, sel: Selector) -> tuple[object, ...]:
    return (dir_, sel.src, sel.src_len, sel.dst, sel.dst_len, sel.proto)


class _Shape:
    """All policies of one direction, family and (dst_len, src_len) pair."""

    __slots__ = ("buckets", "dmask", "smask")

    def __init__(self, version: int, dst_len: int, src_len: int) -> None:
        self.dmask = _MASKS[version][dst_len]
        self.smask = _MASKS[version][src_len]
        self.buckets: dict[tuple[int, int], list[SecPolicy]] = {}


class Spd:
    """The SPD: policies by id, by identity, and the lookup index."""

    def __init__(self) -> None:
        self.by_id: dict[int, SecPolicy] = {}
        self._by_identity: dict[tuple[object, ...], SecPolicy] = {}
        # (dir, version) -> {(dst_len, src_len): shape}
        self._shapes: dict[tuple[int, int], dict[tuple[int, int], _Shape]] = {}
        self._order = 0
        #: The change log, shared with the SAD's (see ``Sad.changes``).
        self.changes: list[tuple[int, object]] | None = None

    def __len__(self) -> int:
        return len(self.by_id)

    def next_order(self) -> int:
        self._order += 1
        return self._order

    def find(self, dir_: int, sel: Selector) -> SecPolicy | None:
        return self._by_identity.get(_identity(dir_, sel))

    def insert(self, sp: SecPolicy) -> None:
        self.by_id[sp.id] = sp
        self._by_identity[_identity(sp.dir, sp.selector)] = sp
        bucket = self._bucket(sp, create=True)
        assert bucket is not None
        bisect.insort(bucket, sp, key=lambda p: p.key)
        if self.changes is not None:
            self.changes.append((CHANGE_SP_PUT, sp))

    def remove(self, sp: SecPolicy) -> None:
        del self.by_id[sp.id]
        del self._by_identity[_identity(sp.dir, sp.selector)]
        sel = sp.selector
        shapes = self._shapes[(sp.dir, sel.version)]
        shape = shapes[(sel.dst_len, sel.src_len)]
        bkey = (int(sel.dst.ip) & shape.dmask, int(sel.src.ip) & shape.smask)
        bucket = shape.buckets[bkey]
        bucket.remove(sp)
        if not bucket:
            del shape.buckets[bkey]
            if not shape.buckets:
                del shapes[(sel.dst_len, sel.src_len)]
        if self.changes is not None:
            self.changes.append((CHANGE_SP_DEL, sp))

    def replace(self, old: SecPolicy, new: SecPolicy) -> None:
        """Swap a policy for an updated copy with the same identity and order."""
        self.by_id[new.id] = new
        self._by_identity[_identity(new.dir, new.selector)] = new
        bucket = self._bucket(old, create=False)
        assert bucket is not None
        bucket[bucket.index(old)] = new
        if self.changes is not None:
            self.changes.append((CHANGE_SP_PUT, new))

    def _bucket(self, sp: SecPolicy, *, create: bool) -> list[SecPolicy] | None:
        sel = sp.selector
        shapes = self._shapes.setdefault((sp.dir, sel.version), {})
        shape = shapes.get((sel.dst_len, sel.src_len))
        if shape is None:
            if not create:
                return None
            shape = shapes[(sel.dst_len, sel.src_len)] = _Shape(sel.version, sel.dst_len, sel.src_len)
        bkey = (int(sel.dst.ip) & shape.dmask, int(sel.src.ip) & shape.smask)
        if create:
            return shape.buckets.setdefault(bkey, [])
        return shape.buckets.get(bkey)

    def lookup(self, dir_: int, flow: Flow) -> SecPolicy | None:
        """The first policy in reference order that matches ``flow`` (key_allocsp)."""
        shapes = self._shapes.get((dir_, flow.src.version))
        if not shapes:
            return None
        d, s = int(flow.dst.ip), int(flow.src.ip)
        best: SecPolicy | None = None
        for shape in shapes.values():
            bucket = shape.buckets.get((d & shape.dmask, s & shape.smask))
            if bucket is None:
                continue
            for sp in bucket:
                if best is not None and sp.key >= best.key:
                    break
                if _matches(sp.selector, flow):
                    best = sp
                    break
        return best

    def ordered(
        self, dirs: tuple[int, ...] = (Direction.INBOUND, Direction.OUTBOUND, Direction.FWD)
    ) -> Iterator[SecPolicy]:
        """Every policy, direction by direction, each in lookup order (SPDDUMP's order)."""
        for d in dirs:
            yield from sorted((p for p in self.by_id.values() if p.dir == d), key=lambda p: p.key)


def _matches(sel: Selector, flow: Flow) -> bool:
    """The parts of a match the index does not decide: protocol, ports, scope."""
    if sel.proto not in (IpProto.ANY, flow.proto):
        return False
    if sel.src.port and sel.src.port != flow.sport:
        return False
    if sel.dst.port and sel.dst.port != flow.dport:
        return False
    if sel.src.scope_id and sel.src.scope_id != flow.src.scope_id:
        return False
    return not (sel.dst.scope_id and sel.dst.scope_id != flow.dst.scope_id)
