"""Whole PF_KEY messages: the base header, its extensions, strict request decoding.

Theory of operation
-------------------
:func:`decode` turns one datagram into a :class:`Message` or raises
:class:`~pfkeyd.errors.DecodeError`, which carries the errno and whether the
reference kernel of the dialect answers with an error reply (``reply=True``) or
fails the ``send()`` itself (``reply=False``).  The checks run in the kernel's
order (reference §1.3 for FreeBSD's key_send/key_parse/key_align/key_validate_ext,
§1.4 for Linux's pfkey_sendmsg/pfkey_get_base_msg/parse_exthdrs):

freebsd
    1. fewer than 16 bytes, or ``len*8`` != datagram size: send fails, EINVAL;
    2. version != 2 or type > 22: error reply, EINVAL;
    3. larger than the size limit (2048 bytes, MCLBYTES): send fails, ENOBUFS;
    4. extension walk, send fails with EINVAL: unknown type (0, 17, > 28), a
       duplicate, a length below the type's minimum or above its maximum, an
       address whose length is not 8 + ALIGN8(sa_len).  An extension that runs
       past the end of the message makes key_align's m_pulldown fail: ENOBUFS;
    5. satype against message type: error reply, EINVAL or EOPNOTSUPP;
    6. SRC and DST together: same proto, family and sa_len, AF_INET/16 or
       AF_INET6/28 (other families EAFNOSUPPORT), prefix within the family:
       error reply.
linux
    1. fewer than 16 bytes: send fails, EMSGSIZE;
    2. version != 2, reserved != 0, type 0 or > 24: send fails, EINVAL;
    3. ``len`` != size / 8 or ``len`` < 2: send fails, EMSGSIZE;
    4. extension walk, error reply EINVAL: a header that does not fit, a length
       below 8 or past the end, type 0, a duplicate, a length below the minimum,
       an address not exactly 3 (IPv4) or 5 (IPv6) units or with too long a
       prefix, a key whose bits do not fit, an inconsistent security context.
       Types above 26 are skipped (kept as :class:`UnknownExt`).

Faults that the kernels find only in the handler (a malformed ipsecrequest list)
are reported after these checks, as an error reply with EINVAL.

:func:`encode` computes every length; a value the dialect cannot carry raises
:class:`~pfkeyd.errors.EncodeError`.  :func:`error_reply` builds the error reply
of the dialect from the raw request, and :func:`send_failure_reply` the header-only
answer pfkeyd gives where the kernel would fail the ``send()``.
"""

from __future__ import annotations

import builtins
import errno as E
import struct
from dataclasses import field, replace
from ipaddress import IPv4Address
from typing import Any, TypeVar

from pfkeyd.errors import DecodeError, EncodeError
from pfkeyd.record import record
from pfkeyd.wire.constants import PF_KEY_V2, UNIT, ExtType, IdentType, MsgType, SaType
from pfkeyd.wire.dialect import Dialect, DialectSpec
from pfkeyd.wire.ext import (
    ADDRESS_TYPES,
    DECODERS,
    Address,
    DeferredError,
    Extension,
    Key,
    KmAddress,
    Lifetime,
    NatTPort,
    NatTType,
    Policy,
    Prop,
    Sa,
    Sa2,
    SaReplay,
    SecCtx,
    SpiRange,
    Supported,
    UnknownExt,
    pad8,
)
from pfkeyd.wire.sockaddr import SOCKADDR_IN6_LEN, SOCKADDR_IN_LEN, RawSockAddr, SockAddr

__all__ = [
    "Message",
    "HEADER",
    "encode",
    "decode",
    "error_reply",
    "send_failure_reply",
    "check_request_generic",
    "MIN_LEN",
    "FREEBSD_MAX_LEN",
    "FREEBSD_MAX_REQUEST",
    "LINUX_EXT_MAX",
]

HEADER = struct.Struct("=BBBBHHII")  # version, type, errno, satype, len, reserved, seq, pid
_EXT_HDR = struct.Struct("=HH")

#: Minimum length of each extension type in bytes (key.c minsize / af_key sadb_ext_min_len).
MIN_LEN: dict[ExtType, int] = {
    ExtType.SA: 16,
    ExtType.LIFETIME_CURRENT: 32,
    ExtType.LIFETIME_HARD: 32,
    ExtType.LIFETIME_SOFT: 32,
    ExtType.ADDRESS_SRC: 8,
    ExtType.ADDRESS_DST: 8,
    ExtType.ADDRESS_PROXY: 8,
    ExtType.KEY_AUTH: 8,
    ExtType.KEY_ENCRYPT: 8,
    ExtType.IDENTITY_SRC: 16,
    ExtType.IDENTITY_DST: 16,
    ExtType.SENSITIVITY: 16,
    ExtType.PROPOSAL: 8,
    ExtType.SUPPORTED_AUTH: 8,
    ExtType.SUPPORTED_ENCRYPT: 8,
    ExtType.SPIRANGE: 16,
    ExtType.X_KMPRIVATE: 8,
    ExtType.X_POLICY: 16,
    ExtType.X_SA2: 16,
    ExtType.X_NAT_T_TYPE: 8,
    ExtType.X_NAT_T_SPORT: 8,
    ExtType.X_NAT_T_DPORT: 8,
    ExtType.X_NAT_T_OAI: 8,
    ExtType.X_NAT_T_OAR: 8,
    ExtType.X_NAT_T_FRAG: 8,
    ExtType.X_SA_REPLAY: 8,
    ExtType.X_NEW_ADDRESS_SRC: 8,
    ExtType.X_NEW_ADDRESS_DST: 8,
    ExtType.X_SEC_CTX: 8,
    ExtType.X_KMADDRESS: 8,
    ExtType.X_FILTER: 40,
}

#: FreeBSD key.c maxsize: fixed-size extensions may not be longer (0 = no maximum).
FREEBSD_MAX_LEN: dict[ExtType, int] = {
    ExtType.SA: 16,
    ExtType.LIFETIME_CURRENT: 32,
    ExtType.LIFETIME_HARD: 32,
    ExtType.LIFETIME_SOFT: 32,
    ExtType.SPIRANGE: 16,
    ExtType.X_SA2: 16,
    ExtType.X_NAT_T_TYPE: 8,
    ExtType.X_NAT_T_SPORT: 8,
    ExtType.X_NAT_T_DPORT: 8,
    ExtType.X_NAT_T_FRAG: 8,
    ExtType.X_SA_REPLAY: 8,
}

#: FreeBSD refuses a request longer than MCLBYTES with ENOBUFS (key_parse).
FREEBSD_MAX_REQUEST = 2048
#: Linux skips extension types above SADB_EXT_MAX.
LINUX_EXT_MAX = 26

_E = TypeVar("_E")

# Plain ints for the typed accessors (an int key hashes fastest).
_ADDRESS_DST = int(ExtType.ADDRESS_DST)
_ADDRESS_SRC = int(ExtType.ADDRESS_SRC)
_KEY_AUTH = int(ExtType.KEY_AUTH)
_KEY_ENCRYPT = int(ExtType.KEY_ENCRYPT)
_LIFETIME_CURRENT = int(ExtType.LIFETIME_CURRENT)
_LIFETIME_HARD = int(ExtType.LIFETIME_HARD)
_LIFETIME_SOFT = int(ExtType.LIFETIME_SOFT)
_PROPOSAL = int(ExtType.PROPOSAL)
_SA = int(ExtType.SA)
_SPIRANGE = int(ExtType.SPIRANGE)
_SUPPORTED_AUTH = int(ExtType.SUPPORTED_AUTH)
_SUPPORTED_ENCRYPT = int(ExtType.SUPPORTED_ENCRYPT)
_X_KMADDRESS = int(ExtType.X_KMADDRESS)
_X_NAT_T_DPORT = int(ExtType.X_NAT_T_DPORT)
_X_NAT_T_SPORT = int(ExtType.X_NAT_T_SPORT)
_X_NAT_T_TYPE = int(ExtType.X_NAT_T_TYPE)
_X_POLICY = int(ExtType.X_POLICY)
_X_SA2 = int(ExtType.X_SA2)
_X_SA_REPLAY = int(ExtType.X_SA_REPLAY)
_X_SEC_CTX = int(ExtType.X_SEC_CTX)


def _spec(dialect: Dialect | str) -> DialectSpec:
    try:
        return _SPEC_OF[dialect]
    except KeyError:
        msg = f"unknown dialect {dialect!r}"
        raise ValueError(msg) from None


_SPEC_OF: dict[Dialect | str, DialectSpec] = {}
for _d in Dialect:
    _SPEC_OF[_d] = _SPEC_OF[_d.value] = _d.spec

_IDENT_TYPES = (ExtType.IDENTITY_SRC, ExtType.IDENTITY_DST)
_LINUX_ADDR = (ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST, ExtType.ADDRESS_PROXY, ExtType.X_NAT_T_OA)


@record
class _ExtRule:
    """What the extension walk needs to know of one wire extension type."""

    exttype: ExtType
    min_len: int
    max_len: int  # 0: no maximum
    decoder: Any
    check: str  # "", "addr", "ident", "key", "secctx"


def _rules(spec: DialectSpec) -> dict[int, _ExtRule]:
    rules = {}
    for canonical, wire in spec.ext.to_wire.items():
        et = ExtType(canonical)
        if spec.sockaddr_has_len:
            check = "addr" if et in ADDRESS_TYPES else "ident" if et in _IDENT_TYPES else ""
            max_len = FREEBSD_MAX_LEN.get(et, 0)
        else:
            check = (
                "addr"
                if et in _LINUX_ADDR
                else "key"
                if et in (ExtType.KEY_AUTH, ExtType.KEY_ENCRYPT)
                else "secctx"
                if et == ExtType.X_SEC_CTX
                else ""
            )
            max_len = 0
        rules[wire] = _ExtRule(et, MIN_LEN[et], max_len, DECODERS[et], check)
    return rules


_RULES: dict[Dialect, dict[int, _ExtRule]] = {d: _rules(d.spec) for d in Dialect}


@record
class Message:
    """struct sadb_msg (RFC 2367 §2.2) and its extensions, in order.

    ``type`` and ``satype`` are ints so that values the kernel refuses can still be
    represented; compare them with :class:`MsgType` and :class:`SaType`.
    """

    type: int
    satype: int = 0
    seq: int = 0
    pid: int = 0
    errno: int = 0
    reserved: int = 0
    exts: tuple[Extension, ...] = ()
    _index: dict[int, Extension] | None = field(default=None, init=False, repr=False, compare=False)

    def _by_type(self) -> dict[int, Extension]:
        index = self._index
        if index is None:
            index = {int(ext.exttype): ext for ext in reversed(self.exts)}  # the first of a type wins
            object.__setattr__(self, "_index", index)
        return index

    def get(self, exttype: int) -> Extension | None:
        return (self._index or self._by_type()).get(exttype)

    def has(self, exttype: int) -> bool:
        return exttype in self._by_type()

    def _typed(self, exttype: ExtType, cls: builtins.type[_E]) -> _E | None:
        ext: object = self._by_type().get(exttype)
        return ext if isinstance(ext, cls) else None

    def replace(self, **changes: object) -> Message:
        return replace(self, **changes)  # type: ignore[arg-type]

    def without_keys(self) -> Message:
        """This message without KEY_AUTH and KEY_ENCRYPT (what any copy for a socket
        other than the requester's must be)."""
        if not any(type(e) is Key for e in self.exts):
            return self
        return replace(self, exts=tuple(e for e in self.exts if type(e) is not Key))

    # Typed accessors for the extensions the engine reads.
    @property
    def sa(self) -> Sa | None:
        ext = (self._index or self._by_type()).get(_SA)
        return ext if type(ext) is Sa else None

    @property
    def sa2(self) -> Sa2 | None:
        ext = (self._index or self._by_type()).get(_X_SA2)
        return ext if type(ext) is Sa2 else None

    @property
    def src(self) -> Address | None:
        ext = (self._index or self._by_type()).get(_ADDRESS_SRC)
        return ext if type(ext) is Address else None

    @property
    def dst(self) -> Address | None:
        ext = (self._index or self._by_type()).get(_ADDRESS_DST)
        return ext if type(ext) is Address else None

    @property
    def key_auth(self) -> Key | None:
        ext = (self._index or self._by_type()).get(_KEY_AUTH)
        return ext if type(ext) is Key else None

    @property
    def key_encrypt(self) -> Key | None:
        ext = (self._index or self._by_type()).get(_KEY_ENCRYPT)
        return ext if type(ext) is Key else None

    @property
    def lifetime_hard(self) -> Lifetime | None:
        ext = (self._index or self._by_type()).get(_LIFETIME_HARD)
        return ext if type(ext) is Lifetime else None

    @property
    def lifetime_soft(self) -> Lifetime | None:
        ext = (self._index or self._by_type()).get(_LIFETIME_SOFT)
        return ext if type(ext) is Lifetime else None

    @property
    def lifetime_current(self) -> Lifetime | None:
        ext = (self._index or self._by_type()).get(_LIFETIME_CURRENT)
        return ext if type(ext) is Lifetime else None

    @property
    def policy(self) -> Policy | None:
        ext = (self._index or self._by_type()).get(_X_POLICY)
        return ext if type(ext) is Policy else None

    @property
    def spirange(self) -> SpiRange | None:
        ext = (self._index or self._by_type()).get(_SPIRANGE)
        return ext if type(ext) is SpiRange else None

    @property
    def proposal(self) -> Prop | None:
        ext = (self._index or self._by_type()).get(_PROPOSAL)
        return ext if type(ext) is Prop else None

    @property
    def supported_auth(self) -> Supported | None:
        ext = (self._index or self._by_type()).get(_SUPPORTED_AUTH)
        return ext if type(ext) is Supported else None

    @property
    def supported_encrypt(self) -> Supported | None:
        ext = (self._index or self._by_type()).get(_SUPPORTED_ENCRYPT)
        return ext if type(ext) is Supported else None

    @property
    def nat_t_type(self) -> NatTType | None:
        ext = (self._index or self._by_type()).get(_X_NAT_T_TYPE)
        return ext if type(ext) is NatTType else None

    @property
    def nat_t_sport(self) -> NatTPort | None:
        ext = (self._index or self._by_type()).get(_X_NAT_T_SPORT)
        return ext if type(ext) is NatTPort else None

    @property
    def nat_t_dport(self) -> NatTPort | None:
        ext = (self._index or self._by_type()).get(_X_NAT_T_DPORT)
        return ext if type(ext) is NatTPort else None

    @property
    def sa_replay(self) -> SaReplay | None:
        ext = (self._index or self._by_type()).get(_X_SA_REPLAY)
        return ext if type(ext) is SaReplay else None

    @property
    def sec_ctx(self) -> SecCtx | None:
        ext = (self._index or self._by_type()).get(_X_SEC_CTX)
        return ext if type(ext) is SecCtx else None

    @property
    def kmaddress(self) -> KmAddress | None:
        ext = (self._index or self._by_type()).get(_X_KMADDRESS)
        return ext if type(ext) is KmAddress else None

    def address(self, exttype: ExtType) -> Address | None:
        return self._typed(exttype, Address)

    def __repr__(self) -> str:
        name = MsgType(self.type).name if self.type in MsgType._value2member_map_ else str(self.type)
        return (
            f"Message({name}, satype={self.satype}, seq={self.seq}, pid={self.pid}, "
            f"errno={self.errno}, exts={list(self.exts)!r})"
        )


# ----------------------------------------------------------------------- encode


def encode(msg: Message, dialect: Dialect | str) -> bytes:
    """The wire bytes of ``msg`` in ``dialect``; the encoder computes every length."""
    spec = _spec(dialect)
    if msg.type > spec.msg_max:
        msg_ = f"message type {msg.type} cannot be carried by the {spec.name} dialect"
        raise EncodeError(msg_)
    if msg.satype == SaType.X_TCPSIGNATURE and msg.satype not in spec.satypes and msg.type != MsgType.X_SPDDUMP:
        msg_ = f"satype X_TCPSIGNATURE cannot be carried by the {spec.name} dialect"
        raise EncodeError(msg_)
    body = b"".join([ext.encode(spec, msg.satype) for ext in msg.exts])
    units = (16 + len(body)) // UNIT
    if units > 0xFFFF:
        msg_ = "message longer than 65535 units"
        raise EncodeError(msg_)
    err = spec.errno_to_wire(msg.errno) if msg.errno else 0
    return HEADER.pack(PF_KEY_V2, msg.type, err, msg.satype, units, msg.reserved, msg.seq, msg.pid) + body


#: Linux's kernel-internal ERESTARTSYS, ERESTARTNOINTR and ERESTARTNOHAND, which
#: pfkey_error reports as EINTR before it maps any other errno >= 512 to EINVAL.
_ERESTART = frozenset({512, 513, 514})


def error_reply(request: bytes, err: int, dialect: Dialect | str) -> bytes:
    """The error reply a kernel of ``dialect`` sends for ``request`` (reference §1.5).

    FreeBSD echoes the whole request, keys included, with ``sadb_msg_errno`` set;
    Linux sends the 16-byte header alone with ``len`` = 2.  Linux maps its
    ERESTART* errnos (512-514) to EINTR and any other errno of 512 and above to EINVAL.
    ``err`` is a host errno; the reply carries the dialect's number for it.
    """
    spec = _spec(dialect)
    if spec.dialect is Dialect.FREEBSD:
        return request[:2] + bytes((spec.errno_to_wire(err) & 0xFF,)) + request[3:]
    if err in _ERESTART:
        err = E.EINTR
    elif err >= 512:
        err = E.EINVAL
    err = spec.errno_to_wire(err)
    head = bytearray(request[:16].ljust(16, b"\0"))
    head[2] = err & 0xFF
    struct.pack_into("=H", head, 4, 2)
    return bytes(head)


def send_failure_reply(request: bytes, err: int, dialect: Dialect | str) -> bytes:
    """pfkeyd's answer where the dialect's kernel fails the ``send()`` itself.

    A kernel tells the sender at once, through the failed system call; pfkeyd's
    client has already sent its datagram, so it gets this instead of silence: the
    16-byte base header alone, ``len`` 2, ``sadb_msg_errno`` = ``err`` (the errno
    the kernel's ``send()`` fails with) in the dialect's numbering.  ``version`` is
    2 and ``reserved`` 0 whatever the request said, so that any client can read it;
    ``type``, ``satype``, ``seq`` and ``pid`` are the request's, so that the client
    can match it (zeros where the datagram is too short to have them).
    """
    spec = _spec(dialect)
    head = bytearray(request[:16].ljust(16, b"\0"))
    head[0] = PF_KEY_V2
    head[2] = spec.errno_to_wire(err) & 0xFF
    struct.pack_into("=HH", head, 4, 2, 0)
    return bytes(head)


# ----------------------------------------------------------------------- decode


def decode(
    data: bytes,
    dialect: Dialect | str,
    *,
    request: bool = True,
    max_size: int | None = None,
) -> Message:
    """Decode one datagram.

    With ``request=True`` (a message a client sends to the kernel) every check of
    the module docstring applies.  With ``request=False`` (a message the kernel
    sends, read by a client) only the structural checks apply and any fault is
    reported with ``reply=False``.  ``max_size`` overrides the dialect's limit on
    the datagram size (FreeBSD: 2048 bytes; Linux: the socket's send buffer).
    """
    spec = _spec(dialect)
    if type(data) is not bytes:
        data = bytes(data)
    if spec.sockaddr_has_len:
        return _decode_freebsd(data, spec, request, FREEBSD_MAX_REQUEST if max_size is None else max_size)
    return _decode_linux(data, spec, request, max_size)


def _fail(message: str, err: int = E.EINVAL, *, reply: bool = False, data: bytes = b"") -> DecodeError:
    return DecodeError(message, errno=err, reply=reply, header=data[:16] if len(data) >= 16 else None)


def _freebsd_header(data: bytes, spec: DialectSpec, request: bool, max_size: int) -> tuple[int, ...]:
    """key_parse's base header checks; the header's eight fields."""
    size = len(data)
    if size < 16:
        raise _fail(f"message of {size} bytes is shorter than the base header")
    header: tuple[int, ...] = HEADER.unpack_from(data)
    version, mtype, units = header[0], header[1], header[4]
    if units * UNIT != size:
        raise _fail(f"sadb_msg_len {units} does not match the {size}-byte datagram", data=data)
    if version != PF_KEY_V2:
        raise _fail(f"unsupported PF_KEY version {version}", reply=request, data=data)
    if mtype > spec.msg_max:
        raise _fail(f"unknown message type {mtype}", reply=request, data=data)
    if request and size > max_size:
        raise _fail(f"message of {size} bytes exceeds {max_size}", E.ENOBUFS, data=data)
    return header


def _decode_freebsd(data: bytes, spec: DialectSpec, request: bool, max_size: int) -> Message:
    size = len(data)
    _version, mtype, err, satype, _units, reserved, seq, pid = _freebsd_header(data, spec, request, max_size)
    rules = _RULES[Dialect.FREEBSD]
    exts: list[Extension] = []
    seen: set[int] = set()
    deferred: DeferredError | None = None
    off = 16
    while off < size:
        elen_units, wire_type = _EXT_HDR.unpack_from(data, off)
        elen = elen_units * UNIT
        rule = rules.get(wire_type)
        if rule is None or rule.exttype == ExtType.X_KMPRIVATE:
            raise _fail(f"invalid extension type {wire_type}", data=data)
        et = rule.exttype
        if et in seen:
            raise _fail(f"duplicate extension {et.name}", data=data)
        if elen < rule.min_len or (rule.max_len and elen > rule.max_len):
            raise _fail(f"extension {et.name} has invalid length {elen}", data=data)
        if rule.check == "addr" or (
            rule.check == "ident" and struct.unpack_from("=H", data, off + 4)[0] == IdentType.X_ADDR
        ):
            base = 8 if rule.check == "addr" else 16
            # key_validate_ext reads sa_len even where it lies past the message.
            salen = data[off + base] if off + base < size else 0
            if elen < base + 1 or base + pad8(salen) != elen:
                raise _fail(f"extension {et.name}: length {elen} does not fit its sockaddr", data=data)
        if off + elen > size:
            raise _fail(f"extension {et.name} runs past the end of the message", E.ENOBUFS, data=data)
        seen.add(et)
        try:
            exts.append(rule.decoder.decode(et, data, off, elen, spec, satype))
        except DeferredError as exc:
            deferred = deferred or exc
            exts.append(UnknownExt(wire_type, data[off + 4 : off + elen]))
        off += elen

    msg = Message(mtype, satype, seq, pid, spec.errno_from_wire(err) if err else 0, reserved, tuple(exts))
    if request:
        check_request_generic(msg, data)
    if deferred is not None:
        raise _fail(str(deferred), deferred.errno, reply=request, data=data)
    return msg


_SA_MESSAGES = frozenset(
    {MsgType.GETSPI, MsgType.UPDATE, MsgType.ADD, MsgType.DELETE, MsgType.GET, MsgType.ACQUIRE, MsgType.EXPIRE}
)
_SPD_MESSAGES = frozenset(
    {
        MsgType.X_SPDADD,
        MsgType.X_SPDDELETE,
        MsgType.X_SPDGET,
        MsgType.X_SPDFLUSH,
        MsgType.X_SPDSETIDX,
        MsgType.X_SPDUPDATE,
        MsgType.X_SPDDELETE2,
    }
)
_SPDDUMP_SCOPES = frozenset({0, 1, 2, 4})


def check_request_generic(msg: Message, data: bytes = b"") -> None:
    """key_parse's checks after key_align: satype, then the SRC/DST pair.

    Raises DecodeError(reply=True).  decode() runs it for freebsd requests; the
    engine runs it for every request so both dialects get the same semantics.
    """
    _check_satype(msg.type, msg.satype, data)
    src, dst = msg.src, msg.dst
    if src is None or dst is None:
        return
    if src.proto != dst.proto:
        raise _fail("upper-layer protocols of SRC and DST differ", reply=True, data=data)
    s, d = src.addr, dst.addr
    if type(s) is SockAddr and type(d) is SockAddr:
        # The common case, decided without the general walk.
        v4 = isinstance(s.ip, IPv4Address)
        if v4 == isinstance(d.ip, IPv4Address):
            plen = 32 if v4 else 128
            if src.prefixlen > plen or dst.prefixlen > plen:
                raise _fail("prefix length exceeds the address size", reply=True, data=data)
            return
    _check_sockaddr_pair(src, dst, data)


def _check_satype(mtype: int, satype: int, data: bytes) -> None:
    """key_parse's satype check: what each satype may be sent with."""
    if mtype == MsgType.X_SPDDUMP:
        if satype not in _SPDDUMP_SCOPES:
            raise _fail(f"invalid SPDDUMP scope {satype}", reply=True, data=data)
    elif satype == SaType.UNSPEC:
        if mtype in _SA_MESSAGES:
            raise _fail("satype UNSPEC is not valid for this message", reply=True, data=data)
    elif satype in (SaType.AH, SaType.ESP, SaType.X_IPCOMP, SaType.X_TCPSIGNATURE):
        if mtype in _SPD_MESSAGES:
            raise _fail("an SA satype is not valid for a policy message", reply=True, data=data)
    elif satype in (SaType.RSVP, SaType.OSPFV2, SaType.RIPV2, SaType.MIP):
        raise _fail(f"satype {satype} is not supported", E.EOPNOTSUPP, reply=True, data=data)
    elif not (satype == 1 and mtype == MsgType.X_PROMISC):
        raise _fail(f"invalid satype {satype}", reply=True, data=data)


def _check_sockaddr_pair(src: Address, dst: Address, data: bytes) -> None:
    """The general SRC/DST walk: families, sockaddr lengths, prefix lengths."""
    sfam, slen = _family_and_len(src)
    dfam, dlen = _family_and_len(dst)
    if sfam != dfam:
        raise _fail("address families of SRC and DST differ", reply=True, data=data)
    if slen != dlen:
        raise _fail("sockaddr lengths of SRC and DST differ", reply=True, data=data)
    if sfam == 2:
        if slen != SOCKADDR_IN_LEN:
            raise _fail("AF_INET sockaddr of the wrong length", reply=True, data=data)
        plen = 32
    elif sfam == 28:
        if slen != SOCKADDR_IN6_LEN:
            raise _fail("AF_INET6 sockaddr of the wrong length", reply=True, data=data)
        plen = 128
    else:
        raise _fail(f"address family {sfam} is not supported", E.EAFNOSUPPORT, reply=True, data=data)
    if src.prefixlen > plen or dst.prefixlen > plen:
        raise _fail("prefix length exceeds the address size", reply=True, data=data)


def _family_and_len(a: Address) -> tuple[int, int]:
    sa = a.addr
    if isinstance(sa, RawSockAddr):
        return sa.family, 2 + len(sa.data)
    assert isinstance(sa, SockAddr)
    return (2, SOCKADDR_IN_LEN) if sa.ip.version == 4 else (28, SOCKADDR_IN6_LEN)


def _decode_linux(data: bytes, spec: DialectSpec, request: bool, max_size: int | None) -> Message:
    size = len(data)
    if max_size is not None and size > max_size:
        raise _fail(f"message of {size} bytes exceeds {max_size}", E.EMSGSIZE, data=data)
    if size < 16:
        raise _fail(f"message of {size} bytes is shorter than the base header", E.EMSGSIZE)
    version, mtype, err, satype, units, reserved, seq, pid = HEADER.unpack_from(data)
    if version != PF_KEY_V2:
        raise _fail(f"unsupported PF_KEY version {version}", data=data)
    if request and (reserved != 0 or mtype == MsgType.RESERVED or mtype > spec.msg_max):
        raise _fail("invalid base header (reserved field or message type)", data=data)
    if units != size // UNIT or units < 2 or (not request and size % UNIT):
        raise _fail(f"sadb_msg_len {units} does not match the {size}-byte datagram", E.EMSGSIZE, data=data)

    rules = _RULES[Dialect.LINUX]
    exts: list[Extension] = []
    seen: set[int] = set()
    deferred: DeferredError | None = None
    off = 16
    while off < size:
        if size - off < 4:
            raise _fail("truncated extension header", reply=request, data=data)
        elen_units, wire_type = _EXT_HDR.unpack_from(data, off)
        elen = elen_units * UNIT
        if elen < UNIT or elen > size - off or wire_type == 0:
            raise _fail(f"extension type {wire_type} has invalid length {elen}", reply=request, data=data)
        if wire_type > LINUX_EXT_MAX:
            exts.append(UnknownExt(wire_type, data[off + 4 : off + elen]))
            off += elen
            continue
        rule = rules[wire_type]
        et = rule.exttype
        if elen < rule.min_len or et in seen:
            raise _fail(f"extension {et.name} is duplicated or too short", reply=request, data=data)
        if rule.check:
            problem = _linux_verify(rule.check, data, off, elen)
            if problem:
                raise _fail(f"extension {et.name}: {problem}", reply=request, data=data)
        seen.add(et)
        try:
            exts.append(rule.decoder.decode(et, data, off, elen, spec, satype))
        except DeferredError as exc:
            deferred = deferred or exc
            exts.append(UnknownExt(wire_type, data[off + 4 : off + elen]))
        off += elen

    msg = Message(mtype, satype, seq, pid, spec.errno_from_wire(err) if err else 0, reserved, tuple(exts))
    if deferred is not None:
        raise _fail(str(deferred), deferred.errno, reply=request, data=data)
    return msg


def _linux_verify(check: str, data: bytes, off: int, elen: int) -> str | None:
    """af_key.c verify_address_len / verify_key_len / verify_sec_ctx_len."""
    if check == "addr":
        if elen < 16:  # DIV_ROUND_UP(8 + 2, 8) units
            return "no room for a sockaddr"
        family = struct.unpack_from("=H", data, off + 8)[0]
        prefixlen = data[off + 5]
        if family == 2 and elen == 24 and prefixlen <= 32:
            return None
        if family == 10 and elen == 40 and prefixlen <= 128:
            return None
        return "address length, family or prefix length is invalid"
    if check == "key":
        bits = struct.unpack_from("=H", data, off + 4)[0]
        if elen < 8 + (bits + 7) // 8:
            return f"{bits}-bit key does not fit"
        return None
    if check == "secctx":
        ctx_len = struct.unpack_from("=H", data, off + 6)[0]
        if ctx_len > 4096 or elen != pad8(8 + ctx_len):
            return "security context length is inconsistent"
    return None
