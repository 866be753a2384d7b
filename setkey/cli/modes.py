"""The modes of setkey: the dumps and flushes (-D, -F), the monitor (-x),
message files, scripts (-f, -e) and the interactive -c; :class:`Program` is
one run of one of them."""

from __future__ import annotations

import contextlib
import gc
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace

import trio

import pfkeyd.client
from pfkeyd import __version__
from pfkeyd.client import Connection, PfkeyReplyError, ReplyTimeout
from pfkeyd.defaults import SOCKET_ENV, connect_failure, default_socket_path, native_dialect
from pfkeyd.errors import DecodeError, EncodeError
from pfkeyd.wire import Dialect, Message, MsgType, SaType, decode, encode
from pfkeyd.wire.framing import MAX_DATAGRAM, split_messages
from setkey.check import check
from setkey.cli.options import Options
from setkey.cli.runtime import Fatal, Runtime, leaf_exception
from setkey.cli.session import Session
from setkey.commands import Exit
from setkey.dump import (
    SHORT_HEADER,
    DumpOptions,
    debug_block,
    error_text,
    hexdump,
    promisc_block,
    render_reply,
)
from setkey.errors import SetkeyError, SetkeyErrors, Source
from setkey.parser import parse
from setkey.resolve import Resolved, resolve

_STDIN_NAME = "(stdin)"
_SCRIPT_NAME = "(-e)"


class Program:
    """One run of setkey: the options, the runtime and the mode's code."""

    def __init__(self, opts: Options, rt: Runtime) -> None:
        self.opts = opts
        self.rt = rt
        self.timeout = opts.timeout if opts.timeout is not None else rt.reply_timeout
        #: What the daemon said its socket speaks (None: not asked, or no answer).
        self.learned: Dialect | None = None
        self.dialect = opts.dialect or native_dialect()
        self.dump_options = DumpOptions(
            dialect=self.dialect,
            show_dead=opts.show_dead,
            short=opts.loop and opts.mode == "D" and not opts.policy,
            ports=opts.ports,
            json=opts.json,
            localtime=rt.localtime,
            ifname=rt.ifname,
        )

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
            raise Fatal(
                f"{exc}: pfkeyd is stuck or overloaded, or this is not its control socket "
                f"(a longer --timeout than {exc.seconds:g} s may help)"
            ) from None
        if self.learned is None:
            return
        given = self.opts.dialect
        if given is None:
            self.dialect = self.learned
            self.dump_options = replace(self.dump_options, dialect=self.learned)
        elif given is not self.learned:
            self.err(f"warning: --dialect {given.value}, but pfkeyd says that {path} speaks {self.learned.value}")

    def _timed_out(self, exc: ReplyTimeout) -> Fatal:
        """``exc`` as setkey reports it: what it waited for, and the likely cause."""
        dialect = self.dialect.value
        if self.learned is self.dialect:
            cause = f"pfkeyd is stuck or overloaded (a longer --timeout than {exc.seconds:g} s may help)"
        elif self.learned is not None:
            cause = f"pfkeyd says the socket speaks {self.learned.value}, not {dialect} as --dialect says"
        else:
            cause = (
                f"the socket may not speak the {dialect} dialect (see --dialect), "
                "or the daemon is stuck or is not pfkeyd"
            )
        return Fatal(f"{exc}: {cause}")

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
            raise Fatal(msg)
        return path, "the default"

    def _unreachable(self, exc: OSError) -> Fatal:
        path, origin = self._socket()
        return Fatal(connect_failure(path, exc, option="--socket", origin=origin))

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
                leaf = leaf_exception(exc)
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
        session = Session(self, conn, "")
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
                raise Fatal(msg)
            now = self.rt.clock()
            sec = int(now)
            usec = round((now - sec) * 1_000_000) % 1_000_000
            self.out(
                promisc_block(
                    data,
                    self.dialect,
                    sec=sec,
                    usec=usec,
                    raw_time=self.opts.promisc > 1,
                    utcoffset=utcoffset,
                    with_hex=self.opts.hex,
                )
            )
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
                raise Fatal(f"{_STDIN_NAME}: not UTF-8 text: {exc.reason}") from None
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read(), path
        except OSError as exc:
            raise Fatal(f"{path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise Fatal(f"{path}: not UTF-8 text: {exc.reason}") from None

    def prepare(
        self, text: str, filename: str, first_line: int = 1, lines: Mapping[int, str] | None = None
    ) -> list[Resolved] | None:
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

    def report(
        self, errors: Iterable[SetkeyError], first_line: int = 1, lines: Mapping[int, str] | None = None
    ) -> None:
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
            session = Session(self, conn, filename)
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
        session = Session(self, conn, _STDIN_NAME) if conn is not None else None
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

    async def _one_statement(
        self, session: Session | None, text: str, first_line: int, lines: Mapping[int, str]
    ) -> tuple[bool, bool]:
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
    scans them again and again while they are made and sent (bench/README.md has
    the figures).  Young collections become rare; the thresholds are restored
    afterwards (tests run main() many times in one process).
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
            elif c == "#" and text[max(0, i - 6) : i] != "unique":
                break  # a comment runs to the end of the line
            elif c == ";":
                self._pending.append(text[begin : i + 1])
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
