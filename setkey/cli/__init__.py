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
    :meth:`Session.send`).  ``dump``, ``spddump`` and the linux
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
awaited and the likely cause (:meth:`Program._timed_out`), exit 1.

Everything printed for the daemon's messages comes from :mod:`setkey.dump`, in
the format of the dialect's reference tool (FreeBSD setkey, ipsec-tools).  The
clock, the time zone, the standard streams, the environment, the name
resolver and the ``-l`` loop (count, interval) come in through
:class:`Runtime`, so tests can fix all of them.

No traceback reaches the user: every failure ends as one ``setkey: ...`` line
(an unexpected exception as ``setkey: internal error: ...``, which is a bug).

The package: :mod:`~setkey.cli.options` reads the command line,
:mod:`~setkey.cli.runtime` is the world setkey runs in, :mod:`~setkey.cli.modes`
holds :class:`~setkey.cli.modes.Program` and its modes, and
:mod:`~setkey.cli.session` the pipelined conversation with the daemon that
scripts and ``-c`` use; :func:`main` here runs one of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence

import trio

from pfkeyd.errors import DecodeError
from setkey.cli.modes import Program, StatementSplitter
from setkey.cli.options import (
    DEFAULT_TIMEOUT,
    LONG_OPTIONS,
    SHORT_OPTIONS,
    Options,
    UsageError,
    accepted_options,
    parse_args,
)
from setkey.cli.runtime import Fatal, Runtime, leaf_exception
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
    "DEFAULT_TIMEOUT",
]

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
        status = Program(opts, rt).run()
        rt.stdout.flush()
        return status
    except BaseException as caught:  # every way out becomes one line
        leaf = leaf_exception(caught)
        if isinstance(leaf, SystemExit):
            raise leaf from None
        return _report_exit(leaf, rt)
    finally:
        client_log.removeHandler(handler)
        client_log.propagate = propagate


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
    if isinstance(exc, Fatal):
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
