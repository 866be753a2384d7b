"""SADB_ADD (reference §3.3) and the value checks of key_setsaval (§7.3, §4.15, §4.16, §5.3, §5.7)."""

from __future__ import annotations

import errno
import random

import pytest

from pfkeyd.engine import KeyEngine
from pfkeyd.sad import NatT
from pfkeyd.wire import (
    Address,
    AuthAlg,
    CompAlg,
    Dialect,
    EncAlg,
    ExtType,
    Ident,
    IdentType,
    Key,
    Lifetime,
    Mode,
    NatTFrag,
    NatTPort,
    NatTTypeExt,
    Sa2,
    SaFlag,
    SaReplay,
    SaState,
    SaType,
    Sens,
    SockAddr,
)
from tests.engine.conftest import (
    A6,
    B6,
    CLIENT_OF,
    FB,
    FB2,
    LX,
    LX2,
    PID,
    A,
    B,
    acquire_request,
    add,
    at,
    ext_types,
    fails,
    get,
    getspi,
    hard,
    has_keys,
    key_auth,
    key_enc,
    make_engine,
    ok,
    received,
    register,
    reply,
    sends,
    soft,
)

# ----------------------------------------------------------------------------- SPI


def test_add_creates_a_mature_sa_with_request_seq_and_pid(engine: KeyEngine, me: int) -> None:
    ok(engine, me, add(spi=0x1000, seq=12, pid=99), at(4))
    sa = engine.sad.get(0x1000)
    assert sa is not None
    assert sa.state == SaState.MATURE
    assert (sa.seq, sa.pid, sa.satype, sa.created, sa.created_wall) == (12, 99, SaType.ESP, 4.0, at(4).wall)
    assert sa.key_auth == key_auth(32) and sa.key_encrypt == key_enc(16)


def test_add_duplicate_spi_replies_eexist(engine: KeyEngine, me: int) -> None:
    ok(engine, me, add(spi=0x1000))
    assert fails(engine, me, add(spi=0x1000)) == errno.EEXIST


def test_add_spi_used_by_another_protocol_and_addresses_replies_eexist(engine: KeyEngine) -> None:
    # The SPI namespace is global (§3; "12 is pickier about unique SPIs", §10.6).
    ok(engine, FB, add(SaType.AH, 0x1000, s="192.0.2.1", d="192.0.2.2"))
    assert fails(engine, FB, add(SaType.ESP, 0x1000)) == errno.EEXIST


def test_add_spi_held_by_a_larval_sa_replies_eexist(engine: KeyEngine) -> None:
    ok(engine, FB, getspi(spirange=(0x1000, 0x1000)))
    assert fails(engine, FB, add(spi=0x1000)) == errno.EEXIST


@pytest.mark.parametrize("satype", [SaType.ESP, SaType.AH], ids=lambda s: s.name)
@pytest.mark.parametrize("spi", [0, 1, 255])
def test_add_reserved_spi_for_esp_and_ah_replies_einval(engine: KeyEngine, satype: SaType, spi: int) -> None:
    assert fails(engine, FB, add(satype, spi)) == errno.EINVAL


def test_add_ipcomp_cpi_below_256_is_allowed(engine: KeyEngine) -> None:
    ok(engine, FB, add(SaType.X_IPCOMP, 0x50))


def test_add_beyond_max_sas_replies_enobufs() -> None:
    engine = make_engine(max_sas=1)
    ok(engine, FB, add(spi=0x1000))
    assert fails(engine, FB, add(spi=0x1001)) == errno.ENOBUFS


# ----------------------------------------------------------------------------- keys


def test_add_esp_without_encryption_key_replies_einval(engine: KeyEngine, me: int) -> None:
    assert fails(engine, me, add(ke=None)) == errno.EINVAL


def test_add_ah_without_authentication_key_replies_einval(engine: KeyEngine, me: int) -> None:
    assert fails(engine, me, add(SaType.AH, ka=None)) == errno.EINVAL


def test_add_esp_with_auth_algorithm_but_no_authentication_key_replies_einval(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(ka=None)) == errno.EINVAL


def test_add_esp_hmac_without_key_from_a_linux_socket_means_an_empty_key(engine: KeyEngine) -> None:
    # af_key: a missing KEY_AUTH is a zero-length key (the algorithm table's linux row).
    ok(engine, LX, add(ka=None))


def test_add_esp_without_authentication_is_allowed(engine: KeyEngine, me: int) -> None:
    ok(engine, me, add(auth=AuthAlg.NONE, ka=None))


def test_add_empty_authentication_key_replies_einval_unless_auth_is_null(engine: KeyEngine) -> None:
    empty = Key(ExtType.KEY_AUTH, b"")
    assert fails(engine, FB, add(ka=empty)) == errno.EINVAL
    ok(engine, FB, add(auth=AuthAlg.X_NULL, ka=empty))


def test_add_empty_encryption_key_replies_einval_unless_encryption_is_null(engine: KeyEngine) -> None:
    empty = Key(ExtType.KEY_ENCRYPT, b"")
    assert fails(engine, FB, add(ke=empty)) == errno.EINVAL
    ok(engine, FB, add(enc=EncAlg.NULL, ke=empty))


def test_add_authentication_key_on_ipcomp_replies_einval(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(SaType.X_IPCOMP, ka=key_auth(20))) == errno.EINVAL


def test_add_ipcomp_encryption_key_must_be_empty(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(SaType.X_IPCOMP, ke=key_enc(16))) == errno.EINVAL
    ok(engine, FB, add(SaType.X_IPCOMP, ke=Key(ExtType.KEY_ENCRYPT, b"")))


@pytest.mark.parametrize("satype", [SaType.AH, SaType.X_TCPSIGNATURE], ids=lambda s: s.name)
def test_add_encryption_key_on_ah_or_tcp_md5_replies_einval(engine: KeyEngine, satype: SaType) -> None:
    assert fails(engine, FB, add(satype, ke=key_enc(16))) == errno.EINVAL


# ----------------------------------------------------------------------------- per-satype checks


def test_add_ah_with_deriv_flag_replies_einval(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(SaType.AH, flags=SaFlag.X_EXT_DERIV)) == errno.EINVAL


def test_add_ah_with_an_encryption_algorithm_replies_einval(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(SaType.AH, enc=EncAlg.X_AESCBC)) == errno.EINVAL


def test_add_esp_with_old_and_deriv_flags_replies_einval(engine: KeyEngine) -> None:
    flags = SaFlag.PFS | SaFlag.X_EXT_DERIV
    assert fails(engine, FB, add(auth=AuthAlg.NONE, ka=None, flags=flags)) == errno.EINVAL


def test_add_ipcomp_with_an_authentication_algorithm_replies_einval(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(SaType.X_IPCOMP, auth=AuthAlg.X_SHA2_256)) == errno.EINVAL


def test_add_ipcomp_cpi_above_16_bits_needs_rawcpi(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(SaType.X_IPCOMP, 0x10000)) == errno.EINVAL
    ok(engine, FB, add(SaType.X_IPCOMP, 0x10000, flags=SaFlag.X_EXT_RAWCPI))


def test_add_tcp_md5_with_an_encryption_algorithm_replies_einval(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(SaType.X_TCPSIGNATURE, enc=EncAlg.X_AESCBC)) == errno.EINVAL


def test_add_tcp_md5_second_sa_for_the_same_addresses_replies_eexist(engine: KeyEngine) -> None:
    ok(engine, FB, add(SaType.X_TCPSIGNATURE, 0x1000))
    assert fails(engine, FB, add(SaType.X_TCPSIGNATURE, 0x1001)) == errno.EEXIST


def test_add_tcp_md5_with_a_used_spi_takes_another_silently(engine: KeyEngine) -> None:
    ok(engine, FB, add(SaType.ESP, 0x1000, s="192.0.2.1", d="192.0.2.2"))
    effects = ok(engine, FB, add(SaType.X_TCPSIGNATURE, 0x1000))
    got = reply(effects, FB).sa
    assert got is not None and got.spi == 0x1000
    tcp = [sa for sa in engine.sad.by_spi.values() if sa.satype == SaType.X_TCPSIGNATURE]
    assert len(tcp) == 1 and tcp[0].spi != 0x1000


# ----------------------------------------------------------------------------- flags


@pytest.mark.parametrize("bit", [1 << n for n in range(12, 32)], ids=hex)
def test_add_flag_outside_0x0fff_replies_einval(engine: KeyEngine, bit: int) -> None:
    assert fails(engine, FB, add(flags=bit)) == errno.EINVAL


def test_add_cycseq_flag_that_setkey_sets_by_default_is_accepted(engine: KeyEngine, me: int) -> None:
    ok(engine, me, add(flags=SaFlag.X_EXT_CYCSEQ))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.flags == SaFlag.X_EXT_CYCSEQ


def test_add_pfs_bit_with_authentication_replies_einval(engine: KeyEngine) -> None:
    # PFS is KAME's X_EXT_OLD: no replay, so no authenticator (§5.3).
    assert fails(engine, FB, add(flags=SaFlag.PFS)) == errno.EINVAL
    assert fails(engine, FB, add(SaType.AH, flags=SaFlag.PFS)) == errno.EINVAL


def test_add_iv4b_without_old_replies_einval(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(auth=AuthAlg.NONE, ka=None, flags=SaFlag.X_EXT_IV4B)) == errno.EINVAL


def test_add_old_esp_without_authentication_ignores_sa_replay(engine: KeyEngine) -> None:
    ok(engine, FB, add(auth=AuthAlg.NONE, ka=None, flags=SaFlag.PFS, replay=4))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.replay == 0


# ----------------------------------------------------------------------------- replay


def _replay_out(engine: KeyEngine, spi: int = 0x1000) -> tuple[int, SaReplay | None]:
    msg = reply(ok(engine, FB, get(spi=spi)), FB)
    sa = msg.sa
    assert sa is not None
    ext = msg.get(ExtType.X_SA_REPLAY)
    assert ext is None or isinstance(ext, SaReplay)
    return sa.replay, ext


def test_add_replay_field_is_kept_in_bytes(engine: KeyEngine) -> None:
    ok(engine, FB, add(replay=4))
    assert _replay_out(engine) == (4, None)


def test_add_sa_replay_over_the_limit_replies_einval(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(extra=[SaReplay(2**32 - 32)])) == errno.EINVAL
    ok(engine, FB, add(extra=[SaReplay(2**32 - 33)]))


def test_add_sa_replay_overrides_the_sa_replay_field(engine: KeyEngine) -> None:
    ok(engine, FB, add(replay=4, extra=[SaReplay(64)]))
    assert _replay_out(engine) == (8, None)


@pytest.mark.parametrize(
    ("packets", "expected"),
    [
        (2040, (255, None)),  # 255 bytes: the SA field holds it
        (2041, (255, SaReplay(2048))),  # 256 bytes: SA_REPLAY carries bytes x 8
        (4096, (255, SaReplay(4096))),
        (10_000, (255, SaReplay(10_000))),
    ],
    ids=["255-bytes", "256-bytes", "512-bytes", "1250-bytes"],
)
def test_add_sa_replay_is_reported_as_window_bytes_times_8_beyond_255_bytes(
    engine: KeyEngine, packets: int, expected: tuple[int, SaReplay | None]
) -> None:
    ok(engine, FB, add(extra=[SaReplay(packets)]))
    assert _replay_out(engine) == expected


# ----------------------------------------------------------------------------- identities


def _ident(exttype: ExtType, idtype: int = IdentType.FQDN, text: bytes = b"host.example") -> Ident:
    return Ident(exttype, idtype, text)


@pytest.mark.parametrize("which", [ExtType.IDENTITY_SRC, ExtType.IDENTITY_DST], ids=lambda t: t.name)
def test_add_with_one_identity_replies_einval(engine: KeyEngine, which: ExtType) -> None:
    assert fails(engine, FB, add(extra=[_ident(which)])) == errno.EINVAL


def test_add_with_identities_of_different_types_replies_einval(engine: KeyEngine) -> None:
    ids = [_ident(ExtType.IDENTITY_SRC, IdentType.FQDN), _ident(ExtType.IDENTITY_DST, IdentType.USERFQDN)]
    assert fails(engine, FB, add(extra=ids)) == errno.EINVAL


def test_add_identity_pair_is_accepted_and_never_dumped(engine: KeyEngine) -> None:
    ok(engine, FB, add(extra=[_ident(ExtType.IDENTITY_SRC), _ident(ExtType.IDENTITY_DST)]))
    msg = reply(ok(engine, FB, get(spi=0x1000)), FB)
    assert ExtType.IDENTITY_SRC not in ext_types(msg) and ExtType.IDENTITY_DST not in ext_types(msg)


# ----------------------------------------------------------------------------- lifetimes


@pytest.mark.parametrize("which", ["hard", "soft"])
def test_add_with_only_one_of_hard_and_soft_replies_einval_on_freebsd(engine: KeyEngine, which: str) -> None:
    # key_add: both lifetimes or neither.
    lt: Lifetime = hard(addtime=5) if which == "hard" else soft(addtime=5)
    assert fails(engine, FB, add(extra=[lt])) == errno.EINVAL


@pytest.mark.parametrize("which", ["hard", "soft"])
def test_add_with_only_one_of_hard_and_soft_is_accepted_on_linux(engine: KeyEngine, which: str) -> None:
    # pfkey_msg2xfrm_state takes either alone; the other limit stays unset.
    lt: Lifetime = hard(addtime=86400) if which == "hard" else soft(addtime=3600)
    effects = ok(engine, LX, add(extra=[lt]))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.state == SaState.MATURE
    assert (sa.hard, sa.soft) == ((lt, None) if which == "hard" else (None, lt))
    answer = reply(effects, LX)
    assert answer.get(lt.exttype) == lt
    other = ExtType.LIFETIME_SOFT if which == "hard" else ExtType.LIFETIME_HARD
    assert other not in ext_types(answer)
    assert engine.next_deadline() == lt.addtime
    got = reply(ok(engine, LX, get(spi=0x1000)), LX)
    assert got.get(lt.exttype) == lt and other not in ext_types(got)


# ----------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize(
    ("enc", "klen"),
    [
        (EncAlg.X_AESCBC, 16),
        (EncAlg.X_AESCBC, 24),
        (EncAlg.X_AESCBC, 32),
        (EncAlg.X_AESCTR, 20),
        (EncAlg.X_AESCTR, 36),
        (EncAlg.NULL, 0),
        (EncAlg.NULL, 256),
    ],
)
def test_add_accepts_freebsd_encryption_key_lengths(engine: KeyEngine, enc: EncAlg, klen: int) -> None:
    ok(engine, FB, add(enc=enc, ke=key_enc(klen)))


@pytest.mark.parametrize(
    ("enc", "klen"),
    [
        (EncAlg.X_AESCBC, 8),
        (EncAlg.X_AESCBC, 20),
        (EncAlg.X_AESCBC, 33),
        (EncAlg.X_AESCTR, 16),
        (EncAlg.X_AESGCM16, 16),
        (EncAlg.X_AESGCM16, 32),
        (EncAlg.X_CHACHA20POLY1305, 32),
        (EncAlg.NULL, 257),
    ],
)
def test_add_bad_encryption_key_length_replies_einval(engine: KeyEngine, enc: EncAlg, klen: int) -> None:
    assert fails(engine, FB, add(enc=enc, ke=key_enc(klen), auth=AuthAlg.NONE, ka=None)) == errno.EINVAL


@pytest.mark.parametrize(
    ("auth", "klen"), [(AuthAlg.X_SHA2_256, 65), (AuthAlg.X_SHA2_512, 129), (AuthAlg.SHA1HMAC, 65)]
)
def test_add_bad_authentication_key_length_replies_einval(engine: KeyEngine, auth: AuthAlg, klen: int) -> None:
    assert fails(engine, FB, add(auth=auth, ka=key_auth(klen))) == errno.EINVAL


@pytest.mark.parametrize("enc", [EncAlg.DESCBC, EncAlg.DES3CBC, EncAlg.X_CAMELLIACBC, 0x8000 | 99])
def test_add_encryption_algorithm_freebsd_does_not_implement_replies_einval(engine: KeyEngine, enc: int) -> None:
    assert fails(engine, FB, add(enc=enc, ke=key_enc(24))) == errno.EINVAL


@pytest.mark.parametrize(("enc", "klen"), [(EncAlg.X_AESGCM16, 20), (EncAlg.X_AES_CCM_ICV16, 19)])
def test_add_aead_from_a_linux_socket_replies_enosys(engine: KeyEngine, enc: EncAlg, klen: int) -> None:
    # af_key looks algorithms up in the auth and encryption lists only (§5.7, §10.4).
    assert fails(engine, LX, add(enc=enc, ke=key_enc(klen), auth=AuthAlg.NONE, ka=None)) == errno.ENOSYS


def test_add_des_from_a_linux_socket_is_accepted(engine: KeyEngine) -> None:
    ok(engine, LX, add(enc=EncAlg.DES3CBC, ke=key_enc(24)))


@pytest.mark.parametrize(
    ("klen", "implied"),
    [
        (20, AuthAlg.X_AES128GMAC),
        (28, AuthAlg.X_AES192GMAC),
        (36, AuthAlg.X_AES256GMAC),
    ],
)
def test_add_aes_gcm_records_the_gmac_auth_id_of_its_key_size(engine: KeyEngine, klen: int, implied: AuthAlg) -> None:
    ok(engine, FB, add(enc=EncAlg.X_AESGCM16, ke=key_enc(klen), auth=AuthAlg.NONE, ka=None))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.auth == implied
    got = reply(ok(engine, FB, get(spi=0x1000)), FB).sa
    assert got is not None and got.auth == implied


def test_add_chacha20_poly1305_records_the_poly1305_auth_id(engine: KeyEngine) -> None:
    ok(engine, FB, add(enc=EncAlg.X_CHACHA20POLY1305, ke=key_enc(36), auth=AuthAlg.NONE, ka=None))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.auth == AuthAlg.X_CHACHA20POLY1305


def test_add_aes_gcm_with_null_auth_and_no_auth_key_replies_einval(engine: KeyEngine) -> None:
    # libreswan #1220's SADB_ADD (auth 251, encrypt 20) without KEY_AUTH (§5.7, §10.5).
    assert fails(engine, FB, add(enc=EncAlg.X_AESGCM16, ke=key_enc(20), auth=AuthAlg.X_NULL, ka=None)) == errno.EINVAL


def test_add_ipcomp_deflate_is_accepted_and_other_compressions_are_not(engine: KeyEngine) -> None:
    ok(engine, FB, add(SaType.X_IPCOMP, 0x1000, enc=CompAlg.DEFLATE))
    assert fails(engine, FB, add(SaType.X_IPCOMP, 0x1001, enc=CompAlg.LZS)) == errno.EINVAL


def test_add_tcp_md5_key_length_is_1_to_80(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(SaType.X_TCPSIGNATURE, ka=key_auth(81))) == errno.EINVAL
    ok(engine, FB, add(SaType.X_TCPSIGNATURE, ka=key_auth(80)))


# ----------------------------------------------------------------------------- NAT-T


def _natt(t: int = 2, sport: int = 4500, dport: int = 4500) -> list[NatTTypeExt | NatTPort]:
    return [NatTTypeExt(t), NatTPort(ExtType.X_NAT_T_SPORT, sport), NatTPort(ExtType.X_NAT_T_DPORT, dport)]


def test_add_nat_t_esp_sa_records_the_encapsulation(engine: KeyEngine) -> None:
    ok(engine, FB, add(extra=_natt(sport=4501, dport=4502)))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.natt == NatT(2, 4501, 4502)


def test_add_nat_t_type_other_than_espinudp_replies_einval(engine: KeyEngine) -> None:
    assert fails(engine, FB, add(extra=_natt(t=1))) == errno.EINVAL


@pytest.mark.parametrize("which", ["sport", "dport"])
def test_add_nat_t_port_zero_replies_einval(engine: KeyEngine, which: str) -> None:
    assert fails(engine, FB, add(extra=_natt(**{which: 0}))) == errno.EINVAL


@pytest.mark.parametrize("keep", [(0,), (0, 1), (1, 2)])
def test_add_partial_nat_t_set_is_ignored(engine: KeyEngine, keep: tuple[int, ...]) -> None:
    exts = _natt(t=1, sport=0)  # even invalid values: a partial set is not looked at
    ok(engine, FB, add(extra=[exts[i] for i in keep]))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.natt is None


def test_add_nat_t_on_ah_is_ignored(engine: KeyEngine) -> None:
    ok(engine, FB, add(SaType.AH, extra=_natt()))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.natt is None


def test_add_nat_t_original_addresses_are_ipv4_only(engine: KeyEngine) -> None:
    oai = Address.host(ExtType.X_NAT_T_OAI, "2001:db8::9")
    assert fails(engine, FB, add(extra=[*_natt(), oai])) == errno.EINVAL


def test_add_nat_t_original_address_equal_to_the_sa_address_is_ignored(engine: KeyEngine) -> None:
    oai = Address.host(ExtType.X_NAT_T_OAI, A)
    oar = Address.host(ExtType.X_NAT_T_OAR, "10.9.9.9")
    ok(engine, FB, add(extra=[*_natt(), oai, oar]))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.natt == NatT(2, 4500, 4500, None, SockAddr.parse("10.9.9.9"))


def test_add_nat_t_is_reported_by_get(engine: KeyEngine) -> None:
    oai = Address.host(ExtType.X_NAT_T_OAI, "10.8.8.8")
    ok(engine, FB, add(extra=[*_natt(), oai]))
    msg = reply(ok(engine, FB, get(spi=0x1000)), FB)
    assert ext_types(msg)[-4:] == [
        ExtType.X_NAT_T_TYPE,
        ExtType.X_NAT_T_SPORT,
        ExtType.X_NAT_T_DPORT,
        ExtType.X_NAT_T_OAI,
    ]


# ----------------------------------------------------------------------------- reply


#: key_getmsgbuf_x1's order (§3.2).
X1_ORDER = [
    ExtType.SA,
    ExtType.X_SA2,
    ExtType.ADDRESS_SRC,
    ExtType.ADDRESS_DST,
    ExtType.LIFETIME_HARD,
    ExtType.LIFETIME_SOFT,
    ExtType.IDENTITY_SRC,
    ExtType.IDENTITY_DST,
    ExtType.X_NAT_T_TYPE,
    ExtType.X_NAT_T_SPORT,
    ExtType.X_NAT_T_DPORT,
    ExtType.X_NAT_T_OAI,
    ExtType.X_NAT_T_OAR,
]


def test_add_replies_to_all_without_keys_in_key_getmsgbuf_x1_order() -> None:
    engine = make_engine(clients=(FB, FB2))
    request = add(
        spi=0x1000,
        seq=0x01020304,
        pid=PID,
        sa2=Sa2(Mode.TUNNEL, 0, 5),
        hard_lt=hard(addtime=100),
        soft_lt=soft(addtime=80),
        extra=[
            Lifetime(ExtType.LIFETIME_CURRENT),
            Address.host(ExtType.ADDRESS_PROXY, "10.7.7.7"),
            _ident(ExtType.IDENTITY_SRC),
            _ident(ExtType.IDENTITY_DST),
            Sens(),
            *_natt(),
            Address.host(ExtType.X_NAT_T_OAI, "10.8.8.8"),
            Address.host(ExtType.X_NAT_T_OAR, "10.9.9.9"),
            NatTFrag(1400),
            SaReplay(64),
        ],
    )
    exts = list(request.exts)
    random.Random(5).shuffle(exts)
    request = request.replace(exts=tuple(exts))
    effects = ok(engine, FB, request)
    msg = reply(effects, FB)
    assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno) == (request.type, SaType.ESP, 0x01020304, PID, 0)
    assert ext_types(msg) == X1_ORDER
    assert all(msg.get(t) == request.get(t) for t in X1_ORDER)
    assert received(effects, FB2) == [msg]
    assert [s.reply for s in sends(effects)] == [True, False]


@pytest.mark.parametrize("dialect", [Dialect.FREEBSD, Dialect.LINUX], ids=["freebsd", "linux"])
def test_add_reply_reaches_every_socket_and_carries_no_keys(dialect: Dialect) -> None:
    engine = make_engine()
    me = CLIENT_OF[dialect]
    ok(engine, FB2, register(SaType.AH))
    effects = ok(engine, me, add())
    msg = reply(effects, me)
    assert ext_types(msg) == [ExtType.SA, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST]
    for c in (FB, FB2, LX, LX2):
        assert received(effects, c) == [msg]
    assert not any(has_keys(s.msg) for s in sends(effects))


def test_add_ipv6_sa(engine: KeyEngine, me: int) -> None:
    ok(engine, me, add(s=A6, d=B6))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.index.src == SockAddr.parse(A6)


def test_add_with_an_acquire_seq_completes_that_acquire(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    ok(engine, FB, acquire_request())
    (rec,) = engine.acquires.by_index.values()
    ok(engine, FB2, add(seq=rec.seq))
    assert len(engine.acquires) == 0


def test_add_without_sa_extension_replies_einval(engine: KeyEngine, me: int) -> None:
    assert fails(engine, me, add(omit=[ExtType.SA])) == errno.EINVAL


@pytest.mark.parametrize("missing", [ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST], ids=lambda t: t.name)
def test_add_without_an_address_replies_einval(engine: KeyEngine, me: int, missing: ExtType) -> None:
    assert fails(engine, me, add(omit=[missing])) == errno.EINVAL


def test_add_with_a_prefix_longer_than_the_address_replies_einval(engine: KeyEngine) -> None:
    bad = Address(ExtType.ADDRESS_SRC, SockAddr.parse(A), 33)
    assert fails(engine, FB, add(extra=[bad])) == errno.EINVAL


def test_add_with_different_address_protocols_replies_einval(engine: KeyEngine) -> None:
    bad = Address.host(ExtType.ADDRESS_SRC, A, proto=6)
    assert fails(engine, FB, add(extra=[bad])) == errno.EINVAL


def test_add_of_the_setkey_example_sa(engine: KeyEngine) -> None:
    # real-clients.md §3.2: esp 0x1000 transport, aes-cbc 128 + hmac-sha256, flags 0x40.
    ok(engine, LX, add(spi=0x1000, sa2=Sa2(Mode.TRANSPORT), flags=0x40, pid=0x3455))
    sa = engine.sad.get(0x1000)
    assert sa is not None
    assert (sa.index.mode, sa.auth, sa.encrypt) == (Mode.TRANSPORT, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC)
    assert sa.index.dst == SockAddr.parse(B)
