"""Hypothesis strategies for PF_KEY v2 values, one family per wire dialect.

Every strategy is derived from the field types of the classes in
:mod:`pfkeyd.wire.ext` (a ``u8`` is ``0..255``, a ``u32`` is ``0..2**32-1``) and
from the dialect's codebooks: a coded field (algorithm id, mode, direction) is
either a canonical value the dialect carries or ``UNKNOWN | n`` for a wire number
``n`` the dialect does not define.  Only values that survive
``decode(encode(m), dialect, request=False) == m`` are generated, so the model's
normalisations are respected here and nowhere else:

* reserved fields are not represented;
* ``Key.data`` is ``ceil(bits / 8)`` bytes;
* ``Ident.data`` and ``Sens.bitmaps`` do not end in NUL bytes (the decoder strips
  the padding), except that a freebsd identity of type X_ADDR holds a whole
  sockaddr: exactly ``sa_len`` bytes, its first byte;
* linux ipsecrequests carry endpoints exactly in tunnel mode, freebsd ones
  optionally; the two endpoints have the same family and length;
* a freebsd ipsecrequest reqid fits 16 bits; ``Policy.scope`` is 0 in linux;
* linux addresses are AF_INET/AF_INET6 with a prefix within the family; freebsd
  addresses may be of any family (:class:`RawSockAddr`) that does not look like
  AF_INET/AF_INET6;
* ``Filter`` has family 4 or 6 with matching address types (or an unknown wire
  family n, tagged UNKNOWN | n or 0x10000 | n, with the addresses as 16 bytes);
* :class:`UnknownExt` exists only in linux, numbered above 26, with a body that is
  already padded;
* an IPComp SA (and its proposals) carries compression ids untranslated.

:func:`messages` draws whole messages of any type with a random set of distinct
extensions; :func:`requests` draws messages that a kernel of the dialect accepts
as a request (they pass ``decode(..., request=True)``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Final, TypeAlias, get_args

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from pfkeyd.wire import (
    UNKNOWN,
    Address,
    Alg,
    Codebook,
    Comb,
    Dialect,
    DialectSpec,
    ExtType,
    Filter,
    Ident,
    IdentType,
    IpProto,
    IpsecRequest,
    Key,
    KmAddress,
    KmPrivate,
    Lifetime,
    Message,
    Mode,
    MsgType,
    NatTFrag,
    NatTPort,
    NatTTypeExt,
    Policy,
    PolicyScope,
    PolicyType,
    Prop,
    RawSockAddr,
    Sa,
    Sa2,
    SaReplay,
    SaState,
    SaType,
    SecCtx,
    Sens,
    SockAddr,
    SpiRange,
    Supported,
    UnknownExt,
    encode,
)
from pfkeyd.wire.ext import DECODERS, Extension
from pfkeyd.wire.sockaddr import encode_sockaddr

__all__ = [
    "DIALECTS",
    "UNKNOWN_EXT",
    "ExtKind",
    "EXTENSION_CLASSES",
    "ext_kinds",
    "ext_class",
    "msg_types",
    "coded",
    "sockaddrs",
    "extensions",
    "messages",
    "requests",
    "request_satypes",
]

DIALECTS: Final = ("freebsd", "linux")

#: The kind of an extension a dialect does not define (linux skips types above 26).
UNKNOWN_EXT: Final = "unknown"
ExtKind: TypeAlias = ExtType | str

#: Every class that :data:`pfkeyd.wire.ext.Extension` names.
EXTENSION_CLASSES: Final = frozenset(get_args(Extension))

#: The highest extension number linux parses; anything above is skipped.
_LINUX_EXT_MAX = 26

#: Message types whose satype FreeBSD's key_parse checks (reference §1.3 step 5).
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
_SA_SATYPES = (SaType.AH, SaType.ESP, SaType.X_IPCOMP, SaType.X_TCPSIGNATURE)


def _uint(bits: int) -> SearchStrategy[int]:
    return st.integers(0, (1 << bits) - 1)


U8, U16, U32, U64 = _uint(8), _uint(16), _uint(32), _uint(64)


def _spec(dialect: str) -> DialectSpec:
    return Dialect(dialect).spec


def _favour(known: Sequence[int], field: SearchStrategy[int]) -> SearchStrategy[int]:
    """The named values of a field more often than the rest of its range."""
    return st.one_of(st.sampled_from(sorted(int(v) for v in known)), field)


_PROTO = _favour(list(IpProto), U8)

# ------------------------------------------------------------------ the tables


@functools.cache
def ext_kinds(dialect: str) -> tuple[ExtKind, ...]:
    """Every extension kind the dialect carries: its defined types (FreeBSD refuses
    KMPRIVATE, so freebsd does not carry it) and, in linux, unknown types."""
    spec = _spec(dialect)
    kinds: list[ExtKind] = [e for e in ExtType if e in spec.ext]
    if spec.sockaddr_has_len:
        kinds.remove(ExtType.X_KMPRIVATE)
    else:
        kinds.append(UNKNOWN_EXT)
    return tuple(kinds)


def ext_class(kind: ExtKind) -> type:
    """The class that represents an extension of this kind."""
    return DECODERS[kind] if isinstance(kind, ExtType) else UnknownExt


def msg_types(dialect: str) -> tuple[int, ...]:
    """Every message type number the dialect carries (0..SADB_MAX)."""
    return tuple(range(_spec(dialect).msg_max + 1))


def coded(book: Codebook) -> SearchStrategy[int]:
    """A canonical value of the codebook or UNKNOWN | n for a wire number it lacks."""
    return _coded(book.dialect, book.what)


@functools.cache
def _coded(dialect: str, what: str) -> SearchStrategy[int]:
    book = next(b for b in _books(_spec(dialect)) if b.what == what)
    known = sorted(book.to_wire)
    unknown = [UNKNOWN | n for n in range(book.width + 1) if n not in book.from_wire]
    return st.one_of(st.sampled_from(known), st.sampled_from(unknown))


def _books(spec: DialectSpec) -> tuple[Codebook, ...]:
    return (spec.ext, spec.auth, spec.enc, spec.mode, spec.direction)


# -------------------------------------------------------------------- sockaddrs


@functools.cache
def _sockaddr(version: int) -> SearchStrategy[SockAddr]:
    if version == 4:
        return st.builds(SockAddr, st.ip_addresses(v=4), U16)
    return st.builds(SockAddr, st.ip_addresses(v=6), U16, U32, U32)


def _raw_sockaddr(spec: DialectSpec, family: int | None = None, size: int | None = None) -> SearchStrategy[RawSockAddr]:
    """A BSD sockaddr of a family PF_KEY does not serve (sa_len 2..255)."""
    fam = U8 if family is None else st.just(family)
    data = st.binary(max_size=253) if size is None else st.binary(min_size=size, max_size=size)
    # sa_len 16 with AF_INET (28 with AF_INET6) is a sockaddr_in(6): not raw.
    clash = {(spec.af_inet, 14), (spec.af_inet6, 26)}
    return st.builds(RawSockAddr, fam, data).filter(lambda sa: (sa.family, len(sa.data)) not in clash)


@functools.cache
def sockaddrs(dialect: str) -> SearchStrategy[SockAddr | RawSockAddr]:
    """Any sockaddr the dialect can carry and read back."""
    spec = _spec(dialect)
    inet = st.one_of(_sockaddr(4), _sockaddr(6))
    return st.one_of(inet, _raw_sockaddr(spec)) if spec.sockaddr_has_len else inet


@st.composite
def _sockaddr_pair(draw: st.DrawFn, spec: DialectSpec) -> tuple[SockAddr | RawSockAddr, SockAddr | RawSockAddr]:
    """Two sockaddrs of one family and length (ipsecrequest endpoints)."""
    kinds = ["v4", "v6", "raw"] if spec.sockaddr_has_len else ["v4", "v6"]
    kind = draw(st.sampled_from(kinds))
    if kind == "raw":
        first = draw(_raw_sockaddr(spec, size=draw(st.integers(0, 64))))
        second = draw(_raw_sockaddr(spec, first.family, len(first.data)))
        return first, second
    version = 4 if kind == "v4" else 6
    return draw(_sockaddr(version)), draw(_sockaddr(version))


# ------------------------------------------------------------------ extensions


def _no_trailing_nul(max_size: int) -> SearchStrategy[bytes]:
    return st.binary(max_size=max_size).map(lambda b: b.rstrip(b"\0"))


def _sa(spec: DialectSpec, satype: int) -> SearchStrategy[Sa]:
    encrypt = U8 if satype == SaType.X_IPCOMP else coded(spec.enc)
    return st.builds(Sa, U32, U8, _favour(list(SaState), U8), coded(spec.auth), encrypt, U32)


def _lifetime(kind: ExtType) -> SearchStrategy[Lifetime]:
    return st.builds(Lifetime, st.just(kind), U32, U64, U64, U64)


def _address(spec: DialectSpec, kind: ExtType) -> SearchStrategy[Address]:
    proto = _PROTO
    if spec.sockaddr_has_len:
        return st.builds(Address, st.just(kind), sockaddrs(spec.name), U8, proto)
    # Linux accepts only AF_INET/AF_INET6 with a prefix within the address.
    return st.one_of(
        st.builds(Address, st.just(kind), _sockaddr(4), st.integers(0, 32), proto),
        st.builds(Address, st.just(kind), _sockaddr(6), st.integers(0, 128), proto),
    )


@st.composite
def _key(draw: st.DrawFn, kind: ExtType) -> Key:
    bits = draw(st.one_of(st.integers(0, 2048), st.integers(0xFFF0, 0xFFFF), U16))
    size = (bits + 7) // 8
    if size <= 256:
        data = draw(st.binary(min_size=size, max_size=size))
    else:  # a long key: a drawn pattern, repeated (hypothesis dislikes huge draws)
        data = (draw(st.binary(min_size=1, max_size=16)) * size)[:size]
    return Key(kind, data, bits)


@st.composite
def _bsd_addr_ident_data(draw: st.DrawFn) -> bytes:
    """The sockaddr after a FreeBSD X_ADDR identity header: exactly sa_len bytes, kept
    whole by the decoder (its zero bytes are data, not padding)."""
    if draw(st.booleans()):
        return encode_sockaddr(draw(sockaddrs("freebsd")), _spec("freebsd"))
    salen = draw(st.integers(1, 255))
    return bytes([salen]) + draw(st.binary(min_size=salen - 1, max_size=salen - 1))


def _ident(spec: DialectSpec, kind: ExtType) -> SearchStrategy[Ident]:
    idtype = _favour(list(IdentType), U16)
    if not spec.sockaddr_has_len:  # Linux ignores identities: any type, any string
        return st.builds(Ident, st.just(kind), idtype, _no_trailing_nul(96), U64)
    plain = st.builds(Ident, st.just(kind), idtype.filter(lambda t: t != IdentType.X_ADDR), _no_trailing_nul(96), U64)
    addr = st.builds(Ident, st.just(kind), st.just(IdentType.X_ADDR), _bsd_addr_ident_data(), U64)
    return st.one_of(plain, addr)


def _sens() -> SearchStrategy[Sens]:
    return st.builds(Sens, U32, U8, U8, U8, U8, _no_trailing_nul(64))


def _comb(spec: DialectSpec, satype: int) -> SearchStrategy[Comb]:
    encrypt = U8 if satype == SaType.X_IPCOMP else coded(spec.enc)
    return st.builds(Comb, coded(spec.auth), encrypt, U16, U16, U16, U16, U16, U32, U32, U64, U64, U64, U64, U64, U64)


def _prop(spec: DialectSpec, satype: int) -> SearchStrategy[Prop]:
    return st.builds(Prop, U8, st.lists(_comb(spec, satype), max_size=4).map(tuple))


def _supported(spec: DialectSpec, kind: ExtType) -> SearchStrategy[Supported]:
    book = spec.auth if kind == ExtType.SUPPORTED_AUTH else spec.enc
    alg = st.builds(Alg, coded(book), U8, U16, U16)
    return st.builds(Supported, st.just(kind), st.lists(alg, max_size=8).map(tuple))


def _ipsecrequest(spec: DialectSpec) -> SearchStrategy[IpsecRequest]:
    modes = coded(spec.mode)
    protos = _favour([IpProto.ESP, IpProto.AH, IpProto.IPCOMP], U16)
    reqids = st.integers(0, spec.reqid_max)
    pairs = _sockaddr_pair(spec)

    @st.composite
    def request(draw: st.DrawFn) -> IpsecRequest:
        mode = draw(modes)
        proto, level, reqid = draw(protos), draw(U8), draw(reqids)
        if spec.sockaddr_has_len:
            with_endpoints = draw(st.booleans())
        else:  # Linux reads endpoints in tunnel mode only, and requires them there
            with_endpoints = mode == Mode.TUNNEL
        src, dst = draw(pairs) if with_endpoints else (None, None)
        return IpsecRequest(proto, mode, level, reqid, src, dst)

    return request()


def _policy(spec: DialectSpec) -> SearchStrategy[Policy]:
    scope = _favour(list(PolicyScope), U8) if spec.policy_has_scope else st.just(0)
    return st.builds(
        Policy,
        _favour(list(PolicyType), U16),
        coded(spec.direction),
        U32,
        U32,
        scope,
        st.lists(_ipsecrequest(spec), max_size=4).map(tuple),
    )


def _filter(spec: DialectSpec) -> SearchStrategy[Filter]:
    v4 = st.builds(Filter, st.just(4), st.ip_addresses(v=4), st.ip_addresses(v=4), U8, U8)
    v6 = st.builds(Filter, st.just(6), st.ip_addresses(v=6), st.ip_addresses(v=6), U8, U8)
    # An unknown wire family n decodes to UNKNOWN | n (0x10000 | n when n >= 0x8000)
    # with the raw 16-byte addresses.
    family = U16.filter(lambda n: n not in (spec.af_inet, spec.af_inet6))
    raw16 = st.binary(min_size=16, max_size=16)
    tagged = family.map(lambda n: UNKNOWN | n if n < UNKNOWN else 0x10000 | n)
    other = st.builds(Filter, tagged, raw16, raw16, U8, U8)
    return st.one_of(v4, v6, other)


def _unknown_ext() -> SearchStrategy[UnknownExt]:
    # The body is kept as read, padding included: 4 + 8k bytes.
    body = st.integers(0, 8).flatmap(lambda k: st.binary(min_size=4 + 8 * k, max_size=4 + 8 * k))
    return st.builds(UnknownExt, st.integers(_LINUX_EXT_MAX + 1, 0xFFFF), body)


def _sec_ctx() -> SearchStrategy[SecCtx]:
    ctx = st.one_of(st.binary(max_size=64), st.binary(min_size=4000, max_size=4096))
    return st.builds(SecCtx, U8, U8, ctx)


_Builder = Callable[[DialectSpec, ExtType, int], SearchStrategy[Extension]]

#: extension class -> how to draw one (dialect, extension type, satype).
_BUILDERS: dict[type, _Builder] = {
    Sa: lambda spec, kind, satype: _sa(spec, satype),
    Lifetime: lambda spec, kind, satype: _lifetime(kind),
    Address: lambda spec, kind, satype: _address(spec, kind),
    Key: lambda spec, kind, satype: _key(kind),
    Ident: lambda spec, kind, satype: _ident(spec, kind),
    Sens: lambda spec, kind, satype: _sens(),
    Prop: lambda spec, kind, satype: _prop(spec, satype),
    Supported: lambda spec, kind, satype: _supported(spec, kind),
    SpiRange: lambda spec, kind, satype: st.builds(SpiRange, U32, U32),
    KmPrivate: lambda spec, kind, satype: st.just(KmPrivate()),
    Policy: lambda spec, kind, satype: _policy(spec),
    Sa2: lambda spec, kind, satype: st.builds(Sa2, coded(spec.mode), U32, U32),
    NatTTypeExt: lambda spec, kind, satype: st.builds(NatTTypeExt, U8),
    NatTPort: lambda spec, kind, satype: st.builds(NatTPort, st.just(kind), U16),
    NatTFrag: lambda spec, kind, satype: st.builds(NatTFrag, U16),
    SaReplay: lambda spec, kind, satype: st.builds(SaReplay, U32),
    SecCtx: lambda spec, kind, satype: _sec_ctx(),
    KmAddress: lambda spec, kind, satype: st.builds(KmAddress, sockaddrs(spec.name), sockaddrs(spec.name)),
    Filter: lambda spec, kind, satype: _filter(spec),
    UnknownExt: lambda spec, kind, satype: _unknown_ext(),
}


def extensions(dialect: str, kind: ExtKind, satype: int = 0) -> SearchStrategy[Extension]:
    """One extension of ``kind`` that ``dialect`` carries, for a message of ``satype``."""
    # Only IPComp changes what an extension carries (raw compression ids).
    return _extensions(dialect, kind, SaType.X_IPCOMP if satype == SaType.X_IPCOMP else SaType.UNSPEC)


@functools.cache
def _extensions(dialect: str, kind: ExtKind, satype: int) -> SearchStrategy[Extension]:
    # Cached: building and validating a strategy costs more than drawing from it.
    if kind not in ext_kinds(dialect):
        msg = f"the {dialect} dialect does not carry extension {kind!r}"
        raise ValueError(msg)
    spec = _spec(dialect)
    exttype = kind if isinstance(kind, ExtType) else ExtType.RESERVED
    return _BUILDERS[ext_class(kind)](spec, exttype, satype)


# -------------------------------------------------------------------- messages


def _satypes(spec: DialectSpec, mtype: int) -> SearchStrategy[int]:
    return _satypes_of(spec.name, mtype == MsgType.X_SPDDUMP)


@functools.cache
def _satypes_of(dialect: str, spddump: bool) -> SearchStrategy[int]:
    spec = _spec(dialect)
    satype = _favour(list(SaType), U8)
    if SaType.X_TCPSIGNATURE in spec.satypes or spddump:
        return satype
    # Linux has no TCPSIGNATURE: the encoder refuses it outside SPDDUMP (a scope mask there).
    return satype.filter(lambda s: s != SaType.X_TCPSIGNATURE)


@functools.cache
def _kind_lists(dialect: str, max_exts: int) -> SearchStrategy[list[ExtKind]]:
    return st.lists(st.sampled_from(ext_kinds(dialect)), unique=True, max_size=max_exts)


@st.composite
def _extension_set(
    draw: st.DrawFn, dialect: str, satype: int, require: ExtKind | None, max_exts: int
) -> tuple[Extension, ...]:
    kinds = draw(_kind_lists(dialect, max_exts))
    if require is not None and require not in kinds:
        kinds.insert(draw(st.integers(0, len(kinds))), require)
    return tuple(draw(extensions(dialect, kind, satype)) for kind in kinds)


@st.composite
def messages(
    draw: st.DrawFn,
    dialect: str,
    msg_type: int | None = None,
    require: ExtKind | None = None,
    max_exts: int = 6,
) -> Message:
    """A message of ``msg_type`` (any type of the dialect if None) with a random set of
    distinct extensions in random order, ``require`` among them if given."""
    spec = _spec(dialect)
    mtype = draw(st.integers(0, spec.msg_max)) if msg_type is None else msg_type
    satype = draw(_satypes(spec, mtype))
    exts = draw(_extension_set(dialect, satype, require, max_exts))
    return Message(mtype, satype, draw(U32), draw(U32), draw(U8), draw(U16), exts)


def request_satypes(dialect: str, mtype: int) -> tuple[int, ...] | None:
    """The satypes FreeBSD's key_parse accepts for ``mtype`` (reference §1.3 step 5);
    None for linux, which checks satypes per handler, not in the parser."""
    if not _spec(dialect).sockaddr_has_len:
        return None
    if mtype == MsgType.X_SPDDUMP:
        return (0, 1, 2, 4)  # a scope mask
    if mtype in _SA_MESSAGES:
        return _SA_SATYPES
    if mtype in _SPD_MESSAGES:
        return (SaType.UNSPEC,)
    extra = (1,) if mtype == MsgType.X_PROMISC else ()
    return (SaType.UNSPEC, *_SA_SATYPES, *extra)


def _request_satypes(spec: DialectSpec, mtype: int) -> SearchStrategy[int]:
    accepted = request_satypes(spec.name, mtype)
    return _satypes(spec, mtype) if accepted is None else st.sampled_from(accepted)


@st.composite
def _request_endpoints(draw: st.DrawFn) -> tuple[Address, Address]:
    """SRC and DST that FreeBSD's key_parse accepts together: one proto, one family, a
    prefix within the family (reference §1.3 step 6)."""
    version = draw(st.sampled_from([4, 6]))
    proto = draw(_PROTO)
    src, dst = draw(_sockaddr(version)), draw(_sockaddr(version))
    top = 32 if version == 4 else 128
    return (
        Address(ExtType.ADDRESS_SRC, src, draw(st.integers(0, top)), proto),
        Address(ExtType.ADDRESS_DST, dst, draw(st.integers(0, top)), proto),
    )


_ENDPOINTS = _request_endpoints()

#: FreeBSD refuses a request longer than MCLBYTES (reference §1.1).
_FREEBSD_MAX_REQUEST = 2048


@st.composite
def requests(draw: st.DrawFn, dialect: str, msg_type: int | None = None, max_exts: int = 5) -> Message:
    """A message that a kernel of ``dialect`` accepts as a request as far as the
    parser goes (version, type, satype, SRC/DST pair, size, reserved)."""
    spec = _spec(dialect)
    low = 0 if spec.sockaddr_has_len else 1  # Linux refuses type 0 in the header
    mtype = draw(st.integers(low, spec.msg_max)) if msg_type is None else msg_type
    satype = draw(_request_satypes(spec, mtype))
    exts = list(draw(_extension_set(dialect, satype, None, max_exts)))
    if spec.sockaddr_has_len:
        src, dst = draw(_ENDPOINTS)
        for i, ext in enumerate(exts):
            if ext.exttype == ExtType.ADDRESS_SRC:
                exts[i] = src
            elif ext.exttype == ExtType.ADDRESS_DST:
                exts[i] = dst
    msg = Message(mtype, satype, draw(U32), draw(U32), 0, 0, tuple(exts))
    if spec.sockaddr_has_len:
        while len(encode(msg, dialect)) > _FREEBSD_MAX_REQUEST:  # drop extensions until it fits
            msg = msg.replace(exts=msg.exts[:-1])
    return msg
