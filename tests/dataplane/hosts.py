"""Two hosts, each a namespace running a real ``pfkeyd --dataplane``, for the end-to-end tests.

``hosts(pair)`` starts the daemons (one per namespace, each on a socket in a private
temporary directory), waits until each answers on its control socket, and stops
them with SIGTERM at the end, checking that each exited 0 and left no link, rule or
route of its own behind.  ``Host.setkey(script)`` runs ``setkey -f`` against it,
``Host.traffic(...)`` runs tests/dataplane/traffic.py in its namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.netns import Namespace, Pair

TRAFFIC = str(Path(__file__).with_name("traffic.py"))
ROOT = str(Path(__file__).resolve().parents[2])


class Host:
    def __init__(self, ns: Namespace, name: str, workdir: str, extra: tuple[str, ...] = ()) -> None:
        self.ns = ns
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.mkdir(self.dir)
        self.sock = os.path.join(self.dir, "pfkeyd.sock")
        self.log = open(os.path.join(self.dir, "log"), "w+")  # noqa: SIM115
        self.before = ns.snapshot()
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.env = env
        self.proc = subprocess.Popen(
            ns.argv(sys.executable, "-m", "pfkeyd", "-s", f"{self.sock}:freebsd", "--dataplane", *extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        # The daemon logs "listening on <control socket>" once it serves: wait for that
        # line (or the end of its output), copying everything to the log file.
        self._ready = threading.Event()
        self._copier = threading.Thread(target=self._copy, daemon=True)
        self._copier.start()
        if not self._ready.wait(30) or self.proc.poll() is not None:
            self.proc.kill()
            self._copier.join(5)
            raise RuntimeError(f"pfkeyd in {name} did not start:\n{self.output()}")

    def _copy(self) -> None:
        assert self.proc.stderr is not None
        ctl = self.sock[: -len(".sock")] + ".ctl"
        for line in self.proc.stderr:
            self.log.write(line)
            self.log.flush()
            if f"listening on {ctl}" in line:
                self._ready.set()
        self._ready.set()  # the daemon ended: start() looks at why

    def output(self) -> str:
        if self.proc.poll() is not None:
            self._copier.join(5)
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def control(self, *argv: str) -> str:
        ctl = self.sock[: -len(".sock")] + ".ctl"
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(10)
            s.connect(ctl)
            s.send(json.dumps({"argv": list(argv)}).encode())
            answer = json.loads(s.recv(4 << 20))
        if answer["status"]:
            raise RuntimeError(f"{argv}: {answer}")
        return str(answer["out"])

    def stats(self) -> dict[str, Any]:
        return dict(json.loads(self.control("stats", "--json")))

    def sysctl(self, setting: str) -> None:
        self.control("sysctl", setting)

    def setkey(self, script: str, *args: str) -> str:
        path = os.path.join(self.dir, "setkey.conf")
        with open(path, "w") as f:
            f.write(script)
        r = subprocess.run(
            [sys.executable, "-m", "setkey", "-f", path, *args],
            capture_output=True,
            text=True,
            check=False,
            env=dict(self.env, PFKEY_SOCKET=self.sock),
            timeout=30,
        )
        if r.returncode:
            raise RuntimeError(f"setkey -f failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r.stdout

    def setkey_args(self, *args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "setkey", *args],
            capture_output=True,
            text=True,
            check=False,
            env=dict(self.env, PFKEY_SOCKET=self.sock),
            timeout=30,
        )
        if r.returncode:
            raise RuntimeError(f"setkey {args} failed: {r.stderr}")
        return r.stdout

    def traffic(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.ns.run(sys.executable, TRAFFIC, *argv, check=False, timeout=timeout)

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.ns.argv(sys.executable, TRAFFIC, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def under_bridge(self, program: str, *args: str) -> subprocess.Popen[str]:
        """Python ``program`` (with ``args``) run in the namespace under the PF_KEY
        bridge (``pfkeyd exec``) against this daemon: its IP_IPSEC_POLICY calls reach
        the daemon."""
        argv = self.ns.argv(
            sys.executable, "-m", "pfkeyd", "exec", "--socket", self.sock, "--", sys.executable, "-c", program, *args
        )
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._copier.join(10)
        return self.proc.returncode


@contextlib.contextmanager
def hosts(
    pair: Pair, *extra: str, extra_a: tuple[str, ...] = (), extra_b: tuple[str, ...] = ()
) -> Iterator[tuple[Host, Host]]:
    """Start pfkeyd with the data plane in both namespaces (see the module doc)."""
    work = tempfile.mkdtemp(prefix="pfkeyd-dp-")
    started: list[Host] = []
    try:
        a = Host(pair.a, "a", work, extra + extra_a)
        started.append(a)
        b = Host(pair.b, "b", work, extra + extra_b)
        started.append(b)
        yield a, b
        for h in started:
            rc = h.stop()
            out = h.output()
            assert rc == 0, f"pfkeyd in {h.name} exited {rc}:\n{out}"
            assert h.ns.snapshot() == h.before, f"pfkeyd in {h.name} left links, rules or routes behind"
    finally:
        for h in started:
            h.stop()
            h.log.close()
        shutil.rmtree(work, ignore_errors=True)
