"""Known-answer vectors for the PF_KEY wire codec: one table, used in both directions.

Every hex string below was written by hand from the layouts in
``/work/shared/reference/pfkey-protocol.md`` §1.2 (base header) and §4 (extensions),
or copied from the bytes a real Linux-built ipsec-tools ``setkey`` sent
(``/work/shared/reference/real-clients.md`` §3).  None was produced by running the
encoder.  Each line of hex is one field or field group, with a comment naming it.

Conventions used throughout (reference §0, §4.4):

* this machine is little-endian, so host-order fields are written least significant
  byte first: ``sadb_msg_len`` 20 is ``1400``, a u32 0x80000000 is ``00000080``;
* the SPI, the ports inside sockaddrs, the sockaddr_in6 flowinfo and the NAT-T port
  are in network order: SPI 0x1000 is ``00001000``, port 4500 is ``1194``;
* FreeBSD sockaddrs start ``u8 sa_len, u8 family`` (``1002`` for AF_INET,
  ``1c1c`` for AF_INET6 = 28, length 28); Linux sockaddrs start with a host-order
  u16 family (``0200`` for AF_INET, ``0a00`` for AF_INET6 = 10);
* every length is written by hand: ``sadb_msg_len`` and ``sadb_ext_len`` in 8-byte
  units, ``sadb_x_ipsecrequest_len`` in bytes.

``value`` is the typed :class:`~pfkeyd.wire.Message` the bytes mean.  Values are
canonical: algorithm ids, modes and directions are the numbers of
:mod:`pfkeyd.wire.constants`, so Linux wire 15 (AES-CCM-12) is
``EncAlg.X_AES_CCM_ICV12`` and FreeBSD wire 15 is ``EncAlg.X_CHACHA20POLY1305``.

``kind`` says how a vector is decoded:

* ``EXT``: one or a few extensions wrapped in a minimal message (usually a FLUSH,
  which both kernels accept with any extensions); decoded as a request;
* ``REQUEST``: a whole message a client sends; decoded with ``request=True``;
* ``CAPTURE``: a request whose bytes come from real-clients.md §3; decoded with
  ``request=True``;
* ``REPLY``: a message only the kernel sends (replies, dumps, ACQUIRE, EXPIRE, error
  replies); decoded with ``request=False``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from pfkeyd.wire import (
    Address,
    Alg,
    AuthAlg,
    Comb,
    CompAlg,
    Direction,
    EncAlg,
    Extension,
    ExtType,
    Filter,
    Ident,
    IdentType,
    IpsecRequest,
    Key,
    KmAddress,
    KmPrivate,
    Level,
    Lifetime,
    Message,
    Mode,
    MsgType,
    NatTFrag,
    NatTPort,
    NatTTypeExt,
    Policy,
    PolicyScope,
    PolicyType,
    Prop,
    Sa,
    Sa2,
    SaFlag,
    SaReplay,
    SaState,
    SaType,
    SecCtx,
    Sens,
    SockAddr,
    SpiRange,
    Supported,
    UnknownExt,
)
from pfkeyd.wire.constants import UNKNOWN, IpProto, NatTType

__all__ = ["EXT", "REQUEST", "CAPTURE", "REPLY", "KINDS", "Vector", "VECTORS", "hx"]

EXT = "ext"
REQUEST = "request"
CAPTURE = "capture"
REPLY = "reply"
KINDS = frozenset({EXT, REQUEST, CAPTURE, REPLY})

FREEBSD = "freebsd"
LINUX = "linux"


def hx(*parts: str) -> str:
    """Join hand-written hex fragments, dropping the spaces that group fields."""
    return "".join("".join(parts).split()).lower()


@dataclass(frozen=True)
class Vector:
    name: str
    dialect: str
    hex: str
    value: Message
    kind: str

    @property
    def data(self) -> bytes:
        return bytes.fromhex(self.hex)

    @property
    def request(self) -> bool:
        """Decode as a request (all of the kernel's request checks apply)."""
        return self.kind != REPLY

    @property
    def whole_message(self) -> bool:
        return self.kind != EXT


# ============================================================ value helpers


def ip4(text: str, port: int = 0) -> SockAddr:
    return SockAddr(IPv4Address(text), port)


def ip6(text: str, port: int = 0, flowinfo: int = 0, scope_id: int = 0) -> SockAddr:
    return SockAddr(IPv6Address(text), port, flowinfo, scope_id)


def src(sa: SockAddr, prefixlen: int, proto: int = IpProto.ANY) -> Address:
    return Address(ExtType.ADDRESS_SRC, sa, prefixlen, proto)


def dst(sa: SockAddr, prefixlen: int, proto: int = IpProto.ANY) -> Address:
    return Address(ExtType.ADDRESS_DST, sa, prefixlen, proto)


def msg(
    mtype: int, satype: int = 0, *exts: Extension, seq: int = 0, pid: int = 0, errno: int = 0, reserved: int = 0
) -> Message:
    return Message(int(mtype), int(satype), seq, pid, errno, reserved, tuple(exts))


def current(alloc: int = 0, nbytes: int = 0, add: int = 0, use: int = 0) -> Lifetime:
    return Lifetime(ExtType.LIFETIME_CURRENT, alloc, nbytes, add, use)


def hard(alloc: int = 0, nbytes: int = 0, add: int = 0, use: int = 0) -> Lifetime:
    return Lifetime(ExtType.LIFETIME_HARD, alloc, nbytes, add, use)


def soft(alloc: int = 0, nbytes: int = 0, add: int = 0, use: int = 0) -> Lifetime:
    return Lifetime(ExtType.LIFETIME_SOFT, alloc, nbytes, add, use)


# ============================================================ hand-written fragments
# Sockaddrs: 16 bytes (AF_INET) or 28 bytes (AF_INET6), unpadded.

BSD_IN_10_0_0_1 = hx(
    "10 02",  # sin_len 16, sin_family AF_INET
    "0000",  # port 0
    "0a000001",  # 10.0.0.1
    "0000000000000000",  # sin_zero
)
BSD_IN_10_0_0_2 = hx("10 02", "0000", "0a000002", "0000000000000000")  # 10.0.0.2, port 0
BSD_IN_192_0_2_1 = hx("10 02", "0000", "c0000201", "0000000000000000")  # 192.0.2.1
BSD_IN_198_51_100_1 = hx("10 02", "0000", "c6336401", "0000000000000000")  # 198.51.100.1
LNX_IN_10_0_0_1 = hx(
    "0200",  # sa_family AF_INET, u16 host order, no sa_len
    "0000",  # port 0
    "0a000001",  # 10.0.0.1
    "0000000000000000",  # sin_zero
)
LNX_IN_10_0_0_2 = hx("0200", "0000", "0a000002", "0000000000000000")  # 10.0.0.2
LNX_IN_192_0_2_1 = hx("0200", "0000", "c0000201", "0000000000000000")  # 192.0.2.1
LNX_IN_198_51_100_1 = hx("0200", "0000", "c6336401", "0000000000000000")  # 198.51.100.1
LNX_IN_203_0_113_5 = hx("0200", "0000", "cb007105", "0000000000000000")  # 203.0.113.5

BSD_IN6_DB8_1 = hx(
    "1c 1c",  # sin6_len 28, sin6_family AF_INET6 (28 on FreeBSD)
    "0000",  # port 0
    "00000000",  # flowinfo
    "20010db8 00000000 00000000 00000001",  # 2001:db8::1
    "00000000",  # scope id
)
BSD_IN6_DB8_2 = hx("1c 1c", "0000", "00000000", "20010db8 00000000 00000000 00000002", "00000000")  # 2001:db8::2
LNX_IN6_DB8_1 = hx(
    "0a00",  # sa_family AF_INET6 (10 on Linux), u16 host order
    "0000",  # port 0
    "00000000",  # flowinfo
    "20010db8 00000000 00000000 00000001",  # 2001:db8::1
    "00000000",  # scope id
)
LNX_IN6_DB8_2 = hx("0a00", "0000", "00000000", "20010db8 00000000 00000000 00000002", "00000000")  # 2001:db8::2

# Address extensions as SA messages carry them: proto 255 (any), full prefix.
BSD_SRC_10_0_0_1 = hx(
    "0300 0500",  # sadb_address: len 3 units (24 bytes), type 5 ADDRESS_SRC
    "ff 20 0000",  # proto 255 (any), prefixlen 32, reserved
    BSD_IN_10_0_0_1,
)
BSD_DST_10_0_0_2 = hx("0300 0600", "ff 20 0000", BSD_IN_10_0_0_2)  # len 3, ADDRESS_DST; any, /32; 10.0.0.2
LNX_SRC_10_0_0_1 = hx("0300 0500", "ff 20 0000", LNX_IN_10_0_0_1)  # len 3, ADDRESS_SRC; any, /32; 10.0.0.1
LNX_DST_10_0_0_2 = hx("0300 0600", "ff 20 0000", LNX_IN_10_0_0_2)  # len 3, ADDRESS_DST; any, /32; 10.0.0.2

V_SRC_10_0_0_1 = src(ip4("10.0.0.1"), 32)
V_DST_10_0_0_2 = dst(ip4("10.0.0.2"), 32)

# Key material.
K16 = "00112233445566778899aabbccddeeff"  # the AES-128 key of real-clients.md §3.2
# The 64-hex-digit HMAC-SHA256 key of §3.2 is printed there as "0x0011…eeff(64 hex)";
# it is taken to be the 16-byte pattern written twice.
K32 = K16 + K16
K32_B = "0f1e2d3c4b5a69788796a5b4c3d2e1f0f0e1d2c3b4a5968778695a4b3c2d1e0f"
K20 = "0102030405060708090a0b0c0d0e0f1011121314"
K20_B = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3"
K36 = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fdeadbeef"  # AES-256 + salt

KEY_ENC_K16 = hx(
    "0300 0900",  # sadb_key: len 3 units (24 bytes), type 9 KEY_ENCRYPT
    "8000 0000",  # bits 128, reserved
    K16,  # 16 key bytes, no padding needed
)
KEY_AUTH_K32 = hx("0500 0800", "0001 0000", K32)  # len 5 (40 bytes), KEY_AUTH; bits 256; 32 key bytes
KEY_AUTH_K32_B = hx("0500 0800", "0001 0000", K32_B)  # len 5, KEY_AUTH; bits 256; 32 key bytes
KEY_AUTH_K20 = hx("0400 0800", "a000 0000", K20, "00000000")  # len 4 (32), KEY_AUTH; bits 160; 20 bytes + 4 pad
KEY_ENC_K20_B = hx("0400 0900", "a000 0000", K20_B, "00000000")  # len 4, KEY_ENCRYPT; bits 160; 20 bytes + pad
KEY_ENC_K36 = hx("0600 0900", "2001 0000", K36, "00000000")  # len 6 (48), KEY_ENCRYPT; bits 288; 36 bytes + pad

V_KEY_ENC_K16 = Key(ExtType.KEY_ENCRYPT, bytes.fromhex(K16))
V_KEY_AUTH_K32 = Key(ExtType.KEY_AUTH, bytes.fromhex(K32))
V_KEY_AUTH_K32_B = Key(ExtType.KEY_AUTH, bytes.fromhex(K32_B))
V_KEY_AUTH_K20 = Key(ExtType.KEY_AUTH, bytes.fromhex(K20))
V_KEY_ENC_K20_B = Key(ExtType.KEY_ENCRYPT, bytes.fromhex(K20_B))
V_KEY_ENC_K36 = Key(ExtType.KEY_ENCRYPT, bytes.fromhex(K36))

# Lifetimes used by several messages.
HARD_ADD_1800 = hx(
    "0400 0300",  # sadb_lifetime: len 4 units (32 bytes), type 3 LIFETIME_HARD
    "00000000",  # allocations 0
    "0000000000000000",  # bytes 0
    "0807000000000000",  # addtime 1800 s
    "0000000000000000",  # usetime 0
)
SOFT_ADD_1440 = hx(
    "0400 0400", "00000000", "0000000000000000", "a005000000000000", "0000000000000000"
)  # SOFT, add 1440
CURRENT_AT_1700000000 = hx(
    "0400 0200",  # len 4, type 2 LIFETIME_CURRENT
    "00000000",  # allocations 0
    "0000000000000000",  # bytes 0
    "00f1536500000000",  # addtime 1700000000 (0x6553f100)
    "0000000000000000",  # usetime 0 (never used)
)
ZERO_HARD = hx("0400 0300", "00000000", "0000000000000000", "0000000000000000", "0000000000000000")  # HARD, no limit
ZERO_SOFT = hx("0400 0400", "00000000", "0000000000000000", "0000000000000000", "0000000000000000")  # SOFT, no limit

# One ipsecrequest asking for ESP transport at level REQUIRE, reqid 0.
BSD_REQ_ESP_TRANSPORT = hx(
    "0800 3200",  # sadb_x_ipsecrequest: len 8 BYTES, proto 50 (ESP)
    "01 02 0000",  # mode 1 transport, level 2 require, reqid 0 (16 bits)
)
LNX_REQ_ESP_TRANSPORT = hx(
    "1000 3200",  # len 16 BYTES, proto 50 (ESP)
    "01 02 0000",  # mode 1 transport, level 2 require, reserved1
    "00000000",  # reqid 0 (32 bits)
    "00000000",  # reserved2
)
V_REQ_ESP_TRANSPORT = IpsecRequest(IpProto.ESP, Mode.TRANSPORT, Level.REQUIRE)


def flush_header(satype: str, units: str) -> str:
    """The hand-written FLUSH base header the EXT vectors wrap their extensions in."""
    return hx(
        "02 09 00",  # version 2, type 9 FLUSH, errno 0
        satype,  # satype
        units,  # sadb_msg_len (units, written by the caller)
        "0000",  # reserved
        "00000000 00000000",  # seq 0, pid 0
    )


# ============================================================ the table

VECTORS: list[Vector] = []


def _add(name: str, dialect: str, kind: str, hexstr: str, value: Message) -> None:
    VECTORS.append(Vector(f"{dialect}/{name}", dialect, hexstr, value, kind))


# ------------------------------------------------------------ §4.2 sadb_sa

_add(
    "ext/sa",
    FREEBSD,
    EXT,
    hx(
        flush_header("03", "0400"),  # FLUSH, satype ESP, len 4 units
        "0200 0100",  # sadb_sa: len 2, type 1 SA
        "12345678",  # spi 0x12345678 (network order)
        "20 01 03 0c",  # replay 32 (bytes, KAME), state MATURE, auth 3 SHA1-HMAC, encrypt 12 AES-CBC
        "40040000",  # flags 0x440: X_EXT_CYCSEQ | SADB_X_SAFLAGS_ESN
    ),
    msg(
        MsgType.FLUSH,
        SaType.ESP,
        Sa(0x12345678, 32, SaState.MATURE, AuthAlg.SHA1HMAC, EncAlg.X_AESCBC, SaFlag.X_EXT_CYCSEQ | SaFlag.X_ESN),
    ),
)

_add(
    "ext/sa-chacha20-poly1305",
    FREEBSD,
    EXT,
    hx(
        flush_header("03", "0400"),
        "0200 0100",  # len 2, SA
        "0000abcd",  # spi 0xabcd
        "00 01 0e 0f",  # replay 0, MATURE, auth 14 X_AALG_CHACHA20POLY1305, encrypt 15 = ChaCha on FreeBSD
        "00000000",  # flags
    ),
    msg(
        MsgType.FLUSH, SaType.ESP, Sa(0xABCD, 0, SaState.MATURE, AuthAlg.X_CHACHA20POLY1305, EncAlg.X_CHACHA20POLY1305)
    ),
)

_add(
    "ext/sa-unknown-algorithms",
    FREEBSD,
    EXT,
    hx(
        flush_header("03", "0400"),
        "0200 0100",  # len 2, SA
        "00000101",  # spi 0x101
        "00 00 0a 0e",  # auth 10 and encrypt 14: numbers FreeBSD does not define
        "00000000",  # flags
    ),
    msg(MsgType.FLUSH, SaType.ESP, Sa(0x101, auth=UNKNOWN | 10, encrypt=UNKNOWN | 14)),
)

_add(
    "ext/sa-ipcomp",
    FREEBSD,
    EXT,
    hx(
        flush_header("09", "0400"),  # FLUSH, satype 9 X_IPCOMP
        "0200 0100",  # len 2, SA
        "00001234",  # CPI 0x1234 in the SPI field
        "00 01 00 02",  # replay 0, MATURE, auth 0, encrypt = compression 2 DEFLATE (raw, not an EALG)
        "80000000",  # flags 0x80 X_EXT_RAWCPI
    ),
    msg(
        MsgType.FLUSH,
        SaType.X_IPCOMP,
        Sa(0x1234, 0, SaState.MATURE, AuthAlg.NONE, CompAlg.DEFLATE, SaFlag.X_EXT_RAWCPI),
    ),
)

_add(
    "ext/sa",
    LINUX,
    EXT,
    hx(
        flush_header("03", "0400"),
        "0200 0100",  # len 2, SA
        "c0ffee01",  # spi 0xc0ffee01
        "04 02 fb 0d",  # replay 4 (packets, Linux), state DYING, auth 251 X_AALG_NULL, encrypt 13 AES-CTR
        "00000020",  # flags 0x20000000 SADB_SAFLAGS_NOPMTUDISC
    ),
    msg(
        MsgType.FLUSH,
        SaType.ESP,
        Sa(0xC0FFEE01, 4, SaState.DYING, AuthAlg.X_NULL, EncAlg.X_AESCTR, SaFlag.LINUX_NOPMTUDISC),
    ),
)

_add(
    "ext/sa-aes-ccm-12",
    LINUX,
    EXT,
    hx(
        flush_header("03", "0400"),
        "0200 0100",  # len 2, SA
        "0000abcd",  # spi 0xabcd
        "20 01 00 0f",  # replay 32, MATURE, auth 0, encrypt 15 = AES-CCM-ICV12 on Linux
        "00000080",  # flags 0x80000000 SADB_SAFLAGS_NOECN
    ),
    msg(
        MsgType.FLUSH,
        SaType.ESP,
        Sa(0xABCD, 32, SaState.MATURE, AuthAlg.NONE, EncAlg.X_AES_CCM_ICV12, SaFlag.LINUX_NOECN),
    ),
)

_add(
    "ext/sa-unknown-and-linux-only-algorithms",
    LINUX,
    EXT,
    hx(
        flush_header("03", "0400"),
        "0200 0100",  # len 2, SA
        "00000102",  # spi 0x102
        "00 00 0b 0e",  # auth 11 (FreeBSD's AES128-GMAC, undefined on Linux), encrypt 14 AES-CCM-ICV8
        "00000000",  # flags
    ),
    msg(MsgType.FLUSH, SaType.ESP, Sa(0x102, auth=UNKNOWN | 11, encrypt=EncAlg.X_AES_CCM_ICV8)),
)

_add(
    "ext/sa-ipcomp-lzjh",
    LINUX,
    EXT,
    hx(
        flush_header("09", "0400"),  # FLUSH, satype X_IPCOMP
        "0200 0100",  # len 2, SA
        "00004321",  # CPI 0x4321
        "00 01 00 04",  # MATURE, auth 0, compression 4 LZJH (raw; as an EALG 4 would be undefined)
        "00000000",  # flags
    ),
    msg(MsgType.FLUSH, SaType.X_IPCOMP, Sa(0x4321, 0, SaState.MATURE, 0, CompAlg.LZJH)),
)

# ------------------------------------------------------------ §4.3 sadb_lifetime

_add(
    "ext/lifetimes",
    FREEBSD,
    EXT,
    hx(
        flush_header("00", "0e00"),  # FLUSH, satype 0, len 2 + 3*4 = 14 units
        "0400 0200",  # len 4, LIFETIME_CURRENT
        "05000000",  # allocations 5
        "0000000001000000",  # bytes 2^32
        "00f1536500000000",  # addtime 1700000000
        "64f1536500000000",  # usetime 1700000100
        "0400 0300",  # len 4, LIFETIME_HARD
        "00000000",  # allocations 0
        "0000000000000000",  # bytes 0
        "100e000000000000",  # addtime 3600
        "0807000000000000",  # usetime 1800
        "0400 0400",  # len 4, LIFETIME_SOFT
        "00000000",  # allocations 0
        "40420f0000000000",  # bytes 1000000
        "400b000000000000",  # addtime 2880
        "0000000000000000",  # usetime 0
    ),
    msg(
        MsgType.FLUSH, 0, current(5, 1 << 32, 1700000000, 1700000100), hard(0, 0, 3600, 1800), soft(0, 1000000, 2880, 0)
    ),
)

_add(
    "ext/lifetimes",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0e00"),
        "0400 0400",  # len 4, LIFETIME_SOFT (extensions may come in any order)
        "50000000",  # allocations 80
        "0000000000000000",  # bytes 0
        "4019010000000000",  # addtime 72000
        "7062000000000000",  # usetime 25200
        "0400 0300",  # len 4, LIFETIME_HARD
        "64000000",  # allocations 100
        "0000000000000000",  # bytes 0
        "8051010000000000",  # addtime 86400
        "8070000000000000",  # usetime 28800
        "0400 0200",  # len 4, LIFETIME_CURRENT
        "10000000",  # allocations 16
        "3412000000000000",  # bytes 0x1234
        "00f1536500000000",  # addtime 1700000000
        "0000000000000000",  # usetime 0
    ),
    msg(MsgType.FLUSH, 0, soft(80, 0, 72000, 25200), hard(100, 0, 86400, 28800), current(16, 0x1234, 1700000000, 0)),
)

# ------------------------------------------------------------ §4.4 sadb_address

_add(
    "ext/addresses-ipv4",
    FREEBSD,
    EXT,
    hx(
        flush_header("00", "0b00"),  # len 2 + 3*3 = 11 units
        "0300 0500",  # len 3, ADDRESS_SRC
        "06 18 0000",  # proto 6 (TCP), prefixlen 24, reserved
        "10 02 01bb c0a80100 0000000000000000",  # sin_len 16, AF_INET, port 443, 192.168.1.0, zero
        "0300 0600",  # len 3, ADDRESS_DST
        "06 08 0000",  # proto 6 (same as SRC, as FreeBSD requires), prefixlen 8
        "10 02 0000 0a000000 0000000000000000",  # AF_INET, port 0, 10.0.0.0
        "0300 0700",  # len 3, ADDRESS_PROXY
        "ff 20 0000",  # proto any, prefixlen 32
        "10 02 0000 c0000201 0000000000000000",  # AF_INET, port 0, 192.0.2.1
    ),
    msg(
        MsgType.FLUSH,
        0,
        src(ip4("192.168.1.0", 443), 24, IpProto.TCP),
        dst(ip4("10.0.0.0"), 8, IpProto.TCP),
        Address(ExtType.ADDRESS_PROXY, ip4("192.0.2.1"), 32),
    ),
)

_add(
    "ext/addresses-ipv4",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0b00"),
        "0300 0500",  # len 3, ADDRESS_SRC
        "06 18 0000",  # proto TCP, /24
        "0200 01bb c0a80100 0000000000000000",  # AF_INET (u16), port 443, 192.168.1.0, zero
        "0300 0600",  # len 3, ADDRESS_DST
        "06 08 0000",  # proto TCP, /8
        "0200 0000 0a000000 0000000000000000",  # AF_INET, port 0, 10.0.0.0
        "0300 0700",  # len 3, ADDRESS_PROXY
        "ff 20 0000",  # any, /32
        "0200 0000 c0000201 0000000000000000",  # AF_INET, 192.0.2.1
    ),
    msg(
        MsgType.FLUSH,
        0,
        src(ip4("192.168.1.0", 443), 24, IpProto.TCP),
        dst(ip4("10.0.0.0"), 8, IpProto.TCP),
        Address(ExtType.ADDRESS_PROXY, ip4("192.0.2.1"), 32),
    ),
)

_add(
    "ext/addresses-ipv6",
    FREEBSD,
    EXT,
    hx(
        flush_header("00", "1100"),  # len 2 + 3*5 = 17 units
        "0500 0500",  # len 5 (40 bytes = 8 + 28 + 4 pad), ADDRESS_SRC
        "11 20 0000",  # proto 17 (UDP), prefixlen 32
        "1c 1c 01f4",  # sin6_len 28, AF_INET6 28, port 500
        "00000000",  # flowinfo
        "20010db8 00000000 00000000 00000000",  # 2001:db8::
        "00000000",  # scope id 0
        "00000000",  # padding to 8
        "0500 0600",  # len 5, ADDRESS_DST
        "11 80 0000",  # proto UDP, prefixlen 128
        "1c 1c 1194",  # sin6_len 28, AF_INET6, port 4500
        "00000000",  # flowinfo
        "fe800000 00000000 00000000 00000001",  # fe80::1
        "05000000",  # scope id 5 (host order)
        "00000000",  # padding
        "0500 0700",  # len 5, ADDRESS_PROXY
        "ff 80 0000",  # any, /128
        "1c 1c 0000",  # sin6_len, AF_INET6, port 0
        "000abcde",  # flowinfo 0xabcde (network order)
        "20010db8 00000000 00000000 00000001",  # 2001:db8::1
        "00000000",  # scope id
        "00000000",  # padding
    ),
    msg(
        MsgType.FLUSH,
        0,
        src(ip6("2001:db8::", 500), 32, IpProto.UDP),
        dst(ip6("fe80::1", 4500, scope_id=5), 128, IpProto.UDP),
        Address(ExtType.ADDRESS_PROXY, ip6("2001:db8::1", flowinfo=0xABCDE), 128),
    ),
)

_add(
    "ext/addresses-ipv6",
    LINUX,
    EXT,
    hx(
        flush_header("00", "1100"),
        "0500 0500",  # len 5, ADDRESS_SRC
        "11 20 0000",  # UDP, /32
        "0a00 01f4",  # AF_INET6 10 (u16), port 500
        "00000000",  # flowinfo
        "20010db8 00000000 00000000 00000000",  # 2001:db8::
        "00000000",  # scope id
        "00000000",  # padding
        "0500 0600",  # len 5, ADDRESS_DST
        "11 80 0000",  # UDP, /128
        "0a00 1194",  # AF_INET6, port 4500
        "00000000",  # flowinfo
        "fe800000 00000000 00000000 00000001",  # fe80::1
        "05000000",  # scope id 5
        "00000000",  # padding
        "0500 0700",  # len 5, ADDRESS_PROXY
        "ff 80 0000",  # any, /128
        "0a00 0000",  # AF_INET6, port 0
        "000abcde",  # flowinfo 0xabcde
        "20010db8 00000000 00000000 00000001",  # 2001:db8::1
        "00000000",  # scope id
        "00000000",  # padding
    ),
    msg(
        MsgType.FLUSH,
        0,
        src(ip6("2001:db8::", 500), 32, IpProto.UDP),
        dst(ip6("fe80::1", 4500, scope_id=5), 128, IpProto.UDP),
        Address(ExtType.ADDRESS_PROXY, ip6("2001:db8::1", flowinfo=0xABCDE), 128),
    ),
)

# ------------------------------------------------------------ §4.5 sadb_key

_add(
    "ext/keys",
    FREEBSD,
    EXT,
    hx(
        flush_header("03", "0c00"),  # len 2 + 4 + 6 = 12 units
        KEY_AUTH_K20,  # len 4, KEY_AUTH, 160 bits, 20 bytes + 4 pad
        KEY_ENC_K36,  # len 6, KEY_ENCRYPT, 288 bits (AES-256 + 4-byte salt), 36 bytes + 4 pad
    ),
    msg(MsgType.FLUSH, SaType.ESP, V_KEY_AUTH_K20, V_KEY_ENC_K36),
)

_add(
    "ext/keys",
    LINUX,
    EXT,
    hx(
        flush_header("03", "0800"),  # len 2 + 5 + 1 = 8 units
        KEY_AUTH_K32,  # len 5, KEY_AUTH, 256 bits
        "0100 0900",  # len 1 (header only), KEY_ENCRYPT
        "0000 0000",  # bits 0 (the empty key of a NULL cipher), reserved
    ),
    msg(MsgType.FLUSH, SaType.ESP, V_KEY_AUTH_K32, Key(ExtType.KEY_ENCRYPT, b"")),
)

_add(
    "ext/key-odd-bits",
    LINUX,
    EXT,
    hx(
        flush_header("03", "0500"),  # len 2 + 3
        "0300 0800",  # len 3 (24 bytes), KEY_AUTH
        "6400 0000",  # bits 100: ceil(100/8) = 13 key bytes
        "f0f1f2f3f4f5f6f7f8f9fafbf0",  # 13 key bytes
        "000000",  # padding to 8
    ),
    msg(MsgType.FLUSH, SaType.ESP, Key(ExtType.KEY_AUTH, bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbf0"), 100)),
)

# ------------------------------------------------------------ §4.6 sadb_ident

_add(
    "ext/identities",
    FREEBSD,
    EXT,
    hx(
        flush_header("00", "0b00"),  # len 2 + 4 + 5 = 11
        "0400 0a00",  # len 4 (32 bytes), IDENTITY_SRC
        "0100 0000",  # type 1 PREFIX, reserved
        "0700000000000000",  # id 7 (u64)
        "3139322e302e322e302f3234",  # "192.0.2.0/24" (12 bytes)
        "00000000",  # NUL terminator + padding
        "0500 0b00",  # len 5 (40 bytes), IDENTITY_DST
        "0200 0000",  # type 2 FQDN
        "0000000000000000",  # id 0
        "686f73742e6578616d706c652e636f6d",  # "host.example.com" (16 bytes)
        "0000000000000000",  # NUL terminator + padding: a 16-byte string needs a 3rd unit
    ),
    msg(
        MsgType.FLUSH,
        0,
        Ident(ExtType.IDENTITY_SRC, IdentType.PREFIX, b"192.0.2.0/24", 7),
        Ident(ExtType.IDENTITY_DST, IdentType.FQDN, b"host.example.com"),
    ),
)

_add(
    "ext/identities",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0b00"),  # len 2 + 5 + 4 = 11
        "0500 0a00",  # len 5, IDENTITY_SRC
        "0300 0000",  # type 3 USERFQDN
        "2a00000000000000",  # id 42
        "75736572406578616d706c652e6f7267",  # "user@example.org" (16 bytes)
        "0000000000000000",  # NUL + padding
        "0400 0b00",  # len 4, IDENTITY_DST
        "0200 0000",  # type 2 FQDN
        "0000000000000000",  # id 0
        "76706e2e6578616d706c65",  # "vpn.example" (11 bytes)
        "0000000000",  # NUL + padding
    ),
    msg(
        MsgType.FLUSH,
        0,
        Ident(ExtType.IDENTITY_SRC, IdentType.USERFQDN, b"user@example.org", 42),
        Ident(ExtType.IDENTITY_DST, IdentType.FQDN, b"vpn.example"),
    ),
)

_add(
    "ext/identities-x-addr",
    FREEBSD,
    EXT,
    hx(
        flush_header("00", "0c00"),  # len 2 + 4 + 6 = 12
        "0400 0a00",  # len 4 (16 + sa_len 16), IDENTITY_SRC
        "0400 0000",  # type 4 SADB_X_IDENTTYPE_ADDR: a sockaddr follows
        "0000000000000000",  # id 0
        BSD_IN_10_0_0_1,  # sockaddr_in 10.0.0.1, sin_zero included
        "0600 0b00",  # len 6 (16 + ALIGN8(28)), IDENTITY_DST
        "0400 0000",  # type 4 X_ADDR
        "0000000000000000",  # id 0
        BSD_IN6_DB8_2,  # sockaddr_in6 2001:db8::2
        "00000000",  # padding
    ),
    msg(
        MsgType.FLUSH,
        0,
        Ident(ExtType.IDENTITY_SRC, IdentType.X_ADDR, bytes.fromhex(BSD_IN_10_0_0_1)),
        Ident(ExtType.IDENTITY_DST, IdentType.X_ADDR, bytes.fromhex(BSD_IN6_DB8_2)),
    ),
)

# ------------------------------------------------------------ §4.7 sadb_sens

_add(
    "ext/sensitivity",
    FREEBSD,
    EXT,
    hx(
        flush_header("00", "0600"),  # len 2 + 4
        "0400 0c00",  # len 4 (16 + 2 bitmap words), SENSITIVITY
        "01000000",  # dpd 1
        "03 01 02 01",  # sens_level 3, sens_len 1 word, integ_level 2, integ_len 1 word
        "00000000",  # reserved
        "0100000000000080",  # sensitivity bitmap 0x8000000000000001 (u64, host order)
        "4000000000000080",  # integrity bitmap 0x8000000000000040
    ),
    msg(MsgType.FLUSH, 0, Sens(1, 3, 1, 2, 1, bytes.fromhex("01000000000000804000000000000080"))),
)

_add(
    "ext/sensitivity",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0400"),  # len 2 + 2
        "0200 0c00",  # len 2 (header only), SENSITIVITY
        "02000000",  # dpd 2
        "00 00 00 00",  # levels 0, no bitmaps
        "00000000",  # reserved
    ),
    msg(MsgType.FLUSH, 0, Sens(2)),
)

# ------------------------------------------------------------ §4.8 sadb_prop + sadb_comb

COMB_FREEBSD_AESCBC = hx(
    "00 0c 0000",  # auth 0, encrypt 12 AES-CBC, flags 0
    "0000 0000",  # auth_minbits 0, auth_maxbits 0
    "0001 0001",  # encrypt_minbits 256 (esp_keymin), encrypt_maxbits 256
    "00000000",  # reserved
    "01000000 01000000",  # soft_allocations 1, hard_allocations 1
    "0000000000000000 0000000000000000",  # soft_bytes 0, hard_bytes 0
    "0000000000000000",  # soft_addtime 0 (FreeBSD's bug, §7.4)
    "8051010000000000",  # hard_addtime 86400
    "8070000000000000",  # soft_usetime 28800
    "0000000000000000",  # hard_usetime 0
)
V_COMB_FREEBSD_AESCBC = Comb(0, EncAlg.X_AESCBC, 0, 0, 0, 256, 256, 1, 1, 0, 0, 0, 86400, 28800, 0)

_add(
    "ext/proposal",
    FREEBSD,
    EXT,
    hx(
        flush_header("03", "1500"),  # len 2 + 19 = 21
        "1300 0d00",  # len 19 units (8 + 2*72 bytes), PROPOSAL
        "20 000000",  # replay 32, reserved
        COMB_FREEBSD_AESCBC,  # comb 1 (72 bytes)
        "05 14 0000",  # comb 2: auth 5 SHA2-256, encrypt 20 AES-GCM-16, flags 0
        "0001 0001",  # auth bits 256..256
        "8000 0001",  # encrypt bits 128..256
        "00000000",  # reserved
        "00000000 00000000",  # allocations soft 0, hard 0
        "40420f0000000000",  # soft_bytes 1000000
        "80841e0000000000",  # hard_bytes 2000000
        "4019010000000000",  # soft_addtime 72000
        "8051010000000000",  # hard_addtime 86400
        "7062000000000000",  # soft_usetime 25200
        "8070000000000000",  # hard_usetime 28800
    ),
    msg(
        MsgType.FLUSH,
        SaType.ESP,
        Prop(
            32,
            (
                V_COMB_FREEBSD_AESCBC,
                Comb(
                    AuthAlg.X_SHA2_256,
                    EncAlg.X_AESGCM16,
                    0,
                    256,
                    256,
                    128,
                    256,
                    0,
                    0,
                    1000000,
                    2000000,
                    72000,
                    86400,
                    25200,
                    28800,
                ),
            ),
        ),
    ),
)

COMB_LINUX_SHA256_AESCBC = hx(
    "05 0c 0000",  # auth 5 SHA2-256, encrypt 12 AES-CBC, flags 0
    "0001 0001",  # auth bits 256..256
    "8000 0001",  # encrypt bits 128..256
    "00000000",  # reserved
    "00000000 00000000",  # allocations 0 / 0
    "0000000000000000 0000000000000000",  # bytes 0 / 0
    "4019010000000000",  # soft_addtime 72000
    "8051010000000000",  # hard_addtime 86400
    "7062000000000000",  # soft_usetime 25200
    "8070000000000000",  # hard_usetime 28800
)
V_COMB_LINUX_SHA256_AESCBC = Comb(
    AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, 0, 256, 256, 128, 256, 0, 0, 0, 0, 72000, 86400, 25200, 28800
)

_add(
    "ext/proposal",
    LINUX,
    EXT,
    hx(
        flush_header("03", "1500"),  # len 21
        "1300 0d00",  # len 19, PROPOSAL
        "20 000000",  # replay 32
        "00 10 0000",  # comb 1: auth 0, encrypt 16 = AES-CCM-ICV16 on Linux, flags 0
        "0000 0000",  # auth bits 0..0
        "8000 0001",  # encrypt bits 128..256
        "00000000",  # reserved
        "00000000 00000000",  # allocations
        "0000000000000000 0000000000000000",  # bytes
        "4019010000000000 8051010000000000",  # addtime soft 72000, hard 86400
        "7062000000000000 8070000000000000",  # usetime soft 25200, hard 28800
        "03 fd 0000",  # comb 2: auth 3 SHA1-HMAC, encrypt 253 TWOFISH-CBC (Linux only)
        "a000 a000",  # auth bits 160..160
        "8000 0001",  # encrypt bits 128..256
        "00000000",  # reserved
        "00000000 00000000",  # allocations
        "0000000000000000 0000000000000000",  # bytes
        "4019010000000000 8051010000000000",  # addtime
        "7062000000000000 8070000000000000",  # usetime
    ),
    msg(
        MsgType.FLUSH,
        SaType.ESP,
        Prop(
            32,
            (
                Comb(0, EncAlg.X_AES_CCM_ICV16, 0, 0, 0, 128, 256, 0, 0, 0, 0, 72000, 86400, 25200, 28800),
                Comb(
                    AuthAlg.SHA1HMAC, EncAlg.X_TWOFISHCBC, 0, 160, 160, 128, 256, 0, 0, 0, 0, 72000, 86400, 25200, 28800
                ),
            ),
        ),
    ),
)

# ------------------------------------------------------------ §4.10, §4.11

_add(
    "ext/spirange",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0400"),
        "0200 1000",  # len 2, SPIRANGE
        "00010000",  # min 0x100 (host order)
        "ffffff0f",  # max 0x0fffffff
        "00000000",  # reserved
    ),
    msg(MsgType.FLUSH, 0, SpiRange(0x100, 0x0FFFFFFF)),
)

_add(
    "ext/kmprivate",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0300"),
        "0100 1100",  # len 1, type 17 X_EXT_KMPRIVATE (FreeBSD refuses it; Linux accepts)
        "00000000",  # reserved
    ),
    msg(MsgType.FLUSH, 0, KmPrivate()),
)

# ------------------------------------------------------------ §4.12-4.13 sadb_x_policy

_add(
    "ext/policy-transport",
    FREEBSD,
    EXT,
    hx(
        flush_header("00", "0500"),  # len 2 + 3
        "0300 1200",  # len 3 (16 + one 8-byte request), X_POLICY
        "0200 02 01",  # type 2 IPSEC, dir 2 outbound, scope 1 global
        "39300000",  # id 12345
        "00000000",  # priority 0
        "0800 3200",  # request: len 8 bytes, proto ESP
        "01 03 0140",  # transport, level 3 unique, reqid 0x4001 (u16)
    ),
    msg(
        MsgType.FLUSH,
        0,
        Policy(
            PolicyType.IPSEC,
            Direction.OUTBOUND,
            12345,
            0,
            PolicyScope.GLOBAL,
            (IpsecRequest(IpProto.ESP, Mode.TRANSPORT, Level.UNIQUE, 0x4001),),
        ),
    ),
)

_add(
    "ext/policy-tunnel-ipv4",
    FREEBSD,
    EXT,
    hx(
        flush_header("00", "0a00"),  # len 2 + 8
        "0800 1200",  # len 8 (16 + 40 + 8 bytes), X_POLICY
        "0200 01 01",  # IPSEC, dir 1 inbound, scope 1
        "d2040000",  # id 1234
        "10000000",  # priority 16
        "2800 3200",  # request 1: len 40 bytes (8 + 16 + 16), ESP
        "02 02 0000",  # mode 2 tunnel, level require, reqid 0
        BSD_IN_192_0_2_1,  # tunnel source 192.0.2.1 (sa_len 16, no padding between)
        BSD_IN_198_51_100_1,  # tunnel destination 198.51.100.1
        "0800 3300",  # request 2: len 8, proto 51 AH
        "01 01 0000",  # transport, level 1 use, reqid 0
    ),
    msg(
        MsgType.FLUSH,
        0,
        Policy(
            PolicyType.IPSEC,
            Direction.INBOUND,
            1234,
            16,
            PolicyScope.GLOBAL,
            (
                IpsecRequest(IpProto.ESP, Mode.TUNNEL, Level.REQUIRE, 0, ip4("192.0.2.1"), ip4("198.51.100.1")),
                IpsecRequest(IpProto.AH, Mode.TRANSPORT, Level.USE),
            ),
        ),
    ),
)

_add(
    "ext/policy-tunnel-ipv6",
    FREEBSD,
    EXT,
    hx(
        flush_header("00", "0c00"),  # len 2 + 10
        "0a00 1200",  # len 10 (16 + 64), X_POLICY
        "0200 02 02",  # IPSEC, outbound, scope 2 ifnet
        "00000000",  # id 0
        "05000000",  # priority = ifindex 5 for an ifnet-scope policy
        "4000 3200",  # request: len 64 bytes (8 + 28 + 28, already aligned), ESP
        "02 03 ffff",  # tunnel, unique, reqid 0xffff (the largest a 16-bit reqid holds)
        BSD_IN6_DB8_1,  # tunnel source 2001:db8::1
        BSD_IN6_DB8_2,  # tunnel destination 2001:db8::2
    ),
    msg(
        MsgType.FLUSH,
        0,
        Policy(
            PolicyType.IPSEC,
            Direction.OUTBOUND,
            0,
            5,
            PolicyScope.IFNET,
            (IpsecRequest(IpProto.ESP, Mode.TUNNEL, Level.UNIQUE, 0xFFFF, ip6("2001:db8::1"), ip6("2001:db8::2")),),
        ),
    ),
)

_add(
    "ext/policy-transport",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0600"),  # len 2 + 4
        "0400 1200",  # len 4 (16 + one 16-byte request), X_POLICY
        "0200 02 00",  # IPSEC, outbound, reserved
        "39300000",  # id 12345
        "00000080",  # priority 0x80000000
        "1000 3300",  # request: len 16 bytes, proto AH
        "01 03 0000",  # transport, unique, reserved1
        "01400000",  # reqid 0x4001 (u32)
        "00000000",  # reserved2
    ),
    msg(
        MsgType.FLUSH,
        0,
        Policy(
            PolicyType.IPSEC,
            Direction.OUTBOUND,
            12345,
            0x80000000,
            0,
            (IpsecRequest(IpProto.AH, Mode.TRANSPORT, Level.UNIQUE, 0x4001),),
        ),
    ),
)

_add(
    "ext/policy-tunnel-ipv4",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0a00"),  # len 2 + 8
        "0800 1200",  # len 8 (16 + 48), X_POLICY
        "0200 03 00",  # IPSEC, dir 3 forward (Linux only), reserved
        "0a010000",  # id 0x10a
        "00ffff7f",  # priority 0x7fffff00
        "3000 3200",  # request: len 48 bytes (16 + ALIGN8(2*16)), ESP
        "02 03 0000",  # tunnel, unique, reserved1
        "45230100",  # reqid 0x12345 (does not fit FreeBSD's 16 bits)
        "00000000",  # reserved2
        LNX_IN_192_0_2_1,  # tunnel source 192.0.2.1
        LNX_IN_198_51_100_1,  # tunnel destination 198.51.100.1
    ),
    msg(
        MsgType.FLUSH,
        0,
        Policy(
            PolicyType.IPSEC,
            Direction.FWD,
            0x10A,
            0x7FFFFF00,
            0,
            (IpsecRequest(IpProto.ESP, Mode.TUNNEL, Level.UNIQUE, 0x12345, ip4("192.0.2.1"), ip4("198.51.100.1")),),
        ),
    ),
)

_add(
    "ext/policy-tunnel-ipv6",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0f00"),  # len 2 + 13
        "0d00 1200",  # len 13 (16 + 72 + 16), X_POLICY
        "0200 01 00",  # IPSEC, inbound
        "00000000",  # id 0
        "00000080",  # priority 0x80000000
        "4800 3200",  # request 1: len 72 bytes (16 + 2*28), ESP
        "02 02 0000",  # tunnel, require, reserved1
        "00000000",  # reqid 0
        "00000000",  # reserved2
        LNX_IN6_DB8_1,  # tunnel source 2001:db8::1
        LNX_IN6_DB8_2,  # tunnel destination 2001:db8::2
        "1000 3300",  # request 2: len 16, AH
        "01 01 0000",  # transport, use
        "00000000 00000000",  # reqid 0, reserved2
    ),
    msg(
        MsgType.FLUSH,
        0,
        Policy(
            PolicyType.IPSEC,
            Direction.INBOUND,
            0,
            0x80000000,
            0,
            (
                IpsecRequest(IpProto.ESP, Mode.TUNNEL, Level.REQUIRE, 0, ip6("2001:db8::1"), ip6("2001:db8::2")),
                IpsecRequest(IpProto.AH, Mode.TRANSPORT, Level.USE),
            ),
        ),
    ),
)

# ------------------------------------------------------------ §4.14 sadb_x_sa2

_add(
    "ext/sa2",
    FREEBSD,
    EXT,
    hx(
        flush_header("00", "0400"),
        "0200 1300",  # len 2, X_SA2
        "02 00 0000",  # mode 2 tunnel, reserved1, reserved2
        "2a000000",  # sequence 42
        "01400000",  # reqid 0x4001
    ),
    msg(MsgType.FLUSH, 0, Sa2(Mode.TUNNEL, 42, 0x4001)),
)

_add(
    "ext/sa2-mode-3-tcpmd5",
    FREEBSD,
    EXT,
    hx(
        flush_header("00", "0400"),
        "0200 1300",  # len 2, X_SA2
        "03 00 0000",  # mode 3 = TCPMD5 on FreeBSD
        "00000000 00000000",  # sequence 0, reqid 0
    ),
    msg(MsgType.FLUSH, 0, Sa2(Mode.TCPMD5)),
)

_add(
    "ext/sa2-mode-3-beet",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0400"),
        "0200 1300",  # len 2, X_SA2
        "03 00 0000",  # mode 3 = BEET on Linux
        "00000000",  # sequence 0
        "07000000",  # reqid 7
    ),
    msg(MsgType.FLUSH, 0, Sa2(Mode.BEET, 0, 7)),
)

# ------------------------------------------------------------ §4.15-4.16 NAT-T, SA_REPLAY

_add(
    "ext/nat-t",
    FREEBSD,
    EXT,
    hx(
        flush_header("03", "0c00"),  # len 2 + 1+1+1+3+3+1 = 12
        "0100 1400",  # len 1, X_NAT_T_TYPE
        "02 000000",  # type 2 UDP_ENCAP_ESPINUDP, reserved
        "0100 1500",  # len 1, X_NAT_T_SPORT
        "1194 0000",  # port 4500 (network order), reserved
        "0100 1600",  # len 1, X_NAT_T_DPORT
        "ee48 0000",  # port 61000
        "0300 1700",  # len 3, X_NAT_T_OAI
        "ff 20 0000",  # any, /32
        "10 02 0000 0a010101 0000000000000000",  # 10.1.1.1
        "0300 1800",  # len 3, X_NAT_T_OAR (FreeBSD only)
        "ff 20 0000",  # any, /32
        "10 02 0000 0a020202 0000000000000000",  # 10.2.2.2
        "0100 1900",  # len 1, X_NAT_T_FRAG (FreeBSD only)
        "2802 0000",  # fraglen 552 (host order), reserved
    ),
    msg(
        MsgType.FLUSH,
        SaType.ESP,
        NatTTypeExt(NatTType.ESPINUDP),
        NatTPort(ExtType.X_NAT_T_SPORT, 4500),
        NatTPort(ExtType.X_NAT_T_DPORT, 61000),
        Address(ExtType.X_NAT_T_OAI, ip4("10.1.1.1"), 32),
        Address(ExtType.X_NAT_T_OAR, ip4("10.2.2.2"), 32),
        NatTFrag(552),
    ),
)

_add(
    "ext/nat-t",
    LINUX,
    EXT,
    hx(
        flush_header("03", "0800"),  # len 2 + 1+1+1+3 = 8
        "0100 1400",  # len 1, X_NAT_T_TYPE
        "01 000000",  # type 1 UDP_ENCAP_ESPINUDP_NON_IKE
        "0100 1500",  # len 1, X_NAT_T_SPORT
        "1194 0000",  # port 4500
        "0100 1600",  # len 1, X_NAT_T_DPORT
        "1194 0000",  # port 4500
        "0300 1700",  # len 3, X_NAT_T_OA (type 23, Linux's single original address)
        "ff 20 0000",  # any, /32
        "0200 0000 0a010101 0000000000000000",  # 10.1.1.1
    ),
    msg(
        MsgType.FLUSH,
        SaType.ESP,
        NatTTypeExt(NatTType.ESPINUDP_NON_IKE),
        NatTPort(ExtType.X_NAT_T_SPORT, 4500),
        NatTPort(ExtType.X_NAT_T_DPORT, 4500),
        Address(ExtType.X_NAT_T_OA, ip4("10.1.1.1"), 32),
    ),
)

_add(
    "ext/sa-replay",
    FREEBSD,
    EXT,
    hx(
        flush_header("03", "0300"),
        "0100 1a00",  # len 1, type 26 X_SA_REPLAY (FreeBSD)
        "00100000",  # replay window 4096 packets
    ),
    msg(MsgType.FLUSH, SaType.ESP, SaReplay(4096)),
)

_add(
    "ext/new-addresses",
    FREEBSD,
    EXT,
    hx(
        flush_header("03", "0a00"),  # len 2 + 3 + 5
        "0300 1b00",  # len 3, type 27 X_NEW_ADDRESS_SRC (FreeBSD, MOBIKE)
        "ff 20 0000",  # any, /32
        "10 02 0000 0a000003 0000000000000000",  # 10.0.0.3
        "0500 1c00",  # len 5, type 28 X_NEW_ADDRESS_DST
        "ff 80 0000",  # any, /128
        "1c 1c 0000 00000000",  # sin6_len, AF_INET6, port 0, flowinfo 0
        "20010db8 00000000 00000000 00000003",  # 2001:db8::3
        "00000000 00000000",  # scope id, padding
    ),
    msg(
        MsgType.FLUSH,
        SaType.ESP,
        Address(ExtType.X_NEW_ADDRESS_SRC, ip4("10.0.0.3"), 32),
        Address(ExtType.X_NEW_ADDRESS_DST, ip6("2001:db8::3"), 128),
    ),
)

# ------------------------------------------------------------ §4.17 Linux-only extensions

_add(
    "ext/sec-ctx",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0700"),  # len 2 + 5
        "0500 1800",  # len 5 = ceil((8 + 28) / 8), type 24 X_SEC_CTX on Linux
        "01 01 1c00",  # ctx_alg 1, ctx_doi 1, ctx_len 28
        "73797374656d5f75 3a 6f626a6563745f72 3a 69707365635f74 3a 7330",  # "system_u:object_r:ipsec_t:s0"
        "00000000",  # padding
    ),
    msg(MsgType.FLUSH, 0, SecCtx(1, 1, b"system_u:object_r:ipsec_t:s0")),
)

_add(
    "ext/kmaddress-ipv4",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0700"),  # len 2 + 5
        "0500 1900",  # len 5 (8 + 2*16), type 25 X_KMADDRESS on Linux
        "00000000",  # reserved
        LNX_IN_10_0_0_1,  # local 10.0.0.1
        LNX_IN_10_0_0_2,  # remote 10.0.0.2
    ),
    msg(MsgType.FLUSH, 0, KmAddress(ip4("10.0.0.1"), ip4("10.0.0.2"))),
)

_add(
    "ext/kmaddress-ipv6",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0a00"),  # len 2 + 8
        "0800 1900",  # len 8 (8 + 2*28), X_KMADDRESS
        "00000000",  # reserved
        LNX_IN6_DB8_1,  # local 2001:db8::1
        LNX_IN6_DB8_2,  # remote 2001:db8::2
    ),
    msg(MsgType.FLUSH, 0, KmAddress(ip6("2001:db8::1"), ip6("2001:db8::2"))),
)

_add(
    "ext/filter-ipv4",
    LINUX,
    EXT,
    hx(
        "02 0a 00 00 0700 0000 00000000 00000000",  # DUMP (the message a filter restricts), satype 0, len 7
        "0500 1a00",  # len 5 (40 bytes), type 26 X_EXT_FILTER on Linux
        "0a000000 00000000 00000000 00000000",  # saddr 10.0.0.0 in a 16-byte field
        "c0a80000 00000000 00000000 00000000",  # daddr 192.168.0.0
        "0200",  # family AF_INET (host order)
        "08 10",  # splen 8, dplen 16
    ),
    msg(MsgType.DUMP, 0, Filter(4, IPv4Address("10.0.0.0"), IPv4Address("192.168.0.0"), 8, 16)),
)

_add(
    "ext/filter-ipv6",
    LINUX,
    EXT,
    hx(
        "02 0a 00 03 0700 0000 00000000 00000000",  # DUMP, satype ESP, len 7
        "0500 1a00",  # len 5, X_EXT_FILTER
        "20010db8 00000000 00000000 00000000",  # saddr 2001:db8::
        "20010db8 00010000 00000000 00000000",  # daddr 2001:db8:1::
        "0a00",  # family AF_INET6 (10)
        "20 30",  # splen 32, dplen 48
    ),
    msg(MsgType.DUMP, SaType.ESP, Filter(6, IPv6Address("2001:db8::"), IPv6Address("2001:db8:1::"), 32, 48)),
)

_add(
    "ext/unknown-type-27-is-kept",
    LINUX,
    EXT,
    hx(
        flush_header("00", "0400"),
        "0200 1b00",  # len 2, type 27: above Linux's SADB_EXT_MAX (26), skipped by the kernel
        "deadbeef 0102030405060708",  # 12 opaque bytes
    ),
    msg(MsgType.FLUSH, 0, UnknownExt(27, bytes.fromhex("deadbeef0102030405060708"))),
)

# ============================================================ whole messages, FreeBSD

_add(
    "msg/00-reserved",
    FREEBSD,
    REQUEST,
    hx(
        "02 00 00 00",  # version 2, type 0 RESERVED, errno 0, satype 0
        "0200 0000",  # len 2, reserved
        "00000000 64000000",  # seq 0, pid 100
    ),
    msg(MsgType.RESERVED, pid=100),
)

_add(
    "msg/01-getspi-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 01 00 03",  # GETSPI, satype ESP
        "0c00 0000",  # len 12 (96 bytes)
        "07000000 d2040000",  # seq 7 (an ACQUIRE's seq), pid 1234
        "0200 1300 02 00 0000 00000000 01400000",  # X_SA2: tunnel, sequence 0, reqid 0x4001
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
        "0200 1000 00010000 ffffff0f 00000000",  # SPIRANGE 0x100 .. 0x0fffffff
    ),
    msg(
        MsgType.GETSPI,
        SaType.ESP,
        Sa2(Mode.TUNNEL, 0, 0x4001),
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        SpiRange(0x100, 0x0FFFFFFF),
        seq=7,
        pid=1234,
    ),
)

_add(
    "msg/01-getspi-reply",
    FREEBSD,
    REPLY,
    hx(
        "02 01 00 03",  # GETSPI, satype ESP
        "0a00 0000",  # len 10 (80 bytes)
        "07000000 d2040000",  # seq 7, pid 1234 (echoed)
        "0200 0100 0a1b2c3d 00 00 00 00 00000000",  # SA: spi 0x0a1b2c3d, everything else 0 (LARVAL)
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
    ),
    msg(MsgType.GETSPI, SaType.ESP, Sa(0x0A1B2C3D), V_SRC_10_0_0_1, V_DST_10_0_0_2, seq=7, pid=1234),
)

_add(
    "msg/02-update-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 02 00 03",  # UPDATE, ESP
        "1c00 0000",  # len 28 (224 bytes)
        "07000000 d2040000",  # seq 7, pid 1234
        "0200 0100 0a1b2c3d 04 00 05 0c 00000000",  # SA: replay 4, LARVAL (as KAME sends), SHA2-256, AES-CBC
        "0200 1300 02 00 0000 00000000 01400000",  # X_SA2: tunnel, reqid 0x4001
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
        KEY_ENC_K16,  # KEY_ENCRYPT, 128 bits
        KEY_AUTH_K32_B,  # KEY_AUTH, 256 bits
        HARD_ADD_1800,  # LIFETIME_HARD addtime 1800
        SOFT_ADD_1440,  # LIFETIME_SOFT addtime 1440
    ),
    msg(
        MsgType.UPDATE,
        SaType.ESP,
        Sa(0x0A1B2C3D, 4, SaState.LARVAL, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC),
        Sa2(Mode.TUNNEL, 0, 0x4001),
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        V_KEY_ENC_K16,
        V_KEY_AUTH_K32_B,
        hard(add=1800),
        soft(add=1440),
        seq=7,
        pid=1234,
    ),
)

_add(
    "msg/02-update-reply",
    FREEBSD,
    REPLY,
    hx(
        "02 02 00 03",  # UPDATE, ESP
        "1400 0000",  # len 20 (160 bytes)
        "07000000 d2040000",  # seq 7, pid 1234
        "0200 0100 0a1b2c3d 04 00 05 0c 00000000",  # SA as the caller sent it
        "0200 1300 02 00 0000 00000000 01400000",  # X_SA2
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
        HARD_ADD_1800,
        SOFT_ADD_1440,  # no keys: FreeBSD strips them (§3.2)
    ),
    msg(
        MsgType.UPDATE,
        SaType.ESP,
        Sa(0x0A1B2C3D, 4, SaState.LARVAL, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC),
        Sa2(Mode.TUNNEL, 0, 0x4001),
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        hard(add=1800),
        soft(add=1440),
        seq=7,
        pid=1234,
    ),
)

V_CAPTURE_ADD_EXTS = (
    V_KEY_ENC_K16,
    V_KEY_AUTH_K32,
    Sa(0x1000, 0, SaState.LARVAL, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, SaFlag.X_EXT_CYCSEQ),
    Sa2(Mode.TRANSPORT),
    V_SRC_10_0_0_1,
    V_DST_10_0_0_2,
)

_add(
    "msg/03-add-request",
    FREEBSD,
    REQUEST,
    hx(
        # The ADD of real-clients.md §3.2, laid out as a FreeBSD-built setkey sends it:
        # identical except for the BSD sockaddrs.
        "02 03 00 03",  # ADD, ESP
        "1400 0000",  # len 20 (160 bytes)
        "00000000 55340000",  # seq 0, pid 0x3455
        KEY_ENC_K16,  # KEY_ENCRYPT 128 bits
        KEY_AUTH_K32,  # KEY_AUTH 256 bits
        "0200 0100 00001000 00 00 05 0c 40000000",  # SA: spi 0x1000, SHA2-256, AES-CBC, flags CYCSEQ
        "0200 1300 01 00 0000 00000000 00000000",  # X_SA2: transport
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
    ),
    msg(MsgType.ADD, SaType.ESP, *V_CAPTURE_ADD_EXTS, pid=0x3455),
)

_add(
    "msg/03-add-nat-t-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 03 00 03",  # ADD, ESP
        "1900 0000",  # len 25 (200 bytes)
        "00000000 55340000",  # seq 0, pid 0x3455
        KEY_ENC_K36,  # KEY_ENCRYPT: AES-256-GCM key + salt
        "0200 0100 00c0ffee 00 00 00 14 00040000",  # SA: auth 0, encrypt 20 AES-GCM-16, flags ESN (0x400)
        "0200 1300 01 00 0000 00000000 00000000",  # X_SA2: transport
        "0300 0500 ff 20 0000",  # ADDRESS_SRC: any, /32
        "10 02 1194 0a000001 0000000000000000",  # 10.0.0.1 port 4500
        "0300 0600 ff 20 0000",  # ADDRESS_DST: any, /32
        "10 02 1194 0a000002 0000000000000000",  # 10.0.0.2 port 4500
        "0100 1400 02 000000",  # X_NAT_T_TYPE ESPINUDP
        "0100 1500 1194 0000",  # X_NAT_T_SPORT 4500
        "0100 1600 1194 0000",  # X_NAT_T_DPORT 4500
        "0300 1700 ff 20 0000",  # X_NAT_T_OAI: any, /32
        "10 02 0000 c0a8010a 0000000000000000",  # 192.168.1.10
        "0100 1a00 80000000",  # X_SA_REPLAY 128 packets
    ),
    msg(
        MsgType.ADD,
        SaType.ESP,
        V_KEY_ENC_K36,
        Sa(0xC0FFEE, 0, SaState.LARVAL, AuthAlg.NONE, EncAlg.X_AESGCM16, SaFlag.X_ESN),
        Sa2(Mode.TRANSPORT),
        src(ip4("10.0.0.1", 4500), 32),
        dst(ip4("10.0.0.2", 4500), 32),
        NatTTypeExt(NatTType.ESPINUDP),
        NatTPort(ExtType.X_NAT_T_SPORT, 4500),
        NatTPort(ExtType.X_NAT_T_DPORT, 4500),
        Address(ExtType.X_NAT_T_OAI, ip4("192.168.1.10"), 32),
        SaReplay(128),
        pid=0x3455,
    ),
)

_add(
    "msg/03-add-tcpmd5-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 03 00 0b",  # ADD, satype 11 X_TCPSIGNATURE (FreeBSD only)
        "0d00 0000",  # len 13 (104 bytes)
        "00000000 d2040000",  # seq 0, pid 1234
        "0200 0100 00001000 00 00 fc 00 00000000",  # SA: spi 0x1000, auth 252 X_AALG_TCP_MD5, encrypt 0
        "0300 0500 06 20 0000",  # ADDRESS_SRC: proto TCP, /32
        BSD_IN_10_0_0_1,
        "0300 0600 06 20 0000",  # ADDRESS_DST: proto TCP, /32
        BSD_IN_10_0_0_2,
        "0300 0800 8000 0000",  # KEY_AUTH: len 3, 128 bits
        "6b657931323334353637383930616263",  # "key1234567890abc"
    ),
    msg(
        MsgType.ADD,
        SaType.X_TCPSIGNATURE,
        Sa(0x1000, auth=AuthAlg.X_TCP_MD5),
        src(ip4("10.0.0.1"), 32, IpProto.TCP),
        dst(ip4("10.0.0.2"), 32, IpProto.TCP),
        Key(ExtType.KEY_AUTH, b"key1234567890abc"),
        pid=1234,
    ),
)

_add(
    "msg/03-add-reply",
    FREEBSD,
    REPLY,
    hx(
        "02 03 00 03",  # ADD, ESP
        "0c00 0000",  # len 12 (96 bytes)
        "00000000 55340000",  # seq 0, pid 0x3455 (echoed)
        "0200 0100 00001000 00 00 05 0c 40000000",  # SA as sent
        "0200 1300 01 00 0000 00000000 00000000",  # X_SA2
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,  # keys stripped
    ),
    msg(MsgType.ADD, SaType.ESP, *V_CAPTURE_ADD_EXTS[2:], pid=0x3455),
)

BSD_SA_1000_CYCSEQ = hx("0200 0100 00001000 00 00 00 00 40000000")  # SA: spi 0x1000, no algorithms, CYCSEQ
V_SA_1000_CYCSEQ = Sa(0x1000, flags=SaFlag.X_EXT_CYCSEQ)
SA2_ANY = hx("0200 1300 00 00 0000 00000000 00000000")  # X_SA2: mode 0 (any), reqid 0

_add(
    "msg/04-delete-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 04 00 03",  # DELETE, ESP
        "0c00 0000",  # len 12
        "00000000 d2040000",  # seq 0, pid 1234
        BSD_SA_1000_CYCSEQ,
        SA2_ANY,
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
    ),
    msg(MsgType.DELETE, SaType.ESP, V_SA_1000_CYCSEQ, Sa2(), V_SRC_10_0_0_1, V_DST_10_0_0_2, pid=1234),
)

_add(
    "msg/04-delete-all-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 04 00 03",  # DELETE without SA (FreeBSD's INITIAL-CONTACT form)
        "0800 0000",  # len 8
        "00000000 d2040000",  # seq 0, pid 1234
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
    ),
    msg(MsgType.DELETE, SaType.ESP, V_SRC_10_0_0_1, V_DST_10_0_0_2, pid=1234),
)

_add(
    "msg/04-delete-reply",
    FREEBSD,
    REPLY,
    hx(
        "02 04 00 03",  # DELETE, ESP
        "0a00 0000",  # len 10
        "00000000 d2040000",  # seq 0, pid 1234
        BSD_SA_1000_CYCSEQ,
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
    ),
    msg(MsgType.DELETE, SaType.ESP, V_SA_1000_CYCSEQ, V_SRC_10_0_0_1, V_DST_10_0_0_2, pid=1234),
)

_add(
    "msg/05-get-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 05 00 03",  # GET, ESP
        "0c00 0000",  # len 12
        "05000000 d2040000",  # seq 5, pid 1234
        BSD_SA_1000_CYCSEQ,
        SA2_ANY,
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
    ),
    msg(MsgType.GET, SaType.ESP, V_SA_1000_CYCSEQ, Sa2(), V_SRC_10_0_0_1, V_DST_10_0_0_2, seq=5, pid=1234),
)

_add(
    "msg/05-get-reply",
    FREEBSD,
    REPLY,
    hx(
        # The SA dump of §8.2, in its order, keys included.
        "02 05 00 03",  # GET, ESP
        "1d00 0100",  # len 29 (232 bytes), reserved = refcount 1
        "05000000 d2040000",  # seq 5, pid 1234 (echoed)
        "0200 0100 00001000 ff 01 05 0c 40000000",  # SA: replay 255 (min(window bytes, 255)), MATURE
        "0200 1300 01 00 0000 11000000 00000000",  # X_SA2: transport, sequence 17, reqid 0
        "0100 1a00 00100000",  # X_SA_REPLAY 4096 packets (512-byte window > 255)
        "0400 0300 00000000 0000000000000000 100e000000000000 0000000000000000",  # HARD: addtime 3600
        "0400 0200",  # CURRENT
        "0a000000",  # allocations 10
        "dc05000000000000",  # bytes 1500
        "00f1536500000000",  # addtime 1700000000
        "64f1536500000000",  # usetime 1700000100
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
        KEY_AUTH_K32,
        KEY_ENC_K16,
    ),
    msg(
        MsgType.GET,
        SaType.ESP,
        Sa(0x1000, 255, SaState.MATURE, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC, SaFlag.X_EXT_CYCSEQ),
        Sa2(Mode.TRANSPORT, 17, 0),
        SaReplay(4096),
        hard(add=3600),
        current(10, 1500, 1700000000, 1700000100),
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        V_KEY_AUTH_K32,
        V_KEY_ENC_K16,
        seq=5,
        pid=1234,
        reserved=1,
    ),
)

_add(
    "msg/06-acquire",
    FREEBSD,
    REPLY,
    hx(
        "02 06 00 03",  # ACQUIRE, ESP
        "1600 0000",  # len 22 (176 bytes)
        "01000000 00000000",  # seq 1 (the ACQUIRE record's), pid 0
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
        "0200 1200 0200 02 00 39300000 00000000",  # X_POLICY 16 bytes: IPSEC, outbound, id 12345, no requests
        "0200 1300 01 00 0000 00000000 01400000",  # X_SA2: transport, reqid 0x4001
        "0a00 0d00 20 000000",  # PROPOSAL: len 10 (8 + 72), replay 32
        COMB_FREEBSD_AESCBC,
    ),
    msg(
        MsgType.ACQUIRE,
        SaType.ESP,
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        Policy(PolicyType.IPSEC, Direction.OUTBOUND, 12345),
        Sa2(Mode.TRANSPORT, 0, 0x4001),
        Prop(32, (V_COMB_FREEBSD_AESCBC,)),
        seq=1,
    ),
)

_add(
    "msg/06-acquire-error-report",
    FREEBSD,
    REQUEST,
    hx(
        "02 06 3c 03",  # ACQUIRE, errno 60 (ETIMEDOUT on FreeBSD), satype ESP
        "0200 0000",  # len 2: the header-only form a key manager uses to report failure
        "01000000 d2040000",  # seq 1 (the ACQUIRE's), pid 1234
    ),
    msg(MsgType.ACQUIRE, SaType.ESP, seq=1, pid=1234, errno=errno.ETIMEDOUT),
)  # the model holds host errnos

_add(
    "msg/07-register-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 07 00 03 0200 0000 00000000 d2040000",  # REGISTER, ESP, len 2, seq 0, pid 1234
    ),
    msg(MsgType.REGISTER, SaType.ESP, pid=1234),
)

_add(
    "msg/07-register-reply",
    FREEBSD,
    REPLY,
    hx(
        # What current FreeBSD advertises (§5.6): 152 bytes.
        "02 07 00 03",  # REGISTER, ESP
        "1300 0000",  # len 19 (152 bytes)
        "00000000 d2040000",  # seq 0, pid 1234
        "0a00 0e00 00000000",  # SUPPORTED_AUTH: len 10 (8 + 9*8), reserved
        "03 00 a000 a000 0000",  # id 3 SHA1-HMAC, ivlen 0, bits 160..160, reserved
        "05 00 0001 0001 0000",  # 5 SHA2-256, 256..256
        "06 00 8001 8001 0000",  # 6 SHA2-384, 384..384
        "07 00 0002 0002 0000",  # 7 SHA2-512, 512..512
        "0b 00 8000 8000 0000",  # 11 AES128-GMAC, 128..128
        "0c 00 8000 8000 0000",  # 12 AES192-GMAC, 128..128
        "0d 00 8000 8000 0000",  # 13 AES256-GMAC, 128..128
        "0e 00 8000 8000 0000",  # 14 Poly1305, 128..128
        "fb 00 0800 0008 0000",  # 251 NULL, 8..2048
        "0700 0f00 00000000",  # SUPPORTED_ENCRYPT: len 7 (8 + 6*8)
        "0b 00 0000 0008 0000",  # 11 NULL, ivlen 0, 0..2048
        "0c 10 8000 0001 0000",  # 12 AES-CBC, ivlen 16, 128..256
        "0d 10 8000 0001 0000",  # 13 AES-CTR, ivlen 16, 128..256
        "0f 0c 0001 0001 0000",  # 15 ChaCha20-Poly1305, ivlen 12, 256..256
        "14 0c 8000 0001 0000",  # 20 AES-GCM-16, ivlen 12, 128..256
        "17 0c 8000 0001 0000",  # 23 AES-GMAC, ivlen 12, 128..256
    ),
    msg(
        MsgType.REGISTER,
        SaType.ESP,
        Supported(
            ExtType.SUPPORTED_AUTH,
            (
                Alg(AuthAlg.SHA1HMAC, 0, 160, 160),
                Alg(AuthAlg.X_SHA2_256, 0, 256, 256),
                Alg(AuthAlg.X_SHA2_384, 0, 384, 384),
                Alg(AuthAlg.X_SHA2_512, 0, 512, 512),
                Alg(AuthAlg.X_AES128GMAC, 0, 128, 128),
                Alg(AuthAlg.X_AES192GMAC, 0, 128, 128),
                Alg(AuthAlg.X_AES256GMAC, 0, 128, 128),
                Alg(AuthAlg.X_CHACHA20POLY1305, 0, 128, 128),
                Alg(AuthAlg.X_NULL, 0, 8, 2048),
            ),
        ),
        Supported(
            ExtType.SUPPORTED_ENCRYPT,
            (
                Alg(EncAlg.NULL, 0, 0, 2048),
                Alg(EncAlg.X_AESCBC, 16, 128, 256),
                Alg(EncAlg.X_AESCTR, 16, 128, 256),
                Alg(EncAlg.X_CHACHA20POLY1305, 12, 256, 256),
                Alg(EncAlg.X_AESGCM16, 12, 128, 256),
                Alg(EncAlg.X_AESGMAC, 12, 128, 256),
            ),
        ),
        pid=1234,
    ),
)

_add(
    "msg/08-expire",
    FREEBSD,
    REPLY,
    hx(
        "02 08 00 03",  # EXPIRE, ESP
        "1400 0100",  # len 20 (160 bytes), reserved = refcount 1
        "07000000 00000000",  # seq 7 (stored at GETSPI), pid 0
        "0200 0100 0a1b2c3d 04 02 05 0c 00000000",  # SA: replay 4, DYING, SHA2-256, AES-CBC
        "0200 1300 02 00 0000 34120000 01400000",  # X_SA2: tunnel, sequence 0x1234, reqid 0x4001
        "0400 0200 03000000 2c01000000000000 00f1536500000000 64f1536500000000",  # CURRENT: 3 pkts, 300 bytes
        SOFT_ADD_1440,  # the soft limit that fired
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
    ),
    msg(
        MsgType.EXPIRE,
        SaType.ESP,
        Sa(0x0A1B2C3D, 4, SaState.DYING, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC),
        Sa2(Mode.TUNNEL, 0x1234, 0x4001),
        current(3, 300, 1700000000, 1700000100),
        soft(add=1440),
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        seq=7,
        reserved=1,
    ),
)

_add(
    "msg/09-flush-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 09 00 03 0200 0000 00000000 d2040000",  # FLUSH, satype ESP ("flush esp"), len 2, pid 1234
    ),
    msg(MsgType.FLUSH, SaType.ESP, pid=1234),
)

_add(
    "msg/10-dump-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 0a 00 00 0200 0000 00000000 d2040000",  # DUMP, satype 0 (all), len 2, pid 1234
    ),
    msg(MsgType.DUMP, pid=1234),
)

_add(
    "msg/10-dump-reply-enoent",
    FREEBSD,
    REPLY,
    hx(
        "02 0a 02 00 0200 0000 00000000 d2040000",  # the request echoed with errno 2 ENOENT: "No SAD entries"
    ),
    msg(MsgType.DUMP, pid=1234, errno=2),
)

_add(
    "msg/10-dump-entry",
    FREEBSD,
    REPLY,
    hx(
        "02 0a 00 03",  # DUMP, ESP
        "1c00 0100",  # len 28 (224 bytes), refcount 1
        "00000000 d2040000",  # seq 0 (the last entry), pid 1234 (the requester's)
        "0200 0100 00c0ffee 20 01 00 14 00040000",  # SA: replay 32, MATURE, AES-GCM-16, flags ESN
        "0200 1300 01 00 0000 63000000 00000000",  # X_SA2: transport, sequence 99
        "0400 0200 00000000 0000000000000000 00f1536500000000 0000000000000000",  # CURRENT
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
        KEY_ENC_K36,
        "0100 1400 02 000000",  # X_NAT_T_TYPE ESPINUDP
        "0100 1500 1194 0000",  # X_NAT_T_SPORT 4500
        "0100 1600 1194 0000",  # X_NAT_T_DPORT 4500
        "0300 1700 ff 20 0000 10 02 0000 c0a8010a 0000000000000000",  # X_NAT_T_OAI 192.168.1.10
    ),
    msg(
        MsgType.DUMP,
        SaType.ESP,
        Sa(0xC0FFEE, 32, SaState.MATURE, AuthAlg.NONE, EncAlg.X_AESGCM16, SaFlag.X_ESN),
        Sa2(Mode.TRANSPORT, 99),
        current(add=1700000000),
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        V_KEY_ENC_K36,
        NatTTypeExt(NatTType.ESPINUDP),
        NatTPort(ExtType.X_NAT_T_SPORT, 4500),
        NatTPort(ExtType.X_NAT_T_DPORT, 4500),
        Address(ExtType.X_NAT_T_OAI, ip4("192.168.1.10"), 32),
        pid=1234,
        reserved=1,
    ),
)

_add(
    "msg/11-promisc-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 0b 00 01 0200 0000 00000000 d2040000",  # X_PROMISC, satype 1 (on), len 2, pid 1234
    ),
    msg(MsgType.X_PROMISC, 1, pid=1234),
)

_add(
    "msg/12-pchange",
    FREEBSD,
    REQUEST,
    hx(
        # The codec decodes it; key_parse finds no handler and the engine answers EINVAL.
        "02 0c 00 00 0200 0000 00000000 d2040000",  # X_PCHANGE, len 2, pid 1234
    ),
    msg(MsgType.X_PCHANGE, pid=1234),
)

BSD_SRC_DB8_1_48 = hx(
    "0500 0500 ff 30 0000",  # ADDRESS_SRC len 5: any, /48
    "1c 1c 0000 00000000 20010db8 00010000 00000000 00000000 00000000",  # 2001:db8:1::
    "00000000",  # padding
)
BSD_DST_DB8_2_48 = hx(
    "0500 0600 ff 30 0000",  # ADDRESS_DST len 5: any, /48
    "1c 1c 0000 00000000 20010db8 00020000 00000000 00000000 00000000",  # 2001:db8:2::
    "00000000",  # padding
)

_add(
    "msg/13-spdupdate-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 0d 00 00",  # X_SPDUPDATE, satype 0
        "1a00 0000",  # len 26 (208 bytes)
        "00000000 d2040000",  # seq 0, pid 1234
        "0a00 1200 0200 01 00 00000000 00000000",  # X_POLICY len 10: IPSEC, inbound, id 0, priority 0
        "4000 3200 02 02 0000",  # request: len 64, ESP, tunnel, require, reqid 0
        BSD_IN6_DB8_1,  # tunnel source
        BSD_IN6_DB8_2,  # tunnel destination
        BSD_SRC_DB8_1_48,
        BSD_DST_DB8_2_48,
        "0400 0300 00000000 0000000000000000 100e000000000000 5802000000000000",  # HARD: lifetime 3600, valid 600
    ),
    msg(
        MsgType.X_SPDUPDATE,
        0,
        Policy(
            PolicyType.IPSEC,
            Direction.INBOUND,
            0,
            0,
            0,
            (IpsecRequest(IpProto.ESP, Mode.TUNNEL, Level.REQUIRE, 0, ip6("2001:db8::1"), ip6("2001:db8::2")),),
        ),
        src(ip6("2001:db8:1::"), 48),
        dst(ip6("2001:db8:2::"), 48),
        hard(add=3600, use=600),
        pid=1234,
    ),
)

_add(
    "msg/14-spdadd-request",
    FREEBSD,
    REQUEST,
    hx(
        # The X_SPDADD of real-clients.md §3.2 in FreeBSD layout: 8-byte ipsecrequest, BSD sockaddrs.
        "02 0e 00 00",  # X_SPDADD, satype 0
        "0b00 0000",  # len 11 (88 bytes)
        "00000000 55340000",  # seq 0, pid 0x3455
        "0300 1200 0200 02 00 00000000 00000080",  # X_POLICY len 3: IPSEC, out, id 0, priority 0x80000000
        BSD_REQ_ESP_TRANSPORT,
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
    ),
    msg(
        MsgType.X_SPDADD,
        0,
        Policy(PolicyType.IPSEC, Direction.OUTBOUND, 0, 0x80000000, 0, (V_REQ_ESP_TRANSPORT,)),
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        pid=0x3455,
    ),
)

_add(
    "msg/14-spdadd-reply",
    FREEBSD,
    REPLY,
    hx(
        "02 0e 00 00",  # X_SPDADD
        "0b00 0000",  # len 11
        "00000000 55340000",  # seq 0, pid 0x3455
        # X_POLICY as sent with the new id 17 filled in: key_spdadd sets sadb_x_policy_id
        # alone, so the scope byte is echoed (0 here), unlike a dump entry's (1, global).
        "0300 1200 0200 02 00 11000000 00000080",
        BSD_REQ_ESP_TRANSPORT,
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
    ),
    msg(
        MsgType.X_SPDADD,
        0,
        Policy(PolicyType.IPSEC, Direction.OUTBOUND, 17, 0x80000000, 0, (V_REQ_ESP_TRANSPORT,)),
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        pid=0x3455,
    ),
)

_add(
    "msg/15-spddelete-request",
    FREEBSD,
    REQUEST,
    hx(
        # The SPDDELETE of real-clients.md §3.3 (80 bytes) in FreeBSD layout.
        "02 0f 00 00",  # X_SPDDELETE
        "0a00 0000",  # len 10 (80 bytes)
        "00000000 d2040000",  # seq 0, pid 1234
        "0200 1200 0000 02 00 00000000 00000000",  # X_POLICY 16 bytes: type 0, out, id 0, priority 0
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
    ),
    msg(
        MsgType.X_SPDDELETE, 0, Policy(PolicyType.DISCARD, Direction.OUTBOUND), V_SRC_10_0_0_1, V_DST_10_0_0_2, pid=1234
    ),
)

_add(
    "msg/16-spdget-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 10 00 00 0400 0000 00000000 d2040000",  # X_SPDGET, len 4, pid 1234
        "0200 1200 0000 00 00 11000000 00000000",  # X_POLICY: only the id (17) matters
    ),
    msg(MsgType.X_SPDGET, 0, Policy(PolicyType.DISCARD, Direction.ANY, 17), pid=1234),
)

_add(
    "msg/16-spdget-reply",
    FREEBSD,
    REPLY,
    hx(
        "02 10 00 00",  # X_SPDGET
        "1300 0200",  # len 19 (152 bytes), reserved = refcount 2
        "00000000 d2040000",  # seq 0, pid 1234
        "0300 0500 06 18 0000",  # ADDRESS_SRC: proto TCP, /24
        "10 02 0050 0a000000 0000000000000000",  # 10.0.0.0 port 80 (a selector port)
        "0300 0600 06 18 0000",  # ADDRESS_DST: proto TCP, /24
        "10 02 0000 0a000100 0000000000000000",  # 10.0.1.0
        "0300 1200 0200 02 01 11000000 00000000",  # X_POLICY: IPSEC, out, global, id 17
        BSD_REQ_ESP_TRANSPORT,
        CURRENT_AT_1700000000,  # CURRENT: created
        "0400 0300 00000000 0000000000000000 100e000000000000 0000000000000000",  # HARD: lifetime 3600
    ),
    msg(
        MsgType.X_SPDGET,
        0,
        src(ip4("10.0.0.0", 80), 24, IpProto.TCP),
        dst(ip4("10.0.1.0"), 24, IpProto.TCP),
        Policy(PolicyType.IPSEC, Direction.OUTBOUND, 17, 0, PolicyScope.GLOBAL, (V_REQ_ESP_TRANSPORT,)),
        current(add=1700000000),
        hard(add=3600),
        pid=1234,
        reserved=2,
    ),
)

_add(
    "msg/17-spdacquire",
    FREEBSD,
    REPLY,
    hx(
        "02 11 00 00 0200 0000 00000000 00000000",  # X_SPDACQUIRE: a bare header to REGISTERED
    ),
    msg(MsgType.X_SPDACQUIRE),
)

_add(
    "msg/18-spddump-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 12 00 01 0200 0000 00000000 d2040000",  # X_SPDDUMP, satype = scope mask 1 (global), pid 1234
    ),
    msg(MsgType.X_SPDDUMP, 1, pid=1234),
)

_add(
    "msg/18-spddump-entry",
    FREEBSD,
    REPLY,
    hx(
        "02 12 00 00",  # X_SPDDUMP
        "1000 0100",  # len 16 (128 bytes), refcount 1
        "00000000 d2040000",  # seq 0 (last), pid 1234
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
        "0800 1200 0200 01 01 d2040000 10000000",  # X_POLICY len 8: IPSEC, in, global, id 1234, priority 16
        "2800 3200 02 02 0000",  # request: len 40, ESP tunnel require
        BSD_IN_192_0_2_1,
        BSD_IN_198_51_100_1,
        "0800 3300 01 01 0000",  # request: len 8, AH transport use
    ),
    msg(
        MsgType.X_SPDDUMP,
        0,
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        Policy(
            PolicyType.IPSEC,
            Direction.INBOUND,
            1234,
            16,
            PolicyScope.GLOBAL,
            (
                IpsecRequest(IpProto.ESP, Mode.TUNNEL, Level.REQUIRE, 0, ip4("192.0.2.1"), ip4("198.51.100.1")),
                IpsecRequest(IpProto.AH, Mode.TRANSPORT, Level.USE),
            ),
        ),
        pid=1234,
        reserved=1,
    ),
)

_add(
    "msg/19-spdflush-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 13 00 00 0200 0000 00000000 d2040000",  # X_SPDFLUSH, exactly the header, pid 1234
    ),
    msg(MsgType.X_SPDFLUSH, pid=1234),
)

_add(
    "msg/20-spdsetidx-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 14 00 00 0a00 0000 00000000 d2040000",  # X_SPDSETIDX, len 10, pid 1234
        "0200 1200 0000 01 00 00000000 00000000",  # X_POLICY: DISCARD, inbound
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
    ),
    msg(
        MsgType.X_SPDSETIDX, 0, Policy(PolicyType.DISCARD, Direction.INBOUND), V_SRC_10_0_0_1, V_DST_10_0_0_2, pid=1234
    ),
)

_add(
    "msg/21-spdexpire",
    FREEBSD,
    REPLY,
    hx(
        "02 15 00 00",  # X_SPDEXPIRE, satype 0
        "1300 0000",  # len 19 (152 bytes)
        "00000000 00000000",  # seq 0, pid 0
        "0400 0200 00000000 0000000000000000 00f1536500000000 64f1536500000000",  # CURRENT: created, last used
        "0400 0300 00000000 0000000000000000 100e000000000000 0000000000000000",  # HARD: lifetime 3600
        BSD_SRC_10_0_0_1,
        BSD_DST_10_0_0_2,
        "0300 1200 0200 02 01 11000000 00000000",  # X_POLICY: IPSEC, out, global, id 17
        BSD_REQ_ESP_TRANSPORT,
    ),
    msg(
        MsgType.X_SPDEXPIRE,
        0,
        current(add=1700000000, use=1700000100),
        hard(add=3600),
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        Policy(PolicyType.IPSEC, Direction.OUTBOUND, 17, 0, PolicyScope.GLOBAL, (V_REQ_ESP_TRANSPORT,)),
    ),
)

_add(
    "msg/22-spddelete2-request",
    FREEBSD,
    REQUEST,
    hx(
        "02 16 00 00 0400 0000 00000000 d2040000",  # X_SPDDELETE2, len 4, pid 1234
        "0200 1200 0000 00 00 11000000 00000000",  # X_POLICY: id 17
    ),
    msg(MsgType.X_SPDDELETE2, 0, Policy(PolicyType.DISCARD, Direction.ANY, 17), pid=1234),
)

# ============================================================ whole messages, Linux

RACOON_SEQ = "866137fe"  # 4265042310, the random seq a racoon responder used (real-clients.md §0)
RACOON_PID = "901f0000"  # pid 8080 (chosen; racoon's pid is not recorded)

LNX_SRC_PEER = hx(
    "0300 0500 ff 20 0000",  # ADDRESS_SRC: any, /32
    "0200 3a98 0a000002 0000000000000000",  # 10.0.0.2 port 15000 (racoon sends its IKE port)
)
LNX_DST_US = hx("0300 0600 ff 20 0000", "0200 3a98 0a000001 0000000000000000")  # ADDRESS_DST 10.0.0.1:15000
V_SRC_PEER = src(ip4("10.0.0.2", 15000), 32)
V_DST_US = dst(ip4("10.0.0.1", 15000), 32)

_add(
    "msg/00-reserved",
    LINUX,
    REPLY,
    hx(
        # Linux refuses type 0 in a request (see the fault table); read without request checks.
        "02 00 00 00 0200 0000 00000000 00000000",  # type 0, len 2
    ),
    msg(MsgType.RESERVED),
)

_add(
    "msg/01-getspi-request",
    LINUX,
    REQUEST,
    hx(
        # The 80-byte racoon GETSPI of real-clients.md §3.8: no SPIRANGE.
        "02 01 00 03",  # GETSPI, ESP
        "0a00 0000",  # len 10 (80 bytes)
        RACOON_SEQ,
        RACOON_PID,  # seq 4265042310, pid 8080
        "0200 1300 01 00 0000 00000000 00000000",  # X_SA2: transport, reqid 0
        LNX_SRC_PEER,
        LNX_DST_US,
    ),
    msg(MsgType.GETSPI, SaType.ESP, Sa2(Mode.TRANSPORT), V_SRC_PEER, V_DST_US, seq=4265042310, pid=8080),
)

_add(
    "msg/01-getspi-reply",
    LINUX,
    REPLY,
    hx(
        # Linux answers GETSPI with a full SA message (§3.1).
        "02 01 00 03",  # GETSPI, ESP
        "1800 0000",  # len 24 (192 bytes)
        RACOON_SEQ,
        RACOON_PID,  # echoed
        "0200 0100 c1d2e3f4 00 00 00 00 00000000",  # SA: the allocated spi, LARVAL
        ZERO_HARD,
        ZERO_SOFT,
        CURRENT_AT_1700000000,
        "0300 0500 00 20 0000",  # ADDRESS_SRC: proto 0 (Linux writes 0 in SA messages), /32
        LNX_IN_10_0_0_2,
        "0300 0600 00 20 0000",  # ADDRESS_DST: proto 0, /32
        LNX_IN_10_0_0_1,
        "0200 1300 01 00 0000 00000000 00000000",  # X_SA2: transport, sequence 0
    ),
    msg(
        MsgType.GETSPI,
        SaType.ESP,
        Sa(0xC1D2E3F4),
        hard(),
        soft(),
        current(add=1700000000),
        src(ip4("10.0.0.2"), 32, 0),
        dst(ip4("10.0.0.1"), 32, 0),
        Sa2(Mode.TRANSPORT),
        seq=4265042310,
        pid=8080,
    ),
)

_add(
    "msg/02-update-request",
    LINUX,
    REQUEST,
    hx(
        # The 224-byte racoon UPDATE of real-clients.md §3.8.
        "02 02 00 03",  # UPDATE, ESP
        "1c00 0000",  # len 28 (224 bytes)
        RACOON_SEQ,
        RACOON_PID,
        "0200 0100 c1d2e3f4 04 00 05 0c 00000000",  # SA: replay 4, auth 5, enc 12, flags 0
        "0200 1300 01 00 0000 00000000 00000000",  # X_SA2: transport
        LNX_SRC_PEER,
        LNX_DST_US,
        KEY_ENC_K16,  # KEY_ENCRYPT (24 bytes)
        KEY_AUTH_K32_B,  # KEY_AUTH (40 bytes)
        HARD_ADD_1800,  # LIFETIME_HARD addtime 1800
        SOFT_ADD_1440,  # LIFETIME_SOFT addtime 1440
    ),
    msg(
        MsgType.UPDATE,
        SaType.ESP,
        Sa(0xC1D2E3F4, 4, 0, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC),
        Sa2(Mode.TRANSPORT),
        V_SRC_PEER,
        V_DST_US,
        V_KEY_ENC_K16,
        V_KEY_AUTH_K32_B,
        hard(add=1800),
        soft(add=1440),
        seq=4265042310,
        pid=8080,
    ),
)

_add(
    "msg/03-add-capture",
    LINUX,
    CAPTURE,
    hx(
        # real-clients.md §3.2, byte for byte: setkey -c "add 10.0.0.1 10.0.0.2 esp 0x1000 -m transport
        # -E aes-cbc 0x00112233445566778899aabbccddeeff -A hmac-sha256 <32 bytes>;"
        "02 03 00 03",  # version 2, ADD, errno 0, satype 3 ESP
        "1400 0000",  # len 20 (160 bytes), reserved 0
        "00000000 55340000",  # seq 0, pid 0x3455
        KEY_ENC_K16,  # KEY_ENCRYPT (9): len 3, bits 128, key
        KEY_AUTH_K32,  # KEY_AUTH (8): len 5, bits 256, key
        "0200 0100 00001000 00 00 05 0c 40000000",  # SA: spi 0x1000, replay 0, state 0, auth 5, enc 12, flags 0x40
        "0200 1300 01 00 0000 00000000 00000000",  # X_SA2: mode 1 transport, sequence 0, reqid 0
        LNX_SRC_10_0_0_1,  # ADDRESS_SRC: proto 255, /32, 10.0.0.1
        LNX_DST_10_0_0_2,  # ADDRESS_DST: proto 255, /32, 10.0.0.2
    ),
    msg(MsgType.ADD, SaType.ESP, *V_CAPTURE_ADD_EXTS, pid=0x3455),
)

_add(
    "msg/03-add-reply",
    LINUX,
    REPLY,
    hx(
        # Linux's reply to the captured ADD: a full state message with keys (§3.3).
        "02 03 00 03",  # ADD, ESP
        "2000 0000",  # len 32 (256 bytes)
        "00000000 55340000",  # seq 0, pid 0x3455
        "0200 0100 00001000 00 01 05 0c 00000000",  # SA: MATURE; Linux reports its own flags (none)
        ZERO_HARD,
        ZERO_SOFT,
        CURRENT_AT_1700000000,
        "0300 0500 00 20 0000",
        LNX_IN_10_0_0_1,  # ADDRESS_SRC: proto 0, /32
        "0300 0600 00 20 0000",
        LNX_IN_10_0_0_2,  # ADDRESS_DST: proto 0, /32
        KEY_AUTH_K32,
        KEY_ENC_K16,
        "0200 1300 01 00 0000 00000000 00000000",  # X_SA2: transport
    ),
    msg(
        MsgType.ADD,
        SaType.ESP,
        Sa(0x1000, 0, SaState.MATURE, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC),
        hard(),
        soft(),
        current(add=1700000000),
        src(ip4("10.0.0.1"), 32, 0),
        dst(ip4("10.0.0.2"), 32, 0),
        V_KEY_AUTH_K32,
        V_KEY_ENC_K16,
        Sa2(Mode.TRANSPORT),
        pid=0x3455,
    ),
)

LNX_GET_DELETE_BODY = hx(
    "0200 0100 00001000 00 00 00 00 40000000",  # SA: spi 0x1000, auth 0, enc 0, flags 0x40
    SA2_ANY,  # X_SA2: mode 0 (any)
    LNX_SRC_10_0_0_1,
    LNX_DST_10_0_0_2,
)

_add(
    "msg/04-delete-capture",
    LINUX,
    CAPTURE,
    hx(
        # real-clients.md §3.3 "delete 10.0.0.1 10.0.0.2 esp 0x1000": 96 bytes.
        "02 04 00 03",  # DELETE, ESP
        "0c00 0000",  # len 12 (96 bytes)
        "00000000 60340000",  # seq 0, pid 0x3460 (the pid of this run is not recorded; chosen)
        LNX_GET_DELETE_BODY,
    ),
    msg(MsgType.DELETE, SaType.ESP, V_SA_1000_CYCSEQ, Sa2(), V_SRC_10_0_0_1, V_DST_10_0_0_2, pid=0x3460),
)

_add(
    "msg/05-get-capture",
    LINUX,
    CAPTURE,
    hx(
        # real-clients.md §3.3 "get 10.0.0.1 10.0.0.2 esp 0x1000": 96 bytes, the same layout as DELETE.
        "02 05 00 03",  # GET, ESP
        "0c00 0000",  # len 12
        "00000000 60340000",  # seq 0, pid 0x3460 (chosen)
        LNX_GET_DELETE_BODY,
    ),
    msg(MsgType.GET, SaType.ESP, V_SA_1000_CYCSEQ, Sa2(), V_SRC_10_0_0_1, V_DST_10_0_0_2, pid=0x3460),
)

_add(
    "msg/05-get-reply",
    LINUX,
    REPLY,
    hx(
        # A NAT-T SA in Linux's order: SA, H, S, C, SRC, DST, keys, SA2, NAT-T.
        "02 05 00 03",  # GET, ESP
        "2600 0000",  # len 38 (304 bytes)
        "00000000 60340000",  # seq 0, pid 0x3460
        "0200 0100 00c0ffee 20 01 03 0d 00000000",  # SA: replay 32, MATURE, SHA1-HMAC, AES-CTR
        ZERO_HARD,
        ZERO_SOFT,
        CURRENT_AT_1700000000,
        "0300 0500 00 20 0000",
        LNX_IN_10_0_0_1,  # ADDRESS_SRC
        "0300 0600 00 20 0000",
        LNX_IN_10_0_0_2,  # ADDRESS_DST
        KEY_AUTH_K20,  # 160-bit HMAC-SHA1 key
        KEY_ENC_K20_B,  # 160-bit AES-CTR key + nonce
        "0200 1300 02 00 0000 00000000 01400000",  # X_SA2: tunnel, reqid 0x4001
        "0100 1400 02 000000",  # X_NAT_T_TYPE ESPINUDP
        "0100 1500 1194 0000",  # X_NAT_T_SPORT 4500
        "0100 1600 1194 0000",  # X_NAT_T_DPORT 4500
        "0300 1700 ff 20 0000 0200 0000 c0a8010a 0000000000000000",  # X_NAT_T_OA 192.168.1.10
    ),
    msg(
        MsgType.GET,
        SaType.ESP,
        Sa(0xC0FFEE, 32, SaState.MATURE, AuthAlg.SHA1HMAC, EncAlg.X_AESCTR),
        hard(),
        soft(),
        current(add=1700000000),
        src(ip4("10.0.0.1"), 32, 0),
        dst(ip4("10.0.0.2"), 32, 0),
        V_KEY_AUTH_K20,
        V_KEY_ENC_K20_B,
        Sa2(Mode.TUNNEL, 0, 0x4001),
        NatTTypeExt(NatTType.ESPINUDP),
        NatTPort(ExtType.X_NAT_T_SPORT, 4500),
        NatTPort(ExtType.X_NAT_T_DPORT, 4500),
        Address(ExtType.X_NAT_T_OA, ip4("192.168.1.10"), 32),
        pid=0x3460,
    ),
)

_add(
    "msg/06-acquire",
    LINUX,
    REPLY,
    hx(
        # The 160-byte shape racoon accepted (real-clients.md §3.8): SRC, DST, X_POLICY, PROPOSAL.
        "02 06 00 03",  # ACQUIRE, ESP
        "1400 0000",  # len 20 (160 bytes)
        "01000000 00000000",  # seq 1, pid 0
        "0300 0500 00 20 0000",
        LNX_IN_10_0_0_1,  # ADDRESS_SRC: proto 0, /32
        "0300 0600 00 20 0000",
        LNX_IN_10_0_0_2,  # ADDRESS_DST
        "0200 1200 0200 02 00 e1010000 00000080",  # X_POLICY: IPSEC, out, id 0x1e1, priority 0x80000000
        "0a00 0d00 20 000000",  # PROPOSAL: len 10 (8 + 72), replay 32
        COMB_LINUX_SHA256_AESCBC,
    ),
    msg(
        MsgType.ACQUIRE,
        SaType.ESP,
        src(ip4("10.0.0.1"), 32, 0),
        dst(ip4("10.0.0.2"), 32, 0),
        Policy(PolicyType.IPSEC, Direction.OUTBOUND, 0x1E1, 0x80000000),
        Prop(32, (V_COMB_LINUX_SHA256_AESCBC,)),
        seq=1,
    ),
)

_add(
    "msg/06-acquire-error-report",
    LINUX,
    REQUEST,
    hx(
        "02 06 6e 03",  # ACQUIRE, errno 110 (ETIMEDOUT on Linux), ESP
        "0200 0000",  # len 2
        "01000000",
        RACOON_PID,  # seq 1, pid 8080
    ),
    msg(MsgType.ACQUIRE, SaType.ESP, seq=1, pid=8080, errno=110),
)

_add(
    "msg/07-register-capture",
    LINUX,
    CAPTURE,
    hx(
        "02070000 02000000 00000000 55340000",  # real-clients.md §3.2 step 1: REGISTER, satype 0, pid 0x3455
    ),
    msg(MsgType.REGISTER, 0, pid=0x3455),
)

_add(
    "msg/07-register-reply",
    LINUX,
    REPLY,
    hx(
        # The 144-byte shape setkey accepted (real-clients.md §3.2): two lists of 7 algorithms.
        "02 07 00 00",  # REGISTER, satype 0 (echoed)
        "1200 0000",  # len 18 (144 bytes)
        "00000000 55340000",  # seq 0, pid 0x3455
        "0800 0e00 00000000",  # SUPPORTED_AUTH: len 8 (8 + 7*8)
        "02 00 8000 8000 0000",  # 2 MD5-HMAC 128..128
        "03 00 a000 a000 0000",  # 3 SHA1-HMAC 160..160
        "05 00 0001 0001 0000",  # 5 SHA2-256 256..256
        "06 00 8001 8001 0000",  # 6 SHA2-384
        "07 00 0002 0002 0000",  # 7 SHA2-512
        "08 00 a000 a000 0000",  # 8 RIPEMD160-HMAC 160..160
        "0a 00 0001 0001 0000",  # 10 SM3-256-HMAC (Linux only)
        "0800 0f00 00000000",  # SUPPORTED_ENCRYPT: len 8
        "03 08 c000 c000 0000",  # 3 3DES-CBC, ivlen 8, 192..192
        "06 08 2800 8000 0000",  # 6 CAST-CBC, ivlen 8, 40..128
        "07 08 2800 c001 0000",  # 7 Blowfish-CBC, ivlen 8, 40..448
        "0b 00 0000 0000 0000",  # 11 NULL
        "0c 10 8000 0001 0000",  # 12 AES-CBC, ivlen 16, 128..256
        "0d 08 a000 2001 0000",  # 13 AES-CTR, ivlen 8, 160..288
        "fd 10 8000 0001 0000",  # 253 Twofish-CBC (Linux only), ivlen 16, 128..256
    ),
    msg(
        MsgType.REGISTER,
        0,
        Supported(
            ExtType.SUPPORTED_AUTH,
            (
                Alg(AuthAlg.MD5HMAC, 0, 128, 128),
                Alg(AuthAlg.SHA1HMAC, 0, 160, 160),
                Alg(AuthAlg.X_SHA2_256, 0, 256, 256),
                Alg(AuthAlg.X_SHA2_384, 0, 384, 384),
                Alg(AuthAlg.X_SHA2_512, 0, 512, 512),
                Alg(AuthAlg.X_RIPEMD160HMAC, 0, 160, 160),
                Alg(AuthAlg.X_SM3_256HMAC, 0, 256, 256),
            ),
        ),
        Supported(
            ExtType.SUPPORTED_ENCRYPT,
            (
                Alg(EncAlg.DES3CBC, 8, 192, 192),
                Alg(EncAlg.X_CAST128CBC, 8, 40, 128),
                Alg(EncAlg.X_BLOWFISHCBC, 8, 40, 448),
                Alg(EncAlg.NULL, 0, 0, 0),
                Alg(EncAlg.X_AESCBC, 16, 128, 256),
                Alg(EncAlg.X_AESCTR, 8, 160, 288),
                Alg(EncAlg.X_TWOFISHCBC, 16, 128, 256),
            ),
        ),
        pid=0x3455,
    ),
)

_add(
    "msg/08-expire",
    LINUX,
    REPLY,
    hx(
        # Soft expire: SA, S, C, SRC, DST, SA2; seq 0, pid 0, no keys (§7.2).
        "02 08 00 03",  # EXPIRE, ESP
        "1400 0000",  # len 20 (160 bytes)
        "00000000 00000000",  # seq 0, pid 0
        "0200 0100 c1d2e3f4 04 02 05 0c 00000000",  # SA: replay 4, DYING
        SOFT_ADD_1440,
        "0400 0200 03000000 2c01000000000000 00f1536500000000 64f1536500000000",  # CURRENT: 3 pkts, 300 bytes
        "0300 0500 00 20 0000",
        LNX_IN_10_0_0_2,  # ADDRESS_SRC 10.0.0.2
        "0300 0600 00 20 0000",
        LNX_IN_10_0_0_1,  # ADDRESS_DST 10.0.0.1
        "0200 1300 01 00 0000 00000000 00000000",  # X_SA2
    ),
    msg(
        MsgType.EXPIRE,
        SaType.ESP,
        Sa(0xC1D2E3F4, 4, SaState.DYING, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC),
        soft(add=1440),
        current(3, 300, 1700000000, 1700000100),
        src(ip4("10.0.0.2"), 32, 0),
        dst(ip4("10.0.0.1"), 32, 0),
        Sa2(Mode.TRANSPORT),
    ),
)

_add(
    "msg/09-flush-capture",
    LINUX,
    CAPTURE,
    hx(
        "02090000 02000000 00000000 8b340000",  # real-clients.md §3.4 setkey -F: FLUSH, satype 0, pid 0x348b
    ),
    msg(MsgType.FLUSH, 0, pid=0x348B),
)

_add(
    "msg/10-dump-capture",
    LINUX,
    CAPTURE,
    hx(
        "020a0000 02000000 00000000 2d340000",  # real-clients.md §3.1 setkey -D: DUMP, satype 0, pid 0x342d
    ),
    msg(MsgType.DUMP, 0, pid=0x342D),
)

_add(
    "msg/10-dump-reply-enoent",
    LINUX,
    REPLY,
    hx(
        "02 0a 02 00 0200 0000 00000000 2d340000",  # the header alone, errno 2: setkey prints "No SAD entries."
    ),
    msg(MsgType.DUMP, 0, pid=0x342D, errno=2),
)

_add(
    "msg/10-dump-entry",
    LINUX,
    REPLY,
    hx(
        "02 0a 00 03",  # DUMP, ESP
        "2500 0000",  # len 37 (296 bytes)
        "00000000 2d340000",  # seq 0 (the last entry), pid 0x342d
        "0200 0100 00001000 00 01 05 0c 00000000",  # SA: MATURE, SHA2-256, AES-CBC
        ZERO_HARD,
        ZERO_SOFT,
        CURRENT_AT_1700000000,
        "0300 0500 00 20 0000",
        LNX_IN_10_0_0_1,  # ADDRESS_SRC
        "0300 0600 00 20 0000",
        LNX_IN_10_0_0_2,  # ADDRESS_DST
        KEY_AUTH_K32,
        KEY_ENC_K16,
        "0200 1300 01 00 0000 00000000 00000000",  # X_SA2
        "0500 1800 01 01 1c00",  # X_SEC_CTX: len 5, alg 1, doi 1, ctx_len 28
        "73797374656d5f753a6f626a6563745f723a69707365635f743a7330 00000000",  # the context + padding
    ),
    msg(
        MsgType.DUMP,
        SaType.ESP,
        Sa(0x1000, 0, SaState.MATURE, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC),
        hard(),
        soft(),
        current(add=1700000000),
        src(ip4("10.0.0.1"), 32, 0),
        dst(ip4("10.0.0.2"), 32, 0),
        V_KEY_AUTH_K32,
        V_KEY_ENC_K16,
        Sa2(Mode.TRANSPORT),
        SecCtx(1, 1, b"system_u:object_r:ipsec_t:s0"),
        pid=0x342D,
    ),
)

_add(
    "msg/11-promisc-capture",
    LINUX,
    CAPTURE,
    hx(
        # real-clients.md §3.5 setkey -x: "020b0001 02000000 ..."; the pid is not recorded (0x3470 chosen).
        "020b0001 02000000 00000000 70340000",
    ),
    msg(MsgType.X_PROMISC, 1, pid=0x3470),
)

_add(
    "msg/12-pchange",
    LINUX,
    REQUEST,
    hx(
        # Decodes; Linux has no handler and the engine answers EOPNOTSUPP.
        "02 0c 00 00 0200 0000 00000000",
        RACOON_PID,
    ),
    msg(MsgType.X_PCHANGE, pid=8080),
)

_add(
    "msg/13-spdupdate-request",
    LINUX,
    REQUEST,
    hx(
        "02 0d 00 00",  # X_SPDUPDATE
        "1700 0000",  # len 23 (184 bytes)
        "00000000 55340000",  # seq 0, pid 0x3455
        "0b00 1200 0200 01 00 00000000 00000080",  # X_POLICY len 11 (16 + 72): IPSEC, in, priority 0x80000000
        "4800 3200 02 02 0000 00000000 00000000",  # request: len 72, ESP, tunnel, require, reqid 0
        LNX_IN6_DB8_1,  # tunnel source
        LNX_IN6_DB8_2,  # tunnel destination
        "0500 0500 ff 30 0000",  # ADDRESS_SRC: any, /48
        "0a00 0000 00000000 20010db8 00010000 00000000 00000000 00000000 00000000",  # 2001:db8:1::, pad
        "0500 0600 ff 30 0000",  # ADDRESS_DST: any, /48
        "0a00 0000 00000000 20010db8 00020000 00000000 00000000 00000000 00000000",  # 2001:db8:2::, pad
    ),
    msg(
        MsgType.X_SPDUPDATE,
        0,
        Policy(
            PolicyType.IPSEC,
            Direction.INBOUND,
            0,
            0x80000000,
            0,
            (IpsecRequest(IpProto.ESP, Mode.TUNNEL, Level.REQUIRE, 0, ip6("2001:db8::1"), ip6("2001:db8::2")),),
        ),
        src(ip6("2001:db8:1::"), 48),
        dst(ip6("2001:db8:2::"), 48),
        pid=0x3455,
    ),
)

_add(
    "msg/14-spdadd-capture",
    LINUX,
    CAPTURE,
    hx(
        # real-clients.md §3.2: "spdadd 10.0.0.1 10.0.0.2 any -P out ipsec esp/transport//require;", 96 bytes.
        "02 0e 00 00",  # X_SPDADD, satype 0
        "0c00 0000",  # len 12 (96 bytes)
        "00000000 55340000",  # seq 0, pid 0x3455
        "0400 1200",  # X_POLICY: len 4 (32 bytes)
        "0200 02 00",  # type 2 IPSEC, dir 2 out, reserved
        "00000000",  # id 0
        "00000080",  # priority 0x80000000 (setkey's default)
        LNX_REQ_ESP_TRANSPORT,  # len 16 bytes, ESP, transport, require, reqid 0
        LNX_SRC_10_0_0_1,
        LNX_DST_10_0_0_2,
    ),
    msg(
        MsgType.X_SPDADD,
        0,
        Policy(PolicyType.IPSEC, Direction.OUTBOUND, 0, 0x80000000, 0, (V_REQ_ESP_TRANSPORT,)),
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        pid=0x3455,
    ),
)

_add(
    "msg/14-spdadd-fwd-request",
    LINUX,
    REQUEST,
    hx(
        # The second message of "spdadd 10.0.0.2 10.0.0.1 any -P in ...": dir 3 (FWD), real-clients.md §3.2
        # item 4; written from the captured layout.
        "02 0e 00 00 0c00 0000 00000000 55340000",  # X_SPDADD, len 12, pid 0x3455
        "0400 1200 0200 03 00 00000000 00000080",  # X_POLICY: IPSEC, dir 3 FWD, priority 0x80000000
        LNX_REQ_ESP_TRANSPORT,
        "0300 0500 ff 20 0000",
        LNX_IN_10_0_0_2,  # ADDRESS_SRC 10.0.0.2
        "0300 0600 ff 20 0000",
        LNX_IN_10_0_0_1,  # ADDRESS_DST 10.0.0.1
    ),
    msg(
        MsgType.X_SPDADD,
        0,
        Policy(PolicyType.IPSEC, Direction.FWD, 0, 0x80000000, 0, (V_REQ_ESP_TRANSPORT,)),
        src(ip4("10.0.0.2"), 32),
        dst(ip4("10.0.0.1"), 32),
        pid=0x3455,
    ),
)

_add(
    "msg/14-spdadd-reply",
    LINUX,
    REPLY,
    hx(
        # The full policy message (§8.3): SRC, DST, H, S, C, X_POLICY; reserved = refcount.
        "02 0e 00 00",  # X_SPDADD
        "1800 0200",  # len 24 (192 bytes), reserved 2
        "00000000 55340000",  # seq 0, pid 0x3455
        LNX_SRC_10_0_0_1,
        LNX_DST_10_0_0_2,
        ZERO_HARD,
        ZERO_SOFT,
        CURRENT_AT_1700000000,
        "0400 1200 0200 02 00 e1010000 00000080",  # X_POLICY: id 0x1e1 assigned, priority echoed
        LNX_REQ_ESP_TRANSPORT,
    ),
    msg(
        MsgType.X_SPDADD,
        0,
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        hard(),
        soft(),
        current(add=1700000000),
        Policy(PolicyType.IPSEC, Direction.OUTBOUND, 0x1E1, 0x80000000, 0, (V_REQ_ESP_TRANSPORT,)),
        pid=0x3455,
        reserved=2,
    ),
)

_add(
    "msg/15-spddelete-capture",
    LINUX,
    CAPTURE,
    hx(
        # real-clients.md §3.3 "spddelete 10.0.0.1 10.0.0.2 any -P out": 80 bytes.
        "02 0f 00 00",  # X_SPDDELETE, satype 0
        "0a00 0000",  # len 10 (80 bytes)
        "00000000 60340000",  # seq 0, pid 0x3460 (not recorded; chosen)
        "0200 1200 0000 02 00 00000000 00000000",  # X_POLICY 16 bytes: type 0, dir 2, id 0, priority 0
        LNX_SRC_10_0_0_1,
        LNX_DST_10_0_0_2,
    ),
    msg(
        MsgType.X_SPDDELETE,
        0,
        Policy(PolicyType.DISCARD, Direction.OUTBOUND),
        V_SRC_10_0_0_1,
        V_DST_10_0_0_2,
        pid=0x3460,
    ),
)

_add(
    "msg/16-spdget-request",
    LINUX,
    REQUEST,
    hx(
        "02 10 00 00 0400 0000 00000000 55340000",  # X_SPDGET, len 4, pid 0x3455
        "0200 1200 0000 00 00 e1010000 00000000",  # X_POLICY: id 0x1e1
    ),
    msg(MsgType.X_SPDGET, 0, Policy(PolicyType.DISCARD, Direction.ANY, 0x1E1), pid=0x3455),
)

_add(
    "msg/17-spdacquire",
    LINUX,
    REQUEST,
    hx(
        # Decodes; Linux has no handler (EOPNOTSUPP from the engine).
        "02 11 00 00 0200 0000 00000000",
        RACOON_PID,
    ),
    msg(MsgType.X_SPDACQUIRE, pid=8080),
)

_add(
    "msg/18-spddump-request",
    LINUX,
    REQUEST,
    hx(
        # setkey -DP (real-clients.md §3.1): 16 bytes, satype 0; the pid of that run is not recorded.
        "02 12 00 00 0200 0000 00000000 2e340000",  # X_SPDDUMP, pid 0x342e (chosen)
    ),
    msg(MsgType.X_SPDDUMP, 0, pid=0x342E),
)

_add(
    "msg/18-spddump-entry",
    LINUX,
    REPLY,
    hx(
        "02 12 00 00",  # X_SPDDUMP
        "1c00 0100",  # len 28 (224 bytes), refcount 1
        "00000000 2e340000",  # seq 0 (last), pid 0x342e
        "0300 0500 ff 18 0000 0200 0000 0a000100 0000000000000000",  # ADDRESS_SRC 10.0.1.0/24
        "0300 0600 ff 18 0000 0200 0000 0a000200 0000000000000000",  # ADDRESS_DST 10.0.2.0/24
        ZERO_HARD,
        ZERO_SOFT,
        CURRENT_AT_1700000000,
        "0800 1200 0200 03 00 0a010000 00ffff7f",  # X_POLICY: IPSEC, FWD, id 0x10a, priority 0x7fffff00
        "3000 3200 02 03 0000 45230100 00000000",  # request: len 48, ESP tunnel unique, reqid 0x12345
        LNX_IN_192_0_2_1,
        LNX_IN_198_51_100_1,
    ),
    msg(
        MsgType.X_SPDDUMP,
        0,
        src(ip4("10.0.1.0"), 24),
        dst(ip4("10.0.2.0"), 24),
        hard(),
        soft(),
        current(add=1700000000),
        Policy(
            PolicyType.IPSEC,
            Direction.FWD,
            0x10A,
            0x7FFFFF00,
            0,
            (IpsecRequest(IpProto.ESP, Mode.TUNNEL, Level.UNIQUE, 0x12345, ip4("192.0.2.1"), ip4("198.51.100.1")),),
        ),
        pid=0x342E,
        reserved=1,
    ),
)

_add(
    "msg/19-spdflush-request",
    LINUX,
    REQUEST,
    hx(
        "02 13 00 00 0200 0000 00000000 8b340000",  # X_SPDFLUSH (setkey -FP), satype 0, pid 0x348b
    ),
    msg(MsgType.X_SPDFLUSH, 0, pid=0x348B),
)

_add(
    "msg/20-spdsetidx-request",
    LINUX,
    REQUEST,
    hx(
        "02 14 00 00 0a00 0000 00000000 55340000",  # X_SPDSETIDX, len 10, pid 0x3455
        "0200 1200 0100 02 00 00000000 00000000",  # X_POLICY: NONE, out
        LNX_SRC_10_0_0_1,
        LNX_DST_10_0_0_2,
    ),
    msg(
        MsgType.X_SPDSETIDX, 0, Policy(PolicyType.NONE, Direction.OUTBOUND), V_SRC_10_0_0_1, V_DST_10_0_0_2, pid=0x3455
    ),
)

_add(
    "msg/21-spdexpire",
    LINUX,
    REQUEST,
    hx(
        # Linux never sends it; received, it decodes and the engine answers EOPNOTSUPP.
        "02 15 00 00 0200 0000 00000000",
        RACOON_PID,
    ),
    msg(MsgType.X_SPDEXPIRE, pid=8080),
)

_add(
    "msg/22-spddelete2-request",
    LINUX,
    REQUEST,
    hx(
        "02 16 00 00 0400 0000 00000000 55340000",  # X_SPDDELETE2, len 4, pid 0x3455
        "0200 1200 0000 00 00 e1010000 00000000",  # X_POLICY: id 0x1e1
    ),
    msg(MsgType.X_SPDDELETE2, 0, Policy(PolicyType.DISCARD, Direction.ANY, 0x1E1), pid=0x3455),
)

_add(
    "msg/23-nat-t-new-mapping",
    LINUX,
    REPLY,
    hx(
        # §3.19: SA (SPI only), SRC (old address), NAT_T_SPORT (old port), DST (new address), NAT_T_DPORT.
        "02 17 00 03",  # X_NAT_T_NEW_MAPPING (Linux only), ESP
        "0c00 0000",  # len 12 (96 bytes)
        "05000000 00000000",  # seq 5, pid 0
        "0200 0100 00c0ffee 00 00 00 00 00000000",  # SA: spi only
        "0300 0500 00 20 0000 0200 0000 c0a8010a 0000000000000000",  # ADDRESS_SRC 192.168.1.10
        "0100 1500 1194 0000",  # X_NAT_T_SPORT 4500
        "0300 0600 00 20 0000",
        LNX_IN_203_0_113_5,  # ADDRESS_DST 203.0.113.5
        "0100 1600 ee48 0000",  # X_NAT_T_DPORT 61000
    ),
    msg(
        MsgType.X_NAT_T_NEW_MAPPING,
        SaType.ESP,
        Sa(0xC0FFEE),
        src(ip4("192.168.1.10"), 32, 0),
        NatTPort(ExtType.X_NAT_T_SPORT, 4500),
        dst(ip4("203.0.113.5"), 32, 0),
        NatTPort(ExtType.X_NAT_T_DPORT, 61000),
        seq=5,
    ),
)

_add(
    "msg/24-migrate-request",
    LINUX,
    REQUEST,
    hx(
        # §3.19: the selector, X_POLICY with (old, new) tunnel request pairs, and KMADDRESS.
        "02 18 00 00",  # X_MIGRATE (Linux only), satype 0
        "1b00 0000",  # len 27 (216 bytes)
        "00000000",
        RACOON_PID,  # seq 0, pid 8080
        "0500 1900 00000000",  # X_KMADDRESS len 5, reserved
        LNX_IN_10_0_0_1,  # local
        LNX_IN_10_0_0_2,  # remote
        "0300 0500 ff 10 0000 0200 0000 0a010000 0000000000000000",  # ADDRESS_SRC 10.1.0.0/16
        "0300 0600 ff 10 0000 0200 0000 0a020000 0000000000000000",  # ADDRESS_DST 10.2.0.0/16
        "0e00 1200 0200 02 00 00000000 00000000",  # X_POLICY len 14 (16 + 2*48): IPSEC, out
        "3000 3200 02 02 0000 05000000 00000000",  # old: len 48, ESP tunnel require, reqid 5
        LNX_IN_192_0_2_1,
        LNX_IN_198_51_100_1,
        "3000 3200 02 02 0000 05000000 00000000",  # new: len 48, ESP tunnel require, reqid 5
        LNX_IN_192_0_2_1,
        LNX_IN_203_0_113_5,
    ),
    msg(
        MsgType.X_MIGRATE,
        0,
        KmAddress(ip4("10.0.0.1"), ip4("10.0.0.2")),
        src(ip4("10.1.0.0"), 16),
        dst(ip4("10.2.0.0"), 16),
        Policy(
            PolicyType.IPSEC,
            Direction.OUTBOUND,
            0,
            0,
            0,
            (
                IpsecRequest(IpProto.ESP, Mode.TUNNEL, Level.REQUIRE, 5, ip4("192.0.2.1"), ip4("198.51.100.1")),
                IpsecRequest(IpProto.ESP, Mode.TUNNEL, Level.REQUIRE, 5, ip4("192.0.2.1"), ip4("203.0.113.5")),
            ),
        ),
        pid=8080,
    ),
)
