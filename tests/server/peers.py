"""Helpers for socket-level tests of the daemon: raw PF_KEY peers, a scripted engine,
message makers.

Peers are plain non-blocking SOCK_SEQPACKET sockets driven through trio's
``wait_readable``/``wait_writable``, so a test sees exactly the datagrams the
daemon sent.  ``Peer.quiet()`` proves that nothing else is on its way: it waits
until every task (the daemon's included) is blocked, by which time anything the
daemon sent is already in the peer's socket, then checks that the socket is empty.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from pfkeyd.effects import ClientId, Effect, Instant
from pfkeyd.knobs import Knobs
from pfkeyd.server import Endpoint, Server
from pfkeyd.stats import Stats
from pfkeyd.wire import (
    Address,
    AuthAlg,
    Dialect,
    EncAlg,
    ExtType,
    IpProto,
    Key,
    Lifetime,
    Message,
    MsgType,
    Sa,
    Sa2,
    SaType,
    SockAddr,
    decode,
    encode,
)
from pfkeyd.wire.framing import MAX_DATAGRAM

RECV_SIZE = MAX_DATAGRAM
WALL = 1_700_000_000
ENC_KEY = bytes(range(16))
AUTH_KEY = bytes(range(100, 132))


class Peer:
    """One raw PF_KEY client socket."""

    def __init__(self, path: str, dialect: Dialect, pid: int = 4242) -> None:
        self.path = path
        self.dialect = dialect
        self.pid = pid
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(path)
        self.sock.setblocking(False)

    async def send_raw(self, data: bytes) -> None:
        while True:
            try:
                self.sock.send(data)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    async def send(self, msg: Message) -> None:
        if msg.pid == 0:
            msg = msg.replace(pid=self.pid)
        await self.send_raw(encode(msg, self.dialect))

    async def recv_raw(self) -> bytes:
        while True:
            try:
                return self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)

    async def recv(self) -> Message:
        return decode(await self.recv_raw(), self.dialect, request=False)

    async def request(self, msg: Message) -> Message:
        await self.send(msg)
        return await self.recv()

    async def request_raw(self, msg: Message) -> bytes:
        await self.send(msg)
        return await self.recv_raw()

    def pending(self) -> bool:
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        return True

    async def quiet(self) -> bool:
        """True if nothing is, or is about to be, waiting for this peer."""
        await trio.testing.wait_all_tasks_blocked()
        return not self.pending()

    def close(self) -> None:
        self.sock.close()


@dataclass
class Daemon:
    server: Server
    engine: Any
    paths: dict[Dialect, str]
    peers: list[Peer] = field(default_factory=list)

    async def connect(self, dialect: Dialect, pid: int = 4242) -> Peer:
        peer = Peer(self.paths[dialect], dialect, pid)
        self.peers.append(peer)
        await trio.testing.wait_all_tasks_blocked()  # accepted and known to the engine
        return peer


async def start_daemon(nursery: trio.Nursery, sockdir: str, engine: Any, **kwargs: Any) -> Daemon:
    paths = {Dialect.LINUX: f"{sockdir}/linux.sock", Dialect.FREEBSD: f"{sockdir}/bsd.sock"}
    endpoints = [Endpoint(p, d) for d, p in paths.items()]
    kwargs.setdefault("wall_clock", lambda: WALL)
    server = Server(engine, endpoints, **kwargs)
    await nursery.start(server.serve)
    return Daemon(server, engine, paths)


class FakeEngine:
    """An engine whose answers a test scripts: ``on_handle(client, msg) -> effects``."""

    def __init__(
        self, on_handle: Callable[[ClientId, Message], list[Effect]] | None = None, knobs: Knobs | None = None
    ) -> None:
        self.knobs = knobs or Knobs()
        self.stats = Stats()
        self.clients: dict[ClientId, Dialect] = {}
        self.on_handle = on_handle or (lambda client, msg: [])
        self.deadline: float | None = None
        self.on_tick: Callable[[Instant], list[Effect]] = lambda now: []
        self.ticks: list[Instant] = []
        self.tick_limits: list[int | None] = []
        self.handled: list[tuple[ClientId, Message, Instant]] = []

    def client_opened(self, client: ClientId, dialect: Dialect) -> None:
        self.clients[client] = dialect

    def client_closed(self, client: ClientId) -> None:
        del self.clients[client]

    def serve_hot(self, client: ClientId, data: bytes, now: Instant) -> list[Effect] | None:
        return None  # no hot path: every request is decoded and handled

    def handle(self, client: ClientId, msg: Message, now: Instant, *, raw: bytes | None = None) -> list[Effect]:
        self.handled.append((client, msg, now))
        return self.on_handle(client, msg)

    def tick(self, now: Instant, *, limit: int | None = None) -> list[Effect]:
        self.ticks.append(now)
        self.tick_limits.append(limit)
        return self.on_tick(now)

    def next_deadline(self) -> float | None:
        return self.deadline


# ------------------------------------------------------------------ message makers


def addr(exttype: ExtType, text: str) -> Address:
    sa = SockAddr.parse(text)
    return Address(exttype, sa, sa.max_prefix, IpProto.ANY)


def add_msg(
    spi: int,
    *,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    seq: int = 0,
    hard: int = 0,
    soft: int = 0,
    msgtype: int = MsgType.ADD,
) -> Message:
    exts: list[Any] = [
        Sa(spi, 0, 0, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC),
        Sa2(),
        addr(ExtType.ADDRESS_SRC, src),
        addr(ExtType.ADDRESS_DST, dst),
        Key(ExtType.KEY_AUTH, AUTH_KEY),
        Key(ExtType.KEY_ENCRYPT, ENC_KEY),
    ]
    if hard or soft:
        exts += [Lifetime(ExtType.LIFETIME_HARD, addtime=hard), Lifetime(ExtType.LIFETIME_SOFT, addtime=soft)]
    return Message(msgtype, SaType.ESP, seq, 0, exts=tuple(exts))


def sa_msg(msgtype: int, spi: int, *, src: str = "10.0.0.1", dst: str = "10.0.0.2") -> Message:
    return Message(msgtype, SaType.ESP, exts=(Sa(spi), addr(ExtType.ADDRESS_SRC, src), addr(ExtType.ADDRESS_DST, dst)))


def has_keys(msg: Message) -> bool:
    return msg.has(ExtType.KEY_AUTH) or msg.has(ExtType.KEY_ENCRYPT)


def raw_has_key(data: bytes) -> bool:
    return ENC_KEY in data or AUTH_KEY in data
