"""Host names to socket addresses, after parsing and before building messages.

setkey resolves every host with getaddrinfo(3): the family from ``-4``/``-6``
(default: any), ``AI_NUMERICHOST`` with ``-n``, socket type SOCK_DGRAM and
protocol UDP, so that a bracketed service name is a UDP service (``[ntp]``).
The flags belong to one statement.  Numeric addresses are converted here
without a system call; a ``%scope`` names an interface (if_nametoindex) or is a
number.  What each statement may do with several addresses follows setkey:

* add, update, getspi, get, deleteall: every source with every destination
  of the same family (one message each, see setkey.build);
* delete, spdadd, spdupdate, spddelete: exactly one address each, or
  "multiple addresses";
* a NAT-T original address (``esp-udp host``, ``-natt``): the first address.

Resolution problems are SetkeyValueErrors placed on the host; all are raised
together.  The lookups are injected, so tests run without DNS.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pfkeyd.record import record
from pfkeyd.wire.sockaddr import SockAddr
from setkey.commands import (
    AddrFlags,
    Command,
    Delete,
    DeleteAll,
    Endpoints,
    Host,
    Request,
    SaStatement,
    SpdStatement,
)
from setkey.errors import SetkeyError, SetkeyErrors, SetkeyValueError, Source
from setkey.numeric import ip_from_text
from setkey.parser import locate

__all__ = ["Resolved", "Resolver", "resolve"]

GetAddrInfo = Callable[..., Sequence[tuple[Any, ...]]]


@record
class Resolved:
    """A command with its hosts as socket addresses.

    ``src``/``dst`` are the addresses of the statement's two ends (ports set);
    ``natt_oa`` is the esp-udp original address or -natt's OAI, ``natt_oar``
    -natt's OAR; ``tunnels`` has one entry per policy request: its end points,
    or None.
    """

    command: Command
    src: tuple[SockAddr, ...] = ()
    dst: tuple[SockAddr, ...] = ()
    natt_oa: SockAddr | None = None
    natt_oar: SockAddr | None = None
    tunnels: tuple[tuple[SockAddr, SockAddr] | None, ...] = ()


class _Problem(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class Resolver:
    """getaddrinfo(3) as setkey calls it, with a cache for one script."""

    def __init__(
        self,
        getaddrinfo: GetAddrInfo = socket.getaddrinfo,
        if_nametoindex: Callable[[str], int] = socket.if_nametoindex,
        getservbyname: Callable[[str, str], int] = socket.getservbyname,
    ) -> None:
        self._getaddrinfo = getaddrinfo
        self._if_nametoindex = if_nametoindex
        self._getservbyname = getservbyname
        # (name, port, family, numeric): the flags by their fields, which hash
        # faster than the dataclass (every host of a script is looked up here).
        self._cache: dict[tuple[str, int | str, int, bool], tuple[SockAddr, ...]] = {}

    def scope(self, zone: str, name: str) -> int:
        if zone.isdigit():
            return int(zone)
        try:
            return self._if_nametoindex(zone)
        except OSError:
            raise _Problem(f'unknown interface "{zone}" in "{name}"', name) from None

    def port(self, port: int | str, name: str) -> int:
        if isinstance(port, int):
            return port
        try:
            return self._getservbyname(port, "udp")
        except OSError:
            raise _Problem(f'unknown UDP service "{port}"', port) from None

    def numeric(self, name: str, port: int = 0) -> SockAddr | None:
        """``name`` as an address when it is a numeric one, else None."""
        text, _, zone = name.partition("%")
        ip = ip_from_text(text)
        if ip is None:
            return None
        if not zone:
            return SockAddr(ip, port)
        if isinstance(ip, IPv4Address):
            raise _Problem(f'"{name}": only IPv6 addresses have a scope', name)
        return SockAddr(ip, port, 0, self.scope(zone, name))

    def addresses(self, host: Host, flags: AddrFlags) -> tuple[SockAddr, ...]:
        key = (host.name, host.port, flags.family, flags.numeric)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._lookup(host, flags)
        return found

    def _lookup(self, host: Host, flags: AddrFlags) -> tuple[SockAddr, ...]:
        port = self.port(host.port, host.name)
        sa = self.numeric(host.name, port)
        if sa is not None:
            if flags.family and sa.version != flags.family:
                raise _Problem(f'"{host.name}" is not an IPv{flags.family} address (-{flags.family})', host.name)
            return (sa,)
        if flags.numeric:
            raise _Problem(f'"{host.name}" is not a numeric address (-n)', host.name)
        family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(flags.family, socket.AF_UNSPEC)
        try:
            infos = self._getaddrinfo(host.name, None, family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        except (socket.gaierror, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
            raise _Problem(f'cannot resolve "{host.name}": {reason}', host.name) from None
        out: list[SockAddr] = []
        for info in infos:
            fam, sockaddr = info[0], info[4]
            if fam == socket.AF_INET:
                sa = SockAddr(IPv4Address(sockaddr[0]), port)
            elif fam == socket.AF_INET6:
                sa = SockAddr(IPv6Address(sockaddr[0].partition("%")[0]), port, sockaddr[2], sockaddr[3])
            else:
                continue
            if sa not in out:
                out.append(sa)
        if not out:
            raise _Problem(f'cannot resolve "{host.name}": no IPv4 or IPv6 address', host.name)
        return tuple(out)

    def one(self, host: Host, flags: AddrFlags, what: str) -> SockAddr:
        return self.only(host, flags, what)[0]

    def only(self, host: Host, flags: AddrFlags, what: str) -> tuple[SockAddr, ...]:
        """The one address of ``host``, in the tuple :meth:`addresses` gives
        (statements with the same host share it)."""
        found = self.addresses(host, flags)
        if len(found) > 1:
            raise _Problem(f'multiple addresses for "{host.name}": {what} needs exactly one', host.name)
        return found

    def tunnel(self, ends: Endpoints) -> tuple[SockAddr, SockAddr]:
        return self._endpoint(ends.src, ends.src_port), self._endpoint(ends.dst, ends.dst_port)

    def tunnels(self, requests: Iterable[Request]) -> tuple[tuple[SockAddr, SockAddr] | None, ...]:
        """The tunnel end points of each request of a policy, None where none are written."""
        return tuple([None if q.endpoints is None else self.tunnel(q.endpoints) for q in requests])

    def _endpoint(self, ip: IPv4Address | IPv6Address, port: int) -> SockAddr:
        if isinstance(ip, IPv6Address) and ip.scope_id:
            bare = IPv6Address(str(ip).partition("%")[0])
            return SockAddr(bare, port, 0, self.scope(ip.scope_id, str(ip)))
        return SockAddr(ip, port)


def _pairs_exist(src: Sequence[SockAddr], dst: Sequence[SockAddr]) -> bool:
    if len(src) == 1 and len(dst) == 1:  # the usual case, without a generator
        return src[0].version == dst[0].version
    return any(s.version == d.version for s in src for d in dst)


def _resolve_one(cmd: Command, r: Resolver) -> Resolved:
    if isinstance(cmd, SaStatement):
        return _resolve_sa(cmd, r)
    if isinstance(cmd, DeleteAll):
        src, dst = r.addresses(cmd.src, cmd.flags), r.addresses(cmd.dst, cmd.flags)
        _same_family(cmd, src, dst)
        return Resolved(cmd, src, dst)
    if isinstance(cmd, SpdStatement):
        return _resolve_spd(cmd, r)
    policy = getattr(cmd, "policy", None)
    if policy is not None:
        return Resolved(cmd, tunnels=r.tunnels(policy.requests))
    return Resolved(cmd)


def _same_family(cmd: SaStatement | DeleteAll, src: tuple[SockAddr, ...], dst: tuple[SockAddr, ...]) -> None:
    if not _pairs_exist(src, dst):
        raise _Problem(f'"{cmd.src.name}" and "{cmd.dst.name}" have no addresses of the same family', cmd.src.name)


def _resolve_sa(cmd: Command, r: Resolver) -> Resolved:
    assert isinstance(cmd, SaStatement)
    flags = cmd.flags
    if isinstance(cmd, Delete):
        src: tuple[SockAddr, ...] = r.only(cmd.src, flags, "delete")
        dst: tuple[SockAddr, ...] = r.only(cmd.dst, flags, "delete")
    else:
        src, dst = r.addresses(cmd.src, flags), r.addresses(cmd.dst, flags)
    _same_family(cmd, src, dst)
    oa = oar = None
    if cmd.natt_oa is not None:
        oa = r.addresses(cmd.natt_oa, flags)[0]
    natt = cmd.options.natt
    if natt is not None:
        oa = r.addresses(natt.oai, flags)[0]
        oar = r.addresses(natt.oar, flags)[0]
    return Resolved(cmd, src, dst, oa, oar)


def _resolve_spd(cmd: Command, r: Resolver) -> Resolved:
    assert isinstance(cmd, SpdStatement)
    src, dst = r.only(cmd.src, cmd.flags, cmd.keyword), r.only(cmd.dst, cmd.flags, cmd.keyword)
    s, d = src[0], dst[0]
    if s.version != d.version:
        raise _Problem(f'"{cmd.src.name}" and "{cmd.dst.name}" are of different address families', cmd.src.name)
    for host, sa in ((cmd.src, s), (cmd.dst, d)):
        if host.prefix is not None and host.prefix > sa.max_prefix:
            raise _Problem(
                f"prefix length /{host.prefix} is too long for the IPv{sa.version} address "
                f'"{host.name}" (at most {sa.max_prefix})',
                str(host.prefix),
            )
    if cmd.upper_ports is not None:
        # icmp type,code and gre keys travel in the selector's port fields
        src = (SockAddr(s.ip, cmd.upper_ports[0], s.flowinfo, s.scope_id),)
        dst = (SockAddr(d.ip, cmd.upper_ports[1], d.flowinfo, d.scope_id),)
    return Resolved(cmd, src, dst, tunnels=r.tunnels(cmd.policy.requests))


def resolve(
    commands: Iterable[Command],
    source: Source | None = None,
    *,
    resolver: Resolver | None = None,
) -> list[Resolved]:
    """Resolve the hosts of ``commands``.

    Raises :class:`~setkey.errors.SetkeyErrors` with every host that does not
    resolve as the statement needs it; ``source`` (the script) places each
    error on its host.  ``resolver`` replaces the system's lookups (tests).
    """
    r = resolver or Resolver()
    out: list[Resolved] = []
    errors: list[SetkeyError] = []
    for cmd in commands:
        try:
            out.append(_resolve_one(cmd, r))
        except _Problem as exc:
            errors.append(SetkeyValueError(exc.message, cmd.line, cmd.column, hint=exc.hint))
    if errors:
        if source is not None:
            errors = source.locate(locate(source.text, e) for e in errors)
        raise SetkeyErrors(errors)
    return out
