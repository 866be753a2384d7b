"""Error replies: libc's strerror() texts of each reference tool, as setkey prints them."""

from __future__ import annotations

import errno as E
import os

from pfkeyd.wire import (
    Dialect,
    Message,
    MsgType,
)
from setkey.dump.common import DumpOptions

#: strerror() texts of the errnos PF_KEY replies carry, where the two C libraries
#: differ from each other; the rest come from the host's os.strerror().
_STRERROR: dict[Dialect, dict[int, str]] = {
    Dialect.FREEBSD: {
        E.ENOENT: "No such file or directory",
        E.ESRCH: "No such process",
        E.EEXIST: "File exists",
        E.EINVAL: "Invalid argument",
        E.ENOBUFS: "No buffer space available",
        E.EAFNOSUPPORT: "Address family not supported by protocol family",
        E.EPROTONOSUPPORT: "Protocol not supported",
        E.EOPNOTSUPP: "Operation not supported",
        E.EBUSY: "Device busy",
        E.EMSGSIZE: "Message too long",
        E.EPERM: "Operation not permitted",
        E.EACCES: "Permission denied",
        E.ENOSYS: "Function not implemented",
        E.ELOOP: "Too many levels of symbolic links",
        E.ENOMEM: "Cannot allocate memory",
        E.ETIMEDOUT: "Operation timed out",
    },
    Dialect.LINUX: {
        E.ENOENT: "No such file or directory",
        E.ESRCH: "No such process",
        E.EEXIST: "File exists",
        E.EINVAL: "Invalid argument",
        E.ENOBUFS: "No buffer space available",
        E.EAFNOSUPPORT: "Address family not supported by protocol",
        E.EPROTONOSUPPORT: "Protocol not supported",
        E.EOPNOTSUPP: "Operation not supported",
        E.EBUSY: "Device or resource busy",
        E.EMSGSIZE: "Message too long",
        E.EPERM: "Operation not permitted",
        E.EACCES: "Permission denied",
        E.ENOSYS: "Function not implemented",
        E.ELOOP: "Too many levels of symbolic links",
        E.ENOMEM: "Cannot allocate memory",
        E.ETIMEDOUT: "Connection timed out",
    },
}

#: postproc()'s words for ENOENT, by the type of the reply.
_NO_ENTRY: dict[int, str] = {
    MsgType.DELETE: "No entry",
    MsgType.GET: "No entry",
    MsgType.X_SPDDELETE: "No entry",
    MsgType.DUMP: "No SAD entries",
    MsgType.X_SPDDUMP: "No SPD entries",
}


def error_text(msg: Message, dialect: Dialect | str = Dialect.FREEBSD) -> str:
    """What setkey says about an error reply, without the final period.

    ENOENT reads ``No entry``, ``No SAD entries`` or ``No SPD entries`` by message
    type (``(null)`` for other types, as the reference prints its NULL string);
    other errnos read as strerror().
    """
    if msg.errno == E.ENOENT:
        return _NO_ENTRY.get(msg.type, "(null)")
    return _STRERROR[Dialect(dialect)].get(msg.errno) or os.strerror(msg.errno)


def format_error(msg: Message, opts: DumpOptions) -> str:
    """postproc()'s line for an error reply on stdout: ``No SAD entries.``, or in
    FreeBSD script mode ``The result of line N: File exists.``.

    ipsec-tools reports script-mode errors on stderr instead
    (``setkey: <file>,<line>: <text>``, no period); build that from
    :func:`error_text`.
    """
    prefix = ""
    if opts.script_line is not None and opts.dialect is Dialect.FREEBSD:
        prefix = f"The result of line {opts.script_line}: "
    return f"{prefix}{error_text(msg, opts.dialect)}.\n"
