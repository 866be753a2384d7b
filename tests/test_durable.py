"""Durable state (``pfkeyd --state-dir``) with real daemons: kill -9 during a
pipelined fill, a clean restart of 100 000 SAs, a corrupt journal tail.

The daemons are processes; readiness is their READY=1 on a NOTIFY_SOCKET the
test reads.  A client pipelines requests on one socket and notes each reply: a
reply is what "acknowledged" means.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pfkeyd import state
from pfkeyd.wire import Dialect, ExtType, Key, Message, MsgType, SaType, SockAddr, decode, encode
from setkey import cli as setkey_cli
from tests.engine import conftest as sa_helpers
from tests.engine import spd_helpers as sp

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60
LINUX = Dialect.LINUX
RECV = 0xFFFF * 8


@pytest.fixture
def tmp() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="pfd", dir="/tmp")  # AF_UNIX paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Daemon:
    """``pfkeyd -s DIR/p.sock:linux --state-dir DIR/state``, ready once it says READY=1."""

    def __init__(self, tmp: str, *extra: str) -> None:
        self.sock = f"{tmp}/p.sock"
        self.state = f"{tmp}/state"
        notify = f"{tmp}/notify"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notify)
        self.manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.manager.bind(notify)
        self.manager.settimeout(TIMEOUT)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pfkeyd", "-s", f"{self.sock}:linux", "--state-dir", self.state, *extra],
            cwd=ROOT,
            env={**os.environ, "NOTIFY_SOCKET": notify},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.status = ""
        try:
            while True:
                data = self.manager.recv(4096).decode()
                fields = dict(line.split("=", 1) for line in data.splitlines())
                if fields.get("READY") == "1":
                    self.status = fields.get("STATUS", "")
                    break
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(self.proc.communicate()[1]) from None

    def kill(self) -> str:
        self.proc.kill()
        return self._end()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        err = self._end()
        assert self.proc.returncode == 0, err
        return err

    def _end(self) -> str:
        _, err = self.proc.communicate(timeout=TIMEOUT)
        self.manager.close()
        assert "Traceback" not in err, err
        return err


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(TIMEOUT)
    s.connect(path)
    return s


def pipeline(
    sock: socket.socket, requests: Sequence[bytes], window: int = 32, on_reply: Callable[[int], None] | None = None
) -> dict[int, Message]:
    """Send ``requests`` (seq 1, 2, ...) keeping ``window`` unanswered; the replies
    received by seq, until all are answered or the daemon goes away.  ``on_reply``
    is called with the number of replies so far after each."""
    replies: dict[int, Message] = {}
    sent = 0
    try:
        while len(replies) < len(requests):
            while sent < len(requests) and sent - len(replies) < window:
                sock.send(requests[sent])
                sent += 1
            data = sock.recv(RECV)
            if not data:
                break
            msg = decode(data, LINUX, request=False)
            replies[msg.seq] = msg
            if on_reply is not None:
                on_reply(len(replies))
    except OSError:
        pass  # the daemon was killed
    return replies


def dump(path: str, mtype: int) -> list[Message]:
    with connect(path) as s:
        s.send(encode(Message(mtype, SaType.UNSPEC if mtype == MsgType.X_SPDDUMP else SaType.ESP, 1, 9), LINUX))
        out: list[Message] = []
        while True:
            msg = decode(s.recv(RECV), LINUX, request=False)
            if msg.errno:
                assert msg.errno == 2  # ENOENT: empty
                return out
            out.append(msg)
            if msg.seq == 0:
                return out


@dataclass
class Plan:
    """A random fill: ADDs of new SPIs, DELETEs of SPIs added before, SPDADDs of
    new selectors; what each request did, by seq."""

    requests: list[bytes] = field(default_factory=list)
    ops: dict[int, tuple[str, int]] = field(default_factory=dict)  # seq -> (kind, spi or policy number)


def make_plan(rng: random.Random, n: int) -> Plan:
    plan = Plan()
    added: list[int] = []
    for i in range(n):
        seq = i + 1
        r = rng.random()
        if r < 0.15 and added:
            spi = added.pop(rng.randrange(len(added)))
            msg = sa_helpers.delete(SaType.ESP, spi, seq=seq, d=_peer(spi))
            plan.ops[seq] = ("delete", spi)
        elif r < 0.35:
            msg = sp.spd_msg(MsgType.X_SPDADD, "10.1.0.1", f"10.2.{seq >> 8 & 255}.{seq & 255}", seq=seq)
            plan.ops[seq] = ("spdadd", seq)
        else:
            spi = 0x10000 + seq
            msg = sa_helpers.add(
                SaType.ESP, spi, seq=seq, d=_peer(spi), ke=Key(ExtType.KEY_ENCRYPT, spi.to_bytes(4, "big") * 4)
            )
            added.append(spi)
            plan.ops[seq] = ("add", spi)
        plan.requests.append(encode(msg, LINUX))
    return plan


def _peer(spi: int) -> str:
    return f"10.0.{spi >> 8 & 255}.{spi & 255}"


def check(plan: Plan, replies: dict[int, Message], sas: list[Message], policies: list[Message]) -> None:
    """The SAD and SPD after a restart hold every acknowledged change and nothing
    that was never sent."""
    present = {m.sa.spi: m for m in sas if m.sa is not None}
    dsts = {
        str(m.dst.addr.ip): m.policy.id for m in policies if m.dst and isinstance(m.dst.addr, SockAddr) and m.policy
    }
    deleted_acked = {
        spi for seq, (kind, spi) in plan.ops.items() if kind == "delete" and seq in replies and replies[seq].errno == 0
    }
    deleted_unknown = {spi for seq, (kind, spi) in plan.ops.items() if kind == "delete" and seq not in replies}
    sent_adds = {spi for kind, spi in plan.ops.values() if kind == "add"}
    assert set(present) <= sent_adds, "an SA nobody added"
    for seq, (kind, what) in plan.ops.items():
        reply = replies.get(seq)
        if reply is None or reply.errno:
            assert reply is None or kind == "delete", reply
            continue
        if kind == "add":
            if what in deleted_acked:
                assert what not in present, f"the acknowledged DELETE of {what:#x} was lost"
            elif what not in deleted_unknown:  # (a DELETE sent but not answered may or may not be done)
                assert what in present, f"the acknowledged ADD of {what:#x} was lost"
                key = present[what].key_encrypt
                assert key is not None and key.data == what.to_bytes(4, "big") * 4
        elif kind == "delete":
            assert what not in present, f"the acknowledged DELETE of {what:#x} was lost"
        else:
            dst = f"10.2.{what >> 8 & 255}.{what & 255}"
            assert dst in dsts, f"the acknowledged SPDADD {what} was lost"
            assert reply.policy is not None and dsts[dst] == reply.policy.id  # same id after the restart


@pytest.mark.parametrize("seed", range(12))
def test_kill_9_during_a_pipelined_fill_loses_nothing_acknowledged(tmp: str, seed: int) -> None:
    rng = random.Random(seed)
    plan = make_plan(rng, 3000)
    daemon = Daemon(tmp)
    # The kill comes after a random number of replies, while up to a window of
    # requests is in the daemon: some handled and journaled, some being synced,
    # some not read yet.
    kill_after = rng.randrange(1, len(plan.requests) - 100)

    def maybe_kill(replies_so_far: int) -> None:
        if replies_so_far == kill_after:
            daemon.proc.kill()

    with connect(daemon.sock) as client:
        replies = pipeline(client, plan.requests, on_reply=maybe_kill)
    daemon.kill()
    assert kill_after <= len(replies) < len(plan.requests)
    daemon = Daemon(tmp)
    try:
        check(plan, replies, dump(daemon.sock, MsgType.DUMP), dump(daemon.sock, MsgType.X_SPDDUMP))
        # Ids go on without reuse: a new policy gets an id above all restored ones.
        ids = [m.policy.id for m in dump(daemon.sock, MsgType.X_SPDDUMP) if m.policy is not None]
        with connect(daemon.sock) as s:
            s.send(encode(sp.spd_msg(MsgType.X_SPDADD, "10.9.0.1", "10.9.0.2", seq=1), LINUX))
            new = decode(s.recv(RECV), LINUX, request=False)
        assert new.errno == 0 and new.policy is not None
        assert new.policy.id > max(ids, default=0) or not ids
    finally:
        daemon.stop()
    modes = {name: stat.S_IMODE(os.stat(f"{tmp}/state/{name}").st_mode) for name in os.listdir(f"{tmp}/state")}
    assert set(modes.values()) == {0o600}, modes
    assert stat.S_IMODE(os.stat(f"{tmp}/state").st_mode) == 0o700


def setkey_dump(path: str, *args: str) -> str:
    out = io.StringIO()
    rt = setkey_cli.Runtime(
        stdout=out, stderr=io.StringIO(), environ={"PFKEY_SOCKET": path}, clock=lambda: 1_800_000_000.0
    )
    assert setkey_cli.main([*args], rt) == 0
    return out.getvalue()


@pytest.mark.slow
def test_a_clean_restart_keeps_100k_sas_byte_identical(tmp: str) -> None:
    n = 100_000
    requests = []
    for i in range(n):
        spi = 0x100000 + i
        requests.append(
            encode(
                sa_helpers.add(
                    SaType.ESP, spi, seq=i + 1, d=_peer(i), hard_lt=sa_helpers.hard(addtime=86400) if i % 3 else None
                ),
                LINUX,
            )
        )
    policies = [
        encode(sp.spd_msg(MsgType.X_SPDADD, "10.1.0.1", f"10.3.{i >> 8}.{i & 255}", seq=i + 1), LINUX)
        for i in range(1000)
    ]
    daemon = Daemon(tmp)
    try:
        with connect(daemon.sock) as client:
            assert all(r.errno == 0 for r in pipeline(client, requests, 64).values())
            assert all(r.errno == 0 for r in pipeline(client, policies, 64).values())
        before = setkey_dump(daemon.sock, "-D"), setkey_dump(daemon.sock, "-DP")
    finally:
        daemon.stop()
    daemon = Daemon(tmp)
    try:
        assert "restored 100000 SAs and 1000 policies" in daemon.status
        after = setkey_dump(daemon.sock, "-D"), setkey_dump(daemon.sock, "-DP")
    finally:
        daemon.stop()
    assert before[0].count("\tesp mode=") == n
    assert after == before


def test_a_corrupt_journal_tail_is_reported_and_cut_at_the_last_whole_record(tmp: str) -> None:
    daemon = Daemon(tmp)
    with connect(daemon.sock) as client:
        requests = [encode(sa_helpers.add(SaType.ESP, 0x1000 + i, seq=i + 1), LINUX) for i in range(5)]
        assert len(pipeline(client, requests)) == 5
    daemon.stop()
    journal = Path(f"{tmp}/state/journal.0")
    data = journal.read_bytes()
    end = state.scan(data).end  # the records end here; zeros reserved after them
    assert len(data) > end and not data[end:].strip(b"\0")
    # Damage the last record's payload and write half a record after it.
    damaged = bytearray(data)
    damaged[end - 5] ^= 0xFF
    damaged[end : end + 6] = b"\x40\x00\x00\x00\x12\x34"
    journal.write_bytes(bytes(damaged))
    daemon = Daemon(tmp)
    try:
        spis = sorted(m.sa.spi for m in dump(daemon.sock, MsgType.DUMP) if m.sa is not None)
        assert spis == [0x1000, 0x1001, 0x1002, 0x1003]  # the damaged last ADD is gone, nothing guessed
        with connect(daemon.sock) as client:  # and the journal goes on after the cut
            assert pipeline(client, [encode(sa_helpers.add(SaType.ESP, 0x2000, seq=1), LINUX)])[1].errno == 0
    finally:
        err = daemon.stop()
    assert "fails its CRC; cut at byte" in err
    daemon = Daemon(tmp)
    try:
        spis = sorted(m.sa.spi for m in dump(daemon.sock, MsgType.DUMP) if m.sa is not None)
        assert spis == [0x1000, 0x1001, 0x1002, 0x1003, 0x2000]
    finally:
        err = daemon.stop()
    assert "cut at byte" not in err


def test_a_state_directory_others_may_enter_or_in_use_is_refused(tmp: str) -> None:
    os.mkdir(f"{tmp}/state", 0o755)
    os.chmod(f"{tmp}/state", 0o755)
    result = subprocess.run(
        [sys.executable, "-m", "pfkeyd", "-s", f"{tmp}/p.sock", "--state-dir", f"{tmp}/state"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    assert "must belong to this user and be mode 0700" in result.stderr
    os.chmod(f"{tmp}/state", 0o700)
    daemon = Daemon(tmp)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pfkeyd", "-s", f"{tmp}/q.sock", "--state-dir", f"{tmp}/state"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert result.returncode == 1
        assert "in use by another pfkeyd" in result.stderr
    finally:
        daemon.stop()


def sysctl(sock: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pfkeyd", "sysctl", "-s", sock, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_run_time_knob_changes_survive_a_restart_over_the_config_file(tmp: str) -> None:
    config = Path(f"{tmp}/pfkeyd.conf")
    config.write_text("net.key.blockacq_count = 7\n")
    daemon = Daemon(tmp, "-f", str(config))
    try:
        sysctl(daemon.sock, "net.key.blockacq_count=5", "net.key.spi_trycnt=9")
    finally:
        daemon.stop()
    daemon = Daemon(tmp, "-f", str(config))
    try:
        assert sysctl(daemon.sock, "-n", "net.key.blockacq_count", "net.key.spi_trycnt") == "5\n9\n"
        # A knob the file sets again at SIGHUP drops its run-time change; the others keep theirs.
        config.write_text("net.key.blockacq_count = 8\n")
        daemon.proc.send_signal(signal.SIGHUP)
        seen = []
        while "READY" not in seen:
            seen = [line.split("=")[0] for line in daemon.manager.recv(4096).decode().splitlines()]
        assert sysctl(daemon.sock, "-n", "net.key.blockacq_count") == "8\n"  # and the change is recorded
    finally:
        daemon.stop()
    config.write_text("net.key.blockacq_count = 6\n")
    daemon = Daemon(tmp, "-f", str(config))
    try:
        assert sysctl(daemon.sock, "-n", "net.key.blockacq_count", "net.key.spi_trycnt") == "6\n9\n"
    finally:
        daemon.stop()
