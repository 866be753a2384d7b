"""The hot path (pfkeyd.engine.hotpath) answers exactly as the generic path would.

Every test runs requests through two daemon layers (pfkeyd.daemon, the one path
the sockets take): one as configured by default (the hot path first, then decode
and ``handle(raw=...)``, which teaches the hot path), one with
``pfkeyd.hot_path=0``, through the generic path alone.  What each socket would receive, the SAD and the
counters must be the same after every request, and the hot path must have answered
a good share of the requests (else these tests would prove nothing).
"""

from __future__ import annotations

import errno
import random
from collections.abc import Sequence
from typing import Any

import pytest

from pfkeyd.daemon import Broadcast, Daemon, DumpStream, Outgoing, Reply
from pfkeyd.effects import Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import Knobs
from pfkeyd.wire import (
    Address,
    AuthAlg,
    Dialect,
    Direction,
    EncAlg,
    Extension,
    ExtType,
    IpProto,
    IpsecRequest,
    Key,
    Level,
    Lifetime,
    Message,
    Mode,
    MsgType,
    Policy,
    PolicyType,
    Sa,
    Sa2,
    SaType,
    SockAddr,
    encode,
)
from pfkeyd.wire.message import HEADER
from tests.engine.conftest import DIALECT_OF, FB, FB2, LX, LX2, at
from tests.wire.vectors import VECTORS


class Pair:
    """Two engines fed the same requests: ``hot`` as the server drives it, ``ref``
    through the generic path only."""

    def __init__(self, clients: Sequence[int] = (LX,), **knobs: int) -> None:
        self.hot = KeyEngine(Knobs(**knobs), rng=random.Random(1))
        self.ref = KeyEngine(Knobs(**knobs).set("pfkeyd.hot_path", 0), rng=random.Random(1))
        self.daemons = {self.hot: Daemon(self.hot), self.ref: Daemon(self.ref)}
        for c in clients:
            self.open(c)

    def open(self, client: int) -> None:
        for d in self.daemons.values():
            d.opened(client, DIALECT_OF[client])

    def close(self, client: int) -> None:
        for d in self.daemons.values():
            d.closed(client)

    def toggle(self, client: int, open_now: set[int]) -> None:
        """Open ``client`` if it is not in ``open_now``, else close it (and update the set)."""
        if client in open_now:
            self.close(client)
            open_now.discard(client)
        else:
            self.open(client)
            open_now.add(client)

    def set_knob(self, name: str, value: int) -> None:
        for e in (self.hot, self.ref):
            e.set_knob(name, value)

    def request(self, client: int, data: bytes, now: Instant) -> list[Delivery]:
        """Send ``data`` to both engines; check they agree; what each socket gets."""
        got = _deliveries(self.daemons[self.hot].receive(client, data, now))
        want = _deliveries(self.daemons[self.ref].receive(client, data, now))
        assert got == want
        assert self.hot.sad.snapshot() == self.ref.sad.snapshot()
        assert list(self.hot.sad.by_spi) == list(self.ref.sad.by_spi)
        assert list(self.hot.sad.heads) == list(self.ref.sad.heads)
        assert _pairs(self.hot) == _pairs(self.ref)
        assert self.hot.sad.next_deadline() == self.ref.sad.next_deadline()
        assert list(self.hot.spd.by_id.items()) == list(self.ref.spd.by_id.items())
        assert list(self.hot.spd.ordered()) == list(self.ref.spd.ordered())
        assert self.hot.next_deadline() == self.ref.next_deadline()
        assert self.hot.statistics() == self.ref.statistics()
        return got

    def tick(self, now: Instant) -> tuple[list[Delivery], list[Delivery]]:
        """What each socket gets from a tick of each daemon."""
        return (_deliveries(self.daemons[self.hot].tick(now)), _deliveries(self.daemons[self.ref].tick(now)))


def _pairs(engine: KeyEngine) -> dict[object, list[object]]:
    return {pair: [h.index for h in heads] for pair, heads in engine.sad.by_pair.items()}


Delivery = tuple[int, bytes, str]


def _deliveries(out: Sequence[Outgoing]) -> list[Delivery]:
    """The datagrams each socket would receive, and whether as a reply or a
    broadcast copy (which a full socket may lose)."""
    got: list[Delivery] = []
    for item in out:
        if isinstance(item, (Reply, Broadcast)):
            got += [(c, item.data, type(item).__name__) for c in item.to]
        elif isinstance(item, DumpStream):
            got.append((item.to, b"%d" % len(item), "dump"))
    return got


# ------------------------------------------------------------------- requests


def _addr(
    exttype: ExtType,
    ip: str,
    *,
    port: int = 0,
    prefix: int | None = None,
    flow: int = 0,
    scope: int = 0,
    proto: int = 255,
) -> Address:
    sa = SockAddr.parse(ip, port)
    sa = SockAddr(sa.ip, port, flow, scope)
    return Address(exttype, sa, sa.max_prefix if prefix is None else prefix, proto)


TRANSPORT_ANY = Sa2()
ESP_AES = (SaType.ESP, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, {ExtType.KEY_AUTH: 32, ExtType.KEY_ENCRYPT: 16})


def add_bytes(
    dialect: Dialect,
    spi: int,
    src: str,
    dst: str,
    *,
    seq: int = 0,
    pid: int = 77,
    alg: tuple[int, int, int, dict[ExtType, int]] = ESP_AES,
    key_seed: int = 0,
    sa2: Sa2 | None = TRANSPORT_ANY,
    lifetimes: tuple[int | None, int | None] | None = None,
    flags: int = 0,
    replay: int = 0,
    order: int = 0,
    port: int = 0,
    flow: int = 0,
    scope: int = 0,
    prefix: int | None = None,
) -> bytes:
    satype, auth, enc, keys = alg
    exts: list[Extension] = [
        Sa(spi, replay, 0, auth, enc, flags),
        _addr(ExtType.ADDRESS_SRC, src, port=port, flow=flow, scope=scope, prefix=prefix),
        _addr(ExtType.ADDRESS_DST, dst, port=port, flow=flow, scope=scope, prefix=prefix),
    ]
    exts += [Key(t, bytes((key_seed + i) & 0xFF for i in range(n))) for t, n in keys.items()]
    if sa2 is not None:
        exts.append(sa2)
    if lifetimes is not None:  # (hard, soft) addtimes; None leaves that one out
        exts += [
            Lifetime(t, addtime=a)
            for t, a in zip((ExtType.LIFETIME_HARD, ExtType.LIFETIME_SOFT), lifetimes, strict=True)
            if a is not None
        ]
    random.Random(order).shuffle(exts)
    return encode(Message(MsgType.ADD, satype, seq, pid, 0, 0, tuple(exts)), dialect)


# ---------------------------------------------------------------------- tests


@pytest.mark.parametrize("dialect", list(Dialect))
def test_a_run_of_adds_is_served_hot_after_two_generic_ones(dialect: Dialect) -> None:
    client = FB if dialect is Dialect.FREEBSD else LX
    pair = Pair((client,))
    for i in range(50):
        replies = pair.request(client, add_bytes(dialect, 0x1000 + i, f"10.0.{i}.1", "10.9.0.2", seq=i), at(i))
        assert len(replies) == 1 and replies[0][1][2] == 0  # errno 0
    assert pair.hot.hot.served == 48
    assert len(pair.hot.sad) == 50


def test_the_captured_add_gets_the_reference_reply_from_the_hot_path() -> None:
    """The real-clients.md §3.2 ADD (FreeBSD layout) and its reply, independent vectors."""
    vectors = {v.name: v.data for v in VECTORS}
    request = vectors["freebsd/msg/03-add-request"]
    reply = vectors["freebsd/msg/03-add-reply"]
    spi_at = 16 + 24 + 40 + 4  # header, KEY_ENCRYPT, KEY_AUTH, then the SA extension's spi
    pair = Pair((FB,))
    for spi in (0x2000, 0x3000):  # two shape-mates teach the hot path
        mate = request[:spi_at] + spi.to_bytes(4, "big") + request[spi_at + 4 :]
        pair.request(FB, mate, at(0))
    assert pair.hot.hot.served == 0
    assert pair.request(FB, request, at(1)) == [(FB, reply, "Reply")]
    assert pair.hot.hot.served == 1


def test_every_socket_of_the_dialect_gets_the_broadcast() -> None:
    pair = Pair((LX, LX2))
    for i in range(6):
        got = pair.request(LX2, add_bytes(Dialect.LINUX, 0x500 + i, "10.0.0.1", f"10.1.0.{i}"), at(i))
        assert [(c, kind) for c, _, kind in got] == [(LX2, "Reply"), (LX, "Broadcast")]
    assert pair.hot.hot.served == 4


def test_another_dialects_socket_or_a_promiscuous_one_takes_the_generic_path() -> None:
    pair = Pair((LX,))
    spi = iter(range(0x700, 0x800))
    for i in range(3):
        pair.request(LX, add_bytes(Dialect.LINUX, next(spi), "10.0.0.1", f"10.2.0.{i}"), at(i))
    assert pair.hot.hot.served == 1
    pair.open(FB)  # a freebsd socket needs its own encoding of the broadcast
    got = pair.request(LX, add_bytes(Dialect.LINUX, next(spi), "10.0.0.1", "10.2.1.1"), at(5))
    assert [c for c, _, _ in got] == [LX, FB]
    assert pair.hot.hot.served == 1
    pair.close(FB)
    pair.request(LX, add_bytes(Dialect.LINUX, next(spi), "10.0.0.1", "10.2.1.2"), at(6))
    assert pair.hot.hot.served == 2
    pair.open(LX2)
    promisc_on = encode(Message(MsgType.X_PROMISC, 1, 9, 77), Dialect.LINUX)
    pair.request(LX2, promisc_on, at(7))
    got = pair.request(LX, add_bytes(Dialect.LINUX, next(spi), "10.0.0.1", "10.2.1.3"), at(8))
    assert len(got) == 3  # the reply, the broadcast, and the promiscuous copy
    assert pair.hot.hot.served == 2


def test_refusals_the_hot_path_leaves_to_the_generic_one() -> None:
    pair = Pair((LX,), max_sas=5)
    for i in range(3):
        pair.request(LX, add_bytes(Dialect.LINUX, 0x900 + i, "10.0.0.1", f"10.3.0.{i}"), at(i))
    assert pair.hot.hot.served == 1
    for spi in (0x900, 0x901, 255, 1):  # in use, in use, reserved, reserved
        got = pair.request(LX, add_bytes(Dialect.LINUX, spi, "10.0.0.9", "10.3.9.9"), at(4))
        assert got[0][1][2] != 0  # errno set
    pair.request(LX, add_bytes(Dialect.LINUX, 0x990, "10.0.0.1", "10.3.1.1"), at(5))
    pair.request(LX, add_bytes(Dialect.LINUX, 0x991, "10.0.0.1", "10.3.1.2"), at(5))
    got = pair.request(LX, add_bytes(Dialect.LINUX, 0x992, "10.0.0.1", "10.3.1.3"), at(5))  # the SAD is full
    assert got[0][1][2] == 105  # ENOBUFS in the linux numbering
    assert pair.hot.hot.served == 3
    assert len(pair.hot.sad) == 5


def test_a_knob_change_forgets_the_templates() -> None:
    pair = Pair((LX,))
    for i in range(3):
        pair.request(LX, add_bytes(Dialect.LINUX, 0xA00 + i, "10.0.0.1", f"10.4.0.{i}"), at(i))
    assert pair.hot.hot.served == 1
    pair.set_knob("pfkeyd.max_sas", 100)
    for i in range(3):
        pair.request(LX, add_bytes(Dialect.LINUX, 0xB00 + i, "10.0.0.1", f"10.4.1.{i}"), at(i))
    assert pair.hot.hot.served == 2


def test_a_shape_whose_reply_is_not_a_copy_of_the_request_stays_generic() -> None:
    """A linux ADD whose sockaddr padding (sin_zero) is not zero: the codec's reply
    has zeros there, so a reply cut from the request would differ."""
    pair = Pair((LX,))
    for i in range(6):
        data = bytearray(add_bytes(Dialect.LINUX, 0xC00 + i, "10.0.0.1", f"10.5.0.{i}", order=1))
        at_src = data.find(bytes([10, 0, 0, 1]))
        data[at_src + 4] = 0xEE  # the first byte of sin_zero
        pair.request(LX, bytes(data), at(i))
    assert pair.hot.hot.served == 0
    assert len(pair.hot.sad) == 6


def test_hard_lifetimes_from_the_hot_path_expire_on_time() -> None:
    pair = Pair((LX,))
    for i in range(4):
        pair.request(LX, add_bytes(Dialect.LINUX, 0xD00 + i, "10.0.0.1", f"10.6.0.{i}", lifetimes=(30, 20)), at(i))
    assert pair.hot.hot.served == 2
    for t in (21, 31, 40):
        hot, ref = pair.tick(at(t))
        assert hot == ref
        assert pair.hot.sad.snapshot() == pair.ref.sad.snapshot()
    assert len(pair.hot.sad) == 0


@pytest.mark.parametrize("lifetimes", [(None, 20), (30, None)], ids=["soft-only", "hard-only"])
def test_one_lifetime_alone_from_the_hot_path_expires_on_time(lifetimes: tuple[int | None, int | None]) -> None:
    """Linux lets an ADD carry only one lifetime: the hot path schedules whichever came."""
    pair = Pair((LX, LX2))
    pair.request(LX2, encode(Message(MsgType.REGISTER, SaType.ESP, 1, 78), Dialect.LINUX), at(0))
    for i in range(4):
        pair.request(LX, add_bytes(Dialect.LINUX, 0xE00 + i, "10.0.0.1", f"10.7.0.{i}", lifetimes=lifetimes), at(i))
    assert pair.hot.hot.served == 2
    expired = 0
    for t in (21, 31, 40):
        got, want = pair.tick(at(t))
        assert got == want
        expired += len(got)
        assert pair.hot.sad.snapshot() == pair.ref.sad.snapshot()
    assert expired == 4  # one EXPIRE per SA, to the registered socket
    assert len(pair.hot.sad) == (4 if lifetimes[0] is None else 0)


def test_one_lifetime_alone_stays_generic_on_freebsd() -> None:
    pair = Pair((FB,))
    for i in range(4):
        got = pair.request(
            FB, add_bytes(Dialect.FREEBSD, 0xF00 + i, "10.0.0.1", f"10.8.0.{i}", lifetimes=(30, None)), at(i)
        )
        assert got[0][1][2] == errno.EINVAL
    assert pair.hot.hot.served == 0 and len(pair.hot.sad) == 0


_SHAPES: list[dict[str, Any]] = [
    {},
    {"alg": (SaType.AH, AuthAlg.X_SHA2_256, EncAlg.NONE, {ExtType.KEY_AUTH: 32})},
    {"alg": (SaType.ESP, AuthAlg.NONE, EncAlg.X_AESGCM16, {ExtType.KEY_ENCRYPT: 20})},
    {"alg": (SaType.ESP, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, {ExtType.KEY_AUTH: 32, ExtType.KEY_ENCRYPT: 7})},
    {"alg": (SaType.X_IPCOMP, AuthAlg.NONE, 2, {})},
    {"sa2": None},
    {"sa2": Sa2(Mode.TUNNEL, 0, 0x4001)},
    {"lifetimes": (100, 60)},
    {"lifetimes": (100, None)},  # one lifetime alone: accepted on linux sockets only
    {"lifetimes": (None, 60)},
    {"flags": 0x40, "replay": 32},
    {"flags": 0x8000},  # outside KEY_FLAGS_MAX: refused
    {"order": 3},
    {"port": 500},
    {"prefix": 24},
    {"v6": True},
    {"v6": True, "flow": 7, "scope": 2},
]


def _random_request(rng: random.Random, dialect: Dialect, spis: list[int]) -> bytes:
    shape = dict(rng.choice(_SHAPES))
    v6 = shape.pop("v6", False)
    roll = rng.random()
    spi = (
        rng.randrange(0x100, 0x100000)
        if roll < 0.8 or not spis
        else (rng.randrange(0, 300) if roll < 0.9 else rng.choice(spis[-3:]))
    )
    spis.append(spi)
    a, b = rng.randrange(256), rng.randrange(256)
    src, dst = (f"2001:db8::{a:x}", f"2001:db8:1::{b:x}") if v6 else (f"10.1.{a}.1", f"10.2.{b}.2")
    return add_bytes(
        dialect,
        spi,
        src,
        dst,
        seq=rng.choice([0, rng.randrange(1, 1 << 32)]),
        pid=rng.choice([77, 78]),
        key_seed=rng.randrange(256),
        **shape,
    )


@pytest.mark.parametrize("seed", range(6))
def test_random_runs_agree_with_the_generic_path(seed: int) -> None:
    rng = random.Random(seed)
    pair = Pair((LX,))
    clients = {LX}
    spis: list[int] = []
    for step in range(400):
        now = at(step * 3)
        roll = rng.random()
        for other in (FB, FB2):
            if other in clients and rng.random() < 0.1:  # freebsd sockets come and go
                pair.toggle(other, clients)
        if roll < 0.02:
            pair.toggle(rng.choice([FB, FB2, LX2]), clients)
            continue
        if roll < 0.03:
            pair.set_knob("pfkeyd.max_sas", rng.choice([150, 100000]))
            continue
        if roll < 0.05:
            for e in (pair.hot, pair.ref):
                e.tick(now)
            continue
        client = rng.choice(sorted(clients))
        data = _random_request(rng, DIALECT_OF[client], spis)
        if roll < 0.07:
            data = data[:-8]  # truncated: a decoding error
        pair.request(client, data, now)
    assert pair.hot.hot.served > 20


def test_the_hot_header_is_the_generic_header() -> None:
    """A hot reply's header carries the request's seq and pid and errno 0."""
    pair = Pair((LX,))
    got = []
    for i in range(3):
        got = pair.request(
            LX, add_bytes(Dialect.LINUX, 0xE00 + i, "10.0.0.1", f"10.7.0.{i}", seq=1000 + i, pid=4321), at(i)
        )
    version, mtype, errno, satype, units, reserved, seq, pid = HEADER.unpack_from(got[0][1])
    assert (version, mtype, errno, satype, reserved, seq, pid) == (2, MsgType.ADD, 0, SaType.ESP, 0, 1002, 4321)
    assert units * 8 == len(got[0][1])


def test_the_hot_path_knob_turns_it_off_and_on() -> None:
    pair = Pair((LX,), hot_path=0)
    for i in range(5):
        pair.request(LX, add_bytes(Dialect.LINUX, 0xF00 + i, "10.0.0.1", f"10.8.0.{i}"), at(i))
    assert pair.hot.hot.served == 0
    pair.set_knob("pfkeyd.hot_path", 1)
    for i in range(5):
        pair.request(LX, add_bytes(Dialect.LINUX, 0xF10 + i, "10.0.0.1", f"10.8.1.{i}"), at(i))
    assert pair.hot.hot.served == 3


# ---------------------------------------------------------------------- SPDADD

ESP_REQUIRE = (IpsecRequest(IpProto.ESP, Mode.TRANSPORT, Level.REQUIRE),)


def spdadd_bytes(
    dialect: Dialect,
    src: str,
    dst: str,
    *,
    seq: int = 0,
    pid: int = 77,
    prefix: int | None = None,
    port: int = 0,
    proto: int = 255,
    direction: int = Direction.OUTBOUND,
    ptype: int = PolicyType.IPSEC,
    requests: tuple[IpsecRequest, ...] = ESP_REQUIRE,
    priority: int = 0x80000000,
    lifetime: int | None = None,
    order: int = 0,
    msgtype: int = MsgType.X_SPDADD,
) -> bytes:
    exts: list[Extension] = [
        Policy(ptype, direction, 0, priority, 0, requests if ptype == PolicyType.IPSEC else ()),
        _addr(ExtType.ADDRESS_SRC, src, port=port, prefix=prefix, proto=proto),
        _addr(ExtType.ADDRESS_DST, dst, port=port, prefix=prefix, proto=proto),
    ]
    if lifetime is not None:
        exts.append(Lifetime(ExtType.LIFETIME_HARD, addtime=lifetime))
    random.Random(order).shuffle(exts)
    return encode(Message(msgtype, 0, seq, pid, 0, 0, tuple(exts)), dialect)


@pytest.mark.parametrize("dialect", list(Dialect))
def test_a_run_of_spdadds_is_served_hot(dialect: Dialect) -> None:
    client = FB if dialect is Dialect.FREEBSD else LX
    pair = Pair((client,))
    for i in range(40):
        got = pair.request(client, spdadd_bytes(dialect, f"10.0.{i}.1", "10.9.0.0", prefix=24, seq=i), at(i))
        assert len(got) == 1 and got[0][1][2] == 0
    assert pair.hot.hot.served == 38
    assert len(pair.hot.spd) == 40
    got = pair.request(client, spdadd_bytes(dialect, "10.0.3.1", "10.9.0.0", prefix=24), at(50))
    assert got[0][1][2] != 0  # EEXIST: the same selector, left to the generic path
    assert pair.hot.hot.served == 38


def test_the_captured_spdadd_gets_the_reference_reply_from_the_hot_path() -> None:
    """real-clients.md §3.2's SPDADD in FreeBSD layout and its reply (independent
    vectors): the reply is the request with the scope filled in and the new id."""
    vectors = {v.name: v.data for v in VECTORS}
    request = vectors["freebsd/msg/14-spdadd-request"]
    reply = bytearray(vectors["freebsd/msg/14-spdadd-reply"])
    src_at = 16 + 24 + 8 + 4  # X_POLICY with one 8-byte request, the address header, len/family/port
    pair = Pair((FB,))
    for host in (b"\x0a\x00\x00\x07", b"\x0a\x00\x00\x08"):  # two shape-mates teach the hot path
        pair.request(FB, request[:src_at] + host + request[src_at + 4 :], at(0))
    assert pair.hot.hot.served == 0
    # The third policy of direction out gets id 25 ((3 << 3) | out - 1) where the
    # vector, a first policy elsewhere, shows 17; every other byte is the vector's.
    reply[16 + 8 : 16 + 12] = (25).to_bytes(4, "little")
    assert pair.request(FB, request, at(1)) == [(FB, bytes(reply), "Reply")]
    assert pair.hot.hot.served == 1


def test_unique_levels_and_spdupdate_stay_generic() -> None:
    pair = Pair((LX,))
    unique = (IpsecRequest(IpProto.ESP, Mode.TRANSPORT, Level.UNIQUE),)
    for i in range(5):
        pair.request(LX, spdadd_bytes(Dialect.LINUX, f"10.1.{i}.1", "10.2.0.1", requests=unique), at(i))
    for i in range(5):
        pair.request(LX, spdadd_bytes(Dialect.LINUX, f"10.3.{i}.1", "10.2.0.1", msgtype=MsgType.X_SPDUPDATE), at(i))
    assert pair.hot.hot.served == 0
    assert len(pair.hot.spd) == 10


_POLICY_SHAPES: list[dict[str, Any]] = [  # spdadd_bytes' keywords, and v6
    {},
    {"prefix": 24},
    {"prefix": 40},  # longer than IPv4 allows: refused
    {"port": 500, "proto": IpProto.UDP},
    {"direction": Direction.INBOUND},
    {"direction": Direction.FWD},
    {"ptype": PolicyType.DISCARD},
    {"ptype": PolicyType.NONE, "priority": 100},
    {"lifetime": 40},
    {"order": 2},
    {
        "requests": (
            IpsecRequest(IpProto.AH, Mode.TRANSPORT, Level.USE),
            IpsecRequest(
                IpProto.ESP, Mode.TUNNEL, Level.REQUIRE, 0, SockAddr.parse("192.0.2.1"), SockAddr.parse("192.0.2.2")
            ),
        )
    },
    {"requests": (IpsecRequest(IpProto.ESP, Mode.TRANSPORT, Level.UNIQUE, 7),)},
    {"v6": True},
    {"v6": True, "prefix": 64},
]


def _random_spdadd(rng: random.Random, dialect: Dialect) -> bytes:
    shape = dict(rng.choice(_POLICY_SHAPES))
    v6 = shape.pop("v6", False)
    if dialect is Dialect.FREEBSD and shape.get("direction") == Direction.FWD:
        shape["direction"] = Direction.OUTBOUND  # FreeBSD has no forward policies
    a, b = rng.randrange(64), rng.randrange(64)
    src, dst = (f"2001:db8::{a:x}", f"2001:db8:1::{b:x}") if v6 else (f"10.1.{a}.0", f"10.2.{b}.0")
    return spdadd_bytes(dialect, src, dst, seq=rng.randrange(1 << 32), pid=rng.choice([77, 78]), **shape)


@pytest.mark.parametrize("seed", range(4))
def test_random_mixed_runs_agree_with_the_generic_path(seed: int) -> None:
    """ADDs and SPDADDs interleaved, with policies expiring, sockets coming and going
    and the SPD filling up."""
    rng = random.Random(100 + seed)
    pair = Pair((LX,), max_policies=300)
    clients = {LX}
    spis: list[int] = []
    for step in range(500):
        now = at(step)
        roll = rng.random()
        if roll < 0.02:
            pair.toggle(rng.choice([FB, LX2]), clients)
            continue
        if roll < 0.04:
            for e in (pair.hot, pair.ref):
                e.tick(now)
            continue
        client = rng.choice(sorted(clients))
        dialect = DIALECT_OF[client]
        data = _random_spdadd(rng, dialect) if roll < 0.6 else _random_request(rng, dialect, spis)
        pair.request(client, data, now)
    assert pair.hot.hot.served > 40
    assert pair.hot.spd.next_order() == pair.ref.spd.next_order()
