"""The data plane's inbound step in a hot loop: the one-step tunnel path beside the general path.

    .venv/bin/python bench/inbound.py [--packets N] [--rounds R] [--size BYTES]

Two data planes over in-memory key engines (tests/dataplane/test_plane.py's
``tunnel_pair``: an ESP tunnel 10.1.0.0/24 <-> 10.2.0.0/24, AES-GCM-128 with a
replay window).  Host A seals N distinct datagrams of one UDP flow (BYTES of
payload, the first four a packet number); host B's ``DataPlane.inbound`` (SAD
lookup, replay, open, decapsulation, counting, the inbound policy check) takes
them in order, timed over the whole loop: microseconds per packet.  Each round
measures both paths on fresh planes, interleaved: "one-step" as the daemon runs
(:func:`pfkeyd.packet.fasttunnel.unprotect` first), "general" with that path
switched off (:func:`pfkeyd.packet.bundle.unprotect` for every packet).  The
median and the minimum over the rounds are printed; on a loaded machine the
minimum is the steadier figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pfkeyd.packet import fasttunnel
from tests.dataplane.test_plane import IA, IB, plane, tunnel_pair, udp
from tests.engine.conftest import T0


def _declines(*_args: object) -> None:
    """The inbound one-step path switched off: it declines every datagram."""
    return None


def one_round(n: int, size: int, *, fast: bool) -> float:
    """Microseconds per packet of ``DataPlane.inbound`` over ``n`` fresh packets."""
    ea, eb = tunnel_pair()
    pa, _ = plane(ea)
    pb, _ = plane(eb)
    wires = []
    for i in range(n):
        (wire,) = pa.outbound(udp(IA, IB, 1000, 2000, i.to_bytes(4, "big") + bytes(max(0, size - 4))), T0)
        wires.append(wire)
    # The data plane calls fasttunnel.unprotect through the module: swap it there.
    saved = fasttunnel.unprotect
    if not fast:
        vars(fasttunnel)["unprotect"] = _declines
    try:
        inbound = pb.inbound
        start = time.perf_counter()
        for wire in wires:
            inbound(wire, T0)
        took = time.perf_counter() - start
    finally:
        vars(fasttunnel)["unprotect"] = saved
    if eb.packet_counters["esp.input"] != n or pb.counters["policy.in_reject"]:
        raise SystemExit(f"not every packet went through: {eb.packet_counters.snapshot()}")
    return took / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--size", type=int, default=56, help="UDP payload bytes")
    args = ap.parse_args()
    got: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for fast in (False, True):
            got[fast].append(one_round(args.packets, args.size, fast=fast))
    for fast, name in ((False, "general"), (True, "one-step")):
        v = got[fast]
        each = " ".join(f"{x:.2f}" for x in v)
        print(f"{name:9s} µs/packet: median {statistics.median(v):.2f}  min {min(v):.2f}  ({each})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
