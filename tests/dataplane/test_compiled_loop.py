"""The data plane's compiled loop (``pfkeyd.packet.espfast.Loop``) over real sockets.

The loop, together with the Python path for what it hands back, must do exactly
what the Python path alone does: the same bytes on the wire, the same inner
datagrams into the TUN, the same drops, counters and SA state.  The TUN is one end
of a SOCK_SEQPACKET pair (one datagram per read, as a TUN gives); the raw sockets
live in a network namespace of the test's own, whose loopback carries the ESP
datagrams (the SA's ends are 127.0.0.1), so nothing leaves the machine.  The
reference is the one-step tunnel path of :mod:`pfkeyd.packet.fasttunnel`, itself
held equal to the general bundle path and checked against scapy elsewhere.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from pfkeyd.dataplane.io import IoCounters, RawReceiver, RawSender
from pfkeyd.dataplane.plane import flow_bytes, parse_flow
from pfkeyd.packet import bundle, esp, fasttunnel
from pfkeyd.packet.bundle import Accepted, Bound
from pfkeyd.packet.counters import ESP, Counters, Drop
from pfkeyd.packet.crypto import espfast
from pfkeyd.packet.ip import PacketKnobs, inet_checksum
from pfkeyd.packet.runtime import U32
from pfkeyd.packet.sa import TransformSA
from pfkeyd.wire.constants import EncAlg, Mode
from tests.netns import Namespace, skip_reason
from tests.packet.esp_helpers import FixedRandom, esp_sa, next_on_the_wire, on_path, runtime, v4, with_checksum
from tests.packet.test_fasttunnel import _OPS, _receiver, _same, tunnel_sas

LO = bytes([127, 0, 0, 1])
INNER = (bytes([10, 1, 0, 1]), bytes([10, 2, 0, 1]))

pytestmark = pytest.mark.skipif(espfast is None, reason="the compiled module was not built")


@dataclass
class Wires:
    """Sockets in a namespace of their own: the TUN pair, a raw sender, a raw ESP
    receiver (the loop's, for inbound), a raw ESP capture (what went out)."""

    ns: Namespace
    tun: socket.socket  # the loop's end
    kernel: socket.socket  # the kernel's end: what is written here, the loop reads
    idle: socket.socket  # a receiver that never receives (the outbound tests' loop)
    idle_peer: socket.socket
    sender: RawSender
    receiver: RawReceiver
    capture: socket.socket
    io: IoCounters

    def captured(self, n: int) -> list[bytes]:
        """The next ``n`` ESP datagrams on the loopback (each waited for, 2 s at most)."""
        out = []
        for _ in range(n):
            ready, _w, _x = select.select([self.capture], [], [], 2.0)
            assert ready, "a datagram the loop sent never arrived"
            out.append(self.capture.recv(65535))
        return out

    def inject(self, dg: bytes) -> None:
        assert self.sender.send_now(dg)

    def from_tun(self) -> bytes | None:
        """What the loop wrote into the TUN, if anything (it writes before wait() returns)."""
        try:
            return self.kernel.recv(65535, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None


def _open_wires() -> Wires:
    ns = Namespace("loop")
    io = IoCounters()
    try:
        ns.run("ip", "link", "set", "lo", "up")
        with ns.inside():
            sender = RawSender(socket.AF_INET, 0, io)
            receiver = RawReceiver(socket.AF_INET, 50, io)
            capture = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    except BaseException:
        ns.remove()  # the sockets opened so far close with their objects
        raise
    tun, kernel = _tun_pair()
    idle, idle_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (tun, kernel, idle):
        s.setblocking(False)
    return Wires(ns, tun, kernel, idle, idle_peer, sender, receiver, capture, io)


@pytest.fixture(scope="module")
def wires() -> Iterator[Wires]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    w = _open_wires()
    try:
        yield w
    finally:
        for s in (w.tun, w.kernel, w.idle, w.idle_peer, w.capture):
            s.close()
        w.sender.close()
        w.receiver.close()
        w.ns.remove()


def _drain(w: Wires) -> None:
    for s in (w.capture, w.kernel):
        while True:
            try:
                s.recv(65535, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
    w.receiver.receive_now()


class Generation:
    """What the loop watches (the engine's generation, in the daemon)."""

    def __init__(self, value: int = 0) -> None:
        self.value = value


def _tun_pair() -> tuple[socket.socket, socket.socket]:
    """A stand-in TUN for one test: the loop's end (non-blocking, as the loop
    requires) and the kernel's."""
    tun, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tun.setblocking(False)
    return tun, kernel


def _loop(
    w: Wires, counters: Counters, *, inbound: bool = False, tun: socket.socket | None = None, vnet: bool = False
) -> espfast.Loop:
    g = Generation()
    rx = w.receiver if inbound else w.idle
    loop = espfast.Loop(tun or w.tun, rx, w.sender, counters.table(ESP), w.io.table(), ((g, "value"),), vnet=vnet)
    loop.reset((g.value,))
    return loop


def _at_tunnel_ends(sa: TransformSA) -> TransformSA:
    return on_path(replace(sa, src=LO, dst=LO), "compiled")


def _add_out(loop: espfast.Loop, key13: bytes, b: Bound, knobs: PacketKnobs) -> bool:
    plan = esp.plan_of(b.sa)
    assert plan.native is not None
    return loop.add_out(
        key13, plan.native, b.state, b.sa.src, b.sa.dst, knobs.ttl, knobs.dfbit, knobs.ecn, plan.wrap_mask
    )


def _key_of(dg: bytes) -> bytes:
    key = parse_flow(dg)
    assert key is not None
    return flow_bytes(key)


def _python_out(b: Bound, dg: bytes, knobs: PacketKnobs, counters: Counters) -> bytes | Drop:
    """The Python path on an outbound datagram (IDs drawn as zeros)."""
    got = fasttunnel.protect((b,), dg, knobs, counters, random=FixedRandom())
    if got is None:
        got = bundle.protect((b,), dg, knobs, counters, random=FixedRandom())
    return got


# ---------------------------------------------------------------- outbound


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tunnel_sas(),
    st.lists(
        st.tuples(
            st.sampled_from([6, 17, 1, 132, 136, 47]),
            st.binary(min_size=0, max_size=200),
            st.integers(0, 255),  # TOS
            st.sampled_from([0, 0x4000, 0x2000, 0x0001]),  # flags and fragment offset
            st.sampled_from(["ok", "ok", "ok", "badsum", "not-installed"]),
        ),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 2),
    st.sampled_from([-1, 0, 1]),
    st.sampled_from([0, U32 - 2]),
)
def test_outbound_the_loop_and_the_python_path_send_the_same_bytes(
    wires: Wires,
    sa: TransformSA,
    datagrams: list[tuple[int, bytes, int, int, str]],
    dfbit: int,
    ecn: int,
    seq: int,
) -> None:
    _drain(wires)
    sa = _at_tunnel_ends(sa)
    knobs = PacketKnobs(dfbit=dfbit, ecn=ecn)
    mine, ref = Bound(sa, runtime(sa)), Bound(sa, runtime(sa))
    mine.state.seq = ref.state.seq = seq
    mc, rc = Counters(), Counters()
    loop = _loop(wires, mc)
    installed: set[bytes] = set()
    batch = []
    for proto, payload, tos, frag, how in datagrams:
        dg = bytearray(v4(proto, payload, *INNER, tos=tos))
        dg[6:8] = frag.to_bytes(2, "big")
        dg = bytearray(with_checksum(dg))
        if how != "not-installed":
            key = _key_of(bytes(dg))
            installed.add(key)
            assert _add_out(loop, key, mine, knobs)
        if how == "badsum":
            dg[10] ^= 0xFF
        batch.append(bytes(dg))
        wires.kernel.send(bytes(dg))
    items = loop.wait(1.0)
    # What came back is the batch from the first datagram the loop did not take on,
    # untouched and in order.
    assert all(i[0] == espfast.ITEM_TUN for i in items), items
    back = [i[1] for i in items]
    taken = len(batch) - len(back)
    assert back == batch[taken:]
    assert loop.fast_out == taken
    # The reference: the one-step path, with the IDs the loop drew.
    for inner, out in zip(batch[:taken], wires.captured(taken), strict=True):
        assert fasttunnel.protect((ref,), inner, knobs, rc, random=FixedRandom(out[4:6])) == out
    if back:
        # ... and the first one handed back was not the loop's to take: a wrong header
        # checksum (the Python path repairs it), a flow not installed, or a sequence
        # counter at its end (the Python path counts the wrap).
        first = back[0]
        mask = esp.plan_of(sa).wrap_mask
        assert ip_checksum_wrong(first) or _key_of(first) not in installed or (mask and mine.state.seq & mask == mask)
    for inner in back:  # what plane.py does with them
        assert _python_out(mine, inner, knobs, mc) == _python_out(ref, inner, knobs, rc)
    assert mc.snapshot() == rc.snapshot()
    assert mine.state.snapshot() == ref.state.snapshot()
    loop.close()


def ip_checksum_wrong(dg: bytes) -> bool:
    return inet_checksum(dg[:20]) != 0


def test_a_send_the_socket_refuses_is_handed_back_protected_and_counted(wires: Wires) -> None:
    _drain(wires)
    sa = on_path(replace(_at_tunnel_ends(_sa()), dst=bytes([192, 0, 2, 9])), "compiled")
    b = Bound(sa, runtime(sa))
    c = Counters()
    loop = _loop(wires, c)
    dg = v4(17, b"\0\1\0\2" + b"x" * 40, *INNER)
    assert _add_out(loop, _key_of(dg), b, PacketKnobs())
    wires.kernel.send(dg)
    # No route to 192.0.2.9 in the namespace: sendto fails, and the Python sender
    # (which counts the errno) is handed the protected datagram.
    (item,) = loop.wait(1.0)
    assert item[0] == espfast.ITEM_SEND and item[1][9] == 50 and item[1][16:20] == bytes([192, 0, 2, 9])
    assert b.state.seq == 1 and c[f"{ESP}.output"] == 1 and b.state.packets == 1
    assert wires.sender.send_now(item[1]) is False
    assert wires.io["raw4.drop.ENETUNREACH"] >= 1
    loop.close()


def _sa() -> TransformSA:
    return esp_sa(EncAlg.X_AESGCM16, bytes(range(20)), mode=Mode.TUNNEL)


# ---------------------------------------------------------------- inbound


def _outcome(
    w: Wires,
    items: list[tuple[int, object, object, object]],
    received: bytes,
    mine: Bound,
    lookup: bundle.Lookup,
    knobs: PacketKnobs,
    counters: Counters,
    allowed: set[bytes],
) -> Accepted | Drop | None:
    """What the loop and the Python path together made of ``received``: the inner
    datagram the loop wrote to the TUN, or what the Python path made of what the
    loop handed back (as plane.py runs it); None when the loop dropped it itself."""
    written = w.from_tun()
    if not items:  # the loop took it: written to the TUN, or dropped and counted
        if written is None:
            return None
        assert _key_of(written) in allowed
        return Accepted(written, (mine,))
    assert written is None
    ((kind, a, b, c),) = items
    assert isinstance(a, bytes)
    if kind == espfast.ITEM_ESP:
        assert a == received
        got = fasttunnel.unprotect(received, lookup, knobs, counters)
        return got if got is not None else bundle.unprotect(received, lookup, knobs, counters)
    assert b is mine and c == received
    if kind == espfast.ITEM_OPENED:
        return fasttunnel.finish(received, a, mine, lookup, knobs, counters)
    assert kind == espfast.ITEM_ACCEPT and _key_of(a) not in allowed
    return Accepted(a, (mine,))


def _arrive(w: Wires, loop: espfast.Loop, wire: bytes) -> tuple[bytes, list[tuple[int, object, object, object]]]:
    """Inject ``wire`` on the loopback; the datagram as delivered (the kernel fills in
    the outer header's length, checksum and ID) and what the loop handed back."""
    before = w.io["raw4.50.receive"]
    w.inject(wire)
    received = w.captured(1)[0]
    items: list[tuple[int, object, object, object]] = []
    for _ in range(100):  # the loop's socket has it once the capture has
        if w.io["raw4.50.receive"] != before:
            break
        items += loop.wait(1.0)
    assert w.io["raw4.50.receive"] == before + 1
    return received, items


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tunnel_sas(),
    st.sampled_from([0, 32, 64, 128]),
    st.lists(
        st.tuples(
            _OPS,
            st.sampled_from([4, 4, 4, 41, 50]),  # the outer datagram's next header
            st.binary(max_size=80),
            st.sampled_from([0, 0, 2, 1, 3]),  # outer ECN
            st.sampled_from([0, 0, 0, 4]),  # TFC padding behind the inner datagram
            st.sampled_from([17, 17, 6, 50, 4]),  # the inner protocol
            st.one_of(st.integers(2**15 - 80, 2**15 + 80), st.integers(0, 2**16)),
            st.booleans(),  # whether the inner flow is allowed in the loop
        ),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([-1, 0, 1]),
)
def test_inbound_the_loop_and_the_python_path_accept_and_drop_the_same(
    wires: Wires,
    sa: TransformSA,
    window: int,
    ops: list[tuple[str, int, bytes, int, int, int, int, bool]],
    ecn: int,
) -> None:
    _drain(wires)
    sa = on_path(replace(_at_tunnel_ends(sa), window=window), "compiled")
    sender = Bound(on_path(replace(sa, mode=Mode.TRANSPORT), "pure"), runtime(sa))
    mine, lookup = _receiver(sa)
    ref, ref_lookup = _receiver(on_path(sa, "compiled"))
    knobs = PacketKnobs(ecn=ecn)
    mc, rc = Counters(), Counters()
    loop = _loop(wires, mc, inbound=True)
    native = esp.plan_of(sa).native
    assert native is not None
    assert loop.add_in(sa.spi, native, mine.state, mine, LO)
    sent: list[bytes] = []
    held: list[bytes] = []
    allowed_keys: set[bytes] = set()
    for op, outer_proto, payload, outer_ecn, tfc, inner_proto, n, allowed in ops:
        inner = v4(inner_proto, payload, *INNER) if outer_proto == 4 else payload
        if allowed and outer_proto == 4:
            assert loop.allow_in(_key_of(inner))
            allowed_keys.add(_key_of(inner))
        clear = v4(outer_proto, inner + bytes(tfc), LO, LO, tos=outer_ecn)
        wire = next_on_the_wire(op, n, clear, sender, sent, held)
        received, items = _arrive(wires, loop, wire)
        want = fasttunnel.unprotect(received, ref_lookup, knobs, rc)
        if want is None:
            want = bundle.unprotect(received, ref_lookup, knobs, rc)
        got = _outcome(wires, items, received, mine, lookup, knobs, mc, allowed_keys)
        if got is None:
            assert isinstance(want, Drop)
        else:
            _same(got, want)
        assert mc.snapshot() == rc.snapshot()
        assert mine.state.snapshot() == ref.state.snapshot()
    assert loop.fast_in <= len(ops)
    loop.close()


# ------------------------------------------------------------- the Python side


def test_a_moved_stamp_empties_the_tables_until_reset(wires: Wires) -> None:
    _drain(wires)
    sa = _at_tunnel_ends(_sa())
    b = Bound(sa, runtime(sa))
    c = Counters()
    g = Generation(1)
    loop = espfast.Loop(wires.tun, wires.idle, wires.sender, c.table(ESP), wires.io.table(), ((g, "value"),))
    assert loop.stale and not _add_out(loop, bytes(13), b, PacketKnobs())  # nothing before the first reset
    loop.reset((1,))
    dg = v4(17, b"\0\1\0\2" + b"y" * 20, *INNER)
    assert _add_out(loop, _key_of(dg), b, PacketKnobs()) and loop.allow_in(_key_of(dg))
    assert loop.sizes == (1, 0, 1)
    wires.kernel.send(dg)
    assert loop.wait(1.0) == [] and loop.fast_out == 1
    wires.captured(1)
    g.value = 2  # the SAD moved: the next wake-up forgets everything
    wires.kernel.send(dg)
    assert loop.wait(1.0) == [(espfast.ITEM_TUN, dg, None, None)]
    assert loop.stale and loop.sizes == (0, 0, 0) and loop.holding
    assert not _add_out(loop, _key_of(dg), b, PacketKnobs())
    loop.reset((2,))
    assert _add_out(loop, _key_of(dg), b, PacketKnobs())
    wires.kernel.send(dg)
    assert loop.wait(1.0) == [] and loop.fast_out == 2 and not loop.holding
    wires.captured(1)
    loop.close()


def test_watched_descriptors_come_back_as_items_and_a_refused_write_too(wires: Wires) -> None:
    _drain(wires)
    c = Counters()
    loop = _loop(wires, c, inbound=True)
    r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        loop.watch(r)
        assert loop.wait(0) == []
        w.send(b"x")
        assert loop.wait(1.0) == [(espfast.ITEM_FD, r.fileno(), None, None)]
        r.recv(1)
    finally:
        r.close()
        w.close()
    # The TUN's peer gone: the write fails and the accepted datagram is handed back.
    sa = on_path(replace(_at_tunnel_ends(_sa()), window=32), "compiled")
    sender = Bound(on_path(replace(sa, mode=Mode.TRANSPORT), "pure"), runtime(sa))
    mine, _ = _receiver(sa)
    native = esp.plan_of(sa).native
    assert native is not None and loop.add_in(sa.spi, native, mine.state, mine, LO)
    inner = v4(17, b"\0\5\0\6zz", *INNER)
    assert loop.allow_in(_key_of(inner))
    wire = bundle.protect((sender,), v4(4, inner, LO, LO), PacketKnobs(), Counters())
    assert isinstance(wire, bytes)
    tun, kernel = _tun_pair()
    kernel.close()
    try:
        loop2 = _loop(wires, c, inbound=True, tun=tun)
        assert loop2.add_in(sa.spi, native, mine.state, mine, LO) and loop2.allow_in(_key_of(inner))
        _received, items = _arrive(wires, loop2, wire)
        assert items == [(espfast.ITEM_WRITE, inner, None, None)]
        assert mine.state.packets == 1 and loop2.fast_in == 1
        loop2.close()
    finally:
        tun.close()
    loop.close()


def test_the_loop_refuses_what_it_cannot_carry(wires: Wires) -> None:
    c = Counters()
    loop = _loop(wires, c)
    sa = _at_tunnel_ends(_sa())
    b = Bound(sa, runtime(sa))
    native = esp.plan_of(sa).native
    assert native is not None
    with pytest.raises(ValueError, match="13 bytes"):
        loop.add_out(bytes(12), native, b.state, LO, LO, 64, 0, 0, U32)
    with pytest.raises(ValueError, match="4 bytes"):
        loop.add_out(bytes(13), native, b.state, bytes(16), LO, 64, 0, 0, U32)
    with pytest.raises(TypeError, match="EspV4"):
        loop.add_in(1, object(), b.state, b, LO)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bits"):
        loop.add_in(2**32, native, b.state, b, LO)
    with pytest.raises(ValueError, match="13 bytes"):
        loop.allow_in(b"short")
    with pytest.raises(TypeError):
        espfast.Loop(wires.tun, wires.idle, wires.sender, {}, {}, ((1, 2),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one value per watched"):
        loop.reset((1, 2))
    blocking, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with pytest.raises(ValueError, match="non-blocking"):
            espfast.Loop(blocking, wires.idle, wires.sender, {}, {}, ())
    finally:
        blocking.close()
        peer.close()
    loop.close()
    with pytest.raises(ValueError, match="closed"):
        loop.wait(0)
    assert wires.tun.fileno() >= 0  # the descriptors stay the caller's


# ------------------------------------------------------- the TUN's offloads


def _segments(n: int, *, mss: int = 1000, seq: int = 7000, flags: str = "A", sport: int = 40000) -> list[bytes]:
    """``n`` consecutive full TCP/IPv4 segments of one flow, built by scapy."""
    out = []
    for i in range(n):
        p = IP(src="10.2.0.1", dst="10.1.0.1", id=100 + i, flags="DF") / TCP(
            sport=sport, dport=5001, seq=seq + i * mss, ack=1, flags=flags, window=500
        )
        out.append(bytes(p / Raw(bytes([i]) * mss)))
    return out


def _gro_receiver(w: Wires, tun: socket.socket, counters: Counters) -> tuple[espfast.Loop, Bound, Bound]:
    """A loop on an offloading "TUN" with an ESP tunnel SA installed inbound: the
    loop, the sending side of the SA, and the receiving side the loop uses."""
    loop = _loop(w, counters, inbound=True, tun=tun, vnet=True)
    sa = on_path(replace(_at_tunnel_ends(_sa()), window=64), "compiled")
    sender = Bound(on_path(replace(sa, mode=Mode.TRANSPORT), "pure"), runtime(sa))
    mine, _ = _receiver(sa)
    native = esp.plan_of(sa).native
    assert native is not None and loop.add_in(sa.spi, native, mine.state, mine, LO)
    return loop, sender, mine


def test_consecutive_segments_reach_the_tun_joined_and_cut_back_they_are_the_originals(wires: Wires) -> None:
    """GRO on a TUN with offloads: a batch of segments of one flow is written as one
    frame (GSO_TCPV4, gso_size the segments' payload, the checksum left to finish);
    cut again as the kernel would (tun_frames), it gives back exactly the segments
    scapy built.  A segment of another flow, or one with PSH, ends the run."""
    _drain(wires)
    c = Counters()
    tun, kernel = _tun_pair()
    try:
        loop, sender, mine = _gro_receiver(wires, tun, c)
        run = _segments(5)
        other = _segments(1, sport=40001)
        last = _segments(1, seq=7000 + 5 * 1000, flags="PA")
        for dg in [*run, *other, *last]:
            assert loop.allow_in(_key_of(dg))
        written = wires.io["tun.write"]
        for dg in [*run, *other, *last]:
            wire = bundle.protect((sender,), v4(4, dg, LO, LO), PacketKnobs(), Counters())
            assert isinstance(wire, bytes)
            wires.inject(wire)
        wires.captured(7)
        for _ in range(100):  # the loop's socket has them once the capture has
            if wires.io["tun.write"] == written + 7:
                break
            assert loop.wait(1.0) == []
        assert wires.io["tun.write"] == written + 7
        frames = []
        while True:
            try:
                frames.append(kernel.recv(70000, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break
        # The run of five joined; the other flow's segment alone; the PSH one alone
        # (the run it would continue was cut by the other flow).
        assert len(frames) == 3
        flags, gso, hdr_len, size, start, offset = struct.unpack("<BBHHHH", frames[0][:10])
        assert (flags, gso, hdr_len, size, start, offset) == (1, 1, 40, 1000, 20, 16)
        joined = frames[0][10:]
        assert len(joined) == 40 + 5 * 1000 and inet_checksum(joined[:20]) == 0
        assert espfast.tun_frames(frames[0]) == run
        assert frames[1] == bytes(10) + other[0] and frames[2] == bytes(10) + last[0]
        assert loop.fast_in == 7 and mine.state.packets == 7
        loop.close()
    finally:
        tun.close()
        kernel.close()


def test_a_joined_run_the_tun_refuses_is_handed_back_as_its_segments(wires: Wires) -> None:
    _drain(wires)
    c = Counters()
    tun, kernel = _tun_pair()
    kernel.close()  # every write fails
    try:
        loop, sender, mine = _gro_receiver(wires, tun, c)
        run = _segments(3)
        assert loop.allow_in(_key_of(run[0]))
        for dg in run:
            wire = bundle.protect((sender,), v4(4, dg, LO, LO), PacketKnobs(), Counters())
            assert isinstance(wire, bytes)
            wires.inject(wire)
        wires.captured(3)
        items: list[tuple[int, object, object, object]] = []
        while len(items) < 3:
            got = loop.wait(1.0)
            assert got, "the loop never handed the refused run back"
            items += got
        assert items == [(espfast.ITEM_WRITE, dg, None, None) for dg in run]
        assert mine.state.packets == 3  # opened and counted: only the write is the Python side's
        loop.close()
    finally:
        tun.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=1600), min_size=1, max_size=8), st.booleans())
def test_whatever_the_tun_gives_is_taken_or_handed_back_never_a_crash(
    wires: Wires, junk: list[bytes], vnet: bool
) -> None:
    """Arbitrary frames on the TUN, with or without offloads, half of them dressed as
    datagrams of the installed flow: what the loop does not take comes back
    untouched (as tun_frames makes it, with offloads), and it never fails."""
    _drain(wires)
    c = Counters()
    tun, kernel = _tun_pair()
    try:
        loop = _loop(wires, c, tun=tun, vnet=vnet)
        sa = _at_tunnel_ends(_sa())
        b = Bound(sa, runtime(sa))
        for raw in junk:
            dg = v4(17, raw, *INNER) if len(raw) % 2 else raw
            if len(raw) % 2:
                assert _add_out(loop, _key_of(dg), b, PacketKnobs())
            frame = (bytes(10) if vnet else b"") + (dg if len(raw) % 3 else raw)
            kernel.send(frame)
            items = loop.wait(1.0)
            expected = espfast.tun_frames(frame) if vnet else [frame]
            assert all(i[0] == espfast.ITEM_TUN for i in items)
            handed = [i[1] for i in items]
            if handed:
                assert expected is not None and handed == expected[len(expected) - len(handed) :]
        wires.captured(loop.fast_out)
        loop.close()
    finally:
        tun.close()
        kernel.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=1600), min_size=1, max_size=6))
def test_whatever_arrives_as_esp_is_dropped_or_handed_back_never_a_crash(wires: Wires, junk: list[bytes]) -> None:
    """Arbitrary ESP datagrams for the installed SPI (and others) on the wire: each is
    dropped and counted (it fails the ICV) or handed back, and the loop never fails."""
    _drain(wires)
    c = Counters()
    tun, kernel = _tun_pair()
    try:
        loop = _loop(wires, c, inbound=True, tun=tun, vnet=True)
        sa = on_path(replace(_at_tunnel_ends(_sa()), window=64), "compiled")
        b = Bound(sa, runtime(sa))
        native = esp.plan_of(sa).native
        assert native is not None and loop.add_in(sa.spi, native, b.state, b, LO)
        for raw in junk:
            spi = sa.spi if len(raw) % 2 else sa.spi + 1
            _received, items = _arrive(wires, loop, v4(50, spi.to_bytes(4, "big") + raw, LO, LO))
            assert all(i[0] == espfast.ITEM_ESP for i in items)
        assert loop.fast_in == 0 and wires.from_tun() is None
        assert c["esp.input"] == 0
        loop.close()
    finally:
        tun.close()
        kernel.close()
