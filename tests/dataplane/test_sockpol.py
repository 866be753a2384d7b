"""Per-socket policies of type ipsec in the data plane (ipsec_getpolicybysock): the
socket's own requests are resolved by the engine and applied before the SPD, both
ways; a real key engine behind the seam, datagrams in and out, no sockets."""

from __future__ import annotations

import errno
import socket

import pytest

from pfkeyd.dataplane.sockpol import HEAD, SocketPolicy, parse_request
from pfkeyd.effects import Send
from pfkeyd.engine import KeyEngine
from pfkeyd.wire import Dialect, IpsecRequest, Level, Message, MsgType, Policy, PolicyType, SaType, SockAddr
from tests.dataplane.test_plane import IA, IB, A, B, add_gcm, plane, tunnel_pair, udp
from tests.engine.conftest import PID, T0, at, make_engine
from tests.engine.spd_helpers import AH, ALONE, ESP, IN, KM, ME, OUT, TRANSPORT, TUNNEL, request, send, spd_msg

IN_DIR, OUT_DIR = 1, 2


def sockpol(
    addr: str,
    port: int,
    direction: int,
    ptype: int = PolicyType.IPSEC,
    requests: tuple[IpsecRequest, ...] = (),
    *,
    owner: int = 7,
    proto: int = 17,
) -> SocketPolicy:
    """What the bridge sends for setsockopt(IP_IPSEC_POLICY) on a socket bound to
    addr:port, with the sadb_x_policy in Linux's layout (the program's headers)."""
    head = HEAD.pack(1, socket.AF_INET, proto, port, socket.inet_aton(addr).ljust(16, b"\0"))
    body = Policy(ptype, direction, 0, 0, 0, requests).encode(Dialect.LINUX.spec, 0)
    return parse_request(head + body, owner)


def transport_hosts() -> tuple[KeyEngine, KeyEngine]:
    """A and B with ESP transport SAs both ways and no policy at all (def_policy 1)."""
    ea, eb = make_engine(clients=ALONE), make_engine(clients=ALONE)
    for eng in (ea, eb):
        add_gcm(eng, 0x2001, A, B, mode=TRANSPORT)
        add_gcm(eng, 0x2002, B, A, mode=TRANSPORT)
    return ea, eb


ESP_TRANSPORT = (request(ESP, TRANSPORT, Level.REQUIRE),)


def test_linux_layout_requests_are_decoded_checked_and_shown() -> None:
    pol = sockpol(A, 5000, OUT_DIR, requests=ESP_TRANSPORT)
    assert pol.requests == ESP_TRANSPORT
    assert str(pol) == f"udp {A}[5000] out ipsec esp/transport//require"
    tun = sockpol(A, 5000, OUT_DIR, requests=(request(ESP, TUNNEL, Level.UNIQUE, 9, (A, B)),))
    assert tun.requests[0].src == SockAddr.parse(A) and tun.requests[0].reqid == 9
    for requests, code in (
        ((), errno.EINVAL),  # an ipsec policy without requests
        ((IpsecRequest(6, TRANSPORT, Level.REQUIRE),), errno.EPROTONOSUPPORT),
        ((IpsecRequest(ESP, TRANSPORT, 9),), errno.EINVAL),
        ((request(ESP, TUNNEL, Level.REQUIRE),), errno.EINVAL),  # a tunnel without endpoints
        (ESP_TRANSPORT * 7, errno.ELOOP),
    ):
        with pytest.raises(OSError) as info:
            sockpol(A, 5000, OUT_DIR, requests=requests)
        assert info.value.errno == code


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_an_ipsec_socket_policy_protects_its_sockets_packets_while_the_spd_lets_them_go_clear(mode: str) -> None:
    if mode == "transport":
        ea, eb = transport_hosts()
        src, dst, req, spi = A, B, request(ESP, TRANSPORT, Level.REQUIRE), 0x2001
    else:
        ea, eb = tunnel_pair()
        send(ea, ME, Message(MsgType.X_SPDFLUSH, 0, 0, PID, 0, 0, ()))  # no SPD policy: clear
        src, dst, req, spi = IA, IB, request(ESP, TUNNEL, Level.REQUIRE, endpoints=(A, B)), 0x1001
    dp, _ = plane(ea)
    dp.socket_policies.add(sockpol(src, 5000, OUT_DIR, requests=(req,)))
    dp._refresh()
    mine = udp(src, dst, 5000, 9)
    other = udp(src, dst, 5001, 9)
    assert dp.outbound(other, T0) == [other]  # the SPD alone: no policy, def_policy 1
    (wire,) = dp.outbound(mine, T0)
    assert wire[9] == 50 and int.from_bytes(wire[20:24], "big") == spi
    assert wire[12:20] == socket.inet_aton(A) + socket.inet_aton(B)
    assert dp.counters["policy.socket_ipsec"] == 1
    # The receiving plane, with no policy either, recovers it.
    pb, _ = plane(eb)
    assert pb.inbound(wire, T0) == mine
    # The socket closes: its packets are the SPD's again.
    assert dp.socket_policies.remove_owner(7) == 1
    dp._refresh()
    assert dp.outbound(mine, T0) == [mine]


def test_a_socket_policy_wins_over_the_spd_even_where_the_spd_discards() -> None:
    ea, _ = transport_hosts()
    send(ea, ME, spd_msg(src=A, dst=B, dir=OUT, ptype=PolicyType.DISCARD))
    dp, _ = plane(ea)
    dp.socket_policies.add(sockpol(A, 5000, OUT_DIR, requests=ESP_TRANSPORT))
    dp._refresh()
    assert dp.outbound(udp(A, B, 5001, 9), T0) == []
    assert dp.outbound(udp(A, B, 5000, 9), T0)[0][9] == 50


def test_a_missing_sa_sends_a_paced_acquire_naming_the_socket_and_holds_the_packet() -> None:
    eng = make_engine(clients=ALONE)
    eng.client_opened(KM, eng.clients[ME].dialect)
    send(eng, KM, Message(MsgType.REGISTER, SaType.ESP, 0, PID + 1, 0, 0, ()))
    dp, emitted = plane(eng)
    dp.socket_policies.add(sockpol(A, 5000, OUT_DIR, requests=ESP_TRANSPORT))
    dp._refresh()
    first, second = udp(A, B, 5000, 9, b"one"), udp(A, B, 5000, 9, b"two")
    assert dp.outbound(first, T0) == [] and dp.outbound(second, T0) == []
    acquires = [e for e in emitted if isinstance(e, Send) and e.msg.type == MsgType.ACQUIRE and KM in e.to]
    assert len(acquires) == 1  # the second packet found the ACQUIRE pending (blockacq)
    msg = acquires[0].msg
    assert msg.src is not None and msg.dst is not None
    src, dst = msg.src.addr, msg.dst.addr
    assert isinstance(src, SockAddr) and isinstance(dst, SockAddr)
    assert (str(src.ip), src.port, str(dst.ip), dst.port) == (A, 5000, B, 9)
    assert dp.counters["hold.queued"] == 2
    add_gcm(eng, 0x2001, A, B, mode=TRANSPORT, now=at(1))
    dp._refresh()
    sent = dp.release_held(at(1))
    assert [d[9] for d in sent] == [50, 50] and dp.counters["hold.sent"] == 2


def test_level_use_without_an_sa_goes_clear() -> None:
    eng = make_engine(clients=ALONE)
    dp, _ = plane(eng)
    dp.socket_policies.add(sockpol(A, 5000, OUT_DIR, requests=(request(ESP, TRANSPORT, Level.USE),)))
    dp._refresh()
    dg = udp(A, B, 5000, 9)
    assert dp.outbound(dg, T0) == [dg]


def test_the_inbound_check_applies_the_receiving_sockets_policy_before_the_spd() -> None:
    ea, eb = transport_hosts()
    pa, _ = plane(ea)
    pa.socket_policies.add(sockpol(A, 5000, OUT_DIR, requests=ESP_TRANSPORT))
    pa._refresh()
    (wire,) = pa.outbound(udp(A, B, 5000, 9), T0)
    pb, _ = plane(eb)
    # B's socket on port 9 wants AH: ESP alone does not satisfy it.
    pb.socket_policies.add(sockpol(B, 9, IN_DIR, requests=(request(AH, TRANSPORT, Level.REQUIRE),), owner=1))
    pb._refresh()
    assert pb.inbound(wire, T0) is None
    assert pb.counters["policy.in_reject"] == 1
    # Wanting ESP, it takes the packet, although the SPD requires AH for the flow.
    send(eb, ME, spd_msg(src=A, dst=B, dir=IN, requests=[request(AH, TRANSPORT)]))
    pb.socket_policies.add(sockpol(B, 9, IN_DIR, requests=ESP_TRANSPORT, owner=1))
    pb._refresh()
    (again,) = pa.outbound(udp(A, B, 5000, 9), T0)
    assert pb.inbound(again, T0) == udp(A, B, 5000, 9)
    # A bypass socket takes it too; a discard socket refuses it.
    for ptype, passes in ((PolicyType.BYPASS, True), (PolicyType.DISCARD, False)):
        pb.socket_policies.add(sockpol(B, 9, IN_DIR, ptype, owner=1))
        pb._refresh()
        (dg,) = pa.outbound(udp(A, B, 5000, 9), T0)
        assert (pb.inbound(dg, T0) is not None) is passes
    # Without the socket policy the SPD's AH requirement refuses it.
    pb.socket_policies.remove_owner(1)
    pb._refresh()
    (dg,) = pa.outbound(udp(A, B, 5000, 9), T0)
    assert pb.inbound(dg, T0) is None
