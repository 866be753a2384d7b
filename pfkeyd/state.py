"""Durable state, the pure part: record encoding, the CRC-framed files, replay.

Theory of operation
-------------------
With a state directory (``pfkeyd --state-dir``) every change to the SAD and the
SPD is written to a journal before the reply that acknowledges it leaves.  The
engine reports its changes as data: ``Sad.changes`` and ``Spd.changes`` (one
list) collect (kind, record) pairs as the tables change, whichever path changed
them (the handlers, the hot path, the timer); :meth:`Recorder.drain` turns what
one request or tick changed into one journal record, so that a message is
durable all or nothing.  Replay applies the same operations to the same tables,
in the same order, so the tables come back as they were, down to the order of a
dump.  This module reads and writes no file: it encodes and decodes bytes that
the shell (:mod:`pfkeyd.statedir`) reads, writes and syncs.

The files (format version 1)
----------------------------
A state directory holds ``snapshot`` (absent until the first compaction) and
``journal.N`` files.  Every file starts with a 16-byte header: an 8-byte magic
(``pfkeydS1`` for a snapshot, ``pfkeydJ1`` for a journal), the format version
and the generation N, both 32-bit little-endian.  Records follow, each framed as
a 32-bit little-endian payload length, the CRC-32 (zlib's) of the payload, and
the payload.  A journal is followed by zero bytes, space reserved ahead so that
a sync need not change the file's size (``fdatasync`` then writes the data
alone, about fifteen times faster here); a record header of length 0 ends the
records, and everything after it must be zero.  A journal's generation is in its name; a snapshot of generation N
holds the state at the moment journal N was begun, so the state is the snapshot,
then journal N, N+1, ... replayed in order (journals below N are left-overs of
a compaction and are removed).

A payload is a Python ``marshal`` (version 4) encoding of a tuple of ints,
floats, bytes, strings, None and tuples only: no code, no objects.

* journal record: ``(ops, counters)``; ``ops`` a tuple of ``(kind, value)``:
  ``(0, SA)`` stores an SA (inserted, or replacing the SA of its SPI), ``(1, spi)``
  removes one, ``(2, policy)`` stores a policy (inserted, or replacing the one of
  its id), ``(3, id)`` removes one, ``(4, knobs)`` sets the knobs changed at run
  time, a tuple of ``(name, value)``; ``counters`` is ``(last policy id counter,
  last reqid, last policy order)``.
* snapshot records: first ``("meta", counters, knobs)``, then any number of
  ``("sa", (SA, ...))`` and ``("sp", (policy, ...))`` chunks in table order, and
  last ``("end", number of SAs, number of policies)``: a snapshot without its end
  record is refused.
* an SA: ``(spi, satype, proto, mode, reqid, src, dst, state, auth, encrypt,
  flags, replay, replay_window, key_auth, key_encrypt, seq, pid, created,
  created_wall, hard, soft, natt, usage, version)``; an address ``(ip bytes,
  port, flowinfo, scope_id)``; another family's sockaddr ``(family, bytes)``; a
  key ``(exttype, bytes, bits)``; a lifetime ``(exttype, allocations, bytes,
  addtime, usetime)``; NAT-T ``(type, sport, dport, oai, oar)``; usage ``(bytes,
  packets, first_used, first_used_wall, replay_seq)``.
* a policy: ``(id, dir, (src, src_len, dst, dst_len, proto), type, requests,
  priority, order, created, created_wall, lifetime, validtime, scope)``; a
  request ``(proto, mode, level, reqid, src or None, dst or None)``.

Times: ``created`` and ``first_used`` are the engine's monotonic seconds in
memory; on disk they are wall-clock seconds (float), so that lifetimes that
count from the add or the first use go on counting across a restart from the
wall clock of the original event.  A policy's last use is not kept (a validtime
counts from the restart).

A torn or corrupt tail: :func:`scan` stops at the first record whose length runs
past the data or whose CRC does not match, and says where the last whole record
ended; the shell cuts the file there and reports it.  Nothing after it is
guessed at.
"""

from __future__ import annotations

import marshal
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pfkeyd.knobs import KnobError, Knobs
from pfkeyd.sad import CHANGE_DEL, CHANGE_PUT, CHANGE_SP_DEL, CHANGE_SP_PUT, NatT, Sad, SaIndex, SecAssoc, Usage
from pfkeyd.spd import SecPolicy, Selector, Spd
from pfkeyd.wire import ExtType, IpsecRequest, Key, Lifetime, SockAddr
from pfkeyd.wire.sockaddr import RawSockAddr

__all__ = [
    "FORMAT_VERSION",
    "HEADER",
    "JOURNAL_MAGIC",
    "SNAPSHOT_MAGIC",
    "StateError",
    "Recorder",
    "Scan",
    "Codec",
    "frame",
    "header",
    "read_header",
    "scan",
    "apply_ops",
    "snapshot_records",
    "restore_snapshot",
    "knob_overrides",
    "apply_knobs",
    "CHANGE_KNOBS",
]

FORMAT_VERSION = 1
SNAPSHOT_MAGIC = b"pfkeydS1"
JOURNAL_MAGIC = b"pfkeydJ1"
HEADER = struct.Struct("<8sII")
_FRAME = struct.Struct("<II")
#: A change of the knobs (after the change-log kinds of pfkeyd.sad).
CHANGE_KNOBS = 4
#: SAs or policies per snapshot record.
CHUNK = 4096
#: The longest record accepted (a guard against a corrupt length field).
RECORD_MAX = 1 << 30


class StateError(Exception):
    """A state file that cannot be used: wrong magic, version or generation, or a
    corrupt snapshot.  The daemon does not start; nothing is guessed."""


def header(magic: bytes, generation: int) -> bytes:
    return HEADER.pack(magic, FORMAT_VERSION, generation)


def read_header(data: bytes, magic: bytes, what: str) -> int:
    """The generation in a file's header; StateError if it is not ours."""
    if len(data) < HEADER.size:
        msg = f"{what}: shorter than its header"
        raise StateError(msg)
    got, version, generation = HEADER.unpack_from(data)
    if got != magic:
        msg = f"{what}: not a pfkeyd state file (magic {got!r})"
        raise StateError(msg)
    if version != FORMAT_VERSION:
        msg = f"{what}: format version {version}; this pfkeyd reads version {FORMAT_VERSION}"
        raise StateError(msg)
    return int(generation)


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True, slots=True)
class Scan:
    """What :func:`scan` found: the payloads of the whole records, where the last
    one ended, and why reading stopped early ("" at a clean end)."""

    payloads: list[bytes]
    end: int
    problem: str


def scan(data: bytes | memoryview, start: int = HEADER.size) -> Scan:
    """The CRC-checked records from ``start`` on, up to the first one that is cut
    short or corrupt, or to the zeros reserved after the last one."""
    view = memoryview(data)
    payloads: list[bytes] = []
    at, size = start, len(view)
    problem = ""
    while at < size:
        if size - at < _FRAME.size:
            if view[at:].tobytes().strip(b"\0"):
                problem = f"a record header cut short at byte {at}"
            break
        length, crc = _FRAME.unpack_from(view, at)
        if length == 0:
            # The space reserved ahead of the records: zeros to the end.
            if view[at:].tobytes().strip(b"\0"):
                problem = f"data after the end of the records at byte {at}"
            break
        body = at + _FRAME.size
        if length > RECORD_MAX or body + length > size:
            problem = f"a record of {length} bytes at byte {at} runs past the end ({size})"
            break
        payload = bytes(view[body : body + length])
        if zlib.crc32(payload) != crc:
            problem = f"a record at byte {at} fails its CRC"
            break
        payloads.append(payload)
        at = body + length
    return Scan(payloads, at, problem)


# ---------------------------------------------------------------- the records


#: Extension numbers to their members (faster than ExtType(n) for every key).
_EXT = {int(t): t for t in ExtType}


# Positional construction: a record's constructor takes its fields as a function
# does (pfkeyd.record), the quickest way to build a million of them.
_sa = SecAssoc
_key = Key


class Codec:
    """Records to tuples and back.  ``offset`` is wall minus monotonic seconds now:
    monotonic times are written as wall-clock times and read back into this
    process's monotonic clock.  Decoding shares equal addresses and SA indexes."""

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self._addrs: dict[tuple[Any, ...], Any] = {}
        self._indexes: dict[tuple[Any, ...], SaIndex] = {}

    # ------------------------------------------------------------ encoding

    @staticmethod
    def addr(a: SockAddr | RawSockAddr | None) -> tuple[Any, ...] | None:
        if a is None:
            return None
        if isinstance(a, RawSockAddr):
            return (int(a.family), a.data)
        return (a.ip.packed, a.port, a.flowinfo, a.scope_id)

    @staticmethod
    def _key(k: Key | None) -> tuple[int, bytes, int] | None:
        return None if k is None else (int(k.exttype), k.data, k.bits)

    @staticmethod
    def _lifetime(lt: Lifetime | None) -> tuple[int, ...] | None:
        return None if lt is None else (int(lt.exttype), lt.allocations, lt.bytes, lt.addtime, lt.usetime)

    def sa(self, sa: SecAssoc) -> tuple[Any, ...]:
        addr = self.addr
        idx = sa.index
        natt = sa.natt
        usage = sa.usage
        return (
            sa.spi,
            int(sa.satype),
            int(idx.proto),
            int(idx.mode),
            idx.reqid,
            addr(idx.src),
            addr(idx.dst),
            int(sa.state),
            int(sa.auth),
            int(sa.encrypt),
            int(sa.flags),
            sa.replay,
            sa.replay_window,
            self._key(sa.key_auth),
            self._key(sa.key_encrypt),
            sa.seq,
            sa.pid,
            sa.created + self.offset,
            sa.created_wall,
            self._lifetime(sa.hard),
            self._lifetime(sa.soft),
            None if natt is None else (int(natt.type), natt.sport, natt.dport, addr(natt.oai), addr(natt.oar)),
            None
            if usage is None
            else (
                usage.bytes,
                usage.packets,
                None if usage.first_used is None else usage.first_used + self.offset,
                usage.first_used_wall,
                usage.replay_seq,
            ),
            sa.version,
        )

    def sp(self, sp: SecPolicy) -> tuple[Any, ...]:
        addr = self.addr
        sel = sp.selector
        return (
            sp.id,
            int(sp.dir),
            (addr(sel.src), sel.src_len, addr(sel.dst), sel.dst_len, int(sel.proto)),
            int(sp.type),
            tuple((int(r.proto), int(r.mode), int(r.level), r.reqid, addr(r.src), addr(r.dst)) for r in sp.requests),
            sp.priority,
            sp.order,
            sp.created + self.offset,
            sp.created_wall,
            sp.lifetime,
            sp.validtime,
            int(sp.scope),
        )

    # ------------------------------------------------------------ decoding

    def sockaddr(self, t: tuple[Any, ...] | None) -> Any:
        if t is None:
            return None
        a = self._addrs.get(t)
        if a is None:
            if len(t) == 2:
                a = RawSockAddr(t[0], t[1])
            else:
                ip = IPv4Address(t[0]) if len(t[0]) == 4 else IPv6Address(t[0])
                a = SockAddr(ip, t[1], t[2], t[3])
            self._addrs[t] = a
        return a

    @staticmethod
    def _unkey(t: tuple[int, bytes, int] | None) -> Key | None:
        return None if t is None else _key(_EXT[t[0]], t[1], t[2])

    @staticmethod
    def _unlifetime(t: tuple[int, ...] | None) -> Lifetime | None:
        return None if t is None else Lifetime(_EXT[t[0]], t[1], t[2], t[3], t[4])

    def unsa(self, t: Sequence[Any]) -> SecAssoc:
        (
            spi,
            satype,
            proto,
            mode,
            reqid,
            src,
            dst,
            state,
            auth,
            encrypt,
            flags,
            replay,
            replay_window,
            key_auth,
            key_encrypt,
            seq,
            pid,
            created,
            created_wall,
            hard,
            soft,
            natt,
            usage,
            version,
        ) = t
        ikey = (proto, mode, reqid, src, dst)
        index = self._indexes.get(ikey)
        if index is None:
            index = self._indexes[ikey] = SaIndex(proto, mode, reqid, self.sockaddr(src), self.sockaddr(dst))
        sa: SecAssoc = _sa(
            spi,
            satype,
            index,
            state,
            auth,
            encrypt,
            flags,
            replay,
            replay_window,
            None if key_auth is None else _key(_EXT[key_auth[0]], key_auth[1], key_auth[2]),
            None if key_encrypt is None else _key(_EXT[key_encrypt[0]], key_encrypt[1], key_encrypt[2]),
            seq,
            pid,
            created - self.offset,
            created_wall,
            None if hard is None else self._unlifetime(hard),
            None if soft is None else self._unlifetime(soft),
            None if natt is None else NatT(natt[0], natt[1], natt[2], self.sockaddr(natt[3]), self.sockaddr(natt[4])),
            None
            if usage is None
            else Usage(usage[0], usage[1], None if usage[2] is None else usage[2] - self.offset, usage[3], usage[4]),
            version,
        )
        return sa

    def unsp(self, t: Sequence[Any]) -> SecPolicy:
        (pid, dir_, sel, type_, requests, priority, order, created, created_wall, lifetime, validtime, scope) = t
        addr = self.sockaddr
        return SecPolicy(
            pid,
            dir_,
            Selector(addr(sel[0]), sel[1], addr(sel[2]), sel[3], sel[4]),
            type_,
            tuple(IpsecRequest(r[0], r[1], r[2], r[3], addr(r[4]), addr(r[5])) for r in requests),
            priority,
            order,
            created - self.offset,
            created_wall,
            lifetime,
            validtime,
            scope,
        )


# ---------------------------------------------------------------- knobs


def knob_overrides(knobs: Knobs, baseline: Knobs) -> tuple[tuple[str, int], ...]:
    """The knobs whose value differs from ``baseline`` (what the -f file and the
    defaults give), one name per knob."""
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for (spec, value), (_, base) in zip(knobs.items(), baseline.items(), strict=True):
        if spec.attr in seen:
            continue
        seen.add(spec.attr)
        if value != base:
            out.append((spec.name, value))
    return tuple(out)


def apply_knobs(knobs: Knobs, overrides: Iterable[tuple[str, int]]) -> tuple[Knobs, list[str]]:
    """``knobs`` with the saved run-time changes; a change this version refuses
    (a knob gone, a range narrowed) is skipped and named in the second value."""
    skipped: list[str] = []
    for name, value in overrides:
        try:
            knobs = knobs.set(name, value)
        except KnobError as exc:
            skipped.append(f"{name}={value}: {exc}")
    return knobs, skipped


# ---------------------------------------------------------------- journal


class Recorder:
    """Turns the engine's change log into journal records.

    ``attach`` switches the change log on.  After each request, tick or control
    command the shell calls :meth:`drain`, which returns the framed record of all
    that changed (or None), stamped with the allocators' counters.
    """

    def __init__(self, engine: Any, baseline: Knobs) -> None:
        self.engine = engine
        self.baseline = baseline
        self._knobs = engine.knobs
        self._overrides = knob_overrides(engine.knobs, baseline)
        self.changes: list[tuple[int, object]] = []
        engine.sad.changes = self.changes
        engine.spd.changes = self.changes

    @property
    def overrides(self) -> tuple[tuple[str, int], ...]:
        return self._overrides

    def rebase(self, baseline: Knobs) -> None:
        """A new baseline (SIGHUP re-read the -f file)."""
        self.baseline = baseline
        self._knobs = None  # compare again at the next drain

    def counters(self) -> tuple[int, int, int]:
        return self.engine.allocators()  # type: ignore[no-any-return]

    def drain(self, offset: float) -> bytes | None:
        changes = self.changes
        knobs = self.engine.knobs
        knob_op: tuple[tuple[str, int], ...] | None = None
        if knobs is not self._knobs:
            self._knobs = knobs
            overrides = knob_overrides(knobs, self.baseline)
            if overrides != self._overrides:
                self._overrides = knob_op = overrides
        if not changes and knob_op is None:
            return None
        codec = Codec(offset)
        ops: list[tuple[int, Any]] = []
        for kind, rec in changes:
            if kind == CHANGE_PUT:
                ops.append((kind, codec.sa(rec)))  # type: ignore[arg-type]
            elif kind == CHANGE_DEL:
                ops.append((kind, rec.spi))  # type: ignore[attr-defined]
            elif kind == CHANGE_SP_PUT:
                ops.append((kind, codec.sp(rec)))  # type: ignore[arg-type]
            else:
                ops.append((kind, rec.id))  # type: ignore[attr-defined]
        changes.clear()
        if knob_op is not None:
            ops.append((CHANGE_KNOBS, knob_op))
        return frame(marshal.dumps((tuple(ops), self.counters()), 4))


def apply_ops(
    sad: Sad, spd: Spd, payload: bytes, codec: Codec
) -> tuple[tuple[int, int, int], tuple[tuple[str, int], ...] | None]:
    """Replay one journal record into the tables; returns its counters and the
    knob changes it carries (None if none)."""
    ops, counters = marshal.loads(payload)
    knobs = None
    for kind, value in ops:
        if kind == CHANGE_PUT:
            sa = codec.unsa(value)
            old = sad.get(sa.spi)
            if old is None:
                sad.insert(sa)
            else:
                sad.replace(old, sa)
        elif kind == CHANGE_DEL:
            old = sad.get(value)
            if old is not None:
                sad.remove(old)
        elif kind == CHANGE_SP_PUT:
            sp = codec.unsp(value)
            current = spd.by_id.get(sp.id)
            if current is None:
                spd.insert(sp)
            else:
                spd.replace(current, sp)
        elif kind == CHANGE_SP_DEL:
            current = spd.by_id.get(value)
            if current is not None:
                spd.remove(current)
        elif kind == CHANGE_KNOBS:
            knobs = tuple(tuple(pair) for pair in value)
        else:
            msg = f"unknown journal operation {kind}"
            raise StateError(msg)
    return tuple(counters), knobs


# ---------------------------------------------------------------- snapshot


def snapshot_records(
    sas: Sequence[SecAssoc],
    policies: Sequence[SecPolicy],
    counters: tuple[int, int, int],
    knobs: tuple[tuple[str, int], ...],
    offset: float,
) -> Iterator[bytes]:
    """The framed records of a snapshot, for SAs and policies in table order."""
    codec = Codec(offset)
    yield frame(marshal.dumps(("meta", counters, knobs), 4))
    enc = codec.sa
    for i in range(0, len(sas), CHUNK):
        yield frame(marshal.dumps(("sa", tuple(enc(sa) for sa in sas[i : i + CHUNK])), 4))
    encp = codec.sp
    for i in range(0, len(policies), CHUNK):
        yield frame(marshal.dumps(("sp", tuple(encp(sp) for sp in policies[i : i + CHUNK])), 4))
    yield frame(marshal.dumps(("end", len(sas), len(policies)), 4))


def table_order(sad: Sad, spd: Spd) -> tuple[list[SecAssoc], list[SecPolicy]]:
    """The SAs and policies in the order whose insertion rebuilds the tables as
    they are (heads in creation order, each head's LARVAL then alive SAs)."""
    sas: list[SecAssoc] = []
    for head in sad.heads.values():
        sas.extend(head.larval.values())
        sas.extend(head.alive.values())
    return sas, list(spd.by_id.values())


def restore_snapshot(
    sad: Sad, spd: Spd, payloads: Sequence[bytes], codec: Codec, what: str
) -> tuple[tuple[int, int, int], tuple[tuple[str, int], ...]]:
    """Fill empty tables from a snapshot's records; returns the counters and the
    knob changes.  A snapshot without its meta or end record, or whose counts do
    not match, is refused."""
    if not payloads:
        msg = f"{what}: empty"
        raise StateError(msg)
    first = marshal.loads(payloads[0])
    if first[0] != "meta":
        msg = f"{what}: does not begin with its meta record"
        raise StateError(msg)
    counters, knobs = tuple(first[1]), tuple(tuple(p) for p in first[2])
    nsa = nsp = 0
    done = False
    unsa, unsp, insert, spinsert = codec.unsa, codec.unsp, sad.insert, spd.insert
    by_spi = sad.by_spi
    head: Any = None
    for payload in payloads[1:]:
        if done:
            msg = f"{what}: records after its end record"
            raise StateError(msg)
        rec = marshal.loads(payload)
        if rec[0] == "sa":
            # Table order: the SAs of a head come one after another, LARVAL first,
            # so most go straight into the head of the SA before them.
            for t in rec[1]:
                sa = unsa(t)
                if head is not None and sa.index is head.index and sa.alive:
                    head.alive[sa.spi] = sa
                    by_spi[sa.spi] = sa
                else:
                    insert(sa)
                    head = sad.heads[sa.index]
            nsa += len(rec[1])
            if len(by_spi) != nsa:
                msg = f"{what}: an SPI appears twice"
                raise StateError(msg)
        elif rec[0] == "sp":
            for t in rec[1]:
                spinsert(unsp(t))
            nsp += len(rec[1])
        elif rec[0] == "end":
            if (rec[1], rec[2]) != (nsa, nsp):
                msg = f"{what}: its end record counts {rec[1]} SAs and {rec[2]} policies, it holds {nsa} and {nsp}"
                raise StateError(msg)
            done = True
        else:
            msg = f"{what}: unknown record {rec[0]!r}"
            raise StateError(msg)
    if not done:
        msg = f"{what}: cut short (no end record)"
        raise StateError(msg)
    return counters, knobs
