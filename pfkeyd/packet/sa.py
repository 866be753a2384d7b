"""What a transform needs to know about an SA: :class:`TransformSA`, built from the SAD's record.

Theory of operation
-------------------
:func:`from_sad` turns a :class:`pfkeyd.sad.SecAssoc` and the current knobs into a
:class:`TransformSA`: the protocol, SPI, mode and addresses, the flags that change
packets (OLD, IV4B, CYCSEQ, RAWCPI, PRAND/PZERO, ESN), the replay window in
packets, NAT-T, and the keyed :mod:`~pfkeyd.packet.crypto` objects.  The key bytes
themselves stay inside those objects.  The knobs that act on packets are copied
in; when a knob changes the shell builds new TransformSAs (cheap, the keyed
objects can be kept with :meth:`TransformSA.with_knobs`).

:func:`check` is the ADD/UPDATE-time hook: the engine calls it after its own key
checks, so an SA whose algorithms this library (or its ``cryptography``) cannot
run is refused with the error the dialect's kernel gives for an algorithm it does
not implement (FreeBSD EINVAL, Linux ENOSYS), never when a packet arrives.
"""

from __future__ import annotations

from dataclasses import field, replace
from ipaddress import IPv4Address, IPv6Address

from pfkeyd.errors import InvalidArgument, NotImplementedBySystem, PfkeyError
from pfkeyd.knobs import Knobs
from pfkeyd.packet import crypto
from pfkeyd.record import record
from pfkeyd.sad import NatT, SecAssoc
from pfkeyd.wire import Key
from pfkeyd.wire.constants import X_EXT_OLD, AuthAlg, IpProto, Mode, SaFlag, SaType
from pfkeyd.wire.dialect import Dialect

__all__ = ["TransformSA", "PadKind", "from_sad", "check", "window_packets"]

_ESP, _AH, _IPCOMP = int(IpProto.ESP), int(IpProto.AH), int(IpProto.IPCOMP)

#: The error a dialect's kernel answers for an algorithm it cannot run (FreeBSD's
#: esp_init/ah_init0 fail crypto_newsession with EINVAL; Linux's af_key ENOSYS).
_UNSUPPORTED: dict[Dialect, type[PfkeyError]] = {
    Dialect.FREEBSD: InvalidArgument,
    Dialect.LINUX: NotImplementedBySystem,
}

_ESN, _CYCSEQ = int(SaFlag.X_ESN), int(SaFlag.X_EXT_CYCSEQ)
_PRAND, _PZERO = int(SaFlag.X_EXT_PRAND), int(SaFlag.X_EXT_PZERO)

_SATYPE_PROTO = {int(SaType.ESP): _ESP, int(SaType.AH): _AH, int(SaType.X_IPCOMP): _IPCOMP}


class PadKind:
    """ESP pad contents, from the SA flags (FreeBSD SADB_X_EXT_PMASK)."""

    SEQ = 0  # 1, 2, 3, ... (SADB_X_EXT_PSEQ, the default)
    RANDOM = 1  # SADB_X_EXT_PRAND
    ZERO = 2  # SADB_X_EXT_PZERO


@record
class TransformSA:
    """One SA as the transforms see it (immutable; traffic state is :class:`SaRuntime`).

    ``src``/``dst`` are the SA's addresses as raw bytes (4 or 16: the outer header of
    tunnel mode); ``mode`` a :class:`~pfkeyd.wire.constants.Mode`; ``window`` the
    replay window in packets (0: none); ``cipher``/``mac`` the keyed transforms (ESP:
    a cipher, and a MAC unless the cipher is combined-mode or there is no
    authentication; AH: a MAC; IPComp: neither).
    """

    proto: int
    spi: int
    mode: int
    src: bytes
    dst: bytes
    flags: int = 0
    window: int = 0
    enc_id: int = 0
    auth_id: int = 0
    cipher: crypto.Cipher | None = None
    mac: crypto.Mac | None = None
    natt: NatT | None = None
    reqid: int = 0
    ctr_compatibility: bool = True
    ah_cleartos: bool = True
    ah_offsetmask: int = 0
    # Derived once from ``flags`` (the transforms read them per packet; IntFlag
    # arithmetic is slow, bench/README.md): ESN, OLD (RFC 1827/1829 framing: no sequence
    # number, no replay, no ICV), CYCSEQ, and the pad contents (:class:`PadKind`).
    esn: bool = field(init=False, compare=False)
    old: bool = field(init=False, compare=False)
    cycseq: bool = field(init=False, compare=False)
    pad_kind: int = field(init=False, compare=False)
    #: A transform's per-SA precomputation (esp.py fills it on first use).
    plan: object = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        flags = int(self.flags)
        put = object.__setattr__
        put(self, "flags", flags)
        put(self, "esn", bool(flags & _ESN))
        put(self, "old", bool(flags & X_EXT_OLD))
        put(self, "cycseq", bool(flags & _CYCSEQ))
        put(self, "pad_kind", PadKind.RANDOM if flags & _PRAND else PadKind.ZERO if flags & _PZERO else PadKind.SEQ)
        put(self, "plan", None)

    @property
    def tunnel(self) -> bool:
        return self.mode == Mode.TUNNEL

    @property
    def cpi(self) -> int:
        """The IPComp CPI on the wire: the SPI's low 16 bits (FreeBSD ``htons((u16)ntohl(spi))``)."""
        return self.spi & 0xFFFF

    @property
    def icv_len(self) -> int:
        """The ICV the packet carries: the combined mode's tag, or the MAC's."""
        if self.cipher is not None and self.cipher.aead:
            return self.cipher.icv
        return self.mac.icv if self.mac is not None else 0

    def with_knobs(self, knobs: Knobs) -> TransformSA:
        """A copy that follows ``knobs``; the keyed objects are shared."""
        return replace(
            self,
            ctr_compatibility=bool(knobs.ctr_compatibility),
            ah_cleartos=bool(knobs.ah_cleartos),
            ah_offsetmask=knobs.ah_offsetmask,
        )


def window_packets(sa: SecAssoc) -> int:
    """The SA's replay window in packets: SA_REPLAY's when given, else ``sadb_sa_replay`` bytes x 8."""
    return sa.replay_window if sa.replay_window else sa.replay * 8


def _raw(addr: IPv4Address | IPv6Address) -> bytes:
    return addr.packed


def _key(key: Key | None) -> bytes:
    return key.data if key is not None else b""


def _build(
    proto: int, auth: int, encrypt: int, key_auth: bytes, key_enc: bytes, flags: int, ctr_compatibility: bool
) -> tuple[crypto.Cipher | None, crypto.Mac | None]:
    """The keyed objects of an SA; raises :class:`crypto.Unavailable`."""
    if proto == _IPCOMP:
        return None, None
    if proto == _AH:
        return None, crypto.mac(auth, key_auth)
    if proto != _ESP:
        raise crypto.Unavailable(f"IP protocol {proto} has no packet transform")
    c = crypto.cipher(encrypt, key_enc, iv4b=bool(flags & SaFlag.X_EXT_IV4B))
    if c.aead or auth == AuthAlg.NONE:
        # A combined mode carries its own ICV; FreeBSD records GMAC/Poly1305 in auth.
        return c, None
    return c, crypto.mac(auth, key_auth)


def from_sad(sa: SecAssoc, knobs: Knobs) -> TransformSA:
    """The :class:`TransformSA` of an SA of the SAD (ESP, AH or IPComp).

    Raises the SA's dialect-neutral :class:`~pfkeyd.errors.InvalidArgument` when the
    library cannot run it; :func:`check` refused such SAs at ADD, so for an SA of
    the SAD this does not happen.
    """
    proto = _SATYPE_PROTO.get(int(sa.satype))
    if proto is None:
        raise InvalidArgument(f"satype {sa.satype} has no packet transform")
    ctr = bool(knobs.ctr_compatibility)
    try:
        c, m = _build(proto, sa.auth, sa.encrypt, _key(sa.key_auth), _key(sa.key_encrypt), sa.flags, ctr)
    except crypto.Unavailable as e:
        raise InvalidArgument(str(e)) from e
    idx = sa.index
    return TransformSA(
        proto,
        sa.spi,
        idx.mode,
        _raw(idx.src.ip),
        _raw(idx.dst.ip),
        sa.flags,
        0 if sa.flags & X_EXT_OLD else window_packets(sa),
        int(sa.encrypt),
        int(sa.auth),
        c,
        m,
        sa.natt,
        idx.reqid,
        ctr,
        bool(knobs.ah_cleartos),
        knobs.ah_offsetmask,
    )


_CHECKED: set[tuple[int, int, int, int, int, int]] = set()


def check(
    proto: int,
    auth: int,
    encrypt: int,
    key_auth: Key | None,
    key_enc: Key | None,
    flags: int,
    dialect: Dialect | str = Dialect.FREEBSD,
) -> None:
    """Refuse an SA of IP protocol ``proto`` whose transform the packet library cannot build.

    Called by the engine at ADD and at the UPDATE that completes a LARVAL SA, after
    :func:`pfkeyd.algorithms.check_sa`.  Raises the dialect's "unsupported" error
    (FreeBSD :class:`~pfkeyd.errors.InvalidArgument`, EINVAL; Linux
    :class:`~pfkeyd.errors.NotImplementedBySystem`, ENOSYS) naming the algorithm and
    why.  Protocols without a packet transform (TCP-MD5) are not checked.
    """
    if proto not in (_ESP, _AH, _IPCOMP):
        return
    ka, ke = _key(key_auth), _key(key_enc)
    memo = (proto, int(auth), int(encrypt), len(ka), len(ke), int(flags))
    if memo in _CHECKED:
        return  # what a build needs is a function of the ids, lengths and flags
    try:
        _build(proto, auth, encrypt, ka, ke, flags, True)
    except crypto.Unavailable as e:
        d = Dialect(dialect) if not isinstance(dialect, Dialect) else dialect
        raise _UNSUPPORTED[d](f"the packet path cannot run this SA: {e}") from e
    if len(_CHECKED) >= 4096:
        _CHECKED.clear()
    _CHECKED.add(memo)
