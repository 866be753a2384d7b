"""Properties of the key engine over random sequences of requests, ticks and usage reports.

Each request starts from a valid template (GETSPI, ADD, UPDATE, DELETE, GET, REGISTER,
FLUSH, DUMP, X_PROMISC, ACQUIRE, a kernel-only type) and may be mutated: an extension
dropped or added, a field of the SA changed, another satype, pid or SPI.  Every
message goes through the codec of its sender's dialect first (encode, then decode as
a kernel reads a request, without the checks the engine repeats), so the engine sees
exactly what the shell would hand it; a message the codec refuses is skipped.

Checked after every step:

* ``handle``, ``tick`` and ``report_usage`` return effects and raise nothing;
* a rejected request (an Error effect) is answered by that single effect and leaves
  the snapshot (SAs and their order, policies, registrations, ACQUIRE records, next
  deadline) unchanged;
* key material travels only in a reply to the requester, never in a broadcast and
  never in a promiscuous copy; tick and report_usage never send keys;
* the SAD's indexes agree with each other.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pfkeyd.effects import Dump, Effect, Error, Send
from pfkeyd.engine import KeyEngine
from pfkeyd.errors import DecodeError, EncodeError
from pfkeyd.wire import (
    Address,
    AuthAlg,
    Comb,
    CompAlg,
    EncAlg,
    Extension,
    ExtType,
    Filter,
    Ident,
    IdentType,
    Key,
    Message,
    Mode,
    MsgType,
    NatTPort,
    NatTTypeExt,
    Prop,
    Sa,
    Sa2,
    SaReplay,
    SaType,
    SpiRange,
    decode,
    encode,
)
from tests.engine.conftest import (
    A6,
    DIALECT_OF,
    FB,
    FB2,
    LX,
    LX2,
    PID,
    A,
    B,
    C,
    acquire_error,
    acquire_request,
    add,
    at,
    delete,
    dump,
    flush,
    get,
    getspi,
    hard,
    has_keys,
    lifetimes_update,
    make_engine,
    promisc,
    register,
    snapshot,
    soft,
    update,
)

SCALE = int(os.environ.get("PFKEYD_HYPOTHESIS_SCALE", "1"))

CLIENTS = (FB, FB2, LX, LX2)
SPIS = (0x1000, 0x1001, 0x2000, 0x10000, 0xFF, 0x50)
ADDRS = (A, B, C, A6)
SATYPES = (SaType.ESP, SaType.AH, SaType.X_IPCOMP, SaType.X_TCPSIGNATURE, SaType.UNSPEC, 1, SaType.RSVP)
PIDS = (PID, PID + 1)
KEY_LENGTHS = (0, 16, 20, 32, 36, 81)
AUTHS = (AuthAlg.NONE, AuthAlg.SHA1HMAC, AuthAlg.X_SHA2_256, AuthAlg.X_NULL, AuthAlg.X_TCP_MD5, AuthAlg.MD5HMAC)
ENCS = (
    EncAlg.NONE,
    EncAlg.NULL,
    EncAlg.X_AESCBC,
    EncAlg.X_AESGCM16,
    EncAlg.X_CHACHA20POLY1305,
    EncAlg.DES3CBC,
    CompAlg.DEFLATE,
)
FLAGS = (0, 0x40, 0x1, 0x20, 0x80, 0x1000)


def _templates() -> st.SearchStrategy[Message]:
    # Weighted towards ESP and the SPIs earlier steps tend to create, so that UPDATE,
    # GET and DELETE often find their SA.
    spi = st.sampled_from((*SPIS, 0x1000, 0x1000, 0x2000, 0x2000))
    satype = st.sampled_from((SaType.ESP, SaType.ESP, SaType.ESP, SaType.AH, SaType.X_IPCOMP, SaType.X_TCPSIGNATURE))
    addr = st.sampled_from(ADDRS[:3])
    lt = st.sampled_from(
        [
            {},
            {"hard_lt": hard(addtime=20), "soft_lt": soft(addtime=10)},
            {"hard_lt": hard(nbytes=3000), "soft_lt": soft(nbytes=1000)},
            {"hard_lt": hard(usetime=15), "soft_lt": soft(usetime=5)},
        ]
    )
    seq = st.sampled_from((0, 1, 2, 0xFFFFFFFF))
    return st.one_of(
        st.builds(
            lambda s, r, q, d: getspi(s, spirange=r, seq=q, d=d),
            satype,
            st.sampled_from([None, (0x2000, 0x2000), (0x1000, 0x1003), (1, 0xFF), (0x20000, 0x30000)]),
            seq,
            addr,
        ),
        st.builds(lambda t, i, l, q, d: add(t, i, seq=q, d=d, **l), satype, spi, lt, seq, addr),
        st.builds(lambda t, i, l: update(t, i, **l), satype, spi, lt),
        st.builds(lambda t, i, l: lifetimes_update(t, i, **l), satype, spi, lt),
        st.builds(delete, satype, st.one_of(st.none(), spi)),
        st.builds(get, satype, spi),
        st.builds(register, st.sampled_from((*SATYPES[:5],))),
        st.builds(flush, st.sampled_from((SaType.UNSPEC, SaType.ESP, SaType.AH))),
        st.builds(dump, st.sampled_from((SaType.UNSPEC, SaType.ESP, SaType.AH))),
        st.builds(promisc, st.sampled_from((0, 1, 2))),
        st.builds(acquire_error, seq, st.sampled_from((0, errno.ETIMEDOUT))),
        st.builds(lambda d, m: acquire_request(d=d, sa2=m), addr, st.sampled_from([None, Sa2(Mode.TUNNEL, 0, 3)])),
        st.builds(
            lambda t: Message(t, SaType.ESP),
            st.sampled_from((MsgType.EXPIRE, MsgType.X_PCHANGE, MsgType.X_SPDEXPIRE, MsgType.X_MIGRATE)),
        ),
    )


_EXTRA_EXTS: tuple[Extension, ...] = (
    Sa2(Mode.TRANSPORT),
    Sa2(Mode.TUNNEL, 0, 3),
    hard(addtime=5),
    soft(addtime=3),
    SpiRange(0x1000, 0x1001),
    Key(ExtType.KEY_AUTH, b"\xa5" * 20),
    Key(ExtType.KEY_ENCRYPT, b"\x5a" * 36),
    Key(ExtType.KEY_ENCRYPT, b""),
    SaReplay(5000),
    NatTTypeExt(2),
    NatTPort(ExtType.X_NAT_T_SPORT, 4500),
    NatTPort(ExtType.X_NAT_T_DPORT, 0),
    Address.host(ExtType.X_NAT_T_OAI, "10.8.8.8"),
    Address.host(ExtType.X_NAT_T_OAR, "10.9.9.9"),
    Ident(ExtType.IDENTITY_SRC, IdentType.FQDN, b"a.example"),
    Ident(ExtType.IDENTITY_DST, IdentType.FQDN, b"b"),
    Prop(32, (Comb(encrypt=EncAlg.X_AESCBC),)),
    Address.host(ExtType.ADDRESS_SRC, A6),
    Address.host(ExtType.ADDRESS_DST, B, port=500),
    Address.host(ExtType.X_NEW_ADDRESS_DST, C),
    Filter(4, IPv4Address("10.0.0.0"), IPv4Address("10.0.0.0"), 8, 8),
)


@st.composite
def requests(draw: st.DrawFn) -> Message:
    msg = draw(_templates())
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(("drop", "extra", "sa", "satype", "pid", "keylen")))
        if kind == "drop" and msg.exts:
            victim = draw(st.sampled_from(msg.exts))
            msg = msg.replace(exts=tuple(e for e in msg.exts if e is not victim))
        elif kind == "extra":
            ext = draw(st.sampled_from(_EXTRA_EXTS))
            msg = msg.replace(exts=(*[e for e in msg.exts if e.exttype != ext.exttype], ext))
        elif kind == "sa" and msg.sa is not None:
            field = draw(st.sampled_from(("spi", "auth", "encrypt", "flags", "replay")))
            pool: dict[str, Any] = {"spi": SPIS, "auth": AUTHS, "encrypt": ENCS, "flags": FLAGS, "replay": (0, 4, 255)}
            sa = replace(msg.sa, **{field: draw(st.sampled_from(pool[field]))})
            msg = msg.replace(exts=tuple(sa if isinstance(e, Sa) else e for e in msg.exts))
        elif kind == "satype":
            msg = msg.replace(satype=draw(st.sampled_from(SATYPES)))
        elif kind == "pid":
            msg = msg.replace(pid=draw(st.sampled_from(PIDS)))
        elif kind == "keylen":
            n = draw(st.sampled_from(KEY_LENGTHS))
            msg = msg.replace(exts=tuple(Key(e.exttype, e.data[:1] * n) if isinstance(e, Key) else e for e in msg.exts))
    return msg


@dataclass(frozen=True)
class Request:
    client: int
    msg: Message


@dataclass(frozen=True)
class Tick:
    dt: float


@dataclass(frozen=True)
class Usage:
    spi: int
    nbytes: int
    packets: int


@dataclass(frozen=True)
class Knob:
    larval_lifetime: int


Op = Request | Tick | Usage | Knob

ops = st.lists(
    st.one_of(
        st.builds(Request, st.sampled_from(CLIENTS), requests()),
        st.builds(Request, st.sampled_from(CLIENTS), requests()),
        st.builds(Request, st.sampled_from(CLIENTS), requests()),
        st.builds(Tick, st.sampled_from((0.5, 3, 5, 10, 31))),
        st.builds(Usage, st.sampled_from(SPIS), st.sampled_from((1, 999, 2000)), st.sampled_from((1, 5))),
        st.builds(Knob, st.sampled_from((2, 30, 60))),
    ),
    max_size=40,
)


def _as_decoded(client: int, msg: Message) -> Message | None:
    """What the shell hands the engine for ``msg`` sent by ``client``, or None when
    the codec itself answers (or the client could not have sent it)."""
    dialect = DIALECT_OF[client]
    try:
        return decode(encode(msg, dialect), dialect, request=False)
    except (EncodeError, DecodeError):
        return None


def _check_sad_indexes(engine: KeyEngine) -> None:
    sad = engine.sad
    seen = {}
    for idx, head in sad.heads.items():
        assert len(head) > 0 and head.index == idx
        assert head in sad.by_pair[(idx.proto, idx.src, idx.dst)]
        for spi, sa in head.larval.items():
            assert not sa.alive and sa.spi == spi and sa.index == idx
            seen[spi] = sa
        for spi, sa in head.alive.items():
            assert sa.alive and sa.spi == spi and sa.index == idx
            seen[spi] = sa
    assert seen == sad.by_spi
    assert sum(len(g) for g in sad.by_pair.values()) == len(sad.heads)


def _check_no_leak(effects: list[Effect], requester: int | None) -> None:
    for eff in effects:
        if isinstance(eff, Send) and has_keys(eff.msg):
            assert requester is not None, f"keys outside a request: {eff}"
            assert eff.reply and not eff.promisc and eff.to == (requester,), f"keys leaked: {eff}"
        if isinstance(eff, Dump):
            assert eff.to == requester


def run(operations: list[Op]) -> None:
    engine = make_engine()
    now = 0.0
    for op in operations:
        if isinstance(op, Request):
            msg = _as_decoded(op.client, op.msg)
            if msg is None:
                continue
            before = snapshot(engine)
            effects = engine.handle(op.client, msg, at(now))
            assert isinstance(effects, list)
            errs = [e for e in effects if isinstance(e, Error)]
            if errs:
                assert effects == [Error(op.client, errs[0].errno)] and errs[0].errno > 0
                assert snapshot(engine) == before, f"rejected {msg!r} changed the state"
            _check_no_leak(effects, op.client)
            for eff in effects:
                if isinstance(eff, Dump):
                    for n, item in enumerate(eff.items[:3]):
                        try:
                            raw = eff.render(item, DIALECT_OF[op.client], n, eff.pid)
                        except EncodeError:
                            continue  # an SA the dialect cannot describe; the shell skips it
                        assert decode(raw, DIALECT_OF[op.client], request=False).type == MsgType.DUMP
        elif isinstance(op, Tick):
            now += op.dt
            _check_no_leak(engine.tick(at(now)), None)
        elif isinstance(op, Usage):
            _check_no_leak(engine.report_usage(op.spi, op.nbytes, op.packets, at(now)), None)
        else:
            engine.set_knob("net.key.larval_lifetime", op.larval_lifetime)
        _check_sad_indexes(engine)
        deadline = engine.next_deadline()
        assert deadline is None or isinstance(deadline, float)


@settings(max_examples=150 * SCALE)
@given(ops)
def test_random_sequences_return_effects_and_rejections_change_nothing(operations: list[Op]) -> None:
    run(operations)


@settings(max_examples=100 * SCALE)
@given(st.lists(st.builds(Request, st.sampled_from(CLIENTS), requests()), max_size=25))
def test_key_material_reaches_only_the_requester(operations: list[Op]) -> None:
    # The same run, requests only, with a promiscuous socket of each dialect listening
    # and SAs in place for GET, DUMP, UPDATE and DELETE to find.
    prefix: list[Op] = [
        Request(FB2, promisc(1)),
        Request(LX2, promisc(1)),
        Request(FB, register(SaType.ESP)),
        Request(LX, register(SaType.AH)),
        Request(FB, add(spi=0x1000)),
        Request(LX, add(SaType.AH, 0x1001)),
        Request(FB2, getspi(spirange=(0x2000, 0x2000))),
    ]
    run(prefix + operations)


def test_run_accepts_a_plain_lifecycle() -> None:
    # The checker itself on a known sequence: GETSPI, UPDATE, usage, expiry.
    run(
        [
            Request(LX2, register(SaType.ESP)),
            Request(FB, getspi(spirange=(0x2000, 0x2000))),
            Request(FB, update(spi=0x2000, hard_lt=hard(addtime=20), soft_lt=soft(addtime=10))),
            Request(FB2, get(spi=0x2000)),
            Request(LX, dump()),
            Usage(0x2000, 100, 1),
            Tick(10),
            Tick(10),
            Request(FB, add(spi=0x2000)),
        ]
    )
