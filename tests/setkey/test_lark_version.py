"""setkey.parser reads lark's undocumented LALR tables and parser state, so the
project owns that dependency: pyproject.toml names the lark versions it was
checked with, and this test fails on any other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import lark

ROOT = Path(__file__).resolve().parent.parent.parent


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _lark_range() -> tuple[tuple[int, ...], tuple[int, ...]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (spec,) = [d for d in project["dependencies"] if re.match(r"lark\b", d)]
    found = re.fullmatch(r"lark>=([0-9.]+),<([0-9.]+)", spec.replace(" ", ""))
    assert found is not None, f"pyproject.toml must bound lark on both sides, not {spec!r}"
    return _version(found.group(1)), _version(found.group(2))


def test_lark_is_bounded_to_the_versions_setkey_parser_was_checked_with() -> None:
    low, high = _lark_range()
    assert high[:2] == (low[0], low[1] + 1), "the range must not go past the next minor version of lark"


def test_the_installed_lark_is_one_of_them() -> None:
    low, high = _lark_range()
    installed = _version(lark.__version__)
    assert low <= installed < high, (
        f"lark {lark.__version__} is installed, but setkey.parser reads lark's internals and was checked with "
        f"lark >= {'.'.join(map(str, low))}, < {'.'.join(map(str, high))} only: check _lalr_tables and "
        "parse_with_recovery (setkey/lalr.py, setkey/parser.py) against this lark, then widen the range in pyproject.toml"
    )


def test_a_version_outside_the_range_is_refused() -> None:
    # the check itself: 1.2.2 (what pyproject.toml used to allow) and 1.4.0 fall outside
    low, high = _lark_range()
    assert not low <= _version("1.2.2") < high
    assert not low <= _version("1.4.0") < high
