"""An unmodified Linux-built PF_KEY program (tests/bridge/pfkey_client.c) under the
preload bridge, against a real pfkeyd and against a deliberately slow peer.

What is checked is what real-clients.md §1 and §2 say a bridge must handle.
"""

from __future__ import annotations

import contextlib
import errno
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.bridge.support import DaemonProcess

MSG_NOSIGNAL = 0x4000
SESSION_TIMEOUT = 60.0

#: The "ok" lines the session must print before READY, in this order.
LIVE_STEPS = [
    "socket",
    "register-peek",
    "register",
    "register-read",
    "register-recvfrom",
    "add",
    "get",
    "add-many",
    "dump",
    "spdadd",
    "ip-ipsec-policy",
    "other-setsockopt",
    "udp",
    "pipe",
    "regular",
    "pfkey",
    "reused-pipe",
    "reused-udp",
    "socket-flags",
]
DEAD_STEPS = [
    "dead-send",
    "dead-write",
    "dead-sendmsg",
    "dead-sendto",
    "dead-drain",
    "dead-recv",
    "dead-peek",
    "dead-recvfrom",
    "dead-read",
    "dead-recvmsg",
    "dead-recv-empty",
    "survived",
]


@contextmanager
def watchdog(proc: subprocess.Popen[str], seconds: float) -> Iterator[None]:
    """Kill ``proc`` if the test is still waiting on it after ``seconds``."""
    timer = threading.Timer(seconds, proc.kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def steps(lines: list[str]) -> list[str]:
    return [line.split()[1] for line in lines if line.startswith("ok ")]


def test_client_is_built_with_the_fortify_entry_points(client: Path) -> None:
    # Without these the bridge's __recv_chk/__recvfrom_chk/__read_chk would go untested.
    binary = client.read_bytes()
    for name in (b"__recv_chk", b"__recvfrom_chk", b"__read_chk"):
        assert name in binary, f"the test client does not call {name.decode()}"


def test_unmodified_client_session_through_the_bridge(
    client: Path, client_env: dict[str, str], bridge: Path, spy: Path, pfkeyd: DaemonProcess, sockdir: Path
) -> None:
    # The daemon answers in well under a millisecond; the generous wait only keeps a
    # loaded CI machine from failing the immediate reads.
    env = dict(client_env, PFKEY_SOCKET=str(pfkeyd.path), LD_PRELOAD=f"{bridge} {spy}", PFKEY_PRELOAD_WAIT_MS="5000")
    scratch = sockdir / "plain-file"
    proc = subprocess.Popen(
        [str(client), "session", str(scratch)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    live: list[str] = []
    with watchdog(proc, SESSION_TIMEOUT):
        for line in proc.stdout:
            if line.strip() == "READY":
                break
            live.append(line.rstrip("\n"))
        else:
            proc.wait()
            raise AssertionError(
                f"the client stopped before READY (exit {proc.returncode}):\n"
                + "\n".join(live)
                + "\n"
                + (proc.stderr.read() if proc.stderr else "")
            )
        assert steps(live) == LIVE_STEPS, "\n".join(live)

        # Mid-session, the daemon dies; the client then tries to talk to it.
        pfkeyd.kill()
        out, err = proc.communicate("go\n", timeout=SESSION_TIMEOUT)
    # Linux raises no SIGPIPE on SOCK_SEQPACKET whatever the flags, so this alone
    # could not fail; the send spy below checks the MSG_NOSIGNAL that guarantees it
    # on any socket type.
    assert proc.returncode != -signal.SIGPIPE, "the client was killed by SIGPIPE"
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out}\n{err}"
    dead = out.splitlines()
    assert steps(dead) == DEAD_STEPS, out
    for line in dead[:4]:
        assert line.split()[2] in ("EPIPE", "ECONNRESET"), line

    assert "ok dump 1000 entries ending at seq 0" in live
    assert any(line.startswith("ok spdadd priority 0x80000100 ") for line in live)
    assert scratch.read_bytes() == b"hello in a file\0"

    # The send spy sat behind the bridge: every send on the PF_KEY socket carried
    # MSG_NOSIGNAL (send, write, sendto and sendmsg all), other sockets' flags are
    # the program's own.
    pfkey_fd = int(live[0].split("fd=")[1])
    calls = [(m[1], int(m[2]), int(m[3], 16)) for m in re.finditer(r"^spy (\w+) fd=(\d+) flags=(\w+)$", err, re.M)]
    on_pfkey = [c for c in calls if c[1] == pfkey_fd]
    assert len(on_pfkey) >= 1000 + 8, err[-2000:]
    assert {c[0] for c in on_pfkey} == {"send", "sendmsg"}
    assert all(flags & MSG_NOSIGNAL for _, _, flags in on_pfkey)
    others = [c for c in calls if c[1] != pfkey_fd]
    assert others and all(flags == 0 for _, _, flags in others), others
    assert "pfkeyd preload" not in err
    assert "Traceback" not in pfkeyd.log.read_text()


class SlowPeer:
    """A PF_KEY 'daemon' that answers the first request after ``delay`` seconds:
    the header echoed, as a header-only REGISTER reply."""

    def __init__(self, path: Path, delay: float) -> None:
        self.delay = delay
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.listener.settimeout(SESSION_TIMEOUT)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(SESSION_TIMEOUT)
            request = conn.recv(65536)
            time.sleep(self.delay)  # the latency being simulated, not a synchronisation
            reply = bytearray(request[:16])
            reply[4:6] = (2).to_bytes(2, "little")
            # The client may be gone already (it stops waiting in the bounded test).
            with contextlib.suppress(OSError):
                conn.send(bytes(reply))
                conn.recv(1)  # until the client closes

    def close(self) -> None:
        self.thread.join(SESSION_TIMEOUT)
        self.listener.close()


def run_peek(client: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(client), "peek"], env=env, capture_output=True, text=True, timeout=SESSION_TIMEOUT, check=False
    )


def test_nonblocking_peek_right_after_send_waits_for_a_slow_daemon(
    client: Path, client_env: dict[str, str], sockdir: Path
) -> None:
    path = sockdir / "slow.sock"
    peer = SlowPeer(path, delay=0.3)
    try:
        result = run_peek(client, dict(client_env, PFKEY_SOCKET=str(path), PFKEY_PRELOAD_WAIT_MS="5000"))
    finally:
        peer.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("peek ok")


def test_the_wait_for_a_reply_is_bounded(client: Path, client_env: dict[str, str], sockdir: Path) -> None:
    path = sockdir / "slow.sock"
    peer = SlowPeer(path, delay=0.5)
    try:
        result = run_peek(client, dict(client_env, PFKEY_SOCKET=str(path), PFKEY_PRELOAD_WAIT_MS="50"))
    finally:
        peer.close()
    # The reply comes 500 ms after the request; the bridge waits only 50 ms.
    assert result.returncode == 3, result.stdout + result.stderr
    ms = int(result.stdout.split()[3])
    assert ms < 450, result.stdout


def test_missing_daemon_socket_makes_socket_fail_with_enoent(
    client: Path, client_env: dict[str, str], sockdir: Path
) -> None:
    missing = sockdir / "nobody-here.sock"
    result = subprocess.run(
        [str(client), "open"],
        env=dict(client_env, PFKEY_SOCKET=str(missing)),
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"socket -1 {errno.errorcode[errno.ENOENT]}\n"
    assert f"pfkeyd preload: connect {missing}: No such file or directory" in result.stderr
