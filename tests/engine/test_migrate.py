"""SADB_X_MIGRATE (Linux): tunnel endpoints of a policy and its SAs move together."""

from __future__ import annotations

import errno
import random

from pfkeyd.effects import Error, Instant, Send
from pfkeyd.engine import KeyEngine
from pfkeyd.wire import (
    Address,
    Dialect,
    Direction,
    ExtType,
    IpsecRequest,
    Key,
    Level,
    Message,
    Mode,
    MsgType,
    Policy,
    PolicyType,
    Sa,
    Sa2,
    SaType,
    SockAddr,
    decode,
    encode,
)

NOW = Instant(10.0, 1_700_000_000)
LX, OTHER = 1, 2


def a(text: str) -> SockAddr:
    return SockAddr.parse(text)


def through_codec(msg: Message) -> Message:
    return decode(encode(msg, Dialect.LINUX), Dialect.LINUX)


def engine_with_tunnel() -> KeyEngine:
    eng = KeyEngine(rng=random.Random(3))
    eng.client_opened(LX, Dialect.LINUX)
    eng.client_opened(OTHER, Dialect.LINUX)
    req = IpsecRequest(50, Mode.TUNNEL, Level.UNIQUE, 7, a("192.0.2.1"), a("198.51.100.1"))
    spdadd = Message(
        MsgType.X_SPDADD,
        0,
        1,
        100,
        exts=(
            Policy(PolicyType.IPSEC, Direction.OUTBOUND, requests=(req,)),
            Address(ExtType.ADDRESS_SRC, a("10.1.0.0"), 16),
            Address(ExtType.ADDRESS_DST, a("10.2.0.0"), 16),
        ),
    )
    assert isinstance(eng.handle(LX, through_codec(spdadd), NOW)[0], Send)
    add = Message(
        MsgType.ADD,
        SaType.ESP,
        2,
        100,
        exts=(
            Sa(0x5000, 0, 0, 5, 12),
            Sa2(Mode.TUNNEL, 0, 7),
            Address.host(ExtType.ADDRESS_SRC, "192.0.2.1"),
            Address.host(ExtType.ADDRESS_DST, "198.51.100.1"),
            Key(ExtType.KEY_AUTH, bytes(32)),
            Key(ExtType.KEY_ENCRYPT, bytes(16)),
        ),
    )
    assert isinstance(eng.handle(LX, through_codec(add), NOW)[0], Send)
    return eng


def migrate(old: tuple[str, str], new: tuple[str, str], *, reqid: int = 7, dir_: int = Direction.OUTBOUND) -> Message:
    pair = (
        IpsecRequest(50, Mode.TUNNEL, Level.UNIQUE, reqid, a(old[0]), a(old[1])),
        IpsecRequest(50, Mode.TUNNEL, Level.UNIQUE, reqid, a(new[0]), a(new[1])),
    )
    return through_codec(
        Message(
            MsgType.X_MIGRATE,
            0,
            9,
            100,
            exts=(
                Address(ExtType.ADDRESS_SRC, a("10.1.0.0"), 16),
                Address(ExtType.ADDRESS_DST, a("10.2.0.0"), 16),
                Policy(PolicyType.IPSEC, dir_, requests=pair),
            ),
        )
    )


def test_migrate_moves_the_policy_endpoints_and_the_sas_and_tells_everyone() -> None:
    eng = engine_with_tunnel()
    effects = eng.handle(LX, migrate(("192.0.2.1", "198.51.100.1"), ("192.0.2.9", "203.0.113.9")), NOW)
    sends = [e for e in effects if isinstance(e, Send)]
    assert {c for s in sends for c in s.to} == {LX, OTHER}
    note = sends[0].msg
    assert (note.type, note.seq, note.pid) == (MsgType.X_MIGRATE, 0, 0)
    assert note.policy is not None and len(note.policy.requests) == 2
    (sp,) = eng.spd.by_id.values()
    assert (sp.requests[0].src, sp.requests[0].dst) == (a("192.0.2.9"), a("203.0.113.9"))
    assert sp.requests[0].reqid == 7
    sa = eng.sad.get(0x5000)
    assert sa is not None
    assert (sa.index.src, sa.index.dst, sa.index.reqid) == (a("192.0.2.9"), a("203.0.113.9"), 7)
    assert sa.key_auth is not None  # the keys stay


def test_migrate_of_an_unknown_selector_is_enoent_and_changes_nothing() -> None:
    eng = engine_with_tunnel()
    before = (dict(eng.spd.by_id), dict(eng.sad.by_spi))
    effects = eng.handle(
        LX, migrate(("192.0.2.1", "198.51.100.1"), ("192.0.2.9", "203.0.113.9"), dir_=Direction.INBOUND), NOW
    )
    assert effects == [Error(LX, errno.ENOENT)]
    assert (dict(eng.spd.by_id), dict(eng.sad.by_spi)) == before


def test_migrate_with_an_odd_number_of_requests_is_einval() -> None:
    eng = engine_with_tunnel()
    bad = Message(
        MsgType.X_MIGRATE,
        0,
        9,
        100,
        exts=(
            Address(ExtType.ADDRESS_SRC, a("10.1.0.0"), 16),
            Address(ExtType.ADDRESS_DST, a("10.2.0.0"), 16),
            Policy(
                PolicyType.IPSEC,
                Direction.OUTBOUND,
                requests=(IpsecRequest(50, Mode.TUNNEL, Level.UNIQUE, 7, a("192.0.2.1"), a("198.51.100.1")),),
            ),
        ),
    )
    assert eng.handle(LX, through_codec(bad), NOW) == [Error(LX, errno.EINVAL)]
