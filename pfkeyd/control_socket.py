"""The control socket's protocol: one JSON request, one JSON answer, per connection.

A peer that passed the credential check sends one datagram, ``{"argv": [...]}`` in
UTF-8 JSON (:func:`parse_control_request`), and receives one answer,
``{"status": n, "out": text, "err": text}`` (:func:`control_answer`); then the
connection closes.  What a command does is :mod:`pfkeyd.control`'s; the shell's
:func:`serve_peer` only moves the two datagrams.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

import trio

from pfkeyd.effects import Effect, Instant
from pfkeyd.wire import Dialect

__all__ = [
    "CONTROL_REQUEST_MAX",
    "CONTROL_TIMEOUT",
    "ControlHook",
    "ControlRequestError",
    "EX_SOFTWARE",
    "EX_USAGE",
    "clip",
    "control_answer",
    "parse_control_request",
    "serve_peer",
]

log = logging.getLogger("pfkeyd.server")

#: A control hook: (argv, now, dialect) -> (exit status, stdout text, stderr text,
#: effects); ``dialect`` is that of the PF_KEY socket the control socket is beside.
ControlHook = Callable[[Sequence[str], Instant, Dialect], tuple[int, str, str, Sequence[Effect]]]

#: The largest control request accepted; a longer one is answered "request too long".
CONTROL_REQUEST_MAX = 64 * 1024
#: How long a control peer has to send its request.
CONTROL_TIMEOUT = 10.0
#: Exit statuses of control answers the daemon gives itself (sysexits.h).
EX_USAGE, EX_SOFTWARE = 64, 70


class ControlRequestError(ValueError):
    """A control request that is not ``{"argv": [str, ...]}`` in UTF-8 JSON."""


def parse_control_request(data: bytes) -> list[str]:
    """The argv of one control request (one datagram), or :class:`ControlRequestError`.

    The request is a UTF-8 JSON object whose ``argv`` is a list of strings; the
    strings are text (no lone surrogates) without NUL.  Any other bytes, however
    deep their nesting or long their numbers, raise ControlRequestError.
    """
    if len(data) > CONTROL_REQUEST_MAX:
        raise ControlRequestError("request too long")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ControlRequestError("not UTF-8") from None
    try:
        request = json.loads(text)
    except RecursionError:
        raise ControlRequestError("not JSON: nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError, an integer of too many digits
        raise ControlRequestError(f"not JSON: {clip(str(exc))}") from None
    argv = request.get("argv") if isinstance(request, dict) else None
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise ControlRequestError('expected {"argv": [string, ...]}')
    for arg in argv:
        if "\0" in arg:
            raise ControlRequestError("an argument holds a NUL character")
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise ControlRequestError("an argument is not text (a lone surrogate)") from None
    return argv


def control_answer(status: int, out: str = "", err: str = "") -> bytes:
    """One control answer datagram."""
    return json.dumps({"status": status, "out": out, "err": err}).encode()


def clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


async def serve_peer(
    sock: socket.socket, answer: Callable[[bytes], bytes], settle: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Receive one request from a control peer, send ``answer(request)``, close.
    ``settle``, if given, is awaited between the answer and its sending (the
    durable state: until a knob change is on disk).  A peer that takes longer than
    CONTROL_TIMEOUT is dropped."""
    try:
        with trio.move_on_after(CONTROL_TIMEOUT):
            while True:
                try:
                    # One byte more than the limit tells a request that is too long.
                    data = sock.recv(CONTROL_REQUEST_MAX + 1)
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
            payload = answer(data)
            if settle is not None:
                await settle()
            while True:
                try:
                    sock.send(payload)
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
    except OSError as exc:
        log.debug("control connection: %s", exc.strerror)
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()
