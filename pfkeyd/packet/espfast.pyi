# The compiled module pfkeyd/packet/espfast.c: ESP's AEAD fast path over libcrypto.
from typing import final

from typing_extensions import Buffer

AES_GCM: int
CHACHA20_POLY1305: int
OPEN_BADAUTH: int
OPEN_BADILEN: int
OPEN_BADPAD: int
OPEN_DUMMY: int

@final
class Aead:
    def __init__(self, kind: int, key: Buffer, salt: Buffer) -> None: ...

@final
class EspV4:
    def __init__(self, aead: Aead, spi: int, esn: bool, zero_pad: bool) -> None: ...
    def protect(self, datagram: Buffer, seq: int, iv: int, /) -> bytes | None: ...
    def tunnel(self, outer: Buffer, inner: Buffer, seq: int, iv: int, /) -> bytes: ...
    def peek(self, datagram: Buffer, /) -> int | None: ...
    def open(self, datagram: Buffer, seq_hi: int, /) -> bytes | int: ...

def ipv4_ok(datagram: Buffer, /) -> bool: ...
