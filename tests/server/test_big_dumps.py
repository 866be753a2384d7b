"""Dumps of 100 000 real SAs and 100 000 real policies to readers that pause.

The engine is the real one, filled directly (the fill is not what is tested); the
dump goes through the real server and socket.  Every entry arrives, seq counts down
to 0 exactly once, the daemon renders only as far as the reader's socket takes, and
other clients are served while the reader pauses.
"""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing

from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import Knobs
from pfkeyd.sad import SaIndex, SecAssoc
from pfkeyd.spd import SecPolicy, Selector
from pfkeyd.wire import (
    Dialect,
    Direction,
    ExtType,
    IpProto,
    IpsecRequest,
    Key,
    Level,
    Message,
    Mode,
    MsgType,
    PolicyType,
    SaState,
    SaType,
    SockAddr,
    decode,
)
from tests.server.peers import Daemon, start_daemon

N = 100_000
PAUSES = (10, 40_000, 80_000)


def filled_sad(n: int) -> KeyEngine:
    eng = KeyEngine(Knobs(max_sas=n + 10), rng=random.Random(1))
    dst = SockAddr(IPv4Address("192.0.2.1"))
    ka, ke = Key(ExtType.KEY_AUTH, bytes(32)), Key(ExtType.KEY_ENCRYPT, bytes(16))
    for i in range(n):
        index = SaIndex(IpProto.ESP, Mode.TRANSPORT, 0, SockAddr(IPv4Address(0x0A000000 + i // 16)), dst)
        eng.sad.insert(
            SecAssoc(0x1000 + i, SaType.ESP, index, SaState.MATURE, 5, 12, 0, 4, 0, ka, ke, 0, 1, 1.0, 1_700_000_000)
        )
    return eng


def filled_spd(n: int) -> KeyEngine:
    eng = KeyEngine(Knobs(max_policies=n + 10), rng=random.Random(1))
    esp = (IpsecRequest(IpProto.ESP, Mode.TRANSPORT, Level.REQUIRE),)
    for i in range(n):
        dir_ = Direction.OUTBOUND if i % 2 else Direction.INBOUND
        sel = Selector(SockAddr(IPv4Address(0x0A000000 + i)), 32, SockAddr(IPv4Address(0xC0000201)), 32)
        eng.spd.insert(
            SecPolicy(
                8 * (i + 1) + dir_ - 1,
                dir_,
                sel,
                PolicyType.IPSEC,
                esp,
                0x80000000,
                eng.spd.next_order(),
                1.0,
                1_700_000_000,
            )
        )
    return eng


async def read_dump_with_pauses(d: Daemon, request: Message, dialect: Dialect, n: int) -> list[Message]:
    reader = await d.connect(dialect, pid=777)
    other = await d.connect(Dialect.LINUX, pid=888)
    await reader.send(request)
    samples: list[Message] = []
    expected, zeros = n - 1, 0
    for i in range(n):
        if i in PAUSES:
            await trio.testing.wait_all_tasks_blocked()
            stats = d.server.statistics()
            assert stats.dumps_in_progress == 1
            assert stats.queued_bytes == 0  # nothing rendered beyond what the socket took
            reply = await other.request(Message(MsgType.REGISTER, SaType.UNSPEC, i, 888))
            assert reply.type == MsgType.REGISTER and reply.seq == i
        raw = await reader.recv_raw()
        seq = int.from_bytes(raw[8:12], "little")
        assert seq == expected, (i, seq)
        expected -= 1
        zeros += seq == 0
        assert int.from_bytes(raw[12:16], "little") == 777
        if i % 9973 == 0 or seq == 0:
            samples.append(decode(raw, dialect, request=False))
    assert zeros == 1
    assert await reader.quiet()
    assert d.server.statistics().peak_queued_bytes < 4096
    return samples


@pytest.mark.slow
async def test_sadb_dump_of_100k_sas_to_a_pausing_reader(nursery: trio.Nursery, sockdir: str) -> None:
    dialect = Dialect.FREEBSD
    d = await start_daemon(nursery, sockdir, filled_sad(N))
    samples = await read_dump_with_pauses(d, Message(MsgType.DUMP, SaType.UNSPEC, 0, 777), dialect, N)
    for m in samples:
        assert m.type == MsgType.DUMP and m.satype == SaType.ESP
        assert m.sa is not None and m.sa.state == SaState.MATURE
        assert m.key_auth is not None  # the requester gets the keys
    spis = {m.sa.spi for m in samples if m.sa is not None}
    assert len(spis) == len(samples)


@pytest.mark.slow
async def test_spddump_of_100k_policies_to_a_pausing_reader(nursery: trio.Nursery, sockdir: str) -> None:
    dialect = Dialect.LINUX
    d = await start_daemon(nursery, sockdir, filled_spd(N))
    samples = await read_dump_with_pauses(d, Message(MsgType.X_SPDDUMP, 0, 0, 777), dialect, N)
    dirs = [m.policy.dir for m in samples if m.policy is not None]
    assert len(dirs) == len(samples)
    # inbound policies come first, then outbound (reference §8.3)
    assert dirs == sorted(dirs)
    assert all(m.policy.id % 8 == m.policy.dir - 1 for m in samples if m.policy is not None)
