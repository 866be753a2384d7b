"""The key-manager cycle end to end: pfkeyd.client plays an IKE daemon against a real
pfkeyd (the key engine behind the trio server), in both wire dialects.

The daemon runs in the test's trio run under the autojump clock, so lifetimes of
tens of seconds pass in no real time and every step happens at a known instant.
The packet path is stood in for by the daemon's control socket: ``lookup`` decides
an outbound flow exactly as output would, and sends the SADB_ACQUIRE.

The cycle (reference pfkey-protocol.md §3.1-3.8, §7):

1. the key manager registers for ESP; an outbound ``ipsec esp/transport//require``
   policy is loaded;
2. a lookup finds no SA: an ACQUIRE (X_POLICY with the policy's id, a PROPOSAL)
   goes to the registered socket and to no other;
3. while no SA exists, further lookups are paced by net.key.blockacq_count;
4. the key manager answers: GETSPI with the ACQUIRE's seq (a LARVAL SA with an SPI
   in the range asked), UPDATE with keys (MATURE), ADD of the outbound SA;
5. a lookup now finds that SA and sends no ACQUIRE;
6. the soft lifetime sends EXPIRE (soft); the key manager re-keys with a new SA;
   the hard lifetime removes the old SA with EXPIRE (hard); the next lookup picks
   the new SA.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import pytest
import trio
import trio.testing

import pfkeyd.client
from pfkeyd import control
from pfkeyd.client import Connection, PfkeyReplyError
from pfkeyd.defaults import control_path
from pfkeyd.effects import Effect, Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.server import Endpoint, Server
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
    SaState,
    SaType,
)

LOCAL, PEER = "10.0.0.1", "10.0.0.2"
WALL = 1_700_000_000
SPI_RANGE = (0x10000, 0x1FFFF)
OUT_SPI, REKEYED_SPI = 0x2000, 0x3000
SOFT, HARD = 30, 45  # add-time lifetimes of the first outbound SA, seconds
ENC_KEY, AUTH_KEY = bytes(range(32)), bytes(range(100, 132))


# ------------------------------------------------------------------ the daemon


@dataclass
class Daemon:
    engine: KeyEngine
    paths: dict[Dialect, str]

    async def lookup(self, dialect: Dialect, *flow: str) -> str:
        """``pfkeyd lookup DIR SRC DST ...`` over the control socket; the decision text."""
        status, out, err = await control_request(control_path(self.paths[dialect]), ["lookup", *flow])
        assert status == 0, err
        return out


async def control_request(path: str, argv: Sequence[str]) -> tuple[int, str, str]:
    """One control command: a JSON request, a JSON answer (the protocol of pfkeyd.cli)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sock:
        await sock.connect(path)
        await sock.send(json.dumps({"argv": list(argv)}).encode())
        answer = json.loads(await sock.recv(1 << 20))
    return answer["status"], answer["out"], answer["err"]


@pytest.fixture
def sockdir() -> Iterator[str]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="pfkc", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def daemon(nursery: trio.Nursery, sockdir: str) -> AsyncIterator[Daemon]:
    engine = KeyEngine(rng=random.Random(2367))

    def control_hook(argv: Sequence[str], now: Instant, dialect: Dialect) -> tuple[int, str, str, Sequence[Effect]]:
        outcome = control.run(engine, argv, now, dialect)
        return outcome.status, outcome.out, outcome.err, outcome.effects

    paths = {Dialect.LINUX: f"{sockdir}/linux.sock", Dialect.FREEBSD: f"{sockdir}/bsd.sock"}
    server = Server(engine, [Endpoint(p, d) for d, p in paths.items()], wall_clock=lambda: WALL, control=control_hook)
    await nursery.start(server.serve)
    yield Daemon(engine, paths)
    server.stop()


# ------------------------------------------------------------------ the key manager's view


class Events:
    """Every unsolicited message a connection receives, kept for the test to take."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending: list[Message] = []
        self._arrived = trio.Event()

    async def collect(self) -> None:
        async for msg in self.conn.events():
            self.pending.append(msg)
            self._arrived.set()
            self._arrived = trio.Event()

    async def next(self, msgtype: int) -> Message:
        """The oldest message of ``msgtype``, waiting for one if need be."""
        while True:
            for i, msg in enumerate(self.pending):
                if msg.type == msgtype:
                    return self.pending.pop(i)
            await self._arrived.wait()

    async def settled(self, msgtype: int) -> list[Message]:
        """Every message of ``msgtype`` delivered so far, once the daemon and the
        client have nothing left to do (so nothing more is on its way)."""
        await trio.testing.wait_all_tasks_blocked()
        found = [m for m in self.pending if m.type == msgtype]
        self.pending = [m for m in self.pending if m.type != msgtype]
        return found


@dataclass
class Decision:
    text: str
    acquire_seq: int | None  # an ACQUIRE was sent now, with this seq
    pending: bool  # an ACQUIRE was due but pacing held it back
    spi: int | None  # the SA output would use
    action: str


def parse_decision(text: str) -> Decision:
    """The lines of pfkeyd.control.format_decision that matter here."""
    acquire = re.search(r"no SA: ACQUIRE sent \(seq (\d+)\)", text)
    sa = re.search(r": SA spi (0x[0-9a-f]+) \(", text)
    action = re.search(r"^decision: (\w+)", text, re.M)
    assert action is not None, text
    return Decision(
        text,
        int(acquire[1]) if acquire else None,
        "ACQUIRE already pending" in text,
        int(sa[1], 16) if sa else None,
        action[1],
    )


def sa_request(
    msgtype: int,
    spi: int,
    src: str,
    dst: str,
    *,
    seq: int = 0,
    lifetimes: tuple[int, int] | None = None,
    keys: bool = True,
) -> Message:
    """An UPDATE or ADD as an IKE daemon sends it (racoon's layout, §3.8 of real-clients.md)."""
    exts: list[Extension] = [
        Sa(spi, 4, SaState.MATURE, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC),
        Sa2(Mode.TRANSPORT),
        Address.host(ExtType.ADDRESS_SRC, src),
        Address.host(ExtType.ADDRESS_DST, dst),
    ]
    if keys:
        exts += [Key(ExtType.KEY_ENCRYPT, ENC_KEY), Key(ExtType.KEY_AUTH, AUTH_KEY)]
    if lifetimes is not None:
        soft, hard = lifetimes
        exts += [Lifetime(ExtType.LIFETIME_HARD, addtime=hard), Lifetime(ExtType.LIFETIME_SOFT, addtime=soft)]
    return Message(msgtype, SaType.ESP, seq, exts=tuple(exts))


def esp_out_policy() -> Message:
    """``spdadd LOCAL PEER any -P out ipsec esp/transport//require;``"""
    pol = Policy(
        PolicyType.IPSEC,
        Direction.OUTBOUND,
        priority=0x80000000,
        requests=(IpsecRequest(IpProto.ESP, Mode.TRANSPORT, Level.REQUIRE),),
    )
    return Message(
        MsgType.X_SPDADD,
        SaType.UNSPEC,
        exts=(pol, Address.host(ExtType.ADDRESS_SRC, LOCAL), Address.host(ExtType.ADDRESS_DST, PEER)),
    )


def spi_of(msg: Message) -> int:
    assert msg.sa is not None, msg
    return msg.sa.spi


# ------------------------------------------------------------------ the cycle


@pytest.mark.parametrize("dialect", [Dialect.LINUX, Dialect.FREEBSD])
async def test_acquire_getspi_update_add_expire_rekey(
    daemon: Daemon, dialect: Dialect, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    path = daemon.paths[dialect]
    blockacq = daemon.engine.knobs.blockacq_count

    async def lookup() -> Decision:
        return parse_decision(await daemon.lookup(dialect, "out", LOCAL, PEER))

    async with pfkeyd.client.open(path, dialect) as ike, pfkeyd.client.open(path, dialect) as bystander:
        events, others = Events(ike), Events(bystander)
        nursery.start_soon(events.collect)
        nursery.start_soon(others.collect)

        # 1. REGISTER for ESP; the policy.
        registered = await ike.register(SaType.ESP)
        assert registered.get(ExtType.SUPPORTED_ENCRYPT) is not None
        assert registered.get(ExtType.SUPPORTED_AUTH) is not None
        added = await ike.request(esp_out_policy())
        assert added.policy is not None
        policy_id = added.policy.id
        assert policy_id != 0

        # 2. No SA: the lookup holds the packet and sends an ACQUIRE, to the registered
        # socket only.
        first = await lookup()
        assert first.action == "discard" and first.spi is None and first.acquire_seq is not None, first.text
        acquire = await events.next(MsgType.ACQUIRE)
        assert acquire.seq == first.acquire_seq != 0
        assert (acquire.satype, acquire.pid, acquire.errno) == (SaType.ESP, 0, 0)
        assert acquire.src is not None and str(acquire.src.addr) == LOCAL
        assert acquire.dst is not None and str(acquire.dst.addr) == PEER
        assert acquire.policy is not None
        assert (acquire.policy.id, acquire.policy.dir, acquire.policy.type) == (
            policy_id,
            Direction.OUTBOUND,
            PolicyType.IPSEC,
        )
        assert acquire.proposal is not None and acquire.proposal.combs
        assert any(c.encrypt == EncAlg.X_AESCBC for c in acquire.proposal.combs)
        assert await others.settled(MsgType.ACQUIRE) == []
        assert await events.settled(MsgType.ACQUIRE) == []

        # 3. Pacing while no SA exists: blockacq_count + 1 triggers are swallowed,
        # the next one sends the ACQUIRE again, with the same seq.
        for _ in range(blockacq + 1):
            held = await lookup()
            assert held.pending and held.acquire_seq is None and held.action == "discard", held.text
        assert await events.settled(MsgType.ACQUIRE) == []
        again = await lookup()
        assert again.acquire_seq == acquire.seq
        resent = await events.next(MsgType.ACQUIRE)
        assert resent.seq == acquire.seq
        assert await others.settled(MsgType.ACQUIRE) == []

        # 4. The answer: GETSPI with the ACQUIRE's seq -> LARVAL, UPDATE -> MATURE,
        # ADD of the outbound SA (the peer chose its SPI).
        larval = await ike.getspi(SaType.ESP, PEER, LOCAL, mode=Mode.TRANSPORT, spirange=SPI_RANGE, seq=acquire.seq)
        in_spi = spi_of(larval)
        assert larval.seq == acquire.seq
        assert SPI_RANGE[0] <= in_spi <= SPI_RANGE[1]
        got = await ike.get(SaType.ESP, PEER, LOCAL, in_spi)
        assert got.sa is not None and got.sa.state == SaState.LARVAL
        await ike.request(sa_request(MsgType.UPDATE, in_spi, PEER, LOCAL))
        got = await ike.get(SaType.ESP, PEER, LOCAL, in_spi)
        assert got.sa is not None and got.sa.state == SaState.MATURE
        assert got.key_encrypt is not None and got.key_encrypt.data == ENC_KEY
        added_at = trio.current_time()
        await ike.request(sa_request(MsgType.ADD, OUT_SPI, LOCAL, PEER, seq=acquire.seq, lifetimes=(SOFT, HARD)))

        # 5. The flow is protected now; no ACQUIRE.
        keyed = await lookup()
        assert (keyed.action, keyed.spi, keyed.acquire_seq, keyed.pending) == ("ipsec", OUT_SPI, None, False), (
            keyed.text
        )
        assert "(mature)" in keyed.text
        assert await events.settled(MsgType.ACQUIRE) == []

        # 6. Soft expiry: EXPIRE (soft) to the registered socket; the SA is DYING but
        # still the one output uses.
        soft = await events.next(MsgType.EXPIRE)
        assert trio.current_time() - added_at == pytest.approx(SOFT)
        assert spi_of(soft) == OUT_SPI and soft.satype == SaType.ESP
        assert soft.get(ExtType.LIFETIME_SOFT) is not None and soft.get(ExtType.LIFETIME_HARD) is None
        assert await others.settled(MsgType.EXPIRE) == []
        dying = await lookup()
        assert dying.spi == OUT_SPI and "(dying)" in dying.text, dying.text

        # The key manager re-keys: a new outbound SA.  The old one, the oldest
        # (net.key.preferred_oldsa), is still preferred until it dies.
        await ike.request(sa_request(MsgType.ADD, REKEYED_SPI, LOCAL, PEER))
        assert (await lookup()).spi == OUT_SPI

        # Hard expiry: EXPIRE (hard), the old SA is gone, the next lookup picks the new one.
        hard = await events.next(MsgType.EXPIRE)
        assert trio.current_time() - added_at == pytest.approx(HARD)
        assert spi_of(hard) == OUT_SPI
        assert hard.get(ExtType.LIFETIME_HARD) is not None and hard.get(ExtType.LIFETIME_SOFT) is None
        with pytest.raises(PfkeyReplyError):
            await ike.get(SaType.ESP, LOCAL, PEER, OUT_SPI)
        rekeyed = await lookup()
        assert (rekeyed.action, rekeyed.spi, rekeyed.acquire_seq) == ("ipsec", REKEYED_SPI, None), rekeyed.text
        assert await events.settled(MsgType.ACQUIRE) == []
        assert await events.settled(MsgType.EXPIRE) == []


@pytest.mark.parametrize("dialect", [Dialect.LINUX, Dialect.FREEBSD])
async def test_without_a_registered_key_manager_no_acquire_goes_out(
    daemon: Daemon, dialect: Dialect, nursery: trio.Nursery
) -> None:
    async with pfkeyd.client.open(daemon.paths[dialect], dialect) as conn:
        events = Events(conn)
        nursery.start_soon(events.collect)
        await conn.request(esp_out_policy())
        decision = parse_decision(await daemon.lookup(dialect, "out", LOCAL, PEER))
        # The packet is still held; the (paced) ACQUIRE record exists, but nobody hears it.
        assert decision.action == "discard" and decision.spi is None
        assert await events.settled(MsgType.ACQUIRE) == []
