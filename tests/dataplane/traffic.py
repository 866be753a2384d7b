"""Traffic for the data-plane tests, run in a namespace as a child process.

traffic.py ping SRC DST COUNT [TOS]  ICMP/ICMPv6 echo; prints one RTT (ms) per reply
traffic.py serve ADDR PORT           accept one TCP connection; print "<bytes> <sha256>"
traffic.py send SRC DST PORT NBYTES  connect from SRC; send NBYTES of seeded data; print "<bytes> <sha256>"
traffic.py udp-echo ADDR PORT COUNT  answer COUNT datagrams on ADDR:PORT
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import time


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ping(src: str, dst: str, count: int, tos: int = 0, timeout: float = 5.0) -> int:
    v6 = ":" in dst
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    s = socket.socket(fam, socket.SOCK_RAW, proto)
    s.bind((src, 0))
    if tos:
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        else:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    s.settimeout(timeout)
    ident = os.getpid() & 0xFFFF
    ok = 0
    for seq in range(1, count + 1):
        payload = struct.pack("!d", time.perf_counter()) + bytes(48)
        if v6:
            pkt = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload  # the kernel fills the checksum
        else:
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            pkt = struct.pack("!BBHHH", 8, 0, _csum(head + payload), ident, seq) + payload
        t0 = time.perf_counter()
        s.sendto(pkt, (dst, 0))
        while True:
            try:
                data = s.recv(2048)
            except TimeoutError:
                print("timeout", flush=True)
                return 1
            icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
            want = 129 if v6 else 0
            if icmp[0] == want and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
                print(f"{(time.perf_counter() - t0) * 1000:.3f}", flush=True)
                ok += 1
                break
    return 0 if ok == count else 1


def _data(n: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(b"pfkeyd").digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:n])


def serve(addr: str, port: int) -> int:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    print("ready", flush=True)
    ls.settimeout(30)
    conn, _ = ls.accept()
    conn.settimeout(30)
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    conn.sendall(b"ok")
    conn.close()
    print(n, h.hexdigest(), flush=True)
    return 0


def send(src: str, dst: str, port: int, nbytes: int) -> int:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(30)
    t0 = time.perf_counter()
    s.connect((dst, port))
    data = _data(nbytes)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    assert s.recv(2) == b"ok"
    dt = time.perf_counter() - t0
    print(nbytes, hashlib.sha256(data).hexdigest(), f"{nbytes * 8 / dt / 1e6:.1f}", flush=True)
    return 0


def udp_echo(addr: str, port: int, count: int) -> int:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(10)
    print("ready", flush=True)
    for _ in range(count):
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
    return 0


def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "ping":
        return ping(argv[1], argv[2], int(argv[3]), int(argv[4], 0) if len(argv) > 4 else 0)
    if cmd == "serve":
        return serve(argv[1], int(argv[2]))
    if cmd == "send":
        return send(argv[1], argv[2], int(argv[3]), int(argv[4]))
    if cmd == "udp-echo":
        return udp_echo(argv[1], int(argv[2]), int(argv[3]))
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
