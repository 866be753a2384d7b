"""The data plane's packet I/O: the TUN, raw IP sockets, the NAT-T UDP socket.

Theory of operation
-------------------
Everything here moves *whole IP datagrams*, because that is what the transforms of
``pfkeyd.packet`` take and return (``protect(chain, datagram)``, ``unprotect(datagram)``,
``unprotect_udp(datagram)``).  The next layer (SPD lookup and transforms) sits between
these objects and never sees a socket.

* :class:`TunDevice`: one ``read()`` of the TUN descriptor is one outbound datagram the
  kernel routed into it; one ``write()`` injects a decrypted inner datagram as if it
  had arrived on the TUN.
* :class:`RawReceiver`: ``socket(AF_INET[6], SOCK_RAW, proto)`` for ESP (50), AH (51)
  and IPComp (108); one per family and protocol.  The kernel hands a raw socket the
  datagrams *after* reassembly and after its own local-delivery decision and
  firewall.  IPv4 raw receive includes the IP header, so the datagram is what
  ``recv`` returns.  **IPv6 raw receive does not** (it starts at the SPI).  We rebuild
  the header from the ancillary data the kernel attaches on request: the source
  from the address ``recvmsg`` returns, the destination from ``IPV6_PKTINFO``, hop
  limit from ``IPV6_HOPLIMIT``, traffic class and flow label from ``IPV6_FLOWINFO``,
  and the extension headers that came before the protocol header (hop-by-hop,
  destination options, routing) from ``IPV6_HOPOPTS``/``IPV6_DSTOPTS``/``IPV6_RTHDR``,
  which Linux delivers in the order they stood in the packet with their Next Header
  bytes intact.  The payload length is recomputed, as after reassembly.  That is
  everything AH's ICV covers (RFC 4302 §3.3.3.1: mutable fields are zeroed anyway),
  and everything ESP and IPComp need (addresses, ECN bits for decapsulation).
  The alternative, an AF_PACKET socket on the outer interface, was rejected: it sees
  frames before reassembly (a fragmented ESP datagram would need reassembly in
  Python), sees frames not addressed to this host and frames the firewall would drop,
  and needs one socket and a BPF filter per interface; the raw socket would still
  have to be open to stop "protocol unreachable" replies.
* :class:`RawSender`: one ``socket(AF_INET[6], SOCK_RAW, IPPROTO_RAW)`` per family,
  which implies ``IP_HDRINCL`` (``IPV6_HDRINCL`` is set explicitly): the datagram goes
  out exactly as the transforms built it (the kernel fills an IPv4 checksum and a
  zero ID).  The kernel never fragments such a datagram: one larger than the path
  MTU fails with EMSGSIZE.  Then, if its header allows fragmentation, it goes out
  again on a socket of its protocol without the header-included option, with the
  header's fields as control messages, and the kernel fragments it
  (:func:`fragmentable`, :class:`RawSender`); otherwise the drop is counted.
  ESP-in-UDP goes out here too, since the transforms return it with its UDP
  header.
* :class:`NattSocket`: the UDP socket bound to 4500 (RFC 3948), without ``UDP_ENCAP``
  (which would hand ESP to the kernel's XFRM).  Each datagram is classified
  (:func:`classify_udp`): a single 0xFF byte is a NAT keepalive, four zero bytes
  (the non-ESP marker) start an IKE message, anything else of at least 8 bytes is
  ESP.  :meth:`NattSocket.receive` gives a :class:`UdpDatagram` whose
  :meth:`UdpDatagram.whole` rebuilds the IP + UDP datagram (TOS/TTL or traffic
  class/hop limit from ancillary data) that ``unprotect_udp`` takes.  It also sends
  keepalives and other payloads with the kernel's UDP (IPv4 checksum 0, RFC 3948
  §2.1, through ``SO_NO_CHECK``).

Every socket that sends carries ``SO_MARK`` (the routing rules in netlink.py let
marked packets bypass the TUN), so needs CAP_NET_ADMIN besides CAP_NET_RAW.

**Two ways to drive them.**  Each object has a synchronous core that never waits:
``receive_now(limit)`` (what is ready, maybe nothing) and ``send_now(...)`` (sent,
dropped and counted, or BlockingIOError when the kernel's buffer is full).  The
data plane's packet thread (:mod:`pfkeyd.dataplane.pump`) calls these from its
epoll loop and waits with ``poll`` itself; the async methods (``receive_batch``,
``send``) wait with trio around the same cores, for tests and tools.

**Backpressure, not queues.**  Nothing here buffers packets.  Receiving is pulled:
:meth:`receive_batch` drains what the kernel has (up to a bound, without waiting
once it has one), and waits only when there is nothing; a consumer that does not
keep up leaves packets in the kernel's socket or TUN queue, whose bounds (the
receive sockets' 4 MiB buffers, the TUN's txqueuelen) drop and count them where the
kernel always has.  Sending waits for
the descriptor to become writable on EAGAIN, so a producer slows to the wire's pace;
the other per-packet errors (ENOBUFS from a full qdisc, EMSGSIZE, unreachable
destinations, a firewall's EPERM) drop that packet and count it under its errno in
:class:`IoCounters`, as the kernel counts a dropped packet rather than failing the
sender.  Draining in bursts is what makes Python I/O cheap (one ``wait_readable``
per burst instead of per packet; see the reference digest §4.6).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

import trio

from pfkeyd.dataplane.netlink import SO_MARK
from pfkeyd.dataplane.tun import VNET_HDR, open_tun
from pfkeyd.packet.crypto import espfast
from pfkeyd.record import record

__all__ = [
    "drop_name",
    "Fragmentable",
    "fragmentable",
    "IPPROTO_AH",
    "IPPROTO_COMP",
    "IPPROTO_ESP",
    "IPSEC_PROTOCOLS",
    "NATT_PORT",
    "IoCounters",
    "NattSocket",
    "RawReceiver",
    "RawSender",
    "TunDevice",
    "UdpDatagram",
    "UdpKind",
    "classify_udp",
    "destination_of",
    "rebuild_ipv6",
]

IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_COMP = 108
IPSEC_PROTOCOLS = (IPPROTO_ESP, IPPROTO_AH, IPPROTO_COMP)
NATT_PORT = 4500
#: The protocols an oversized datagram may carry to be fragmented by the kernel (ESP,
#: AH, IPComp, and UDP for ESP in UDP): RawSender keeps a socket for each.
FRAGMENTED_PROTOCOLS = (*IPSEC_PROTOCOLS, socket.IPPROTO_UDP)
MAX_DATAGRAM = 65535
BATCH = 64  # packets per burst before yielding to other tasks

# Constants Python 3.11's socket module lacks (linux/in.h, linux/in6.h, asm/socket.h).
IP_PKTINFO = 8
IP_RECVTTL = 12
IP_RECVTOS = 13
IP_TTL = socket.IP_TTL  # the cmsg types equal the option numbers
IP_TOS = socket.IP_TOS
IPV6_FLOWINFO = 11
IPV6_HDRINCL = 36
IP_MTU_DISCOVER = 10
IPV6_AUTOFLOWLABEL = 70
IP_PMTUDISC_DONT = 0
SO_NO_CHECK = 11
SO_RCVBUFFORCE = 33
# The receive sockets' buffer: the bound on what waits in the kernel while the
# consumer is busy (a burst of ESP arrives while a batch is being transformed);
# the default size drops packets of a TCP stream (bench/README.md).
DEFAULT_RCVBUF = 4 << 20
_IPV6_FLOWINFO_MASK = 0x0FFFFFFF

# The errors that drop one packet: counted, never raised.
DROP_ERRNOS = frozenset(
    {
        errno.ENOBUFS,
        errno.EMSGSIZE,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.EPERM,  # a netfilter verdict
        errno.EACCES,
        errno.ECONNREFUSED,  # an earlier ICMP error reported on this socket
        errno.EINVAL,  # a datagram the kernel refuses to send (malformed header)
        errno.EIO,  # the TUN is down
    }
)


_Item = TypeVar("_Item")


def _drain_now(one: Callable[[], _Item], limit: int) -> list[_Item]:
    """Everything ``one()`` can read without blocking, at most ``limit`` items (maybe none)."""
    out: list[_Item] = []
    try:
        while len(out) < limit:
            out.append(one())
    except BlockingIOError:
        pass
    return out


async def _drain(now: Callable[[int], list[_Item]], fd: Any, limit: int) -> list[_Item]:
    """``now(limit)``, waiting for ``fd`` to become readable only while it gives nothing."""
    while True:
        out = now(limit)
        if out:
            return out
        await trio.lowlevel.wait_readable(fd)


class WouldBlock(BlockingIOError):
    """EAGAIN from a sender that owns more than one socket: ``fd`` is the one that is
    full, to wait for (RawSender's fragmenting sockets)."""

    def __init__(self, fd: int) -> None:
        super().__init__(errno.EAGAIN, os.strerror(errno.EAGAIN))
        self.fd = fd


def blocked_on(e: BlockingIOError, fd: Any) -> Any:
    """The descriptor to wait for after ``e``: the one a :class:`WouldBlock` names, else ``fd``."""
    return e.fd if isinstance(e, WouldBlock) else fd


async def _send(send_now: Callable[[], bool], fd: Any) -> bool:
    """``send_now()``, waiting for ``fd`` to become writable while it raises EAGAIN."""
    while True:
        try:
            return send_now()
        except BlockingIOError as e:
            await trio.lowlevel.wait_writable(blocked_on(e, fd))


class IoCounters:
    """Per-reason counts of what the I/O layer did or dropped, e.g. ``raw4.send``,
    ``raw4.drop.EMSGSIZE``, ``natt4.keepalive``.  :meth:`snapshot` for stats.

    Only the packet thread counts; :meth:`snapshot` may be called from any thread:
    it is one ``dict.copy``, a single C call that the GIL does not interrupt, so it
    never sees the table change size under it."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        counts = self._counts
        counts[name] = counts.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        return self._counts.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        return self._counts.copy()

    def table(self) -> dict[str, int]:
        """The live table, for a counter that adds to it directly (the data plane's
        compiled loop, in the packet thread, which is the only one that counts)."""
        return self._counts


def drop_name(prefix: str, err: OSError) -> str:
    """The counter of a send or receive that failed with ``err``: ``prefix.drop.ERRNO``."""
    return f"{prefix}.drop.{errno.errorcode.get(err.errno or 0, str(err.errno))}"


def destination_of(datagram: bytes) -> tuple[int, str]:
    """The family and destination address (text) of a whole IP datagram; ValueError if
    it is too short to have one."""
    if datagram and datagram[0] >> 4 == 4 and len(datagram) >= 20:
        return socket.AF_INET, socket.inet_ntop(socket.AF_INET, datagram[16:20])
    if datagram and datagram[0] >> 4 == 6 and len(datagram) >= 40:
        return socket.AF_INET6, socket.inet_ntop(socket.AF_INET6, datagram[24:40])
    raise ValueError("not an IPv4 or IPv6 datagram")


def _notify_closing(fd: int | socket.socket) -> None:
    """Wake tasks waiting on ``fd`` before it is closed; outside trio there are none."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return
    trio.lowlevel.notify_closing(fd)


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    # SO_RCVBUFFORCE (CAP_NET_ADMIN, which the data plane has) passes net.core.rmem_max;
    # without the capability, SO_RCVBUF gets what rmem_max allows.
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _mark(sock: socket.socket, fwmark: int) -> None:
    if fwmark:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)


# --------------------------------------------------------------------------- TUN
_NO_OFFLOAD = bytes(VNET_HDR)  # a virtio_net_hdr that leaves the kernel nothing to do


class TunDevice:
    """The data plane's TUN: outbound datagrams in, decrypted datagrams out.

    With ``vnet`` (opened with offloads, :mod:`.tun`) each frame carries a
    virtio_net_hdr: a read is cut and finished into whole datagrams by the compiled
    module (``espfast.tun_frames``; a frame it cannot take is dropped and counted,
    ``tun.drop.offload``), a write gets a header of zeros."""

    def __init__(self, fd: int, name: str, counters: IoCounters | None = None, *, vnet: bool = False) -> None:
        if vnet and espfast is None:
            raise ValueError("a TUN with offloads needs the compiled module (pfkeyd.packet.espfast)")
        self.fd = fd
        self.name = name
        self.counters = counters if counters is not None else IoCounters()
        self.vnet = vnet
        os.set_blocking(fd, False)

    @classmethod
    def open(cls, name: str = "ipsec0", counters: IoCounters | None = None, *, offload: bool = False) -> TunDevice:
        """Create the TUN interface ``name`` in the calling thread's namespace (with
        the offloads of :mod:`.tun` if ``offload``, which needs the compiled module)."""
        return cls(open_tun(name, offload=offload), name, counters, vnet=offload)

    def fileno(self) -> int:
        return self.fd

    def receive_now(self, limit: int = BATCH) -> list[bytes]:
        """The datagrams ready now (at most ``limit`` reads; maybe none), without waiting."""
        out = _drain_now(self._read, limit)
        if out:
            self.counters.add("tun.read", len(out))
        if not self.vnet:
            return out
        whole: list[bytes] = []
        for frame in out:
            got = espfast.tun_frames(frame)
            if got is None:
                self.counters.add("tun.drop.offload")
                continue
            if len(got) > 1:
                self.counters.add("tun.gso")
            whole += got
        return whole

    def _read(self) -> bytes:
        return os.read(self.fd, MAX_DATAGRAM + (VNET_HDR if self.vnet else 0))

    async def receive_batch(self, limit: int = BATCH) -> list[bytes]:
        """One or more datagrams (at most ``limit``): waits only if none is ready."""
        return await _drain(self.receive_now, self.fd, limit)

    async def receive(self) -> bytes:
        return (await self.receive_batch(1))[0]

    def send_now(self, datagram: bytes) -> bool:
        """Inject ``datagram`` as if it arrived on the TUN, now; False if the kernel
        dropped it (counted under ``tun.drop.<errno>``); BlockingIOError if the
        device cannot take it yet."""
        try:
            if self.vnet:
                os.writev(self.fd, (_NO_OFFLOAD, datagram))
            else:
                os.write(self.fd, datagram)
        except OSError as e:
            if e.errno not in DROP_ERRNOS:  # EAGAIN (BlockingIOError) among them
                raise
            self.counters.add(drop_name("tun", e))
            return False
        self.counters.add("tun.write")
        return True

    async def send(self, datagram: bytes) -> bool:
        """:meth:`send_now`, waiting while the device is full."""
        return await _send(lambda: self.send_now(datagram), self.fd)

    def close(self) -> None:
        """Close the descriptor; the kernel deletes the interface and its routes."""
        if self.fd >= 0:
            _notify_closing(self.fd)
            os.close(self.fd)
            self.fd = -1


# --------------------------------------------------------------------- raw sockets
def _cmsg_int(data: bytes) -> int:
    return int.from_bytes(data[:4], "little" if struct.pack("=I", 1)[0] == 1 else "big")


def rebuild_ipv6(
    payload: bytes,
    proto: int,
    src: bytes,
    dst: bytes,
    *,
    hop_limit: int,
    flowinfo: int = 0,
    extensions: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """The IPv6 datagram an IPv6 raw socket received as ``payload`` (pure).

    ``extensions`` are the (Next Header value, bytes) of the headers that preceded
    ``proto`` in the order they stood, as the IPV6_HOPOPTS/DSTOPTS/RTHDR control
    messages give them; each carries its own Next Header byte, so the chain is kept
    as it was.  ``flowinfo`` is the 28 bits of traffic class and flow label."""
    ext = b"".join(data for _, data in extensions)
    first = extensions[0][0] if extensions else proto
    head = struct.pack(
        "!IHBB16s16s", (6 << 28) | (flowinfo & _IPV6_FLOWINFO_MASK), len(ext) + len(payload), first, hop_limit, src, dst
    )
    return head + ext + payload


_EXTENSION_CMSGS = {
    socket.IPV6_HOPOPTS: 0,  # Next Header values of the headers they carry
    socket.IPV6_DSTOPTS: 60,
    socket.IPV6_RTHDR: 43,
}
_ANC6 = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4) * 3 + 3 * socket.CMSG_SPACE(2048)


class RawReceiver:
    """A raw socket receiving one IPsec protocol (50, 51 or 108) of one family, handing
    out whole datagrams (the IPv6 header rebuilt; see the module doc)."""

    def __init__(
        self, family: int, proto: int, counters: IoCounters | None = None, *, rcvbuf: int = DEFAULT_RCVBUF
    ) -> None:
        if proto not in IPSEC_PROTOCOLS:
            raise ValueError(f"protocol {proto} is not ESP, AH or IPComp")
        self.family = family
        self.proto = proto
        self.counters = counters if counters is not None else IoCounters()
        self._name = f"raw{4 if family == socket.AF_INET else 6}.{proto}"
        sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
        try:
            if rcvbuf:
                _set_rcvbuf(sock, rcvbuf)
            if family == socket.AF_INET6:
                for opt in (
                    socket.IPV6_RECVPKTINFO,
                    socket.IPV6_RECVHOPLIMIT,
                    socket.IPV6_RECVHOPOPTS,
                    socket.IPV6_RECVDSTOPTS,
                    socket.IPV6_RECVRTHDR,
                    IPV6_FLOWINFO,
                ):
                    sock.setsockopt(socket.IPPROTO_IPV6, opt, 1)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def _one(self) -> bytes:
        if self.family == socket.AF_INET:
            return self.sock.recv(MAX_DATAGRAM)
        payload, anc, _flags, addr = self.sock.recvmsg(MAX_DATAGRAM, _ANC6)
        dst = b""
        hop_limit = 64
        flowinfo = 0
        extensions: list[tuple[int, bytes]] = []
        for level, kind, data in anc:
            if level != socket.IPPROTO_IPV6:
                continue
            if kind == socket.IPV6_PKTINFO:
                dst = data[:16]
            elif kind == socket.IPV6_HOPLIMIT:
                hop_limit = _cmsg_int(data)
            elif kind == IPV6_FLOWINFO:
                flowinfo = int.from_bytes(data[:4], "big")
            elif kind in _EXTENSION_CMSGS:
                extensions.append((_EXTENSION_CMSGS[kind], data))
        if len(dst) != 16:
            raise OSError(errno.EPROTO, "IPv6 raw datagram without IPV6_PKTINFO")
        # Each extension's Next Header is inside it; the header's own points at the first.
        src = socket.inet_pton(socket.AF_INET6, addr[0].split("%", 1)[0])
        return rebuild_ipv6(
            payload, self.proto, src, dst, hop_limit=hop_limit, flowinfo=flowinfo, extensions=tuple(extensions)
        )

    def receive_now(self, limit: int = BATCH) -> list[bytes]:
        """The whole datagrams ready now (at most ``limit``; maybe none)."""
        out = _drain_now(self._one, limit)
        if out:
            self.counters.add(f"{self._name}.receive", len(out))
        return out

    async def receive_batch(self, limit: int = BATCH) -> list[bytes]:
        """One or more whole datagrams (at most ``limit``): waits only if none is ready."""
        return await _drain(self.receive_now, self.sock, limit)

    async def receive(self) -> bytes:
        return (await self.receive_batch(1))[0]

    def close(self) -> None:
        _notify_closing(self.sock)
        self.sock.close()


@record(kw_only=True)
class Fragmentable:
    """What the kernel needs to build and fragment a datagram's header itself: the
    datagram's protocol, source, TOS or traffic class, TTL or hop limit, and where
    its payload starts (:func:`fragmentable`)."""

    proto: int
    src: bytes
    tos: int
    ttl: int
    offset: int


_IPV4_DF = 0x4000
_IPV4_MF_OFFSET = 0x3FFF
_IPV6_EXTENSIONS = frozenset({0, 43, 44, 60})  # hop-by-hop, routing, fragment, destination options


def fragmentable(datagram: bytes) -> Fragmentable | None:
    """Whether the kernel may fragment ``datagram`` for us, rebuilding its header from
    this description without losing anything the header says (pure): an IPv4
    datagram without options, DF clear, not itself a fragment; an IPv6 datagram
    whose next header is not an extension header and whose flow label is zero
    (a socket can set a flow label only under a lease).  None otherwise."""
    if len(datagram) >= 20 and datagram[0] == 0x45:
        total, frag = struct.unpack_from("!H2xH", datagram, 2)
        if total != len(datagram) or frag & (_IPV4_DF | _IPV4_MF_OFFSET):
            return None
        return Fragmentable(proto=datagram[9], src=datagram[12:16], tos=datagram[1], ttl=datagram[8], offset=20)
    if len(datagram) >= 40 and datagram[0] >> 4 == 6:
        (first,) = struct.unpack_from("!I", datagram)
        if first & 0xFFFFF or datagram[6] in _IPV6_EXTENSIONS:
            return None
        if struct.unpack_from("!H", datagram, 4)[0] != len(datagram) - 40:
            return None
        return Fragmentable(proto=datagram[6], src=datagram[8:24], tos=(first >> 20) & 0xFF, ttl=datagram[7], offset=40)
    return None


def _ancillary(family: int, f: Fragmentable) -> list[tuple[int, int, bytes]]:
    """The control messages that make the kernel's header say what ours said."""
    if family == socket.AF_INET:
        return [
            (socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, f.src, bytes(4))),
            (socket.IPPROTO_IP, IP_TOS, struct.pack("=i", f.tos)),
            (socket.IPPROTO_IP, IP_TTL, struct.pack("=i", f.ttl)),
        ]
    return [
        (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, f.src + struct.pack("=i", 0)),
        (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, struct.pack("=i", f.tos)),
        (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, struct.pack("=i", f.ttl)),
    ]


# A classic BPF program of one instruction, "return 0": the socket keeps nothing.
_BPF_RET_K = 0x06
SO_ATTACH_FILTER = 26


def _receive_nothing(sock: socket.socket) -> None:
    """Attach a filter that drops every datagram the kernel would queue on ``sock`` (a
    raw socket opened only to send would otherwise get a copy of all its protocol)."""
    program = ctypes.create_string_buffer(struct.pack("=HBBI", _BPF_RET_K, 0, 0, 0))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("@HP", 1, ctypes.addressof(program)))


class RawSender:
    """Sends whole datagrams of one family exactly as built (IP_HDRINCL / IPV6_HDRINCL),
    marked with ``fwmark`` so they bypass the TUN.

    A datagram larger than the path MTU cannot go out that way (the kernel never
    fragments a datagram whose header it did not build).  When the header allows
    fragmentation (:func:`fragmentable`: IPv4 without options and with DF clear, as
    ``dfbit=0`` leaves tunnel headers; IPv6 without extension headers or flow label,
    where the source may always fragment) it goes out on a
    socket of its protocol without IP_HDRINCL instead, with its source, TOS and
    TTL passed as control messages, and the kernel builds the same header (but for
    the IPv4 identification, its own) and fragments the datagram (counted
    ``raw4.fragmented``); the receiver's kernel
    reassembles it before its raw socket sees it.  That is what lets the TUN's MTU
    exceed the wire's (``--mtu``), as FreeBSD fragments after IPsec.  Otherwise it
    is dropped with EMSGSIZE, counted."""

    def __init__(self, family: int, fwmark: int, counters: IoCounters | None = None) -> None:
        self.family = family
        self.counters = counters if counters is not None else IoCounters()
        self._name = f"raw{4 if family == socket.AF_INET else 6}"
        self._fwmark = fwmark
        self._by_proto: dict[int, socket.socket] = {}
        sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, socket.IPPROTO_RAW)
        try:
            _mark(sock, fwmark)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
            # Opened now, in the caller's namespace and with its privileges.
            for proto in FRAGMENTED_PROTOCOLS:
                self._by_proto[proto] = self._open_fragmenting(proto)
        except BaseException:
            for s in (sock, *self._by_proto.values()):
                s.close()
            raise
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def _open_fragmenting(self, proto: int) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
        try:
            _mark(sock, self._fwmark)
            _receive_nothing(sock)
            if self.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DONTFRAG, 0)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_AUTOFLOWLABEL, 0)  # keep the header's zero label
        except BaseException:
            sock.close()
            raise
        return sock

    def send_now(self, datagram: bytes) -> bool:
        """Send ``datagram`` (a whole IP datagram of this family) to its destination,
        now; False if it was dropped (counted under ``raw4.drop.<errno>`` /
        ``raw6...``); :class:`WouldBlock` (naming the descriptor to wait for) if a
        socket's buffer is full.  The one place a datagram leaves (the async and the
        packet thread's waiting both use it)."""
        family, dst = destination_of(datagram)
        if family != self.family:
            raise ValueError(f"an IPv{4 if family == socket.AF_INET else 6} datagram on the {self._name} sender")
        sock = self.sock
        try:
            try:
                sock.sendto(datagram, (dst, 0))
            except OSError as e:
                how = fragmentable(datagram) if e.errno == errno.EMSGSIZE else None
                if how is None or how.proto not in self._by_proto:
                    raise
                sock = self._by_proto[how.proto]
                sock.sendmsg([memoryview(datagram)[how.offset :]], _ancillary(family, how), 0, (dst, 0))
                self.counters.add(f"{self._name}.fragmented")
        except BlockingIOError:
            raise WouldBlock(sock.fileno()) from None
        except OSError as e:
            if e.errno not in DROP_ERRNOS:
                raise
            self.counters.add(drop_name(self._name, e))
            return False
        self.counters.add(f"{self._name}.send")
        return True

    async def send(self, datagram: bytes) -> bool:
        """:meth:`send_now`, waiting while a socket's buffer is full."""
        return await _send(lambda: self.send_now(datagram), self.sock)

    def close(self) -> None:
        for sock in (self.sock, *self._by_proto.values()):
            _notify_closing(sock)
            sock.close()
        self._by_proto = {}


# ------------------------------------------------------------------------ NAT-T
class UdpKind(Enum):
    """What arrived on the NAT-T port (RFC 3948 §2)."""

    KEEPALIVE = "keepalive"  # a single 0xFF byte (§2.3)
    IKE = "ike"  # the non-ESP marker, four zero bytes, then IKE (§2.2)
    ESP = "esp"  # a non-zero SPI, then the rest of ESP
    MALFORMED = "malformed"  # none of these (too short for ESP's SPI and sequence number)


def classify_udp(payload: bytes) -> UdpKind:
    """Tell a NAT-T payload's kind (pure)."""
    if payload == b"\xff":
        return UdpKind.KEEPALIVE
    if len(payload) >= 4 and payload[:4] == b"\0\0\0\0":
        return UdpKind.IKE
    if len(payload) >= 8:
        return UdpKind.ESP
    return UdpKind.MALFORMED


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@record(kw_only=True)
class UdpDatagram:
    """One datagram from the NAT-T socket, with the addressing the kernel reported."""

    kind: UdpKind
    payload: bytes
    family: int
    src: bytes  # 4 or 16 raw bytes
    sport: int
    dst: bytes
    dport: int
    tos: int = 0  # IPv4 TOS or IPv6 traffic class (the ECN bits matter on decapsulation)
    ttl: int = 64  # IPv4 TTL or IPv6 hop limit

    def whole(self) -> bytes:
        """The IP + UDP datagram as it was on the wire, up to what the kernel keeps to
        itself (the IPv4 ID and options; the UDP checksum is recomputed for IPv6 and 0,
        which RFC 3948 §2.1 allows, for IPv4)."""
        length = 8 + len(self.payload)
        if self.family == socket.AF_INET:
            udp = struct.pack("!HHHH", self.sport, self.dport, length, 0)
            ip = bytearray(
                struct.pack(
                    "!BBHHHBBH4s4s", 0x45, self.tos, 20 + length, 0, 0x4000, self.ttl, 17, 0, self.src, self.dst
                )
            )
            struct.pack_into("!H", ip, 10, ~_sum16(bytes(ip)) & 0xFFFF)
            return bytes(ip) + udp + self.payload
        pseudo = struct.pack("!16s16sIxxxB", self.src, self.dst, length, 17)
        udp0 = struct.pack("!HHHH", self.sport, self.dport, length, 0)
        csum = ~_sum16(pseudo + udp0 + self.payload) & 0xFFFF or 0xFFFF
        udp = struct.pack("!HHHH", self.sport, self.dport, length, csum)
        return rebuild_ipv6(udp + self.payload, 17, self.src, self.dst, hop_limit=self.ttl, flowinfo=self.tos << 20)


class NattSocket:
    """The UDP socket on the NAT-T port of one family (see the module doc)."""

    def __init__(
        self,
        family: int,
        fwmark: int,
        counters: IoCounters | None = None,
        *,
        address: str | None = None,
        port: int = NATT_PORT,
        rcvbuf: int = DEFAULT_RCVBUF,
    ) -> None:
        self.family = family
        self.counters = counters if counters is not None else IoCounters()
        self._name = f"natt{4 if family == socket.AF_INET else 6}"
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            _mark(sock, fwmark)
            if rcvbuf:
                _set_rcvbuf(sock, rcvbuf)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
                # RFC 3948 §2.1: the IPv4 UDP checksum SHOULD be zero.
                sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
                sock.bind((address or "0.0.0.0", port))
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
                sock.bind((address or "::", port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.port = sock.getsockname()[1]

    def fileno(self) -> int:
        return self.sock.fileno()

    def _one(self) -> UdpDatagram:
        payload, anc, _flags, addr = self.sock.recvmsg(MAX_DATAGRAM, 256)
        dst = b""
        tos = 0
        ttl = 64
        for level, kind, data in anc:
            if level == socket.IPPROTO_IP:
                if kind == IP_PKTINFO:
                    dst = data[8:12]  # struct in_pktinfo: ifindex, spec_dst, addr (the header's dst)
                elif kind == IP_TOS:
                    tos = data[0]
                elif kind == IP_TTL:
                    ttl = _cmsg_int(data)
            elif level == socket.IPPROTO_IPV6:
                if kind == socket.IPV6_PKTINFO:
                    dst = data[:16]
                elif kind == socket.IPV6_TCLASS:
                    tos = _cmsg_int(data)
                elif kind == socket.IPV6_HOPLIMIT:
                    ttl = _cmsg_int(data)
        src = socket.inet_pton(self.family, addr[0].split("%", 1)[0])
        return UdpDatagram(
            kind=classify_udp(payload),
            payload=payload,
            family=self.family,
            src=src,
            sport=addr[1],
            dst=dst,
            dport=self.port,
            tos=tos,
            ttl=ttl,
        )

    def receive_now(self, limit: int = BATCH) -> list[UdpDatagram]:
        """The datagrams ready now (at most ``limit``; maybe none), classified and
        counted by kind."""
        out = _drain_now(self._one, limit)
        for d in out:
            self.counters.add(f"{self._name}.{d.kind.value}")
        return out

    async def receive_batch(self, limit: int = BATCH) -> list[UdpDatagram]:
        """One or more datagrams (at most ``limit``), classified and counted by kind."""
        return await _drain(self.receive_now, self.sock, limit)

    async def receive(self) -> UdpDatagram:
        return (await self.receive_batch(1))[0]

    def send_now(self, payload: bytes, address: str, port: int) -> bool:
        """Send ``payload`` from the NAT-T port, now; False if dropped (counted);
        BlockingIOError if the socket's buffer is full."""
        try:
            self.sock.sendto(payload, (address, port))
        except OSError as e:
            if e.errno not in DROP_ERRNOS:  # EAGAIN (BlockingIOError) among them
                raise
            self.counters.add(drop_name(self._name, e))
            return False
        self.counters.add(f"{self._name}.send")
        return True

    async def send(self, payload: bytes, address: str, port: int) -> bool:
        """:meth:`send_now`, waiting while the socket's buffer is full."""
        return await _send(lambda: self.send_now(payload, address, port), self.sock)

    async def send_keepalive(self, address: str, port: int = NATT_PORT) -> bool:
        """A NAT keepalive (RFC 3948 §2.3): one 0xFF byte."""
        return await self.send(b"\xff", address, port)

    def close(self) -> None:
        _notify_closing(self.sock)
        self.sock.close()
