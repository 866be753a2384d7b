"""The inbound policy check for cleartext: an nftables table that mirrors the inbound SPD.

Theory of operation
-------------------
Protected packets reach the daemon (raw sockets, the NAT-T socket), which checks the
inner packet against its inbound policy (``ipsec_in_reject``) before writing it to
the TUN.  Cleartext from the peer does not: the kernel delivers it to the local
socket, or forwards it, on its own.  FreeBSD runs the same check on every packet
that reaches ``ip_input``'s local delivery or forwarding, so a packet that arrived
unprotected for a flow whose inbound policy requires ESP or AH is dropped and
counted (``ips_in_polvio``).  Here the kernel is asked to do that itself: the
daemon owns one nftables table (``table inet pfkeyd``) whose ``input`` and
``forward`` base chains jump to one chain, ``spd_in``, that emulates the inbound
SPD in lookup order for every packet that did not come from the TUN:

1. exempt, whatever the policies say: what the TUN delivers (it passed the check
   in the daemon), loopback (it never crossed a wire), ESP, AH and IPComp (the daemon's
   raw sockets, which sit behind the input hook, must see them), UDP to the NAT-T
   port when NAT-T is on, and IPv6 neighbour discovery (without it the very ESP
   packets could not be delivered: the kernel's ND is not under the SPD here);
2. the inbound per-socket policies, as FreeBSD's ``ipsec_getpolicybysock`` comes
   before the SPD: the socket's protocol, local port and (bound) local address;
   bypass and none accept, discard drops, ipsec drops when it has a request at
   level require or unique (IKE's bypass on UDP 500/4500 lands here);
3. each inbound policy of the SPD in lookup order (priority, then age), the
   selector as prefixes, upper-layer protocol and ports (for ICMP and ICMPv6 the
   type and code, as the SPD keys them): none accepts, discard drops, ipsec drops
   when one of its requests is at level require or unique after the ``*_deflev``
   knobs (IPComp always counts as use);
4. nothing matched: ``def_policy`` 0 drops, 1 lets the packet through.

A drop is counted in the table's named counter ``in_polvio``, read for ``pfkeyd
stats`` (``policy.in_clear_reject``).  "accept" ends only this table's evaluation:
other tables (the host's own firewall) still see the packet.

:func:`rules` is pure (policies and knobs in, rule text out); :class:`Firewall` is
the shell that applies it with ``nft -f -`` in one transaction (the chain flushed
and refilled atomically, the counter kept), only when the text changed.  ``nft``'s
language is the documented, stable interface of nftables; pyroute2's nftables
module builds netlink expressions by hand with no documented API for rules, and
libnftables has no binding on PyPI.  The rules change only when policies do, so
one short-lived process per change costs nothing next to packets.

:meth:`Firewall.setup` replaces a table a killed daemon left (``add`` then
``delete`` then create, in one transaction); :meth:`Firewall.close` removes it.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable, Sequence

from pfkeyd.dataplane.sockpol import SocketPolicy
from pfkeyd.engine.lookup import DeflevTable, deflev_table, request_level
from pfkeyd.knobs import Knobs
from pfkeyd.record import record
from pfkeyd.spd import SecPolicy, Selector
from pfkeyd.wire import IpProto, IpsecRequest, Level, PolicyType

__all__ = ["COUNTER", "TABLE", "Firewall", "FirewallConfig", "FirewallError", "find_nft", "rules"]

log = logging.getLogger("pfkeyd.dataplane")

TABLE = "pfkeyd"
COUNTER = "in_polvio"
CHAIN = "spd_in"
#: Before the usual filter chains (priority 0), so the SPD is decided first.
PRIORITY = "filter - 10"
NFT_TIMEOUT = 10.0
#: Searched after PATH: a daemon's PATH may lack the system directories.
SBIN = "/usr/sbin:/sbin"

_DROP = f'counter name "{COUNTER}" drop'
_PORTED_SET = frozenset((6, 17, 132, 136))  # TCP, UDP, SCTP, UDP-Lite: the protocols with ports
_PORTED = "{ " + ", ".join(map(str, sorted(_PORTED_SET))) + " }"
_ICMP_WORD = {int(IpProto.ICMP): "icmp", int(IpProto.IPV6_ICMP): "icmpv6"}
_ANY = int(IpProto.ANY)
_IPCOMP = int(IpProto.IPCOMP)
#: router solicitation and advertisement, neighbour solicitation and advertisement, redirect
_ND_TYPES = "{ 133, 134, 135, 136, 137 }"


class FirewallError(OSError):
    """``nft`` is missing or refused a ruleset; ``errno`` says which, the text why."""


@record(kw_only=True)
class FirewallConfig:
    """The TUN whose packets are exempt and the NAT-T port (0: no NAT-T)."""

    ifname: str = "ipsec0"
    natt_port: int = 4500


# ------------------------------------------------------------------ the pure part
def rules(
    config: FirewallConfig, policies: Iterable[SecPolicy], sockets: Iterable[SocketPolicy], knobs: Knobs
) -> list[str]:
    """The rules of the ``spd_in`` chain, in order (see the module doc)."""
    out = [
        f'iifname {{ "{config.ifname}", "lo" }} accept',
        "meta l4proto { 50, 51, 108 } accept",
    ]
    if config.natt_port:
        out.append(f"udp dport {config.natt_port} accept")
    out.append(f"icmpv6 type {_ND_TYPES} accept")
    table = deflev_table(knobs)
    for pol in sockets:
        match = _socket_match(pol)
        if match is not None:
            out.append(f"{match} {_verdict(pol.type, pol.requests, 4 if len(pol.address) == 4 else 6, table)}")
    for sp in policies:
        verdict = _verdict(sp.type, sp.requests, sp.selector.version, table)
        out += [f"{m} {verdict}" for m in _selector_matches(sp.selector)]
    if knobs.def_policy == 0:
        out.append(_DROP)
    return out


def _verdict(ptype: int, requests: Sequence[IpsecRequest], version: int, table: DeflevTable) -> str:
    if ptype == PolicyType.DISCARD:
        return _DROP
    if ptype != PolicyType.IPSEC:
        return "accept"
    for r in requests:
        if request_level(r, version, table) in (Level.REQUIRE, Level.UNIQUE) and r.proto != _IPCOMP:
            return _DROP
    return "accept"


def _family(version: int) -> tuple[str, str]:
    return ("ipv4", "ip") if version == 4 else ("ipv6", "ip6")


def _selector_matches(sel: Selector) -> list[str]:
    """The nft matches equivalent to a selector (one rule each; none if it can never
    match a packet, e.g. ports on a protocol that has none)."""
    nfproto, fam = _family(sel.version)
    head = [f"meta nfproto {nfproto}"]
    if sel.src_len:
        head.append(f"{fam} saddr {ipaddress.ip_network(f'{sel.src.ip}/{sel.src_len}', strict=False)}")
    if sel.dst_len:
        head.append(f"{fam} daddr {ipaddress.ip_network(f'{sel.dst.ip}/{sel.dst_len}', strict=False)}")
    sport, dport, proto = sel.src.port, sel.dst.port, sel.proto
    if not sport and not dport:
        return [" ".join(head + ([] if proto == _ANY else [f"meta l4proto {proto}"]))]
    # Ports (or ICMP type and code): the flow has them only for these protocols.
    alternatives: list[list[str]] = []
    if proto in _PORTED_SET or proto == _ANY:
        ports = [f"th sport {sport}"] if sport else []
        ports += [f"th dport {dport}"] if dport else []
        alternatives.append([f"meta l4proto {proto if proto != _ANY else _PORTED}", *ports])
    for icmp, word in _ICMP_WORD.items():
        if proto in (icmp, _ANY):
            tc = [f"{word} type {sport}"] if sport else []
            tc += [f"{word} code {dport}"] if dport else []
            if all(v < 256 for v in (sport, dport)):
                alternatives.append([f"meta l4proto {icmp}", *tc])
    return [" ".join(head + alt) for alt in alternatives]


def _socket_match(pol: SocketPolicy) -> str | None:
    """The nft match for datagrams to a socket (protocol, local port, bound address)."""
    nfproto, fam = _family(4 if pol.family == socket.AF_INET else 6)
    parts = [f"meta nfproto {nfproto}", f"meta l4proto {pol.proto}"]
    if any(pol.address):
        parts.append(f"{fam} daddr {ipaddress.ip_address(pol.address)}")
    if pol.proto in _PORTED_SET:
        if not pol.port:
            return None  # an unbound port: no datagram is ever for it
        parts.append(f"th dport {pol.port}")
    return " ".join(parts)


# ----------------------------------------------------------------------- the shell
def find_nft() -> str:
    """The path of ``nft``; :class:`FirewallError` (ENOENT) with what to do if absent."""
    path = shutil.which("nft", path=os.environ.get("PATH", "") + os.pathsep + SBIN)
    if path is None:
        raise FirewallError(
            errno.ENOENT,
            "nft(8) not found: the inbound policy check needs nftables (install it, or start with --no-firewall)",
        )
    return path


Runner = Callable[[Sequence[str], str], str]


def _run(argv: Sequence[str], stdin: str) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise FirewallError(errno.ETIMEDOUT, f"{' '.join(argv)}: no answer in {NFT_TIMEOUT:g} s") from None
    except OSError as e:
        raise FirewallError(e.errno or errno.EIO, f"{argv[0]}: {e.strerror}") from None
    if done.returncode:
        why = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise FirewallError(errno.EINVAL, f"nft refused the ruleset: {why}")
    return done.stdout


class Firewall:
    """The daemon's nftables table in the current network namespace (see the module doc)."""

    def __init__(self, config: FirewallConfig, *, nft: str | None = None, run: Runner = _run) -> None:
        self.config = config
        self._nft = nft if nft is not None else find_nft()
        self._run = run
        self._applied: list[str] | None = None
        self._open = False

    def _script(self, text: str) -> None:
        self._run([self._nft, "-f", "-"], text)

    def setup(self) -> None:
        """Create the table (replacing one a killed daemon left), chains empty."""
        t = f"inet {TABLE}"
        self._script(
            f"add table {t}\ndelete table {t}\n"
            f"add table {t}\n"
            f"add counter {t} {COUNTER}\n"
            f"add chain {t} {CHAIN}\n"
            f"add chain {t} input {{ type filter hook input priority {PRIORITY}; policy accept; }}\n"
            f"add chain {t} forward {{ type filter hook forward priority {PRIORITY}; policy accept; }}\n"
            f"add rule {t} input jump {CHAIN}\n"
            f"add rule {t} forward jump {CHAIN}\n"
        )
        self._open = True
        self._applied = []

    def apply(self, chain: list[str]) -> bool:
        """Make ``spd_in`` hold exactly ``chain`` (one transaction); False if it did already."""
        if chain == self._applied:
            return False
        t = f"inet {TABLE}"
        self._script(f"flush chain {t} {CHAIN}\n" + "".join(f"add rule {t} {CHAIN} {r}\n" for r in chain))
        self._applied = list(chain)
        return True

    def dropped(self) -> int:
        """The packets the table has dropped (its ``in_polvio`` counter)."""
        out = self._run([self._nft, "-j", "list", "counter", "inet", TABLE, COUNTER], "")
        try:
            for item in json.loads(out)["nftables"]:
                if "counter" in item:
                    return int(item["counter"]["packets"])
        except (ValueError, KeyError, TypeError) as e:
            raise FirewallError(errno.EIO, f"nft -j list counter: unexpected answer ({e})") from None
        raise FirewallError(errno.EIO, "nft -j list counter: no counter in the answer")

    def close(self) -> None:
        """Remove the table (idempotent)."""
        if not self._open:
            return
        self._open = False
        self._applied = None
        t = f"inet {TABLE}"
        self._script(f"add table {t}\ndelete table {t}\n")
