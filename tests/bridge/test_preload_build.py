"""Building the bridge: the per-user cache, the errors without a compiler, the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pfkeyd.preload
from pfkeyd.preload import PreloadError, library_path, preload_environment
from tests.bridge.support import compile_c

ORIGINAL_SOURCE = pfkeyd.preload.source()


def test_library_path_is_cached_and_rebuilt_when_the_source_changes(
    cc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = library_path(env=env)
    assert first.parent == tmp_path / "cache" / "pfkeyd"
    built_at = first.stat().st_mtime_ns
    again = library_path(env=env)
    assert again == first
    assert again.stat().st_mtime_ns == built_at  # reused, not rebuilt

    monkeypatch.setattr(pfkeyd.preload, "source", lambda: ORIGINAL_SOURCE + b"\n/* a new version */\n")
    changed = library_path(env=env)
    assert changed != first
    assert changed.is_file() and first.is_file()
    assert library_path(env=env) == changed
    # Only the finished libraries are left in the cache: no temporary build files.
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, changed.name])


def test_a_compiler_named_by_cc_that_does_not_exist_is_a_preload_error(tmp_path: Path) -> None:
    env = {"CC": str(tmp_path / "no-such-cc"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with pytest.raises(PreloadError, match=r"the C compiler named by CC \(.*no-such-cc\) was not found"):
        library_path(env=env)
    assert not (tmp_path / "cache").exists()


def test_no_compiler_on_path_is_a_preload_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(PreloadError, match="no C compiler found: install one"):
        library_path(env={"XDG_CACHE_HOME": str(tmp_path / "cache")})


def test_a_compile_error_is_a_preload_error_with_the_compiler_output(
    cc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pfkeyd.preload, "source", lambda: b"#error deliberately broken\n")
    with pytest.raises(PreloadError, match=r"(?s)building the PF_KEY bridge failed.*deliberately broken"):
        library_path(env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert list((tmp_path / "cache" / "pfkeyd").iterdir()) == []


def test_the_bridge_compiles_without_warnings(cc: str, tmp_path: Path) -> None:
    source = tmp_path / "pfkey_preload.c"
    source.write_bytes(ORIGINAL_SOURCE)
    # Stricter than the build (which adds -Wno-unused-parameter), and fortified.
    compile_c(
        cc,
        source,
        tmp_path / "bridge.so",
        ("-shared", "-fPIC", "-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Wextra", "-Werror"),
        ("-ldl", "-lpthread"),
    )


def test_preload_environment_puts_the_bridge_first_and_names_the_socket(cc: str, tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "LD_PRELOAD": "/lib/other.so", "KEEP": "1"}
    out = preload_environment("/tmp/pfk.sock", env=env)
    lib = str(library_path(env=env))
    assert out["LD_PRELOAD"] == f"{lib} /lib/other.so"
    assert out["PFKEY_SOCKET"] == "/tmp/pfk.sock"
    assert out["KEEP"] == "1"
    # Applying it twice does not list the bridge twice.
    assert preload_environment(None, env=out)["LD_PRELOAD"] == f"{lib} /lib/other.so"
    assert env["LD_PRELOAD"] == "/lib/other.so"  # the caller's mapping is not changed


def test_exec_under_bridge_runs_the_program_with_the_bridge_preloaded(cc: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code = (
        "import pfkeyd.preload, sys; "
        "pfkeyd.preload.exec_under_bridge(['sh', '-c', 'echo \"$LD_PRELOAD|$PFKEY_SOCKET\"'], '/tmp/x.sock')"
    )
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    env.pop("LD_PRELOAD", None)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    lib = str(library_path(env={"XDG_CACHE_HOME": str(cache)}))
    assert result.stdout == f"{lib}|/tmp/x.sock\n"
