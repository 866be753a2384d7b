"""Fuzzing: generated and mutated datagrams against the daemon layer and a live daemon.

The daemon layer (:class:`pfkeyd.daemon.Daemon`) is the one path from a datagram
to what goes out.  Fed directly, it must answer every datagram without an internal
error (the boundary would answer one EINVAL, but none may happen), and a rejected
request must change nothing.

Through the socket, a shadow daemon layer, seeded like the live daemon's, is fed
the same datagrams; it says what the requester must receive.  For every datagram:

* the daemon stays up and its socket delivers exactly that: the header-only
  send-failure reply where the kernel fails the send, the dialect's error reply
  where it answers one, the reply (or the first dump entry) otherwise;
* the daemon's tables equal the shadow's, and a rejected request changed nothing.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pfkeyd.daemon import Broadcast, Daemon, DumpStream, Log, Outgoing, Reply
from pfkeyd.effects import Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.wire import Dialect, Message, encode
from tests.engine.conftest import add, delete, dump, flush, get, getspi, promisc, register
from tests.server.peers import RECV_SIZE, Peer, start_daemon
from tests.wire.strategies import requests

WALL = 1_700_000_000
SEED = 4711


def tables(engine: KeyEngine) -> tuple[Any, ...]:
    """What a request may change, without the clock readings that differ."""
    sas = sorted(
        (
            sa.spi,
            sa.satype,
            sa.index,
            sa.state,
            sa.auth,
            sa.encrypt,
            sa.flags,
            sa.replay,
            sa.key_auth,
            sa.key_encrypt,
            sa.seq,
            sa.pid,
            sa.hard,
            sa.soft,
            sa.natt,
        )
        for sa in engine.sad.by_spi.values()
    )
    sps = sorted(
        (sp.id, sp.dir, sp.selector, sp.type, sp.requests, sp.priority, sp.lifetime, sp.validtime)
        for sp in engine.spd.by_id.values()
    )
    clients = sorted((c, tuple(sorted(s.registered)), s.promisc) for c, s in engine.clients.items())
    return (tuple(sas), tuple(sps), tuple(clients))


def first_for(out: list[Outgoing], client: int) -> bytes | None:
    """The first datagram ``client`` receives of what the daemon layer returned."""
    for item in out:
        if isinstance(item, (Reply, Broadcast)) and client in item.to:
            return item.data
        if isinstance(item, DumpStream) and item.to == client:
            return next(iter(item))
    return None


def expected_answer(shadow: Daemon, data: bytes) -> tuple[bytes | None, bool]:
    """(the first datagram the requester must receive, whether the request was
    rejected: its answer carries an errno)."""
    want = first_for(shadow.receive(1, data, Instant(0.0, WALL)), 1)
    return want, want is not None and want[2] != 0


def valid_requests(dialect: Dialect) -> st.SearchStrategy[Message]:
    spi = st.sampled_from([0x1000, 0x1001, 0x2000])
    return st.one_of(
        st.builds(lambda s: add(spi=s), spi),
        st.builds(lambda s: delete(spi=s), spi),
        st.builds(lambda s: get(spi=s), spi),
        st.builds(lambda: getspi(spirange=(0x3000, 0x3003))),
        st.just(register()),
        st.just(flush()),
        st.just(dump()),
        st.just(promisc(1)),
    )


def mutated(data: bytes, rng: random.Random) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        if choice < 0.5 and raw:
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        elif choice < 0.7:
            del raw[rng.randrange(len(raw) + 1) :]
        elif choice < 0.85:
            raw += bytes(rng.randrange(1, 17))
        elif len(raw) >= 6:
            raw[4:6] = rng.randrange(0, 40).to_bytes(2, "little")
    return bytes(raw)


def inputs(dialect: Dialect) -> st.SearchStrategy[list[bytes]]:
    one = st.one_of(
        valid_requests(dialect).map(lambda m: encode(m, dialect)),
        requests(dialect.value).map(lambda m: encode(m, dialect)),
        st.tuples(valid_requests(dialect), st.integers(0, 2**32 - 1)).map(
            lambda t: mutated(encode(t[0], dialect), random.Random(t[1]))
        ),
        st.binary(max_size=64),
    )
    return st.lists(one, min_size=1, max_size=10)


async def drain(peer: Peer) -> list[bytes]:
    """Everything the daemon sends in answer, a long dump included."""
    got = []
    while True:
        await trio.testing.wait_all_tasks_blocked()
        try:
            got.append(peer.sock.recv(RECV_SIZE))
        except BlockingIOError:
            return got


async def _drive(dialect: Dialect, datagrams: list[bytes]) -> None:
    sockdir = tempfile.mkdtemp(prefix="pfz", dir="/tmp")
    try:
        engine = KeyEngine(rng=random.Random(SEED))
        shadow_engine = KeyEngine(rng=random.Random(SEED))
        shadow = Daemon(shadow_engine)
        shadow.opened(1, dialect)
        async with trio.open_nursery() as nursery:
            d = await start_daemon(nursery, sockdir, engine, wall_clock=lambda: float(WALL))
            peer = await d.connect(dialect)
            for data in datagrams:
                before = tables(engine)
                want, rejected = expected_answer(shadow, data)
                await peer.send_raw(data)
                got = await drain(peer)
                if want is None:
                    assert got == [], (data.hex(), got)
                else:
                    assert got and got[0] == want, (data.hex(), got[:1], want)
                assert tables(engine) == tables(shadow_engine)
                if rejected:
                    assert tables(engine) == before
            # still serving
            assert (await peer.request(register(pid=99, seq=7))).seq == 7
            peer.close()
            d.server.stop()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(dialect=st.sampled_from(list(Dialect)), data=st.data())
def test_the_daemon_answers_generated_and_mutated_datagrams_as_the_reference(
    dialect: Dialect, data: st.DataObject
) -> None:
    datagrams = data.draw(inputs(dialect))
    trio.run(_drive, dialect, datagrams)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(dialect=st.sampled_from(list(Dialect)), data=st.data())
def test_the_daemon_layer_answers_every_datagram_without_an_internal_error(
    dialect: Dialect, data: st.DataObject
) -> None:
    engine = KeyEngine(rng=random.Random(SEED))
    daemon = Daemon(engine)
    daemon.opened(1, dialect)
    daemon.opened(2, Dialect.FREEBSD if dialect is Dialect.LINUX else Dialect.LINUX)
    for i, datagram in enumerate(data.draw(inputs(dialect))):
        before = tables(engine)
        out = daemon.receive(1, datagram, Instant(float(i), WALL + i))
        assert not [o for o in out if isinstance(o, Log) and o.kind == "internal"], datagram.hex()
        answer = first_for(out, 1)
        if answer is not None and answer[2] != 0:
            assert tables(engine) == before, datagram.hex()
    assert "internal_error" not in daemon.statistics().drops
