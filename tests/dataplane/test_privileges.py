"""The data plane refuses to start without CAP_NET_ADMIN and CAP_NET_RAW, and says so.

The capabilities are dropped in a child process (capset(2) through ctypes, tests/caps.py,
or capsh where installed), since the tests run as root and must keep their own."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from pfkeyd.dataplane.privileges import (
    CAP_NET_ADMIN,
    CAP_NET_RAW,
    PrivilegeError,
    effective_capabilities,
    missing_capabilities,
    require_capabilities,
)
from tests.caps import run_without

STATUS = (
    "Name:\tpfkeyd\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t{eff}\nCapBnd:\t000001ffffffffff\n"
)


def test_effective_set_is_read_from_capeff() -> None:
    assert effective_capabilities(STATUS.format(eff="000001ffffffffff")) == 0x1FFFFFFFFFF
    assert missing_capabilities(STATUS.format(eff="000001ffffffffff")) == ()


def test_each_missing_capability_is_named() -> None:
    full = 0x1FFFFFFFFFF
    assert missing_capabilities(STATUS.format(eff=f"{full & ~(1 << CAP_NET_RAW):016x}")) == ("CAP_NET_RAW",)
    assert missing_capabilities(STATUS.format(eff=f"{full & ~(1 << CAP_NET_ADMIN):016x}")) == ("CAP_NET_ADMIN",)
    assert missing_capabilities(STATUS.format(eff="0000000000000000")) == ("CAP_NET_ADMIN", "CAP_NET_RAW")
    # root's uid does not count, only the effective set: this one has just the two
    assert missing_capabilities(STATUS.format(eff=f"{(1 << 12) | (1 << 13):016x}")) == ()


def test_a_status_without_capeff_is_an_error() -> None:
    with pytest.raises(ValueError):
        effective_capabilities("Name:\tx\n")


def test_the_error_says_what_is_missing_with_eperm() -> None:
    e = PrivilegeError(("CAP_NET_ADMIN", "CAP_NET_RAW"))
    assert e.errno == errno.EPERM
    assert "CAP_NET_ADMIN and CAP_NET_RAW" in str(e)


_CHECK = """
from pfkeyd.dataplane.privileges import PrivilegeError, require_capabilities
try:
    require_capabilities()
except PrivilegeError as e:
    print("refused", e.errno, e.missing)
else:
    print("allowed")
"""


def _child(*drop: int) -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root to have the capabilities to drop")
    return run_without(drop, _CHECK).stdout.strip()


def test_start_is_refused_without_cap_net_admin_and_cap_net_raw() -> None:
    assert _child(CAP_NET_ADMIN, CAP_NET_RAW) == f"refused {errno.EPERM} ('CAP_NET_ADMIN', 'CAP_NET_RAW')"


def test_start_is_refused_without_cap_net_raw_alone() -> None:
    assert _child(CAP_NET_RAW) == f"refused {errno.EPERM} ('CAP_NET_RAW',)"


def test_start_is_allowed_when_only_other_capabilities_are_dropped() -> None:
    assert _child(21) == "allowed"  # CAP_SYS_ADMIN


@pytest.mark.skipif(shutil.which("capsh") is None, reason="capsh (libcap2-bin) is not installed")
def test_start_is_refused_under_capsh_drop() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    code = "from pfkeyd.dataplane.privileges import require_capabilities; require_capabilities()"
    out = subprocess.run(
        ["capsh", "--drop=cap_net_admin,cap_net_raw", "--", "-c", f'exec "{sys.executable}" -c "{code}"'],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1
    assert "PrivilegeError" in out.stderr and "CAP_NET_ADMIN and CAP_NET_RAW" in out.stderr


def test_this_process_may_run_the_data_plane() -> None:
    if os.geteuid() != 0:
        pytest.skip("not root")
    require_capabilities()
