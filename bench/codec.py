"""Codec throughput: decode + re-encode of real messages, beside a bare header unpack.

    .venv/bin/python bench/codec.py [--seconds S]

Prints messages per second for

* the 160-byte SADB_ADD that a Linux-built setkey sends (examples/captures);
* a full SA dump entry (SA, SA2, lifetimes, addresses, both keys) in both dialects;
* the baseline: ``struct.unpack_from`` of the 16-byte base header, the least any
  decoder must do, measured in the same run;

and the ratio of each codec figure to the baseline.  The issue's target is at least
60 000 ADD decode+encode per second on one core of the CI machine.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pfkeyd.wire import (
    Address,
    ExtType,
    Key,
    Lifetime,
    Message,
    MsgType,
    Sa,
    Sa2,
    SaType,
    decode,
    encode,
)

ROOT = Path(__file__).resolve().parent.parent
TARGET_ADD_PER_S = 60_000


def _capture(name: str) -> bytes:
    text = (ROOT / "examples" / "captures" / name).read_text()
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


def dump_entry() -> Message:
    """An SA as GET and DUMP report it (reference §8.2 order)."""
    return Message(
        MsgType.DUMP,
        SaType.ESP,
        seq=41,
        pid=4242,
        reserved=1,
        exts=(
            Sa(0x12345678, 4, 1, 5, 12, 0x40),
            Sa2(1, 17, 0),
            Lifetime(ExtType.LIFETIME_HARD, 0, 0, 3600, 0),
            Lifetime(ExtType.LIFETIME_SOFT, 0, 0, 2880, 0),
            Lifetime(ExtType.LIFETIME_CURRENT, 12, 3400, 1_790_000_000, 1_790_000_100),
            Address.host(ExtType.ADDRESS_SRC, "192.0.2.1"),
            Address.host(ExtType.ADDRESS_DST, "192.0.2.2"),
            Key(ExtType.KEY_AUTH, bytes(range(32))),
            Key(ExtType.KEY_ENCRYPT, bytes(range(16))),
        ),
    )


def _decode_encode(raw: bytes, dialect: str) -> bytes:
    return encode(decode(raw, dialect, request=False), dialect)


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn``, timed over batches for at least ``seconds``."""
    n, batch = 0, 1000
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args(argv)

    add = _capture("linux-setkey-add.hex")
    header = struct.Struct("=BBBBHHII")
    entry = dump_entry()
    entry_bytes = {d: encode(entry, d) for d in ("freebsd", "linux")}

    baseline = rate(lambda: header.unpack_from(add), args.seconds)
    results = [
        ("ADD 160 B, linux: decode+encode", rate(lambda: encode(decode(add, "linux"), "linux"), args.seconds)),
    ]
    for d, raw in entry_bytes.items():
        label = f"dump entry {len(raw)} B, {d}: decode+encode"
        results.append((label, rate(partial(_decode_encode, raw, d), args.seconds)))
        results.append((f"dump entry, {d}: encode only", rate(partial(encode, entry, d), args.seconds)))

    print(f"{'measurement':<44} {'msgs/s':>12} {'vs header unpack':>18}")
    print(f"{'baseline: struct.unpack_from of the header':<44} {baseline:>12,.0f} {'1':>18}")
    for label, value in results:
        print(f"{label:<44} {value:>12,.0f} {value / baseline:>18.4f}")
    add_rate = results[0][1]
    verdict = "meets" if add_rate >= TARGET_ADD_PER_S else "MISSES"
    print(f"ADD decode+encode: {add_rate:,.0f}/s {verdict} the target of {TARGET_ADD_PER_S:,}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
