"""Factories for driving the key engine message by message, with time passed in.

Nothing here opens a socket or sleeps: a test builds :class:`Message` values,
hands them to ``KeyEngine.handle(client, msg, now)`` with an :class:`Instant` from
:func:`at`, and inspects the effects.  The engine's randomness is a seeded
``random.Random``, so every run allocates the same SPIs.

Test modules import the plain factories (``from tests.engine.conftest import ...``);
the fixtures below wrap the ones most tests need.

Clients: :data:`FB` and :data:`FB2` speak the freebsd dialect, :data:`LX` and
:data:`LX2` the linux one.  A test that cares about "the requester" versus "every
other socket" uses the ``me``/``dialect`` fixture pair, parametrised over both
dialects.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

from pfkeyd.effects import Dump, Effect, Error, Instant, Send
from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import Knobs
from pfkeyd.wire import (
    Address,
    AuthAlg,
    Comb,
    CompAlg,
    Dialect,
    EncAlg,
    Extension,
    ExtType,
    Key,
    Lifetime,
    Message,
    MsgType,
    Prop,
    Sa,
    Sa2,
    SaType,
    SpiRange,
)

# ----------------------------------------------------------------------------- clients

FB, FB2, LX, LX2 = 1, 2, 3, 4
DIALECT_OF = {FB: Dialect.FREEBSD, FB2: Dialect.FREEBSD, LX: Dialect.LINUX, LX2: Dialect.LINUX}
#: The first client of each dialect: the requester in dialect-parametrised tests.
CLIENT_OF = {Dialect.FREEBSD: FB, Dialect.LINUX: LX}
PID = 4242
SEED = 2367

# ----------------------------------------------------------------------------- time

#: The wall clock (seconds since the epoch) at mono 0.
WALL0 = 1_700_000_000


def at(t: float) -> Instant:
    """The engine's clock ``t`` seconds after the start of a test."""
    return Instant(mono=float(t), wall=WALL0 + int(t))


T0 = at(0)

# ----------------------------------------------------------------------------- engine


def make_engine(
    seed: int = SEED, *, clients: Iterable[int] | Mapping[int, Dialect] = (FB, FB2, LX, LX2), **knobs: int
) -> KeyEngine:
    """An engine with a seeded RNG, the given clients opened (ids of
    :data:`DIALECT_OF`, or a mapping of ids to dialects), and knobs set by attribute
    name (``larval_lifetime=5``)."""
    engine = KeyEngine(Knobs(**knobs), rng=random.Random(seed))
    dialects = clients if isinstance(clients, Mapping) else {c: DIALECT_OF[c] for c in clients}
    for c, d in dialects.items():
        engine.client_opened(c, d)
    return engine


# ----------------------------------------------------------------------------- addresses

A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"
A6, B6 = "2001:db8::1", "2001:db8::2"


def src(text: str = A, *, port: int = 0, proto: int = 255) -> Address:
    return Address.host(ExtType.ADDRESS_SRC, text, port=port, proto=proto)


def dst(text: str = B, *, port: int = 0, proto: int = 255) -> Address:
    return Address.host(ExtType.ADDRESS_DST, text, port=port, proto=proto)


# ----------------------------------------------------------------------------- keys

#: Key material is made of these bytes so that a leak is easy to spot.
KEY_BYTE = 0xA5


def key_auth(n: int = 32) -> Key:
    return Key(ExtType.KEY_AUTH, bytes([KEY_BYTE]) * n)


def key_enc(n: int = 16) -> Key:
    return Key(ExtType.KEY_ENCRYPT, bytes([KEY_BYTE ^ 0xFF]) * n)


def lifetime(kind: ExtType, *, addtime: int = 0, usetime: int = 0, nbytes: int = 0, allocations: int = 0) -> Lifetime:
    return Lifetime(kind, allocations, nbytes, addtime, usetime)


def hard(**kw: int) -> Lifetime:
    return lifetime(ExtType.LIFETIME_HARD, **kw)


def soft(**kw: int) -> Lifetime:
    return lifetime(ExtType.LIFETIME_SOFT, **kw)


# ----------------------------------------------------------------------------- messages

_UNSET: Any = object()


def _assemble(
    mtype: int,
    satype: int,
    seq: int,
    pid: int,
    exts: Sequence[Extension | None],
    omit: Iterable[int],
    extra: Iterable[Extension],
) -> Message:
    drop = set(omit)
    body = [e for e in exts if e is not None and e.exttype not in drop]
    extra = tuple(extra)
    replaced = {e.exttype for e in extra}
    body = [e for e in body if e.exttype not in replaced] + list(extra)
    return Message(mtype, satype, seq, pid, exts=tuple(body))


def getspi(
    satype: int = SaType.ESP,
    *,
    seq: int = 0,
    pid: int = PID,
    s: str = A,
    d: str = B,
    spirange: tuple[int, int] | None = None,
    sa2: Sa2 | None = None,
    omit: Iterable[int] = (),
    extra: Iterable[Extension] = (),
) -> Message:
    """SADB_GETSPI: <base, address(SD), (SPI range), (SA2)>."""
    rng = SpiRange(*spirange) if spirange is not None else None
    return _assemble(MsgType.GETSPI, satype, seq, pid, [src(s), dst(d), rng, sa2], omit, extra)


#: Per satype, the algorithms and keys of a valid ADD: (auth, encrypt, key_auth, key_encrypt).
_DEFAULT_SA: dict[int, tuple[int, int, Key | None, Key | None]] = {
    SaType.ESP: (AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, key_auth(32), key_enc(16)),
    SaType.AH: (AuthAlg.X_SHA2_256, EncAlg.NONE, key_auth(32), None),
    SaType.X_IPCOMP: (AuthAlg.NONE, CompAlg.DEFLATE, None, None),
    SaType.X_TCPSIGNATURE: (AuthAlg.X_TCP_MD5, EncAlg.NONE, key_auth(16), None),
}


def _sa_message(
    mtype: int,
    satype: int,
    spi: int,
    *,
    seq: int,
    pid: int,
    s: str,
    d: str,
    auth: int,
    enc: int,
    ka: Key | None,
    ke: Key | None,
    flags: int,
    replay: int,
    state: int,
    sa2: Sa2 | None,
    hard_lt: Lifetime | None,
    soft_lt: Lifetime | None,
    omit: Iterable[int],
    extra: Iterable[Extension],
) -> Message:
    d_auth, d_enc, d_ka, d_ke = _DEFAULT_SA.get(satype, _DEFAULT_SA[SaType.ESP])
    auth = d_auth if auth is _UNSET else auth
    enc = d_enc if enc is _UNSET else enc
    ka = d_ka if ka is _UNSET else ka
    ke = d_ke if ke is _UNSET else ke
    sa = Sa(spi, replay, state, auth, enc, flags)
    # setkey's order: keys first, then SA, SA2 and the addresses (real-clients.md §3.2).
    return _assemble(mtype, satype, seq, pid, [ke, ka, sa, sa2, src(s), dst(d), hard_lt, soft_lt], omit, extra)


def add(
    satype: int = SaType.ESP,
    spi: int = 0x1000,
    *,
    seq: int = 0,
    pid: int = PID,
    s: str = A,
    d: str = B,
    auth: int = _UNSET,
    enc: int = _UNSET,
    ka: Key | None = _UNSET,
    ke: Key | None = _UNSET,
    flags: int = 0,
    replay: int = 0,
    state: int = 0,
    sa2: Sa2 | None = None,
    hard_lt: Lifetime | None = None,
    soft_lt: Lifetime | None = None,
    omit: Iterable[int] = (),
    extra: Iterable[Extension] = (),
) -> Message:
    """SADB_ADD of a valid SA of ``satype`` unless told otherwise."""
    return _sa_message(
        MsgType.ADD,
        satype,
        spi,
        seq=seq,
        pid=pid,
        s=s,
        d=d,
        auth=auth,
        enc=enc,
        ka=ka,
        ke=ke,
        flags=flags,
        replay=replay,
        state=state,
        sa2=sa2,
        hard_lt=hard_lt,
        soft_lt=soft_lt,
        omit=omit,
        extra=extra,
    )


def update(
    satype: int = SaType.ESP,
    spi: int = 0x1000,
    *,
    seq: int = 0,
    pid: int = PID,
    s: str = A,
    d: str = B,
    auth: int = _UNSET,
    enc: int = _UNSET,
    ka: Key | None = _UNSET,
    ke: Key | None = _UNSET,
    flags: int = 0,
    replay: int = 0,
    state: int = 0,
    sa2: Sa2 | None = None,
    hard_lt: Lifetime | None = None,
    soft_lt: Lifetime | None = None,
    omit: Iterable[int] = (),
    extra: Iterable[Extension] = (),
) -> Message:
    """SADB_UPDATE completing a LARVAL SA of ``satype`` (keys included) unless told otherwise.
    KAME setkey and racoon send state LARVAL (0); the kernel ignores the field."""
    return _sa_message(
        MsgType.UPDATE,
        satype,
        spi,
        seq=seq,
        pid=pid,
        s=s,
        d=d,
        auth=auth,
        enc=enc,
        ka=ka,
        ke=ke,
        flags=flags,
        replay=replay,
        state=state,
        sa2=sa2,
        hard_lt=hard_lt,
        soft_lt=soft_lt,
        omit=omit,
        extra=extra,
    )


def lifetimes_update(
    satype: int = SaType.ESP,
    spi: int = 0x1000,
    *,
    hard_lt: Lifetime | None = None,
    soft_lt: Lifetime | None = None,
    seq: int = 0,
    pid: int = PID,
    s: str = A,
    d: str = B,
    sa2: Sa2 | None = None,
    extra: Iterable[Extension] = (),
) -> Message:
    """SADB_UPDATE of a MATURE or DYING SA: no keys, only lifetimes."""
    return update(
        satype,
        spi,
        seq=seq,
        pid=pid,
        s=s,
        d=d,
        ka=None,
        ke=None,
        sa2=sa2,
        hard_lt=hard_lt,
        soft_lt=soft_lt,
        extra=extra,
    )


def delete(
    satype: int = SaType.ESP,
    spi: int | None = 0x1000,
    *,
    seq: int = 0,
    pid: int = PID,
    s: str = A,
    d: str = B,
    sa2: Sa2 | None = None,
    extra: Iterable[Extension] = (),
) -> Message:
    """SADB_DELETE: <base, (SA), address(SD)>; ``spi=None`` leaves SA out."""
    sa = Sa(spi) if spi is not None else None
    return _assemble(MsgType.DELETE, satype, seq, pid, [sa, sa2, src(s), dst(d)], (), extra)


def get(
    satype: int = SaType.ESP,
    spi: int = 0x1000,
    *,
    seq: int = 0,
    pid: int = PID,
    s: str = A,
    d: str = B,
    omit: Iterable[int] = (),
    extra: Iterable[Extension] = (),
) -> Message:
    """SADB_GET as setkey sends it: SA (flags 0x40), SA2 (mode any), SRC, DST."""
    return _assemble(MsgType.GET, satype, seq, pid, [Sa(spi, flags=0x40), Sa2(), src(s), dst(d)], omit, extra)


def register(satype: int = SaType.ESP, *, seq: int = 0, pid: int = PID) -> Message:
    return Message(MsgType.REGISTER, satype, seq, pid)


def flush(satype: int = SaType.UNSPEC, *, seq: int = 0, pid: int = PID, extra: Iterable[Extension] = ()) -> Message:
    return Message(MsgType.FLUSH, satype, seq, pid, exts=tuple(extra))


def dump(satype: int = SaType.UNSPEC, *, seq: int = 0, pid: int = PID, extra: Iterable[Extension] = ()) -> Message:
    return Message(MsgType.DUMP, satype, seq, pid, exts=tuple(extra))


def promisc(on: int = 1, *, seq: int = 0, pid: int = PID) -> Message:
    """SADB_X_PROMISC, header only: satype 1 turns it on, 0 off."""
    return Message(MsgType.X_PROMISC, on, seq, pid)


def acquire_error(seq: int, err: int, satype: int = SaType.ESP, *, pid: int = PID) -> Message:
    """A key manager's report that it failed to negotiate the ACQUIRE ``seq``."""
    return Message(MsgType.ACQUIRE, satype, seq, pid, err)


def acquire_request(
    satype: int = SaType.ESP,
    *,
    seq: int = 0,
    pid: int = PID,
    s: str = A,
    d: str = B,
    sa2: Sa2 | None = None,
    omit: Iterable[int] = (),
) -> Message:
    """A user-level ACQUIRE (RFC 2367 "an application needs an SA")."""
    prop = Prop(32, (Comb(encrypt=EncAlg.X_AESCBC, encrypt_minbits=128, encrypt_maxbits=256),))
    return _assemble(MsgType.ACQUIRE, satype, seq, pid, [src(s), dst(d), prop, sa2], omit, ())


# ----------------------------------------------------------------------------- effects


def sends(effects: Iterable[Effect], msgtype: int | None = None, *, promisc: bool | None = None) -> list[Send]:
    """The Send effects (of ``msgtype``; with ``promisc`` False or True, only the
    ordinary or only the promiscuous ones)."""
    return [
        e
        for e in effects
        if isinstance(e, Send)
        and (msgtype is None or e.msg.type == msgtype)
        and (promisc is None or e.promisc is promisc)
    ]


def error_of(effects: Sequence[Effect]) -> int | None:
    """The errno of an error reply, or None; an error reply is always the only effect."""
    errs = [e for e in effects if isinstance(e, Error)]
    if not errs:
        return None
    assert len(effects) == 1, effects
    return errs[0].errno


def reply(effects: Sequence[Effect], client: int = FB) -> Message:
    """The one reply (``Send(reply=True)``) to ``client`` (fails on an error reply)."""
    found = [e.msg for e in sends(effects) if e.reply and not e.promisc and client in e.to]
    assert len(found) == 1, effects
    return found[0]


def received(effects: Sequence[Effect], client: int) -> list[Message]:
    """Every message delivered to ``client`` as a normal target (not as a promiscuous copy)."""
    return [e.msg for e in sends(effects) if not e.promisc and client in e.to]


def promisc_copies(effects: Sequence[Effect], client: int | None = None) -> list[Message]:
    return [e.msg for e in sends(effects) if e.promisc and (client is None or client in e.to)]


def targets(effects: Sequence[Effect], *, promisc: bool = False) -> set[int]:
    """Every client some non-promiscuous (or, with ``promisc``, promiscuous) Send reaches."""
    return {c for e in sends(effects) if e.promisc is promisc for c in e.to}


def dump_of(effects: Sequence[Effect]) -> Dump:
    assert len(effects) == 1 and isinstance(effects[0], Dump), effects
    return effects[0]


def ext_types(msg: Message) -> list[int]:
    return [e.exttype for e in msg.exts]


def has_keys(msg: Message) -> bool:
    return any(isinstance(e, Key) for e in msg.exts)


def ok(engine: KeyEngine, client: int, msg: Message, now: Instant = T0) -> list[Effect]:
    """``handle`` that must succeed."""
    effects = engine.handle(client, msg, now)
    assert error_of(effects) is None, (msg, effects)
    return effects


def fails(engine: KeyEngine, client: int, msg: Message, now: Instant = T0) -> int:
    """``handle`` that must be refused: checks the state is unchanged, returns the errno."""
    before = snapshot(engine)
    effects = engine.handle(client, msg, now)
    err = error_of(effects)
    assert err is not None, (msg, effects)
    assert effects == [Error(client, err)]
    assert snapshot(engine) == before, f"a rejected {msg!r} changed the engine's state"
    return err


def mature(
    engine: KeyEngine, client: int = FB, spi: int = 0x1000, satype: int = SaType.ESP, now: Instant = T0, **kw: Any
) -> Message:
    """ADD an SA and return the request."""
    msg = add(satype, spi, **kw)
    ok(engine, client, msg, now)
    return msg


def larval(
    engine: KeyEngine, client: int = FB, spi: int = 0x2000, satype: int = SaType.ESP, now: Instant = T0, **kw: Any
) -> int:
    """GETSPI an exact SPI; returns it."""
    ok(engine, client, getspi(satype, spirange=(spi, spi), **kw), now)
    return spi


# ----------------------------------------------------------------------------- state snapshot


def snapshot(engine: KeyEngine) -> tuple[object, ...]:
    """Everything a request may change: the SA records and their order in every SA
    head, the policies in lookup order, registrations and promiscuous flags, the
    ACQUIRE records and the next deadline.  Records are immutable, so equality of two
    snapshots is equality of state."""
    sad = engine.sad
    heads = tuple((idx, tuple(h.larval.items()), tuple(h.alive.items())) for idx, h in sad.heads.items())
    pairs = tuple((pair, tuple(group)) for pair, group in sad.by_pair.items())
    spd = (tuple(sorted(engine.spd.by_id.items())), tuple(p.id for p in engine.spd.ordered()))
    clients = tuple(
        sorted((c, s.dialect.value, tuple(sorted(s.registered)), s.promisc) for c, s in engine.clients.items())
    )
    acquires = tuple(sorted((r.seq, repr(r.index), r.created, r.count) for r in engine.acquires.by_index.values()))
    return dict(sad.by_spi), heads, pairs, spd, clients, acquires, engine.next_deadline()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def engine() -> KeyEngine:
    return make_engine()


@pytest.fixture(params=[Dialect.FREEBSD, Dialect.LINUX], ids=["freebsd", "linux"])
def dialect(request: pytest.FixtureRequest) -> Dialect:
    return Dialect(request.param)


@pytest.fixture
def me(dialect: Dialect) -> int:
    """The requesting client, of the parametrised dialect."""
    return CLIENT_OF[dialect]
