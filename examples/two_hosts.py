"""two_hosts: two pfkeyd "hosts" keyed by examples/keymgr.py from one ACQUIRE.

    python examples/two_hosts.py [--dialect linux|freebsd]

What it does, in order:

1. starts two daemons, ``python -m pfkeyd``, each on a private socket in a fresh
   temporary directory: host A (10.0.0.1) and host B (10.0.0.2);
2. loads on each host the policies of a transport-mode ESP connection between
   them, as ``setkey`` would (``spdadd A B any -P out ipsec esp/transport//require``
   and the inbound one; mirrored on B);
3. starts the key manager of keymgr.py, registered on host A;
4. asks host A what it would do with a packet from A to B (``pfkeyd lookup -s
   A-socket out 10.0.0.1 10.0.0.2``, what the packet path does): no SA yet, so
   A sends an SADB_ACQUIRE, and the key manager keys both hosts;
5. asks again (the packet is now protected), prints both SADs, keys included,
   and stops everything (the daemons get SIGTERM and remove their sockets).

Exit status 0 when both hosts hold the same two SAs.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import trio
from keymgr import Keyed, KeyManager

import pfkeyd.client
from pfkeyd import algorithms
from pfkeyd.client import Connection
from pfkeyd.defaults import control_path
from pfkeyd.wire import (
    Address,
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
    SaState,
    SaType,
)

HOST_A, HOST_B = "10.0.0.1", "10.0.0.2"
#: How long the whole run may take before it is given up (it needs about a second).
TIMEOUT = 60


def policy(direction: int, src: str, dst: str) -> Message:
    """``spdadd SRC DST any -P DIR ipsec esp/transport//require;``"""
    pol = Policy(
        PolicyType.IPSEC,
        direction,
        priority=0x80000000,
        requests=(IpsecRequest(IpProto.ESP, Mode.TRANSPORT, Level.REQUIRE),),
    )
    return Message(
        MsgType.X_SPDADD,
        SaType.UNSPEC,
        exts=(pol, Address.host(ExtType.ADDRESS_SRC, src), Address.host(ExtType.ADDRESS_DST, dst)),
    )


async def load_policies(conn: Connection, local: str, peer: str) -> None:
    await conn.request(policy(Direction.OUTBOUND, local, peer))
    await conn.request(policy(Direction.INBOUND, peer, local))


async def start_daemon(nursery: trio.Nursery, path: str, dialect: str, log: Path) -> None:
    """``python -m pfkeyd -s PATH:DIALECT`` until the nursery is cancelled (then SIGTERM)."""
    with log.open("ab") as err:
        await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-m", "pfkeyd", "-s", f"{path}:{dialect}"],
                stdin=subprocess.DEVNULL,
                stderr=err,
                check=False,
            )
        )
    # The daemon makes its PF_KEY socket, then its control socket: once the control
    # socket answers, both are ready.
    ctl = control_path(path)
    with trio.fail_after(TIMEOUT):
        while True:
            probe = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_SEQPACKET)
            with probe:
                try:
                    await probe.connect(ctl)
                    return
                except (FileNotFoundError, ConnectionRefusedError):
                    pass
            await trio.sleep(0.02)


async def lookup(path: str, src: str, dst: str) -> str:
    """``pfkeyd lookup -s PATH out SRC DST``: the daemon's decision for a packet."""
    result = await trio.run_process(
        [sys.executable, "-m", "pfkeyd", "lookup", "-s", path, "out", src, dst],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0:
        msg = f"pfkeyd lookup failed: {result.stderr.decode().strip()}"
        raise RuntimeError(msg)
    return result.stdout.decode()


def _alg_name(kind: algorithms.Kind, alg_id: int) -> str:
    alg = algorithms.by_id(kind, alg_id)
    return alg.names[0] if alg is not None else str(alg_id)


async def sad(conn: Connection) -> list[str]:
    """One line per SA of the host, keys included (a dump answers only its requester)."""
    lines = []
    async for entry in conn.dump(SaType.ESP):
        sa, src, dst = entry.sa, entry.src, entry.dst
        assert sa is not None and src is not None and dst is not None
        enc, auth = entry.key_encrypt, entry.key_auth
        lines.append(
            f"esp {src.addr} -> {dst.addr} spi {sa.spi:#010x} {SaState(sa.state).name.lower()}"
            f" enc {_alg_name(algorithms.Kind.ENCRYPT, sa.encrypt)} 0x{enc.data.hex() if enc else ''}"
            f" auth {_alg_name(algorithms.Kind.AUTH, sa.auth)} 0x{auth.data.hex() if auth else ''}"
        )
    return sorted(lines)


async def run(dialect: str, workdir: str) -> bool:
    path_a, path_b = os.path.join(workdir, "a.sock"), os.path.join(workdir, "b.sock")
    log = Path(workdir) / "pfkeyd.log"
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as daemons:
            await start_daemon(daemons, path_a, dialect, log)
            await start_daemon(daemons, path_b, dialect, log)
            async with pfkeyd.client.open(path_a, dialect) as a, pfkeyd.client.open(path_b, dialect) as b:
                await load_policies(a, HOST_A, HOST_B)
                await load_policies(b, HOST_B, HOST_A)
                keyed_send, keyed = trio.open_memory_channel[tuple[Keyed, Keyed]](1)
                async with trio.open_nursery() as nursery:
                    await nursery.start(KeyManager(a, b).serve, keyed_send)
                    print(f"host A ({HOST_A}) on {path_a}, host B ({HOST_B}) on {path_b}, {dialect} dialect\n")
                    print(f"$ pfkeyd lookup -s {path_a} out {HOST_A} {HOST_B}")
                    print(await lookup(path_a, HOST_A, HOST_B))
                    out, back = await keyed.receive()
                    print(
                        f"keymgr: keyed {out.src} -> {out.dst} spi {out.spi:#010x} "
                        f"and {back.src} -> {back.dst} spi {back.spi:#010x} on both hosts\n"
                    )
                    print(f"$ pfkeyd lookup -s {path_a} out {HOST_A} {HOST_B}")
                    print(await lookup(path_a, HOST_A, HOST_B))
                    sads = {}
                    for name, addr, conn in (("A", HOST_A, a), ("B", HOST_B, b)):
                        sads[name] = await sad(conn)
                        print(f"host {name} ({addr}) SAD:")
                        for line in sads[name]:
                            print(f"  {line}")
                        print()
                    nursery.cancel_scope.cancel()
            daemons.cancel_scope.cancel()  # SIGTERM to both daemons
    same = sads["A"] == sads["B"] and len(sads["A"]) == 2
    print("both hosts hold the same SAs" if same else "the hosts' SADs differ")
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Two pfkeyd hosts keyed from one ACQUIRE.")
    parser.add_argument("-d", "--dialect", choices=("linux", "freebsd"), default="linux")
    args = parser.parse_args(argv)
    # /tmp keeps the socket paths short (AF_UNIX allows 107 bytes).
    with tempfile.TemporaryDirectory(prefix="two-hosts-", dir="/tmp") as workdir:
        return 0 if trio.run(run, args.dialect, workdir) else 1


if __name__ == "__main__":
    sys.exit(main())
