"""The data plane's decisions, without sockets: a real key engine behind the seam,
datagrams in, datagrams out (the I/O objects are not touched by these methods)."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Any

import pytest

from pfkeyd.dataplane.io import IoCounters
from pfkeyd.dataplane.plane import DataPlane, FlowKey, Verdict, parse_flow, routes_for
from pfkeyd.dataplane.seam import EngineSeam
from pfkeyd.dataplane.sockpol import HEAD, SocketPolicies, parse_request, sockpol_path
from pfkeyd.effects import Effect, Instant, Send
from pfkeyd.engine import KeyEngine
from pfkeyd.packet import bundle
from pfkeyd.packet.ip import inet_checksum
from pfkeyd.wire import (
    EncAlg,
    Extension,
    ExtType,
    Key,
    Lifetime,
    Message,
    MsgType,
    PolicyType,
    Sa,
    Sa2,
    SaState,
    SaType,
)
from tests.engine.conftest import PID, T0, at, make_engine
from tests.engine.spd_helpers import (
    AH,
    ALONE,
    IN,
    KM,
    ME,
    OUT,
    TRANSPORT,
    TUNNEL,
    address,
    request,
    send,
    spd_msg,
    tunnel,
)

A, B = "192.0.2.1", "192.0.2.2"
IA, IB = "10.1.0.1", "10.2.0.1"


def v4(src: str, dst: str, proto: int = 17, payload: bytes = b"", *, tos: int = 0, flags: int = 0) -> bytes:
    head = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            tos,
            20 + len(payload),
            7,
            flags,
            64,
            proto,
            0,
            socket.inet_aton(src),
            socket.inet_aton(dst),
        )
    )
    head[10:12] = inet_checksum(bytes(head)).to_bytes(2, "big")
    return bytes(head) + payload


def udp(src: str, dst: str, sport: int, dport: int, data: bytes = b"hello") -> bytes:
    return v4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


class _Tun:
    name = "ipsec0"

    def __init__(self) -> None:
        self.counters = IoCounters()


class Emitted(list[Effect]):
    def __call__(self, effects: list[Effect]) -> None:
        self.extend(effects)


def plane(eng: KeyEngine) -> tuple[DataPlane, Emitted]:
    out = Emitted()
    dp = DataPlane(EngineSeam(eng, out), tun=_Tun(), senders={})  # type: ignore[arg-type]  # a fake TUN
    dp._refresh()
    return dp, out


def add_gcm(
    eng: KeyEngine,
    spi: int,
    src: str,
    dst: str,
    *,
    mode: int = TUNNEL,
    satype: int = SaType.ESP,
    hard: Lifetime | None = None,
    soft: Lifetime | None = None,
    now: Instant = T0,
) -> None:
    if satype == SaType.AH:
        exts: list[Extension] = [
            Sa(spi, 8, 1, 5, 0, 0),
            Sa2(mode, 0, 0),
            address(ExtType.ADDRESS_SRC, src),
            address(ExtType.ADDRESS_DST, dst),
            Key(ExtType.KEY_AUTH, bytes(32)),
        ]
    else:
        exts = [
            Sa(spi, 8, 1, 0, EncAlg.X_AESGCM16, 0),
            Sa2(mode, 0, 0),
            address(ExtType.ADDRESS_SRC, src),
            address(ExtType.ADDRESS_DST, dst),
            Key(ExtType.KEY_ENCRYPT, bytes(range(20))),
        ]
    if hard is not None or soft is not None:
        exts += [hard or Lifetime(ExtType.LIFETIME_HARD), soft or Lifetime(ExtType.LIFETIME_SOFT)]
    effects = send(eng, ME, Message(MsgType.ADD, satype, 0, PID, 0, 0, tuple(exts)), now)
    assert not any(getattr(e, "errno", 0) for e in effects), effects


def tunnel_pair(mode: int = TUNNEL) -> tuple[KeyEngine, KeyEngine]:
    """Host A and host B: an ESP tunnel 10.1.0.0/24 <-> 10.2.0.0/24 over A <-> B."""
    ea, eb = make_engine(clients=ALONE), make_engine(clients=ALONE)
    for eng, (mine, theirs, me, peer) in ((ea, ("10.1.0.0", "10.2.0.0", A, B)), (eb, ("10.2.0.0", "10.1.0.0", B, A))):
        add_gcm(eng, 0x1001, A, B)
        add_gcm(eng, 0x1002, B, A)
        send(eng, ME, spd_msg(src=mine, dst=theirs, splen=24, dplen=24, dir=OUT, requests=[tunnel(me, peer)]))
        send(eng, ME, spd_msg(src=theirs, dst=mine, splen=24, dplen=24, dir=IN, requests=[tunnel(peer, me)]))
    return ea, eb


# ------------------------------------------------------------------ flows


def _flow(dg: bytes) -> FlowKey:
    key = parse_flow(dg)
    assert key is not None
    return key


def test_parse_flow_reads_addresses_protocol_ports_and_icmp_type() -> None:
    assert parse_flow(udp(IA, IB, 1234, 53)) == (socket.inet_aton(IA), socket.inet_aton(IB), 17, 1234, 53)
    icmp = v4(IA, IB, 1, bytes((8, 0, 0, 0)) + bytes(4))
    assert _flow(icmp)[2:] == (1, 8, 0)
    later_fragment = v4(IA, IB, 17, struct.pack("!HH", 1, 2) + bytes(4), flags=0x0010)
    assert _flow(later_fragment)[2:] == (17, 0, 0)
    six = (
        bytes.fromhex("60000000")
        + (8 + 8).to_bytes(2, "big")
        + bytes((0, 64))
        + bytes(15)
        + b"\x01"
        + bytes(15)
        + b"\x02"
        + bytes((17, 0))
        + bytes(6)
        + struct.pack("!HHHH", 500, 4500, 8, 0)
    )
    assert _flow(six)[2:] == (17, 500, 4500)  # behind a hop-by-hop header
    assert parse_flow(b"\x00" * 19) is None
    assert parse_flow(b"\x50" + bytes(30)) is None


# ------------------------------------------------------------ outbound


@pytest.mark.parametrize(("def_policy", "expect"), [(1, "clear"), (0, "dropped")])
def test_no_policy_follows_def_policy(def_policy: int, expect: str) -> None:
    dp, _ = plane(make_engine(clients=ALONE, def_policy=def_policy))
    dg = udp(A, B, 1, 2)
    out = dp.outbound(dg, T0)
    assert out == ([dg] if expect == "clear" else [])
    assert dp.counters["out.clear" if expect == "clear" else "out.discard.default"] == 1


def test_a_tunnel_round_trip_through_two_planes_and_the_fast_path() -> None:
    ea, eb = tunnel_pair()
    pa, _ = plane(ea)
    pb, _ = plane(eb)
    dg = udp(IA, IB, 1000, 2000, b"x" * 300)
    (wire,) = pa.outbound(dg, T0)
    assert wire[9] == 50 and wire[12:20] == socket.inet_aton(A) + socket.inet_aton(B)
    assert pa._out[_flow(dg)].fast
    assert pb.inbound(wire, T0) == dg
    assert pb.inbound(wire, T0) is None  # the same packet again: a replay
    assert eb.packet_counters["esp.replay"] == 1
    reply = udp(IB, IA, 2000, 1000, b"y" * 10)
    (back,) = pb.outbound(reply, T0)
    assert pa.inbound(back, T0) == reply
    stats = pa.statistics()
    assert {(s["spi"], s["packets"]) for s in stats["sas"]} == {(0x1001, 1), (0x1002, 1)}


def test_inbound_takes_the_one_step_tunnel_path_and_the_general_path_for_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    general: list[bytes] = []
    unprotect = bundle.unprotect

    def counted(dg: bytes, *args: Any) -> Any:
        general.append(dg)
        return unprotect(dg, *args)

    monkeypatch.setattr(bundle, "unprotect", counted)
    ea, eb = tunnel_pair()
    pa, _ = plane(ea)
    pb, _ = plane(eb)
    dg = udp(IA, IB, 1000, 2000, b"x" * 100)
    (wire,) = pa.outbound(dg, T0)
    assert pb.inbound(wire, T0) == dg
    assert pb.inbound(wire, T0) is None  # a replay, dropped there too
    assert eb.packet_counters["esp.replay"] == 1 and eb.packet_counters["esp.input"] == 1
    assert general == []
    # What it declines goes the general way: a clear datagram, ESP with ESP disabled.
    clear = udp(IA, IB, 1, 2)
    pb.inbound(clear, T0)
    (wire,) = pa.outbound(dg, T0)
    eb.knobs = eb.knobs.set("net.inet.esp.esp_enable", 0)
    pb, _ = plane(eb)
    assert pb.inbound(wire, T0) is None
    assert eb.packet_counters["esp.pdrops"] == 1
    assert general == [clear, wire]


def test_the_inbound_lookup_sees_an_sa_record_replaced_under_its_spi() -> None:
    ea, eb = tunnel_pair()
    pa, _ = plane(ea)
    pb, _ = plane(eb)
    dg = udp(IA, IB, 1, 2)
    (wire,) = pa.outbound(dg, T0)
    assert pb.inbound(wire, T0) == dg
    # The record changes in the SAD (here behind the plane's back, no new generation):
    # the lookup's facts about the old record must not answer for the new one.
    sa = eb.sad.by_spi[0x1001]
    eb.sad.by_spi[0x1001] = sa.evolve(state=SaState.DEAD)
    (wire,) = pa.outbound(dg, T0)
    assert pb.inbound(wire, T0) is None
    assert eb.packet_counters["esp.notdb"] == 1
    eb.sad.by_spi[0x1001] = sa.evolve()
    assert pb.inbound(wire, T0) == dg


def test_inbound_policy_check_refuses_what_the_policy_does_not_allow() -> None:
    ea, eb = tunnel_pair()
    pa, _ = plane(ea)
    # B wants AH as well for this flow: what arrives under ESP alone is rejected.
    send(
        eb,
        ME,
        spd_msg(
            MsgType.X_SPDUPDATE,
            src="10.1.0.0",
            dst="10.2.0.0",
            splen=24,
            dplen=24,
            dir=IN,
            requests=[tunnel(A, B), request(AH, TRANSPORT)],
        ),
    )
    pb, _ = plane(eb)
    (wire,) = pa.outbound(udp(IA, IB, 1, 2), T0)
    assert pb.inbound(wire, T0) is None
    assert pb.counters["policy.in_reject"] == 1
    # A flow outside every policy, under def_policy 0, is rejected too.
    ea2, eb2 = tunnel_pair()
    send(ea2, ME, spd_msg(src="10.1.0.0", dst="10.3.0.0", splen=24, dplen=24, dir=OUT, requests=[tunnel(A, B)]))
    eb2.knobs = eb2.knobs.set("net.inet.ipsec.def_policy", 0)
    pa2, _ = plane(ea2)
    pb2, _ = plane(eb2)
    (wire,) = pa2.outbound(udp(IA, "10.3.0.1", 1, 2), T0)
    assert pb2.inbound(wire, T0) is None
    assert pb2.counters["policy.in_reject"] == 1


def test_the_first_packet_is_held_until_the_sa_arrives_then_sent_in_order() -> None:
    eng = make_engine(clients=ALONE)
    eng.client_opened(KM, eng.clients[ME].dialect)
    send(eng, KM, Message(MsgType.REGISTER, SaType.ESP, 0, PID + 1, 0, 0, ()))
    send(eng, ME, spd_msg(src=A, dst=B, dir=OUT))
    dp, emitted = plane(eng)
    first, second = udp(A, B, 1, 2, b"first"), udp(A, B, 1, 2, b"second")
    assert dp.outbound(first, T0) == [] and dp.outbound(second, T0) == []
    assert [e.msg.type for e in emitted if isinstance(e, Send) and KM in e.to] == [MsgType.ACQUIRE]
    assert dp.release_held(at(1)) == []  # no SA yet: still held
    add_gcm(eng, 0x2001, A, B, mode=TRANSPORT, now=at(1))
    dp._refresh()
    # A packet of the flow that comes before the held ones are released queues behind them.
    third = udp(A, B, 1, 2, b"third")
    assert dp.outbound(third, at(1)) == []
    out = dp.release_held(at(1))
    assert len(out) == 3 and all(d[9] == 50 for d in out)
    assert [int.from_bytes(d[24:28], "big") for d in out] == [1, 2, 3]  # ESP sequence: in order
    assert dp.counters["hold.queued"] == 3 and dp.counters["hold.sent"] == 3 and not dp._held
    assert dp.outbound(udp(A, B, 1, 2, b"fourth"), at(1))[0][9] == 50  # then straight through


def test_held_packets_are_bounded_and_time_out() -> None:
    eng = make_engine(clients=ALONE)
    send(eng, ME, spd_msg(src=A, dst=B, dir=OUT))
    dp, _ = plane(eng)
    for i in range(dp.hold_packets + 2):
        assert dp.outbound(udp(A, B, 1, 2, bytes([i])), T0) == []
    assert dp.counters["hold.overflow"] == 2
    dp.expire_held(at(dp.hold_time - 0.1))
    assert dp._held
    dp.expire_held(at(dp.hold_time))
    assert not dp._held and dp.counters["hold.timeout"] == dp.hold_packets


def test_traffic_drives_byte_lifetimes_to_soft_and_hard_expiry() -> None:
    eng = make_engine(clients=ALONE)
    eng.client_opened(KM, eng.clients[ME].dialect)
    send(eng, KM, Message(MsgType.REGISTER, SaType.ESP, 0, PID + 1, 0, 0, ()))
    add_gcm(
        eng,
        0x3001,
        A,
        B,
        mode=TRANSPORT,
        hard=Lifetime(ExtType.LIFETIME_HARD, 0, 1000, 0, 0),
        soft=Lifetime(ExtType.LIFETIME_SOFT, 0, 300, 0, 0),
    )
    send(eng, ME, spd_msg(src=A, dst=B, dir=OUT))
    dp, emitted = plane(eng)
    kinds = []
    for i in range(12):
        dp._refresh()
        dp.outbound(udp(A, B, 1, 2, b"z" * 60), at(i))
        dp.report(at(i))
        kinds += [
            e.msg.get(ExtType.LIFETIME_HARD) is not None
            for e in emitted
            if isinstance(e, Send) and e.msg.type == MsgType.EXPIRE and KM in e.to
        ]
        emitted.clear()
    assert kinds == [False, True]  # soft, then hard
    assert eng.sad.get(0x3001) is None
    assert eng.packet_counters["esp.output"] == 9  # 9 packets of 112 bytes reach the 1000-byte limit


def test_a_socket_bypass_policy_wins_over_a_require_policy() -> None:
    ea, _ = tunnel_pair()
    dp, _ = plane(ea)
    head = HEAD.pack(1, socket.AF_INET, 17, 500, socket.inet_aton(IA).ljust(16, b"\0"))
    dp.socket_policies.add(parse_request(head + struct.pack("=HHHBBII", 2, 18, PolicyType.BYPASS, 2, 0, 0, 0), 7))
    ike = udp(IA, IB, 500, 500)
    assert dp.outbound(ike, T0) == [ike]
    assert dp.counters["policy.socket_bypass"] == 1
    (other,) = dp.outbound(udp(IA, IB, 501, 500), T0)
    assert other[9] == 50
    assert dp.socket_policies.remove_owner(7) == 1
    assert dp.outbound(ike, T0)[0][9] == 50


def test_socket_policy_requests_are_checked() -> None:
    good = HEAD.pack(1, socket.AF_INET, 17, 500, bytes(16)) + struct.pack("=HHHBBII", 2, 18, 4, 1, 0, 0, 0)
    assert parse_request(good, 1).type == PolicyType.BYPASS
    for bad, code in (
        (good[:30], errno.EINVAL),
        (b"\x02" + good[1:], errno.EINVAL),
        (good[:1] + b"\x07" + good[2:], errno.EAFNOSUPPORT),
        (good[:24] + b"\x03" + good[25:], errno.EINVAL),  # length 24 bytes, 16 given
        (good[:30] + b"\x03" + good[31:], errno.EINVAL),
    ):  # direction 3
        with pytest.raises(OSError) as info:
            parse_request(bad, 1)
        assert info.value.errno == code
    pols = SocketPolicies()
    pols.add(parse_request(good, 1))
    assert len(pols) == 1 and pols.describe() == ["udp 0.0.0.0[500] in bypass"]
    assert sockpol_path("/run/pfkeyd.sock") == "/run/pfkeyd.sockpol"


def test_routes_follow_the_outbound_policies() -> None:
    ea, _ = tunnel_pair()
    send(ea, ME, spd_msg(src=A, dst=B, dir=OUT))
    routes = routes_for(
        EngineSeam(ea, lambda e: None).outbound_policies(), [ipaddress.ip_address(IA), ipaddress.ip_address(A)]
    )
    assert {(str(r.network), str(r.src)) for r in routes} == {("10.2.0.0/24", IA), (f"{B}/32", A)}


def test_verdicts_are_cached_until_the_engine_changes() -> None:
    ea, _ = tunnel_pair()
    dp, _ = plane(ea)
    dp.outbound(udp(IA, IB, 1, 2), T0)
    assert len(dp._out) == 1 and isinstance(next(iter(dp._out.values())), Verdict)
    send(ea, ME, Message(MsgType.X_SPDFLUSH, 0, 0, PID, 0, 0, ()))
    assert dp._refresh() and not dp._out
    assert dp.outbound(udp(IA, IB, 1, 2), T0) == [udp(IA, IB, 1, 2)]  # no policy: def_policy 1


def test_esp_enable_0_drops_protected_traffic_both_ways_as_pdrops() -> None:
    ea, eb = tunnel_pair()
    pa, _ = plane(ea)
    pb, _ = plane(eb)
    (wire,) = pa.outbound(udp(IA, IB, 1, 2), T0)
    for eng in (ea, eb):
        eng.knobs = eng.knobs.set("net.inet.esp.esp_enable", 0)
    pa._refresh()
    pb._refresh()
    assert pa.outbound(udp(IA, IB, 1, 2), T0) == []
    assert pb.inbound(wire, T0) is None
    assert ea.packet_counters["esp.pdrops"] == 1 and eb.packet_counters["esp.pdrops"] == 1


@pytest.mark.parametrize(("deflev", "sent_clear"), [(1, True), (2, False)])
def test_level_default_follows_esp_trans_deflev(deflev: int, sent_clear: bool) -> None:
    from pfkeyd.wire import Level

    eng = make_engine(clients=ALONE, esp_trans_deflev=deflev)
    send(eng, ME, spd_msg(src=A, dst=B, dir=OUT, requests=[request(level=Level.DEFAULT)]))
    dp, _ = plane(eng)
    dg = udp(A, B, 1, 2)
    out = dp.outbound(dg, T0)  # no SA: use sends in the clear, require holds the packet
    assert out == ([dg] if sent_clear else [])
    assert dp.counters["hold.queued"] == (0 if sent_clear else 1)
