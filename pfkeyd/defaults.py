"""Defaults shared by the daemon, its command line and the client library.

Nothing here opens a socket: these functions only decide names.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping

from pfkeyd.wire import Dialect

__all__ = [
    "SOCKET_ENV",
    "ROOT_SOCKET",
    "SOCKET_NAME",
    "default_socket_path",
    "native_dialect",
    "control_path",
    "connect_failure",
]

#: The environment variable that names the daemon's socket for clients.
SOCKET_ENV = "PFKEY_SOCKET"
#: Where a daemon run by root listens unless told otherwise.
ROOT_SOCKET = "/run/pfkeyd.sock"
#: The socket's file name inside ``$XDG_RUNTIME_DIR`` for a daemon run by a user.
SOCKET_NAME = "pfkeyd.sock"


def default_socket_path(env: Mapping[str, str] | None = None, euid: int | None = None) -> str | None:
    """The daemon's default socket: ``/run/pfkeyd.sock`` for root, else in ``$XDG_RUNTIME_DIR``.

    None when neither applies (a user without ``XDG_RUNTIME_DIR``).
    """
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return ROOT_SOCKET
    runtime = env.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, SOCKET_NAME) if runtime else None


def native_dialect(platform: str | None = None) -> Dialect:
    """The dialect of the host's own PF_KEY: freebsd on the BSDs, linux elsewhere."""
    platform = sys.platform if platform is None else platform
    if platform.startswith(("freebsd", "dragonfly", "netbsd", "openbsd", "darwin")):
        return Dialect.FREEBSD
    return Dialect.LINUX


def control_path(socket_path: str) -> str:
    """The control socket beside a PF_KEY socket: ``.sock`` becomes ``.ctl``
    (``/run/pfkeyd.sock`` -> ``/run/pfkeyd.ctl``), other names get ``.ctl`` added."""
    if socket_path.endswith(".sock"):
        return socket_path[: -len(".sock")] + ".ctl"
    return socket_path + ".ctl"


#: connect() errors that mean no daemon listens at the path: no file there, or a
#: socket file left behind with nothing listening on it.
_NOT_LISTENING = frozenset({errno.ENOENT, errno.ECONNREFUSED})


def connect_failure(path: str, exc: OSError, *, option: str, origin: str = "", pfkey_path: str | None = None) -> str:
    """What to tell a user whose connect() to ``path`` failed with ``exc``.

    ``origin`` says where the path came from ("--socket", "PFKEY_SOCKET", "the
    default"); ``pfkey_path`` is the PF_KEY socket when ``path`` is the control
    socket beside it; ``option`` is the option that chooses another socket.
    When nothing listens there the text says that pfkeyd may not be running and
    how to point at another socket.
    """
    what = "PF_KEY socket" if pfkey_path is None else f"control socket (beside {pfkey_path})"
    source = f", from {origin}" if origin else ""
    text = f"{path}: {exc.strerror or exc}"
    if exc.errno in _NOT_LISTENING:
        text += (
            f" (the {what}{source}): pfkeyd may not be running, or it listens on another socket: "
            f"choose that one with {option} or {SOCKET_ENV}"
        )
    return text
