"""Running test code in a child process with some capabilities taken away.

The tests run as root; :func:`run_without` starts ``python -c`` whose first act is
capset(2) (through ctypes) clearing the given capabilities from its effective and
permitted sets, so the rest of the code runs as a process without them would."""

from __future__ import annotations

import subprocess
import sys

__all__ = ["run_without"]

_PRELUDE = r"""
import ctypes as _c, sys as _s
_libc = _c.CDLL(None, use_errno=True)
class _Header(_c.Structure):
    _fields_ = [("version", _c.c_uint32), ("pid", _c.c_int)]
class _Data(_c.Structure):
    _fields_ = [("effective", _c.c_uint32), ("permitted", _c.c_uint32), ("inheritable", _c.c_uint32)]
_h = _Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
_d = (_Data * 2)()
assert _libc.capget(_c.byref(_h), _d) == 0, _c.get_errno()
for _cap in map(int, _s.argv[1].split(",")):
    _d[_cap // 32].effective &= ~(1 << _cap % 32)
    _d[_cap // 32].permitted &= ~(1 << _cap % 32)
assert _libc.capset(_c.byref(_h), _d) == 0, _c.get_errno()
"""


def run_without(caps: tuple[int, ...], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child Python without capabilities ``caps`` (output captured)."""
    return subprocess.run(
        [sys.executable, "-c", _PRELUDE + code, ",".join(map(str, caps))],
        capture_output=True,
        text=True,
        check=True,
    )
