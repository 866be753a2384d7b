"""The data plane's privileges: CAP_NET_ADMIN and CAP_NET_RAW, checked once at start.

Without CAP_NET_ADMIN the daemon cannot create the TUN, add routes and rules, or put
``SO_MARK`` on its sockets; without CAP_NET_RAW it cannot open raw IP or packet
sockets.  Each of those would fail later with a bare EPERM from a syscall far from the
cause, so the data plane reads the *effective* capability set of the process
(``CapEff:`` in ``/proc/self/status``, a hexadecimal bit mask, bit n = capability n
of ``<linux/capability.h>``) before it touches anything, and refuses to start with
an error naming what is missing.  Being uid 0 is not enough (a container or
``capsh --drop`` removes capabilities from root); having the capabilities without
being root is enough.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

__all__ = [
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "REQUIRED",
    "PrivilegeError",
    "effective_capabilities",
    "missing_capabilities",
    "require_capabilities",
]

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAPABILITY_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW"}
REQUIRED = (CAP_NET_ADMIN, CAP_NET_RAW)


class PrivilegeError(PermissionError):
    """The process lacks capabilities the data plane needs; ``missing`` names them."""

    def __init__(self, missing: tuple[str, ...]) -> None:
        self.missing = missing
        super().__init__(
            errno.EPERM,
            "the data plane needs "
            + " and ".join(missing)
            + " (run as root, or grant them, e.g. AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW in a systemd unit)",
        )


def effective_capabilities(status_text: str) -> int:
    """The effective capability mask from the text of ``/proc/<pid>/status``."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split(":", 1)[1].strip(), 16)
    raise ValueError("no CapEff line in the process status")


def missing_capabilities(status_text: str, required: Iterable[int] = REQUIRED) -> tuple[str, ...]:
    """The names of the ``required`` capabilities absent from the effective set (pure)."""
    mask = effective_capabilities(status_text)
    return tuple(CAPABILITY_NAMES.get(cap, f"capability {cap}") for cap in required if not mask >> cap & 1)


def require_capabilities(status_path: str = "/proc/self/status") -> None:
    """Raise :class:`PrivilegeError` (errno EPERM) unless the process may run the data plane."""
    with open(status_path, encoding="ascii") as f:
        missing = missing_capabilities(f.read())
    if missing:
        raise PrivilegeError(missing)
