"""enc(4) on Linux: the plaintext side of IPsec made visible, live on ``enc0`` and in pcap files.

Theory of operation
-------------------
FreeBSD's enc(4) runs a hook at four points of the packet path and hands the packet
to BPF there (``if_enc.c``; BEFORE and AFTER are relative to adding or stripping the
outer header, never to the cryptographic transform, which is never shown):

============  ================================================================
point          what is shown
============  ================================================================
OUT BEFORE     the original plaintext datagram, before any encapsulation
OUT AFTER      after the outer IP header is added (tunnel mode) but *before*
               ESP/AH is applied; in transport mode the same datagram again
IN BEFORE      the decrypted datagram with its outer header still on
IN AFTER       the inner datagram, outer header stripped
============  ================================================================

The sysctls ``net.enc.out.ipsec_bpf_mask`` and ``net.enc.in.ipsec_bpf_mask`` choose
the points: bit 0x1 is BEFORE, bit 0x2 is AFTER, other bits are ignored.  The
defaults are in = 1 (BEFORE: the decrypted packet still in its outer header) and
out = 3 (both, so every outbound packet shows twice).  :func:`shows` is that rule.

**The live interface.**  The test kernel has no ``dummy`` driver, and an unattached
TAP has no carrier (captures see nothing).  :class:`EncInterface` creates ``enc0`` as
a TUN whose descriptor this process holds and never reads, and sends each copy out of
it through an AF_PACKET socket.  The kernel passes every transmitted packet to the
packet taps (tcpdump, an AF_PACKET capture) *before* the TUN driver queues it, so
captures see every copy; the driver then keeps at most ``txqueuelen`` (set to 16)
packets for a reader that never comes and drops the rest, so memory stays bounded.
IPv6 is disabled on enc0 so the kernel itself sends nothing there, and the interface
has no address or route: nothing can be routed into it.  A live capture shows plain
IP (link type RAW): Linux cannot attach the 12-byte ``struct enchdr`` to a live
interface.  Copies are diagnostic: when the send would block they are dropped and
counted, never waited for.

**The pcap file** (:class:`PcapWriter`) can carry the enc header: link type
``LINKTYPE_ENC`` (109), each record ``struct enchdr { u32 af; u32 spi; u32 flags; }``
(af and flags in host byte order, the SPI as stored, network order) then the IP
datagram, as FreeBSD's ``tcpdump -i enc0 -w`` produces; tshark decodes it as
"OpenBSD enc(4)".  ``LINKTYPE_RAW`` (101, plain IP) is the other choice.  The format
is written here rather than taken from a library: classic pcap is a 24-byte file
header and a 16-byte record header, a dozen lines.  The candidates on PyPI were
weighed: scapy and dpkt write it, but are whole packet toolkits the daemon would not
otherwise load at run time (dpkt's last release is from 2022); python-pcapng and
pcapng write the newer pcapng format and are not maintained (2022, 2020);
pypcapfile only reads; pcapy and pure-pcapy3 wrap or mimic libpcap capture.  None
is small, kept up and suited to appending records from a daemon.
"""

from __future__ import annotations

import enum
import errno
import os
import socket
import struct
import time
from typing import BinaryIO

from pyroute2 import IPRoute

from pfkeyd.dataplane.io import IoCounters
from pfkeyd.dataplane.tun import open_tun
from pfkeyd.record import record

__all__ = [
    "DEFAULT_IN_MASK",
    "DEFAULT_OUT_MASK",
    "ENC_MTU",
    "LINKTYPE_ENC",
    "LINKTYPE_RAW",
    "M_AUTH",
    "M_CONF",
    "Direction",
    "EncInterface",
    "EncRecord",
    "EncTap",
    "PcapWriter",
    "Point",
    "enc_flags",
    "enchdr",
    "shows",
]

LINKTYPE_RAW = 101
LINKTYPE_ENC = 109
ENC_MTU = 1536  # FreeBSD's enc(4) MTU
M_CONF = 0x0400  # sys/mbuf.h: the SA encrypts (alg_enc != NONE; IPComp's DEFLATE counts too)
M_AUTH = 0x0800  # the SA authenticates (alg_auth != NONE)
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ALL = 0x0003
_AF_INET_BSD = 2  # the af field is the BSD AF_INET / AF_INET6 of the capturing host
_AF_INET6_BSD = 28  # FreeBSD's AF_INET6 (Linux's is 10); tshark knows both


class Direction(enum.Enum):
    IN = "in"
    OUT = "out"


class Point(enum.IntFlag):
    """Where on the path a packet is shown (sys/net/if_enc.h IPSEC_ENC_BEFORE/AFTER)."""

    BEFORE = 0x1
    AFTER = 0x2


DEFAULT_IN_MASK = 1  # net.enc.in.ipsec_bpf_mask
DEFAULT_OUT_MASK = 3  # net.enc.out.ipsec_bpf_mask


def shows(point: Point, mask: int) -> bool:
    """Whether a packet at ``point`` is shown under an ``ipsec_bpf_mask`` of ``mask``
    (the mask of the packet's direction): bit 0x1 shows BEFORE, bit 0x2 AFTER (pure)."""
    return bool(mask & point)


def enc_flags(*, encrypts: bool, authenticates: bool) -> int:
    """The enchdr flags of an SA, as if_enc.c sets them (pure)."""
    return (M_CONF if encrypts else 0) | (M_AUTH if authenticates else 0)


def enchdr(datagram: bytes, spi: int, flags: int) -> bytes:
    """The 12-byte ``struct enchdr`` for ``datagram`` (pure)."""
    af = _AF_INET6_BSD if datagram and datagram[0] >> 4 == 6 else _AF_INET_BSD
    return struct.pack("=I", af) + struct.pack("!I", spi) + struct.pack("=I", flags)


@record(kw_only=True)
class EncRecord:
    """One packet shown on enc0: where it was seen, and the SA it belongs to."""

    direction: Direction
    point: Point
    datagram: bytes
    spi: int = 0
    flags: int = 0


class PcapWriter:
    """Appends packets to a classic pcap file (see the module doc for why it is here).

    Writes go to the file object's buffer (page cache on flush), never waiting for a
    disk, so calling it from the trio loop is acceptable; :meth:`flush` on a timer or
    at exit.  Timestamps are passed in (``time.time()`` by default)."""

    MAGIC = 0xA1B2C3D4  # microsecond timestamps, written in host order (readers swap)

    def __init__(self, file: BinaryIO, linktype: int = LINKTYPE_ENC, snaplen: int = 65535) -> None:
        if linktype not in (LINKTYPE_ENC, LINKTYPE_RAW):
            raise ValueError(f"link type {linktype} is neither ENC (109) nor RAW (101)")
        self.file = file
        self.linktype = linktype
        self.snaplen = snaplen
        file.write(struct.pack("=IHHiIII", self.MAGIC, 2, 4, 0, 0, snaplen, linktype))

    def write(self, rec: EncRecord, timestamp: float | None = None) -> None:
        ts = time.time() if timestamp is None else timestamp
        body = rec.datagram
        if self.linktype == LINKTYPE_ENC:
            body = enchdr(rec.datagram, rec.spi, rec.flags) + body
        sec = int(ts)
        usec = min(round((ts - sec) * 1_000_000), 999_999)
        cut = body[: self.snaplen]
        self.file.write(struct.pack("=IIII", sec, usec, len(cut), len(body)))
        self.file.write(cut)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class EncInterface:
    """The live ``enc0`` (see the module doc): a TUN never read, plus an AF_PACKET
    socket that transmits copies out of it.  Created in the calling thread's
    namespace; :meth:`close` removes it (closing the TUN deletes the interface)."""

    def __init__(self, name: str = "enc0", counters: IoCounters | None = None, *, txqueuelen: int = 16) -> None:
        self.name = name
        self.counters = counters if counters is not None else IoCounters()
        self._fd = open_tun(name)
        try:
            with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w", encoding="ascii") as f:
                f.write("1")
            with IPRoute() as ipr:
                index = ipr.link_lookup(ifname=name)[0]
                ipr.link("set", index=index, mtu=ENC_MTU, txqlen=txqueuelen)
                ipr.link("set", index=index, state="up")
            kind = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            self.sock = socket.socket(socket.AF_PACKET, kind, 0)
        except BaseException:
            os.close(self._fd)
            raise

    def send(self, datagram: bytes) -> bool:
        """Transmit a copy of ``datagram`` out of enc0; False if dropped (counted)."""
        proto = ETH_P_IPV6 if datagram and datagram[0] >> 4 == 6 else ETH_P_IP
        try:
            self.sock.sendto(datagram, (self.name, proto))
        except OSError as e:
            # A diagnostic copy never waits: EAGAIN included, it is a counted drop.
            self.counters.add(f"enc.drop.{errno.errorcode.get(e.errno or 0, str(e.errno))}")
            return False
        self.counters.add("enc.send")
        return True

    def close(self) -> None:
        if self._fd >= 0:
            self.sock.close()
            os.close(self._fd)
            self._fd = -1


class EncTap:
    """The enc(4) hook: given each packet at each point, shows those the masks select on
    ``interface`` and in ``pcap`` (either may be None)."""

    def __init__(
        self,
        interface: EncInterface | None = None,
        pcap: PcapWriter | None = None,
        *,
        in_mask: int = DEFAULT_IN_MASK,
        out_mask: int = DEFAULT_OUT_MASK,
    ) -> None:
        self.interface = interface
        self.pcap = pcap
        self.in_mask = in_mask
        self.out_mask = out_mask

    def wants(self, direction: Direction, point: Point) -> bool:
        """Cheap test before building a record (the hot path asks first)."""
        if self.interface is None and self.pcap is None:
            return False
        return shows(point, self.in_mask if direction is Direction.IN else self.out_mask)

    def __call__(self, rec: EncRecord, timestamp: float | None = None) -> bool:
        if not self.wants(rec.direction, rec.point):
            return False
        if self.interface is not None:
            self.interface.send(rec.datagram)
        if self.pcap is not None:
            self.pcap.write(rec, timestamp)
        return True
