"""What the key engine asks the shell to do: a small closed set of values.

The engine never touches a socket.  ``KeyEngine.handle`` and ``KeyEngine.tick``
return a list of these, in the order they must happen; the trio shell carries them
out.  This is key_sendup_mbuf's ONE/ALL/REGISTERED turned into data: the engine has
already resolved every target to explicit client ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pfkeyd.record import record
from pfkeyd.wire import Dialect, Message, MsgType

__all__ = ["ClientId", "Instant", "Send", "SendEncoded", "Error", "Dump", "Effect", "DumpRender"]

#: The shell's handle for one connected PF_KEY socket.
ClientId = int


@record
class Instant:
    """The daemon's clock at one moment.

    ``mono`` (seconds, monotonic) drives every deadline; ``wall`` (seconds since the
    epoch) is what lifetimes report in ``sadb_lifetime_addtime``/``usetime``.
    """

    mono: float
    wall: int


@record
class Send:
    """Deliver ``msg`` to every client in ``to``.

    ``reply`` marks the answer to the request being handled: the shell waits for
    buffer space rather than drop it (backpressure slows only that client).  Other
    sends are broadcasts: a client whose buffer is full loses that copy, which is
    counted and logged.  ``promisc`` marks a promiscuous copy, which the shell wraps
    in an SADB_X_PROMISC header for freebsd-dialect sockets and sends bare to linux
    ones.  Key material only ever travels in a ``reply``.
    """

    to: tuple[ClientId, ...]
    msg: Message
    reply: bool = False
    promisc: bool = False


@record
class SendEncoded:
    """The hot path's answer (:mod:`pfkeyd.engine.hotpath`): ``data``, a keyless
    ``msgtype`` message already encoded in the dialect of every recipient, is the
    reply to ``requester`` and a broadcast copy for each of ``others``.  It means
    what a :class:`Send` with ``reply`` to the requester and one without to the
    others would mean."""

    requester: ClientId
    others: tuple[ClientId, ...]
    data: bytes
    msgtype: int


@record
class Error:
    """The error reply to the request being handled, in the client's dialect style
    (FreeBSD: the request echoed with errno set; Linux: the bare header)."""

    to: ClientId
    errno: int


#: render(item, dialect, seq, pid) -> the encoded dump message for one snapshot item.
#: It raises pfkeyd.errors.EncodeError when the dialect cannot carry the item.
DumpRender = Callable[[Any, Dialect, int, int], bytes]


@record
class Dump:
    """Stream one message per item of ``items`` (a snapshot taken when the request
    arrived) to ``to``, encoded as the client's socket drains.

    ``seq`` counts down to 0 on the last message delivered; ``pid`` is the
    requester's.  Items the client's dialect cannot carry are skipped and counted.
    """

    to: ClientId
    items: Sequence[Any]
    render: DumpRender
    pid: int
    msgtype: int = MsgType.DUMP  # MsgType.X_SPDDUMP for policies


Effect = Send | SendEncoded | Error | Dump
