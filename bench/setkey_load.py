"""setkey -f of a big script into a running pfkeyd: statements per second end to end.

    .venv/bin/python bench/setkey_load.py [--statements 100000] [--window N] [--dialect linux]

Generates a script of N statements, alternately ``add`` (ESP, AES-CBC +
HMAC-SHA2-256, every SA its own SPI and source address) and ``spdadd`` (every
policy its own selectors), starts ``python -m pfkeyd`` on a private socket and
measures, in the same run on the same machine:

``parse only``
    :func:`setkey.parser.parse` of the script text in this process: the floor
    of what ``setkey -f`` must do before it sends anything.  Target: at least
    20 000 statements/s.
``setkey -f``
    ``python -m setkey -f script`` as a user runs it, process start-up
    included: parse, check, resolve, REGISTER, then the statements pipelined
    to the daemon; the daemon's statistics must then show every SA and policy.
    Target: at least 15 000 statements/s, and faster than sending one statement
    at a time (the reference setkey's lock-step round trips).
``lock-step``
    the same messages (encoded beforehand, so no setkey work at all) sent on
    one socket one at a time, each waiting for its reply before the next: the
    daemon's round-trip rate, which a setkey sending one statement at a time
    could at best reach if parsing cost nothing.
``setkey -f, window 1``
    ``setkey -f`` as above, process start-up included, but sending one statement
    at a time and waiting for each reply, as the reference setkey does: what
    this setkey would do if it were bound by lock-step round trips.  The
    pipelined run must beat it.
``setkey, window 1`` and ``setkey, window W``
    for scale, on a sample of at most 20 000 statements: ``setkey.cli.main``
    in this process (no start-up, no import) with the pipeline's window set
    to 1 (one round trip at a time) and to its normal size, so the gain of
    pipelining itself shows apart from the parse, check and resolve costs.

Each figure is printed with met/MISSED against its target.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

import pfkeyd.client
from pfkeyd.wire import Dialect, encode
from setkey import cli
from setkey.build import build
from setkey.cli import session
from setkey.parser import parse, setkey_grammar
from setkey.resolve import resolve

ROOT = Path(__file__).resolve().parent.parent
PARSE_TARGET = 20_000
LOAD_TARGET = 15_000
ENC_KEY = "0x00112233445566778899aabbccddeeff"
AUTH_KEY = "0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"


def script(n: int) -> str:
    """n statements: add and spdadd in turn, distinct SPIs and selectors."""
    lines = []
    for i in range(n):
        k = i // 2
        a = f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}"
        if i % 2 == 0:
            lines.append(
                f"add {a} 192.0.2.1 esp 0x{k + 0x1000:x} -m transport -E aes-cbc {ENC_KEY} -A hmac-sha2-256 {AUTH_KEY};"
            )
        else:
            lines.append(
                f"spdadd {a}/32[any] 198.51.{k >> 8 & 255}.{k & 255}/32[any] any -P out ipsec esp/transport//require;"
            )
    return "\n".join(lines) + "\n"


def wait_for_socket(path: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pfkeyd exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            try:
                s.connect(path)
                return
            except OSError:
                pass
        time.sleep(0.05)  # polling for a subprocess's socket to appear
    raise RuntimeError(f"no pfkeyd on {path}")


def counts(path: str) -> tuple[int, int]:
    """(SAs, policies) from the daemon's statistics."""
    status, out, err = trio.run(pfkeyd.client.control, ["stats"], path)
    if status:
        raise RuntimeError(f"pfkeyd stats: {err}")
    sas = re.search(r"(\d+) SAs", out)
    pols = re.search(r"(\d+) policies", out)
    assert sas and pols, out
    return int(sas[1]), int(pols[1])


def setkey(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "setkey", *args], capture_output=True, text=True, check=False, cwd=ROOT
    )


def lock_step(path: str, messages: list[bytes]) -> tuple[float, int]:
    """Send each message and wait for its reply before the next; (seconds, errors)."""
    errors = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.connect(path)
        start = time.perf_counter()
        for data in messages:
            s.send(data)
            while True:
                reply = s.recv(65536)
                # Linux broadcasts ADD and SPDADD replies to every socket, this
                # one included: wait for the reply to this request (its seq).
                if reply[8:12] == data[8:12] and reply[1] == data[1]:
                    break
            if reply[2]:
                errors += 1
        return time.perf_counter() - start, errors


def in_process(path: str, dialect: Dialect, script_path: Path, window: int) -> float:
    """Seconds for setkey.cli.main -f in this process, with the given window."""
    saved = session.WINDOW
    session.WINDOW = window
    try:
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        status = cli.main(
            ["--dialect", dialect.value, "--socket", path, "-f", str(script_path)], cli.Runtime(stdout=out, stderr=err)
        )
        seconds = time.perf_counter() - start
    finally:
        session.WINDOW = saved
    if status != 0:
        raise RuntimeError(f"setkey -f (window {window}) failed: {err.getvalue()[:2000]}")
    return seconds


def setkey_window_1(*args: str) -> subprocess.CompletedProcess[str]:
    """``setkey`` with its pipeline's window set to 1 (one round trip at a time)."""
    code = "import sys; from setkey import cli; from setkey.cli import session; session.WINDOW = 1; sys.exit(cli.main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, cwd=ROOT)


def flush(common: list[str]) -> None:
    for option in ("-F", "-FP"):
        if setkey(*common, option).returncode != 0:
            raise RuntimeError(f"setkey {option} failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=100_000)
    parser.add_argument("--dialect", choices=[d.value for d in Dialect], default="linux")
    args = parser.parse_args()
    n = args.statements
    dialect = Dialect(args.dialect)
    text = script(n)

    setkey_grammar()
    start = time.perf_counter()
    commands = parse(text, "bench.conf")
    parse_s = time.perf_counter() - start
    resolved = resolve(commands)
    pid = os.getpid()
    messages = []
    for seq, item in enumerate(resolved, 1):
        for m in build(item, dialect, pid):
            messages.append(encode(m.replace(seq=seq), dialect))

    with tempfile.TemporaryDirectory(prefix="pfkl", dir="/tmp") as tmp:
        path = f"{tmp}/p.sock"
        conf = Path(f"{tmp}/pfkeyd.conf")
        conf.write_text(f"pfkeyd.max_sas={max(n, 1)}\npfkeyd.max_policies={max(n, 1)}\n")
        script_path = Path(f"{tmp}/bench.conf")
        script_path.write_text(text)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "pfkeyd", "-s", f"{path}:{dialect.value}", "-f", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_socket(path, daemon)
            common = ["--dialect", dialect.value, "--socket", path]

            start = time.perf_counter()
            done = setkey(*common, "-f", str(script_path))
            load_s = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"setkey -f failed ({done.returncode}): {done.stderr[:2000]}")
            loaded = counts(path)
            expected = ((n + 1) // 2, n // 2)
            if loaded != expected:
                raise RuntimeError(f"the daemon holds {loaded} (SAs, policies), expected {expected}")

            flush(common)
            step_s, errors = lock_step(path, messages)
            if errors:
                raise RuntimeError(f"{errors} lock-step requests failed")

            flush(common)
            start = time.perf_counter()
            done = setkey_window_1(*common, "-f", str(script_path))
            one_by_one_s = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"setkey -f (window 1) failed ({done.returncode}): {done.stderr[:2000]}")

            sample = min(n, 20_000)
            sample_path = Path(f"{tmp}/sample.conf")
            sample_path.write_text(script(sample))
            flush(common)
            one_s = in_process(path, dialect, sample_path, 1)
            flush(common)
            window_s = in_process(path, dialect, sample_path, session.WINDOW)
        finally:
            daemon.terminate()
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()

    parse_rate, load_rate, step_rate, one_rate = n / parse_s, n / load_s, n / step_s, n / one_by_one_s
    print(
        f"setkey load: {n:,} statements ({(n + 1) // 2:,} add, {n // 2:,} spdadd), {dialect.value} dialect, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"  parse only (setkey.parser.parse)       {parse_rate:>10,.0f} statements/s  "
        f"(target >= {PARSE_TARGET:,}: {'met' if parse_rate >= PARSE_TARGET else 'MISSED'})"
    )
    print(
        f"  lock-step round trips (pre-encoded)     {step_rate:>10,.0f} statements/s  "
        "(baseline: the daemon alone, no setkey work)"
    )
    print(
        f"  setkey -f, one at a time (window 1)     {one_rate:>10,.0f} statements/s  "
        "(baseline: this setkey bound by lock-step round trips)"
    )
    faster = load_rate > one_rate
    met = load_rate >= LOAD_TARGET
    print(
        f"  setkey -f end to end (process start-up) {load_rate:>10,.0f} statements/s  "
        f"(target >= {LOAD_TARGET:,}: {'met' if met else 'MISSED'}; "
        f"{load_rate / one_rate:.2f}x window 1: {'met' if faster else 'MISSED'}; "
        f"{load_rate / step_rate:.2f}x pre-encoded lock-step)"
    )
    print(f"  for scale, {sample:,} statements through setkey.cli.main in this process:")
    print(f"    window 1 (one round trip at a time)  {sample / one_s:>10,.0f} statements/s")
    print(
        f"    window {session.WINDOW} (pipelined)              {sample / window_s:>10,.0f} statements/s  "
        f"({one_s / window_s:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
