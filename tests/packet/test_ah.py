"""AH (RFC 4302) as FreeBSD does it: header sizes, the massage of mutable fields, the inbound order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import HBHOptUnknown, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.packet import Raw

from pfkeyd.packet import ah, ip
from pfkeyd.packet.counters import Drop
from pfkeyd.wire.constants import AuthAlg, SaFlag
from tests.packet.ipkit import ah_sa, esn_flag, runtime, sent, udp4, udp6


@pytest.mark.parametrize(("icv", "v4", "v6"), [(12, 24, 24), (16, 28, 32), (24, 36, 40), (32, 44, 48)])
def test_header_size_aligns_to_4_over_ipv4_and_8_over_ipv6(icv: int, v4: int, v6: int) -> None:
    assert ah.header_size(icv, 4) == v4
    assert ah.header_size(icv, 6) == v6


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("auth", [AuthAlg.SHA1HMAC, AuthAlg.X_SHA2_384, AuthAlg.X_AES_XCBC_MAC])
def test_round_trip_and_header_layout(auth: int, v6: bool) -> None:
    sa = ah_sa(auth, v6=v6)
    out_state, in_state = runtime(sa), runtime(sa)
    dg = udp6() if v6 else udp4()
    prot = ah.protect(sa, out_state, dg)
    assert isinstance(prot, bytes)
    size = ah.header_size(sa.mac.icv if sa.mac else 0, 6 if v6 else 4)
    assert len(prot) == len(dg) + size
    hl = 40 if v6 else 20
    assert prot[hl] == 17 and prot[hl + 1] == (size - 8) // 4
    assert int.from_bytes(prot[hl + 4 : hl + 8], "big") == sa.spi and int.from_bytes(prot[hl + 8 : hl + 12], "big") == 1
    assert ah.unprotect(sa, in_state, prot) == dg
    assert in_state.replay is not None and in_state.replay.count == 1


def test_mutable_ipv4_fields_do_not_count_but_tos_does_with_cleartos_off() -> None:
    sa = ah_sa(AuthAlg.SHA1HMAC)
    prot = ah.protect(sa, runtime(sa), udp4(tos=0x10))
    assert isinstance(prot, bytes)
    changed = bytearray(prot)
    changed[1] = 0xB8  # TOS
    changed[8] = 3  # TTL
    changed[6] = 0  # DF cleared
    changed[10:12] = ip.ipv4_checksum(bytes(changed[:20])).to_bytes(2, "big")
    assert isinstance(ah.unprotect(sa, runtime(sa), bytes(changed)), bytes)
    strict = ah_sa(AuthAlg.SHA1HMAC, cleartos=False)
    prot2 = ah.protect(strict, runtime(strict), udp4(tos=0x10))
    assert isinstance(prot2, bytes)
    tos_changed = bytearray(prot2)
    tos_changed[1] = 0x14
    assert ah.unprotect(strict, runtime(strict), bytes(tos_changed)) == Drop("ah", "badauth")
    assert isinstance(ah.unprotect(strict, runtime(strict), prot2), bytes)


def test_offsetmask_keeps_masked_ip_off_bits_in_the_icv() -> None:
    sa = ah_sa(AuthAlg.SHA1HMAC, offsetmask=0x4000)  # DF counts
    prot = ah.protect(sa, runtime(sa), udp4())
    assert isinstance(prot, bytes)
    no_df = bytearray(prot)
    no_df[6] &= ~0x40
    assert ah.unprotect(sa, runtime(sa), bytes(no_df)) == Drop("ah", "badauth")


def test_ipv4_options_mutable_zeroed_immutable_kept() -> None:
    sa = ah_sa(AuthAlg.X_SHA2_256)
    # router alert (0x94, kept) then a timestamp option (0x44, zeroed whole)
    opts = b"\x94\x04\x00\x00" + b"\x44\x08\x05\x00" + b"\x00\x00\x00\x00"
    dg = bytes(IP(src="192.0.2.1", dst="192.0.2.2", options=opts) / UDP() / Raw(b"q" * 30))
    prot = ah.protect(sa, runtime(sa), dg)
    assert isinstance(prot, bytes)
    ts_changed = bytearray(prot)
    ts_changed[29] = 0x99  # timestamp data changes in transit
    assert isinstance(ah.unprotect(sa, runtime(sa), bytes(ts_changed)), bytes)
    ra_changed = bytearray(prot)
    ra_changed[22] = 1  # router alert value is immutable
    assert ah.unprotect(sa, runtime(sa), bytes(ra_changed)) == Drop("ah", "badauth")


def test_lsrr_destination_is_the_final_hop_in_the_output_icv() -> None:
    route = b"\x83\x07\x04" + bytes([198, 51, 100, 9]) + b"\x00"  # LSRR to 198.51.100.9, then EOL
    mass = ah.massage_ipv4(
        bytes(IP(src="192.0.2.1", dst="192.0.2.2", options=route))[:28], cleartos=True, offsetmask=0, out=True
    )
    assert mass is not None
    assert mass[16:20] == bytes([198, 51, 100, 9]) and mass[20:27] == bytes(7)
    assert ah.massage_ipv4(b"\x47" + bytes(19) + b"\x44\x01\x00\x00", cleartos=True, offsetmask=0, out=False) is None


def test_ipv6_mutable_option_zeroed_whole_routing_header_included() -> None:
    sa = ah_sa(AuthAlg.SHA1HMAC, v6=True)
    dg = bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=0x3E, optdata=b"\x01\x02\x03\x04")])
        / IPv6ExtHdrRouting(addresses=["2001:db8::9"], segleft=0)
        / UDP()
        / Raw(b"r" * 30)
    )
    prot = ah.protect(sa, runtime(sa), dg)
    assert isinstance(prot, bytes)
    assert prot[40] == 43 and prot[48] == 51  # HBH -> routing header -> AH
    mutable = bytearray(prot)
    mutable[44] = 0x77  # inside the 0x3e option (bit 0x20: may change)
    assert isinstance(ah.unprotect(sa, runtime(sa), bytes(mutable)), bytes)
    routing = bytearray(prot)
    routing[40 + 8 + 8] ^= 1  # an address of the routing header
    assert ah.unprotect(sa, runtime(sa), bytes(routing)) == Drop("ah", "badauth")


def test_ipv6_header_fields_and_link_local_scope() -> None:
    head = bytes(IPv6(src="fe80::1", dst="ff02::1", tc=0xB8, fl=0x12345, hlim=9))
    bad_scope = bytearray(head)
    bad_scope[10:12] = b"\x00\x05"  # a KAME-style embedded scope id
    m = ah.massage_ipv6(bytes(bad_scope))
    assert m is not None
    assert m[:4] == b"\x60\0\0\0" and m[7] == 0
    assert m[8:24] == head[8:24] and m[24:40] == head[24:40]  # the embedded scope cleared again
    assert ah.massage_ipv6(bytes(IPv6(nh=44)) + bytes(8)) is None  # a fragment header may not precede AH


def test_inbound_order_replay_before_icv_window_updated_after() -> None:
    sa = ah_sa(AuthAlg.SHA1HMAC, window=32)
    out, inn = runtime(sa), runtime(sa)
    first = ah.protect(sa, out, udp4())
    second = ah.protect(sa, out, udp4())
    assert isinstance(first, bytes) and isinstance(second, bytes)
    forged = bytearray(second)
    forged[-1] ^= 1
    before = inn.snapshot()
    assert ah.unprotect(sa, inn, bytes(forged)) == Drop("ah", "badauth")
    assert inn.snapshot() == before  # the window did not move on a bad ICV
    assert isinstance(ah.unprotect(sa, inn, second), bytes)
    assert ah.unprotect(sa, inn, second) == Drop("ah", "replay")
    assert isinstance(ah.unprotect(sa, inn, first), bytes)  # older but inside the window


def test_bad_ah_length_is_badauthl_before_the_icv() -> None:
    sa = ah_sa(AuthAlg.SHA1HMAC)
    prot = bytearray(sent(ah.protect(sa, runtime(sa), udp4())))
    prot[21] += 1
    assert ah.unprotect(sa, runtime(sa), bytes(prot)) == Drop("ah", "badauthl")


def test_sequence_wrap_is_refused_unless_cycseq() -> None:
    sa = ah_sa(AuthAlg.SHA1HMAC)
    state = runtime(sa)
    state.seq = 0xFFFFFFFF
    assert ah.protect(sa, state, udp4()) == Drop("ah", "wrap")
    assert state.seq == 0xFFFFFFFF
    cyc = ah_sa(AuthAlg.SHA1HMAC, flags=int(SaFlag.X_EXT_CYCSEQ))
    st2 = runtime(cyc)
    st2.seq = 0xFFFFFFFF
    assert isinstance(ah.protect(cyc, st2, udp4()), bytes)
    esn = ah_sa(AuthAlg.SHA1HMAC, flags=esn_flag())
    st3 = runtime(esn)
    st3.seq = 0xFFFFFFFF
    assert isinstance(ah.protect(esn, st3, udp4()), bytes)  # ESN: 64 bits, no wrap yet
    st3.seq = 2**64 - 1
    assert ah.protect(esn, st3, udp4()) == Drop("ah", "wrap")


def test_esn_high_bits_enter_the_icv_only() -> None:
    sa = ah_sa(AuthAlg.X_SHA2_256, flags=esn_flag())
    out = runtime(sa)
    out.seq = (7 << 32) | 41
    prot = ah.protect(sa, out, udp4())
    assert isinstance(prot, bytes)
    assert int.from_bytes(prot[28:32], "big") == 42  # only the low half on the wire
    inn = runtime(sa)
    assert inn.replay is not None
    inn.replay.last = (7 << 32) | 40
    assert isinstance(ah.unprotect(sa, inn, prot), bytes)
    wrong_hi = runtime(sa)
    assert wrong_hi.replay is not None
    wrong_hi.replay.last = (6 << 32) | 40
    # Seq_hi inferred as 6: the ICV fails (badauth), not the replay check.
    assert ah.unprotect(sa, wrong_hi, prot) == Drop("ah", "badauth")


def test_old_framing_and_missing_mac_are_noxform() -> None:
    sa = ah_sa(AuthAlg.SHA1HMAC, flags=1)
    assert ah.protect(sa, runtime(sa), udp4()) == Drop("ah", "noxform")


@settings(max_examples=200)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    sa = ah_sa(AuthAlg.SHA1HMAC)
    state = runtime(sa)
    before = state.snapshot()
    result = ah.unprotect(sa, state, data)
    assert isinstance(result, Drop)
    assert state.snapshot() == before
    out = ah.protect(sa, runtime(sa), data)
    assert isinstance(out, (bytes, Drop))


def test_destination_options_before_ah_are_walked_inbound() -> None:
    sa = ah_sa(AuthAlg.SHA1HMAC, v6=True)
    dg = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() / UDP() / Raw(b"d" * 30))
    prot = ah.protect(sa, runtime(sa), dg)
    assert isinstance(prot, bytes)
    # outbound, a final destination options header goes behind AH
    assert prot[6] == 51 and prot[40] == ip.IPPROTO_DSTOPTS
    assert ah.unprotect(sa, runtime(sa), prot) == dg
