"""The SA handlers: GETSPI, UPDATE, ADD, DELETE, GET, ACQUIRE, REGISTER, FLUSH,
DUMP and X_PROMISC, as FreeBSD's key.c serves them (reference §3, §7)."""

from __future__ import annotations

from typing import Any

from pfkeyd import algorithms
from pfkeyd.effects import Dump, Effect
from pfkeyd.engine.core import EngineCore, Request
from pfkeyd.engine.messages import (
    addresses,
    host_ext,
    identities,
    index_matches,
    inet,
    lifetimes,
    natt_of,
    proto_of,
    render_sa,
    sa_index,
    sa_message,
    same_head,
    with_port,
    x1_reply,
)
from pfkeyd.errors import (
    AlreadyExists,
    InvalidArgument,
    NoEntry,
    NoSuchEntry,
    ProtocolNotSupported,
)
from pfkeyd.packet import sa as packet_sa
from pfkeyd.sad import (
    SaIndex,
    SecAssoc,
)
from pfkeyd.spd import SecPolicy, Selector
from pfkeyd.wire import (
    Address,
    AuthAlg,
    Dialect,
    EncAlg,
    Extension,
    ExtType,
    Filter,
    IpProto,
    Key,
    Message,
    MsgType,
    Policy,
    Prop,
    Sa,
    Sa2,
    SaFlag,
    SaReplay,
    SaState,
    SaType,
)
from pfkeyd.wire.constants import KEY_FLAGS_MAX, X_EXT_OLD

__all__ = ["SaHandlers"]

_DERIV = int(SaFlag.X_EXT_DERIV)
_RAWCPI = int(SaFlag.X_EXT_RAWCPI)
_REGISTRABLE = frozenset({SaType.AH, SaType.ESP, SaType.X_IPCOMP, SaType.X_TCPSIGNATURE})
_MAX_SA_REPLAY = 2**32 - 33


class SaHandlers(EngineCore):
    """The handlers of the SA messages; each checks everything before it changes anything."""

    def _sa_values(self, req: Request, proto: int) -> dict[str, Any]:
        """key_setsaval: every check of reference §7.3, and the values an ADD or a
        LARVAL-completing UPDATE sets.  Changes nothing."""
        msg = req.msg
        sa = msg.sa
        assert sa is not None
        flags = sa.flags
        replay, window = _replay_values(sa, msg.sa_replay)
        key_auth, key_enc = msg.key_auth, msg.key_encrypt
        _check_keys(proto, sa, key_auth, key_enc)
        _check_sa_fields(proto, msg.satype, sa)
        hard, soft = lifetimes(msg, req.dialect)
        identities(msg)
        algorithms.check_sa(proto, sa.auth, sa.encrypt, key_auth, key_enc, flags, req.dialect)
        # The packet path must be able to run every SA it may be handed: refused here,
        # never when a packet arrives (issue 12).
        packet_sa.check(proto, sa.auth, sa.encrypt, key_auth, key_enc, flags, req.dialect)
        auth = sa.auth
        if proto == IpProto.ESP and key_enc is not None:
            # esp_init records the GMAC/Poly1305 id of a combined-mode SA.
            auth = algorithms.implied_auth(sa.encrypt, (key_enc.bits + 7) // 8) or auth
        return {
            "auth": auth,
            "encrypt": sa.encrypt,
            "flags": flags,
            "replay": replay,
            "replay_window": window,
            "key_auth": key_auth,
            "key_encrypt": key_enc,
            "hard": hard,
            "soft": soft,
            "natt": natt_of(msg, proto),
            "created": req.now.mono,
            "created_wall": self.shared(req.now.wall),
        }

    def _getspi(self, req: Request) -> list[Effect]:
        """<base, address(SD), (SPI range), (SA2)> -> <base, SA(*), address(SD)>"""
        msg = req.msg
        proto = proto_of(msg.satype)
        index = sa_index(msg, proto)
        rng = msg.spirange
        lo, hi = (rng.min, rng.max) if rng is not None else (self.knobs.spi_minval, self.knobs.spi_maxval)
        self.check_sa_room()
        spi = self.new_spi(proto, lo, hi)
        sa = SecAssoc(
            spi,
            msg.satype,
            index,
            SaState.LARVAL,
            0,
            0,
            0,
            0,
            0,
            None,
            None,
            msg.seq,
            self.shared(msg.pid),
            req.now.mono,
            self.shared(req.now.wall),
        )
        self.insert_sa(sa)
        src, dst = addresses(msg)
        reply = Message(MsgType.GETSPI, msg.satype, msg.seq, msg.pid, 0, 0, (Sa(spi), src, dst))
        return self.to_one(req, reply)

    def _update(self, req: Request) -> list[Effect]:
        """<base, SA, (SA2), address(SD), (lifetime(HS)), (key(AE)), (identity(SD)),
        (NAT-T)> -> <base, SA, (SA2), address(SD), (lifetime(HS)), ...> to ALL"""
        msg = req.msg
        sa_ext = msg.sa
        assert sa_ext is not None  # required (pfkeyd.engine.extensions)
        proto = proto_of(msg.satype)
        lifetimes(msg, req.dialect)
        index = sa_index(msg, proto)
        sa = self.sad.get(sa_ext.spi)
        if sa is None:
            raise InvalidArgument(f"no SA with SPI {sa_ext.spi:#x}")  # EINVAL, not ESRCH (key.c)
        if sa.pid != msg.pid:
            raise InvalidArgument(f"SA {sa_ext.spi:#x} belongs to pid {sa.pid}")
        if not index_matches(sa.index, index):
            raise NoSuchEntry(f"SA {sa_ext.spi:#x} has another SA index")
        if sa.state == SaState.LARVAL:
            if (proto == IpProto.ESP and msg.key_encrypt is None) or (proto == IpProto.AH and msg.key_auth is None):
                raise InvalidArgument("the SA needs its key")
            values = self._sa_values(req, proto)
            new = sa.evolve(state=SaState.MATURE, **values)
        else:
            if msg.key_auth is not None or msg.key_encrypt is not None:
                raise InvalidArgument("the keys of a mature SA cannot change")
            hard, soft = lifetimes(msg, req.dialect)
            if hard is None and soft is None and sa.state == SaState.DYING:
                hard, soft = sa.hard, sa.soft  # a DYING SA keeps its limits
            new = sa.evolve(state=SaState.MATURE, hard=hard, soft=soft)
            new = self._natt_changed(new, msg, proto)
            new = self._moved(new, msg)
        self.sad.replace(sa, new)
        self.schedule(new)
        return self.to_all(req, x1_reply(msg))

    def _natt_changed(self, sa: SecAssoc, msg: Message, proto: int) -> SecAssoc:
        """FreeBSD's clone path for an alive SA that has NAT-T state or is given a
        NAT_T_TYPE: without a new address it needs TYPE, SPORT and DPORT (reference §3.2)."""
        if sa.natt is None and msg.nat_t_type is None:
            return sa
        moving = msg.has(ExtType.X_NEW_ADDRESS_SRC) or msg.has(ExtType.X_NEW_ADDRESS_DST)
        if msg.nat_t_type is None or msg.nat_t_sport is None or msg.nat_t_dport is None:
            if moving:
                return sa
            raise InvalidArgument("an UPDATE of a NAT-T SA needs NAT_T_TYPE, NAT_T_SPORT and NAT_T_DPORT")
        return sa.evolve(natt=natt_of(msg, proto))

    def _moved(self, sa: SecAssoc, msg: Message) -> SecAssoc:
        """FreeBSD's NEW_ADDRESS_SRC/DST on an alive SA: the SA moves to a new SA index."""
        new_src, new_dst = msg.address(ExtType.X_NEW_ADDRESS_SRC), msg.address(ExtType.X_NEW_ADDRESS_DST)
        if new_src is None and new_dst is None:
            return sa
        idx = sa.index
        src = inet(new_src, "new source") if new_src is not None else idx.src
        dst = inet(new_dst, "new destination") if new_dst is not None else idx.dst
        if src.version != dst.version:
            raise InvalidArgument("new addresses of different families")
        return sa.evolve(index=SaIndex(idx.proto, idx.mode, idx.reqid, src, dst))

    def _add(self, req: Request) -> list[Effect]:
        """<base, SA, (SA2), address(SD), (lifetime(HS)), key(AE), (identity(SD)),
        (NAT-T)> -> <base, SA, (SA2), address(SD), (lifetime(HS)), ...> to ALL"""
        msg = req.msg
        sa_ext = msg.sa
        assert sa_ext is not None  # required (pfkeyd.engine.extensions)
        addresses(msg)
        lifetimes(msg, req.dialect)
        if (msg.satype == SaType.ESP and msg.key_encrypt is None) or (msg.satype == SaType.AH and msg.key_auth is None):
            raise InvalidArgument("the SA needs its key")
        proto = proto_of(msg.satype)
        index = sa_index(msg, proto)
        spi = sa_ext.spi
        if proto == IpProto.TCP:
            if self.sad.heads_for(proto, index.src, index.dst):
                raise AlreadyExists("a TCP-MD5 SA for these addresses exists")
            spi = self._tcpmd5_spi(spi)
        else:
            self.check_spi(proto, spi)
        self.check_sa_room()
        values = self._sa_values(req, proto)
        sa = SecAssoc(spi, msg.satype, index, SaState.MATURE, seq=msg.seq, pid=self.shared(msg.pid), **values)
        self.insert_sa(sa)
        return self.to_all(req, x1_reply(msg))

    def _tcpmd5_spi(self, spi: int) -> int:
        """TCP-MD5 SAs are unique by address pair; a clashing SPI is replaced silently."""
        if spi not in self.sad.by_spi:
            return spi
        return self.new_spi(IpProto.TCP, 0x1000, 0xFFFFFFFF)

    def _delete(self, req: Request) -> list[Effect]:
        """<base, (SA), address(SD)> -> <base, (SA), address(SD)> to ALL.  Without SA
        (a FreeBSD extension) every MATURE and DYING SA of the addresses goes."""
        msg = req.msg
        proto = proto_of(msg.satype)
        index = sa_index(msg, proto)
        src, dst = addresses(msg)
        sa_ext = msg.sa
        if sa_ext is None:
            for head in self.sad.heads_for(index.proto, index.src, index.dst):
                for sa in list(head.alive.values()):
                    self.sad.remove(sa)
            return self.to_all(req, Message(MsgType.DELETE, msg.satype, msg.seq, msg.pid, 0, 0, (src, dst)))
        sa = self._lookup(sa_ext.spi, index)
        self.sad.remove(sa)
        return self.to_all(req, Message(MsgType.DELETE, msg.satype, msg.seq, msg.pid, 0, 0, (sa_ext, src, dst)))

    def _lookup(self, spi: int, index: SaIndex) -> SecAssoc:
        if index.proto == IpProto.TCP:
            heads = self.sad.heads_for(index.proto, index.src, index.dst)
            found = next((sa for h in heads for sa in h.alive.values()), None)
        else:
            found = self.sad.get(spi)
        if found is None or not same_head(found.index, index):
            raise NoSuchEntry(f"no SA with SPI {spi:#x} for these addresses")
        return found

    def _get(self, req: Request) -> list[Effect]:
        """<base, SA, address(SD)> -> <base, SA, (lifetimes), address(SD), (keys)> to ONE"""
        msg = req.msg
        sa_ext = msg.sa
        assert sa_ext is not None  # required (pfkeyd.engine.extensions)
        proto = proto_of(msg.satype)
        index = sa_index(msg, proto)
        sa = self._lookup(sa_ext.spi, index)
        return self.to_one(req, sa_message(sa, MsgType.GET, msg.seq, msg.pid, req.dialect))

    def _register(self, req: Request) -> list[Effect]:
        """<base> -> <base, supported> to REGISTERED and the requester"""
        msg = req.msg
        state = self.clients[req.client]
        if msg.satype != SaType.UNSPEC:
            if msg.satype not in _REGISTRABLE:
                raise InvalidArgument(f"satype {msg.satype} cannot be registered")
            if msg.satype in state.registered:
                raise AlreadyExists(f"already registered for satype {msg.satype}")
        if msg.satype != SaType.UNSPEC:
            state.registered.add(msg.satype)

        def reply(dialect: Dialect) -> Message:
            return Message(MsgType.REGISTER, msg.satype, msg.seq, msg.pid, 0, 0, algorithms.supported_exts(dialect))

        # REGISTERED plus the requester; each socket gets its own dialect's lists.
        return self.to_registered(reply, requester=req.client)

    def _flush(self, req: Request) -> list[Effect]:
        """<base> -> <base> to ALL: every SA of the satype's protocol (all for UNSPEC)."""
        msg = req.msg
        proto = None if msg.satype == SaType.UNSPEC else proto_of(msg.satype)
        for sa in self.sad.of_proto(proto):
            self.sad.remove(sa)
        return self.to_all(req, Message(MsgType.FLUSH, msg.satype, msg.seq, msg.pid, 0, 0, ()))

    def _dump(self, req: Request) -> list[Effect]:
        """<base> -> <base, SA, ...> * n, seq counting down to 0, to the requester."""
        msg = req.msg
        proto = None if msg.satype == SaType.UNSPEC else proto_of(msg.satype)
        items = self.sad.snapshot(proto)
        flt = msg.get(ExtType.X_FILTER)
        if isinstance(flt, Filter):
            items = filtered(items, flt)
        if not items:
            raise NoEntry("no SAD entries")
        return [Dump(req.client, items, render_sa, msg.pid)]

    def _promisc_mode(self, req: Request) -> list[Effect]:
        """<base> (satype 1 on, 0 off) -> the same message to ALL."""
        msg = req.msg
        if not msg.exts:
            if msg.satype not in (0, 1):
                raise InvalidArgument(f"X_PROMISC takes satype 0 or 1, not {msg.satype}")
            self.clients[req.client].promisc = msg.satype == 1
            self._promiscuous = sum(s.promisc for s in self.clients.values())
        return self.to_all(req, msg.replace(errno=0))

    def _acquire(self, req: Request) -> list[Effect]:
        """SADB_ACQUIRE from a key manager: a failure report (header only) or, rarely,
        a request for an SA (reference §3.6)."""
        msg = req.msg
        if not msg.exts:
            if msg.seq and msg.errno:
                self.acquires.failed(msg.seq, req.now.mono)
            return []
        proto = proto_of(msg.satype)
        index = sa_index(msg, proto)
        if msg.proposal is None:
            raise InvalidArgument("PROPOSAL is required")
        if any(index_matches(h.index, index) for h in self.sad.heads_for(index.proto, index.src, index.dst)):
            raise AlreadyExists("an SA index for these addresses exists")
        rec = self.acquires.trigger(index, req.now.mono, self.knobs.blockacq_count)
        return [] if rec is None else self._acquire_message(rec.seq, index, msg.satype, None, None)

    def _acquire_message(
        self, seq: int, index: SaIndex, satype: int, sp: SecPolicy | None, flow_sel: Selector | None
    ) -> list[Effect]:
        """SADB_ACQUIRE to the registered sockets (reference §7.4 step 4)."""
        src_ext, dst_ext = host_ext(ExtType.ADDRESS_SRC, index.src), host_ext(ExtType.ADDRESS_DST, index.dst)
        if sp is not None and flow_sel is not None and sp.selector.proto in (IpProto.TCP, IpProto.UDP):
            # The policy's TCP/UDP selector travels: its protocol, its port and prefix.
            sel = sp.selector
            proto = sel.proto
            src_ext = Address(
                ExtType.ADDRESS_SRC,
                with_port(index.src, sel.src.port),
                sel.src_len if sel.src.port else index.src.max_prefix,
                proto,
            )
            dst_ext = Address(
                ExtType.ADDRESS_DST,
                with_port(index.dst, sel.dst.port),
                sel.dst_len if sel.dst.port else index.dst.max_prefix,
                proto,
            )
        head: list[Extension] = [src_ext, dst_ext]
        if sp is not None:
            # key_setsadbxpolicy fills type, direction, id and priority only: the scope
            # byte stays 0 (which the linux dialect, where it is reserved, can carry).
            head.append(Policy(sp.type, sp.dir, sp.id, sp.priority))
        if index.reqid:
            head.append(Sa2(index.mode, 0, index.reqid))
        knobs = self.knobs

        def build(dialect: Dialect) -> Message:
            exts = list(head)
            combs = algorithms.proposal(index.proto, knobs, dialect)
            if combs:
                exts.append(Prop(32, combs))
            return Message(MsgType.ACQUIRE, satype, seq, 0, 0, 0, tuple(exts))

        return self.to_registered(build)


def filtered(items: list[SecAssoc], flt: Filter) -> list[SecAssoc]:
    """Linux SADB_X_EXT_FILTER: SAs whose addresses fall in both prefixes."""
    if flt.splen >= 128 or flt.dplen >= 128:
        raise InvalidArgument("filter prefix lengths must be below 128")
    import ipaddress

    if flt.family not in (4, 6) or isinstance(flt.saddr, bytes) or isinstance(flt.daddr, bytes):
        return []
    snet = ipaddress.ip_network(f"{flt.saddr}/{min(flt.splen, flt.saddr.max_prefixlen)}", strict=False)
    dnet = ipaddress.ip_network(f"{flt.daddr}/{min(flt.dplen, flt.daddr.max_prefixlen)}", strict=False)
    return [sa for sa in items if sa.index.src.ip in snet and sa.index.dst.ip in dnet]


def _replay_values(sa: Sa, ext: SaReplay | None) -> tuple[int, int]:
    """The SA's replay field and replay window (0: none) from its flags and the
    X_SA_REPLAY extension; checks the flags and the window's size."""
    flags = sa.flags
    if flags & ~KEY_FLAGS_MAX:
        error = f"flags {flags:#x} outside {KEY_FLAGS_MAX:#x}"
        raise InvalidArgument(error)
    replay = 0 if flags & X_EXT_OLD else sa.replay
    if ext is None:
        return replay, 0
    if ext.replay > _MAX_SA_REPLAY:
        error = f"replay window {ext.replay} is too large"
        raise InvalidArgument(error)
    # The kernel keeps (n + 7) / 8 bitmap bytes and reports bytes x 8 (§4.16).
    window = (ext.replay + 7) // 8 * 8
    return min(window // 8, 255), window


def _check_keys(proto: int, sa: Sa, key_auth: Key | None, key_enc: Key | None) -> None:
    """key_setsaval's checks of the keys' presence against the protocol."""
    if key_auth is not None:
        if proto == IpProto.IPCOMP:
            raise InvalidArgument("IPComp SAs take no authentication key")
        if not key_auth.data and sa.auth != AuthAlg.X_NULL:
            raise InvalidArgument("empty authentication key")
    if key_enc is not None:
        if proto in (IpProto.AH, IpProto.TCP):
            raise InvalidArgument("AH and TCP-MD5 SAs take no encryption key")
        if proto == IpProto.ESP and not key_enc.data and sa.encrypt != EncAlg.NULL:
            raise InvalidArgument("empty encryption key")
        if proto == IpProto.IPCOMP and key_enc.data:
            raise InvalidArgument("an IPComp SA's encryption key must be empty")


def _check_sa_fields(proto: int, satype: int, sa: Sa) -> None:
    """key_setsaval's per-protocol checks of the SA extension's flags and algorithms."""
    flags = sa.flags
    if proto == IpProto.AH:
        if flags & _DERIV or sa.encrypt != EncAlg.NONE:
            raise InvalidArgument("AH SAs take neither the DERIV flag nor an encryption algorithm")
    elif proto == IpProto.ESP:
        if flags & X_EXT_OLD and flags & _DERIV:
            raise InvalidArgument("the OLD and DERIV flags exclude each other")
    elif proto == IpProto.IPCOMP:
        if sa.auth != AuthAlg.NONE:
            raise InvalidArgument("IPComp SAs take no authentication algorithm")
        if sa.spi >= 0x10000 and not flags & _RAWCPI:
            raise InvalidArgument(f"CPI {sa.spi:#x} needs the RAWCPI flag")
    elif proto == IpProto.TCP:
        if sa.encrypt != EncAlg.NONE:
            raise InvalidArgument("TCP-MD5 SAs take no encryption algorithm")
    else:
        raise ProtocolNotSupported(f"satype {satype} is not supported")
