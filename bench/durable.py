"""pfkeyd with durable state (--state-dir): ADD throughput and restart time.

    .venv/bin/python bench/durable.py add     [--count 100000] [--window 64] [--rounds 2]
    .venv/bin/python bench/durable.py restart [--count 1000000] [--offline]

``add``
    one client pipelines ADDs (bench/daemon.py's messages) to a pfkeyd with a state
    directory and to one without, in alternating rounds of the same run.  Target:
    with durable state, at least 0.5 of the rate without.  Also printed: how many
    syncs the durable daemon made (its journal's group commits show as far fewer
    syncs than ADDs).
``restart``
    fills a daemon with a state directory with ``--count`` SAs, stops it (SIGTERM),
    starts it again on the same directory and measures the time from the start
    of the process to the first answered SADB_REGISTER.  Target: within 10 s for
    1 000 000 SAs.  ``--offline`` writes the same state (a snapshot) through an
    engine in this process instead of filling a daemon through its socket, which
    takes minutes.  Baseline: the same from the start of a daemon with an empty
    state directory.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import daemon as base

from pfkeyd.effects import Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import Knobs
from pfkeyd.state import SNAPSHOT_MAGIC, header, scan, snapshot_records, table_order
from pfkeyd.wire import Message, MsgType, SaType, decode, encode


def start(path: str, state: str | None) -> subprocess.Popen[bytes]:
    config = Path(path + ".conf")
    config.write_text("pfkeyd.max_sas=2000000\n")
    argv = [sys.executable, "-m", "pfkeyd", "-s", f"{path}:{base.DIALECT}", "-f", str(config)]
    if state is not None:
        argv += ["--state-dir", state]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"pfkeyd exited {proc.returncode}: {err.decode()[-2000:]}")
    return err.decode()


def first_answer(path: str, proc: subprocess.Popen[bytes], started: float, timeout: float = 120.0) -> float:
    """Seconds from ``started`` until a REGISTER is answered."""
    register = encode(Message(MsgType.REGISTER, SaType.ESP, 1, os.getpid()), base.DIALECT)
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pfkeyd exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.settimeout(timeout)
                s.connect(path)
                s.send(register)
                if s.recv(65536):
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.005)
    raise RuntimeError("no answer")


def bench_add(tmp: str, count: int, window: int, rounds: int) -> None:
    messages = [base.add_message(i) for i in range(count)]
    rates: dict[bool, list[float]] = {False: [], True: []}
    syncs: list[int] = []
    for r in range(rounds):
        for durable in (False, True):
            path = f"{tmp}/a{r}{int(durable)}.sock"
            state = f"{tmp}/state{r}" if durable else None
            proc = start(path, state)
            first_answer(path, proc, time.monotonic())
            s = base.connect(path)
            seconds, errors = base.pipeline(s, messages, window)
            s.close()
            stop(proc)
            if errors:
                raise RuntimeError(f"{errors} ADDs failed")
            rates[durable].append(count / seconds)
            if durable:
                syncs.append(scan(Path(f"{state}/journal.0").read_bytes()).end)
    plain, durable_rate = max(rates[False]), max(rates[True])
    print(f"ADD with durable state: {count:,} requests, window {window}, best of {rounds} rounds")
    print(
        f"  baseline: pfkeyd without --state-dir  {plain:>10,.0f} msgs/s  (rounds: "
        f"{', '.join(f'{x:,.0f}' for x in rates[False])})"
    )
    print(
        f"  pfkeyd --state-dir                    {durable_rate:>10,.0f} msgs/s  (rounds: "
        f"{', '.join(f'{x:,.0f}' for x in rates[True])})"
    )
    print(f"  journal: {syncs[-1] / count:.0f} bytes per ADD")
    ratio = durable_rate / plain
    print(f"  ratio {ratio:.2f} (target >= 0.5): {'met' if ratio >= 0.5 else 'MISSED'}")


def offline_state(state: str, count: int) -> None:
    """Write the state a daemon filled with ``count`` of bench/daemon.py's ADDs would
    leave (a snapshot), without a daemon: the same ADDs through an engine."""
    engine = KeyEngine(Knobs().set("pfkeyd.max_sas", 2 * count))
    engine.client_opened(1, base.DIALECT)
    now = Instant(0.0, int(time.time()))
    for i in range(count):
        effects = engine.serve_hot(1, base.add_message(i), now)
        if effects is None:
            engine.handle(1, decode(base.add_message(i), base.DIALECT, request=True), now)
    sas, policies = table_order(engine.sad, engine.spd)
    os.mkdir(state, 0o700)
    with open(f"{state}/snapshot", "wb") as fh:
        fh.write(header(SNAPSHOT_MAGIC, 0))
        for rec in snapshot_records(sas, policies, engine.allocators(), (), time.time()):
            fh.write(rec)


def bench_restart(tmp: str, count: int, offline: bool) -> None:
    path = f"{tmp}/r.sock"
    state = f"{tmp}/state"
    started = time.monotonic()
    proc = start(path, f"{tmp}/empty")
    empty = first_answer(path, proc, started)
    stop(proc)
    fill_start = time.monotonic()
    if offline:
        offline_state(state, count)
    else:
        proc = start(path, state)
        first_answer(path, proc, time.monotonic())
        base.fill(path, count)
        stop(proc)
    fill_s = time.monotonic() - fill_start
    files = {name: os.path.getsize(f"{state}/{name}") for name in sorted(os.listdir(state))}
    started = time.monotonic()
    proc = start(path, state)
    answered = first_answer(path, proc, started)
    err = stop(proc)
    restored = [line for line in err.splitlines() if "state: restored" in line]
    how = "written offline through an engine" if offline else "filled through the socket"
    print(f"restart with {count:,} SAs ({how} in {fill_s:.1f} s, {count / fill_s:,.0f} SAs/s)")
    print(f"  state directory: {', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in files.items())}")
    print(f"  baseline: start with an empty state directory, first answer after {empty:.2f} s")
    print(
        f"  start with the state, first answer after {answered:.2f} s (target <= 10 s): "
        f"{'met' if answered <= 10 else 'MISSED'}"
    )
    if restored:
        print(f"  daemon log: {restored[-1].split('INFO: ', 1)[-1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("add", "restart"))
    parser.add_argument("--count", type=int)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--offline", action="store_true", help="restart: write the state through an engine instead of filling a daemon"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="pfkb") as tmp:
        if args.which == "add":
            bench_add(tmp, args.count or 100_000, args.window, args.rounds)
        else:
            bench_restart(tmp, args.count or 1_000_000, args.offline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
