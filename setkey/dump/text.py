"""The text formats of ``-D`` and ``-DP``: libipsec's pfkey_sadump and pfkey_spdump."""

from __future__ import annotations

from pfkeyd.algorithms import Kind
from pfkeyd.wire import (
    Address,
    ExtType,
    IpsecRequest,
    Lifetime,
    Message,
    Policy,
    Sa,
    SaType,
    SockAddr,
)
from pfkeyd.wire.constants import IPSEC_MANUAL_REQID_MAX
from pfkeyd.wire.sockaddr import AnySockAddr
from setkey.commands import PRIORITY_DEFAULT, PRIORITY_HIGH, PRIORITY_LOW
from setkey.dump.common import (
    _EIPSEC_INVAL_ADDRESS,
    _EIPSEC_INVAL_DIR,
    _EIPSEC_INVAL_LEVEL,
    _EIPSEC_INVAL_MODE,
    _EIPSEC_INVAL_POLICY,
    _EIPSEC_INVAL_PROTO,
    _GRE,
    _ICMPV6,
    _IPV4,
    _LEVEL_WORDS,
    _MODE_WORDS,
    _POLICY_WORDS,
    _SATYPE_WORDS,
    _SCOPE_WORDS,
    _STATE_WORDS,
    _STYLES,
    _U32,
    _U64,
    DumpOptions,
    _alg_name,
    _cstr,
    _host,
    _key_bytes,
    _key_hex,
    _num,
    _pfkey_check,
    _Style,
    _word,
    ctime20,
)


def format_sa(msg: Message, now: int, opts: DumpOptions) -> str:
    """``pfkey_sadump()``: one SA of a GET or DUMP reply, newline-terminated.

    ``now`` is the current time (epoch seconds) printed as ``current:`` and used
    for ``diff:``.
    """
    style = _STYLES[opts.dialect]
    problem = _pfkey_check(msg, style)
    if problem is not None:
        return problem + "\n"
    natt = msg.nat_t_type
    # FreeBSD treats any NAT_T_TYPE extension as NAT-T; ipsec-tools a non-zero type.
    use_natt = natt is not None and (not style.linux or natt.type != 0)
    head, whole = _sa_head(msg, style, opts, use_natt)
    sa, sa2 = msg.sa, msg.sa2
    if not whole or sa is None or sa2 is None:
        return head
    out = [head, "\n\t", _sa_kind(msg, style, use_natt)]
    out.append("mode=" + _word(_MODE_WORDS, _num(sa2.mode)))
    out.append(f"spi={sa.spi}(0x{sa.spi:08x}) reqid={sa2.reqid}(0x{sa2.reqid:08x})\n")
    out.append(_nat_oa_line(msg, style, opts, use_natt))
    out.append(_key_lines(msg, sa, opts))
    replay = sa.replay
    sa_replay = msg.sa_replay
    if not style.linux and sa_replay is not None:
        replay = sa_replay.replay >> 3  # FreeBSD: the window in packets, shown in bytes
    out.append(
        f"\tseq=0x{sa2.sequence:08x} replay={replay} flags=0x{sa.flags:08x} state={_word(_STATE_WORDS, sa.state)}\n"
    )

    current = msg.lifetime_current
    if current is not None:
        out.append(_sa_lifetimes(current, msg.lifetime_hard, msg.lifetime_soft, now, opts))
    ctx = msg.sec_ctx
    if style.linux and ctx is not None:
        out.append(_sec_ctx_lines(ctx.doi, ctx.alg, ctx.ctx))
    out.append(f"\tsadb_seq={msg.seq} pid={msg.pid} refcnt={msg.reserved}\n")
    return "".join(out)


def _sa_head(msg: Message, style: _Style, opts: DumpOptions, use_natt: bool) -> tuple[str, bool]:
    """The line of an SA's two endpoints, and True; or, where an extension the
    dump needs is missing, the whole text setkey prints instead, and False."""
    src, dst = msg.src, msg.dst
    if src is None:
        return "no ADDRESS_SRC extension.\n", False
    sport, dport = msg.nat_t_sport, msg.nat_t_dport

    def endpoint(a: Address, port: int | None) -> str:
        text = _cstr(_host(a.addr, opts))
        if style.linux and opts.ports:
            text += f"[{a.addr.port if isinstance(a.addr, SockAddr) else 0}]"
        if use_natt and port is not None:
            text += f"[{port}]"
        return text

    s_port = sport.port if sport is not None else None
    d_port = dport.port if dport is not None else None
    # ipsec-tools ends each endpoint with a blank, FreeBSD puts one between them
    head = endpoint(src, s_port) + (" " if style.linux else "")
    lead = "" if style.linux else "\n"
    if dst is None:
        return head + (" " if style.linux else "\n") + "no ADDRESS_DST extension.\n", False
    head += (endpoint(dst, d_port) + " ") if style.linux else (" " + endpoint(dst, d_port))
    if msg.sa is None:
        return head + lead + "no SA extension.\n", False
    if msg.sa2 is None:
        return head + lead + "no SA2 extension.\n", False
    return head, True


def _sa_kind(msg: Message, style: _Style, use_natt: bool) -> str:
    """The SA type word, with the blank after it (``esp-udp`` for a NAT-T ESP SA)."""
    if use_natt and msg.satype == SaType.ESP:
        return "esp-udp "
    # ipsec-tools marks a NAT-T SA that is not ESP
    return ("natt+" if use_natt and style.linux else "") + _word(_SATYPE_WORDS, msg.satype)


def _nat_oa_line(msg: Message, style: _Style, opts: DumpOptions, use_natt: bool) -> str:
    """The NAT original addresses: ipsec-tools' ``NAT OA=``, FreeBSD's ``NAT: OAI= OAR=``."""
    if style.linux:
        oa = msg.address(ExtType.X_NAT_T_OA)
        return f"\tNAT OA={_cstr(_host(oa.addr, opts))}\n" if use_natt and oa is not None else ""
    oai, oar = msg.address(ExtType.X_NAT_T_OAI), msg.address(ExtType.X_NAT_T_OAR)
    if msg.nat_t_type is None or (oai is None and oar is None):
        return ""
    text = "\tNAT:"
    if oai is not None:
        text += f" OAI={_cstr(_host(oai.addr, opts))}"
    if oar is not None:
        text += f" OAR={_cstr(_host(oar.addr, opts))}"
    return text + "\n"


def _key_lines(msg: Message, sa: Sa, opts: DumpOptions) -> str:
    """The ``C:``, ``E:`` and ``A:`` lines: algorithms and keys."""
    out = []
    enc_key, auth_key = msg.key_encrypt, msg.key_auth
    if msg.satype == SaType.X_IPCOMP:
        # No newline: the seq= line continues this one (reference example SA-4).
        out.append("\tC: " + _alg_name(Kind.COMPRESS, sa.encrypt, opts.dialect))
    elif msg.satype == SaType.ESP and enc_key is not None:
        out.append("\tE: " + _alg_name(Kind.ENCRYPT, sa.encrypt, opts.dialect) + _key_hex(_key_bytes(enc_key)) + "\n")
    if auth_key is not None:
        out.append("\tA: " + _alg_name(Kind.AUTH, sa.auth, opts.dialect) + _key_hex(_key_bytes(auth_key)) + "\n")
    return "".join(out)


def _lifetime_bytes(lt: Lifetime | None) -> str:
    # str_lifetime_byte() prints the counter through a double with "%.0f".
    return "0" if lt is None else f"{float(lt.bytes):.0f}"


def _sa_lifetimes(c: Lifetime, h: Lifetime | None, s: Lifetime | None, now: int, opts: DumpOptions) -> str:
    diff = 0 if c.addtime == 0 else (now - c.addtime) & _U64

    def get(lt: Lifetime | None, name: str) -> int:
        return 0 if lt is None else int(getattr(lt, name))

    return (
        f"\tcreated: {ctime20(c.addtime, opts.localtime)}\tcurrent: {ctime20(now, opts.localtime)}\n"
        f"\tdiff: {diff}(s)\thard: {get(h, 'addtime')}(s)\tsoft: {get(s, 'addtime')}(s)\n"
        f"\tlast: {ctime20(c.usetime, opts.localtime)}\thard: {get(h, 'usetime')}(s)\tsoft: {get(s, 'usetime')}(s)\n"
        f"\tcurrent: {_lifetime_bytes(c)}(bytes)\thard: {_lifetime_bytes(h)}(bytes)"
        f"\tsoft: {_lifetime_bytes(s)}(bytes)\n"
        f"\tallocated: {c.allocations}\thard: {get(h, 'allocations')}\tsoft: {get(s, 'allocations')}\n"
    )


def _sec_ctx_lines(doi: int, alg: int, ctx: bytes) -> str:
    text = ctx.split(b"\0", 1)[0].decode("utf-8", "replace")
    return (
        f"\tsecurity context doi: {doi}\n\tsecurity context algorithm: {alg}\n"
        f"\tsecurity context length: {len(ctx)}\n\tsecurity context: {text}\n"
    )


# ---------------------------------------------------------------- SPD dump


def _prefport(a: Address, ulp: int, style: _Style) -> str:
    """str_prefport(): ``/prefix`` unless full, then ``[port]``/``[any]`` unless the
    upper-layer protocol carries a type and code instead of ports."""
    sa = a.addr
    assert isinstance(sa, SockAddr)
    pref = "" if a.prefixlen == sa.max_prefix else f"/{a.prefixlen}"
    if ulp in style.portless:
        return pref
    return pref + ("[any]" if sa.port == 0 else f"[{sa.port}]")


def _upperspec(ulp: int, p1: int, p2: int, style: _Style, opts: DumpOptions) -> str:
    """str_upperspec(): the upper-layer protocol and, for ICMP-like ones, type,code."""
    if not style.linux and ulp == 255:
        return "any"
    if not style.linux and ulp == _ICMPV6:
        text = "icmp6"
    elif not style.linux and ulp == _IPV4:
        text = "ip4"
    else:
        text = opts.protocols.get(ulp, str(ulp))
    if p1 == 0 and p2 == 0:
        return text
    if ulp in style.typecode:
        return f"{text} {p1},{p2}"
    if style.linux and ulp == _GRE:
        return f"{text} {(p1 << 16) + p2}"
    return text


def _priority_text(priority: int) -> str:
    """ipsec-tools' rendering of sadb_x_policy_priority: ``prio <band> [+|- n]``."""
    if priority == 0:
        return ""
    if priority < (PRIORITY_DEFAULT // 4) * 3:
        base, word = PRIORITY_HIGH, "prio high"
    elif priority < (PRIORITY_DEFAULT // 4) * 5:
        base, word = PRIORITY_DEFAULT, "prio def"
    else:
        base, word = PRIORITY_LOW, "prio low"
    offset = _int32(-_int32(priority - base))  # the sign as the user would type it
    if offset == 0:
        return word
    op = "-" if offset < 0 else "+"
    return f"{word} {op} {(-offset if offset < 0 else offset) & _U32}"


def _int32(value: int) -> int:
    value &= _U32
    return value - (1 << 32) if value >> 31 else value


def _endpoint_text(sa: AnySockAddr, with_port: bool, opts: DumpOptions) -> str | None:
    host = _host(sa, opts)
    if host is None:
        return None
    return f"{host}[{sa.port}]" if with_port and isinstance(sa, SockAddr) else host


def _request_text(req: IpsecRequest, style: _Style, opts: DumpOptions) -> str | tuple[str]:
    """ipsec_dump_ipsecrequest(); a 1-tuple carries the libipsec error instead."""
    proto = style.request_protos.get(req.proto)
    if proto is None:
        return (_EIPSEC_INVAL_PROTO,)
    mode = _num(req.mode)
    if mode >= len(_MODE_WORDS):
        return (_EIPSEC_INVAL_MODE,)
    addrs = ""
    if req.src is not None and req.dst is not None:
        with_port = style.linux and opts.ports
        s, d = _endpoint_text(req.src, with_port, opts), _endpoint_text(req.dst, with_port, opts)
        if s is None or d is None:
            return (_EIPSEC_INVAL_ADDRESS,)
        addrs = f"{s}-{d}"
    if not 0 <= req.level < len(_LEVEL_WORDS):
        return (_EIPSEC_INVAL_LEVEL,)
    text = f"{proto}/{_MODE_WORDS[mode]}/{addrs}/{_LEVEL_WORDS[req.level]}"
    if req.reqid:
        text += f"{'#' if req.reqid > IPSEC_MANUAL_REQID_MAX else ':'}{req.reqid}"
    return text


def _policy_text(pol: Policy, style: _Style, opts: DumpOptions) -> str | tuple[str]:
    """ipsec_dump_policy(policy, "\\n\\t"); a 1-tuple carries the libipsec error."""
    direction = _num(pol.dir)
    if not 0 <= direction < len(style.dirs):
        return (_EIPSEC_INVAL_DIR,)
    if not 0 <= pol.type < len(_POLICY_WORDS):
        return (_EIPSEC_INVAL_POLICY,)
    prio = _priority_text(pol.priority) if style.linux else ""
    parts = [style.dirs[direction]] + ([prio] if prio else []) + [_POLICY_WORDS[pol.type]]
    text = " ".join(parts)
    if pol.type != 2:  # IPSEC_POLICY_IPSEC
        return text
    for req in pol.requests:
        req_text = _request_text(req, style, opts)
        if isinstance(req_text, tuple):
            return req_text
        text += "\n\t" + req_text
    return text


def format_policy(msg: Message, opts: DumpOptions) -> str:
    """``pfkey_spdump()``: one policy of an SPDDUMP (or, for ipsec-tools, SPDGET)
    reply, newline-terminated."""
    style = _STYLES[opts.dialect]
    problem = _pfkey_check(msg, style)
    if problem is not None:
        return problem + "\n"
    pol = msg.policy
    selector, whole = _selector_text(msg, style, opts)
    if not whole:
        return selector
    if pol is None:
        return selector + "no X_POLICY extension.\n"
    out = [selector]
    text = _policy_text(pol, style, opts)
    if isinstance(text, tuple):
        # FreeBSD passes the NULL result to printf; ipsec-tools names the error.
        out.append(f"\n\tPolicy:[{text[0]}]\n" if style.linux else "\n\t(null)\n")
    else:
        out.append(f"\n\t{text}\n")

    current, hard = msg.lifetime_current, msg.lifetime_hard
    if current is not None:
        out.append(
            f"\tcreated: {ctime20(current.addtime, opts.localtime)}  "
            f"lastused: {ctime20(current.usetime, opts.localtime)}\n"
        )
    if hard is not None:
        out.append(f"\tlifetime: {hard.addtime}(s) validtime: {hard.usetime}(s)\n")
    ctx = msg.sec_ctx
    if style.linux and ctx is not None:
        out.append(_sec_ctx_lines(ctx.doi, ctx.alg, ctx.ctx))
    out.append(f"\tspid={pol.id} seq={msg.seq} pid={msg.pid}")
    if not style.linux:
        out.append(_scope_text(pol, opts))
    out.append(f"\n\trefcnt={msg.reserved}\n")
    return "".join(out)


def _selector_text(msg: Message, style: _Style, opts: DumpOptions) -> tuple[str, bool]:
    """A policy's selector (its two addresses and the upper layer), and True; or
    the whole text setkey prints when the two upper-layer protocols differ, and False."""
    src, dst, pol = msg.src, msg.dst, msg.policy
    # Linux always sends selectors; ipsec-tools recognises per-socket policies by
    # the direction Linux encodes in the low bits of the policy id.
    if style.linux and pol is not None and pol.id % 8 >= 3:
        return "(per-socket policy) ", True
    if src is None or dst is None:
        return "(no selector, probably per-socket policy) ", True
    ulp = src.proto
    out = []
    ports = []
    for a in (src, dst):
        if isinstance(a.addr, SockAddr):
            out.append(f"{_host(a.addr, opts)}{_prefport(a, ulp, style)} ")
            ports.append(a.addr.port)
        else:
            out.append("unknown-af ")
            ports.append(0)
    if src.proto != dst.proto:
        out.append("upper layer protocol mismatched.\n")
        return "".join(out), False
    out.append(_upperspec(ulp, ports[0], ports[1], style, opts))
    return "".join(out), True


def _scope_text(pol: Policy, opts: DumpOptions) -> str:
    """FreeBSD's `` scope=... `` and, for an interface's policy, ``ifname=``."""
    text = " scope=" + _SCOPE_WORDS.get(pol.scope, str(pol.scope)) + " "
    if pol.scope == 2:  # IPSEC_POLICYSCOPE_IFNET: the priority field is the ifindex
        name = opts.ifname(pol.priority)
        if name is not None:
            text += f"ifname={name}"
    return text
