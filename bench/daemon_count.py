"""Instructions the daemon spends per ADD and per dump entry, counted with callgrind.

    .venv/bin/python bench/daemon_count.py add  [--tree DIR] [--count 2000] [--window 64]
    .venv/bin/python bench/daemon_count.py dump [--tree DIR] [--count 2000]

Runs ``python -m pfkeyd`` of the tree ``DIR`` (default: this one; its own
``.venv``) under ``valgrind --tool=callgrind`` twice and prints the difference
of the two totals divided by the requests that differ, so start-up and shutdown
cancel out.  The client runs natively.  Instruction counts do not depend on the
host's load, so trees can be compared one after the other (the wall-clock A/B
of ``daemon.py`` cannot).

``add``
    the runs send ``--count`` and ``3 * --count`` ADDs of one shape (after the
    first two, the daemon's hot path answers them) keeping ``--window``
    outstanding: instructions per ADD.  ``--window 1`` gives the lock-step cost.
``dump``
    both runs fill the SAD with ``--count`` SAs, then read one SADB_DUMP, or
    three: instructions per dump entry.

Needs valgrind.  The callgrind profiles are kept under ``--out`` for
``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon import add_message, connect, pipeline, read_dump

DIALECT = "linux"
COLLECTED = re.compile(rb"Collected : (\d+)")


def run(tree: Path, tmp: Path, out: Path, adds: int, window: int, dumps: int) -> int:
    """Total instructions of one daemon run that takes ``adds`` ADDs, then ``dumps`` dumps."""
    path = str(tmp / f"pfkeyd-{adds}-{dumps}.sock")
    config = Path(path + ".conf")
    config.write_text("pfkeyd.max_sas=2000000\n")
    argv = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        str(tree / ".venv/bin/python"),
        "-m",
        "pfkeyd",
        "-s",
        f"{path}:{DIALECT}",
        "-f",
        str(config),
    ]
    proc = subprocess.Popen(argv, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                connect(path).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not start") from None
                time.sleep(0.1)
        s = connect(path)
        _, errors = pipeline(s, [add_message(i) for i in range(adds)], window)
        if errors:
            raise RuntimeError(f"{errors} ADDs failed")
        for _ in range(dumps):
            entries, _ = read_dump(s)
            if entries != adds:
                raise RuntimeError(f"dump returned {entries} of {adds} entries")
        s.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    match = COLLECTED.search(err)
    if match is None:
        raise RuntimeError(f"no callgrind total:\n{err.decode(errors='replace')}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["add", "dump"])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    tree = args.tree.resolve()
    n = args.count
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "add":
            a = run(tree, Path(tmp), args.out / "callgrind.add.small", n, args.window, 0)
            b = run(tree, Path(tmp), args.out / "callgrind.add.big", 3 * n, args.window, 0)
            print(f"{tree}: {(b - a) / (2 * n):,.0f} instructions per ADD (window {args.window})")
        else:
            a = run(tree, Path(tmp), args.out / "callgrind.dump.small", n, 64, 1)
            b = run(tree, Path(tmp), args.out / "callgrind.dump.big", n, 64, 3)
            print(f"{tree}: {(b - a) / (2 * n):,.0f} instructions per dump entry")


if __name__ == "__main__":
    main()
