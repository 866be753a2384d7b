"""The data plane's I/O side: TUN, raw and NAT-T sockets, routing, enc(4), privileges.

Theory of operation
-------------------
With the data plane on, a Linux host with no kernel ESP protects its traffic the way a
FreeBSD host does, with the transforms (``pfkeyd.packet``) running in pfkeyd::

    outbound:  app ─► kernel routing ─► table T route ─► ipsec0 (TUN) ─► TunDevice
               ─► SPD lookup + protect() ─► RawSender (SO_MARK: bypasses T) ─► wire
    inbound:   wire ─► RawReceiver (50/51/108) or NattSocket (UDP 4500)
               ─► unprotect() + inbound policy check ─► TunDevice ─► kernel ─► app

This package is everything up to the two arrows in the middle, and knows nothing of
policies or SAs:

* ``tun`` opens the TUN (the one hand-written ioctl);
* ``netlink`` (pyroute2) configures it and keeps the routes into it (tunnel mode: the
  remote selectors; transport mode: the peer's host route) in a table of their own,
  with the fwmark rules that keep the daemon's own packets out of it;
* ``io`` moves whole datagrams, pulled in bursts, waiting rather than queueing;
* ``pump`` is the packet thread's loop: a blocking epoll in an OS thread of its own,
  beside the trio thread that keeps PF_KEY and the engine;
* ``enc`` shows plaintext on ``enc0`` and in pcap files, following FreeBSD's
  ``net.enc.{in,out}.ipsec_bpf_mask``;
* ``nft`` keeps an nftables table that drops cleartext under inbound require
  policies, which the kernel would otherwise deliver without the daemon;
* ``privileges`` refuses to start without CAP_NET_ADMIN and CAP_NET_RAW.
"""

from pfkeyd.dataplane.enc import EncInterface, EncRecord, EncTap, PcapWriter, shows
from pfkeyd.dataplane.io import IoCounters, NattSocket, RawReceiver, RawSender, TunDevice, UdpDatagram, classify_udp
from pfkeyd.dataplane.netlink import Route, Routing, RoutingConfig, transport_route, tunnel_route
from pfkeyd.dataplane.privileges import PrivilegeError, require_capabilities
from pfkeyd.dataplane.tun import open_tun

__all__ = [
    "EncInterface",
    "EncRecord",
    "EncTap",
    "IoCounters",
    "NattSocket",
    "PcapWriter",
    "PrivilegeError",
    "RawReceiver",
    "RawSender",
    "Route",
    "Routing",
    "RoutingConfig",
    "TunDevice",
    "UdpDatagram",
    "classify_udp",
    "open_tun",
    "require_capabilities",
    "shows",
    "transport_route",
    "tunnel_route",
]
