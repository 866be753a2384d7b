"""The errors of the setkey language, each with its place in the script.

Every problem found before anything is sent (syntax, values, what the dialect
cannot carry, name resolution) is a :class:`SetkeyError` carrying the file name,
the 1-based line and column, the source line and a caret under the column::

    setkey.conf:3:15: unknown encryption algorithm "aes-cbcx"
    add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbcx 0x00112233;
                                        ^

Functions that can find several problems (:func:`setkey.parser.parse`,
:func:`setkey.check.check`, :func:`setkey.resolve.resolve`) collect them all and
raise one :class:`SetkeyErrors`.  No exception of lark's ever leaves this package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pfkeyd.record import record

__all__ = [
    "SetkeyError",
    "SetkeySyntaxError",
    "SetkeyValueError",
    "SetkeyErrors",
    "Source",
]


class SetkeyError(Exception):
    """A problem at one place of a setkey script."""

    def __init__(
        self,
        message: str,
        line: int = 0,
        column: int = 0,
        *,
        filename: str | None = None,
        source_line: str | None = None,
        hint: str | None = None,
        nth: int = 0,
        inner: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.filename = filename
        self.source_line = source_line
        # Where inside the statement at line:column the problem is, when the
        # code that found it did not know: the nth word equal to ``hint``, and
        # ``inner`` (line, column) relative to the start of that word's text
        # (policy text after -P).  setkey.parser.locate turns it into a place.
        self.hint = hint
        self.nth = nth
        self.inner = inner

    def at(self, line: int, column: int) -> SetkeyError:
        """This error placed at ``line``:``column`` (the hint is dropped)."""
        return type(self)(self.message, line, column, filename=self.filename, source_line=self.source_line)

    @property
    def where(self) -> str:
        """``file:line:col`` (the parts that are known)."""
        name = self.filename if self.filename is not None else "-"
        return f"{name}:{self.line}:{self.column}" if self.line else name

    @property
    def caret(self) -> str:
        """The source line and a caret under the column, or '' without a source line."""
        if self.source_line is None or not self.line:
            return ""
        # Keep the tabs of the source line so that the caret lines up in a terminal.
        pad = "".join("\t" if c == "\t" else " " for c in self.source_line[: max(self.column - 1, 0)])
        return f"{self.source_line}\n{pad}^"

    def __str__(self) -> str:
        head = f"{self.where}: {self.message}"
        caret = self.caret
        return f"{head}\n{caret}" if caret else head

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.line}, {self.column})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SetkeyError):
            return NotImplemented
        return (type(self), self.message, self.line, self.column) == (
            type(other),
            other.message,
            other.line,
            other.column,
        )

    def __hash__(self) -> int:
        return hash((type(self), self.message, self.line, self.column))


class SetkeySyntaxError(SetkeyError):
    """Text that the grammar does not accept."""


class SetkeyValueError(SetkeyError):
    """A well-formed statement with a value that cannot be used: an unknown
    algorithm, a bad key length, a number out of range, a construct the dialect
    cannot carry, a host name that does not resolve."""


class SetkeyErrors(Exception):
    """All the problems found in one pass over a script, in the order of the script."""

    def __init__(self, errors: Iterable[SetkeyError]) -> None:
        self.errors: tuple[SetkeyError, ...] = tuple(sorted(errors, key=lambda e: (e.line, e.column)))
        super().__init__(f"{len(self.errors)} error{'s' * (len(self.errors) != 1)}")

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


@record
class Source:
    """A script's text and name, to put file name and source line into errors."""

    text: str
    filename: str = "-"

    def line(self, number: int) -> str | None:
        """The text of line ``number`` (1-based) without its newline, or None."""
        if number < 1:
            return None
        lines = self._lines()
        return lines[number - 1].rstrip("\r") if number <= len(lines) else None

    def _lines(self) -> Sequence[str]:
        # Only ever needed for errors, so not worth caching on a frozen object.
        return self.text.split("\n")

    def locate(self, errors: Iterable[SetkeyError]) -> list[SetkeyError]:
        """``errors`` with file name and source line filled in."""
        lines = self._lines()
        out: list[SetkeyError] = []
        for e in errors:
            if e.filename is not None and e.source_line is not None:
                out.append(e)
                continue
            src = lines[e.line - 1].rstrip("\r") if 1 <= e.line <= len(lines) else None
            out.append(type(e)(e.message, e.line, e.column, filename=self.filename, source_line=src))
        return out
