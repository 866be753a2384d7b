"""Scripts written for Linux give an SA one lifetime only (``-lh`` or ``-ls``).

Linux's af_key takes either alone; FreeBSD's key_add wants both or neither.  pfkeyd
answers each socket as its dialect's kernel does: setkey's whole path (parser,
builder, client, server, engine) against a real daemon on its Unix sockets.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from pfkeyd.wire import Dialect
from tests.setkey.clihelp import ThreadDaemon, against

KEY = "0x00112233445566778899aabbccddeeff"
HARD_ONLY = f"add 10.0.0.1 10.0.0.2 esp 0x1b002 -lh 86400 -E aes-cbc {KEY};\n"
SOFT_ONLY = f"add 10.0.0.1 10.0.0.2 esp 0x1b003 -ls 3600 -E aes-cbc {KEY};\n"


@pytest.fixture
def daemon() -> Iterator[ThreadDaemon]:
    sockdir = tempfile.mkdtemp(prefix="pfk", dir="/tmp")  # AF_UNIX paths are short
    d = ThreadDaemon(sockdir).start()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def _lifetime_lines(dump: str) -> list[str]:
    """The ``diff:`` line of each SA: its add-time limits (hard and soft)."""
    return [line.strip().split("\t", 1)[1] for line in dump.splitlines() if line.lstrip().startswith("diff:")]


def test_a_linux_socket_takes_an_sa_with_one_lifetime(daemon: ThreadDaemon) -> None:
    setkey = against(daemon, Dialect.LINUX)
    r = setkey(["-c"], stdin=HARD_ONLY + SOFT_ONLY)
    assert (r.status, r.err) == (0, "")
    assert daemon.counts() == (2, 0)
    d = setkey(["-D"])
    assert d.status == 0
    # Newest first: the soft-only SA, then the hard-only one.
    assert _lifetime_lines(d.out) == ["hard: 0(s)\tsoft: 3600(s)", "hard: 86400(s)\tsoft: 0(s)"]
    # The FreeBSD socket of the same daemon sees them too (one SAD).
    assert "spi=110594(0x0001b002)" in against(daemon, Dialect.FREEBSD)(["-D"]).out


def test_a_freebsd_socket_refuses_an_sa_with_one_lifetime(daemon: ThreadDaemon) -> None:
    setkey = against(daemon, Dialect.FREEBSD)
    r = setkey(["-c"], stdin=HARD_ONLY + SOFT_ONLY)
    assert r.status == 1
    assert r.err == "setkey: (stdin):1: Invalid argument\nsetkey: (stdin):2: Invalid argument\n"
    assert daemon.counts() == (0, 0)
    both = f"add 10.0.0.1 10.0.0.2 esp 0x1b004 -lh 86400 -ls 3600 -E aes-cbc {KEY};\n"
    assert setkey(["-c"], stdin=both).status == 0
    assert daemon.counts() == (1, 0)
