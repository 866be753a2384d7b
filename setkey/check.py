"""The checks that depend on the PF_KEY dialect, run after parsing and before
anything is sent.

The grammar accepts the union of FreeBSD's and ipsec-tools' setkey; here a
script is held against one dialect (pfkeyd.wire.Dialect):

* algorithms: the name must be one that dialect's setkey knows, with a key
  where its setkey wants one and none where it takes none, and a key length
  its kernel's SADB_REGISTER list allows (pfkeyd.algorithms, the project's one
  algorithm table, and setkey.keylen);
* values the wire cannot carry: a replay window beyond 255 (linux) or beyond
  what SADB_X_EXT_SA_REPLAY holds (freebsd), a policy reqid beyond the
  dialect's sadb_x_ipsecrequest (16 bits in freebsd);
* constructs only one dialect has: ``fwd``, policy priorities, ``-ctx`` and
  tcp-less Linux on one side; ``-natt`` (OAI/OAR), ``-natt_mtu``, ``-esn``,
  ``-hwif``, TCP-MD5 SAs and ``tcp`` requests on the other.  Tagged policies
  need SADB_X_EXT_TAG, which neither dialect has.

Every problem becomes a SetkeyValueError naming the construct and the dialect,
placed on the word it is about; all are raised together.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

from pfkeyd import algorithms as alg
from pfkeyd.wire.constants import Direction, IpProto
from pfkeyd.wire.dialect import Dialect
from setkey import keylen
from setkey.commands import (
    Add,
    Algorithms,
    AlgSpec,
    Command,
    DeleteAll,
    Dump,
    Flush,
    Policy,
    Proto,
    SaOptions,
    SaStatement,
    SpdStatement,
    SpdTagged,
    Update,
)
from setkey.errors import SetkeyError, SetkeyErrors, SetkeyValueError, Source
from setkey.parser import locate

__all__ = ["check", "problems"]

#: FreeBSD: the replay window in packets (N * 8) must fit sadb_x_sa_replay (u32).
FREEBSD_REPLAY_MAX = (0xFFFFFFFF - 32) >> 3
#: ipsec-tools: sadb_sa_replay is one byte.
LINUX_REPLAY_MAX = 0xFF


def check(commands: Iterable[Command], dialect: Dialect | str, source: Source | None = None) -> None:
    """Raise :class:`~setkey.errors.SetkeyErrors` with every problem ``commands``
    have in ``dialect``; ``source`` (the script) places each on its word."""
    found = list(problems(commands, dialect))
    if found:
        if source is not None:
            found = source.locate(locate(source.text, e) for e in found)
        raise SetkeyErrors(found)


def problems(commands: Iterable[Command], dialect: Dialect | str) -> Iterator[SetkeyError]:
    """Every problem of ``commands`` in ``dialect``, each at its statement with a hint."""
    d = Dialect(dialect)
    for cmd in commands:
        for message, hint in _command(cmd, d):
            yield SetkeyValueError(message, cmd.line, cmd.column, hint=hint)


def _cannot(what: str, d: Dialect) -> str:
    return f"{what} cannot be carried by the {d.value} dialect"


#: The problems of one statement: (message, the word it is about).
_Problems = tuple[tuple[str, str | None], ...]


def _command(cmd: Command, d: Dialect) -> _Problems:
    # The parts of a statement that scripts repeat (protocol, options,
    # algorithms, policy) are shared values (see setkey.transformer), so their
    # problems are memoised: a script of many statements checks each once.
    if isinstance(cmd, SaStatement):
        algorithms = cmd.algorithms if isinstance(cmd, Add | Update) else None
        return _sa_problems(cmd.proto, cmd.options, algorithms, d)
    if isinstance(cmd, DeleteAll | Flush | Dump):
        return _proto_problems(cmd.proto, d)
    if isinstance(cmd, SpdStatement):
        return _spd(cmd, d)
    if isinstance(cmd, SpdTagged):
        return (
            (_cannot(f'{cmd.keyword} tagged "{cmd.tag}" (a policy for a packet tag, SADB_X_EXT_TAG)', d), "tagged"),
        )
    return ()


@functools.lru_cache(maxsize=64)
def _proto_problems(proto: Proto, d: Dialect) -> _Problems:
    if proto is Proto.TCP and d is Dialect.LINUX:
        return ((_cannot("tcp (TCP-MD5 SAs, SADB_X_SATYPE_TCPSIGNATURE)", d), "tcp"),)
    return ()


@functools.lru_cache(maxsize=1024)
def _sa_problems(proto: Proto, opts: SaOptions, algorithms: Algorithms | None, d: Dialect) -> _Problems:
    """The problems of an SA statement (``algorithms`` None: getspi, get, delete)."""
    return _proto_problems(proto, d) + tuple(_sa(proto, opts, algorithms, d))


def _sa(proto: Proto, opts: SaOptions, algs: Algorithms | None, d: Dialect) -> Iterator[tuple[str, str | None]]:
    yield from (_linux_sa_options(opts) if d is Dialect.LINUX else _freebsd_sa_options(opts))
    if algs is not None:
        for kind, spec in (
            (alg.Kind.ENCRYPT, algs.encrypt),
            (alg.Kind.AUTH, algs.auth),
            (alg.Kind.COMPRESS, algs.compress),
        ):
            if spec is not None:
                yield from _algorithm(kind, spec, proto, d)


def _linux_sa_options(opts: SaOptions) -> Iterator[tuple[str, str | None]]:
    d = Dialect.LINUX
    if opts.natt is not None:
        yield _cannot("-natt (the NAT-T original addresses OAI and OAR)", d), "-natt"
    if opts.natt_mtu is not None:
        yield _cannot("-natt_mtu (SADB_X_EXT_NAT_T_FRAG)", d), "-natt_mtu"
    if opts.esn:
        yield _cannot("-esn (SADB_X_SAFLAGS_ESN)", d), "-esn"
    if opts.hwif is not None:
        yield _cannot("-hwif (hardware offload)", d), "-hwif"
    if opts.replay > LINUX_REPLAY_MAX:
        yield (
            (f"replay window {opts.replay} is too large for the linux dialect (at most {LINUX_REPLAY_MAX} bytes)"),
            "-r",
        )


def _freebsd_sa_options(opts: SaOptions) -> Iterator[tuple[str, str | None]]:
    if opts.context is not None:
        yield _cannot("-ctx (a security context, SADB_X_EXT_SEC_CTX)", Dialect.FREEBSD), "-ctx"
    if opts.replay > FREEBSD_REPLAY_MAX:
        yield (
            (f"replay window {opts.replay} is too large for the freebsd dialect (at most {FREEBSD_REPLAY_MAX} bytes)"),
            "-r",
        )


def _algorithm(kind: alg.Kind, spec: AlgSpec, proto: Proto, d: Dialect) -> Iterator[tuple[str, str | None]]:
    name = spec.name
    found = alg.by_spelling(kind, name, d)
    if found is None:
        yield f'{kind.value} algorithm "{name}" is not available in the {d.value} dialect', name
        return
    row, spelling = found
    if spelling.key is alg.KeyForm.NONE and spec.key is not None:
        yield f'{kind.value} algorithm "{name}" takes no key in the {d.value} dialect', name
        return
    if spelling.key is not alg.KeyForm.NONE and spec.key is None:
        yield f'{kind.value} algorithm "{name}" needs a key', name
        return
    if spelling.old is True and not proto.old:
        yield f'algorithm mismatched: "{name}" needs esp-old', name
    elif spelling.old is False and proto.old:
        yield f'algorithm mismatched: "{name}" cannot be used with {proto.value}', name
    bits = 0 if spec.key is None else len(spec.key) * 8
    problem = keylen.key_error(row, bits, d, form=spelling.key)
    if problem == keylen.NOT_SUPPORTED:
        yield f'{kind.value} algorithm "{name}" is not supported by the {d.value} dialect', name
    elif problem is not None:
        accepted = keylen.accepted_bits(row, d, form=spelling.key)
        expected = _bits(accepted) if accepted is not None else "none"
        yield f'invalid key length for "{name}": {bits} bits, expected {expected}', name


def _bits(accepted: range) -> str:
    """A range of key lengths in bits, as words: "128, 192 or 256 bits"."""
    values = list(accepted)
    if not values:
        return "no key"
    if len(values) == 1:
        return f"{values[0]} bits"
    if accepted.step > 8 and len(values) <= 4:
        return f"{', '.join(map(str, values[:-1]))} or {values[-1]} bits"
    return f"{values[0]} to {values[-1]} bits"


def _spd(cmd: SpdStatement, d: Dialect) -> _Problems:
    policy = _policy_problems(cmd.policy, d)
    if d is not Dialect.FREEBSD:
        return policy  # the selector's own problems are FreeBSD's
    found: list[tuple[str, str | None]] = []
    if cmd.context is not None:
        found.append((_cannot("-ctx (a security context, SADB_X_EXT_SEC_CTX)", d), "-ctx"))
    if cmd.upper_ports is not None and cmd.upper != IpProto.IPV6_ICMP:
        found.append((_cannot("an upper-layer specification (type,code or key) other than icmp6's", d), None))
    return (*found, *policy)


@functools.lru_cache(maxsize=1024)
def _policy_problems(policy: Policy, d: Dialect) -> _Problems:
    return tuple(_policy(policy, d))


def _policy(policy: Policy, d: Dialect) -> Iterator[tuple[str, str | None]]:
    if d is Dialect.FREEBSD:
        if policy.direction == Direction.FWD:
            yield _cannot('a "fwd" policy', d), "-P"
        if policy.priority is not None:
            yield _cannot("a policy priority", d), "-P"
    spec = d.spec
    for request in policy.requests:
        if request.proto == IpProto.TCP and d is Dialect.LINUX:
            yield _cannot("a tcp (TCP-MD5) request", d), "-P"
        if request.reqid > spec.reqid_max:
            yield (
                (
                    f"reqid {request.reqid} of unique:{request.reqid} is too large for the {d.value} dialect "
                    f"(at most {spec.reqid_max})"
                ),
                "-P",
            )
