"""`pfkeyd` run as a user runs it: a real process, signals, options, configuration files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pfkeyd import cli
from pfkeyd.defaults import default_socket_path, native_dialect
from pfkeyd.knobs import Knobs
from pfkeyd.wire import Dialect, Key, Message, MsgType, decode, encode

ROOT = Path(__file__).resolve().parents[2]


class Running:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pfkeyd", *args],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # A hung daemon must fail the test, not hang it.
        self.watchdog = threading.Timer(30, self.proc.kill)
        self.watchdog.start()
        self.log: list[str] = []

    def wait_for(self, text: str) -> None:
        assert self.proc.stderr is not None
        while True:
            line = self.proc.stderr.readline()
            assert line, f"pfkeyd exited before logging {text!r}: {''.join(self.log)}"
            self.log.append(line)
            if text in line:
                return

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate()
        self.watchdog.cancel()
        return self.proc.returncode, out, "".join(self.log) + err


@pytest.fixture
def running() -> Iterator[list[Running]]:
    procs: list[Running] = []
    yield procs
    for r in procs:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()
        r.watchdog.cancel()


def ask(path: str, dialect: Dialect, msg: Message) -> Message:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(10)
        s.connect(path)
        s.send(encode(msg, dialect))
        return decode(s.recv(0xFFFF * 8), dialect, request=False)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_daemon_with_status_0_and_removes_its_sockets(
    sockdir: str, running: list[Running], signum: int
) -> None:
    main, extra = f"{sockdir}/main.sock", f"{sockdir}/bsd.sock"
    daemon = Running("-s", main, "-l", f"{extra}:freebsd")
    running.append(daemon)
    daemon.wait_for(f"listening on {extra} (freebsd)")
    assert f"listening on {main} ({native_dialect().value})" in "".join(daemon.log)
    reply = ask(extra, Dialect.FREEBSD, Message(MsgType.FLUSH, 0, 8, 99))
    assert (reply.type, reply.seq, reply.pid, reply.errno) == (MsgType.FLUSH, 8, 99, 0)

    # A second daemon on the same socket refuses to start and leaves the first alone.
    second = subprocess.run(
        [sys.executable, "-m", "pfkeyd", "-s", main], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert second.returncode == 1
    assert "another daemon is listening" in second.stderr
    assert os.path.exists(main)

    daemon.proc.send_signal(signum)
    status, out, err = daemon.finish()
    assert status == 0, err
    assert out == ""
    assert "Traceback" not in err
    assert not os.path.exists(main) and not os.path.exists(extra)


def test_a_stale_socket_from_a_dead_daemon_is_replaced(sockdir: str, running: list[Running]) -> None:
    path = f"{sockdir}/main.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dead.bind(path)
    dead.close()
    daemon = Running("-s", f"{path}:linux", "-d")
    running.append(daemon)
    daemon.wait_for("listening on")
    assert ask(path, Dialect.LINUX, Message(MsgType.FLUSH, 0, 1, 1)).errno == 0
    daemon.proc.send_signal(signal.SIGTERM)
    status, out, err = daemon.finish()
    assert status == 0 and out == ""
    assert "removed stale socket" in err
    assert "FLUSH" in err  # -d logs every message


def test_the_config_file_sets_knobs_and_reports_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "pfkeyd.conf"
    good.write_text("# pfkeyd knobs\n\nnet.key.spi_minval = 0x1000   # comment\npfkeyd.client_buffer=65536\n")
    knobs = cli.load_config(str(good), Knobs())
    assert knobs.spi_minval == 0x1000 and knobs.client_buffer == 65536

    for text, problem in [
        ("net.key.spi_minval\n", "expected name=value"),
        ("net.key.nonesuch=1\n", "unknown oid"),
        ("net.key.spi_trycnt=0\n", "out of range"),
        ("net.key.spi_trycnt=lots\n", "invalid integer"),
    ]:
        bad = tmp_path / "bad.conf"
        bad.write_text("# first line\n" + text)
        with pytest.raises(ValueError, match=rf"^{bad}:2: .*{problem}"):
            cli.load_config(str(bad), Knobs())


def test_a_bad_config_file_exits_1_naming_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("net.key.spi_trycnt=0\n")
    assert cli.main(["-s", str(tmp_path / "x.sock"), "-f", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"pfkeyd: {bad}:1: ")
    assert cli.main(["-s", str(tmp_path / "x.sock"), "-f", str(tmp_path / "missing.conf")]) == 1
    assert "missing.conf" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["-l", "/tmp/x.sock"],  # no dialect
        ["-l", "/tmp/x.sock:netbsd"],  # no such dialect
        ["-l", "/tmp/x.sock:Linux"],  # dialect names are lower case
        ["-s", "/tmp/x.sock:openbsd"],  # not a socket named "x.sock:openbsd"
        ["-s", "/tmp/x.sock:Linux"],
        ["-s", "x.sock:"],
        ["--group", "no-such-group-here"],
        ["--allow-uid", "no-such-user-here"],
        ["-s", "/tmp/a.sock", "-l", "/tmp/a.sock:linux"],
        ["--frobnicate"],
        ["stray"],
    ],
)
def test_usage_errors_exit_64_with_the_usage_on_stderr(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args) == 64
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: pfkeyd")
    assert "\npfkeyd: " in err


def test_a_colon_in_a_directory_name_is_part_of_the_path() -> None:
    split = cli._split_endpoint
    assert split("/tmp/a:b/x.sock", dialect_required=False) == ("/tmp/a:b/x.sock", native_dialect())
    assert split("/tmp/a:b/x.sock:freebsd", dialect_required=False) == ("/tmp/a:b/x.sock", Dialect.FREEBSD)
    assert split("a:b.sock:linux", dialect_required=True) == ("a:b.sock", Dialect.LINUX)
    with pytest.raises(cli._UsageError, match="unknown dialect 'openbsd'"):
        split("/tmp/x.sock:openbsd", dialect_required=False)


def test_default_socket_path_and_dialect() -> None:
    assert default_socket_path({}, 0) == "/run/pfkeyd.sock"
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000) == "/run/user/1000/pfkeyd.sock"
    assert default_socket_path({}, 1000) is None
    assert native_dialect("linux") is Dialect.LINUX
    assert native_dialect("freebsd14") is Dialect.FREEBSD


async def test_the_debug_knob_traces_every_message_at_run_time_without_key_material(
    nursery: trio.Nursery, sockdir: str, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from pfkeyd.engine import KeyEngine
    from tests.server.peers import add_msg, start_daemon

    caplog.set_level(logging.INFO, logger="pfkeyd.server")
    engine = KeyEngine()
    d = await start_daemon(nursery, sockdir, engine)
    peer = await d.connect(Dialect.LINUX)
    await peer.request(add_msg(0x5001))
    assert "ADD" not in caplog.text  # off by default
    engine.set_knob("net.inet.ipsec.debug", 1)  # what `pfkeyd sysctl net.inet.ipsec.debug=1` does
    msg = add_msg(0x5002)
    await peer.request(msg)
    assert "ADD satype 3" in caplog.text and "KEY_AUTH" in caplog.text
    for key in (e for e in msg.exts if isinstance(e, Key)):
        assert key.data.hex() not in caplog.text
    engine.set_knob("net.inet.ipsec.debug", 0)
    caplog.clear()
    await peer.request(add_msg(0x5003))
    assert "ADD" not in caplog.text


def control(path: str, *argv: str) -> dict[str, object]:
    import json

    from pfkeyd.defaults import control_path

    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(10)
        s.connect(control_path(path))
        s.send(json.dumps({"argv": list(argv)}).encode())
        answer = json.loads(s.recv(1 << 20))
    assert isinstance(answer, dict)
    return answer


def test_sighup_rereads_the_config_file_logs_the_changes_and_keeps_serving_and_state(
    sockdir: str, running: list[Running]
) -> None:
    from tests.server.peers import add_msg, sa_msg

    conf = Path(sockdir) / "pfkeyd.conf"
    conf.write_text("net.key.esp_auth=0\npfkeyd.max_sas=1000\n")
    path = f"{sockdir}/main.sock"
    daemon = Running("-s", f"{path}:linux", "-f", str(conf))
    running.append(daemon)
    daemon.wait_for("listening on")
    assert ask(path, Dialect.LINUX, add_msg(0x7001)).errno == 0
    assert control(path, "sysctl", "net.key.spi_trycnt=7")["status"] == 0  # a run-time change

    conf.write_text("# tuned\nnet.key.esp_auth=1\npfkeyd.max_sas=1000\nnet.key.blockacq_count = 3\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("SIGHUP received")
    assert daemon.log[-1].rstrip().endswith(f"re-read {conf}: net.key.blockacq_count 10 -> 3, net.key.esp_auth 0 -> 1")
    answer = control(
        path, "sysctl", "-n", "net.key.esp_auth", "net.key.blockacq_count", "net.key.spi_trycnt", "pfkeyd.max_sas"
    )
    assert answer["out"] == "1\n3\n7\n1000\n"  # the file over the current values
    # Still serving, with its state: the SA added before the signal is there.
    assert ask(path, Dialect.LINUX, sa_msg(MsgType.GET, 0x7001)).errno == 0

    # A bad file is reported and changes nothing.
    conf.write_text("net.key.esp_auth=0\nnet.key.spi_trycnt=lots\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("SIGHUP received")
    assert f"{conf}:2: invalid integer 'lots'; no knob changed" in daemon.log[-1]
    assert control(path, "sysctl", "-n", "net.key.esp_auth")["out"] == "1\n"

    conf.write_text("net.key.esp_auth=1\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("SIGHUP received")
    assert daemon.log[-1].rstrip().endswith(f"re-read {conf}: no knob changed")

    daemon.proc.send_signal(signal.SIGTERM)
    status, out, err = daemon.finish()
    assert status == 0 and out == "" and "Traceback" not in err
    assert not os.path.exists(path)


def test_sighup_without_a_config_file_changes_nothing_and_keeps_serving(sockdir: str, running: list[Running]) -> None:
    path = f"{sockdir}/main.sock"
    daemon = Running("-s", f"{path}:freebsd")
    running.append(daemon)
    daemon.wait_for("listening on")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("SIGHUP received; no configuration file (-f) to re-read")
    assert ask(path, Dialect.FREEBSD, Message(MsgType.FLUSH, 0, 3, 1)).errno == 0
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.finish()[0] == 0
