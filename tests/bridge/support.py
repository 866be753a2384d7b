"""Helpers of the bridge tests: finding and running the C compiler, a pfkeyd process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
#: Our test client is built the way distributions build ipsec-tools.
CLIENT_FLAGS = ("-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Wextra", "-Werror")
#: How long the daemon may take to start listening (a generous bound, polled).
START_TIMEOUT = 15.0


def find_compiler() -> str | None:
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name:
            path = shutil.which(name.split()[0])
            if path is not None:
                return path
    return None


def compile_c(cc: str, source: Path, output: Path, flags: tuple[str, ...], libs: tuple[str, ...] = ()) -> Path:
    result = subprocess.run(
        [cc, *flags, "-o", str(output), str(source), *libs], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{source.name} does not compile cleanly:\n{result.stderr}"
    assert result.stderr == "", f"{source.name} compiles with warnings:\n{result.stderr}"
    return output


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[bytes]
    path: Path
    log: Path

    def kill(self) -> None:
        """SIGKILL: the daemon gets no chance to close anything in order."""
        self.proc.kill()
        self.proc.wait(timeout=10)


def wait_listening(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until a connect() succeeds (the daemon binds before it listens)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"pfkeyd exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            try:
                probe.connect(str(path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        if time.monotonic() > deadline:
            raise AssertionError(f"pfkeyd did not listen on {path} within {START_TIMEOUT} s:\n{log.read_text()}")
        time.sleep(0.01)
