"""The SA bundles of setkey.8's EXAMPLES, loaded with setkey and looked up.

Every example whose policy has more than one rule is read from the page, loaded
through a daemon's socket of each dialect, and looked up: each request must find
the SA the example adds for it, the later requests of a bundle the SA between the
tunnel endpoints (FreeBSD ipsec_process_done -> ipsec4_perform_request(idx + 1) ->
ipsec4_allocsa; Linux xfrm_tmpl_resolve_one).  Then the same through the processes
a user runs (``setkey``, ``pfkeyd lookup``), with a key manager registered that must
receive the ACQUIRE for a missing later SA, naming the outer addresses.

The examples add their SAs in the order of the policy's rules; the tests rely on it.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pfkeyd.effects import Instant
from pfkeyd.spd import Flow, Selector
from pfkeyd.wire import Dialect, Direction, IpProto, Message, MsgType, SaType, SockAddr, decode, encode
from tests.setkey.clihelp import ThreadDaemon, against
from tests.test_control_cli import Daemon

ROOT = Path(__file__).resolve().parent.parent
SETKEY_8 = ROOT / "pfkeyd" / "man" / "setkey.8"
TIMEOUT = 30
DIALECTS = pytest.mark.parametrize("dialect", list(Dialect), ids=[d.value for d in Dialect])


@dataclass(frozen=True)
class Example:
    text: str  # the setkey script, as the page shows it
    spis: tuple[int, ...]  # the SPIs the example adds, in the order of its rules
    rules: tuple[str, ...]  # the policy's rules, as written

    @property
    def name(self) -> str:
        return " ".join(self.rules)


def bundle_examples(page: str) -> list[Example]:
    """The literal blocks of EXAMPLES whose policy has two rules or more."""
    examples = page.split("\n.Sh EXAMPLES\n", 1)[1].split("\n.Sh ", 1)[0]
    out = []
    for block in re.findall(r"^\.Bd -literal[^\n]*\n(.*?)^\.Ed$", examples, re.M | re.S):
        rules = tuple(re.findall(r"\b(?:esp|ah|ipcomp)/(?:transport|tunnel)/\S*/\w+(?::\d+)?", block))
        if len(rules) >= 2:
            spis = tuple(
                int(spi, 0) for spi in re.findall(r"^add .*? (?:esp|ah|ipcomp) (0x[0-9a-f]+|\d+)", block, re.M)
            )
            out.append(Example(block, spis, rules))
    return out


EXAMPLES = bundle_examples(SETKEY_8.read_text())


def test_the_page_shows_the_bundle_shapes() -> None:
    names = [e.name for e in EXAMPLES]
    assert any(n.startswith("ipcomp/tunnel/") and n.endswith(" esp/transport//require") for n in names), names
    assert any(n.startswith("esp/tunnel/") and n.endswith(" ah/transport//require") for n in names), names
    assert "esp/transport//require ah/transport//require" in names
    for e in EXAMPLES:
        assert len(e.spis) == len(e.rules), e.text


def a_host(sa: SockAddr, prefix: int) -> str:
    """An address inside a selector: the host itself, or the network's first host."""
    net = ipaddress.ip_network(f"{sa.ip}/{prefix}", strict=False)
    return str(net.network_address if prefix == net.max_prefixlen else net.network_address + 1)


def inside(text: str) -> str:
    """A host of a setkey address selector (``10.3.0.0/16`` or ``10.1.0.1``)."""
    address, _, prefix = text.partition("/")
    sa = SockAddr.parse(address)
    return a_host(sa, int(prefix) if prefix else sa.max_prefix)


def flow_of(selector: Selector) -> tuple[str, str]:
    return a_host(selector.src, selector.src_len), a_host(selector.dst, selector.dst_len)


# ------------------------------------------------------ the engine's lookup


@pytest.fixture
def thread_daemon() -> Iterator[ThreadDaemon]:
    sockdir = tempfile.mkdtemp(prefix="pfk", dir="/tmp")  # AF_UNIX paths are short
    d = ThreadDaemon(sockdir).start()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


@DIALECTS
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_each_request_of_an_example_bundle_finds_its_sa(
    thread_daemon: ThreadDaemon, dialect: Dialect, example: Example
) -> None:
    loaded = against(thread_daemon, dialect)(["-c"], stdin=example.text)
    assert (loaded.status, loaded.err) == (0, "")
    engine = thread_daemon.engine

    def look() -> tuple[object, ...]:
        (sp,) = engine.spd.by_id.values()
        src, dst = flow_of(sp.selector)
        flow = Flow(SockAddr.parse(src), SockAddr.parse(dst), IpProto.ANY, 0, 0)
        decision, effects = engine.lookup(Direction.OUTBOUND, flow, Instant(1.0, 1))
        return decision.action, tuple(o.sa.spi if o.sa else None for o in decision.requests), tuple(effects)

    assert thread_daemon.call(look) == ("ipsec", example.spis, ())


# ------------------------------------------------ the processes a user runs


def setkey_script(path: str, dialect: Dialect, script: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "setkey", "--socket", path, "--dialect", dialect.value, "-c"],
        input=script,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stdout


def pfkeyd_lookup(path: str, src: str, dst: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pfkeyd", "lookup", "-s", path, "out", src, dst],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    return result.stdout.splitlines()


class KeyManager:
    """A registered PF_KEY socket of one dialect: what a key manager would receive."""

    def __init__(self, path: str, dialect: Dialect) -> None:
        self.dialect = dialect
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.sock.send(encode(Message(MsgType.REGISTER, SaType.ESP, 1, 4242), dialect))
        assert self.next(MsgType.REGISTER).errno == 0

    def next(self, msgtype: int) -> Message:
        """The next message of ``msgtype`` (others, such as broadcasts, are skipped)."""
        while True:
            msg = decode(self.sock.recv(65536), self.dialect)
            if msg.type == msgtype:
                return msg

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    sockdir = tempfile.mkdtemp(prefix="pfc", dir="/tmp")
    d = Daemon(sockdir)
    try:
        yield d
    finally:
        status, out, err = d.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert (status, out) == (0, ""), err


@DIALECTS
def test_pfkeyd_lookup_names_the_sas_of_every_example_bundle(daemon: Daemon, dialect: Dialect) -> None:
    path = {Dialect.LINUX: daemon.linux, Dialect.FREEBSD: daemon.freebsd}[dialect]
    setkey_script(path, dialect, "".join(e.text for e in EXAMPLES))
    for e in EXAMPLES:
        policy = next(line for line in e.text.splitlines() if line.startswith("spdadd"))
        src, dst = (inside(text) for text in policy.split()[1:3])
        lines = pfkeyd_lookup(path, src, dst)
        assert lines[1:] == [
            *[
                f"  {rule} (level {rule.rsplit('/', 1)[1]}): SA spi {spi:#010x} (mature)"
                for rule, spi in zip(e.rules, e.spis, strict=True)
            ],
            "decision: ipsec (protected by the SAs above)",
        ], "\n".join(lines)


@DIALECTS
def test_a_missing_later_sa_is_acquired_between_the_tunnel_endpoints(daemon: Daemon, dialect: Dialect) -> None:
    # The case: the KAME layout with the ESP SA 192.0.2.1 -> 192.0.2.2 gone.
    (kame,) = [e for e in EXAMPLES if e.rules[0].startswith("ipcomp/tunnel/192.0.2.1-192.0.2.2/")]
    path = {Dialect.LINUX: daemon.linux, Dialect.FREEBSD: daemon.freebsd}[dialect]
    other = {Dialect.LINUX: daemon.freebsd, Dialect.FREEBSD: daemon.linux}[dialect]
    other_dialect = Dialect.FREEBSD if dialect is Dialect.LINUX else Dialect.LINUX
    setkey_script(path, dialect, kame.text)
    assert pfkeyd_lookup(path, "10.1.0.1", "10.2.0.1")[-1] == "decision: ipsec (protected by the SAs above)"
    km = KeyManager(other, other_dialect)
    try:
        setkey_script(path, dialect, f"delete 192.0.2.1 192.0.2.2 esp {kame.spis[1]:#x};\n")
        lines = pfkeyd_lookup(path, "10.1.0.1", "10.2.0.1")
        assert lines[1] == f"  {kame.rules[0]} (level use): SA spi {kame.spis[0]:#010x} (mature)"
        assert re.fullmatch(
            r"  esp/transport//require \(level require\): no SA: ACQUIRE sent \(seq \d+\) "
            r"to 1 registered key manager",
            lines[2],
        ), lines
        assert lines[3] == "decision: discard (held back until an SA exists)"
        acquire = km.next(MsgType.ACQUIRE)
        assert acquire.satype == SaType.ESP
        assert acquire.src is not None and str(acquire.src.addr) == "192.0.2.1"
        assert acquire.dst is not None and str(acquire.dst.addr) == "192.0.2.2"
        assert f"(seq {acquire.seq})" in lines[2]
    finally:
        km.close()


def test_a_request_after_a_dropped_packet_is_not_reached(daemon: Daemon) -> None:
    (esp_ah,) = [e for e in EXAMPLES if e.rules[0].startswith("esp/tunnel/")]
    setkey_script(daemon.freebsd, Dialect.FREEBSD, esp_ah.text)
    setkey_script(daemon.freebsd, Dialect.FREEBSD, f"delete 192.0.2.1 198.51.100.2 esp {esp_ah.spis[0]:#x};\n")
    lines = pfkeyd_lookup(daemon.linux, "10.3.0.1", "10.4.0.1")
    assert lines[1].startswith(f"  {esp_ah.rules[0]} (level require): no SA: ACQUIRE sent (seq ")
    assert lines[2] == f"  {esp_ah.rules[1]} (level require): not reached (the packet is dropped at an earlier request)"
    assert lines[3] == "decision: discard (held back until an SA exists)"
