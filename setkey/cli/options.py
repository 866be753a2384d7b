"""setkey's command line: the options, read getopt(3) style into :class:`Options`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pfkeyd.wire import Dialect

#: The option letters, getopt(3) style (a colon: the option takes an argument).
SHORT_OPTIONS = "ce:f:DPFalgtvxhHnpVrk"
#: The long options (``=``: the option takes an argument).
LONG_OPTIONS = ("json", "socket=", "dialect=", "timeout=")
#: How long setkey waits for anything from the daemon (a reply, the next entry
#: of a dump, the connection) before it gives up, in seconds; --timeout changes it.
DEFAULT_TIMEOUT = 5.0


def accepted_options() -> set[str]:
    """Every option the command line accepts, as ``-x`` or ``--json``."""
    return {f"-{c}" for c in SHORT_OPTIONS if c != ":"} | {f"--{o.rstrip('=')}" for o in LONG_OPTIONS}


# ------------------------------------------------------------------ arguments


class UsageError(Exception):
    """The command line is wrong: usage text, exit 64."""


@dataclass
class Options:
    """What the command line asks for."""

    mode: str = ""  # "c", "f", "e", "D", "F", "x", "files" or "V"
    source: str | None = None  # the file of -f, the script of -e
    policy: bool = False  # -P
    show_dead: bool = False  # -a
    loop: bool = False  # -l
    global_only: bool = False  # -g
    ifnet_only: bool = False  # -t
    verbose: bool = False  # -v
    promisc: int = 0  # -x, -xx
    hex: bool = False  # -h, -H
    check_only: bool = False  # -n
    ports: bool = False  # -p
    fwd_copies: bool | None = None  # -r True, -k False
    json: bool = False  # --json
    socket: str | None = None  # --socket
    dialect: Dialect | None = None  # --dialect
    timeout: float | None = None  # --timeout
    files: list[str] = field(default_factory=list)


_ARGUMENT = {c for i, c in enumerate(SHORT_OPTIONS) if SHORT_OPTIONS[i + 1 : i + 2] == ":"}
_LETTERS = set(SHORT_OPTIONS) - {":"}
_LONG = {o.rstrip("="): o.endswith("=") for o in LONG_OPTIONS}
_MODES = "cfeDFx"


class _Arguments:
    """The arguments not read yet, for options that take the next one."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.args = list(argv)
        self.i = 0

    def next(self) -> str | None:
        if self.i >= len(self.args):
            return None
        self.i += 1
        return self.args[self.i - 1]

    def take(self, what: str) -> str:
        value = self.next()
        if value is None:
            raise UsageError(f"option {what} needs an argument")
        return value

    def rest(self) -> list[str]:
        rest, self.i = self.args[self.i :], len(self.args)
        return rest


def parse_args(argv: Sequence[str]) -> Options:
    """The :class:`Options` of ``argv`` (without the program name).

    Options and file arguments may come in any order; ``--`` ends the options.
    Exactly one of ``-c``, ``-f``, ``-e``, ``-D``, ``-F``, ``-x`` or file
    arguments must be given (``-V`` goes alone).  Raises :class:`UsageError`.
    """
    o = Options()
    modes: list[str] = []
    positional: list[str] = []
    version = False
    args = _Arguments(argv)
    while (arg := args.next()) is not None:
        if arg == "--":
            positional += args.rest()
        elif arg.startswith("--"):
            _long_option(o, arg[2:], args)
        elif not arg.startswith("-") or arg == "-":
            positional.append(arg)
        else:
            version = _short_options(o, arg, args, modes) or version
    if version:
        o.mode = "V"
        return o
    _choose_mode(o, modes, positional)
    return o


def _long_option(o: Options, text: str, args: _Arguments) -> None:
    """``--name`` or ``--name=value`` (``text`` without the dashes)."""
    name, eq, value = text.partition("=")
    if name not in _LONG:
        raise UsageError(f"unknown option --{name}")
    if not _LONG[name]:
        if eq:
            raise UsageError(f"option --{name} takes no argument")
        o.json = True
        return
    if not eq:
        value = args.take(f"--{name}")
    if name == "socket":
        if not value:
            raise UsageError("--socket needs a path")
        o.socket = value
    elif name == "timeout":
        o.timeout = _seconds(value)
    else:
        try:
            o.dialect = Dialect(value)
        except ValueError:
            raise UsageError(f"unknown dialect '{value}' (freebsd or linux)") from None


def _short_options(o: Options, arg: str, args: _Arguments, modes: list[str]) -> bool:
    """A cluster of option letters (``-Dl``, ``-fscript``, ``-f script``); True if it has -V."""
    version = False
    j = 1
    while j < len(arg):
        c = arg[j]
        j += 1
        if c not in _LETTERS:
            raise UsageError(f"unknown option -{c}")
        optarg: str | None = None
        if c in _ARGUMENT:
            optarg, j = (arg[j:], len(arg)) if j < len(arg) else (args.take(f"-{c}"), j)
        _letter(o, c, optarg, modes)
        version = version or c == "V"
    return version


def _choose_mode(o: Options, modes: list[str], positional: list[str]) -> None:
    """Exactly one mode: one of the mode letters (given once for -f and -e), or files."""
    kinds = list(dict.fromkeys(modes))
    if len(kinds) > 1:
        raise UsageError(f"-{kinds[0]} and -{kinds[1]} cannot be combined")
    if kinds:
        if positional:
            raise UsageError("file arguments cannot be combined with -c, -D, -e, -F, -f or -x")
        if kinds[0] in "fe" and len(modes) > 1:
            raise UsageError(f"-{kinds[0]} may be given only once")
        o.mode = kinds[0]
    elif positional:
        o.mode = "files"
        o.files = positional
    else:
        raise UsageError("nothing to do: give -c, -D, -e, -F, -f, -x or files")


_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _seconds(text: str) -> float:
    """The value of --timeout: a number of seconds above 0, in ASCII digits."""
    value = float(text) if _SECONDS.fullmatch(text) else 0.0
    if not 0 < value < 1e9:
        raise UsageError(f"--timeout needs a number of seconds above 0, not '{text}'")
    return value


def _letter(o: Options, c: str, value: str | None, modes: list[str]) -> None:
    if c in _MODES:
        modes.append(c)
        if c == "x":
            o.promisc += 1
        if value is not None:
            o.source = value
        return
    if c in "hH":
        o.hex = True
    elif c in "rk":
        o.fwd_copies = c == "r"
    else:
        attr = {
            "P": "policy",
            "a": "show_dead",
            "l": "loop",
            "g": "global_only",
            "t": "ifnet_only",
            "v": "verbose",
            "n": "check_only",
            "p": "ports",
        }.get(c)
        if attr is not None:
            setattr(o, attr, True)
