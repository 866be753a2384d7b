# The compiled module pfkeyd/packet/espfast.c: ESP's AEAD fast path over libcrypto.
from typing import Any, Protocol, final

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
def tun_frames(frame: Buffer, /) -> list[bytes] | None: ...

ITEM_FD: int
ITEM_TUN: int
ITEM_ESP: int
ITEM_SEND: int
ITEM_WRITE: int
ITEM_ACCEPT: int
ITEM_OPENED: int

class _FileLike(Protocol):
    def fileno(self) -> int: ...

@final
class Loop:
    def __init__(
        self,
        tun: int | _FileLike,
        receiver: int | _FileLike,
        sender: int | _FileLike,
        esp_counts: dict[str, int],
        io_counts: dict[str, int],
        watched: tuple[tuple[object, str], ...],
        *,
        vnet: bool = False,
    ) -> None: ...
    def watch(self, fd: int | _FileLike, /) -> None: ...
    def reset(self, stamp: tuple[object, ...], /) -> None: ...
    def add_out(
        self,
        key: bytes,
        esp: EspV4,
        state: object,
        src: Buffer,
        dst: Buffer,
        ttl: int,
        dfbit: int,
        ecn: int,
        wrap_mask: int,
        /,
    ) -> bool: ...
    def add_in(self, spi: int, esp: EspV4, state: object, bound: object, dst: Buffer, /) -> bool: ...
    def allow_in(self, key: bytes, /) -> bool: ...
    def wait(self, timeout: float, /) -> list[tuple[int, Any, Any, Any]]: ...
    def close(self) -> None: ...
    @property
    def holding(self) -> bool: ...
    @property
    def fast_out(self) -> int: ...
    @property
    def fast_in(self) -> int: ...
    @property
    def sizes(self) -> tuple[int, int, int]: ...
    @property
    def stale(self) -> bool: ...
