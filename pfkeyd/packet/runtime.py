"""The mutable state of one SA on the packet path: sequence counter, IV counter, replay window, usage.

Theory of operation
-------------------
:class:`TransformSA` (``sa.py``) is what the SAD says about an SA and never changes;
:class:`SaRuntime` is what traffic changes.  Outbound it holds the 64-bit sequence
counter (FreeBSD's ``replay->count``: pre-incremented, so the first packet carries 1)
and the per-SA IV counter of the counter-mode ciphers (``sav->cntr``, which starts at
0).  Inbound it holds the :class:`ReplayWindow`.

The window follows FreeBSD's ``ipsec_chkreplay`` / ``ipsec_updatereplay``
(netipsec/ipsec.c, RFC 4303 Appendix A2.2 for ESN): :meth:`ReplayWindow.check` runs
before the ICV, infers the high 32 bits of an ESN sequence number and changes
nothing; :meth:`ReplayWindow.update` runs only after the ICV passed, re-checks and
advances.  A packet whose Seq_hi was guessed wrong therefore fails the ICV and
leaves the window as it was.  The bitmap is a Python int whose bit ``i`` stands for
sequence number ``last - i``.
"""

from __future__ import annotations

__all__ = ["ReplayWindow", "SaRuntime", "U32", "U64"]

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF


class ReplayWindow:
    """A replay window of ``size`` packets (``size`` > 0).

    ``last`` is the highest 64-bit sequence number accepted (its high half is Seq_hi
    with ESN, 0 without); ``count`` counts accepted packets (what SADB_GET reports as
    the replay counter).
    """

    __slots__ = ("bits", "count", "esn", "last", "mask", "size", "wrap_ok")

    def __init__(self, size: int, *, esn: bool = False, cycseq: bool = False) -> None:
        if size <= 0:
            raise ValueError("a replay window has at least one packet")
        self.size = size
        self.esn = esn
        self.wrap_ok = cycseq
        self.last = 0
        self.bits = 0
        self.mask = (1 << size) - 1
        self.count = 0

    def _seen(self, seq64: int) -> bool:
        offset = self.last - seq64
        return 0 <= offset < self.size and (self.bits >> offset) & 1 == 1

    def check(self, seq: int) -> int | None:
        """``ipsec_chkreplay``: the 64-bit sequence number ``seq`` (the 32 bits on the
        wire) stands for, or None when the packet must be dropped (replayed, zero,
        or a wrap FreeBSD refuses: see :meth:`wrapped`).  Changes nothing."""
        if seq == 0 and self.last == 0:
            return None
        window = self.size
        tl, th = self.last & U32, self.last >> 32
        bl = (tl - window + 1) & U32
        if (tl >= window - 1 and seq >= bl) or (tl < window - 1 and seq < bl):
            seq64 = (th << 32) | seq
            return None if seq <= tl and self._seen(seq64) else seq64
        if tl == U32 and not self.esn and not self.wrap_ok:
            return None
        if tl < window - 1 and seq >= bl:  # in the previous 2^32 subspace
            if th == 0:
                return None
            seq64 = ((th - 1) << 32) | seq
            return None if self._seen(seq64) else seq64
        if th + 1 > U32 and not self.wrap_ok:  # Seq_hi would wrap
            return None
        return (((th + 1) & U32) << 32) | seq

    def wrapped(self, seq: int) -> bool:
        """True when :meth:`check` refuses ``seq`` because the counter wrapped (FreeBSD
        counts ``wrap`` there, ``replay`` otherwise)."""
        window = self.size
        tl, th = self.last & U32, self.last >> 32
        bl = (tl - window + 1) & U32
        if (tl >= window - 1 and seq >= bl) or (tl < window - 1 and seq < bl):
            return False
        if tl == U32 and not self.esn and not self.wrap_ok:
            return True
        if tl < window - 1 and seq >= bl:
            return False
        return th + 1 > U32 and not self.wrap_ok

    def update(self, seq: int) -> bool:
        """``ipsec_updatereplay`` after the ICV passed: record ``seq`` (32 bits); False
        when it must still be dropped as a replay (nothing changes then)."""
        if seq == 0 and self.last == 0:
            return False
        window = self.size
        tl, th = self.last & U32, self.last >> 32
        bl = (tl - window + 1) & U32
        if (tl >= window - 1 and seq >= bl) or (tl < window - 1 and seq < bl):
            seq64 = (th << 32) | seq
            if seq <= tl:
                if self._seen(seq64):
                    return False
                self.bits |= 1 << (tl - seq)
            else:
                self._advance(seq64)
                return True
            self.count += 1
            return True
        if not self.esn:
            return False
        if tl < window - 1 and seq >= bl:  # previous subspace
            if th == 0:
                return False
            seq64 = ((th - 1) << 32) | seq
            if self._seen(seq64):
                return False
            self.bits |= 1 << (self.last - seq64)
            self.count += 1
            return True
        if th + 1 > U32:
            return False
        self._advance(((th + 1) << 32) | seq)
        return True

    def advance(self, seq64: int) -> None:
        """Accept ``seq64``, above the top of the window (what :meth:`update` does for
        such a number; callers that already know it is above may call this directly)."""
        shift = seq64 - self.last
        self.bits = ((self.bits << shift) | 1) & self.mask if shift < self.size else 1
        self.last = seq64
        self.count += 1

    _advance = advance

    def snapshot(self) -> tuple[int, int, int]:
        """(last, bitmap, count): what a test compares to see that nothing changed."""
        return self.last, self.bits, self.count


class SaRuntime:
    """The per-SA state that traffic changes (one per SA, in either direction)."""

    __slots__ = ("bytes", "iv_counter", "packets", "replay", "seq")

    def __init__(self, replay: ReplayWindow | None = None) -> None:
        self.seq = 0  # the last sequence number sent (64 bits); the next packet carries seq + 1
        self.iv_counter = 0  # the explicit IV of the next CTR/GCM/ChaCha/GMAC packet
        self.replay = replay
        # Usage, recorded by the bundle once per SA and packet (FreeBSD key_sa_recordxfer):
        # the transforms themselves never count.
        self.bytes = 0
        self.packets = 0

    @classmethod
    def for_sa(cls, window: int, *, esn: bool = False, cycseq: bool = False) -> SaRuntime:
        """A fresh runtime for an SA whose replay window is ``window`` packets (0: none)."""
        return cls(ReplayWindow(window, esn=esn, cycseq=cycseq) if window > 0 else None)

    def next_seq(self, *, esn: bool, cycseq: bool) -> int | None:
        """Take the next outbound sequence number (64 bits), or None when it would
        wrap: FreeBSD's AH rule, which this library applies to ESP too, refuses a
        32-bit counter at 2^32 - 1 (without ESN) or a 64-bit one at 2^64 - 1, unless
        CYCSEQ is set."""
        if not cycseq and (self.seq == U64 or (not esn and self.seq & U32 == U32)):
            return None
        self.seq = (self.seq + 1) & U64
        return self.seq

    def next_iv(self) -> int:
        """Take the explicit IV of the next counter-mode packet (FreeBSD ``sav->cntr++``)."""
        iv = self.iv_counter
        self.iv_counter = (iv + 1) & U64
        return iv

    def snapshot(self) -> tuple[object, ...]:
        """Everything this state holds, for tests that check a drop changed nothing."""
        return (
            self.seq,
            self.iv_counter,
            self.bytes,
            self.packets,
            self.replay.snapshot() if self.replay is not None else None,
        )
