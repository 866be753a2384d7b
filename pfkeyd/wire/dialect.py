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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
    ),
}


def spec(dialect: Dialect | str) -> DialectSpec:
    """The :class:`DialectSpec` of a dialect given as a value or by name."""
    return Dialect(dialect).spec
