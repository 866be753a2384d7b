"""systemd integration: readiness notification and socket activation.

Both protocols are a few lines (sd_notify(3), sd_listen_fds(3)), so they are
written here rather than taken from a library: ``sdnotify`` has not been
released since 2017 and does no socket activation, and ``systemd-python`` needs
libsystemd's headers and a C compiler to install, for two functions.

Notification.  With ``NOTIFY_SOCKET`` set (``Type=notify``), :class:`Notifier`
sends newline-separated ``KEY=value`` datagrams to that ``AF_UNIX`` datagram
socket (a name starting with ``@`` is in the abstract namespace).  The daemon
sends ``READY=1`` with a ``STATUS=`` line once every socket listens,
``RELOADING=1`` and ``READY=1`` around a SIGHUP reload, and ``STOPPING=1`` when
it begins to stop.  A notification that cannot be sent is logged and otherwise
ignored: the daemon must not stop serving because its supervisor went away.

Socket activation.  With ``LISTEN_PID`` naming this process, ``LISTEN_FDS=n``
listening sockets start at descriptor 3, named by ``LISTEN_FDNAMES`` (colon
separated, from each socket unit's ``FileDescriptorName=``).  A name is the
dialect of the socket, ``linux`` or ``freebsd``; as a socket unit gives one name
to all of its sockets, a unit holds the PF_KEY sockets of one dialect and their
control sockets.  A socket whose path ends in ``.ctl`` (see
:func:`pfkeyd.defaults.control_path`) is the control socket of the PF_KEY socket
whose control path it is; a PF_KEY socket passed without one gets a control
socket made by the daemon as usual.  Every passed socket must be an ``AF_UNIX``
``SOCK_SEQPACKET`` socket bound to a path and listening.  The daemon leaves
passed socket files in place at exit: they belong to systemd.

:func:`listen_fds` and :func:`plan_sockets` are pure; :func:`inspect` looks at
one descriptor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from pfkeyd.defaults import control_path
from pfkeyd.wire import Dialect

__all__ = [
    "LISTEN_FDS_START",
    "ActivationError",
    "Notifier",
    "Passed",
    "Planned",
    "inspect",
    "listen_fds",
    "plan_sockets",
    "take_listen_fds",
]

log = logging.getLogger("pfkeyd.systemd")

#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
#: Where the service manager wants notifications (sd_notify(3)).
NOTIFY_ENV = "NOTIFY_SOCKET"
_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(ValueError):
    """The passed sockets cannot be used; the daemon does not start."""


def listen_fds(environ: Mapping[str, str], pid: int) -> list[tuple[int, str]]:
    """The passed descriptors and their names, as sd_listen_fds_with_names(3)
    reads them; none unless ``LISTEN_PID`` is ``pid``."""
    if environ.get("LISTEN_PID", "") != str(pid) or "LISTEN_FDS" not in environ:
        return []
    text = environ["LISTEN_FDS"]
    if not (text.isascii() and text.isdigit()):
        msg = f"LISTEN_FDS={text!r} is not a number"
        raise ActivationError(msg)
    count = int(text)
    names = environ["LISTEN_FDNAMES"].split(":") if "LISTEN_FDNAMES" in environ else []
    if names and len(names) != count:
        msg = f"LISTEN_FDNAMES names {len(names)} sockets, LISTEN_FDS={count}"
        raise ActivationError(msg)
    return [(LISTEN_FDS_START + i, names[i] if names else "unknown") for i in range(count)]


@dataclass(frozen=True, slots=True)
class Passed:
    """What one passed descriptor is (see :func:`inspect`)."""

    fd: int
    name: str
    path: str  #: the path it is bound to, "" if none
    usable: str  #: "" for a listening AF_UNIX SOCK_SEQPACKET socket, else what it is instead


@dataclass(frozen=True, slots=True)
class Planned:
    """A PF_KEY socket to serve: its path, dialect, descriptor (None: the daemon
    makes the socket), and its control socket's (None: the daemon makes it)."""

    path: str
    dialect: Dialect
    fd: int | None = None
    control_fd: int | None = None


def plan_sockets(passed: Sequence[Passed]) -> list[Planned]:
    """Sort the passed sockets into PF_KEY sockets with their control sockets.

    Raises :class:`ActivationError` naming the socket for a name that is not a
    dialect, a descriptor that is not a listening SOCK_SEQPACKET socket bound to a
    path, and a control socket whose PF_KEY socket was not passed with it.
    """
    dialects = {d.value: d for d in Dialect}
    pfkey: dict[str, Passed] = {}
    controls: dict[str, Passed] = {}
    for p in passed:
        what = f"passed socket {p.fd} ({p.name}{', ' + p.path if p.path else ''})"
        if p.usable:
            msg = f"{what}: {p.usable}; expected a listening AF_UNIX SOCK_SEQPACKET socket"
            raise ActivationError(msg)
        if p.name not in dialects:
            msg = f"{what}: its name must be its dialect, freebsd or linux (FileDescriptorName= in the socket unit)"
            raise ActivationError(msg)
        if not p.path:
            msg = f"{what}: not bound to a path"
            raise ActivationError(msg)
        table = controls if p.path.endswith(".ctl") else pfkey
        if p.path in table:
            msg = f"{what}: passed twice"
            raise ActivationError(msg)
        table[p.path] = p
    plan: list[Planned] = []
    for path, p in pfkey.items():
        ctl = controls.pop(control_path(path), None)
        if ctl is not None and ctl.name != p.name:
            msg = f"passed socket {ctl.fd} ({ctl.path}): named {ctl.name}, its PF_KEY socket {p.name}"
            raise ActivationError(msg)
        plan.append(Planned(path, dialects[p.name], p.fd, None if ctl is None else ctl.fd))
    for ctl in controls.values():
        msg = f"passed socket {ctl.fd} ({ctl.path}): a control socket without its PF_KEY socket"
        raise ActivationError(msg)
    return plan


def inspect(fd: int, name: str) -> Passed:
    """Look at a passed descriptor without taking it over."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        return Passed(fd, name, "", f"not a socket ({exc.strerror})")
    try:
        address = sock.getsockname() if sock.family == socket.AF_UNIX else ""
        path = address if isinstance(address, str) else ""
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
            return Passed(fd, name, path, f"a socket of family {sock.family.name}, type {sock.type.name}")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return Passed(fd, name, path, "not listening")
        return Passed(fd, name, path, "")
    finally:
        sock.detach()


def take_listen_fds(environ: MutableMapping[str, str]) -> list[Planned]:
    """The passed sockets, planned; removes ``LISTEN_*`` from ``environ`` (they are
    for this process only) and marks the descriptors close-on-exec."""
    fds = listen_fds(environ, os.getpid())
    for key in _ENV:
        environ.pop(key, None)
    for fd, _ in fds:
        with contextlib.suppress(OSError):  # not a descriptor: inspect() says so
            os.set_inheritable(fd, False)
    return plan_sockets([inspect(fd, name) for fd, name in fds])


class Notifier:
    """sd_notify(3): state changes to the service manager, if it asked for them."""

    def __init__(self, address: str | None) -> None:
        self._address: str | bytes | None = None
        if address:
            self._address = b"\0" + address[1:].encode() if address.startswith("@") else address

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str]) -> Notifier:
        """From ``NOTIFY_SOCKET``, which is then removed from ``environ``."""
        return cls(environ.pop(NOTIFY_ENV, None))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``notify(READY=1, STATUS="...")``); False when
        there is no service manager or the datagram could not be sent."""
        if self._address is None:
            return False
        text = "".join(f"{key}={value}\n" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(1.0)
                sock.connect(self._address)
                sock.sendall(text.encode())
        except OSError as exc:
            log.warning("cannot notify the service manager at %s: %s", _shown(self._address), exc.strerror or exc)
            return False
        return True


def _shown(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address
