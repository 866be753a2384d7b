"""Script in, PF_KEY bytes out, compared with hex vectors written by hand.

The linux vectors marked "captured" are the bytes a Linux-built ipsec-tools
setkey sent (real-clients.md §3); the others are written from the structure
layouts (linux: sockaddr without sa_len, 16-byte ipsecrequest; freebsd:
sa_len + family 2/28, 8-byte ipsecrequest) and from the order in which each
setkey's parse.y appends extensions.  Every vector is the whole message.
"""

from __future__ import annotations

import socket

import pytest

from pfkeyd.wire import decode, encode
from setkey.build import build, deleteall_deletes, needs_dump
from setkey.check import check
from setkey.errors import Source
from setkey.parser import parse
from setkey.resolve import Resolver, resolve

PID = 0x3455
K16 = "00112233445566778899aabbccddeeff"
K32 = K16 + K16


def h(text: str) -> bytes:
    """Hex with blanks, newlines and # comments."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()).replace(" ", ""))


def messages(script: str, dialect: str, **kw: bool) -> list[bytes]:
    commands = parse(script)
    check(commands, dialect, Source(script))
    resolver = Resolver(getaddrinfo=_no_dns)
    return [
        encode(m, dialect)
        for item in resolve(commands, Source(script), resolver=resolver)
        for m in build(item, dialect, PID, **kw)
    ]


def _no_dns(*args: object) -> list[tuple[object, ...]]:
    raise socket.gaierror(socket.EAI_NONAME, "no DNS in tests")


# Address extensions: len 3 units, type, proto 255, /32, reserved; sockaddr_in.
L_SRC = "03000500 ff200000  02000000 0a000001 00000000 00000000"  # linux 10.0.0.1
L_DST = "03000600 ff200000  02000000 0a000002 00000000 00000000"  # linux 10.0.0.2
F_SRC = "03000500 ff200000  10020000 0a000001 00000000 00000000"  # freebsd 10.0.0.1
F_DST = "03000600 ff200000  10020000 0a000002 00000000 00000000"  # freebsd 10.0.0.2

VECTORS: list[tuple[str, str, str, list[str]]] = [
    (
        "captured: add (real-clients.md 3.2, 160 bytes)",
        "linux",
        f"add 10.0.0.1 10.0.0.2 esp 0x1000 -m transport -E aes-cbc 0x{K16} -A hmac-sha256 0x{K32};",
        [
            f"""
        02030003 14000000 00000000 55340000   # ADD esp, len 20
        03000900 80000000 {K16}               # KEY_ENCRYPT 128 bits
        05000800 00010000 {K32}               # KEY_AUTH 256 bits
        02000100 00001000 0000050c 40000000   # SA spi 0x1000, auth 5, enc 12, flags CYCSEQ
        02001300 01000000 00000000 00000000   # X_SA2 transport
        {L_SRC}
        {L_DST}"""
        ],
    ),
    (
        "captured: spdadd out (real-clients.md 3.2, 96 bytes)",
        "linux",
        "spdadd 10.0.0.1 10.0.0.2 any -P out ipsec esp/transport//require;",
        [
            f"""
        020e0000 0c000000 00000000 55340000   # X_SPDADD, len 12
        04001200 02000200 00000000 00000080   # X_POLICY ipsec out, id 0, priority 0x80000000
        10003200 01020000 00000000 00000000   # request: 16 bytes, esp transport require
        {L_SRC}
        {L_DST}"""
        ],
    ),
    (
        "captured: spdadd in and its fwd copy (real-clients.md 3.2)",
        "linux",
        "spdadd 10.0.0.2 10.0.0.1 any -P in ipsec esp/transport//require;",
        [
            f"""
        020e0000 0c000000 00000000 55340000
        04001200 02000100 00000000 00000080   # dir in
        10003200 01020000 00000000 00000000
        {L_SRC.replace("0a000001", "0a000002")}
        {L_DST.replace("0a000002", "0a000001")}""",
            f"""
        020e0000 0c000000 00000000 55340000
        04001200 02000300 00000000 00000080   # dir fwd
        10003200 01020000 00000000 00000000
        {L_SRC.replace("0a000001", "0a000002")}
        {L_DST.replace("0a000002", "0a000001")}""",
        ],
    ),
    (
        "the fwd copy turns a unique first request into require with reqid 0",
        "linux",
        "spdadd 10.0.0.1 10.0.0.2 any -P in ipsec esp/transport//unique:5 ah/transport//unique:6;",
        [
            f"""
        020e0000 0e000000 00000000 55340000   # len 14
        06001200 02000100 00000000 00000080
        10003200 01030000 05000000 00000000   # esp unique reqid 5
        10003300 01030000 06000000 00000000   # ah unique reqid 6
        {L_SRC}
        {L_DST}""",
            f"""
        020e0000 0e000000 00000000 55340000
        06001200 02000300 00000000 00000080
        10003200 01020000 00000000 00000000   # require, reqid 0
        10003300 01030000 06000000 00000000   # the second request is left alone
        {L_SRC}
        {L_DST}""",
        ],
    ),
    (
        "captured shapes: get and delete (real-clients.md 3.3, 96 bytes)",
        "linux",
        "get 10.0.0.1 10.0.0.2 esp 0x1000; delete 10.0.0.1 10.0.0.2 esp 0x1000;",
        [
            f"""
        02050003 0c000000 00000000 55340000   # GET
        02000100 00001000 00000000 40000000   # SA: auth 0, enc 0, flags 0x40
        02001300 00000000 00000000 00000000   # X_SA2 mode any
        {L_SRC}
        {L_DST}""",
            f"""
        02040003 0c000000 00000000 55340000   # DELETE
        02000100 00001000 00000000 40000000
        02001300 00000000 00000000 00000000
        {L_SRC}
        {L_DST}""",
        ],
    ),
    (
        "captured shape: spddelete (real-clients.md 3.3, 80 bytes)",
        "linux",
        "spddelete 10.0.0.1 10.0.0.2 any -P out;",
        [
            f"""
        020f0000 0a000000 00000000 55340000   # X_SPDDELETE, len 10
        02001200 00000200 00000000 00000000   # X_POLICY type 0, out, priority 0, no request
        {L_SRC}
        {L_DST}"""
        ],
    ),
    (
        "captured shapes: dump, spddump, flush, spdflush (16 bytes)",
        "linux",
        "dump esp; spddump; flush esp; spdflush; flush; dump;",
        [
            "020a0003 02000000 00000000 55340000",
            "02120000 02000000 00000000 55340000",
            "02090003 02000000 00000000 55340000",
            "02130000 02000000 00000000 55340000",
            "02090000 02000000 00000000 55340000",
            "020a0000 02000000 00000000 55340000",
        ],
    ),
    (
        "esp-udp: NAT-T type, original address, then the hosts' ports",
        "linux",
        f'add 10.0.1.2[4500] 20.0.0.2 esp-udp 192.0.2.9 10000 -E rijndael-cbc "{"0123456789abcdef"}";',
        [
            """
        02030003 15000000 00000000 55340000   # ADD esp, len 21
        03000900 80000000 30313233 34353637 38396162 63646566   # KEY_ENCRYPT "0123456789abcdef"
        02000100 00002710 0000000c 40000000   # SA spi 10000, enc 12
        02001300 00000000 00000000 00000000
        01001400 02000000                     # X_NAT_T_TYPE ESPINUDP
        03001700 ff200000 02000000 c0000209 00000000 00000000   # X_NAT_T_OA 192.0.2.9
        03000500 ff200000 02001194 0a000102 00000000 00000000   # SRC 10.0.1.2 port 4500
        03000600 ff200000 02000000 14000002 00000000 00000000   # DST 20.0.0.2
        01001500 11940000                     # SPORT 4500
        01001600 11940000                     # DPORT 4500 (port 0 -> 4500)
    """
        ],
    ),
    (
        "-ctx and lifetimes: SEC_CTX after the lifetimes, label with its NUL",
        "linux",
        'add 10.0.0.1 10.0.0.2 esp 0x1000 -lh 3600 -bs 1000 -ctx 1 2 "lab" -E null;',
        [
            f"""
        02030003 17000000 00000000 55340000   # len 23
        01000900 00000000                     # KEY_ENCRYPT 0 bits: ipsec-tools' key-less -E null
        04000300 00000000 00000000 00000000 100e0000 00000000 00000000 00000000   # HARD addtime 3600
        04000400 00000000 e8030000 00000000 00000000 00000000 00000000 00000000   # SOFT bytes 1000
        02001800 02010400 6c616200 00000000   # X_SEC_CTX alg 2, doi 1, len 4, "lab\\0"
        02000100 00001000 0000000b 40000000   # SA enc 11 (null)
        02001300 00000000 00000000 00000000
        {L_SRC}
        {L_DST}"""
        ],
    ),
    (
        "spdadd with -ctx, a priority and a tunnel",
        "linux",
        'spdadd 10.0.0.0/24[any] 10.0.1.0/24[80] tcp -ctx 1 1 "x" -P out prio high + 1 ipsec '
        "esp/tunnel/192.0.2.1[4500]-192.0.2.2[4501]/unique:3;",
        [
            """
        020e0000 12000000 00000000 55340000   # len 18
        08001200 02000200 00000000 ffffff3f   # ipsec out, priority 0x3fffffff
        30003200 02030000 03000000 00000000   # request 48 bytes: esp tunnel unique reqid 3
        02001194 c0000201 00000000 00000000   # 192.0.2.1[4500]
        02001195 c0000202 00000000 00000000   # 192.0.2.2[4501]
        03000500 06180000 02000000 0a000000 00000000 00000000   # SRC tcp /24
        03000600 06180000 02000050 0a000100 00000000 00000000   # DST tcp /24 port 80
        02001800 01010200 78000000 00000000   # X_SEC_CTX "x\\0"
    """
        ],
    ),
    (
        "icmp6 type,code ride in the ports; IPv6 prefixes",
        "linux",
        "spdadd ::/0 fe80::1%3/64 icmp6 135,0 -P in none;",
        [
            """
        020e0000 0e000000 00000000 55340000   # len 14
        02001200 01000100 00000000 00000080   # none in
        05000500 3a000000 0a000087 00000000 00000000 00000000 00000000 00000000 00000000 00000000
        05000600 3a400000 0a000000 00000000 fe800000 00000000 00000000 00000001 03000000 00000000
    """,
            """
        020e0000 0e000000 00000000 55340000
        02001200 01000300 00000000 00000080   # the fwd copy
        05000500 3a000000 0a000087 00000000 00000000 00000000 00000000 00000000 00000000 00000000
        05000600 3a400000 0a000000 00000000 fe800000 00000000 00000000 00000001 03000000 00000000
    """,
        ],
    ),
    (
        "freebsd add: BSD sockaddrs, no key extension for -A null",
        "freebsd",
        f"add 10.0.0.1 10.0.0.2 ah 0x1000 -A hmac-sha2-256 0x{K32};",
        [
            f"""
        02030002 11000000 00000000 55340000   # ADD ah, len 17
        05000800 00010000 {K32}
        02000100 00001000 00000500 40000000
        02001300 00000000 00000000 00000000
        {F_SRC}
        {F_DST}"""
        ],
    ),
    (
        "freebsd spdadd: 8-byte ipsecrequest, priority 0",
        "freebsd",
        "spdadd 10.0.0.1 10.0.0.2 any -P out ipsec esp/transport//require;",
        [
            f"""
        020e0000 0b000000 00000000 55340000   # len 11
        03001200 02000200 00000000 00000000   # ipsec out, scope 0, priority 0
        08003200 01020000                     # request 8 bytes, reqid 0 (16 bits)
        {F_SRC}
        {F_DST}"""
        ],
    ),
    (
        "freebsd tunnel request: sa_len sockaddrs inside the request",
        "freebsd",
        "spdadd 10.0.0.1 10.0.0.2 any -P in ipsec esp/tunnel/192.168.0.1-192.168.1.2/unique:7;",
        [
            f"""
        020e0000 0f000000 00000000 55340000   # len 15, no fwd copy
        07001200 02000100 00000000 00000000
        28003200 02030700                     # request 40 bytes, esp tunnel unique reqid 7
        10020000 c0a80001 00000000 00000000
        10020000 c0a80102 00000000 00000000
        {F_SRC}
        {F_DST}"""
        ],
    ),
    (
        "freebsd -natt: TYPE, OAI, SPORT, OAR, DPORT, FRAG before the addresses",
        "freebsd",
        f"add 10.0.0.1 10.0.0.2 esp 0x1000 -natt 10.0.0.1 [4500] 10.0.0.2 [4501] -natt_mtu 1200 "
        f"-E aes-gcm-16 0x{K16}00112233;",
        [
            f"""
        02030003 1a000000 00000000 55340000   # len 26
        04000900 a0000000 {K16} 00112233 00000000   # KEY_ENCRYPT 160 bits
        02000100 00001000 00000014 40000000   # enc 20 (aes-gcm-16)
        02001300 00000000 00000000 00000000
        01001400 02000000                     # NAT_T_TYPE
        03001700 00200000 10020000 0a000001 00000000 00000000   # OAI, proto 0
        01001500 11940000                     # SPORT 4500
        03001800 00200000 10020000 0a000002 00000000 00000000   # OAR, proto 0
        01001600 11950000                     # DPORT 4501
        01001900 b0040000                     # NAT_T_FRAG 1200
        {F_SRC}
        {F_DST}"""
        ],
    ),
    (
        "freebsd: a replay window over 255 bytes goes in SA_REPLAY, in packets",
        "freebsd",
        'add 10.0.0.1 10.0.0.2 esp 0x1000 -r 300 -f random-pad -f nocyclic-seq -esn -E null "";',
        [
            f"""
        02030003 0e000000 00000000 55340000   # len 14
        01000900 00000000                     # KEY_ENCRYPT "" (FreeBSD's -E null wants a key)
        02000100 00001000 ff00000b 00050000   # replay 255, enc 11, flags PRAND|ESN, no CYCSEQ
        02001300 00000000 00000000 00000000
        01001a00 60090000                     # X_SA_REPLAY 2400 packets
        {F_SRC}
        {F_DST}"""
        ],
    ),
    (
        "freebsd deleteall: one DELETE without an SA extension",
        "freebsd",
        "deleteall 10.0.0.1 10.0.0.2 esp;",
        [
            f"""
        02040003 08000000 00000000 55340000
        {F_SRC}
        {F_DST}"""
        ],
    ),
    (
        "ipcomp: the compression algorithm in sadb_sa_encrypt, -R sets RAWCPI",
        "freebsd",
        "add 10.0.0.1 10.0.0.2 ipcomp 30001 -m tunnel -u 4 -C deflate -R;",
        [
            f"""
        02030009 0c000000 00000000 55340000
        02000100 00007531 00000002 c0000000   # cpi 30001, deflate, flags CYCSEQ|RAWCPI
        02001300 02000000 00000000 04000000   # tunnel, reqid 4
        {F_SRC}
        {F_DST}"""
        ],
    ),
    (
        "getspi with a fixed SPI asks with SPIRANGE",
        "linux",
        "getspi 10.0.0.1 10.0.0.2 esp 0x1000 -m transport;",
        [
            f"""
        02010003 0e000000 00000000 55340000
        02001000 00100000 00100000 00000000   # SPIRANGE 0x1000-0x1000
        02000100 00001000 00000000 40000000
        02001300 01000000 00000000 00000000
        {L_SRC}
        {L_DST}"""
        ],
    ),
]


@pytest.mark.parametrize(("what", "dialect", "script", "vectors"), VECTORS, ids=[v[0] for v in VECTORS])
def test_messages_match_the_vectors(what: str, dialect: str, script: str, vectors: list[str]) -> None:
    got = messages(script, dialect)
    assert [m.hex() for m in got] == [h(v).hex() for v in vectors]
    for raw in got:
        decode(raw, dialect)  # and the codec reads them back as requests


def test_kernel_mode_sends_no_fwd_copy() -> None:
    assert len(messages("spdadd 10.0.0.2 10.0.0.1 any -P in none;", "linux", fwd_copies=False)) == 1


def test_every_address_pair_of_the_same_family_gets_a_message() -> None:
    dns = {"two.example": ["10.0.0.7", "10.0.0.8", "::7"]}

    def getaddrinfo(host: str, *args: object) -> list[tuple[object, ...]]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, 2, 17, "", (a, 0, 0, 0) if ":" in a else (a, 0))
            for a in dns[host]
        ]

    script = "add two.example 10.0.0.2 esp 0x1000 -E null;"
    (item,) = resolve(parse(script), resolver=Resolver(getaddrinfo=getaddrinfo))
    sent = build(item, "linux", PID)
    assert [str(m.src.addr) if m.src else None for m in sent] == ["10.0.0.7", "10.0.0.8"]


def test_linux_deleteall_dumps_then_deletes_the_matching_spis() -> None:
    script = "deleteall 10.0.0.2 10.0.0.1 esp;"
    (item,) = resolve(parse(script))
    assert needs_dump(item.command, "linux") and not needs_dump(item.command, "freebsd")
    (dump,) = build(item, "linux", PID)
    assert encode(dump, "linux") == h("020a0003 02000000 00000000 55340000")

    def entry(spi: int, src: str, dst: str, seq: int) -> bytes:
        return h(f"""
            020a0003 0c000000 {seq:02x}000000 55340000   # a DUMP reply (header with seq)
            02000100 {spi:08x} 0000050c 40000100   # SA, mature
            02001300 01000000 00000000 00000000
            03000500 ff200000 02000000 {src} 00000000 00000000
            03000600 ff200000 02000000 {dst} 00000000 00000000""")

    replies = [
        decode(entry(0x1001, "0a000002", "0a000001", 2), "linux", request=False),
        decode(entry(0x2002, "0a000001", "0a000002", 1), "linux", request=False),  # the other way
        decode(entry(0x3003, "0a000002", "0a000001", 0), "linux", request=False),
    ]
    deletes = deleteall_deletes(item, replies, "linux", PID)
    assert [encode(m, "linux").hex() for m in deletes] == [
        h(f"""
        02040003 0c000000 00000000 55340000
        02000100 {spi} 00000000 40000000
        02001300 00000000 00000000 00000000
        03000500 ff200000 02000000 0a000002 00000000 00000000
        03000600 ff200000 02000000 0a000001 00000000 00000000""").hex()
        for spi in ("00001001", "00003003")
    ]


def test_exit_sends_nothing() -> None:
    assert messages("exit;", "linux") == []
