"""sadb_msg_errno carries the errno numbers of the client's kernel, not the host's."""

from __future__ import annotations

import errno

import pytest

from pfkeyd.wire import Dialect, Message, MsgType, SaType, decode, encode, error_reply

# (name, FreeBSD number, Linux number), from each system's errno.h
SAMPLES = [
    ("EINVAL", 22, 22),
    ("ENOENT", 2, 2),
    ("EEXIST", 17, 17),
    ("ESRCH", 3, 3),
    ("ENOBUFS", 55, 105),
    ("EAFNOSUPPORT", 47, 97),
    ("EOPNOTSUPP", 45, 95),
    ("EPROTONOSUPPORT", 43, 93),
    ("EMSGSIZE", 40, 90),
    ("ELOOP", 62, 40),
    ("ENOSYS", 78, 38),
    ("ETIMEDOUT", 60, 110),
]


@pytest.mark.parametrize(("name", "bsd", "linux"), SAMPLES)
def test_error_numbers_are_those_of_the_dialects_kernel(name: str, bsd: int, linux: int) -> None:
    host = getattr(errno, name)
    msg = Message(MsgType.ADD, SaType.ESP, seq=1, pid=2, errno=host)
    for dialect, wire in ((Dialect.FREEBSD, bsd), (Dialect.LINUX, linux)):
        data = encode(msg, dialect)
        assert data[2] == wire
        assert decode(data, dialect, request=False).errno == host
        request = encode(msg.replace(errno=0), dialect)
        assert error_reply(request, host, dialect)[2] == wire


@pytest.mark.parametrize("dialect", list(Dialect))
def test_every_errno_byte_round_trips(dialect: Dialect) -> None:
    spec = dialect.spec
    assert sorted(spec.errno_to_wire(e) for e in range(256)) == list(range(256))
    assert all(spec.errno_from_wire(spec.errno_to_wire(e)) == e for e in range(256))
