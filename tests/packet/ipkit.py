"""Shared helpers of the ip helper's packet tests: SAs, datagrams, scapy's names."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from pfkeyd.packet import crypto
from pfkeyd.packet.counters import Drop
from pfkeyd.packet.runtime import SaRuntime
from pfkeyd.packet.sa import TransformSA
from pfkeyd.wire.constants import AuthAlg, EncAlg, Mode, SaFlag

ESP, AH, IPCOMP = 50, 51, 108

OUTER4 = (ipaddress.IPv4Address("192.0.2.1").packed, ipaddress.IPv4Address("192.0.2.2").packed)
OUTER6 = (ipaddress.IPv6Address("2001:db8::1").packed, ipaddress.IPv6Address("2001:db8::2").packed)

#: Our authentication id -> (scapy's name, key length) for the MACs both implement.
SCAPY_AUTH: dict[int, tuple[str, int]] = {
    AuthAlg.MD5HMAC: ("HMAC-MD5-96", 16),
    AuthAlg.SHA1HMAC: ("HMAC-SHA1-96", 20),
    AuthAlg.X_SHA2_256: ("SHA2-256-128", 32),
    AuthAlg.X_SHA2_384: ("SHA2-384-192", 48),
    AuthAlg.X_SHA2_512: ("SHA2-512-256", 64),
}

#: Our encryption id -> (scapy's name, key length with salt) for the ciphers both implement.
SCAPY_ENC: dict[int, tuple[str, int]] = {
    EncAlg.NULL: ("NULL", 0),
    EncAlg.X_AESCBC: ("AES-CBC", 16),
    EncAlg.X_AESCTR: ("AES-CTR", 20),
    EncAlg.X_AESGCM16: ("AES-GCM", 20),
    EncAlg.X_CHACHA20POLY1305: ("CHACHA20-POLY1305", 36),
    EncAlg.X_AESGMAC: ("AES-NULL-GMAC", 20),
    EncAlg.DESCBC: ("DES", 8),
    EncAlg.DES3CBC: ("3DES", 24),
    EncAlg.X_CAST128CBC: ("CAST", 16),
    EncAlg.X_BLOWFISHCBC: ("Blowfish", 16),
}


def key(n: int, seed: int = 1) -> bytes:
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(n))


def ah_sa(
    auth: int,
    *,
    mode: int = Mode.TRANSPORT,
    v6: bool = False,
    window: int = 64,
    flags: int = 0,
    spi: int = 0x1234,
    cleartos: bool = True,
    offsetmask: int = 0,
) -> TransformSA:
    src, dst = OUTER6 if v6 else OUTER4
    klen = SCAPY_AUTH[auth][1] if auth in SCAPY_AUTH else 16
    return TransformSA(
        AH,
        spi,
        mode,
        src,
        dst,
        flags=flags,
        window=window,
        auth_id=auth,
        mac=crypto.mac(auth, key(klen)),
        ah_cleartos=cleartos,
        ah_offsetmask=offsetmask,
    )


def runtime(sa: TransformSA) -> SaRuntime:
    return SaRuntime.for_sa(sa.window, esn=sa.esn, cycseq=sa.cycseq)


def esn_flag() -> int:
    return int(SaFlag.X_ESN)


def udp4(
    payload: bytes = b"hello over ipsec" * 4, tos: int = 0, src: str = "192.0.2.1", dst: str = "192.0.2.2"
) -> bytes:
    return bytes(IP(src=src, dst=dst, tos=tos, id=0x4242, flags="DF") / UDP(sport=1000, dport=2000) / Raw(payload))


def udp6(payload: bytes = b"hello over ipsec" * 4, src: str = "2001:db8::1", dst: str = "2001:db8::2") -> bytes:
    return bytes(IPv6(src=src, dst=dst, tc=0x20, fl=0xBEEF) / UDP(sport=1000, dport=2000) / Raw(payload))


def inner4(payload: bytes = b"inner datagram" * 5) -> bytes:
    return bytes(IP(src="10.1.0.1", dst="10.2.0.1", id=9) / UDP(sport=5, dport=6) / Raw(payload))


def inner6(payload: bytes = b"inner datagram" * 5) -> bytes:
    return bytes(IPv6(src="fd00:1::1", dst="fd00:2::1") / UDP(sport=5, dport=6) / Raw(payload))


def sent(result: bytes | Drop) -> bytes:
    """The datagram a protect() built, failing the test on a drop."""
    assert isinstance(result, bytes), result
    return result
