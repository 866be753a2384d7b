"""Malformed datagrams are answered as each dialect's kernel answers them, and the
connection stays usable (reference §1.3, §1.4, §1.5)."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

import pytest

from pfkeyd.wire import Dialect, ExtType, Key, Message, MsgType, SaType, encode
from tests.server.peers import Daemon, add_msg, addr

LINUX, FREEBSD = Dialect.LINUX, Dialect.FREEBSD
PID = 4242
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux


def flush(dialect: Dialect) -> bytes:
    return encode(Message(MsgType.FLUSH, 0, 5, PID), dialect)


def getspi(dialect: Dialect, satype: int = SaType.ESP) -> bytes:
    return encode(Message(MsgType.GETSPI, satype, 5, PID, exts=(
        addr(ExtType.ADDRESS_SRC, "10.0.0.1"), addr(ExtType.ADDRESS_DST, "10.0.0.2"))), dialect)


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def oversized(dialect: Dialect) -> bytes:
    msg = add_msg(0x1000).replace(pid=PID)
    msg = msg.replace(exts=(*msg.exts[:4], Key(ExtType.KEY_AUTH, bytes(3000))))
    return encode(msg, dialect)


Case = tuple[str, Dialect, Callable[[Dialect], bytes], str | None, int]

CASES: list[Case] = [
    ("bsd-bad-version", FREEBSD, lambda d: patched(flush(d), 0, b"\x03"), "echo", errno.EINVAL),
    ("bsd-bad-type", FREEBSD, lambda d: patched(flush(d), 1, b"\x17"), "echo", errno.EINVAL),
    ("bsd-unspec-satype", FREEBSD, lambda d: getspi(d, SaType.UNSPEC), "echo", errno.EINVAL),
    ("bsd-len-mismatch", FREEBSD, lambda d: patched(flush(d), 4, struct.pack("=H", 3)), None, errno.EINVAL),
    ("bsd-short", FREEBSD, lambda d: flush(d)[:8], None, errno.EINVAL),
    ("bsd-empty", FREEBSD, lambda d: b"", None, errno.EINVAL),
    ("bsd-kmprivate-ext", FREEBSD, lambda d: patched(getspi(d), 18, struct.pack("=H", 17)), None, errno.EINVAL),
    ("bsd-oversized", FREEBSD, oversized, None, errno.ENOBUFS),
    ("linux-bad-version", LINUX, lambda d: patched(flush(d), 0, b"\x03"), None, errno.EINVAL),
    ("linux-reserved", LINUX, lambda d: patched(flush(d), 6, b"\x01"), None, errno.EINVAL),
    ("linux-len-mismatch", LINUX, lambda d: patched(flush(d), 4, struct.pack("=H", 3)), None, errno.EMSGSIZE),
    ("linux-empty", LINUX, lambda d: b"", None, errno.EMSGSIZE),
    ("linux-ext-type-0", LINUX, lambda d: patched(getspi(d), 18, struct.pack("=H", 0)), "header", errno.EINVAL),
    ("linux-oversized", LINUX, oversized, None, errno.EMSGSIZE),
]


@pytest.mark.parametrize(("name", "dialect", "make", "answer", "err"), CASES, ids=[c[0] for c in CASES])
async def test_malformed_datagram_is_answered_as_the_kernel_would_and_the_socket_stays_usable(
    daemon: Daemon, name: str, dialect: Dialect, make: Callable[[Dialect], bytes], answer: str | None, err: int
) -> None:
    peer = await daemon.connect(dialect, pid=PID)
    data = make(dialect)
    await peer.send_raw(data)
    if answer is None:
        assert await peer.quiet()
        assert daemon.engine.stats.drops["malformed_no_reply"] == 1
    else:
        reply = await peer.recv_raw()
        if answer == "echo":  # FreeBSD: the whole request with errno set
            assert reply == data[:2] + bytes([err]) + data[3:]
        else:  # Linux: the header alone, len 2
            assert len(reply) == 16
            assert reply[2] == err and struct.unpack_from("=H", reply, 4) == (2,)
            assert reply[8:16] == data[8:16]
        assert await peer.quiet()
    assert daemon.engine.stats.errors[err] == 1
    reply = await peer.request(Message(MsgType.FLUSH, 0, 6))
    assert (reply.type, reply.seq, reply.errno) == (MsgType.FLUSH, 6, 0)


@pytest.mark.parametrize("dialect", [LINUX, FREEBSD])
async def test_a_datagram_longer_than_any_pfkey_message_is_dropped_and_the_socket_stays_usable(
    daemon: Daemon, dialect: Dialect
) -> None:
    """More than 65535 units cannot be a PF_KEY message: both kernels fail such a
    send().  The daemon reads the datagram's true length and answers nothing."""
    peer = await daemon.connect(dialect, pid=PID)
    size = 0xFFFF * 8 + 8
    try:
        peer.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * size)
    except PermissionError:
        pytest.skip("SO_SNDBUFFORCE needs CAP_NET_ADMIN")
    await peer.send_raw(flush(dialect) + bytes(size - 16))
    assert await peer.quiet()
    assert daemon.engine.stats.drops["malformed_no_reply"] == 1
    assert daemon.engine.stats.errors[errno.EMSGSIZE if dialect is LINUX else errno.EINVAL] == 1
    reply = await peer.request(Message(MsgType.FLUSH, 0, 6))
    assert (reply.type, reply.seq, reply.errno) == (MsgType.FLUSH, 6, 0)
