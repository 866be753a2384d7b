"""SADB_REGISTER (reference §3.7, §5.6, §1.6) and SADB_FLUSH (§3.9)."""

from __future__ import annotations

import errno

import pytest

from pfkeyd import algorithms
from pfkeyd.engine import KeyEngine
from pfkeyd.wire import AuthAlg, Dialect, EncAlg, ExtType, Message, MsgType, SaState, SaType, encode
from tests.engine.conftest import (
    DIALECT_OF,
    FB,
    FB2,
    LX,
    LX2,
    PID,
    add,
    at,
    ext_types,
    fails,
    flush,
    getspi,
    hard,
    larval,
    mature,
    ok,
    received,
    register,
    reply,
    sends,
    soft,
    targets,
)

# ----------------------------------------------------------------------------- REGISTER


@pytest.mark.parametrize("satype", [SaType.AH, SaType.ESP, SaType.X_IPCOMP], ids=lambda s: s.name)
def test_register_records_the_satype(engine: KeyEngine, me: int, satype: SaType) -> None:
    ok(engine, me, register(satype))
    assert engine.clients[me].registered == {satype}


def test_register_tcp_signature_from_a_freebsd_socket(engine: KeyEngine) -> None:
    ok(engine, FB, register(SaType.X_TCPSIGNATURE))
    assert engine.clients[FB].registered == {SaType.X_TCPSIGNATURE}


def test_register_twice_for_one_satype_replies_eexist(engine: KeyEngine, me: int) -> None:
    ok(engine, me, register(SaType.ESP))
    assert fails(engine, me, register(SaType.ESP)) == errno.EEXIST


def test_register_for_several_satypes_is_allowed(engine: KeyEngine, me: int) -> None:
    # racoon registers AH, ESP and IPCOMP on one socket (real-clients.md §3.8).
    for satype in (SaType.AH, SaType.ESP, SaType.X_IPCOMP):
        ok(engine, me, register(satype))
    assert engine.clients[me].registered == {SaType.AH, SaType.ESP, SaType.X_IPCOMP}


def test_register_unspec_registers_nothing_and_returns_the_lists(engine: KeyEngine, me: int) -> None:
    effects = ok(engine, me, register(SaType.UNSPEC))
    assert engine.clients[me].registered == set()
    assert ext_types(reply(effects, me)) == [ExtType.SUPPORTED_AUTH, ExtType.SUPPORTED_ENCRYPT]
    ok(engine, me, register(SaType.UNSPEC))  # never EEXIST


@pytest.mark.parametrize("satype", [SaType.RSVP, SaType.MIP], ids=lambda s: s.name)
def test_register_for_an_unsupported_rfc_satype_replies_eopnotsupp(engine: KeyEngine, satype: SaType) -> None:
    assert fails(engine, FB, register(satype)) == errno.EOPNOTSUPP


def test_register_reply_goes_to_the_requester_and_registered_sockets_only(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.AH))
    ok(engine, LX, register(SaType.X_IPCOMP))
    effects = ok(engine, FB, register(SaType.ESP, seq=5, pid=PID))
    # No filtering by satype: the AH and IPComp listeners see the ESP registration.
    assert targets(effects) == {FB, FB2, LX}
    assert [s.to for s in sends(effects) if s.reply] == [(FB,)]
    msg = reply(effects, FB)
    assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno) == (MsgType.REGISTER, SaType.ESP, 5, PID, 0)


def test_register_reply_reaches_an_unregistered_requester(engine: KeyEngine) -> None:
    effects = ok(engine, LX, register(SaType.UNSPEC, seq=3))
    assert targets(effects) == {LX}


@pytest.mark.parametrize("requester", [FB, LX], ids=["freebsd", "linux"])
def test_register_lists_are_those_of_each_recipients_dialect(engine: KeyEngine, requester: int) -> None:
    for c in (FB, FB2, LX, LX2):
        if c != requester:
            ok(engine, c, register(SaType.AH))
    effects = ok(engine, requester, register(SaType.ESP))
    for c in (FB, FB2, LX, LX2):
        (msg,) = received(effects, c)
        assert msg.exts == algorithms.supported_exts(DIALECT_OF[c])
        encode(msg, DIALECT_OF[c])  # each copy can be said in its recipient's dialect


def test_register_freebsd_lists_match_the_reference_kernel(engine: KeyEngine) -> None:
    msg = reply(ok(engine, FB, register(SaType.ESP)), FB)
    auth, enc = msg.supported_auth, msg.supported_encrypt
    assert auth is not None and enc is not None
    assert [a.id for a in auth.algs] == [3, 5, 6, 7, 11, 12, 13, 14, 251]
    assert [(a.id, a.ivlen, a.minbits, a.maxbits) for a in enc.algs] == [
        (11, 0, 0, 2048),
        (12, 16, 128, 256),
        (13, 16, 128, 256),
        (15, 12, 256, 256),
        (20, 12, 128, 256),
        (23, 12, 128, 256),
    ]
    assert len(encode(msg, Dialect.FREEBSD)) == 152  # §5.6


def test_register_linux_lists_name_no_freebsd_only_algorithm(engine: KeyEngine) -> None:
    msg = reply(ok(engine, LX, register(SaType.ESP)), LX)
    auth, enc = msg.supported_auth, msg.supported_encrypt
    assert auth is not None and enc is not None
    assert EncAlg.X_CHACHA20POLY1305 not in {a.id for a in enc.algs}
    assert AuthAlg.X_AES128GMAC not in {a.id for a in auth.algs}
    assert {EncAlg.X_AESCBC, EncAlg.DES3CBC} <= {a.id for a in enc.algs}


def test_register_requires_the_lists_setkey_needs_whatever_the_satype(engine: KeyEngine) -> None:
    # setkey -c registers UNSPEC and needs SUPPORTED_ENCRYPT (real-clients.md §0 item 2).
    for satype in (SaType.UNSPEC, SaType.AH, SaType.X_IPCOMP):
        msg = reply(ok(engine, LX, register(satype)), LX)
        assert msg.supported_encrypt is not None and msg.supported_auth is not None


def test_registrations_vanish_with_client_closed(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    engine.client_closed(FB2)
    effects = ok(engine, FB, register(SaType.ESP))
    assert targets(effects) == {FB}
    assert FB2 not in engine.registered_clients()
    engine.client_opened(FB2, Dialect.FREEBSD)
    ok(engine, FB2, register(SaType.ESP))  # a new socket: no EEXIST


def test_closed_client_gets_no_expire(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=10), soft_lt=soft(addtime=5))
    engine.client_closed(FB2)
    assert engine.tick(at(5)) == []


# ----------------------------------------------------------------------------- FLUSH


def _populate(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000, SaType.ESP)
    mature(engine, FB, 0x1001, SaType.AH)
    mature(engine, FB, 0x1002, SaType.X_IPCOMP)
    larval(engine, FB, 0x2000, SaType.ESP)
    larval(engine, FB, 0x2001, SaType.AH)


def test_flush_of_one_satype_removes_its_sas_larval_included(engine: KeyEngine, me: int) -> None:
    _populate(engine)
    ok(engine, me, flush(SaType.ESP))
    assert sorted(engine.sad.by_spi) == [0x1001, 0x1002, 0x2001]


def test_flush_unspec_removes_every_sa(engine: KeyEngine, me: int) -> None:
    _populate(engine)
    ok(engine, me, flush(SaType.UNSPEC))
    assert len(engine.sad) == 0
    assert engine.sad.heads == {} and engine.sad.by_pair == {}
    assert engine.next_deadline() is None
    assert engine.tick(at(100)) == []


def test_flush_replies_the_header_to_all(engine: KeyEngine, me: int) -> None:
    _populate(engine)
    effects = ok(engine, me, flush(SaType.AH, seq=44, pid=PID + 9))
    msg = reply(effects, me)
    assert msg == Message(MsgType.FLUSH, SaType.AH, 44, PID + 9)
    assert targets(effects) == {FB, FB2, LX, LX2}
    assert all(s.msg == msg for s in sends(effects))


def test_flush_of_an_empty_sad_is_not_an_error(engine: KeyEngine, me: int) -> None:
    ok(engine, me, flush(SaType.ESP))


def test_flush_ignores_extensions(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000)
    effects = ok(engine, FB, flush(SaType.ESP, extra=add().exts))
    assert reply(effects, FB).exts == ()
    assert len(engine.sad) == 0


def test_flush_with_an_undefined_satype_replies_einval(engine: KeyEngine) -> None:
    _populate(engine)
    assert fails(engine, FB, Message(MsgType.FLUSH, 1)) == errno.EINVAL


def test_flush_leaves_other_protocols_timers_running(engine: KeyEngine) -> None:
    ok(engine, FB, getspi(SaType.AH, spirange=(0x2000, 0x2000)), at(0))
    mature(engine, FB, 0x1000, hard_lt=hard(addtime=50), soft_lt=soft(addtime=40))
    ok(engine, FB, flush(SaType.ESP))
    assert engine.next_deadline() == 30.0
    engine.tick(at(30))
    assert len(engine.sad) == 0


def test_flush_then_add_reuses_spis(engine: KeyEngine) -> None:
    mature(engine, FB, 0x1000)
    ok(engine, FB, flush())
    mature(engine, FB, 0x1000)
    sa = engine.sad.get(0x1000)
    assert sa is not None and sa.state == SaState.MATURE
