"""The I/O layer carries real traffic end to end, with a stand-in for the transforms.

Each host reads what its routes send into ipsec0, wraps it in an outer IPv4 header of
protocol 50 (the place where SPD lookup and ESP will go), sends it marked on the raw
socket; the peer's raw receiver strips the outer header and writes the inner datagram
to its TUN.  A TCP transfer between addresses that exist only behind the TUNs must
come through intact, and a capture on the veth must see nothing but protocol 50:
everything the next step needs, minus the cryptography."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from pyroute2 import IPRoute

from pfkeyd.dataplane.io import IoCounters, RawReceiver, RawSender, TunDevice
from pfkeyd.dataplane.netlink import DEFAULT_FWMARK, Routing, RoutingConfig, tunnel_route
from tests.netns import Namespace, Pair

INNER = ("10.1.0.1", "10.2.0.1")  # host addresses behind each TUN (on lo)


def _outer(src: bytes, dst: bytes, inner: bytes) -> bytes:
    # ID 0 and checksum 0: the kernel fills both for an IP_HDRINCL datagram.
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(inner), 0, 0, 64, 50, 0, src, dst) + inner


@dataclass
class Gateway:
    ns: Namespace
    tun: TunDevice
    routing: Routing
    rx: RawReceiver
    tx: RawSender
    local: bytes
    peer: bytes
    counters: IoCounters

    async def outbound(self) -> None:
        while True:
            for dg in await self.tun.receive_batch():
                await self.tx.send(_outer(self.local, self.peer, dg))

    async def inbound(self) -> None:
        while True:
            for dg in await self.rx.receive_batch():
                await self.tun.send(dg[(dg[0] & 0x0F) * 4 :])


def _gateway(ns: Namespace, me: int) -> Gateway:
    with ns.inside():
        counters = IoCounters()
        tun = TunDevice.open("ipsec0", counters)
        routing = Routing(RoutingConfig(mtu=1400))
        routing.setup()
        with IPRoute() as ipr:
            ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=INNER[me], prefixlen=32)
        other = INNER[1 - me]
        routing.add_route(tunnel_route(ipaddress.ip_network(f"{other}/24", strict=False), INNER[me]))
        gw = Gateway(
            ns=ns,
            tun=tun,
            routing=routing,
            rx=RawReceiver(socket.AF_INET, 50, counters),
            tx=RawSender(socket.AF_INET, DEFAULT_FWMARK, counters),
            local=socket.inet_aton(Pair.V4[me]),
            peer=socket.inet_aton(Pair.V4[1 - me]),
            counters=counters,
        )
    return gw


def _close(gw: Gateway) -> None:
    with gw.ns.inside():
        gw.rx.close()
        gw.tx.close()
        gw.routing.close()
        gw.tun.close()


@asynccontextmanager
async def _tunnel(p: Pair) -> AsyncIterator[tuple[Gateway, Gateway]]:
    a = _gateway(p.a, 0)
    try:
        b = _gateway(p.b, 1)
        try:
            async with trio.open_nursery() as nursery:
                for gw in (a, b):
                    nursery.start_soon(gw.outbound)
                    nursery.start_soon(gw.inbound)
                yield a, b
                nursery.cancel_scope.cancel()
        finally:
            _close(b)
    finally:
        _close(a)


async def test_a_tcp_transfer_crosses_the_tuns_intact_and_the_wire_sees_only_protocol_50(netpair: Pair) -> None:
    data = hashlib.shake_256(b"pfkeyd").digest(2_000_000)
    with netpair.b.inside():
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        wire = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, socket.htons(0x0800))
        wire.bind(("o0", 0x0800))
        wire.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    with netpair.a.inside():
        client = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    received = bytearray()
    async with _tunnel(netpair) as (a, b):
        with listener, client, trio.fail_after(60):
            # The addresses exist only after the gateways put them on lo.
            await listener.bind((INNER[1], 0))
            listener.listen()
            port = listener.getsockname()[1]

            async def serve() -> None:
                conn, _ = await listener.accept()
                with conn:
                    while chunk := await conn.recv(65536):
                        received.extend(chunk)
                    await conn.send(hashlib.sha256(received).digest())

            async with trio.open_nursery() as n:
                n.start_soon(serve)
                await client.connect((INNER[1], port))
                view = memoryview(data)
                while view:
                    sent = await client.send(view[:65536])
                    view = view[sent:]
                client.shutdown(socket.SHUT_WR)
                digest = await client.recv(64)
    assert bytes(received) == data
    assert digest == hashlib.sha256(data).digest()
    # (counts only roughly: the kernel may drop a burst at a full socket buffer, and TCP resends)
    assert a.counters["tun.read"] > 1000 and a.counters["raw4.send"] > 1000 and b.counters["raw4.50.receive"] > 1000
    # Everything that crossed the veth was protocol 50, none of it the TCP in clear.
    protocols = set()
    while True:
        try:
            frame = wire.recv(65535)
        except BlockingIOError:
            break
        protocols.add(frame[9])
    wire.close()
    assert protocols == {50}
