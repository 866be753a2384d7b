"""The optional HTTP listener for Prometheus scrapes (``pfkeyd --metrics``).

A few lines of trio: accept a TCP connection, read the request head (at most
:data:`HEAD_MAX` bytes, within :data:`REQUEST_TIMEOUT` seconds), answer with
:func:`pfkeyd.metrics.http_answer` and close.  One request per connection, no
keep-alive, no request body: that is all a Prometheus server needs, and it leaves
nothing for a slow or hostile peer to hold on to.  The metrics are rendered on
the event loop from one engine snapshot: a few hundred lines, far less work than
one PF_KEY request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from pfkeyd.metrics import http_answer

__all__ = ["HEAD_MAX", "REQUEST_TIMEOUT", "parse_address", "serve_metrics"]

log = logging.getLogger("pfkeyd.metrics")

#: The longest request head read; a longer one is answered 400.
HEAD_MAX = 8192
#: A peer that has not sent its whole request head by then is disconnected.
REQUEST_TIMEOUT = 10.0
#: How long the answer's sender still reads what the peer sends after it.
LINGER = 1.0


def parse_address(text: str) -> tuple[str, int]:
    """``[host:]port`` (``[v6addr]:port`` for IPv6) -> (host, port).  The host is
    127.0.0.1 when left out: metrics are not published beyond the machine unless
    asked.  Port 0 picks a free port (the log says which).  Raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        msg = f"'{text}': expected [host:]port with a port from 0 to 65535"
        raise ValueError(msg)
    return host, int(port)


async def _read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) <= HEAD_MAX:
        chunk = await stream.receive_some(HEAD_MAX + 1)
        if not chunk:
            break
        data += chunk
    return data


async def _handle(stream: trio.SocketStream, render: Callable[[], bytes]) -> None:
    try:
        with trio.move_on_after(REQUEST_TIMEOUT) as scope:
            head = await _read_head(stream)
        if scope.cancelled_caught:
            return
        if len(head) > HEAD_MAX:
            head = b""  # answered 400
        await stream.send_all(http_answer(head, render))
        # A lingering close: closing with unread bytes would reset the connection,
        # and the peer might lose the answer; read what it still sends, briefly.
        await stream.send_eof()
        with trio.move_on_after(LINGER):
            drained = 0
            while drained <= HEAD_MAX and (chunk := await stream.receive_some(HEAD_MAX)):
                drained += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("metrics connection: %s", exc)
    finally:
        await stream.aclose()


async def serve_metrics(
    host: str,
    port: int,
    render: Callable[[], bytes],
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled; reports the
    listeners (port 0 picks a free port) once they listen.  OSError when the
    address cannot be bound."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    for listener in listeners:
        name = listener.socket.getsockname()
        log.info("metrics on http://%s:%d/metrics", f"[{name[0]}]" if ":" in name[0] else name[0], name[1])

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, render)

    task_status.started(listeners)  # they listen already
    await trio.serve_listeners(handler, listeners)
