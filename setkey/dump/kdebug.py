"""The debug dumps: ``-v``/``-x`` (the userland kdebug_sadb), ``-h`` hex dumps
and the time stamps of ``-x``."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from pfkeyd.wire import (
    HEADER,
    Dialect,
    MsgType,
)
from pfkeyd.wire.framing import promisc_unwrap
from setkey.dump.common import _STYLES, _U32, _key_hex, _ntop


def hexdump(data: bytes) -> str:
    """``-h`` (FreeBSD) / ``-H`` (ipsec-tools): ``%08x: `` at each 16-byte row,
    ``%02x `` per byte, a newline after each row and after a partial last row."""
    out = []
    for i, byte in enumerate(data):
        if i % 16 == 0:
            out.append(f"{i:08x}: ")
        out.append(f"{byte:02x} ")
        if i % 16 == 15:
            out.append("\n")
    if len(data) % 16:
        out.append("\n")
    return "".join(out)


def timestamp(sec: int, usec: int, *, raw: bool = False, utcoffset: int = 0) -> str:
    """The line ``-x`` prints before each message: ``HH:MM:SS.uuuuuu `` in local
    time (``utcoffset``: seconds east of UTC, taken once at start-up as setkey
    does), or with ``-xx`` ``<sec>.<usec> ``; newline-terminated."""
    if raw:
        return f"{sec & _U32}.{usec:06d} \n"
    s = (sec + utcoffset) % 86400
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}.{usec:06d} \n"


# ----------------------------------------------------------------- kdebug

_MSG_NAMES = {m.value: m.name for m in MsgType if m.value <= MsgType.X_SPDDELETE2}
_FREEBSD_EXT_NAMES = {
    0: "RESERVED",
    1: "SA",
    2: "LIFETIME_CURRENT",
    3: "LIFETIME_HARD",
    4: "LIFETIME_SOFT",
    5: "ADDRESS_SRC",
    6: "ADDRESS_DST",
    7: "ADDRESS_PROXY",
    8: "KEY_AUTH",
    9: "KEY_ENCRYPT",
    10: "IDENTITY_SRC",
    11: "IDENTITY_DST",
    12: "SENSITIVITY",
    13: "PROPOSAL",
    14: "SUPPORTED_AUTH",
    15: "SUPPORTED_ENCRYPT",
    16: "SPIRANGE",
    17: "KMPRIVATE",
    18: "POLICY",
    19: "SA2",
    20: "NAT_T_TYPE",
    21: "NAT_T_SPORT",
    22: "NAT_T_DPORT",
    23: "NAT_T_OAI",
    24: "NAT_T_OAR",
    25: "NAT_T_FRAG",
    26: "SA_REPLAY",
    27: "NEW_ADDRESS_SRC",
    28: "NEW_ADDRESS_DST",
}


class _Raw:
    """Little readers over one message's bytes, in host order as the C code reads."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def u8(self, off: int) -> int:
        return self.data[off] if off < len(self.data) else 0

    def u16(self, off: int) -> int:
        return int(struct.unpack_from("=H", self._pad(off, 2), 0)[0])

    def u32(self, off: int) -> int:
        return int(struct.unpack_from("=I", self._pad(off, 4), 0)[0])

    def u64(self, off: int) -> int:
        return int(struct.unpack_from("=Q", self._pad(off, 8), 0)[0])

    def be16(self, off: int) -> int:
        return int.from_bytes(self._pad(off, 2), "big")

    def be32(self, off: int) -> int:
        return int.from_bytes(self._pad(off, 4), "big")

    def take(self, off: int, n: int) -> bytes:
        return self.data[off : off + max(n, 0)]

    def _pad(self, off: int, n: int) -> bytes:
        # The C code reads whatever follows; a short message reads as zeros here.
        return self.data[off : off + n].ljust(n, b"\0")


class _Kdebug:
    """kdebug_sadb() of one dialect over raw bytes."""

    def __init__(self, data: bytes, dialect: Dialect) -> None:
        self.raw = _Raw(data)
        self.dialect = dialect
        self.style = _STYLES[dialect]
        self.freebsd = dialect is Dialect.FREEBSD
        self.out: list[str] = []

    def p(self, text: str) -> None:
        self.out.append(text)

    def run(self) -> str:
        r = self.raw
        mtype = r.u8(1)
        name = f"({_MSG_NAMES.get(mtype, 'UNKNOWN')})" if self.freebsd else ""
        self.p(f"sadb_msg{{ version={r.u8(0)} type={mtype}{name} errno={r.u8(2)} satype={r.u8(3)}\n")
        units = r.u16(4)
        self.p(f"  len={units} reserved={r.u16(6)} seq={r.u32(8)} pid={r.u32(12)}\n")
        tlen = units * 8 - 16
        off = 16
        while tlen > 0:
            if off + 4 > len(r.data):
                break  # the C code would read past the datagram
            elen, etype = r.u16(off), r.u16(off + 2)
            ename = f"({_FREEBSD_EXT_NAMES.get(etype, 'UNKNOWN')})" if self.freebsd else ""
            self.p(f"sadb_ext{{ len={elen} type={etype}{ename} }}\n")
            if elen == 0:
                self.p("kdebug_sadb: invalid ext_len=0 was passed.\n")
                break
            if elen > tlen:  # both compare units with bytes, as the reference does
                self.p(
                    f"kdebug_sadb: ext_len too big ({elen} > {tlen}).\n"
                    if self.freebsd
                    else "kdebug_sadb: ext_len exceeds end of buffer.\n"
                )
                break
            printer = self.style.debug_exts.get(etype)
            if printer is None:
                self.p(
                    f"kdebug_sadb: invalid ext_type {etype}\n"
                    if self.freebsd
                    else f"kdebug_sadb: invalid ext_type {etype} was passed.\n"
                )
                break
            if printer:
                getattr(self, "ext_" + printer)(off, elen * 8, etype)
            tlen -= elen * 8
            off += elen * 8
        return "".join(self.out)

    # -- extension printers (same names as the C functions, minus kdebug_sadb_)

    def ext_sa(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p(f"sadb_sa{{ spi={r.be32(off + 4)} replay={r.u8(off + 8)} state={r.u8(off + 9)}\n")
        self.p(f"  auth={r.u8(off + 10)} encrypt={r.u8(off + 11)} flags=0x{r.u32(off + 12):08x} }}\n")

    def ext_lifetime(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p(f"sadb_lifetime{{ alloc={r.u32(off + 4)}, bytes={r.u64(off + 8) & _U32}\n")
        self.p(f"  addtime={r.u64(off + 16) & _U32}, usetime={r.u64(off + 24) & _U32} }}\n")

    def ext_address(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p(
            f"sadb_address{{ proto={r.u8(off + 4)} prefixlen={r.u8(off + 5)} "
            f"reserved=0x{r.u8(off + 6):02x}{r.u8(off + 7):02x} }}\n"
        )
        self.sockaddr(off + 8)

    def ext_key(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        bits = r.u16(off + 4)
        self.p(f"sadb_key{{ bits={bits} reserved={r.u16(off + 6)}\n  key=")
        if bits >> 3 > length - 8:
            self.p(f"kdebug_sadb_key: key length mismatch, bit:{bits >> 3} len:{length - 8}.\n")
        self.p(_key_hex(r.take(off + 8, bits >> 3)) + " }\n")

    def ext_ident(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        itype, ident = r.u16(off + 4), r.u64(off + 8)
        self.p(f"sadb_ident_{'src' if etype == 10 else 'dst'}{{ type={itype} id={ident}")
        body = r.take(off + 16, length - 16)
        if body:
            chars = []
            for b in body.split(b"\0", 1)[0]:
                chars.append(chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}")
            self.p('\n  str="' + "".join(chars) + '"')
        self.p(" }\n")

    def ext_prop(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p(f"sadb_prop{{ replay={r.u8(off + 4)}\n")
        for i in range((length - 8) // 72):
            c = off + 8 + 72 * i
            self.p(
                f"sadb_comb{{ auth={r.u8(c)} encrypt={r.u8(c + 1)} flags=0x{r.u16(c + 2):04x} "
                f"reserved=0x{r.u32(c + 12):08x}\n"
            )
            self.p(
                f"  auth_minbits={r.u16(c + 4)} auth_maxbits={r.u16(c + 6)} "
                f"encrypt_minbits={r.u16(c + 8)} encrypt_maxbits={r.u16(c + 10)}\n"
            )
            self.p(
                f"  soft_alloc={r.u32(c + 16)} hard_alloc={r.u32(c + 20)} "
                f"soft_bytes={r.u64(c + 24)} hard_bytes={r.u64(c + 32)}\n"
            )
            # The reference labels the four time fields with the names above again.
            self.p(
                f"  soft_alloc={r.u64(c + 40)} hard_alloc={r.u64(c + 48)} "
                f"soft_bytes={r.u64(c + 56)} hard_bytes={r.u64(c + 64)} }}\n"
            )
        self.p("}\n")

    def ext_supported(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p("sadb_sup{\n")
        for i in range((length - 8) // 8):
            a = off + 8 + 8 * i
            self.p(f"  {{ id={r.u8(a)} ivlen={r.u8(a + 1)} min={r.u16(a + 2)} max={r.u16(a + 4)} }}\n")
        self.p("}\n")

    def ext_policy(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        ptype, pdir, scope, pid, prio = r.u16(off + 4), r.u8(off + 6), r.u8(off + 7), r.u32(off + 8), r.u32(off + 12)
        if self.freebsd:
            label = "ifindex" if scope == 2 else "priority"
            self.p(f"sadb_x_policy{{ type={ptype} dir={pdir} id={pid:x} scope={scope} {label}={prio} }}\n")
        else:
            self.p(f"sadb_x_policy{{ type={ptype} dir={pdir} id={pid:x} priority={prio} }}\n")
        if ptype != 2:
            return
        fixed = 8 if self.freebsd else 16
        tlen = length - 16
        x = off + 16
        while tlen > 0:
            rlen, proto, mode, level = r.u16(x), r.u16(x + 2), r.u8(x + 4), r.u8(x + 5)
            reqid = r.u16(x + 6) if self.freebsd else r.u32(x + 8)
            self.p(f" {{ len={rlen} proto={proto} mode={mode} level={level} reqid={reqid}\n")
            if rlen > fixed:
                first = x + fixed
                self.sockaddr(first)
                self.sockaddr(first + self.sa_len(first))
            self.p(" }\n")
            if rlen == 0:
                self.p("kdebug_sadb_x_policy: wrong policy struct.\n")
                return
            if rlen > tlen:
                self.p(
                    f"kdebug_sadb_x_policy: invalid ipsec policy length ({rlen} > {tlen})\n"
                    if self.freebsd
                    else "invalid ipsec policy length\n"
                )
                return
            tlen -= rlen
            x += rlen

    def ext_sa2(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p(f"sadb_x_sa2{{ mode={r.u8(off + 4)} reqid={r.u32(off + 12)}\n")
        self.p(f"  reserved1={r.u8(off + 5)} reserved2={r.u16(off + 6)} sequence={r.u32(off + 8)} }}\n")

    def ext_sa_replay(self, off: int, length: int, etype: int) -> None:
        self.p(f"sadb_x_sa_replay{{ replay={self.raw.u32(off + 4)} }}\n")

    def ext_natt_type(self, off: int, length: int, etype: int) -> None:
        self.p(f"sadb_x_nat_t_type{{ type={self.raw.u8(off + 4)} }}\n")

    def ext_natt_port(self, off: int, length: int, etype: int) -> None:
        self.p(f"sadb_x_nat_t_port{{ port={self.raw.be16(off + 4)} }}\n")

    def ext_kmaddress(self, off: int, length: int, etype: int) -> None:
        r = self.raw
        self.p("sadb_x_kmaddress{ reserved=0x" + "".join(f"{r.u8(off + 4 + i):02x}" for i in range(4)) + " }\n")
        first = off + 8
        self.sockaddr(first)
        self.sockaddr(first + self.sa_len(first))

    # -- sockaddrs

    def family(self, off: int) -> int:
        return self.raw.u8(off + 1) if self.freebsd else self.raw.u16(off)

    def sa_len(self, off: int) -> int:
        """sa_len (BSD) or sysdep_sa_len() by family (Linux: 16 unless AF_INET6)."""
        if self.freebsd:
            return self.raw.u8(off)
        return 28 if self.family(off) == 10 else 16

    def sockaddr(self, off: int) -> None:
        r = self.raw
        family = self.family(off)
        inet, inet6 = (2, 28) if self.freebsd else (2, 10)
        if self.freebsd:
            # FreeBSD's userland kdebug_sockaddr: the address through inet_ntop,
            # link-local addresses with their numeric scope.
            if family == inet:
                addr = str(IPv4Address(r.take(off + 4, 4).ljust(4, b"\0")))
            elif family == inet6:
                ip6 = IPv6Address(r.take(off + 8, 16).ljust(16, b"\0"))
                addr = _ntop(ip6) + (f"%{r.u32(off + 24)}" if ip6.is_link_local else "")
            else:
                addr = "unknown"
            self.p(f"sockaddr{{ len={self.sa_len(off)} family={family} addr={addr} }}\n")
            return
        self.p(f"sockaddr{{ len={self.sa_len(off)} family={family}")
        if family == inet:
            self.p(f" port={r.be16(off + 2)}\n" + _key_hex(r.take(off + 4, 4)))
        elif family == inet6:
            self.p(
                f" port={r.be16(off + 2)}\n  flowinfo=0x{r.u32(off + 4):08x}, scope_id=0x{r.u32(off + 24):08x}\n"
                + _key_hex(r.take(off + 8, 16))
            )
        self.p("  }\n")


def kdebug(data: bytes, dialect: Dialect | str) -> str:
    """``kdebug_sadb()`` of one raw message: what ``-v`` prints for every message
    sent and received and ``-x`` for every message seen (FreeBSD names the message
    and extension types, ipsec-tools prints numbers only)."""
    return _Kdebug(bytes(data), Dialect(dialect)).run()


def debug_block(data: bytes, dialect: Dialect | str) -> str:
    """``-v``: :func:`kdebug` followed by the blank line setkey prints after it."""
    return kdebug(data, dialect) + "\n"


def promisc_block(
    data: bytes,
    dialect: Dialect | str,
    *,
    sec: int,
    usec: int,
    raw_time: bool = False,
    utcoffset: int = 0,
    with_hex: bool = False,
) -> str:
    """What ``-x`` prints for one received datagram: the time stamp line, with
    ``-h``/``-H`` the hex dump of the whole datagram, then the kdebug dump of the
    message and a blank line.  An X_PROMISC message longer than its header wraps
    the message it reports (FreeBSD); a bare 16-byte X_PROMISC (the echo of the
    request) prints the time stamp only."""
    out = [timestamp(sec, usec, raw=raw_time, utcoffset=utcoffset)]
    if with_hex:
        out.append(hexdump(data))
    inner: bytes | None = bytes(data)
    if len(data) > HEADER.size and data[1] == MsgType.X_PROMISC:
        # a wrapped copy prints the message inside; a wrapper that does not frame
        # a whole message prints as it arrived
        inner = promisc_unwrap(data) or inner
    elif len(data) >= 2 and data[1] == MsgType.X_PROMISC:
        inner = None
    if inner is not None:
        out.append(debug_block(inner, dialect))
    return "".join(out)
