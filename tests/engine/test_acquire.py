"""SADB_ACQUIRE: when a lookup sends one, to whom, what it holds, and its pacing
(reference §3.6, §7.4, §9.2; real-clients.md §3.8)."""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pytest

from pfkeyd import algorithms
from pfkeyd.effects import Effect
from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import Knobs
from pfkeyd.spd import Flow
from pfkeyd.wire import (
    Comb,
    Dialect,
    EncAlg,
    Extension,
    ExtType,
    IpProto,
    Message,
    MsgType,
    PolicyType,
    Prop,
    Sa,
    Sa2,
    SaType,
    encode,
)
from tests.engine.conftest import PID, T0, at, ext_types, make_engine, reply, sends
from tests.engine.spd_helpers import (
    AH,
    DIALECTS,
    ESP,
    FREEBSD,
    IN,
    IPCOMP,
    KM,
    LINUX,
    ME,
    OTHER,
    OUT,
    REQUIRE,
    TRANSPORT,
    TUNNEL,
    UNIQUE,
    USE,
    add_policy,
    add_sa,
    address,
    delivered,
    errno_of,
    flow,
    new_larval,
    on_wire,
    recipients,
    register_km,
    request,
    send,
    tunnel,
)


def _engine(km: Dialect = FREEBSD, **knobs: int) -> KeyEngine:
    """ME and OTHER unregistered (freebsd, linux), KM registered for ESP."""
    eng = make_engine(clients={ME: FREEBSD, OTHER: LINUX, KM: km}, **knobs)
    register_km(eng, KM)
    return eng


def _acquires(effects: Sequence[Effect]) -> list[Message]:
    return [s.msg for s in sends(effects, MsgType.ACQUIRE, promisc=False)]


def _trigger(eng: KeyEngine, f: Flow | None = None, now: float = 1) -> list[Message]:
    """One outbound packet of ``f``: the ACQUIREs it sends (at most one per request)."""
    _, effects = eng.lookup(OUT, f or flow(), at(now))
    return _acquires(effects)


def _seqs(eng: KeyEngine, count: int, f: Flow | None = None, now: float = 1) -> list[int]:
    """``count`` triggers: the seq each one sent (0: suppressed)."""
    out = []
    for _ in range(count):
        msgs = _trigger(eng, f, now)
        assert len(msgs) <= 1
        out.append(msgs[0].seq if msgs else 0)
    return out


# ------------------------------------------------------------- who gets it


def test_acquire_goes_to_registered_sockets_only() -> None:
    eng = _engine()
    add_policy(eng)
    _, effects = eng.lookup(OUT, flow(), at(1))
    assert recipients(effects) == [KM]
    assert all(not s.reply for s in sends(effects, promisc=False))


def test_acquire_reaches_every_registered_socket_whatever_its_satype() -> None:
    # Neither kernel filters REGISTERED delivery by the message's satype (§1.6).
    eng = make_engine(clients={ME: FREEBSD, OTHER: LINUX, KM: FREEBSD})
    register_km(eng, KM, SaType.AH)
    register_km(eng, OTHER, SaType.X_IPCOMP)
    add_policy(eng)
    _, effects = eng.lookup(OUT, flow(), at(1))
    assert recipients(effects) == [OTHER, KM]


def test_no_acquire_when_nobody_is_registered() -> None:
    eng = make_engine(clients={ME: FREEBSD, OTHER: LINUX})
    add_policy(eng)
    decision, effects = eng.lookup(OUT, flow(), at(1))
    assert effects == [] and decision.held


def test_no_acquire_when_a_usable_sa_exists() -> None:
    eng = _engine()
    add_policy(eng)
    add_sa(eng, 0x1001)
    assert _trigger(eng) == []


@pytest.mark.parametrize("level", [REQUIRE, UNIQUE])
def test_require_and_unique_hold_the_flow_back_while_acquiring(level: int) -> None:
    eng = _engine()
    add_policy(eng, requests=[request(ESP, level=level)])
    decision, effects = eng.lookup(OUT, flow(), at(1))
    assert decision.held and decision.action == "discard"
    assert len(_acquires(effects)) == 1
    assert decision.requests[0].acquire_seq == 1


def test_use_lets_the_flow_pass_while_acquiring() -> None:
    eng = _engine()
    add_policy(eng, requests=[request(ESP, level=USE)])
    decision, effects = eng.lookup(OUT, flow(), at(1))
    assert not decision.held and decision.action == "ipsec"
    assert decision.requests[0].sa is None
    assert len(_acquires(effects)) == 1


def test_inbound_lookups_never_acquire() -> None:
    eng = _engine()
    add_policy(eng, dir=IN)
    _, effects = eng.lookup(IN, flow(), at(1))
    assert effects == []


def test_each_request_without_an_sa_gets_its_own_acquire() -> None:
    eng = _engine()
    add_policy(eng, requests=[request(AH, level=USE), request(ESP), request(IPCOMP)])
    add_sa(eng, 0x1001)  # the ESP one has an SA
    msgs = _trigger(eng)
    assert [m.satype for m in msgs] == [SaType.AH, SaType.X_IPCOMP]
    assert [m.seq for m in msgs] == [1, 2]


def test_a_required_request_without_an_sa_ends_the_walk() -> None:
    # ipsec4_allocsa returns ENOENT and the packet is dropped; xfrm_tmpl_resolve_one
    # fails at a non-optional template: the later requests are never looked at.
    eng = _engine()
    add_policy(eng, requests=[request(AH), request(ESP, level=USE), request(IPCOMP)])
    decision, effects = eng.lookup(OUT, flow(), at(1))
    assert [m.satype for m in _acquires(effects)] == [SaType.AH]
    assert [(o.reached, o.acquire_seq) for o in decision.requests] == [(True, 1), (False, 0), (False, 0)]
    assert decision.held and decision.action == "discard"


# ------------------------------------------------- bundles: the later requests


@pytest.mark.parametrize("km", DIALECTS)
def test_acquire_for_a_request_after_a_tunnel_names_the_outer_addresses(km: Dialect) -> None:
    # key_acquire(saidx, sp): the SA index the request was looked up with, which
    # for a request after an applied tunnel holds the tunnel's endpoints.
    eng = _engine(km)
    pid = add_policy(
        eng,
        src="10.3.0.0",
        splen=16,
        dst="10.4.0.0",
        dplen=16,
        requests=[tunnel("192.0.2.1", "198.51.100.2"), request(AH, TRANSPORT, REQUIRE)],
    )
    add_sa(eng, 0x3003, "192.0.2.1", "198.51.100.2", mode=TUNNEL)
    decision, effects = eng.lookup(OUT, flow("10.3.1.1", "10.4.2.2"), at(1))
    msg = delivered(eng, effects)[KM]
    assert (msg.type, msg.satype, msg.seq) == (MsgType.ACQUIRE, SaType.AH, 1)
    assert msg.src == address(ExtType.ADDRESS_SRC, "192.0.2.1")
    assert msg.dst == address(ExtType.ADDRESS_DST, "198.51.100.2")
    assert msg.policy is not None and msg.policy.id == pid
    assert [o.acquire_seq for o in decision.requests] == [0, 1]
    # Pacing and completion go by that SA index too (a GETSPI or ADD must name it).
    assert eng.acquires.by_seq[1].index == decision.requests[1].index
    assert (str(decision.requests[1].index.src), str(decision.requests[1].index.dst)) == ("192.0.2.1", "198.51.100.2")


@pytest.mark.parametrize("km", DIALECTS)
def test_acquire_for_a_bypassed_tunnel_and_the_request_after_it(km: Dialect) -> None:
    # The KAME layout with no SA at all: the IPComp request (level use) asks for its
    # SA between the endpoints and is bypassed; the ESP request then sees the
    # untunnelled packet and asks for an SA between the inner addresses.
    eng = _engine(km)
    add_policy(
        eng,
        src="10.1.0.1",
        dst="10.2.0.1",
        requests=[tunnel("192.0.2.1", "192.0.2.2", level=USE, proto=IPCOMP), request(ESP, TRANSPORT, REQUIRE)],
    )
    _, effects = eng.lookup(OUT, flow("10.1.0.1", "10.2.0.1"), at(1))
    acquires = [on_wire(s.msg, km) for s in sends(effects, MsgType.ACQUIRE, promisc=False)]  # as the KM reads them
    assert [(m.satype, str(m.src.addr), str(m.dst.addr)) for m in acquires if m.src and m.dst] == [
        (SaType.X_IPCOMP, "192.0.2.1", "192.0.2.2"),
        (SaType.ESP, "10.1.0.1", "10.2.0.1"),
    ]


def test_acquire_after_a_tunnel_keeps_freebsds_port_and_prefix_quirk() -> None:
    # §7.4 step 4: for a TCP/UDP policy that names a port, key_acquire puts the
    # policy's port and prefix length on the SA index's address, which for a
    # request after a tunnel is the outer one.
    eng = _engine()
    add_policy(
        eng,
        src="10.3.0.0",
        splen=16,
        dst="10.4.0.0",
        dplen=16,
        proto=IpProto.TCP,
        dport=22,
        requests=[tunnel("192.0.2.1", "198.51.100.2"), request(AH, TRANSPORT, REQUIRE)],
    )
    add_sa(eng, 0x3003, "192.0.2.1", "198.51.100.2", mode=TUNNEL)
    msg = _trigger(eng, flow("10.3.1.1", "10.4.2.2", IpProto.TCP, 40000, 22))[0]
    assert msg.src == address(ExtType.ADDRESS_SRC, "192.0.2.1", 32, proto=IpProto.TCP)
    assert msg.dst == address(ExtType.ADDRESS_DST, "198.51.100.2", 16, proto=IpProto.TCP, port=22)


# ------------------------------------------------------------------ contents


@pytest.mark.parametrize("km", DIALECTS)
def test_acquire_message_for_a_transport_policy(km: Dialect) -> None:
    eng = _engine(km)
    pid = add_policy(eng, src="10.0.0.0", splen=24, dst="10.0.0.2", priority=0x80000000)
    _, effects = eng.lookup(OUT, flow("10.0.0.1", "10.0.0.2", IpProto.TCP, 40000, 22), at(1))
    msg = delivered(eng, effects)[KM]  # decodes in the KM's own dialect
    assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno) == (MsgType.ACQUIRE, SaType.ESP, 1, 0, 0)
    assert ext_types(msg) == [ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST, ExtType.X_POLICY, ExtType.PROPOSAL]
    # Transport mode: the packet's addresses, full prefix, any protocol, no port.
    assert msg.src == address(ExtType.ADDRESS_SRC, "10.0.0.1")
    assert msg.dst == address(ExtType.ADDRESS_DST, "10.0.0.2")
    # X_POLICY (KAME): 16 bytes, no requests; type, direction, id and priority.
    pol = msg.policy
    assert pol is not None
    assert (pol.type, pol.dir, pol.id, pol.priority, pol.scope, pol.requests) == (
        PolicyType.IPSEC,
        OUT,
        pid,
        0x80000000,
        0,
        (),
    )
    assert len(pol.encode(km.spec, SaType.ESP)) == 16


def test_acquire_for_a_tunnel_policy_names_the_tunnel_endpoints() -> None:
    eng = _engine()
    add_policy(eng, src="10.1.0.0", splen=16, dst="10.2.0.0", dplen=16, requests=[tunnel("192.0.2.1", "192.0.2.2")])
    msg = _trigger(eng, flow("10.1.5.5", "10.2.6.6"))[0]
    assert msg.src == address(ExtType.ADDRESS_SRC, "192.0.2.1")
    assert msg.dst == address(ExtType.ADDRESS_DST, "192.0.2.2")


def test_acquire_for_a_tcp_policy_with_a_port_carries_proto_port_and_policy_prefix() -> None:
    # §7.4 step 4: a TCP/UDP policy passes its protocol; where it names a port, the
    # port and the policy's prefix length travel too.
    eng = _engine()
    add_policy(eng, src="10.0.0.0", splen=24, dst="10.0.0.0", dplen=16, proto=IpProto.TCP, dport=443)
    msg = _trigger(eng, flow("10.0.0.1", "10.0.0.2", IpProto.TCP, 40000, 443))[0]
    assert msg.src == address(ExtType.ADDRESS_SRC, "10.0.0.1", 32, proto=IpProto.TCP)
    assert msg.dst == address(ExtType.ADDRESS_DST, "10.0.0.2", 16, proto=IpProto.TCP, port=443)


def test_acquire_for_a_udp_policy_with_a_source_port() -> None:
    eng = _engine()
    add_policy(eng, src="2001:db8::", splen=64, dst="2001:db8:1::", dplen=64, proto=IpProto.UDP, sport=500)
    msg = _trigger(eng, flow("2001:db8::1", "2001:db8:1::2", IpProto.UDP, 500, 500))[0]
    assert msg.src == address(ExtType.ADDRESS_SRC, "2001:db8::1", 64, proto=IpProto.UDP, port=500)
    assert msg.dst == address(ExtType.ADDRESS_DST, "2001:db8:1::2", 128, proto=IpProto.UDP)


@pytest.mark.parametrize("proto", [IpProto.ICMP, IpProto.GRE])
def test_acquire_for_other_protocols_uses_any_protocol_and_no_port(proto: int) -> None:
    eng = _engine()
    add_policy(eng, proto=proto, sport=8)
    msg = _trigger(eng, flow(proto=proto, sport=8))[0]
    assert msg.src == address(ExtType.ADDRESS_SRC, "10.0.0.1")
    assert msg.dst == address(ExtType.ADDRESS_DST, "10.0.0.2")


def test_acquire_carries_sa2_only_for_a_reqid() -> None:
    eng = _engine()
    add_policy(eng, requests=[request(ESP, level=UNIQUE)])
    add_policy(eng, dst="10.0.0.3", requests=[tunnel(level=UNIQUE, reqid=77)])
    msg = _trigger(eng)[0]
    assert ext_types(msg) == [
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
        ExtType.X_POLICY,
        ExtType.X_SA2,
        ExtType.PROPOSAL,
    ]
    assert msg.sa2 == Sa2(TRANSPORT, 0, 0x4001)
    msg = _trigger(eng, flow(dst="10.0.0.3"))[0]
    assert msg.sa2 == Sa2(TUNNEL, 0, 77)


def test_acquire_esp_proposal_on_freebsd() -> None:
    # §7.4 step 5 and §5.6: one combination per supported encryption algorithm whose
    # maximum key reaches esp_keymin (256), ascending, minbits raised to it, auth 0.
    eng = _engine()
    add_policy(eng)
    prop = _trigger(eng)[0].proposal
    assert prop is not None and prop.replay == 32
    got = [(c.encrypt, c.encrypt_minbits, c.encrypt_maxbits, c.auth) for c in prop.combs]
    assert got == [
        (EncAlg.NULL, 256, 2048, 0),
        (EncAlg.X_AESCBC, 256, 256, 0),
        (EncAlg.X_AESCTR, 256, 256, 0),
        (EncAlg.X_CHACHA20POLY1305, 256, 256, 0),
        (EncAlg.X_AESGCM16, 256, 256, 0),
        (EncAlg.X_AESGMAC, 256, 256, 0),
    ]
    c = prop.combs[0]
    assert (c.soft_allocations, c.hard_allocations, c.soft_bytes, c.hard_bytes) == (1, 1, 0, 0)
    assert (c.soft_addtime, c.hard_addtime, c.soft_usetime, c.hard_usetime) == (0, 86400, 28800, 0)


def test_acquire_ah_proposal_on_freebsd_is_descending_hmacs() -> None:
    eng = _engine()
    add_policy(eng, requests=[request(AH)])
    prop = _trigger(eng)[0].proposal
    assert prop is not None
    assert [(c.auth, c.auth_minbits) for c in prop.combs] == [(7, 512), (6, 384), (5, 256), (3, 160)]


def test_acquire_ipcomp_proposal_is_deflate() -> None:
    eng = _engine()
    add_policy(eng, requests=[request(IPCOMP)])
    msg = _trigger(eng)[0]
    assert msg.satype == SaType.X_IPCOMP
    assert msg.proposal is not None and [c.encrypt for c in msg.proposal.combs] == [2]


@pytest.mark.parametrize("proto", [ESP, AH, IPCOMP])
def test_acquire_proposal_is_built_for_each_recipients_dialect(proto: int) -> None:
    eng = make_engine(clients={ME: FREEBSD, OTHER: LINUX, KM: FREEBSD})
    register_km(eng, KM)
    register_km(eng, OTHER)
    add_policy(eng, requests=[request(proto)])
    _, effects = eng.lookup(OUT, flow(), at(1))
    seen = delivered(eng, effects)
    for client, dialect in ((KM, FREEBSD), (OTHER, LINUX)):
        assert seen[client].proposal == Prop(32, algorithms.proposal(proto, Knobs(), dialect))
    assert seen[KM].proposal != seen[OTHER].proposal or proto == IPCOMP


@pytest.mark.parametrize(
    ("knob", "value", "proto"),
    [
        ("net.key.esp_keymin", 128, ESP),
        ("net.key.esp_keymin", 512, ESP),
        ("net.key.esp_auth", 1, ESP),
        ("net.key.ah_keymin", 300, AH),
        ("net.key.ah_keymin", 1024, AH),
    ],
)
def test_acquire_proposal_follows_the_knobs(knob: str, value: int, proto: int) -> None:
    eng = _engine()
    add_policy(eng, requests=[request(proto)])
    before = _trigger(eng)[0].proposal
    eng.set_knob(knob, value)
    eng.tick(at(100))  # forget the record so the next trigger sends again
    msgs = _trigger(eng, now=101)
    after = msgs[0].proposal if msgs else None
    expected = algorithms.proposal(proto, Knobs().set(knob, value), FREEBSD)
    assert (after.combs if after else ()) == expected
    assert after != before


def test_acquire_without_qualifying_algorithms_has_no_proposal() -> None:
    eng = _engine(ah_keymin=2048)
    add_policy(eng, requests=[request(AH)])
    msg = _trigger(eng)[0]
    assert ExtType.PROPOSAL not in ext_types(msg)


def test_acquire_with_an_sa_for_another_mode_still_acquires() -> None:
    eng = _engine()
    add_policy(eng)
    add_sa(eng, 0x1001, mode=TUNNEL)
    assert len(_trigger(eng)) == 1


# -------------------------------------------------------------------- pacing


@pytest.mark.parametrize("count", [10, 3, 0])
def test_blockacq_count_suppresses_that_many_plus_one_then_resends_the_same_seq(count: int) -> None:
    eng = _engine(blockacq_count=count)
    add_policy(eng)
    cycle = [1] + [0] * (count + 1)
    assert _seqs(eng, 3 * len(cycle)) == cycle * 3


def test_default_pacing_sends_the_first_and_the_thirteenth() -> None:
    # §7.4: the first packet sends, the next 11 are suppressed, the 13th resends.
    eng = _engine()
    add_policy(eng)
    seqs = _seqs(eng, 13)
    assert [i + 1 for i, s in enumerate(seqs) if s] == [1, 13]
    assert set(seqs) == {0, 1}


def test_separate_sa_indexes_get_separate_records_and_seqs() -> None:
    eng = _engine()
    add_policy(eng, dst="10.0.0.0", dplen=24)
    assert _seqs(eng, 2, flow(dst="10.0.0.2")) == [1, 0]
    assert _seqs(eng, 2, flow(dst="10.0.0.3")) == [2, 0]
    assert _seqs(eng, 1, flow(dst="10.0.0.2")) == [0]


def test_blockacq_lifetime_forgets_the_record_and_a_new_seq_follows() -> None:
    eng = _engine(blockacq_lifetime=20)
    add_policy(eng)
    assert _seqs(eng, 2, now=0) == [1, 0]
    assert eng.next_deadline() == pytest.approx(T0.mono + 20)
    assert eng.tick(at(19)) == []
    assert _seqs(eng, 1, now=19.5) == [0]
    eng.tick(at(21))
    assert eng.next_deadline() is None
    assert _seqs(eng, 2, now=22) == [2, 0]


def test_a_resend_restarts_the_record_lifetime() -> None:
    eng = _engine(blockacq_count=0, blockacq_lifetime=20)
    add_policy(eng)
    assert _seqs(eng, 1, now=0) == [1]
    assert _seqs(eng, 1, now=1) == [0]
    assert _seqs(eng, 1, now=2) == [1]  # resent at 2: kept until 22
    eng.tick(at(21))
    assert _seqs(eng, 1, now=21) == [0]
    eng.tick(at(23))
    assert _seqs(eng, 1, now=23) == [2]


def test_pacing_knobs_apply_from_the_next_trigger() -> None:
    eng = _engine()
    add_policy(eng)
    assert _seqs(eng, 3) == [1, 0, 0]  # count is 2
    eng.set_knob("net.key.blockacq_count", 1)
    assert _seqs(eng, 1) == [1]


def test_a_record_is_kept_when_nobody_is_registered() -> None:
    # key_acquire takes its record before it tries to deliver (§7.4 step 3 and 4).
    eng = make_engine(clients={ME: FREEBSD, KM: FREEBSD}, blockacq_count=1)
    add_policy(eng)
    assert _trigger(eng) == []
    register_km(eng, KM)
    assert _seqs(eng, 3) == [0, 0, 1]


# ------------------------------------------------------ completion and reset


def test_getspi_with_the_acquire_seq_completes_it() -> None:
    eng = _engine()
    add_policy(eng)
    assert _seqs(eng, 2) == [1, 0]
    new_larval(eng, seq=1, mode=TRANSPORT, now=at(2), client=KM)  # a LARVAL SA: still no usable SA
    eng.tick(at(2))
    assert _seqs(eng, 2, now=3) == [2, 0]


def test_getspi_with_the_seq_but_another_sa_index_does_not_complete_it() -> None:
    eng = _engine()
    add_policy(eng)
    assert _seqs(eng, 1) == [1]
    new_larval(eng, seq=1, mode=0, now=at(2), client=KM)  # SA2 mode ANY: not the exact index
    new_larval(eng, "10.0.0.1", "10.0.0.9", seq=1, now=at(2), client=KM)
    eng.tick(at(2))
    assert _seqs(eng, 1, now=3) == [0]


def test_add_with_the_acquire_seq_completes_it() -> None:
    eng = _engine()
    add_policy(eng)
    assert _seqs(eng, 1) == [1]
    add_sa(eng, 0x1001, seq=1, now=at(2), client=KM)
    delete = Message(
        MsgType.DELETE,
        SaType.ESP,
        0,
        PID,
        0,
        0,
        (Sa(0x1001), address(ExtType.ADDRESS_SRC, "10.0.0.1"), address(ExtType.ADDRESS_DST, "10.0.0.2")),
    )
    reply(send(eng, KM, delete, at(3)), KM)
    eng.tick(at(3))
    assert _seqs(eng, 1, now=4) == [2]


def test_acquire_error_report_resets_the_blocking_cycle() -> None:
    eng = _engine(blockacq_count=2, blockacq_lifetime=20)
    add_policy(eng)
    assert _seqs(eng, 3, now=0) == [1, 0, 0]  # count now 2
    report = Message(MsgType.ACQUIRE, SaType.ESP, 1, PID, errno.ENOENT)
    assert send(eng, KM, report, at(15)) == []  # no reply
    # Without the reset the next trigger (count 3 > 2) would resend.
    assert _seqs(eng, 4, now=16) == [0, 0, 0, 1]
    # ... and the record's age restarted at the report: not forgotten at 21.
    eng.tick(at(21))
    assert _seqs(eng, 1, now=22) == [0]


@pytest.mark.parametrize(("seq", "err"), [(0, errno.ENOENT), (1, 0), (99, errno.ENOENT)])
def test_acquire_error_report_without_seq_errno_or_record_is_ignored(seq: int, err: int) -> None:
    eng = _engine(blockacq_count=2)
    add_policy(eng)
    assert _seqs(eng, 3) == [1, 0, 0]
    assert send(eng, KM, Message(MsgType.ACQUIRE, SaType.ESP, seq, PID, err)) == []
    assert _seqs(eng, 2) == [0, 1]


def test_acquire_error_report_with_satype_unspec_replies_einval() -> None:
    eng = _engine()
    assert errno_of(send(eng, KM, Message(MsgType.ACQUIRE, 0, 1, PID, errno.ENOENT))) == errno.EINVAL


# --------------------------------------------------- user-level ACQUIRE request


def _user_acquire(*, proposal: bool = True) -> Message:
    """A user-level ACQUIRE request (§3.6): SRC, DST and PROPOSAL."""
    prop = Prop(32, (Comb(encrypt=EncAlg.X_AESCBC, encrypt_minbits=128, encrypt_maxbits=256),))
    exts: list[Extension] = [address(ExtType.ADDRESS_SRC, "10.0.0.1"), address(ExtType.ADDRESS_DST, "10.0.0.2")]
    if proposal:
        exts.append(prop)
    return Message(MsgType.ACQUIRE, SaType.ESP, 0, PID, 0, 0, tuple(exts))


def test_user_level_acquire_is_sent_to_registered_without_x_policy() -> None:
    eng = _engine()
    effects = send(eng, ME, _user_acquire())
    assert recipients(effects) == [KM]
    msg = delivered(eng, effects)[KM]
    assert msg.type == MsgType.ACQUIRE and msg.seq == 1
    assert ExtType.X_POLICY not in ext_types(msg)


def test_user_level_acquire_without_proposal_replies_einval() -> None:
    eng = _engine()
    assert errno_of(send(eng, ME, _user_acquire(proposal=False))) == errno.EINVAL


def test_user_level_acquire_for_an_existing_sa_index_replies_eexist() -> None:
    eng = _engine()
    add_sa(eng, 0x1001, mode=0)
    assert errno_of(send(eng, ME, _user_acquire())) == errno.EEXIST


def test_acquire_to_a_linux_key_manager_encodes() -> None:
    # racoon built for Linux needs SRC, DST and X_POLICY with the policy id (real-clients §3.8).
    eng = _engine(LINUX)
    pid = add_policy(eng)
    _, effects = eng.lookup(OUT, flow(), at(1))
    (send_,) = sends(effects, promisc=False)
    data = encode(send_.msg, LINUX)
    assert data[1] == MsgType.ACQUIRE
    msg = delivered(eng, effects)[KM]
    assert msg.policy is not None and msg.policy.id == pid and msg.policy.scope == 0
