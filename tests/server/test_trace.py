"""Under -d (the pfkeyd.server logger at DEBUG) the trace shows every message the
daemon sends, not only the answers to requests: ACQUIREs (a lookup's, the timer's),
EXPIREs, SPDEXPIREs and broadcasts; and never key material."""

from __future__ import annotations

import logging
import random

import pytest
import trio
import trio.testing

from pfkeyd.defaults import control_path
from pfkeyd.effects import Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.wire import Dialect, Direction, ExtType, Message, MsgType, SaType
from tests.engine.spd_helpers import flow, hard_lifetime, spd_msg
from tests.server.peers import AUTH_KEY, ENC_KEY, add_msg, start_daemon
from tests.server.test_control_socket import argv_request, control_request, hook


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_the_debug_trace_shows_the_messages_the_daemon_originates_without_keys(
    nursery: trio.Nursery,
    sockdir: str,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
    dialect: Dialect,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pfkeyd.server")
    engine = KeyEngine(rng=random.Random(5))
    d = await start_daemon(nursery, sockdir, engine, control=hook(engine))
    keymgr = await d.connect(dialect, pid=100)
    setkey = await d.connect(dialect, pid=200)
    reg = await keymgr.request(Message(MsgType.REGISTER, SaType.ESP, 1))
    assert reg.errno == 0
    await setkey.request(spd_msg(src="10.1.0.1", dst="10.2.0.1", hard=hard_lifetime(60), seq=2, pid=200))

    # A lookup without an SA: the ACQUIRE goes to the key manager, caused by a control command.
    answer = await control_request(
        control_path(d.paths[dialect]), argv_request("lookup", "out", "10.1.0.1", "10.2.0.1")
    )
    assert answer is not None and "ACQUIRE sent" in str(answer["out"])

    # An SA with keys and lifetimes: its ADD is broadcast, then the timer expires it
    # (soft, then hard) and the policy (SPDEXPIRE).
    await setkey.request(add_msg(0x4001, src="192.0.2.1", dst="192.0.2.2", soft=10, hard=20, seq=3))
    await trio.sleep(61)
    got = []
    while not await keymgr.quiet():
        got.append((await keymgr.recv()).type)
    for wanted in (MsgType.ACQUIRE, MsgType.ADD, MsgType.EXPIRE, MsgType.X_SPDEXPIRE):
        assert wanted in got

    lines = [r.getMessage() for r in caplog.records]
    text = "\n".join(lines)
    kid = 1  # the key manager's client id
    assert any(
        line.startswith("control: broadcast ACQUIRE satype 3") and f"to client {kid}," in line for line in lines
    ), text
    assert f"client 2: broadcast ADD satype 3 seq 3 pid 200 to client {kid}, extensions SA," in text
    expires = [line for line in lines if line.startswith("timer: broadcast EXPIRE satype 3")]
    assert len(expires) == 2 and all(f"to client {kid}," in e for e in expires), text
    assert "LIFETIME_SOFT" in expires[0] and "LIFETIME_HARD" in expires[1]
    assert any(line.startswith("timer: broadcast X_SPDEXPIRE") for line in lines), text
    # Names of extensions at most; never their bytes, and no key extension in a broadcast.
    assert ENC_KEY.hex() not in text and AUTH_KEY.hex() not in text
    assert str(list(ENC_KEY)) not in text and repr(ENC_KEY) not in text and repr(AUTH_KEY) not in text
    for line in lines:
        if "broadcast" in line:
            assert ExtType.KEY_AUTH.name not in line and ExtType.KEY_ENCRYPT.name not in line, line
    d.server.stop()


async def test_the_data_planes_effects_go_out_through_the_daemon_layer_and_are_traced(
    nursery: trio.Nursery,
    sockdir: str,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Server.emit is the data plane's seam to the sockets: its ACQUIREs and EXPIREs are
    # encoded by the daemon layer for each recipient's dialect, counted, and traced.
    caplog.set_level(logging.DEBUG, logger="pfkeyd.server")
    engine = KeyEngine(rng=random.Random(5))
    d = await start_daemon(nursery, sockdir, engine)
    keymgrs = [await d.connect(dialect, pid=100) for dialect in Dialect]
    for km in keymgrs:
        assert (await km.request(Message(MsgType.REGISTER, SaType.ESP, 1))).errno == 0
    setkey = await d.connect(Dialect.LINUX, pid=200)
    await setkey.request(spd_msg(src="10.1.0.1", dst="10.2.0.1", seq=2, pid=200))
    for km in keymgrs:  # the other's REGISTER, the SPDADD
        while not await km.quiet():
            await km.recv()

    _, effects = engine.lookup(
        Direction.OUTBOUND, flow("10.1.0.1", "10.2.0.1"), Instant(trio.current_time(), 1_700_000_000)
    )
    d.server.emit(effects)
    for km in keymgrs:
        assert (await km.recv()).type == MsgType.ACQUIRE
    assert await setkey.quiet()  # not registered: no ACQUIRE
    assert any(r.getMessage().startswith("data plane: broadcast ACQUIRE satype 3") for r in caplog.records)
    d.server.stop()
