"""``pfkeyd --dataplane`` at start: a clear error without privileges, usage errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pfkeyd import cli
from pfkeyd.dataplane import nft
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
    for option in ("--enc", "--no-firewall"):
        assert cli.main(["-s", "/nonexistent/x.sock", option]) == 64
        assert "--no-routes, --no-firewall, --no-compiled, --enc and --pcap need --dataplane" in capsys.readouterr().err
    assert cli.main(["-s", "/nonexistent/x.sock", "--dataplane=bad/name"]) == 64
    assert "bad interface name" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="the data plane needs CAP_NET_ADMIN and CAP_NET_RAW")
def test_without_nft_the_daemon_refuses_to_start_unless_the_firewall_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(nft, "SBIN", str(tmp_path))
    sock = str(tmp_path / "p.sock")
    assert cli.main(["-s", sock, "--dataplane", "pfkt-nonft0"]) == 1
    err = capsys.readouterr().err
    assert "data plane: nft(8) not found" in err and "--no-firewall" in err and "(ENOENT)" in err
    assert not os.path.exists(sock)
    assert not os.path.exists("/sys/class/net/pfkt-nonft0")  # nothing was set up
