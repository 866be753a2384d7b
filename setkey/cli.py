"""The setkey(8) command line: scripts, dumps, flushes, the promiscuous monitor.

Theory of operation
-------------------
:func:`parse_args` turns the arguments into :class:`Options` (or raises
:class:`UsageError`: usage text on standard error, exit 64).  One mode runs:

``-f file``, ``-e script``
    The whole text is parsed (:func:`setkey.parser.parse`), held against the
    dialect (:func:`setkey.check.check`) and its host names resolved
    (:func:`setkey.resolve.resolve`) before anything is sent: any error is
    reported as ``setkey: file:line:col: message`` with the source line and a
    caret, and the databases stay untouched (exit 1).  ``-n`` stops there.
    Then, on one PF_KEY connection: SADB_REGISTER once when a statement has an
    ``-E`` or ``-A`` algorithm, whose lists are held against the script's
    algorithms and keys as the reference setkey does (nothing is sent if one
    does not fit); then the statements, *pipelined*: the messages of
    consecutive statements are built as they go out through
    :meth:`pfkeyd.client.Connection.request_many_raw`, a window of requests in
    flight, the replies matched by seq and decoded only where needed (see
    :meth:`_Session.send`).  ``dump``, ``spddump`` and the linux
    ``deleteall`` (a dump, then one DELETE per SA whose addresses match, byte
    for byte, as ipsec-tools does) read a dump, so the pipeline is drained
    before them and their output lands where the script has it.  A refused
    command is reported as ``setkey: file:line: <error text>``; the script goes
    on, and the exit status is 1.
``-c``
    Statements are read from standard input as they arrive; each is parsed,
    checked, resolved and sent when its ``;`` is read, and reported on its own.
    A mistake spoils only its own statement.
``-D``, ``-F`` (with ``-P``: the SPD)
    One dump or flush; ``-l`` repeats the dump every second in the short format.
``-x``
    A raw PF_KEY socket in promiscuous mode: every datagram is printed as
    :func:`setkey.dump.promisc_block` renders it, byte for byte what arrived.
``file ...``
    Files of raw PF_KEY messages, printed as replies would be; no daemon.

Every mode that talks to the daemon first asks it which dialect its socket
speaks (the control socket's ``dialect`` command, through
:func:`pfkeyd.client.socket_dialect`); ``--dialect`` overrides the answer, with
a warning when the two differ, and the host's own dialect is the fallback when
nothing answers.  Nothing setkey waits for from the daemon waits longer than
``--timeout`` seconds (:data:`DEFAULT_TIMEOUT`) without progress: the client
library raises :class:`pfkeyd.client.ReplyTimeout`, reported with what was
awaited and the likely cause (:meth:`_Program._timed_out`), exit 1.

Everything printed for the daemon's messages comes from :mod:`setkey.dump`, in
the format of the dialect's reference tool (FreeBSD setkey, ipsec-tools).  The
clock, the time zone, the standard streams, the environment, the name
resolver and the ``-l`` loop (count, interval) come in through
:class:`Runtime`, so tests can fix all of them.

No traceback reaches the user: every failure ends as one ``setkey: ...`` line
(an unexpected exception as ``setkey: internal error: ...``, which is a bug).
"""

from __future__ import annotations

import contextlib
import errno as E
import gc
import logging
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TextIO

import trio

import pfkeyd.client
from pfkeyd import __version__
from pfkeyd import algorithms as alg
from pfkeyd.client import Connection, PfkeyReplyError, RawReply, ReplyTimeout
from pfkeyd.defaults import SOCKET_ENV, connect_failure, default_socket_path, native_dialect
from pfkeyd.errors import DecodeError, EncodeError
from pfkeyd.wire import Dialect, Message, MsgType, PolicyScope, SaType, Supported, decode, encode
from pfkeyd.wire.framing import MAX_DATAGRAM, split_messages
from setkey import keylen
from setkey.build import build, deleteall_deletes, needs_dump
from setkey.check import check
from setkey.commands import Add, Command, Dump, Exit, SpdDump, Update
from setkey.dump import (
    SHORT_HEADER,
    DumpOptions,
    debug_block,
    error_text,
    hexdump,
    priority_warning,
    promisc_block,
    render_reply,
)
from setkey.errors import SetkeyError, SetkeyErrors, SetkeyValueError, Source
from setkey.parser import locate, parse
from setkey.resolve import Resolved, Resolver, resolve
from setkey.usage import EX_USAGE, USAGE

__all__ = [
    "main",
    "Runtime",
    "Options",
    "UsageError",
    "parse_args",
    "SHORT_OPTIONS",
    "LONG_OPTIONS",
    "accepted_options",
    "StatementSplitter",
]

#: The option letters, getopt(3) style (a colon: the option takes an argument).
SHORT_OPTIONS = "ce:f:DPFalgtvxhHnpVrk"
#: The long options (``=``: the option takes an argument).
LONG_OPTIONS = ("json", "socket=", "dialect=", "timeout=")
#: How long setkey waits for anything from the daemon (a reply, the next entry
#: of a dump, the connection) before it gives up, in seconds; --timeout changes it.
DEFAULT_TIMEOUT = 5.0

#: Requests in flight at once while a script is applied.
WINDOW = 128
#: Statements built into messages at a time (bounds the memory of a big script).
CHUNK = 4096

_STDIN_NAME = "(stdin)"
_SCRIPT_NAME = "(-e)"


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
    args = list(argv)
    i = 0

    def take(what: str) -> str:
        nonlocal i
        if i >= len(args):
            raise UsageError(f"option {what} needs an argument")
        i += 1
        return args[i - 1]

    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional += args[i:]
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name not in _LONG:
                raise UsageError(f"unknown option --{name}")
            if not _LONG[name]:
                if eq:
                    raise UsageError(f"option --{name} takes no argument")
                o.json = True
                continue
            if not eq:
                value = take(f"--{name}")
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
            continue
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c not in _LETTERS:
                raise UsageError(f"unknown option -{c}")
            optarg: str | None = None
            if c in _ARGUMENT:
                optarg, j = (arg[j:], len(arg)) if j < len(arg) else (take(f"-{c}"), j)
            _letter(o, c, optarg, modes)
            version = version or c == "V"
    if version:
        o.mode = "V"
        return o
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
    return o


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
        attr = {"P": "policy", "a": "show_dead", "l": "loop", "g": "global_only", "t": "ifnet_only",
                "v": "verbose", "n": "check_only", "p": "ports"}.get(c)
        if attr is not None:
            setattr(o, attr, True)


# ------------------------------------------------------------------ runtime


def _stdin() -> TextIO:
    return sys.stdin


def _stdout() -> TextIO:
    return sys.stdout


def _stderr() -> TextIO:
    return sys.stderr


def _environ() -> Mapping[str, str]:
    return os.environ


def _ifname(index: int) -> str | None:
    """if_indextoname(3), None for an index no interface has: what getnameinfo()
    does for a scoped IPv6 address (``fe80::1%lo``, else ``fe80::1%7``)."""
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


@dataclass
class Runtime:
    """The world setkey runs in; tests replace parts of it.

    ``loops`` bounds the ``-l`` loop (None: until interrupted) and ``interval``
    is its period in seconds; ``resolver`` resolves host names (None: the
    system's getaddrinfo); ``reply_timeout`` is how long setkey waits for
    anything from the daemon when --timeout does not say (the reference waits
    1 s per receive of a dump, and for ever for a reply); ``trio_clock`` is the
    clock of setkey's trio loops (None: trio's own; tests pass an autojump
    clock);
    ``ifname`` names the interface of a scope id in the dumps (None: print the
    number).
    """

    stdin: TextIO = field(default_factory=_stdin)
    stdout: TextIO = field(default_factory=_stdout)
    stderr: TextIO = field(default_factory=_stderr)
    environ: Mapping[str, str] = field(default_factory=_environ)
    clock: Callable[[], float] = time.time
    localtime: Callable[[float], time.struct_time] = time.localtime
    loops: int | None = None
    interval: float = 1.0
    resolver: Resolver | None = None
    reply_timeout: float = DEFAULT_TIMEOUT
    trio_clock: trio.abc.Clock | None = None
    ifname: Callable[[int], str | None] = _ifname


class _Fatal(Exception):
    """Ends the program with ``setkey: <message>`` and exit 1."""


# ------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None, runtime: Runtime | None = None) -> int:
    """Run setkey with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    rt = runtime or Runtime()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        opts = parse_args(args)
    except UsageError as exc:
        rt.stderr.write(USAGE)
        rt.stderr.write(f"setkey: {exc}\n")
        return EX_USAGE
    # The client library logs what it drops (an undecodable message); say it
    # the way setkey says everything.
    handler = logging.StreamHandler(rt.stderr)
    handler.setFormatter(logging.Formatter("setkey: warning: %(message)s"))
    client_log = logging.getLogger("pfkeyd.client")
    client_log.addHandler(handler)
    propagate, client_log.propagate = client_log.propagate, False
    try:
        status = _Program(opts, rt).run()
        rt.stdout.flush()
        return status
    except BaseException as caught:  # every way out becomes one line
        leaf = _leaf(caught)
        if isinstance(leaf, SystemExit):
            raise leaf from None
        return _report_exit(leaf, rt)
    finally:
        client_log.removeHandler(handler)
        client_log.propagate = propagate


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (trio's nurseries)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _report_exit(exc: BaseException, rt: Runtime) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, BrokenPipeError):
        # The reader went away (setkey -D | head): say nothing more, and keep
        # the interpreter from complaining when it flushes stdout at exit.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, rt.stdout.fileno())
        return 1
    if isinstance(exc, _Fatal):
        text = str(exc)
    elif isinstance(exc, trio.BrokenResourceError):
        text = str(exc) or "the daemon closed the connection"
    elif isinstance(exc, DecodeError):
        text = f"undecodable message from the daemon: {exc} (is --dialect the socket's dialect?)"
    elif isinstance(exc, OSError):
        text = exc.strerror or str(exc)
    else:
        text = f"internal error: {type(exc).__name__}: {exc}"
    with contextlib.suppress(OSError, ValueError):
        rt.stdout.flush()
    rt.stderr.write(f"setkey: {text}\n")
    return 1


class _Program:
    """One run of setkey: the options, the runtime and the mode's code."""

    def __init__(self, opts: Options, rt: Runtime) -> None:
        self.opts = opts
        self.rt = rt
        self.timeout = opts.timeout if opts.timeout is not None else rt.reply_timeout
        #: What the daemon said its socket speaks (None: not asked, or no answer).
        self.learned: Dialect | None = None
        self.dialect = opts.dialect or native_dialect()
        self.dump_options = DumpOptions(dialect=self.dialect, show_dead=opts.show_dead,
                                        short=opts.loop and opts.mode == "D" and not opts.policy,
                                        ports=opts.ports, json=opts.json, localtime=rt.localtime,
                                        ifname=rt.ifname)

    def out(self, text: str) -> None:
        if text:
            self.rt.stdout.write(text)

    def err(self, text: str) -> None:
        self.rt.stdout.flush()  # keep stdout and stderr in order on a terminal
        self.rt.stderr.write(f"setkey: {text}\n")

    def now(self) -> int:
        return int(self.rt.clock())

    @property
    def tracing(self) -> bool:
        """-v or -h: messages are dumped as they go and come."""
        return self.opts.verbose or self.opts.hex

    def run(self) -> int:
        mode = self.opts.mode
        if mode == "V":
            self.out(f"setkey (pfkeyd) {__version__}\n")
            return 0
        if mode in "DFx" or (mode in "cfe" and not self.opts.check_only):
            self._learn_dialect()
        self._warnings()
        if mode == "files":
            return self.decode_files()
        if mode == "f":
            return self.script(*self._read_file(self.opts.source or "-"))
        if mode == "e":
            return self.script(self.opts.source or "", _SCRIPT_NAME)
        if mode == "c":
            return self.interactive()
        if mode == "D":
            return self._connected(self.dump_mode)
        if mode == "F":
            return self._connected(self.flush_mode)
        return self._raw_connected(self.monitor)

    def _warnings(self) -> None:
        o = self.opts
        if o.fwd_copies is not None and self.dialect is not Dialect.LINUX:
            self.err(f"warning: -r and -k have no effect in the {self.dialect.value} dialect")
        if (o.global_only or o.ifnet_only) and self.dialect is not Dialect.FREEBSD:
            self.err(f"warning: -g and -t have no effect in the {self.dialect.value} dialect")

    # -------------------------------------------------------------- connecting

    def _trio_run(self, fn: Callable[[], Awaitable[int]]) -> int:
        return trio.run(fn, clock=self.rt.trio_clock)

    def _learn_dialect(self) -> None:
        """Ask the daemon which dialect its socket speaks (the control socket's
        ``dialect`` command): the default for --dialect, which still wins."""
        if not (self.opts.socket or self.rt.environ.get(SOCKET_ENV) or default_socket_path(self.rt.environ)):
            return  # no socket at all: the mode says so when it connects
        path = self.socket_path()

        async def ask() -> Dialect | None:
            return await pfkeyd.client.socket_dialect(path, timeout=self.timeout)

        try:
            self.learned = trio.run(ask, clock=self.rt.trio_clock)
        except ReplyTimeout as exc:
            raise _Fatal(f"{exc}: pfkeyd is stuck or overloaded, or this is not its control socket "
                         f"(a longer --timeout than {exc.seconds:g} s may help)") from None
        if self.learned is None:
            return
        given = self.opts.dialect
        if given is None:
            self.dialect = self.learned
            self.dump_options = replace(self.dump_options, dialect=self.learned)
        elif given is not self.learned:
            self.err(f"warning: --dialect {given.value}, but pfkeyd says that {path} speaks {self.learned.value}")

    def _timed_out(self, exc: ReplyTimeout) -> _Fatal:
        """``exc`` as setkey reports it: what it waited for, and the likely cause."""
        dialect = self.dialect.value
        if self.learned is self.dialect:
            cause = (f"pfkeyd is stuck or overloaded (a longer --timeout than {exc.seconds:g} s may help)")
        elif self.learned is not None:
            cause = f"pfkeyd says the socket speaks {self.learned.value}, not {dialect} as --dialect says"
        else:
            cause = (f"the socket may not speak the {dialect} dialect (see --dialect), "
                     "or the daemon is stuck or is not pfkeyd")
        return _Fatal(f"{exc}: {cause}")

    def socket_path(self) -> str:
        return self._socket()[0]

    def _socket(self) -> tuple[str, str]:
        """The daemon's PF_KEY socket and where its path came from."""
        if self.opts.socket:
            return self.opts.socket, "--socket"
        path = self.rt.environ.get(SOCKET_ENV)
        if path:
            return path, SOCKET_ENV
        path = default_socket_path(self.rt.environ)
        if not path:
            msg = f"no PF_KEY socket: give --socket, or set {SOCKET_ENV} or XDG_RUNTIME_DIR"
            raise _Fatal(msg)
        return path, "the default"

    def _unreachable(self, exc: OSError) -> _Fatal:
        path, origin = self._socket()
        return _Fatal(connect_failure(path, exc, option="--socket", origin=origin))

    def _connected(self, body: Callable[[Connection], Awaitable[int]]) -> int:
        path = self.socket_path()

        async def run() -> int:
            entered = False
            try:
                async with pfkeyd.client.open(path, self.dialect, reply_timeout=self.timeout) as conn:
                    entered = True
                    return await body(conn)
            except BaseException as exc:
                # (the connection's nursery wraps what its body raises in a group)
                leaf = _leaf(exc)
                if isinstance(leaf, ReplyTimeout):
                    raise self._timed_out(leaf) from None
                if isinstance(leaf, OSError) and not entered:
                    raise self._unreachable(leaf) from None
                raise

        return self._trio_run(run)

    def _raw_connected(self, body: Callable[[trio.socket.SocketType], Awaitable[int]]) -> int:
        path = self.socket_path()

        async def run() -> int:
            sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_SEQPACKET)
            with sock:
                try:
                    with trio.move_on_after(self.timeout) as scope:
                        await sock.connect(path)
                except OSError as exc:
                    raise self._unreachable(exc) from None
                if scope.cancelled_caught:
                    timeout = ReplyTimeout(path, "the daemon to take the connection", self.timeout)
                    raise self._timed_out(timeout)
                return await body(sock)

        return self._trio_run(run)

    # -------------------------------------------------------------- tracing

    def trace(self, sent: Message | None, received: Message | None) -> None:
        """-v: the kdebug dump of a message sent and of one received; -h: the hex
        dump of a message sent."""
        if sent is not None and (self.opts.verbose or self.opts.hex):
            data = self._bytes(sent)
            if data is not None:
                if self.opts.verbose:
                    self.out(debug_block(data, self.dialect))
                if self.opts.hex:
                    self.out(hexdump(data))
        if received is not None and self.opts.verbose:
            data = self._bytes(received)
            if data is not None:
                self.out(debug_block(data, self.dialect))

    def _bytes(self, msg: Message) -> bytes | None:
        try:
            return encode(msg, self.dialect)
        except EncodeError:
            return None

    # -------------------------------------------------------------- -D and -F

    async def dump_mode(self, conn: Connection) -> int:
        session = _Session(self, conn, "")
        loop = self.opts.loop
        if loop and not self.opts.policy and not self.opts.json:
            self.out(SHORT_HEADER)
        rounds = 0
        ok = True
        while True:
            ok = await session.dump(self.opts.policy, 0, None) and ok
            self.rt.stdout.flush()
            rounds += 1
            if not loop or (self.rt.loops is not None and rounds >= self.rt.loops):
                break
            await trio.sleep(self.rt.interval)
        return 0 if ok else 1

    async def flush_mode(self, conn: Connection) -> int:
        request = Message(MsgType.X_SPDFLUSH if self.opts.policy else MsgType.FLUSH, SaType.UNSPEC, 0, conn.pid)
        try:
            reply = await conn.request(request)
        except PfkeyReplyError as exc:
            self.trace(request.replace(seq=exc.reply.seq), exc.reply)
            self.err(error_text(exc.reply, self.dialect))
            return 1
        self.trace(request.replace(seq=reply.seq), reply)
        return 0

    # -------------------------------------------------------------- -x

    async def monitor(self, sock: trio.socket.SocketType) -> int:
        request = encode(Message(MsgType.X_PROMISC, 1, 0, os.getpid()), self.dialect)
        if self.opts.hex:
            self.out(hexdump(request))
        await sock.send(request)
        # setkey takes the offset from UTC once, at start-up.
        utcoffset = self.rt.localtime(self.rt.clock()).tm_gmtoff
        while True:
            data = await sock.recv(MAX_DATAGRAM)
            if not data:
                msg = f"{self.socket_path()}: the daemon closed the connection"
                raise _Fatal(msg)
            now = self.rt.clock()
            sec = int(now)
            usec = round((now - sec) * 1_000_000) % 1_000_000
            self.out(promisc_block(data, self.dialect, sec=sec, usec=usec, raw_time=self.opts.promisc > 1,
                                   utcoffset=utcoffset, with_hex=self.opts.hex))
            self.rt.stdout.flush()

    # -------------------------------------------------------------- file ...

    def decode_files(self) -> int:
        status = 0
        now = self.now()
        for name in self.opts.files:
            try:
                with open(name, "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                self.err(f"{name}: {exc.strerror or exc}")
                status = 1
                continue
            for number, raw in enumerate(split_messages(data), 1):
                try:
                    msg = decode(raw, self.dialect, request=False)
                except DecodeError as exc:
                    self.err(f"{name}: message {number}: {exc}")
                    status = 1
                    continue
                if self.opts.verbose:
                    self.out(debug_block(raw, self.dialect))
                self.out(render_reply(msg, now, self.dump_options))
        return status

    # -------------------------------------------------------------- scripts

    def _read_file(self, path: str) -> tuple[str, str]:
        if path == "-":
            try:
                return self.rt.stdin.read(), _STDIN_NAME
            except UnicodeDecodeError as exc:
                raise _Fatal(f"{_STDIN_NAME}: not UTF-8 text: {exc.reason}") from None
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read(), path
        except OSError as exc:
            raise _Fatal(f"{path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise _Fatal(f"{path}: not UTF-8 text: {exc.reason}") from None

    def prepare(self, text: str, filename: str, first_line: int = 1,
                lines: Mapping[int, str] | None = None) -> list[Resolved] | None:
        """Parse, check and resolve ``text``; report every error and return None,
        or return the resolved statements.

        ``first_line`` is the line of the input where ``text`` starts, and
        ``lines`` the input's lines by number (``-c`` hands over one statement
        at a time).
        """
        errors: list[SetkeyError] = []
        resolved: list[Resolved] = []
        try:
            commands = parse(text, filename)
        except SetkeyErrors as exc:
            errors = list(exc.errors)
        else:
            source = Source(text, filename)
            try:
                check(commands, self.dialect, source)
            except SetkeyErrors as exc:
                errors += exc.errors
            try:
                resolved = resolve(commands, source, resolver=self.rt.resolver)
            except SetkeyErrors as exc:
                errors += exc.errors
        if errors:
            self.report(errors, first_line, lines)
            return None
        return resolved

    def report(self, errors: Iterable[SetkeyError], first_line: int = 1,
               lines: Mapping[int, str] | None = None) -> None:
        for e in sorted(errors, key=lambda e: (e.line, e.column)):
            if e.line and (first_line != 1 or lines is not None):
                # a statement of -c: its place and its line in the whole input
                line = e.line + first_line - 1
                source_line = lines.get(line) if lines is not None else e.source_line
                e = type(e)(e.message, line, e.column, filename=e.filename, source_line=source_line)
            self.err(str(e))

    def script(self, text: str, filename: str) -> int:
        with _few_collections():
            return self._script(text, filename)

    def _script(self, text: str, filename: str) -> int:
        items = self.prepare(text, filename)
        if items is None:
            return 1
        if self.opts.check_only or not _sends_anything(items):
            return 0

        async def apply(conn: Connection) -> int:
            session = _Session(self, conn, filename)
            if not await session.register([i.command for i in items], text, filename):
                return 1
            await session.run(items)
            return 0 if session.failures == 0 else 1

        return self._connected(apply)

    def interactive(self) -> int:
        if self.opts.check_only:
            return trio.run(self._interactive, None, clock=self.rt.trio_clock)
        return self._connected(self._interactive)

    async def _interactive(self, conn: Connection | None) -> int:
        session = _Session(self, conn, _STDIN_NAME) if conn is not None else None
        splitter = StatementSplitter()
        failed = False
        done = False
        while not done:
            line = await trio.to_thread.run_sync(self.rt.stdin.readline, abandon_on_cancel=True)
            statements = splitter.feed(line) if line else splitter.finish()
            for text, first_line, lines in statements:
                ok, done = await self._one_statement(session, text, first_line, lines)
                failed = failed or not ok
                if done:
                    break
            if not line:
                break
        if session is not None and session.failures:
            failed = True
        return 1 if failed else 0

    async def _one_statement(self, session: _Session | None, text: str, first_line: int,
                             lines: Mapping[int, str]) -> tuple[bool, bool]:
        """Run one statement of ``-c``: (no error before sending, exit was read)."""
        items = self.prepare(text, _STDIN_NAME, first_line, lines)
        self.rt.stdout.flush()
        if items is None:
            return False, False
        stop = any(isinstance(i.command, Exit) for i in items)
        if session is None or not _sends_anything(items):
            return True, stop
        if not await session.register([i.command for i in items], text, _STDIN_NAME, first_line, lines):
            return False, stop
        await session.run(items, first_line - 1)
        self.rt.stdout.flush()
        return True, stop


#: Allocations between two young-generation collections while a script is parsed
#: and applied (Python's default: 700); see :func:`_few_collections`.
GC_YOUNG_THRESHOLD = 100_000


@contextlib.contextmanager
def _few_collections() -> Iterator[None]:
    """Python's collector, tuned for a script as pfkeyd.cli tunes it for the daemon.

    A big script becomes hundreds of thousands of long-lived, acyclic objects (parse
    results, statements, messages), and with the default thresholds the collector
    scans them again and again while they are made and sent: for a 50 000-statement
    script that measured 15-20 % of the time to parse, check and resolve it, and a
    fifth of setkey's CPU while sending.  Young collections become rare; the
    thresholds are restored afterwards (tests run main() many times in one
    process).  Freezing the parsed script as well (gc.freeze) measured no better
    once collections are this rare.
    """
    saved = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 1000)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def _sends_anything(items: Sequence[Resolved]) -> bool:
    """False when nothing would be sent: no statement, or exit first."""
    return bool(items) and not isinstance(items[0].command, Exit)


def _needs_algorithms(command: Command) -> bool:
    """True for a statement whose keys setkey checks against the REGISTER lists."""
    return isinstance(command, Add | Update) and (
        command.algorithms.encrypt is not None or command.algorithms.auth is not None)


# ------------------------------------------------------------------ the session


class _Session:
    """Sends resolved statements on one connection and reports the outcome."""

    def __init__(self, program: _Program, conn: Connection, filename: str) -> None:
        self.p = program
        self.conn = conn
        self.dialect = program.dialect
        self.filename = filename
        self.fwd_copies = program.opts.fwd_copies is not False
        self.failures = 0
        self.supported: Message | None = None
        self.priority_checked = False
        self._last_failure: tuple[int, str] | None = None
        self._checked_types: set[int] = set()  # reply types seen to decode (see send)

    # -- REGISTER

    async def register(self, commands: Sequence[Command], text: str, filename: str, first_line: int = 1,
                       lines: Mapping[int, str] | None = None) -> bool:
        """SADB_REGISTER (satype 0) once, if a statement needs the algorithm lists,
        and hold the statements' algorithms and keys against them.  False: a
        statement does not fit (reported; nothing of ``commands`` may be sent)."""
        wanted = [c for c in commands if _needs_algorithms(c)]
        if not wanted:
            return True
        if self.supported is None:
            request = Message(MsgType.REGISTER, SaType.UNSPEC, 0, self.conn.pid)
            try:
                reply = await self.conn.request(request)
            except PfkeyReplyError as exc:
                self.p.trace(request.replace(seq=exc.reply.seq), exc.reply)
                self.p.err(f"cannot read the supported algorithms (SADB_REGISTER): "
                           f"{error_text(exc.reply, self.dialect)}")
                return False
            self.p.trace(request.replace(seq=reply.seq), reply)
            self.supported = reply
        problems = list(_unsupported(wanted, self.supported, self.dialect))
        if problems:
            source = Source(text, filename)
            self.p.report(source.locate(locate(text, e) for e in problems), first_line, lines)
            return False
        return True

    # -- statements

    async def run(self, items: Sequence[Resolved], line_offset: int = 0) -> None:
        """Send ``items`` in order, pipelined between the statements that read a dump."""
        batch: list[Resolved] = []
        for item in items:
            cmd = item.command
            if isinstance(cmd, Exit):
                break
            if isinstance(cmd, Dump | SpdDump) or needs_dump(cmd, self.dialect):
                await self.send(batch, line_offset)
                batch = []
                if isinstance(cmd, Dump | SpdDump):
                    await self.dump(isinstance(cmd, SpdDump), cmd.proto.satype if isinstance(cmd, Dump) else 0,
                                    cmd.line + line_offset)
                else:
                    await self.deleteall(item, line_offset)
                continue
            batch.append(item)
            if len(batch) >= CHUNK:
                await self.send(batch, line_offset)
                batch = []
        await self.send(batch, line_offset)

    async def send(self, items: Sequence[Resolved], line_offset: int) -> None:
        """The messages of ``items``, pipelined; replies printed or reported in order.

        The messages are built and encoded as the window opens, while the daemon
        works on those in flight.  The replies come back undecoded
        (:meth:`Connection.request_many_raw`): an ADD or SPDADD reply is only
        checked by its header, and a reply is decoded only where something of it
        is printed (GET, -v) or read (the priority check), plus the first success
        of each message type, so that a socket of another dialect still fails as
        "undecodable message from the daemon".
        """
        msgs: list[Message] = []
        owners: list[Resolved] = []
        pid = self.conn.pid
        dialect = self.dialect

        def datagrams() -> Iterator[bytes]:
            for item in items:
                for m in build(item, dialect, pid, fwd_copies=self.fwd_copies):
                    # A message the dialect cannot carry is reported alone (before
                    # any reply of the batch: those are handled below), and the
                    # rest of the batch still goes.
                    try:
                        data = encode(m, dialect)
                    except EncodeError as exc:
                        self.failed(item.command.line + line_offset, str(exc))
                        continue
                    msgs.append(m)
                    owners.append(item)
                    yield data

        results = await self.conn.request_many_raw(datagrams(), window=WINDOW)
        now = self.p.now()
        opts = self.p.dump_options
        tracing = self.p.tracing
        checked = self._checked_types
        for item, sent, result in zip(owners, msgs, results):
            if tracing:
                self.p.trace(sent.replace(seq=result.seq), result.message)
            if result.errno:
                self.failed(item.command.line + line_offset, error_text(_header(result), dialect))
                continue
            rtype = result.type
            if rtype not in checked:
                _ = result.message  # decoded once per type: raises DecodeError on another dialect's socket
                checked.add(rtype)
            if rtype == MsgType.GET:
                # The reference setkey sends seq 0, which the kernel echoes and
                # the dump prints; the client library numbers requests to
                # match the replies.  Print what setkey would.
                self.p.out(render_reply(result.message.replace(seq=0), now, opts))
            elif (rtype == MsgType.X_SPDADD and not self.priority_checked and dialect is Dialect.LINUX
                  and sent.policy is not None and sent.policy.priority):
                # ipsec-tools checks once per run that the kernel kept the priority
                self.priority_checked = True
                self.p.out(priority_warning(sent, result.message, opts))

    def failed(self, line: int, text: str) -> None:
        self.failures += 1
        where = f"{self.filename}:{line}: " if self.filename else ""
        if (line, text) == self._last_failure:
            return  # the second message of one statement (a fwd copy) failing alike
        self._last_failure = (line, text)
        self.p.err(f"{where}{text}")

    # -- dumps

    async def dump(self, policy: bool, satype: int, line: int | None) -> bool:
        """Print a dump of the SPD or the SAD (``satype``); False on an error."""
        opts = self.p.dump_options if line is None else replace(self.p.dump_options, script_line=line)
        mtype = MsgType.X_SPDDUMP if policy else MsgType.DUMP
        self.p.trace(Message(mtype, satype, 0, self.conn.pid), None)
        scopes = self._scopes() if policy else None
        entries = 0
        now = self.p.now()
        try:
            async for msg in self._entries(policy, satype):
                self.p.trace(None, msg)
                if scopes is not None and msg.policy is not None and not msg.policy.scope & scopes:
                    continue
                entries += 1
                self.p.out(render_reply(msg, now, opts))
        except PfkeyReplyError as exc:
            self.p.trace(None, exc.reply)
            self.failed(line or 0, error_text(exc.reply, self.dialect))
            return False
        if not entries:
            self.p.out(render_reply(Message(mtype, satype, errno=E.ENOENT), now, opts))
        return True

    def _entries(self, policy: bool, satype: int) -> AsyncIterator[Message]:
        return self.conn.spddump() if policy else self.conn.dump(satype)

    def _scopes(self) -> int | None:
        """-g / -t: the policy scopes to show (FreeBSD's scope mask), None for all."""
        o = self.p.opts
        if self.dialect is not Dialect.FREEBSD or not (o.global_only or o.ifnet_only):
            return None
        return (PolicyScope.GLOBAL if o.global_only else 0) | (PolicyScope.IFNET if o.ifnet_only else 0)

    async def deleteall(self, item: Resolved, line_offset: int) -> None:
        """ipsec-tools' deleteall on Linux: a dump of the satype, then one DELETE per
        SA whose addresses match the statement's byte for byte."""
        cmd = item.command
        line = cmd.line + line_offset
        for request in build(item, self.dialect, self.conn.pid):
            self.p.trace(request, None)
            try:
                entries = []
                async for msg in self.conn.dump(request.satype):
                    self.p.trace(None, msg)
                    entries.append(msg)
            except PfkeyReplyError as exc:
                self.p.trace(None, exc.reply)
                self.failed(line, error_text(exc.reply, self.dialect))
                return
            deletes = deleteall_deletes(item, entries, self.dialect, self.conn.pid)
            if deletes:
                results = await self.conn.request_many(deletes, window=WINDOW)
                for sent, result in zip(deletes, results):
                    reply = result.reply if isinstance(result, PfkeyReplyError) else result
                    self.p.trace(sent.replace(seq=reply.seq), reply)
                    if isinstance(result, PfkeyReplyError):
                        self.failed(line, error_text(reply, self.dialect))


def _header(reply: RawReply) -> Message:
    """The header of ``reply`` as a message without extensions: all that
    :func:`setkey.dump.error_text` reads of an error (its type and errno)."""
    return Message(reply.type, reply.satype, reply.seq, reply.pid, reply.errno)


def _unsupported(commands: Iterable[Command], register: Message, dialect: Dialect) -> Iterable[SetkeyError]:
    """What libipsec's ipsec_check_keylen() says about each algorithm and key of
    ``commands`` against the lists of the SADB_REGISTER reply ``register``."""
    lists = {alg.Kind.AUTH: register.supported_auth, alg.Kind.ENCRYPT: register.supported_encrypt}
    # A script uses a few algorithms and key sizes over and over: judge each once.
    verdicts: dict[tuple[alg.Kind, str, int], str | None] = {}
    for cmd in commands:
        if not isinstance(cmd, Add | Update):
            continue
        for kind, spec in ((alg.Kind.ENCRYPT, cmd.algorithms.encrypt), (alg.Kind.AUTH, cmd.algorithms.auth)):
            if spec is None:
                continue
            bits = 0 if spec.key is None else len(spec.key) * 8
            key = (kind, spec.name, bits)
            if key not in verdicts:
                verdicts[key] = _key_verdict(kind, spec.name, bits, lists[kind], dialect)
            message = verdicts[key]
            if message is not None:
                yield SetkeyValueError(message, cmd.line, cmd.column, hint=spec.name)


def _key_verdict(kind: alg.Kind, name: str, bits: int, listed: Supported | None, dialect: Dialect) -> str | None:
    """What ipsec_check_keylen() says of a ``bits``-bit key for algorithm ``name``
    against the REGISTER list ``listed`` (None: fine)."""
    found = alg.by_spelling(kind, name, dialect)
    if found is None:
        return None  # setkey.check has said so already
    row, spelling = found
    if listed is None:
        return f"the daemon sent no list of {kind.value} algorithms (SADB_REGISTER)"
    problem = keylen.key_error(row, bits, dialect, form=spelling.key, supported_algs=listed.algs)
    if problem is None:
        return None
    if problem == keylen.NOT_SUPPORTED:
        return f'{kind.value} algorithm "{name}" is not supported by the daemon'
    accepted = keylen.accepted_bits(row, dialect, form=spelling.key, supported_algs=listed.algs)
    return f'invalid key length for "{name}": {bits} bits, the daemon accepts {_bits(accepted or range(0))}'


def _bits(accepted: range) -> str:
    values = list(accepted)
    if not values:
        return "no key"
    if len(values) == 1:
        return f"{values[0]} bits"
    return f"{values[0]} to {values[-1]} bits"


# ------------------------------------------------------------------ -c


class StatementSplitter:
    """Cuts text read line by line into statements, each ending at its ``;``.

    A ``;`` inside a quoted string or a comment does not end a statement
    (``unique#N`` in a policy is not a comment).  :meth:`feed` returns the
    statements the new line completes, each as (text, number of the line it
    starts on, the input's lines it spans by number); the text keeps the
    statement's columns (what came before it on its first line is blanked out),
    so errors point where the user typed.
    """

    def __init__(self) -> None:
        self._lines: dict[int, str] = {}
        self._pending: list[str] = []
        self._start = 1
        self._number = 0
        self._quoted = False

    def feed(self, line: str) -> list[tuple[str, int, dict[int, str]]]:
        self._number += 1
        text = line if line.endswith("\n") else line + "\n"
        if not self._pending:
            self._lines = {}
            self._start = self._number
        self._lines[self._number] = text.rstrip("\r\n")
        out: list[tuple[str, int, dict[int, str]]] = []
        begin = 0  # where the pending statement's part of this line starts
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if self._quoted:
                if c == '"':
                    self._quoted = False
            elif c == '"':
                self._quoted = True
            elif c == "#" and text[max(0, i - 6):i] != "unique":
                break  # a comment runs to the end of the line
            elif c == ";":
                self._pending.append(text[begin:i + 1])
                out.append(("".join(self._pending), self._start, self._lines))
                self._pending = [" " * (i + 1)]
                self._start = self._number
                self._lines = {self._number: self._lines[self._number]}
                begin = i + 1
            i += 1
        self._pending.append(text[begin:])
        if not _has_statement_text("".join(self._pending)):
            self._pending = []  # blanks and comments: the next line starts afresh
        return out

    def finish(self) -> list[tuple[str, int, dict[int, str]]]:
        """At the end of the input: the unfinished statement, if any is left."""
        text = "".join(self._pending)
        self._pending = []
        if not _has_statement_text(text):
            return []
        return [(text, self._start, self._lines)]


_COMMENT = re.compile(r"#[^\n]*")


def _has_statement_text(text: str) -> bool:
    # (an open quote is text, so a "#" after it does no harm here)
    return bool(_COMMENT.sub("", text).strip())
