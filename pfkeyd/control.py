"""The control interface: sysctl(8)-style knobs, statistics and policy lookups.

The daemon serves these commands on its control socket; ``pfkeyd sysctl``,
``pfkeyd stats`` and ``pfkeyd lookup`` send them.  This module is pure: it runs one
command against the engine and returns what to print, the exit status, and the
effects (a lookup may send an ACQUIRE) for the shell to carry out.

    sysctl [-a] [-d] [-n] [name[=value] ...]
    stats [--json | --prometheus]
    lookup DIR SRC DST [PROTO [SPORT DPORT]]
    dialect

``dialect`` prints the dialect (freebsd or linux) of the PF_KEY socket whose
control socket was asked: the shell passes it to :func:`run`.  setkey and
pfkeyd.client ask it before they speak PF_KEY, so that a user need not know it.

``DIR`` is in, out or fwd; ``PROTO`` a name (tcp, udp, icmp, icmp6, any) or a
number; for icmp and icmp6 the two ports are the type and the code.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pfkeyd import metrics
from pfkeyd.effects import Effect, Instant
from pfkeyd.engine import Decision, KeyEngine
from pfkeyd.knobs import KnobError, Knobs
from pfkeyd.spd import Flow
from pfkeyd.wire import Dialect, Direction, IpProto, SaState, SockAddr
from pfkeyd.words import DIRECTION_WORDS, LEVEL_WORDS, POLICY_WORDS, request_text

__all__ = ["Outcome", "run", "COMMANDS", "NAMES", "format_decision", "parse_flow"]

EX_USAGE = 64

_DIRS: dict[str, int] = {DIRECTION_WORDS[d]: d for d in (Direction.INBOUND, Direction.OUTBOUND, Direction.FWD)}
_PROTOS: dict[str, int] = {
    "any": IpProto.ANY,
    "tcp": IpProto.TCP,
    "udp": IpProto.UDP,
    "icmp": IpProto.ICMP,
    "icmp6": IpProto.IPV6_ICMP,
    "ipv6-icmp": IpProto.IPV6_ICMP,
    "gre": IpProto.GRE,
    "esp": IpProto.ESP,
    "ah": IpProto.AH,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command prints, its exit status, and effects for the shell."""

    status: int = 0
    out: str = ""
    err: str = ""
    effects: tuple[Effect, ...] = field(default=())


def _sysctl(engine: KeyEngine, args: Sequence[str], now: Instant) -> Outcome:
    flags = set()
    names: list[str] = []
    for a in args:
        if a.startswith("-") and len(a) > 1 and "=" not in a:
            for ch in a[1:]:
                if ch not in "adn":
                    return Outcome(EX_USAGE, err=f"sysctl: illegal option -- {ch}\n{_SYSCTL_USAGE}\n")
                flags.add(ch)
        else:
            names.append(a)
    if not names and "a" not in flags:
        return Outcome(EX_USAGE, err=f"{_SYSCTL_USAGE}\n")
    lines: list[str] = []
    errors: list[str] = []
    knobs = engine.knobs

    def show(spec_name: str, value: int, description: str) -> None:
        if "d" in flags:
            lines.append(description if "n" in flags else f"{spec_name}: {description}")
        else:
            lines.append(str(value) if "n" in flags else f"{spec_name}: {value}")

    if "a" in flags:
        for spec, value in knobs.items():
            show(spec.name, value, spec.description)
    for item in names:
        name, sep, text = item.partition("=")
        try:
            spec = Knobs.spec(name)
            if not sep or "d" in flags:
                # sysctl(8) -d describes a name=value argument and sets nothing.
                show(spec.name, knobs.get(spec.name), spec.description)
                continue
            old = knobs.get(spec.name)
            knobs = knobs.set(spec.name, text)
            change = f"{old} -> {knobs.get(spec.name)}"
            lines.append(change if "n" in flags else f"{spec.name}: {change}")
        except KnobError as exc:
            errors.append(f"sysctl: {exc}")
    engine.knobs = knobs  # every change that passed; a bad one changed nothing
    out = "".join(line + "\n" for line in lines)
    return Outcome(1 if errors else 0, out, "".join(e + "\n" for e in errors))


_SYSCTL_USAGE = "usage: pfkeyd sysctl [-adn] [name[=value] ...]"


def _stats(engine: KeyEngine, args: Sequence[str], now: Instant, dataplane: StatsSource | None = None) -> Outcome:
    if args == ["--prometheus"]:
        return Outcome(
            0, metrics.render(engine.statistics(), dataplane.statistics() if dataplane is not None else None).decode()
        )
    if args not in ([], ["--json"]):
        return Outcome(EX_USAGE, err="usage: pfkeyd stats [--json | --prometheus]\n")
    st = engine.statistics()
    if args:
        doc: dict[str, Any] = {
            "pfkey": {
                "messages_in": dict(st.messages_in),
                "messages_out": dict(st.messages_out),
                "errors": dict(st.errors),
                "drops": dict(st.drops),
                "clients": st.clients,
                "sas": st.sas,
                "policies": st.policies,
            },
            "packets": dict(st.packets),
            "dataplane": dataplane.statistics() if dataplane is not None else None,
        }
        return Outcome(0, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    lines = ["pfkey:"]
    for title, table in (
        ("messages in", st.messages_in),
        ("messages out", st.messages_out),
        ("errors", st.errors),
        ("drops", st.drops),
    ):
        total = sum(table.values())
        lines.append(f"\t{total} {title}")
        lines += [f"\t\t{count} {name}" for name, count in table.items()]
    lines += [f"\t{st.clients} clients", f"\t{st.sas} SAs", f"\t{st.policies} policies"]
    # The packet path's counters, one block per protocol as netstat -s -p esp prints
    # them, every counter shown (0 included) so that scripts find each name.
    current = ""
    for key, count in st.packets.items():
        proto, _, name = key.partition(".")
        if proto != current:
            current = proto
            lines.append(f"{proto}:")
        lines.append(f"\t{count} {name}")
    text = "".join(line + "\n" for line in lines)
    if dataplane is not None:
        text += dataplane.statistics_text()
    return Outcome(0, text)


def _addr(text: str) -> SockAddr:
    try:
        return SockAddr.parse(text)
    except ValueError:
        msg = f"bad address '{text}'"
        raise ValueError(msg) from None


def _number(text: str, limit: int) -> int:
    """A decimal number below ``limit``, or -1.  ASCII digits only: str.isdigit()
    also accepts superscripts such as "\u00b2", which int() refuses."""
    if not (text.isascii() and text.isdigit()):
        return -1
    value = int(text)
    return value if value < limit else -1


def parse_flow(args: Sequence[str]) -> tuple[int, Flow]:
    """``DIR SRC DST [PROTO [SPORT DPORT]]`` -> (direction, flow)."""
    if len(args) not in (3, 4, 6):
        msg = "usage: pfkeyd lookup DIR SRC DST [PROTO [SPORT DPORT]]"
        raise ValueError(msg)
    dir_ = _DIRS.get(args[0])
    if dir_ is None:
        msg = f"bad direction '{args[0]}' (in, out or fwd)"
        raise ValueError(msg)
    src, dst = _addr(args[1]), _addr(args[2])
    if src.version != dst.version:
        msg = "source and destination must be of one address family"
        raise ValueError(msg)
    proto: int = IpProto.ANY
    sport = dport = 0
    if len(args) >= 4:
        proto = _PROTOS.get(args[3].lower(), -1)
        if proto < 0:
            try:
                proto = socket.getprotobyname(args[3])
            except OSError:
                proto = _number(args[3], 256)
        if proto < 0:
            msg = f"bad protocol '{args[3]}'"
            raise ValueError(msg)
    if len(args) == 6:
        sport, dport = _number(args[4], 65536), _number(args[5], 65536)
        if sport < 0 or dport < 0:
            msg = "ports (or icmp type and code) must be numbers below 65536"
            raise ValueError(msg)
    return dir_, Flow(src, dst, proto, sport, dport)


def format_decision(decision: Decision, knobs: Knobs) -> str:
    """The lookup answer, one line per fact, the last line being the decision."""
    lines: list[str] = []
    sp = decision.policy
    if sp is None:
        name = "discard" if decision.action == "discard" else "none"
        lines.append(f"no policy matches: default policy {name} (net.inet.ipsec.def_policy={knobs.def_policy})")
    else:
        lines.append(
            f"policy {sp.id}: {DIRECTION_WORDS.get(sp.dir, sp.dir)} {POLICY_WORDS.get(sp.type, sp.type)}"
            f" priority {sp.priority:#x}"
        )
        for o in decision.requests:
            head = f"  {request_text(o.request)} (level {LEVEL_WORDS.get(o.level, o.level)})"
            if not o.reached:
                lines.append(f"{head}: not reached (the packet is dropped at an earlier request)")
            elif o.sa is not None:
                state = SaState(o.sa.state).name.lower()
                lines.append(f"{head}: SA spi {o.sa.spi:#010x} ({state})")
            elif o.acquire_seq:
                to = (
                    f"to {o.acquire_recipients} registered key manager{'s' * (o.acquire_recipients != 1)}"
                    if o.acquire_recipients
                    else "but no key manager is registered"
                )
                lines.append(f"{head}: no SA: ACQUIRE sent (seq {o.acquire_seq}) {to}")
            else:
                lines.append(f"{head}: no SA" + ("" if sp.dir == Direction.INBOUND else ": ACQUIRE already pending"))
    outcome = {"ipsec": "ipsec (protected by the SAs above)", "pass": "pass (sent in the clear)", "discard": "discard"}[
        decision.action
    ]
    if decision.held:
        outcome = (
            "discard (held back until an SA exists)"
            if sp is None or sp.dir != Direction.INBOUND
            else "discard (a clear packet where IPsec is required)"
        )
    elif decision.action == "ipsec" and any(o.sa is None for o in decision.requests):
        outcome = "ipsec where SAs exist; the rest passes in the clear (level use)"
    lines.append(f"decision: {outcome}")
    return "\n".join(lines) + "\n"


def _lookup(engine: KeyEngine, args: Sequence[str], now: Instant) -> Outcome:
    try:
        dir_, flow = parse_flow(args)
    except ValueError as exc:
        status = EX_USAGE if str(exc).startswith("usage") else 1
        return Outcome(status, err=f"{exc}\n" if status == EX_USAGE else f"pfkeyd lookup: {exc}\n")
    decision, effects = engine.lookup(dir_, flow, now)
    return Outcome(0, format_decision(decision, engine.knobs), effects=tuple(effects))


def _dialect(args: Sequence[str], dialect: Dialect | None) -> Outcome:
    if args:
        return Outcome(EX_USAGE, err="usage: dialect\n")
    if dialect is None:
        return Outcome(1, err="dialect: this control socket belongs to no PF_KEY socket\n")
    return Outcome(0, f"{dialect.value}\n")


#: The commands that work on the engine.
COMMANDS = {"sysctl": _sysctl, "stats": _stats, "lookup": _lookup}
#: Every command's name: those of the engine and ``dialect``, which is about the socket.
NAMES = (*COMMANDS, "dialect")


class StatsSource(Protocol):
    """What ``stats`` prints of the data plane, when the daemon runs one."""

    def statistics(self) -> dict[str, Any]: ...

    def statistics_text(self) -> str: ...


def run(
    engine: KeyEngine,
    argv: Sequence[str],
    now: Instant,
    dialect: Dialect | None = None,
    *,
    dataplane: StatsSource | None = None,
) -> Outcome:
    """Run one control command (``argv[0]`` names it) against ``engine``; ``dialect``
    is that of the PF_KEY socket beside the control socket that was asked;
    ``dataplane`` adds the data plane's counters to ``stats``."""
    if argv[:1] == ["dialect"]:
        return _dialect(argv[1:], dialect)
    if argv[:1] == ["stats"]:
        return _stats(engine, argv[1:], now, dataplane)
    if not argv or argv[0] not in COMMANDS:
        return Outcome(EX_USAGE, err=f"unknown control command; one of: {', '.join(NAMES)}\n")
    return COMMANDS[argv[0]](engine, argv[1:], now)
