"""Bundles: FreeBSD's order, encapsulation, the enable knobs, IPComp's plain IP-in-IP, counting."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from pfkeyd.packet import bundle, crypto, ip
from pfkeyd.packet.bundle import Accepted, Bound, Peek
from pfkeyd.packet.counters import Counters, Drop
from pfkeyd.packet.ip import PacketKnobs
from pfkeyd.packet.runtime import SaRuntime
from pfkeyd.packet.sa import TransformSA
from pfkeyd.wire.constants import AuthAlg, EncAlg, Mode
from tests.packet.ipkit import AH, ESP, IPCOMP, OUTER4, OUTER6, inner4, inner6, key, sent, udp4


def esp_bound(spi: int = 0x100, *, tunnel: bool = False, ends: tuple[bytes, bytes] = OUTER4) -> Bound:
    sa = TransformSA(
        ESP,
        spi,
        Mode.TUNNEL if tunnel else Mode.TRANSPORT,
        ends[0],
        ends[1],
        window=32,
        enc_id=EncAlg.X_AESGCM16,
        cipher=crypto.cipher(EncAlg.X_AESGCM16, key(20)),
    )
    return Bound(sa, SaRuntime.for_sa(32))


def ah_bound(spi: int = 0x200, *, tunnel: bool = False, ends: tuple[bytes, bytes] = OUTER4) -> Bound:
    sa = TransformSA(
        AH,
        spi,
        Mode.TUNNEL if tunnel else Mode.TRANSPORT,
        ends[0],
        ends[1],
        window=32,
        auth_id=AuthAlg.X_SHA2_256,
        mac=crypto.mac(AuthAlg.X_SHA2_256, key(32)),
    )
    return Bound(sa, SaRuntime.for_sa(32))


def comp_bound(spi: int = 0x300, *, tunnel: bool = False, ends: tuple[bytes, bytes] = OUTER4) -> Bound:
    sa = TransformSA(IPCOMP, spi, Mode.TUNNEL if tunnel else Mode.TRANSPORT, ends[0], ends[1], enc_id=2)
    return Bound(sa, SaRuntime.for_sa(0))


def twin(b: Bound) -> Bound:
    """The receiving side's copy of an SA (fresh state)."""
    return Bound(b.sa, SaRuntime.for_sa(b.sa.window, esn=b.sa.esn, cycseq=b.sa.cycseq))


def table(*bounds: Bound) -> bundle.Lookup:
    """A SAD lookup by (protocol, SPI, destination); plain IP-in-IP finds an IPComp tunnel SA by its ends."""

    def find(k: Peek) -> Bound | None:
        for b in bounds:
            if k.proto in (4, 41):
                if b.sa.proto == IPCOMP and (b.sa.src, b.sa.dst) == (k.src, k.dst):
                    return b
            elif (b.sa.proto, b.sa.spi, b.sa.dst) == (k.proto, k.spi, k.dst):
                return b
        return None

    return find


def test_ipcomp_esp_ah_bundle_is_applied_innermost_first_and_undone() -> None:
    comp, esp, ah = comp_bound(tunnel=True), esp_bound(), ah_bound()
    dg = inner4(b"compressible " * 30)
    counters = Counters()
    wire = bundle.protect([comp, esp, ah], dg, PacketKnobs(), counters)
    assert isinstance(wire, bytes)
    # outer IP | AH | ESP | (encrypted: IPComp | inner)
    assert wire[9] == 51 and wire[20] == 50
    assert (counters["ipcomp.output"], counters["esp.output"], counters["ah.output"]) == (1, 1, 1)
    rx = Counters()
    got = bundle.unprotect(wire, table(twin(comp), twin(esp), twin(ah)), PacketKnobs(), rx)
    assert isinstance(got, Accepted)
    assert got.datagram == dg
    assert [b.sa.proto for b in got.applied] == [AH, ESP, IPCOMP]
    assert (rx["ah.input"], rx["esp.input"], rx["ipcomp.input"]) == (1, 1, 1)


def test_small_packets_of_an_ipcomp_tunnel_sa_travel_as_plain_ip_in_ip() -> None:
    comp = comp_bound(tunnel=True)
    dg = inner4(b"")  # 28 bytes + outer 20: under the 90-byte threshold
    counters = Counters()
    wire = bundle.protect([comp], dg, PacketKnobs(), counters)
    assert isinstance(wire, bytes) and wire[9] == 4 and counters["ipcomp.threshold"] == 1
    got = bundle.unprotect(wire, table(comp), PacketKnobs(), Counters())
    assert isinstance(got, Accepted) and got.datagram == dg and got.applied == (comp,)
    # ... but not from other ends, and not for a transport-mode IPComp SA
    other = bundle.unprotect(
        wire, table(comp_bound(ends=(OUTER4[1], OUTER4[0]), tunnel=True)), PacketKnobs(), Counters()
    )
    assert isinstance(other, Accepted) and other.applied == () and other.datagram == wire
    transport = bundle.unprotect(wire, table(comp_bound()), PacketKnobs(), Counters())
    assert isinstance(transport, Accepted) and transport.applied == ()


@pytest.mark.parametrize(
    ("knob", "make", "name"),
    [("esp_enable", esp_bound, "esp"), ("ah_enable", ah_bound, "ah"), ("ipcomp_enable", comp_bound, "ipcomp")],
)
def test_a_disabled_protocol_drops_and_counts(knob: str, make: Callable[[], Bound], name: str) -> None:
    b = make()
    off = PacketKnobs(**{knob: 0})
    counters = Counters()
    dg = udp4(b"x" * 200)
    assert bundle.protect([b], dg, off, counters) == Drop(name, "pdrops")
    assert counters[f"{name}.pdrops"] == 1
    wire = bundle.protect([b], dg, PacketKnobs(), Counters())
    assert isinstance(wire, bytes)
    before = b.state.snapshot()
    assert bundle.unprotect(wire, table(b), off, counters) == Drop(name, "pdrops")
    assert counters[f"{name}.pdrops"] == 2 and b.state.snapshot() == before


def test_unknown_spi_is_notdb() -> None:
    esp = esp_bound()
    wire = bundle.protect([esp], udp4(), PacketKnobs(), Counters())
    assert isinstance(wire, bytes)
    counters = Counters()
    assert bundle.unprotect(wire, table(esp_bound(spi=0x999)), PacketKnobs(), counters) == Drop("esp", "notdb")
    assert counters["esp.notdb"] == 1


def test_transport_sa_with_another_destination_encapsulates_like_freebsd() -> None:
    # ipsec_encap also runs when the SA's destination is neither ANY nor the packet's
    proxy = esp_bound(ends=(bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2])))
    wire = bundle.protect([proxy], udp4(), PacketKnobs(), Counters())
    assert isinstance(wire, bytes)
    assert IP(wire).dst == "198.51.100.2" and IP(wire).proto == 50
    family = esp_bound(ends=OUTER6)
    wire6 = bundle.protect([family], udp4(), PacketKnobs(), Counters())
    assert isinstance(wire6, bytes) and IPv6(wire6).nh == 50


def test_tunnel_outer_header_uses_knobs_and_injected_random_id() -> None:
    esp = esp_bound(tunnel=True)
    dg = bytes(IP(src="10.1.0.1", dst="10.2.0.1", tos=0xB9, flags="DF") / (b"payload" * 3))
    wire = bundle.protect([esp], dg, PacketKnobs(dfbit=2, ecn=1), Counters(), random=lambda n: b"\xab" * n)
    assert isinstance(wire, bytes)
    outer = IP(wire)
    assert (outer.id, outer.ttl, outer.tos, bool(outer.flags.DF)) == (0xABAB, 64, 0xB9, True)


def test_tunnel_decapsulation_ecn_drop_is_counted() -> None:
    esp = esp_bound(tunnel=True)
    dg = bytes(IP(src="10.1.0.1", dst="10.2.0.1", tos=0) / b"payload")  # Not-ECT inside
    wire = bytearray(sent(bundle.protect([esp], dg, PacketKnobs(ecn=1), Counters())))
    wire[1] |= 3  # CE on the outer header (routers may do that; it is not covered by ESP)
    wire[10:12] = ip.ipv4_checksum(bytes(wire[:20])).to_bytes(2, "big")
    counters = Counters()
    got = bundle.unprotect(bytes(wire), table(twin(esp)), PacketKnobs(ecn=1), counters)
    assert got == Drop("esp", "ecn") and counters["esp.ecn"] == 1


def test_usage_is_recorded_per_sa() -> None:
    esp = esp_bound()
    dg = udp4()
    w1 = bundle.protect([esp], dg, PacketKnobs(), Counters())
    w2 = bundle.protect([esp], dg, PacketKnobs(), Counters())
    assert isinstance(w1, bytes) and isinstance(w2, bytes)
    assert (esp.state.packets, esp.state.bytes) == (2, len(w1) + len(w2))
    rx = twin(esp)
    bundle.unprotect(w1, table(rx), PacketKnobs(), Counters())
    assert (rx.state.packets, rx.state.bytes) == (1, len(dg))


def test_not_ipsec_comes_back_unchanged_and_peek_reads_each_protocol() -> None:
    dg = udp4()
    got = bundle.unprotect(dg, table(), PacketKnobs(), Counters())
    assert got == Accepted(dg, ())
    for b in (esp_bound(0x11223344), ah_bound(0x55667788), comp_bound(0xABCD)):
        wire = bundle.protect([b], udp4(b"q" * 300), PacketKnobs(), Counters())
        assert isinstance(wire, bytes)
        assert bundle.peek(wire) == Peek(
            b.sa.proto, b.sa.spi & (0xFFFF if b.sa.proto == IPCOMP else 0xFFFFFFFF), OUTER4[0], OUTER4[1]
        )
    assert bundle.peek(b"\x45" + bytes(5)) is None


def test_nested_tunnels_are_bounded() -> None:
    sas = [esp_bound(0x1000 + i, tunnel=True) for i in range(bundle.MAX_DEPTH + 1)]
    wire = bundle.protect(sas, inner6(), PacketKnobs(), Counters())
    assert isinstance(wire, bytes)
    counters = Counters()
    got = bundle.unprotect(wire, table(*[twin(b) for b in sas]), PacketKnobs(), counters)
    assert got == Drop("esp", "hdrops")
    ok = bundle.unprotect(
        sent(bundle.protect(sas[:3], inner6(), PacketKnobs(), Counters())),
        table(*[twin(b) for b in sas]),
        PacketKnobs(),
        Counters(),
    )
    assert isinstance(ok, Accepted) and ok.datagram == inner6()


def test_tunnel_sa_with_a_malformed_inner_datagram_is_badinner() -> None:
    from dataclasses import replace

    sender = esp_bound()  # transport: we build the "IP-in-IP" ourselves, with junk inside
    junk = ip.join(udp4(), ip.split(udp4()) or ip.Split(4, 20, 17, 9, b"", b""), 4, b"\x45" + bytes(30))
    wire = bundle.protect([sender], junk, PacketKnobs(), Counters())
    assert isinstance(wire, bytes)
    rx = Bound(replace(sender.sa, mode=Mode.TUNNEL), SaRuntime.for_sa(32))
    counters = Counters()
    assert bundle.unprotect(wire, table(rx), PacketKnobs(), counters) == Drop("esp", "badinner")
    assert counters["esp.badinner"] == 1


def test_keepalives_and_ike_on_the_natt_port_are_counted_not_esp() -> None:
    from pfkeyd.packet import natt

    counters = Counters()
    ka = natt.keepalive(4500, 4500, OUTER4[0], OUTER4[1])
    assert bundle.unprotect_udp(ka, table(), PacketKnobs(), counters) == Drop("natt", "keepalive")
    ike = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=4500, dport=4500) / (b"\0\0\0\0" + b"ike" * 10))
    assert bundle.unprotect_udp(ike, table(), PacketKnobs(), counters) == Drop("natt", "ike")
    assert (counters["natt.keepalive"], counters["natt.ike"]) == (1, 1)


@pytest.mark.parametrize("make", [esp_bound, ah_bound], ids=["esp", "ah"])
def test_esn_across_the_32_bit_boundary_with_reordering(make: Callable[[], Bound]) -> None:
    from dataclasses import replace

    from pfkeyd.wire.constants import SaFlag

    b = make()
    sa = replace(b.sa, flags=int(SaFlag.X_ESN))
    tx = Bound(sa, SaRuntime.for_sa(32, esn=True))
    rx = Bound(sa, SaRuntime.for_sa(32, esn=True))
    start = (1 << 32) - 4
    tx.state.seq = start
    assert rx.state.replay is not None
    rx.state.replay.last = start  # the receiver saw everything up to here
    rx.state.replay.bits = 1
    wires = [sent(bundle.protect([tx], udp4(), PacketKnobs(), Counters())) for _ in range(8)]
    for i in (1, 0, 3, 2, 7, 4, 6, 5):  # out of order across 2^32, inside the window
        got = bundle.unprotect(wires[i], table(rx), PacketKnobs(), Counters())
        assert isinstance(got, Accepted), (i, got)
    assert rx.state.replay.last == start + 8
    name = "esp" if sa.proto == ESP else "ah"
    assert bundle.unprotect(wires[2], table(rx), PacketKnobs(), Counters()) == Drop(name, "replay")
