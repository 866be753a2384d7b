"""Rewrite the generated parts of the manual pages from the program's own tables.

    .venv/bin/python tools/update_man.py

pfkeyd/man/pfkeyd.8 carries the knob list between ``.\\" BEGIN KNOBS`` and
``.\\" END KNOBS``; a test fails when it differs from pfkeyd.knobs.mdoc_list().
"""

from __future__ import annotations

import re
from pathlib import Path

from pfkeyd.knobs import mdoc_list

PAGE = Path(__file__).resolve().parent.parent / "pfkeyd" / "man" / "pfkeyd.8"
BLOCK = re.compile(r'(\.\\" BEGIN KNOBS\n)(.*?)(\.\\" END KNOBS\n)', re.S)


def main() -> None:
    text = PAGE.read_text()
    new = BLOCK.sub(lambda m: m.group(1) + mdoc_list() + m.group(3), text)
    PAGE.write_text(new)


if __name__ == "__main__":
    main()
