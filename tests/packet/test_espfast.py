"""ESP's compiled AEAD path (pfkeyd/packet/espfast.c) against its pure-Python reference.

The module must be built: a missing extension fails here (and every compiled case
below), with what to install.  The property tests hold esp.protect/unprotect and
the fast tunnel path equal on both paths, byte for byte, drops and SA state
included; the known-answer vectors run through both in test_esp_vectors.py.
"""

from __future__ import annotations

import contextlib
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfkeyd.packet import crypto, esp
from pfkeyd.packet.counters import Drop
from pfkeyd.packet.runtime import U32, U64
from pfkeyd.packet.sa import TransformSA
from pfkeyd.wire.constants import AuthAlg, EncAlg, SaFlag
from tests.packet.esp_helpers import esp_sa, on_path, runtime, v4, v6

_MISSING = (
    "pfkeyd.packet.espfast, ESP's compiled AEAD path, is not built: install a C compiler and "
    "OpenSSL's headers (Debian: apt-get install gcc libssl-dev), then reinstall "
    "(.venv/bin/pip install -e . ; python3 dev.py rebuilds .venv when setup.py or the C source change)"
)


def test_the_compiled_module_is_built() -> None:
    try:
        from pfkeyd.packet import espfast
    except ImportError as e:  # pragma: no cover - what CI must never see
        pytest.fail(f"{_MISSING} ({e})")
    assert isinstance(crypto.cipher(EncAlg.X_AESGCM16, bytes(20)).native, espfast.Aead)  # type: ignore[attr-defined]


def test_the_compiled_path_serves_exactly_the_fast_sas() -> None:
    key = bytes(36)
    for sa in (
        esp_sa(EncAlg.X_AESGCM16, bytes(20)),
        esp_sa(EncAlg.X_AESGCM16, bytes(28), flags=SaFlag.X_ESN | SaFlag.X_EXT_PZERO),
        esp_sa(EncAlg.X_CHACHA20POLY1305, key, flags=SaFlag.X_EXT_CYCSEQ),
    ):
        assert esp.plan_of(sa).native is not None
    for sa in (
        esp_sa(EncAlg.X_AESGCM16, bytes(20), flags=SaFlag.X_EXT_PRAND),  # random pad bytes: Python's
        esp_sa(EncAlg.X_AESGCM12, bytes(20)),  # a short ICV
        esp_sa(EncAlg.X_AESGMAC, bytes(20)),
        esp_sa(EncAlg.X_AESCBC, bytes(16), AuthAlg.X_SHA2_256, bytes(32)),
        esp_sa(EncAlg.X_AESCTR, bytes(20), AuthAlg.X_SHA2_256, bytes(32)),
    ):
        assert esp.plan_of(sa).native is None
    assert esp._Plan(esp_sa(EncAlg.X_AESGCM16, bytes(20)), native=False).native is None


def test_a_libcrypto_that_refuses_the_cipher_leaves_the_sa_to_pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _module()
    assert (m.AES_GCM, m.CHACHA20_POLY1305) == (crypto._KIND_AES_GCM, crypto._KIND_CHACHA20_POLY1305)

    class Refusing:
        def Aead(self, kind: int, key: bytes, salt: bytes) -> None:
            raise RuntimeError("libcrypto could not set up the AEAD context")

    monkeypatch.setattr(crypto, "espfast", Refusing())
    sa = esp_sa(EncAlg.X_CHACHA20POLY1305, bytes(36))
    assert isinstance(sa.cipher, crypto.AeadCipher) and sa.cipher.native is None
    assert esp.plan_of(sa).native is None
    dg = v4(17, b"still protected")
    wire = esp.protect(sa, runtime(sa), dg)
    assert isinstance(wire, bytes) and esp.unprotect(sa, runtime(sa), wire) == dg


# ------------------------------------------------------------------ the property


@st.composite
def aead_sas(draw: st.DrawFn) -> TransformSA:
    enc, klen = draw(
        st.sampled_from(
            [(EncAlg.X_AESGCM16, 20), (EncAlg.X_AESGCM16, 28), (EncAlg.X_AESGCM16, 36), (EncAlg.X_CHACHA20POLY1305, 36)]
        )
    )
    flags = draw(
        st.sampled_from(
            [
                0,
                SaFlag.X_ESN,
                SaFlag.X_EXT_PZERO,
                SaFlag.X_ESN | SaFlag.X_EXT_PZERO,
                SaFlag.X_ESN | SaFlag.X_EXT_CYCSEQ,
                SaFlag.X_EXT_CYCSEQ,
            ]
        )
    )
    window = draw(st.sampled_from([64, 1, 32, 128, 0]))
    spi = draw(st.sampled_from([0x1000, 0xFFFFFFFF, 0x100]))
    return esp_sa(enc, draw(st.binary(min_size=klen, max_size=klen)), flags=flags, window=window, spi=spi)


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    """IPv4 datagrams without options (any header fields, even a wrong checksum),
    sometimes large, and now and then one neither fast path takes."""
    payload = draw(st.binary(max_size=200) | st.integers(1000, 3000).map(lambda n: bytes(range(256)) * (n // 256)))
    dg = bytearray(v4(draw(st.integers(0, 255)), payload))
    junk = draw(st.binary(min_size=9, max_size=9))
    dg[4:9], dg[10:12], dg[1] = junk[:5], junk[5:7], junk[8]
    kind = draw(st.sampled_from(["v4"] * 6 + ["options", "v6", "length", "short"]))
    if kind == "options":
        dg[0] = 0x46
    elif kind == "v6":
        return v6(17, payload)
    elif kind == "length":
        dg += b"x"
    elif kind == "short":
        return bytes(dg[: draw(st.integers(0, 19))])
    return bytes(dg)


_SEQS = (
    st.integers(0, U64)
    | st.sampled_from([0, 1, U32 - 1, U32, U64 - 1, U64])
    | st.integers(U32 - 130, U32)
    | st.integers(U32 - 130, U32).map(lambda s: s + (5 << 32))
)


def _sealed(sa: TransformSA, seq64: int, iv: bytes, header: bytes, plain: bytes) -> bytes:
    """An ESP datagram whose ciphertext holds ``plain`` as given (any trailer), with a
    correct ICV: sealed by the pure path's own cipher."""
    c = sa.cipher
    assert isinstance(c, crypto.AeadCipher)
    spi, lo = (sa.spi & U32).to_bytes(4, "big"), (seq64 & U32).to_bytes(4, "big")
    aad = spi + (seq64 >> 32).to_bytes(4, "big") + lo if sa.esn else spi + lo
    body = spi + lo + iv + c.encrypt(iv, plain, aad)
    head = bytearray(header[:20])
    head[2:4] = (20 + len(body)).to_bytes(2, "big")
    head[9] = 50
    return bytes(head) + body


def _same(compiled: TransformSA, pure: TransformSA, wire: bytes, seq: int, data: st.DataObject) -> None:
    """unprotect on both paths, from the same window state: same result, same state."""
    rx_c, rx_p = runtime(compiled), runtime(pure)
    if rx_c.replay is not None and rx_p.replay is not None:
        size = rx_c.replay.size
        offset = data.draw(
            st.integers(-300, 300)
            | st.integers(size - 1, size + 1).map(lambda k: k - 2**32)
            | st.sampled_from([2**32, -(2**32)])
        )
        last = min(max(seq - 1 + offset, 0), U64)
        bits = data.draw(st.integers(0, rx_c.replay.mask)) if last else 0
        rx_c.replay.last = rx_p.replay.last = last
        rx_c.replay.bits = rx_p.replay.bits = bits
    got = esp.unprotect(compiled, rx_c, wire)
    assert got == esp.unprotect(pure, rx_p, wire)
    assert rx_c.snapshot() == rx_p.snapshot()
    assert isinstance(got, (bytes, Drop))


@settings(max_examples=400, deadline=None)
@given(aead_sas(), datagrams(), _SEQS, st.integers(0, U64) | st.sampled_from([U64, U64 - 1]), st.data())
def test_compiled_and_pure_paths_are_equal(
    sa: TransformSA, datagram: bytes, seq: int, counter: int, data: st.DataObject
) -> None:
    compiled, pure = on_path(sa, "compiled"), on_path(sa, "pure")
    # Outbound: the same bytes or the same drop, the same counters after.
    tx_c, tx_p = runtime(sa), runtime(sa)
    tx_c.seq = tx_p.seq = seq
    tx_c.iv_counter = tx_p.iv_counter = counter
    out = esp.protect(compiled, tx_c, datagram)
    assert out == esp.protect(pure, tx_p, datagram)
    assert tx_c.snapshot() == tx_p.snapshot()
    if not isinstance(out, bytes):
        return
    sent = tx_c.seq
    # Inbound: the packet itself, with a bit flipped, cut short (its IP length kept
    # true, so that it still looks like the fast paths' own), or another SPI.
    wire = bytearray(out)
    change = data.draw(st.sampled_from(["none", "flip", "flip", "cut", "spi"]))
    if change == "flip":
        bit = data.draw(st.integers(0, len(wire) * 8 - 1))
        wire[bit // 8] ^= 1 << (bit % 8)
    elif change == "cut":
        wire = wire[: data.draw(st.integers(20, len(wire) - 1))]
        wire[2:4] = len(wire).to_bytes(2, "big")
    elif change == "spi":
        wire[20] ^= 0x80
    _same(compiled, pure, bytes(wire), sent, data)


@settings(max_examples=400, deadline=None)
@given(
    aead_sas(),
    st.binary(max_size=64),
    st.integers(0, 4) | st.integers(0, 255),
    st.sampled_from([4, 17, 41, 59]) | st.integers(0, 255),
    st.binary(max_size=8) | st.sampled_from([b"\x01", b"\x01\x02", b"\x01\x02\x03", b"\x00\x00"]),
    st.sampled_from([1, 2, 2, 3, 255, 0x1_0000_0001, (7 << 32) + 9]),
    st.booleans(),
    st.data(),
)
def test_compiled_and_pure_paths_read_any_trailer_alike(
    sa: TransformSA,
    body: bytes,
    npad: int,
    nh: int,
    pad: bytes,
    seq64: int,
    align: bool,
    data: st.DataObject,
) -> None:
    # Authentic packets whose trailer is anything: a pad length too long (badilen),
    # wrong pad contents (badpad), next header 59 (dummy), or good.
    plain = body + pad + bytes((npad, nh))
    if align:
        plain = plain[len(plain) % 4 :] or bytes((0, nh, 0, nh))
    header = v4(17, b"")
    wire = _sealed(sa, seq64, data.draw(st.binary(min_size=8, max_size=8)), header, plain)
    _same(on_path(sa, "compiled"), on_path(sa, "pure"), wire, seq64, data)


def test_the_trailer_verdicts_are_the_pure_paths_drops() -> None:
    sa = esp_sa(EncAlg.X_AESGCM16, bytes(range(20)))
    header = v4(17, b"")
    cases = {
        b"abcd" + bytes((1, 2, 2, 17)): None,  # good: pad 1, 2
        b"abcd" + bytes((1, 9, 2, 17)): Drop("esp", "badpad"),
        b"abcde" + bytes((7, 1, 17)): Drop("esp", "badpad"),
        b"abcdef" + bytes((200, 17)): Drop("esp", "badilen"),
        b"abcdef" + bytes((0, 59)): Drop("esp", "dummy"),
    }
    for plain, want in cases.items():
        wire = _sealed(sa, 1, bytes(8), header, plain)
        for path in ("compiled", "pure"):
            rx = runtime(sa)
            got = esp.unprotect(on_path(sa, path), rx, wire)
            if want is None:
                assert isinstance(got, bytes) and got[20:] == b"abcd" and got[9] == 17, path
            else:
                assert got == want, path
            assert rx.replay is not None and rx.replay.last == 1  # the window moved: the ICV passed
        bad = bytearray(wire)
        bad[-1] ^= 1
        for path in ("compiled", "pure"):
            rx = runtime(sa)
            assert esp.unprotect(on_path(sa, path), rx, bytes(bad)) == Drop("esp", "badauth")
            assert rx.replay is not None and rx.replay.snapshot() == (0, 0, 0)


# ------------------------------------------------------------------ the C interface


def _module() -> Any:
    """The module, untyped: these tests pass it wrong arguments on purpose."""
    from pfkeyd.packet import espfast

    return espfast


def test_any_bytes_like_input_and_no_buffer_left_held() -> None:
    m = _module()
    esp_obj = m.EspV4(m.Aead(m.AES_GCM, bytes(16), bytes(4)), 0x1000, False, False)
    dg = v4(17, b"hello, world")
    want = esp_obj.protect(dg, 1, 0)
    assert isinstance(want, bytes)
    held = bytearray(dg)
    assert esp_obj.protect(held, 1, 0) == want
    assert esp_obj.protect(memoryview(dg), 1, 0) == want
    wire = bytearray(want)
    assert esp_obj.peek(wire) == 1 and esp_obj.peek(memoryview(want)) == 1
    assert esp_obj.open(wire, 0) == dg
    outer = bytearray(v4(0, b"")[:20])
    assert esp_obj.tunnel(outer, held, 1, 0) == esp_obj.tunnel(bytes(outer), dg, 1, 0)
    assert m.ipv4_ok(held) and m.ipv4_ok(memoryview(dg))
    # errors on the way out release the buffers too
    with pytest.raises(ValueError):
        esp_obj.tunnel(outer[:19], held, 1, 0)
    with pytest.raises(ValueError):
        esp_obj.open(held, 0)
    # a bytearray with a live export cannot be resized: every path released it
    for buf in (held, wire, outer):
        buf.append(0)


def test_bad_arguments_raise_clear_errors_and_change_nothing() -> None:
    m = _module()
    with pytest.raises(ValueError, match="16, 24 or 32"):
        m.Aead(m.AES_GCM, bytes(15), bytes(4))
    with pytest.raises(ValueError, match="32 bytes"):
        m.Aead(m.CHACHA20_POLY1305, bytes(16), bytes(4))
    with pytest.raises(ValueError, match="unknown AEAD kind"):
        m.Aead(7, bytes(16), bytes(4))
    with pytest.raises(ValueError, match="salt"):
        m.Aead(m.AES_GCM, bytes(16), bytes(3))
    aead = m.Aead(m.AES_GCM, bytes(16), bytes(4))
    for spi in (1 << 32, (1 << 64) + 5, -1):
        with pytest.raises(ValueError, match="32 bits"):
            m.EspV4(aead, spi, False, False)
    with pytest.raises(TypeError):
        m.EspV4(object(), 1, False, False)
    with pytest.raises(TypeError):
        m.EspV4(aead, "1", False, False)
    e = m.EspV4(aead, 0x1000, True, False)
    dg = v4(17, b"x" * 40)
    with pytest.raises(ValueError, match="seq"):
        e.protect(dg, -1, 0)
    with pytest.raises(ValueError, match="iv"):
        e.protect(dg, 1, 1 << 64)
    with pytest.raises(TypeError, match="bytes-like"):
        e.protect("text", 1, 0)
    with pytest.raises(TypeError):
        e.protect(dg, 1)
    with pytest.raises(ValueError, match="does not fit"):
        e.tunnel(dg[:20], bytes(65500), 1, 0)
    wire = e.protect(dg, 5, 9)
    assert isinstance(wire, bytes)
    with pytest.raises(ValueError, match="seq_hi"):
        e.open(wire, 1 << 32)
    with pytest.raises(ValueError, match="IPv4 ESP"):
        e.open(dg, 0)
    assert e.open(wire, 0) == dg  # still in step after the errors
    assert e.protect(v6(17, b"x"), 1, 0) is None and e.peek(dg) is None


def test_no_key_material_in_a_repr() -> None:
    m = _module()
    key, salt = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90"), bytes.fromhex("deadbeef")
    aead = m.Aead(m.AES_GCM, key, salt)
    shown = repr(aead) + repr(m.EspV4(aead, 0x1234, False, False))
    assert shown == "<espfast.Aead AES-GCM><espfast.EspV4 spi=0x00001234 esn=0>"
    cipher = crypto.cipher(EncAlg.X_AESGCM16, key + salt)
    assert "a1b2" not in repr(cipher) and "deadbeef" not in repr(cipher)


def test_nothing_leaks_over_many_packets_and_failures() -> None:
    m = _module()
    e = m.EspV4(m.Aead(m.CHACHA20_POLY1305, bytes(32), bytes(4)), 7, False, False)
    dg = v4(17, b"y" * 500)
    wire = e.protect(dg, 1, 0)
    assert isinstance(wire, bytes)
    forged = wire[:-1] + bytes((wire[-1] ^ 1,))

    def burst() -> None:
        for i in range(2000):
            assert e.protect(dg, i, i) is not None
            assert e.open(wire, 0) == dg
            assert e.open(forged, 0) == m.OPEN_BADAUTH
            assert e.peek(wire) == 1
            e.tunnel(dg[:20], dg, i, i)
            with contextlib.suppress(ValueError):
                e.open(dg, 0)

    burst()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        burst()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024
