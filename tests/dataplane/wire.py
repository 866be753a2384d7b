"""Checking the wire in the end-to-end tests: a capture on the veth, and scapy.

``Capture`` is an AF_PACKET socket on one interface of a namespace (opened inside
it), drained after the traffic; ``sas_from_dump`` reads the SAs (SPI, algorithms,
keys) that ``setkey -D`` prints, and ``scapy_sa`` turns one into scapy's
independent SecurityAssociation.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import AH, ESP, SecurityAssociation

from tests.netns import Namespace

ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33


class Capture:
    def __init__(self, ns: Namespace, ifname: str = "o0") -> None:
        with ns.inside():
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, socket.htons(ETH_P_ALL))
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
            s.bind((ifname, 0))
        self.sock = s
        self.frames: list[tuple[int, int, bytes]] = []  # (ethertype, pkttype, payload)

    def drain(self) -> list[tuple[int, int, bytes]]:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                break
            self.frames.append((addr[1], addr[2], data))
        return self.frames

    def ip(self, *, outgoing_only: bool = False) -> list[bytes]:
        """The IPv4/IPv6 datagrams seen (each once: outgoing ones, or all)."""
        out = []
        for proto, pkttype, data in self.drain():
            if proto not in (0x0800, 0x86DD):
                continue
            if outgoing_only and pkttype != socket.PACKET_OUTGOING:
                continue
            out.append(data)
        return out

    def close(self) -> None:
        self.sock.close()


def ip_proto(dg: bytes) -> int:
    return dg[9] if dg[0] >> 4 == 4 else dg[6]


def is_neighbour_discovery(dg: bytes) -> bool:
    # ICMPv6 router/neighbour solicitations and advertisements, MLD reports: link-local chatter.
    return dg[0] >> 4 == 6 and dg[6] in (58, 0) and (dg[8:10] == b"\xfe\x80" or dg[24] == 0xFF or not any(dg[8:24]))


def protected(dg: bytes) -> bool:
    """ESP, AH or IPComp, or ESP in UDP 4500."""
    p = ip_proto(dg)
    if p in (50, 51, 108):
        return True
    if p == 17:
        off = (dg[0] & 0x0F) * 4 if dg[0] >> 4 == 4 else 40
        return int.from_bytes(dg[off + 2 : off + 4], "big") == 4500 or int.from_bytes(dg[off : off + 2], "big") == 4500
    return False


@dataclass
class DumpedSA:
    src: str
    dst: str
    proto: str
    spi: int
    enc: str | None
    enc_key: bytes
    auth: str | None
    auth_key: bytes


_HEAD = re.compile(r"^(\S+?)(?:\[\d+\])? (\S+?)(?:\[\d+\])?$")
_SA = re.compile(r"^\t(\S+) mode=\S+ spi=\d+\(0x([0-9a-f]+)\)")
_KEY = re.compile(r"^\t([EA]): (\S+)\s+([0-9a-f ]+)$")


def sas_from_dump(text: str) -> list[DumpedSA]:
    """The SAs of ``setkey -D`` output, keys included."""
    out: list[DumpedSA] = []
    src = dst = ""
    for line in text.splitlines():
        m = _HEAD.match(line)
        if m and not line.startswith("\t"):
            src, dst = m.group(1), m.group(2)
            continue
        m = _SA.match(line)
        if m:
            out.append(DumpedSA(src, dst, m.group(1), int(m.group(2), 16), None, b"", None, b""))
            continue
        m = _KEY.match(line)
        if m and out:
            key = bytes.fromhex(m.group(3).replace(" ", ""))
            if m.group(1) == "E":
                out[-1].enc, out[-1].enc_key = m.group(2), key
            else:
                out[-1].auth, out[-1].auth_key = m.group(2), key
    return out


_CRYPT = {"aes-gcm-16": "AES-GCM", "aes-cbc": "AES-CBC", "rijndael-cbc": "AES-CBC", "null": "NULL"}
_AUTH = {"hmac-sha1": "HMAC-SHA1-96", "hmac-sha2-256": "SHA2-256-128", None: "NULL"}


def scapy_sa(sa: DumpedSA) -> SecurityAssociation:
    if sa.proto == "ah":
        return SecurityAssociation(AH, spi=sa.spi, auth_algo=_AUTH[sa.auth], auth_key=sa.auth_key)
    kw = {}
    if sa.proto == "esp-udp":
        from scapy.layers.inet import UDP

        kw["nat_t_header"] = UDP(sport=4500, dport=4500)
    return SecurityAssociation(
        ESP,
        spi=sa.spi,
        crypt_algo=_CRYPT[sa.enc or "null"],
        crypt_key=sa.enc_key,
        auth_algo=_AUTH[sa.auth],
        auth_key=sa.auth_key,
        **kw,
    )


def parse(dg: bytes) -> IP | IPv6:
    return IP(dg) if dg[0] >> 4 == 4 else IPv6(dg)


def spi_of(dg: bytes) -> int | None:
    p = ip_proto(dg)
    off = (dg[0] & 0x0F) * 4 if dg[0] >> 4 == 4 else 40
    if p == 17:
        off += 8
        p = 50
    if p == 50:
        return int.from_bytes(dg[off : off + 4], "big")
    if p == 51:
        return int.from_bytes(dg[off + 4 : off + 8], "big")
    return None
