"""Commands back to setkey text: the inverse of the parser.

``format(cmd)`` writes one statement in canonical form (one line, single
spaces, options in a fixed order, SPIs and keys in hexadecimal, the policy
level always written), and ``parse(format(cmd)) == [cmd]`` for every command
the parser can produce (a property test checks it).  Values that no text can
express raise ValueError: a quoted string holding '"', a reqid without the
level unique.
"""

from __future__ import annotations

from collections.abc import Iterable

from pfkeyd.wire.constants import IpProto, Level, Mode, SaFlag
from pfkeyd.words import DIRECTION_WORDS, LEVEL_WORDS, MODE_WORDS, POLICY_WORDS, REQUEST_PROTO_WORDS
from setkey.commands import (
    PRIORITY_DEFAULT,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    Add,
    Algorithms,
    AlgSpec,
    Command,
    DeleteAll,
    Dump,
    Exit,
    Flush,
    Host,
    Policy,
    Proto,
    Request,
    SaOptions,
    SaStatement,
    SecContext,
    SpdDump,
    SpdFlush,
    SpdStatement,
    SpdTagged,
    Update,
)
from setkey.transformer import UPPER_NAMES

__all__ = ["format", "format_script", "format_policy", "format_priority"]

#: setkey also takes "tcp" (FreeBSD's TCP-MD5) as a request protocol.
_REQUEST_PROTOS = {**REQUEST_PROTO_WORDS, IpProto.TCP: "tcp"}
_ICMP_LIKE = (IpProto.ICMP, IpProto.IPV6_ICMP, 135)


def _quoted(text: str) -> str:
    if '"' in text:
        msg = f"a quoted string cannot hold '\"': {text!r}"
        raise ValueError(msg)
    return f'"{text}"'


def _words(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _host(host: Host) -> str:
    text = host.name
    if host.prefix is not None:
        text += f"/{host.prefix}"
    if host.port:
        text += f"[{host.port}]"
    return text


def _proto(proto: Proto, oa: Host | None) -> str:
    return _words(proto.value, _host(oa) if oa is not None else "")


def _key(key: bytes | None) -> str:
    if key is None:
        return ""
    return "0x" + key.hex() if key else '""'


def _alg(flag: str, spec: AlgSpec | None) -> str:
    return "" if spec is None else _words(flag, spec.name, _key(spec.key))


def _algorithms(algs: Algorithms) -> str:
    if algs.compress is not None:
        return _words("-C", algs.compress.name, "-R" if algs.rawcpi else "")
    return _words(_alg("-E", algs.encrypt), _alg("-A", algs.auth))


def _context(ctx: SecContext | None) -> str:
    return "" if ctx is None else f"-ctx {ctx.doi} {ctx.alg} {_quoted(ctx.label)}"


def _options(opts: SaOptions) -> str:
    parts = []
    if opts.mode != Mode.ANY:
        parts.append(f"-m {MODE_WORDS[opts.mode]}")
    if opts.reqid:
        parts.append(f"-u {opts.reqid}")
    if opts.replay:
        parts.append(f"-r {opts.replay}")
    parts += _flag_options(opts)
    for flag, value in (
        ("-lh", opts.lifetime_hard),
        ("-ls", opts.lifetime_soft),
        ("-bh", opts.bytes_hard),
        ("-bs", opts.bytes_soft),
    ):
        if value:
            parts.append(f"{flag} {value}")
    parts.append(_context(opts.context))
    parts += _natt_options(opts)
    if opts.esn:
        parts.append("-esn")
    if opts.hwif is not None:
        parts.append(f"-hwif {opts.hwif}")
    return _words(*parts)


def _flag_options(opts: SaOptions) -> list[str]:
    """The ``-f`` options: padding and sequence-number cycling."""
    flags = []
    if opts.pad & SaFlag.X_EXT_PRAND:
        flags.append("-f random-pad")
    if opts.pad & SaFlag.X_EXT_PZERO:
        flags.append("-f zero-pad")
    if not opts.cyclic_seq:
        flags.append("-f nocyclic-seq")
    return flags


def _natt_options(opts: SaOptions) -> list[str]:
    """``-natt`` and ``-natt_mtu``."""
    parts = []
    if opts.natt is not None:
        n = opts.natt
        parts.append(f"-natt {n.oai.name}[{n.sport}] {n.oar.name}[{n.dport}]")
    if opts.natt_mtu is not None:
        parts.append(f"-natt_mtu {opts.natt_mtu}")
    return parts


def format_priority(priority: int) -> str:
    """A policy priority as ipsec-tools writes it: the nearest base and an offset."""
    if priority < 0x60000000:
        base, name = PRIORITY_HIGH, "high"
    elif priority < 0xA0000000:
        base, name = PRIORITY_DEFAULT, "def"
    else:
        base, name = PRIORITY_LOW, "low"
    offset = base - priority
    if offset > 0:
        return f"prio {name} + {offset}"
    if offset < 0:
        return f"prio {name} - {-offset}"
    return f"prio {name}"


def _request(req: Request) -> str:
    ends = ""
    if req.endpoints is not None:
        e = req.endpoints
        src, dst = str(e.src), str(e.dst)
        if e.src_port or e.dst_port:
            ends = f"{src}[{e.src_port}]-{dst}[{e.dst_port}]"
        else:
            ends = f"{src}-{dst}"
    elif req.anchor:
        ends = req.anchor
    if req.reqid:
        if req.level != Level.UNIQUE:
            msg = f"a reqid ({req.reqid}) needs the level unique"
            raise ValueError(msg)
        level = f"unique:{req.reqid}"
    else:
        level = LEVEL_WORDS[req.level]
    return f"{_REQUEST_PROTOS[req.proto]}/{MODE_WORDS[req.mode]}/{ends}/{level}"


def format_policy(policy: Policy) -> str:
    """The text after -P."""
    direction = DIRECTION_WORDS[policy.direction]
    if policy.action is None:
        return direction
    prio = "" if policy.priority is None else format_priority(policy.priority)
    return _words(direction, prio, POLICY_WORDS[policy.action], *(_request(r) for r in policy.requests))


def _upper(cmd: SpdStatement) -> str:
    name = UPPER_NAMES.get(cmd.upper, str(cmd.upper))
    if cmd.upper_ports is None:
        return name
    sport, dport = cmd.upper_ports
    if cmd.upper in _ICMP_LIKE:
        return f"{name} {sport},{dport}"
    return f"{name} {(sport << 16) | dport}"  # gre: the key as one number


def format(cmd: Command) -> str:
    """One statement in canonical text, with its ";"."""
    if isinstance(cmd, SaStatement):
        algs = _algorithms(cmd.algorithms) if isinstance(cmd, Add | Update) else ""
        return (
            _words(
                cmd.keyword,
                str(cmd.flags),
                _host(cmd.src),
                _host(cmd.dst),
                _proto(cmd.proto, cmd.natt_oa),
                f"{cmd.spi:#x}",
                _options(cmd.options),
                algs,
            )
            + ";"
        )
    if isinstance(cmd, DeleteAll):
        return _words(cmd.keyword, str(cmd.flags), _host(cmd.src), _host(cmd.dst), _proto(cmd.proto, cmd.natt_oa)) + ";"
    if isinstance(cmd, Flush | Dump):
        return _words(cmd.keyword, cmd.proto.value) + ";"
    if isinstance(cmd, SpdStatement):
        return (
            _words(
                cmd.keyword,
                str(cmd.flags),
                _host(cmd.src),
                _host(cmd.dst),
                _upper(cmd),
                _context(cmd.context),
                "-P",
                format_policy(cmd.policy),
            )
            + ";"
        )
    if isinstance(cmd, SpdTagged):
        return _words(cmd.keyword, "tagged", _quoted(cmd.tag), "-P", format_policy(cmd.policy)) + ";"
    if isinstance(cmd, SpdFlush | SpdDump | Exit):
        return f"{cmd.keyword};"
    raise TypeError(f"not a setkey command: {cmd!r}")  # pragma: no cover


def format_script(commands: Iterable[Command]) -> str:
    """Statements one per line."""
    return "".join(format(c) + "\n" for c in commands)
