"""Parse a setkey script: text in, :mod:`setkey.commands` values out.

Theory of operation
-------------------
The grammars (``setkey.lark``, ``policy.lark``, installed as the package
``setkey.grammar``) are built once per process by lark, LALR with the
contextual lexer and ``strict=True``, with the transformers of
:mod:`setkey.transformer` inlined.  Two drivers run the LALR tables lark built:

* the fast driver (:class:`setkey.lalr.Fast`): one ``re.split`` cuts the text into
  lexemes; the driver makes the contextual lexer's choices itself (a word is a
  keyword only where the state accepts that keyword, a number only where a
  number is accepted) and runs lark's action table, statement by statement,
  recording each statement shape's actions once and replaying them (see the
  class).  Each reduction calls the transformer's method, as lark would.
  Tokens are plain strings, not lark Tokens.  Measured on the CI machine kind
  (bench/setkey_parse.py), lark's own lexer and parser read 8 000 to 16 000
  statements a second; a script of 100 000 statements has to parse at 20 000
  a second or more (``setkey -f`` of bench/setkey_load.py's script, which
  also checks, resolves, builds and sends, at 15 000), and the fast driver
  reads 48 000 to 60 000 (22 000 to 24 000 when every statement has its own
  keys and tunnel policy).
* lark's own lexer and parser, used whenever the fast driver meets anything it
  does not accept.  They re-parse the whole text with error recovery (``on_error``
  puts the parser back at the start of a statement and skips to the next ";"),
  so every syntax error is reported.  The tests check that both drivers give the
  same commands for the same text, so the fast driver is an optimisation of the
  grammar, not a second definition of the language.

The policy text after ``-P`` is one token of the setkey grammar, parsed with
``policy.lark`` as setkey hands it to libipsec's ipsec_set_policy(); results are
memoised by text, since a script repeats the same few policies.

Nothing is sent, resolved or looked up here: :func:`parse` only builds values.
The whole text is parsed before the caller does anything else, and all
problems are raised together as one :class:`~setkey.errors.SetkeyErrors`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from lark import Lark, UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr, TerminalDef

from setkey.commands import Command, Policy
from setkey.errors import SetkeyError, SetkeyErrors, SetkeySyntaxError, Source
from setkey.lalr import Fail, Fast
from setkey.transformer import PolicyTransformer, Rejected, SetkeyTransformer

__all__ = [
    "parse",
    "parse_policy",
    "parse_with_recovery",
    "locate",
    "setkey_grammar",
    "policy_grammar",
    "describe_terminal",
    "fast_setkey_parser",
    "fast_policy_parser",
    "setkey_lexemes",
]

GRAMMAR_PACKAGE = "setkey.grammar"


# ------------------------------------------------------------------ grammars


@functools.cache
def policy_grammar() -> Lark:
    """The ipsec_set_policy(3) grammar with its transformer (built once)."""
    return Lark.open_from_package(
        GRAMMAR_PACKAGE,
        "policy.lark",
        parser="lalr",
        lexer="contextual",
        strict=True,
        start="policy",
        transformer=PolicyTransformer(),
    )


@functools.cache
def setkey_grammar() -> Lark:
    """The setkey grammar with its transformer (built once)."""
    return Lark.open_from_package(
        GRAMMAR_PACKAGE,
        "setkey.lark",
        parser="lalr",
        lexer="contextual",
        strict=True,
        transformer=SetkeyTransformer(_policy_at),
    )


# ------------------------------------------------------------------ error texts

#: How the regular-expression terminals are described in error messages; the
#: other terminals are keywords and symbols, quoted as written.
_REGEX_TERMINALS = {
    "STRING": "a host, address or name",
    "DEC": "a decimal number",
    "HEX": "a 0x-hexadecimal number",
    "QUOTED": 'a "quoted string"',
    "AIFLAGS": "-4, -6 or -n",
    "POLICY": "a policy",
    "ADDRESS": "an address",
    "UNIQUE_ID": "unique:N",
    "$END": "the end of the input",
}


def describe_terminal(name: str, terminals: Mapping[str, TerminalDef] | None = None) -> str:
    """How a terminal appears in an error message: ``"add"``, ``a decimal number``."""
    if name in _REGEX_TERMINALS:
        return _REGEX_TERMINALS[name]
    if terminals is not None and name in terminals:
        pattern = terminals[name].pattern
        if isinstance(pattern, PatternStr):
            return f'"{pattern.value}"'
    return name.lower()


def _expected(names: set[str] | frozenset[str], terminals: Mapping[str, TerminalDef]) -> str:
    words = sorted(
        {describe_terminal(n, terminals) for n in names if n not in ("WS", "COMMENT")},
        key=lambda w: (not w.startswith('"'), w),
    )
    if not words:
        return ""
    if len(words) == 1:
        return f", expected {words[0]}"
    if len(words) > 10:
        return f", expected one of {', '.join(words[:10])}, ..."
    return f", expected {', '.join(words[:-1])} or {words[-1]}"


_FIRST_WORD = re.compile(r"[ \t\r\n]*([^ \t\r\n;/\[\]]+|.)")


def _shown(value: str) -> str:
    value = value if len(value) <= 40 else value[:37] + "..."
    return '"' + value.replace("\n", "\\n").replace("\t", "\\t") + '"'


def _syntax_error(exc: UnexpectedInput, terminals: Mapping[str, TerminalDef]) -> SetkeySyntaxError:
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            what = "unexpected end of input"
        elif token.type == "POLICY" and "POLICY" not in exc.expected:
            # lark's lexer tried every terminal, and the policy text swallows a
            # whole line: name its first word only.
            first = _FIRST_WORD.match(str(token))
            what = f"unexpected {_shown(first.group(1) if first else str(token))}"
        else:
            what = f"unexpected {_shown(str(token))}"
        line, column = token.line or exc.line, token.column or exc.column
        return SetkeySyntaxError(f"syntax error: {what}{_expected(exc.expected, terminals)}", line, column)
    assert isinstance(exc, UnexpectedCharacters)
    char = exc.char
    return SetkeySyntaxError(
        f"syntax error: unexpected character {_shown(char)}{_expected(exc.allowed or set(), terminals)}",
        exc.line,
        exc.column,
    )


# ------------------------------------------------------------------ the lexemes

# The fast driver cuts a text with one regular expression whose alternatives are
# the grammar's own terminal patterns, read from the built grammar (Lark's
# public get_terminal), so a terminal is written once, in the .lark file.  Group
# 1 is the blanks and comments before a lexeme (the grammar's %ignore'd WS and
# COMMENT), group 2 the lexeme, empty at the end of the text.  The alternatives
# are the grammar's STRING (which also covers the keywords, numbers and
# 0x-numbers, told apart by Fast), the symbols, -P with the policy text after it
# (one lexeme here, two tokens for the parser), any option word (the grammar's
# options and AIFLAGS, or an unknown one that lark's own parser then reports)
# and a "quoted string".  Only -P and the option words start alike, and -P comes
# first; the others differ in their first character, so they come most frequent
# first: each lexeme is tried against the alternatives before its own.  The
# blanks are matched possessively (*+): no lexeme starts with a blank or "#".
# A comment's text stays plain: after a comment line that no lexeme follows,
# the search goes back into the comment, as it always did.
_BLANKS_AND_COMMENTS = r"([ \t\r\n]*+(?:\#[^\n]*[ \t\r\n]*+)*)"
#: The same for a text without "#", whose blanks hold no comment: looking for
#: a comment before every lexeme is a sixth of the work of cutting a script.
_BLANKS = r"([ \t\r\n]*+)"
_OPTION_WORD = r"-[A-Za-z0-9_]+"


def _terminal_re(lark: Lark, name: str) -> str:
    """The regular expression of the grammar's terminal ``name``."""
    return str(lark.get_terminal(name).pattern.to_regexp())


def _symbols_re(lark: Lark, names: tuple[str, ...]) -> str:
    """A character class of the grammar's one-character symbol terminals ``names``."""
    chars = []
    for name in names:
        pattern = lark.get_terminal(name).pattern
        assert isinstance(pattern, PatternStr) and len(pattern.value) == 1, name
        chars.append(re.escape(pattern.value))
    return "[" + "".join(chars) + "]"


def _lexemes(prefix: str, alternatives: list[str]) -> re.Pattern[str]:
    # The terminals' own alternatives join the list as they are ("(a|b|c)" is
    # "((?:a|b)|c)", one group fewer for each lexeme to enter).
    pattern = re.compile(prefix + "(" + "|".join([*alternatives, r"\Z"]) + ")")
    if pattern.groups != 2:  # a terminal with a capturing group would shift the lexeme's group
        raise AssertionError(f"lexeme pattern has {pattern.groups} groups: {pattern.pattern}")
    return pattern


class _SetkeyLexemes(NamedTuple):
    commented: re.Pattern[str]
    uncommented: re.Pattern[str]
    aiflags: re.Pattern[str]
    hex: re.Pattern[str]


@functools.cache
def setkey_lexemes() -> _SetkeyLexemes:
    """The lexeme patterns of setkey.lark (see above)."""
    lark = setkey_grammar()
    alternatives = [
        _terminal_re(lark, "STRING"),
        _symbols_re(lark, ("SEMI", "SLASH", "LSQB", "RSQB")),
        re.escape("-P") + "(?:" + _terminal_re(lark, "POLICY") + ")",
        _OPTION_WORD,
        _terminal_re(lark, "QUOTED"),
    ]
    return _SetkeyLexemes(
        _lexemes(_BLANKS_AND_COMMENTS, alternatives),
        _lexemes(_BLANKS, alternatives),
        re.compile(_terminal_re(lark, "AIFLAGS")),
        re.compile(_terminal_re(lark, "HEX")),
    )


@functools.cache
def _policy_lexemes() -> re.Pattern[str]:
    """The lexeme pattern of policy.lark: unique:N, an address or word, a symbol."""
    lark = policy_grammar()
    return _lexemes(
        _BLANKS_AND_COMMENTS,
        [
            _terminal_re(lark, "UNIQUE_ID"),
            _terminal_re(lark, "ADDRESS"),
            _symbols_re(lark, ("MINUS", "PLUS", "SLASH", "LSQB", "RSQB")),
        ],
    )


@functools.cache
def fast_setkey_parser() -> Fast:
    lexemes = setkey_lexemes()
    return Fast(
        setkey_grammar(),
        "start",
        lexemes.commented,
        "STRING",
        statement_end=";",
        raw_prefix=("-P", "POLICY"),
        option_fallback=("AIFLAGS", lexemes.aiflags),
        uncommented_re=lexemes.uncommented,
        hex_re=lexemes.hex,
    )


@functools.cache
def fast_policy_parser() -> Fast:
    return Fast(policy_grammar(), "policy", _policy_lexemes(), "ADDRESS", statement_end=None, locate_statements=False)


def _find(text: str, offset: int, pattern: re.Pattern[str], hint: str, nth: int, raw_prefix: str | None) -> int | None:
    """The offset of the ``nth`` lexeme equal to ``hint`` from ``offset`` on, in the
    statement that starts there (up to its ";"), or None."""
    for m in pattern.finditer(text, offset):
        value = m.group(2)
        if not value:
            return None
        start = m.start(2)
        if raw_prefix is not None and value.startswith(raw_prefix) and len(value) > len(raw_prefix):
            value = raw_prefix  # the policy text after -P is not searched
        if value == hint:
            if nth == 0:
                return start
            nth -= 1
        if value == ";":
            return None
    return None  # pragma: no cover - finditer always ends with the empty lexeme


def _line_column(text: str, offset: int) -> tuple[int, int]:
    return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)


def _offset(text: str, line: int, column: int) -> int:
    start = 0
    for _ in range(line - 1):
        start = text.index("\n", start) + 1
    return start + column - 1


def _after(text: str, offset: int, inner: tuple[int, int]) -> int:
    """The offset ``inner`` (line, column, from 1) counts from ``offset``."""
    rel_line, rel_col = inner
    for _ in range(rel_line - 1):
        offset = text.index("\n", offset) + 1
    return offset + rel_col - 1


def locate(text: str, error: SetkeyError) -> SetkeyError:
    """Place an error that names a word (``hint``) of the statement at its line
    and column on that word; other errors are returned unchanged."""
    if error.hint is None or not error.line:
        return error
    try:
        offset = _offset(text, error.line, error.column)
        found = _find(text, offset, setkey_lexemes().commented, error.hint, error.nth, "-P")
    except ValueError:  # pragma: no cover - the statement's position is in the text
        found = None
    if found is None:
        return error.at(error.line, error.column)
    if error.inner is not None:
        found = _after(text, found + len(error.hint), error.inner)
    return error.at(*_line_column(text, found))


# ------------------------------------------------------------------ policies


@functools.lru_cache(maxsize=4096)
def _policy_relative(text: str) -> Policy | SetkeyError:
    """The policy of ``text``, or its first error with a position relative to the text."""
    try:
        try:
            result: Policy = fast_policy_parser().parse(text)
            return result
        except Fail:
            pass
        lark = policy_grammar()
        try:
            parsed: Policy = lark.parse(text)  # type: ignore[assignment]  # the transformer's value
        except UnexpectedInput as exc:
            error = _syntax_error(exc, lark._terminals_dict)
            return type(error)(f"policy: {error.message}", error.line, error.column)
        return parsed
    except SetkeyError as exc:
        if exc.line:
            return exc
        found = _find(text, 0, _policy_lexemes(), exc.hint, exc.nth, None) if exc.hint else None
        line, column = _line_column(text, found) if found is not None else (1, 1)
        return type(exc)(exc.message, line, column)


def parse_policy(text: str, line: int = 0, column: int = 0) -> Policy:
    """Parse the ipsec_set_policy(3) text ``text``.

    ``line`` and ``column`` are where the text starts in its script; errors are
    placed there.  Without them an error names the word "-P" before the text
    (see :func:`locate`).  Raises :class:`~setkey.errors.SetkeySyntaxError` or
    :class:`~setkey.errors.SetkeyValueError`.
    """
    found = _policy_relative(str(text))
    if not isinstance(found, SetkeyError):
        return found
    rel = (found.line or 1, found.column or 1)
    if not line:
        raise type(found)(found.message, hint="-P", inner=rel)
    if rel[0] == 1:
        raise type(found)(found.message, line, column + rel[1] - 1)
    raise type(found)(found.message, line + rel[0] - 1, rel[1])


def _policy_at(tok: str) -> Policy:
    return parse_policy(tok, getattr(tok, "line", 0) or 0, getattr(tok, "column", 0) or 0)


# ------------------------------------------------------------------ parse


def _statement_boundary(states: Mapping[Any, Mapping[str, Any]], parser_state: Any) -> None:
    """Unwind the parser to the start of the statement it is in."""
    stack = parser_state.state_stack
    while len(stack) > 1 and "ADD" not in states[stack[-1]]:
        stack.pop()
    del parser_state.value_stack[len(stack) - 1 :]


def _skip_statement(text: str, pos: int) -> int:
    """The position after the next ";" at or after ``pos`` (quotes and comments skipped)."""
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == '"':
            end = text.find('"', pos + 1)
            pos = n if end < 0 else end + 1
        elif c == "#":
            end = text.find("\n", pos)
            pos = n if end < 0 else end
        elif c == ";":
            return pos + 1
        else:
            pos += 1
    return n


_STATEMENT_KEYWORDS = frozenset(
    {
        "ADD",
        "UPDATE",
        "GETSPI",
        "GET",
        "DELETE",
        "DELETEALL",
        "FLUSH",
        "DUMP",
        "SPDADD",
        "SPDUPDATE",
        "SPDDELETE",
        "SPDFLUSH",
        "SPDDUMP",
        "EXIT",
        "QUIT",
        "BYE",
    }
)


def parse_with_recovery(text: str) -> tuple[list[Any], list[SetkeyError]]:
    """lark's own lexer and parser, reporting every syntax error."""
    lark = setkey_grammar()
    terminals = {t.name: t for t in lark.terminals}
    errors: list[SetkeyError] = []
    finished: list[Any] = []

    def on_error(exc: UnexpectedInput) -> bool:
        interactive = exc.interactive_parser
        parser_state = interactive.parser_state
        states = parser_state.parse_conf.states
        at_end = isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
        if not (at_end and "ADD" in states[parser_state.state_stack[-1]]):
            # (lark ends a parse inside a reduction, so the input ending between
            # two statements after a recovery comes here too: no error then)
            errors.append(_syntax_error(exc, terminals))
        _statement_boundary(states, parser_state)
        if isinstance(exc, UnexpectedToken):
            token = exc.token
            if token.type == "$END":
                # The input ends inside a statement: keep the statements before it.
                finished.extend(parser_state.value_stack[-1] if parser_state.value_stack else [])
                return False
            if token.type in _STATEMENT_KEYWORDS:
                # A missing ";": the next statement starts here.
                interactive.feed_token(token)
                return True
            if token.type == "SEMI":
                return True  # the statement ended; go on after it
        lexer_state = interactive.lexer_thread.state
        assert lexer_state is not None
        line_counter = lexer_state.line_ctr
        start = line_counter.char_pos
        line_counter.feed(text[start : _skip_statement(text, start)])
        return True

    result: Any
    try:
        result = lark.parse(text, on_error=on_error)
    except UnexpectedInput as exc:
        if not finished and not (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
            errors.append(_syntax_error(exc, terminals))  # pragma: no cover - recovery always resumes
        result = finished
    return list(result or []), errors


#: A word that may end a script (matched before the careful scan below runs).
#: The plain substring test comes first: a ``\b`` search asks Unicode's
#: character tables about every character of the text, which cost a tenth of
#: the parse of a 30 000-statement script (bench/README.md, Parse).
_EXIT_WORDS = ("exit", "quit", "bye")
_EXIT_WORD = re.compile(r"\b(?:exit|quit|bye)\b")
#: The pieces a script is cut into to find its statements: a quoted string (to
#: its closing quote, or the end), a comment (not the "#" of ``unique#N``), a
#: ";", a run of other text, or any other single character.
_PIECE = re.compile(r'"[^"]*+"?|(?<!unique)\#[^\n]*+|;|[^";\#]++|.', re.S)


def _until_exit(text: str) -> str:
    """``text`` up to the end of its first ``exit;`` (``quit;``, ``bye;``) statement.

    ipsec-tools' parser stops at that statement (``exit_now``), so what follows it
    is never read, not even for syntax errors (setkey.8).  The script is cut here,
    before either driver runs, so the fast driver and lark's parser see the same
    text.  Statements end at a ";" outside quoted strings and comments, as the
    lexer has them; a statement is an exit when its only word is the keyword.
    """
    if not any(word in text for word in _EXIT_WORDS) or _EXIT_WORD.search(text) is None:
        return text  # the common case: nothing cut
    words: list[str] = []
    for piece in _PIECE.finditer(text):
        chunk = piece.group()
        if chunk == ";":
            if len(words) == 1 and words[0] in ("exit", "quit", "bye"):
                return text[: piece.end()]
            words = []
        elif chunk.startswith('"'):
            words.append(chunk)  # a quoted string is a word of its statement
        elif not chunk.startswith("#"):
            words += chunk.split()
    return text


def parse(text: str, filename: str = "-") -> list[Command]:
    """Parse a whole setkey script.

    Returns the commands in order; each has its ``line`` and ``column``.  Raises
    :class:`~setkey.errors.SetkeyErrors` holding every syntax error and every
    bad value (unknown algorithm, number out of range, bad policy, ...), each
    with file, line, column and source line.  Checks that depend on the PF_KEY
    dialect are :func:`setkey.check.check`'s.
    """
    errors: list[SetkeyError] = []
    text = _until_exit(text)
    try:
        items: list[Any] = fast_setkey_parser().parse(text)
    except Fail:
        items, errors = parse_with_recovery(text)
    commands: list[Command] = []
    for item in items:
        if isinstance(item, Rejected):
            errors.append(locate(text, item.error))
        else:
            commands.append(item)
    if errors:
        raise SetkeyErrors(Source(text, filename).locate(errors))
    return commands
