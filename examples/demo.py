"""The main job of this checkout: show pfkeyd at work.

For now (the wire codec is what exists) it decodes the PF_KEY messages that a
Linux-built ipsec-tools setkey sent, captured byte for byte, and prints each one
field by field.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    captures = sorted(str(p) for p in (HERE / "captures").glob("*.hex"))
    cmd = [sys.executable, "-m", "pfkeyd", "decode", "--dialect", "linux", *captures]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
