"""The SPD handlers: X_SPDADD, X_SPDUPDATE, X_SPDSETIDX, X_SPDDELETE, X_SPDDELETE2,
X_SPDGET, X_SPDFLUSH, X_SPDDUMP (reference §3.12, §6) and Linux's X_MIGRATE."""

from __future__ import annotations

import errno as E
from dataclasses import replace

from pfkeyd.effects import Dump, Effect
from pfkeyd.engine.core import EngineCore, Request
from pfkeyd.engine.messages import (
    render_sp,
    sp_message,
)
from pfkeyd.errors import (
    AlreadyExists,
    InvalidArgument,
    NoEntry,
    PfkeyError,
    ProtocolNotSupported,
)
from pfkeyd.sad import (
    SaIndex,
)
from pfkeyd.spd import SecPolicy, Selector
from pfkeyd.wire import (
    Address,
    Dialect,
    Direction,
    Extension,
    ExtType,
    IpProto,
    IpsecRequest,
    Level,
    Message,
    Mode,
    MsgType,
    Policy,
    PolicyScope,
    PolicyType,
    SockAddr,
)
from pfkeyd.wire.constants import IPSEC_MANUAL_REQID_MAX

__all__ = ["PolicyHandlers", "check_request"]

#: What an X_MIGRATE notification carries (pfkey_send_migrate).
_MIGRATE_EXTS = frozenset({ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST, ExtType.X_POLICY, ExtType.X_KMADDRESS})
_SPD_TYPES = frozenset({PolicyType.DISCARD, PolicyType.NONE, PolicyType.IPSEC})
_LEVELS = frozenset({Level.DEFAULT, Level.USE, Level.REQUIRE, Level.UNIQUE})
#: What SPDADD accepts as a direction: in and out, and Linux's fwd.  The codec gives a
#: freebsd socket's wire 3 an UNKNOWN value, so fwd can only come from a linux socket.
_POLICY_DIRS = frozenset({Direction.INBOUND, Direction.OUTBOUND, Direction.FWD})
#: The most ipsecrequests a policy may have, and the errno beyond (IPSEC_MAXREQ; XFRM_MAX_DEPTH).
_MAX_REQUESTS = {Dialect.FREEBSD: (4, E.EINVAL), Dialect.LINUX: (6, E.ELOOP)}


class PolicyHandlers(EngineCore):
    """The handlers of the policy messages; each checks everything before it changes anything."""

    def _policy_from(self, req: Request, *, for_delete: bool = False) -> tuple[Policy, Selector, Address, Address]:
        """The checks of key_spdadd/key_spddelete on <address(SD), policy>."""
        msg = req.msg
        pol = msg.policy
        src, dst = msg.src, msg.dst
        assert pol is not None and src is not None and dst is not None  # required (pfkeyd.engine.extensions)
        if pol.dir not in _POLICY_DIRS:
            raise InvalidArgument(f"policy direction {pol.dir & 0xFF} is invalid")
        if pol.type not in _SPD_TYPES:
            raise InvalidArgument(f"policy type {pol.type} is not valid in the SPD")
        if pol.type == PolicyType.IPSEC and not pol.requests and not for_delete:
            raise InvalidArgument("an ipsec policy needs at least one request")
        s, d = src.addr, dst.addr
        if not isinstance(s, SockAddr) or not isinstance(d, SockAddr):
            raise InvalidArgument("selector addresses must be IPv4 or IPv6")
        if s.version != d.version:
            raise InvalidArgument("selector address families differ")
        if src.prefixlen > s.max_prefix or dst.prefixlen > d.max_prefix:
            raise InvalidArgument("selector prefix too long")
        if src.proto != dst.proto:
            raise InvalidArgument("selector protocols differ")
        sel = Selector(s, src.prefixlen, d, dst.prefixlen, src.proto)
        return pol, sel, src, dst

    def _requests(self, req: Request, pol: Policy) -> tuple[IpsecRequest, ...]:
        """Validate the ipsecrequests (reference §6.3) and allocate unique reqids."""
        limit = _MAX_REQUESTS[req.dialect]
        out: list[IpsecRequest] = []
        for i, r in enumerate(pol.requests):
            # Counted as parsed, as key_msg2sp and parse_ipsecrequest do: the requests
            # before the one past the limit are checked first.
            if i >= limit[0]:
                raise PfkeyError(f"more than {limit[0]} ipsecrequests", errno=limit[1])
            check_request(r)
            reqid = 0
            if r.level == Level.UNIQUE:
                reqid = r.reqid if 0 < r.reqid <= IPSEC_MANUAL_REQID_MAX else self.new_reqid()
            out.append(IpsecRequest(r.proto, r.mode, r.level, reqid, r.src, r.dst))
        return tuple(out)

    def _spdadd(self, req: Request) -> list[Effect]:
        """<base, address(SD), policy, (lifetime(H))> -> <base, policy, (lifetime(H)),
        address(SD)> to ALL.  SPDUPDATE replaces; SPDADD and SPDSETIDX refuse a duplicate."""
        msg = req.msg
        pol, sel, src, dst = self._policy_from(req)
        old = self.spd.find(pol.dir, sel)
        if old is not None and msg.type != MsgType.X_SPDUPDATE:
            raise AlreadyExists("a policy with this selector exists")
        self.check_policy_room(old)
        requests = self._requests(req, pol) if pol.type == PolicyType.IPSEC else ()
        hard = msg.lifetime_hard
        sp = SecPolicy(
            self.new_policy_id(pol.dir),
            pol.dir,
            sel,
            pol.type,
            requests,
            pol.priority,
            self.spd.next_order(),
            req.now.mono,
            req.now.wall,
            hard.addtime if hard is not None else 0,
            hard.usetime if hard is not None else 0,
            PolicyScope.GLOBAL,
        )
        self.insert_policy(sp, old)
        # The reply carries the request's X_POLICY with the id filled in and the UNIQUE
        # reqids key_msg2sp rewrote; every other byte is echoed as sent (§3.12).
        echoed = (
            tuple(
                IpsecRequest(r.proto, r.mode, r.level, s.reqid, r.src, r.dst) if r.level == Level.UNIQUE else r
                for r, s in zip(pol.requests, requests)
            )
            if requests
            else pol.requests
        )
        reply_pol = Policy(pol.type, pol.dir, sp.id, pol.priority, pol.scope, echoed)
        exts: list[Extension] = [reply_pol]
        if hard is not None:
            exts.append(hard)
        exts += [src, dst]
        return self.to_all(req, Message(msg.type, msg.satype, msg.seq, msg.pid, 0, 0, tuple(exts)))

    def _spddelete(self, req: Request) -> list[Effect]:
        """<base, address(SD), policy(*)> -> <base, policy, address(SD)> to ALL."""
        msg = req.msg
        pol, sel, src, dst = self._policy_from(req, for_delete=True)
        sp = self.spd.find(pol.dir, sel)
        if sp is None:
            raise InvalidArgument("no such policy")  # FreeBSD: EINVAL (Linux: ENOENT)
        self.spd.remove(sp)
        reply_pol = Policy(pol.type, pol.dir, sp.id, pol.priority, pol.scope, pol.requests)
        return self.to_all(req, Message(msg.type, msg.satype, msg.seq, msg.pid, 0, 0, (reply_pol, src, dst)))

    def _policy_by_id(self, req: Request) -> tuple[Policy, SecPolicy | None]:
        pol = req.msg.policy
        assert pol is not None  # required (pfkeyd.engine.extensions)
        return pol, self.spd.by_id.get(pol.id)

    def _spddelete2(self, req: Request) -> list[Effect]:
        """<base, policy(*)> -> <base, policy(*)> to ALL: delete by id."""
        msg = req.msg
        pol, sp = self._policy_by_id(req)
        if sp is None:
            raise InvalidArgument(f"no policy with id {pol.id}")  # FreeBSD: EINVAL
        self.spd.remove(sp)
        return self.to_all(req, Message(msg.type, msg.satype, msg.seq, msg.pid, 0, 0, (pol,)))

    def _spdget(self, req: Request) -> list[Effect]:
        """<base, policy(*)> -> <base, address(SD), policy, (lifetimes)> to ONE."""
        msg = req.msg
        pol, sp = self._policy_by_id(req)
        if sp is None:
            raise NoEntry(f"no policy with id {pol.id}")
        return self.to_one(req, sp_message(sp, MsgType.X_SPDGET, msg.seq, msg.pid, req.dialect))

    def _spdflush(self, req: Request) -> list[Effect]:
        """<base> -> <base> to ALL: every policy goes."""
        msg = req.msg
        for sp in list(self.spd.by_id.values()):
            self.spd.remove(sp)
        self._policy_deadlines.clear()
        return self.to_all(req, Message(msg.type, msg.satype, msg.seq, msg.pid, 0, 0, ()))

    def _spddump(self, req: Request) -> list[Effect]:
        """<base> -> <base, address(SD), policy, ...> * n, seq down to 0, to the requester.
        satype is FreeBSD's scope mask: 0 any, 1 global, 2 ifnet, 4 pcb; pfkeyd has
        only global policies."""
        msg = req.msg
        scope = msg.satype or 0xFF
        items = list(self.spd.ordered()) if scope & PolicyScope.GLOBAL else []
        if not items:
            raise NoEntry("no SPD entries")
        return [Dump(req.client, items, render_sp, msg.pid, MsgType.X_SPDDUMP)]

    def _migrate(self, req: Request) -> list[Effect]:
        """SADB_X_MIGRATE (Linux pfkey_migrate, xfrm_migrate): <base, address(SD),
        policy(dir, pairs of old/new tunnel requests), (kmaddress)> moves the tunnel
        endpoints of the policy with that selector and the SAs of each old endpoint
        pair to the new one, then tells every socket in the same layout (seq 0, pid 0).
        The requester gets no other answer."""
        msg = req.msg
        selector, direction, pairs = _migrate_request(msg)
        sp = self.spd.find(direction, selector)
        if sp is None:
            raise NoEntry("no policy with this selector and direction")
        requests = list(sp.requests)
        moves: list[tuple[SaIndex, SockAddr, SockAddr]] = []
        for old, new in pairs:
            assert isinstance(old.src, SockAddr) and isinstance(old.dst, SockAddr)
            assert isinstance(new.src, SockAddr) and isinstance(new.dst, SockAddr)
            for i, r in enumerate(requests):
                if (r.proto, r.mode, r.src, r.dst) == (old.proto, old.mode, old.src, old.dst) and (
                    not old.reqid or r.reqid == old.reqid
                ):
                    requests[i] = IpsecRequest(r.proto, r.mode, r.level, r.reqid, new.src, new.dst)
            moves.append(
                (
                    SaIndex(old.proto, old.mode, old.reqid, old.src.without_port(), old.dst.without_port()),
                    new.src.without_port(),
                    new.dst.without_port(),
                )
            )
        self.spd.replace(sp, replace(sp, requests=tuple(requests)))
        for index, new_src, new_dst in moves:
            for head in self.sad.heads_for(index.proto, index.src, index.dst):
                if head.index.mode != index.mode or (index.reqid and head.index.reqid != index.reqid):
                    continue
                for sa in [*head.larval.values(), *head.alive.values()]:
                    moved = sa.evolve(index=SaIndex(sa.index.proto, sa.index.mode, sa.index.reqid, new_src, new_dst))
                    self.sad.replace(sa, moved)
                    self.schedule(moved)
        note = Message(
            MsgType.X_MIGRATE, msg.satype, 0, 0, 0, 0, tuple(e for e in msg.exts if e.exttype in _MIGRATE_EXTS)
        )
        return self.to_all(None, note)


def _migrate_request(msg: Message) -> tuple[Selector, int, list[tuple[IpsecRequest, IpsecRequest]]]:
    """An X_MIGRATE's selector, direction and (old, new) request pairs, checked as
    pfkey_migrate does: every request a transform with both endpoints, each pair
    agreeing on protocol and mode."""
    src, dst, pol = msg.src, msg.dst, msg.policy
    assert src is not None and dst is not None and pol is not None  # required (pfkeyd.engine.extensions)
    s, d = src.addr, dst.addr
    if not isinstance(s, SockAddr) or not isinstance(d, SockAddr) or s.version != d.version:
        raise InvalidArgument("selector addresses of one family are required")
    if pol.dir not in _POLICY_DIRS:
        raise InvalidArgument(f"policy direction {pol.dir & 0xFF} is invalid")
    pairs = list(zip(pol.requests[0::2], pol.requests[1::2]))
    if not pairs or len(pol.requests) % 2:
        raise InvalidArgument("X_MIGRATE needs pairs of old and new ipsecrequests")
    for old, new in pairs:
        for r in (old, new):
            if r.proto not in (IpProto.ESP, IpProto.AH, IpProto.IPCOMP) or r.mode not in (
                Mode.TRANSPORT,
                Mode.TUNNEL,
                Mode.BEET,
            ):
                raise InvalidArgument("an ipsecrequest of X_MIGRATE has a bad protocol or mode")
            if not isinstance(r.src, SockAddr) or not isinstance(r.dst, SockAddr):
                raise InvalidArgument("each ipsecrequest of X_MIGRATE carries its endpoints")
        if old.proto != new.proto or old.mode != new.mode:
            raise InvalidArgument("an old and a new ipsecrequest must agree on protocol and mode")
    return Selector(s, src.prefixlen, d, dst.prefixlen, src.proto), pol.dir, pairs


def check_request(r: IpsecRequest) -> None:
    """One ipsecrequest's own checks (key_msg2sp, reference §6.3): protocol, mode,
    level, tunnel endpoints.  SPDADD runs them, and so does a per-socket policy
    (:mod:`pfkeyd.dataplane.sockpol`), as FreeBSD's ``ipsec_set_pcbpolicy`` passes
    the socket's policy through the same ``key_msg2sp``."""
    if r.proto not in (IpProto.ESP, IpProto.AH, IpProto.IPCOMP):
        raise ProtocolNotSupported(f"ipsecrequest protocol {r.proto}")
    if r.mode not in (Mode.TRANSPORT, Mode.TUNNEL):
        raise InvalidArgument(f"ipsecrequest mode {r.mode & 0xFF} is invalid")
    if r.level not in _LEVELS:
        raise InvalidArgument(f"ipsecrequest level {r.level} is invalid")
    if r.mode == Mode.TUNNEL:
        if r.src is None or r.dst is None:
            raise InvalidArgument("a tunnel-mode request needs its endpoints")
        if not isinstance(r.src, SockAddr) or not isinstance(r.dst, SockAddr) or r.src.version != r.dst.version:
            raise InvalidArgument("tunnel endpoints must be of one family")
    elif r.src is not None and (not isinstance(r.src, SockAddr) or not isinstance(r.dst, SockAddr)):
        raise InvalidArgument("request endpoints must be IPv4 or IPv6")
