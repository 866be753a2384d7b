"""setkey -f's pipelined sending against a scripted "kernel": a thread on a real
socket that gathers a script's requests and answers them as a test says (out of
order, among broadcasts and promiscuous copies, with errors, undecodable, or not
at all).  What setkey prints must not depend on the order of the replies."""

from __future__ import annotations

import errno
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pfkeyd.wire import HEADER, PF_KEY_V2, Dialect, Message, MsgType, decode, encode, error_reply
from setkey.dump import error_text
from tests.setkey.clihelp import Result, run

DIALECTS = pytest.mark.parametrize("dialect", list(Dialect), ids=[d.value for d in Dialect])
OTHER_PID = 4444

#: answer(requests) -> the datagrams to send back, in order; None closes the connection.
Answer = Callable[[list[bytes]], list[bytes] | None]


class FakeKernel:
    """Accepts one connection on ``path``; once ``expect`` requests have come, sends
    what ``answer`` makes of them, then echoes nothing more until the peer leaves."""

    def __init__(self, path: str, expect: int, answer: Answer) -> None:
        self.path = path
        self.expect = expect
        self.answer = answer
        self.requests: list[bytes] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(path)
        self._listener.listen(1)
        self._listener.settimeout(30)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            conn.settimeout(30)
            while len(self.requests) < self.expect:
                data = conn.recv(0xFFFF * 8)
                if not data:
                    return
                self.requests.append(data)
            replies = self.answer(self.requests)
            if replies is None:
                return  # closes the connection
            for data in replies:
                conn.send(data)
            while conn.recv(0xFFFF * 8):
                pass

    def join(self) -> None:
        self._thread.join(30)
        self._listener.close()
        Path(self.path).unlink()


@pytest.fixture
def sockdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="pfk", dir="/tmp")  # AF_UNIX paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def setkey_against(
    kernel_answer: Answer, expect: int, script: str, dialect: Dialect, sockdir: str, name: str = "k"
) -> Result:
    path = f"{sockdir}/{name}.sock"
    kernel = FakeKernel(path, expect, kernel_answer)
    conf = Path(sockdir) / f"{name}.conf"
    conf.write_text(script)
    try:
        return run(["-f", str(conf)], dialect=dialect, socket=path)
    finally:
        kernel.join()


def with_pid(data: bytes, pid: int) -> bytes:
    return data[:12] + struct.pack("=I", pid) + data[16:]  # sadb_msg_pid, host order


def promisc_copy(data: bytes) -> bytes:
    """``data`` as FreeBSD's keysock delivers a promiscuous copy: behind an SADB_X_PROMISC header."""
    return HEADER.pack(PF_KEY_V2, MsgType.X_PROMISC, 0, 0, (16 + len(data)) // 8, 0, 0, 0) + data


SCRIPT = """\
spdadd 10.0.0.1 10.0.0.2 any -P out none;
get 10.0.0.1 10.0.0.2 esp 0x1000;
delete 10.0.0.1 10.0.0.2 esp 0x1001;
get 10.0.0.1 10.0.0.2 esp 0x1002;
spdadd 10.0.0.3 10.0.0.4 any -P out none;
"""


def answers(dialect: Dialect, *, shuffled: bool) -> Answer:
    """Echo every request as its reply, but fail the DELETE with ENOBUFS; ``shuffled``:
    in reverse order, each reply behind another process's copy of it and, for
    freebsd, a promiscuous copy."""

    def answer(requests: list[bytes]) -> list[bytes]:
        replies = [error_reply(r, errno.ENOBUFS, dialect) if r[1] == MsgType.DELETE else r for r in requests]
        if not shuffled:
            return replies
        out = []
        for reply in reversed(replies):
            out.append(with_pid(reply, OTHER_PID))
            if dialect is Dialect.FREEBSD:
                out.append(promisc_copy(reply))
            out.append(reply)
        return out

    return answer


@DIALECTS
def test_output_and_errors_follow_the_script_whatever_the_order_of_the_replies(sockdir: str, dialect: Dialect) -> None:
    in_order = setkey_against(answers(dialect, shuffled=False), 5, SCRIPT, dialect, sockdir, "a")
    shuffled = setkey_against(answers(dialect, shuffled=True), 5, SCRIPT, dialect, sockdir, "a")
    assert shuffled == in_order
    assert shuffled.status == 1
    failure = error_text(Message(MsgType.DELETE, errno=errno.ENOBUFS), dialect)
    assert failure not in ("", "(null)")
    assert shuffled.err == f"setkey: {sockdir}/a.conf:3: {failure}\n"
    # the two GETs are printed, in the order of the script
    first, second = shuffled.out.index("spi=4096(0x00001000)"), shuffled.out.index("spi=4098(0x00001002)")
    assert 0 < first < second


@DIALECTS
def test_a_reply_that_does_not_decode_ends_the_run_as_undecodable(sockdir: str, dialect: Dialect) -> None:
    # A reply with a sound header (type, seq and pid of the request) and a body no
    # dialect can read: an extension of type 0.
    def answer(requests: list[bytes]) -> list[bytes]:
        (request,) = requests
        return [request[:4] + struct.pack("=H", 3) + request[6:16] + struct.pack("=HHI", 1, 0, 0)]

    r = setkey_against(answer, 1, "spdadd 10.0.0.1 10.0.0.2 any -P out none;\n", dialect, sockdir)
    assert r.status == 1
    assert r.err.startswith("setkey: undecodable message from the daemon: ")
    assert r.err.endswith("(is --dialect the socket's dialect?)\n")


@DIALECTS
def test_the_daemon_closing_in_the_middle_of_a_script_is_one_line(sockdir: str, dialect: Dialect) -> None:
    r = setkey_against(lambda requests: None, 5, SCRIPT, dialect, sockdir)
    assert (r.status, r.out) == (1, "")
    assert r.err == f"setkey: pfkeyd at {sockdir}/k.sock closed the connection\n"


def test_the_linux_priority_check_warns_once(sockdir: str) -> None:
    # The "kernel" keeps no priority: ipsec-tools says so once per run.
    def answer(requests: list[bytes]) -> list[bytes]:
        out = []
        for data in requests:
            msg = decode(data, Dialect.LINUX)
            assert msg.policy is not None
            out.append(
                encode(
                    msg.replace(exts=tuple(replace(e, priority=0) if e is msg.policy else e for e in msg.exts)),
                    Dialect.LINUX,
                )
            )
        return out

    script = "spdadd 10.0.0.1 10.0.0.2 any -P out prio 7 none;\nspdadd 10.0.0.3 10.0.0.4 any -P out prio 9 none;\n"
    r = setkey_against(answer, 2, script, Dialect.LINUX, sockdir)
    assert (r.status, r.err) == (0, "")
    assert r.out == "WARNING: Kernel does not support policy priorities\n"
