"""The one-step ESP tunnel path equals the general bundle path: bytes, drops, counters, state."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pfkeyd.packet import bundle, esp, fasttunnel
from pfkeyd.packet.bundle import Bound
from pfkeyd.packet.counters import Counters
from pfkeyd.packet.ip import PacketKnobs, inet_checksum
from pfkeyd.packet.runtime import U32, U64
from pfkeyd.packet.sa import TransformSA
from pfkeyd.wire.constants import AuthAlg, EncAlg, Mode, SaFlag
from tests.packet.esp_helpers import PATHS, FixedRandom, esp_sa, on_path, runtime, v4, v6


@st.composite
def tunnel_sas(draw: st.DrawFn) -> TransformSA:
    enc, klen = draw(
        st.sampled_from(
            [(EncAlg.X_AESGCM16, 20), (EncAlg.X_AESGCM16, 28), (EncAlg.X_AESGCM16, 36), (EncAlg.X_CHACHA20POLY1305, 36)]
        )
    )
    flags = draw(st.sampled_from([0, SaFlag.X_ESN, SaFlag.X_EXT_PZERO, SaFlag.X_ESN | SaFlag.X_EXT_CYCSEQ]))
    return esp_sa(enc, draw(st.binary(min_size=klen, max_size=klen)), flags=flags, mode=Mode.TUNNEL)


def _fix(dg: bytearray) -> bytes:
    dg[10:12] = b"\0\0"
    ck = inet_checksum(bytes(dg[:20]))
    dg[10:12] = ck.to_bytes(2, "big")
    return bytes(dg)


@settings(max_examples=300, deadline=None)
@given(
    tunnel_sas(),
    st.binary(max_size=300),
    st.integers(0, 255),
    st.binary(min_size=6, max_size=6),
    st.integers(0, 2),
    st.sampled_from([-1, 0, 1]),
    st.integers(0, 1),
    st.sampled_from([0, U32 - 1, U32, U64]),
    st.booleans(),
    st.binary(min_size=2, max_size=2),
    st.sampled_from(PATHS),
)
def test_the_fast_tunnel_path_equals_the_general_path(
    sa: TransformSA,
    payload: bytes,
    proto: int,
    fields: bytes,
    dfbit: int,
    ecn: int,
    esp_enable: int,
    seq: int,
    good_checksum: bool,
    ident: bytes,
    path: str,
) -> None:
    # The fast path compiled or pure; the general path pure Python throughout.
    sa, slow_sa = on_path(sa, path), on_path(sa, "pure")
    dg = bytearray(v4(proto, payload))
    dg[1] = fields[0]  # any TOS, ECN bits included
    dg[4:8] = fields[1:5]  # ID, flags (DF) and offset
    dg[8] = fields[5]
    datagram = _fix(dg) if good_checksum else bytes(dg)
    knobs = PacketKnobs(dfbit=dfbit, ecn=ecn, esp_enable=esp_enable)
    fast_state, slow_state = runtime(sa), runtime(slow_sa)
    fast_state.seq = slow_state.seq = seq
    fast_chain, slow_chain = (Bound(sa, fast_state),), (Bound(slow_sa, slow_state),)
    assert fasttunnel.eligible(fast_chain)
    fc, sc = Counters(), Counters()
    fast = fasttunnel.protect(fast_chain, datagram, knobs, fc, random=FixedRandom(ident))
    slow = bundle.protect(slow_chain, datagram, knobs, sc, random=FixedRandom(ident))
    if fast is None:  # this datagram is the general path's (a bad inner checksum)
        assert not good_checksum
        return
    assert fast == slow
    assert fc.snapshot() == sc.snapshot()
    assert fast_state.snapshot() == slow_state.snapshot()


def test_what_the_fast_path_does_not_take() -> None:
    key = bytes(20)
    transport = (Bound(esp_sa(EncAlg.X_AESGCM16, key), runtime(esp_sa(EncAlg.X_AESGCM16, key))),)
    assert not fasttunnel.eligible(transport)
    cbc = esp_sa(EncAlg.X_AESCBC, bytes(16), AuthAlg.X_SHA2_256, bytes(32), mode=Mode.TUNNEL)
    assert not fasttunnel.eligible((Bound(cbc, runtime(cbc)),))
    sa = esp_sa(EncAlg.X_AESGCM16, key, mode=Mode.TUNNEL)
    chain = (Bound(sa, runtime(sa)),)
    assert fasttunnel.eligible(chain)
    assert not fasttunnel.eligible(chain * 2)
    # IPv6 inner, IPv4 options: the general path's
    assert fasttunnel.protect(chain, v6(17, b"x" * 30), PacketKnobs(), Counters()) is None
    opts = bytearray(v4(17, b"x" * 30))
    opts[0] = 0x46
    assert fasttunnel.protect(chain, bytes(opts), PacketKnobs(), Counters()) is None
    for path in PATHS:  # a wrong inner checksum, a short or a lying length: neither fast path's
        on = (Bound(on_path(sa, path), runtime(sa)),)
        bad = bytearray(v4(17, b"x" * 30))
        bad[10] ^= 1
        assert fasttunnel.protect(on, bytes(bad), PacketKnobs(), Counters()) is None
        assert fasttunnel.protect(on, v4(17, b"x" * 30)[:19], PacketKnobs(), Counters()) is None
        assert fasttunnel.protect(on, v4(17, b"x" * 30) + b"y", PacketKnobs(), Counters()) is None
        assert on[0].state.seq == 0
    assert esp.pad_length(sa, 0) == 2
