"""Per-socket policies (ipsec(4) ``IP_IPSEC_POLICY`` / ``IPV6_IPSEC_POLICY``).

Theory of operation
-------------------
An IKE daemon puts a bypass policy on its IKE sockets so that its own UDP 500/4500
traffic is never caught by a ``require`` policy covering all traffic between the
hosts.  On FreeBSD the policy hangs on the socket (``inp_sp``) and
``ipsec_getpolicybysock`` consults it before the SPD.  Here the socket lives in the
application and the policy must reach pfkeyd:

* The bridge (``pfkeyd exec``, pfkey_preload.c) intercepts ``setsockopt`` of those
  options.  For each socket that gets a policy it opens one connection to the
  **socket-policy socket** beside the PF_KEY socket (``/run/pfkeyd.sock`` ->
  ``/run/pfkeyd.sockpol``; :func:`sockpol_path`) and sends one datagram per
  setsockopt: a 24-byte head (:data:`HEAD`: version 1, address family, IP
  protocol of the socket, a pad byte, the bound local port, two pad bytes, and the
  bound local address, 16 bytes, IPv4 in the first 4) followed by the
  ``sadb_x_policy`` the application passed (with its ipsecrequests).  pfkeyd answers
  each with a 4-byte errno (0: accepted), which setsockopt returns.
* pfkeyd keeps the policy as a policy **of that connection** (:class:`SocketPolicies`),
  one per direction, and removes every policy of a connection when it closes: the
  bridge closes it when the application closes the socket (or exits: the kernel
  closes every descriptor), so a policy never outlives its socket.  Its packets
  still queued in the TUN when it closes were sent under its policy, which
  FreeBSD applies at send time: the policies go once the data plane has read the
  TUN empty (at most :data:`DRAIN_TIMEOUT` later).
* The ``sadb_x_policy`` is the program's, built with the headers of the host it
  runs on: Linux's layout (16-byte ipsecrequests, sockaddrs without a length
  byte), which :func:`parse_request` decodes with the codec's linux dialect and
  checks as SPDADD checks its requests (:func:`pfkeyd.engine.policy.check_request`,
  at most 6 requests as Linux's ``parse_ipsecrequests``).
* Outbound, the data plane matches a packet's protocol, source address and source
  port against these policies before the SPD (an unbound address matches any).
  ``bypass`` and ``none`` send it in the clear, ``discard`` drops it, ``entrust``
  leaves it to the SPD, and ``ipsec`` applies the socket's own requests: the engine
  resolves them to SAs for the packet (:meth:`pfkeyd.engine.Lookup.resolve`, the
  very step that serves SPD policies: protocol, mode, level, reqid, tunnel
  endpoints or the packet's addresses, ACQUIRE with its pacing, the hold queue).
  The policy's selector is the packet's flow, as FreeBSD's
  ``ipsec_setspidx_inpcb`` makes it, so an ACQUIRE names the socket's ports.
* Inbound, the protocol, destination address and destination port of a datagram
  are matched the same way against the inbound policies: for decrypted packets in
  the data plane's policy check, for cleartext in the firewall table
  (:mod:`pfkeyd.dataplane.nft`: bypass and none let the socket's traffic in, an
  ipsec policy with a request at level require or unique drops cleartext to it).

``pfkeyd stats`` lists them.  The socket must be bound when the policy is set (IKE
daemons bind first); the connection's peer credentials must be root's or the
daemon's user's, as on the PF_KEY socket.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable

import trio

from pfkeyd.engine.policy import check_request
from pfkeyd.errors import PfkeyError
from pfkeyd.record import record
from pfkeyd.spd import Flow, SecPolicy, Selector
from pfkeyd.wire import Dialect, Direction, ExtType, IpsecRequest, Policy, PolicyScope, PolicyType, SockAddr
from pfkeyd.wire.ext import DeferredError
from pfkeyd.words import request_text

__all__ = ["HEAD", "SocketPolicies", "SocketPolicy", "SocketPolicyListener", "parse_request", "sockpol_path"]

log = logging.getLogger("pfkeyd.sockpol")

#: version, family, protocol, pad, port, pad, address[16]
HEAD = struct.Struct("!BBBxH2x16s")
VERSION = 1
_POLICY = struct.Struct("=HHHBBII")  # sadb_x_policy: len, exttype, type, dir, reserved, id, priority
_DIRS = {1: "in", 2: "out"}
_TYPES = {0: "discard", 1: "none", 2: "ipsec", 3: "entrust", 4: "bypass"}
_LINUX_AF_INET6 = socket.AF_INET6
MAX_REQUEST = 4096
MAX_PER_CONNECTION = 8
#: The longest a closed socket's policies wait for its queued packets to be decided.
DRAIN_TIMEOUT = 0.25
#: Linux's parse_ipsecrequests stops at XFRM_MAX_DEPTH requests (ELOOP beyond).
MAX_REQUESTS = 6


def sockpol_path(socket_path: str) -> str:
    """The socket-policy socket beside a PF_KEY socket (``.sock`` -> ``.sockpol``)."""
    if socket_path.endswith(".sock"):
        return socket_path[: -len(".sock")] + ".sockpol"
    return socket_path + ".sockpol"


@record(kw_only=True)
class SocketPolicy:
    """One socket's policy in one direction."""

    owner: int
    family: int
    proto: int
    address: bytes  # 4 or 16 bytes; all zero: any
    port: int
    dir: int
    type: int
    priority: int = 0
    requests: tuple[IpsecRequest, ...] = ()

    def __str__(self) -> str:
        addr = ipaddress.ip_address(self.address)
        proto = {6: "tcp", 17: "udp"}.get(self.proto, str(self.proto))
        head = f"{proto} {addr}[{self.port}] {_DIRS.get(self.dir, self.dir)} {_TYPES.get(self.type, self.type)}"
        return " ".join([head, *(request_text(r) for r in self.requests)])

    def policy_for(self, flow: Flow) -> SecPolicy:
        """This policy as the key engine resolves it for one packet's ``flow``: an
        SPD-shaped policy (id 0, never in the SPD) whose selector is the flow itself,
        as ``ipsec_setspidx_inpcb`` fills a socket policy's index from the packet."""
        src, dst = flow.src, flow.dst
        sel = Selector(
            SockAddr(src.ip, flow.sport),
            src.ip.max_prefixlen,
            SockAddr(dst.ip, flow.dport),
            dst.ip.max_prefixlen,
            flow.proto,
        )
        return SecPolicy(0, self.dir, sel, self.type, self.requests, self.priority, 0, 0.0, 0, scope=PolicyScope.GLOBAL)


def parse_request(data: bytes, owner: int) -> SocketPolicy:
    """A socket-policy datagram (see the module doc) -> the policy; OSError(EINVAL)
    naming what is wrong (pure)."""
    if len(data) < HEAD.size + _POLICY.size:
        raise OSError(errno.EINVAL, f"socket policy request of {len(data)} bytes is too short")
    version, family, proto, port, raw = HEAD.unpack_from(data)
    if version != VERSION:
        raise OSError(errno.EINVAL, f"socket policy request version {version} (expected {VERSION})")
    if family == socket.AF_INET:
        address = raw[:4]
    elif family == _LINUX_AF_INET6:
        address = raw
    else:
        raise OSError(errno.EAFNOSUPPORT, f"socket policy for address family {family}")
    pol = data[HEAD.size :]
    plen, _ext, ptype, pdir, _res, _id, prio = _POLICY.unpack_from(pol)
    if plen * 8 != len(pol) or plen * 8 < _POLICY.size:
        raise OSError(errno.EINVAL, f"sadb_x_policy length {plen * 8} differs from the {len(pol)} bytes given")
    if pdir not in _DIRS:
        raise OSError(errno.EINVAL, f"socket policy direction {pdir} (in or out only)")
    if ptype not in _TYPES:
        raise OSError(errno.EINVAL, f"socket policy type {ptype}")
    requests: tuple[IpsecRequest, ...] = ()
    if ptype == PolicyType.IPSEC:
        requests = _requests(pol)
    return SocketPolicy(
        owner=owner,
        family=family,
        proto=proto,
        address=address,
        port=port,
        dir=pdir,
        type=ptype,
        priority=prio,
        requests=requests,
    )


def _requests(pol: bytes) -> tuple[IpsecRequest, ...]:
    """The ipsecrequests of an ipsec socket policy (Linux layout), checked as SPDADD's."""
    try:
        requests = Policy.decode(ExtType.X_POLICY, pol, 0, len(pol), Dialect.LINUX.spec, 0).requests
    except DeferredError as e:
        raise OSError(e.errno, str(e)) from None
    if not requests:
        raise OSError(errno.EINVAL, "an ipsec socket policy needs at least one request")
    if len(requests) > MAX_REQUESTS:
        raise OSError(errno.ELOOP, f"more than {MAX_REQUESTS} ipsecrequests")
    for r in requests:
        try:
            check_request(r)
        except PfkeyError as e:
            raise OSError(e.errno, e.message) from None
    return requests


class SocketPolicies:
    """The per-socket policies in force: added per connection, removed with it."""

    def __init__(self) -> None:
        self._by_owner: dict[int, dict[int, SocketPolicy]] = {}
        # direction -> (proto, port) -> policies of that protocol and local port.  The
        # packet thread reads these while the trio thread changes them: each entry is
        # a tuple replaced whole, so a reader gets one consistent tuple from one get.
        self._index: dict[int, dict[tuple[int, int], tuple[SocketPolicy, ...]]] = {
            Direction.INBOUND: {},
            Direction.OUTBOUND: {},
        }
        self._out = self._index[Direction.OUTBOUND]
        self._in = self._index[Direction.INBOUND]
        #: moves whenever a policy is set or removed (caches and the firewall follow it)
        self.generation = 0

    def __len__(self) -> int:
        return sum(len(d) for d in self._by_owner.values())

    def add(self, pol: SocketPolicy) -> None:
        """Set ``pol`` (replacing its socket's policy in that direction)."""
        mine = self._by_owner.setdefault(pol.owner, {})
        if pol.dir not in mine and len(mine) >= MAX_PER_CONNECTION:
            raise OSError(errno.ENOBUFS, "too many socket policies on one connection")
        old = mine.get(pol.dir)
        if old is not None:
            self._unindex(old)
        mine[pol.dir] = pol
        index = self._index[pol.dir]
        key = (pol.proto, pol.port)
        index[key] = (*index.get(key, ()), pol)
        self.generation += 1

    def _unindex(self, pol: SocketPolicy) -> None:
        index = self._index[pol.dir]
        key = (pol.proto, pol.port)
        rest = tuple(p for p in index.get(key, ()) if p is not pol)
        if rest:
            index[key] = rest
        else:
            index.pop(key, None)

    def owners(self) -> set[int]:
        return set(self._by_owner)

    def remove_owner(self, owner: int) -> int:
        """Forget every policy of connection ``owner``; how many there were."""
        mine = self._by_owner.pop(owner, {})
        for pol in mine.values():
            self._unindex(pol)
        if mine:
            self.generation += 1
        return len(mine)

    def match(self, key: tuple[bytes, bytes, int, int, int]) -> SocketPolicy | None:
        """The outbound policy of the socket that sent a packet of flow ``key`` (src,
        dst, proto, sport, dport): by protocol, source port and source address; None
        when no socket policy decides it (entrust leaves it to the SPD)."""
        if not self._out:
            return None
        src, _dst, proto, sport, _dport = key
        return _decides(self._out.get((proto, sport), ()), src)

    def match_in(self, key: tuple[bytes, bytes, int, int, int]) -> SocketPolicy | None:
        """The inbound policy of the socket a datagram of flow ``key`` is for: by
        protocol, destination port and destination address (see :meth:`match`)."""
        if not self._in:
            return None
        _src, dst, proto, _sport, dport = key
        return _decides(self._in.get((proto, dport), ()), dst)

    def outbound_ipsec(self) -> list[SocketPolicy]:
        """The outbound policies of type ipsec (their sockets' packets go to the TUN)."""
        return [p for d in self._by_owner.values() for p in d.values() if p.dir == 2 and p.type == PolicyType.IPSEC]

    def inbound(self) -> list[SocketPolicy]:
        """The inbound policies that decide something (entrust does not), oldest first."""
        return [p for d in self._by_owner.values() for p in d.values() if p.dir == 1 and p.type != _ENTRUST]

    def describe(self) -> list[str]:
        return [str(p) for d in self._by_owner.values() for p in d.values()]

    def policies(self) -> Iterable[SocketPolicy]:
        for d in self._by_owner.values():
            yield from d.values()


_ENTRUST = 3


def _decides(candidates: Iterable[SocketPolicy], local: bytes) -> SocketPolicy | None:
    for pol in candidates:
        if len(pol.address) == len(local) and (pol.address == local or not any(pol.address)):
            return None if pol.type == _ENTRUST else pol
    return None


class SocketPolicyListener:
    """The socket-policy socket (SEQPACKET): one connection per application socket."""

    def __init__(
        self,
        path: str,
        policies: SocketPolicies,
        *,
        allow_uids: Iterable[int] = (),
        on_change: Callable[[], None] | None = None,
        drained: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.path = path
        self.policies = policies
        #: called after a policy is set or removed, before setsockopt is answered
        self.on_change = on_change
        #: awaited before a closed socket's policies go: until the packets it sent
        #: before closing, still queued for the data plane, have been decided
        self.drained = drained
        self._allow = frozenset(allow_uids) | {0, os.geteuid()}
        self._next = 1
        if os.path.exists(path):
            try:
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                probe.connect(path)
                probe.close()
                raise OSError(errno.EADDRINUSE, f"{path}: in use by another daemon")
            except ConnectionRefusedError:
                os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
            os.chmod(path, 0o666)  # any user's IKE daemon may set its own socket's bypass; uids are checked
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        conn, _ = self.sock.accept()
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(self.sock)
                        continue
                    conn.setblocking(False)
                    nursery.start_soon(self._session, conn)
        finally:
            self.close()

    def _uid(self, conn: socket.socket) -> int:
        cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", cred)[1])

    async def _session(self, conn: socket.socket) -> None:
        owner = self._next
        self._next += 1
        try:
            if self._uid(conn) not in self._allow:
                log.warning("socket policy connection from an unauthorised uid refused")
                return
            while True:
                try:
                    data = conn.recv(MAX_REQUEST)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(conn)
                    continue
                if not data:
                    return
                try:
                    pol = parse_request(data, owner)
                    self.policies.add(pol)
                    err = 0
                    log.info("socket policy set: %s", pol)
                except OSError as e:
                    err = e.errno or errno.EINVAL
                    log.info("socket policy refused: %s", e.strerror)
                else:
                    self._changed()
                try:
                    conn.send(struct.pack("=i", err))
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(conn)
                    conn.send(struct.pack("=i", err))
        except OSError as e:
            log.debug("socket policy connection: %s", e.strerror)
        finally:
            if self.drained is not None and owner in self.policies.owners():
                # Shielded: at shutdown too the socket's last packets keep its policy.
                with trio.CancelScope(shield=True), trio.move_on_after(DRAIN_TIMEOUT):
                    await self.drained()
            n = self.policies.remove_owner(owner)
            if n:
                log.info("socket closed: %d socket polic%s removed", n, "y" if n == 1 else "ies")
                self._changed()
            trio.lowlevel.notify_closing(conn)
            conn.close()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
