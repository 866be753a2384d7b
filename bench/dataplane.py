"""The data plane's throughput and latency, beside the bare veth and a limit loop, in one run.

    sudo .venv/bin/python bench/dataplane.py [--seconds S] [--profile]

Two network namespaces joined by a veth (tests/netns.py: 192.0.2.1 and 192.0.2.2),
each with a host address behind it (10.1.0.1, 10.2.0.1).  Measured, in order:

1. **bare veth**: a TCP stream 192.0.2.1 -> 192.0.2.2 for S seconds (Mbit/s), and
   the median RTT of 200 ICMP echoes;
2. **limit loop**: in host A, one process reads what a UDP blast to 10.2.0.1 (1400
   bytes a datagram) routes into a TUN, seals each packet with a bare
   ``AESGCM.encrypt`` (no ESP framing) and sends it on a raw socket of protocol 50
   to 192.0.2.2, in bursts as the data plane does: packets per second;
3. **forwarder floor**: two processes forwarding TUN <-> raw protocol 50 with an
   outer header and nothing else (no crypto, no SPD), on the data plane's I/O
   classes and its packet loop (``pfkeyd.dataplane.pump``: a blocking epoll in a
   thread of its own beside an idle trio loop, as in the daemon): the median RTT of
   200 echoes through them, the floor of the data plane; then the same forwarders
   written as trio tasks (the loop the data plane used before), for comparison;
4. **tunnel**: ``pfkeyd --dataplane`` in both namespaces, keyed by ``setkey -f``
   with an ESP tunnel 10.1.0.0/24 <-> 10.2.0.0/24 over the veth, AES-GCM-128
   (RFC 4106, manual keys): the same UDP blast (packets per second host A's
   daemon sends, from its counters; host B's daemon is stopped meanwhile, so that
   both loops work under the same conditions), then a TCP stream 10.1.0.1 -> 10.2.0.1 for S
   seconds (Mbit/s, content hashed at the receiver), and the median RTT of 200
   echoes through the tunnel.  The TUN's MTU is ``--mtu`` (1400, pfkeyd's default: no
   outer datagram is fragmented);
5. **tunnel, large MTU**: the daemons again with ``--mtu`` ``--big-mtu`` (65000), and the
   same TCP stream: TCP then hands the TUN segments of up to 64 KB, each becomes one
   ESP datagram that the sending kernel fragments to the veth's 1500 bytes and the
   receiving kernel reassembles before the daemon reads it (RawSender's fragmenting
   path), so the per-packet cost of Python is paid once per 64 KB instead of once per
   1400 bytes, as the bare veth's TCP moves 64 KB units (GSO) through the kernel.
6. **tunnel, Python path**: the daemons of step 4 with ``--no-compiled`` (every
   packet through the Python packet thread, as before the compiled loop): the TCP
   stream and the echoes again, to show what the compiled loop changes
   (``--no-python-path`` skips it).

In steps 4 and 5 the daemons carry the tunnel's packets in their compiled loop
(pfkeyd.8, "The compiled loop"); the share of the blast it carried is printed.

Both loops share two cores with the blaster (and, on a shared machine, with
whatever else runs), so besides packets per second of wall-clock time each is
also given per CPU-second of its own process (user + system time, from
/proc/<pid>/stat and ``time.process_time``): what one core would carry.

Targets (issue 13): tunnel packet rate >= 0.5 of the limit loop's; tunnel TCP >=
5% of the bare veth's; tunnel median RTT <= bare + 0.3 ms.  With ``--profile``,
host A's packet thread runs under cProfile and the top functions by own time
are printed (where the time goes; cProfile slows everything down).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyroute2 import IPRoute  # noqa: E402

from tests.netns import Namespace, Pair, pair, skip_reason  # noqa: E402

INNER = ("10.1.0.1", "10.2.0.1")
KEY_AB = "0x" + "5a" * 16 + "01020304"
KEY_BA = "0x" + "a5" * 16 + "05060708"

CHILD = r"""
import hashlib, os, socket, struct, sys, time
mode = sys.argv[1]
if mode == "sink":  # TCP: accept one stream, print bytes and seconds
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((sys.argv[2], 5201)); ls.listen(1); print("ready", flush=True)
    c, _ = ls.accept(); n = 0; t0 = None
    while chunk := c.recv(1 << 18):
        t0 = t0 or time.perf_counter(); n += len(chunk)
    print(n, time.perf_counter() - t0, flush=True)
elif mode == "stream":  # TCP: send for S seconds
    s = socket.create_connection((sys.argv[3], 5201), source_address=(sys.argv[2], 0), timeout=10)
    buf = os.urandom(1 << 16); end = time.perf_counter() + float(sys.argv[4])
    while time.perf_counter() < end:
        s.sendall(buf)
    s.close()
elif mode == "blast":  # UDP: 1400-byte datagrams for S seconds
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[2], 0)); s.setblocking(False)
    buf = os.urandom(1372); end = time.perf_counter() + float(sys.argv[4]); n = 0
    while time.perf_counter() < end:
        for _ in range(64):
            try:
                s.sendto(buf, (sys.argv[3], 9)); n += 1
            except (BlockingIOError, OSError):
                pass
    print(n, flush=True)
elif mode == "ping":  # ICMP echo: print the median RTT in ms of N echoes
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); s.bind((sys.argv[2], 0)); s.settimeout(2)
    def ck(b):
        t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t & 0xffff) + (t >> 16); return ~(t + (t >> 16)) & 0xffff
    rtts = []
    for seq in range(1, int(sys.argv[4]) + 1):
        body = struct.pack("!HH", 9, seq) + bytes(56)
        t0 = time.perf_counter()
        s.sendto(struct.pack("!BBH", 8, 0, ck(b"\x08\x00\x00\x00" + body)) + body, (sys.argv[3], 0))
        while True:
            d = s.recv(2048)[20:]
            if d[0] == 0 and struct.unpack("!HH", d[4:8]) == (9, seq):
                rtts.append((time.perf_counter() - t0) * 1000); break
        time.sleep(0.002)
    rtts.sort(); print(rtts[len(rtts) // 2], flush=True)
"""

LIMIT_LOOP = r"""
import os, socket, sys, time
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyroute2 import IPRoute
from pfkeyd.dataplane.io import RawSender, TunDevice
tun = TunDevice.open("lim0")
with IPRoute() as ipr:
    i = ipr.link_lookup(ifname="lim0")[0]
    ipr.link("set", index=i, mtu=1400, state="up")
    ipr.route("add", dst="10.2.0.0", dst_len=24, oif=i)
tx = RawSender(socket.AF_INET, 0x5050)
aead = AESGCM(bytes(16)); salt = bytes(4)
src, dst = socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.2")
def hdr(n):
    return bytes((0x45, 0)) + n.to_bytes(2, "big") + bytes(4) + bytes((64, 50, 0, 0)) + src + dst
count = 0
async def main():
    global count
    print("ready", flush=True)
    with trio.move_on_after(float(sys.argv[1]) + 3):
        iv = 0
        while True:
            for dg in await tun.receive_batch():
                iv += 1
                ct = aead.encrypt(salt + iv.to_bytes(8, "big"), dg, b"12345678")
                await tx.send(hdr(20 + len(ct)) + ct)
                count += 1
cpu0 = time.process_time()
trio.run(main)
print(count, time.process_time() - cpu0, flush=True)
"""


#: A forwarder with nothing in it: TUN -> outer IPv4 header -> raw socket and back, no
#: crypto, no SPD, on the data plane's own I/O classes, as two trio tasks (the floor
#: of the data plane before its packet loop left trio; kept for comparison).
FORWARDER = r"""
import socket, struct, sys, trio
from pyroute2 import IPRoute
from pfkeyd.dataplane.io import RawSender, RawReceiver, TunDevice
me, peer, remote = sys.argv[1], sys.argv[2], sys.argv[3]
tun = TunDevice.open("fl0")
with IPRoute() as ipr:
    i = ipr.link_lookup(ifname="fl0")[0]
    ipr.link("set", index=i, mtu=1400, state="up")
    ipr.route("add", dst=remote, dst_len=24, oif=i)
open("/proc/sys/net/ipv4/conf/fl0/rp_filter", "w").write("0")
tx = RawSender(socket.AF_INET, 0x5050); rx = RawReceiver(socket.AF_INET, 50)
src, dst = socket.inet_aton(me), socket.inet_aton(peer)
async def out():
    while True:
        for dg in await tun.receive_batch():
            await tx.send(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(dg), 0, 0, 64, 50, 0, src, dst) + dg)
async def inn():
    while True:
        for dg in await rx.receive_batch():
            await tun.send(dg[20:])
async def main():
    print("ready", flush=True)
    async with trio.open_nursery() as n:
        n.start_soon(out); n.start_soon(inn)
trio.run(main)
"""


#: The same empty forwarder on the data plane's packet loop (pfkeyd.dataplane.pump):
#: a blocking epoll in its own thread, beside an idle trio loop as in the daemon.
THREAD_FORWARDER = r"""
import socket, struct, sys, trio
from pyroute2 import IPRoute
from pfkeyd.dataplane.io import RawSender, RawReceiver, TunDevice
from pfkeyd.dataplane.pump import PacketLoop
me, peer, remote = sys.argv[1], sys.argv[2], sys.argv[3]
tun = TunDevice.open("fl0")
with IPRoute() as ipr:
    i = ipr.link_lookup(ifname="fl0")[0]
    ipr.link("set", index=i, mtu=1400, state="up")
    ipr.route("add", dst=remote, dst_len=24, oif=i)
open("/proc/sys/net/ipv4/conf/fl0/rp_filter", "w").write("0")
tx = RawSender(socket.AF_INET, 0x5050); rx = RawReceiver(socket.AF_INET, 50)
src, dst = socket.inet_aton(me), socket.inet_aton(peer)
loop = PacketLoop()
def out():
    for dg in tun.receive_now():
        loop.send(tx.send_now, tx.fileno(), struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(dg), 0, 0, 64, 50, 0, src, dst) + dg)
def inn():
    for dg in rx.receive_now():
        loop.send(tun.send_now, tun.fd, dg[20:])
loop.watch(tun.fileno(), out); loop.watch(rx.fileno(), inn)
loop.start(lambda: None)
print("ready", flush=True)
trio.run(trio.sleep_forever)
"""


def forwarder_rtt(p: Pair, program: str = FORWARDER) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = []
    try:
        for ns, me, peer, remote in (
            (p.a, Pair.V4[0], Pair.V4[1], "10.2.0.0"),
            (p.b, Pair.V4[1], Pair.V4[0], "10.1.0.0"),
        ):
            proc = subprocess.Popen(
                ns.argv(sys.executable, "-c", program, me, peer, remote), stdout=subprocess.PIPE, text=True, env=env
            )
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return ping(p, *INNER)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def child(ns: Namespace, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(ns.argv(sys.executable, "-c", CHILD, *args), stdout=subprocess.PIPE, text=True)


def tcp(p: Pair, src: str, dst: str, seconds: float) -> float:
    sink = child(p.b, "sink", dst)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    subprocess.run(p.a.argv(sys.executable, "-c", CHILD, "stream", src, dst, str(seconds)), check=True, timeout=60)
    out, _ = sink.communicate(timeout=60)
    n, dt = out.split()
    return int(n) * 8 / float(dt) / 1e6


def ping(p: Pair, src: str, dst: str, count: int = 200) -> float:
    r = subprocess.run(
        p.a.argv(sys.executable, "-c", CHILD, "ping", src, dst, str(count)),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return float(r.stdout)


def blast(p: Pair, seconds: float) -> int:
    r = subprocess.run(
        p.a.argv(sys.executable, "-c", CHILD, "blast", INNER[0], INNER[1], str(seconds)),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return int(r.stdout)


def limit_loop(p: Pair, seconds: float) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    loop = subprocess.Popen(
        p.a.argv(sys.executable, "-c", LIMIT_LOOP, str(seconds)), stdout=subprocess.PIPE, text=True, env=env
    )
    assert loop.stdout is not None and loop.stdout.readline().strip() == "ready"
    blast(p, seconds)
    out, _ = loop.communicate(timeout=60)
    count, cpu = out.split()[-2:]
    return int(count) / seconds, int(count) / float(cpu)


def control(sock: str, *argv: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(10)
        s.connect(sock[: -len(".sock")] + ".ctl")
        s.send(json.dumps({"argv": list(argv)}).encode())
        return str(json.loads(s.recv(1 << 22))["out"])


#: pfkeyd with its packet thread under cProfile (a profiler sees only the thread that
#: enabled it, and the packets are moved in that thread): the stats go to argv[1].
PROFILED = r"""
import cProfile, sys
from pfkeyd.cli import main
from pfkeyd.dataplane import pump
out = sys.argv.pop(1)
plain = pump.PacketLoop.run
def run(self):
    prof = cProfile.Profile()
    prof.enable()
    try:
        plain(self)
    finally:
        prof.disable()
        prof.dump_stats(out)
pump.PacketLoop.run = run
sys.argv[0] = "pfkeyd"
sys.exit(main())
"""


def start_daemons(
    p: Pair, work: str, profile: str | None, mtu: int = 1400, extra: tuple[str, ...] = ()
) -> dict[str, tuple[subprocess.Popen[bytes], str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    daemons = {}
    for name, ns in (("a", p.a), ("b", p.b)):
        sock = os.path.join(work, f"{name}.sock")
        pre = [sys.executable, "-c", PROFILED, profile] if profile and name == "a" else [sys.executable, "-m", "pfkeyd"]
        with open(os.path.join(work, f"{name}.log"), "wb") as log:
            proc = subprocess.Popen(
                ns.argv(*pre, "-s", f"{sock}:freebsd", "--dataplane", "--mtu", str(mtu), *extra),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        for _ in range(400):
            if os.path.exists(sock[: -len(".sock")] + ".ctl"):
                break
            time.sleep(0.05)
        me, peer = (Pair.V4[0], Pair.V4[1]) if name == "a" else (Pair.V4[1], Pair.V4[0])
        mine, theirs = ("10.1.0.0/24", "10.2.0.0/24") if name == "a" else ("10.2.0.0/24", "10.1.0.0/24")
        script = (
            f"add {Pair.V4[0]} {Pair.V4[1]} esp 0x1001 -m tunnel -E aes-gcm-16 {KEY_AB};\n"
            f"add {Pair.V4[1]} {Pair.V4[0]} esp 0x1002 -m tunnel -E aes-gcm-16 {KEY_BA};\n"
            f"spdadd {mine} {theirs} any -P out ipsec esp/tunnel/{me}-{peer}/require;\n"
            f"spdadd {theirs} {mine} any -P in ipsec esp/tunnel/{peer}-{me}/require;\n"
        )
        subprocess.run(
            [sys.executable, "-m", "setkey", "-f", "-"],
            input=script,
            text=True,
            check=True,
            env=dict(env, PFKEY_SOCKET=sock),
        )
        daemons[name] = (proc, sock)
    return daemons


def stop_daemons(daemons: dict[str, tuple[subprocess.Popen[bytes], str]], profile: str | None) -> None:
    for proc, _ in daemons.values():
        proc.send_signal(signal.SIGINT if profile else signal.SIGTERM)
    for proc, _ in daemons.values():
        proc.wait(30)


def cpu_seconds(pid: int) -> float:
    """User + system time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sent(sock: str) -> tuple[int, int]:
    """Datagrams the daemon sent on its raw socket, and those its compiled loop protected."""
    st = json.loads(control(sock, "stats", "--json"))["dataplane"]
    return int(st["io"].get("raw4.send", 0)), int(st["counters"].get("compiled.out", 0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--mtu", type=int, default=1400, help="the TUN MTU of the first tunnel (pfkeyd --mtu)")
    ap.add_argument("--big-mtu", type=int, default=65000, help="the TUN MTU of the second TCP stream (0: skip it)")
    ap.add_argument(
        "--no-firewall",
        action="store_true",
        help="start pfkeyd with --no-firewall (to compare the nftables table's cost)",
    )
    ap.add_argument("--no-python-path", action="store_true", help="skip step 6 (the tunnel with --no-compiled)")
    args = ap.parse_args()
    reason = skip_reason()
    if reason:
        print(f"bench/dataplane.py: {reason}", file=sys.stderr)
        return 1
    s = args.seconds
    work = tempfile.mkdtemp(prefix="pfkeyd-bench-")
    try:
        with pair() as p:
            for ns, addr in ((p.a, INNER[0]), (p.b, INNER[1])):
                with ns.inside(), IPRoute() as ipr:
                    ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=addr, prefixlen=32)
            bare_tcp = tcp(p, *Pair.V4, s)
            bare_rtt = ping(p, *Pair.V4)
            limit, limit_per_cpu = limit_loop(p, s)
            floor_rtt = forwarder_rtt(p, THREAD_FORWARDER)
            trio_floor_rtt = forwarder_rtt(p)
            prof = os.path.join(work, "a.prof") if args.profile else None
            extra = ("--no-firewall",) if args.no_firewall else ()
            daemons = start_daemons(p, work, prof, args.mtu, extra)
            try:
                ping(p, *INNER, count=3)  # routes in place, caches warm
                # Host B's daemon is stopped during the blast, so that host A's works
                # under the limit loop's conditions (B's kernel only queues or drops
                # what arrives); the rate is what A's daemon sent.
                before, compiled_before = sent(daemons["a"][1])
                cpu0 = cpu_seconds(daemons["a"][0].pid)
                daemons["b"][0].send_signal(signal.SIGSTOP)
                t0 = time.perf_counter()
                try:
                    offered = blast(p, s)
                finally:
                    daemons["b"][0].send_signal(signal.SIGCONT)
                elapsed = time.perf_counter() - t0
                after, compiled_after = sent(daemons["a"][1])
                packets = after - before
                compiled_share = (compiled_after - compiled_before) / max(packets, 1)
                tunnel_pps = packets / elapsed
                tunnel_per_cpu = packets / max(cpu_seconds(daemons["a"][0].pid) - cpu0, 0.01)
                tunnel_tcp = tcp(p, *INNER, s)
                tunnel_rtt = ping(p, *INNER)
            finally:
                stop_daemons(daemons, prof)
            big_tcp = 0.0
            if args.big_mtu:
                daemons = start_daemons(p, work, None, args.big_mtu, extra)
                try:
                    ping(p, *INNER, count=3)
                    big_tcp = tcp(p, *INNER, s)
                finally:
                    stop_daemons(daemons, None)
            py_tcp = py_rtt = 0.0
            if not args.no_python_path:
                daemons = start_daemons(p, work, None, args.mtu, (*extra, "--no-compiled"))
                try:
                    ping(p, *INNER, count=3)
                    py_tcp = tcp(p, *INNER, s)
                    py_rtt = ping(p, *INNER)
                finally:
                    stop_daemons(daemons, None)
    finally:
        pass
    print(f"bare veth TCP            {bare_tcp:10.1f} Mbit/s")
    print(
        f"tunnel TCP (ESP GCM-128) {tunnel_tcp:10.1f} Mbit/s   ratio {tunnel_tcp / bare_tcp:.3f}"
        f"  (target >= 0.05; TUN MTU {args.mtu})"
    )
    if args.big_mtu:
        print(
            f"tunnel TCP, TUN MTU {args.big_mtu:<5} {big_tcp:10.1f} Mbit/s   ratio {big_tcp / bare_tcp:.3f}"
            "  (target >= 0.05; outer datagrams fragmented by the kernel)"
        )
    print(f"limit loop               {limit:10.0f} packets/s        {limit_per_cpu:8.0f} per CPU-second")
    print(
        f"tunnel, same UDP blast   {tunnel_pps:10.0f} packets/s ratio {tunnel_pps / limit:.2f}"
        f" {tunnel_per_cpu:8.0f} per CPU-second ratio {tunnel_per_cpu / limit_per_cpu:.2f}  (target >= 0.5);"
        f" blaster offered {offered / s:.0f}/s; {compiled_share:.0%} of it in the compiled loop"
    )
    print(
        f"ping median RTT: veth {bare_rtt:.3f} ms, tunnel {tunnel_rtt:.3f} ms, +{tunnel_rtt - bare_rtt:.3f} ms"
        f"  (target <= +0.3)"
    )
    print(
        f"two empty forwarders: on the packet loop {floor_rtt:.3f} ms, +{floor_rtt - bare_rtt:.3f} ms;"
        f" as trio tasks {trio_floor_rtt:.3f} ms, +{trio_floor_rtt - bare_rtt:.3f} ms"
    )
    if not args.no_python_path:
        print(
            f"tunnel, Python path (--no-compiled): TCP {py_tcp:.1f} Mbit/s ratio {py_tcp / bare_tcp:.3f},"
            f" ping {py_rtt:.3f} ms, +{py_rtt - bare_rtt:.3f} ms"
        )
    if prof:
        print("\nhost A's packet thread, top functions by own time (cProfile; blast + TCP + ping):")
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
