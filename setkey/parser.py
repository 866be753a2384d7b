"""Parse a setkey script: text in, :mod:`setkey.commands` values out.

Theory of operation
-------------------
The grammars (``setkey.lark``, ``policy.lark``, installed as the package
``setkey.grammar``) are built once per process by lark, LALR with the
contextual lexer and ``strict=True``, with the transformers of
:mod:`setkey.transformer` inlined.  Two drivers run the LALR tables lark built:

* the fast driver (:class:`_Fast`): one ``findall`` cuts the text into
  lexemes; the driver makes the contextual lexer's choices itself (a word is a
  keyword only where the state accepts that keyword, a number only where a
  number is accepted) and runs lark's action table, statement by statement,
  recording each statement shape's actions once and replaying them (see the
  class).  Each reduction calls the transformer's method, as lark would.
  Tokens are plain strings, not lark Tokens.  Measured on the CI machine kind
  (bench/setkey_parse.py), lark's own lexer and parser read 8 000 to 13 000
  statements a second; a script of 100 000 statements has to parse at 20 000
  a second or more, and the fast driver reads 30 000 to 45 000 (15 000 to
  21 000 when every statement has its own keys and tunnel policy).
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
from typing import Any

from lark import Lark, UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr, TerminalDef

from setkey.commands import Command, Policy
from setkey.errors import SetkeyError, SetkeyErrors, SetkeySyntaxError, Source
from setkey.transformer import Located, PolicyTransformer, Rejected, SetkeyTransformer

__all__ = ["parse", "parse_policy", "locate", "setkey_grammar", "policy_grammar", "describe_terminal"]

GRAMMAR_PACKAGE = "setkey.grammar"


# ------------------------------------------------------------------ grammars


@functools.cache
def policy_grammar() -> Lark:
    """The ipsec_set_policy(3) grammar with its transformer (built once)."""
    return Lark.open_from_package(GRAMMAR_PACKAGE, "policy.lark", parser="lalr", lexer="contextual",
                                  strict=True, start="policy", transformer=PolicyTransformer())


@functools.cache
def setkey_grammar() -> Lark:
    """The setkey grammar with its transformer (built once)."""
    return Lark.open_from_package(GRAMMAR_PACKAGE, "setkey.lark", parser="lalr", lexer="contextual",
                                  strict=True, transformer=SetkeyTransformer(_policy_at))


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
    words = sorted({describe_terminal(n, terminals) for n in names if n not in ("WS", "COMMENT")},
                   key=lambda w: (not w.startswith('"'), w))
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
    return SetkeySyntaxError(f"syntax error: unexpected character {_shown(char)}"
                             f"{_expected(exc.allowed or set(), terminals)}", exc.line, exc.column)


# ------------------------------------------------------------------ the fast driver


class _Fail(Exception):
    """The fast driver gives up; lark's own parser takes over."""


# Signature marks of lexemes that are not keywords or symbols (never a keyword).
_NUMBER, _HEXNUM, _WORD, _QUOTED, _RAW, _UNIQUE, _END = "\0#", "\0x", "\0w", "\0q", "\0r", "\0u", "\0$"
_HEX = re.compile(r"0[xX][0-9A-Fa-f]+")


class _Fast:
    """A lean LALR driver over the tables lark built for a grammar.

    ``lexeme_re`` is searched with ``findall`` over the whole text: group 1 is
    the blanks and comments before a lexeme, group 2 the lexeme (empty at the
    end of the text).  A lexeme is classified by its text: a keyword or symbol
    of the grammar, a number, a 0x-number, a "quoted string", a word, a
    ``unique:N`` (policy), or ``raw_prefix`` followed by raw text (the policy
    after -P, which becomes two tokens).

    Statements are the unit of work.  The *signature* of a statement (the
    classes of its lexemes, the text of keywords and symbols) and the LALR
    state at its start decide every choice of the contextual lexer and of the
    parser.  The first statement of each signature is run through the LALR
    automaton token by token and its actions are kept as a trace; a later
    statement with that signature replays the trace: push the tokens, call the
    reductions.  Scripts have few signatures.

    Tokens are the lexemes' text; the first of each statement is a
    :class:`~setkey.transformer.Located` that knows its line and column.
    """

    _TRACE_LIMIT = 4096

    def __init__(self, lark: Lark, start: str, lexeme_re: re.Pattern[str], word_type: str, *,
                 statement_end: str | None, raw_prefix: tuple[str, str] | None = None,
                 option_fallback: tuple[str, re.Pattern[str]] | None = None, locate_statements: bool = True) -> None:
        parser = lark.parser.parser.parser  # lark's _Parser: its parse table
        table = parser.parse_table
        transformer = lark.options.transformer
        self.start_state = table.start_states[start]
        self.end_state = table.end_states[start]
        # Each rule's callback is the transformer's method itself: the grammars
        # have no rule that lark would inline or filter (no "_rule", "?rule",
        # anonymous token or "*" helper), so lark's own callback would call the
        # method with the same children.  Methods marked as groups return their
        # children as a tuple; the trace builds the tuple without the call.
        functions: dict[Any, Any] = {}
        for rule in lark.rules:
            name = str(rule.alias or rule.origin.name)
            if name.startswith("_") or rule.options.expand1 or rule.options.empty_indices:
                raise AssertionError(f"rule {name} needs lark's tree shaping")
            method = getattr(transformer, name).base_func
            functions[rule] = None if getattr(method, "__setkey_group__", False) else method
        actions: dict[Any, dict[str, Any]] = {}
        for state, row in table.states.items():
            out: dict[str, Any] = {}
            for symbol, (action, arg) in row.items():
                if action.name == "Shift":
                    out[str(symbol)] = arg
                else:
                    out[str(symbol)] = (len(arg.expansion), functions[arg], str(arg.origin.name))
            actions[state] = out
        self.actions = actions
        self.findall = lexeme_re.findall
        self.word_type = word_type
        self.statement_end = statement_end
        self.raw_prefix = raw_prefix
        self.option_fallback = option_fallback
        self.locate_statements = locate_statements
        # Keywords and symbols: their text is their signature mark.
        self.types = {t.pattern.value: str(t.name) for t in lark.terminals if isinstance(t.pattern, PatternStr)}
        self.marks = {value: value for value in self.types}
        self.traces: dict[tuple[Any, ...], tuple[list[Any], int, list[Any], bool]] = {}

    @staticmethod
    def _mark(value: str) -> str:
        """The signature mark of a lexeme that is not a keyword or symbol."""
        c = value[0]
        if c == '"':
            return _QUOTED
        if c == "-":
            return value  # an option word the grammar does not know (-4n), or -P...
        if value.isdigit():
            return _NUMBER
        if c == "0" and _HEX.fullmatch(value):
            return _HEXNUM
        if value[:7] in ("unique:", "unique#"):
            return _UNIQUE
        return _WORD

    def parse(self, text: str) -> Any:
        marks = self.marks
        mark = self._mark
        traces = self.traces
        statement_end = self.statement_end
        raw = self.raw_prefix
        raw_text = raw[0] if raw is not None else ""
        raw_len = len(raw_text)
        stack = [self.start_state]
        values: list[Any] = []
        tokens: list[Any] = []
        signature: list[Any] = [stack[-1]]
        offset = 0
        line = 1
        counted = 0  # the offset up to which newlines are counted in ``line``
        first = 0  # offset of the statement's first lexeme
        for blank, value in self.findall(text):
            if not tokens:
                first = offset + len(blank)
            m = marks.get(value)
            if m is None:
                if not value:
                    m = _END
                else:
                    m = mark(value)
                    if raw_len and m[:raw_len] == raw_text:
                        # "-P" and the policy text: two tokens
                        tokens.append(raw_text)
                        signature.append(raw_text)
                        value = value[raw_len:]
                        offset += raw_len
                        m = _RAW
            tokens.append(value)
            signature.append(m)
            offset += len(blank) + len(value)
            if m not in (statement_end, _END):
                continue
            # A whole statement: place its first word, then run it.
            kw = tokens[0]
            if kw and self.locate_statements:
                line += text.count("\n", counted, first)
                counted = first
                tokens[0] = Located.at(kw, line, first - text.rfind("\n", 0, first))
            key = tuple(signature)
            trace = traces.get(key)
            if trace is None:
                trace = self._trace(stack, tokens, signature)
                if len(traces) >= self._TRACE_LIMIT:
                    traces.clear()
                traces[key] = trace
            ops, popped, pushed, accepts = trace
            for op in ops:
                if op.__class__ is slice:
                    values.extend(tokens[op])
                    continue
                size, function = op
                if size:
                    children = values[-size:]
                    del values[-size:]
                    values.append(tuple(children) if function is None else function(*children))
                else:
                    values.append(() if function is None else function())
            if accepts:
                if offset != len(text):
                    raise _Fail  # findall skipped a character that no lexeme matches
                return values[-1]
            del stack[len(stack) - popped:]
            stack.extend(pushed)
            tokens = []
            signature = [stack[-1]]
        raise _Fail  # pragma: no cover - findall always ends with the empty lexeme

    def _trace(self, stack: list[Any], tokens: list[str], signature: list[Any]
               ) -> tuple[list[Any], int, list[Any], bool]:
        """Run the LALR automaton over one statement and record what it does.

        Works on a copy of ``stack``; raises :class:`_Fail` where the grammar
        does not accept the statement.
        """
        actions = self.actions
        types = self.types
        stack = list(stack)
        height = low = len(stack)
        ops: list[Any] = []
        for index, (value, m) in enumerate(zip(tokens, signature[1:], strict=True)):
            row = actions[stack[-1]]
            t: str | None
            if m == _WORD:
                t = self.word_type
            elif m == _NUMBER:
                t = "DEC" if "DEC" in row else self.word_type
            elif m == _HEXNUM:
                t = "HEX" if "HEX" in row else self.word_type
            elif m == _QUOTED:
                t = "QUOTED"
            elif m == _RAW:
                t = "POLICY"
            elif m == _UNIQUE:
                t = "UNIQUE_ID"
            elif m == _END:
                t = "$END"
            elif m == value and value in types:
                # a keyword is one where the state accepts it, a word elsewhere
                t = types[value]
                if t not in row and value[0].isalnum():
                    t = self.word_type
            else:
                fallback = self.option_fallback
                if fallback is None or not fallback[1].fullmatch(value):
                    raise _Fail
                t = fallback[0]
            while True:
                a = row.get(t)
                if a is None:
                    raise _Fail
                if not isinstance(a, tuple):
                    stack.append(a)
                    ops.append(index)
                    break
                size, function, origin = a
                if size:
                    del stack[-size:]
                    low = min(low, len(stack))
                ops.append((size, function))
                goto = actions[stack[-1]][origin]
                stack.append(goto)
                if t == "$END" and goto == self.end_state:
                    return _runs(ops), 0, [], True
                row = actions[goto]
        # The states below ``low`` were never touched: replaying pops the rest.
        return _runs(ops), height - low, stack[low:], False


def _runs(ops: list[Any]) -> list[Any]:
    """Shifts of consecutive tokens as one slice each."""
    out: list[Any] = []
    for op in ops:
        if isinstance(op, int):
            if out and isinstance(out[-1], slice) and out[-1].stop == op:
                out[-1] = slice(out[-1].start, op + 1)
            else:
                out.append(slice(op, op + 1))
        else:
            out.append(op)
    return out


# The lexemes of setkey.lark (see the grammar for each terminal's pattern); -P
# and the policy text after it are one lexeme here, two tokens for the parser.
_SETKEY_LEXEME = re.compile(r"""
    ([ \t\r\n]*(?:\#[^\n]*[ \t\r\n]*)*)
    (   "[^"]*"
      | -P(?:unique\#[0-9]+|\#[^\n]*|[A-Za-z0-9:._/ \t\r\n%+\[\]-])+
      | [0-9]*,[0-9,]*
      | [A-Za-z0-9:][A-Za-z0-9:%.-]*
      | -[A-Za-z0-9_]+
      | [;/\[\]]
      | \Z
    )""", re.VERBOSE)
_AIFLAGS = re.compile(r"-[n46]+")

# The lexemes of policy.lark.
_POLICY_LEXEME = re.compile(r"""
    ([ \t\r\n]*(?:\#[^\n]*[ \t\r\n]*)*)
    (   unique[:\#][0-9]+
      | [A-Za-z0-9:._]+(?:%[A-Za-z0-9]+)?
      | [-+/\[\]]
      | \Z
    )""", re.VERBOSE)


@functools.cache
def _fast_setkey() -> _Fast:
    return _Fast(setkey_grammar(), "start", _SETKEY_LEXEME, "STRING", statement_end=";", raw_prefix=("-P", "POLICY"),
                 option_fallback=("AIFLAGS", _AIFLAGS))


@functools.cache
def _fast_policy() -> _Fast:
    return _Fast(policy_grammar(), "policy", _POLICY_LEXEME, "ADDRESS", statement_end=None, locate_statements=False)


def _find(text: str, offset: int, pattern: re.Pattern[str], hint: str, nth: int, raw_prefix: str | None
          ) -> int | None:
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
        found = _find(text, _offset(text, error.line, error.column), _SETKEY_LEXEME, error.hint, error.nth, "-P")
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
            result: Policy = _fast_policy().parse(text)
            return result
        except _Fail:
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
        found = _find(text, 0, _POLICY_LEXEME, exc.hint, exc.nth, None) if exc.hint else None
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
    del parser_state.value_stack[len(stack) - 1:]


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


_STATEMENT_KEYWORDS = frozenset({
    "ADD", "UPDATE", "GETSPI", "GET", "DELETE", "DELETEALL", "FLUSH", "DUMP", "SPDADD", "SPDUPDATE",
    "SPDDELETE", "SPDFLUSH", "SPDDUMP", "EXIT", "QUIT", "BYE",
})


def _parse_with_recovery(text: str) -> tuple[list[Any], list[SetkeyError]]:
    """lark's own lexer and parser, reporting every syntax error."""
    lark = setkey_grammar()
    terminals = lark._terminals_dict
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
        line_counter.feed(text[start:_skip_statement(text, start)])
        return True

    result: Any
    try:
        result = lark.parse(text, on_error=on_error)
    except UnexpectedInput as exc:
        if not finished and not (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
            errors.append(_syntax_error(exc, terminals))  # pragma: no cover - recovery always resumes
        result = finished
    return list(result or []), errors


def parse(text: str, filename: str = "-") -> list[Command]:
    """Parse a whole setkey script.

    Returns the commands in order; each has its ``line`` and ``column``.  Raises
    :class:`~setkey.errors.SetkeyErrors` holding every syntax error and every
    bad value (unknown algorithm, number out of range, bad policy, ...), each
    with file, line, column and source line.  Checks that depend on the PF_KEY
    dialect are :func:`setkey.check.check`'s.
    """
    errors: list[SetkeyError] = []
    try:
        items: list[Any] = _fast_setkey().parse(text)
    except _Fail:
        items, errors = _parse_with_recovery(text)
    commands: list[Command] = []
    for item in items:
        if isinstance(item, Rejected):
            errors.append(locate(text, item.error))
        else:
            commands.append(item)
    if errors:
        raise SetkeyErrors(Source(text, filename).locate(errors))
    return commands

