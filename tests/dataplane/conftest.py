"""Fixtures for the data-plane tests: two namespaces per test, checked clean after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netns import Pair, root_snapshot, skip_reason

_SKIP: list[str | None] = []


def _skip() -> str | None:
    if not _SKIP:
        _SKIP.append(skip_reason())
    return _SKIP[0]


@pytest.fixture
def netpair() -> Iterator[Pair]:
    """Namespaces ``a`` and ``b`` joined by a veth (tests/netns.py).  After the test
    they are removed, and the root namespace must look exactly as before: no link,
    rule, route or namespace of ours left behind."""
    reason = _skip()
    if reason:
        pytest.skip(reason)
    before = root_snapshot()
    p = Pair()
    try:
        yield p
    finally:
        p.remove()
    assert root_snapshot() == before
