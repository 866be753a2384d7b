"""The world setkey runs in (:class:`Runtime`; tests replace parts of it) and
the error that ends a run."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

import trio

from setkey.cli.options import DEFAULT_TIMEOUT
from setkey.resolve import Resolver

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


class Fatal(Exception):
    """Ends the program with ``setkey: <message>`` and exit 1."""


def leaf_exception(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (trio's nurseries)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
