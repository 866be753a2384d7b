"""ESP behaviour: FreeBSD's rules for padding, IVs, sequence numbers, flags and the order of
the input checks; properties over random SAs and datagrams."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfkeyd.packet import esp
from pfkeyd.packet.counters import Drop
from pfkeyd.packet.runtime import U32, U64, SaRuntime
from pfkeyd.packet.sa import TransformSA
from pfkeyd.wire.constants import AuthAlg, EncAlg, SaFlag
from tests.packet.esp_helpers import FixedRandom, esp_sa, on_path, runtime, v4, v6

CBC = (EncAlg.X_AESCBC, b"c" * 16)
GCM = (EncAlg.X_AESGCM16, b"g" * 20)
SHA = (AuthAlg.X_SHA2_256, b"s" * 32)


def drop(reason: str) -> Drop:
    return Drop("esp", reason)


def protected(sa: TransformSA, payload: bytes = b"x" * 21, proto: int = 17, tx: SaRuntime | None = None) -> bytes:
    out = esp.protect(sa, tx if tx is not None else runtime(sa), v4(proto, payload))
    assert isinstance(out, bytes)
    return out


# ------------------------------------------------------------------ output


@pytest.mark.parametrize(
    ("enc", "key", "blks"),
    [
        (EncAlg.X_AESCBC, b"c" * 16, 16),
        (EncAlg.DES3CBC, b"d" * 24, 8),
        (EncAlg.X_BLOWFISHCBC, b"b" * 16, 8),
        (EncAlg.X_CAST128CBC, b"k" * 16, 8),
        (EncAlg.X_CAMELLIACBC, b"m" * 16, 16),
        (EncAlg.DESCBC, b"e" * 8, 8),
        (EncAlg.NULL, b"", 4),
        (EncAlg.X_AESGCM16, b"g" * 20, 4),
        (EncAlg.X_CHACHA20POLY1305, b"h" * 36, 4),
    ],
)
@pytest.mark.parametrize("n", [0, 1, 2, 13, 14, 15, 16, 17])
def test_padding_follows_freebsd_rule_with_bytes_1_2_3(enc: int, key: bytes, blks: int, n: int) -> None:
    sa = esp_sa(enc, key)
    npad = (blks - (n + 2) % blks) % blks
    assert esp.pad_length(sa, n) == npad
    payload = bytes(range(200, 200 + n))
    out = esp.unprotect(sa, runtime(sa), protected(sa, payload))
    assert out == v4(17, payload)
    if enc == EncAlg.NULL:  # the trailer is visible: 1, 2, 3, ..., Pad Length, Next Header
        assert protected(sa, payload)[28 + n :] == bytes(range(1, npad + 1)) + bytes((npad, 17))


def test_ctr_compatibility_pads_ctr_to_16_and_0_to_4() -> None:
    on = esp_sa(EncAlg.X_AESCTR, b"t" * 20, *SHA, ctr_compatibility=True)
    off = esp_sa(EncAlg.X_AESCTR, b"t" * 20, *SHA, ctr_compatibility=False)
    assert esp.pad_length(on, 21) == 9 and esp.pad_length(off, 21) == 1
    # Either form is accepted by either receiver (CTR's input block is 1).
    assert esp.unprotect(off, runtime(off), protected(on)) == v4(17, b"x" * 21)
    assert esp.unprotect(on, runtime(on), protected(off)) == v4(17, b"x" * 21)


@pytest.mark.parametrize(
    ("flag", "pad"), [(0, b"\x01\x02\x03"), (SaFlag.X_EXT_PRAND, b"RND"), (SaFlag.X_EXT_PZERO, bytes(3))]
)
def test_pad_contents_follow_pseq_prand_and_pzero(flag: int, pad: bytes) -> None:
    sa = esp_sa(EncAlg.NULL, b"", *SHA, flags=flag)
    source = FixedRandom(b"RND")
    out = esp.protect(sa, runtime(sa), v4(17, b"y" * 3), random=source)
    assert isinstance(out, bytes)
    # IPv4 20, SPI and Seq 8, payload 3, pad 3, Pad Length, Next Header, ICV 16
    assert out[31:-16] == pad + bytes((3, 17))
    assert source.asked == ([3] if flag == SaFlag.X_EXT_PRAND else [])


def test_pzero_with_padding_fails_the_last_byte_check_as_on_freebsd() -> None:
    sa = esp_sa(EncAlg.X_AESCBC, b"c" * 16, *SHA, flags=SaFlag.X_EXT_PZERO)
    tx, rx = runtime(sa), runtime(sa)
    assert esp.unprotect(sa, rx, protected(sa, b"z" * 21, tx=tx)) == drop("badpad")
    # Without padding (pad length 0) there is nothing to check.
    assert esp.unprotect(sa, rx, protected(sa, b"z" * 14, tx=tx)) == v4(17, b"z" * 14)


def test_prand_receiver_skips_the_pad_check() -> None:
    sa = esp_sa(EncAlg.X_AESCBC, b"c" * 16, *SHA, flags=SaFlag.X_EXT_PRAND)
    assert esp.unprotect(sa, runtime(sa), protected(sa)) == v4(17, b"x" * 21)


def test_cbc_iv_is_random_per_packet_and_counter_ivs_count_from_zero() -> None:
    cbc = esp_sa(*CBC, *SHA)
    source = FixedRandom(b"A" * 16, b"B" * 16)
    tx = runtime(cbc)
    first = esp.protect(cbc, tx, v4(17, b"p"), random=source)
    second = esp.protect(cbc, tx, v4(17, b"p"), random=source)
    assert isinstance(first, bytes) and isinstance(second, bytes)
    assert (first[28:44], second[28:44]) == (b"A" * 16, b"B" * 16)
    gcm = esp_sa(*GCM)
    tx = runtime(gcm)
    ivs = [protected(gcm, tx=tx)[28:36] for _ in range(3)]
    assert ivs == [i.to_bytes(8, "big") for i in range(3)]


def test_sequence_numbers_start_at_1_and_the_32_bit_counter_refuses_to_wrap() -> None:
    sa = esp_sa(*GCM)
    tx = runtime(sa)
    assert protected(sa, tx=tx)[24:28] == b"\0\0\0\1"
    tx.seq = U32 - 1
    assert protected(sa, tx=tx)[24:28] == b"\xff\xff\xff\xff"
    before = tx.snapshot()
    assert esp.protect(sa, tx, v4(17, b"x")) == drop("wrap")
    assert tx.snapshot() == before  # neither the counter nor the IV moved


def test_cycseq_lets_the_counter_wrap() -> None:
    sa = esp_sa(*GCM, flags=SaFlag.X_EXT_CYCSEQ)
    tx = runtime(sa)
    tx.seq = U32
    assert protected(sa, tx=tx)[24:28] == b"\0\0\0\0"


def test_esn_counter_wraps_only_at_64_bits() -> None:
    sa = esp_sa(*GCM, flags=SaFlag.X_ESN)
    tx = runtime(sa)
    tx.seq = U32
    assert protected(sa, tx=tx)[24:28] == b"\0\0\0\0"  # seq 2^32: low half 0, high half in the AAD
    tx.seq = U64
    assert esp.protect(sa, tx, v4(17, b"x")) == drop("wrap")


def test_old_esp_has_no_sequence_number_and_no_replay() -> None:
    sa = esp_sa(*CBC, flags=SaFlag.PFS)  # SADB_X_EXT_OLD shares bit 0x1
    out = protected(sa)
    assert out[20:24] == (0x1000).to_bytes(4, "big")
    assert len(out) == 20 + 4 + 16 + 32  # SPI, IV, 21 + 9 pad + 2
    rx = runtime(sa)
    assert esp.unprotect(sa, rx, out) == v4(17, b"x" * 21)
    assert esp.unprotect(sa, rx, out) == v4(17, b"x" * 21)


def test_old_iv4b_widens_a_4_byte_iv_as_rfc1829() -> None:
    sa = esp_sa(EncAlg.DES3CBC, b"d" * 24, flags=SaFlag.PFS | SaFlag.X_EXT_IV4B)
    assert sa.cipher is not None and sa.cipher.iv == 4
    out = esp.protect(sa, runtime(sa), v4(17, b"q" * 6), random=FixedRandom(b"\x01\x02\x03\x04"))
    assert isinstance(out, bytes) and out[24:28] == b"\x01\x02\x03\x04"
    assert esp.unprotect(sa, runtime(sa), out) == v4(17, b"q" * 6)


def test_ipv6_transport_goes_after_the_header() -> None:
    sa = esp_sa(*GCM)
    datagram = v6(6, b"tcp segment")
    out = esp.protect(sa, runtime(sa), datagram)
    assert isinstance(out, bytes)
    assert out[6] == 50 and int.from_bytes(out[4:6], "big") == len(out) - 40
    assert esp.unprotect(sa, runtime(sa), out) == datagram


def test_too_big_is_refused_before_taking_a_sequence_number() -> None:
    sa = esp_sa(*CBC, *SHA)
    tx = runtime(sa)
    assert esp.protect(sa, tx, v4(17, bytes(65535 - 20))) == drop("toobig")
    assert tx.seq == 0


# ------------------------------------------------------------------ input, in FreeBSD's order


def test_odd_total_length_is_badilen_before_any_crypto() -> None:
    sa = esp_sa(*GCM)
    out = protected(sa)
    assert esp.unprotect(sa, runtime(sa), v4(50, out[20:] + b"\0")) == drop("badilen")


def test_payload_not_a_multiple_of_the_block_is_badilen() -> None:
    sa = esp_sa(*CBC, *SHA)
    out = protected(sa)
    assert esp.unprotect(sa, runtime(sa), v4(50, out[20:-20] + out[-16:])) == drop("badilen")


def test_replay_is_checked_before_the_icv_and_updated_only_after() -> None:
    sa = esp_sa(*CBC, *SHA)
    tx, rx = runtime(sa), runtime(sa)
    p1, p2 = protected(sa, tx=tx), protected(sa, tx=tx)
    assert esp.unprotect(sa, rx, p2) == v4(17, b"x" * 21)
    assert esp.unprotect(sa, rx, p1) == v4(17, b"x" * 21)  # out of order, inside the window
    assert esp.unprotect(sa, rx, p1) == drop("replay")
    # A replay with a broken ICV is still counted as a replay: that check comes first.
    broken = p2[:-1] + bytes((p2[-1] ^ 1,))
    assert esp.unprotect(sa, rx, broken) == drop("replay")
    # A new sequence number with a broken ICV fails the ICV and leaves the window alone.
    p3 = protected(sa, tx=tx)
    before = rx.snapshot()
    assert esp.unprotect(sa, rx, p3[:-1] + bytes((p3[-1] ^ 1,))) == drop("badauth")
    assert rx.snapshot() == before
    assert esp.unprotect(sa, rx, p3) == v4(17, b"x" * 21)


def test_packets_older_than_the_window_are_replays() -> None:
    sa = esp_sa(*GCM, window=32)
    tx, rx = runtime(sa), runtime(sa)
    old = protected(sa, tx=tx)
    tx.seq = 40
    assert esp.unprotect(sa, rx, protected(sa, tx=tx)) == v4(17, b"x" * 21)
    assert esp.unprotect(sa, rx, old) == drop("replay")


def test_sequence_zero_is_refused_on_a_fresh_window() -> None:
    sa = esp_sa(*GCM, flags=SaFlag.X_EXT_CYCSEQ)
    tx = runtime(sa)
    tx.seq = U32
    assert esp.unprotect(sa, runtime(sa), protected(sa, tx=tx)) == drop("replay")


def test_non_esn_receiver_refuses_after_seeing_the_last_number() -> None:
    sa = esp_sa(*GCM, window=32)
    tx, rx = runtime(sa), runtime(sa)
    assert rx.replay is not None
    rx.replay.last = tx.seq = U32 - 1  # a receiver that has followed the sender so far
    assert esp.unprotect(sa, rx, protected(sa, tx=tx)) == v4(17, b"x" * 21)
    assert rx.replay.last == U32
    tx2 = runtime(sa)
    assert esp.unprotect(sa, rx, protected(sa, tx=tx2)) == drop("wrap")


def test_esn_receiver_follows_the_sender_across_2_32() -> None:
    sa = esp_sa(*GCM, flags=SaFlag.X_ESN, window=64)
    tx, rx = runtime(sa), runtime(sa)
    assert rx.replay is not None
    rx.replay.last = tx.seq = U32 - 3
    for _ in range(8):
        assert esp.unprotect(sa, rx, protected(sa, tx=tx)) == v4(17, b"x" * 21)
    assert rx.replay.last == (1 << 32) + 4


def test_dummy_packets_are_dropped() -> None:
    sa = esp_sa(*GCM)
    out = esp.protect(sa, runtime(sa), v4(59, b"tfc"))
    assert isinstance(out, bytes)
    assert esp.unprotect(sa, runtime(sa), out) == drop("dummy")


def test_a_packet_for_another_spi_is_notdb() -> None:
    sa, other = esp_sa(*GCM), esp_sa(*GCM, spi=0x2000)
    assert esp.unprotect(other, runtime(other), protected(sa)) == drop("notdb")


def test_peek_gives_the_lookup_key() -> None:
    sa = esp_sa(*GCM, spi=0xDEADBEEF)
    assert esp.peek(protected(sa)) == (50, 0xDEADBEEF, bytes([192, 0, 2, 2]))
    assert esp.peek(v4(17, b"nope")) == drop("hdrops")
    assert esp.peek(v4(50, b"1234567")) == drop("hdrops")


# ------------------------------------------------------------------ properties

SUITES = [
    (EncAlg.X_AESCBC, 16, AuthAlg.X_SHA2_256, 32),
    (EncAlg.X_AESCBC, 32, AuthAlg.X_SHA2_512, 64),
    (EncAlg.X_AESCTR, 28, AuthAlg.SHA1HMAC, 20),
    (EncAlg.X_AESGCM16, 36, 0, 0),
    (EncAlg.X_AESGCM8, 20, 0, 0),
    (EncAlg.X_AESGCM12, 28, 0, 0),
    (EncAlg.X_CHACHA20POLY1305, 36, 0, 0),
    (EncAlg.X_AESGMAC, 20, 0, 0),
    (EncAlg.NULL, 0, AuthAlg.X_AES_XCBC_MAC, 16),
    (EncAlg.DES3CBC, 24, AuthAlg.MD5HMAC, 16),
    (EncAlg.X_CAMELLIACBC, 24, AuthAlg.X_SHA2_384, 48),
    (EncAlg.X_BLOWFISHCBC, 7, AuthAlg.SHA1HMAC, 20),
    (EncAlg.X_CAST128CBC, 10, AuthAlg.X_SHA2_256, 32),
]
FLAGS = st.sampled_from([0, SaFlag.X_ESN, SaFlag.X_EXT_PRAND, SaFlag.X_ESN | SaFlag.X_EXT_CYCSEQ])


@st.composite
def sas(draw: st.DrawFn) -> TransformSA:
    enc, klen, auth, aklen = draw(st.sampled_from(SUITES))
    key = draw(st.binary(min_size=klen, max_size=klen))
    akey = draw(st.binary(min_size=aklen, max_size=aklen))
    return esp_sa(
        enc,
        key,
        auth,
        akey,
        spi=draw(st.integers(256, U32)),
        flags=draw(FLAGS),
        window=draw(st.sampled_from([32, 64, 128])),
        ctr_compatibility=draw(st.booleans()),
    )


def datagrams() -> st.SearchStrategy[bytes]:
    payload = st.binary(max_size=300)
    proto = st.sampled_from([1, 6, 17, 4, 41, 58])
    return st.one_of(st.builds(v4, proto, payload), st.builds(v6, proto, payload))


@settings(max_examples=150, deadline=None)
@given(sas(), datagrams(), st.integers(0, U32 + 10))
def test_decrypting_what_was_encrypted_returns_the_datagram(sa: TransformSA, datagram: bytes, seq: int) -> None:
    tx, rx = runtime(sa), runtime(sa)
    tx.seq = seq if sa.esn else min(seq, U32 - 1)
    out = esp.protect(sa, tx, datagram)
    assert isinstance(out, bytes)
    assert rx.replay is not None
    rx.replay.last = max(tx.seq - 1, 0)  # a receiver that has followed the sender so far
    assert esp.unprotect(sa, rx, out) == datagram
    assert esp.unprotect(sa, rx, out) == drop("replay")


@settings(max_examples=150, deadline=None)
@given(sas(), datagrams(), st.data())
def test_a_flipped_bit_in_esp_is_dropped_and_changes_nothing(
    sa: TransformSA, datagram: bytes, data: st.DataObject
) -> None:
    tx, rx = runtime(sa), runtime(sa)
    out = esp.protect(sa, tx, datagram)
    assert isinstance(out, bytes)
    start = 20 if out[0] >> 4 == 4 else 40  # where ESP begins
    bit = data.draw(st.integers(start * 8, len(out) * 8 - 1))
    flipped = bytearray(out)
    flipped[bit // 8] ^= 1 << (bit % 8)
    before = rx.snapshot()
    result = esp.unprotect(sa, rx, bytes(flipped))
    if bit // 8 < start + 4:  # in the SPI: the SA lookup would not find this SA
        assert result == drop("notdb")
    elif bit // 8 < start + 8 and not sa.esn:
        # the sequence number: still inside the window, so the ICV decides
        assert result in (drop("badauth"), drop("replay"))
    else:
        assert result in (drop("badauth"), drop("replay"), drop("wrap"))
    assert rx.snapshot() == before


@settings(max_examples=300, deadline=None)
@given(sas(), st.binary(max_size=200), st.binary(max_size=120))
def test_arbitrary_bytes_never_raise(sa: TransformSA, junk: bytes, esp_bytes: bytes) -> None:
    rx = runtime(sa)
    for candidate in (junk, v4(50, esp_bytes), v6(50, esp_bytes), v4(50, sa.spi.to_bytes(4, "big") + esp_bytes)):
        result = esp.unprotect(sa, rx, candidate)
        assert isinstance(result, (bytes, Drop))
        peeked = esp.peek(candidate)
        assert isinstance(peeked, (tuple, Drop))
    assert isinstance(esp.protect(sa, runtime(sa), junk), (bytes, Drop))


@st.composite
def aead_sas(draw: st.DrawFn) -> TransformSA:
    enc, klen = draw(
        st.sampled_from([(EncAlg.X_AESGCM16, 20), (EncAlg.X_AESGCM16, 36), (EncAlg.X_CHACHA20POLY1305, 36)])
    )
    flags = draw(
        st.sampled_from([0, SaFlag.X_ESN, SaFlag.X_EXT_PZERO, SaFlag.X_ESN | SaFlag.X_EXT_CYCSEQ, SaFlag.X_EXT_CYCSEQ])
    )
    window = draw(st.sampled_from([64, 1, 32, 128, 0]))
    return esp_sa(enc, draw(st.binary(min_size=klen, max_size=klen)), flags=flags, window=window)


def _general(sa: TransformSA) -> TransformSA:
    """A copy of ``sa`` whose ESP plan has the IPv4 fast paths (pure and compiled) turned off."""
    from dataclasses import replace

    slow = replace(sa)
    assert esp.pad_length(slow, 0) >= 0  # builds the plan
    slow.plan.fast = False  # type: ignore[attr-defined]  # the plan is esp's private record
    slow.plan.native = None  # type: ignore[attr-defined]
    return slow


#: Outbound counters: anywhere, at the edges, and just below a 2^32 boundary (where
#: the receiver's window can sit at the bottom of the next subspace).
_SEQS = (
    st.integers(0, U64)
    | st.sampled_from([0, 1, U32 - 1, U32, U64 - 1, U64])
    | st.integers(U32 - 130, U32)
    | st.integers(U32 - 130, U32).map(lambda s: s + (5 << 32))
)


@settings(max_examples=300, deadline=None)
@given(
    aead_sas(),
    st.binary(max_size=200),
    st.integers(0, 255),
    st.binary(min_size=9, max_size=9),
    _SEQS,
    st.integers(0, U64) | st.sampled_from([U64, U64 - 1]),
    st.data(),
)
def test_ipv4_fast_paths_equal_the_general_path(
    sa: TransformSA, payload: bytes, proto: int, junk: bytes, seq: int, counter: int, data: st.DataObject
) -> None:
    # Any IPv4 header fields (TOS, ID, flags, TTL, even a wrong checksum): the fast
    # path's checksum must equal the general path's full recomputation.
    dg = bytearray(v4(proto, payload))
    dg[4:9] = junk[:5]
    dg[10:12] = junk[5:7]
    dg[1] = junk[8]
    datagram = bytes(dg)
    sa = on_path(sa, "pure")  # the pure-Python fast path (test_espfast.py holds the compiled one to it)
    slow = _general(sa)
    tx_fast, tx_slow = runtime(sa), runtime(sa)
    tx_fast.seq = tx_slow.seq = seq
    tx_fast.iv_counter = tx_slow.iv_counter = counter
    fast_out = esp.protect(sa, tx_fast, datagram)
    assert fast_out == esp.protect(slow, tx_slow, datagram)
    assert tx_fast.snapshot() == tx_slow.snapshot()
    if not isinstance(fast_out, bytes):
        return
    wire = bytearray(fast_out)
    if data.draw(st.booleans()):
        bit = data.draw(st.integers(20 * 8, len(wire) * 8 - 1))
        wire[bit // 8] ^= 1 << (bit % 8)
    rx_fast, rx_slow = runtime(sa), runtime(sa)
    if rx_fast.replay is not None and rx_slow.replay is not None:
        # The window just below the packet (in order), around it, or a 2^32 subspace
        # away, up to its boundary cases (check()'s ``bl``).
        size = rx_fast.replay.size
        offset = data.draw(
            st.integers(-300, 300)
            | st.integers(size - 1, size + 1).map(lambda k: k - 2**32)
            | st.sampled_from([2**32, -(2**32)])
        )
        last = min(max(tx_fast.seq - 1 + offset, 0), U64)
        bits = data.draw(st.integers(0, rx_fast.replay.mask)) if last else 0
        rx_fast.replay.last = rx_slow.replay.last = last
        rx_fast.replay.bits = rx_slow.replay.bits = bits
    assert esp.unprotect(sa, rx_fast, bytes(wire)) == esp.unprotect(slow, rx_slow, bytes(wire))
    assert rx_fast.snapshot() == rx_slow.snapshot()
