"""The one algorithm table of the project, and the pure functions that read it.

Theory of operation
-------------------
:data:`ALGORITHMS` holds one :class:`Algorithm` per member of
:class:`~pfkeyd.wire.constants.AuthAlg`, :class:`~pfkeyd.wire.constants.EncAlg` and
:class:`~pfkeyd.wire.constants.CompAlg` (the ``NONE`` members included, so that every
number a message can carry has a row).  A row says what the algorithm *is* (RFC,
IV, ICV, block and salt sizes, AEAD or not, the setkey spellings) and, in one
:class:`Support` per dialect, how each reference system treats it:

``defined``
    the dialect's ``<net/pfkeyv2.h>`` names the number, so the codec can carry it
    (checked against the codebooks of :mod:`pfkeyd.wire.dialect` by the tests);
``register``
    the ``sadb_alg`` the kernel lists in its SADB_REGISTER reply, or None;
``keys``, ``keyless``
    the key lengths (bytes) the kernel accepts at ADD/UPDATE, None when it refuses
    the algorithm; whether a missing key extension is accepted;
``setkey``, ``dump``
    the spellings that dialect's setkey(8) accepts after ``-A``/``-E``/``-C`` and the
    word its dumps print.

"freebsd" is the FreeBSD 14/15 kernel and setkey (reference pfkey-protocol.md §5.4,
§5.6, §5.7; setkey-language.md §3).  The FreeBSD 12-era algorithms (DES, 3DES,
Blowfish, CAST, Camellia, HMAC-MD5, HMAC-RIPEMD-160, keyed MD5/SHA1) are defined
by its header but neither advertised nor accepted.  "linux" is Linux ``af_key`` with
the ``xfrm_algo.c`` descriptors and ipsec-tools 0.8.2 setkey built on Linux.

Everything below is a function of the table: the SUPPORTED_AUTH/SUPPORTED_ENCRYPT
lists (:func:`supported`), the kernel's key checks (:func:`check_key`), the spellings
setkey looks up (:func:`by_spelling`; setkey's own key-length checks are
:mod:`setkey.keylen`) and the ACQUIRE proposal (:func:`acquire_proposal`).
Nothing here has state, a clock or I/O.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from pfkeyd.errors import InvalidArgument, NotImplementedBySystem, PfkeyError
from pfkeyd.wire.constants import (
    PROTO_SATYPE,
    UNKNOWN,
    X_EXT_OLD,
    AuthAlg,
    CompAlg,
    EncAlg,
    ExtType,
    SaFlag,
    SaType,
)
from pfkeyd.wire.dialect import Dialect
from pfkeyd.wire.ext import Alg, Comb, Key, Supported

__all__ = [
    "Kind",
    "KeyForm",
    "Spelling",
    "Support",
    "Algorithm",
    "ALGORITHMS",
    "ANY_KEY",
    "COMB_LIFETIMES",
    "by_id",
    "by_name",
    "by_spelling",
    "algorithms",
    "supported",
    "supported_exts",
    "encrypt_kind",
    "check_key",
    "check_sa",
    "implied_auth",
    "acquire_proposal",
    "proposal",
    "ProposalKnobs",
]


_DIALECTS: dict[object, Dialect] = {**{d: d for d in Dialect}, **{d.value: d for d in Dialect}}


def _dialect(dialect: Dialect | str) -> Dialect:
    """``Dialect(dialect)`` without the enum machinery on the hot path."""
    found = _DIALECTS.get(dialect)
    return found if found is not None else Dialect(dialect)


class Kind(enum.Enum):
    """Which field of ``sadb_sa`` (and which setkey flag) an algorithm goes in."""

    AUTH = "authentication"  # sadb_sa_auth, setkey -A
    ENCRYPT = "encryption"  # sadb_sa_encrypt of AH/ESP, setkey -E
    COMPRESS = "compression"  # sadb_sa_encrypt of IPComp, setkey -C


class KeyForm(enum.Enum):
    """How setkey reads and checks the key after an algorithm name (its lexer class)."""

    NONE = "none"  # no key may follow (ALG_AUTH_NOKEY, ALG_ENC_NOKEY, ALG_ENC_OLD, -C)
    KEY = "key"  # a key follows; its bits must lie in the advertised min..max (ALG_ENC, ALG_AUTH)
    SALTED = "salted"  # key + 4-byte salt follows; the salt is not counted (FreeBSD ALG_ENC_SALT)
    TCP = "tcp"  # tcp-md5: setkey itself wants 1..80 bytes and ignores the advertised list


@dataclass(frozen=True, slots=True)
class Spelling:
    """One name setkey accepts for an algorithm, with what the name implies."""

    name: str
    key: KeyForm = KeyForm.KEY
    flags: int = 0  # sadb_sa_flags the spelling sets (des-deriv, des-32iv)
    old: bool | None = None  # True: only with esp-old; False: never with it ("algorithm mismatched")
    obsolete: bool = False  # setkey warns "WARNING: obsolete algorithm"


@dataclass(frozen=True, slots=True)
class Support:
    """How one dialect's kernel and setkey treat one algorithm."""

    defined: bool = True
    register: Alg | None = None
    keys: range | None = None
    keyless: bool = False
    setkey: tuple[Spelling, ...] = ()
    dump: str | None = None

    @property
    def installable(self) -> bool:
        """True when the kernel accepts the algorithm at ADD/UPDATE."""
        return self.keys is not None


@dataclass(frozen=True, slots=True)
class Algorithm:
    """One row of the algorithm table.

    ``names`` is every spelling any examined setkey accepts (FreeBSD, ipsec-tools,
    NetBSD); each dialect's :class:`Support` lists the ones its own setkey knows.
    Sizes are bytes.  ``iv`` is the IV carried in each packet, which is not always
    the ``sadb_alg_ivlen`` a kernel advertises (see ``register``).  ``block`` is the
    cipher block the ESP payload is padded to (RFC 4303 §2.4 raises it to 4); 1 for
    stream and combined-mode ciphers, 0 for algorithms that do not encrypt.
    ``salt`` is the nonce or salt that ends the key material (RFC 3686, 4106, 4309,
    4543, 7634).
    """

    kind: Kind
    id: AuthAlg | EncAlg | CompAlg
    title: str
    names: tuple[str, ...]
    satypes: frozenset[SaType]
    rfc: int | None
    freebsd: Support
    linux: Support
    iv: int = 0
    icv: int = 0
    block: int = 0
    salt: int = 0
    aead: bool = False

    def on(self, dialect: Dialect | str) -> Support:
        """This algorithm's :class:`Support` in ``dialect``."""
        return self.freebsd if _dialect(dialect) is Dialect.FREEBSD else self.linux

    @property
    def number(self) -> int:
        """The number on the wire (Linux-only ids drop their canonical high bits)."""
        return int(self.id) & 0xFF

    def dump_name(self, dialect: Dialect | str) -> str:
        """The word setkey prints for this algorithm; an unknown one prints as its number."""
        return self.on(dialect).dump or str(self.number)

    def __str__(self) -> str:
        return f"{self.title} ({self.kind.value} algorithm {self.number})"


# ------------------------------------------------------------------ shorthands

#: Any key length: sadb_key_bits is 16 bits wide, so no key is longer than this.
ANY_KEY = range(0x10000 // 8 + 1)

_AH_ESP = frozenset({SaType.AH, SaType.ESP})
_ESP = frozenset({SaType.ESP})
_IPCOMP = frozenset({SaType.X_IPCOMP})

_K = KeyForm.KEY
_NOKEY = KeyForm.NONE
_SALT = KeyForm.SALTED


def _s(*names: str, key: KeyForm = _K) -> tuple[Spelling, ...]:
    return tuple(Spelling(name, key) for name in names)


def _bytes(*sizes: int) -> range:
    """The key lengths ``sizes``, which must be evenly spaced (16, 24, 32)."""
    step = sizes[1] - sizes[0] if len(sizes) > 1 else 1
    return range(sizes[0], sizes[-1] + 1, step)


def _upto(limit: int, low: int = 1) -> range:
    return range(low, limit + 1)


#: Any key but an empty one.
_NONEMPTY = range(1, ANY_KEY.stop)

_UNDEFINED = Support(defined=False)
_DEFINED = Support()  # in the header, neither advertised nor accepted
_NO_ALGORITHM = Support(keys=ANY_KEY, keyless=True, dump="none")


# ------------------------------------------------------------------ the table
#
# freebsd register lists: reference §5.6 (the 152-byte REGISTER reply).  Auth
# entries report the hash output size in both bounds (key_getsizes_ah), the GMAC
# and Poly1305 entries their 16-byte tag; encryption entries exclude the salt.
# freebsd key lengths: §5.7 (esp_init, ah_init0, tcpsignature_init).  An empty key
# is allowed only for NULL (key_setsaval), hence HMAC lengths start at 1.
#
# linux register lists: xfrm_algo.c descriptors with pfkey_supported set, as
# compose_sadb_supported copies them (Linux reports ivlen 8 for every CBC cipher).
# Linux lists only the algorithms whose crypto module is available; this table
# stands for a kernel without Twofish, Serpent, SM3 and SM4 (the packet engine's
# crypto library has no Twofish or Serpent) and with hmac(rmd160) gone from current
# xfrm_algo.c.  AEAD algorithms (GCM, CCM, GMAC) are *not* listed: af_key builds
# SUPPORTED_ENCRYPT from the encryption list only, and pfkey_msg2xfrm_state looks
# algorithms up in the auth and encryption lists only, so an ADD with GCM fails
# with ENOSYS (reference §5.7, §10.4; strongSwan #1020).  Advertising them would
# make a Linux client offer SAs the kernel cannot install.
# linux key lengths: af_key copies any key; the crypto layer then rejects what the
# cipher does not take (AES 16/24/32, DES 8, ...).  HMACs take any key and a missing
# key extension means a zero-length key, but a *present* empty key is refused unless
# the algorithm is NULL (pfkey_msg2xfrm_state).

_AUTH_ROWS: tuple[Algorithm, ...] = (
    Algorithm(
        Kind.AUTH,
        AuthAlg.NONE,
        "no authentication",
        (),
        frozenset({SaType.ESP, SaType.X_IPCOMP}),
        None,
        freebsd=_NO_ALGORITHM,
        linux=_NO_ALGORITHM,
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.MD5HMAC,
        "HMAC-MD5-96",
        ("hmac-md5",),
        _AH_ESP,
        2403,
        icv=12,
        # FreeBSD <= 12 took keys up to 64 bytes.
        freebsd=_DEFINED,
        linux=Support(
            register=Alg(AuthAlg.MD5HMAC, 0, 128, 128),
            keys=_NONEMPTY,
            keyless=True,
            setkey=_s("hmac-md5"),
            dump="hmac-md5",
        ),
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.SHA1HMAC,
        "HMAC-SHA1-96",
        ("hmac-sha1",),
        _AH_ESP,
        2404,
        icv=12,
        freebsd=Support(
            register=Alg(AuthAlg.SHA1HMAC, 0, 160, 160), keys=_upto(64), setkey=_s("hmac-sha1"), dump="hmac-sha1"
        ),
        linux=Support(
            register=Alg(AuthAlg.SHA1HMAC, 0, 160, 160),
            keys=_NONEMPTY,
            keyless=True,
            setkey=_s("hmac-sha1"),
            dump="hmac-sha1",
        ),
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_SHA2_256,
        "HMAC-SHA2-256-128",
        ("hmac-sha2-256", "hmac-sha256"),
        _AH_ESP,
        4868,
        icv=16,
        freebsd=Support(
            register=Alg(AuthAlg.X_SHA2_256, 0, 256, 256),
            keys=_upto(64),
            setkey=_s("hmac-sha2-256"),
            dump="hmac-sha2-256",
        ),
        linux=Support(
            register=Alg(AuthAlg.X_SHA2_256, 0, 256, 256),
            keys=_NONEMPTY,
            keyless=True,
            setkey=_s("hmac-sha256", "hmac-sha2-256"),
            dump="hmac-sha256",
        ),
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_SHA2_384,
        "HMAC-SHA2-384-192",
        ("hmac-sha2-384", "hmac-sha384"),
        _AH_ESP,
        4868,
        icv=24,
        freebsd=Support(
            register=Alg(AuthAlg.X_SHA2_384, 0, 384, 384),
            keys=_upto(128),
            setkey=_s("hmac-sha2-384"),
            dump="hmac-sha2-384",
        ),
        linux=Support(
            register=Alg(AuthAlg.X_SHA2_384, 0, 384, 384),
            keys=_NONEMPTY,
            keyless=True,
            setkey=_s("hmac-sha384", "hmac-sha2-384"),
            dump="hmac-sha384",
        ),
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_SHA2_512,
        "HMAC-SHA2-512-256",
        ("hmac-sha2-512", "hmac-sha512"),
        _AH_ESP,
        4868,
        icv=32,
        freebsd=Support(
            register=Alg(AuthAlg.X_SHA2_512, 0, 512, 512),
            keys=_upto(128),
            setkey=_s("hmac-sha2-512"),
            dump="hmac-sha2-512",
        ),
        linux=Support(
            register=Alg(AuthAlg.X_SHA2_512, 0, 512, 512),
            keys=_NONEMPTY,
            keyless=True,
            setkey=_s("hmac-sha512", "hmac-sha2-512"),
            dump="hmac-sha512",
        ),
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_RIPEMD160HMAC,
        "HMAC-RIPEMD-160-96",
        ("hmac-ripemd160",),
        _AH_ESP,
        2857,
        icv=12,
        freebsd=_DEFINED,  # FreeBSD <= 12: keys up to 64 bytes
        linux=Support(setkey=_s("hmac-ripemd160"), dump="hmac-ripemd160"),
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_AES_XCBC_MAC,
        "AES-XCBC-MAC-96",
        ("aes-xcbc-mac",),
        _AH_ESP,
        3566,
        icv=12,
        # FreeBSD's setkey still knows the name; its kernel no longer lists it.
        freebsd=Support(setkey=_s("aes-xcbc-mac"), dump="aes-xcbc-mac"),
        linux=Support(
            register=Alg(AuthAlg.X_AES_XCBC_MAC, 0, 128, 128),
            keys=_bytes(16, 24, 32),
            setkey=_s("aes-xcbc-mac"),
            dump="aes-xcbc-mac",
        ),
    ),
    # AES-GMAC for AH (RFC 4543).  FreeBSD also sets these ids on AES-GCM SAs
    # itself (see implied_auth); no setkey has a name for them.  The kernel checks
    # only key <= AES key size, with no room for the RFC's 4-byte salt.
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_AES128GMAC,
        "AES-128-GMAC",
        (),
        _AH_ESP,
        4543,
        iv=8,
        icv=16,
        salt=4,
        freebsd=Support(register=Alg(AuthAlg.X_AES128GMAC, 0, 128, 128), keys=_upto(16)),
        linux=_UNDEFINED,
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_AES192GMAC,
        "AES-192-GMAC",
        (),
        _AH_ESP,
        4543,
        iv=8,
        icv=16,
        salt=4,
        freebsd=Support(register=Alg(AuthAlg.X_AES192GMAC, 0, 128, 128), keys=_upto(24)),
        linux=_UNDEFINED,
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_AES256GMAC,
        "AES-256-GMAC",
        (),
        _AH_ESP,
        4543,
        iv=8,
        icv=16,
        salt=4,
        freebsd=Support(register=Alg(AuthAlg.X_AES256GMAC, 0, 128, 128), keys=_upto(32)),
        linux=_UNDEFINED,
    ),
    # The Poly1305 half of ChaCha20-Poly1305; FreeBSD sets it on ChaCha SAs.  The
    # key limit is the transform's key size (32), derived from ah_init0.
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_CHACHA20POLY1305,
        "Poly1305",
        ("chacha20-poly1305",),
        _AH_ESP,
        7634,
        icv=16,
        freebsd=Support(
            register=Alg(AuthAlg.X_CHACHA20POLY1305, 0, 128, 128),
            keys=_upto(32),
            setkey=_s("chacha20-poly1305"),
            dump="chacha20-poly1305",
        ),
        linux=_UNDEFINED,
    ),
    # ipsec-tools lexes keyed-md5/keyed-sha1 on every system and dumps them as
    # "md5"/"sha"; Linux has no number for them, so they end as "Not supported".
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_MD5,
        "keyed MD5",
        ("keyed-md5",),
        _AH_ESP,
        1828,
        icv=16,
        freebsd=_DEFINED,
        linux=Support(defined=False, setkey=_s("keyed-md5"), dump="md5"),
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_SHA,
        "keyed SHA1",
        ("keyed-sha1",),
        _AH_ESP,
        1852,
        icv=20,
        freebsd=_DEFINED,
        linux=Support(defined=False, setkey=_s("keyed-sha1"), dump="sha"),
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_NULL,
        "NULL authentication",
        ("null",),
        _AH_ESP,
        None,
        # FreeBSD advertises 1..256 bytes but accepts any key, even an empty one;
        # it does need the extension ("no authentication key"), which setkey's
        # key-less "-A null" never sends.
        freebsd=Support(
            register=Alg(AuthAlg.X_NULL, 0, 8, 2048), keys=ANY_KEY, setkey=_s("null", key=_NOKEY), dump="null"
        ),
        linux=Support(
            register=Alg(AuthAlg.X_NULL, 0, 0, 0),
            keys=ANY_KEY,
            keyless=True,
            setkey=_s("null", key=_NOKEY),
            dump="null",
        ),
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_TCP_MD5,
        "TCP-MD5",
        ("tcp-md5",),
        frozenset({SaType.X_TCPSIGNATURE}),
        2385,
        icv=16,
        # Accepted for TCP-MD5 SAs, never advertised (tcpsignature_init, 1..80 bytes).
        freebsd=Support(keys=_upto(80), setkey=_s("tcp-md5", key=KeyForm.TCP), dump="tcp-md5"),
        linux=_UNDEFINED,
    ),
    Algorithm(
        Kind.AUTH,
        AuthAlg.X_SM3_256HMAC,
        "HMAC-SM3",
        (),
        _AH_ESP,
        None,
        icv=32,
        freebsd=_UNDEFINED,
        linux=_DEFINED,
    ),
)

_ENC_ROWS: tuple[Algorithm, ...] = (
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.NONE,
        "no encryption",
        (),
        frozenset({SaType.AH, SaType.X_TCPSIGNATURE}),
        None,
        freebsd=_NO_ALGORITHM,
        linux=_NO_ALGORITHM,
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.DESCBC,
        "DES-CBC",
        ("des-cbc", "des-deriv", "des-32iv"),
        _ESP,
        2405,
        iv=8,
        block=8,
        freebsd=_DEFINED,  # FreeBSD <= 12: 8-byte keys
        linux=Support(
            register=Alg(EncAlg.DESCBC, 8, 64, 64),
            keys=_bytes(8),
            setkey=(
                Spelling("des-cbc"),
                Spelling("des-deriv", flags=SaFlag.X_EXT_DERIV, old=False),
                Spelling("des-32iv", flags=SaFlag.X_EXT_IV4B, old=True),
            ),
            dump="des-cbc",
        ),
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.DES3CBC,
        "3DES-CBC",
        ("3des-cbc",),
        _ESP,
        2451,
        iv=8,
        block=8,
        freebsd=_DEFINED,  # FreeBSD <= 12: 24-byte keys
        linux=Support(
            register=Alg(EncAlg.DES3CBC, 8, 192, 192), keys=_bytes(24), setkey=_s("3des-cbc"), dump="3des-cbc"
        ),
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_CAST128CBC,
        "CAST-128-CBC",
        ("cast128-cbc",),
        _ESP,
        2451,
        iv=8,
        block=8,
        freebsd=_DEFINED,  # FreeBSD <= 12: 5..16-byte keys
        linux=Support(
            register=Alg(EncAlg.X_CAST128CBC, 8, 40, 128),
            keys=_upto(16, 5),
            setkey=_s("cast128-cbc"),
            dump="cast128-cbc",
        ),
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_BLOWFISHCBC,
        "Blowfish-CBC",
        ("blowfish-cbc",),
        _ESP,
        2451,
        iv=8,
        block=8,
        freebsd=_DEFINED,  # FreeBSD <= 12: 5..56-byte keys
        # Linux advertises 40 bits but its blowfish accepts keys from 4 bytes.
        linux=Support(
            register=Alg(EncAlg.X_BLOWFISHCBC, 8, 40, 448),
            keys=_upto(56, 4),
            setkey=_s("blowfish-cbc"),
            dump="blowfish-cbc",
        ),
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.NULL,
        "NULL encryption",
        ("null", "simple"),
        _ESP,
        2410,
        block=1,
        # FreeBSD's setkey wants a key after "-E null" (may be ""); "simple" is the
        # key-less obsolete spelling everywhere.
        freebsd=Support(
            register=Alg(EncAlg.NULL, 0, 0, 2048),
            keys=_upto(256, 0),
            setkey=(Spelling("null"), Spelling("simple", _NOKEY, obsolete=True)),
            dump="null",
        ),
        linux=Support(
            register=Alg(EncAlg.NULL, 0, 0, 0),
            keys=_bytes(0),
            keyless=True,
            setkey=(Spelling("null", _NOKEY), Spelling("simple", _NOKEY, obsolete=True)),
            dump="null",
        ),
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_AESCBC,
        "AES-CBC",
        ("aes-cbc", "rijndael-cbc"),
        _ESP,
        3602,
        iv=16,
        block=16,
        freebsd=Support(
            register=Alg(EncAlg.X_AESCBC, 16, 128, 256),
            keys=_bytes(16, 24, 32),
            setkey=_s("aes-cbc", "rijndael-cbc"),
            dump="aes-cbc",
        ),
        linux=Support(
            register=Alg(EncAlg.X_AESCBC, 8, 128, 256),
            keys=_bytes(16, 24, 32),
            setkey=_s("aes-cbc", "rijndael-cbc"),
            dump="aes-cbc",
        ),
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_AESCTR,
        "AES-CTR",
        ("aes-ctr",),
        _ESP,
        3686,
        iv=8,
        block=1,
        salt=4,
        freebsd=Support(
            register=Alg(EncAlg.X_AESCTR, 16, 128, 256),
            keys=_bytes(20, 28, 36),
            setkey=_s("aes-ctr", key=_SALT),
            dump="aes-ctr",
        ),
        # Linux counts the nonce in the advertised bits, so ipsec-tools checks the
        # whole key against them.
        linux=Support(
            register=Alg(EncAlg.X_AESCTR, 8, 160, 288), keys=_bytes(20, 28, 36), setkey=_s("aes-ctr"), dump="aes-ctr"
        ),
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_CHACHA20POLY1305,
        "ChaCha20-Poly1305",
        ("chacha20-poly1305",),
        _ESP,
        7634,
        iv=8,
        icv=16,
        block=1,
        salt=4,
        aead=True,
        freebsd=Support(
            register=Alg(EncAlg.X_CHACHA20POLY1305, 12, 256, 256),
            keys=_bytes(36),
            setkey=_s("chacha20-poly1305", key=_SALT),
            dump="chacha20-poly1305",
        ),
        linux=_UNDEFINED,  # Linux's 15 is AES-CCM-12
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_AESGCM8,
        "AES-GCM-8",
        (),
        _ESP,
        4106,
        iv=8,
        icv=8,
        block=1,
        salt=4,
        aead=True,
        freebsd=_DEFINED,
        linux=_DEFINED,
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_AESGCM12,
        "AES-GCM-12",
        (),
        _ESP,
        4106,
        iv=8,
        icv=12,
        block=1,
        salt=4,
        aead=True,
        freebsd=_DEFINED,
        linux=_DEFINED,
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_AESGCM16,
        "AES-GCM-16",
        ("aes-gcm-16",),
        _ESP,
        4106,
        iv=8,
        icv=16,
        block=1,
        salt=4,
        aead=True,
        freebsd=Support(
            register=Alg(EncAlg.X_AESGCM16, 12, 128, 256),
            keys=_bytes(20, 28, 36),
            setkey=_s("aes-gcm-16", key=_SALT),
            dump="aes-gcm-16",
        ),
        linux=_DEFINED,  # not in ipsec-tools 0.8.2 either
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_CAMELLIACBC,
        "Camellia-CBC",
        ("camellia-cbc",),
        _ESP,
        4312,
        iv=16,
        block=16,
        freebsd=_DEFINED,  # FreeBSD <= 12: 16..32-byte keys
        linux=Support(
            register=Alg(EncAlg.X_CAMELLIACBC, 8, 128, 256),
            keys=_bytes(16, 24, 32),
            setkey=_s("camellia-cbc"),
            dump="camellia-cbc",
        ),
    ),
    # ESP with AES-GMAC (integrity only).  FreeBSD's esp_init subtracts no salt for
    # it, so it takes a bare AES key; the name "aes-gmac" exists only in NetBSD.
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_AESGMAC,
        "AES-GMAC",
        ("aes-gmac",),
        _ESP,
        4543,
        iv=8,
        icv=16,
        block=1,
        salt=4,
        aead=True,
        freebsd=Support(register=Alg(EncAlg.X_AESGMAC, 12, 128, 256), keys=_bytes(16, 24, 32)),
        linux=_DEFINED,
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_AES_CCM_ICV8,
        "AES-CCM-8",
        (),
        _ESP,
        4309,
        iv=8,
        icv=8,
        block=1,
        salt=3,
        aead=True,
        freebsd=_UNDEFINED,
        linux=_DEFINED,
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_AES_CCM_ICV12,
        "AES-CCM-12",
        (),
        _ESP,
        4309,
        iv=8,
        icv=12,
        block=1,
        salt=3,
        aead=True,
        freebsd=_UNDEFINED,
        linux=_DEFINED,
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_AES_CCM_ICV16,
        "AES-CCM-16",
        (),
        _ESP,
        4309,
        iv=8,
        icv=16,
        block=1,
        salt=3,
        aead=True,
        freebsd=_UNDEFINED,
        linux=_DEFINED,
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_SM4CBC,
        "SM4-CBC",
        (),
        _ESP,
        None,
        iv=16,
        block=16,
        freebsd=_UNDEFINED,
        linux=_DEFINED,
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_SERPENTCBC,
        "Serpent-CBC",
        (),
        _ESP,
        None,
        iv=16,
        block=16,
        freebsd=_UNDEFINED,
        linux=_DEFINED,
    ),
    Algorithm(
        Kind.ENCRYPT,
        EncAlg.X_TWOFISHCBC,
        "Twofish-CBC",
        ("twofish-cbc",),
        _ESP,
        None,
        iv=16,
        block=16,
        freebsd=_UNDEFINED,
        linux=Support(setkey=_s("twofish-cbc"), dump="twofish-cbc"),
    ),
)

_COMP_ROWS: tuple[Algorithm, ...] = (
    Algorithm(
        Kind.COMPRESS,
        CompAlg.NONE,
        "no compression",
        (),
        frozenset(),
        None,
        freebsd=_NO_ALGORITHM,
        linux=_NO_ALGORITHM,
    ),
    Algorithm(
        Kind.COMPRESS,
        CompAlg.OUI,
        "OUI",
        ("oui",),
        _IPCOMP,
        None,
        freebsd=Support(setkey=_s("oui", key=_NOKEY), dump="oui"),
        linux=Support(setkey=_s("oui", key=_NOKEY), dump="oui"),
    ),
    Algorithm(
        Kind.COMPRESS,
        CompAlg.DEFLATE,
        "DEFLATE",
        ("deflate",),
        _IPCOMP,
        2394,
        # FreeBSD: a KEY_ENCRYPT on an IPComp SA must be empty; af_key ignores it.
        freebsd=Support(keys=_bytes(0), keyless=True, setkey=_s("deflate", key=_NOKEY), dump="deflate"),
        linux=Support(keys=ANY_KEY, keyless=True, setkey=_s("deflate", key=_NOKEY), dump="deflate"),
    ),
    Algorithm(
        # Linux lists lzs and lzjh as pfkey_supported, but mainline has no crypto
        # module for them, so the lookup fails (ENOSYS).
        Kind.COMPRESS,
        CompAlg.LZS,
        "LZS",
        ("lzs",),
        _IPCOMP,
        2395,
        freebsd=Support(setkey=_s("lzs", key=_NOKEY), dump="lzs"),
        linux=Support(setkey=_s("lzs", key=_NOKEY), dump="lzs"),
    ),
    Algorithm(
        Kind.COMPRESS,
        CompAlg.LZJH,
        "LZJH",
        (),
        _IPCOMP,
        3051,
        freebsd=_UNDEFINED,
        linux=_DEFINED,
    ),
)

#: Every algorithm, auth first, then encryption, then compression, each by id.
ALGORITHMS: tuple[Algorithm, ...] = _AUTH_ROWS + _ENC_ROWS + _COMP_ROWS

_BY_ID: dict[tuple[Kind, int], Algorithm] = {(a.kind, int(a.id)): a for a in ALGORITHMS}
_BY_NAME: dict[tuple[Kind, str], Algorithm] = {(a.kind, n): a for a in ALGORITHMS for n in a.names}
_BY_SPELLING: dict[tuple[Dialect, Kind, str], tuple[Algorithm, Spelling]] = {
    (d, a.kind, s.name): (a, s) for a in ALGORITHMS for d in Dialect for s in a.on(d).setkey
}


# ------------------------------------------------------------------ lookups


def by_id(kind: Kind, alg_id: int) -> Algorithm | None:
    """The row for a canonical id (an ``UNKNOWN | n`` id has none)."""
    return _BY_ID.get((kind, int(alg_id)))


def by_name(kind: Kind, name: str, dialect: Dialect | str | None = None) -> Algorithm | None:
    """The row setkey's ``name`` stands for; case-sensitive, as setkey's lexer is.

    Without a dialect every spelling any examined setkey knows is accepted; with
    one, only the spellings that dialect's setkey accepts.
    """
    if dialect is None:
        return _BY_NAME.get((kind, name))
    found = by_spelling(kind, name, dialect)
    return None if found is None else found[0]


def by_spelling(kind: Kind, name: str, dialect: Dialect | str) -> tuple[Algorithm, Spelling] | None:
    """The row and the :class:`Spelling` (key form, flags) of a name that dialect's setkey accepts."""
    return _BY_SPELLING.get((_dialect(dialect), kind, name))


def algorithms(kind: Kind) -> tuple[Algorithm, ...]:
    """Every row of one kind, by ascending canonical id."""
    return tuple(sorted((a for a in ALGORITHMS if a.kind is kind), key=lambda a: int(a.id)))


def supported(kind: Kind, dialect: Dialect | str) -> tuple[Alg, ...]:
    """The ``sadb_alg`` entries of SUPPORTED_AUTH or SUPPORTED_ENCRYPT, ascending by wire id.

    Compression algorithms are never listed (neither kernel lists them).
    """
    return _supported(kind, _dialect(dialect))


@functools.cache
def _supported(kind: Kind, dialect: Dialect) -> tuple[Alg, ...]:
    # The table never changes: each list is built once (setkey asks per key).
    entries = (a.on(dialect).register for a in ALGORITHMS if a.kind is kind)
    return tuple(sorted((e for e in entries if e is not None), key=lambda e: e.id & 0xFF))


def supported_exts(dialect: Dialect | str) -> tuple[Supported, ...]:
    """The extensions of a SADB_REGISTER reply: SUPPORTED_AUTH then SUPPORTED_ENCRYPT.

    Either is left out when it would be empty (reference §3.7).
    """
    pairs = ((ExtType.SUPPORTED_AUTH, Kind.AUTH), (ExtType.SUPPORTED_ENCRYPT, Kind.ENCRYPT))
    return tuple(Supported(exttype, algs) for exttype, kind in pairs if (algs := supported(kind, dialect)))


#: What ``sadb_sa_encrypt`` holds, by satype (IPComp keeps its CPI algorithm there).
_ENCRYPT_FIELD: dict[int, Kind] = {SaType.X_IPCOMP: Kind.COMPRESS}


def encrypt_kind(satype: int) -> Kind:
    """The kind of algorithm in ``sadb_sa_encrypt`` for an SA of ``satype``."""
    return _ENCRYPT_FIELD.get(satype, Kind.ENCRYPT)


# ------------------------------------------------------------------ kernel checks

#: The error a dialect's kernel answers for an algorithm it does not implement:
#: FreeBSD's esp_init/ah_init0/ipcomp_init fail with EINVAL; Linux's af_key with
#: ENOSYS when the xfrm lookup fails.
_UNSUPPORTED: dict[Dialect, type[PfkeyError]] = {
    Dialect.FREEBSD: InvalidArgument,
    Dialect.LINUX: NotImplementedBySystem,
}
#: Linux refuses ids above SADB_AALG_MAX / SADB_EALG_MAX / SADB_X_CALG_MAX with
#: EINVAL before looking anything up (pfkey_msg2xfrm_state).
_LINUX_ID_MAX: dict[Kind, int] = {Kind.AUTH: 251, Kind.ENCRYPT: 253, Kind.COMPRESS: 4}


def _satype_name(satype: int) -> str:
    return SaType(satype).name if satype in SaType._value2member_map_ else f"satype {satype}"


def _sizes(keys: range) -> str:
    """``keys`` as the object of "takes": "a key of 16, 24 or 32 bytes"."""
    if keys.stop >= ANY_KEY.stop:
        text = "any length" if keys.start == 0 else f"at least {keys.start} byte{'s' * (keys.start != 1)}"
    elif keys == range(1):
        return "no key material (an empty key)"
    elif len(keys) == 1:
        text = f"exactly {keys[0]} bytes"
    elif keys.step > 1 and len(keys) <= 4:
        text = f"{', '.join(map(str, keys[:-1]))} or {keys[-1]} bytes"
    else:
        text = f"{keys.start} to {keys[-1]} bytes"
    return f"a key of {text}"


def check_key(
    satype: int,
    kind: Kind,
    alg_id: int,
    key_len: int | None,
    dialect: Dialect | str = Dialect.FREEBSD,
) -> None:
    """Check an algorithm and its key as the dialect's kernel does at ADD/UPDATE.

    ``alg_id`` is the canonical id from ``sadb_sa_auth`` (``kind`` AUTH) or
    ``sadb_sa_encrypt`` (ENCRYPT, or COMPRESS for IPComp: see :func:`encrypt_kind`);
    ``key_len`` is the key in bytes, None when the key extension is absent.
    Raises :class:`~pfkeyd.errors.InvalidArgument` (EINVAL) for a bad key or an
    algorithm the satype cannot use, and the dialect's "unsupported" error for an
    algorithm its kernel does not implement.  Which key extensions a satype may
    carry at all (no KEY_ENCRYPT on AH, no KEY_AUTH on IPComp) is the engine's rule.
    """
    d = _dialect(dialect)
    alg = by_id(kind, alg_id)
    number = alg_id & ~UNKNOWN & 0xFF
    if d is Dialect.LINUX and number > _LINUX_ID_MAX[kind]:
        msg = f"{kind.value} algorithm {number} is out of range"
        raise InvalidArgument(msg)
    if alg is None or not alg.on(d).installable:
        what = str(alg) if alg is not None else f"{kind.value} algorithm {number}"
        msg = f"{what} is not supported"
        raise _UNSUPPORTED[d](msg)
    if satype not in alg.satypes:
        if alg.number == 0:
            msg = f"{_satype_name(satype)} SAs need a non-zero {kind.value} algorithm"
        else:
            msg = f"{alg} cannot be used for {_satype_name(satype)} SAs"
        raise InvalidArgument(msg)
    support = alg.on(d)
    keys = support.keys
    assert keys is not None  # installable
    if key_len is None:
        if not support.keyless:
            msg = f"{alg} needs {_sizes(keys)}, and none was given"
            raise InvalidArgument(msg)
        return
    if key_len not in keys:
        msg = f"{alg} takes {_sizes(keys)}, not {key_len} byte{'s' * (key_len != 1)}"
        raise InvalidArgument(msg)


def _key_len(key: Key | None) -> int | None:
    return None if key is None else (key.bits + 7) // 8  # FreeBSD's _KEYLEN


def check_sa(
    proto: int,
    auth: int,
    encrypt: int,
    key_auth: Key | None,
    key_enc: Key | None,
    flags: int = 0,
    dialect: Dialect | str = Dialect.FREEBSD,
) -> None:
    """Run the transform initialisation checks of an ADD/UPDATE for an SA of IP protocol ``proto``.

    In FreeBSD's order: the ``sadb_sa_encrypt`` algorithm and its key (esp_init,
    ipcomp_init), the IV4B flag, then the ``sadb_sa_auth`` algorithm and its key
    (ah_init0, tcpsignature_init), which also refuses the OLD flag because a replay
    window always exists.  See :func:`check_key` for what each step raises.
    """
    # Pure and asked the same question for every SA of a kind: remember what passed.
    memo = (proto, int(auth), int(encrypt), _key_len(key_auth), _key_len(key_enc), int(flags), _dialect(dialect))
    if memo in _CHECKED:
        return
    _check_sa(proto, auth, encrypt, key_auth, key_enc, flags, dialect)
    if len(_CHECKED) >= 4096:
        _CHECKED.clear()
    _CHECKED.add(memo)


_CHECKED: set[tuple[int, int, int, int | None, int | None, int, Dialect]] = set()


def _check_sa(
    proto: int,
    auth: int,
    encrypt: int,
    key_auth: Key | None,
    key_enc: Key | None,
    flags: int,
    dialect: Dialect | str,
) -> None:
    satype = PROTO_SATYPE.get(proto)
    if satype is None:
        msg = f"IP protocol {proto} has no SA type"
        raise InvalidArgument(msg)
    if satype is not SaType.AH:  # AH's encrypt field is checked (must be 0) by key_setsaval
        check_key(satype, encrypt_kind(satype), encrypt, _key_len(key_enc), dialect)
    if satype is SaType.ESP and flags & (X_EXT_OLD | SaFlag.X_EXT_IV4B) == SaFlag.X_EXT_IV4B:
        msg = "the IV4B flag needs the OLD flag"
        raise InvalidArgument(msg)
    if satype is SaType.X_IPCOMP or (satype is SaType.ESP and auth == AuthAlg.NONE):
        return  # IPComp's auth field is checked (must be 0) by key_setsaval
    if satype in _AH_ESP and flags & X_EXT_OLD and auth != AuthAlg.NONE:
        msg = "the OLD flag cannot be used with an authentication algorithm"
        raise InvalidArgument(msg)
    check_key(satype, Kind.AUTH, auth, _key_len(key_auth), dialect)


#: FreeBSD's esp_init replaces sadb_sa_auth on combined-mode SAs: AES-GCM gets the
#: GMAC id that matches its key (key bytes include the 4-byte salt), ChaCha20 gets
#: Poly1305.  GET and DUMP then report these ids.
_IMPLIED_AUTH: dict[tuple[int, int], AuthAlg] = {
    (EncAlg.X_AESGCM16, 20): AuthAlg.X_AES128GMAC,
    (EncAlg.X_AESGCM16, 28): AuthAlg.X_AES192GMAC,
    (EncAlg.X_AESGCM16, 36): AuthAlg.X_AES256GMAC,
    (EncAlg.X_CHACHA20POLY1305, 36): AuthAlg.X_CHACHA20POLY1305,
}


def implied_auth(enc_id: int, key_len: int) -> AuthAlg | None:
    """The auth id FreeBSD records for an ESP SA of ``enc_id`` with a ``key_len``-byte key."""
    return _IMPLIED_AUTH.get((int(enc_id), key_len))


# ------------------------------------------------------------------ ACQUIRE proposals

#: The lifetimes of every proposed combination (FreeBSD key_getcomb_setlifetime).
#: soft_addtime and hard_usetime are computed there as 80% of fields that are
#: still zero, so they come out as 0; kept so, as the reference kernel sends them.
COMB_LIFETIMES: Mapping[str, int] = MappingProxyType(
    {
        "soft_allocations": 1,
        "hard_allocations": 1,
        "soft_bytes": 0,
        "hard_bytes": 0,
        "soft_addtime": 0,
        "hard_addtime": 86400,
        "soft_usetime": 28800,
        "hard_usetime": 0,
    }
)

#: key_getcomb_ah proposes only these ("we prefer HMAC algorithms"); of them the
#: current FreeBSD kernel implements all but MD5.
_AH_PROPOSED = frozenset(
    {AuthAlg.MD5HMAC, AuthAlg.SHA1HMAC, AuthAlg.X_SHA2_256, AuthAlg.X_SHA2_384, AuthAlg.X_SHA2_512}
)


def _ah_combs(dialect: Dialect, esp_keymin: int, esp_auth: int, ah_keymin: int) -> tuple[Comb, ...]:
    # Ascending ids, each prepended to the list: the result is descending.
    algs = [a for a in supported(Kind.AUTH, dialect) if a.id in _AH_PROPOSED and a.minbits >= ah_keymin]
    return tuple(
        Comb(auth=a.id, auth_minbits=a.minbits, auth_maxbits=a.maxbits, **COMB_LIFETIMES) for a in reversed(algs)
    )


def _esp_combs(dialect: Dialect, esp_keymin: int, esp_auth: int, ah_keymin: int) -> tuple[Comb, ...]:
    # key_getcomb_ealg: with esp_auth set, each encryption algorithm gets a copy of
    # the AH list, but every copied combination is zeroed before the encryption
    # fields are written, so the copies carry auth 0 and only multiply the entry.
    # No AH combination at all makes the whole ESP proposal fail (no PROPOSAL).
    copies = len(_ah_combs(dialect, esp_keymin, esp_auth, ah_keymin)) if esp_auth else 1
    combs: list[Comb] = []
    for a in supported(Kind.ENCRYPT, dialect):
        if a.maxbits < esp_keymin:
            continue
        if copies == 0:
            return ()
        comb = Comb(
            encrypt=a.id, encrypt_minbits=max(esp_keymin, a.minbits), encrypt_maxbits=a.maxbits, **COMB_LIFETIMES
        )
        combs.extend([comb] * copies)
    return tuple(combs)


def _ipcomp_combs(dialect: Dialect, esp_keymin: int, esp_auth: int, ah_keymin: int) -> tuple[Comb, ...]:
    # Every implemented compression algorithm, prepended (descending); no key bits.
    algs = [a for a in algorithms(Kind.COMPRESS) if a.number != 0 and a.on(dialect).installable]
    return tuple(Comb(encrypt=a.id, **COMB_LIFETIMES) for a in reversed(algs))


_PROPOSALS: dict[int, Callable[[Dialect, int, int, int], tuple[Comb, ...]]] = {
    SaType.ESP: _esp_combs,
    SaType.AH: _ah_combs,
    SaType.X_IPCOMP: _ipcomp_combs,
}


def acquire_proposal(
    satype: int,
    *,
    esp_keymin: int = 256,
    esp_auth: int = 0,
    ah_keymin: int = 128,
    dialect: Dialect | str = Dialect.FREEBSD,
) -> tuple[Comb, ...]:
    """The combinations of an ACQUIRE's PROPOSAL (reference §7.4 step 5, key_getprop).

    The knobs are ``net.key.esp_keymin``, ``net.key.esp_auth`` and
    ``net.key.ah_keymin``.  FreeBSD's rules are applied to the dialect's advertised
    lists, so a Linux client is offered only what it can name.  ESP: one
    combination per encryption algorithm whose maximum key reaches ``esp_keymin``,
    ascending, ``encrypt_minbits`` raised to ``esp_keymin``.  AH: SHA1 and SHA2
    HMACs (MD5 too where implemented) whose key size reaches ``ah_keymin``,
    descending.  IPComp: DEFLATE.  An empty tuple means the ACQUIRE carries no
    PROPOSAL extension, as FreeBSD then sends none.
    """
    builder = _PROPOSALS.get(satype)
    if builder is None:
        return ()
    return builder(_dialect(dialect), esp_keymin, esp_auth, ah_keymin)


class ProposalKnobs(Protocol):
    """The knobs a proposal reads (:class:`pfkeyd.knobs.Knobs` has them)."""

    @property
    def esp_keymin(self) -> int: ...
    @property
    def esp_auth(self) -> int: ...
    @property
    def ah_keymin(self) -> int: ...


def proposal(proto: int, knobs: ProposalKnobs, dialect: Dialect | str = Dialect.FREEBSD) -> tuple[Comb, ...]:
    """:func:`acquire_proposal` for an SA index's IP protocol and the current knobs."""
    satype = PROTO_SATYPE.get(proto)
    if satype is None:
        return ()
    return acquire_proposal(
        satype, esp_keymin=knobs.esp_keymin, esp_auth=knobs.esp_auth, ah_keymin=knobs.ah_keymin, dialect=dialect
    )
