"""The PF_KEY preload bridge: build it on first use, and run programs under it.

``pfkey_preload.c`` (shipped in this package) is compiled with the system C compiler
into a per-user cache, ``$XDG_CACHE_HOME/pfkeyd`` (``~/.cache/pfkeyd``), under a name
that carries a hash of the source, the compiler and the flags: a changed source or
compiler builds a new library, an unchanged one is reused.  The build writes to a
temporary file and renames it, so concurrent first uses do not race.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

__all__ = ["PreloadError", "source", "library_path", "preload_environment", "exec_under_bridge"]

_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter")
_LIBS = ("-ldl", "-lpthread")


class PreloadError(Exception):
    """The bridge cannot be built (no compiler, a compiler error)."""


def source() -> bytes:
    """The C source of the bridge, as installed with the package."""
    return resources.files(__package__).joinpath("pfkey_preload.c").read_bytes()


def _compiler(env: Mapping[str, str]) -> list[str]:
    if env.get("CC"):
        cmd = shlex.split(env["CC"])
        if shutil.which(cmd[0]) is None:
            msg = f"the C compiler named by CC ({cmd[0]}) was not found"
            raise PreloadError(msg)
        return cmd
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path is not None:
            return [path]
    msg = "no C compiler found: install one (cc, gcc or clang) or name it in CC to build the PF_KEY bridge"
    raise PreloadError(msg)


def _cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pfkeyd"


def library_path(*, env: Mapping[str, str] | None = None) -> Path:
    """The path of the built bridge, building it first if needed."""
    env = os.environ if env is None else env
    src = source()
    cc = _compiler(env)
    digest = hashlib.sha256()
    for part in (src, " ".join(cc).encode(), " ".join(_FLAGS + _LIBS).encode()):
        digest.update(part + b"\0")
    cache = _cache_dir(env)
    target = cache / f"libpfkey-preload-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        c_file = Path(tmp) / "pfkey_preload.c"
        c_file.write_bytes(src)
        built = Path(tmp) / target.name
        result = subprocess.run(
            [*cc, *_FLAGS, "-o", str(built), str(c_file), *_LIBS], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            msg = f"building the PF_KEY bridge failed:\n{result.stderr.strip()}"
            raise PreloadError(msg)
        os.replace(built, target)
    return target


def preload_environment(socket_path: str | None = None, *, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a program needs to reach pfkeyd through the bridge."""
    base = dict(os.environ if env is None else env)
    lib = str(library_path(env=base))
    existing = [p for p in base.get("LD_PRELOAD", "").replace(":", " ").split() if p and p != lib]
    base["LD_PRELOAD"] = " ".join([lib, *existing])
    if socket_path is not None:
        base["PFKEY_SOCKET"] = socket_path
    return base


def exec_under_bridge(argv: Sequence[str], socket_path: str | None = None) -> None:
    """Replace this process with ``argv`` running under the bridge (never returns)."""
    env = preload_environment(socket_path)
    os.execvpe(argv[0], list(argv), env)
