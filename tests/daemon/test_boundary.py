"""Daemon.receive is the one boundary of a PF_KEY request (issue 10, item 1): no
input may end the daemon.  An exception that escapes the engine is answered EINVAL
in the client's dialect, counted (``internal_error``), handed to the shell for a
rate-limited log with its traceback, and leaves the state as it was."""

from __future__ import annotations

import errno
import logging

import pytest
import trio

from pfkeyd import engine as engine_module
from pfkeyd.daemon import Daemon, Log, Reply
from pfkeyd.engine import KeyEngine
from pfkeyd.wire import Dialect, MsgType, SaType, encode
from tests.engine.conftest import CLIENT_OF, T0, add, at, dump, get, make_engine, mature, snapshot
from tests.server.peers import start_daemon


class Boom(RuntimeError):
    """A bug in a handler."""


def exploding(engine: KeyEngine, req: object) -> list[object]:
    # A handler that has looked at the SAD, as a real one does, then fails.
    assert len(engine.sad) >= 0
    raise Boom("a bug")


def daemon_with_state() -> tuple[Daemon, KeyEngine]:
    engine = make_engine()
    daemon = Daemon(engine)
    for client, state in list(engine.clients.items()):
        daemon.opened(client, state.dialect)
    mature(engine, spi=0x1000)
    return daemon, engine


@pytest.mark.parametrize("dialect", [Dialect.FREEBSD, Dialect.LINUX])
def test_an_exception_in_a_handler_is_answered_einval_and_changes_nothing(
    dialect: Dialect, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, engine = daemon_with_state()
    me = CLIENT_OF[dialect]
    monkeypatch.setitem(engine_module.HANDLERS, MsgType.GET, exploding)
    before = snapshot(engine)
    request = encode(get(SaType.ESP, 0x1000), dialect)

    out = daemon.receive(me, request, at(1))

    assert snapshot(engine) == before
    replies = [o for o in out if isinstance(o, Reply)]
    assert len(replies) == 1 and replies[0].to == (me,)
    answer = replies[0].data
    assert answer[1] == MsgType.GET and answer[2] == errno.EINVAL
    # FreeBSD echoes the request with errno set; Linux sends the header alone.
    assert answer == (request[:2] + bytes((errno.EINVAL,)) + request[3:] if dialect is Dialect.FREEBSD else answer[:16])
    logs = [o for o in out if isinstance(o, Log)]
    assert [o.kind for o in logs] == ["internal"]
    assert isinstance(logs[0].exc, Boom)
    stats = daemon.statistics()
    assert stats.drops["internal_error"] == 1
    assert stats.errors["EINVAL"] == 1


def test_after_an_internal_error_the_same_client_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    daemon, engine = daemon_with_state()
    me = CLIENT_OF[Dialect.LINUX]
    with monkeypatch.context() as patch:
        patch.setitem(engine_module.HANDLERS, MsgType.ADD, exploding)
        daemon.receive(me, encode(add(SaType.ESP, 0x2000), Dialect.LINUX), at(1))
    assert 0x2000 not in engine.sad.by_spi
    out = daemon.receive(me, encode(add(SaType.ESP, 0x2000), Dialect.LINUX), at(2))
    assert 0x2000 in engine.sad.by_spi
    assert isinstance(out[0], Reply) and out[0].data[2] == 0


def test_an_exception_in_the_decoder_is_caught_too(monkeypatch: pytest.MonkeyPatch) -> None:
    daemon, _ = daemon_with_state()
    me = CLIENT_OF[Dialect.FREEBSD]

    def broken_decode(*args: object, **kwargs: object) -> object:
        raise Boom("a decoder bug")

    monkeypatch.setattr("pfkeyd.daemon.decode", broken_decode)
    out = daemon.receive(me, encode(dump(SaType.ESP), Dialect.FREEBSD), T0)
    assert [type(o) for o in out] == [Log, Reply]
    assert daemon.statistics().drops["internal_error"] == 1


async def test_a_request_that_hits_a_bug_does_not_end_the_daemon(
    tmp_path: object,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    monkeypatch.setitem(engine_module.HANDLERS, MsgType.GET, exploding)
    caplog.set_level(logging.ERROR, logger="pfkeyd.server")
    async with trio.open_nursery() as nursery:
        pfkeyd = await start_daemon(nursery, str(tmp_path), KeyEngine())
        peer = await pfkeyd.connect(Dialect.LINUX)
        for _ in range(3):
            await peer.send_raw(encode(get(SaType.ESP, 0x1000), Dialect.LINUX))
            answer = await peer.recv_raw()
            assert answer[1] == MsgType.GET and answer[2] == errno.EINVAL
        # Still serving: a request that works gets its answer.
        await peer.send_raw(encode(add(SaType.ESP, 0x2000), Dialect.LINUX))
        assert (await peer.recv_raw())[2] == 0
        nursery.cancel_scope.cancel()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # rate-limited
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is Boom
