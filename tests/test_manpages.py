"""pfkeyd/man/pfkeyd.8 and pfkeyd/man/pfkey.4 against the program: the page is the user's contract.

Every list in the page that the program also has is compared both ways: the knob
list (generated; tools/update_man.py rewrites it), the daemon's options, the
commands, the environment variables, and the usage text.  The pages must also
format without a single warning.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from pfkeyd import cli, control
from pfkeyd.effects import Instant
from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import KNOBS, mdoc_list

ROOT = Path(__file__).resolve().parent.parent
PFKEYD_8 = ROOT / "pfkeyd" / "man" / "pfkeyd.8"
PFKEY_4 = ROOT / "pfkeyd" / "man" / "pfkey.4"
PAGE = PFKEYD_8.read_text()

#: mdoc macros that may follow ``Fl`` on a line (an ``Fl`` before one is a bare dash).
_MACROS = frozenset(
    [
        "Ar",
        "Cm",
        "Dq",
        "Ev",
        "Fl",
        "Ic",
        "Li",
        "Nm",
        "Ns",
        "No",
        "Oc",
        "Oo",
        "Op",
        "Pa",
        "Pc",
        "Po",
        "Pq",
        "Ql",
        "Va",
        "Xc",
        "Xo",
    ]
)
_PUNCT = frozenset(",.;:|()[]")


# ------------------------------------------------------------------ mdoc reading


def section(name: str, text: str = PAGE) -> list[str]:
    """The lines of ``.Sh name`` up to the next ``.Sh``."""
    lines = text.splitlines()
    start = lines.index(f".Sh {name}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(".Sh ")), len(lines))
    return lines[start:end]


def tokens(line: str) -> list[str]:
    return re.findall(r'"[^"]*"|\S+', line[1:]) if line.startswith(".") else []


def flags(lines: Iterable[str]) -> list[str]:
    """The options an mdoc text names with ``Fl``: ``Fl d`` is -d, ``Fl Fl syslog``
    is --syslog, ``Fl dh`` (letters run together, BSD style) is -d and -h, and
    ``Fl -`` is --."""
    found: list[str] = []
    for line in lines:
        toks = tokens(line)
        i = 0
        while i < len(toks):
            if toks[i] != "Fl":
                i += 1
                continue
            dashes = 1
            i += 1
            while i < len(toks) and toks[i] == "Fl":
                dashes += 1
                i += 1
            word = toks[i] if i < len(toks) and toks[i] not in _MACROS and toks[i] not in _PUNCT else ""
            if dashes == 1 and word.isalpha() and len(word) > 1:
                found += [f"-{ch}" for ch in word]
            else:
                found.append("-" * dashes + word)
            i += 1 if word else 0
    return found


def synopsis() -> dict[str, list[str]]:
    """The SYNOPSIS, one entry per ``.Nm`` line: "" for the daemon, else the command."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in section("SYNOPSIS"):
        if line == ".Nm":
            current = []
            entries[f"#{len(entries)}"] = current
        elif current is not None:
            current.append(line)
    named: dict[str, list[str]] = {}
    for lines in entries.values():
        first = tokens(lines[0]) if lines else []
        name = first[1] if first[:1] == ["Cm"] else ""
        assert name not in named, f"{name or 'the daemon'} appears twice in the SYNOPSIS"
        named[name] = lines
    return named


def tag_list_after(marker: str, lines: list[str]) -> list[str]:
    """The ``.It`` lines of the first ``.Bl`` list after the line containing ``marker``."""
    start = next(i for i, line in enumerate(lines) if marker in line)
    begin = next(i for i in range(start, len(lines)) if lines[i].startswith(".Bl "))
    items: list[str] = []
    depth = 0
    for line in lines[begin:]:
        if line.startswith(".Bl "):
            depth += 1
        elif line == ".El":
            depth -= 1
            if depth == 0:
                return items
        elif line.startswith(".It ") and depth == 1:
            items.append(line)
    raise AssertionError(f"the list after {marker!r} does not end")


# ------------------------------------------------------------------ the program's side


def daemon_options() -> list[argparse.Action]:
    return [a for a in cli._daemon_parser()._actions if a.option_strings]


def primary(action: argparse.Action) -> str:
    """The spelling a synopsis uses: the short option where there is one."""
    return next((s for s in action.option_strings if not s.startswith("--")), action.option_strings[0])


def usage_entries(text: str) -> dict[str, str]:
    """A usage text split into its synopses, keyed like :func:`synopsis`, each with
    its continuation lines joined and spaces normalised."""
    entries: dict[str, str] = {}
    key = None
    for line in text.removeprefix("usage:").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "pfkeyd":
            key = words[1] if len(words) > 1 and words[1] in cli._COMMANDS else ""
            entries[key] = " ".join(words)
        else:
            assert key is not None, text
            entries[key] += " " + " ".join(words)
    return entries


def text_flags(text: str) -> set[str]:
    """Options named in plain text: ``-f``, ``--syslog``, ``--``, ``[-adn]`` as -a -d -n."""
    found: set[str] = set()
    for word in re.findall(r"(?<![\w:-])--?[A-Za-z][\w-]*|(?<!\S)--(?!\S)", text):
        if word.startswith("--") or len(word) == 2:
            found.add(word)
        else:
            found |= {f"-{ch}" for ch in word[1:]}
    return found


# ------------------------------------------------------------------ (a) knobs


def test_the_knob_list_is_the_one_the_knob_table_generates() -> None:
    block = re.search(r'\.\\" BEGIN KNOBS\n(.*?)\.\\" END KNOBS\n', PAGE, re.S)
    assert block is not None, "pfkeyd/man/pfkeyd.8 lost its BEGIN KNOBS / END KNOBS markers"
    assert block.group(1) == mdoc_list(), (
        "the knob list in pfkeyd/man/pfkeyd.8 is out of date: run `.venv/bin/python tools/update_man.py`"
    )


def test_every_knob_is_named_in_the_page_and_every_named_knob_exists() -> None:
    named = [toks[2] for toks in map(tokens, section("KNOBS")) if toks[:2] == ["It", "Va"]]
    assert named == [k.name for k in KNOBS]
    mentioned = set(re.findall(r"\b(?:net|pfkeyd)\.[a-z0-9_]+(?:\.[a-z0-9_]+)+\b", PAGE))
    unknown = mentioned - {k.name for k in KNOBS}
    assert not unknown, f"pfkeyd/man/pfkeyd.8 names knobs that do not exist: {sorted(unknown)}"


# ------------------------------------------------------------------ (b) daemon options


def test_the_synopsis_lists_exactly_the_daemon_options() -> None:
    in_page = flags(synopsis()[""])
    assert len(in_page) == len(set(in_page)), in_page
    assert set(in_page) == {primary(a) for a in daemon_options()}


def test_the_option_list_describes_exactly_the_daemon_options() -> None:
    items = tag_list_after("The options are as follows", section("DESCRIPTION"))
    in_page = flags(items)
    assert len(in_page) == len(set(in_page)), in_page
    in_program = {s for a in daemon_options() for s in a.option_strings}
    assert set(in_page) - in_program == set(), "documented, but the daemon does not accept them"
    assert in_program - set(in_page) == set(), "accepted by the daemon, but not documented"
    # each item names one option, its long and short spellings together
    for item in items:
        spellings = set(flags([item]))
        assert any(spellings == set(a.option_strings) for a in daemon_options()), item


def test_the_flag_reader_understands_mdoc() -> None:
    # The reader the tests above rely on, on the idioms the page uses.
    assert flags([".Op Fl dh"]) == ["-d", "-h"]
    assert flags([".It Fl f Ar file , Fl Fl config Ar file"]) == ["-f", "--config"]
    assert flags([".Op Fl Fl allow-uid Ar uid ..."]) == ["--allow-uid"]
    assert flags([".Fl -", ".Ar command"]) == ["--"]
    assert flags(["plain text with Fl in it"]) == []


# ------------------------------------------------------------------ (c) commands


def test_the_synopsis_lists_exactly_the_commands() -> None:
    assert set(synopsis()) - {""} == set(cli._COMMANDS)


def test_the_commands_section_describes_exactly_the_commands_with_the_synopsis_options() -> None:
    items = tag_list_after(".Ss Commands", section("DESCRIPTION"))
    described = {tokens(item)[2]: item for item in items}
    assert set(described) == set(cli._COMMANDS)
    entries = synopsis()
    for name, item in described.items():
        assert set(flags([item])) == set(flags(entries[name])), name


def test_the_sysctl_options_are_those_the_control_command_takes() -> None:
    documented = set(flags(synopsis()["sysctl"])) - {"-s"}  # -s is taken by the command line
    engine = KeyEngine()
    for letter in "abcdefghijklmnopqrstuvwxyz":
        status = control.run(engine, ["sysctl", f"-{letter}", "net.key.debug"], Instant(0.0, 0)).status
        assert (status != 64) == (f"-{letter}" in documented), letter


def test_the_decode_options_are_those_its_parser_takes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["decode", "--help"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    options = help_text.split("options:", 1)[1]
    accepted = {f for f in text_flags(options) if not f.startswith("--")} - {"-h"}
    assert accepted == set(flags(synopsis()["decode"]))


# ------------------------------------------------------------------ (d) environment


def variables_read_by_the_code() -> set[str]:
    """Environment variables pfkeyd's Python and C sources read."""
    found: set[str] = set()
    for path in sorted((ROOT / "pfkeyd").rglob("*")):
        if path.suffix not in (".py", ".c"):
            continue
        text = path.read_text()
        found |= set(re.findall(r'getenv\("([A-Z][A-Z0-9_]*)"\)', text))
        found |= set(re.findall(r'\.get\(\s*"([A-Z][A-Z0-9_]*)"', text))
        found |= set(re.findall(r'\[\s*"([A-Z][A-Z0-9_]*)"\s*\](?!\s*=[^=])', text))
        found |= set(re.findall(r'^\w*_ENV\s*(?::\s*\w+\s*)?=\s*"([A-Z][A-Z0-9_]*)"', text, re.M))
    return found


def test_the_environment_section_names_exactly_the_variables_the_code_reads() -> None:
    in_code = variables_read_by_the_code()
    # the grep must find what we know is there, or it proves nothing
    assert {"PFKEY_SOCKET", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "CC", "PFKEY_PRELOAD_WAIT_MS"} <= in_code
    items = tag_list_after(".Bl", section("ENVIRONMENT"))
    in_page = {tokens(item)[2] for item in items}
    assert all(tokens(item)[1] == "Ev" for item in items)
    assert in_page - in_code == set(), "documented, but nothing reads them"
    assert in_code - in_page == set(), "read by pfkeyd, but not documented in ENVIRONMENT"


# ------------------------------------------------------------------ (e) formatting


#: Every manual page of the project.
PAGES = sorted(p for p in (ROOT / "pfkeyd" / "man").iterdir() if p.suffix in (".4", ".8"))


def lint(page: Path) -> list[str]:
    """Warnings from mandoc -T lint and from groff -mdoc -ww, each that is installed.

    Without either the test skips, except under CI (``CI`` set), where .ci/run
    installs mandoc: there a missing linter is a failure, not a silent pass.
    """
    mandoc, groff = shutil.which("mandoc"), shutil.which("groff")
    problems: list[str] = []
    if mandoc is not None:
        result = subprocess.run(
            [mandoc, "-T", "lint", "-W", "warning", str(page)], capture_output=True, text=True, timeout=30, check=False
        )
        # Only messages about the page itself: a stale mandoc.db is the system's business.
        problems += [line for line in (result.stdout + result.stderr).splitlines() if f"{page}:" in line]
    if groff is not None:
        result = subprocess.run(
            [groff, "-mdoc", "-ww", "-z", str(page)], capture_output=True, text=True, timeout=30, check=False
        )
        problems += result.stderr.splitlines()
        problems += [f"groff exit status {result.returncode}"] if result.returncode else []
    if mandoc is None and groff is None:
        if os.environ.get("CI"):
            pytest.fail("neither mandoc nor groff is installed: .ci/run should have installed mandoc")
        pytest.skip("neither mandoc nor groff is installed: cannot check that the pages format cleanly")
    return problems


def test_every_page_is_checked() -> None:
    assert [p.name for p in PAGES] == ["pfkey.4", "pfkeyd.8", "setkey.8"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_page_formats_without_warnings(page: Path) -> None:
    assert lint(page) == []


def rendered(page: Path) -> str:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed: cannot render the page")
    result = subprocess.run(
        [groff, "-mdoc", "-Tascii", "-rLL=200n", str(page)], capture_output=True, text=True, timeout=30, check=False
    )
    return re.sub(r".\x08", "", result.stdout)


@pytest.mark.parametrize("page", [p for p in PAGES if p.suffix == ".8"], ids=lambda p: p.name)
def test_every_option_heading_closes_its_brackets(page: Path) -> None:
    # pfkeyd.8 once rendered "-s path[:dialect, --socket path[:dialect]]"
    heads = [line.strip() for line in rendered(page).splitlines() if re.match(r" {5,7}--?[A-Za-z]", line)]
    assert heads
    for head in heads:
        for spelling in head.split(", "):
            depth = 0
            for ch in spelling:
                depth += {"[": 1, "]": -1}.get(ch, 0)
                assert depth >= 0, head
            assert depth == 0, head
    if page == PFKEYD_8:
        assert "-s path[:dialect], --socket path[:dialect]" in heads


def test_the_linter_would_report_a_broken_page(tmp_path: Path) -> None:
    broken = tmp_path / "broken.8"
    broken.write_text(PAGE.replace(".Sh SEE ALSO\n", ".Sh SEE ALSO\n.Xr\n.Bl -tag -width x\n", 1))
    assert lint(broken) != []


# ------------------------------------------------------------------ (f) usage and help


def test_the_usage_text_is_the_synopsis_word_for_word() -> None:
    """Compared as groff formats the SYNOPSIS when groff is there, else by options."""
    usage = usage_entries(cli.USAGE)
    entries = synopsis()
    assert set(usage) == set(entries)
    for name, lines in entries.items():
        assert text_flags(usage[name]) == set(flags(lines)), name or "the daemon"
    groff = shutil.which("groff")
    if groff is None:
        return
    result = subprocess.run(
        [groff, "-mdoc", "-Tascii", "-rLL=200n", str(PFKEYD_8)], capture_output=True, text=True, timeout=30, check=False
    )
    rendered = re.sub(r".\x08", "", result.stdout)
    body = rendered.split("\nSYNOPSIS\n", 1)[1].split("\nDESCRIPTION\n", 1)[0]
    assert usage_entries(body) == usage


def test_help_lists_the_options_of_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    head, options = out.split("\noptions:\n", 1)
    assert usage_entries(head.split("\n\n", 1)[0]) == usage_entries(cli.USAGE)
    items = tag_list_after("The options are as follows", section("DESCRIPTION"))
    assert text_flags(options) == set(flags(items))


def test_a_usage_error_prints_the_whole_synopsis(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--no-such-option"]) == 64
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(cli.USAGE)


def test_the_usage_reader_understands_usage_text() -> None:
    assert text_flags("pfkeyd [-dh] [--syslog] [-s path[:dialect]]") == {"-d", "-h", "--syslog", "-s"}
    assert text_flags("pfkeyd exec [--socket path] -- command [arg ...]") == {"--socket", "--"}
    assert text_flags("pfkeyd lookup [-s path] dir src dst [proto [sport dport]]") == {"-s"}
    assert usage_entries("usage: pfkeyd [-d]\n              [-h]\n       pfkeyd stats [-s path]\n") == {
        "": "pfkeyd [-d] [-h]",
        "stats": "pfkeyd stats [-s path]",
    }


def test_the_page_and_the_readme_say_that_state_lives_only_in_memory_without_a_state_directory() -> None:
    caveats = " ".join(section("CAVEATS"))
    assert "only in the daemon's memory" in caveats
    assert "restart, a crash" in caveats
    assert "keys are on disk" in caveats  # with --state-dir, said plainly
    assert ".Sy Keys are then on disk ," in PAGE  # in --state-dir's description
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "State lives only in memory** unless `--state-dir` is given" in readme
    assert "a restart or a crash loses every SA and policy" in readme
    assert "**Keys are then on disk**" in readme


def test_the_signals_section_names_the_signals_the_daemon_handles() -> None:
    text = " ".join(section("SIGNALS"))
    for name in ("SIGHUP", "SIGTERM", "SIGINT"):
        assert f"Dv {name}" in text
    source = (ROOT / "pfkeyd" / "cli.py").read_text()
    handled = re.search(r"open_signal_receiver\(([^)]*)\)", source)
    assert handled is not None
    assert sorted(re.findall(r"signal\.(SIG\w+)", handled.group(1))) == ["SIGHUP", "SIGINT", "SIGTERM"]


# ------------------------------------------------------------------ (g) setkey.8


def test_setkey_documents_its_timeout_and_its_default() -> None:
    from setkey import cli as setkey_cli
    from setkey import usage

    page = (ROOT / "pfkeyd" / "man" / "setkey.8").read_text()
    items = tag_list_after("The options are as follows", section("DESCRIPTION", page))
    assert ".It Fl Fl timeout Ar seconds" in items
    text = page.split(".It Fl Fl timeout Ar seconds\n", 1)[1].split("\n.It ", 1)[0]
    assert f"The default is {setkey_cli.DEFAULT_TIMEOUT:g} seconds." in text.replace("\n", " ")
    assert setkey_cli.Runtime().reply_timeout == setkey_cli.DEFAULT_TIMEOUT
    assert "[--timeout seconds]" in usage.USAGE


# ------------------------------------------------------------------ (h) the packet library


def test_the_packet_counters_list_is_the_counter_table() -> None:
    """Every counter `pfkeyd stats` prints is described under Packet counters, and nothing else."""
    from pfkeyd.packet.counters import DESCRIPTIONS

    lines = PAGE.splitlines()
    start = lines.index(".Ss Packet counters")
    end = lines.index(".Ss Differences from FreeBSD")
    documented: dict[str, set[str]] = {}
    proto = ""
    for line in lines[start:end]:
        toks = tokens(line)
        if toks[:2] == ["It", "Cm"]:
            proto = toks[2]
            documented[proto] = set()
        elif toks[:2] == ["It", "Li"]:
            documented[proto].add(toks[2])
    assert documented == {p: set(names) for p, names in DESCRIPTIONS.items()}
