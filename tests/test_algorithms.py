"""The algorithm table against the reference digests.

Expected values are written out here from pfkey-protocol.md (§5.4, §5.6, §5.7,
§7.4) and setkey-language.md (§3, §4), not computed from the table, so that a
wrong row makes a test fail.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence

import pytest

from pfkeyd import algorithms as A
from pfkeyd.algorithms import KeyForm, Kind
from pfkeyd.errors import EncodeError, InvalidArgument, NotImplementedBySystem
from pfkeyd.knobs import Knobs
from pfkeyd.wire import (
    Alg,
    AuthAlg,
    Comb,
    CompAlg,
    Dialect,
    EncAlg,
    ExtType,
    IpProto,
    Key,
    Message,
    MsgType,
    Prop,
    SaFlag,
    SaType,
    Supported,
    decode,
    encode,
)
from pfkeyd.wire.dialect import Codebook, spec
from setkey import keylen

FREEBSD, LINUX = Dialect.FREEBSD, Dialect.LINUX
ESP, AH, IPCOMP, TCP = SaType.ESP, SaType.AH, SaType.X_IPCOMP, SaType.X_TCPSIGNATURE

# ---------------------------------------------------------------- REGISTER

# Reference §5.6: (id, ivlen, minbits, maxbits), ascending.
FREEBSD_AUTH = [
    (3, 0, 160, 160),
    (5, 0, 256, 256),
    (6, 0, 384, 384),
    (7, 0, 512, 512),
    (11, 0, 128, 128),
    (12, 0, 128, 128),
    (13, 0, 128, 128),
    (14, 0, 128, 128),
    (251, 0, 8, 2048),
]
FREEBSD_ENC = [
    (11, 0, 0, 2048),
    (12, 16, 128, 256),
    (13, 16, 128, 256),
    (15, 12, 256, 256),
    (20, 12, 128, 256),
    (23, 12, 128, 256),
]
# What this table makes Linux advertise (xfrm_algo.c descriptors, minus AEAD and
# the algorithms left out as not loaded).
LINUX_AUTH = [
    (2, 0, 128, 128),
    (3, 0, 160, 160),
    (5, 0, 256, 256),
    (6, 0, 384, 384),
    (7, 0, 512, 512),
    (9, 0, 128, 128),
    (251, 0, 0, 0),
]
LINUX_ENC = [
    (2, 8, 64, 64),
    (3, 8, 192, 192),
    (6, 8, 40, 128),
    (7, 8, 40, 448),
    (11, 0, 0, 0),
    (12, 8, 128, 256),
    (13, 8, 160, 288),
    (22, 8, 128, 256),
]


def _tuples(algs: tuple[Alg, ...]) -> list[tuple[int, int, int, int]]:
    return [(a.id, a.ivlen, a.minbits, a.maxbits) for a in algs]


@pytest.mark.parametrize(
    ("kind", "dialect", "expected"),
    [
        (Kind.AUTH, FREEBSD, FREEBSD_AUTH),
        (Kind.ENCRYPT, FREEBSD, FREEBSD_ENC),
        (Kind.AUTH, LINUX, LINUX_AUTH),
        (Kind.ENCRYPT, LINUX, LINUX_ENC),
    ],
)
def test_supported_lists_exactly_the_reference_entries(
    kind: Kind, dialect: Dialect, expected: list[tuple[int, int, int, int]]
) -> None:
    assert _tuples(A.supported(kind, dialect)) == expected


@pytest.mark.parametrize("dialect", list(Dialect))
def test_compression_is_never_advertised(dialect: Dialect) -> None:
    assert A.supported(Kind.COMPRESS, dialect) == ()


def test_freebsd_register_reply_is_152_bytes() -> None:
    msg = Message(type=MsgType.REGISTER, exts=A.supported_exts(FREEBSD))
    data = encode(msg, FREEBSD)
    assert len(data) == 16 + (8 + 9 * 8) + (8 + 6 * 8) == 152
    # SUPPORTED_AUTH starts right after the header: len 10 units, type 14.
    assert struct.unpack_from("=HH", data, 16) == (10, ExtType.SUPPORTED_AUTH)
    first = struct.unpack_from("=BBHHH", data, 24)
    assert first == (3, 0, 160, 160, 0)
    # SUPPORTED_ENCRYPT follows: 7 units, type 15; its ChaCha20 entry is wire id 15.
    assert struct.unpack_from("=HH", data, 96) == (7, ExtType.SUPPORTED_ENCRYPT)
    assert struct.unpack_from("=BBHHH", data, 104 + 3 * 8) == (15, 12, 256, 256, 0)


@pytest.mark.parametrize("dialect", list(Dialect))
def test_register_reply_round_trips_through_the_codec(dialect: Dialect) -> None:
    msg = Message(type=MsgType.REGISTER, exts=A.supported_exts(dialect))
    back = decode(encode(msg, dialect), dialect, request=False)
    assert back.supported_auth == Supported(ExtType.SUPPORTED_AUTH, A.supported(Kind.AUTH, dialect))
    assert back.supported_encrypt == Supported(ExtType.SUPPORTED_ENCRYPT, A.supported(Kind.ENCRYPT, dialect))


def test_supported_exts_puts_auth_before_encrypt() -> None:
    assert [e.exttype for e in A.supported_exts(FREEBSD)] == [ExtType.SUPPORTED_AUTH, ExtType.SUPPORTED_ENCRYPT]


def test_linux_advertises_no_aead_algorithm() -> None:
    # af_key cannot install them (ENOSYS), so advertising them would be a lie.
    aead = {a.id for a in A.ALGORITHMS if a.aead}
    assert aead >= {EncAlg.X_AESGCM16, EncAlg.X_AES_CCM_ICV16, EncAlg.X_AESGMAC}
    assert not aead & {e.id for e in A.supported(Kind.ENCRYPT, LINUX)}


@pytest.mark.parametrize(
    ("kind", "name", "bits"),
    [
        # The key sizes a Linux-built ipsec-tools setkey must accept.
        (Kind.AUTH, "hmac-md5", 128),
        (Kind.AUTH, "hmac-sha1", 160),
        (Kind.AUTH, "hmac-sha256", 256),
        (Kind.AUTH, "hmac-sha2-384", 384),
        (Kind.AUTH, "hmac-sha512", 512),
        (Kind.ENCRYPT, "des-cbc", 64),
        (Kind.ENCRYPT, "3des-cbc", 192),
        (Kind.ENCRYPT, "aes-cbc", 128),
        (Kind.ENCRYPT, "rijndael-cbc", 192),
        (Kind.ENCRYPT, "aes-cbc", 256),
        (Kind.ENCRYPT, "aes-ctr", 160),
        (Kind.ENCRYPT, "aes-ctr", 288),
        (Kind.ENCRYPT, "null", 0),
    ],
)
def test_linux_register_list_satisfies_ipsec_tools(kind: Kind, name: str, bits: int) -> None:
    found = A.by_spelling(kind, name, LINUX)
    assert found is not None
    alg, spelling = found
    assert keylen.key_error(alg, bits, LINUX, form=spelling.key) is None


@pytest.mark.parametrize("dialect", list(Dialect))
def test_advertised_algorithms_are_defined_and_installable(dialect: Dialect) -> None:
    for alg in A.ALGORITHMS:
        s = alg.on(dialect)
        if s.register is not None:
            assert s.defined and s.installable, alg
            assert s.register.id == alg.id
        if s.installable and alg.number != 0:
            assert s.defined, alg


# ---------------------------------------------------------------- wire ids


def _codebook(kind: Kind, dialect: Dialect) -> Codebook:
    return spec(dialect).auth if kind is Kind.AUTH else spec(dialect).enc


_CODED = [(a, d) for a in A.ALGORITHMS if a.kind is not Kind.COMPRESS for d in Dialect]


@pytest.mark.parametrize(("alg", "dialect"), _CODED, ids=[f"{a.title}-{d.value}" for a, d in _CODED])
def test_ids_are_encodable_exactly_where_defined(alg: A.Algorithm, dialect: Dialect) -> None:
    book = _codebook(alg.kind, dialect)
    if alg.on(dialect).defined:
        assert book.encode(alg.id) == alg.number
        assert book.decode(alg.number) == alg.id
    else:
        with pytest.raises(EncodeError):
            book.encode(alg.id)


def test_chacha_and_ccm12_share_number_15() -> None:
    chacha = A.by_id(Kind.ENCRYPT, EncAlg.X_CHACHA20POLY1305)
    ccm12 = A.by_id(Kind.ENCRYPT, EncAlg.X_AES_CCM_ICV12)
    assert chacha is not None and ccm12 is not None
    assert chacha.number == ccm12.number == 15
    assert chacha.freebsd.defined and not chacha.linux.defined
    assert ccm12.linux.defined and not ccm12.freebsd.defined


@pytest.mark.parametrize(
    ("alg_id", "freebsd_defined"),
    [(CompAlg.OUI, True), (CompAlg.DEFLATE, True), (CompAlg.LZS, True), (CompAlg.LZJH, False)],
)
def test_compression_ids_follow_the_headers(alg_id: int, freebsd_defined: bool) -> None:
    alg = A.by_id(Kind.COMPRESS, alg_id)
    assert alg is not None
    assert alg.freebsd.defined is freebsd_defined
    assert alg.linux.defined


def test_freebsd_12_algorithms_are_defined_but_neither_advertised_nor_accepted() -> None:
    legacy = [
        (Kind.ENCRYPT, EncAlg.DESCBC),
        (Kind.ENCRYPT, EncAlg.DES3CBC),
        (Kind.ENCRYPT, EncAlg.X_BLOWFISHCBC),
        (Kind.ENCRYPT, EncAlg.X_CAST128CBC),
        (Kind.ENCRYPT, EncAlg.X_CAMELLIACBC),
        (Kind.AUTH, AuthAlg.MD5HMAC),
        (Kind.AUTH, AuthAlg.X_RIPEMD160HMAC),
        (Kind.AUTH, AuthAlg.X_MD5),
        (Kind.AUTH, AuthAlg.X_SHA),
    ]
    for kind, alg_id in legacy:
        alg = A.by_id(kind, alg_id)
        assert alg is not None
        assert alg.freebsd.defined and alg.freebsd.register is None and not alg.freebsd.installable, alg


# ---------------------------------------------------------------- completeness


@pytest.mark.parametrize(
    ("kind", "enum_type"), [(Kind.AUTH, AuthAlg), (Kind.ENCRYPT, EncAlg), (Kind.COMPRESS, CompAlg)]
)
def test_every_enum_member_has_exactly_one_row(
    kind: Kind, enum_type: type[AuthAlg] | type[EncAlg] | type[CompAlg]
) -> None:
    rows = A.algorithms(kind)
    assert sorted(int(a.id) for a in rows) == sorted(int(m) for m in enum_type)
    for member in enum_type:
        alg = A.by_id(kind, member)
        assert alg is not None and alg.id is member and alg.kind is kind


def test_rows_are_unique_and_ids_typed_by_kind() -> None:
    assert len({(a.kind, int(a.id)) for a in A.ALGORITHMS}) == len(A.ALGORITHMS)
    types = {Kind.AUTH: AuthAlg, Kind.ENCRYPT: EncAlg, Kind.COMPRESS: CompAlg}
    for alg in A.ALGORITHMS:
        assert isinstance(alg.id, types[alg.kind])


@pytest.mark.parametrize("kind", list(Kind))
def test_names_are_unique_within_a_kind(kind: Kind) -> None:
    names = [n for a in A.algorithms(kind) for n in a.names]
    assert len(names) == len(set(names))


def test_dialect_spellings_are_among_the_names() -> None:
    for alg in A.ALGORITHMS:
        for d in Dialect:
            assert {s.name for s in alg.on(d).setkey} <= set(alg.names), (alg, d)


def test_unknown_ids_have_no_row() -> None:
    assert A.by_id(Kind.ENCRYPT, 5) is None
    assert A.by_id(Kind.AUTH, 0x8000 | 4) is None


# ---------------------------------------------------------------- facts


@pytest.mark.parametrize(
    ("kind", "alg_id", "rfc", "iv", "icv", "block", "salt", "aead"),
    [
        (Kind.ENCRYPT, EncAlg.X_AESCBC, 3602, 16, 0, 16, 0, False),
        (Kind.ENCRYPT, EncAlg.X_AESCTR, 3686, 8, 0, 1, 4, False),
        (Kind.ENCRYPT, EncAlg.X_AESGCM16, 4106, 8, 16, 1, 4, True),
        (Kind.ENCRYPT, EncAlg.X_AESGCM8, 4106, 8, 8, 1, 4, True),
        (Kind.ENCRYPT, EncAlg.X_AES_CCM_ICV12, 4309, 8, 12, 1, 3, True),
        (Kind.ENCRYPT, EncAlg.X_CHACHA20POLY1305, 7634, 8, 16, 1, 4, True),
        (Kind.ENCRYPT, EncAlg.X_AESGMAC, 4543, 8, 16, 1, 4, True),
        (Kind.ENCRYPT, EncAlg.NULL, 2410, 0, 0, 1, 0, False),
        (Kind.ENCRYPT, EncAlg.DES3CBC, 2451, 8, 0, 8, 0, False),
        (Kind.AUTH, AuthAlg.SHA1HMAC, 2404, 0, 12, 0, 0, False),
        (Kind.AUTH, AuthAlg.X_SHA2_256, 4868, 0, 16, 0, 0, False),
        (Kind.AUTH, AuthAlg.X_SHA2_384, 4868, 0, 24, 0, 0, False),
        (Kind.AUTH, AuthAlg.X_SHA2_512, 4868, 0, 32, 0, 0, False),
        (Kind.AUTH, AuthAlg.MD5HMAC, 2403, 0, 12, 0, 0, False),
        (Kind.AUTH, AuthAlg.X_TCP_MD5, 2385, 0, 16, 0, 0, False),
        (Kind.COMPRESS, CompAlg.DEFLATE, 2394, 0, 0, 0, 0, False),
    ],
)
def test_packet_sizes_and_rfcs(
    kind: Kind, alg_id: int, rfc: int, iv: int, icv: int, block: int, salt: int, aead: bool
) -> None:
    alg = A.by_id(kind, alg_id)
    assert alg is not None
    assert (alg.rfc, alg.iv, alg.icv, alg.block, alg.salt, alg.aead) == (rfc, iv, icv, block, salt, aead)


# ---------------------------------------------------------------- setkey names

# setkey-language.md §3.1-§3.3: every name, with its id.
SETKEY_NAMES = [
    (Kind.ENCRYPT, "des-cbc", EncAlg.DESCBC),
    (Kind.ENCRYPT, "3des-cbc", EncAlg.DES3CBC),
    (Kind.ENCRYPT, "null", EncAlg.NULL),
    (Kind.ENCRYPT, "simple", EncAlg.NULL),
    (Kind.ENCRYPT, "blowfish-cbc", EncAlg.X_BLOWFISHCBC),
    (Kind.ENCRYPT, "cast128-cbc", EncAlg.X_CAST128CBC),
    (Kind.ENCRYPT, "des-deriv", EncAlg.DESCBC),
    (Kind.ENCRYPT, "des-32iv", EncAlg.DESCBC),
    (Kind.ENCRYPT, "rijndael-cbc", EncAlg.X_AESCBC),
    (Kind.ENCRYPT, "aes-cbc", EncAlg.X_AESCBC),
    (Kind.ENCRYPT, "aes-ctr", EncAlg.X_AESCTR),
    (Kind.ENCRYPT, "aes-gcm-16", EncAlg.X_AESGCM16),
    (Kind.ENCRYPT, "aes-gmac", EncAlg.X_AESGMAC),
    (Kind.ENCRYPT, "camellia-cbc", EncAlg.X_CAMELLIACBC),
    (Kind.ENCRYPT, "twofish-cbc", EncAlg.X_TWOFISHCBC),
    (Kind.ENCRYPT, "chacha20-poly1305", EncAlg.X_CHACHA20POLY1305),
    (Kind.AUTH, "hmac-md5", AuthAlg.MD5HMAC),
    (Kind.AUTH, "hmac-sha1", AuthAlg.SHA1HMAC),
    (Kind.AUTH, "keyed-md5", AuthAlg.X_MD5),
    (Kind.AUTH, "keyed-sha1", AuthAlg.X_SHA),
    (Kind.AUTH, "hmac-sha2-256", AuthAlg.X_SHA2_256),
    (Kind.AUTH, "hmac-sha256", AuthAlg.X_SHA2_256),
    (Kind.AUTH, "hmac-sha2-384", AuthAlg.X_SHA2_384),
    (Kind.AUTH, "hmac-sha384", AuthAlg.X_SHA2_384),
    (Kind.AUTH, "hmac-sha2-512", AuthAlg.X_SHA2_512),
    (Kind.AUTH, "hmac-sha512", AuthAlg.X_SHA2_512),
    (Kind.AUTH, "hmac-ripemd160", AuthAlg.X_RIPEMD160HMAC),
    (Kind.AUTH, "aes-xcbc-mac", AuthAlg.X_AES_XCBC_MAC),
    (Kind.AUTH, "tcp-md5", AuthAlg.X_TCP_MD5),
    (Kind.AUTH, "null", AuthAlg.X_NULL),
    (Kind.AUTH, "chacha20-poly1305", AuthAlg.X_CHACHA20POLY1305),
    (Kind.COMPRESS, "oui", CompAlg.OUI),
    (Kind.COMPRESS, "deflate", CompAlg.DEFLATE),
    (Kind.COMPRESS, "lzs", CompAlg.LZS),
]


@pytest.mark.parametrize(("kind", "name", "alg_id"), SETKEY_NAMES)
def test_every_setkey_name_finds_its_algorithm(kind: Kind, name: str, alg_id: int) -> None:
    alg = A.by_name(kind, name)
    assert alg is not None and alg.id is alg_id


def test_the_name_list_above_is_the_whole_table() -> None:
    table = {(a.kind, n) for a in A.ALGORITHMS for n in a.names}
    assert table == {(k, n) for k, n, _ in SETKEY_NAMES}


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (Kind.ENCRYPT, "3des-deriv"),  # in the man page, not in any lexer
        (Kind.ENCRYPT, "rc5-cbc"),
        (Kind.ENCRYPT, "AES-CBC"),  # setkey is case-sensitive
        (Kind.ENCRYPT, "aes-cbcx"),
        (Kind.ENCRYPT, "hmac-sha1"),  # right name, wrong flag
        (Kind.AUTH, "aes-cbc"),
        (Kind.AUTH, "hmac-sha2-256 "),
        (Kind.COMPRESS, "lzjh"),
    ],
)
def test_unknown_setkey_names_find_nothing(kind: Kind, name: str) -> None:
    assert A.by_name(kind, name) is None


@pytest.mark.parametrize(
    ("kind", "name", "freebsd", "linux"),
    [
        (Kind.AUTH, "hmac-sha2-256", True, True),
        (Kind.AUTH, "hmac-sha256", False, True),
        (Kind.AUTH, "hmac-md5", False, True),
        (Kind.AUTH, "tcp-md5", True, False),
        (Kind.AUTH, "chacha20-poly1305", True, False),
        (Kind.ENCRYPT, "des-cbc", False, True),
        (Kind.ENCRYPT, "aes-gcm-16", True, False),
        (Kind.ENCRYPT, "rijndael-cbc", True, True),
        (Kind.ENCRYPT, "aes-gmac", False, False),  # NetBSD only
        (Kind.COMPRESS, "deflate", True, True),
    ],
)
def test_each_dialect_knows_its_own_setkey_names(kind: Kind, name: str, freebsd: bool | str, linux: bool | str) -> None:
    assert (A.by_name(kind, name, FREEBSD) is not None) is freebsd
    assert (A.by_name(kind, name, LINUX) is not None) is linux


@pytest.mark.parametrize(
    ("kind", "alg_id", "freebsd", "linux"),
    [
        (Kind.ENCRYPT, EncAlg.X_AESCBC, "aes-cbc", "aes-cbc"),  # rijndael-cbc is dumped as aes-cbc
        (Kind.AUTH, AuthAlg.X_SHA2_256, "hmac-sha2-256", "hmac-sha256"),
        (Kind.AUTH, AuthAlg.X_SHA2_512, "hmac-sha2-512", "hmac-sha512"),
        (Kind.AUTH, AuthAlg.MD5HMAC, "2", "hmac-md5"),  # gone from FreeBSD's dump table
        (Kind.AUTH, AuthAlg.X_MD5, "249", "md5"),
        (Kind.AUTH, AuthAlg.X_SHA, "250", "sha"),
        (Kind.AUTH, AuthAlg.NONE, "none", "none"),
        (Kind.ENCRYPT, EncAlg.X_AESGCM16, "aes-gcm-16", "20"),
        (Kind.ENCRYPT, EncAlg.X_AESGMAC, "23", "23"),
        (Kind.ENCRYPT, EncAlg.X_TWOFISHCBC, "253", "twofish-cbc"),
        (Kind.COMPRESS, CompAlg.DEFLATE, "deflate", "deflate"),
    ],
)
def test_dump_names(kind: Kind, alg_id: int, freebsd: bool | str, linux: bool | str) -> None:
    alg = A.by_id(kind, alg_id)
    assert alg is not None
    assert (alg.dump_name(FREEBSD), alg.dump_name(LINUX)) == (freebsd, linux)


@pytest.mark.parametrize(
    ("dialect", "kind", "name", "form", "flags", "old", "obsolete"),
    [
        (FREEBSD, Kind.ENCRYPT, "null", KeyForm.KEY, 0, None, False),  # FreeBSD wants `-E null ""`
        (LINUX, Kind.ENCRYPT, "null", KeyForm.NONE, 0, None, False),
        (FREEBSD, Kind.ENCRYPT, "simple", KeyForm.NONE, 0, None, True),
        (FREEBSD, Kind.ENCRYPT, "aes-ctr", KeyForm.SALTED, 0, None, False),
        (LINUX, Kind.ENCRYPT, "aes-ctr", KeyForm.KEY, 0, None, False),
        (FREEBSD, Kind.ENCRYPT, "aes-gcm-16", KeyForm.SALTED, 0, None, False),
        (FREEBSD, Kind.ENCRYPT, "chacha20-poly1305", KeyForm.SALTED, 0, None, False),
        (LINUX, Kind.ENCRYPT, "des-deriv", KeyForm.KEY, SaFlag.X_EXT_DERIV, False, False),
        (LINUX, Kind.ENCRYPT, "des-32iv", KeyForm.KEY, SaFlag.X_EXT_IV4B, True, False),
        (FREEBSD, Kind.AUTH, "null", KeyForm.NONE, 0, None, False),
        (FREEBSD, Kind.AUTH, "tcp-md5", KeyForm.TCP, 0, None, False),
        (LINUX, Kind.COMPRESS, "deflate", KeyForm.NONE, 0, None, False),
    ],
)
def test_spellings_carry_key_form_and_flags(
    dialect: Dialect, kind: Kind, name: str, form: KeyForm, flags: int, old: bool | None, obsolete: bool
) -> None:
    found = A.by_spelling(kind, name, dialect)
    assert found is not None
    spelling = found[1]
    assert (spelling.key, spelling.flags, spelling.old, spelling.obsolete) == (form, flags, old, obsolete)


# ---------------------------------------------------------------- kernel key checks

# Reference §5.7, FreeBSD: (satype, kind, id, accepted key lengths, refused ones);
# None is a missing key extension.
FREEBSD_KEYS = [
    (ESP, Kind.ENCRYPT, EncAlg.X_AESCBC, [16, 24, 32], [None, 0, 8, 15, 17, 20, 31, 33, 36]),
    (ESP, Kind.ENCRYPT, EncAlg.X_AESCTR, [20, 28, 36], [None, 16, 19, 21, 24, 32, 37, 44]),
    (ESP, Kind.ENCRYPT, EncAlg.X_AESGCM16, [20, 28, 36], [None, 16, 24, 32, 19, 21, 37]),
    (ESP, Kind.ENCRYPT, EncAlg.X_CHACHA20POLY1305, [36], [None, 32, 35, 37, 40]),
    (ESP, Kind.ENCRYPT, EncAlg.X_AESGMAC, [16, 24, 32], [None, 20, 36]),
    (ESP, Kind.ENCRYPT, EncAlg.NULL, [0, 1, 20, 256], [None, 257]),
    (ESP, Kind.AUTH, AuthAlg.SHA1HMAC, [1, 20, 64], [None, 0, 65]),
    (AH, Kind.AUTH, AuthAlg.X_SHA2_256, [1, 32, 64], [None, 0, 65]),
    (AH, Kind.AUTH, AuthAlg.X_SHA2_384, [1, 48, 128], [None, 0, 129]),
    (ESP, Kind.AUTH, AuthAlg.X_SHA2_512, [1, 64, 128], [None, 0, 129]),
    (AH, Kind.AUTH, AuthAlg.X_AES128GMAC, [1, 16], [None, 0, 17, 20]),
    (AH, Kind.AUTH, AuthAlg.X_AES192GMAC, [24], [None, 25]),
    (AH, Kind.AUTH, AuthAlg.X_AES256GMAC, [32], [None, 33, 36]),
    (AH, Kind.AUTH, AuthAlg.X_NULL, [0, 1, 64, 256, 2048, 5000], [None]),
    (TCP, Kind.AUTH, AuthAlg.X_TCP_MD5, [1, 16, 80], [None, 0, 81]),
    (IPCOMP, Kind.COMPRESS, CompAlg.DEFLATE, [None, 0], [1, 16]),
    (ESP, Kind.AUTH, AuthAlg.NONE, [None, 0, 20], []),  # a stray key is ignored
    (AH, Kind.ENCRYPT, EncAlg.NONE, [None], []),
]


@pytest.mark.parametrize(("satype", "kind", "alg_id", "good", "bad"), FREEBSD_KEYS)
def test_freebsd_key_lengths(
    satype: SaType, kind: Kind, alg_id: int, good: list[int | None], bad: list[int | None]
) -> None:
    for n in good:
        A.check_key(satype, kind, alg_id, n, FREEBSD)
    for n in bad:
        with pytest.raises(InvalidArgument) as info:
            A.check_key(satype, kind, alg_id, n, FREEBSD)
        assert info.value.errno == errno.EINVAL


def test_key_error_names_algorithm_and_sizes() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"AES-CBC \(encryption algorithm 12\) takes a key of 16, 24 or 32 "
        r"bytes, not 17 bytes",
    ):
        A.check_key(ESP, Kind.ENCRYPT, EncAlg.X_AESCBC, 17)
    with pytest.raises(InvalidArgument, match=r"ChaCha20-Poly1305 .* exactly 36 bytes, not 32"):
        A.check_key(ESP, Kind.ENCRYPT, EncAlg.X_CHACHA20POLY1305, 32)
    with pytest.raises(InvalidArgument, match=r"HMAC-SHA1-96 .* needs a key of 1 to 64 bytes, and none was given"):
        A.check_key(ESP, Kind.AUTH, AuthAlg.SHA1HMAC, None)
    with pytest.raises(InvalidArgument, match=r"DEFLATE .* no key material"):
        A.check_key(IPCOMP, Kind.COMPRESS, CompAlg.DEFLATE, 4)


@pytest.mark.parametrize(
    ("kind", "alg_id"),
    [
        (Kind.ENCRYPT, EncAlg.DESCBC),
        (Kind.ENCRYPT, EncAlg.X_AESGCM8),
        (Kind.ENCRYPT, 0x8000 | 5),  # a number FreeBSD has no name for
        (Kind.AUTH, AuthAlg.MD5HMAC),
        (Kind.AUTH, AuthAlg.X_AES_XCBC_MAC),
    ],
)
def test_freebsd_refuses_unimplemented_algorithms_with_einval(kind: Kind, alg_id: int) -> None:
    with pytest.raises(InvalidArgument, match="is not supported") as info:
        A.check_key(ESP, kind, alg_id, 16, FREEBSD)
    assert info.value.errno == errno.EINVAL


def test_linux_refuses_aead_with_enosys() -> None:
    with pytest.raises(NotImplementedBySystem, match="AES-GCM-16") as info:
        A.check_key(ESP, Kind.ENCRYPT, EncAlg.X_AESGCM16, 20, LINUX)
    assert info.value.errno == errno.ENOSYS


def test_linux_refuses_numbers_above_its_maximum_with_einval() -> None:
    with pytest.raises(InvalidArgument):
        A.check_key(ESP, Kind.AUTH, 0x8000 | 252, 16, LINUX)
    with pytest.raises(NotImplementedBySystem):
        A.check_key(ESP, Kind.AUTH, 0x8000 | 4, 16, LINUX)


@pytest.mark.parametrize(
    ("satype", "kind", "alg_id", "good", "bad"),
    [
        (ESP, Kind.ENCRYPT, EncAlg.DESCBC, [8], [None, 0, 7, 16]),
        (ESP, Kind.ENCRYPT, EncAlg.X_AESCBC, [16, 24, 32], [None, 20]),
        (ESP, Kind.ENCRYPT, EncAlg.X_AESCTR, [20, 28, 36], [16, 32]),
        (ESP, Kind.ENCRYPT, EncAlg.NULL, [None, 0], [1]),
        # A missing HMAC key is a zero-length key; a present empty one is refused.
        (AH, Kind.AUTH, AuthAlg.SHA1HMAC, [None, 1, 20, 100], [0]),
        (AH, Kind.AUTH, AuthAlg.X_NULL, [None, 0, 5], []),
        (IPCOMP, Kind.COMPRESS, CompAlg.DEFLATE, [None, 0, 3], []),
    ],
)
def test_linux_key_lengths(
    satype: SaType, kind: Kind, alg_id: int, good: list[int | None], bad: list[int | None]
) -> None:
    for n in good:
        A.check_key(satype, kind, alg_id, n, LINUX)
    for n in bad:
        with pytest.raises(InvalidArgument):
            A.check_key(satype, kind, alg_id, n, LINUX)


@pytest.mark.parametrize(
    ("satype", "kind", "alg_id"),
    [
        (AH, Kind.AUTH, AuthAlg.X_TCP_MD5),  # TCP-MD5 only for TCP signature SAs
        (TCP, Kind.AUTH, AuthAlg.SHA1HMAC),
        (AH, Kind.AUTH, AuthAlg.NONE),  # AH needs an authentication algorithm
        (TCP, Kind.AUTH, AuthAlg.NONE),
        (ESP, Kind.ENCRYPT, EncAlg.NONE),  # ESP needs an encryption algorithm
        (AH, Kind.ENCRYPT, EncAlg.X_AESCBC),
        (IPCOMP, Kind.COMPRESS, CompAlg.NONE),
        (IPCOMP, Kind.ENCRYPT, EncAlg.X_AESCBC),
    ],
)
def test_algorithm_must_suit_the_satype(satype: SaType, kind: Kind, alg_id: int) -> None:
    with pytest.raises(InvalidArgument):
        A.check_key(satype, kind, alg_id, 20, FREEBSD)


def test_encrypt_field_of_ipcomp_holds_compression() -> None:
    assert A.encrypt_kind(IPCOMP) is Kind.COMPRESS
    assert A.encrypt_kind(ESP) is Kind.ENCRYPT
    assert A.encrypt_kind(AH) is Kind.ENCRYPT


def _key(n: int) -> Key:
    return Key(ExtType.KEY_ENCRYPT, bytes(n))


def test_check_sa_checks_both_fields_and_the_flags() -> None:
    A.check_sa(IpProto.ESP, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, Key(ExtType.KEY_AUTH, bytes(32)), _key(16))
    A.check_sa(IpProto.ESP, AuthAlg.NONE, EncAlg.X_AESGCM16, None, _key(20))
    A.check_sa(IpProto.AH, AuthAlg.SHA1HMAC, EncAlg.NONE, Key(ExtType.KEY_AUTH, bytes(20)), None)
    A.check_sa(IpProto.IPCOMP, AuthAlg.NONE, CompAlg.DEFLATE, None, None)
    A.check_sa(IpProto.TCP, AuthAlg.X_TCP_MD5, EncAlg.NONE, Key(ExtType.KEY_AUTH, b"secret"), None)
    bad = [
        (IpProto.ESP, AuthAlg.SHA1HMAC, EncAlg.X_AESCBC, None, _key(16), 0),  # auth without key
        (IpProto.ESP, AuthAlg.NONE, EncAlg.X_AESCBC, None, None, 0),  # no encryption key
        (IpProto.ESP, AuthAlg.NONE, EncAlg.X_AESCBC, None, _key(16), SaFlag.X_EXT_IV4B),
        (IpProto.AH, AuthAlg.SHA1HMAC, EncAlg.NONE, Key(ExtType.KEY_AUTH, bytes(20)), None, SaFlag.PFS),
        (IpProto.ESP, AuthAlg.X_NULL, EncAlg.X_AESGCM16, None, _key(20), 0),  # libreswan #1220
        (IpProto.IPCOMP, AuthAlg.NONE, CompAlg.LZS, None, None, 0),
        (IpProto.TCP, AuthAlg.X_TCP_MD5, EncAlg.X_AESCBC, Key(ExtType.KEY_AUTH, b"k"), None, 0),
        (IpProto.UDP, AuthAlg.NONE, EncAlg.NONE, None, None, 0),
    ]
    for proto, auth, enc, key_auth, key_enc, flags in bad:
        with pytest.raises(InvalidArgument):
            A.check_sa(proto, auth, enc, key_auth, key_enc, flags)


def test_check_sa_allows_iv4b_with_old_on_esp_without_auth() -> None:
    A.check_sa(IpProto.ESP, AuthAlg.NONE, EncAlg.X_AESCBC, None, _key(16), SaFlag.PFS | SaFlag.X_EXT_IV4B)


@pytest.mark.parametrize(
    ("enc", "key_len", "auth"),
    [
        (EncAlg.X_AESGCM16, 20, AuthAlg.X_AES128GMAC),
        (EncAlg.X_AESGCM16, 28, AuthAlg.X_AES192GMAC),
        (EncAlg.X_AESGCM16, 36, AuthAlg.X_AES256GMAC),
        (EncAlg.X_CHACHA20POLY1305, 36, AuthAlg.X_CHACHA20POLY1305),
        (EncAlg.X_AESCBC, 16, None),
    ],
)
def test_implied_auth_of_combined_modes(enc: EncAlg, key_len: int, auth: AuthAlg | None) -> None:
    assert A.implied_auth(enc, key_len) == auth


# ---------------------------------------------------------------- setkey key checks


def _named(kind: Kind, name: str) -> A.Algorithm:
    alg = A.by_name(kind, name)
    assert alg is not None
    return alg


@pytest.mark.parametrize(
    ("kind", "name", "good", "bad"),
    [
        (Kind.ENCRYPT, "aes-cbc", [128, 192, 256], [0, 120, 264, 288]),
        # FreeBSD's salt class: the 32-bit salt is typed but not checked.  setkey
        # checks a range, so 192 bits passes here and only the kernel refuses it.
        (Kind.ENCRYPT, "aes-ctr", [160, 192, 224, 288], [128, 152, 296, 320]),
        (Kind.ENCRYPT, "aes-gcm-16", [160, 224, 256, 288], [0, 128, 320]),
        (Kind.ENCRYPT, "chacha20-poly1305", [288], [256, 320]),
        (Kind.ENCRYPT, "null", [0, 8, 2048], [2056]),
        (Kind.AUTH, "hmac-sha1", [160], [128, 168, 512]),
        (Kind.AUTH, "hmac-sha2-256", [256], [160, 512]),
        (Kind.AUTH, "hmac-sha2-512", [512], [256]),
        (Kind.AUTH, "tcp-md5", [8, 128, 640], [0, 648]),
    ],
)
def test_freebsd_setkey_key_lengths(kind: Kind, name: str, good: list[int], bad: list[int]) -> None:
    alg = _named(kind, name)
    for bits in good:
        assert keylen.key_error(alg, bits, FREEBSD) is None, bits
    for bits in bad:
        assert keylen.key_error(alg, bits, FREEBSD) == keylen.INVALID_KEY_LENGTH, bits


def test_setkey_bits_as_typed() -> None:
    assert keylen.accepted_bits(_named(Kind.ENCRYPT, "aes-cbc"), FREEBSD) == range(128, 257, 8)
    assert keylen.accepted_bits(_named(Kind.ENCRYPT, "aes-gcm-16"), FREEBSD) == range(160, 289, 8)
    assert keylen.accepted_bits(_named(Kind.ENCRYPT, "aes-ctr"), LINUX) == range(160, 289, 8)
    assert keylen.accepted_bits(_named(Kind.AUTH, "hmac-sha1"), FREEBSD) == range(160, 161, 8)
    assert keylen.accepted_bits(_named(Kind.ENCRYPT, "des-cbc"), FREEBSD) is None


@pytest.mark.parametrize(
    ("kind", "name", "dialect"),
    [
        (Kind.ENCRYPT, "des-cbc", FREEBSD),
        (Kind.AUTH, "aes-xcbc-mac", FREEBSD),  # lexed by FreeBSD's setkey, not listed by its kernel
        (Kind.AUTH, "keyed-md5", LINUX),
        (Kind.ENCRYPT, "twofish-cbc", LINUX),
        (Kind.ENCRYPT, "aes-gcm-16", LINUX),
    ],
)
def test_setkey_reports_algorithms_the_kernel_did_not_list(kind: Kind, name: str, dialect: Dialect) -> None:
    assert keylen.key_error(_named(kind, name), 128, dialect) == keylen.NOT_SUPPORTED


def test_setkey_checks_the_list_the_kernel_actually_sent() -> None:
    alg = _named(Kind.ENCRYPT, "aes-cbc")
    only_128 = (Alg(EncAlg.X_AESCBC, 16, 128, 128),)
    assert keylen.key_error(alg, 128, FREEBSD, supported_algs=only_128) is None
    assert keylen.key_error(alg, 256, FREEBSD, supported_algs=only_128) == keylen.INVALID_KEY_LENGTH
    assert keylen.key_error(alg, 128, FREEBSD, supported_algs=()) == keylen.NOT_SUPPORTED


def test_keyless_spellings() -> None:
    null_enc = _named(Kind.ENCRYPT, "null")
    # ipsec-tools' "-E null" sends no key and checks an empty one against 0..0.
    assert keylen.key_error(null_enc, 0, LINUX) is None
    assert keylen.key_error(null_enc, 8, LINUX) is not None
    # "-A null" and "-C deflate" are not checked at all.
    assert keylen.key_error(_named(Kind.AUTH, "null"), 0, FREEBSD) is None
    assert keylen.key_error(_named(Kind.COMPRESS, "deflate"), 0, FREEBSD) is None


# ---------------------------------------------------------------- ACQUIRE proposals

LIFETIMES = {
    "soft_allocations": 1,
    "hard_allocations": 1,
    "soft_bytes": 0,
    "hard_bytes": 0,
    "soft_addtime": 0,
    "hard_addtime": 86400,
    "soft_usetime": 28800,
    "hard_usetime": 0,
}


def _enc_view(combs: Sequence[Comb]) -> list[tuple[int, int, int, int]]:
    return [(c.auth, c.encrypt, c.encrypt_minbits, c.encrypt_maxbits) for c in combs]


def _auth_view(combs: Sequence[Comb]) -> list[tuple[int, int, int, int]]:
    return [(c.auth, c.encrypt, c.auth_minbits, c.auth_maxbits) for c in combs]


def test_esp_proposal_with_default_knobs() -> None:
    combs = A.acquire_proposal(ESP)
    assert _enc_view(combs) == [
        (0, 11, 256, 2048),
        (0, 12, 256, 256),
        (0, 13, 256, 256),
        (0, 15, 256, 256),
        (0, 20, 256, 256),
        (0, 23, 256, 256),
    ]
    for c in combs:
        assert (c.flags, c.auth_minbits, c.auth_maxbits) == (0, 0, 0)
        assert {k: getattr(c, k) for k in LIFETIMES} == LIFETIMES


def test_ah_proposal_with_default_knobs_is_descending() -> None:
    combs = A.acquire_proposal(AH)
    assert _auth_view(combs) == [(7, 0, 512, 512), (6, 0, 384, 384), (5, 0, 256, 256), (3, 0, 160, 160)]
    for c in combs:
        assert {k: getattr(c, k) for k in LIFETIMES} == LIFETIMES


def test_ipcomp_proposal_is_deflate_without_key_bits() -> None:
    combs = A.acquire_proposal(IPCOMP)
    assert len(combs) == 1
    (c,) = combs
    assert (c.auth, c.encrypt, c.auth_minbits, c.auth_maxbits, c.encrypt_minbits, c.encrypt_maxbits) == (
        0,
        CompAlg.DEFLATE,
        0,
        0,
        0,
        0,
    )
    assert {k: getattr(c, k) for k in LIFETIMES} == LIFETIMES


def test_other_satypes_get_no_proposal() -> None:
    assert A.acquire_proposal(TCP) == ()
    assert A.acquire_proposal(SaType.UNSPEC) == ()


@pytest.mark.parametrize(
    ("esp_keymin", "expected"),
    [
        (
            128,
            [
                (0, 11, 128, 2048),
                (0, 12, 128, 256),
                (0, 13, 128, 256),
                (0, 15, 256, 256),
                (0, 20, 128, 256),
                (0, 23, 128, 256),
            ],
        ),
        (
            0,
            [
                (0, 11, 0, 2048),
                (0, 12, 128, 256),
                (0, 13, 128, 256),
                (0, 15, 256, 256),
                (0, 20, 128, 256),
                (0, 23, 128, 256),
            ],
        ),
        (257, [(0, 11, 257, 2048)]),
        (2048, [(0, 11, 2048, 2048)]),
        (2049, []),
    ],
)
def test_esp_proposal_follows_esp_keymin(esp_keymin: int, expected: list[tuple[int, int, int, int]]) -> None:
    assert _enc_view(A.acquire_proposal(ESP, esp_keymin=esp_keymin)) == expected


@pytest.mark.parametrize(
    ("ah_keymin", "ids"),
    [(0, [7, 6, 5, 3]), (160, [7, 6, 5, 3]), (161, [7, 6, 5]), (384, [7, 6]), (512, [7]), (513, [])],
)
def test_ah_proposal_follows_ah_keymin(ah_keymin: int, ids: list[int]) -> None:
    assert [c.auth for c in A.acquire_proposal(AH, ah_keymin=ah_keymin)] == ids


def test_esp_auth_repeats_each_encryption_combination_with_zeroed_auth() -> None:
    # key_getcomb_ealg copies the AH list per cipher, then zeroes every copy.
    combs = A.acquire_proposal(ESP, esp_auth=1)
    assert len(combs) == 6 * 4
    assert [c.encrypt for c in combs] == [e for e in (11, 12, 13, 15, 20, 23) for _ in range(4)]
    assert all(c.auth == 0 and c.auth_minbits == 0 for c in combs)
    assert len(A.acquire_proposal(ESP, esp_auth=1, ah_keymin=384)) == 6 * 2


def test_esp_auth_without_any_ah_combination_drops_the_whole_proposal() -> None:
    assert A.acquire_proposal(ESP, esp_auth=1, ah_keymin=1024) == ()
    assert len(A.acquire_proposal(ESP, esp_auth=0, ah_keymin=1024)) == 6


def test_proposal_takes_knobs_and_an_ip_protocol() -> None:
    knobs = Knobs(esp_keymin=128, ah_keymin=256)
    assert A.proposal(IpProto.ESP, knobs) == A.acquire_proposal(ESP, esp_keymin=128, ah_keymin=256)
    assert A.proposal(IpProto.AH, knobs) == A.acquire_proposal(AH, ah_keymin=256)
    assert A.proposal(IpProto.IPCOMP, knobs) == A.acquire_proposal(IPCOMP)
    assert A.proposal(IpProto.UDP, knobs) == ()


@pytest.mark.parametrize("dialect", list(Dialect))
@pytest.mark.parametrize("satype", [ESP, AH, IPCOMP])
def test_proposals_encode_in_their_dialect(dialect: Dialect, satype: SaType) -> None:
    combs = A.acquire_proposal(satype, dialect=dialect)
    assert combs
    prop = Prop(32, combs)
    data = encode(Message(type=MsgType.ACQUIRE, satype=satype, exts=(prop,)), dialect)
    assert len(data) == 16 + 8 + 72 * len(combs)
    assert decode(data, dialect, request=False).proposal == prop


def test_linux_proposal_offers_only_what_linux_lists() -> None:
    esp = A.acquire_proposal(ESP, dialect=LINUX)
    # NULL (0 bits), DES, 3DES and CAST cannot reach 256 bits.
    assert _enc_view(esp) == [(0, 7, 256, 448), (0, 12, 256, 256), (0, 13, 256, 288), (0, 22, 256, 256)]
    assert [c.auth for c in A.acquire_proposal(AH, dialect=LINUX)] == [7, 6, 5, 3, 2]
