"""pfkeyd.wire.framing: the datagram limit, the promiscuous wrapper and message files."""

from __future__ import annotations

import pytest

from pfkeyd.errors import EncodeError
from pfkeyd.wire import HEADER, Message, MsgType, SaType, encode
from pfkeyd.wire.framing import MAX_DATAGRAM, promisc_unwrap, promisc_wrap, split_messages


def test_the_largest_message_fills_a_16_bit_length_of_8_byte_units() -> None:
    assert MAX_DATAGRAM == 65535 * 8


def test_wrap_and_unwrap_are_inverse() -> None:
    inner = encode(Message(MsgType.FLUSH, SaType.ESP, 1, 2), "freebsd")
    wrapped = promisc_wrap(inner)
    assert wrapped[1] == MsgType.X_PROMISC
    assert HEADER.unpack_from(wrapped)[4] * 8 == len(wrapped)
    assert promisc_unwrap(wrapped) == inner
    # the bare X_PROMISC header (the echo of the request) wraps nothing
    assert promisc_unwrap(wrapped[:16]) is None


def test_a_copy_that_cannot_be_framed_is_refused() -> None:
    with pytest.raises(EncodeError, match="65535 units"):
        promisc_wrap(bytes(MAX_DATAGRAM))


def test_split_keeps_a_short_tail_whole() -> None:
    one = encode(Message(MsgType.FLUSH, SaType.ESP, 1, 2), "linux")
    assert split_messages(one + b"\x02\x09") == [one, b"\x02\x09"]
    # a zero length takes the rest of the file, as the decoder then reports
    zero = one[:4] + b"\x00\x00" + one[6:]
    assert split_messages(zero + one) == [zero + one]
    # hex text with an odd number of digits is not hex text
    assert split_messages(b"02 0") == [b"02 0"]
