"""The control socket cannot end the daemon: every request meets one boundary.

Whatever bytes arrive on ``x.ctl`` (deep nesting, huge numbers, invalid UTF-8,
NULs, a megabyte in one datagram, arguments no command expects) the daemon answers
with a status and goes on; afterwards both the control socket and the PF_KEY socket
still answer.  A command that fails inside the daemon is answered with status 70,
logged with a rate limit and counted.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import shutil
import socket
import tempfile
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pfkeyd import control
from pfkeyd.defaults import control_path
from pfkeyd.effects import Effect, Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.server import (
    CONTROL_REQUEST_MAX,
    ControlHook,
    ControlRequestError,
    Endpoint,
    Server,
    parse_control_request,
)
from pfkeyd.wire import Dialect, Message, MsgType, SaType, decode, encode

SO_SNDBUFFORCE = 32  # Linux: a send buffer above wmem_max (needs CAP_NET_ADMIN)
MIB = 1 << 20


def hook(engine: KeyEngine) -> ControlHook:
    """The control hook as `pfkeyd` builds it."""

    def run(argv: Sequence[str], now: Instant, dialect: Dialect) -> tuple[int, str, str, Sequence[Effect]]:
        outcome = control.run(engine, argv, now, dialect)
        return outcome.status, outcome.out, outcome.err, outcome.effects

    return run


def argv_request(*argv: str) -> bytes:
    return json.dumps({"argv": list(argv)}).encode()


async def control_request(path: str, payload: bytes) -> dict[str, object] | None:
    """One request on a control socket and its decoded answer; None when the kernel
    refused the datagram itself (larger than any send buffer it allows)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * MIB)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
        await sock.connect(path)
        try:
            await sock.send(payload)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:  # the daemon never saw it
                return None
            raise
        answer = json.loads(await sock.recv(MIB))
    assert isinstance(answer, dict)
    return answer


async def pfkey_answers(path: str) -> bool:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sock:
        await sock.connect(path)
        await sock.send(encode(Message(MsgType.REGISTER, SaType.ESP, 77, 4242), Dialect.LINUX))
        reply = decode(await sock.recv(0xFFFF * 8), Dialect.LINUX, request=False)
    return (reply.type, reply.seq, reply.errno) == (MsgType.REGISTER, 77, 0)


def well_formed(payload: bytes) -> bool:
    try:
        parse_control_request(payload)
    except ControlRequestError:
        return False
    return True


async def _throw(payloads: list[bytes]) -> None:
    sockdir = tempfile.mkdtemp(prefix="pfc", dir="/tmp")
    try:
        engine = KeyEngine(rng=random.Random(1))
        path = f"{sockdir}/p.sock"
        ctl = control_path(path)
        server = Server(engine, [Endpoint(path, Dialect.LINUX)], control=hook(engine), wall_clock=lambda: 1e9)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            for payload in payloads:
                answer = await control_request(ctl, payload)
                if answer is None:
                    continue
                assert isinstance(answer["status"], int)
                assert isinstance(answer["out"], str) and isinstance(answer["err"], str)
                if len(payload) > CONTROL_REQUEST_MAX:
                    assert answer == {"status": 64, "out": "", "err": "pfkeyd: bad control request: request too long\n"}
                elif not well_formed(payload):
                    assert answer["status"] == 64
                    assert str(answer["err"]).startswith("pfkeyd: bad control request: ")
                else:
                    # A well-formed request runs its command, which must not fail
                    # inside the daemon whatever its arguments.
                    assert answer["status"] != 70, (payload[:200], answer)
                # Both sockets still answer.
                assert await control_request(ctl, argv_request("sysctl", "-n", "net.key.esp_auth")) == {
                    "status": 0,
                    "out": f"{engine.knobs.esp_auth}\n",
                    "err": "",
                }
                assert await pfkey_answers(path)
            assert engine.stats.drops.get("control_failed", 0) == 0
            server.stop()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


_WORDS = st.sampled_from(
    [
        "sysctl",
        "stats",
        "lookup",
        "-a",
        "-d",
        "-n",
        "-adn",
        "-x",
        "-",
        "--",
        "in",
        "out",
        "fwd",
        "10.0.0.1",
        "10.0.0.2",
        "::1",
        "fe80::1%lo",
        "fe80::1%999999",
        "10.0.0.0/8",
        "256.1.1.1",
        "tcp",
        "udp",
        "icmp",
        "icmp6",
        "any",
        "dialect",
        "255",
        "256",
        "-1",
        "65535",
        "65536",
        "0x10",
        "\u0661\u0662",
        "pfkeyd.max_sas=",
        "pfkeyd.max_sas=\u0661\u0662\u0663",
        "net.key.esp_auth=1",
        "net.key.spi_minval=0x" + "f" * 40,
        "net.inet.ipsec.def_policy=0",
        "net.key.debug=" + "9" * 5000,
        "=",
        "net.key=1",
        "\ud800",
        "a\x00b",
    ]
)
_TEXT = st.one_of(_WORDS, st.text(max_size=30))

payloads = st.one_of(
    st.binary(max_size=300),
    st.integers(1, 200_000).map(lambda n: b"[" * n),  # deep nesting
    st.integers(1, 200_000).map(lambda n: b'{"argv": ' + b"[" * n),
    st.integers(1, 60_000).map(lambda n: b'{"argv": [' + b"9" * n + b"]}"),  # huge numbers
    st.integers(1, 60_000).map(lambda n: b'{"argv": ["stats"], "n": 1e' + b"9" * n + b"}"),
    st.binary(max_size=40).map(lambda b: b'{"argv": ["stats", "' + b + b'\xff\xfe"]}'),  # invalid UTF-8
    st.sampled_from(
        [
            b'{"argv": ["stats\x00"]}',
            b'{"argv": ["stats\\u0000"]}',
            b"\x00" * 100,
            b'{"argv": ["\\ud800"]}',
            b"\xfe\xff\x00{",
            b'{"argv": null}',
            b'{"argv": [[]]}',
        ]
    ),
    st.sampled_from([CONTROL_REQUEST_MAX, CONTROL_REQUEST_MAX + 1, MIB]).map(lambda n: b"x" * n),  # long lines
    st.sampled_from([CONTROL_REQUEST_MAX - 40, CONTROL_REQUEST_MAX + 1, MIB]).map(
        lambda n: argv_request("sysctl", "x" * n)
    ),
    st.lists(_TEXT, max_size=8).map(lambda a: json.dumps({"argv": a}).encode()),
    st.lists(_WORDS, max_size=7).map(lambda a: json.dumps({"argv": ["lookup", *a]}).encode()),
    st.lists(_WORDS, max_size=5).map(lambda a: json.dumps({"argv": ["sysctl", *a]}).encode()),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(payloads, min_size=1, max_size=4))
def test_no_control_request_ends_the_daemon_and_both_sockets_still_answer(batch: list[bytes]) -> None:
    trio.run(_throw, batch)


def test_the_issue_reproducer_gets_an_answer() -> None:
    # b"[" * 1000 made json.loads raise RecursionError, which ended the daemon.
    trio.run(_throw, [b"[" * 1000, b"[" * 100_000, b'{"argv": ["sysctl", "-n", "net.key.debug"]}'])


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"[" * 50_000, "not JSON: nested too deeply"),
        (b'{"argv": [' + b"9" * 5000 + b"]}", "not JSON: "),
        (b'{"argv": ["\xff"]}', "not UTF-8"),
        (b'{"argv": ["a\\u0000"]}', "an argument holds a NUL character"),
        (b'{"argv": ["\\udc80"]}', "an argument is not text"),
        (b'{"argv": "stats"}', 'expected {"argv": [string, ...]}'),
        (b"x" * (CONTROL_REQUEST_MAX + 1), "request too long"),
    ],
)
def test_parse_control_request_names_the_problem(payload: bytes, problem: str) -> None:
    with pytest.raises(ControlRequestError, match="^" + problem.replace("[", r"\[").replace("{", r"\{")):
        parse_control_request(payload)


def test_parse_control_request_takes_a_request_of_exactly_the_limit() -> None:
    head = b'{"argv": ["sysctl", "'
    payload = head + b"x" * (CONTROL_REQUEST_MAX - len(head) - 3) + b'"]}'
    assert len(payload) == CONTROL_REQUEST_MAX
    assert parse_control_request(payload)[0] == "sysctl"


async def test_a_failing_command_is_answered_logged_with_a_limit_counted_and_survived(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pfkeyd.server")
    engine = KeyEngine(rng=random.Random(1))
    real = hook(engine)

    def buggy(argv: Sequence[str], now: Instant, dialect: Dialect) -> tuple[int, str, str, Sequence[Effect]]:
        if argv[0] == "boom":
            raise RuntimeError("a bug in a control command")
        return real(argv, now, dialect)

    path = f"{sockdir}/p.sock"
    server = Server(engine, [Endpoint(path, Dialect.LINUX)], control=buggy)
    await nursery.start(server.serve)
    ctl = control_path(path)
    for _ in range(5):
        answer = await control_request(ctl, argv_request("boom"))
        assert answer is not None and answer["status"] == 70 and answer["out"] == ""
        assert "internal error" in str(answer["err"])
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # logged once, with the traceback ...
    assert errors[0].exc_info is not None and "control command ['boom'] failed" in errors[0].getMessage()
    await trio.sleep(10)
    await control_request(ctl, argv_request("boom"))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "(4 more suppressed in the last 10 s)" in errors[1].getMessage()
    assert engine.stats.drops["control_failed"] == 6  # ... and counted every time
    assert await control_request(ctl, argv_request("stats")) is not None
    assert await pfkey_answers(path)
    out = await control_request(ctl, argv_request("stats"))
    assert out is not None and "6 control_failed" in str(out["out"])
    server.stop()


async def test_bad_requests_are_counted_and_their_warnings_limited(
    nursery: trio.Nursery, sockdir: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pfkeyd.server")
    engine = KeyEngine(rng=random.Random(1))
    path = f"{sockdir}/p.sock"
    server = Server(engine, [Endpoint(path, Dialect.LINUX)], control=hook(engine))
    await nursery.start(server.serve)
    for _ in range(100):
        assert (await control_request(control_path(path), b"[" * 5000) or {}).get("status") == 64
    assert engine.stats.drops["control_bad_request"] == 100
    warnings = [r.getMessage() for r in caplog.records if "bad control request" in r.getMessage()]
    assert warnings == ["bad control request of 5000 bytes: not JSON: nested too deeply"]
    server.stop()
