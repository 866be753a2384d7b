"""systemd integration: sd_notify readiness and socket activation.

The service manager is played by the test: a datagram socket it reads stands for
NOTIFY_SOCKET, and the listening sockets are made by the test and handed to a
real daemon process as systemd does (descriptors from 3 on, LISTEN_PID naming
the daemon's pid, LISTEN_FDS, LISTEN_FDNAMES): a small launcher moves the
descriptors into place, sets LISTEN_PID to its own pid and execs the daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfkeyd import systemd
from pfkeyd.systemd import ActivationError, Notifier, Passed, Planned, listen_fds, plan_sockets
from pfkeyd.wire import Dialect, Message, MsgType, SaType, decode, encode

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30

#: argv: names (colon separated), then the descriptors to pass, then the daemon's arguments after "--".
LAUNCHER = """
import fcntl, os, sys
names, rest = sys.argv[1], sys.argv[2:]
cut = rest.index("--")
fds, args = [int(f) for f in rest[:cut]], rest[cut + 1:]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names)
os.execv(sys.executable, [sys.executable, "-m", "pfkeyd", *args])
"""


# ------------------------------------------------------------------ pure parts


def test_listen_fds_reads_the_environment_for_this_process_only() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "linux:freebsd"}
    assert listen_fds(env, 42) == [(3, "linux"), (4, "freebsd")]
    assert listen_fds(env, 43) == []
    assert listen_fds({}, 42) == []
    assert listen_fds({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, 42) == [(3, "unknown")]
    with pytest.raises(ActivationError, match="LISTEN_FDNAMES names 2 sockets, LISTEN_FDS=3"):
        listen_fds({**env, "LISTEN_FDS": "3"}, 42)
    with pytest.raises(ActivationError, match="not a number"):
        listen_fds({**env, "LISTEN_FDS": "-1"}, 42)


def test_plan_pairs_each_control_socket_with_its_pfkey_socket() -> None:
    passed = [
        Passed(3, "linux", "/run/p.ctl", ""),
        Passed(4, "linux", "/run/p.sock", ""),
        Passed(5, "freebsd", "/run/b.sock", ""),
    ]
    assert plan_sockets(passed) == [
        Planned("/run/p.sock", Dialect.LINUX, 4, 3),
        Planned("/run/b.sock", Dialect.FREEBSD, 5, None),
    ]


@pytest.mark.parametrize(
    ("passed", "message"),
    [
        ([Passed(3, "pfkeyd.socket", "/run/p.sock", "")], "its name must be its dialect"),
        ([Passed(3, "linux", "", "")], "not bound to a path"),
        ([Passed(3, "linux", "/run/p.sock", "not listening")], "not listening; expected a listening"),
        ([Passed(3, "linux", "/run/p.ctl", "")], "a control socket without its PF_KEY socket"),
        (
            [Passed(3, "linux", "/run/p.sock", ""), Passed(4, "freebsd", "/run/p.ctl", "")],
            "named freebsd, its PF_KEY socket linux",
        ),
        ([Passed(3, "linux", "/run/p.sock", ""), Passed(4, "linux", "/run/p.sock", "")], "passed twice"),
    ],
)
def test_plan_refuses_what_it_cannot_serve(passed: list[Passed], message: str) -> None:
    with pytest.raises(ActivationError, match=message):
        plan_sockets(passed)


@pytest.fixture
def tmp() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="pfs", dir="/tmp")  # AF_UNIX paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def listening(path: str, kind: int = socket.SOCK_SEQPACKET) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(path)
    if kind != socket.SOCK_DGRAM:
        s.listen()
    return s


def test_inspect_tells_what_a_descriptor_is(tmp: str) -> None:
    with (
        listening(f"{tmp}/a.sock") as good,
        listening(f"{tmp}/b.sock", socket.SOCK_STREAM) as stream,
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as unbound,
    ):
        unbound.bind(f"{tmp}/c.sock")
        assert systemd.inspect(good.fileno(), "linux") == Passed(good.fileno(), "linux", f"{tmp}/a.sock", "")
        assert "type SOCK_STREAM" in systemd.inspect(stream.fileno(), "linux").usable
        assert systemd.inspect(unbound.fileno(), "linux").usable == "not listening"
        fd = os.open(tmp, os.O_RDONLY)
        try:
            assert systemd.inspect(fd, "linux").usable.startswith("not a socket")
        finally:
            os.close(fd)
        good.getsockname()  # still open: inspect took nothing over


def receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    assert data.endswith("\n")
    return dict(line.split("=", 1) for line in data.splitlines())


@pytest.mark.parametrize("abstract", [False, True])
def test_the_notifier_sends_key_value_lines(tmp: str, abstract: bool) -> None:
    address = f"\0pfkeyd-test-{os.getpid()}" if abstract else f"{tmp}/notify"
    with listening(address, socket.SOCK_DGRAM) as manager:
        manager.settimeout(TIMEOUT)
        env = {"NOTIFY_SOCKET": "@" + address[1:] if abstract else address, "OTHER": "x"}
        notifier = Notifier.from_environment(env)
        assert env == {"OTHER": "x"}  # not passed on to children
        assert notifier.notify(READY=1, STATUS="serving")
        assert receive(manager) == {"READY": "1", "STATUS": "serving"}


def test_no_manager_no_notification_and_a_gone_one_is_only_logged(tmp: str, caplog: pytest.LogCaptureFixture) -> None:
    assert not Notifier(None).notify(READY=1)
    assert not Notifier(f"{tmp}/nobody").notify(READY=1)
    assert "cannot notify the service manager" in caplog.text


# ------------------------------------------------------------------ a real daemon


class Activated:
    """A daemon started with ``passed`` sockets (name, socket) and NOTIFY_SOCKET."""

    def __init__(self, tmp: str, passed: list[tuple[str, socket.socket]], *args: str) -> None:
        self.manager = listening(f"{tmp}/notify", socket.SOCK_DGRAM)
        self.manager.settimeout(TIMEOUT)
        fds = [s.fileno() for _, s in passed]
        env = {**os.environ, "NOTIFY_SOCKET": f"{tmp}/notify"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, ":".join(n for n, _ in passed), *map(str, fds), "--", *args],
            cwd=ROOT,
            env=env,
            pass_fds=fds,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def notification(self) -> dict[str, str]:
        try:
            return receive(self.manager)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(self.proc.communicate()[1]) from None

    def stop(self, *, signalled: bool = False) -> tuple[int, str]:
        if self.proc.poll() is None and not signalled:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.manager.close()
        return self.proc.returncode, err


def pfkeyd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pfkeyd", *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def test_an_activated_daemon_serves_the_passed_sockets_and_tells_the_manager(tmp: str) -> None:
    with listening(f"{tmp}/p.sock") as lnx, listening(f"{tmp}/p.ctl") as ctl, listening(f"{tmp}/b.sock") as bsd:
        daemon = Activated(tmp, [("linux", ctl), ("linux", lnx), ("freebsd", bsd)])
        try:
            ready = daemon.notification()
            assert ready == {"READY": "1", "STATUS": f"serving on {tmp}/p.sock (linux), {tmp}/b.sock (freebsd)"}
            # Ready means every socket answers: the passed ones, and the control
            # socket the daemon made itself for the freebsd socket.
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
                client.settimeout(TIMEOUT)
                client.connect(f"{tmp}/p.sock")
                client.send(encode(Message(MsgType.REGISTER, SaType.ESP, 1, 7), Dialect.LINUX))
                reply = decode(client.recv(0xFFFF * 8), Dialect.LINUX)
                assert (reply.type, reply.seq, reply.errno) == (MsgType.REGISTER, 1, 0)
            assert pfkeyd("dialect", "-s", f"{tmp}/p.sock").stdout == "linux\n"
            assert pfkeyd("dialect", "-s", f"{tmp}/b.sock").stdout == "freebsd\n"
            status, err = daemon.stop()
            assert status == 0, err
        finally:
            daemon.stop()
    assert "passed in" in err
    # The passed socket files are systemd's and stay; the one the daemon made goes.
    assert sorted(os.listdir(tmp)) == ["b.sock", "notify", "p.ctl", "p.sock"]


def test_the_daemon_says_stopping_on_sigterm_and_reloads_on_sighup(tmp: str) -> None:
    with listening(f"{tmp}/p.sock") as lnx:
        daemon = Activated(tmp, [("linux", lnx)])
        try:
            assert daemon.notification()["READY"] == "1"
            daemon.proc.send_signal(signal.SIGHUP)
            reloading = daemon.notification()
            assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
            assert daemon.notification()["READY"] == "1"
            daemon.proc.send_signal(signal.SIGTERM)
            assert daemon.notification() == {"STOPPING": "1", "STATUS": "stopping (SIGTERM)"}
            status, err = daemon.stop(signalled=True)
            assert status == 0, err
        finally:
            daemon.stop()


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("pfkeyd.socket", listening, "its name must be its dialect, freebsd or linux"),
        ("linux", lambda p: listening(p, socket.SOCK_STREAM), "type SOCK_STREAM"),
    ],
)
def test_a_daemon_refuses_passed_sockets_it_cannot_serve(tmp: str, name: str, make: object, message: str) -> None:
    assert callable(make)
    with make(f"{tmp}/p.sock") as sock:
        daemon = Activated(tmp, [(name, sock)])
        status, err = daemon.stop(signalled=True)  # it exits by itself
    assert status == 1
    assert f"pfkeyd: socket activation: passed socket 3 ({name}, {tmp}/p.sock): " in err
    assert message in err


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="no systemd-socket-activate")
def test_systemd_socket_activate_starts_a_working_daemon(tmp: str) -> None:
    """systemd's own launcher, as an independent check of the protocol."""
    with listening(f"{tmp}/notify", socket.SOCK_DGRAM) as manager:
        manager.settimeout(TIMEOUT)
        proc = subprocess.Popen(
            [
                "systemd-socket-activate",
                "--seqpacket",
                "-l",
                f"{tmp}/p.sock",
                "--fdname=freebsd",
                "-E",
                f"NOTIFY_SOCKET={tmp}/notify",
                sys.executable,
                "-m",
                "pfkeyd",
            ],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stderr is not None
            assert "Listening on" in proc.stderr.readline()
            # systemd-socket-activate starts the daemon at the first connection.
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
                client.settimeout(TIMEOUT)
                client.connect(f"{tmp}/p.sock")
                assert receive(manager)["READY"] == "1"
                client.send(encode(Message(MsgType.REGISTER, SaType.ESP, 1, 7), Dialect.FREEBSD))
                reply = decode(client.recv(0xFFFF * 8), Dialect.FREEBSD)
                assert (reply.type, reply.errno) == (MsgType.REGISTER, 0)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err


# ------------------------------------------------------------------ the example units


def unit(name: str) -> dict[str, list[str]]:
    """``Key=value`` settings of an example unit file, every value of a repeated key."""
    out: dict[str, list[str]] = {}
    for line in (ROOT / "examples" / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_the_example_units_fit_the_daemon() -> None:
    from pfkeyd import cli

    service, sock = unit("pfkeyd.service"), unit("pfkeyd.socket")
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["Requires"] == ["pfkeyd.socket"] and sock["Service"] == ["pfkeyd.service"]
    for exec_start in service["ExecStart"]:
        program, *args = exec_start.split()
        assert program.endswith("/pfkeyd")
        cli._daemon_parser().parse_args(args)
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # The socket unit's sockets are what the daemon plans from them.
    name, paths = sock["FileDescriptorName"], sock["ListenSequentialPacket"]
    plan = plan_sockets([Passed(3 + i, name[0], path, "") for i, path in enumerate(paths)])
    assert plan == [Planned("/run/pfkeyd.sock", Dialect.LINUX, 4, 3)] or plan == [
        Planned("/run/pfkeyd.sock", Dialect.LINUX, 3, 4)
    ]
    assert sock["SocketMode"] == ["0600"]
