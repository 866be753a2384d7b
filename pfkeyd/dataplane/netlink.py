"""Netlink for the data plane, through pyroute2: the TUN's link state, routes and rules.

Theory of operation
-------------------
Outbound packets reach the daemon because routes send them into the TUN (default
``ipsec0``, created by :func:`pfkeyd.dataplane.tun.open_tun`).  All those routes live
in a routing table of their own (``table``, default 5050), never in ``main``:

* tunnel mode: a route for each remote selector (``10.2.0.0/24 dev ipsec0``,
  optionally ``src`` the local selector's address so that local sockets pick it);
* transport mode: the peer's host route (``192.0.2.2/32 dev ipsec0``).

The daemon's own protected packets (ESP/AH/IPComp on raw sockets, ESP-in-UDP on 4500)
go to that very peer, so in transport mode, or when a remote selector covers the
peer, they would be routed back into the TUN and loop.  Every socket the data plane
sends on carries ``SO_MARK = fwmark``, and two rules per address family sort the
traffic (the WireGuard arrangement):

=========  =========================================  ==================================
priority   rule                                        what it does
=========  =========================================  ==================================
P          ``fwmark M lookup main``                    the daemon's packets use main
P + 1      ``not fwmark M lookup T``                   everything else consults T first
32766      ``lookup main``                             (kernel default) the rest
=========  =========================================  ==================================

Per-socket ipsec policies (:mod:`.sockpol`) cover a socket's packets whatever
their destination, which no route can name.  For each such socket a third kind of
rule sends its packets into the TUN by their source: at priority P + 2,
``from ADDR ipproto PROTO sport PORT lookup S``, where table S (default T + 1)
holds one default route per family into the TUN (:class:`SocketRoute`).

With only the first rule, a marked packet for which main has no route would fall
through to T and into the TUN; the ``not`` on the second makes the bypass hold
whatever main contains.  Table T before main is what makes a policy win over a more
specific connected route (the peer's /32 in T beats the veth's /24 in main).

Routes are reference-counted: two policies that need the same route share it, and
the route goes when the last one does (:meth:`Routing.add_route`,
:meth:`Routing.remove_route`).  :meth:`Routing.close` removes every route, both rules
and the TUN link; :meth:`Routing.setup` first removes what a previous run killed by
SIGKILL may have left (rules with our priorities, routes in T), so a restart starts
clean.  The TUN itself is non-persistent and goes with its descriptor.

Everything is done in the network namespace the object was created in (pyroute2's
socket keeps it).  pyroute2 is used through its public ``IPRoute`` API only; the
per-interface IPv6 ``addr_gen_mode`` and IPv4 ``rp_filter`` are sysctl files, written
under ``/proc/sys/net`` of the current namespace.  Every failure is raised as
:class:`NetlinkFailure`, an OSError carrying the kernel's errno and what was asked.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pfkeyd.record import record

__all__ = [
    "DEFAULT_FWMARK",
    "DEFAULT_RULE_PRIORITY",
    "DEFAULT_TABLE",
    "SO_MARK",
    "NetlinkFailure",
    "Route",
    "Routing",
    "SocketRoute",
    "RoutingConfig",
    "transport_route",
    "tunnel_route",
]

SO_MARK = getattr(socket, "SO_MARK", 36)
DEFAULT_TABLE = 5050
DEFAULT_FWMARK = 0x5050
DEFAULT_RULE_PRIORITY = 5050
MAIN_TABLE = 254
FIB_RULE_INVERT = 0x2  # linux/fib_rules.h: the rule matches when its selector does not
ADDR_GEN_MODE_NONE = 1  # no link-local address: no router solicitations, no MLD reports
_FAMILIES = (socket.AF_INET, socket.AF_INET6)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class NetlinkFailure(OSError):
    """A netlink request the kernel refused; ``errno`` is its answer."""


@contextmanager
def _asking(what: str) -> Iterator[None]:
    try:
        yield
    except NetlinkError as e:
        raise NetlinkFailure(e.code, f"{what}: {e.args[1] if len(e.args) > 1 else errno.errorcode.get(e.code)}") from e


@record
class Route:
    """A route into the TUN: ``network`` (the remote selector or the peer's host
    address) and the preferred source address for local sockets, if any."""

    network: Network
    src: Address | None = None

    def __post_init__(self) -> None:
        if self.src is not None and self.src.version != self.network.version:
            raise ValueError(f"route {self.network} with a source of the other family ({self.src})")


@record
class SocketRoute:
    """The packets of one socket with an outbound ipsec policy, routed into the TUN
    by their source: IP version, protocol, local port, and the bound local address
    (None: any)."""

    version: int
    proto: int
    port: int
    address: Address | None = None


def tunnel_route(remote: str | Network, local: str | Address | None = None) -> Route:
    """Tunnel mode: the remote selector into the TUN, sourced from ``local`` if given."""
    net = ipaddress.ip_network(remote, strict=True) if isinstance(remote, str) else remote
    src = ipaddress.ip_address(local) if isinstance(local, str) else local
    return Route(net, src)


def transport_route(peer: str | Address) -> Route:
    """Transport mode: the peer's host route into the TUN."""
    addr = ipaddress.ip_address(peer) if isinstance(peer, str) else peer
    return Route(ipaddress.ip_network(addr))


@record(kw_only=True)
class RoutingConfig:
    """What :class:`Routing` installs: the TUN's name and MTU, its addresses, the
    table for the routes into it, the mark of the daemon's sockets and the rules'
    first priority (the second rule takes the next one)."""

    ifname: str = "ipsec0"
    mtu: int = 1400
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    table: int = DEFAULT_TABLE
    fwmark: int = DEFAULT_FWMARK
    priority: int = DEFAULT_RULE_PRIORITY
    #: the table of the default routes into the TUN that socket rules use (0: table + 1)
    socket_table: int = 0

    @property
    def sockets(self) -> int:
        return self.socket_table or self.table + 1

    def __post_init__(self) -> None:
        if not 68 <= self.mtu <= 65535:
            raise ValueError(f"TUN MTU {self.mtu} out of range 68..65535")
        if not 1 <= self.table < 2**32 or self.table in (0, 253, 254, 255):
            raise ValueError(f"routing table {self.table} is reserved or out of range")
        if not 1 <= self.fwmark < 2**32:
            raise ValueError(f"fwmark {self.fwmark:#x} out of range 1..0xffffffff")
        if not 1 <= self.priority < 32764:
            raise ValueError(f"rule priority {self.priority} out of range 1..32763")
        if not 1 <= self.sockets < 2**32 or self.sockets in (0, 253, 254, 255, self.table):
            raise ValueError(f"socket routing table {self.sockets} is reserved, out of range or the table itself")


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


class Routing:
    """The data plane's netlink state in one namespace; see the module doc.

    Not thread-safe; synchronous (netlink answers in microseconds, and policy changes
    are rare next to packets).  Use as a context manager or call :meth:`close`.
    """

    def __init__(self, config: RoutingConfig, *, ipr: Any = None) -> None:
        self.config = config
        self._ipr: Any = ipr if ipr is not None else IPRoute()
        self._routes: dict[Route, int] = {}
        self._sockets: set[SocketRoute] = set()
        self._index: int | None = None

    # -- the TUN link ----------------------------------------------------------
    @property
    def index(self) -> int:
        if self._index is None:
            raise RuntimeError("Routing.setup() has not run")
        return self._index

    def setup(self) -> None:
        """Configure the (already opened) TUN: no IPv6 autoconfiguration, rp_filter
        off, MTU, addresses, up; clean leftovers of an earlier run; install the rules."""
        cfg = self.config
        with _asking(f"looking up {cfg.ifname}"):
            found = self._ipr.link_lookup(ifname=cfg.ifname)
        if not found:
            raise NetlinkFailure(errno.ENODEV, f"no interface {cfg.ifname} (open the TUN first)")
        self._index = found[0]
        # Before the link goes up: with no link-local address the kernel sends no
        # router solicitations or MLD reports into the TUN, yet IPv6 routes through it
        # stay possible (disable_ipv6 would refuse them).
        _write_sysctl(f"/proc/sys/net/ipv6/conf/{cfg.ifname}/addr_gen_mode", str(ADDR_GEN_MODE_NONE))
        # Decrypted packets written to the TUN come from addresses routed elsewhere
        # when selectors and routes differ; strict reverse-path filtering would drop them.
        _write_sysctl(f"/proc/sys/net/ipv4/conf/{cfg.ifname}/rp_filter", "0")
        with _asking(f"setting {cfg.ifname} mtu {cfg.mtu}"):
            self._ipr.link("set", index=self._index, mtu=cfg.mtu)
        for iface in cfg.addresses:
            with _asking(f"adding address {iface} to {cfg.ifname}"):
                self._ipr.addr(
                    "add",
                    index=self._index,
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                    family=socket.AF_INET if iface.version == 4 else socket.AF_INET6,
                )
        with _asking(f"setting {cfg.ifname} up"):
            self._ipr.link("set", index=self._index, state="up")
        self._remove_rules(strict=False)
        self._remove_socket_rules()
        self._flush_table(cfg.table)
        self._flush_table(cfg.sockets)
        self._install_rules()
        for family in _FAMILIES:
            with _asking(f"adding the default route into {cfg.ifname} to table {cfg.sockets}"):
                self._ipr.route("add", family=family, dst_len=0, table=cfg.sockets, oif=self._index)

    # -- rules -----------------------------------------------------------------
    def _rule_args(self, family: int) -> list[dict[str, Any]]:
        cfg = self.config
        mark = {"fwmark": cfg.fwmark, "fwmask": 0xFFFFFFFF, "family": family}
        return [
            {"table": MAIN_TABLE, "priority": cfg.priority, **mark},
            {"table": cfg.table, "priority": cfg.priority + 1, "flags": FIB_RULE_INVERT, **mark},
        ]

    def _install_rules(self) -> None:
        for family in _FAMILIES:
            for args in self._rule_args(family):
                with _asking(f"adding rule {args}"):
                    self._ipr.rule("add", **args)

    def _remove_rules(self, *, strict: bool) -> None:
        for family in _FAMILIES:
            for args in self._rule_args(family):
                try:
                    self._ipr.rule("del", **args)
                except NetlinkError as e:
                    if strict and e.code != errno.ENOENT:
                        raise NetlinkFailure(e.code, f"removing rule {args}") from e

    def _remove_socket_rules(self) -> None:
        """Remove every rule at the socket rules' priority (a killed run's leftovers)."""
        prio = self.config.priority + 2
        for family in _FAMILIES:
            with _asking("listing rules"):
                stale = [m for m in self._ipr.get_rules(family=family) if m.get("priority") == prio]
            for msg in stale:
                args = {"family": family, "priority": prio, "table": msg.get("table")}
                for name in ("ip_proto", "FRA_SPORT_RANGE", "src"):
                    if msg.get(name) is not None:
                        args[name] = msg.get(name)
                if msg.get("src") is not None:
                    args["src_len"] = msg["src_len"]
                try:
                    self._ipr.rule("del", **args)
                except NetlinkError as e:
                    if e.code != errno.ENOENT:
                        raise NetlinkFailure(e.code, f"removing a stale socket rule {args}") from e

    def _flush_table(self, table: int) -> None:
        for family in _FAMILIES:
            with _asking(f"listing table {table}"):
                stale = list(self._ipr.route("dump", family=family, table=table))
            for msg in stale:
                if msg.get("table") != table:
                    continue
                dst = msg.get("dst") or ("0.0.0.0" if family == socket.AF_INET else "::")
                try:
                    self._ipr.route("del", family=family, table=table, dst=dst, dst_len=msg["dst_len"])
                except NetlinkError as e:
                    if e.code not in (errno.ESRCH, errno.ENOENT):
                        raise NetlinkFailure(e.code, f"removing a stale route from table {table}") from e

    # -- socket rules ------------------------------------------------------------
    def _socket_rule_args(self, sr: SocketRoute) -> dict[str, Any]:
        args: dict[str, Any] = {
            "family": socket.AF_INET if sr.version == 4 else socket.AF_INET6,
            "priority": self.config.priority + 2,
            "table": self.config.sockets,
            "ip_proto": sr.proto,
        }
        if sr.port:
            args["FRA_SPORT_RANGE"] = f"{sr.port}:{sr.port}"
        if sr.address is not None:
            args["src"] = str(sr.address)
            args["src_len"] = sr.address.max_prefixlen
        return args

    def add_socket_route(self, sr: SocketRoute) -> None:
        """Route the packets of socket ``sr`` into the TUN (idempotent)."""
        if sr in self._sockets:
            return
        with _asking(f"adding the socket rule {self._socket_rule_args(sr)}"):
            self._ipr.rule("add", **self._socket_rule_args(sr))
        self._sockets.add(sr)

    def remove_socket_route(self, sr: SocketRoute) -> None:
        """Stop routing socket ``sr``'s packets into the TUN (idempotent)."""
        if sr not in self._sockets:
            return
        self._sockets.discard(sr)
        try:
            self._ipr.rule("del", **self._socket_rule_args(sr))
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise NetlinkFailure(e.code, f"removing the socket rule {self._socket_rule_args(sr)}") from e

    def socket_routes(self) -> set[SocketRoute]:
        return set(self._sockets)

    # -- routes ----------------------------------------------------------------
    def _route_args(self, route: Route) -> dict[str, Any]:
        args: dict[str, Any] = {
            "family": socket.AF_INET if route.network.version == 4 else socket.AF_INET6,
            "dst": str(route.network.network_address),
            "dst_len": route.network.prefixlen,
            "table": self.config.table,
            "oif": self.index,
        }
        if route.src is not None:
            args["prefsrc"] = str(route.src)
        return args

    def add_route(self, route: Route) -> bool:
        """Route ``route`` into the TUN; True if this call installed it, False if it
        was there already (another policy's: the count goes up)."""
        count = self._routes.get(route, 0)
        if count == 0:
            with _asking(f"adding route {route.network} dev {self.config.ifname} table {self.config.table}"):
                self._ipr.route("add", **self._route_args(route))
        self._routes[route] = count + 1
        return count == 0

    def remove_route(self, route: Route) -> bool:
        """Drop one reference to ``route``; True if the route was removed from the kernel.
        KeyError for a route this object never added."""
        count = self._routes[route]
        if count > 1:
            self._routes[route] = count - 1
            return False
        try:
            self._ipr.route("del", **self._route_args(route))
        except NetlinkError as e:
            # ESRCH: already gone (the TUN was closed, or someone removed it by hand).
            if e.code != errno.ESRCH:
                raise NetlinkFailure(e.code, f"removing route {route.network}") from e
        del self._routes[route]
        return True

    def routes(self) -> dict[Route, int]:
        """The routes this object holds, with their reference counts."""
        return dict(self._routes)

    # -- the end ---------------------------------------------------------------
    def close(self) -> None:
        """Remove every route, the rules and the TUN link (its routes in the socket
        table go with it); close the netlink socket.
        Idempotent.  Routes the kernel already dropped (closed TUN) are not an error."""
        if self._ipr is None:
            return
        try:
            for route in list(self._routes):
                self._routes[route] = 1
                self.remove_route(route)
            for sr in list(self._sockets):
                self.remove_socket_route(sr)
            self._remove_rules(strict=True)
            if self._index is not None:
                try:
                    self._ipr.link("del", index=self._index)
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        raise NetlinkFailure(e.code, f"removing {self.config.ifname}") from e
                self._index = None
        finally:
            self._ipr.close()
            self._ipr = None

    def __enter__(self) -> Routing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
