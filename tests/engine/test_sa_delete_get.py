"""SADB_DELETE (reference §3.4) and SADB_GET (§3.5, §8.2)."""

from __future__ import annotations

import errno

import pytest

from pfkeyd.engine import KeyEngine
from pfkeyd.wire import (
    Address,
    AuthAlg,
    EncAlg,
    Extension,
    ExtType,
    IpProto,
    Lifetime,
    Mode,
    NatTPort,
    NatTTypeExt,
    Sa,
    Sa2,
    SaReplay,
    SaState,
    SaType,
    SockAddr,
)
from tests.engine.conftest import (
    FB,
    FB2,
    LX,
    LX2,
    PID,
    A,
    B,
    C,
    add,
    at,
    delete,
    ext_types,
    fails,
    get,
    getspi,
    hard,
    has_keys,
    key_auth,
    key_enc,
    larval,
    make_engine,
    mature,
    ok,
    promisc,
    promisc_copies,
    received,
    reply,
    sends,
    soft,
    targets,
)

# ----------------------------------------------------------------------------- DELETE with SA


def test_delete_of_unknown_spi_replies_esrch(engine: KeyEngine, me: int) -> None:
    assert fails(engine, me, delete(spi=0x9999)) == errno.ESRCH


@pytest.mark.parametrize("change", ["src", "dst", "satype"])
def test_delete_of_an_spi_with_another_sa_index_replies_esrch(engine: KeyEngine, me: int, change: str) -> None:
    mature(engine, me, 0x1000)
    msg = {"src": delete(spi=0x1000, s=C), "dst": delete(spi=0x1000, d=C), "satype": delete(SaType.AH, spi=0x1000)}[
        change
    ]
    assert fails(engine, me, msg) == errno.ESRCH


def test_delete_ignores_mode_and_reqid(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, sa2=Sa2(Mode.TUNNEL, 0, 5))
    ok(engine, FB, delete(spi=0x1000, sa2=Sa2(Mode.TRANSPORT, 0, 9)))
    assert engine.sad.get(0x1000) is None


def test_delete_removes_a_larval_sa_by_spi(engine: KeyEngine) -> None:
    larval(engine, FB, 0x2000)
    ok(engine, FB, delete(spi=0x2000))
    assert engine.sad.get(0x2000) is None
    assert engine.next_deadline() is None


def test_delete_with_sa_replies_to_all_with_sa_src_dst_from_the_request(engine: KeyEngine, me: int) -> None:
    mature(engine, me, 0x1000)
    request = delete(spi=0x1000, seq=31, pid=PID + 3, sa2=Sa2(Mode.TRANSPORT)).replace(
        exts=(
            Sa(0x1000, 0, 0, 0, 0, 0x40),
            Sa2(Mode.TRANSPORT),
            Address.host(ExtType.ADDRESS_SRC, A, port=500),
            Address.host(ExtType.ADDRESS_DST, B),
        )
    )
    effects = ok(engine, me, request)
    msg = reply(effects, me)
    assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno) == (request.type, SaType.ESP, 31, PID + 3, 0)
    assert msg.exts == (request.sa, request.src, request.dst)
    for c in {FB, FB2, LX, LX2} - {me}:
        assert received(effects, c) == [msg]


def test_delete_of_tcp_md5_finds_the_sa_by_address_pair(engine: KeyEngine) -> None:
    ok(engine, FB, add(SaType.X_TCPSIGNATURE, 0x1000))
    ok(engine, FB, delete(SaType.X_TCPSIGNATURE, spi=0x4321))
    assert len(engine.sad) == 0


# ----------------------------------------------------------------------------- DELETE without SA


def test_delete_without_sa_removes_mature_and_dying_sas_of_the_addresses(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=100), soft_lt=soft(addtime=5))
    engine.tick(at(5))
    stored = engine.sad.get(0x1000)
    assert stored is not None and stored.state == SaState.DYING
    mature(engine, FB, 0x1001, sa2=Sa2(Mode.TUNNEL, 0, 7))
    mature(engine, FB, 0x1002, sa2=Sa2(Mode.TRANSPORT))
    larval(engine, FB, 0x2000)
    mature(engine, FB, 0x1003, SaType.AH)  # another protocol
    mature(engine, FB, 0x1004, d=C)  # other addresses
    mature(engine, FB, 0x1005, s=B, d=A)  # the reverse direction
    ok(engine, FB, delete(spi=None), at(6))
    assert sorted(engine.sad.by_spi) == [0x1003, 0x1004, 0x1005, 0x2000]


def test_delete_without_sa_replies_to_all_with_src_dst_even_when_nothing_matched(engine: KeyEngine, me: int) -> None:
    request = delete(spi=None, seq=8)
    effects = ok(engine, me, request)
    msg = reply(effects, me)
    assert (msg.type, msg.satype, msg.seq, msg.pid) == (request.type, SaType.ESP, 8, PID)
    assert msg.exts == (request.src, request.dst)
    assert targets(effects) == {FB, FB2, LX, LX2}


@pytest.mark.parametrize("missing", [ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST], ids=lambda t: t.name)
def test_delete_without_an_address_replies_einval(engine: KeyEngine, missing: ExtType) -> None:
    mature(engine, FB, 0x1000)
    msg = delete(spi=0x1000)
    msg = msg.replace(exts=tuple(e for e in msg.exts if e.exttype != missing))
    assert fails(engine, FB, msg) == errno.EINVAL


def test_delete_reply_never_carries_keys(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000)
    effects = ok(engine, FB, delete(spi=0x1000))
    assert not any(has_keys(s.msg) for s in sends(effects))


# ----------------------------------------------------------------------------- GET


def test_get_of_unknown_spi_replies_esrch(engine: KeyEngine, me: int) -> None:
    assert fails(engine, me, get(spi=0x9999)) == errno.ESRCH


@pytest.mark.parametrize("change", ["src", "dst", "satype"])
def test_get_of_an_spi_with_another_sa_index_replies_esrch(engine: KeyEngine, me: int, change: str) -> None:
    mature(engine, me, 0x1000)
    msg = {"src": get(spi=0x1000, s=C), "dst": get(spi=0x1000, d=C), "satype": get(SaType.AH, 0x1000)}[change]
    assert fails(engine, me, msg) == errno.ESRCH


@pytest.mark.parametrize("missing", [ExtType.SA, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST], ids=lambda t: t.name)
def test_get_without_a_required_extension_replies_einval(engine: KeyEngine, missing: ExtType) -> None:
    mature(engine, FB, 0x1000)
    assert fails(engine, FB, get(spi=0x1000, omit=[missing])) == errno.EINVAL


def test_get_replies_to_the_requester_only_with_keys(engine: KeyEngine, me: int) -> None:
    mature(engine, me, 0x1000)
    effects = ok(engine, me, get(spi=0x1000, seq=17, pid=PID + 1))
    assert [(s.to, s.reply, s.promisc) for s in sends(effects)] == [((me,), True, False)]
    msg = reply(effects, me)
    assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno) == (5, SaType.ESP, 17, PID + 1, 0)
    assert msg.get(ExtType.KEY_AUTH) == key_auth(32) and msg.get(ExtType.KEY_ENCRYPT) == key_enc(16)


def test_get_promiscuous_copy_has_no_keys(engine: KeyEngine) -> None:
    ok(engine, FB2, promisc(1))
    ok(engine, LX2, promisc(1))
    mature(engine, FB, 0x1000)
    effects = ok(engine, FB, get(spi=0x1000))
    copies = promisc_copies(effects)
    assert copies and all(not has_keys(m) for m in copies)
    assert targets(effects, promisc=True) == {FB2, LX2}
    assert has_keys(reply(effects, FB))


def test_get_reports_the_complete_sa_in_reference_order() -> None:
    engine = make_engine()
    natt: list[Extension] = [
        NatTTypeExt(2),
        NatTPort(ExtType.X_NAT_T_SPORT, 4500),
        NatTPort(ExtType.X_NAT_T_DPORT, 4501),
        Address.host(ExtType.X_NAT_T_OAI, "10.8.8.8"),
        Address.host(ExtType.X_NAT_T_OAR, "10.9.9.9"),
    ]
    ok(
        engine,
        FB,
        add(
            spi=0x1000,
            seq=3,
            replay=4,
            flags=0x40,
            sa2=Sa2(Mode.TUNNEL, 0, 77),
            hard_lt=hard(addtime=100, nbytes=10**6),
            soft_lt=soft(addtime=80),
            extra=[*natt, SaReplay(4096), Address.host(ExtType.ADDRESS_SRC, A, port=500)],
        ),
        at(2),
    )
    engine.report_usage(0x1000, 1500, 3, at(4))
    msg = reply(ok(engine, FB, get(spi=0x1000, seq=9, pid=PID)), FB)
    assert ext_types(msg) == [
        ExtType.SA,
        ExtType.X_SA2,
        ExtType.X_SA_REPLAY,
        ExtType.LIFETIME_HARD,
        ExtType.LIFETIME_SOFT,
        ExtType.LIFETIME_CURRENT,
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
        ExtType.KEY_AUTH,
        ExtType.KEY_ENCRYPT,
        ExtType.X_NAT_T_TYPE,
        ExtType.X_NAT_T_SPORT,
        ExtType.X_NAT_T_DPORT,
        ExtType.X_NAT_T_OAI,
        ExtType.X_NAT_T_OAR,
    ]
    assert msg.sa == Sa(0x1000, 255, SaState.MATURE, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, 0x40)
    assert msg.sa2 == Sa2(Mode.TUNNEL, 0, 77)
    assert msg.get(ExtType.X_SA_REPLAY) == SaReplay(4096)
    assert msg.lifetime_hard == hard(addtime=100, nbytes=10**6)
    assert msg.lifetime_soft == soft(addtime=80)
    assert msg.lifetime_current == Lifetime(ExtType.LIFETIME_CURRENT, 3, 1500, at(2).wall, at(4).wall)
    # Full prefix, proto 255, port 0 (§8.2 item 6).
    assert msg.src == Address(ExtType.ADDRESS_SRC, SockAddr.parse(A), 32, IpProto.ANY)
    assert msg.dst == Address(ExtType.ADDRESS_DST, SockAddr.parse(B), 32, IpProto.ANY)
    assert msg.nat_t_sport == NatTPort(ExtType.X_NAT_T_SPORT, 4500)


def test_get_of_a_plain_sa_has_no_optional_extensions(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000)
    msg = reply(ok(engine, FB, get(spi=0x1000)), FB)
    assert ext_types(msg) == [
        ExtType.SA,
        ExtType.X_SA2,
        ExtType.LIFETIME_CURRENT,
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
        ExtType.KEY_AUTH,
        ExtType.KEY_ENCRYPT,
    ]
    assert msg.lifetime_current == Lifetime(ExtType.LIFETIME_CURRENT, 0, 0, at(0).wall, 0)


def test_get_in_the_linux_dialect_leaves_out_sa_replay(engine: KeyEngine) -> None:
    # Extension 26 is X_FILTER to Linux: the window shows only in the capped SA field.
    mature(engine, FB, 0x1000, extra=[SaReplay(4096)])
    msg = reply(ok(engine, LX, get(spi=0x1000)), LX)
    assert ExtType.X_SA_REPLAY not in ext_types(msg)
    assert msg.sa is not None and msg.sa.replay == 255


def test_get_of_a_larval_sa_reports_state_larval(engine: KeyEngine) -> None:
    ok(engine, FB, getspi(spirange=(0x2000, 0x2000)))
    msg = reply(ok(engine, FB, get(spi=0x2000)), FB)
    assert msg.sa == Sa(0x2000, 0, SaState.LARVAL, 0, 0, 0)
    assert ExtType.KEY_AUTH not in ext_types(msg)


def test_get_satype_comes_from_the_sa(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, SaType.AH)
    msg = reply(ok(engine, LX, get(SaType.AH, 0x1000)), LX)
    assert msg.satype == SaType.AH
