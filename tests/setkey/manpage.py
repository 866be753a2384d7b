"""Helpers that read ``pfkeyd/man/setkey.8`` for the tests.

The manual page is mdoc source; these helpers understand the few macros its
SYNOPSIS, option list and ALGORITHMS table use, which is enough to compare them
with the program (:data:`setkey.usage.USAGE`, the options the CLI accepts) and
with :mod:`pfkeyd.algorithms`.
"""

from __future__ import annotations

import re
from pathlib import Path

from pfkeyd import algorithms
from pfkeyd.algorithms import Algorithm, KeyForm, Kind
from pfkeyd.wire import Dialect
from setkey import keylen

ROOT = Path(__file__).resolve().parents[2]
MANPAGE = ROOT / "pfkeyd" / "man" / "setkey.8"

#: The setkey flag that introduces each kind of algorithm.
FLAG = {Kind.ENCRYPT: "E", Kind.AUTH: "A", Kind.COMPRESS: "C"}
NOT_ACCEPTED = r"\(em"
NOT_SUPPORTED = "not supported"
NO_KEY = "no key"


def source(path: Path = MANPAGE) -> str:
    return path.read_text(encoding="utf-8")


def sections(text: str) -> dict[str, list[str]]:
    """The lines of each ``.Sh`` section, keyed by the section title."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(".Sh "):
            current = out.setdefault(line[4:].strip().strip('"'), [])
        elif current is not None and not line.startswith('.\\"'):
            current.append(line)
    return out


def _words(args: str) -> list[str]:
    return re.findall(r'"[^"]*"|\S+', args)


def _inline(words: list[str]) -> str:
    """Render the inline macros a SYNOPSIS line uses: Fl, Ar, Op, Oo/Oc, Ns, Cm."""
    out: list[str] = []
    no_space = False
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        piece: str | None = None
        if w == "Fl":
            flag = "-"
            while i < len(words) and words[i] == "Fl":  # "Fl Fl json" is --json
                flag += "-"
                i += 1
            if i < len(words) and not _is_macro(words[i]):
                flag += words[i]
                i += 1
            piece = flag
        elif w == "Op":
            rest = words[i:]
            i = len(words)
            piece = "[" + _inline(rest) + "]"
        elif w == "Ns":
            no_space = True
            continue
        elif w in ("Ar", "Cm", "Li", "Nm"):
            continue
        else:
            piece = w.strip('"')
        if out and not no_space:
            out.append(" ")
        out.append(piece)
        no_space = False
    return "".join(out)


def _is_macro(word: str) -> bool:
    return word in {"Fl", "Ar", "Op", "Ns", "Cm", "Li", "Nm", "Ta"}


def synopsis_lines(text: str) -> list[str]:
    """The SYNOPSIS as plain lines: each ``.Nm`` starts a new ``setkey ...`` line."""
    lines: list[str] = []
    for line in sections(text)["SYNOPSIS"]:
        if line.startswith(".Nm"):
            lines.append("setkey")
            rest = line[3:].strip()
            if rest:
                lines[-1] += " " + _inline(_words(rest))
        elif line.startswith(".") and lines:
            lines[-1] += " " + _inline(_words(line[1:]))
    return lines


def usage_lines(usage: str) -> list[str]:
    """USAGE without ``usage:`` and its alignment, one command form per line."""
    return [line.strip().removeprefix("usage:").strip() for line in usage.strip("\n").splitlines()]


def option_flags(text: str) -> set[str]:
    """Every option of the first list in the DESCRIPTION (the option list), as
    ``-x`` or ``--json``; the lists of the configuration syntax that follow are
    not command-line options."""
    flags: set[str] = set()
    depth = 0
    seen_list = False
    for line in sections(text)["DESCRIPTION"]:
        if line.startswith(".Bl"):
            if depth == 0 and seen_list:
                break
            depth += 1
            seen_list = True
        elif line.startswith(".El"):
            depth -= 1
        elif depth == 1 and line.startswith(".It Fl "):
            flags.add(_inline(_words(line[4:])).split()[0])
    return flags


def algorithm_rows(text: str) -> dict[tuple[str, str], tuple[str, str]]:
    """The ALGORITHMS table: (flag, name) -> (freebsd text, linux text)."""
    rows: dict[tuple[str, str], tuple[str, str]] = {}
    for line in sections(text)["ALGORITHMS"]:
        m = re.match(r"\.It Li (\S+) Ta Fl ([AEC]) Ta (.*?) Ta (.*)$", line)
        if m:
            key = (m[2], m[1])
            assert key not in rows, f"{key} listed twice"
            rows[key] = (m[3].strip(), m[4].strip())
    return rows


# ------------------------------------------------------------ expected table


def _bits_text(bits: list[int]) -> str:
    if not bits:
        return NOT_SUPPORTED
    if len(bits) == 1:
        return str(bits[0])
    if len(bits) <= 4:
        return ", ".join(map(str, bits))
    if bits == list(range(bits[0], bits[-1] + 1, 8)):
        return f"{bits[0]} to {bits[-1]}"
    return ", ".join(map(str, bits))


def key_text(alg: Algorithm, name: str, dialect: Dialect) -> str:
    """What the table says for one spelling in one dialect: the key sizes in bits
    that both setkey's check and the daemon accept, ``no key``, ``not supported``
    (setkey knows the name, the daemon will not install it) or an em dash (that
    dialect's setkey does not know the name)."""
    support = alg.on(dialect)
    spelling = next((s for s in support.setkey if s.name == name), None)
    if spelling is None:
        return NOT_ACCEPTED
    if support.keys is None:
        return NOT_SUPPORTED
    bits = keylen.accepted_bits(alg, dialect, form=spelling.key)
    if bits is None:
        return NOT_SUPPORTED
    if spelling.key is KeyForm.NONE:
        # -A null and -C send no key extension; a key-less -E sends an empty one.
        if alg.kind is Kind.ENCRYPT:
            accepted = 0 in bits and (support.keyless or 0 in support.keys)
        else:
            accepted = support.keyless
        return NO_KEY if accepted else NOT_SUPPORTED
    return _bits_text([b for b in bits if b % 8 == 0 and b // 8 in support.keys])


def expected_algorithm_rows() -> dict[tuple[str, str], tuple[str, str]]:
    rows: dict[tuple[str, str], tuple[str, str]] = {}
    order = [Kind.ENCRYPT, Kind.AUTH, Kind.COMPRESS]
    for kind in order:
        for alg in algorithms.ALGORITHMS:
            if alg.kind is not kind:
                continue
            names = [s.name for d in Dialect for s in alg.on(d).setkey]
            for name in dict.fromkeys(names):
                rows[(FLAG[kind], name)] = (key_text(alg, name, Dialect.FREEBSD), key_text(alg, name, Dialect.LINUX))
    return rows
