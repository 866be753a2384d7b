"""The data plane: pfkeyd protects real traffic (TUN in, SPD, bundle, raw sockets out; and back).

Theory of operation
-------------------
:class:`DataPlane` joins the I/O layer of this package to the transforms of
:mod:`pfkeyd.packet`, and reaches the daemon only through a
:class:`~pfkeyd.dataplane.seam.Seam`.

**Outbound** (``ipsec4_output``): each datagram the kernel routed into the TUN is
parsed for its flow (addresses, protocol, ports; ICMP type and code as ports).  A
per-socket policy of the sending socket is applied first
(:mod:`pfkeyd.dataplane.sockpol`, FreeBSD's ``ipsec_getpolicybysock``); then the
SPD decides, with the same lookup ``pfkeyd lookup`` shows:

* no policy: ``def_policy`` (0 discard, 1 send in the clear);
* ``discard``/``none`` policies: dropped / sent in the clear;
* ``ipsec``: the SAs of the requests form the bundle (a request at level use without
  an SA is skipped; with none at all the packet goes in the clear), which
  :func:`pfkeyd.packet.bundle.protect` applies with the knobs (dfbit, ecn,
  ah_cleartos, the protocol enables); the result goes out on the raw socket of its
  family (ESP-in-UDP included, with its UDP header), marked so it bypasses the TUN.
* a request at level require without an SA: the lookup sent the ACQUIRE (paced as
  always) and the packet is **held** (see below).

A decision is cached per flow until the engine's ``generation`` moves (any PF_KEY
request, tick, knob change or expiry), except when it left a request without an SA:
those go back to the engine on every packet, so that its ACQUIRE pacing sees them.
A cache miss costs the packet thread one round trip to the trio thread.  Ticks
come only at deadlines (SA and policy lifetimes, ACQUIRE pacing), not
periodically, so in steady traffic the generation stands still and the caches hold.

**The hold queue.**  FreeBSD drops the packet that triggers an ACQUIRE (the
application retransmits); Linux, with ``xfrm_larval_drop=0``, queues packets on the
policy until the SA arrives (``XFRM_MAX_QUEUE_LEN`` 100, a timeout).  We keep a small
bounded queue per flow (``hold_packets`` packets, default 4; at most ``hold_flows``
flows, default 256): when the SAD changes the flows are decided again and their
packets sent, in order, once their SAs exist; a flow not resolved in ``hold_time``
seconds (default 5) has its packets dropped and counted (``hold.timeout``); packets
beyond the bound are dropped and counted at once (``hold.overflow``,
``hold.flows``).  So a ping's first echo, or a TCP SYN, gets through with no
retransmission, while a flood towards a peer that never gets keyed costs bounded
memory.

**Inbound** (``ipsec_common_input``): ESP, AH and IPComp arrive on raw sockets (both
families) and ESP-in-UDP on the NAT-T socket; :func:`~pfkeyd.packet.bundle.unprotect`
finds each SA by SPI and destination (the seam), checks and advances the replay
window, and strips tunnel headers.  The inner datagram then meets the inbound
policy check (``ipsec_in_reject``): its inbound policy's requests at level require
must each have been satisfied by an applied SA of their protocol (IPComp is
always "use"), a discard policy (or def_policy 0 with no policy) drops it; a drop
is counted as ``policy.in_reject``.  Accepted datagrams are written to the TUN,
from which the kernel delivers or forwards them.  Cleartext that arrives on the
outer interface never passes through the daemon (the kernel delivers it itself):
the same check is made on it by an nftables table the plane keeps in step with
the inbound policies (:mod:`.nft`, :meth:`DataPlane.sync_firewall`).  The
receiving socket's inbound per-socket policy comes first, both ways.

**Lifetimes.**  The bundle counts each SA's bytes and packets into its
:class:`~pfkeyd.packet.runtime.SaRuntime`; the differences go to the engine
(:mod:`pfkeyd.packet.usage` through ``report_usage``), whose soft and hard limits
send EXPIRE to the registered key managers and remove the SA.  The trio side
reports every ``WATCH_INTERVAL``; an SA with byte or allocation limits is reported
after every batch that used it, so that its limits act within a batch.

**Routes** follow the outbound ipsec policies (tunnel mode: the remote selector;
transport mode: the peer's host route, both from the destination selector) with
the local address inside the source selector as preferred source; a socket with
an outbound ipsec socket policy gets a rule that sends its packets into the TUN
whatever their destination.  They are kept in step when the SPD or the socket
policies change, and removed at exit (:mod:`.netlink`), unless routing is left
to the user.

**The one-step tunnel path.**  A bundle of one ESP tunnel SA over IPv4 with a
combined-mode cipher (the common site-to-site case) goes through
:mod:`pfkeyd.packet.fasttunnel`, which builds the outer header and ESP in one step
and is proven equal to the general path by a property test; everything else takes
:func:`~pfkeyd.packet.bundle.protect`.  Inbound, an IPv4 ESP datagram whose SA is
such a tunnel SA on the compiled path goes through
:func:`pfkeyd.packet.fasttunnel.unprotect` (lookup, replay, open, decapsulation and
counting in one step, proven equal to :func:`~pfkeyd.packet.bundle.unprotect`);
it declines everything else, which takes the general path.

**The compiled loop.**  Where the compiled module was built
(``pfkeyd.packet.espfast``), the packet thread waits in its
:class:`~pfkeyd.packet.espfast.Loop` rather than in a Python epoll: the Python
thread took 60 to 180 microseconds to wake up and handle a packet whose work
takes 4 to 8 (bench/README.md), four times per round trip.  The loop watches the
TUN and the IPv4 ESP receiver itself and moves, without running Python, exactly
what the plane installed after deciding it here:

* an outbound flow (its 13-byte key: addresses, protocol, ports) whose cached
  verdict is one ESP tunnel SA of the one-step path on the compiled cipher, with no
  socket policy, ESP enabled and no byte or allocation limit (``_install_out``);
* an inbound ESP tunnel SA the lookup found, on the same terms (``_install_in``),
  and an inbound flow whose policy asks for ESP at most (``_allow_in``).

With the loop, the TUN is opened with a network card's offloads (TSO4 and
checksums, :mod:`.tun`): the loop reads TCP in segments of up to 64 KB and cuts
them, and joins the TCP segments of one flow that arrive in one batch into one
datagram for the TUN (GRO), so that the kernel's TCP runs once per batch on both
hosts (``espfast.tun_frames``; the wire is the same).

It builds and opens the same bytes (the one-step path's, in C), takes the same
sequence numbers from the same :class:`~pfkeyd.packet.runtime.SaRuntime` and moves
the same replay window (above the window only; anything inside it is Python's),
and counts into the same tables.  Everything else it hands back, untouched and in
order, to :meth:`_on_items`, which runs the Python path on it.  It empties its
tables whenever the generation or the socket policies move, and takes nothing
until :meth:`_refresh` has reset it.  enc(4) and the pcap file need Python's view
of every packet, so with either the compiled loop is not used; neither is it with
``compiled=False`` (``pfkeyd --no-compiled``), the pure path the tests
compare it with.

**Two threads.**  The packet loops run in one OS thread of their own
(:mod:`pfkeyd.dataplane.pump`: a blocking epoll over the TUN, the raw receivers and
the NAT-T sockets, and an eventfd to wake it), because trio's cost per wake-up was
most of what the data plane added to a round trip.  The trio thread keeps the
engine, PF_KEY, the control socket, the timers and the routes.  Ownership:

* the packet thread owns everything the packet methods touch: the verdict and
  policy caches, the bound SAs and their runtimes, the hold queue, the counters,
  the enc tap and pcap file, and the I/O objects until :meth:`run` has joined it;
* the trio thread owns the engine (reached through :attr:`home`, the trio side's
  seam), the routes (:meth:`sync_routes`) and the usage reports (:meth:`report`);
* while :meth:`run` runs, the packet methods use a
  :class:`~pfkeyd.dataplane.seam.ThreadSeam` over :attr:`home`, which marshals what
  changes or walks the engine to the trio thread and reads the rest directly (the
  seam module says which and why);
* the trio side reads the packet thread's tables only through copies
  (:meth:`statistics`, :meth:`report`: ``dict.copy``, one C call the GIL does not
  interrupt) or single atomic reads (``len(self._held)``).

The trio side wakes the thread when the engine's generation moves (every
``WATCH_INTERVAL`` it looks), so that held flows are decided again; the thread
re-reads the generation before every batch anyway.  The engine's clock is trio's
(taken when a marshalled call runs); the hold queue's deadlines use the thread's
own monotonic clock (``monotonic``, injected in tests).  A packet whose processing
raises is dropped, counted (``thread.error``) and logged at most every
``FAULT_LOG_INTERVAL`` seconds: no packet can stop the daemon.  A failure of the
loop itself (its descriptors, or a bug outside the per-packet guard) ends
:meth:`run` with :class:`~pfkeyd.dataplane.pump.PacketThreadError`, and the daemon
with it (exit 1, the error logged): a daemon that looks alive and carries nothing
would be worse.  The trio thread must never block on the packet thread: the packet
thread may be waiting for a decision only trio can make.

**enc(4)**: every plaintext packet is offered to an :class:`~.enc.EncTap` at the
points FreeBSD's hooks see it (out: before and after encapsulation; in: before
and after the outer header is stripped), shown according to the bpf masks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import select
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

import trio

from pfkeyd.dataplane.enc import Direction as EncDirection
from pfkeyd.dataplane.enc import EncRecord, EncTap, Point, enc_flags
from pfkeyd.dataplane.io import IoCounters, NattSocket, RawReceiver, RawSender, TunDevice, UdpDatagram, UdpKind
from pfkeyd.dataplane.netlink import Route, Routing, SocketRoute
from pfkeyd.dataplane.nft import Firewall
from pfkeyd.dataplane.nft import rules as firewall_rules
from pfkeyd.dataplane.pump import PacketLoop, PacketThreadError
from pfkeyd.dataplane.seam import Seam, ThreadSeam
from pfkeyd.dataplane.sockpol import SocketPolicies, SocketPolicy
from pfkeyd.effects import Effect, Instant
from pfkeyd.engine import Decision
from pfkeyd.packet import bundle, esp, fasttunnel, ip, usage
from pfkeyd.packet.bundle import Accepted, Bound, Peek
from pfkeyd.packet.counters import Drop
from pfkeyd.packet.crypto import espfast
from pfkeyd.packet.ip import PacketKnobs
from pfkeyd.packet.runtime import SaRuntime
from pfkeyd.packet.sa import TransformSA, from_sad
from pfkeyd.sad import SecAssoc
from pfkeyd.spd import Flow, SecPolicy
from pfkeyd.wire import Direction, IpProto, Level, PolicyType, SockAddr

__all__ = ["DataPlane", "FlowKey", "Verdict", "flow_bytes", "parse_flow", "routes_for"]

log = logging.getLogger("pfkeyd.dataplane")

_In = TypeVar("_In")  # what a receiver hands the inbound path: bytes, or a UDP datagram

HOLD_PACKETS = 4
HOLD_FLOWS = 256
HOLD_TIME = 5.0
#: How often the trio side looks for a changed SAD/SPD (routes; it then wakes the
#: packet thread for the held flows).
WATCH_INTERVAL = 0.02
#: How often :meth:`DataPlane.drained` looks at the TUN queue again.
DRAIN_POLL = 0.002
#: At most one log line per this many seconds for packets whose processing raised.
FAULT_LOG_INTERVAL = 10.0


class RandomPool:
    """Random bytes drawn from a buffer of ``os.urandom`` (outer IPv4 IDs: two bytes a
    packet, where a system call each would cost more than the header)."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def __call__(self, n: int) -> bytes:
        pos = self._pos
        if pos + n > len(self._buf):
            self._buf, pos = os.urandom(max(4096, n)), 0
        self._pos = pos + n
        return self._buf[pos : pos + n]


_CACHE_MAX = 65536

_TCP, _UDP, _SCTP, _ICMP, _ICMP6 = 6, 17, 132, 1, 58
_PORTED = frozenset((_TCP, _UDP, _SCTP, 136))  # 136: UDP-Lite
_V6_EXT = frozenset((0, 43, 60, 51))
_IPCOMP = int(IpProto.IPCOMP)
#: the counter of the packets each type of per-socket policy decided
_SOCKET_COUNTERS: dict[int, str] = {
    PolicyType.DISCARD: "policy.socket_discard",
    PolicyType.IPSEC: "policy.socket_ipsec",
}

#: (src bytes, dst bytes, proto, sport, dport): a flow as the SPD sees it.
FlowKey = tuple[bytes, bytes, int, int, int]
_ESP_ONLY = frozenset((int(IpProto.ESP),))


def flow_bytes(key: FlowKey) -> bytes:
    """An IPv4 flow as the compiled loop keys it: addresses, protocol, ports (16 bits each)."""
    src, dst, proto, sport, dport = key
    return src + dst + bytes((proto, sport >> 8, sport & 0xFF, dport >> 8, dport & 0xFF))


def parse_flow(dg: bytes) -> FlowKey | None:
    """The flow of a whole datagram (pure); None if it is not IPv4/IPv6.  Ports for
    TCP/UDP/SCTP/UDP-Lite; ICMP's type and code in their place (as selectors hold
    them); 0 for a non-first fragment."""
    n = len(dg)
    if n < 20:
        return None
    v = dg[0] >> 4
    if v == 4:
        ihl = (dg[0] & 0x0F) * 4
        proto = dg[9]
        src, dst = dg[12:16], dg[16:20]
        off = ihl
        first = not (int.from_bytes(dg[6:8], "big") & 0x1FFF)
    elif v == 6 and n >= 40:
        proto, off = dg[6], 40
        src, dst = dg[8:24], dg[24:40]
        first = True
        while proto in _V6_EXT and off + 8 <= n:
            if proto == 51:
                nxt, elen = dg[off], (dg[off + 1] + 2) * 4
            else:
                nxt, elen = dg[off], (dg[off + 1] + 1) * 8
            proto, off = nxt, off + elen
        if proto == 44 and off + 8 <= n:  # fragment header
            first = not (int.from_bytes(dg[off + 2 : off + 4], "big") & 0xFFF8)
            proto, off = dg[off], off + 8
    else:
        return None
    sport = dport = 0
    if first and off + 4 <= n:
        if proto in _PORTED:
            sport, dport = struct.unpack_from("!HH", dg, off)
        elif proto in (_ICMP, _ICMP6):
            sport, dport = dg[off], dg[off + 1]
    return src, dst, proto, sport, dport


def flow_of(key: FlowKey) -> Flow:
    src, dst, proto, sport, dport = key
    return Flow(SockAddr(ipaddress.ip_address(src)), SockAddr(ipaddress.ip_address(dst)), proto, sport, dport)


class Verdict:
    """What to do with an outbound flow's packets."""

    __slots__ = ("chain", "fast", "kind", "reason")

    CLEAR = "clear"
    DROP = "drop"
    PROTECT = "protect"
    HOLD = "hold"

    def __init__(self, kind: str, chain: tuple[Bound, ...] = (), reason: str = "") -> None:
        self.kind = kind
        self.chain = chain
        self.reason = reason
        #: the bundle is one the one-step tunnel path takes (pfkeyd.packet.fasttunnel)
        self.fast = kind == "protect" and fasttunnel.eligible(chain)


def _counted_limits(sa: SecAssoc) -> bool:
    """Whether the SA has a byte or allocation lifetime (the engine acts on traffic)."""
    return any(lt is not None and (lt.bytes or lt.allocations) for lt in (sa.soft, sa.hard))


def routes_for(
    policies: Iterable[SecPolicy], local: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]
) -> set[Route]:
    """The routes into the TUN the outbound ipsec ``policies`` need (pure): the
    destination selector, with the first local address inside the source selector as
    the preferred source."""
    out: set[Route] = set()
    for sp in policies:
        sel = sp.selector
        net = ipaddress.ip_network(f"{sel.dst.ip}/{sel.dst_len}", strict=False)
        srcnet = ipaddress.ip_network(f"{sel.src.ip}/{sel.src_len}", strict=False)
        src = None
        if srcnet.prefixlen:  # a catch-all source selector says nothing about the source
            src = next((a for a in local if a.version == srcnet.version and a in srcnet), None)
        out.add(Route(net, src))
    return out


class DataPlane:
    """The packet path of one daemon (see the module doc).  The I/O objects are
    opened by the caller (in the right namespace, with the privileges checked);
    :meth:`run` drives them until cancelled and then closes them all."""

    def __init__(
        self,
        seam: Seam,
        *,
        tun: TunDevice,
        senders: dict[int, RawSender],
        receivers: Sequence[RawReceiver] = (),
        natt: Sequence[NattSocket] = (),
        routing: Routing | None = None,
        enc: EncTap | None = None,
        socket_policies: SocketPolicies | None = None,
        io_counters: IoCounters | None = None,
        hold_packets: int = HOLD_PACKETS,
        hold_flows: int = HOLD_FLOWS,
        hold_time: float = HOLD_TIME,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        local_addresses: Callable[[], Sequence[Any]] | None = None,
        manage_routes: bool = True,
        firewall: Firewall | None = None,
        compiled: bool = True,
    ) -> None:
        #: The trio thread's seam; :attr:`seam` is the one the packet methods use
        #: (this one, or while :meth:`run` runs, a ThreadSeam over it).
        self.home = seam
        self.seam: Seam = seam
        self.tun = tun
        self.senders = senders
        self.receivers = tuple(receivers)
        self.natt = tuple(natt)
        self.routing = routing
        self.enc = enc
        self.socket_policies = socket_policies if socket_policies is not None else SocketPolicies()
        self.io = io_counters if io_counters is not None else tun.counters
        self.counters: Counter[str] = Counter()
        self.hold_packets = hold_packets
        self.hold_flows = hold_flows
        self.hold_time = hold_time
        self._wall = wall_clock
        self._mono = monotonic
        self._local = local_addresses
        self.manage_routes = manage_routes
        self.firewall = firewall
        self._gen = -1
        self._sgen = -1
        self._tun_busy = False  # the packet thread holds a batch read from the TUN (drained())
        self._knobs_obj: object = None
        self._pk = PacketKnobs()
        self._out: dict[FlowKey, Verdict] = {}
        # verdicts of ipsec socket policies, per flow and policy
        self._sock: dict[tuple[FlowKey, SocketPolicy], Verdict] = {}
        self._in: dict[FlowKey, frozenset[int] | None] = {}
        # spi -> (created, TransformSA, SaRuntime): the runtime outlives knob changes
        self._sas: dict[int, tuple[float, Bound]] = {}
        # spi -> (the SAD's record, its protocol, its destination as bytes, alive): what
        # the inbound lookup checks, worked out once per record (records are immutable;
        # a changed SA is a new one, told apart by identity)
        self._sa_facts: dict[int, tuple[SecAssoc, int, bytes, bool]] = {}
        self._reported: usage.Reported = {}
        self._held: dict[FlowKey, tuple[float, deque[bytes]]] = {}
        self._routes: set[Route] = set()
        self._random = RandomPool()
        self._loop: PacketLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        # SAs with byte or allocation limits -> their packet count when last reported
        self._limited: dict[int, int] = {}
        self._report_posted = False
        self._fault_logged = -math.inf
        self._faults_unlogged = 0
        #: use the compiled loop where it can be used (see the module doc)
        self.compiled = compiled
        self._fast: espfast.Loop | None = None

    # ------------------------------------------------------------------ state
    def _now(self) -> Instant:
        """The packet side's time: its own monotonic clock (the hold queue's deadlines)."""
        return Instant(self._mono(), int(self._wall()))

    def _engine_now(self) -> Instant:
        """The engine's time (called in the trio thread)."""
        return Instant(trio.current_time(), int(self._wall()))

    def _refresh(self) -> bool:
        """Forget the caches when the engine's generation or the socket policies
        moved; True if either did."""
        gen, sgen = self._stamp()
        if gen == self._gen and sgen == self._sgen:
            return False
        self._gen, self._sgen = gen, sgen
        if self._fast is not None:
            self._fast.reset((gen, sgen))
        self._out.clear()
        self._sock.clear()
        self._in.clear()
        self._sa_facts.clear()
        knobs = self.seam.knobs
        if knobs is not self._knobs_obj:
            self._knobs_obj = knobs
            self._pk = PacketKnobs.of(knobs)
            if self.enc is not None:
                self.enc.in_mask, self.enc.out_mask = knobs.enc_in_bpf_mask, knobs.enc_out_bpf_mask
            for spi, (created, b) in list(self._sas.items()):
                self._sas[spi] = (created, Bound(b.sa.with_knobs(knobs), b.state))
        # SAs gone (deleted, expired) or replaced under the same SPI: forget them.
        for spi, (created, _b) in list(self._sas.items()):
            sa = self.seam.sa(spi)
            if sa is None or sa.created != created or not sa.alive:
                del self._sas[spi]
                self._limited.pop(spi, None)
        return True

    def _bound(self, sa: SecAssoc) -> Bound | None:
        hit = self._sas.get(sa.spi)
        if hit is not None and hit[0] == sa.created:
            return hit[1]
        try:
            tsa: TransformSA = from_sad(sa, self.seam.knobs)
        except Exception as e:  # refused at ADD already; never at a packet
            log.warning("SA spi %#x has no packet transform: %s", sa.spi, e)
            return None
        b = Bound(tsa, SaRuntime.for_sa(tsa.window, esn=tsa.esn, cycseq=tsa.cycseq))
        self._sas[sa.spi] = (sa.created, b)
        if _counted_limits(sa):
            self._limited[sa.spi] = -1
        else:
            self._limited.pop(sa.spi, None)
        return b

    # --------------------------------------------------------------- outbound
    def _verdict(self, key: FlowKey, now: Instant) -> Verdict:
        sock = self.socket_policies.match(key)
        if sock is not None:
            self.counters[_SOCKET_COUNTERS.get(sock.type, "policy.socket_bypass")] += 1
            if sock.type == PolicyType.IPSEC:
                hit = self._sock.get((key, sock))
                if hit is not None:
                    return hit
                verdict, cacheable = self._decide(key, now, sock)
                if cacheable and len(self._sock) < _CACHE_MAX:
                    self._sock[(key, sock)] = verdict
                return verdict
            return self._decide(key, now, sock)[0]
        hit = self._out.get(key)
        if hit is not None:
            return hit
        verdict, cacheable = self._decide(key, now, None)
        if cacheable and len(self._out) < _CACHE_MAX:
            self._out[key] = verdict
            if verdict.fast and self._fast is not None:
                self._install_out(key, verdict.chain[0])
        return verdict

    def _decide(self, key: FlowKey, now: Instant, sock: SocketPolicy | None) -> tuple[Verdict, bool]:
        """An outbound flow's verdict, uncached, and whether it may be cached: the
        socket policy ``sock`` of its sending socket if there is one
        (``ipsec_getpolicybysock``: bypass and none clear, discard drops, ipsec has
        the engine resolve the socket's own requests), else the SPD."""
        flow = flow_of(key)
        if sock is None:
            decision, effects = self.seam.decide(Direction.OUTBOUND, flow, now)
        elif sock.type == PolicyType.DISCARD:
            return Verdict(Verdict.DROP, reason="socket"), True
        elif sock.type != PolicyType.IPSEC:
            return Verdict(Verdict.CLEAR), True
        else:
            decision, effects = self.seam.resolve(Direction.OUTBOUND, flow, sock.policy_for(flow), now)
        self.seam.emit(effects)
        return self._from_decision(decision)

    def _from_decision(self, d: Decision) -> tuple[Verdict, bool]:
        if d.held:
            return Verdict(Verdict.HOLD), False
        if d.action == "discard":
            return Verdict(Verdict.DROP, reason="default" if d.default else "policy"), True
        if d.action == "pass":
            return Verdict(Verdict.CLEAR), True
        chain: list[Bound] = []
        complete = True
        for o in d.requests:
            if o.sa is None:
                complete = False  # level use: skipped (its ACQUIRE was sent, paced)
                continue
            b = self._bound(o.sa)
            if b is None:
                return Verdict(Verdict.DROP, reason="noxform"), False
            chain.append(b)
        if not chain:
            return Verdict(Verdict.CLEAR), complete
        return Verdict(Verdict.PROTECT, tuple(chain)), complete

    def _show_out(self, dg: bytes, chain: tuple[Bound, ...]) -> None:
        enc = self.enc
        if enc is None:
            return
        first = chain[0].sa
        flags = enc_flags(encrypts=bool(first.enc_id) or first.proto == _IPCOMP, authenticates=bool(first.auth_id))
        if enc.wants(EncDirection.OUT, Point.BEFORE):
            enc(EncRecord(direction=EncDirection.OUT, point=Point.BEFORE, datagram=dg, spi=first.spi, flags=flags))
        if enc.wants(EncDirection.OUT, Point.AFTER):
            after = dg
            if first.tunnel:
                outer = ip.encapsulate(dg, first.src, first.dst, self._pk, 0)
                after = outer if outer is not None else dg
            enc(EncRecord(direction=EncDirection.OUT, point=Point.AFTER, datagram=after, spi=first.spi, flags=flags))

    def outbound(self, dg: bytes, now: Instant) -> list[bytes]:
        """Decide and transform one datagram read from the TUN: the datagrams to send
        (none when dropped or held)."""
        key = parse_flow(dg)
        if key is None:
            self.counters["out.malformed"] += 1
            return []
        if self._held and key in self._held:
            # Behind the flow's held packets, so that they go out in order.
            self._hold(key, dg, now)
            return []
        v = self._verdict(key, now)
        if v.kind == Verdict.PROTECT:
            if self.enc is not None:
                self._show_out(dg, v.chain)
            got = (
                fasttunnel.protect(v.chain, dg, self._pk, self.seam.packet_counters, random=self._random)
                if v.fast
                else None
            )
            if got is None:
                got = bundle.protect(v.chain, dg, self._pk, self.seam.packet_counters, random=self._random)
            if isinstance(got, Drop):
                return []
            return [got]
        if v.kind == Verdict.CLEAR:
            self.counters["out.clear"] += 1
            return [dg]
        if v.kind == Verdict.HOLD:
            self._hold(key, dg, now)
            return []
        self.counters[f"out.discard.{v.reason}"] += 1
        return []

    def _hold(self, key: FlowKey, dg: bytes, now: Instant) -> None:
        held = self._held.get(key)
        if held is None:
            if len(self._held) >= self.hold_flows:
                self.counters["hold.flows"] += 1
                return
            held = self._held[key] = (now.mono + self.hold_time, deque())
        if len(held[1]) >= self.hold_packets:
            self.counters["hold.overflow"] += 1
            return
        held[1].append(dg)
        self.counters["hold.queued"] += 1

    def release_held(self, now: Instant) -> list[bytes]:
        """Decide the held flows again: the packets of those whose SAs now exist,
        protected, in order; timed-out flows are dropped and counted."""
        out: list[bytes] = []
        for key, (deadline, packets) in list(self._held.items()):
            # Decided as the first packet was: a socket policy first, then the SPD.
            v, _ = self._decide(key, now, self.socket_policies.match(key))
            if v.kind == Verdict.HOLD:
                if now.mono >= deadline:
                    del self._held[key]
                    self.counters["hold.timeout"] += len(packets)
                continue
            del self._held[key]
            for dg in packets:
                if v.kind == Verdict.PROTECT:
                    if self.enc is not None:
                        self._show_out(dg, v.chain)
                    got = bundle.protect(v.chain, dg, self._pk, self.seam.packet_counters, random=self._random)
                    if not isinstance(got, Drop):
                        out.append(got)
                        self.counters["hold.sent"] += 1
                elif v.kind == Verdict.CLEAR:
                    out.append(dg)
                    self.counters["hold.sent"] += 1
                else:
                    self.counters["hold.dropped"] += 1
        return out

    def expire_held(self, now: Instant) -> None:
        for key, (deadline, packets) in list(self._held.items()):
            if now.mono >= deadline:
                del self._held[key]
                self.counters["hold.timeout"] += len(packets)

    # ------------------------------------------------------- the compiled loop
    def _compilable(self, b: Bound) -> tuple[espfast.EspV4, int] | None:
        """The compiled ESP of an SA the compiled loop may carry (see the module doc)
        and its plan's wrap mask, or None: the one-step tunnel path's SAs, on the
        compiled cipher, with ESP enabled and no byte or allocation limit."""
        if not fasttunnel.eligible((b,)) or not self._pk.esp_enable or b.sa.spi in self._limited:
            return None
        plan = esp.plan_of(b.sa)
        return None if plan.native is None else (plan.native, plan.wrap_mask)

    def _install_out(self, key: FlowKey, b: Bound) -> None:
        it = self._compilable(b)
        if it is None or len(key[0]) != 4 or self._fast is None:
            return
        pk, sa = self._pk, b.sa
        self._fast.add_out(flow_bytes(key), it[0], b.state, sa.src, sa.dst, pk.ttl, pk.dfbit, pk.ecn, it[1])

    def _install_in(self, b: Bound) -> None:
        it = self._compilable(b)
        if it is None or self._fast is None:
            return
        self._fast.add_in(b.sa.spi, it[0], b.state, b, b.sa.dst)

    def _stamp(self) -> tuple[int, int]:
        """The values of the attributes the compiled loop watches (``_open_compiled``)."""
        return self.seam.generation(), self.socket_policies.generation

    # ---------------------------------------------------------------- inbound
    def _lookup(self, peek: Peek) -> Bound | None:
        if peek.spi == 0:
            sa = self.seam.sa_between(
                _IPCOMP, SockAddr(ipaddress.ip_address(peek.src)), SockAddr(ipaddress.ip_address(peek.dst))
            )
        else:
            sa = self.seam.sa(peek.spi)
            if sa is None:
                return None
            facts = self._sa_facts.get(peek.spi)
            if facts is None or facts[0] is not sa:
                facts = (sa, sa.index.proto, sa.index.dst.ip.packed, sa.alive)
                if len(self._sa_facts) >= _CACHE_MAX:
                    self._sa_facts.clear()
                self._sa_facts[peek.spi] = facts
            if facts[1] != peek.proto or facts[2] != peek.dst or not facts[3]:
                return None
            b = self._bound(sa)
            if b is not None and self._fast is not None:
                self._install_in(b)
            return b
        if sa is None or not sa.alive:
            return None
        return self._bound(sa)

    def _required(self, key: FlowKey, now: Instant) -> frozenset[int] | None:
        """The protocols an inbound flow's policy requires; None when it is discarded.
        The receiving socket's inbound policy comes first (bypass and none: nothing,
        discard: refused, ipsec: its own requests), then the SPD's."""
        if key in self._in:
            return self._in[key]
        need: frozenset[int] | None
        sock = self.socket_policies.match_in(key)
        if sock is not None and sock.type != PolicyType.IPSEC:
            need = None if sock.type == PolicyType.DISCARD else frozenset()
        else:
            flow = flow_of(key)
            if sock is None:
                decision, _ = self.seam.decide(Direction.INBOUND, flow, now)
            else:
                decision, _ = self.seam.resolve(Direction.INBOUND, flow, sock.policy_for(flow), now)
            need = self._need(decision)
        if len(self._in) < _CACHE_MAX:
            self._in[key] = need
            if self._fast is not None and need is not None and need <= _ESP_ONLY and len(key[0]) == 4:
                self._fast.allow_in(flow_bytes(key))
        return need

    def _need(self, decision: Decision) -> frozenset[int] | None:
        """What an inbound decision requires of a packet's applied SAs (ipsec_in_reject)."""
        sp = decision.policy
        if sp is None:
            return None if self.seam.knobs.def_policy == 0 else frozenset()
        if sp.type == PolicyType.DISCARD:
            return None
        if sp.type != PolicyType.IPSEC:
            return frozenset()
        return frozenset(
            o.request.proto
            for o in decision.requests
            if o.level in (Level.REQUIRE, Level.UNIQUE) and o.request.proto != _IPCOMP
        )

    def accept(self, got: bundle.Accepted | Drop, received: bytes, now: Instant) -> bytes | None:
        """The inbound policy check on what the bundle returned: the datagram for the
        TUN, or None (dropped, counted)."""
        if isinstance(got, Drop):
            return None
        inner = got.datagram
        key = parse_flow(inner)
        if key is None:
            self.counters["in.malformed"] += 1
            return None
        need = self._required(key, now)
        have = {b.sa.proto for b in got.applied}
        if need is None or not need <= have:
            self.counters["policy.in_reject"] += 1
            return None
        if not got.applied:
            # Nothing of ours in it (plain IP-in-IP no IPComp SA took): not for us.
            self.counters["in.notours"] += 1
            return None
        if self.enc is not None:
            first = got.applied[0].sa
            flags = enc_flags(encrypts=bool(first.enc_id) or first.proto == _IPCOMP, authenticates=bool(first.auth_id))
            if self.enc.wants(EncDirection.IN, Point.BEFORE):
                before = inner
                if any(b.sa.tunnel for b in got.applied) and len(received) >= 20:
                    sp = ip.split(received, inbound=True)
                    if sp is not None:
                        outer = ip.encapsulate(inner, sp.src, sp.dst, self._pk, 0)
                        before = outer if outer is not None else inner
                self.enc(
                    EncRecord(
                        direction=EncDirection.IN, point=Point.BEFORE, datagram=before, spi=first.spi, flags=flags
                    )
                )
            if self.enc.wants(EncDirection.IN, Point.AFTER):
                self.enc(
                    EncRecord(direction=EncDirection.IN, point=Point.AFTER, datagram=inner, spi=first.spi, flags=flags)
                )
        return inner

    def inbound(self, dg: bytes, now: Instant) -> bytes | None:
        counters = self.seam.packet_counters
        got = fasttunnel.unprotect(dg, self._lookup, self._pk, counters)
        if got is None:
            got = bundle.unprotect(dg, self._lookup, self._pk, counters)
        return self.accept(got, dg, now)

    def inbound_udp(self, dg: bytes, now: Instant) -> bytes | None:
        got = bundle.unprotect_udp(dg, self._lookup, self._pk, self.seam.packet_counters)
        return self.accept(got, dg, now)

    # ------------------------------------------------------------------ usage
    def report(self, now: Instant) -> None:
        """Hand the SAs' traffic since the last report to the engine (lifetimes).

        The trio side calls this (every WATCH_INTERVAL while :meth:`run` runs), so the
        engine is reached directly: posting a report from the packet thread after
        every batch woke the trio thread, whose turn with the GIL then delayed the
        packet thread by 0.1-0.4 ms a batch.  The SAs' runtimes are read from a copy
        of the table the packet thread keeps (dict.copy is atomic), each total once."""
        live = ((spi, b.state) for spi, (_c, b) in self._sas.copy().items())
        reports, self._reported = usage.pending(live, self._reported)
        effects: list[Effect] = []
        for r in reports:
            effects += self.home.report_usage(r.spi, r.nbytes, r.packets, now, replay_seq=r.replay_seq)
        self.home.emit(effects)

    # ----------------------------------------------------------------- routes
    def sync_routes(self) -> None:
        if self.routing is None or not self.manage_routes:
            return
        local = list(self._local()) if self._local is not None else []
        want = routes_for(self.home.outbound_policies(), local)
        for r in self._routes - want:
            try:
                self.routing.remove_route(r)
            except OSError as e:
                self.counters["route.error"] += 1
                log.warning("removing route %s: %s", r.network, e)
        for r in want - self._routes:
            try:
                self.routing.add_route(r)
            except OSError as e:
                self.counters["route.error"] += 1
                log.warning("adding route %s: %s", r.network, e)
                want.discard(r)
        self._routes = want
        self._sync_socket_routes()

    def _sync_socket_routes(self) -> None:
        """The packets of sockets with an outbound ipsec policy go into the TUN
        whatever their destination (:class:`~.netlink.SocketRoute`)."""
        assert self.routing is not None
        want = {
            SocketRoute(
                4 if len(p.address) == 4 else 6,
                p.proto,
                p.port,
                ipaddress.ip_address(p.address) if any(p.address) else None,
            )
            for p in self.socket_policies.outbound_ipsec()
        }
        have = self.routing.socket_routes()
        for sr in have - want:
            self._routing_step(self.routing.remove_socket_route, sr, "removing a socket rule")
        for sr in want - have:
            self._routing_step(self.routing.add_socket_route, sr, "adding a socket rule")

    def _routing_step(self, step: Callable[[SocketRoute], object], sr: SocketRoute, what: str) -> None:
        """One netlink step of :meth:`_sync_socket_routes`; a refusal is logged and counted."""
        try:
            step(sr)
        except OSError as e:
            self.counters["route.error"] += 1
            log.warning("%s: %s", what, e)

    async def drained(self) -> None:
        """Return once the TUN holds no packet the plane has not decided: the packet
        thread marks itself busy before it reads a batch from the TUN and clears the
        mark once the batch is decided and sent, so an empty TUN queue with no batch
        in hand means every packet sent before now has met its policy."""
        fd = self.tun.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while self._tun_busy or (self._fast is not None and self._fast.holding) or poller.poll(0):
            await trio.sleep(DRAIN_POLL)

    def sync_kernel(self) -> None:
        """Routes, socket rules and the firewall table in step with the policies now
        (the socket-policy listener calls it before it answers setsockopt, so that a
        program's next packet already meets its policy)."""
        self.sync_routes()
        self.sync_firewall()

    # --------------------------------------------------------------- firewall
    def sync_firewall(self) -> None:
        """Bring the nftables table in step with the inbound SPD, the inbound socket
        policies and def_policy (:mod:`.nft`); a refusal keeps the old rules, logged
        and counted."""
        if self.firewall is None:
            return
        chain = firewall_rules(
            self.firewall.config, self.home.inbound_policies(), self.socket_policies.inbound(), self.home.knobs
        )
        try:
            self.firewall.apply(chain)
        except OSError as e:
            self.counters["firewall.error"] += 1
            log.warning("updating the firewall table: %s", e.strerror or e)

    # ------------------------------------------------- the packet thread's side
    def _fault(self, where: str, exc: Exception) -> None:
        """A packet whose processing raised: dropped, counted, logged at most once per
        FAULT_LOG_INTERVAL (with how many were not), never fatal."""
        self.counters["thread.error"] += 1
        now = self._mono()
        if now < self._fault_logged + FAULT_LOG_INTERVAL:
            self._faults_unlogged += 1
            return
        log.error(
            "packet thread: a packet %s raised %s (dropped; %d more not logged)",
            where,
            type(exc).__name__,
            self._faults_unlogged,
            exc_info=exc,
        )
        self._fault_logged, self._faults_unlogged = now, 0

    def _send_out(self, datagrams: Iterable[bytes]) -> None:
        loop = self._loop
        assert loop is not None
        for out in datagrams:
            sender = self.senders.get(socket.AF_INET if out[0] >> 4 == 4 else socket.AF_INET6)
            if sender is None:
                self.counters["out.nofamily"] += 1
                continue
            loop.send(sender.send_now, sender.fileno(), out)

    def _to_tun(self, inner: bytes) -> None:
        loop = self._loop
        assert loop is not None
        loop.send(self.tun.send_now, self.tun.fd, inner)

    def _pump_tun(self) -> None:
        self._tun_busy = True  # before the read: see drained()
        try:
            batch = self.tun.receive_now()
            if not batch:
                return
            self._refresh()
            now = self._now()
            out: list[bytes] = []
            for dg in batch:
                try:
                    out += self.outbound(dg, now)
                except Exception as e:  # one packet's fault, never the loop's (pump.py)
                    self._fault("out", e)
            self._send_out(out)
        finally:
            self._tun_busy = False
        if self._limited:
            self._report_limited()

    def _pump_raw(self, rx: RawReceiver) -> None:
        self._pump_in(rx.receive_now(), self.inbound)

    def _pump_natt(self, sock: NattSocket) -> None:
        self._pump_in([d for d in sock.receive_now() if d.kind is UdpKind.ESP], self._inbound_natt)

    def _inbound_natt(self, d: UdpDatagram, now: Instant) -> bytes | None:
        return self.inbound_udp(d.whole(), now)

    def _pump_in(self, batch: Sequence[_In], unprotect: Callable[[_In, Instant], bytes | None]) -> None:
        """Unprotect a batch that arrived (raw ESP/AH/IPComp, or ESP in UDP) and write
        what passes the inbound check to the TUN."""
        if not batch:
            return
        self._refresh()
        now = self._now()
        for item in batch:
            try:
                inner = unprotect(item, now)
            except Exception as e:  # one packet's fault, never the loop's (pump.py)
                self._fault("in", e)
                continue
            if inner is not None:
                self._to_tun(inner)
        if self._limited:
            self._report_limited()

    def _on_items(self, items: list[tuple[int, Any, Any, Any]]) -> None:
        """What the compiled loop handed back, in order (see the module doc)."""
        self._refresh()
        now = self._now()
        out: list[bytes] = []
        counters = self.seam.packet_counters
        for kind, a, b, c in items:
            try:
                if kind == espfast.ITEM_TUN:
                    out += self.outbound(a, now)
                    continue
                if kind == espfast.ITEM_SEND:
                    out.append(a)
                    continue
                inner: bytes | None
                if kind == espfast.ITEM_ESP:
                    inner = self.inbound(a, now)
                elif kind == espfast.ITEM_WRITE:
                    inner = a
                elif kind == espfast.ITEM_ACCEPT:
                    inner = self.accept(Accepted(a, (b,)), c, now)
                else:  # ITEM_OPENED
                    inner = self.accept(fasttunnel.finish(c, a, b, self._lookup, self._pk, counters), c, now)
                if inner is not None:
                    self._to_tun(inner)
            except Exception as e:  # one packet's fault, never the loop's (pump.py)
                self._fault("out" if kind in (espfast.ITEM_TUN, espfast.ITEM_SEND) else "in", e)
        self._send_out(out)
        if self._limited:
            self._report_limited()

    def _report_limited(self) -> None:
        """After a batch: if an SA with byte or allocation limits carried traffic, have
        the trio side report now, so that its limits act within a batch (the others
        wait for the trio side's next WATCH_INTERVAL)."""
        if self._report_posted or self._token is None:
            return
        used = False
        for spi, seen in self._limited.items():
            hit = self._sas.get(spi)
            if hit is not None and hit[1].state.packets != seen:
                self._limited[spi] = hit[1].state.packets
                used = True
        if used:
            self._report_posted = True
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._report_now)

    def _report_now(self) -> None:
        """In the trio thread (run_sync_soon: an exception here would end the trio run)."""
        self._report_posted = False
        try:
            self.report(self._engine_now())
        except Exception:
            log.error("data plane: reporting traffic to the engine failed", exc_info=True)

    def _on_change(self) -> None:
        """Woken by the trio side: the SAD or SPD changed; held flows are decided again."""
        if self._refresh() and self._held:
            try:
                out = self.release_held(self._now())
            except Exception as e:
                self._fault("held", e)
                return
            self._send_out(out)

    def _hold_timeout(self) -> float | None:
        """Seconds until the earliest held flow times out (the loop's sleep), or None."""
        if not self._held:
            return None
        return min(deadline for deadline, _ in self._held.values()) - self._mono()

    def _after_wake(self) -> None:
        if self._held:
            self.expire_held(self._now())
        if self.enc is not None and self.enc.pcap is not None:
            self.enc.pcap.flush()  # a reader of the file sees the packets at once

    # ------------------------------------------------------ the trio thread's side
    async def _watch(self, loop: PacketLoop) -> None:
        """Report the SAs' traffic (lifetimes) and follow the engine's generation;
        when it moved, keep the routes in step and wake the packet thread (held
        flows, caches)."""
        seen = (self.home.generation(), self.socket_policies.generation)
        while True:
            await trio.sleep(WATCH_INTERVAL)
            self.report(self._engine_now())
            gen = (self.home.generation(), self.socket_policies.generation)
            if gen != seen:
                seen = gen
                self.sync_routes()
                self.sync_firewall()
                loop.wake.set()

    def _open_compiled(self) -> tuple[espfast.Loop, RawReceiver] | None:
        """The compiled loop over the TUN, the IPv4 ESP receiver and the IPv4 sender,
        where it can be used (see the module doc); None elsewhere."""
        if not self.compiled or espfast is None or self.enc is not None or not isinstance(self.tun, TunDevice):
            return None
        sender = self.senders.get(socket.AF_INET)
        rx = next((r for r in self.receivers if r.family == socket.AF_INET and r.proto == ip.IPPROTO_ESP), None)
        if sender is None or rx is None or not all(x.counters is self.io for x in (self.tun, sender, rx)):
            return None  # its counts go to the one table the statistics read
        watched = (self.seam.generation_source(), (self.socket_policies, "generation"))
        fast = espfast.Loop(
            self.tun, rx, sender, self.seam.packet_counters.table("esp"), self.io.table(), watched, vnet=self.tun.vnet
        )
        fast.reset(self._stamp())
        return fast, rx

    def _open_loop(self) -> PacketLoop:
        compiled = self._open_compiled()
        fast_rx = None
        if compiled is not None:
            self._fast, fast_rx = compiled
            self._gen = self._sgen = -1  # the next _refresh resets it with the caches
        loop = PacketLoop(
            on_wake=self._on_change,
            timeout=self._hold_timeout,
            after=self._after_wake,
            compiled=self._fast,
            on_items=self._on_items,
        )
        if self._fast is None:
            loop.watch(self.tun.fileno(), self._pump_tun)
        for rx in self.receivers:
            if rx is fast_rx:
                continue
            loop.watch(rx.fileno(), partial(self._pump_raw, rx))
        for ns in self.natt:
            loop.watch(ns.fileno(), partial(self._pump_natt, ns))
        return loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the packet thread (and the trio side's watch) until cancelled; then
        stop and join the thread, remove the routes, rules and interfaces and close
        every socket (also after an error).  A failure of the packet loop itself
        ends this with :class:`PacketThreadError`."""
        loop: PacketLoop | None = None
        ended = trio.Event()
        try:
            self._refresh()
            self.sync_routes()
            self.sync_firewall()
            token = self._token = trio.lowlevel.current_trio_token()
            self.seam = ThreadSeam(self.home, token, self._engine_now)
            loop = self._loop = self._open_loop()

            def on_exit() -> None:  # in the packet thread, as it ends
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(ended.set)

            loop.start(on_exit)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, loop)
                task_status.started()
                await ended.wait()  # only a failure ends the thread before a stop
                nursery.cancel_scope.cancel()
            raise PacketThreadError(loop.failure)
        finally:
            if loop is not None and loop.started:
                loop.stop()
                with trio.CancelScope(shield=True):
                    # Waiting in trio, not in join(): the thread may be waiting for
                    # a decision only this thread can make.
                    await ended.wait()
                loop.join()
                self.report(self._engine_now())  # what the thread carried since the last watch
            if loop is not None:
                loop.close()
                self._loop = None
                self.seam = self.home
            if self._fast is not None:
                self._fast.close()
                self._fast = None
            self.close()

    def close(self) -> None:
        """Close everything (idempotent): firewall table, routes, rules, TUN, sockets,
        enc0, pcap."""
        if self.firewall is not None:
            try:
                self.firewall.close()
            except OSError as e:
                log.warning("removing the firewall table: %s", e.strerror or e)
            self.firewall = None
        if self.routing is not None:
            try:
                self.routing.close()
            except OSError as e:
                log.warning("removing the data plane's routes: %s", e)
            self.routing = None
        self._routes = set()
        closing: list[RawReceiver | NattSocket | RawSender] = [*self.receivers, *self.natt, *self.senders.values()]
        for obj in closing:
            obj.close()
        self.receivers, self.natt, self.senders = (), (), {}
        self.tun.close()
        if self.enc is not None:
            if self.enc.interface is not None:
                self.enc.interface.close()
            if self.enc.pcap is not None:
                self.enc.pcap.close()
            self.enc = None

    # ------------------------------------------------------------- statistics
    def statistics(self) -> dict[str, Any]:
        """Everything the data plane counts, as plain data (``pfkeyd stats --json``)."""
        # The packet thread changes these tables: each is copied in one C call
        # (dict.copy, which the GIL does not interrupt) before it is read.
        sas = []
        for spi, (_c, b) in sorted(self._sas.copy().items()):
            st = b.state
            sas.append(
                {
                    "spi": spi,
                    "proto": {50: "esp", 51: "ah", 108: "ipcomp"}.get(b.sa.proto, str(b.sa.proto)),
                    "mode": "tunnel" if b.sa.tunnel else "transport",
                    "src": str(ipaddress.ip_address(b.sa.src)),
                    "dst": str(ipaddress.ip_address(b.sa.dst)),
                    "bytes": st.bytes,
                    "packets": st.packets,
                    "seq": st.seq,
                    "replay": st.replay.count if st.replay is not None else 0,
                }
            )
        counters = dict.copy(self.counters)
        fast = self._fast
        if fast is not None:
            counters["compiled.out"], counters["compiled.in"] = fast.fast_out, fast.fast_in
        clear = 0
        if self.firewall is not None:
            try:
                clear = counters["policy.in_clear_reject"] = self.firewall.dropped()
            except OSError as e:
                log.warning("reading the firewall's counter: %s", e.strerror or e)
        # FreeBSD's ips_in_polvio: every inbound packet the policy refused, decrypted or not.
        polvio = counters.get("policy.in_reject", 0) + clear
        if polvio or self.firewall is not None:
            counters["policy.in_polvio"] = polvio
        return {
            "interface": self.tun.name,
            "counters": dict(sorted(counters.items())),
            "io": dict(sorted(self._io_snapshot().items())),
            "held_flows": len(self._held),
            "routes": sorted(str(r.network) + (f" src {r.src}" if r.src else "") for r in self._routes),
            "sas": sas,
            "socket_policies": self.socket_policies.describe(),
        }

    def _io_snapshot(self) -> dict[str, int]:
        io = self.io.snapshot()
        loop = self._loop
        if loop is not None and loop.waits:
            io["thread.wait_writable"] = loop.waits
        return io

    def statistics_text(self) -> str:
        st = self.statistics()
        lines = [f"dataplane ({st['interface']}):"]
        lines += [f"\t{n} {k}" for k, n in st["counters"].items()]
        lines += [f"\t{n} {k}" for k, n in st["io"].items()]
        lines.append(f"\t{st['held_flows']} held flows")
        for r in st["routes"]:
            lines.append(f"\troute {r}")
        for sa in st["sas"]:
            lines.append(
                f"\tsa {sa['proto']} spi {sa['spi']:#010x} {sa['mode']} {sa['src']}->{sa['dst']}:"
                f" {sa['bytes']} bytes {sa['packets']} packets"
            )
        for p in st["socket_policies"]:
            lines.append(f"\tsocket policy {p}")
        return "\n".join(lines) + "\n"
