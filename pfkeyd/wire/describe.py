"""A field-by-field rendering of a decoded message, for people (pfkeyd decode, debugging).

Keys are shown as their length only unless ``show_keys`` is set: this text may end
up in a log or a terminal scrollback.
"""

from __future__ import annotations

import dataclasses
import enum

from pfkeyd.wire.constants import (
    UNKNOWN,
    AuthAlg,
    CompAlg,
    Direction,
    EncAlg,
    ExtType,
    Level,
    Mode,
    MsgType,
    PolicyType,
    SaState,
    SaType,
)
from pfkeyd.wire.ext import Extension, Key, Policy, UnknownExt
from pfkeyd.wire.message import Message
from pfkeyd.wire.sockaddr import SockAddr

__all__ = ["describe"]

# field name -> enum used to name its value
_FIELD_ENUMS: dict[str, type[enum.IntEnum]] = {
    "state": SaState,
    "mode": Mode,
    "dir": Direction,
    "level": Level,
}


def _named(value: int, kind: type[enum.IntEnum] | None) -> str:
    if value & UNKNOWN and value > 0xFF:
        return f"{value & ~UNKNOWN} (unknown)"
    if kind is not None:
        try:
            return f"{kind(value).name} ({value & 0xFF})"
        except ValueError:
            pass
    return str(value)


def _fields(obj: object, satype: int, indent: str) -> list[str]:
    lines = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        kind = _FIELD_ENUMS.get(f.name)
        if f.name == "auth":
            kind = AuthAlg
        elif f.name == "encrypt":
            kind = CompAlg if satype == SaType.X_IPCOMP else EncAlg
        elif f.name == "type" and isinstance(obj, Policy):
            kind = PolicyType
        if f.name == "exttype":
            continue
        if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                lines.append(f"{indent}{f.name}[{i}]:")
                lines.extend(_fields(item, satype, indent + "  "))
            continue
        if isinstance(value, SockAddr):
            text = f"{value}[{value.port}]" + (f" flowinfo {value.flowinfo}" if value.flowinfo else "")
        elif isinstance(value, bool) or not isinstance(value, int):
            text = value.hex() if isinstance(value, bytes) else str(value)
        elif f.name in ("spi", "flags"):
            text = f"0x{value:08x}"
        else:
            text = _named(value, kind)
        lines.append(f"{indent}{f.name}: {text}")
    return lines


def _ext_lines(ext: Extension, satype: int, show_keys: bool) -> list[str]:
    if isinstance(ext, UnknownExt):
        return [f"extension {ext.number} (unknown): {len(ext.data)} bytes"]
    name = ExtType(ext.exttype).name
    if isinstance(ext, Key) and not show_keys:
        return [f"{name}:", f"  bits: {ext.bits}", f"  key: <{len(ext.data)} bytes hidden>"]
    return [f"{name}:", *_fields(ext, satype, "  ")]


def describe(msg: Message, *, show_keys: bool = False) -> str:
    """Every header field and extension field of ``msg``, one per line."""
    mtype = _named(msg.type, MsgType)
    satype = _named(msg.satype, SaType) if msg.type != MsgType.X_SPDDUMP else str(msg.satype)
    lines = [
        f"sadb_msg: type {mtype}, satype {satype}, errno {msg.errno}",
        f"  seq: {msg.seq}",
        f"  pid: {msg.pid}",
        f"  reserved: {msg.reserved}",
    ]
    for ext in msg.exts:
        lines.extend(_ext_lines(ext, msg.satype, show_keys))
    return "\n".join(lines)
