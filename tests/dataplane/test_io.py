"""pfkeyd.dataplane.io over real devices: the TUN, raw sockets for 50/51/108, NAT-T,
the mark that keeps the daemon's packets out of the TUN.  No sleeps: every wait is
on a descriptor's readiness, and a packet the kernel routed is queued by the time
sendto returns, so "nothing arrived" is checked with a non-blocking read."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.packet import Raw

from pfkeyd.dataplane.io import (
    IoCounters,
    NattSocket,
    RawReceiver,
    RawSender,
    TunDevice,
    UdpDatagram,
    UdpKind,
    classify_udp,
    destination_of,
    fragmentable,
    rebuild_ipv6,
)
from pfkeyd.dataplane.netlink import DEFAULT_FWMARK, Routing, RoutingConfig, transport_route, tunnel_route
from tests.dataplane.wire import Capture, is_neighbour_discovery
from tests.netns import Pair

V4, V6 = socket.AF_INET, socket.AF_INET6
ESP_PAYLOAD = bytes.fromhex("0000c0de00000001") + bytes(range(64))  # SPI, sequence number, "ciphertext"


def _esp4(proto: int = 50, payload: bytes = ESP_PAYLOAD) -> bytes:
    return bytes(
        IP(src=Pair.V4[0], dst=Pair.V4[1], proto=proto, tos=0x2A, id=0x1234, flags="DF", ttl=64) / Raw(payload)
    )


def _esp6(proto: int = 50, payload: bytes = ESP_PAYLOAD) -> bytes:
    return bytes(IPv6(src=Pair.V6[0], dst=Pair.V6[1], nh=proto, tc=0x2A, fl=0x12345, hlim=64) / Raw(payload))


@dataclass
class Host:
    tun: TunDevice
    routing: Routing


@pytest.fixture
def host_a(netpair: Pair) -> Iterator[Host]:
    """Namespace a with ipsec0 open and configured; everything removed after."""
    ns = netpair.a
    clean = ns.snapshot()
    with ns.inside():
        tun = TunDevice.open("ipsec0")
        routing = Routing(RoutingConfig())
        routing.setup()
    try:
        yield Host(tun, routing)
    finally:
        with ns.inside():
            routing.close()
            tun.close()
        assert ns.snapshot() == clean


def _tun_is_empty(tun: TunDevice) -> bool:
    try:
        os.read(tun.fd, 65535)
    except BlockingIOError:
        return True
    return False


# ---------------------------------------------------------------------------- TUN
async def test_packets_routed_into_the_tun_are_read_whole(netpair: Pair, host_a: Host) -> None:
    with netpair.a.inside():
        host_a.routing.add_route(tunnel_route("10.2.0.0/24"))
        host_a.routing.add_route(tunnel_route("2001:db8:2::/64"))
        s4 = socket.socket(V4, socket.SOCK_DGRAM)
        s6 = socket.socket(V6, socket.SOCK_DGRAM)
    with s4, s6:
        s4.sendto(b"four", ("10.2.0.1", 9))
        s6.sendto(b"six", ("2001:db8:2::1", 9))
        got: list[bytes] = []
        with trio.fail_after(10):  # a lost packet fails the test instead of hanging it
            while len(got) < 2:
                got += await host_a.tun.receive_batch()
    p4, p6 = sorted(got, key=lambda d: d[0] >> 4)
    ip4 = IP(p4)
    assert (ip4.src, ip4.dst, ip4[UDP].dport, bytes(ip4[UDP].payload)) == (Pair.V4[0], "10.2.0.1", 9, b"four")
    ip6 = IPv6(p6)
    assert (ip6.src, ip6.dst, ip6[UDP].dport, bytes(ip6[UDP].payload)) == (Pair.V6[0], "2001:db8:2::1", 9, b"six")
    assert host_a.tun.counters["tun.read"] == 2
    assert _tun_is_empty(host_a.tun)  # the kernel sent nothing else into it (no RS, no MLD)


@pytest.mark.parametrize("family", [V4, V6])
async def test_datagrams_written_to_the_tun_are_delivered(netpair: Pair, host_a: Host, family: int) -> None:
    with netpair.a.inside():
        host_a.routing.add_route(tunnel_route("10.2.0.0/24" if family == V4 else "2001:db8:2::/64"))
        rx = trio.socket.socket(family, socket.SOCK_DGRAM)
    with rx:
        local = Pair.V4[0] if family == V4 else Pair.V6[0]
        await rx.bind((local, 0))
        port = rx.getsockname()[1]
        if family == V4:
            inner = bytes(IP(src="10.2.0.1", dst=local) / UDP(sport=7, dport=port) / Raw(b"decrypted"))
        else:
            inner = bytes(IPv6(src="2001:db8:2::1", dst=local) / UDP(sport=7, dport=port) / Raw(b"decrypted"))
        assert await host_a.tun.send(inner) is True
        with trio.fail_after(10):
            data, addr = await rx.recvfrom(100)
    assert data == b"decrypted"
    assert ipaddress.ip_address(addr[0]) == ipaddress.ip_address("10.2.0.1" if family == V4 else "2001:db8:2::1")
    assert host_a.tun.counters["tun.write"] == 1


async def test_a_malformed_datagram_written_to_the_tun_is_counted_not_raised(netpair: Pair, host_a: Host) -> None:
    assert await host_a.tun.send(b"\x00garbage") is False
    assert host_a.tun.counters["tun.drop.EINVAL"] == 1


# -------------------------------------------------------------------- raw sockets
@pytest.mark.parametrize("proto", [50, 51, 108])
@pytest.mark.parametrize("family", [V4, V6])
async def test_raw_datagrams_arrive_whole(netpair: Pair, family: int, proto: int) -> None:
    sent = _esp4(proto) if family == V4 else _esp6(proto)
    with netpair.b.inside():
        rx = RawReceiver(family, proto)
    with netpair.a.inside():
        tx = RawSender(family, DEFAULT_FWMARK)
    try:
        assert await tx.send(sent) is True
        got = await rx.receive()
    finally:
        rx.close()
        tx.close()
    assert got == sent  # byte for byte: TOS/traffic class, flow label, DF, ID, TTL/hop limit


async def test_ipv6_extension_headers_before_esp_are_rebuilt_in_order(netpair: Pair) -> None:
    sent = bytes(
        IPv6(src=Pair.V6[0], dst=Pair.V6[1], tc=4, hlim=9) / IPv6ExtHdrDestOpt(nh=50, options=[]) / Raw(ESP_PAYLOAD)
    )
    with netpair.b.inside():
        rx = RawReceiver(V6, 50)
    with netpair.a.inside():
        tx = RawSender(V6, DEFAULT_FWMARK)
    try:
        assert await tx.send(sent)
        got = await rx.receive()
    finally:
        rx.close()
        tx.close()
    assert got == sent
    assert got[6] == 60  # the header's Next Header is the destination options header


async def test_bursts_are_drained_in_batches_bounded_by_the_limit(netpair: Pair) -> None:
    with netpair.b.inside():
        rx = RawReceiver(V4, 50)
    with netpair.a.inside():
        tx = RawSender(V4, DEFAULT_FWMARK)
    try:
        for i in range(10):
            await tx.send(_esp4(payload=ESP_PAYLOAD + bytes([i])))
        batches: list[list[bytes]] = []
        with trio.fail_after(10):
            while sum(map(len, batches)) < 10:
                batches.append(await rx.receive_batch(limit=3))
    finally:
        rx.close()
        tx.close()
    assert all(1 <= len(b) <= 3 for b in batches)
    assert [d[-1] for b in batches for d in b] == list(range(10))
    assert rx.counters["raw4.50.receive"] == 10


async def test_a_datagram_over_the_mtu_with_df_set_is_dropped_and_counted_with_emsgsize(netpair: Pair) -> None:
    counters = IoCounters()
    with netpair.a.inside():
        tx = RawSender(V4, DEFAULT_FWMARK, counters)
    try:
        assert await tx.send(_esp4(payload=bytes(2000))) is False  # _esp4 sets DF
    finally:
        tx.close()
    assert counters.snapshot() == {"raw4.drop.EMSGSIZE": 1}


def _fields(dg: bytes) -> dict[str, object]:
    """What a header must keep through the kernel's fragmentation and reassembly."""
    if dg[0] >> 4 == 4:
        p = IP(dg)
        return {"src": p.src, "dst": p.dst, "proto": p.proto, "tos": p.tos, "ttl": p.ttl, "flags": int(p.flags)}
    q = IPv6(dg)
    return {"src": q.src, "dst": q.dst, "nh": q.nh, "tc": q.tc, "hlim": q.hlim, "fl": q.fl}


@pytest.mark.parametrize("proto", [50, 17])
@pytest.mark.parametrize("family", [V4, V6])
async def test_a_fragmentable_datagram_over_the_mtu_is_fragmented_by_the_kernel_and_arrives_whole(
    netpair: Pair, family: int, proto: int
) -> None:
    payload = bytes(range(256)) * 20  # 5120 bytes: four fragments on the 1500-byte veth
    if family == V4:
        sent = bytes(IP(src=Pair.V4[0], dst=Pair.V4[1], proto=proto, tos=0x2A, id=7, ttl=33) / Raw(payload))
    else:
        sent = bytes(IPv6(src=Pair.V6[0], dst=Pair.V6[1], nh=proto, tc=0x2A, hlim=33) / Raw(payload))
    counters = IoCounters()
    with netpair.b.inside():
        rx = RawReceiver(family, 50) if proto == 50 else socket.socket(family, socket.SOCK_RAW, proto)
    with netpair.a.inside():
        tx = RawSender(family, DEFAULT_FWMARK, counters)
    cap = Capture(netpair.a)
    try:
        assert await tx.send(sent) is True, counters.snapshot()
        if isinstance(rx, RawReceiver):
            got = await rx.receive()
        else:
            with trio.fail_after(10):
                await trio.lowlevel.wait_readable(rx)
            got = rx.recv(65535)
            if family == V6:  # an IPv6 raw socket gives the payload alone
                got = sent[:40] + got
        wire = [dg for dg in cap.ip(outgoing_only=True) if not is_neighbour_discovery(dg)]
    finally:
        cap.close()
        rx.close()
        tx.close()
    name = "raw4" if family == V4 else "raw6"
    assert counters.snapshot() == {f"{name}.fragmented": 1, f"{name}.send": 1}, counters.snapshot()
    assert got[-len(payload) :] == payload
    assert _fields(got) == _fields(sent)
    # the wire carried fragments, each at most the veth's MTU
    frags = [dg for dg in wire if (IP(dg).frag or IP(dg).flags.MF if family == V4 else IPv6ExtHdrFragment in IPv6(dg))]
    assert len(frags) >= 4 and max(map(len, frags)) <= 1500


def test_a_datagram_of_the_other_family_is_refused(netpair: Pair) -> None:
    with netpair.a.inside():
        tx = RawSender(V4, DEFAULT_FWMARK)
    with tx.sock, pytest.raises(ValueError):
        trio.run(tx.send, _esp6())


def test_a_receiver_for_another_protocol_is_refused() -> None:
    with pytest.raises(ValueError):
        RawReceiver(V4, 17)


# --------------------------------------------------------------- the mark bypass
@pytest.mark.parametrize("family", [V4, V6])
async def test_marked_packets_bypass_the_tun_route_and_unmarked_ones_take_it(
    netpair: Pair, host_a: Host, family: int
) -> None:
    peer = Pair.V4[1] if family == V4 else Pair.V6[1]
    sent = _esp4() if family == V4 else _esp6()
    with netpair.a.inside():
        # transport mode: the peer's host route goes into the TUN
        host_a.routing.add_route(transport_route(peer))
        marked = RawSender(family, DEFAULT_FWMARK)
        unmarked = RawSender(family, 0)
    with netpair.b.inside():
        rx = RawReceiver(family, 50)
    try:
        assert await marked.send(sent)
        with trio.fail_after(10):  # a marked packet looping into the TUN would never arrive
            assert await rx.receive() == sent
        assert _tun_is_empty(host_a.tun)
        # the same datagram without the mark loops into the TUN
        assert await unmarked.send(sent)
        assert await host_a.tun.receive() == sent
    finally:
        marked.close()
        unmarked.close()
        rx.close()


# ------------------------------------------------------------------------ NAT-T
def test_classify_udp_tells_keepalive_ike_and_esp_apart() -> None:
    assert classify_udp(b"\xff") is UdpKind.KEEPALIVE
    assert classify_udp(b"\0\0\0\0" + b"ike message") is UdpKind.IKE
    assert classify_udp(b"\0\0\0\1\0\0\0\1") is UdpKind.ESP
    assert classify_udp(b"\xff\xff") is UdpKind.MALFORMED
    assert classify_udp(b"") is UdpKind.MALFORMED
    assert classify_udp(b"\0\0\0\1\0\0\0") is UdpKind.MALFORMED  # too short for SPI + sequence number


@pytest.mark.parametrize("family", [V4, V6])
async def test_natt_datagrams_and_keepalives_are_told_apart(netpair: Pair, family: int) -> None:
    src, dst = Pair.V4 if family == V4 else Pair.V6
    with netpair.b.inside():
        rx = NattSocket(family, DEFAULT_FWMARK)
    with netpair.a.inside():
        tx = NattSocket(family, DEFAULT_FWMARK, port=0)
    try:
        assert await tx.send_keepalive(dst)
        assert await tx.send(b"\0\0\0\0ike", dst, 4500)
        assert await tx.send(ESP_PAYLOAD, dst, 4500)
        got: list[UdpDatagram] = []
        while len(got) < 3:
            got += await rx.receive_batch()
    finally:
        rx.close()
        tx.close()
    assert [d.kind for d in got] == [UdpKind.KEEPALIVE, UdpKind.IKE, UdpKind.ESP]
    esp = got[2]
    assert esp.payload == ESP_PAYLOAD
    assert (esp.src, esp.dst) == (socket.inet_pton(family, src), socket.inet_pton(family, dst))
    assert (esp.sport, esp.dport) == (tx.port, 4500)
    # The rebuilt datagram is what unprotect_udp takes: it parses, with valid checksums.
    whole = esp.whole()
    pkt = IP(whole) if family == V4 else IPv6(whole)
    assert (pkt.src, pkt.dst, pkt[UDP].sport, pkt[UDP].dport) == (src, dst, tx.port, 4500)
    assert bytes(pkt[UDP].payload) == ESP_PAYLOAD
    rebuilt = IP(whole) if family == V4 else IPv6(whole)
    if family == V4:
        del rebuilt.chksum
    del rebuilt[UDP].chksum
    recomputed = bytes(rebuilt.__class__(bytes(rebuilt)))
    if family == V4:
        assert IP(recomputed).chksum == pkt.chksum
        assert pkt[UDP].chksum == 0  # RFC 3948 §2.1
    else:
        assert IPv6(recomputed)[UDP].chksum == pkt[UDP].chksum
    assert rx.counters.snapshot() == {
        f"natt{4 if family == V4 else 6}.keepalive": 1,
        f"natt{4 if family == V4 else 6}.ike": 1,
        f"natt{4 if family == V4 else 6}.esp": 1,
    }


@pytest.mark.parametrize("family", [V4, V6])
async def test_esp_in_udp_sent_whole_on_the_raw_socket_reaches_the_natt_socket(netpair: Pair, family: int) -> None:
    src, dst = Pair.V4 if family == V4 else Pair.V6
    sent = UdpDatagram(
        kind=UdpKind.ESP,
        payload=ESP_PAYLOAD,
        family=family,
        src=socket.inet_pton(family, src),
        sport=4500,
        dst=socket.inet_pton(family, dst),
        dport=4500,
        tos=0,
        ttl=64,
    ).whole()
    with netpair.b.inside():
        rx = NattSocket(family, DEFAULT_FWMARK)
    with netpair.a.inside():
        tx = RawSender(family, DEFAULT_FWMARK)
    try:
        assert await tx.send(sent)
        got = await rx.receive()
    finally:
        rx.close()
        tx.close()
    assert got.kind is UdpKind.ESP
    assert got.payload == ESP_PAYLOAD
    if family == V6:
        assert got.whole() == sent  # IPv6 has nothing the kernel keeps to itself
    else:
        assert got.whole()[:4] == sent[:4] and got.whole()[8:] == sent[8:]  # all but the ID and checksum


# ------------------------------------------------------------------------- pure
def test_rebuild_ipv6_matches_an_independent_encoder() -> None:
    ext = bytes(IPv6ExtHdrDestOpt(nh=51, options=[]))
    want = bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0xB8, fl=0xABCDE, hlim=3)
        / IPv6ExtHdrDestOpt(nh=51, options=[])
        / Raw(b"ah..")
    )
    got = rebuild_ipv6(
        b"ah..",
        51,
        socket.inet_pton(V6, "2001:db8::1"),
        socket.inet_pton(V6, "2001:db8::2"),
        hop_limit=3,
        flowinfo=(0xB8 << 20) | 0xABCDE,
        extensions=((60, ext),),
    )
    assert got == want


def test_destination_of() -> None:
    assert destination_of(_esp4()) == (V4, Pair.V4[1])
    assert destination_of(_esp6()) == (V6, Pair.V6[1])
    with pytest.raises(ValueError):
        destination_of(b"\x45\0")


def test_errno_of_a_drop_is_in_its_counter_name() -> None:
    c = IoCounters()
    from pfkeyd.dataplane.io import drop_name

    c.add(drop_name("raw4", OSError(errno.ENOBUFS, "x")))
    assert c.snapshot() == {"raw4.drop.ENOBUFS": 1}


async def test_natt_ipv4_sends_a_zero_udp_checksum_on_the_wire(netpair: Pair) -> None:
    # RFC 3948 §2.1 (SO_NO_CHECK): seen on the peer's veth with a packet capture.
    with netpair.b.inside():
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, socket.htons(0x0800))
        cap.bind(("o0", 0x0800))
    with netpair.a.inside():
        tx = NattSocket(V4, DEFAULT_FWMARK)
    try:
        assert await tx.send(ESP_PAYLOAD, Pair.V4[1], 4500)
        with trio.fail_after(10):
            while True:
                await trio.lowlevel.wait_readable(cap)
                frame = cap.recv(65535)
                pkt = IP(frame)
                if UDP in pkt and pkt[UDP].dport == 4500:
                    break
    finally:
        cap.close()
        tx.close()
    assert pkt[UDP].sport == 4500
    assert pkt[UDP].chksum == 0
    assert bytes(pkt[UDP].payload) == ESP_PAYLOAD


def test_receive_sockets_get_a_buffer_above_the_default_rmem_max(netpair: Pair) -> None:
    # A burst waits in this buffer while a batch is transformed; the kernel default
    # (about 208 KiB) lost a fifth of a TCP stream in the stand-in tunnel.
    from pfkeyd.dataplane.io import DEFAULT_RCVBUF

    with netpair.b.inside():
        socks = [RawReceiver(V4, 50).sock, RawReceiver(V6, 51).sock, NattSocket(V4, DEFAULT_FWMARK).sock]
    for s in socks:
        with s:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * DEFAULT_RCVBUF  # the kernel doubles it


@pytest.mark.parametrize("family", [V4, V6])
async def test_fragmented_datagrams_arrive_reassembled(netpair: Pair, family: int) -> None:
    from scapy.layers.inet import fragment
    from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6

    payload = ESP_PAYLOAD + bytes(range(256)) * 12  # about 3 KB: three fragments on a 1500-byte veth
    if family == V4:
        whole = _esp4(payload=payload)
        pieces = [bytes(f) for f in fragment(IP(whole), fragsize=1024)]
    else:
        whole = _esp6(payload=payload)
        pkt = IPv6(whole)
        pieces = [
            bytes(f)
            for f in fragment6(
                IPv6(src=pkt.src, dst=pkt.dst, tc=pkt.tc, fl=pkt.fl, hlim=pkt.hlim)
                / IPv6ExtHdrFragment(id=7, nh=50)
                / Raw(payload),
                1280,
            )
        ]
    assert len(pieces) > 2
    with netpair.b.inside():
        rx = RawReceiver(family, 50)
    with netpair.a.inside():
        tx = RawSender(family, DEFAULT_FWMARK)
    try:
        for piece in pieces:
            assert await tx.send(piece)
        with trio.fail_after(10):
            got = await rx.receive()
    finally:
        rx.close()
        tx.close()
    if family == V4:
        # reassembled: the same datagram, but for the checksum over a header that
        # now says "not a fragment"
        assert IP(got).len == len(whole) and got[20:] == whole[20:] and IP(got).flags == IP(whole).flags
    else:
        assert got == whole  # no fragment header left, payload length of the whole


def test_fragmentable_takes_only_headers_the_kernel_can_rebuild_whole() -> None:
    v4 = _esp4(payload=bytes(100))  # DF set
    clear = bytes(IP(src=Pair.V4[0], dst=Pair.V4[1], proto=50, tos=0x2A, ttl=9) / Raw(bytes(100)))
    got = fragmentable(clear)
    assert got is not None
    assert (got.proto, got.src, got.tos, got.ttl, got.offset) == (50, socket.inet_aton(Pair.V4[0]), 0x2A, 9, 20)
    assert fragmentable(v4) is None  # DF
    assert fragmentable(bytes(IP(src="1.2.3.4", dst="5.6.7.8", proto=50, frag=3) / Raw(bytes(8)))) is None
    assert fragmentable(bytes(IP(src="1.2.3.4", dst="5.6.7.8", proto=50, flags="MF") / Raw(bytes(8)))) is None
    assert fragmentable(bytes(IP(src="1.2.3.4", dst="5.6.7.8", proto=50, options=b"\x01" * 4) / Raw(bytes(8)))) is None
    assert fragmentable(clear[:-1]) is None  # the total length disagrees
    v6 = bytes(IPv6(src=Pair.V6[0], dst=Pair.V6[1], nh=50, tc=0x2A, hlim=7) / Raw(bytes(100)))
    got6 = fragmentable(v6)
    assert got6 is not None and (got6.proto, got6.tos, got6.ttl, got6.offset) == (50, 0x2A, 7, 40)
    assert fragmentable(_esp6()) is None  # a flow label
    with_ext = bytes(IPv6(src=Pair.V6[0], dst=Pair.V6[1]) / IPv6ExtHdrDestOpt(nh=50) / Raw(bytes(8)))
    assert fragmentable(with_ext) is None
    assert fragmentable(b"") is None and fragmentable(b"\x45" + bytes(10)) is None
