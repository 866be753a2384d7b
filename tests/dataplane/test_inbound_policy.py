"""The inbound policy check against cleartext, and per-socket ipsec policies, end to end:
two namespaces each running ``pfkeyd --dataplane`` (tests/dataplane/hosts.py).

Host b is keyed but given no policy, so what it sends goes in the clear unless a
policy says otherwise; host a's inbound policies decide whether that cleartext is
delivered (the nftables table of pfkeyd.dataplane.nft).  Every test ends with the
daemons stopped by SIGTERM and the namespaces checked to hold no table, link, rule
or route of theirs.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

import pytest

from tests.dataplane.hosts import Host, hosts
from tests.dataplane.test_protect import GCM, OUTER4, ping, sa_lines
from tests.dataplane.wire import Capture, is_neighbour_discovery, spi_of
from tests.netns import Pair, nft_tables

A4, B4 = OUTER4
SAS = sa_lines("esp", OUTER4, f"-E aes-gcm-16 {GCM}")  # 0x1001 a->b, 0x1002 b->a, transport

pytestmark = pytest.mark.skipif(
    shutil.which("nft", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None, reason="no nft(8)"
)

#: Send datagrams from SRC to DST:PORT, each waiting briefly for its echo; print
#: "echo" or "none" (no answer, or port unreachable) per datagram.
UDP_PROBE = r"""
import socket, sys
src, dst, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.settimeout(1.0)
for i in range(count):
    s.sendto(b"probe %d" % i, (dst, port))
    try:
        print("echo" if s.recvfrom(2048)[0] == b"probe %d" % i else "wrong", flush=True)
    except OSError:  # no answer, or the peer's port unreachable
        print("none", flush=True)
"""


def probe(h: Host, src: str, dst: str, port: int, count: int = 1) -> list[str]:
    r = h.ns.python(UDP_PROBE, src, dst, str(port), str(count))
    return r.stdout.split()


def counters(h: Host) -> dict[str, int]:
    return dict(h.stats()["dataplane"]["counters"])


def test_cleartext_under_an_inbound_require_policy_is_dropped_and_counted_while_esp_passes(netpair: Pair) -> None:
    with hosts(netpair) as (a, b):
        a.setkey(
            SAS
            # A none policy ahead of the require one: its flow passes in the clear.
            + f"spdadd {B4} {A4}[7777] udp -P in none;\n"
            + f"spdadd {B4} {A4} any -P in ipsec esp/transport//require;\n"
            + f"spdadd {A4} {B4} any -P out ipsec esp/transport//require;\n"
        )
        b.setkey(SAS)
        assert ("inet", "pfkeyd") in netpair.a.call(nft_tables)
        # b's echo request and two datagrams arrive in the clear: dropped in a, counted.
        assert b.traffic("ping", B4, A4, "1").stdout.split() == ["timeout"]
        assert probe(b, B4, A4, 9999, 2) == ["none", "none"]
        got = counters(a)
        assert got["policy.in_clear_reject"] == 3 and got["policy.in_polvio"] == 3
        assert 'pfkeyd_dataplane_events_total{counter="policy.in_clear_reject"} 3.0' in a.control(
            "stats", "--prometheus"
        )
        # The flow of the none policy is delivered (the echo comes back under ESP).
        echo = a.popen("udp-echo", A4, "7777", "1")
        try:
            assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
            assert probe(b, B4, A4, 7777) == ["echo"]
            assert echo.wait(10) == 0
        finally:
            if echo.poll() is None:
                echo.kill()
        # The same traffic under ESP passes.
        b.setkey(f"spdadd {B4} {A4} any -P out ipsec esp/transport//require;\n")
        assert len(ping(b, B4, A4, 2)) == 2
        assert counters(a)["policy.in_clear_reject"] == 3
    # hosts() stopped both with SIGTERM and found no table left; say it here too.
    assert netpair.a.call(nft_tables) == [] and netpair.b.call(nft_tables) == []


def test_a_table_left_by_a_killed_daemon_is_replaced_at_start_and_removed_at_exit(netpair: Pair) -> None:
    before = netpair.a.snapshot()
    work = tempfile.mkdtemp(prefix="pfkeyd-dp-")
    try:
        first = Host(netpair.a, "first", work)
        first.setkey(f"spdadd {B4} {A4} any -P in discard;\n")
        first.proc.send_signal(signal.SIGKILL)
        first.stop()
        first.log.close()
        assert ("inet", "pfkeyd") in netpair.a.call(nft_tables)  # the killed daemon's table stays
        second = Host(netpair.a, "second", work)
        try:
            listing = netpair.a.run("nft", "list", "chain", "inet", "pfkeyd", "spd_in").stdout
            assert "drop" not in listing  # the new daemon's SPD is empty: nothing of the old rules
            assert second.stop() == 0
        finally:
            second.stop()
            second.log.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    after = netpair.a.snapshot()
    assert after["nft"] == [] and after == before


#: A program run under the bridge: a UDP socket bound to ADDR:6000 with ipsec socket
#: policies in and out (esp/transport//require, Linux's sadb_x_policy layout).
#: "echo" answers 3 datagrams; "send" first sends one datagram in the clear from
#: another socket to the peer's port 6000 (its inbound socket policy must drop it),
#: then 3 over its own socket, each echoed.
SOCKPOL_PROGRAM = r"""
import socket, struct, sys
addr, peer, mode = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 6000))
for d in (1, 2):  # sadb_x_policy (4 units: itself and one request), then the 16-byte request
    pol = struct.pack("=HHHBBII", 4, 18, 2, d, 0, 0, 0) + struct.pack("=HHBBHII", 16, 50, 1, 2, 0, 0, 0)
    s.setsockopt(socket.IPPROTO_IP, 16, pol)
s.settimeout(10)
if mode == "echo":
    print("ready", flush=True)
    for _ in range(3):
        data, src = s.recvfrom(2048)
        assert data.startswith(b"sock "), data
        s.sendto(data, src)
else:
    clear = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    clear.bind((addr, 6001))
    clear.sendto(b"clear", (peer, 6000))
    for i in range(3):
        s.sendto(b"sock %d" % i, (peer, 6000))
        assert s.recvfrom(2048)[0] == b"sock %d" % i
    print("done", flush=True)
"""


def test_an_ipsec_socket_policy_protects_a_programs_traffic_where_the_spd_sends_it_clear(netpair: Pair) -> None:
    cap = Capture(netpair.a)
    try:
        with hosts(netpair) as (a, b):
            for h in (a, b):
                h.setkey(SAS)  # keys, and no policy at all: the SPD sends everything in the clear

            echo = b.under_bridge(SOCKPOL_PROGRAM, B4, A4, "echo")
            assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
            assert f"udp {B4}[6000] in ipsec esp/transport//require" in b.control("stats")
            client = a.under_bridge(SOCKPOL_PROGRAM, A4, B4, "send")
            out, err = client.communicate(timeout=30)
            assert client.returncode == 0 and out.strip() == "done", err
            _, err = echo.communicate(timeout=30)
            assert echo.returncode == 0, err
            assert counters(a)["policy.socket_ipsec"] == 3
            assert counters(b)["policy.in_clear_reject"] == 1  # the datagram from port 6001
            assert probe(a, A4, B4, 7, 1) == ["none"]  # other traffic: in the clear (nobody answers)
            seen = cap.ip(outgoing_only=True)
        esp = [d for d in seen if spi_of(d) == 0x1001]
        assert len(esp) == 3  # the socket's three datagrams, protected
        clear = [d for d in seen if d[9] == 17]
        ports = [(int.from_bytes(d[20:22], "big"), int.from_bytes(d[22:24], "big")) for d in clear]
        # In the clear: the datagram of the socket without a policy, and the probe; none of the socket's.
        assert sorted(p for p in ports if p[1] != 7) == [(6001, 6000)]
        assert len([p for p in ports if p[1] == 7]) == 1
        assert all(d in esp or d in clear or is_neighbour_discovery(d) for d in seen)
    finally:
        cap.close()
