"""The two wire dialects and every number that differs between them.

A dialect is a value passed to encode/decode; nothing else in the project branches on
it for logic that is not about bytes.  Each :class:`Codebook` maps the canonical
numbers of :mod:`pfkeyd.wire.constants` to wire numbers and back:

* a canonical name the dialect defines becomes its wire number;
* a wire number the dialect does not define decodes to ``UNKNOWN | n`` and encodes
  back to ``n``, so unknown values survive a round trip and reach the engine, which
  refuses them as the kernel would;
* a canonical name the dialect cannot carry (FWD in freebsd, CCM in freebsd,
  ChaCha20-Poly1305 in linux, ...) raises :class:`~pfkeyd.errors.EncodeError`.
"""

from __future__ import annotations

import enum
import errno as _errno
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pfkeyd.errors import EncodeError
from pfkeyd.wire.constants import (
    LINUX_ONLY,
    UNKNOWN,
    AuthAlg,
    Direction,
    EncAlg,
    ExtType,
    Mode,
    MsgType,
    SaType,
)

__all__ = ["Dialect", "Codebook", "DialectSpec", "spec"]


class Dialect(enum.Enum):
    """Which kernel's PF_KEY a socket speaks."""

    FREEBSD = "freebsd"
    LINUX = "linux"

    # Members are singletons compared by identity; Enum's own __hash__ hashes the
    # name in Python code, and dialects key dicts on every message's path.
    __hash__ = object.__hash__

    @property
    def spec(self) -> DialectSpec:
        return _SPECS[self]


@dataclass(frozen=True, slots=True)
class Codebook:
    """A canonical <-> wire number table for one kind of value in one dialect."""

    what: str
    dialect: str
    to_wire: Mapping[int, int]
    width: int  # the largest wire value the field holds
    from_wire: Mapping[int, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "from_wire", {w: c for c, w in self.to_wire.items()})

    def decode(self, wire: int) -> int:
        return self.from_wire.get(wire, UNKNOWN | wire)

    def encode(self, canonical: int) -> int:
        wire = self.to_wire.get(canonical)
        if wire is not None:
            return wire
        raw = canonical & ~UNKNOWN
        if canonical & UNKNOWN and raw <= self.width and raw not in self.from_wire:
            return raw
        msg = f"{self.what} {_name(canonical)} cannot be carried by the {self.dialect} dialect"
        raise EncodeError(msg)

    def __contains__(self, canonical: object) -> bool:
        return canonical in self.to_wire


def _name(value: int) -> str:
    for enum_type in (Direction, Mode, AuthAlg, EncAlg, ExtType):
        if isinstance(value, enum_type):
            return f"{value.name} ({int(value) & 0xFF})"
    if value & UNKNOWN:
        return f"{value & ~UNKNOWN} (unknown)"
    return str(value)


def _identity(values: Iterable[int], *, skip_linux_only: bool = True) -> dict[int, int]:
    # Keys stay enum members so that decoding yields named values.
    return {v: int(v) for v in values if not (skip_linux_only and v & LINUX_ONLY)}


def _linux(values: Iterable[int]) -> dict[int, int]:
    """Linux numbering: shared values as they are, LINUX_ONLY | n as n."""
    return {v: int(v) & 0xFF for v in values}


@dataclass(frozen=True, slots=True)
class DialectSpec:
    """The numbers and layouts of one dialect (reference §4, §5, §6.1)."""

    dialect: Dialect
    msg_max: int  # SADB_MAX
    satypes: frozenset[int]  # satypes the dialect defines
    ext: Codebook
    auth: Codebook
    enc: Codebook
    mode: Codebook
    direction: Codebook
    af_inet: int
    af_inet6: int
    sockaddr_has_len: bool  # BSD sockaddrs start with sa_len
    ipsecrequest_size: int  # fixed part of sadb_x_ipsecrequest
    reqid_max: int  # width of the ipsecrequest reqid
    policy_has_scope: bool  # byte 7 of sadb_x_policy is a scope (FreeBSD) or reserved
    errnos: Mapping[str, int]  # errno name -> the dialect's number
    _errno_out: dict[int, int] = field(init=False, repr=False, compare=False)
    _errno_in: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A permutation of 0..255: the named errnos map to the dialect's numbers and
        # the rest pair up in order, so that every byte round-trips.
        known = {getattr(_errno, n): v for n, v in self.errnos.items() if hasattr(_errno, n)}
        rest_in = sorted(set(range(256)) - set(known))
        rest_out = sorted(set(range(256)) - set(known.values()))
        out = {**known, **dict(zip(rest_in, rest_out, strict=True))}
        object.__setattr__(self, "_errno_out", out)
        object.__setattr__(self, "_errno_in", {w: h for h, w in out.items()})

    def errno_to_wire(self, err: int) -> int:
        """The dialect's number for a host errno (sadb_msg_errno)."""
        return self._errno_out.get(err, err)

    def errno_from_wire(self, err: int) -> int:
        """The host errno for the dialect's number."""
        return self._errno_in.get(err, err)

    @property
    def name(self) -> str:
        return self.dialect.value


_FREEBSD_EXT = [e for e in ExtType if not e & LINUX_ONLY and e != ExtType.RESERVED]
_LINUX_EXT = [e for e in ExtType if e <= ExtType.X_NAT_T_OA and e != ExtType.RESERVED] + [
    ExtType.X_SEC_CTX,
    ExtType.X_KMADDRESS,
    ExtType.X_FILTER,
]

_FREEBSD_AUTH = [a for a in AuthAlg if not a & LINUX_ONLY]
_LINUX_AUTH = [
    AuthAlg.NONE,
    AuthAlg.MD5HMAC,
    AuthAlg.SHA1HMAC,
    AuthAlg.X_SHA2_256,
    AuthAlg.X_SHA2_384,
    AuthAlg.X_SHA2_512,
    AuthAlg.X_RIPEMD160HMAC,
    AuthAlg.X_AES_XCBC_MAC,
    AuthAlg.X_SM3_256HMAC,
    AuthAlg.X_NULL,
]
_FREEBSD_ENC = [e for e in EncAlg if not e & LINUX_ONLY]
_LINUX_ENC = [e for e in EncAlg if e != EncAlg.X_CHACHA20POLY1305]

#: errno numbers of each system (FreeBSD sys/errno.h; Linux asm-generic/errno*.h), for
#: the errnos a PF_KEY exchange can carry.  sadb_msg_errno holds the numbers of the
#: kernel a client was built for; the engine works with the host's (Python's errno).
_FREEBSD_ERRNOS: dict[str, int] = {
    "EPERM": 1,
    "ENOENT": 2,
    "ESRCH": 3,
    "EINTR": 4,
    "EIO": 5,
    "ENXIO": 6,
    "E2BIG": 7,
    "EBADF": 9,
    "ENOMEM": 12,
    "EACCES": 13,
    "EFAULT": 14,
    "EBUSY": 16,
    "EEXIST": 17,
    "ENODEV": 19,
    "EINVAL": 22,
    "ENFILE": 23,
    "EMFILE": 24,
    "ENOSPC": 28,
    "EPIPE": 32,
    "ERANGE": 34,
    "EAGAIN": 35,
    "EINPROGRESS": 36,
    "EALREADY": 37,
    "ENOTSOCK": 38,
    "EMSGSIZE": 40,
    "EPROTOTYPE": 41,
    "ENOPROTOOPT": 42,
    "EPROTONOSUPPORT": 43,
    "ESOCKTNOSUPPORT": 44,
    "EOPNOTSUPP": 45,
    "EPFNOSUPPORT": 46,
    "EAFNOSUPPORT": 47,
    "EADDRINUSE": 48,
    "EADDRNOTAVAIL": 49,
    "ENETDOWN": 50,
    "ENETUNREACH": 51,
    "ECONNABORTED": 53,
    "ECONNRESET": 54,
    "ENOBUFS": 55,
    "EISCONN": 56,
    "ENOTCONN": 57,
    "ETIMEDOUT": 60,
    "ECONNREFUSED": 61,
    "ELOOP": 62,
    "ENAMETOOLONG": 63,
    "EHOSTUNREACH": 65,
    "ENOTEMPTY": 66,
    "ENOLCK": 77,
    "ENOSYS": 78,
    "EOVERFLOW": 84,
    "ECANCELED": 85,
    "EBADMSG": 89,
    "EPROTO": 92,
}
_LINUX_ERRNOS: dict[str, int] = {
    "EPERM": 1,
    "ENOENT": 2,
    "ESRCH": 3,
    "EINTR": 4,
    "EIO": 5,
    "ENXIO": 6,
    "E2BIG": 7,
    "EBADF": 9,
    "EAGAIN": 11,
    "ENOMEM": 12,
    "EACCES": 13,
    "EFAULT": 14,
    "EBUSY": 16,
    "EEXIST": 17,
    "ENODEV": 19,
    "EINVAL": 22,
    "ENFILE": 23,
    "EMFILE": 24,
    "ENOSPC": 28,
    "EPIPE": 32,
    "ERANGE": 34,
    "ENAMETOOLONG": 36,
    "ENOLCK": 37,
    "ENOSYS": 38,
    "ENOTEMPTY": 39,
    "ELOOP": 40,
    "EPROTO": 71,
    "EBADMSG": 74,
    "EOVERFLOW": 75,
    "ENOTSOCK": 88,
    "EMSGSIZE": 90,
    "EPROTOTYPE": 91,
    "ENOPROTOOPT": 92,
    "EPROTONOSUPPORT": 93,
    "ESOCKTNOSUPPORT": 94,
    "EOPNOTSUPP": 95,
    "EPFNOSUPPORT": 96,
    "EAFNOSUPPORT": 97,
    "EADDRINUSE": 98,
    "EADDRNOTAVAIL": 99,
    "ENETDOWN": 100,
    "ENETUNREACH": 101,
    "ECONNABORTED": 103,
    "ECONNRESET": 104,
    "ENOBUFS": 105,
    "EISCONN": 106,
    "ENOTCONN": 107,
    "ETIMEDOUT": 110,
    "ECONNREFUSED": 111,
    "EHOSTUNREACH": 113,
    "EALREADY": 114,
    "EINPROGRESS": 115,
    "ECANCELED": 125,
}

_SPECS: dict[Dialect, DialectSpec] = {
    Dialect.FREEBSD: DialectSpec(
        dialect=Dialect.FREEBSD,
        msg_max=MsgType.X_SPDDELETE2,
        satypes=frozenset(int(s) for s in SaType),
        ext=Codebook("extension type", "freebsd", _identity(_FREEBSD_EXT), 0xFFFF),
        auth=Codebook("authentication algorithm", "freebsd", _identity(_FREEBSD_AUTH), 0xFF),
        enc=Codebook("encryption algorithm", "freebsd", _identity(_FREEBSD_ENC), 0xFF),
        mode=Codebook("mode", "freebsd", _identity([Mode.ANY, Mode.TRANSPORT, Mode.TUNNEL, Mode.TCPMD5]), 0xFF),
        direction=Codebook(
            "direction", "freebsd", _identity([Direction.ANY, Direction.INBOUND, Direction.OUTBOUND]), 0xFF
        ),
        af_inet=2,
        af_inet6=28,
        sockaddr_has_len=True,
        ipsecrequest_size=8,
        reqid_max=0xFFFF,
        policy_has_scope=True,
        errnos=MappingProxyType(_FREEBSD_ERRNOS),
    ),
    Dialect.LINUX: DialectSpec(
        dialect=Dialect.LINUX,
        msg_max=MsgType.X_MIGRATE,
        satypes=frozenset(int(s) for s in SaType if s != SaType.X_TCPSIGNATURE),
        ext=Codebook("extension type", "linux", _linux(_LINUX_EXT), 0xFFFF),
        auth=Codebook("authentication algorithm", "linux", _linux(_LINUX_AUTH), 0xFF),
        enc=Codebook("encryption algorithm", "linux", _linux(_LINUX_ENC), 0xFF),
        mode=Codebook("mode", "linux", _linux([Mode.ANY, Mode.TRANSPORT, Mode.TUNNEL, Mode.BEET, Mode.IPTFS]), 0xFF),
        direction=Codebook("direction", "linux", _linux(list(Direction)), 0xFF),
        af_inet=2,
        af_inet6=10,
        sockaddr_has_len=False,
        ipsecrequest_size=16,
        reqid_max=0xFFFFFFFF,
        policy_has_scope=False,
        errnos=MappingProxyType(_LINUX_ERRNOS),
    ),
}


def spec(dialect: Dialect | str) -> DialectSpec:
    """The :class:`DialectSpec` of a dialect given as a value or by name."""
    return Dialect(dialect).spec
