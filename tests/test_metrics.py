"""Prometheus metrics: ``pfkeyd stats --prometheus`` and the ``--metrics`` listener.

The text is checked with prometheus_client's own parser, and the values of a
real daemon against its ``pfkeyd stats``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from pfkeyd import metrics
from pfkeyd.metrics_http import HEAD_MAX, REQUEST_TIMEOUT, parse_address, serve_metrics
from pfkeyd.packet.counters import DESCRIPTIONS
from pfkeyd.stats import Statistics
from pfkeyd.wire import Dialect, Message, MsgType, encode
from tests.test_control_cli import Daemon, pfkey_socket, pfkeyd_command

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition text, by (name, sorted labels); each family's
    TYPE and HELP must be there."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type in ("counter", "gauge"), family
        assert family.documentation
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out
            out[key] = s.value
    return out


STATS = Statistics(
    messages_in={"ADD": 3, "X_SPDADD": 1},
    messages_out={"ADD": 3, "ACQUIRE": 2, "EXPIRE": 5},
    errors={"ENOENT": 1, "EEXIST": 4},
    drops={"broadcast_buffer_full": 2},
    clients=4,
    sas=5,
    policies=6,
    packets={"esp.input": 7, "esp.badauth": 1, "ah.hdrops": 0},
)


def test_render_writes_every_counter_of_a_snapshot() -> None:
    got = samples(metrics.render(STATS).decode())
    assert got == {
        ("pfkeyd_messages_received_total", (("type", "ADD"),)): 3,
        ("pfkeyd_messages_received_total", (("type", "X_SPDADD"),)): 1,
        ("pfkeyd_messages_sent_total", (("type", "ADD"),)): 3,
        ("pfkeyd_messages_sent_total", (("type", "ACQUIRE"),)): 2,
        ("pfkeyd_messages_sent_total", (("type", "EXPIRE"),)): 5,
        ("pfkeyd_errors_total", (("errno", "ENOENT"),)): 1,
        ("pfkeyd_errors_total", (("errno", "EEXIST"),)): 4,
        ("pfkeyd_drops_total", (("reason", "broadcast_buffer_full"),)): 2,
        ("pfkeyd_packets_total", (("counter", "input"), ("proto", "esp"))): 7,
        ("pfkeyd_packets_total", (("counter", "badauth"), ("proto", "esp"))): 1,
        ("pfkeyd_packets_total", (("counter", "hdrops"), ("proto", "ah"))): 0,
        ("pfkeyd_clients", ()): 4,
        ("pfkeyd_sas", ()): 5,
        ("pfkeyd_policies", ()): 6,
    }


def test_an_empty_snapshot_still_declares_every_family() -> None:
    names = {f.name for f in text_string_to_metric_families(metrics.render(Statistics()).decode())}
    assert names == {
        "pfkeyd_messages_received",
        "pfkeyd_messages_sent",
        "pfkeyd_errors",
        "pfkeyd_drops",
        "pfkeyd_packets",
        "pfkeyd_clients",
        "pfkeyd_sas",
        "pfkeyd_policies",
    }


def test_the_data_plane_statistics_become_metrics_too() -> None:
    dataplane = {
        "interface": "ipsec0",
        "counters": {"tun_in": 12, "held_dropped": 1},
        "io": {"raw_esp.EAGAIN": 2},
        "held_flows": 3,
        "routes": ["10.0.0.0/24"],
        "socket_policies": [],
        "sas": [
            {
                "spi": 0x1000,
                "proto": "esp",
                "mode": "tunnel",
                "src": "192.0.2.1",
                "dst": "192.0.2.2",
                "bytes": 4200,
                "packets": 3,
                "seq": 3,
                "replay": 0,
            }
        ],
    }
    got = samples(metrics.render(STATS, dataplane).decode())
    sa = (("dst", "192.0.2.2"), ("mode", "tunnel"), ("proto", "esp"), ("spi", "0x00001000"), ("src", "192.0.2.1"))
    assert got[("pfkeyd_dataplane_events_total", (("counter", "tun_in"),))] == 12
    assert got[("pfkeyd_dataplane_io_total", (("counter", "raw_esp.EAGAIN"),))] == 2
    assert got[("pfkeyd_dataplane_held_flows", ())] == 3
    assert got[("pfkeyd_dataplane_sa_bytes_total", sa)] == 4200
    assert got[("pfkeyd_dataplane_sa_packets_total", sa)] == 3
    assert not any(name.startswith("pfkeyd_dataplane") for name, _ in samples(metrics.render(STATS).decode()))


# ------------------------------------------------------------------ HTTP, pure


def body() -> bytes:
    return b"metrics\n"


def split(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, rest = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), rest


@pytest.mark.parametrize(
    ("request_head", "status", "content"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK", b"metrics\n"),
        (b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK", b"metrics\n"),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK", b""),
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found", b"the metrics are at /metrics\n"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 Method Not Allowed", b"only GET and HEAD\n"),
        (b"GET /metrics\r\n\r\n", "HTTP/1.1 400 Bad Request", b"bad request\n"),
        (b"GET metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request", b"bad request\n"),
        (b"\x00\xff garbage", "HTTP/1.1 400 Bad Request", b"bad request\n"),
        (b"", "HTTP/1.1 400 Bad Request", b"bad request\n"),
    ],
)
def test_http_answer(request_head: bytes, status: str, content: bytes) -> None:
    got_status, headers, got = split(metrics.http_answer(request_head, body))
    assert (got_status, got) == (status, content)
    assert headers["Connection"] == "close"
    if status.endswith("200 OK"):
        assert headers["Content-Type"] == metrics.CONTENT_TYPE
        assert headers["Content-Length"] == str(len(body()))
    if "405" in status:
        assert headers["Allow"] == "GET, HEAD"


def test_http_answer_renders_only_for_the_metrics() -> None:
    def fail() -> bytes:
        raise AssertionError("rendered")

    for head in (b"GET / HTTP/1.1\r\n\r\n", b"PUT /metrics HTTP/1.1\r\n\r\n", b"junk"):
        metrics.http_answer(head, fail)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("9717", ("127.0.0.1", 9717)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:9717", ("::1", 9717)),
        ("localhost:65535", ("localhost", 65535)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_parse_address(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", "x", ":9717", "h:65536", "h:-1", "h:\u00b2", "[::1]:"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected \\[host:\\]port"):
        parse_address(text)


# ------------------------------------------------------------------ HTTP, over TCP


async def fetch(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        while chunk := await stream.receive_some():
            out += chunk
    return out


async def test_the_listener_serves_scrapes_and_refuses_the_rest() -> None:
    rendered = []

    def render() -> bytes:
        rendered.append(1)
        return metrics.render(STATS)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_metrics, "127.0.0.1", 0, render)
        port = listeners[0].socket.getsockname()[1]
        status, _headers, content = split(await fetch(port, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"))
        assert status == "HTTP/1.1 200 OK"
        assert samples(content.decode()) == samples(metrics.render(STATS).decode())
        # A request head that comes in pieces.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for piece in (b"GET /met", b"rics HTTP/1.1\r\n", b"\r\n"):
                await stream.send_all(piece)
                await trio.testing.wait_all_tasks_blocked()
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 200 OK")
        assert split(await fetch(port, b"DELETE /metrics HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 405 Method Not Allowed"
        assert split(await fetch(port, b"GET /x HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 404 Not Found"
        assert split(await fetch(port, b"G" * (HEAD_MAX + 10)))[0] == "HTTP/1.1 400 Bad Request"
        assert len(rendered) == 2
        nursery.cancel_scope.cancel()


async def test_a_peer_that_never_finishes_its_request_is_cut_off(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_metrics, "127.0.0.1", 0, lambda: b"")
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\n")
            start = trio.current_time()
            assert await stream.receive_some() == b""  # closed, no answer
            assert trio.current_time() - start == pytest.approx(REQUEST_TIMEOUT)
        nursery.cancel_scope.cancel()


async def test_a_port_in_use_is_an_error() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_metrics, "127.0.0.1", 0, lambda: b"")
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(OSError):
            await nursery.start(serve_metrics, "127.0.0.1", port, lambda: b"")
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ a real daemon


@pytest.fixture
def sockdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="pfm", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def text_stats(text: str) -> dict[str, int]:
    """``pfkeyd stats`` as {"messages in.ADD": n, "clients": n, "esp.input": n, ...}."""
    out: dict[str, int] = {}
    block = title = ""
    for line in text.splitlines():
        if not line.startswith("\t"):
            block = line.rstrip(":")
            continue
        count, name = line.strip().split(" ", 1)
        if line.startswith("\t\t"):
            out[f"{title}.{name}"] = int(count)
        elif block == "pfkey":
            title = name
            out[name] = int(count)
        else:
            out[f"{block}.{name}"] = int(count)
    return out


def from_samples(got: Samples) -> dict[str, int]:
    """The same keys from the metrics."""
    titles = {
        "pfkeyd_messages_received_total": "messages in",
        "pfkeyd_messages_sent_total": "messages out",
        "pfkeyd_errors_total": "errors",
        "pfkeyd_drops_total": "drops",
    }
    out: dict[str, int] = {}
    for (name, labels), value in got.items():
        assert value == int(value)
        if name in titles:
            out[f"{titles[name]}.{labels[0][1]}"] = int(value)
            out[titles[name]] = out.get(titles[name], 0) + int(value)
        elif name == "pfkeyd_packets_total":
            d = dict(labels)
            out[f"{d['proto']}.{d['counter']}"] = int(value)
        else:
            out[{"pfkeyd_clients": "clients", "pfkeyd_sas": "SAs", "pfkeyd_policies": "policies"}[name]] = int(value)
    for title in titles.values():
        out.setdefault(title, 0)
    return out


def test_a_daemon_gives_the_counters_of_stats_as_metrics_on_the_command_line_and_over_http(sockdir: str) -> None:
    daemon = Daemon(sockdir, extra=["--metrics", "127.0.0.1:0"])
    try:
        daemon.wait_for("metrics on http://")
        match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", daemon.log[-1])
        assert match is not None
        url = f"http://127.0.0.1:{match[1]}/metrics"
        with pfkey_socket(daemon.freebsd) as bsd, pfkey_socket(daemon.linux) as lnx:
            bsd.send(encode(Message(MsgType.X_SPDDUMP, 0, 1, 77), Dialect.FREEBSD))  # empty: ENOENT
            assert bsd.recv(0xFFFF * 8)
            lnx.send(encode(Message(MsgType.FLUSH, 0, 2, 77), Dialect.LINUX))  # to both sockets
            assert lnx.recv(0xFFFF * 8)
            plain = pfkeyd_command("stats", "-s", daemon.linux)
            prom = pfkeyd_command("stats", "-s", daemon.linux, "--prometheus")
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.headers["Content-Type"] == metrics.CONTENT_TYPE
                http = response.read().decode()
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(url.removesuffix("metrics"), timeout=30)
        assert (plain.returncode, prom.returncode, prom.stderr) == (0, 0, "")
        want = text_stats(plain.stdout)
        assert want["messages in.FLUSH"] == 1 and want["errors.ENOENT"] == 1 and want["clients"] == 2
        assert len([k for k in want if "." in k and k.split(".")[0] in DESCRIPTIONS]) == sum(
            len(v) for v in DESCRIPTIONS.values()
        )
        assert from_samples(samples(prom.stdout)) == want
        assert from_samples(samples(http)) == want
        assert pfkeyd_command("stats", "-s", daemon.linux, "--prometheus", "x").returncode == 64
    finally:
        status, out, err = daemon.stop()
    assert (status, out) == (0, ""), err
    assert "Traceback" not in err


def test_a_metrics_address_that_cannot_be_bound_stops_the_start(sockdir: str) -> None:
    result = pfkeyd_command("-s", f"{sockdir}/p.sock", "--metrics", "192.0.2.1:9717")  # not ours
    assert result.returncode == 1
    assert "--metrics 192.0.2.1:9717: " in result.stderr
    assert pfkeyd_command("-s", f"{sockdir}/p.sock", "--metrics", "x:70000").returncode == 64
