"""A script applied through one connection to the daemon: REGISTER first, then
the statements pipelined, their replies printed in order (:class:`Session`)."""

from __future__ import annotations

import errno as E
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from pfkeyd import algorithms as alg
from pfkeyd.client import Connection, PfkeyReplyError, RawReply
from pfkeyd.errors import EncodeError
from pfkeyd.wire import Dialect, Message, MsgType, PolicyScope, SaType, Supported, encode
from setkey import keylen
from setkey.build import build, deleteall_deletes, needs_dump
from setkey.cli.options import Options
from setkey.commands import Add, Command, Dump, Exit, SpdDump, Update
from setkey.dump import (
    DumpOptions,
    error_text,
    priority_warning,
    render_reply,
)
from setkey.errors import SetkeyError, SetkeyValueError, Source
from setkey.parser import locate
from setkey.resolve import Resolved


class Host(Protocol):
    """What a session needs of the program that runs it (:class:`setkey.cli.modes.Program`),
    named here so that the session does not import the modes that import it."""

    opts: Options
    dialect: Dialect
    dump_options: DumpOptions

    @property
    def tracing(self) -> bool: ...

    def out(self, text: str) -> None: ...

    def err(self, text: str) -> None: ...

    def now(self) -> int: ...

    def report(
        self, errors: Iterable[SetkeyError], first_line: int = 1, lines: Mapping[int, str] | None = None
    ) -> None: ...

    def trace(self, sent: Message | None, received: Message | None) -> None: ...


#: Requests in flight at once while a script is applied.
WINDOW = 128
#: Statements built into messages at a time (bounds the memory of a big script).
CHUNK = 4096


def _needs_algorithms(command: Command) -> bool:
    """True for a statement whose keys setkey checks against the REGISTER lists."""
    return isinstance(command, Add | Update) and (
        command.algorithms.encrypt is not None or command.algorithms.auth is not None
    )


# ------------------------------------------------------------------ the session


class Session:
    """Sends resolved statements on one connection and reports the outcome."""

    def __init__(self, program: Host, conn: Connection, filename: str) -> None:
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

    async def register(
        self,
        commands: Sequence[Command],
        text: str,
        filename: str,
        first_line: int = 1,
        lines: Mapping[int, str] | None = None,
    ) -> bool:
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
                self.p.err(
                    f"cannot read the supported algorithms (SADB_REGISTER): {error_text(exc.reply, self.dialect)}"
                )
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
                    await self.dump(
                        isinstance(cmd, SpdDump),
                        cmd.proto.satype if isinstance(cmd, Dump) else 0,
                        cmd.line + line_offset,
                    )
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
        for item, sent, result in zip(owners, msgs, results):
            self._replied(item.command.line + line_offset, sent, result, now)

    def _replied(self, line: int, sent: Message, result: RawReply, now: int) -> None:
        """One reply of :meth:`send`: traced, reported if refused, printed where setkey prints it."""
        if self.p.tracing:
            self.p.trace(sent.replace(seq=result.seq), result.message)
        if result.errno:
            self.failed(line, error_text(_header(result), self.dialect))
            return
        rtype = result.type
        if rtype not in self._checked_types:
            _ = result.message  # decoded once per type: raises DecodeError on another dialect's socket
            self._checked_types.add(rtype)
        if rtype == MsgType.GET:
            # The reference setkey sends seq 0, which the kernel echoes and
            # the dump prints; the client library numbers requests to
            # match the replies.  Print what setkey would.
            self.p.out(render_reply(result.message.replace(seq=0), now, self.p.dump_options))
        elif (
            rtype == MsgType.X_SPDADD
            and not self.priority_checked
            and self.dialect is Dialect.LINUX
            and sent.policy is not None
            and sent.policy.priority
        ):
            # ipsec-tools checks once per run that the kernel kept the priority
            self.priority_checked = True
            self.p.out(priority_warning(sent, result.message, self.p.dump_options))

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
