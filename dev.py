#!/usr/bin/env python3
"""Set up this checkout and run its main job or its tests, from nothing but Python 3.11+.

    python3 dev.py demo     # make .venv, install pfkeyd, run the demonstration
    python3 dev.py test     # make .venv, install pfkeyd with its test tools, run the suite

Further arguments after ``test`` go to pytest.  The virtual environment lives in
``.venv`` inside the checkout and is rebuilt when pyproject.toml or
constraints.txt change.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".pfkeyd-installed"


def _fingerprint() -> str:
    h = hashlib.sha256()
    # setup.py and the C source too: a change there must rebuild the extension.
    for name in ("pyproject.toml", "constraints.txt", "setup.py", "pfkeyd/packet/espfast.c", "pfkeyd/recordfast.c"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be started by an older python3
        sys.exit(f"dev.py: Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    want = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    print("dev.py: installing pfkeyd and its tools into .venv", flush=True)
    subprocess.run([*pip, "install", "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[test,check]"], check=True)
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print("usage: python3 dev.py demo | test [pytest arguments]", file=sys.stderr)
        return 64
    ensure_venv()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if argv[0] == "demo":
        cmd = [str(BIN / "python"), str(ROOT / "examples" / "demo.py"), *argv[1:]]
    else:
        cmd = [str(BIN / "python"), "-m", "pytest", *argv[1:]]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
