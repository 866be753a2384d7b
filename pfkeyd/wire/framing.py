"""How PF_KEY messages travel: the datagram size limit, FreeBSD's promiscuous
wrapper, and the files that hold messages one after another.

Every PF_KEY message is one datagram whose ``sadb_msg_len`` (16 bits, counted in
8-byte units) covers it whole, so no message is longer than :data:`MAX_DATAGRAM`.
The daemon, the client library and setkey all read and write messages through
these definitions.
"""

from __future__ import annotations

import binascii
import contextlib
import re
import sys

from pfkeyd.errors import EncodeError
from pfkeyd.wire.constants import PF_KEY_V2, UNIT, MsgType
from pfkeyd.wire.message import HEADER

__all__ = ["MAX_DATAGRAM", "promisc_wrap", "promisc_unwrap", "split_messages"]

#: The largest PF_KEY message: a 16-bit ``sadb_msg_len`` of 8-byte units.
MAX_DATAGRAM = 0xFFFF * UNIT


def promisc_wrap(body: bytes) -> bytes:
    """A promiscuous copy as FreeBSD's keysock delivers it: behind an SADB_X_PROMISC header.

    The header's ``len`` covers the whole datagram; every other field is 0.
    """
    units = (HEADER.size + len(body)) // UNIT
    if units > 0xFFFF:
        msg = "promiscuous copy longer than 65535 units"
        raise EncodeError(msg)
    return HEADER.pack(PF_KEY_V2, MsgType.X_PROMISC, 0, 0, units, 0, 0, 0) + body


def promisc_unwrap(data: bytes) -> bytes | None:
    """The message inside a FreeBSD promiscuous copy, or None if ``data`` is not one.

    A copy is an SADB_X_PROMISC header whose length covers the whole datagram,
    followed by a whole PF_KEY v2 message (keysock.c, key_sendup0).
    """
    size = HEADER.size
    if len(data) < 2 * size:
        return None
    version, mtype, _e, _s, units, _r, _seq, _pid = HEADER.unpack_from(data)
    if version != PF_KEY_V2 or mtype != MsgType.X_PROMISC or units * UNIT != len(data):
        return None
    inner_version, _t, _e2, _s2, inner_units, _r2, _q, _p = HEADER.unpack_from(data, size)
    if inner_version != PF_KEY_V2 or inner_units * UNIT != len(data) - size:
        return None
    return bytes(data[size:])


_HEX_TEXT = re.compile(rb"[0-9a-fA-F\s]*")


def split_messages(data: bytes) -> list[bytes]:
    """The PF_KEY messages of a file, one after another, each as long as its
    ``sadb_msg_len`` says (the rest of the file where that is 0 or cut short).

    Hex text (``#`` starts a comment) is read as the bytes it spells, so the
    captures in ``examples/captures`` can be given too; text that only looks
    like hex (an odd number of digits) is taken as the raw bytes it is, for the
    decoder to report.
    """
    text = b"\n".join(line.split(b"#", 1)[0] for line in data.splitlines())
    if text.strip() and _HEX_TEXT.fullmatch(text):
        with contextlib.suppress(ValueError, binascii.Error):
            data = bytes.fromhex(text.decode())
    out = []
    while data:
        size = int.from_bytes(data[4:6], sys.byteorder) * UNIT if len(data) >= 6 else 0
        size = size or len(data)
        out.append(data[:size])
        data = data[size:]
    return out
