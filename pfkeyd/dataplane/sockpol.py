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
  closes every descriptor), so a policy never outlives its socket.
* Outbound, the data plane matches a packet's protocol, source address and source
  port against these policies before the SPD (an unbound address matches any).
  ``bypass`` and ``none`` send it in the clear, ``discard`` drops it, ``entrust``
  leaves it to the SPD; an ``ipsec`` socket policy is kept and shown but the SPD
  decides its packets (its requests are not applied; documented in pfkeyd.8).
  Inbound, cleartext IKE never passes through the daemon (the kernel delivers it),
  so an inbound bypass needs nothing more.

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
from collections.abc import Iterable

import trio

from pfkeyd.record import record
from pfkeyd.wire import PolicyType

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
    requests: bytes = b""

    def __str__(self) -> str:
        addr = ipaddress.ip_address(self.address)
        proto = {6: "tcp", 17: "udp"}.get(self.proto, str(self.proto))
        return f"{proto} {addr}[{self.port}] {_DIRS.get(self.dir, self.dir)} {_TYPES.get(self.type, self.type)}" + (
            f" ({len(self.requests)} bytes of requests)" if self.requests else ""
        )


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
    plen, _ext, ptype, pdir, _res, _id, _prio = _POLICY.unpack_from(pol)
    if plen * 8 != len(pol) or plen * 8 < _POLICY.size:
        raise OSError(errno.EINVAL, f"sadb_x_policy length {plen * 8} differs from the {len(pol)} bytes given")
    if pdir not in _DIRS:
        raise OSError(errno.EINVAL, f"socket policy direction {pdir} (in or out only)")
    if ptype not in _TYPES:
        raise OSError(errno.EINVAL, f"socket policy type {ptype}")
    return SocketPolicy(
        owner=owner,
        family=family,
        proto=proto,
        address=address,
        port=port,
        dir=pdir,
        type=ptype,
        requests=pol[_POLICY.size :],
    )


class SocketPolicies:
    """The per-socket policies in force: added per connection, removed with it."""

    def __init__(self) -> None:
        self._by_owner: dict[int, dict[int, SocketPolicy]] = {}
        # (proto, port) -> policies of that protocol and port, outbound only.  The
        # packet thread reads it while the trio thread changes it: each entry is a
        # tuple replaced whole, so a reader gets one consistent tuple from one get.
        self._out: dict[tuple[int, int], tuple[SocketPolicy, ...]] = {}

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
        if pol.dir == 2:
            key = (pol.proto, pol.port)
            self._out[key] = (*self._out.get(key, ()), pol)

    def _unindex(self, pol: SocketPolicy) -> None:
        if pol.dir == 2:
            key = (pol.proto, pol.port)
            rest = tuple(p for p in self._out.get(key, ()) if p is not pol)
            if rest:
                self._out[key] = rest
            else:
                self._out.pop(key, None)

    def remove_owner(self, owner: int) -> int:
        """Forget every policy of connection ``owner``; how many there were."""
        mine = self._by_owner.pop(owner, {})
        for pol in mine.values():
            self._unindex(pol)
        return len(mine)

    def match(self, key: tuple[bytes, bytes, int, int, int]) -> int | None:
        """The outbound policy type for a packet's flow (src, dst, proto, sport,
        dport), or None when no socket policy decides it (entrust counts as none)."""
        if not self._out:
            return None
        src, _dst, proto, sport, _dport = key
        for pol in self._out.get((proto, sport), ()):
            if len(pol.address) == len(src) and (pol.address == src or not any(pol.address)):
                return None if pol.type in (3, PolicyType.IPSEC) else pol.type
        return None

    def describe(self) -> list[str]:
        return [str(p) for d in self._by_owner.values() for p in d.values()]

    def policies(self) -> Iterable[SocketPolicy]:
        for d in self._by_owner.values():
            yield from d.values()


class SocketPolicyListener:
    """The socket-policy socket (SEQPACKET): one connection per application socket."""

    def __init__(self, path: str, policies: SocketPolicies, *, allow_uids: Iterable[int] = ()) -> None:
        self.path = path
        self.policies = policies
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
                try:
                    conn.send(struct.pack("=i", err))
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(conn)
                    conn.send(struct.pack("=i", err))
        except OSError as e:
            log.debug("socket policy connection: %s", e.strerror)
        finally:
            n = self.policies.remove_owner(owner)
            if n:
                log.info("socket closed: %d socket polic%s removed", n, "y" if n == 1 else "ies")
            trio.lowlevel.notify_closing(conn)
            conn.close()

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
