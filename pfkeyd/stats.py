"""Counters of the key engine and its shell, like FreeBSD's pfkeystat.

The core counts; it never logs.  ``snapshot()`` returns an immutable copy that the
control interface prints.
"""

from __future__ import annotations

import errno as _errno
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pfkeyd.wire import MsgType

__all__ = ["Stats", "Statistics"]


def _type_name(t: int) -> str:
    try:
        return MsgType(t).name
    except ValueError:
        return str(t)


@dataclass(frozen=True, slots=True)
class Statistics:
    """A snapshot of every counter."""

    messages_in: Mapping[str, int] = field(default_factory=dict)
    messages_out: Mapping[str, int] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)
    drops: Mapping[str, int] = field(default_factory=dict)
    clients: int = 0
    sas: int = 0
    policies: int = 0
    #: the packet path's counters, ``{"esp.badauth": n, ...}`` (:mod:`pfkeyd.packet.counters`)
    packets: Mapping[str, int] = field(default_factory=dict)


class Stats:
    """Mutable counters, updated by the engine (messages, errors) and the shell (drops)."""

    __slots__ = ("drops", "errors", "messages_in", "messages_out")

    def __init__(self) -> None:
        self.messages_in: Counter[int] = Counter()
        self.messages_out: Counter[int] = Counter()
        self.errors: Counter[int] = Counter()
        self.drops: Counter[str] = Counter()

    def note_in(self, msgtype: int) -> None:
        self.messages_in[msgtype] += 1

    def note_out(self, msgtype: int, count: int = 1) -> None:
        self.messages_out[msgtype] += count

    def note_error(self, err: int) -> None:
        self.errors[err] += 1

    def note_drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] += count

    def snapshot(
        self, *, clients: int = 0, sas: int = 0, policies: int = 0, packets: Mapping[str, int] | None = None
    ) -> Statistics:
        return Statistics(
            MappingProxyType({_type_name(t): n for t, n in sorted(self.messages_in.items())}),
            MappingProxyType({_type_name(t): n for t, n in sorted(self.messages_out.items())}),
            MappingProxyType({_errno.errorcode.get(e, str(e)): n for e, n in sorted(self.errors.items())}),
            MappingProxyType(dict(sorted(self.drops.items()))),
            clients,
            sas,
            policies,
            MappingProxyType(dict(packets or {})),
        )
