"""The usage text of setkey, which is also the SYNOPSIS of ``pfkeyd/man/setkey.8``.

A test renders the manual page's SYNOPSIS and compares it with :data:`USAGE` line
by line, so the two cannot drift apart.  The CLI prints :data:`USAGE` on
standard error and exits with :data:`EX_USAGE` on a usage error.

Option letters are FreeBSD setkey's, plus the ipsec-tools ones that do not clash
with them (``-n``, ``-p``, ``-H``, ``-V``, ``-r``, ``-k`` and plain file
arguments).  ipsec-tools' ``-h`` (help) gives way to FreeBSD's ``-h`` (hex dump);
``-H`` is a synonym, as in NetBSD's setkey.  The options no reference setkey has
are long options, so they can never clash with a reference letter.
"""

from __future__ import annotations

__all__ = ["USAGE", "EX_USAGE"]

#: sysexits(3) EX_USAGE: the command line was wrong.
EX_USAGE = 64

# The socket and dialect defaults are the client library's
# (pfkeyd.defaults): $PFKEY_SOCKET, else the daemon's default socket; the
# host's own dialect.  The manual page says so.

USAGE = """\
usage: setkey [-knrv] [--json] [--dialect dialect] [--socket path] [--timeout seconds] -c
       setkey [-knrv] [--json] [--dialect dialect] [--socket path] [--timeout seconds] -f file
       setkey [-knrv] [--json] [--dialect dialect] [--socket path] [--timeout seconds] -e script
       setkey [-Paglptv] [--json] [--dialect dialect] [--socket path] [--timeout seconds] -D
       setkey [-Pv] [--dialect dialect] [--socket path] [--timeout seconds] -F
       setkey [-Hh] [--dialect dialect] [--socket path] [--timeout seconds] -x
       setkey [-apv] [--json] [--dialect dialect] file ...
       setkey -V
"""
