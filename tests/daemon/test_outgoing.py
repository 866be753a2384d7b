"""What the daemon layer returns says what each datagram is: a Reply (never
dropped), a Broadcast copy (droppable), a DumpStream (rendered as the socket
drains).  Keys only travel in the requester's reply; promiscuous copies are framed
for freebsd sockets; the same layer serves the control socket's lookup."""

from __future__ import annotations

import errno

from pfkeyd.daemon import Broadcast, Daemon, DumpStream, Log, Reply
from pfkeyd.effects import Dump, Effect
from pfkeyd.engine import KeyEngine
from pfkeyd.errors import EncodeError
from pfkeyd.wire import Dialect, Direction, Message, MsgType, SaType, decode, encode
from pfkeyd.wire.framing import promisc_unwrap
from tests.engine.conftest import FB, FB2, LX, T0, at, get, make_engine, mature, promisc, register
from tests.engine.spd_helpers import add_policy, flow
from tests.server.peers import AUTH_KEY, FakeEngine

FREEBSD, LINUX = Dialect.FREEBSD, Dialect.LINUX


def daemon_of(engine: KeyEngine) -> Daemon:
    daemon = Daemon(engine)
    for client, state in list(engine.clients.items()):
        daemon.opened(client, state.dialect)
    return daemon


def test_keys_go_to_the_requester_alone_and_promiscuous_copies_are_framed_for_freebsd() -> None:
    engine = make_engine(clients=(FB, FB2, LX))
    daemon = daemon_of(engine)
    mature(engine, spi=0x1000)
    for client in (FB2, LX):
        daemon.receive(client, encode(promisc(1), engine.clients[client].dialect), T0)
    out = daemon.receive(FB, encode(get(SaType.ESP, 0x1000), FREEBSD), at(1))
    replies = [o for o in out if isinstance(o, Reply)]
    copies = [o for o in out if isinstance(o, Broadcast)]
    assert [r.to for r in replies] == [(FB,)]
    assert decode(replies[0].data, FREEBSD, request=False).key_auth is not None
    assert {c for b in copies for c in b.to} == {FB2, LX}
    for b in copies:
        (client,) = b.to
        body = promisc_unwrap(b.data) if client == FB2 else b.data
        assert body is not None
        assert AUTH_KEY not in body
        copy = decode(body, engine.clients[client].dialect, request=False)
        assert copy.type == MsgType.GET and copy.key_auth is None and copy.key_encrypt is None
    assert promisc_unwrap(next(b.data for b in copies if b.to == (LX,))) is None  # bare on linux


def dump_daemon(render_fails: frozenset[int]) -> Daemon:
    def render(item: object, dialect: Dialect, seq: int, pid: int) -> bytes:
        assert isinstance(item, int)
        if item in render_fails:
            raise EncodeError("not in this dialect")
        return encode(Message(MsgType.DUMP, SaType.ESP, seq, pid), dialect)

    def on_handle(client: int, msg: Message) -> list[Effect]:
        return [Dump(client, [0, 1, 2, 3], render, msg.pid)]

    daemon = Daemon(FakeEngine(on_handle))
    daemon.opened(1, FREEBSD)
    return daemon


def test_a_dump_stream_counts_seq_down_to_zero_on_the_last_entry_it_can_send() -> None:
    daemon = dump_daemon(frozenset({3}))
    (stream,) = daemon.receive(1, encode(Message(MsgType.DUMP, 0, 9, 77), FREEBSD), T0)
    assert isinstance(stream, DumpStream) and stream.to == 1 and len(stream) == 4
    seqs = [decode(d, FREEBSD, request=False).seq for d in stream]
    assert seqs == [3, 2, 0]  # entry 3 cannot be carried: the one before it ends the dump
    assert stream.skipped == 1
    assert daemon.engine.stats.drops["dump_unencodable"] == 1


def test_a_dump_with_nothing_the_client_can_read_is_answered_enoent() -> None:
    daemon = dump_daemon(frozenset({0, 1, 2, 3}))
    request = encode(Message(MsgType.DUMP, 0, 9, 77), FREEBSD)
    (stream,) = daemon.receive(1, request, T0)
    assert isinstance(stream, DumpStream)
    (only,) = list(stream)
    assert only[1] == MsgType.DUMP and only[2] == errno.ENOENT


def test_a_lookup_answers_the_decision_and_the_acquire_as_a_broadcast() -> None:
    engine = make_engine(clients=(FB, LX))
    daemon = daemon_of(engine)
    daemon.receive(LX, encode(register(SaType.ESP), LINUX), T0)
    add_policy(engine, FB)
    decision, out = daemon.lookup(Direction.OUTBOUND, flow(), at(1))
    assert decision.action == "discard" and decision.held
    acquires = [o for o in out if isinstance(o, Broadcast)]
    assert [a.to for a in acquires] == [(LX,)]
    assert decode(acquires[0].data, LINUX, request=False).type == MsgType.ACQUIRE
    _, traced = daemon.lookup(Direction.OUTBOUND, flow(), at(2), trace=True)
    assert all(not isinstance(o, Log) or "ACQUIRE" in o.fmt % o.args for o in traced)
