"""``pfkeyd --dataplane`` at start: a clear error without privileges, usage errors."""

from __future__ import annotations

import os

import pytest

from pfkeyd import cli
from tests.caps import run_without

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping capabilities needs a process that has them")
def test_without_cap_net_admin_the_daemon_refuses_to_start_naming_it(tmp_path: os.PathLike[str]) -> None:
    sock = os.path.join(str(tmp_path), "p.sock")
    code = (
        "import sys\n"
        "from pfkeyd import cli\n"
        f"rc = cli.main(['-s', {sock!r}, '--dataplane', 'pfkt-nocap0'])\n"
        "print('rc', rc)\n"
    )
    r = run_without((CAP_NET_ADMIN,), code)
    assert "rc 1" in r.stdout
    assert "data plane: the data plane needs CAP_NET_ADMIN" in r.stderr
    assert "(EPERM)" in r.stderr
    assert not os.path.exists(sock)  # nothing was set up


def test_dataplane_options_need_dataplane(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-s", "/nonexistent/x.sock", "--enc"]) == 64
    assert "--no-routes, --enc and --pcap need --dataplane" in capsys.readouterr().err
    assert cli.main(["-s", "/nonexistent/x.sock", "--dataplane=bad/name"]) == 64
    assert "bad interface name" in capsys.readouterr().err
