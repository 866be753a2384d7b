"""ACQUIRE bookkeeping: which SA indexes a key manager has been asked for, and pacing.

FreeBSD keeps one record per exact SA index (key_getacq, reference §7.4 step 3):

* a new record takes ``seq = ++counter`` (the counter starts at 1; once it reaches
  0xffffffff every later record gets 1, a quirk kept as is) and its ACQUIRE goes out
  at once;
* a trigger on an existing record only counts, until the count exceeds
  ``net.key.blockacq_count``; then the count and the record's age restart and the
  ACQUIRE is sent again with the same seq — the first trigger sends, the next
  ``blockacq_count + 1`` are suppressed, the one after sends again;
* a record older than ``net.key.blockacq_lifetime`` is forgotten, so a later trigger
  starts a new one with a new seq;
* a GETSPI or ADD carrying the record's seq, for exactly its SA index, completes it;
* a key manager's ACQUIRE error report (header only, seq and errno set) resets it,
  so the next blocking cycle can ask again.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AcqRecord", "AcquireTable"]

_SEQ_MAX = 0xFFFFFFFF


@dataclass(slots=True)
class AcqRecord:
    index: object
    seq: int
    created: float
    count: int = 0


class AcquireTable:
    """Pending ACQUIREs, by SA index and by seq."""

    def __init__(self) -> None:
        self.by_index: dict[object, AcqRecord] = {}
        self.by_seq: dict[int, AcqRecord] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self.by_index)

    def _next_seq(self) -> int:
        if self._counter == _SEQ_MAX:
            return 1  # key_getacq's wrap quirk: the counter is not reset
        self._counter += 1
        return self._counter

    def trigger(self, index: object, now: float, blockacq_count: int) -> AcqRecord | None:
        """A flow needs an SA for ``index``: the record whose ACQUIRE must go out
        now, or None while pacing suppresses it."""
        rec = self.by_index.get(index)
        if rec is None:
            rec = AcqRecord(index, self._next_seq(), now)
            self.by_index[index] = rec
            self.by_seq[rec.seq] = rec
            return rec
        if rec.count > blockacq_count:
            rec.count = 0
            rec.created = now
            return rec
        rec.count += 1
        return None

    def done(self, index: object, seq: int) -> bool:
        """A GETSPI/ADD with ``seq`` for ``index`` answers the ACQUIRE."""
        rec = self.by_seq.get(seq)
        if rec is None or rec.index != index:
            return False
        self._drop(rec)
        return True

    def failed(self, seq: int, now: float) -> None:
        """The key manager reported failure: restart the record's blocking cycle."""
        rec = self.by_seq.get(seq)
        if rec is not None:
            rec.count = 0
            rec.created = now

    def expire(self, now: float, lifetime: float) -> None:
        for rec in [r for r in self.by_index.values() if now - r.created >= lifetime]:
            self._drop(rec)

    def next_deadline(self, lifetime: float) -> float | None:
        if not self.by_index:
            return None
        return min(r.created for r in self.by_index.values()) + lifetime

    def _drop(self, rec: AcqRecord) -> None:
        self.by_index.pop(rec.index, None)
        if self.by_seq.get(rec.seq) is rec:
            del self.by_seq[rec.seq]
