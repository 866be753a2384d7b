"""enc(4): the mask rule, the enc header, the pcap file (read back by scapy), and the
live enc0 whose copies an AF_PACKET capture (what tcpdump uses) sees."""

from __future__ import annotations

import io
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
import trio
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from scapy.utils import PcapReader, rdpcap

from pfkeyd.dataplane.enc import (
    DEFAULT_IN_MASK,
    DEFAULT_OUT_MASK,
    LINKTYPE_ENC,
    LINKTYPE_RAW,
    M_AUTH,
    M_CONF,
    Direction,
    EncInterface,
    EncRecord,
    EncTap,
    PcapWriter,
    Point,
    enc_flags,
    enchdr,
    shows,
)
from tests.netns import Pair

PLAIN4 = bytes(IP(src="10.1.0.1", dst="10.2.0.1") / UDP(sport=1, dport=2) / Raw(b"plaintext"))
OUTER4 = bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=4) / Raw(PLAIN4))
PLAIN6 = bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") / UDP(sport=1, dport=2) / Raw(b"six"))
ETH_P_ALL = 0x0003


def _all_points(spi: int = 0x1000) -> list[EncRecord]:
    return [
        EncRecord(direction=Direction.OUT, point=Point.BEFORE, datagram=PLAIN4, spi=spi, flags=M_CONF | M_AUTH),
        EncRecord(direction=Direction.OUT, point=Point.AFTER, datagram=OUTER4, spi=spi, flags=M_CONF | M_AUTH),
        EncRecord(direction=Direction.IN, point=Point.BEFORE, datagram=OUTER4, spi=spi + 1, flags=M_CONF),
        EncRecord(direction=Direction.IN, point=Point.AFTER, datagram=PLAIN4, spi=spi + 1, flags=M_CONF),
    ]


# ------------------------------------------------------------------------- pure
def test_default_masks_show_outbound_twice_and_inbound_before_decapsulation() -> None:
    assert (DEFAULT_IN_MASK, DEFAULT_OUT_MASK) == (1, 3)
    assert shows(Point.BEFORE, DEFAULT_OUT_MASK) and shows(Point.AFTER, DEFAULT_OUT_MASK)
    assert shows(Point.BEFORE, DEFAULT_IN_MASK) and not shows(Point.AFTER, DEFAULT_IN_MASK)


@pytest.mark.parametrize(
    ("mask", "before", "after"),
    [(0, False, False), (1, True, False), (2, False, True), (3, True, True), (4, False, False), (7, True, True)],
)
def test_mask_bit_1_is_before_and_bit_2_after_other_bits_ignored(mask: int, before: bool, after: bool) -> None:
    assert shows(Point.BEFORE, mask) is before
    assert shows(Point.AFTER, mask) is after


def test_tap_applies_the_mask_of_the_packets_direction() -> None:
    f = io.BytesIO()
    tap = EncTap(pcap=PcapWriter(f), in_mask=2, out_mask=1)
    shown = [tap(r, timestamp=1.0) for r in _all_points()]
    assert shown == [True, False, False, True]
    assert EncTap().wants(Direction.OUT, Point.BEFORE) is False  # nowhere to show it


def test_enchdr_layout_host_order_af_and_flags_network_order_spi() -> None:
    h = enchdr(PLAIN4, 0x01020304, M_CONF | M_AUTH)
    assert struct.unpack("=I", h[:4])[0] == 2
    assert h[4:8] == b"\x01\x02\x03\x04"
    assert struct.unpack("=I", h[8:])[0] == 0x0C00
    assert struct.unpack("=I", enchdr(PLAIN6, 0, 0)[:4])[0] == 28
    assert enc_flags(encrypts=True, authenticates=False) == M_CONF
    assert enc_flags(encrypts=False, authenticates=True) == M_AUTH


def test_pcap_raw_file_parses_with_scapy(tmp_path: Path) -> None:
    path = tmp_path / "enc.pcap"
    with open(path, "wb") as f:
        w = PcapWriter(f, LINKTYPE_RAW)
        w.write(EncRecord(direction=Direction.OUT, point=Point.BEFORE, datagram=PLAIN4), 1700000000.25)
        w.write(EncRecord(direction=Direction.IN, point=Point.BEFORE, datagram=PLAIN6), 1700000001.5)
    pkts = rdpcap(str(path))
    assert [bytes(p) for p in pkts] == [PLAIN4, PLAIN6]
    assert pkts[0][UDP].payload.load == b"plaintext"
    assert float(pkts[0].time) == pytest.approx(1700000000.25)
    assert float(pkts[1].time) == pytest.approx(1700000001.5)


def test_pcap_enc_file_carries_the_enc_header(tmp_path: Path) -> None:
    path = tmp_path / "enc.pcap"
    with open(path, "wb") as f:
        tap = EncTap(pcap=PcapWriter(f, LINKTYPE_ENC))
        for r in _all_points():
            tap(r, timestamp=5.0)
    with PcapReader(str(path)) as reader:
        assert reader.linktype == LINKTYPE_ENC
        records = [bytes(p) for p in reader]
    # default masks: OUT BEFORE, OUT AFTER, IN BEFORE
    assert len(records) == 3
    for rec, want in zip(records, _all_points()[:3]):
        af, flags = struct.unpack("=I", rec[:4])[0], struct.unpack("=I", rec[8:12])[0]
        assert (af, rec[4:8], flags) == (2, want.spi.to_bytes(4, "big"), want.flags)
        assert rec[12:] == want.datagram
        assert IP(rec[12:]).dst in ("10.2.0.1", "192.0.2.2")


def test_pcap_snaplen_cuts_records_and_keeps_the_original_length(tmp_path: Path) -> None:
    f = io.BytesIO()
    PcapWriter(f, LINKTYPE_RAW, snaplen=20).write(
        EncRecord(direction=Direction.OUT, point=Point.BEFORE, datagram=PLAIN4), 0.0
    )
    raw = f.getvalue()
    incl, orig = struct.unpack("=II", raw[24 + 8 : 24 + 16])
    assert (incl, orig) == (20, len(PLAIN4))
    assert len(raw) == 24 + 16 + 20


def test_pcap_refuses_other_link_types() -> None:
    with pytest.raises(ValueError):
        PcapWriter(io.BytesIO(), 1)


# ------------------------------------------------------------------------ live
async def test_copies_show_on_enc0_to_a_packet_capture(netpair: Pair, tmp_path: Path) -> None:
    ns = netpair.a
    clean = ns.snapshot()
    with ns.inside():
        enc0 = EncInterface("enc0")
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.htons(ETH_P_ALL))
        cap.bind(("enc0", ETH_P_ALL))
        cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    try:
        with open(tmp_path / "enc0.pcap", "wb") as f:
            tap = EncTap(enc0, PcapWriter(f, LINKTYPE_ENC))
            records = _all_points() * 25 + [
                EncRecord(direction=Direction.OUT, point=Point.BEFORE, datagram=PLAIN6, spi=7)
            ]
            for r in records:
                tap(r)
        expected = [r.datagram for r in records if tap.wants(r.direction, r.point)]
        assert len(expected) == 76  # far more than the TUN's queue of 16: captures see them all
        seen: list[bytes] = []
        while len(seen) < len(expected):
            await trio.lowlevel.wait_readable(cap)
            while True:
                try:
                    data, addr = cap.recvfrom(65535)
                except BlockingIOError:
                    break
                seen.append(data)
                assert addr[0] == "enc0" and addr[2] == socket.PACKET_OUTGOING
                assert addr[1] == (0x86DD if data[0] >> 4 == 6 else 0x0800)
        assert seen == expected
        # nothing else: the kernel itself sends nothing on enc0
        with pytest.raises(BlockingIOError):
            cap.recv(65535)
        assert enc0.counters.snapshot() == {"enc.send": 76}
        assert len(rdpcap(str(tmp_path / "enc0.pcap"))) == 76
    finally:
        cap.close()
        enc0.close()
    assert ns.snapshot() == clean  # enc0 went with its descriptor


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed (.ci/run installs it)")
async def test_tcpdump_sees_the_plaintext_on_enc0(netpair: Pair, tmp_path: Path) -> None:
    ns = netpair.a
    with ns.inside():
        enc0 = EncInterface("enc0")
    try:
        tap = EncTap(enc0)
        # -Z root: tcpdump keeps its privileges (it would drop them before writing);
        # -U: each packet written at once; -c 3: it exits after the three we expect.
        argv = ns.argv("tcpdump", "-n", "-i", "enc0", "-U", "-c", "3", "-Z", "root", "-w", "-")
        with trio.fail_after(30):
            proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                assert proc.stdout is not None and proc.stderr is not None
                said = b""
                while b"listening on" not in said:  # tcpdump reports when the capture is live
                    chunk = await proc.stderr.receive_some(4096)
                    assert chunk, said
                    said += chunk
                for r in _all_points():
                    tap(r)
                out = b""
                while chunk := await proc.stdout.receive_some(65536):
                    out += chunk
                await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0
    finally:
        enc0.close()
    (tmp_path / "tcpdump.pcap").write_bytes(out)
    pkts = rdpcap(str(tmp_path / "tcpdump.pcap"))
    assert [bytes(p) for p in pkts] == [r.datagram for r in _all_points()[:3]]
    assert pkts[0][UDP].payload.load == b"plaintext"
