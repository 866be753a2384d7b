"""The ``--json`` format: one JSON object per SA, policy or error (the schema is
in :mod:`setkey.dump`)."""

from __future__ import annotations

import errno as E
import json
from collections.abc import Callable
from typing import Any

from pfkeyd import algorithms
from pfkeyd.algorithms import Kind
from pfkeyd.wire import (
    UNKNOWN,
    Address,
    Dialect,
    ExtType,
    Key,
    Lifetime,
    Message,
    MsgType,
    SaState,
    SaType,
    SockAddr,
)
from pfkeyd.wire.sockaddr import AnySockAddr
from pfkeyd.words import REQUEST_PROTO_WORDS
from setkey.dump.common import (
    _DIR_WORDS,
    _LEVEL_WORDS,
    _MODE_WORDS,
    _POLICY_WORDS,
    _SATYPE_WORDS,
    _SCOPE_WORDS,
    _STATE_WORDS,
    DumpOptions,
    _host,
    _num,
)
from setkey.dump.error import error_text


def _name_or_number(table: tuple[str, ...], value: int) -> str | int:
    return table[value] if 0 <= value < len(table) and table[value] not in ("", "unknown") else value


def _lifetime_json(lt: Lifetime | None) -> dict[str, int] | None:
    if lt is None:
        return None
    return {"allocations": lt.allocations, "bytes": lt.bytes, "addtime": lt.addtime, "usetime": lt.usetime}


def _address_json(a: Address | None, opts: DumpOptions) -> dict[str, Any] | None:
    if a is None:
        return None
    port = a.addr.port if isinstance(a.addr, SockAddr) else 0
    return {"address": _host(a.addr, opts), "port": port, "prefixlen": a.prefixlen, "proto": a.proto}


def _sockaddr_json(sa: AnySockAddr | None, opts: DumpOptions) -> dict[str, Any] | None:
    if sa is None:
        return None
    return {"address": _host(sa, opts), "port": sa.port if isinstance(sa, SockAddr) else 0}


def _alg_json(kind: Kind, value: int, key: Key | None) -> dict[str, Any]:
    alg = algorithms.by_id(kind, value)
    if alg is None and value & UNKNOWN:
        alg = algorithms.by_id(kind, value & ~UNKNOWN)
    out: dict[str, Any] = {"algorithm": alg.names[0] if alg is not None and alg.names else None, "id": _num(value)}
    if key is not None:
        out["bits"] = key.bits
        out["key"] = key.data.hex()
    return out


def _msg_json(msg: Message) -> dict[str, Any]:
    mtype: str | int = MsgType(msg.type).name if msg.type in MsgType._value2member_map_ else msg.type
    return {"type": mtype, "satype": msg.satype, "seq": msg.seq, "pid": msg.pid, "refcnt": msg.reserved}


def _sec_ctx_json(msg: Message) -> dict[str, Any] | None:
    ctx = msg.sec_ctx
    if ctx is None:
        return None
    return {"doi": ctx.doi, "alg": ctx.alg, "context": ctx.ctx.split(b"\0", 1)[0].decode("utf-8", "replace")}


def _sa_json(msg: Message, opts: DumpOptions) -> dict[str, Any]:
    sa, sa2 = msg.sa, msg.sa2
    replay = None if sa is None else sa.replay
    if msg.sa_replay is not None:
        replay = msg.sa_replay.replay >> 3
    encryption = authentication = compression = None
    if sa is not None:
        if msg.satype == SaType.X_IPCOMP:
            compression = _alg_json(Kind.COMPRESS, sa.encrypt, None)
        elif msg.key_encrypt is not None or sa.encrypt:
            encryption = _alg_json(Kind.ENCRYPT, sa.encrypt, msg.key_encrypt)
        if msg.key_auth is not None or sa.auth:
            authentication = _alg_json(Kind.AUTH, sa.auth, msg.key_auth)
    natt = None
    if msg.nat_t_type is not None:
        oai, oar = msg.address(ExtType.X_NAT_T_OAI), msg.address(ExtType.X_NAT_T_OAR)
        natt = {
            "type": msg.nat_t_type.type,
            "sport": None if msg.nat_t_sport is None else msg.nat_t_sport.port,
            "dport": None if msg.nat_t_dport is None else msg.nat_t_dport.port,
            "oai": None if oai is None else _host(oai.addr, opts),
            "oar": None if oar is None else _host(oar.addr, opts),
        }
    return {
        "type": "sa",
        "msg": _msg_json(msg),
        "satype": _name_or_number(_SATYPE_WORDS, msg.satype),
        "src": _address_json(msg.src, opts),
        "dst": _address_json(msg.dst, opts),
        "spi": None if sa is None else sa.spi,
        "mode": None if sa2 is None else _name_or_number(_MODE_WORDS, _num(sa2.mode)),
        "reqid": None if sa2 is None else sa2.reqid,
        "sequence": None if sa2 is None else sa2.sequence,
        "replay": replay,
        "state": None if sa is None else _name_or_number(_STATE_WORDS, sa.state),
        "flags": None if sa is None else sa.flags,
        "encryption": encryption,
        "authentication": authentication,
        "compression": compression,
        "nat_t": natt,
        "lifetime": {
            "current": _lifetime_json(msg.lifetime_current),
            "hard": _lifetime_json(msg.lifetime_hard),
            "soft": _lifetime_json(msg.lifetime_soft),
        },
        "sec_ctx": _sec_ctx_json(msg),
    }


def _policy_json(msg: Message, opts: DumpOptions) -> dict[str, Any]:
    pol = msg.policy
    src = msg.src
    requests = (
        []
        if pol is None
        else [
            {
                "proto": REQUEST_PROTO_WORDS.get(r.proto, r.proto),
                "mode": _name_or_number(_MODE_WORDS, _num(r.mode)),
                "level": _name_or_number(_LEVEL_WORDS, r.level),
                "reqid": r.reqid,
                "src": _sockaddr_json(r.src, opts),
                "dst": _sockaddr_json(r.dst, opts),
            }
            for r in pol.requests
        ]
    )
    scope: str | int | None = None
    if pol is not None and opts.dialect is Dialect.FREEBSD:
        scope = _SCOPE_WORDS.get(pol.scope, pol.scope)
    return {
        "type": "policy",
        "msg": _msg_json(msg),
        "id": None if pol is None else pol.id,
        "src": _address_json(src, opts),
        "dst": _address_json(msg.dst, opts),
        "upper": None if src is None else src.proto,
        "dir": None if pol is None else _name_or_number(_DIR_WORDS, _num(pol.dir)),
        "action": None if pol is None else _name_or_number(_POLICY_WORDS, pol.type),
        "priority": None if pol is None else pol.priority,
        "scope": scope,
        "requests": requests,
        "lifetime": {"current": _lifetime_json(msg.lifetime_current), "hard": _lifetime_json(msg.lifetime_hard)},
        "sec_ctx": _sec_ctx_json(msg),
    }


_JSON_KINDS: dict[int, Callable[[Message, DumpOptions], dict[str, Any]]] = {
    MsgType.GET: _sa_json,
    MsgType.DUMP: _sa_json,
    MsgType.X_SPDDUMP: _policy_json,
    MsgType.X_SPDGET: _policy_json,
}


def to_json(msg: Message, opts: DumpOptions) -> dict[str, Any] | None:
    """The JSON object of one reply (schema in the module docstring), or None when
    nothing is printed for it: an empty table, a dead SA without ``-a``, a reply
    that is neither an SA nor a policy."""
    if msg.errno:
        if msg.errno == E.ENOENT and msg.type in (MsgType.DUMP, MsgType.X_SPDDUMP):
            return None
        return {"type": "error", "msg": _msg_json(msg), "errno": msg.errno, "message": error_text(msg, opts.dialect)}
    build = _JSON_KINDS.get(msg.type)
    if build is None:
        return None
    sa = msg.sa
    if msg.type == MsgType.DUMP and not opts.show_dead and sa is not None and sa.state == SaState.DEAD:
        return None
    return build(msg, opts)


def format_json(msg: Message, opts: DumpOptions) -> str:
    """:func:`to_json` as one line of compact JSON with a newline, or ``""``."""
    obj = to_json(msg, opts)
    return "" if obj is None else json.dumps(obj, separators=(",", ":")) + "\n"
