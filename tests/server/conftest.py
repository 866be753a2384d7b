"""Fixtures for the trio shell: a running daemon on short socket paths (helpers in peers.py)."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from pfkeyd.engine import KeyEngine
from tests.server.peers import Daemon, start_daemon


@pytest.fixture
def sockdir() -> Iterator[str]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="pfk", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def engine() -> KeyEngine:
    return KeyEngine(rng=random.Random(2367))


@pytest.fixture
async def daemon(nursery: trio.Nursery, sockdir: str, engine: KeyEngine) -> AsyncIterator[Daemon]:
    d = await start_daemon(nursery, sockdir, engine)
    yield d
    for peer in d.peers:
        peer.close()
    d.server.stop()
