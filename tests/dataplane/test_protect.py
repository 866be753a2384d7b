"""pfkeyd protects real traffic: two namespaces, each running ``pfkeyd --dataplane``.

Each test starts the two daemons (tests/dataplane/hosts.py), keys them with
``setkey -f`` scripts (manual keys), and sends traffic between addresses that exist
only in the namespaces: ICMP echoes and a TCP transfer of a few MB whose content is
checked at the receiver.  A capture on the veth between them must show nothing but
protected packets, and those must verify and decrypt with scapy, an independent
implementation, under the keys ``setkey -D`` prints.  The daemons are stopped with
SIGTERM and must leave no link, rule or route behind.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import IP, defrag

from tests.dataplane.hosts import ROOT, Host, hosts
from tests.dataplane.wire import (
    Capture,
    is_neighbour_discovery,
    parse,
    protected,
    sas_from_dump,
    scapy_sa,
    spi_of,
)
from tests.netns import Namespace, Pair

GCM = "0x" + "11" * 20
GCM2 = "0x" + "22" * 20
SHA256 = "0x" + "33" * 32
SHA256B = "0x" + "44" * 32
MB = 3 * 1024 * 1024
INNER4 = ("10.1.0.1", "10.2.0.1")
INNER6 = ("fd00:1::1", "fd00:2::1")
OUTER4 = Pair.V4
OUTER6 = Pair.V6


def add_lo(ns: Namespace, *addrs: str) -> None:
    with ns.inside(), IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for a in addrs:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            ipr.addr("add", index=lo, address=a, prefixlen=128 if fam == socket.AF_INET6 else 32, family=fam)


def sa_lines(proto: str, outer: tuple[str, str], algs: str, mode: str = "", replay: str = "") -> str:
    a, b = outer
    m = f"-m {mode} " if mode else ""
    k2 = algs.replace(GCM, GCM2).replace(SHA256, SHA256B)
    return f"add {a} {b} {proto} 0x1001 {m}{replay}{algs};\nadd {b} {a} {proto} 0x1002 {m}{replay}{k2};\n"


def policies(inner: tuple[str, str], request: str, me: int, plen: str = "") -> str:
    """Out and in policies for host ``me`` (0 = a); ``{l}``/``{r}`` in ``request`` are
    replaced by the outer addresses in that direction."""
    mine, other = inner[me], inner[1 - me]
    return (
        f"spdadd {mine}{plen} {other}{plen} any -P out ipsec {request.format(d='out')};\n"
        f"spdadd {other}{plen} {mine}{plen} any -P in ipsec {request.format(d='in')};\n"
    )


@dataclass
class Scenario:
    name: str
    sas: str
    request_out: tuple[str, str]  # host a's and host b's outbound request
    request_in: tuple[str, str]
    ends: tuple[str, str]  # the addresses traffic runs between
    selectors: tuple[str, str]
    plen: str = ""
    inner_on_lo: bool = False


def _tunnel(outer: tuple[str, str], proto: str = "esp") -> tuple[tuple[str, str], tuple[str, str]]:
    a, b = outer
    out = (f"{proto}/tunnel/{a}-{b}/require", f"{proto}/tunnel/{b}-{a}/require")
    inn = (f"{proto}/tunnel/{b}-{a}/require", f"{proto}/tunnel/{a}-{b}/require")
    return out, inn


SCENARIOS = [
    Scenario(
        "esp-transport",
        sa_lines("esp", OUTER4, f"-E aes-gcm-16 {GCM}"),
        ("esp/transport//require",) * 2,
        ("esp/transport//require",) * 2,
        OUTER4,
        OUTER4,
    ),
    Scenario(
        "esp-tunnel-4in4",
        sa_lines("esp", OUTER4, f"-E aes-gcm-16 {GCM}", "tunnel"),
        *_tunnel(OUTER4),
        INNER4,
        ("10.1.0.0", "10.2.0.0"),
        "/24",
        True,
    ),
    Scenario(
        "esp-tunnel-6in6",
        sa_lines("esp", OUTER6, f"-E aes-cbc 0x{'55' * 16} -A hmac-sha2-256 {SHA256}", "tunnel"),
        *_tunnel(OUTER6),
        INNER6,
        ("fd00:1::", "fd00:2::"),
        "/64",
        True,
    ),
    Scenario(
        "esp-tunnel-6in4",
        sa_lines("esp", OUTER4, f"-E aes-gcm-16 {GCM}", "tunnel"),
        *_tunnel(OUTER4),
        INNER6,
        ("fd00:1::", "fd00:2::"),
        "/64",
        True,
    ),
    Scenario(
        "ah-transport",
        sa_lines("ah", OUTER4, f"-A hmac-sha2-256 {SHA256}"),
        ("ah/transport//require",) * 2,
        ("ah/transport//require",) * 2,
        OUTER4,
        OUTER4,
    ),
    Scenario(
        "ipcomp-esp-tunnel",
        f"add {OUTER4[0]} {OUTER4[1]} ipcomp 0x2001 -m tunnel -C deflate;\n"
        f"add {OUTER4[1]} {OUTER4[0]} ipcomp 0x2002 -m tunnel -C deflate;\n"
        + sa_lines("esp", OUTER4, f"-E aes-gcm-16 {GCM}"),
        (
            f"ipcomp/tunnel/{OUTER4[0]}-{OUTER4[1]}/use esp/transport//require",
            f"ipcomp/tunnel/{OUTER4[1]}-{OUTER4[0]}/use esp/transport//require",
        ),
        (
            f"ipcomp/tunnel/{OUTER4[1]}-{OUTER4[0]}/use esp/transport//require",
            f"ipcomp/tunnel/{OUTER4[0]}-{OUTER4[1]}/use esp/transport//require",
        ),
        INNER4,
        ("10.1.0.0", "10.2.0.0"),
        "/24",
        True,
    ),
    Scenario(
        "esp-udp-natt",
        sa_lines("esp-udp", OUTER4, f"-E aes-gcm-16 {GCM}", "tunnel"),
        *_tunnel(OUTER4),
        INNER4,
        ("10.1.0.0", "10.2.0.0"),
        "/24",
        True,
    ),
]


def key(scn: Scenario, a: Host, b: Host) -> None:
    for me, h in enumerate((a, b)):
        mine, other = scn.selectors[me], scn.selectors[1 - me]
        h.setkey(
            scn.sas
            + f"spdadd {mine}{scn.plen} {other}{scn.plen} any -P out ipsec {scn.request_out[me]};\n"
            + f"spdadd {other}{scn.plen} {mine}{scn.plen} any -P in ipsec {scn.request_in[me]};\n"
        )


def transfer(a: Host, b: Host, src: str, dst: str, nbytes: int = MB, port: int = 5001) -> None:
    server = b.popen("serve", dst, str(port))
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        sent = a.traffic("send", src, dst, str(port), str(nbytes))
        assert sent.returncode == 0, sent.stderr
        out, err = server.communicate(timeout=60)
        assert server.returncode == 0, err
    finally:
        if server.poll() is None:
            server.kill()
    n, digest = out.split()
    assert (int(n), digest) == (nbytes, sent.stdout.split()[1])


def ping(a: Host, src: str, dst: str, count: int = 3) -> list[float]:
    r = a.traffic("ping", src, dst, str(count))
    assert r.returncode == 0, (r.stdout, r.stderr, a.output())
    return [float(x) for x in r.stdout.split()]


#: Every scenario as the daemon runs it, and the one-step tunnel once more with every
#: packet in Python (--no-compiled): the compiled loop carries 4in4 by default.
CASES = [(s, ()) for s in SCENARIOS] + [(SCENARIOS[1], ("--no-compiled",))]
CASE_IDS = [s.name for s in SCENARIOS] + ["esp-tunnel-4in4-python-path"]


@pytest.mark.parametrize(("scn", "extra"), CASES, ids=CASE_IDS)
def test_traffic_passes_protected_and_decrypts_with_scapy(netpair: Pair, scn: Scenario, extra: tuple[str, ...]) -> None:
    if scn.inner_on_lo:
        add_lo(netpair.a, scn.ends[0])
        add_lo(netpair.b, scn.ends[1])
    cap = Capture(netpair.a)
    try:
        with hosts(netpair, *extra) as (a, b):
            key(scn, a, b)
            ping(a, scn.ends[0], scn.ends[1])
            transfer(a, b, scn.ends[0], scn.ends[1])
            seen = cap.ip(outgoing_only=False)
            dump = sas_from_dump(a.setkey_args("-D"))
            st = a.stats()["dataplane"]
            st_b = b.stats()["dataplane"]
        # Only protected packets on the wire.
        clear = [d for d in seen if not protected(d) and not is_neighbour_discovery(d)]
        assert not clear, f"{len(clear)} packets in the clear, first: {parse(clear[0]).summary()}"
        assert len(seen) > 1000
        # Every SA carried traffic, and the counters show it.
        assert {s["spi"] for s in st["sas"] if s["packets"]} >= {0x1001, 0x1002}
        # The compiled loop carried the one-step tunnel's data (A sends, B acknowledges),
        # and nothing else; --no-compiled leaves everything to Python.
        counters = st["counters"]
        if scn.name == "esp-tunnel-4in4" and not extra:
            assert counters["compiled.out"] > 500 and counters["compiled.in"] > 100, counters
            # ... reading TCP from the TUN in segments of up to 64 KB, which it cut (TSO)
            assert st["io"].get("tun.gso", 0) > 10 and not st["io"].get("tun.drop.offload"), st["io"]
            # ... and B writing the segments it received to its TUN joined, up to 64 KB at a time (GRO)
            assert st_b["io"].get("tun.gro", 0) > 10, st_b["io"]
        else:
            assert not counters.get("compiled.out") and not counters.get("compiled.in"), counters
        # scapy verifies and decrypts them with the keys setkey -D printed.
        by_spi = {s.spi: s for s in dump}
        checked = 0
        for dg in seen[:: max(1, len(seen) // 150)]:
            spi = spi_of(dg)
            if spi is None:
                continue
            sa = scapy_sa(by_spi[spi])
            pkt = parse(dg)
            inner = sa.decrypt(pkt)  # raises on a bad ICV
            assert inner is not None
            checked += 1
        assert checked > 50
    finally:
        cap.close()


def test_a_tun_mtu_above_the_wires_fragments_outer_datagrams_and_traffic_passes(netpair: Pair) -> None:
    """--mtu 9000 over the 1500-byte veth: each ESP datagram of a large inner packet
    is fragmented by the sending kernel and reassembled by the receiving one; the
    wire still carries nothing but ESP, and the reassembled datagrams decrypt with
    scapy."""
    scn = SCENARIOS[1]  # esp-tunnel-4in4
    add_lo(netpair.a, scn.ends[0])
    add_lo(netpair.b, scn.ends[1])
    cap = Capture(netpair.a)
    try:
        with hosts(netpair, "--mtu", "9000") as (a, b):
            key(scn, a, b)
            ping(a, scn.ends[0], scn.ends[1])
            transfer(a, b, scn.ends[0], scn.ends[1])
            seen = cap.ip(outgoing_only=True)
            dump = sas_from_dump(a.setkey_args("-D"))
            io = a.stats()["dataplane"]["io"]
    finally:
        cap.close()
    assert io.get("raw4.fragmented", 0) > 100, io
    assert not io.get("raw4.drop.EMSGSIZE"), io
    v4 = [IP(d) for d in seen if not is_neighbour_discovery(d)]
    assert v4 and all(p.version == 4 and p.proto == 50 for p in v4)
    frags = [p for p in v4 if p.flags.MF or p.frag]
    assert len(frags) > 100 and max(len(p) for p in v4) <= 1500
    _unfragmented, reassembled, _incomplete = defrag(frags)
    whole = [IP(bytes(p)) for p in reassembled]
    assert whole and max(len(p) for p in whole) > 1500
    sa = scapy_sa({s.spi: s for s in dump}[0x1001])
    for p in whole[:20]:
        assert sa.decrypt(IP(bytes(p))) is not None  # raises on a bad ICV


def test_replayed_and_tampered_packets_are_dropped_and_counted(netpair: Pair) -> None:
    cap = Capture(netpair.a)
    try:
        with hosts(netpair) as (a, b):
            sas = sa_lines("esp", OUTER4, f"-E aes-gcm-16 {GCM}", replay="-r 8 ")
            for me, h in enumerate((a, b)):
                h.setkey(sas + policies(OUTER4, "esp/transport//require", me))
            ping(a, *OUTER4, count=2)
            esp = [d for d in cap.ip(outgoing_only=True) if d[9] == 50 and spi_of(d) == 0x1001]
            assert esp
            before = b.stats()["packets"]
            with netpair.a.inside():
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            s.sendto(esp[0], (OUTER4[1], 0))  # a replay
            bad = bytearray(esp[1])
            bad[24:28] = (1000).to_bytes(4, "big")  # a sequence number never sent: past the replay check
            bad[40] ^= 0x01  # and a flipped ciphertext bit
            s.sendto(bytes(bad), (OUTER4[1], 0))
            s.close()
            # An echo sent after them reaches B's daemon through the same socket queue:
            # its reply means both were handled.  (And the SA still works.)
            ping(a, *OUTER4, count=1)
            after = b.stats()["packets"]
            assert after["esp.replay"] == before["esp.replay"] + 1
            assert after["esp.badauth"] == before["esp.badauth"] + 1
    finally:
        cap.close()


def test_dfbit_and_ecn_act_on_the_outer_header(netpair: Pair) -> None:
    add_lo(netpair.a, INNER4[0])
    add_lo(netpair.b, INNER4[1])
    cap = Capture(netpair.a)
    try:
        with hosts(netpair) as (a, b):
            scn = SCENARIOS[1]
            key(scn, a, b)
            results = {}
            for dfbit, ecn in ((0, 0), (1, 1)):
                a.sysctl(f"net.inet.ipsec.dfbit={dfbit}")
                a.sysctl(f"net.inet.ipsec.ecn={ecn}")
                cap.drain()
                cap.frames.clear()
                r = a.traffic("ping", INNER4[0], INNER4[1], "1", "0xb9")
                assert r.returncode == 0, r.stderr
                out = [d for d in cap.ip(outgoing_only=True) if d[9] == 50]
                assert out
                results[(dfbit, ecn)] = (bool(out[0][6] & 0x40), out[0][1])
        # dfbit 0: DF clear, ecn forbidden: DSCP copied, ECN bits cleared.
        assert results[(0, 0)] == (False, 0xB8)
        # dfbit 1: DF set; ecn allowed: the whole byte copied (ECT(1)).
        assert results[(1, 1)] == (True, 0xB9)
    finally:
        cap.close()


def test_ah_cleartos_decides_whether_the_tos_byte_is_in_the_icv(netpair: Pair) -> None:
    cap = Capture(netpair.a)
    try:
        with hosts(netpair) as (a, b):
            for me, h in enumerate((a, b)):
                h.setkey(
                    sa_lines("ah", OUTER4, f"-A hmac-sha2-256 {SHA256}") + policies(OUTER4, "ah/transport//require", me)
                )
            dump = {s.spi: s for s in sas_from_dump(a.setkey_args("-D"))}
            verdicts = {}
            for cleartos in (1, 0):
                for h in (a, b):
                    h.sysctl(f"net.inet.ipsec.ah_cleartos={cleartos}")
                cap.drain()
                cap.frames.clear()
                r = a.traffic("ping", OUTER4[0], OUTER4[1], "1", "0xb8")
                assert r.returncode == 0, r.stderr
                out = [d for d in cap.ip(outgoing_only=True) if d[9] == 51]
                assert out and out[0][1] == 0xB8
                try:
                    scapy_sa(dump[0x1001]).decrypt(parse(out[0]))
                    verdicts[cleartos] = True
                except Exception:  # scapy: "ICV mismatch"
                    verdicts[cleartos] = False
        # scapy zeroes the TOS as RFC 4302 says: it agrees only with ah_cleartos=1.
        assert verdicts == {1: True, 0: False}
    finally:
        cap.close()


def test_enc0_and_the_pcap_file_show_the_plaintext(netpair: Pair, tmp_path: Path) -> None:
    pcap = tmp_path / "enc.pcap"
    with hosts(netpair, extra_a=("--enc", "--pcap", str(pcap))) as (a, b):
        enc = Capture(netpair.a, "enc0")
        try:
            for me, h in enumerate((a, b)):
                h.setkey(
                    sa_lines("esp", OUTER4, f"-E aes-gcm-16 {GCM}") + policies(OUTER4, "esp/transport//require", me)
                )
            ping(a, *OUTER4, count=2)
            shown = enc.ip()
        finally:
            enc.close()
    icmp = [d for d in shown if d[9] == 1]
    assert any(d[20] == 8 for d in icmp) and any(d[20] == 0 for d in icmp)  # echo out, reply in
    # The pcap file: DLT_ENC records, each an enchdr (af, SPI, flags) and the plaintext.
    data = pcap.read_bytes()
    assert struct.unpack("=IHHiIII", data[:24])[6] == 109
    records, at = [], 24
    while at < len(data):
        _sec, _usec, incl, _orig = struct.unpack("=IIII", data[at : at + 16])
        records.append(data[at + 16 : at + 16 + incl])
        at += 16 + incl
    spis = {int.from_bytes(r[4:8], "big") for r in records}
    assert spis == {0x1001, 0x1002}
    kinds = [(r[12 + 9], r[12 + 20]) for r in records]
    # out: before and after encapsulation (mask 3, transport: the same packet twice); in: before only (mask 1)
    assert kinds.count((1, 8)) == 4 and kinds.count((1, 0)) == 2


def test_first_packet_triggers_acquire_keymgr_keys_both_and_held_packet_is_delivered(netpair: Pair) -> None:
    with hosts(netpair) as (a, b):
        for me, h in enumerate((a, b)):
            h.setkey(policies(OUTER4, "esp/transport//require", me))
        km = subprocess.Popen(
            [sys.executable, f"{ROOT}/examples/keymgr.py", a.sock, b.sock],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(a.env, PYTHONPATH=f"{ROOT}:{ROOT}/examples"),
        )
        try:
            assert km.stdout is not None and km.stdout.readline().startswith("keymgr: registered on")
            # One echo, sent once: its reply proves the held packet went out.
            rtt = ping(a, *OUTER4, count=1)
            assert len(rtt) == 1
            st = a.stats()
            assert st["dataplane"]["counters"]["hold.queued"] == 1
            assert st["dataplane"]["counters"]["hold.sent"] == 1
            assert st["pfkey"]["messages_out"].get("ACQUIRE", 0) >= 1
            transfer(a, b, *OUTER4, nbytes=256 * 1024)
        finally:
            km.terminate()
            km.wait(10)


BYPASS_PROGRAM = r"""
import socket, struct, sys
addr, peer, mode = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 500))
for d in (1, 2):  # SADB_X_EXT_POLICY, type bypass, in and out
    s.setsockopt(socket.IPPROTO_IP, 16, struct.pack("=HHHBBII", 2, 18, 4, d, 0, 0, 0))
try:  # pfkeyd's answer is setsockopt's: a direction that does not exist is EINVAL
    s.setsockopt(socket.IPPROTO_IP, 16, struct.pack("=HHHBBII", 2, 18, 4, 3, 0, 0, 0))
    sys.exit("a bad socket policy was accepted")
except OSError as e:
    assert e.errno == 22, e
s.settimeout(10)
if mode == "echo":
    print("ready", flush=True)
    for _ in range(3):
        data, src = s.recvfrom(2048)
        s.sendto(data, src)
else:
    for i in range(3):
        s.sendto(b"ike %d" % i, (peer, 500))
        assert s.recvfrom(2048)[0] == b"ike %d" % i
    print("done", flush=True)
"""


def test_socket_bypass_policy_lets_ike_through_in_the_clear_under_require(netpair: Pair) -> None:
    cap = Capture(netpair.a)
    try:
        with hosts(netpair) as (a, b):
            for me, h in enumerate((a, b)):
                h.setkey(
                    sa_lines("esp", OUTER4, f"-E aes-gcm-16 {GCM}") + policies(OUTER4, "esp/transport//require", me)
                )

            echo = b.under_bridge(BYPASS_PROGRAM, OUTER4[1], OUTER4[0], "echo")
            assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
            assert "udp 192.0.2.2[500] out bypass" in b.control("stats")
            client = a.under_bridge(BYPASS_PROGRAM, OUTER4[0], OUTER4[1], "send")
            out, err = client.communicate(timeout=30)
            assert client.returncode == 0 and out.strip() == "done", err
            echo.communicate(timeout=30)
            ping(a, *OUTER4, count=2)
            seen = cap.ip(outgoing_only=True)
            # The socket closed: its policies went with it.
            assert "socket policy" not in a.control("stats")
        udp500 = [d for d in seen if d[9] == 17 and d[20:22] == b"\x01\xf4"]
        assert len(udp500) == 3 and all(d[28:32] == b"ike " for d in udp500)
        others = [d for d in seen if d not in udp500]
        assert others and all(protected(d) or is_neighbour_discovery(d) for d in others)
    finally:
        cap.close()


LISTENER = r"""
import sys, trio
import pfkeyd.client
from pfkeyd.wire import ExtType, MsgType, SaType

async def main():
    async with pfkeyd.client.open(sys.argv[1]) as conn:
        await conn.register(SaType.ESP)
        print("ready", flush=True)
        async for msg in conn.events():
            if msg.type == MsgType.EXPIRE:
                which = "hard" if msg.get(ExtType.LIFETIME_HARD) is not None else "soft"
                print("EXPIRE", which, msg.get(ExtType.SA).spi, flush=True)

trio.run(main)
"""


def test_lifetimes_from_traffic_expire_the_sa(netpair: Pair) -> None:
    with hosts(netpair) as (a, b):
        for me, h in enumerate((a, b)):
            h.setkey(
                f"add {OUTER4[0]} {OUTER4[1]} esp 0x1001 -bh 4000 -bs 1000 -E aes-gcm-16 {GCM};\n"
                f"add {OUTER4[1]} {OUTER4[0]} esp 0x1002 -E aes-gcm-16 {GCM2};\n"
                + policies(OUTER4, "esp/transport//require", me)
            )
        km = subprocess.Popen([sys.executable, "-c", LISTENER, a.sock], stdout=subprocess.PIPE, text=True, env=a.env)
        try:
            assert km.stdout is not None and km.stdout.readline().strip() == "ready"
            ping(a, *OUTER4, count=3)
            current = a.setkey_args("-D").split("spi=4097")[1].split("sadb_seq")[0]
            assert "current: 0(bytes)" not in current and "allocated: 3" in current
            ping(a, *OUTER4, count=10)  # past the soft limit (1000 bytes)
            assert "state=dying" in a.setkey_args("-D").split("spi=4097")[1].split("sadb_seq")[0]
            r = a.traffic("ping", OUTER4[0], OUTER4[1], "40")  # past the hard limit: the replies stop
            assert r.returncode == 1 and r.stdout.split()[-1] == "timeout"
            gone = a.setkey_args("-D")
        finally:
            km.terminate()
            text, _ = km.communicate(timeout=10)
        assert "spi=4097" not in gone  # hard byte limit reached: the SA is gone
        assert "spi=4098" in gone
        expires = [line for line in text.splitlines() if line.startswith("EXPIRE")]
        assert expires == ["EXPIRE soft 4097", "EXPIRE hard 4097"], text


def test_the_protect_traffic_example_runs(netpair: Pair) -> None:
    # netpair only for its skip rule and leftover check; the example makes its own namespaces.
    r = subprocess.run(
        [sys.executable, f"{ROOT}/examples/protect_traffic.py"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "receiver's sha256 matches" in r.stdout
    assert "on the veth: " in r.stdout and "clear" not in r.stdout.split("on the veth: ")[1].splitlines()[0]
    assert "echo reply 3 from 10.2.0.1" in r.stdout
    assert not [n for n in os.listdir("/run/netns") if n.startswith("pfkex-")]


def test_no_routes_leaves_routing_to_the_user(netpair: Pair) -> None:
    cap = Capture(netpair.a)
    try:
        with hosts(netpair, "--no-routes") as (a, b):
            for me, h in enumerate((a, b)):
                h.setkey(
                    sa_lines("esp", OUTER4, f"-E aes-gcm-16 {GCM}") + policies(OUTER4, "esp/transport//require", me)
                )
            assert a.stats()["dataplane"]["routes"] == []
            with netpair.a.inside(), IPRoute() as ipr:
                assert not [r for r in ipr.route("dump", family=socket.AF_INET) if r.get("table") == 5050]
            r = a.traffic("ping", *OUTER4, "1")
            # Not routed into the TUN, the echo goes in the clear, where b's inbound
            # require policy refuses it (the firewall table is not routing).
            assert r.returncode == 1
            assert b.stats()["dataplane"]["counters"]["policy.in_clear_reject"] == 1
            # The user's own routes into the TUN (B's too, for the replies).
            for ns, peer in ((netpair.a, OUTER4[1]), (netpair.b, OUTER4[0])):
                with ns.inside(), IPRoute() as ipr:
                    ipr.route("add", dst=peer, dst_len=32, table=5050, oif=ipr.link_lookup(ifname="ipsec0")[0])
            cap.drain()
            cap.frames.clear()
            ping(a, *OUTER4, count=2)
            seen = [d for d in cap.ip() if not is_neighbour_discovery(d)]
        assert seen and all(d[9] == 50 for d in seen)
    finally:
        cap.close()


def _table_5050(ns: Namespace) -> list[str]:
    with ns.inside(), IPRoute() as ipr:
        return sorted(
            f"{r.get('dst')}/{r['dst_len']}"
            for fam in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.route("dump", family=fam)
            if r.get("table") == 5050
        )


def _until(check: Callable[[], bool], what: str) -> None:
    """Ask again until ``check`` holds (each ask is a round trip to the daemon); at most 5 s."""
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, what


def test_routes_come_and_go_with_the_policies(netpair: Pair) -> None:
    with hosts(netpair) as (a, _b):
        a.setkey(
            policies(OUTER4, "esp/transport//require", 0)
            + "spdadd 10.1.0.0/24 10.9.0.0/16 any -P out ipsec esp/tunnel/192.0.2.1-192.0.2.2/require;\n"
            + "spdadd 2001:db8::1 2001:db8::2 any -P out ipsec esp/transport//require;\n"
        )
        want = ["10.9.0.0/16", "192.0.2.2/32", "2001:db8::2/128"]
        _until(lambda: len(a.stats()["dataplane"]["routes"]) == 3, "routes added")
        assert _table_5050(netpair.a) == want
        a.setkey("spddelete 10.1.0.0/24 10.9.0.0/16 any -P out;\n")
        _until(lambda: len(a.stats()["dataplane"]["routes"]) == 2, "a route removed")
        assert _table_5050(netpair.a) == [w for w in want if w != "10.9.0.0/16"]
        a.setkey_args("-FP")
        _until(lambda: not a.stats()["dataplane"]["routes"], "every route removed")
        assert _table_5050(netpair.a) == []
