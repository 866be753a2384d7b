"""`pfkeyd sysctl`, `pfkeyd stats` and `pfkeyd lookup` against a running daemon.

The daemon is a real process (``python -m pfkeyd``) with a linux socket and a
freebsd one, each with its control socket beside it; the commands are real
processes too, so what is checked is what a user sees: stdout, stderr, exit status.
Readiness is the daemon's own "listening on" log line for its last socket, read
from its stderr (a blocking read, bounded by a watchdog that kills a hung daemon).

The credential check on the control socket needs a peer of another user; like
tests/server, that test runs the daemon in-process and replaces
``pfkeyd.server.peer_credentials``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio

import pfkeyd.client
import pfkeyd.server
from pfkeyd import cli, control
from pfkeyd.defaults import control_path
from pfkeyd.effects import Effect, Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import KNOBS
from pfkeyd.packet.counters import DESCRIPTIONS
from pfkeyd.server import ControlHook, Endpoint, Server
from pfkeyd.wire import (
    Address,
    Dialect,
    Direction,
    ExtType,
    IpProto,
    IpsecRequest,
    Level,
    Message,
    Mode,
    MsgType,
    Policy,
    PolicyType,
    SaType,
    SockAddr,
    encode,
)
from pfkeyd.wire.framing import MAX_DATAGRAM

ROOT = Path(__file__).resolve().parent.parent
#: A hung daemon or command must fail the test, not hang it.
TIMEOUT = 30
#: What the configuration file of every daemon here sets (non-default values).
CONFIG = "# knobs for the control tests\nnet.key.esp_keymin = 128\npfkeyd.max_sas=5000  # comment\n"


@pytest.fixture
def sockdir() -> Iterator[str]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="pfc", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pfkeyd_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pfkeyd", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=env,
    )


class Daemon:
    """``pfkeyd -s DIR/p.sock:linux -l DIR/b.sock:freebsd -f DIR/pfkeyd.conf``."""

    def __init__(self, sockdir: str, config: str = CONFIG, extra: Sequence[str] = ()) -> None:
        self.linux = f"{sockdir}/p.sock"
        self.freebsd = f"{sockdir}/b.sock"
        self.config = f"{sockdir}/pfkeyd.conf"
        Path(self.config).write_text(config)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pfkeyd",
                "-s",
                f"{self.linux}:linux",
                "-l",
                f"{self.freebsd}:freebsd",
                "-f",
                self.config,
                *extra,
            ],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.log: list[str] = []
        self.result: tuple[int, str, str] | None = None
        # A daemon that never gets ready must fail the test, not hang it.
        watchdog = threading.Timer(TIMEOUT, self.proc.kill)
        watchdog.start()
        try:
            # The sockets are set up in order, each PF_KEY socket before its control
            # socket: once the last one listens, all of them do.
            self.wait_for(f"listening on {control_path(self.freebsd)} (freebsd)")
        finally:
            watchdog.cancel()

    def wait_for(self, text: str) -> None:
        assert self.proc.stderr is not None
        while True:
            line = self.proc.stderr.readline()
            assert line, f"pfkeyd exited before logging {text!r}: {''.join(self.log)}"
            self.log.append(line)
            if text in line:
                return

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM, then (exit status, stdout, stderr); once stopped, the same again."""
        if self.result is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                out, err = self.proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
                err += "\n(killed: it did not stop on SIGTERM)"
            self.result = (self.proc.returncode, out, "".join(self.log) + err)
        return self.result


def _serve(sockdir: str) -> Iterator[Daemon]:
    d = Daemon(sockdir)
    yield d
    status, out, err = d.stop()
    assert (status, out) == (0, ""), err
    assert "Traceback" not in err


@pytest.fixture
def daemon(sockdir: str) -> Iterator[Daemon]:
    """A daemon of the test's own, for a test that changes its state."""
    yield from _serve(sockdir)


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    """One daemon for the tests that leave its state as it was (starting one costs
    more than half a second)."""
    path = tempfile.mkdtemp(prefix="pfc", dir="/tmp")
    try:
        yield from _serve(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ sysctl


def test_sysctl_reads_a_knob_set_by_the_config_file_and_a_default(shared: Daemon) -> None:
    result = pfkeyd_command("sysctl", "-s", shared.linux, "net.key.esp_keymin", "net.key.spi_minval")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "net.key.esp_keymin: 128\nnet.key.spi_minval: 256\n"


def test_sysctl_a_lists_every_knob(shared: Daemon) -> None:
    result = pfkeyd_command("sysctl", "-s", shared.freebsd, "-a")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == [spec.name for spec in KNOBS]
    assert "pfkeyd.max_sas: 5000" in lines


def test_sysctl_sets_a_knob_for_every_socket_of_the_daemon(daemon: Daemon) -> None:
    result = pfkeyd_command("sysctl", "-s", daemon.linux, "net.key.blockacq_count=3")
    assert (result.returncode, result.stdout, result.stderr) == (0, "net.key.blockacq_count: 10 -> 3\n", "")
    # One engine behind both control sockets.
    result = pfkeyd_command("sysctl", "-s", daemon.freebsd, "-n", "net.key.blockacq_count")
    assert (result.returncode, result.stdout) == (0, "3\n")


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("net.key.nonesuch", "sysctl: unknown oid 'net.key.nonesuch'\n"),
        ("net.key.spi_trycnt=lots", "sysctl: invalid integer 'lots'\n"),
        ("net.key.spi_trycnt=0", "sysctl: net.key.spi_trycnt: 0 is out of range 1..1000000\n"),
    ],
)
def test_sysctl_refuses_a_bad_name_or_value_on_stderr_with_status_1(shared: Daemon, arg: str, message: str) -> None:
    result = pfkeyd_command("sysctl", "-s", shared.linux, arg)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", message)
    unchanged = pfkeyd_command("sysctl", "-s", shared.linux, "-n", "net.key.spi_trycnt")
    assert unchanged.stdout == "1000\n"


def test_sysctl_usage_error_exits_64(shared: Daemon) -> None:
    result = pfkeyd_command("sysctl", "-s", shared.linux)
    assert (result.returncode, result.stdout) == (64, "")
    assert result.stderr.startswith("usage: pfkeyd sysctl")


def test_sysctl_finds_the_daemon_through_pfkey_socket(shared: Daemon) -> None:
    env = {**os.environ, "PFKEY_SOCKET": shared.linux}
    result = pfkeyd_command("sysctl", "-n", "net.key.esp_keymin", env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "128\n", "")
    # -s wins over the environment
    env["PFKEY_SOCKET"] = f"{shared.linux}.nowhere"
    assert pfkeyd_command("sysctl", "-s", shared.freebsd, "-n", "net.key.esp_keymin", env=env).stdout == "128\n"


@pytest.mark.parametrize("command", ["sysctl", "stats", "lookup"])
def test_s_without_a_path_is_a_usage_error(command: str, sockdir: str) -> None:
    env = {**os.environ, "PFKEY_SOCKET": f"{sockdir}/none.sock"}
    result = pfkeyd_command(command, "-s", env=env)
    assert (result.returncode, result.stdout) == (64, "")
    assert result.stderr == f"pfkeyd {command}: option -s needs a path\n"


def test_a_command_without_a_daemon_fails_with_status_1_naming_the_control_socket(sockdir: str) -> None:
    result = pfkeyd_command("stats", "-s", f"{sockdir}/none.sock")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"pfkeyd stats: {sockdir}/none.ctl: No such file or directory (the control socket (beside "
        f"{sockdir}/none.sock), from -s): pfkeyd may not be running, or it listens on another socket: "
        "choose that one with -s or PFKEY_SOCKET\n"
    )
    env = {**os.environ, "PFKEY_SOCKET": f"{sockdir}/other.sock"}
    for command in ("sysctl", "lookup"):
        result = pfkeyd_command(command, "-a" if command == "sysctl" else "in", env=env)
        assert result.returncode == 1
        assert result.stderr == (
            f"pfkeyd {command}: {sockdir}/other.ctl: No such file or directory (the control socket (beside "
            f"{sockdir}/other.sock), from PFKEY_SOCKET): pfkeyd may not be running, or it listens on another "
            "socket: choose that one with -s or PFKEY_SOCKET\n"
        )


def test_dialect_prints_the_dialect_of_each_socket(shared: Daemon) -> None:
    for path, dialect in ((shared.linux, "linux"), (shared.freebsd, "freebsd")):
        result = pfkeyd_command("dialect", "-s", path)
        assert (result.returncode, result.stdout, result.stderr) == (0, f"{dialect}\n", "")
    assert pfkeyd_command("dialect", "-s", shared.linux, "extra").returncode == 64


# ------------------------------------------------------------------ stats


def pfkey_socket(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(TIMEOUT)
    s.connect(path)
    return s


def test_stats_counts_what_the_daemon_did(daemon: Daemon) -> None:
    with pfkey_socket(daemon.freebsd) as bsd, pfkey_socket(daemon.linux) as lnx:
        # Each reply proves the daemon has admitted that client.
        bsd.send(encode(Message(MsgType.X_SPDDUMP, 0, 1, 77), Dialect.FREEBSD))  # empty: ENOENT
        assert bsd.recv(MAX_DATAGRAM)
        lnx.send(encode(Message(MsgType.FLUSH, 0, 2, 77), Dialect.LINUX))  # to both sockets
        assert lnx.recv(0xFFFF * 8)
        result = pfkeyd_command("stats", "-s", daemon.linux)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "pfkey:\n"
        "\t2 messages in\n\t\t1 FLUSH\n\t\t1 X_SPDDUMP\n"
        "\t2 messages out\n\t\t2 FLUSH\n"
        "\t1 errors\n\t\t1 ENOENT\n"
        "\t0 drops\n"
        "\t2 clients\n\t0 SAs\n\t0 policies\n"
        # the packet path's counters, all 0 until a data plane fills them
        + "".join(
            f"{proto}:\n" + "".join(f"\t0 {name}\n" for name in sorted(names)) for proto, names in DESCRIPTIONS.items()
        )
    )
    assert pfkeyd_command("stats", "-s", daemon.linux, "extra").returncode == 64


# ------------------------------------------------------------------ lookup


def spdadd_message(direction: int, src: str, dst: str, level: int) -> Message:
    def address(exttype: ExtType, text: str) -> Address:
        sa = SockAddr.parse(text)
        return Address(exttype, sa, sa.max_prefix, IpProto.ANY)

    request = IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level)
    return Message(
        MsgType.X_SPDADD,
        SaType.UNSPEC,
        exts=(
            Policy(PolicyType.IPSEC, direction, 0, 0, 0, (request,)),
            address(ExtType.ADDRESS_SRC, src),
            address(ExtType.ADDRESS_DST, dst),
        ),
    )


async def pending_events(conn: pfkeyd.client.Connection) -> list[Message]:
    """The events a connection has already received, without waiting for more."""
    got: list[Message] = []
    with trio.CancelScope() as scope:
        scope.cancel()  # the first wait for a new event ends the loop
        async for msg in conn.events():
            got.append(msg)
    return got


async def run_command(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [sys.executable, "-m", "pfkeyd", *args], cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False
        )


async def test_lookup_sends_the_acquire_to_the_registered_key_manager_only(daemon: Daemon) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            pfkeyd.client.open(daemon.linux, "linux") as km,
            pfkeyd.client.open(daemon.freebsd, "freebsd") as bystander,
        ):
            await km.register(SaType.ESP)
            added = await km.request(spdadd_message(Direction.OUTBOUND, "10.0.0.1", "10.0.0.2", Level.REQUIRE))
            assert added.policy is not None
            policy_id = added.policy.id

            result = await run_command(
                "lookup", "-s", daemon.linux, "out", "10.0.0.1", "10.0.0.2", "tcp", "40000", "22"
            )
            assert (result.returncode, result.stderr) == (0, b"")
            out = result.stdout.decode()
            lines = out.splitlines()
            assert lines[0] == f"policy {policy_id}: out ipsec priority 0x0"
            assert lines[1].startswith("  esp/transport//require (level require): no SA: ACQUIRE sent (seq ")
            assert lines[2:] == ["decision: discard (held back until an SA exists)"]
            assert lines[1].endswith(") to 1 registered key manager")
            seq = int(lines[1].split("(seq ", 1)[1].split(")", 1)[0])

            # The control command answered after the ACQUIRE was queued: it is there.
            with trio.fail_after(5):
                async with contextlib.aclosing(km.events()) as events:
                    acquire = await anext(events)
            assert (acquire.type, acquire.satype, acquire.seq) == (MsgType.ACQUIRE, SaType.ESP, seq)
            assert acquire.src is not None and str(acquire.src.addr) == "10.0.0.1"
            assert acquire.policy is not None and acquire.policy.id == policy_id
            prop = acquire.proposal
            assert prop is not None and min(c.encrypt_minbits for c in prop.combs) <= 128  # esp_keymin=128

            # The bystander got the SPDADD broadcast, and no ACQUIRE: a reply to a later
            # request would be behind it.
            with pytest.raises(pfkeyd.client.PfkeyReplyError):
                await bystander.get(SaType.ESP, "10.0.0.1", "10.0.0.2", 0x9999)
            assert [m.type for m in await pending_events(bystander)] == [MsgType.X_SPDADD]

            # While paced, the next lookup sends nothing and says so.
            again = await run_command("lookup", "-s", daemon.freebsd, "out", "10.0.0.1", "10.0.0.2")
            assert b"no SA: ACQUIRE already pending" in again.stdout
            await km.flush()  # a reply behind anything the daemon sent before it
            assert [m.type for m in await pending_events(km)] == []


async def test_lookup_of_an_unmatched_flow_and_bad_arguments(shared: Daemon) -> None:
    result = await run_command("lookup", "-s", shared.linux, "in", "2001:db8::1", "2001:db8::2", "icmp6", "128", "0")
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == (
        b"no policy matches: default policy none (net.inet.ipsec.def_policy=1)\ndecision: pass (sent in the clear)\n"
    )
    bad = await run_command("lookup", "-s", shared.linux, "sideways", "10.0.0.1", "10.0.0.2")
    assert (bad.returncode, bad.stdout) == (1, b"")
    assert bad.stderr == b"pfkeyd lookup: bad direction 'sideways' (in, out or fwd)\n"
    short = await run_command("lookup", "-s", shared.linux, "out", "10.0.0.1")
    assert (short.returncode, short.stdout) == (64, b"")
    assert short.stderr.startswith(b"usage: pfkeyd lookup")


# ------------------------------------------------------------------ files, modes, start


def test_control_sockets_are_private_like_the_pfkey_sockets_and_removed_on_stop(daemon: Daemon) -> None:
    sockdir = os.path.dirname(daemon.linux)
    paths = [daemon.linux, daemon.freebsd, control_path(daemon.linux), control_path(daemon.freebsd)]
    assert paths[2:] == [f"{sockdir}/p.ctl", f"{sockdir}/b.ctl"]
    for path in paths:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode), path
        assert stat.S_IMODE(st.st_mode) == 0o600, path
    status, _, err = daemon.stop()
    assert status == 0, err
    assert not any(os.path.exists(p) for p in paths)


def test_a_bad_config_line_stops_the_start_naming_file_and_line(sockdir: str) -> None:
    config = f"{sockdir}/bad.conf"
    Path(config).write_text("net.key.esp_keymin=128\nnet.key.nonesuch = 1\n")
    result = pfkeyd_command("-s", f"{sockdir}/p.sock:linux", "-f", config)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"pfkeyd: {config}:2: unknown oid 'net.key.nonesuch'\n"
    assert os.listdir(sockdir) == ["bad.conf"]  # no socket was made


# ------------------------------------------------------------------ credentials (in-process)


def hook(engine: KeyEngine) -> ControlHook:
    """The control hook as `pfkeyd` builds it."""

    def run(argv: Sequence[str], now: Instant, dialect: Dialect) -> tuple[int, str, str, Sequence[Effect]]:
        outcome = control.run(engine, argv, now, dialect)
        return outcome.status, outcome.out, outcome.err, outcome.effects

    return run


async def control_request(path: str, payload: bytes) -> bytes:
    """One request on a control socket; its answer, b"" when the daemon closed the
    connection unanswered (seen as EOF, EPIPE or, with the request unread, ECONNRESET)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sock:
        await sock.connect(path)
        try:
            await sock.send(payload)
            return await sock.recv(1 << 20)
        except (BrokenPipeError, ConnectionResetError):
            return b""


def argv_request(*argv: str) -> bytes:
    return json.dumps({"argv": list(argv)}).encode()


async def test_a_peer_of_another_user_is_refused_on_the_control_socket(
    sockdir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pfkeyd.server, "peer_credentials", lambda sock: (31337, 4242))
    engine = KeyEngine(rng=random.Random(1))
    path = f"{sockdir}/p.sock"
    server = Server(engine, [Endpoint(path, Dialect.LINUX)], control=hook(engine))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        answer = await control_request(control_path(path), argv_request("sysctl", "net.inet.ipsec.def_policy=0"))
        assert answer == b""
        assert engine.knobs.def_policy == 1
        assert server.statistics().refused_peers == 1

        # What the refused user sees: a message and status 1, not a silent failure.
        status = await trio.to_thread.run_sync(cli.main, ["sysctl", "-s", path, "net.inet.ipsec.def_policy=0"])
        out, err = capsys.readouterr()
        assert (status, out) == (1, "")
        assert err == (
            f"pfkeyd sysctl: {sockdir}/p.ctl: the daemon closed the connection without an answer "
            "(is this user allowed to use it?)\n"
        )
        assert engine.knobs.def_policy == 1
        assert server.statistics().refused_peers == 2
        server.stop()


async def test_an_allowed_uid_may_use_the_control_socket(sockdir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pfkeyd.server, "peer_credentials", lambda sock: (31337, 4242))
    engine = KeyEngine(rng=random.Random(1))
    path = f"{sockdir}/p.sock"
    server = Server(engine, [Endpoint(path, Dialect.LINUX)], control=hook(engine), allow_uids=[4242])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        answer = json.loads(await control_request(control_path(path), argv_request("sysctl", "net.key.esp_auth=1")))
        assert answer == {"status": 0, "out": "net.key.esp_auth: 0 -> 1\n", "err": ""}
        assert engine.knobs.esp_auth == 1
        server.stop()


@pytest.mark.parametrize("payload", [b"not json", b'{"args": []}', b'{"argv": "stats"}', b'{"argv": [1, 2]}', b"[]"])
async def test_a_malformed_control_request_is_a_usage_error_and_the_daemon_goes_on(
    sockdir: str, payload: bytes
) -> None:
    engine = KeyEngine(rng=random.Random(1))
    path = f"{sockdir}/p.sock"
    server = Server(engine, [Endpoint(path, Dialect.LINUX)], control=hook(engine))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        answer = json.loads(await control_request(control_path(path), payload))
        assert answer["status"] == 64 and answer["out"] == ""
        assert answer["err"].startswith("pfkeyd: bad control request")
        ok = json.loads(await control_request(control_path(path), argv_request("sysctl", "-n", "net.key.debug")))
        assert ok == {"status": 0, "out": "0\n", "err": ""}
        server.stop()


# ------------------------------------------------------------------ preload-path


def test_preload_path_prints_a_shared_object_that_exists(tmp_path: Path) -> None:
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler (cc, gcc, clang) to build the bridge with")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("CC", None)
    result = pfkeyd_command("preload-path", env=env)
    assert (result.returncode, result.stderr) == (0, "")
    path = Path(result.stdout.rstrip("\n"))
    assert result.stdout == f"{path}\n"
    assert path.parent == tmp_path / "pfkeyd" and path.suffix == ".so"
    assert path.read_bytes()[:4] == b"\x7fELF"
    assert pfkeyd_command("preload-path", env=env).stdout == result.stdout  # built once, then reused
    assert pfkeyd_command("preload-path", "extra", env=env).returncode == 64
