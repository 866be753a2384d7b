"""Properties of the SPD under arbitrary sequences of policy requests from both dialects.

* A refused request (any Error effect) leaves the SPD exactly as it was (STYLE §4).
* An accepted one changes it as its type says: ADD/SETIDX add one policy, UPDATE adds
  or replaces one, DELETE/DELETE2 remove one, FLUSH empties, GET/DUMP change nothing.
* Policy ids are unique and non-zero; every stored policy is found by its id and by
  its selector; SPDDUMP lists each policy once.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pfkeyd.effects import Dump, Error
from pfkeyd.engine import KeyEngine
from pfkeyd.wire import UNKNOWN, Dialect, IpProto, IpsecRequest, Message, MsgType, PolicyType
from tests.engine.conftest import PID, at, make_engine, reply
from tests.engine.spd_helpers import (
    AH,
    ESP,
    FREEBSD,
    FWD,
    IN,
    IPCOMP,
    LINUX,
    ME,
    OTHER,
    OUT,
    TRANSPORT,
    TUNNEL,
    by_id_msg,
    hard_lifetime,
    send,
    sockaddr,
    spd_msg,
    spd_state,
)

_ADDRS4 = ("10.0.0.1", "10.0.0.2")
_ADDRS6 = ("2001:db8::1", "2001:db8::2")
_SPD_TYPES = (
    MsgType.X_SPDADD,
    MsgType.X_SPDADD,
    MsgType.X_SPDUPDATE,
    MsgType.X_SPDSETIDX,
    MsgType.X_SPDDELETE,
    MsgType.X_SPDDELETE2,
    MsgType.X_SPDGET,
    MsgType.X_SPDDUMP,
    MsgType.X_SPDFLUSH,
)


@st.composite
def _ipsecrequest(draw: st.DrawFn) -> IpsecRequest:
    mode = draw(st.sampled_from((TRANSPORT, TRANSPORT, TUNNEL, 0)))
    ends = None
    if mode == TUNNEL and draw(st.integers(0, 4)):
        ends = draw(st.sampled_from((("192.0.2.1", "192.0.2.2"), ("2001:db8:f::1", "2001:db8:f::2"))))
    return IpsecRequest(
        draw(st.sampled_from((ESP, ESP, AH, IPCOMP, IpProto.TCP))),
        mode,
        draw(st.integers(0, 4)),
        draw(st.sampled_from((0, 0, 5, 0x4000))),
        *((None, None) if ends is None else (sockaddr(ends[0]), sockaddr(ends[1]))),
    )


@st.composite
def _spd_request(draw: st.DrawFn, dialect: Dialect, ids: list[int]) -> Message:
    mtype = draw(st.sampled_from(_SPD_TYPES))
    seq = draw(st.integers(0, 3))
    if mtype in (MsgType.X_SPDDELETE2, MsgType.X_SPDGET):
        if ids and draw(st.integers(0, 3)) != 0:
            pid = draw(st.sampled_from(ids))
        else:
            pid = draw(st.integers(0, 200))
        return by_id_msg(mtype, pid, seq=seq)
    if mtype in (MsgType.X_SPDDUMP, MsgType.X_SPDFLUSH):
        if draw(st.integers(0, 3)):  # flushes are rare
            mtype = MsgType.X_SPDDUMP
        return Message(mtype, draw(st.sampled_from((0, 0, 1, 2, 3))), seq, PID)
    v6 = draw(st.integers(0, 4)) == 0
    pool = _ADDRS6 if v6 else _ADDRS4
    src, dst = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
    if draw(st.integers(0, 15)) == 0:
        dst = _ADDRS4[0] if v6 else _ADDRS6[0]  # mixed families
    # Small domains, so that requests often meet an existing selector.
    direction = draw(st.sampled_from((IN, OUT, OUT, OUT, FWD, 0, UNKNOWN | 4)))
    if direction == FWD and dialect is FREEBSD:
        direction = UNKNOWN | 3  # what wire 3 decodes to in the freebsd dialect
    ptype = draw(
        st.sampled_from(
            (
                PolicyType.IPSEC,
                PolicyType.IPSEC,
                PolicyType.DISCARD,
                PolicyType.NONE,
                PolicyType.ENTRUST,
                PolicyType.BYPASS,
            )
        )
    )
    requests = (
        draw(st.lists(_ipsecrequest(), max_size=draw(st.sampled_from((1, 2, 7))))) if ptype == PolicyType.IPSEC else []
    )
    maxp = 128 if v6 else 32
    hard = draw(st.sampled_from((None, None, hard_lifetime(5), hard_lifetime(0, 3), hard_lifetime(4, 2))))
    return spd_msg(
        mtype,
        src,
        dst,
        dir=direction,
        ptype=ptype,
        requests=requests,
        priority=draw(st.sampled_from((0, 1, 0x80000000))),
        proto=draw(st.sampled_from((IpProto.ANY, IpProto.ANY, IpProto.ANY, IpProto.TCP))),
        dport=draw(st.sampled_from((0, 0, 0, 80))),
        splen=draw(st.sampled_from((None, None, None, 24, maxp + 1))),
        dplen=draw(st.sampled_from((None, None, 0))),
        hard=hard,
        seq=seq,
    )


def _check_invariants(eng: KeyEngine) -> None:
    spd = eng.spd
    ids = list(spd.by_id)
    assert 0 not in ids and len(ids) == len(set(ids))
    listed = [sp.id for sp in spd.ordered()]
    assert sorted(listed) == sorted(ids)
    for pid, sp in spd.by_id.items():
        assert sp.id == pid
        assert spd.find(sp.dir, sp.selector) is sp
        got = reply(send(eng, ME, by_id_msg(MsgType.X_SPDGET, pid)))
        assert got.policy is not None and got.policy.id == pid


@settings(max_examples=120)
@given(st.data())
def test_refused_requests_change_nothing_and_accepted_ones_change_what_they_say(data: st.DataObject) -> None:
    eng = make_engine(clients={ME: FREEBSD, OTHER: LINUX})
    now = 0.0
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        client = data.draw(st.sampled_from((ME, OTHER)), label="client")
        dialect = eng.clients[client].dialect
        msg = data.draw(_spd_request(dialect, list(eng.spd.by_id)), label="request")
        before = spd_state(eng)
        count = len(eng.spd)
        effects = send(eng, client, msg, at(now))
        if any(isinstance(e, Error) for e in effects):
            assert len(effects) == 1
            assert spd_state(eng) == before, f"refused {msg!r} changed the SPD"
        else:
            grown = len(eng.spd) - count
            expected = {
                MsgType.X_SPDADD: {1},
                MsgType.X_SPDSETIDX: {1},
                MsgType.X_SPDUPDATE: {0, 1},
                MsgType.X_SPDDELETE: {-1},
                MsgType.X_SPDDELETE2: {-1},
                MsgType.X_SPDGET: {0},
                MsgType.X_SPDDUMP: {0},
                MsgType.X_SPDFLUSH: {-count},
            }[MsgType(msg.type)]
            assert grown in expected, (msg, grown)
            if msg.type in (MsgType.X_SPDGET, MsgType.X_SPDDUMP):
                assert spd_state(eng) == before
            if msg.type == MsgType.X_SPDDUMP:
                (dump,) = effects
                assert isinstance(dump, Dump) and len(dump.items) == len(eng.spd)
            if msg.type in (MsgType.X_SPDADD, MsgType.X_SPDSETIDX, MsgType.X_SPDUPDATE):
                pol = reply(effects, client).policy
                assert pol is not None and pol.id in eng.spd.by_id
        now += data.draw(st.sampled_from((0.0, 0.0, 1.0, 3.0)), label="elapsed")
        eng.tick(at(now))
        _check_invariants(eng)
