"""One exception hierarchy; every class carries the errno the reference kernel returns.

The engine raises these; exactly one place (the engine's dispatcher) turns them into
the error reply of the client's dialect and counts them.  Any other exception is a
bug and must be loud.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar

__all__ = [
    "PfkeyError",
    "InvalidArgument",
    "NoEntry",
    "NoSuchEntry",
    "AlreadyExists",
    "ProtocolNotSupported",
    "NoBuffers",
    "NotImplementedBySystem",
    "DecodeError",
    "EncodeError",
]


class PfkeyError(Exception):
    """A request the reference kernel refuses; ``errno`` is what it answers."""

    errno: int = _errno.EINVAL
    default_errno: ClassVar[int] = _errno.EINVAL

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = type(self).default_errno if errno is None else errno

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgument(PfkeyError):
    default_errno = _errno.EINVAL


class NoEntry(PfkeyError):
    default_errno = _errno.ENOENT


class NoSuchEntry(PfkeyError):
    """ESRCH: FreeBSD's "no such SA" for DELETE, GET and SA-index mismatches."""

    default_errno = _errno.ESRCH


class AlreadyExists(PfkeyError):
    default_errno = _errno.EEXIST


class ProtocolNotSupported(PfkeyError):
    default_errno = _errno.EPROTONOSUPPORT


class NoBuffers(PfkeyError):
    default_errno = _errno.ENOBUFS


class NotImplementedBySystem(PfkeyError):
    """ENOSYS: Linux's answer to an algorithm PF_KEY cannot install."""

    default_errno = _errno.ENOSYS


class DecodeError(PfkeyError):
    """A request the codec refuses, with how the reference kernel refuses it.

    ``reply`` is True when the kernel answers with an error reply (the send itself
    succeeds) and False when the kernel fails the send() system call and sends
    nothing.  ``header`` is the raw 16-byte base header when one could be read; the
    server needs it to build a Linux-style error reply.
    """

    def __init__(
        self,
        message: str,
        *,
        errno: int = _errno.EINVAL,
        reply: bool,
        header: bytes | None = None,
    ) -> None:
        super().__init__(message, errno=errno)
        self.reply = reply
        self.header = header


class EncodeError(ValueError):
    """A value that the chosen dialect cannot carry on the wire.

    The encoder never truncates or drops silently: FWD in the freebsd dialect, a
    reqid above 0xffff in freebsd, NAT-T OAR in linux and the like raise this.
    """
