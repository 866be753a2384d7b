"""Factories for the policy-side key engine tests (SPD messages, lookup, ACQUIRE).

Every request goes through the wire codec of the sending client's dialect before it
reaches the engine (``send``), exactly as the trio shell would pass it on: a request
the codec refuses with an error reply becomes that ``Error`` effect, so a test sees
the errno the client would see whichever layer refuses it.

The basics (``at``, ``T0``, ``make_engine``, ``reply``, ``sends``, ``ext_types``) are
those of ``tests/engine/conftest.py``, one meaning each; the policy-side tests open
the requester alone unless they say otherwise (``make_engine(clients=ALONE)``).
Nothing here sleeps or opens a socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pfkeyd.effects import ClientId, Effect, Error, Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.errors import DecodeError
from pfkeyd.spd import Flow
from pfkeyd.wire import (
    Address,
    AuthAlg,
    Dialect,
    Direction,
    EncAlg,
    Extension,
    ExtType,
    IpProto,
    IpsecRequest,
    Key,
    Level,
    Lifetime,
    Message,
    Mode,
    MsgType,
    Policy,
    PolicyType,
    Sa,
    Sa2,
    SaType,
    SockAddr,
    decode,
    encode,
)
from tests.engine.conftest import PID, T0, register, reply, sends

FREEBSD, LINUX = Dialect.FREEBSD, Dialect.LINUX
DIALECTS = (FREEBSD, LINUX)
IN, OUT, FWD = Direction.INBOUND, Direction.OUTBOUND, Direction.FWD
ESP, AH, IPCOMP = IpProto.ESP, IpProto.AH, IpProto.IPCOMP
TRANSPORT, TUNNEL = Mode.TRANSPORT, Mode.TUNNEL
DEFAULT, USE, REQUIRE, UNIQUE = Level.DEFAULT, Level.USE, Level.REQUIRE, Level.UNIQUE


#: Client ids used throughout: the requester, a bystander, a registered key manager.
ME, OTHER, KM = 1, 2, 3
#: The requester alone, on a freebsd socket: what most policy-side tests open.
ALONE = {ME: FREEBSD}


def sockaddr(text: str, port: int = 0) -> SockAddr:
    return SockAddr.parse(text, port)


def address(
    exttype: ExtType, text: str, prefixlen: int | None = None, *, proto: int = IpProto.ANY, port: int = 0
) -> Address:
    sa = sockaddr(text, port)
    return Address(exttype, sa, sa.max_prefix if prefixlen is None else prefixlen, proto)


def request(
    proto: int = ESP,
    mode: int = TRANSPORT,
    level: int = REQUIRE,
    reqid: int = 0,
    endpoints: tuple[str, str] | None = None,
) -> IpsecRequest:
    """One ipsecrequest; ``endpoints`` are the tunnel's (src, dst) addresses."""
    src = dst = None
    if endpoints is not None:
        src, dst = sockaddr(endpoints[0]), sockaddr(endpoints[1])
    return IpsecRequest(proto, mode, level, reqid, src, dst)


def tunnel(
    src: str = "192.0.2.1", dst: str = "192.0.2.2", level: int = REQUIRE, proto: int = ESP, reqid: int = 0
) -> IpsecRequest:
    return request(proto, TUNNEL, level, reqid, (src, dst))


def spd_msg(
    mtype: int = MsgType.X_SPDADD,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    *,
    dir: int = OUT,
    ptype: int = PolicyType.IPSEC,
    requests: Sequence[IpsecRequest] | None = None,
    priority: int = 0,
    proto: int = IpProto.ANY,
    sport: int = 0,
    dport: int = 0,
    splen: int | None = None,
    dplen: int | None = None,
    hard: Lifetime | None = None,
    policy_id: int = 0,
    scope: int = 0,
    seq: int = 0,
    pid: int = PID,
    satype: int = SaType.UNSPEC,
    omit: Iterable[ExtType] = (),
) -> Message:
    """An SPD request; an IPSEC policy gets one ESP transport REQUIRE request by default."""
    if requests is None:
        requests = (request(),) if ptype == PolicyType.IPSEC else ()
    exts: list[Extension] = [
        Policy(ptype, dir, policy_id, priority, scope, tuple(requests)),
        address(ExtType.ADDRESS_SRC, src, splen, proto=proto, port=sport),
        address(ExtType.ADDRESS_DST, dst, dplen, proto=proto, port=dport),
    ]
    if hard is not None:
        exts.append(hard)
    drop = set(omit)
    return Message(mtype, satype, seq, pid, 0, 0, tuple(e for e in exts if e.exttype not in drop))


def by_id_msg(mtype: int, policy_id: int, *, seq: int = 0, pid: int = PID, dir: int = OUT) -> Message:
    """SPDGET / SPDDELETE2: only X_POLICY with the id."""
    return Message(mtype, 0, seq, pid, 0, 0, (Policy(PolicyType.IPSEC, dir, policy_id),))


def hard_lifetime(lifetime: int = 0, validtime: int = 0) -> Lifetime:
    return Lifetime(ExtType.LIFETIME_HARD, 0, 0, lifetime, validtime)


def send(eng: KeyEngine, client: ClientId, msg: Message, now: Instant = T0) -> list[Effect]:
    """Encode ``msg`` in the client's dialect, decode it as the kernel would, and hand
    it to the engine; a codec refusal with an error reply becomes that Error."""
    dialect = eng.clients[client].dialect
    data = encode(msg, dialect)
    try:
        decoded = decode(data, dialect, request=True)
    except DecodeError as exc:
        assert exc.reply, f"the codec fails send() for {msg!r}: {exc}"
        return [Error(client, exc.errno)]
    return eng.handle(client, decoded, now)


def errno_of(effects: Sequence[Effect]) -> int:
    """The errno of the single Error effect (fails if the request succeeded)."""
    errors = [e for e in effects if isinstance(e, Error)]
    assert len(errors) == 1 and len(effects) == 1, f"expected one error, got {effects!r}"
    return errors[0].errno


def recipients(effects: Iterable[Effect], msgtype: int | None = None) -> list[ClientId]:
    """Every client a (non-promiscuous) message goes to, sorted."""
    return sorted(c for s in sends(effects, msgtype, promisc=False) for c in s.to)


def on_wire(msg: Message, dialect: Dialect) -> Message:
    """``msg`` as a client of ``dialect`` reads it: encoded, then decoded as kernel output."""
    return decode(encode(msg, dialect), dialect, request=False)


def delivered(eng: KeyEngine, effects: Iterable[Effect]) -> dict[ClientId, Message]:
    """What each recipient reads, decoded in its own dialect (fails if one copy cannot be
    encoded for its recipient: the shell would have to drop it)."""
    out: dict[ClientId, Message] = {}
    for s in sends(effects, promisc=False):
        for c in s.to:
            out[c] = on_wire(s.msg, eng.clients[c].dialect)
    return out


def add_policy(eng: KeyEngine, client: ClientId = ME, now: Instant = T0, **kw: Any) -> int:
    """SPDADD through the wire; returns the new policy's id."""
    pol = reply(send(eng, client, spd_msg(**kw), now), client).policy
    assert pol is not None and pol.id
    return pol.id


def register_km(eng: KeyEngine, client: ClientId, satype: int = SaType.ESP) -> None:
    """REGISTER ``client`` for ``satype`` through the wire (a key manager)."""
    reply(send(eng, client, register(satype)), client)


def spd_state(eng: KeyEngine) -> tuple[object, ...]:
    """Everything observable about the SPD: the policies by id, in dump order, the
    identity index and what SPDDUMP would list.  Equal snapshots = unchanged SPD."""
    spd = eng.spd
    return (
        dict(spd.by_id),
        list(spd.ordered()),
        dict(spd._by_identity),
        {
            k: {s: {b: list(p) for b, p in shape.buckets.items()} for s, shape in v.items()}
            for k, v in spd._shapes.items()
        },
        list(eng._policy_deadlines),
    )


def flow(
    src: str = "10.0.0.1", dst: str = "10.0.0.2", proto: int = IpProto.ANY, sport: int = 0, dport: int = 0
) -> Flow:
    return Flow(sockaddr(src), sockaddr(dst), proto, sport, dport)


# ------------------------------------------------------------------------- SAs

#: ESP with AES-CBC-128 and HMAC-SHA2-256: keys every dialect accepts.
_ENC_KEY = Key(ExtType.KEY_ENCRYPT, bytes(range(16)))
_AUTH_KEY = Key(ExtType.KEY_AUTH, bytes(range(32)))


def add_sa(
    eng: KeyEngine,
    spi: int,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    *,
    mode: int = TRANSPORT,
    reqid: int = 0,
    now: Instant = T0,
    seq: int = 0,
    client: ClientId = ME,
    soft: Lifetime | None = None,
    hard: Lifetime | None = None,
) -> Message:
    """SADB_ADD of a MATURE ESP SA through the wire; returns the reply."""
    exts: list[Extension] = [
        Sa(spi, 4, 1, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, 0),
        Sa2(mode, 0, reqid),
        address(ExtType.ADDRESS_SRC, src),
        address(ExtType.ADDRESS_DST, dst),
        _AUTH_KEY,
        _ENC_KEY,
    ]
    if soft is not None or hard is not None:
        exts += [hard or Lifetime(ExtType.LIFETIME_HARD), soft or Lifetime(ExtType.LIFETIME_SOFT)]
    return reply(send(eng, client, Message(MsgType.ADD, SaType.ESP, seq, PID, 0, 0, tuple(exts)), now), client)


def new_larval(
    eng: KeyEngine,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    *,
    mode: int = TRANSPORT,
    reqid: int = 0,
    seq: int = 0,
    now: Instant = T0,
    client: ClientId = ME,
) -> int:
    """SADB_GETSPI (a LARVAL SA) through the wire; returns the SPI."""
    msg = Message(
        MsgType.GETSPI,
        SaType.ESP,
        seq,
        PID,
        0,
        0,
        (Sa2(mode, 0, reqid), address(ExtType.ADDRESS_SRC, src), address(ExtType.ADDRESS_DST, dst)),
    )
    sa = reply(send(eng, client, msg, now), client).sa
    assert sa is not None
    return sa.spi
