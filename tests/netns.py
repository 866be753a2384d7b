"""A network-namespace test harness: hosts of our own, joined by a veth pair.

``Namespace`` is one network namespace this test run created (a file under
/run/netns, made and removed with pyroute2's public ``netns`` API).  Code runs in it
three ways:

* ``ns.inside()``: a context manager that moves *the calling thread* into the
  namespace and back (setns(2) is per thread).  Sockets, TUN descriptors and netlink
  sockets opened inside stay in that namespace for their lifetime, so a trio test
  opens its devices inside and then drives them from the main loop as usual.  Never
  ``await`` inside the block.
* ``ns.run(*argv)``: a command in a child process (a tiny Python trampoline does the
  setns and execs, so iproute2 is not needed); ``ns.argv(*argv)`` is that command
  line, for a process the test talks to while it runs.
* ``ns.call(fn, *args)``: a Python function in the namespace, in this thread.

``pair()`` builds the topology the data-plane tests use: namespaces ``a`` and ``b``,
veth ``o0`` in each, with IPv4 192.0.2.1/24 and 192.0.2.2/24 and IPv6 2001:db8::1/64
and 2001:db8::2/64 (documentation prefixes; no link leaves the two namespaces, so
test traffic cannot reach any real network), ``lo`` up, and permanent neighbour
entries for each other's addresses.

Names are unique per run (``pfkt-<pid>-<n>-<role>``); a namespace left by a run that
died (its pid no longer exists) is removed by the next run.  Removal happens in a
finalizer whatever the test did; removing the namespace removes every link, route
and rule in it, which ``assert_clean`` lets a test check *before* removal for what
the code under test is meant to remove itself.

A snapshot lists the links, rules, routes and nftables tables of a namespace.

``skip_reason()`` says why namespaces or TUN cannot be used here (not root, no
/dev/net/tun, unshare refused), so tests skip cleanly only there.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns

__all__ = ["PREFIX", "Namespace", "Pair", "pair", "root_snapshot", "skip_reason", "snapshot"]

PREFIX = "pfkt-"
NETNS_DIR = "/run/netns"
_counter = itertools.count()
_T = TypeVar("_T")

_TRAMPOLINE = (
    "import os, sys\n"
    "from pyroute2 import netns\n"
    "netns.setns(sys.argv[1], flags=0)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def skip_reason() -> str | None:
    """None if this machine lets us make namespaces and TUNs, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    try:
        name = f"{PREFIX}{os.getpid()}-probe"
        netns.create(name)
        netns.remove(name)
    except OSError as e:
        return f"cannot create a network namespace: {e}"
    return None


def _sweep_stale() -> None:
    """Remove namespaces of earlier runs whose process is gone."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            pid = int(name[len(PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                netns.remove(name)


class Namespace:
    """A namespace this run created; see the module doc."""

    def __init__(self, role: str) -> None:
        self.name = f"{PREFIX}{os.getpid()}-{next(_counter)}-{role}"
        netns.create(self.name)
        self.path = f"{NETNS_DIR}/{self.name}"
        self.removed = False

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            netns.setns(target)
            try:
                yield
            finally:
                netns.setns(saved)
        finally:
            os.close(target)
            os.close(saved)

    def call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        with self.inside():
            return fn(*args, **kwargs)

    def argv(self, *argv: str) -> list[str]:
        """A command line that runs ``argv`` in the namespace (for Popen and trio)."""
        return [sys.executable, "-c", _TRAMPOLINE, self.path, *argv]

    def run(self, *argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the namespace (text output captured)."""
        return subprocess.run(self.argv(*argv), check=check, capture_output=True, text=True, **kwargs)

    def python(self, code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` in a child process in the namespace."""
        return self.run(sys.executable, "-c", code, *args, check=check)

    def remove(self) -> None:
        if not self.removed:
            self.removed = True
            netns.remove(self.name)

    def snapshot(self) -> dict[str, Any]:
        return self.call(snapshot)


def snapshot() -> dict[str, Any]:
    """Links, rules and routes of every table, and the nftables tables, of the
    calling thread's namespace, as comparable values (no counters, no kernel-chosen
    ids), for leftover checks."""
    with IPRoute() as ipr:
        links = sorted(((m.get("ifname"), m.get("flags") & 1) for m in ipr.get_links()), key=repr)
        rules = sorted(
            (
                (m["family"], m.get("priority"), m.get("table"), m["flags"], m.get("fwmark"))
                for fam in (socket.AF_INET, socket.AF_INET6)
                for m in ipr.get_rules(family=fam)
            ),
            key=repr,
        )
        routes = sorted(
            (
                (m["family"], m.get("table"), str(m.get("dst")), m["dst_len"], m.get("oif"))
                for fam in (socket.AF_INET, socket.AF_INET6)
                for m in ipr.route("dump", family=fam)
            ),
            key=repr,
        )
    return {"links": links, "rules": rules, "routes": routes, "nft": nft_tables()}


def nft_tables() -> list[tuple[str, str]]:
    """The nftables tables (family, name) of the calling thread's namespace; none
    where nft(8) is not installed (then nothing can have made one)."""
    nft = shutil.which("nft", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")
    if nft is None:
        return []
    # A child forked from this thread starts in its namespace.
    out = subprocess.run([nft, "-j", "list", "tables"], check=True, capture_output=True, text=True).stdout
    return sorted((t["table"]["family"], t["table"]["name"]) for t in json.loads(out)["nftables"] if "table" in t)


OUR_LINKS = ("ipsec0", "enc0", "o0")
OUR_TABLE = 5050  # pfkeyd.dataplane.netlink's defaults, which the tests use
OUR_MARK = 0x5050
OUR_NFT_TABLE = "pfkeyd"  # pfkeyd.dataplane.nft.TABLE


def root_snapshot() -> dict[str, Any]:
    """What of ours could have leaked into the root namespace: links with our names,
    rules and routes of our table or mark, and this run's namespaces.  (Only ours:
    other programs on the machine may change the rest meanwhile.)"""
    snap = snapshot()
    try:
        names = sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(f"{PREFIX}{os.getpid()}-"))
    except FileNotFoundError:
        names = []
    return {
        "links": [link for link in snap["links"] if link[0] in OUR_LINKS or str(link[0]).startswith("pfk")],
        "rules": [
            r
            for r in snap["rules"]
            if r[2] in (OUR_TABLE, OUR_TABLE + 1) or r[4] == OUR_MARK or r[1] in (5050, 5051, 5052)
        ],
        "routes": [r for r in snap["routes"] if r[1] in (OUR_TABLE, OUR_TABLE + 1)],
        "nft": [t for t in snap["nft"] if t[1] == OUR_NFT_TABLE],
        "namespaces": names,
    }


NUD_PERMANENT = 0x80


def _mac(ifname: str) -> str:
    with IPRoute() as ipr:
        return str(ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0].get("address"))


class Pair:
    """Two namespaces ``a`` and ``b`` joined by veth ``o0`` (addresses in the module doc)."""

    V4 = ("192.0.2.1", "192.0.2.2")
    V6 = ("2001:db8::1", "2001:db8::2")

    def __init__(self) -> None:
        _sweep_stale()
        self.a = Namespace("a")
        try:
            self.b = Namespace("b")
        except BaseException:
            self.a.remove()
            raise
        try:
            self._link()
        except BaseException:
            self.remove()
            raise

    def _link(self) -> None:
        with self.a.inside(), IPRoute() as ipr:
            ipr.link("add", ifname="o0", kind="veth", peer={"ifname": "o0", "net_ns_fd": self.b.path})
        for ns, v4, v6 in ((self.a, self.V4[0], self.V6[0]), (self.b, self.V4[1], self.V6[1])):
            with ns.inside(), IPRoute() as ipr:
                # IPv6 addresses usable at once, not after a second of duplicate detection.
                with open("/proc/sys/net/ipv6/conf/o0/accept_dad", "w") as f:
                    f.write("0")
                o0 = ipr.link_lookup(ifname="o0")[0]
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.addr("add", index=o0, address=v4, prefixlen=24)
                ipr.addr("add", index=o0, address=v6, prefixlen=64, family=socket.AF_INET6)
                ipr.link("set", index=lo, state="up")
                ipr.link("set", index=o0, state="up")
        # Permanent neighbour entries: the first packet goes at once, instead of
        # waiting on address resolution (IPv6's first solicitation on a fresh veth is
        # often lost, costing a one-second retransmission).
        macs = [ns.call(_mac, "o0") for ns in (self.a, self.b)]
        for ns, peer, mac in ((self.a, 1, macs[1]), (self.b, 0, macs[0])):
            with ns.inside(), IPRoute() as ipr:
                o0 = ipr.link_lookup(ifname="o0")[0]
                for addr, fam in ((self.V4[peer], socket.AF_INET), (self.V6[peer], socket.AF_INET6)):
                    ipr.neigh("add", dst=addr, lladdr=mac, ifindex=o0, family=fam, state=NUD_PERMANENT)

    def remove(self) -> None:
        errors: list[BaseException] = []
        for ns in (getattr(self, "b", None), self.a):
            if ns is not None:
                try:
                    ns.remove()
                except OSError as e:
                    errors.append(e)
        if errors:
            raise errors[0]


@contextlib.contextmanager
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.remove()
