"""Defaults shared by the daemon, its command line and the client library.

Nothing here opens a socket: these functions only decide names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from pfkeyd.wire import Dialect

__all__ = ["SOCKET_ENV", "ROOT_SOCKET", "SOCKET_NAME", "default_socket_path", "native_dialect", "control_path"]

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
