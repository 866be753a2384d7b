"""The SPD lookup: the decision the packet path takes for a flow, and the ACQUIRE it
triggers (reference §6.2, §6.4, §7.4)."""

from __future__ import annotations

from pfkeyd.effects import Effect, Instant, Send
from pfkeyd.engine.messages import (
    index_matches,
)
from pfkeyd.engine.sa import SaHandlers
from pfkeyd.knobs import Knobs
from pfkeyd.record import record
from pfkeyd.sad import (
    SaIndex,
    SecAssoc,
)
from pfkeyd.spd import Flow, SecPolicy
from pfkeyd.wire import (
    Direction,
    IpProto,
    IpsecRequest,
    Level,
    Mode,
    PolicyType,
    SockAddr,
)
from pfkeyd.wire.constants import PROTO_SATYPE

__all__ = ["Decision", "DeflevTable", "Lookup", "RequestOutcome", "deflev_table", "request_level"]


@record
class RequestOutcome:
    """What one ipsecrequest of the matching policy found."""

    request: IpsecRequest
    level: int
    index: SaIndex
    sa: SecAssoc | None
    acquire_seq: int = 0  # the seq of the ACQUIRE sent now (0: none sent)
    acquire_recipients: int = 0  # how many registered key managers it went to
    #: False for an outbound request after one that dropped the packet (level
    #: require or unique, no SA): no SA was looked for and no ACQUIRE sent.
    reached: bool = True


@record
class Decision:
    """The outcome of a lookup: ``action`` is "ipsec", "pass" or "discard"."""

    action: str
    policy: SecPolicy | None
    default: bool = False
    requests: tuple[RequestOutcome, ...] = ()
    held: bool = False


class Lookup(SaHandlers):
    """The lookup of a flow in the SPD and the SAD."""

    def lookup(self, dir_: int, flow: Flow, now: Instant) -> tuple[Decision, list[Effect]]:
        """Decide a flow as the packet path will (reference §6.2, §6.4, §7.4).

        Finds the policy, then for each ipsecrequest the SA that output would use;
        a request without a usable SA triggers a (paced) ACQUIRE.  Returns the
        decision and the effects (ACQUIREs) to carry out.
        """
        sp = self.spd.lookup(dir_, flow)
        if sp is None:
            action = "discard" if self.knobs.def_policy == 0 else "pass"
            return Decision(action, None, default=True), []
        return self.resolve(dir_, flow, sp, now)

    def resolve(self, dir_: int, flow: Flow, sp: SecPolicy, now: Instant) -> tuple[Decision, list[Effect]]:
        """The decision of policy ``sp`` for ``flow``: the SA of each request, the
        ACQUIREs (paced) for those without one.  :meth:`lookup` calls it with the
        SPD's match; the data plane with a per-socket policy, which FreeBSD's
        ``ipsec_getpolicybysock`` consults before the SPD and whose requests are then
        resolved exactly as an SPD policy's (``ipsec4_allocsa``)."""
        sp.touch(now.mono, now.wall)
        if sp.type != PolicyType.IPSEC:
            return Decision("discard" if sp.type == PolicyType.DISCARD else "pass", sp), []
        effects: list[Effect] = []
        outcomes: list[RequestOutcome] = []
        held = False
        # The packet's addresses as each request of the bundle finds them: a request
        # whose tunnel was applied leaves the outer header, and the later requests are
        # resolved against it (FreeBSD: ipsec_process_done -> ipsec4_perform_request
        # (idx + 1) -> ipsec4_allocsa reads the mbuf's IP header; Linux:
        # xfrm_tmpl_resolve_one moves daddr/saddr to a found tunnel state's).  A
        # request bypassed at level use leaves the packet, and the addresses, as
        # they were.
        src, dst = flow.src.without_port(), flow.dst.without_port()
        for r in sp.requests:
            level = self._level(r, flow.src.version)
            index = _request_index(r, src, dst)
            if held and dir_ != Direction.INBOUND:
                # An earlier request needed an SA it has not got: the packet was
                # dropped there, and neither kernel looks at the later requests.
                outcomes.append(RequestOutcome(r, level, index, None, reached=False))
                continue
            sa = self._usable_sa(index)
            acquire_seq = recipients = 0
            if dir_ == Direction.INBOUND:
                # A clear packet that a REQUIRE/UNIQUE request should have protected is
                # dropped (ipsec_in_reject); inbound traffic never triggers an ACQUIRE.
                held = held or level in (Level.REQUIRE, Level.UNIQUE)
            elif sa is None:
                # key_allocsa_policy -> key_acquire(saidx): the ACQUIRE names this
                # request's SA index, so a later request's carries the outer addresses.
                rec = self.acquires.trigger(index, now.mono, self.knobs.blockacq_count)
                if rec is not None:
                    acquire_seq = rec.seq
                    satype = PROTO_SATYPE[index.proto]
                    sent = self._acquire_message(rec.seq, index, satype, sp, sp.selector)
                    recipients = len({c for e in sent if isinstance(e, Send) and not e.promisc for c in e.to})
                    effects += sent
                if level in (Level.REQUIRE, Level.UNIQUE):
                    held = True
            if sa is not None and r.mode == Mode.TUNNEL:
                src, dst = index.src, index.dst
            outcomes.append(RequestOutcome(r, level, index, sa, acquire_seq, recipients))
        self._count(effects)
        action = "discard" if held else "ipsec"
        return Decision(action, sp, requests=tuple(outcomes), held=held), effects

    def _level(self, r: IpsecRequest, version: int) -> int:
        return request_level(r, version, self._deflev_table())

    def _deflev_table(self) -> DeflevTable:
        """:func:`deflev_table` of the current knobs, kept while they do not change."""
        k = self.knobs
        cached = self._deflev
        if cached is not None and cached[0] is k:
            return cached[1]
        table = deflev_table(k)
        self._deflev = (k, table)
        return table

    def _usable_sa(self, index: SaIndex) -> SecAssoc | None:
        """key_allocsa_policy: an alive SA of a matching SA index; the oldest with
        net.key.preferred_oldsa (the default), else the newest.  Never LARVAL."""
        best: SecAssoc | None = None
        oldest = bool(self.knobs.preferred_oldsa)
        for head in self.sad.heads_for(index.proto, index.src, index.dst):
            if not head.alive or not index_matches(head.index, index):
                continue
            values = head.alive.values()
            sa = next(iter(values)) if oldest else next(reversed(values))
            if best is None or (sa.created < best.created if oldest else sa.created > best.created):
                best = sa
        return best


#: (IP version, protocol, mode) -> the level a request at level default takes.
DeflevTable = dict[tuple[int, int, int], int]


def deflev_table(k: Knobs) -> DeflevTable:
    """(IP version, protocol, mode) -> the *_deflev knob's level (pure)."""
    return {
        (4, IpProto.ESP, Mode.TRANSPORT): k.esp_trans_deflev,
        (4, IpProto.ESP, Mode.TUNNEL): k.esp_net_deflev,
        (4, IpProto.AH, Mode.TRANSPORT): k.ah_trans_deflev,
        (4, IpProto.AH, Mode.TUNNEL): k.ah_net_deflev,
        (6, IpProto.ESP, Mode.TRANSPORT): k.esp6_trans_deflev,
        (6, IpProto.ESP, Mode.TUNNEL): k.esp6_net_deflev,
        (6, IpProto.AH, Mode.TRANSPORT): k.ah6_trans_deflev,
        (6, IpProto.AH, Mode.TUNNEL): k.ah6_net_deflev,
    }


def request_level(r: IpsecRequest, version: int, table: DeflevTable) -> int:
    """ipsec_get_reqlevel: DEFAULT resolves through the *_deflev knobs (``table``);
    a knob outside 1..3 means REQUIRE; IPComp is always USE (pure)."""
    if r.proto == IpProto.IPCOMP:
        return Level.USE
    if r.level != Level.DEFAULT:
        return r.level
    level = table.get((version, r.proto, r.mode), Level.REQUIRE)
    return level if level in (Level.USE, Level.REQUIRE, Level.UNIQUE) else Level.REQUIRE


def _request_index(r: IpsecRequest, src: SockAddr, dst: SockAddr) -> SaIndex:
    """The SA index a request needs for a packet from ``src`` to ``dst`` (without
    ports): the tunnel endpoints in tunnel mode, the packet's addresses in transport
    mode (ipsec4_allocsa, ipsec_setup_saidx); reqid for unique."""
    if r.mode == Mode.TUNNEL and isinstance(r.src, SockAddr) and isinstance(r.dst, SockAddr):
        src, dst = r.src.without_port(), r.dst.without_port()
    reqid = r.reqid if r.level == Level.UNIQUE else 0
    return SaIndex(r.proto, r.mode, reqid, src, dst)
