"""protect_traffic: two hosts whose traffic pfkeyd really protects (ESP tunnel, manual keys).

    sudo python examples/protect_traffic.py

Needs root (network namespaces, TUN, raw sockets).  What it does, in order:

1. creates two network namespaces, ``host A`` and ``host B``, joined by a veth pair
   (192.0.2.1/24 and 192.0.2.2/24, a documentation prefix: nothing leaves the two
   namespaces), each with an address behind it on ``lo`` (10.1.0.1 on A, 10.2.0.1
   on B);
2. starts ``pfkeyd --dataplane`` in each, on a socket in a temporary directory;
3. loads on each, with ``setkey -f``, an ESP tunnel between 10.1.0.0/24 and
   10.2.0.0/24 over 192.0.2.1 <-> 192.0.2.2 with AES-GCM-128 manual keys (the
   script is printed; the daemons add the routes into ``ipsec0`` themselves);
4. sends three ICMP echoes from 10.1.0.1 to 10.2.0.1 and 256 KiB over TCP, checking
   the replies and the received bytes, while counting what crosses the veth: only
   ESP;
5. prints host A's ``pfkeyd stats`` data-plane block (packets and bytes per SA),
   stops both daemons with SIGTERM and removes the namespaces.

Exit status 0 when all of that worked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack

from pyroute2 import IPRoute, netns

KEY = "0x" + "a1" * 16 + "0badc0de"  # AES-128 key + 4-byte salt (RFC 4106)
KEY_BA = "0x" + "b2" * 16 + "0badc0de"
SETKEY = """\
add 192.0.2.1 192.0.2.2 esp 0x1001 -m tunnel -E aes-gcm-16 {k_ab};
add 192.0.2.2 192.0.2.1 esp 0x1002 -m tunnel -E aes-gcm-16 {k_ba};
spdadd {mine} {theirs} any -P out ipsec esp/tunnel/{me}-{peer}/require;
spdadd {theirs} {mine} any -P in ipsec esp/tunnel/{peer}-{me}/require;
"""
HOSTS = {"A": ("192.0.2.1", "10.1.0.1", "10.1.0.0/24"), "B": ("192.0.2.2", "10.2.0.1", "10.2.0.0/24")}
TRAMPOLINE = (
    "import os, sys\nfrom pyroute2 import netns\n"
    "netns.setns(sys.argv[1], flags=0)\nos.execvp(sys.argv[2], sys.argv[2:])\n"
)


def in_ns(ns: str, *argv: str) -> list[str]:
    return [sys.executable, "-c", TRAMPOLINE, f"/run/netns/{ns}", *argv]


def setup(names: dict[str, str]) -> None:
    a, b = names["A"], names["B"]
    for ns in (a, b):
        netns.create(ns)
    netns.pushns(a)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname="o0", kind="veth", peer={"ifname": "o0", "net_ns_fd": f"/run/netns/{b}"})
    finally:
        netns.popns()
    for host, ns in names.items():
        outer, inner, _ = HOSTS[host]
        netns.pushns(ns)
        try:
            with IPRoute() as ipr:
                o0, lo = ipr.link_lookup(ifname="o0")[0], ipr.link_lookup(ifname="lo")[0]
                ipr.addr("add", index=o0, address=outer, prefixlen=24)
                ipr.addr("add", index=lo, address=inner, prefixlen=32)
                ipr.link("set", index=lo, state="up")
                ipr.link("set", index=o0, state="up")
        finally:
            netns.popns()


def _remove_namespace(name: str) -> None:
    if os.path.exists(f"/run/netns/{name}"):
        netns.remove(name)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()


def count_wire(ns: str, stop: threading.Event, seen: dict[str, int]) -> None:
    """Count, by IP protocol, the IPv4 packets crossing host A's veth."""
    netns.pushns(ns)
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        s.bind(("o0", 0))
    finally:
        netns.popns()
    s.settimeout(0.1)
    while not stop.is_set():
        try:
            data = s.recv(65535)
        except TimeoutError:
            continue
        key = {50: "esp", 51: "ah", 108: "ipcomp"}.get(data[9], f"proto {data[9]} (clear)")
        seen[key] = seen.get(key, 0) + 1
    s.close()


def ping_and_tcp(ns: str) -> str:
    """Run in host A: 3 echoes to 10.2.0.1, then 256 KiB to B's echo-hash server."""
    code = r"""
import hashlib, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.bind(("10.1.0.1", 0)); s.settimeout(5)
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t & 0xffff) + (t >> 16); return ~(t + (t >> 16)) & 0xffff
for seq in (1, 2, 3):
    body = struct.pack("!HH", 7, seq) + bytes(56)
    t0 = time.perf_counter()
    s.sendto(struct.pack("!BBH", 8, 0, csum(b"\x08\x00\x00\x00" + body)) + body, ("10.2.0.1", 0))
    while True:
        d = s.recv(2048)[20:]
        if d[0] == 0 and struct.unpack("!HH", d[4:8]) == (7, seq):
            print(f"echo reply {seq} from 10.2.0.1: {(time.perf_counter() - t0) * 1000:.2f} ms"); break
data = bytes(range(256)) * 1024
c = socket.create_connection(("10.2.0.1", 7777), timeout=10, source_address=("10.1.0.1", 0))
c.sendall(data); c.shutdown(socket.SHUT_WR)
got = c.recv(100).decode()
ok = got == hashlib.sha256(data).hexdigest()
print(f"tcp: {len(data)} bytes sent, receiver's sha256 {'matches' if ok else 'DIFFERS'}")
sys.exit(0 if ok else 1)
"""
    r = subprocess.run(in_ns(ns, sys.executable, "-c", code), capture_output=True, text=True, timeout=60, check=False)
    if r.returncode:
        raise RuntimeError(r.stdout + r.stderr)
    return r.stdout


def hash_server(ns: str) -> subprocess.Popen[str]:
    code = r"""
import hashlib, socket
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("10.2.0.1", 7777)); ls.listen(1); print("ready", flush=True)
c, _ = ls.accept(); h = hashlib.sha256()
while chunk := c.recv(65536): h.update(chunk)
c.sendall(h.hexdigest().encode()); c.close()
"""
    p = subprocess.Popen(in_ns(ns, sys.executable, "-c", code), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def control(sock: str, *argv: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(10)
        s.connect(sock[: -len(".sock")] + ".ctl")
        s.send(json.dumps({"argv": list(argv)}).encode())
        return str(json.loads(s.recv(1 << 22))["out"])


def main() -> int:
    if os.geteuid() != 0:
        print("protect_traffic: needs root (network namespaces, TUN, raw sockets)", file=sys.stderr)
        return 1
    names = {h: f"pfkex-{os.getpid()}-{h}" for h in HOSTS}
    work = tempfile.mkdtemp(prefix="pfkeyd-example-")
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, True)
        for ns in names.values():
            cleanup.callback(_remove_namespace, ns)
        setup(names)
        for host, ns in names.items():
            sock = os.path.join(work, f"{host}.sock")
            log = open(os.path.join(work, f"{host}.log"), "wb")  # noqa: SIM115
            cleanup.callback(log.close)
            argv = in_ns(ns, sys.executable, "-m", "pfkeyd", "-s", f"{sock}:freebsd", "--dataplane")
            daemons[host] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            cleanup.callback(_kill, daemons[host])
            for _ in range(200):
                if os.path.exists(sock[: -len(".sock")] + ".ctl"):
                    break
                time.sleep(0.05)
        for host in names:
            me, _, mine = HOSTS[host]
            peer, _, theirs = HOSTS["B" if host == "A" else "A"]
            script = SETKEY.format(k_ab=KEY, k_ba=KEY_BA, me=me, peer=peer, mine=mine, theirs=theirs)
            print(f"host {host}: setkey -f\n" + "".join(f"    {line}\n" for line in script.splitlines()))
            subprocess.run(
                [sys.executable, "-m", "setkey", "-f", "-"],
                input=script,
                text=True,
                check=True,
                env=dict(os.environ, PFKEY_SOCKET=os.path.join(work, f"{host}.sock")),
            )
        stop, seen = threading.Event(), dict[str, int]()
        counter = threading.Thread(target=count_wire, args=(names["A"], stop, seen))
        counter.start()
        try:
            server = hash_server(names["B"])
            print(ping_and_tcp(names["A"]), end="")
            server.wait(10)
        finally:
            stop.set()
            counter.join()
        print("on the veth:", ", ".join(f"{n} {k}" for k, n in sorted(seen.items())))
        stats = control(os.path.join(work, "A.sock"), "stats")
        print("host A:", stats[stats.index("dataplane") :], end="")
        for host, p in daemons.items():
            p.send_signal(signal.SIGTERM)
            if p.wait(20) != 0:
                print(f"pfkeyd on host {host} exited {p.returncode}", file=sys.stderr)
                return 1
        return 0 if set(seen) == {"esp"} else 1


if __name__ == "__main__":
    sys.exit(main())
