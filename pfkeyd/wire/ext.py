"""One frozen dataclass per PF_KEY extension, each with a symmetric encode/decode.

Every class names its C struct and the RFC 2367 section (or the KAME/Linux header)
that defines it.  Field names drop the ``sadb_<ext>_`` prefix.  Reserved fields are
written as zero and ignored when read, as both kernels do.  Lengths are computed
here and nowhere else.

Byte order: host order for fixed fields; network order for the SPI, the ports
inside sockaddrs and the NAT-T port (reference §0).  Algorithm ids, modes and
directions are translated between the dialect's numbers and the canonical ones of
:mod:`pfkeyd.wire.constants` by the dialect's codebooks.
"""

from __future__ import annotations

import builtins
import errno
import struct
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar

from pfkeyd.errors import EncodeError
from pfkeyd.record import record
from pfkeyd.wire.constants import UNIT, UNKNOWN, ExtType, IdentType, Mode, SaType
from pfkeyd.wire.dialect import DialectSpec
from pfkeyd.wire.sockaddr import (
    AnySockAddr,
    BadSockAddr,
    SockAddr,
    decode_sockaddr,
    encode_sockaddr,
)

__all__ = [
    "Extension",
    "Sa",
    "Lifetime",
    "Address",
    "Key",
    "Ident",
    "Sens",
    "Comb",
    "Prop",
    "Alg",
    "Supported",
    "SpiRange",
    "KmPrivate",
    "IpsecRequest",
    "Policy",
    "Sa2",
    "NatTType",
    "NatTPort",
    "NatTFrag",
    "SaReplay",
    "SecCtx",
    "KmAddress",
    "Filter",
    "UnknownExt",
    "DeferredError",
    "pad8",
    "ADDRESS_TYPES",
    "LIFETIME_TYPES",
    "KEY_TYPES",
    "DECODERS",
]

_EXT_HDR = struct.Struct("=HH")


def pad8(n: int) -> int:
    """``n`` rounded up to a whole number of 8-byte units (PFKEY_ALIGN8)."""
    return (n + 7) & ~7


def _ext(exttype: int, body: bytes, spec: DialectSpec) -> bytes:
    """Prefix ``body`` (already padded) with the generic extension header."""
    total = 4 + len(body)
    if total % UNIT:
        body += bytes(UNIT - total % UNIT)
        total = 4 + len(body)
    if total // UNIT > 0xFFFF:
        msg = f"extension {ExtType(exttype).name} is longer than 65535 units"
        raise EncodeError(msg)
    return _EXT_HDR.pack(total // UNIT, spec.ext.encode(exttype)) + body


def _check_range(name: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        msg = f"{name} {value} does not fit in {bits} bits"
        raise EncodeError(msg)


class DeferredError(ValueError):
    """A fault the kernel finds only in the message handler (an error reply, not a
    failed send); the message decoder reports it after the generic checks."""

    def __init__(self, message: str, err: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = err


# --------------------------------------------------------------------------- SA


@record
class Sa:
    """struct sadb_sa (RFC 2367 §2.3.1).  ``auth``/``encrypt`` hold canonical ids
    (compression ids, unchanged, for an IPComp SA)."""

    spi: int
    replay: int = 0
    state: int = 0
    auth: int = 0
    encrypt: int = 0
    flags: int = 0

    exttype: ClassVar[ExtType] = ExtType.SA
    _S: ClassVar[struct.Struct] = struct.Struct("=HH4sBBBBI")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        _check_range("SPI", self.spi, 32)
        auth = spec.auth.encode(self.auth)
        enc = self.encrypt if satype == SaType.X_IPCOMP else spec.enc.encode(self.encrypt)
        _check_range("encryption algorithm", enc, 8)
        return self._S.pack(
            2, spec.ext.encode(ExtType.SA), self.spi.to_bytes(4, "big"), self.replay, self.state, auth, enc, self.flags
        )

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> Sa:
        _, _, spi, replay, state, auth, enc, flags = cls._S.unpack_from(buf, off)
        a = spec.auth.from_wire.get(auth)
        e = enc if satype == SaType.X_IPCOMP else spec.enc.from_wire.get(enc)
        return cls(
            int.from_bytes(spi, "big"),
            replay,
            state,
            UNKNOWN | auth if a is None else a,
            UNKNOWN | enc if e is None else e,
            flags,
        )


# --------------------------------------------------------------------- lifetime

LIFETIME_TYPES = (ExtType.LIFETIME_CURRENT, ExtType.LIFETIME_HARD, ExtType.LIFETIME_SOFT)


@record
class Lifetime:
    """struct sadb_lifetime (RFC 2367 §2.3.2): CURRENT, HARD or SOFT."""

    exttype: ExtType
    allocations: int = 0
    bytes: int = 0  # sadb_lifetime_bytes; annotations below say builtins.bytes
    addtime: int = 0
    usetime: int = 0

    _S: ClassVar[struct.Struct] = struct.Struct("=HHIQQQ")

    def encode(self, spec: DialectSpec, satype: int) -> builtins.bytes:
        return self._S.pack(4, spec.ext.encode(self.exttype), self.allocations, self.bytes, self.addtime, self.usetime)

    @classmethod
    def decode(
        cls, exttype: ExtType, buf: builtins.bytes, off: int, length: int, spec: DialectSpec, satype: int
    ) -> Lifetime:
        _, _, alloc, nbytes, add, use = cls._S.unpack_from(buf, off)
        return cls(exttype, alloc, nbytes, add, use)


# ---------------------------------------------------------------------- address

ADDRESS_TYPES = (
    ExtType.ADDRESS_SRC,
    ExtType.ADDRESS_DST,
    ExtType.ADDRESS_PROXY,
    ExtType.X_NAT_T_OAI,
    ExtType.X_NAT_T_OAR,
    ExtType.X_NEW_ADDRESS_SRC,
    ExtType.X_NEW_ADDRESS_DST,
)


@record
class Address:
    """struct sadb_address + sockaddr (RFC 2367 §2.3.3); also NAT-T OAI/OAR and
    FreeBSD's NEW_ADDRESS_SRC/DST."""

    exttype: ExtType
    addr: AnySockAddr
    prefixlen: int = 0
    proto: int = 255

    _S: ClassVar[struct.Struct] = struct.Struct("=HHBBH")

    @classmethod
    def host(cls, exttype: ExtType, text: str, *, port: int = 0, proto: int = 255) -> Address:
        """An address at full prefix length, the form SA messages use."""
        sa = SockAddr.parse(text, port)
        return cls(exttype, sa, sa.max_prefix, proto)

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        # The same few addresses are encoded over and over (replies, dumps): values
        # are immutable, so their bytes are kept per sockaddr layout.
        cache = _ADDRESS_BYTES[spec.sockaddr_has_len]
        done = cache.get(self)
        if done is not None:
            return done
        raw = encode_sockaddr(self.addr, spec)
        body = self._S.pack(0, 0, self.proto, self.prefixlen, 0)[4:] + raw + bytes(pad8(len(raw)) - len(raw))
        data = _ext(self.exttype, body, spec)
        if len(cache) >= _ADDRESS_CACHE_SIZE:
            cache.clear()
        cache[self] = data
        return data

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> Address:
        # Address extensions repeat a lot (a few hosts, many SAs); the values are
        # immutable, so equal bytes share one decoded value.
        raw = buf[off : off + length]
        cache = _ADDRESS_CACHE[spec.sockaddr_has_len]
        hit = cache.get(raw)
        if hit is not None:
            return hit
        _, _, proto, prefixlen, _ = cls._S.unpack_from(buf, off)
        try:
            sa, _ = decode_sockaddr(buf, off + 8, off + length, spec)
        except BadSockAddr as exc:  # the message decoder checked lengths already
            raise DeferredError(str(exc)) from None
        value = cls(exttype, sa, prefixlen, proto)
        if len(cache) >= _ADDRESS_CACHE_SIZE:
            cache.clear()
        cache[raw] = value
        return value


_ADDRESS_CACHE_SIZE = 4096
#: raw extension bytes -> decoded Address, one cache per sockaddr layout.
_ADDRESS_CACHE: dict[bool, dict[bytes, Address]] = {True: {}, False: {}}
#: Address -> its encoded bytes, one cache per sockaddr layout.
_ADDRESS_BYTES: dict[bool, dict[Address, bytes]] = {True: {}, False: {}}


# -------------------------------------------------------------------------- key

KEY_TYPES = (ExtType.KEY_AUTH, ExtType.KEY_ENCRYPT)


@record
class Key:
    """struct sadb_key + key bits (RFC 2367 §2.3.4).  ``data`` is ceil(bits/8) bytes."""

    exttype: ExtType
    data: bytes
    bits: int = -1  # -1: len(data) * 8

    _S: ClassVar[struct.Struct] = struct.Struct("=HHHH")

    def __post_init__(self) -> None:
        if self.bits < 0:
            object.__setattr__(self, "bits", len(self.data) * 8)

    def __repr__(self) -> str:
        # Key material never reaches a log line through repr().
        return f"Key({self.exttype.name}, bits={self.bits}, data=<{len(self.data)} bytes>)"

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        _check_range("key bits", self.bits, 16)
        if (self.bits + 7) // 8 != len(self.data):
            msg = f"key of {len(self.data)} bytes does not match {self.bits} bits"
            raise EncodeError(msg)
        body = self._S.pack(0, 0, self.bits, 0)[4:] + self.data
        return _ext(self.exttype, body, spec)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> Key:
        _, _, bits, _ = cls._S.unpack_from(buf, off)
        # FreeBSD does not check bits against the extension size; keep what is there.
        nbytes = min((bits + 7) // 8, length - 8)
        return cls(exttype, buf[off + 8 : off + 8 + nbytes], bits)


# --------------------------------------------------------------------- identity


@record
class Ident:
    """struct sadb_ident + identity string (RFC 2367 §2.3.5).  ``data`` has the
    trailing NUL padding removed (for FreeBSD's X_ADDR type it is a sockaddr)."""

    exttype: ExtType
    idtype: int
    data: bytes = b""
    id: int = 0

    _S: ClassVar[struct.Struct] = struct.Struct("=HHHHQ")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        data = self.data
        if data and not _is_sockaddr_ident(self.idtype, spec) and not data.endswith(b"\0"):
            # RFC 2367 §2.3.5: the identity is a NUL-terminated C string; padding alone
            # does not terminate a string whose length is a multiple of 8.
            data += b"\0"
        body = self._S.pack(0, 0, self.idtype, 0, self.id)[4:] + data
        return _ext(self.exttype, body, spec)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> Ident:
        _, _, idtype, _, ident = cls._S.unpack_from(buf, off)
        body = bytes(buf[off + 16 : off + length])
        if _is_sockaddr_ident(idtype, spec) and body:
            # FreeBSD SADB_X_IDENTTYPE_ADDR: a sockaddr sized by its sa_len (whose
            # sin_zero must survive), then padding.
            return cls(exttype, idtype, body[: body[0]], ident)
        return cls(exttype, idtype, body.rstrip(b"\0"), ident)


def _is_sockaddr_ident(idtype: int, spec: DialectSpec) -> bool:
    return idtype == IdentType.X_ADDR and spec.sockaddr_has_len


# ------------------------------------------------------------------ sensitivity


@record
class Sens:
    """struct sadb_sens + bitmaps (RFC 2367 §2.3.6).  Both kernels ignore it;
    ``bitmaps`` holds the sensitivity then the integrity bitmap as sent."""

    dpd: int = 0
    sens_level: int = 0
    sens_len: int = 0
    integ_level: int = 0
    integ_len: int = 0
    bitmaps: bytes = b""

    exttype: ClassVar[ExtType] = ExtType.SENSITIVITY
    _S: ClassVar[struct.Struct] = struct.Struct("=HHIBBBBI")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        body = (
            self._S.pack(0, 0, self.dpd, self.sens_level, self.sens_len, self.integ_level, self.integ_len, 0)[4:]
            + self.bitmaps
        )
        return _ext(ExtType.SENSITIVITY, body, spec)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> Sens:
        _, _, dpd, sl, slen, il, ilen, _ = cls._S.unpack_from(buf, off)
        return cls(dpd, sl, slen, il, ilen, bytes(buf[off + 16 : off + length]).rstrip(b"\0"))


# --------------------------------------------------------------------- proposal


@record
class Comb:
    """struct sadb_comb (RFC 2367 §2.3.7), 72 bytes."""

    auth: int = 0
    encrypt: int = 0
    flags: int = 0
    auth_minbits: int = 0
    auth_maxbits: int = 0
    encrypt_minbits: int = 0
    encrypt_maxbits: int = 0
    soft_allocations: int = 0
    hard_allocations: int = 0
    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_addtime: int = 0
    hard_addtime: int = 0
    soft_usetime: int = 0
    hard_usetime: int = 0

    _S: ClassVar[struct.Struct] = struct.Struct("=BBHHHHHIIIQQQQQQ")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        enc = self.encrypt if satype == SaType.X_IPCOMP else spec.enc.encode(self.encrypt)
        return self._S.pack(
            spec.auth.encode(self.auth),
            enc,
            self.flags,
            self.auth_minbits,
            self.auth_maxbits,
            self.encrypt_minbits,
            self.encrypt_maxbits,
            0,
            self.soft_allocations,
            self.hard_allocations,
            self.soft_bytes,
            self.hard_bytes,
            self.soft_addtime,
            self.hard_addtime,
            self.soft_usetime,
            self.hard_usetime,
        )

    @classmethod
    def decode_at(cls, buf: bytes, off: int, spec: DialectSpec, satype: int) -> Comb:
        f = cls._S.unpack_from(buf, off)
        enc = f[1] if satype == SaType.X_IPCOMP else spec.enc.decode(f[1])
        return cls(spec.auth.decode(f[0]), enc, *f[2:7], *f[8:])


@record
class Prop:
    """struct sadb_prop + sadb_comb[] (RFC 2367 §2.3.7)."""

    replay: int = 0
    combs: tuple[Comb, ...] = ()

    exttype: ClassVar[ExtType] = ExtType.PROPOSAL
    _S: ClassVar[struct.Struct] = struct.Struct("=HHB3x")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        body = self._S.pack(0, 0, self.replay)[4:] + b"".join(c.encode(spec, satype) for c in self.combs)
        return _ext(ExtType.PROPOSAL, body, spec)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> Prop:
        replay = buf[off + 4]
        n = (length - 8) // Comb._S.size  # a trailing partial comb is ignored, as key.c does
        return cls(replay, tuple(Comb.decode_at(buf, off + 8 + i * 72, spec, satype) for i in range(n)))


# -------------------------------------------------------------------- supported


@record
class Alg:
    """struct sadb_alg (RFC 2367 §2.3.8), 8 bytes.  ``id`` is canonical."""

    id: int
    ivlen: int = 0
    minbits: int = 0
    maxbits: int = 0

    _S: ClassVar[struct.Struct] = struct.Struct("=BBHHH")


@record
class Supported:
    """struct sadb_supported + sadb_alg[] (RFC 2367 §2.3.8): AUTH or ENCRYPT."""

    exttype: ExtType
    algs: tuple[Alg, ...] = ()

    _S: ClassVar[struct.Struct] = struct.Struct("=HHI")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        book = spec.auth if self.exttype == ExtType.SUPPORTED_AUTH else spec.enc
        body = bytes(4) + b"".join(Alg._S.pack(book.encode(a.id), a.ivlen, a.minbits, a.maxbits, 0) for a in self.algs)
        return _ext(self.exttype, body, spec)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> Supported:
        book = spec.auth if exttype == ExtType.SUPPORTED_AUTH else spec.enc
        algs = []
        for pos in range(off + 8, off + length - 7, 8):
            ident, ivlen, minbits, maxbits, _ = Alg._S.unpack_from(buf, pos)
            algs.append(Alg(book.decode(ident), ivlen, minbits, maxbits))
        return cls(exttype, tuple(algs))


# -------------------------------------------------------------------- spirange


@record
class SpiRange:
    """struct sadb_spirange (RFC 2367 §2.3.9); host order."""

    min: int
    max: int

    exttype: ClassVar[ExtType] = ExtType.SPIRANGE
    _S: ClassVar[struct.Struct] = struct.Struct("=HHIII")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        return self._S.pack(2, spec.ext.encode(ExtType.SPIRANGE), self.min, self.max, 0)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> SpiRange:
        _, _, lo, hi, _ = cls._S.unpack_from(buf, off)
        return cls(lo, hi)


@record
class KmPrivate:
    """struct sadb_x_kmprivate (KAME).  FreeBSD refuses it; Linux ignores it."""

    exttype: ClassVar[ExtType] = ExtType.X_KMPRIVATE

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        return _ext(ExtType.X_KMPRIVATE, bytes(4), spec)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> KmPrivate:
        return cls()


# ---------------------------------------------------------------------- policy


@record
class IpsecRequest:
    """struct sadb_x_ipsecrequest: 8 bytes with a 16-bit reqid (FreeBSD) or 16 bytes
    with a 32-bit reqid (Linux), then an optional src/dst sockaddr pair."""

    proto: int
    mode: int
    level: int
    reqid: int = 0
    src: AnySockAddr | None = None
    dst: AnySockAddr | None = None

    _FREEBSD: ClassVar[struct.Struct] = struct.Struct("=HHBBH")
    _LINUX: ClassVar[struct.Struct] = struct.Struct("=HHBBHII")

    def encode(self, spec: DialectSpec) -> bytes:
        if (self.src is None) != (self.dst is None):
            msg = "an ipsecrequest needs both tunnel endpoints or neither"
            raise EncodeError(msg)
        if self.reqid > spec.reqid_max or self.reqid < 0:
            msg = f"reqid {self.reqid} cannot be carried by the {spec.name} dialect (maximum {spec.reqid_max})"
            raise EncodeError(msg)
        addrs = b""
        if self.src is not None and self.dst is not None:
            addrs = encode_sockaddr(self.src, spec) + encode_sockaddr(self.dst, spec)
        size = pad8(spec.ipsecrequest_size + len(addrs))
        _check_range("ipsecrequest length", size, 16)
        mode = spec.mode.encode(self.mode)
        if spec.ipsecrequest_size == 8:
            head = self._FREEBSD.pack(size, self.proto, mode, self.level, self.reqid)
        else:
            head = self._LINUX.pack(size, self.proto, mode, self.level, 0, self.reqid, 0)
        return head + addrs + bytes(size - len(head) - len(addrs))


@record
class Policy:
    """struct sadb_x_policy + ipsecrequests (KAME).  ``scope`` is FreeBSD's byte 7."""

    type: int
    dir: int
    id: int = 0
    priority: int = 0
    scope: int = 0
    requests: tuple[IpsecRequest, ...] = ()

    exttype: ClassVar[ExtType] = ExtType.X_POLICY
    _S: ClassVar[struct.Struct] = struct.Struct("=HHHBBII")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        if self.scope and not spec.policy_has_scope:
            msg = f"policy scope {self.scope} cannot be carried by the {spec.name} dialect"
            raise EncodeError(msg)
        body = self._S.pack(0, 0, self.type, spec.direction.encode(self.dir), self.scope, self.id, self.priority)[4:]
        return _ext(ExtType.X_POLICY, body + b"".join(r.encode(spec) for r in self.requests), spec)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> Policy:
        _, _, ptype, pdir, scope, pid, prio = cls._S.unpack_from(buf, off)
        return cls(
            ptype,
            spec.direction.decode(pdir),
            pid,
            prio,
            scope if spec.policy_has_scope else 0,
            _decode_requests(buf, off + 16, off + length, spec),
        )


def _decode_requests(buf: bytes, pos: int, end: int, spec: DialectSpec) -> tuple[IpsecRequest, ...]:
    """Parse the request list as key_msg2sp (FreeBSD) or parse_ipsecrequests (Linux)."""
    fixed = spec.ipsecrequest_size
    out = []
    while end - pos >= (1 if spec.sockaddr_has_len else fixed):
        if end - pos < fixed:
            raise DeferredError("truncated ipsecrequest")
        if spec.sockaddr_has_len:
            rlen, proto, mode, level, reqid = IpsecRequest._FREEBSD.unpack_from(buf, pos)
        else:
            rlen, proto, mode, level, _, reqid, _ = IpsecRequest._LINUX.unpack_from(buf, pos)
        if rlen < fixed or rlen > end - pos:
            msg = f"ipsecrequest length {rlen} is invalid"
            raise DeferredError(msg)
        cmode = spec.mode.decode(mode)
        src = dst = None
        # FreeBSD reads endpoints whenever the request is longer than its fixed part;
        # Linux only in tunnel mode.
        if rlen > fixed and (spec.sockaddr_has_len or cmode == Mode.TUNNEL):
            try:
                src, n1 = decode_sockaddr(buf, pos + fixed, pos + rlen, spec)
                dst, n2 = decode_sockaddr(buf, pos + fixed + n1, pos + rlen, spec)
            except BadSockAddr as exc:
                msg = f"ipsecrequest endpoints: {exc}"
                raise DeferredError(msg) from None
            if n1 != n2:
                raise DeferredError("ipsecrequest endpoints differ in length")
        elif cmode == Mode.TUNNEL and not spec.sockaddr_has_len:
            raise DeferredError("tunnel-mode ipsecrequest without endpoints")
        out.append(IpsecRequest(proto, cmode, level, reqid, src, dst))
        pos += rlen
    return tuple(out)


# ------------------------------------------------------------------ SA2, NAT-T


@record
class Sa2:
    """struct sadb_x_sa2 (KAME): mode, sequence (replay counter) and reqid."""

    mode: int = Mode.ANY
    sequence: int = 0
    reqid: int = 0

    exttype: ClassVar[ExtType] = ExtType.X_SA2
    _S: ClassVar[struct.Struct] = struct.Struct("=HHBBHII")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        return self._S.pack(
            2, spec.ext.encode(ExtType.X_SA2), spec.mode.encode(self.mode), 0, 0, self.sequence, self.reqid
        )

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> Sa2:
        _, _, mode, _, _, seq, reqid = cls._S.unpack_from(buf, off)
        return cls(spec.mode.decode(mode), seq, reqid)


@record
class NatTType:
    """struct sadb_x_nat_t_type: the UDP encapsulation type."""

    type: int

    exttype: ClassVar[ExtType] = ExtType.X_NAT_T_TYPE
    _S: ClassVar[struct.Struct] = struct.Struct("=HHB3x")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        return self._S.pack(1, spec.ext.encode(ExtType.X_NAT_T_TYPE), self.type)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> NatTType:
        return cls(buf[off + 4])


@record
class NatTPort:
    """struct sadb_x_nat_t_port: SPORT or DPORT, the port in network order."""

    exttype: ExtType
    port: int

    _S: ClassVar[struct.Struct] = struct.Struct("=HH2sxx")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        _check_range("NAT-T port", self.port, 16)
        return self._S.pack(1, spec.ext.encode(self.exttype), self.port.to_bytes(2, "big"))

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> NatTPort:
        return cls(exttype, int.from_bytes(buf[off + 4 : off + 6], "big"))


@record
class NatTFrag:
    """struct sadb_x_nat_t_frag (FreeBSD): accepted and ignored by the kernel."""

    fraglen: int

    exttype: ClassVar[ExtType] = ExtType.X_NAT_T_FRAG
    _S: ClassVar[struct.Struct] = struct.Struct("=HHHxx")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        return self._S.pack(1, spec.ext.encode(ExtType.X_NAT_T_FRAG), self.fraglen)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> NatTFrag:
        return cls(cls._S.unpack_from(buf, off)[2])


@record
class SaReplay:
    """struct sadb_x_sa_replay (FreeBSD): the replay window in packets."""

    replay: int

    exttype: ClassVar[ExtType] = ExtType.X_SA_REPLAY
    _S: ClassVar[struct.Struct] = struct.Struct("=HHI")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        return self._S.pack(1, spec.ext.encode(ExtType.X_SA_REPLAY), self.replay)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> SaReplay:
        return cls(cls._S.unpack_from(buf, off)[2])


# ------------------------------------------------------------------ Linux only


@record
class SecCtx:
    """struct sadb_x_sec_ctx (Linux): a security context string."""

    alg: int
    doi: int
    ctx: bytes

    exttype: ClassVar[ExtType] = ExtType.X_SEC_CTX
    _S: ClassVar[struct.Struct] = struct.Struct("=HHBBH")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        _check_range("security context length", len(self.ctx), 16)
        return _ext(ExtType.X_SEC_CTX, self._S.pack(0, 0, self.alg, self.doi, len(self.ctx))[4:] + self.ctx, spec)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> SecCtx:
        _, _, alg, doi, n = cls._S.unpack_from(buf, off)
        return cls(alg, doi, bytes(buf[off + 8 : off + 8 + n]))


@record
class KmAddress:
    """struct sadb_x_kmaddress (Linux): the key managers' local and remote addresses."""

    local: AnySockAddr
    remote: AnySockAddr

    exttype: ClassVar[ExtType] = ExtType.X_KMADDRESS

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        pair = encode_sockaddr(self.local, spec) + encode_sockaddr(self.remote, spec)
        return _ext(ExtType.X_KMADDRESS, bytes(4) + pair, spec)

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> KmAddress:
        try:
            local, n = decode_sockaddr(buf, off + 8, off + length, spec)
            remote, _ = decode_sockaddr(buf, off + 8 + n, off + length, spec)
        except BadSockAddr as exc:
            msg = f"kmaddress: {exc}"
            raise DeferredError(msg) from None
        return cls(local, remote)


@record
class Filter:
    """struct sadb_x_filter (Linux, 40 bytes): restricts a DUMP by address prefixes.
    ``family`` is 4 or 6 (the IP version); another wire family n is kept as UNKNOWN|n,
    or as 0x10000|n when n >= 0x8000 (where UNKNOWN|n == n would lose the tag)."""

    family: int
    saddr: IPv4Address | IPv6Address | bytes
    daddr: IPv4Address | IPv6Address | bytes
    splen: int = 0
    dplen: int = 0

    exttype: ClassVar[ExtType] = ExtType.X_FILTER
    _S: ClassVar[struct.Struct] = struct.Struct("=HH16s16sHBB")

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        family = {4: spec.af_inet, 6: spec.af_inet6}.get(self.family, self.family & ~UNKNOWN)
        if self.family > 0xFFFF:
            family = self.family & 0xFFFF
        return self._S.pack(
            5,
            spec.ext.encode(ExtType.X_FILTER),
            _packed16(self.saddr),
            _packed16(self.daddr),
            family,
            self.splen,
            self.dplen,
        )

    @classmethod
    def decode(cls, exttype: ExtType, buf: bytes, off: int, length: int, spec: DialectSpec, satype: int) -> Filter:
        _, _, s, d, fam, splen, dplen = cls._S.unpack_from(buf, off)
        if fam == spec.af_inet:
            return cls(4, IPv4Address(s[:4]), IPv4Address(d[:4]), splen, dplen)
        if fam == spec.af_inet6:
            return cls(6, IPv6Address(s), IPv6Address(d), splen, dplen)
        return cls(UNKNOWN | fam if fam < UNKNOWN else 0x10000 | fam, bytes(s), bytes(d), splen, dplen)


def _packed16(a: IPv4Address | IPv6Address | bytes) -> bytes:
    raw = a if isinstance(a, bytes) else a.packed
    return raw.ljust(16, b"\0")


@record
class UnknownExt:
    """An extension type the dialect does not define.  Linux skips such types above
    its SADB_EXT_MAX; they are kept so the message still round-trips."""

    number: int
    data: bytes = b""

    def encode(self, spec: DialectSpec, satype: int) -> bytes:
        total = pad8(4 + len(self.data))
        return _EXT_HDR.pack(total // UNIT, self.number) + self.data + bytes(total - 4 - len(self.data))

    @property
    def exttype(self) -> int:
        return self.number


Extension = (
    Sa
    | Lifetime
    | Address
    | Key
    | Ident
    | Sens
    | Prop
    | Supported
    | SpiRange
    | KmPrivate
    | Policy
    | Sa2
    | NatTType
    | NatTPort
    | NatTFrag
    | SaReplay
    | SecCtx
    | KmAddress
    | Filter
    | UnknownExt
)

#: extension type -> the class that decodes it.
_Decodable = (
    Sa
    | Lifetime
    | Address
    | Key
    | Ident
    | Sens
    | Prop
    | Supported
    | SpiRange
    | KmPrivate
    | Policy
    | Sa2
    | NatTType
    | NatTPort
    | NatTFrag
    | SaReplay
    | SecCtx
    | KmAddress
    | Filter
)
DECODERS: dict[ExtType, type[_Decodable]] = {
    ExtType.SA: Sa,
    ExtType.LIFETIME_CURRENT: Lifetime,
    ExtType.LIFETIME_HARD: Lifetime,
    ExtType.LIFETIME_SOFT: Lifetime,
    ExtType.ADDRESS_SRC: Address,
    ExtType.ADDRESS_DST: Address,
    ExtType.ADDRESS_PROXY: Address,
    ExtType.KEY_AUTH: Key,
    ExtType.KEY_ENCRYPT: Key,
    ExtType.IDENTITY_SRC: Ident,
    ExtType.IDENTITY_DST: Ident,
    ExtType.SENSITIVITY: Sens,
    ExtType.PROPOSAL: Prop,
    ExtType.SUPPORTED_AUTH: Supported,
    ExtType.SUPPORTED_ENCRYPT: Supported,
    ExtType.SPIRANGE: SpiRange,
    ExtType.X_KMPRIVATE: KmPrivate,
    ExtType.X_POLICY: Policy,
    ExtType.X_SA2: Sa2,
    ExtType.X_NAT_T_TYPE: NatTType,
    ExtType.X_NAT_T_SPORT: NatTPort,
    ExtType.X_NAT_T_DPORT: NatTPort,
    ExtType.X_NAT_T_OAI: Address,
    ExtType.X_NAT_T_OAR: Address,
    ExtType.X_NAT_T_FRAG: NatTFrag,
    ExtType.X_SA_REPLAY: SaReplay,
    ExtType.X_NEW_ADDRESS_SRC: Address,
    ExtType.X_NEW_ADDRESS_DST: Address,
    ExtType.X_SEC_CTX: SecCtx,
    ExtType.X_KMADDRESS: KmAddress,
    ExtType.X_FILTER: Filter,
}
