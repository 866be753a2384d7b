"""The main job of this checkout: pfkeyd and setkey at work, end to end.

    python3 dev.py demo            (or: .venv/bin/python examples/demo.py [--dialect freebsd])

1. starts pfkeyd on a private socket in a temporary directory;
2. loads examples/demo.conf with ``setkey -f`` (SAs and policies);
3. prints ``setkey -D`` and ``setkey -DP``, in the format of the dialect's setkey;
4. asks the daemon, through ``pfkeyd lookup``, what happens to four flows: two its
   SAs protect (transport and tunnel), one a discard policy drops, and one for
   which no SA exists yet (the daemon sends an SADB_ACQUIRE to any registered key
   manager and holds the packet back);
5. prints ``pfkeyd stats`` and stops the daemon with SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def run(env: dict[str, str], *argv: str) -> int:
    print(f"$ {' '.join(argv)}", flush=True)
    return subprocess.run([sys.executable, "-m", *argv], env=env, check=False).returncode


def wait_for(path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: pfkeyd exited with status {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.connect(path)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("demo: pfkeyd did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialect", choices=("linux", "freebsd"), default="linux")
    args = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="pfkeyd-demo.", dir="/tmp") as tmp:
        sock = f"{tmp}/pfkeyd.sock"
        env = dict(os.environ, PFKEY_SOCKET=sock, TZ="UTC")
        step(f"start pfkeyd on {sock} ({args.dialect} dialect)")
        print(f"$ pfkeyd -s {sock}:{args.dialect}", flush=True)
        daemon = subprocess.Popen([sys.executable, "-m", "pfkeyd", "-s", f"{sock}:{args.dialect}"], env=env)
        try:
            wait_for(sock, daemon)
            dialect = ["--dialect", args.dialect]
            step("load examples/demo.conf")
            failures += run(env, "setkey", *dialect, "-f", str(HERE / "demo.conf")) != 0
            step("the SAD")
            failures += run(env, "setkey", *dialect, "-D") != 0
            step("the SPD")
            failures += run(env, "setkey", *dialect, "-DP") != 0
            step("what happens to four flows")
            for flow in (("out", "10.0.0.1", "10.0.0.2", "tcp", "40000", "22"),
                         ("out", "10.0.0.1", "10.0.0.3", "tcp", "40000", "80"),
                         ("out", "10.1.2.3", "10.2.3.4", "udp", "5000", "53"),
                         ("out", "10.0.0.1", "10.0.0.4", "icmp", "8", "0")):
                failures += run(env, "pfkeyd", "lookup", *flow) != 0
            step("the daemon's counters")
            failures += run(env, "pfkeyd", "stats") != 0
        finally:
            step("stop the daemon")
            daemon.send_signal(signal.SIGTERM)
            status = daemon.wait(15)
            print(f"pfkeyd exited with status {status}; {sock} removed: {not os.path.exists(sock)}")
            failures += status != 0
    print("\ndemo: all steps succeeded" if not failures else f"\ndemo: {failures} step(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
