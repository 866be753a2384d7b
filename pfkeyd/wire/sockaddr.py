"""Socket addresses inside PF_KEY extensions, decided once for both dialects.

* freebsd: BSD sockaddrs, ``u8 sa_len, u8 sa_family`` (AF_INET 2, AF_INET6 28);
* linux: ``u16 sa_family`` in host order (AF_INET 2, AF_INET6 10), no length byte.

Both carry the port, flowinfo and address in network order and the IPv6 scope id in
host order; sockaddr_in is 16 bytes and sockaddr_in6 28 bytes in both.  Addresses of
other families (only the freebsd dialect can carry their length) are kept as
:class:`RawSockAddr` so that the engine can refuse them with the kernel's errno.
"""

from __future__ import annotations

import struct
from dataclasses import field
from ipaddress import IPv4Address, IPv6Address, ip_address

from pfkeyd.errors import EncodeError
from pfkeyd.record import record
from pfkeyd.wire.dialect import DialectSpec

__all__ = [
    "SockAddr",
    "RawSockAddr",
    "AnySockAddr",
    "SOCKADDR_IN_LEN",
    "SOCKADDR_IN6_LEN",
    "encode_sockaddr",
    "decode_sockaddr",
    "BadSockAddr",
]

SOCKADDR_IN_LEN = 16
SOCKADDR_IN6_LEN = 28

_PORT_ADDR4 = struct.Struct("!H4s8x")  # after the 2-byte len/family prefix
_PORT_ADDR6 = struct.Struct("!HI16s")  # port, flowinfo, address; scope id follows
_SCOPE = struct.Struct("=I")
_LINUX_FAMILY = struct.Struct("=H")


class BadSockAddr(ValueError):
    """A sockaddr whose bytes cannot be read; the caller decides the kernel's answer."""


@record
class SockAddr:
    """sockaddr_in / sockaddr_in6: an address with its port (and IPv6 flow and scope)."""

    ip: IPv4Address | IPv6Address
    port: int = 0
    flowinfo: int = 0
    scope_id: int = 0
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str, port: int = 0) -> SockAddr:
        """``SockAddr.parse("10.0.0.1")``; a ``%N`` suffix sets a numeric IPv6 scope id."""
        scope = 0
        if "%" in text:
            text, _, zone = text.partition("%")
            scope = int(zone)
        return cls(ip_address(text), port, 0, scope)

    @property
    def version(self) -> int:
        return self.ip.version

    @property
    def max_prefix(self) -> int:
        return self.ip.max_prefixlen

    def without_port(self) -> SockAddr:
        return self if self.port == 0 else SockAddr(self.ip, 0, self.flowinfo, self.scope_id)

    def __str__(self) -> str:
        return str(self.ip) if not self.scope_id else f"{self.ip}%{self.scope_id}"

    def __hash__(self) -> int:
        # ipaddress hashes through hex(); SA and policy indexes hash addresses a lot,
        # so the hash is computed once.
        h = self._hash
        if h is None:
            h = hash((int(self.ip), self.ip.version, self.port, self.flowinfo, self.scope_id))
            object.__setattr__(self, "_hash", h)
        return h


@record
class RawSockAddr:
    """A sockaddr of a family PF_KEY does not serve: its wire family and the bytes after it."""

    family: int
    data: bytes = b""

    version = 0
    max_prefix = 0


AnySockAddr = SockAddr | RawSockAddr


def encode_sockaddr(sa: AnySockAddr, spec: DialectSpec) -> bytes:
    """The sockaddr bytes, unpadded (16 for IPv4, 28 for IPv6)."""
    if isinstance(sa, RawSockAddr):
        if spec.sockaddr_has_len:
            if 2 + len(sa.data) > 0xFF:
                msg = "sockaddr longer than 255 bytes"
                raise EncodeError(msg)
            return bytes((2 + len(sa.data), sa.family)) + sa.data
        return _LINUX_FAMILY.pack(sa.family) + sa.data
    if sa.ip.version == 4:
        prefix = bytes((SOCKADDR_IN_LEN, spec.af_inet)) if spec.sockaddr_has_len else _LINUX_FAMILY.pack(spec.af_inet)
        return prefix + _PORT_ADDR4.pack(sa.port, sa.ip.packed)
    prefix = bytes((SOCKADDR_IN6_LEN, spec.af_inet6)) if spec.sockaddr_has_len else _LINUX_FAMILY.pack(spec.af_inet6)
    return prefix + _PORT_ADDR6.pack(sa.port, sa.flowinfo, sa.ip.packed) + _SCOPE.pack(sa.scope_id)


def sockaddr_length(buf: bytes, offset: int, spec: DialectSpec) -> int:
    """How long the sockaddr at ``offset`` says it is (BSD sa_len, or by Linux family)."""
    if spec.sockaddr_has_len:
        return buf[offset]
    family = _LINUX_FAMILY.unpack_from(buf, offset)[0]
    if family == spec.af_inet:
        return SOCKADDR_IN_LEN
    if family == spec.af_inet6:
        return SOCKADDR_IN6_LEN
    msg = f"address family {family} is not supported"
    raise BadSockAddr(msg)


def decode_sockaddr(buf: bytes, offset: int, end: int, spec: DialectSpec) -> tuple[AnySockAddr, int]:
    """Decode the sockaddr at ``buf[offset:end]``; returns it and the bytes it used."""
    if end - offset < 2:
        msg = "sockaddr truncated"
        raise BadSockAddr(msg)
    if spec.sockaddr_has_len:
        salen, family = buf[offset], buf[offset + 1]
        if salen < 2 or offset + salen > end:
            msg = f"sockaddr length {salen} does not fit"
            raise BadSockAddr(msg)
        if family == spec.af_inet and salen == SOCKADDR_IN_LEN:
            port, packed = _PORT_ADDR4.unpack_from(buf, offset + 2)
            return SockAddr(IPv4Address(packed), port), salen
        if family == spec.af_inet6 and salen == SOCKADDR_IN6_LEN:
            port, flow, packed = _PORT_ADDR6.unpack_from(buf, offset + 2)
            (scope,) = _SCOPE.unpack_from(buf, offset + 24)
            return SockAddr(IPv6Address(packed), port, flow, scope), salen
        return RawSockAddr(family, bytes(buf[offset + 2 : offset + salen])), salen
    size = sockaddr_length(buf, offset, spec)
    if offset + size > end:
        msg = "sockaddr truncated"
        raise BadSockAddr(msg)
    if size == SOCKADDR_IN_LEN:
        port, packed = _PORT_ADDR4.unpack_from(buf, offset + 2)
        return SockAddr(IPv4Address(packed), port), size
    port, flow, packed = _PORT_ADDR6.unpack_from(buf, offset + 2)
    (scope,) = _SCOPE.unpack_from(buf, offset + 24)
    return SockAddr(IPv6Address(packed), port, flow, scope), size
