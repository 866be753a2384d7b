"""Shared helpers for the ESP tests: datagrams and SAs built by hand."""

from __future__ import annotations

from dataclasses import replace

from pfkeyd.packet import bundle, crypto, esp, ip
from pfkeyd.packet.bundle import Bound
from pfkeyd.packet.counters import Counters
from pfkeyd.packet.ip import PacketKnobs
from pfkeyd.packet.runtime import U32, U64, SaRuntime
from pfkeyd.packet.sa import TransformSA
from pfkeyd.wire.constants import IpProto, Mode, SaFlag

SRC4 = bytes([192, 0, 2, 1])
DST4 = bytes([192, 0, 2, 2])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")


def v4(proto: int, payload: bytes, src: bytes = SRC4, dst: bytes = DST4, tos: int = 0) -> bytes:
    """A well-formed IPv4 datagram (no options) carrying ``payload`` as protocol ``proto``."""
    head = bytearray(20)
    head[0], head[1] = 0x45, tos
    head[2:4] = (20 + len(payload)).to_bytes(2, "big")
    head[4:6] = b"\x12\x34"
    head[8], head[9] = 64, proto
    head[12:16], head[16:20] = src, dst
    head[10:12] = ip.ipv4_checksum(bytes(head)).to_bytes(2, "big")
    return bytes(head) + payload


def v6(proto: int, payload: bytes, src: bytes = SRC6, dst: bytes = DST6) -> bytes:
    """A well-formed IPv6 datagram without extension headers."""
    return bytes.fromhex("60000000") + len(payload).to_bytes(2, "big") + bytes((proto, 64)) + src + dst + payload


def esp_sa(
    enc: int,
    key: bytes,
    auth: int = 0,
    akey: bytes = b"",
    *,
    spi: int = 0x1000,
    flags: int = 0,
    window: int = 64,
    mode: int = Mode.TRANSPORT,
    ctr_compatibility: bool = True,
) -> TransformSA:
    """An ESP TransformSA built directly (not through the SAD)."""
    cipher = crypto.cipher(enc, key, iv4b=bool(flags & SaFlag.X_EXT_IV4B))
    mac = None if cipher.aead or auth == 0 else crypto.mac(auth, akey)
    return TransformSA(
        int(IpProto.ESP),
        spi,
        int(mode),
        SRC4,
        DST4,
        flags,
        window,
        enc,
        auth,
        cipher,
        mac,
        ctr_compatibility=ctr_compatibility,
    )


def runtime(sa: TransformSA) -> SaRuntime:
    return SaRuntime.for_sa(sa.window, esn=sa.esn, cycseq=sa.cycseq)


class FixedRandom:
    """An injected random source that hands out given bytes (an explicit IV), then zeros."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.asked: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.asked.append(n)
        if self.chunks:
            chunk = self.chunks.pop(0)
            assert len(chunk) == n, (len(chunk), n)
            return chunk
        return bytes(n)


#: The two ways ESP's IPv4 AEAD fast path runs: the compiled module, and pure Python.
PATHS = ("compiled", "pure")


def on_path(sa: TransformSA, path: str) -> TransformSA:
    """A copy of ``sa`` (same keyed objects) whose ESP plan takes ``path``: "compiled"
    (the ``espfast`` module; the SA must be one it serves) or "pure" (its reference)."""
    copy = replace(sa)
    plan = esp._Plan(copy, native=path == "compiled")
    if path == "compiled":
        assert plan.native is not None, "the compiled fast path does not serve this SA (or is not built)"
    object.__setattr__(copy, "plan", plan)
    return copy


def with_checksum(dg: bytearray) -> bytes:
    """``dg`` with its IPv4 header checksum made right."""
    dg[10:12] = b"\0\0"
    dg[10:12] = ip.inet_checksum(bytes(dg[:20])).to_bytes(2, "big")
    return bytes(dg)


def next_on_the_wire(op: str, n: int, clear: bytes, sender: Bound, sent: list[bytes], held: list[bytes]) -> bytes:
    """What the inbound property tests put on the wire next for ``clear`` (an outer
    datagram ``sender``, a transport-mode SA, protects): sent as is ("send"), held
    back while the one after it goes first ("hold"), a held one arriving late
    ("late"), an earlier one again ("replay"), a byte flipped past the outer header
    ("tamper"), cut short ("truncate"), another SPI ("spi"), or sent after the
    sender's sequence number jumped inside, behind or beyond the window ("jump");
    ``n`` picks the position, the bit or the jump.  ``sent`` and ``held`` are the
    test's record, updated here."""
    if op == "jump":
        # Anywhere but within 64 of the end: the sends that follow must not wrap the
        # sender's counter (a test has fewer than 64 of them).
        sender.state.seq = (sender.state.seq + n - 2**15) % ((U64 if sender.sa.esn else U32) - 64)
    wire = bundle.protect((sender,), clear, PacketKnobs(), Counters())
    assert isinstance(wire, bytes)
    sent.append(wire)
    if op == "hold":
        held.append(wire)
        wire = bundle.protect((sender,), clear, PacketKnobs(), Counters())
        assert isinstance(wire, bytes)
        sent.append(wire)
    elif op == "late" and held:
        wire = held.pop(n % len(held))
    elif op == "replay":
        wire = sent[n % len(sent)]
    elif op == "tamper":
        b = bytearray(wire)
        b[20 + n % (len(b) - 20)] ^= 1 << (n % 8)
        wire = bytes(b)
    elif op == "truncate":
        wire = with_checksum(bytearray(wire[: 20 + n % (len(wire) - 20)]))
        wire = wire[:2] + len(wire).to_bytes(2, "big") + wire[4:]
    elif op == "spi":
        wire = wire[:20] + (sender.sa.spi + 1 + n).to_bytes(4, "big") + wire[24:]
    return wire
