"""Malformed datagrams are answered as each dialect's kernel answers them, and the
connection stays usable (reference §1.3, §1.4, §1.5).  Where the kernel fails the
send() itself, pfkeyd answers with the header alone carrying the send()'s errno
(issue 10, item 9): its client must not wait for a reply that never comes."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

import pytest
import trio
import trio.testing

from pfkeyd.wire import HEADER, Dialect, ExtType, Key, Message, MsgType, SaType, decode, encode
from tests.server.peers import Daemon, add_msg, addr

LINUX, FREEBSD = Dialect.LINUX, Dialect.FREEBSD
PID = 4242
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux


def flush(dialect: Dialect) -> bytes:
    return encode(Message(MsgType.FLUSH, 0, 5, PID), dialect)


def getspi(dialect: Dialect, satype: int = SaType.ESP) -> bytes:
    return encode(
        Message(
            MsgType.GETSPI,
            satype,
            5,
            PID,
            exts=(addr(ExtType.ADDRESS_SRC, "10.0.0.1"), addr(ExtType.ADDRESS_DST, "10.0.0.2")),
        ),
        dialect,
    )


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def oversized(dialect: Dialect) -> bytes:
    msg = add_msg(0x1000).replace(pid=PID)
    msg = msg.replace(exts=(*msg.exts[:4], Key(ExtType.KEY_AUTH, bytes(3000))))
    return encode(msg, dialect)


Case = tuple[str, Dialect, Callable[[Dialect], bytes], str, int]

CASES: list[Case] = [
    ("bsd-bad-version", FREEBSD, lambda d: patched(flush(d), 0, b"\x03"), "echo", errno.EINVAL),
    ("bsd-bad-type", FREEBSD, lambda d: patched(flush(d), 1, b"\x17"), "echo", errno.EINVAL),
    ("bsd-unspec-satype", FREEBSD, lambda d: getspi(d, SaType.UNSPEC), "echo", errno.EINVAL),
    ("bsd-len-mismatch", FREEBSD, lambda d: patched(flush(d), 4, struct.pack("=H", 3)), "send-fails", errno.EINVAL),
    ("bsd-short", FREEBSD, lambda d: flush(d)[:8], "send-fails", errno.EINVAL),
    ("bsd-empty", FREEBSD, lambda d: b"", "send-fails", errno.EINVAL),
    ("bsd-kmprivate-ext", FREEBSD, lambda d: patched(getspi(d), 18, struct.pack("=H", 17)), "send-fails", errno.EINVAL),
    ("bsd-oversized", FREEBSD, oversized, "send-fails", errno.ENOBUFS),
    # setkey --socket x-bsd.sock with the linux dialect (the hang): sockaddrs without sa_len.
    (
        "bsd-gets-linux-add",
        FREEBSD,
        lambda d: encode(add_msg(0x1000).replace(pid=PID), LINUX),
        "send-fails",
        errno.EINVAL,
    ),
    ("linux-gets-bsd-add", LINUX, lambda d: encode(add_msg(0x1000).replace(pid=PID), FREEBSD), "header", errno.EINVAL),
    ("linux-bad-type", LINUX, lambda d: patched(flush(d), 1, b"\x19"), "send-fails", errno.EINVAL),
    ("linux-type-0", LINUX, lambda d: patched(flush(d), 1, b"\x00"), "send-fails", errno.EINVAL),
    ("linux-short", LINUX, lambda d: flush(d)[:8], "send-fails", errno.EMSGSIZE),
    ("linux-bad-version", LINUX, lambda d: patched(flush(d), 0, b"\x03"), "send-fails", errno.EINVAL),
    ("linux-reserved", LINUX, lambda d: patched(flush(d), 6, b"\x01"), "send-fails", errno.EINVAL),
    ("linux-len-mismatch", LINUX, lambda d: patched(flush(d), 4, struct.pack("=H", 3)), "send-fails", errno.EMSGSIZE),
    ("linux-empty", LINUX, lambda d: b"", "send-fails", errno.EMSGSIZE),
    ("linux-ext-type-0", LINUX, lambda d: patched(getspi(d), 18, struct.pack("=H", 0)), "header", errno.EINVAL),
    ("linux-oversized", LINUX, oversized, "send-fails", errno.EMSGSIZE),
]


def assert_send_failure_reply(reply: bytes, data: bytes, err: int, dialect: Dialect) -> None:
    """The header alone: version 2, the request's type, satype, seq and pid (zeros
    where it had none), errno ``err`` in the dialect's numbering, len 2, reserved 0."""
    head = data[:16].ljust(16, b"\0")
    wire_errno = dialect.spec.errno_to_wire(err)
    assert len(reply) == 16
    assert HEADER.unpack(reply) == (2, head[1], wire_errno, head[3], 2, 0, *struct.unpack_from("=II", head, 8))
    if head[1] <= dialect.spec.msg_max:
        assert decode(reply, dialect, request=False).errno == err  # as a client reads it


@pytest.mark.parametrize(("name", "dialect", "make", "answer", "err"), CASES, ids=[c[0] for c in CASES])
async def test_malformed_datagram_is_answered_as_the_kernel_would_and_the_socket_stays_usable(
    daemon: Daemon,
    name: str,
    dialect: Dialect,
    make: Callable[[Dialect], bytes],
    answer: str,
    err: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = await daemon.connect(dialect, pid=PID)
    data = make(dialect)
    await peer.send_raw(data)
    with trio.fail_after(60):  # silence would leave a client waiting forever
        reply = await peer.recv_raw()
    if answer == "send-fails":  # the kernel fails send(): pfkeyd's header-only answer
        assert_send_failure_reply(reply, data, err, dialect)
        assert daemon.engine.stats.drops["send_would_fail"] == 1
    elif answer == "echo":  # FreeBSD: the whole request with errno set
        assert reply == data[:2] + bytes([err]) + data[3:]
    else:  # Linux: the header alone, len 2
        assert len(reply) == 16
        assert reply[2] == err and struct.unpack_from("=H", reply, 4) == (2,)
        assert reply[8:16] == data[8:16]
    if answer != "send-fails":
        assert "send_would_fail" not in daemon.engine.stats.drops
    assert await peer.quiet()
    assert daemon.engine.stats.errors[err] == 1
    flushed = await peer.request(Message(MsgType.FLUSH, 0, 6))
    assert (flushed.type, flushed.seq, flushed.errno) == (MsgType.FLUSH, 6, 0)


@pytest.mark.parametrize("dialect", [LINUX, FREEBSD])
async def test_a_datagram_longer_than_any_pfkey_message_is_refused_and_the_socket_stays_usable(
    daemon: Daemon, dialect: Dialect, autojump_clock: trio.testing.MockClock
) -> None:
    """More than 65535 units cannot be a PF_KEY message: both kernels fail such a
    send().  The daemon reads the datagram's true length and answers with the
    header alone and that send()'s errno."""
    peer = await daemon.connect(dialect, pid=PID)
    size = 0xFFFF * 8 + 8
    try:
        peer.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * size)
    except PermissionError:
        pytest.skip("SO_SNDBUFFORCE needs CAP_NET_ADMIN")
    data = flush(dialect) + bytes(size - 16)
    await peer.send_raw(data)
    err = errno.EMSGSIZE if dialect is LINUX else errno.EINVAL
    with trio.fail_after(60):
        assert_send_failure_reply(await peer.recv_raw(), data, err, dialect)
    assert await peer.quiet()
    assert daemon.engine.stats.drops["send_would_fail"] == 1
    assert daemon.engine.stats.errors[err] == 1
    reply = await peer.request(Message(MsgType.FLUSH, 0, 6))
    assert (reply.type, reply.seq, reply.errno) == (MsgType.FLUSH, 6, 0)
