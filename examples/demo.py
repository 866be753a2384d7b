"""The main job of this checkout: pfkeyd and setkey at work, end to end.

    python3 dev.py demo            (or: .venv/bin/python examples/demo.py [--dialect freebsd])

1. starts pfkeyd on a private socket in a temporary directory (this host,
   10.0.0.1), and a second pfkeyd for the peer 10.0.0.4;
2. loads examples/demo.conf with ``setkey -f`` (SAs and policies).  setkey is not
   told the socket's dialect: it asks the daemon.  Its first message is an
   SADB_REGISTER, whose reply lists the algorithms and key sizes the daemon
   supports: setkey holds the script's ``-E``/``-A`` algorithms and keys against
   that list before it sends anything, as ipsec-tools' setkey does;
3. prints ``setkey -D`` and ``setkey -DP``, in the format of the dialect's setkey;
4. starts the example key manager (examples/keymgr.py), which registers for ESP
   on this host, as an IKE daemon would;
5. asks the daemon, through ``pfkeyd lookup``, what happens to four flows: two its
   SAs protect (transport and tunnel), one a discard policy drops, and one for
   which no SA exists yet: the daemon holds the packet back and sends an
   SADB_ACQUIRE to the registered key manager, which answers it (GETSPI, UPDATE
   and ADD on both hosts);
6. asks once more about that flow, which the new SAs now protect;
7. prints ``pfkeyd stats`` and stops the key manager and the daemons.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: How long the demo waits for a daemon to listen or the key manager to act, in seconds.
WAIT = 15
#: The flow no SA serves when the demo starts (demo.conf's last policy).
ACQUIRED_FLOW = ("out", "10.0.0.1", "10.0.0.4", "icmp", "8", "0")


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def run(env: dict[str, str], *argv: str) -> int:
    print(f"$ {' '.join(argv)}", flush=True)
    return subprocess.run([sys.executable, "-m", *argv], env=env, check=False).returncode


def wait_for(path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT
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


@contextmanager
def daemon(env: dict[str, str], sock: str, dialect: str, what: str) -> Iterator[subprocess.Popen[bytes]]:
    """``pfkeyd -s sock:dialect``, stopped with SIGTERM at the end."""
    print(f"$ pfkeyd -s {sock}:{dialect}    # {what}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "pfkeyd", "-s", f"{sock}:{dialect}"], env=env)
    try:
        wait_for(sock, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        status = proc.wait(WAIT)
        print(f"pfkeyd ({what}) exited with status {status}; {sock} removed: {not os.path.exists(sock)}", flush=True)
        if status != 0:
            raise SystemExit(f"demo: pfkeyd ({what}) exited with status {status}")


class KeyManagerProcess:
    """examples/keymgr.py as a child process, its output read line by line."""

    def __init__(self, env: dict[str, str], host_a: str, host_b: str) -> None:
        argv = [sys.executable, str(HERE / "keymgr.py"), host_a, host_b]
        print(f"$ python examples/keymgr.py {host_a} {host_b} &", flush=True)
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, words: str) -> str:
        """Print the key manager's lines up to the first that contains ``words``."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SystemExit(f"demo: the key manager did not say {words!r} in {WAIT} s") from None
            if line is None:
                raise SystemExit(f"demo: the key manager exited (status {self.proc.wait()}) before {words!r}")
            print(line, end="", flush=True)
            if words in line:
                return line

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # keymgr stops cleanly, status 0
        status = self.proc.wait(WAIT)
        while (line := self.lines.get(timeout=WAIT)) is not None:  # what it said last
            print(line, end="", flush=True)
        return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialect", choices=("linux", "freebsd"), default="linux")
    args = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="pfkeyd-demo.", dir="/tmp") as tmp:
        sock, peer = f"{tmp}/pfkeyd.sock", f"{tmp}/peer.sock"
        env = dict(os.environ, PFKEY_SOCKET=sock, TZ="UTC")
        step(f"start pfkeyd on {sock} ({args.dialect} dialect), and one for the peer 10.0.0.4")
        with daemon(env, sock, args.dialect, "this host"), daemon(env, peer, args.dialect, "the peer"):
            step("load examples/demo.conf")
            print(
                "(setkey asks the daemon which dialect its socket speaks; then, before the script,\n"
                " it sends an SADB_REGISTER: the reply lists the algorithms and key sizes the daemon\n"
                " supports, and setkey checks the script's -E and -A algorithms and keys against it.)",
                flush=True,
            )
            failures += run(env, "setkey", "-f", str(HERE / "demo.conf")) != 0
            step("the SAD")
            failures += run(env, "setkey", "-D") != 0
            step("the SPD")
            failures += run(env, "setkey", "-DP") != 0
            step("a key manager registers for ESP on this host, as an IKE daemon would")
            keymgr = KeyManagerProcess(env, sock, peer)
            try:
                keymgr.expect("registered")
                step("what happens to four flows")
                for flow in (
                    ("out", "10.0.0.1", "10.0.0.2", "tcp", "40000", "22"),
                    ("out", "10.0.0.1", "10.0.0.3", "tcp", "40000", "80"),
                    ("out", "10.1.2.3", "10.2.3.4", "udp", "5000", "53"),
                    ACQUIRED_FLOW,
                ):
                    failures += run(env, "pfkeyd", "lookup", *flow) != 0
                step("the key manager answers the ACQUIRE: an SA each way, on both hosts")
                keymgr.expect("10.0.0.1 -> 10.0.0.4")
                keymgr.expect("10.0.0.4 -> 10.0.0.1")
                step("the held-back flow again: now it is protected")
                failures += run(env, "pfkeyd", "lookup", *ACQUIRED_FLOW) != 0
                step("the daemon's counters")
                failures += run(env, "pfkeyd", "stats") != 0
            finally:
                step("stop the key manager and the daemons")
                status = keymgr.stop()
                print(f"keymgr exited with status {status}", flush=True)
                failures += status != 0
    print("\ndemo: all steps succeeded" if not failures else f"\ndemo: {failures} step(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
