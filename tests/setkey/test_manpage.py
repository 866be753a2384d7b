"""pfkeyd/man/setkey.8 agrees with the program: its SYNOPSIS is setkey.usage.USAGE, its
option list matches the SYNOPSIS, its ALGORITHMS table is pfkeyd.algorithms.

Once the CLI exists, the option check against it is one line:
``assert manpage.option_flags(manpage.source()) == <the options the CLI accepts>``.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from pfkeyd import algorithms
from pfkeyd.algorithms import Kind
from pfkeyd.defaults import ROOT_SOCKET, SOCKET_ENV, SOCKET_NAME
from pfkeyd.wire import Dialect
from setkey.usage import EX_USAGE, USAGE
from tests.setkey import manpage


@pytest.fixture(scope="module")
def text() -> str:
    return manpage.source()


def test_synopsis_is_the_usage_text(text: str) -> None:
    assert manpage.synopsis_lines(text) == manpage.usage_lines(USAGE)
    lines = USAGE.splitlines()
    assert lines[0].startswith("usage: setkey ")
    assert all(line.startswith("       setkey ") for line in lines[1:])


def test_synopsis_reader_sees_a_difference() -> None:
    changed = manpage.source().replace(".Op Fl Paglptv", ".Op Fl Pagltv", 1)
    assert manpage.synopsis_lines(changed) != manpage.usage_lines(USAGE)


def synopsis_options(usage: str) -> set[str]:
    options: set[str] = set()
    for token in re.findall(r"--[a-z]+|-[A-Za-z]+", usage):
        options.update([token] if token.startswith("--") else (f"-{c}" for c in token[1:]))
    return options


def test_every_option_of_the_synopsis_is_described(text: str) -> None:
    assert manpage.option_flags(text) == synopsis_options(USAGE)
    # FreeBSD's letters and the ipsec-tools ones that do not clash with them
    wanted = {
        "-c",
        "-f",
        "-e",
        "-D",
        "-P",
        "-F",
        "-a",
        "-l",
        "-g",
        "-t",
        "-v",
        "-x",
        "-h",
        "-n",
        "-p",
        "-H",
        "-V",
        "-r",
        "-k",
        "--json",
        "--socket",
        "--dialect",
    }
    assert wanted <= manpage.option_flags(text)


def test_algorithm_table_is_the_project_table(text: str) -> None:
    assert manpage.algorithm_rows(text) == manpage.expected_algorithm_rows()


def test_algorithm_table_lists_every_setkey_name(text: str) -> None:
    rows = manpage.algorithm_rows(text)
    flag = {Kind.ENCRYPT: "E", Kind.AUTH: "A", Kind.COMPRESS: "C"}
    for alg in algorithms.ALGORITHMS:
        for dialect in Dialect:
            for spelling in alg.on(dialect).setkey:
                assert (flag[alg.kind], spelling.name) in rows
    assert rows[("E", "aes-cbc")] == ("128, 192, 256", "128, 192, 256")
    assert rows[("E", "aes-gcm-16")] == ("160, 224, 288", manpage.NOT_ACCEPTED)
    assert rows[("A", "hmac-sha1")] == ("160", "160")


def test_algorithm_table_check_can_fail(text: str) -> None:
    broken = text.replace(".It Li hmac-sha1 Ta Fl A Ta 160 Ta 160", ".It Li hmac-sha1 Ta Fl A Ta 160 Ta 128")
    assert manpage.algorithm_rows(broken) != manpage.expected_algorithm_rows()


def test_sections_and_facts(text: str) -> None:
    sections = manpage.sections(text)
    for name in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "ALGORITHMS",
        "ENVIRONMENT",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
        "BUGS",
    ):
        assert name in sections, name
    environment = "\n".join(sections["ENVIRONMENT"])
    assert SOCKET_ENV in environment and "XDG_RUNTIME_DIR" in environment
    description = "\n".join(sections["DESCRIPTION"])
    assert ROOT_SOCKET in description and f"$XDG_RUNTIME_DIR/{SOCKET_NAME}" in description
    assert str(EX_USAGE) in "\n".join(sections["EXIT STATUS"])


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_formats_the_page_without_warnings() -> None:
    result = subprocess.run(
        ["groff", "-mdoc", "-ww", "-z", str(manpage.MANPAGE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stderr == ""
