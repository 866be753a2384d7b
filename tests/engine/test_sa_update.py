"""SADB_UPDATE (reference §3.2, §7.1, §7.3)."""

from __future__ import annotations

import errno

import pytest

from pfkeyd.engine import KeyEngine
from pfkeyd.sad import NatT
from pfkeyd.wire import (
    Address,
    AuthAlg,
    Dialect,
    EncAlg,
    Extension,
    ExtType,
    Mode,
    NatTPort,
    NatTTypeExt,
    Sa,
    Sa2,
    SaState,
    SaType,
)
from tests.engine.conftest import (
    CLIENT_OF,
    FB,
    FB2,
    LX,
    LX2,
    PID,
    at,
    ext_types,
    fails,
    get,
    getspi,
    hard,
    has_keys,
    key_auth,
    key_enc,
    larval,
    lifetimes_update,
    make_engine,
    mature,
    ok,
    received,
    reply,
    sends,
    soft,
    update,
)


def test_update_of_unknown_spi_replies_einval(engine: KeyEngine, me: int) -> None:
    # EINVAL, not ESRCH: key_update's lookup by SPI (§3.2).
    assert fails(engine, me, update(spi=0x9999)) == errno.EINVAL


def test_update_with_another_pid_replies_einval(engine: KeyEngine, me: int) -> None:
    larval(engine, me, 0x2000, pid=100)
    assert fails(engine, me, update(spi=0x2000, pid=101)) == errno.EINVAL


def test_update_checks_the_pid_of_an_added_sa_too(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, pid=100)
    assert fails(engine, FB, lifetimes_update(spi=0x1000, pid=101)) == errno.EINVAL
    ok(engine, FB, lifetimes_update(spi=0x1000, pid=100))


def test_update_from_another_socket_with_the_same_pid_is_accepted(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000, pid=100)
    ok(engine, LX, update(spi=0x2000, pid=100))


@pytest.mark.parametrize("change", ["dst", "src", "satype"])
def test_update_with_another_sa_index_replies_esrch(engine: KeyEngine, me: int, change: str) -> None:
    larval(engine, me, 0x2000)
    msg = {
        "dst": update(spi=0x2000, d="10.0.0.9"),
        "src": update(spi=0x2000, s="10.0.0.9"),
        "satype": update(SaType.AH, spi=0x2000),
    }[change]
    assert fails(engine, me, msg) == errno.ESRCH


def test_update_with_another_mode_than_the_sa_heads_replies_esrch(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000, sa2=Sa2(Mode.TUNNEL))
    assert fails(engine, FB, update(spi=0x2000, sa2=Sa2(Mode.TRANSPORT))) == errno.ESRCH
    ok(engine, FB, update(spi=0x2000, sa2=Sa2(Mode.TUNNEL)))


def test_update_of_a_mode_any_sa_head_accepts_any_mode(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000)
    ok(engine, FB, update(spi=0x2000, sa2=Sa2(Mode.TRANSPORT)))


def test_update_with_a_nonzero_reqid_must_match_the_sa_heads(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000, sa2=Sa2(Mode.TRANSPORT, 0, 7))
    assert fails(engine, FB, update(spi=0x2000, sa2=Sa2(Mode.TRANSPORT, 0, 8))) == errno.ESRCH
    ok(engine, FB, update(spi=0x2000, sa2=Sa2(Mode.TRANSPORT, 0, 0)))


def test_update_ignores_ports_in_the_addresses(engine: KeyEngine) -> None:
    # racoon's responder sends its IKE port in SA addresses (real-clients.md §0 item 8).
    larval(engine, FB, 0x2000)
    msg = update(spi=0x2000, extra=[Address.host(ExtType.ADDRESS_SRC, "10.0.0.1", port=15000)])
    ok(engine, FB, msg)


def test_update_of_larval_esp_without_encryption_key_replies_einval(engine: KeyEngine, me: int) -> None:
    larval(engine, me, 0x2000)
    assert fails(engine, me, update(spi=0x2000, ke=None)) == errno.EINVAL


def test_update_of_larval_ah_without_authentication_key_replies_einval(engine: KeyEngine, me: int) -> None:
    larval(engine, me, 0x2000, SaType.AH)
    assert fails(engine, me, update(SaType.AH, 0x2000, ka=None)) == errno.EINVAL


def test_update_of_larval_with_a_bad_key_length_replies_einval_and_keeps_it_larval(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000)
    assert fails(engine, FB, update(spi=0x2000, ke=key_enc(17))) == errno.EINVAL
    sa = engine.sad.get(0x2000)
    assert sa is not None and sa.state == SaState.LARVAL


def test_update_of_larval_makes_it_mature_with_the_new_values(engine: KeyEngine, me: int) -> None:
    larval(engine, me, 0x2000, seq=9, pid=PID, now=at(3))
    ok(
        engine,
        me,
        update(spi=0x2000, seq=55, flags=0x40, replay=4, hard_lt=hard(addtime=100), soft_lt=soft(addtime=80)),
        at(7),
    )
    sa = engine.sad.get(0x2000)
    assert sa is not None
    assert sa.state == SaState.MATURE
    assert (sa.auth, sa.encrypt, sa.flags, sa.replay) == (AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, 0x40, 4)
    assert sa.key_auth == key_auth(32) and sa.key_encrypt == key_enc(16)
    assert sa.hard == hard(addtime=100) and sa.soft == soft(addtime=80)
    # created is reset to the UPDATE's time; seq and pid stay those of GETSPI.
    assert (sa.created, sa.created_wall) == (at(7).mono, at(7).wall)
    assert (sa.seq, sa.pid) == (9, PID)


@pytest.mark.parametrize("state", [SaState.LARVAL, SaState.MATURE, SaState.DYING, SaState.DEAD, 77])
def test_update_ignores_the_sa_state_field(engine: KeyEngine, state: int) -> None:
    larval(engine, FB, 0x2000)
    ok(engine, FB, update(spi=0x2000, state=state))


def test_update_of_larval_cancels_the_larval_lifetime(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000, now=at(0))
    ok(engine, FB, update(spi=0x2000), at(10))
    assert engine.tick(at(31)) == []
    assert engine.sad.get(0x2000) is not None
    assert engine.next_deadline() is None


def test_update_of_mature_sa_with_keys_replies_einval(engine: KeyEngine, me: int) -> None:
    mature(engine, me, 0x1000)
    assert fails(engine, me, update(spi=0x1000)) == errno.EINVAL
    assert fails(engine, me, update(spi=0x1000, ke=None)) == errno.EINVAL  # KEY_AUTH alone


def test_update_of_mature_sa_replaces_its_lifetimes(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=100), soft_lt=soft(addtime=80))
    ok(engine, FB, lifetimes_update(spi=0x1000, hard_lt=hard(addtime=500), soft_lt=soft(addtime=400)), at(1))
    sa = engine.sad.get(0x1000)
    assert sa is not None
    assert sa.hard == hard(addtime=500) and sa.soft == soft(addtime=400)
    assert sa.created == 0.0  # an alive SA keeps its creation time
    assert engine.next_deadline() == 400.0
    assert engine.tick(at(100)) == []


def test_update_of_mature_sa_without_lifetimes_removes_its_limits(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=100), soft_lt=soft(addtime=80))
    ok(engine, FB, lifetimes_update(spi=0x1000))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.hard is None and sa.soft is None
    assert engine.next_deadline() is None
    assert engine.tick(at(1000)) == []


@pytest.mark.parametrize("which", ["hard", "soft"])
def test_update_with_only_one_of_hard_and_soft_replies_einval_on_freebsd(engine: KeyEngine, which: str) -> None:
    hard_lt, soft_lt = (hard(addtime=5), None) if which == "hard" else (None, soft(addtime=5))
    mature(engine, FB, 0x1000)
    msg = lifetimes_update(spi=0x1000, hard_lt=hard_lt, soft_lt=soft_lt)
    assert fails(engine, FB, msg) == errno.EINVAL
    larval(engine, FB, 0x2000)
    msg = update(spi=0x2000, hard_lt=hard_lt, soft_lt=soft_lt)
    assert fails(engine, FB, msg) == errno.EINVAL


@pytest.mark.parametrize("which", ["hard", "soft"])
def test_update_with_only_one_of_hard_and_soft_on_linux_sets_that_one(engine: KeyEngine, which: str) -> None:
    # xfrm_state_update copies the new limits whole: the one not given is unset.
    lt = (hard if which == "hard" else soft)(addtime=50)
    expect = hard_lt, soft_lt = (lt, None) if which == "hard" else (None, lt)
    mature(engine, LX, 0x1000, hard_lt=hard(addtime=100), soft_lt=soft(addtime=80))
    ok(engine, LX, lifetimes_update(spi=0x1000, hard_lt=hard_lt, soft_lt=soft_lt), at(1))
    sa = engine.sad.get(0x1000)
    assert sa is not None and (sa.hard, sa.soft) == expect
    assert engine.next_deadline() == 50.0
    larval(engine, LX, 0x2000)
    effects = ok(engine, LX, update(spi=0x2000, hard_lt=hard_lt, soft_lt=soft_lt), at(2))
    sa = engine.sad.get(0x2000)
    assert sa is not None and sa.state == SaState.MATURE and (sa.hard, sa.soft) == expect
    assert reply(effects, LX).get(lt.exttype) == lt


def test_update_of_a_dying_linux_sa_with_only_a_soft_lifetime_drops_the_hard_one(engine: KeyEngine) -> None:
    mature(engine, LX, 0x1000, hard_lt=hard(addtime=100), soft_lt=soft(addtime=10), now=at(0))
    engine.tick(at(10))
    ok(engine, LX, lifetimes_update(spi=0x1000, soft_lt=soft(addtime=60)), at(20))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.state == SaState.MATURE
    assert (sa.hard, sa.soft) == (None, soft(addtime=60))


def _dying(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=100), soft_lt=soft(addtime=10), now=at(0))
    engine.tick(at(10))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.state == SaState.DYING


def test_update_of_dying_sa_returns_it_to_mature_keeping_created(engine: KeyEngine) -> None:
    _dying(engine)
    ok(engine, FB, lifetimes_update(spi=0x1000, hard_lt=hard(addtime=200), soft_lt=soft(addtime=150)), at(20))
    sa = engine.sad.get(0x1000)
    assert sa is not None
    assert sa.state == SaState.MATURE
    assert sa.created == 0.0
    assert sa.hard == hard(addtime=200) and sa.soft == soft(addtime=150)


def test_update_of_dying_sa_without_lifetimes_keeps_its_limits(engine: KeyEngine) -> None:
    _dying(engine)
    ok(engine, FB, lifetimes_update(spi=0x1000), at(20))
    sa = engine.sad.get(0x1000)
    assert sa is not None
    assert sa.state == SaState.MATURE
    assert sa.hard == hard(addtime=100) and sa.soft == soft(addtime=10)


def test_update_of_dying_sa_with_keys_replies_einval(engine: KeyEngine) -> None:
    _dying(engine)
    assert fails(engine, FB, update(spi=0x1000), at(20)) == errno.EINVAL


@pytest.mark.parametrize("dialect", [Dialect.FREEBSD, Dialect.LINUX], ids=["freebsd", "linux"])
def test_update_replies_to_all_without_keys_in_key_getmsgbuf_x1_order(dialect: Dialect) -> None:
    engine = make_engine()
    me = CLIENT_OF[dialect]
    larval(engine, me, 0x2000, seq=3)
    request = update(
        spi=0x2000,
        seq=0xABCDEF01,
        pid=PID,
        state=SaState.LARVAL,
        sa2=Sa2(Mode.TRANSPORT),
        hard_lt=hard(addtime=100),
        soft_lt=soft(addtime=80),
    )
    effects = ok(engine, me, request)
    msg = reply(effects, me)
    assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno) == (request.type, SaType.ESP, 0xABCDEF01, PID, 0)
    assert ext_types(msg) == [
        ExtType.SA,
        ExtType.X_SA2,
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
        ExtType.LIFETIME_HARD,
        ExtType.LIFETIME_SOFT,
    ]
    # The echoed SA extension is the caller's, state field included.
    assert msg.sa == request.sa and msg.sa is not None and msg.sa.state == SaState.LARVAL
    for other in {FB, FB2, LX, LX2} - {me}:
        assert received(effects, other) == [msg]
    assert not any(has_keys(s.msg) for s in sends(effects))
    assert [s.reply for s in sends(effects) if me in s.to] == [True]


def test_update_sa_extension_spi_is_what_is_looked_up(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000)
    larval(engine, FB, 0x2001)
    ok(engine, FB, update(spi=0x2001))
    a, b = engine.sad.get(0x2000), engine.sad.get(0x2001)
    assert a is not None and b is not None
    assert (a.state, b.state) == (SaState.LARVAL, SaState.MATURE)


def test_update_without_sa_extension_replies_einval(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000)
    assert fails(engine, FB, update(spi=0x2000, omit=[ExtType.SA])) == errno.EINVAL


@pytest.mark.parametrize("missing", [ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST], ids=lambda t: t.name)
def test_update_without_an_address_replies_einval(engine: KeyEngine, missing: ExtType) -> None:
    larval(engine, FB, 0x2000)
    assert fails(engine, FB, update(spi=0x2000, omit=[missing])) == errno.EINVAL


def test_update_of_larval_runs_the_value_checks(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000)
    assert fails(engine, FB, update(spi=0x2000, flags=0x1000)) == errno.EINVAL
    assert fails(engine, FB, update(spi=0x2000, enc=EncAlg.X_CAMELLIACBC)) == errno.EINVAL


def test_update_gets_a_new_sa_from_getspi_in_the_racoon_sequence(engine: KeyEngine) -> None:
    # real-clients.md §3.8: GETSPI (seq from ACQUIRE, no SPIRANGE), then UPDATE with
    # replay 4, SHA2-256 + AES-CBC and hard/soft addtime 1800/1440.
    effects = ok(engine, LX, getspi(seq=1, sa2=Sa2(Mode.TRANSPORT)))
    got = reply(effects, LX).sa
    assert got is not None
    spi = got.spi
    ok(
        engine,
        LX,
        update(
            spi=spi, seq=1, replay=4, sa2=Sa2(Mode.TRANSPORT), hard_lt=hard(addtime=1800), soft_lt=soft(addtime=1440)
        ),
    )
    sa = engine.sad.get(spi)
    assert sa is not None and sa.state == SaState.MATURE
    assert engine.next_deadline() == 1440.0


def test_update_echo_keeps_a_requested_sa_with_flags(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000)
    effects = ok(engine, FB, update(spi=0x2000, flags=0x40))
    assert reply(effects, FB).sa == Sa(0x2000, 0, 0, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, 0x40)


# ----------------------------------------------------------------------------- NAT-T and new addresses


def _natt_exts(sport: int = 4500, dport: int = 4500) -> list[Extension]:
    return [NatTTypeExt(2), NatTPort(ExtType.X_NAT_T_SPORT, sport), NatTPort(ExtType.X_NAT_T_DPORT, dport)]


def test_update_of_a_nat_t_sa_without_nat_t_extensions_replies_einval(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, extra=_natt_exts())
    assert fails(engine, FB, lifetimes_update(spi=0x1000)) == errno.EINVAL


def test_update_of_a_nat_t_sa_with_new_ports_records_them(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, extra=_natt_exts())
    ok(engine, FB, lifetimes_update(spi=0x1000, extra=_natt_exts(4600, 4700)))
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.natt == NatT(2, 4600, 4700)


def test_update_of_a_mature_sa_with_only_nat_t_type_replies_einval(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000)
    assert fails(engine, FB, lifetimes_update(spi=0x1000, extra=[NatTTypeExt(2)])) == errno.EINVAL


def test_update_with_new_address_moves_the_sa_to_a_new_sa_index(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, extra=_natt_exts())
    effects = ok(engine, FB, lifetimes_update(spi=0x1000, extra=[Address.host(ExtType.X_NEW_ADDRESS_DST, "10.0.0.9")]))
    assert ext_types(reply(effects, FB))[-1] == ExtType.X_NEW_ADDRESS_DST
    sa = engine.sad.get(0x1000)
    assert sa is not None and str(sa.index.dst) == "10.0.0.9"
    assert ok(engine, FB, get(spi=0x1000, d="10.0.0.9"))
    assert fails(engine, FB, get(spi=0x1000)) == errno.ESRCH


def test_update_broadcast_leaves_out_what_a_linux_socket_cannot_carry(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000)
    effects = ok(engine, FB, lifetimes_update(spi=0x1000, extra=[Address.host(ExtType.X_NEW_ADDRESS_DST, "10.0.0.9")]))
    (to_linux,) = received(effects, LX)
    assert ExtType.X_NEW_ADDRESS_DST not in ext_types(to_linux)
    assert ExtType.X_NEW_ADDRESS_DST in ext_types(received(effects, FB2)[0])
