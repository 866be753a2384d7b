"""Opening the data plane for the daemon: options, privileges, devices, sockets.

:func:`open_dataplane` is what ``pfkeyd --dataplane`` runs at start, in the daemon's
network namespace: it checks CAP_NET_ADMIN and CAP_NET_RAW first (a clear
:class:`~pfkeyd.dataplane.privileges.PrivilegeError` otherwise), then creates the TUN,
configures it and the fwmark rules (:class:`~.netlink.Routing`), opens the raw
sockets (ESP, AH, IPComp receive for IPv4 and IPv6; one IP_HDRINCL sender per
family), the NAT-T sockets, enc0 and the pcap file if asked, the per-socket
policy listener, and the firewall table that drops cleartext under inbound
require policies (:mod:`.nft`; a clear error if ``nft`` is missing, unless
``firewall`` is off).  Anything that fails closes what was opened before it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from pyroute2 import IPRoute

from pfkeyd.dataplane.enc import EncInterface, EncTap, PcapWriter
from pfkeyd.dataplane.io import IPSEC_PROTOCOLS, IoCounters, NattSocket, RawReceiver, RawSender, TunDevice
from pfkeyd.dataplane.netlink import DEFAULT_FWMARK, DEFAULT_TABLE, Routing, RoutingConfig
from pfkeyd.dataplane.nft import Firewall, FirewallConfig
from pfkeyd.dataplane.plane import HOLD_PACKETS, HOLD_TIME, DataPlane
from pfkeyd.dataplane.privileges import require_capabilities
from pfkeyd.dataplane.seam import Seam
from pfkeyd.dataplane.sockpol import SocketPolicies, SocketPolicyListener
from pfkeyd.packet.crypto import espfast
from pfkeyd.record import record

__all__ = ["DataplaneOptions", "local_addresses", "open_dataplane"]


@record(kw_only=True)
class DataplaneOptions:
    """What the command line chose (pfkeyd.8 DATA PLANE)."""

    ifname: str = "ipsec0"
    mtu: int = 1400
    manage_routes: bool = True
    firewall: bool = True
    compiled: bool = True
    enc: bool = False
    pcap: str | None = None
    natt_port: int = 4500
    hold_packets: int = HOLD_PACKETS
    hold_time: float = HOLD_TIME
    table: int = DEFAULT_TABLE
    fwmark: int = DEFAULT_FWMARK


def local_addresses() -> list[Any]:
    """Every address of the namespace (for the routes' preferred sources)."""
    out: list[Any] = []
    with IPRoute() as ipr:
        for fam in (socket.AF_INET, socket.AF_INET6):
            for m in ipr.get_addr(family=fam):
                a = m.get("address")
                if a:
                    out.append(ipaddress.ip_address(str(a).split("%", 1)[0]))
    return out


def open_dataplane(
    opts: DataplaneOptions, seam: Seam, sockpol_paths: Sequence[str] = (), allow_uids: Sequence[int] = ()
) -> tuple[DataPlane, list[SocketPolicyListener]]:
    """Check privileges and open everything (see the module doc); one socket-policy
    listener per path in ``sockpol_paths`` (one beside each PF_KEY socket), all
    feeding the plane's one table of per-socket policies."""
    require_capabilities()
    io = IoCounters()
    with ExitStack() as stack:
        firewall = None
        if opts.firewall:
            firewall = Firewall(FirewallConfig(ifname=opts.ifname, natt_port=opts.natt_port))
            firewall.setup()
            stack.callback(firewall.close)
        # The TUN's offloads (TSO, checksums) where the compiled loop will read it:
        # TCP is then read once per 64 KB and cut in C (plane.py, "The compiled loop").
        offload = opts.compiled and espfast is not None and not (opts.enc or opts.pcap)
        tun = TunDevice.open(opts.ifname, io, offload=offload)
        stack.callback(tun.close)
        routing = Routing(RoutingConfig(ifname=opts.ifname, mtu=opts.mtu, table=opts.table, fwmark=opts.fwmark))
        stack.callback(routing.close)
        routing.setup()
        receivers: list[RawReceiver] = []
        for fam in (socket.AF_INET, socket.AF_INET6):
            for proto in IPSEC_PROTOCOLS:
                rx = RawReceiver(fam, proto, io)
                stack.callback(rx.close)
                receivers.append(rx)
        senders: dict[int, RawSender] = {}
        for fam in (socket.AF_INET, socket.AF_INET6):
            tx = RawSender(fam, opts.fwmark, io)
            stack.callback(tx.close)
            senders[fam] = tx
        natt: list[NattSocket] = []
        if opts.natt_port:
            for fam in (socket.AF_INET, socket.AF_INET6):
                ns = NattSocket(fam, opts.fwmark, io, port=opts.natt_port)
                stack.callback(ns.close)
                natt.append(ns)
        tap = None
        if opts.enc or opts.pcap:
            iface = None
            if opts.enc:
                iface = EncInterface("enc0", io)
                stack.callback(iface.close)
            pcap = None
            if opts.pcap:
                f = open(opts.pcap, "wb")  # noqa: SIM115 - owned by the PcapWriter, closed with the plane
                stack.callback(f.close)
                pcap = PcapWriter(f)
            knobs = seam.knobs
            tap = EncTap(iface, pcap, in_mask=knobs.enc_in_bpf_mask, out_mask=knobs.enc_out_bpf_mask)
        policies = SocketPolicies()
        listeners = []
        for path in sockpol_paths:
            listener = SocketPolicyListener(path, policies, allow_uids=allow_uids)
            stack.callback(listener.close)
            listeners.append(listener)
        plane = DataPlane(
            seam,
            tun=tun,
            senders=senders,
            receivers=receivers,
            natt=natt,
            routing=routing,
            enc=tap,
            socket_policies=policies,
            io_counters=io,
            hold_packets=opts.hold_packets,
            hold_time=opts.hold_time,
            local_addresses=local_addresses,
            manage_routes=opts.manage_routes,
            firewall=firewall,
            compiled=opts.compiled,
        )
        for listener in listeners:
            listener.on_change = plane.sync_kernel
            listener.drained = plane.drained
        stack.pop_all()
    return plane, listeners
