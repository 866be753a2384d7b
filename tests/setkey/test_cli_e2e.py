"""setkey against a real pfkeyd over its sockets, in both dialects.

Most tests run the daemon in a thread of the test process (clihelp.ThreadDaemon:
the real server and key engine, a fixed wall clock) and setkey's main() in the
test's thread, so dumps are compared line for line with golden files.  The last
tests start ``python -m pfkeyd`` and ``python -m setkey`` as processes, as a
user would: a script load, ``-c`` fed a statement at a time, and ``-x`` seeing
another client's ADD.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import trio
import trio.testing

from pfkeyd.wire import Dialect
from setkey import cli
from setkey.dump import SHORT_HEADER
from setkey.resolve import Resolver
from tests.setkey.clihelp import PID, Result, ThreadDaemon, against, run

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
SCRIPT = GOLDEN / "cli-script.conf"
KEY16 = "0x00112233445566778899aabbccddeeff"

DIALECTS = pytest.mark.parametrize("dialect", list(Dialect), ids=[d.value for d in Dialect])


@pytest.fixture
def daemon() -> Iterator[ThreadDaemon]:
    sockdir = tempfile.mkdtemp(prefix="pfk", dir="/tmp")  # AF_UNIX paths are short
    d = ThreadDaemon(sockdir).start()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def golden(name: str) -> list[str]:
    return (GOLDEN / name).read_text().replace("pid=PID", f"pid={PID}").splitlines()


def messages_in(daemon: ThreadDaemon) -> int:
    """How many requests the daemon has received."""
    return daemon.call(lambda: sum(daemon.engine.statistics().messages_in.values()))


# ------------------------------------------------------------------ scripts


@DIALECTS
def test_a_script_of_every_command_then_D_and_DP(daemon: ThreadDaemon, dialect: Dialect) -> None:
    setkey = against(daemon, dialect)
    r = setkey(["-f", str(SCRIPT)])
    assert (r.status, r.err) == (0, "")
    # get, dump ah and spddump print in the reference tool's format
    assert r.out.splitlines() == golden(f"cli-script.{dialect.value}.txt")
    # flush/spdflush removed the first SA and policy; deleteall and delete
    # removed 0x3001, 0x3002 and 0x4001; spddelete removed 10.3/16; linux
    # added a fwd copy of the "in" policy.
    assert daemon.counts() == (5, 4 if dialect is Dialect.LINUX else 3)
    d = setkey(["-D"])
    assert (d.status, d.err) == (0, "")
    assert d.out.splitlines() == golden(f"cli-D.{dialect.value}.txt")
    dp = setkey(["-DP"])
    assert (dp.status, dp.err) == (0, "")
    assert dp.out.splitlines() == golden(f"cli-DP.{dialect.value}.txt")


@DIALECTS
def test_kernel_mode_sends_no_fwd_copy(daemon: ThreadDaemon, dialect: Dialect) -> None:
    r = against(daemon, dialect)(["-k", "-e", "spdadd 10.0.0.1 10.0.0.2 any -P in none;"])
    assert r.status == 0
    assert daemon.counts() == (0, 1)
    expected = "" if dialect is Dialect.LINUX else "setkey: warning: -r and -k have no effect in the freebsd dialect\n"
    assert r.err == expected


@DIALECTS
def test_flush_and_spdflush_empty_the_databases(daemon: ThreadDaemon, dialect: Dialect) -> None:
    setkey = against(daemon, dialect)
    assert setkey(["-f", str(SCRIPT)]).status == 0
    sas, policies = daemon.counts()
    assert sas and policies
    assert setkey(["-F"]) == type(setkey(["-F"]))(0, "", "")
    assert daemon.counts() == (0, policies)
    assert setkey(["-FP"]).status == 0
    assert daemon.counts() == (0, 0)
    assert setkey(["-D"]).out == "No SAD entries.\n"
    assert setkey(["-DP"]).out == "No SPD entries.\n"
    assert setkey(["--json", "-D"]).out == ""


def _twenty_lines(last: str) -> str:
    lines = [f"add 10.0.{i}.1 10.0.{i}.2 esp 0x{0x1000 + i:x} -E aes-cbc {KEY16};" for i in range(19)]
    return "\n".join([*lines, last]) + "\n"


@DIALECTS
@pytest.mark.parametrize(
    ("last", "where"),
    [
        ("spdadd 10.0.0.1 10.0.0.2 any -P out ipsec esp/transport//require", ":20:"),  # no ";": syntax
        ("spdadd 10.0.0.1 10.0.0.2 any -P out ipsec esp/transport//requir;", ":20:"),  # bad level
        ("add 10.0.0.1 10.0.0.2 esp 0x2000 -E aes-cbc 0x0011;", ":20:37:"),  # key length
        ("add -n gw.example 10.0.0.2 esp 0x2000 -E aes-cbc 0x0011223344556677;", ":20:"),  # -n, not numeric
    ],
)
def test_a_mistake_on_line_20_applies_nothing(
    tmp_path: Path, daemon: ThreadDaemon, dialect: Dialect, last: str, where: str
) -> None:
    script = tmp_path / "load.conf"
    script.write_text(_twenty_lines(last))
    r = against(daemon, dialect)(["-f", str(script)])
    assert (r.status, r.out) == (1, "")
    assert r.err.startswith(f"setkey: {script}{where}")
    assert daemon.counts() == (0, 0)
    assert messages_in(daemon) == 0  # not even a REGISTER went out


@DIALECTS
def test_a_refused_command_is_reported_by_line_and_the_rest_applied(
    tmp_path: Path, daemon: ThreadDaemon, dialect: Dialect
) -> None:
    script = tmp_path / "twice.conf"
    script.write_text(
        f"add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc {KEY16};\n"
        f"add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc {KEY16};\n"
        "get 10.0.0.1 10.0.0.2 esp 0x1001;\n"
        f"add 10.0.0.1 10.0.0.2 esp 0x1002 -E aes-cbc {KEY16};\n"
    )
    r = against(daemon, dialect)(["-f", str(script)])
    assert r.status == 1
    # (pfkeyd answers a GET of a missing SA with ESRCH, as FreeBSD's key_get does)
    assert r.err == f"setkey: {script}:2: File exists\nsetkey: {script}:3: No such process\n"
    assert daemon.counts() == (2, 0)


@DIALECTS
def test_check_only_sends_nothing(daemon: ThreadDaemon, dialect: Dialect) -> None:
    r = against(daemon, dialect)(["-n", "-f", str(SCRIPT)])
    assert (r.status, r.out, r.err) == (0, "", "")
    assert daemon.counts() == (0, 0)
    assert messages_in(daemon) == 0


@DIALECTS
def test_a_script_on_stdin(daemon: ThreadDaemon, dialect: Dialect) -> None:
    r = against(daemon, dialect)(["-f", "-"], stdin=SCRIPT.read_text())
    assert r.status == 0
    assert r.out.splitlines() == golden(f"cli-script.{dialect.value}.txt")


# ------------------------------------------------------------------ -c


@DIALECTS
def test_interactive_statements_each_on_their_own(daemon: ThreadDaemon, dialect: Dialect) -> None:
    stdin = (
        f"add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc {KEY16}; add 10.0.0.1 10.0.0.2 ah\n"
        " 0x1001 -A hmac-sha1 0x00112233445566778899aabbccddeeff00112233;\n"
        "add 10.0.0.1 10.0.0.2 esp 0x1002 -E aes-cbc 0x00;\n"  # key length: reported, skipped
        "deleteall 10.0.0.1 10.0.0.2 ipcomp; dump ah;\n"
        "add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc 0x00112233445566778899aabbccddeeff;\n"  # exists
        "spdadd 10.0.0.0/8 10.0.0.0/8 any -P out none;\n"
        "quit;\n"
        "spdflush;\n"
    )
    r = against(daemon, dialect)(["-c"], stdin=stdin)
    assert r.status == 1
    err = r.err.splitlines()
    assert err[0].startswith("setkey: (stdin):3:37: invalid key length")
    assert err[3] == "setkey: (stdin):5: File exists"
    assert len(err) == 4
    assert r.out.startswith("10.0.0.1 10.0.0.2")
    assert "\tah mode=any spi=4097(0x00001001)" in r.out
    assert daemon.counts() == (2, 1)  # spdflush came after quit


# ------------------------------------------------------------------ output options


@DIALECTS
def test_json_dumps_parse_back(daemon: ThreadDaemon, dialect: Dialect) -> None:
    setkey = against(daemon, dialect)
    assert setkey(["-f", str(SCRIPT)]).status == 0
    sas = [json.loads(line) for line in setkey(["--json", "-D"]).out.splitlines()]
    assert {sa["type"] for sa in sas} == {"sa"}
    assert sorted((sa["satype"], sa["spi"]) for sa in sas) == [
        ("ah", 0x1001),
        ("esp", 0x1000),
        ("esp", 0x2000),
        ("esp", 0x3003),
        ("ipcomp", 0x2002),
    ]
    first = next(sa for sa in sas if sa["spi"] == 0x1000)
    assert first["encryption"] == {
        "algorithm": "aes-cbc",
        "id": 12,
        "bits": 128,
        "key": "00112233445566778899aabbccddeeff",
    }
    assert (first["mode"], first["reqid"], first["replay"], first["src"]["address"]) == ("transport", 7, 4, "10.0.0.1")
    assert first["lifetime"]["hard"]["addtime"] == 3600
    policies = [json.loads(line) for line in setkey(["--json", "-DP"]).out.splitlines()]
    dirs = sorted(p["dir"] for p in policies)
    assert dirs == (["fwd", "in", "out", "out"] if dialect is Dialect.LINUX else ["in", "out", "out"])
    tunnel = next(p for p in policies if p["upper"] == 6)
    assert tunnel["requests"] == [
        {
            "proto": "esp",
            "mode": "tunnel",
            "level": "require",
            "reqid": 0,
            "src": {"address": "192.0.2.1", "port": 0},
            "dst": {"address": "198.51.100.2", "port": 0},
        }
    ]
    script_json = [
        json.loads(line) for line in setkey(["--json", "-e", "get 10.0.0.1 10.0.0.2 esp 0x1000;"]).out.splitlines()
    ]
    assert [(s["type"], s["spi"]) for s in script_json] == [("sa", 0x1000)]


@DIALECTS
def test_loop_prints_the_short_format_every_round(daemon: ThreadDaemon, dialect: Dialect) -> None:
    setkey = against(daemon, dialect)
    assert setkey(["-f", str(SCRIPT)]).status == 0
    r = setkey(["-Dl"], loops=2, interval=0.0)
    assert r.status == 0
    rows = [
        "1327 esp M 00003003 ???/??? #255 10.0.0.5 -> #255 10.0.0.4",
        "1327 esp M 00002000 ???/??? #255 10.0.0.2 -> #255 10.0.0.1",
        "1327 #9  M 00002002 ???/??? #255 10.0.0.1 -> #255 10.0.0.2",
        "1327 ah  M 00001001 ???/??? #255 fec0::1 -> #255 fec0::2",
        "1327 esp M 00001000   7/big #255 10.0.0.1 -> #255 10.0.0.2",
    ]
    assert r.out.splitlines() == [SHORT_HEADER.rstrip("\n"), *rows, *rows]


@DIALECTS
def test_verbose_and_hex_dumps_of_messages(daemon: ThreadDaemon, dialect: Dialect) -> None:
    setkey = against(daemon, dialect)
    flush = "type=9(FLUSH)" if dialect is Dialect.FREEBSD else "type=9"
    out = setkey(["-v", "-F"]).out
    assert out.count(f"sadb_msg{{ version=2 {flush} errno=0 satype=0\n") == 2  # sent and received
    hexed = setkey(["-h", "-FP"]).out
    assert re.fullmatch(r"00000000: 02 13 00 00 02 00 00 00 ([0-9a-f]{2} ){8}\n", hexed)
    loaded = setkey(["-v", "-e", f"add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc {KEY16};"]).out
    types = re.findall(r"sadb_msg\{ version=2 type=(\d+)", loaded)
    assert types == ["7", "7", "3", "3"]  # REGISTER and ADD, each sent and received
    assert "sadb_sa{ spi=4096 replay=0 state=" in loaded


def test_the_socket_comes_from_PFKEY_SOCKET_and_the_dialect_is_the_hosts(daemon: ThreadDaemon) -> None:
    # linux is this host's own dialect (pfkeyd.defaults.native_dialect)
    linux, freebsd = daemon.paths[Dialect.LINUX], daemon.paths[Dialect.FREEBSD]
    assert run(["-e", "spdadd 10.0.0.1 10.0.0.2 any -P out prio 7 none;"], environ={"PFKEY_SOCKET": linux}).status == 0
    assert daemon.counts() == (0, 1)
    r = run(["--socket", freebsd, "--dialect", "freebsd", "-DP"], environ={"PFKEY_SOCKET": "/nonexistent"})
    assert (r.status, r.err) == (0, "")
    assert r.out.startswith("10.0.0.1[any] 10.0.0.2[any] any\n\tout none\n")


SCOPED = (
    f"add fe80::1%lo fe80::2%lo esp 0x5001 -m tunnel -E aes-cbc {KEY16};\n"
    "spdadd fe80::1%lo fe80::2%lo any -P out ipsec esp/tunnel/fe80::1%lo-fe80::2%lo/require;\n"
    "spdadd fe80::/64 fe80::2%lo any -P in ipsec esp/tunnel/fe80::2%lo-fe80::1%lo/require;\n"
)


@DIALECTS
def test_scoped_addresses_print_the_interface_name_as_the_reference_does(
    daemon: ThreadDaemon, dialect: Dialect
) -> None:
    # getnameinfo(NI_NUMERICHOST) writes the zone of a scoped address as the
    # interface's name (fe80::1%lo), in the SA lines and in the policy text.
    setkey = against(daemon, dialect)
    names = {"resolver": Resolver(if_nametoindex={"lo": 1}.__getitem__), "ifname": {1: "lo"}.get}
    assert setkey(["-e", SCOPED], **names) == Result(0, "", "")
    d = setkey(["-D"], **names)
    assert (d.status, d.err) == (0, "")
    assert d.out.splitlines() == golden(f"scoped-D.{dialect.value}.txt")
    dp = setkey(["-DP"], **names)
    assert (dp.status, dp.err) == (0, "")
    assert dp.out.splitlines() == golden(f"scoped-DP.{dialect.value}.txt")
    # an index no interface has prints as the number, as getnameinfo() does
    numeric = setkey(["-D"], ifname=lambda index: None).out.splitlines()[0]
    assert numeric.rstrip() == "fe80::1%1 fe80::2%1"


def test_the_interface_names_come_from_the_system() -> None:
    index = socket.if_nametoindex("lo")
    assert cli.Runtime().ifname(index) == "lo"
    unused = max(i for i, _name in socket.if_nameindex()) + 1
    assert cli.Runtime().ifname(unused) is None


def test_scope_options_filter_freebsd_policies(daemon: ThreadDaemon) -> None:
    setkey = against(daemon, Dialect.FREEBSD)
    assert setkey(["-e", "spdadd 10.0.0.1 10.0.0.2 any -P out none;"]).status == 0
    assert "scope=global" in setkey(["-DPg"]).out
    assert setkey(["-DPt"]).out == "No SPD entries.\n"


def test_the_wrong_dialect_ends_a_dump_with_an_error(daemon: ThreadDaemon) -> None:
    assert against(daemon, Dialect.LINUX)(["-e", f"add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc {KEY16};"]).status == 0
    r = run(["-D"], dialect=Dialect.FREEBSD, socket=daemon.paths[Dialect.LINUX], reply_timeout=0.5)
    assert r.status == 1
    # The client library fails the dump at the first entry it cannot decode.
    assert r.err.splitlines()[-1].startswith("setkey: undecodable message from the daemon: ")
    assert r.err.splitlines()[-1].endswith("(is --dialect the socket's dialect?)")
    assert "Traceback" not in r.err


# ------------------------------------------------------------------ the dialect and deadlines


@pytest.fixture
def daemon_with_control() -> Iterator[ThreadDaemon]:
    sockdir = tempfile.mkdtemp(prefix="pfk", dir="/tmp")
    d = ThreadDaemon(sockdir, control=True).start()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


@DIALECTS
def test_setkey_learns_the_sockets_dialect_from_the_daemon(daemon_with_control: ThreadDaemon, dialect: Dialect) -> None:
    # The case that hung: a freebsd socket used from Linux without --dialect.
    path = daemon_with_control.paths[dialect]
    r = run(
        ["-e", f"add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc {KEY16};\nspdadd 10.0.0.1 10.0.0.2 any -P out none;"],
        socket=path,
    )
    assert r == Result(0, "", "")
    assert daemon_with_control.counts() == (1, 1)
    d = run(["-D"], socket=path)
    assert (d.status, d.err) == (0, "")
    # the dump is in the format of the socket's reference tool
    assert d.out.splitlines()[0] == ("10.0.0.1 10.0.0.2" if dialect is Dialect.FREEBSD else "10.0.0.1 10.0.0.2 ")
    assert run(["-DP"], socket=path).out.splitlines()[1] == (
        "\tout none" if dialect is Dialect.FREEBSD else "\tout prio def none"
    )


def test_a_dialect_given_against_the_daemons_word_is_used_with_a_warning(daemon_with_control: ThreadDaemon) -> None:
    path = daemon_with_control.paths[Dialect.FREEBSD]
    r = run(["-F"], socket=path, dialect=Dialect.LINUX)
    assert r.err.splitlines()[0] == f"setkey: warning: --dialect linux, but pfkeyd says that {path} speaks freebsd"
    assert run(["-F"], socket=path, dialect=Dialect.FREEBSD) == Result(0, "", "")


def _never_answering(path: str) -> socket.socket:
    """A socket that takes connections (the kernel's backlog) and never answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(path)
    s.listen()
    return s


@pytest.mark.parametrize(
    "argv", [["-e", "flush;"], ["-D"], ["-FP"], ["-f", "-"]], ids=["script", "dump", "flush", "stdin"]
)
def test_a_daemon_that_never_answers_gets_the_timeout_message(tmp_path: Path, argv: list[str]) -> None:
    sockdir = tempfile.mkdtemp(prefix="pfk", dir="/tmp")
    path = f"{sockdir}/silent.sock"
    clock = trio.testing.MockClock(autojump_threshold=0)
    try:
        with _never_answering(path):
            r = run(argv, socket=path, stdin="spdflush;\n", trio_clock=clock)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    assert (r.status, r.out) == (1, "")
    waited = {
        "-e": "the reply to SADB_FLUSH",
        "-D": "SADB_DUMP",
        "-FP": "the reply to SADB_X_SPDFLUSH",
        "-f": "the reply to SADB_X_SPDFLUSH",
    }[argv[0]]
    assert re.fullmatch(
        f"setkey: {re.escape(path)}: nothing from the daemon for 5 s while waiting for {waited} \\(seq \\d+\\)"
        "(: its first entry)?: the socket may not speak the linux dialect \\(see --dialect\\), "
        "or the daemon is stuck or is not pfkeyd\n",
        r.err,
    ), r.err
    assert clock.current_time() == pytest.approx(5)


def test_timeout_sets_the_deadline_and_a_stuck_control_socket_is_reported(tmp_path: Path) -> None:
    sockdir = tempfile.mkdtemp(prefix="pfk", dir="/tmp")
    path = f"{sockdir}/stuck.sock"
    clock = trio.testing.MockClock(autojump_threshold=0)
    try:
        with _never_answering(path), _never_answering(f"{sockdir}/stuck.ctl"):
            r = run(["--timeout", "2.5", "-D"], socket=path, trio_clock=clock)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    assert r == Result(
        1,
        "",
        (
            f"setkey: {sockdir}/stuck.ctl: nothing from the daemon for 2.5 s while waiting for the answer to the dialect "
            "command: pfkeyd is stuck or overloaded, or this is not its control socket (a longer --timeout than 2.5 s "
            "may help)\n"
        ),
    )
    assert clock.current_time() == pytest.approx(2.5)


# ------------------------------------------------------------------ processes


class Lines:
    """The lines a process writes, read by a thread, waited for with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, timeout: float = 30.0) -> str:
        line = self._queue.get(timeout=timeout)
        if line is None:
            raise EOFError("the process closed its output")
        return line

    def until(self, pattern: str, limit: int = 500) -> list[str]:
        """Lines up to and including the first that matches ``pattern`` (at most ``limit``)."""
        seen = []
        for _ in range(limit):
            seen.append(self.next())
            if re.match(pattern, seen[-1]):
                return seen
        raise AssertionError(f"no line matching {pattern!r} in {limit} lines: {seen}")


ENV = {**os.environ, "TZ": "UTC"}


def setkey_process(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "setkey", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=ENV,
    )


@pytest.fixture(scope="module")
def pfkeyd() -> Iterator[dict[Dialect, str]]:
    """``python -m pfkeyd -s .../linux.sock:linux -l .../freebsd.sock:freebsd``."""
    sockdir = tempfile.mkdtemp(prefix="pfk", dir="/tmp")
    paths = {Dialect.LINUX: f"{sockdir}/linux.sock", Dialect.FREEBSD: f"{sockdir}/freebsd.sock"}
    with open(f"{sockdir}/log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pfkeyd",
                "-s",
                f"{paths[Dialect.LINUX]}:linux",
                "-l",
                f"{paths[Dialect.FREEBSD]}:freebsd",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 30
        while not all(_listening(p) for p in paths.values()):  # bounded polling for the sockets
            assert proc.poll() is None, Path(f"{sockdir}/log").read_text()
            assert time.monotonic() < deadline, "pfkeyd did not start"
            time.sleep(0.02)
        yield paths
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(sockdir, ignore_errors=True)


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


_TIME = re.compile(r"[A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d \d{4}")


def _normal(lines: list[str]) -> list[str]:
    """Dump lines with the times, ages and pids of a real run made comparable."""
    out = []
    for line in lines:
        line = _TIME.sub("<time>", line)
        line = re.sub(r"diff: \d+\(s\)", "diff: <n>(s)", line)
        out.append(re.sub(r"pid=\d+", "pid=<pid>", line))
    return out


@DIALECTS
def test_processes_load_a_script_and_dump_it(pfkeyd: dict[Dialect, str], dialect: Dialect) -> None:
    common = ["--dialect", dialect.value, "--socket", pfkeyd[dialect]]
    for args in (["-F"], ["-FP"], ["-f", str(SCRIPT)], ["-D"]):
        proc = setkey_process(*common, *args)
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, err) == (0, ""), args
    assert _normal(out.splitlines()) == _normal(golden(f"cli-D.{dialect.value}.txt"))


@DIALECTS
def test_interactive_process_answers_before_the_input_ends(pfkeyd: dict[Dialect, str], dialect: Dialect) -> None:
    common = ["--dialect", dialect.value, "--socket", pfkeyd[dialect]]
    proc = setkey_process(*common, "-c", stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    lines = Lines(proc.stdout)
    try:
        proc.stdin.write(f"flush; add 10.1.1.1 10.1.1.2 esp 0x5000 -E aes-cbc {KEY16};\n")
        proc.stdin.write("get 10.1.1.1\n  10.1.1.2 esp 0x5000;\n")
        proc.stdin.flush()
        # stdin is still open: the get has been answered statement by statement
        assert lines.until(r"\tesp mode=any spi=20480\(0x00005000\)")[0].startswith("10.1.1.1 10.1.1.2")
        proc.stdin.write("delete 10.1.1.1 10.1.1.2 esp 0x5000; dump esp;\n")
        proc.stdin.close()
        rest = lines.until(r"(The result of line 4: )?No SAD entries\.$")
        assert rest[-2].startswith("\tsadb_seq=0 pid=")  # the end of the get's SA
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        assert proc.stderr.read() == ""


@DIALECTS
def test_promiscuous_monitor_sees_another_clients_add(pfkeyd: dict[Dialect, str], dialect: Dialect) -> None:
    path = pfkeyd[dialect]
    assert run(["-F"], dialect=dialect, socket=path).status == 0
    monitor = setkey_process("--dialect", dialect.value, "--socket", path, "-x")
    assert monitor.stdout is not None
    lines = Lines(monitor.stdout)
    try:
        # The echo of its own X_PROMISC prints a time stamp alone: from here
        # on the monitor sees everything.
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{6} ", lines.next())
        r = run(["-e", f"add 10.7.7.1 10.7.7.2 esp 0x7001 -E aes-cbc {KEY16};"], dialect=dialect, socket=path)
        assert r.status == 0, r.err
        add = "type=3(ADD)" if dialect is Dialect.FREEBSD else "type=3 "
        lines.until(rf"sadb_msg\{{ version=2 {re.escape(add)}")
        block = lines.until("$")  # the rest of the message, to its blank line
        assert any(line.startswith("sadb_sa{ spi=28673 ") for line in block), block
    finally:
        monitor.terminate()
        monitor.wait(30)
