"""The ``-l`` short format: one line per SA (FreeBSD setkey's shortdump)."""

from __future__ import annotations

from pfkeyd.wire import (
    Address,
    Message,
    SockAddr,
)
from setkey.dump.common import _U32, DumpOptions, _host

#: The ``-l`` header, printed once before the first dump.
SHORT_HEADER = "time p   s spi      ltime   src -> dst\n"

_SHORT_SATYPE = {2: "ah", 3: "esp"}
_SHORT_STATE = ("L", "M", "D", "d")
_SHORT_PROTO = {
    0: "ip",
    1: "icmp",
    2: "igmp",
    3: "ggp",
    4: "ip4",
    6: "tcp",
    8: "egp",
    17: "udp",
    22: "idp",
    29: "tp",
    41: "ip6",
    43: "rt6",
    44: "frag6",
    46: "rsvp",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "icmp6",
    59: "none",
    60: "dst6",
}


def _short_addr(a: Address | None, opts: DumpOptions) -> str:
    if a is None:
        return "?"
    text = f"{_SHORT_PROTO.get(a.proto, f'#{a.proto}')} " if a.proto else ""
    host = _host(a.addr, opts) or ""
    port = a.addr.port if isinstance(a.addr, SockAddr) else 0
    return text + (f"{host}[{port}]" if port else host)


def format_short(msg: Message, now: int, opts: DumpOptions) -> str:
    """``shortdump()``: the ``-l`` line of one SA (both setkeys print the same).

    The time column is the minute and second of ``now`` counted from the epoch,
    not local time, as the reference computes it.
    """
    out = [f"{now % 3600 // 60:02d}{now % 60:02d}", f" {_SHORT_SATYPE.get(msg.satype, f'#{msg.satype}'):<3}"]
    sa = msg.sa
    if sa is not None:
        state = _SHORT_STATE[sa.state] if 0 <= sa.state < len(_SHORT_STATE) else f"#{sa.state}"
        out.append(f" {state:<1} {sa.spi:08x}")
    else:
        out.append(f"{'?':<1} {'?':<8}")  # no leading space: as the reference prints it
    c, h, s = msg.lifetime_current, msg.lifetime_hard, msg.lifetime_soft
    if c is not None and h is not None and s is not None:
        age = 0 if c.addtime == 0 else (now - c.addtime) & _U32  # a u_int in the reference
        out.append(" big/" if age >= 1000 else f" {age:3d}/")
        hard = h.addtime & _U32
        out.append("big" if hard >= 1000 else f"{hard:<3d}")
    else:
        out.append(" ???/???")
    out.append(f" {_short_addr(msg.src, opts)} -> {_short_addr(msg.dst, opts)}\n")
    return "".join(out)
