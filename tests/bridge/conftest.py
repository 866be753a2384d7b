"""Fixtures for the preload bridge tests: a C compiler, the Linux PF_KEY headers,
the built bridge, our C test client, and a real pfkeyd on a linux-dialect socket.

Everything that needs a compiler or ``<linux/pfkeyv2.h>`` skips, saying why, when
the machine has none; nothing else is ever skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfkeyd.preload import library_path, preload_environment
from tests.bridge.support import CLIENT_FLAGS, HERE, ROOT, DaemonProcess, compile_c, find_compiler, wait_listening


@pytest.fixture(scope="session")
def cc() -> str:
    path = find_compiler()
    if path is None:
        pytest.skip("no C compiler (cc, gcc or clang) on PATH: the bridge cannot be built")
    return path


@pytest.fixture(scope="session")
def linux_headers(cc: str) -> None:
    probe = subprocess.run(
        [cc, "-E", "-x", "c", "-"],
        input="#include <linux/pfkeyv2.h>\n#include <linux/ipsec.h>\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("<linux/pfkeyv2.h> or <linux/ipsec.h> not found (install linux-libc-dev)")


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bridge-build")


@pytest.fixture(scope="session")
def bridge_env(cc: str, build_dir: Path) -> dict[str, str]:
    """The environment with a private XDG_CACHE_HOME (the user's cache stays untouched)."""
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(build_dir / "cache")
    env.pop("LD_PRELOAD", None)
    return env


@pytest.fixture(scope="session")
def bridge(bridge_env: dict[str, str]) -> Path:
    return library_path(env=bridge_env)


@pytest.fixture(scope="session")
def client(cc: str, linux_headers: None, build_dir: Path) -> Path:
    return compile_c(cc, HERE / "pfkey_client.c", build_dir / "pfkey_client", CLIENT_FLAGS)


@pytest.fixture(scope="session")
def spy(cc: str, build_dir: Path) -> Path:
    return compile_c(
        cc,
        HERE / "send_spy.c",
        build_dir / "send_spy.so",
        ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror"),
        ("-ldl",),
    )


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="pfkb", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pfkeyd(sockdir: Path) -> Iterator[DaemonProcess]:
    """A real pfkeyd (``python -m pfkeyd``) listening on a linux-dialect socket."""
    path = sockdir / "k.sock"
    log = sockdir / "pfkeyd.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pfkeyd", "-s", f"{path}:linux"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_listening(path, proc, log)
        yield DaemonProcess(proc, path, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def client_env(bridge_env: dict[str, str], bridge: Path) -> dict[str, str]:
    """The environment our client runs in: the bridge preloaded (no socket named yet)."""
    env = preload_environment(None, env=bridge_env)
    assert env["LD_PRELOAD"].split()[0] == str(bridge)
    return env
