"""The one-step ESP tunnel path equals the general bundle path: bytes, drops, counters, state."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from pfkeyd.packet import bundle, esp, fasttunnel
from pfkeyd.packet.bundle import Bound
from pfkeyd.packet.counters import ESP, Counters, Drop
from pfkeyd.packet.ip import PacketKnobs
from pfkeyd.packet.runtime import U32, U64
from pfkeyd.packet.sa import TransformSA
from pfkeyd.sad import NatT
from pfkeyd.wire.constants import AuthAlg, EncAlg, Mode, SaFlag
from tests.packet.esp_helpers import (
    PATHS,
    FixedRandom,
    esp_sa,
    next_on_the_wire,
    on_path,
    runtime,
    v4,
    v6,
    with_checksum,
)


@st.composite
def tunnel_sas(draw: st.DrawFn) -> TransformSA:
    enc, klen = draw(
        st.sampled_from(
            [(EncAlg.X_AESGCM16, 20), (EncAlg.X_AESGCM16, 28), (EncAlg.X_AESGCM16, 36), (EncAlg.X_CHACHA20POLY1305, 36)]
        )
    )
    flags = draw(st.sampled_from([0, SaFlag.X_ESN, SaFlag.X_EXT_PZERO, SaFlag.X_ESN | SaFlag.X_EXT_CYCSEQ]))
    return esp_sa(enc, draw(st.binary(min_size=klen, max_size=klen)), flags=flags, mode=Mode.TUNNEL)


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
    datagram = with_checksum(dg) if good_checksum else bytes(dg)
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


# ---------------------------------------------------------------- inbound


def _receiver(sa: TransformSA) -> tuple[Bound, bundle.Lookup]:
    bound = Bound(sa, runtime(sa))

    def lookup(key: bundle.Peek) -> Bound | None:
        return bound if key.proto == 50 and key.spi == sa.spi else None

    return bound, lookup


def _same(a: bundle.Accepted | Drop, b: bundle.Accepted | Drop) -> None:
    if isinstance(a, Drop) or isinstance(b, Drop):
        assert a == b
        return
    assert a.datagram == b.datagram
    assert [x.sa.spi for x in a.applied] == [x.sa.spi for x in b.applied]


#: What happens to the next datagram on the wire: sent as is, held back (the one
#: after it goes first), a held one arriving late, replayed (an earlier one again),
#: tampered with (a byte flipped), truncated, sent with another SPI, or sent after
#: the sender's sequence number jumped (inside, behind or beyond the window).
_OPS = st.sampled_from(["send", "send", "hold", "late", "replay", "tamper", "truncate", "spi", "jump"])


@settings(max_examples=300, deadline=None)
@given(
    tunnel_sas(),
    st.sampled_from([0, 32, 64]),
    st.lists(
        st.tuples(
            _OPS,
            st.sampled_from([4, 4, 4, 41, 17, 50]),  # the outer datagram's next header
            st.binary(max_size=80),
            st.integers(0, 255),  # inner TOS
            st.sampled_from([0, 0, 2, 1, 3]),  # outer ECN
            st.sampled_from([0, 0, 0, 1, 4, 7]),  # TFC padding behind the inner datagram
            st.integers(0, 255),  # the inner protocol
            st.one_of(st.integers(2**15 - 80, 2**15 + 80), st.integers(0, 2**16)),  # a position or a jump
        ),
        min_size=1,
        max_size=10,
    ),
    st.sampled_from([-1, 0, 1]),
    st.sampled_from([1, 1, 1, 0]),
    st.sampled_from([*PATHS, "compiled"]),
)
def test_the_fast_inbound_path_equals_the_general_path(
    sa: TransformSA,
    window: int,
    ops: list[tuple[str, int, bytes, int, int, int, int, int]],
    ecn: int,
    esp_enable: int,
    path: str,
) -> None:
    sa = replace(sa, window=window)
    # The sender: the same keys in transport mode over an outer datagram built by
    # hand, so that the payload may be anything (IP-in-IP or not, padded or not).
    sender = Bound(on_path(replace(sa, mode=Mode.TRANSPORT), "pure"), runtime(sa))
    fast, fast_lookup = _receiver(on_path(sa, path))
    slow, slow_lookup = _receiver(on_path(sa, "pure"))
    knobs = PacketKnobs(ecn=ecn, esp_enable=esp_enable)
    fc, sc = Counters(), Counters()
    sent: list[bytes] = []
    held: list[bytes] = []
    for op, outer_proto, payload, tos, outer_ecn, tfc, inner_proto, n in ops:
        inner = v4(inner_proto, payload, tos=tos) if outer_proto == 4 else v6(inner_proto, payload)
        if outer_proto in (17, 50):
            inner = payload
        clear = v4(outer_proto, inner + bytes(tfc), tos=outer_ecn)
        wire = next_on_the_wire(op, n, clear, sender, sent, held)
        before = (fc.snapshot(), fast.state.snapshot())
        got = fasttunnel.unprotect(wire, fast_lookup, knobs, fc)
        if got is None:  # declined: nothing counted, nothing changed, the general path's
            assert (fc.snapshot(), fast.state.snapshot()) == before
            got = bundle.unprotect(wire, fast_lookup, knobs, fc)
        else:  # taken: only with ESP enabled, and on the compiled path unless no SA answers
            assert esp_enable and (path == "compiled" or got == Drop(ESP, "notdb"))
        _same(got, bundle.unprotect(wire, slow_lookup, knobs, sc))
        assert fc.snapshot() == sc.snapshot()
        assert fast.state.snapshot() == slow.state.snapshot()


def test_what_the_fast_inbound_path_declines() -> None:
    sa = esp_sa(EncAlg.X_AESGCM16, bytes(20), mode=Mode.TUNNEL)
    sender = Bound(on_path(replace(sa, mode=Mode.TRANSPORT), "pure"), runtime(sa))
    wire = bundle.protect((sender,), v4(4, v4(17, b"x" * 30)), PacketKnobs(), Counters())
    assert isinstance(wire, bytes)
    fast, lookup = _receiver(on_path(sa, "compiled"))
    c = Counters()
    # ESP disabled (the general path counts pdrops), IPv6 outside, IPv4 options, a short datagram
    assert fasttunnel.unprotect(wire, lookup, PacketKnobs(esp_enable=0), c) is None
    assert fasttunnel.unprotect(v6(50, wire[20:]), lookup, PacketKnobs(), c) is None
    opts = bytearray(v4(50, bytes(4) + wire[20:]))
    opts[0] = 0x46
    assert fasttunnel.unprotect(bytes(opts), lookup, PacketKnobs(), c) is None
    assert fasttunnel.unprotect(wire[:52], lookup, PacketKnobs(), c) is None
    # A transport-mode SA, a NAT-T SA, the pure path: the general path's
    for other in (
        on_path(replace(sa, mode=Mode.TRANSPORT), "compiled"),
        on_path(replace(sa, natt=NatT(2, 4500, 4500)), "compiled"),
        on_path(sa, "pure"),
    ):
        assert fasttunnel.unprotect(wire, _receiver(other)[1], PacketKnobs(), c) is None
    assert fast.state.snapshot() == runtime(sa).snapshot()
    assert not any(c.snapshot().values())
    # A lookup that answers with an SA of another protocol or another SPI: notdb, as the general path says
    ah = Bound(replace(sa, proto=51), runtime(sa))
    spi_differs = Bound(on_path(replace(sa, spi=sa.spi + 1), "compiled"), runtime(sa))
    for wrong in (ah, spi_differs):

        def answer(_key: bundle.Peek, wrong: Bound = wrong) -> Bound:
            return wrong

        slow = Counters()
        assert fasttunnel.unprotect(wire, answer, PacketKnobs(), c) == Drop(ESP, "notdb")
        assert bundle.unprotect(wire, answer, PacketKnobs(), slow) == Drop(ESP, "notdb")
        assert c["esp.notdb"] == slow["esp.notdb"] + (wrong is spi_differs)
        assert wrong.state.snapshot() == runtime(sa).snapshot()
    c = Counters()
    got = fasttunnel.unprotect(wire, lookup, PacketKnobs(), c)
    assert isinstance(got, bundle.Accepted) and got.datagram == v4(17, b"x" * 30)
    assert c["esp.input"] == 1


def test_the_fast_inbound_path_tells_sas_of_the_same_ends_apart() -> None:
    # Two SAs between the same addresses: each datagram is looked up under its own SPI.
    sas = [
        on_path(esp_sa(EncAlg.X_AESGCM16, bytes([i]) * 20, spi=spi, mode=Mode.TUNNEL), "compiled")
        for i, spi in enumerate((0x1000, 0x2000))
    ]
    bounds = {sa.spi: Bound(sa, runtime(sa)) for sa in sas}
    senders = [Bound(on_path(replace(sa, mode=Mode.TRANSPORT), "pure"), runtime(sa)) for sa in sas]
    c = Counters()
    for i in range(4):
        inner = v4(17, bytes([i]) * 12)
        wire = bundle.protect((senders[i % 2],), v4(4, inner), PacketKnobs(), Counters())
        assert isinstance(wire, bytes)
        got = fasttunnel.unprotect(wire, lambda key: bounds.get(key.spi), PacketKnobs(), c)
        assert isinstance(got, bundle.Accepted) and got.datagram == inner
        assert got.applied[0].sa.spi == sas[i % 2].spi
    assert c["esp.input"] == 4 and c["esp.notdb"] == 0
