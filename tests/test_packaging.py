"""A non-editable install into a clean virtual environment, used from outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"


@pytest.mark.slow
def test_wheel_installed_outside_the_repository_works(tmp_path: Path) -> None:
    # Built from a copy of the sources: a build/ folder left in the checkout would let
    # setuptools ship stale modules and hide a package missing from pyproject.toml.
    source = tmp_path / "source"
    # The compiled module an editable install left beside its source (*.so) stays
    # behind too: the wheel must build its own.
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".venv", "build", "*.egg-info", ".git", "__pycache__", "*.so")
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("pfkeyd-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bindir = env_dir / "bin"
    subprocess.run(
        [
            str(bindir / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-c",
            str(CONSTRAINTS),
            str(wheel),
        ],
        check=True,
        cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, cwd=elsewhere, env=env, check=False)

    # the commands, and the data files shipped with them
    capture = ROOT / "examples" / "captures" / "linux-setkey-add.hex"
    assert "type ADD (3)" in run("pfkeyd", "decode", str(capture)).stdout
    assert run("setkey", "-V").stdout.startswith("setkey (pfkeyd)")
    probe = run(
        str(bindir / "python"),
        "-c",
        "import importlib.resources as r, pfkeyd;"
        "print(pfkeyd.__file__);"
        "print(sorted(p.name for p in r.files('setkey.grammar').iterdir() if p.name.endswith('.lark')));"
        "print(sorted(p.name for p in r.files('pfkeyd.man').iterdir() if p.name[-2:] in ('.4', '.8')))",
    )
    assert probe.returncode == 0, probe.stderr
    location, grammars, manpages = probe.stdout.splitlines()
    # every package of the source tree is in the wheel
    packages = sorted(
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("pfkeyd", "setkey")
        for init in (ROOT / top).rglob("__init__.py")
    )
    imported = run(
        str(bindir / "python"), "-c", f"import importlib; [importlib.import_module(p) for p in {packages!r}]"
    )
    assert imported.returncode == 0, imported.stderr
    # ESP's compiled AEAD path was built into the wheel, with its type stub, and serves
    compiled = run(
        str(bindir / "python"),
        "-c",
        "import importlib.resources as r; from pfkeyd.packet import espfast, crypto;"
        "print(espfast.__file__);"
        "print(r.files('pfkeyd.packet').joinpath('espfast.pyi').is_file());"
        "print(type(crypto.cipher(20, bytes(20)).native).__name__)",
    )
    assert compiled.returncode == 0, compiled.stderr
    so_path, stub, native = compiled.stdout.splitlines()
    assert str(env_dir) in so_path and so_path.endswith(".so")
    assert (stub, native) == ("True", "Aead")
    # So were the records' compiled steps, which the records use
    sealed = run(
        str(bindir / "python"),
        "-c",
        "import importlib.resources as r; from pfkeyd import record, recordfast;"
        "print(record.recordfast is recordfast, recordfast.__file__.endswith('.so'),"
        " r.files('pfkeyd').joinpath('recordfast.pyi').is_file())",
    )
    assert sealed.returncode == 0, sealed.stderr
    assert sealed.stdout.split() == ["True", "True", "True"]
    assert str(env_dir) in location  # the installed copy, not the checkout
    shipped_grammars = sorted(p.name for p in (ROOT / "setkey" / "grammar").glob("*.lark"))
    shipped_man = sorted(p.name for p in (ROOT / "pfkeyd" / "man").iterdir() if p.suffix in (".4", ".8"))
    assert grammars == repr(shipped_grammars)
    assert manpages == repr(shipped_man)

    # the manual pages, under the prefix's share/man, where man(1) finds them
    # from the bin directory on PATH (man-db and mandoc both look at ../share/man)
    sections = {"pfkey.4": "man4", "pfkeyd.8": "man8", "setkey.8": "man8"}
    assert sorted(sections) == shipped_man
    for name, section in sections.items():
        installed = env_dir / "share" / "man" / section / name
        assert installed.read_bytes() == (ROOT / "pfkeyd" / "man" / name).read_bytes(), installed
    man = shutil.which("man")
    if man is None:
        return
    no_manpath = {k: v for k, v in env.items() if k != "MANPATH"}
    for name, section in sections.items():
        topic, number = name.split(".")
        found = subprocess.run(
            [man, "-w", number, topic], capture_output=True, text=True, cwd=elsewhere, env=no_manpath, check=False
        )
        assert found.returncode == 0, found.stderr
        assert Path(found.stdout.strip()).resolve() == (env_dir / "share" / "man" / section / name).resolve()
        page = subprocess.run(
            [man, number, topic],
            capture_output=True,
            text=True,
            cwd=elsewhere,
            env={**no_manpath, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80"},
            check=False,
        )
        assert page.returncode == 0, page.stderr
        assert topic in page.stdout.splitlines()[0].lower()
    # without a section too, for the names no system page has
    for topic, name in (("pfkeyd", "man8/pfkeyd.8"), ("pfkey", "man4/pfkey.4")):
        found = subprocess.run(
            [man, "-w", topic], capture_output=True, text=True, cwd=elsewhere, env=no_manpath, check=False
        )
        assert Path(found.stdout.strip()).resolve() == (env_dir / "share" / "man" / name).resolve(), found


@pytest.mark.slow
def test_without_a_compiler_the_wheel_builds_and_runs_pure(tmp_path: Path) -> None:
    # ESP's compiled AEAD path is optional: where it cannot be built (here: a C
    # compiler that always fails, as a machine without libssl-dev's headers does)
    # the wheel is still built and the packet path runs in pure Python.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".venv", "build", "*.egg-info", ".git", "__pycache__", "*.so")
    )
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        cwd=tmp_path,
        env={**env, "CC": "false"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("pfkeyd-*.whl")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as z:
        assert not [n for n in z.namelist() if ("espfast" in n or "recordfast" in n) and not n.endswith(".pyi")]
        z.extractall(unpacked)
    # The unpacked wheel first on the path, this environment's dependencies after it.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            # first: this environment's editable install would supply the checkout's build
            "import sys; sys.modules['pfkeyd.recordfast'] = None\n"
            "from pfkeyd.packet import crypto, esp\n"
            "from pfkeyd.packet.runtime import SaRuntime\n"
            "from pfkeyd.packet.sa import TransformSA\n"
            "assert crypto.espfast is None\n"
            "from pfkeyd import record\n"
            "from pfkeyd.wire import ExtType, Lifetime\n"
            "assert record.recordfast is None and Lifetime(ExtType.LIFETIME_HARD, 0, 1, 2, 3).bytes == 1\n"
            "c = crypto.cipher(20, bytes(20))\n"
            "assert c.native is None\n"
            "sa = TransformSA(50, 0x1000, 1, bytes(4), bytes(4), 0, 64, 20, 0, c, None)\n"
            "dg = bytes.fromhex('4500001c00000000401100000000000000000000') + bytes(8)\n"
            "wire = esp.protect(sa, SaRuntime.for_sa(64), dg)\n"
            "print(esp.unprotect(sa, SaRuntime.for_sa(64), wire)[20:] == dg[20:], crypto.__file__)",
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(unpacked)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    ok, location = probe.stdout.split()
    assert ok == "True" and location.startswith(str(unpacked))
