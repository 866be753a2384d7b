"""The examples run as a user would run them, and do what their docstrings say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SA_LINE = re.compile(
    r"^  esp (?P<src>\S+) -> (?P<dst>\S+) spi (?P<spi>0x[0-9a-f]{8}) (?P<state>\w+)"
    r" enc (?P<enc>\S+) 0x(?P<enc_key>[0-9a-f]*) auth (?P<auth>\S+) 0x(?P<auth_key>[0-9a-f]*)$"
)


def sads(output: str) -> dict[str, list[dict[str, str]]]:
    """The SAD sections two_hosts.py prints, host name -> its SA lines, parsed."""
    found: dict[str, list[dict[str, str]]] = {}
    current: list[dict[str, str]] | None = None
    for line in output.splitlines():
        head = re.match(r"^host (\w) \([\d.]+\) SAD:$", line)
        if head:
            current = found.setdefault(head[1], [])
        elif current is not None and line.startswith("  "):
            m = SA_LINE.match(line)
            assert m is not None, line
            current.append(m.groupdict())
        else:
            current = None
    return found


@pytest.mark.parametrize("dialect", ["linux", "freebsd"])
def test_two_hosts_are_keyed_with_matching_sas_from_one_acquire(dialect: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "two_hosts.py"), "--dialect", dialect],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # The first lookup found no SA and sent the ACQUIRE; the second one is protected.
    assert re.search(r"no SA: ACQUIRE sent \(seq \d+\) to 1 registered key manager\ndecision: discard", out), out
    used = re.search(r"SA spi (0x[0-9a-f]{8}) \(mature\)\ndecision: ipsec", out)
    assert used is not None, out

    tables = sads(out)
    assert set(tables) == {"A", "B"}, out
    a, b = tables["A"], tables["B"]
    assert a == b  # same SPIs, algorithms and keys on both hosts
    assert len(a) == 2
    assert {(sa["src"], sa["dst"]) for sa in a} == {("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.1")}
    out_sa = next(sa for sa in a if sa["src"] == "10.0.0.1")
    assert out_sa["spi"] == used[1]  # what host A's output uses is what host B receives with
    for sa in a:
        assert sa["state"] == "mature"
        assert (sa["enc"], sa["auth"]) == ("aes-cbc", "hmac-sha2-256")
        assert len(sa["enc_key"]) == 64 and len(sa["auth_key"]) == 64  # 256-bit keys
    # Each direction has its own SPI and its own fresh keys.
    assert a[0]["spi"] != a[1]["spi"]
    assert a[0]["enc_key"] != a[1]["enc_key"] and a[0]["auth_key"] != a[1]["auth_key"]
    assert "both hosts hold the same SAs" in out
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["linux", "freebsd"])
def test_the_main_job_runs_end_to_end(dialect: str) -> None:
    """examples/demo.py (what `python3 dev.py demo` runs): daemons, setkey -f, -D, -DP, the key
    manager, lookups, an ACQUIRE answered, stop."""
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
    result = subprocess.run(
        [sys.executable, str(demo), "--dialect", dialect], capture_output=True, text=True, timeout=120, check=False
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "demo: all steps succeeded" in out
    assert "spi=4097(0x00001001)" in out  # the SAD dump shows the script's SA
    assert "esp/tunnel/192.0.2.1-198.51.100.1/unique:7" in out  # the SPD dump shows the tunnel policy
    # setkey -f is not told the dialect, and the demo says why it sends a REGISTER
    assert "--dialect" not in out
    assert "it sends an SADB_REGISTER: the reply lists the algorithms and key sizes the daemon" in out
    # the key manager registered before the lookups, so the ACQUIRE went to it ...
    assert "keymgr: registered on " in out
    assert re.search(
        r"no SA: ACQUIRE sent \(seq 1\) to 1 registered key manager\n"
        r"decision: discard \(held back until an SA exists\)",
        out,
    ), out
    # ... which answered it with an SA each way, installed on both hosts ...
    outbound = re.search(r"keymgr: 10\.0\.0\.1 -> 10\.0\.0\.4 spi (0x[0-9a-f]{8}) installed on both hosts", out)
    assert outbound is not None, out
    assert re.search(r"keymgr: 10\.0\.0\.4 -> 10\.0\.0\.1 spi 0x[0-9a-f]{8} installed on both hosts", out), out
    # ... and the last lookup of the flow finds it protected by the outbound SA
    last = out.split("==> the held-back flow again", 1)[1].split("==> ", 1)[0]
    assert "$ pfkeyd lookup out 10.0.0.1 10.0.0.4 icmp 8 0" in last
    assert f"esp/transport//require (level require): SA spi {outbound[1]} (mature)\n" in last
    assert "decision: ipsec (protected by the SAs above)" in last
    assert "keymgr exited with status 0" in out
    assert out.count("exited with status 0") == 3  # the key manager and both daemons
    assert "Traceback" not in out + result.stderr
