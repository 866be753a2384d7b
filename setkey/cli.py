"""The setkey command line.

This first version decodes raw PF_KEY messages given as file arguments (the
ipsec-tools ``setkey file ...`` form); the language and the daemon commands come
with the setkey issue.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pfkeyd import __version__
from pfkeyd.cli import EX_USAGE, _decode_command

__all__ = ["main"]

USAGE = "usage: setkey [-V] file ..."


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["-V"]:
        print(f"setkey (pfkeyd) {__version__}")
        return 0
    if not args or any(a.startswith("-") for a in args):
        print(USAGE, file=sys.stderr)
        return EX_USAGE
    return _decode_command(args)
