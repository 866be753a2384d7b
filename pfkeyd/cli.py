"""The pfkeyd command line.

    pfkeyd decode [-d dialect] [-k] file ...
        Decode PF_KEY messages (hex text or raw bytes) and print them field by field.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from pfkeyd.errors import DecodeError
from pfkeyd.wire import Dialect, decode
from pfkeyd.wire.describe import describe

__all__ = ["main"]

EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66

_HEX = re.compile(rb"^[0-9a-fA-F\s]*$")


def _read_messages(data: bytes) -> list[bytes]:
    """A file holds raw PF_KEY bytes, or hex text with ``#`` comments.

    Messages in one file are split by their own ``sadb_msg_len``.
    """
    text = b"\n".join(line.split(b"#", 1)[0] for line in data.splitlines())
    if data and _HEX.match(text) and text.strip():
        data = bytes.fromhex(text.decode())
    out = []
    while data:
        size = int.from_bytes(data[4:6], sys.byteorder) * 8 if len(data) >= 6 else len(data)
        size = size or len(data)
        out.append(data[:size])
        data = data[size:]
    return out


def _decode_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pfkeyd decode",
        description="Decode PF_KEY v2 messages and print them field by field.",
    )
    parser.add_argument("-d", "--dialect", choices=[d.value for d in Dialect], default="linux")
    parser.add_argument("-k", "--show-keys", action="store_true", help="print key material")
    parser.add_argument("files", nargs="+", metavar="file")
    args = parser.parse_args(argv)
    status = 0
    for name in args.files:
        try:
            with open(name, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            print(f"pfkeyd: {name}: {exc.strerror}", file=sys.stderr)
            return EX_NOINPUT
        for i, message in enumerate(_read_messages(raw)):
            try:
                msg = decode(message, args.dialect, request=False)
            except DecodeError as exc:
                print(f"pfkeyd: {name}: message {i + 1}: {exc}", file=sys.stderr)
                status = EX_DATAERR
                continue
            print(f"# {name}: message {i + 1}, {len(message)} bytes, {args.dialect} dialect")
            print(describe(msg, show_keys=args.show_keys))
    return status


_COMMANDS = {"decode": _decode_command}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _COMMANDS:
        return _COMMANDS[args[0]](args[1:])
    print("usage: pfkeyd decode [-d dialect] [-k] file ...", file=sys.stderr)
    return EX_USAGE
