"""The words of the policy language for modes, levels, directions and policy types.

ipsec_set_policy(3), setkey(8) and the control socket spell these numbers the same
way; this module is the one place that says how.  Each table lists its enum's
members in numeric order from 0, as libipsec's string arrays do (``setkey.dump``
indexes them by wire number); a value missing from a table has no word.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from pfkeyd.wire.constants import Direction, IpProto, Level, Mode, PolicyType
from pfkeyd.wire.ext import IpsecRequest

__all__ = [
    "MODE_WORDS",
    "LEVEL_WORDS",
    "DIRECTION_WORDS",
    "POLICY_WORDS",
    "REQUEST_PROTO_WORDS",
    "MODE_BY_WORD",
    "LEVEL_BY_WORD",
    "DIRECTION_BY_WORD",
    "POLICY_BY_WORD",
    "REQUEST_PROTO_BY_WORD",
    "request_text",
    "word_list",
]

#: ``-m`` and the mode of an ipsecrequest.  (TCPMD5, BEET and IPTFS have no word.)
MODE_WORDS: Final[Mapping[int, str]] = {Mode.ANY: "any", Mode.TRANSPORT: "transport", Mode.TUNNEL: "tunnel"}
#: The level of an ipsecrequest.
LEVEL_WORDS: Final[Mapping[int, str]] = {
    Level.DEFAULT: "default",
    Level.USE: "use",
    Level.REQUIRE: "require",
    Level.UNIQUE: "unique",
}
#: A policy's direction.
DIRECTION_WORDS: Final[Mapping[int, str]] = {
    Direction.ANY: "any",
    Direction.INBOUND: "in",
    Direction.OUTBOUND: "out",
    Direction.FWD: "fwd",
}
#: A policy's type (its action).
POLICY_WORDS: Final[Mapping[int, str]] = {
    PolicyType.DISCARD: "discard",
    PolicyType.NONE: "none",
    PolicyType.IPSEC: "ipsec",
    PolicyType.ENTRUST: "entrust",
    PolicyType.BYPASS: "bypass",
}
#: The protocol of an ipsecrequest.
REQUEST_PROTO_WORDS: Final[Mapping[int, str]] = {IpProto.ESP: "esp", IpProto.AH: "ah", IpProto.IPCOMP: "ipcomp"}

# The same tables read backwards, for the parsers.
MODE_BY_WORD: Final[Mapping[str, Mode]] = {w: Mode(v) for v, w in MODE_WORDS.items()}
LEVEL_BY_WORD: Final[Mapping[str, Level]] = {w: Level(v) for v, w in LEVEL_WORDS.items()}
DIRECTION_BY_WORD: Final[Mapping[str, Direction]] = {w: Direction(v) for v, w in DIRECTION_WORDS.items()}
POLICY_BY_WORD: Final[Mapping[str, PolicyType]] = {w: PolicyType(v) for v, w in POLICY_WORDS.items()}
REQUEST_PROTO_BY_WORD: Final[Mapping[str, IpProto]] = {w: IpProto(v) for v, w in REQUEST_PROTO_WORDS.items()}


def word_list(table: Mapping[int, str]) -> tuple[str, ...]:
    """The table as libipsec's string array: the word of value ``i`` at index ``i``."""
    words = tuple(table[value] for value in sorted(table))
    if sorted(int(v) for v in table) != list(range(len(words))):
        msg = "a word list needs the values 0 .. n-1"
        raise ValueError(msg)
    return words


def request_text(r: IpsecRequest) -> str:
    """A request as setkey writes it: proto/mode/src-dst/level[:reqid]."""
    proto = REQUEST_PROTO_WORDS.get(r.proto, str(r.proto))
    ends = f"{r.src}-{r.dst}" if r.src is not None else ""
    level = LEVEL_WORDS.get(r.level, str(r.level))
    return f"{proto}/{MODE_WORDS.get(r.mode, '?')}/{ends}/{level}" + (f":{r.reqid}" if r.reqid else "")
