"""Parse a setkey script: text in, :mod:`setkey.commands` values out.

Theory of operation
-------------------
The grammars (``setkey.lark``, ``policy.lark``, installed as the package
``setkey.grammar``) are built once per process by lark, LALR with the
contextual lexer and ``strict=True``, with the transformers of
:mod:`setkey.transformer` inlined.  Two drivers run the LALR tables lark built:

* the fast driver (:class:`_Fast`): one ``re.split`` cuts the text into
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
import itertools
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

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


# ------------------------------------------------------------------ lark's tables

# The fast driver and the error recovery read lark's LALR tables and parser state,
# which lark does not document: the parse table (``Lark.parser.parser.parser``),
# the rules' options and the inlined transformer's ``base_func``, and, in
# :func:`_parse_with_recovery`, the interactive parser's state and value stacks
# and its lexer's line counter.  pyproject.toml therefore names the lark
# versions this was checked with (``lark>=1.3.1,<1.4``), and
# tests/setkey/test_lark_version.py fails on any other: a new lark is taken up
# by checking these two places against it and widening the range.  Everything
# else uses lark's public API (Lark, get_terminal, parse with on_error).

class _Tables(NamedTuple):
    """A grammar's LALR automaton as the fast driver runs it.

    ``actions[state][terminal or rule name]`` is the state to shift to, or a
    reduction: (the number of values it takes, (the transformer's method, whether
    it only groups its children), the rule's name).  ``defaults`` are the states
    whose only action, whatever comes next, is one reduction.
    """

    start_state: Any
    end_state: Any
    actions: dict[Any, dict[str, Any]]
    defaults: dict[Any, Any]


def _rule_functions(lark: Lark) -> dict[Any, tuple[Callable[..., Any], bool]]:
    """Each rule's callback: the transformer's method itself.

    The grammars have no rule that lark would inline or filter (no "_rule",
    "?rule", anonymous token or "*" helper), so lark's own callback would call
    the method with the same children.  Methods marked as groups return their
    children as a tuple; a trace builds the tuple without the call.
    """
    transformer = lark.options.transformer
    functions: dict[Any, tuple[Callable[..., Any], bool]] = {}
    for rule in lark.rules:
        name = str(rule.alias or rule.origin.name)
        if name.startswith("_") or rule.options.expand1 or rule.options.empty_indices:
            raise AssertionError(f"rule {name} needs lark's tree shaping")
        method = getattr(transformer, name).base_func
        functions[rule] = method, getattr(method, "__setkey_group__", False)
    return functions


def _lalr_tables(lark: Lark, start: str) -> _Tables:
    """The parse table lark built for ``start``, as :class:`_Tables`."""
    table = lark.parser.parser.parser.parse_table  # lark's _Parser
    functions = _rule_functions(lark)
    actions: dict[Any, dict[str, Any]] = {}
    defaults: dict[Any, Any] = {}
    for state, row in table.states.items():
        out: dict[str, Any] = {}
        for symbol, (action, arg) in row.items():
            if action.name == "Shift":
                out[str(symbol)] = arg
            else:
                out[str(symbol)] = (len(arg.expansion), functions[arg], str(arg.origin.name))
        actions[state] = out
        if len({id(arg) for _, arg in row.values()}) == 1 and all(a.name == "Reduce" for a, _ in row.values()):
            defaults[state] = next(iter(out.values()))
    return _Tables(table.start_states[start], table.end_states[start], actions, defaults)


# ------------------------------------------------------------------ the fast driver


class _Fail(Exception):
    """The fast driver gives up; lark's own parser takes over."""


# Signature marks of lexemes that are not keywords or symbols (never a keyword);
# _RAW_LEXEME is "-P" and the policy text in one lexeme, _RAW the policy text.
_NUMBER, _HEXNUM, _WORD, _QUOTED, _RAW, _UNIQUE, _END = "\0#", "\0x", "\0w", "\0q", "\0r", "\0u", "\0$"
_RAW_LEXEME = "\0P"

#: Distinct lexemes whose marks one parse remembers (see _Fast.parse).
_LEARNED_LIMIT = 1 << 16


class _Marks(dict[str, str]):
    """The marks of lexemes (see :class:`_Fast`): those of keywords and symbols
    to start with, then those of the other lexemes as they are met, since
    scripts repeat words (keys, algorithm names, hosts, policies).  A mark
    depends on the lexeme's text alone, so they are kept from one parse to
    the next, up to a limit."""

    def __init__(self, known: Mapping[str, str], classify: Callable[[str], str]) -> None:
        super().__init__(known)
        self._known = dict(known)
        self._classify = classify

    def __missing__(self, value: str) -> str:
        m = self._classify(value)
        if len(self) >= _LEARNED_LIMIT:
            self.clear()
            self.update(self._known)
        self[value] = m
        return m


class _Trace(NamedTuple):
    """What the LALR automaton does over one unit (a statement) of a given signature.

    The values a unit works on are its *slots*, numbered in this order: the
    ``consumed`` values it takes off the value stack, its tokens, the values of
    its ``groups`` (rules that only group tokens: a slice of the tokens each,
    as a tuple), then the results of its ``calls`` (the other reductions, in
    the parser's order: the transformer's method and a getter of its
    arguments' slots).  ``kept`` are the slots it leaves on the value stack.
    ``popped`` and ``pushed`` are what it does to the state stack, ``raw_at``
    the lexeme that is "-P" and the policy text (two tokens), or -1.
    """

    raw_at: int
    consumed: int
    groups: tuple[slice, ...]
    calls: tuple[tuple[Callable[..., Any], Callable[[list[Any]], Any]], ...]
    kept: tuple[int, ...]
    popped: int
    pushed: tuple[Any, ...]
    accepts: bool


def _getter(slots: list[int]) -> Callable[[list[Any]], Any]:
    """A function of the slot list that gives the values of ``slots``, for ``f(*get(values))``."""
    if len(slots) >= 2:
        return operator.itemgetter(*slots)
    start = slots[0] if slots else 0
    return operator.itemgetter(slice(start, start + len(slots)))


class _Fast:
    """A lean LALR driver over the tables lark built for a grammar.

    ``lexeme_re`` cuts the text: group 1 is the blanks and comments before a
    lexeme, group 2 the lexeme (empty at the end of the text); ``uncommented_re``
    cuts a text without "#" as ``lexeme_re`` does, faster.  A lexeme is
    classified by its text (its *mark*): a keyword or symbol of the grammar is
    its own mark; otherwise a number, a 0x-number, a "quoted string", a word, a
    ``unique:N`` (policy), or ``raw_prefix`` followed by raw text (the policy
    after -P, which becomes two tokens).

    Statements are the unit of work.  The *signature* of a statement (the marks
    of its lexemes) and the LALR state at its start decide every choice of the
    contextual lexer and of the parser.  The first statement of each signature
    is run through the LALR automaton token by token and what it does is kept
    as a :class:`_Trace`; a later statement with that signature replays the
    trace: its groups and its calls of the transformer, no parse table.
    Scripts have few signatures.

    The automaton makes each statement's reductions as soon as the statement
    ends, without waiting for the next token, where the state has one possible
    action, a reduction, whatever comes next (Bison's default reductions: they
    change no accepted text and no call's order, and only delay the detection
    of an error to the next token, which then fails the fast driver anyway).
    So a statement's trace builds its own command and appends it to the list,
    and every statement after the first starts in the same state.

    Tokens are the lexemes' text; the first of each statement is a
    :class:`~setkey.transformer.Located` that knows its line and column.
    """

    _TRACE_LIMIT = 4096

    def __init__(self, lark: Lark, start: str, lexeme_re: re.Pattern[str], word_type: str, *,
                 statement_end: str | None, raw_prefix: tuple[str, str] | None = None,
                 option_fallback: tuple[str, re.Pattern[str]] | None = None, locate_statements: bool = True,
                 uncommented_re: re.Pattern[str] | None = None, hex_re: re.Pattern[str] | None = None) -> None:
        tables = _lalr_tables(lark, start)
        self.start_state = tables.start_state
        self.end_state = tables.end_state
        self.actions = tables.actions
        self.defaults = tables.defaults
        self.split = lexeme_re.split
        self.split_uncommented = (uncommented_re or lexeme_re).split
        self.word_type = word_type
        self.statement_end = statement_end
        self.raw_prefix = raw_prefix
        self.option_fallback = option_fallback
        self.locate_statements = locate_statements
        self.hex_re = hex_re
        # Keywords and symbols: their text is their signature mark.
        self.types = {t.pattern.value: str(t.name) for t in lark.terminals if isinstance(t.pattern, PatternStr)}
        marks = {value: value for value in self.types}
        marks[""] = _END  # the empty lexeme at the end of the text
        self.learned = _Marks(marks, self._mark)
        self.traces: dict[tuple[Any, ...], _Trace] = {}

    def _mark(self, value: str) -> str:
        """The signature mark of a lexeme that is not a keyword or symbol."""
        c = value[0]
        if c == '"':
            return _QUOTED
        if c == "-":
            raw = self.raw_prefix
            if raw is not None and value.startswith(raw[0]):
                return _RAW_LEXEME
            return value  # an option word the grammar does not know (-4n)
        if value.isdigit():
            return _NUMBER
        if c == "0" and self.hex_re is not None and self.hex_re.fullmatch(value):
            return _HEXNUM
        if value[:7] in ("unique:", "unique#"):
            return _UNIQUE
        return _WORD

    def parse(self, text: str) -> Any:
        # re.split gives [gap, blank, lexeme, gap, blank, lexeme, ..., gap]: a
        # gap is text that no lexeme matches, which the fast driver leaves to
        # lark's error reports.  As tuples, the parts and the lexemes (millions
        # of strings for a big script) are looked at by the garbage collector
        # once, which then stops tracking them; lists would be scanned again at
        # every collection while the parse builds its values.
        parts = tuple((self.split if "#" in text else self.split_uncommented)(text))
        if any(itertools.islice(parts, 0, None, 3)):
            raise _Fail
        lexemes = parts[2::3]
        end = lexemes.index("")  # the first empty lexeme: the end of the text
        mark_of = self.learned.__getitem__
        traces = self.traces
        statement_end = self.statement_end
        raw_text, raw_len = (self.raw_prefix[0], len(self.raw_prefix[0])) if self.raw_prefix is not None else ("", 0)
        locate_statements = self.locate_statements
        stack = [self.start_state]
        values: list[Any] = []
        i = 0
        pos = 0  # the offset of parts[3 * i], the gap before lexeme i
        # A statement ends where its parts joined end; in a text without quotes
        # and comments, where no other lexeme or blank holds the character of
        # statement_end, where that character is found.
        plain_end = statement_end if '"' not in text and "#" not in text else None
        line = 1
        counted = 0  # the offset up to which newlines are counted in ``line``
        while True:
            # One statement: lexemes[i:j], its ";" last, or the rest of the text.
            if statement_end is None:
                j = end + 1
            else:
                try:
                    j = lexemes.index(statement_end, i, end) + 1
                except ValueError:  # the text ends inside a statement
                    j = end + 1
            tokens = list(lexemes[i:j])
            key = (stack[-1], *map(mark_of, tokens))
            trace = traces.get(key)
            if locate_statements and i < end:
                # Place its first word: Located knows its line and column.
                first = pos + len(parts[3 * i + 1])
                line += text.count("\n", counted, first)
                counted = first
                tokens[0] = Located.at(tokens[0], line, first - text.rfind("\n", 0, first))
                if plain_end is not None and j <= end:
                    pos = text.index(plain_end, first) + 1
                else:
                    pos = first + len("".join(parts[3 * i + 2 : 3 * j]))
            if trace is None:
                trace = self._trace(stack, list(lexemes[i:j]), list(key[1:]))
                if len(traces) >= self._TRACE_LIMIT:
                    traces.clear()
                traces[key] = trace
            raw_at, consumed, groups, calls, kept, popped, pushed, accepts = trace
            if raw_at >= 0:
                raw = tokens[raw_at]
                tokens[raw_at : raw_at + 1] = raw_text, raw[raw_len:]
            toks = tuple(tokens)
            if consumed:
                slots = values[-consumed:]
                del values[-consumed:]
            else:
                slots = []
            slots += toks
            slots += map(toks.__getitem__, groups)
            for function, arguments in calls:
                slots.append(function(*arguments(slots)))
            values += map(slots.__getitem__, kept)
            if accepts:
                return values[-1]
            del stack[len(stack) - popped:]
            stack += pushed
            i = j

    def _trace(self, stack: list[Any], lexemes: list[str], marks: list[str]) -> _Trace:
        """Run the LALR automaton over one statement and record what it does.

        Works on a copy of ``stack``; raises :class:`_Fail` where the grammar
        does not accept the statement.
        """
        raw_at = marks.index(_RAW_LEXEME) if _RAW_LEXEME in marks else -1
        tokens, signature = list(lexemes), list(marks)
        if raw_at >= 0:
            assert self.raw_prefix is not None
            raw_text = self.raw_prefix[0]
            tokens[raw_at : raw_at + 1] = raw_text, tokens[raw_at][len(raw_text) :]
            signature[raw_at : raw_at + 1] = raw_text, _RAW
        actions = self.actions
        stack = list(stack)
        height = low = len(stack)
        # The value stack, symbolically; ``lowest`` is how far down the
        # statement took values that were there before it.
        below = len(stack) - 1
        values: list[_Ref] = [("old", n) for n in range(below)]
        lowest = below
        nodes: list[_Node] = []

        def reduce(size: int, function: tuple[Callable[..., Any], bool], origin: str) -> Any:
            nonlocal low, lowest
            children = values[len(values) - size :]
            del values[len(values) - size :]
            lowest = min(lowest, len(values))
            nodes.append((*function, children))
            values.append(("node", len(nodes) - 1))
            if size:
                del stack[-size:]
                low = min(low, len(stack))
            goto = actions[stack[-1]][origin]
            stack.append(goto)
            return goto

        accepts = False
        for index, (value, m) in enumerate(zip(tokens, signature, strict=True)):
            row = actions[stack[-1]]
            t = self._terminal(value, m, row)
            if t == "$END" and stack[-1] == self.end_state:
                accepts = True  # the last statement's reductions were made at its end
                break
            while not accepts:
                a = row.get(t)
                if a is None:
                    raise _Fail
                if not isinstance(a, tuple):
                    stack.append(a)
                    values.append(("token", index))
                    break
                goto = reduce(*a)
                accepts = t == "$END" and goto == self.end_state
                row = actions[goto]
            if accepts:
                break
        else:
            # The statement's own reductions, as far as they do not depend on
            # the next token (see the class).
            while stack[-1] in self.defaults:
                reduce(*self.defaults[stack[-1]])
        return _compile(raw_at, len(tokens), below - lowest, lowest, values, nodes, height - low, stack[low:],
                        accepts)

    def _terminal(self, value: str, m: str, row: Mapping[str, Any]) -> str:
        """The terminal of a token in the state whose actions are ``row``: the
        contextual lexer's choice."""
        if m == _WORD:
            return self.word_type
        if m == _NUMBER:
            return "DEC" if "DEC" in row else self.word_type
        if m == _HEXNUM:
            return "HEX" if "HEX" in row else self.word_type
        if m == _QUOTED:
            return "QUOTED"
        if m == _RAW:
            return "POLICY"
        if m == _UNIQUE:
            return "UNIQUE_ID"
        if m == _END:
            return "$END"
        if m == value and value in self.types:
            # a keyword is one where the state accepts it, a word elsewhere
            t = self.types[value]
            if t not in row and value[0].isalnum():
                return self.word_type
            return t
        fallback = self.option_fallback
        if fallback is None or not fallback[1].fullmatch(value):
            raise _Fail
        return fallback[0]


# A value of a statement's symbolic run: ("old", n) is the nth value from the
# bottom of the value stack as the statement found it, ("token", i) its ith
# token, ("node", k) the result of its kth reduction; a node is the
# reduction's (method, is_group, children).
_Ref = tuple[str, int]
_Node = tuple[Callable[..., Any], bool, list[_Ref]]


def _token_span(children: list[_Ref]) -> slice | None:
    """``children`` as a slice of the tokens, if they are consecutive tokens."""
    indexes = [n for kind, n in children if kind == "token"]
    if len(indexes) != len(children):
        return None
    start = indexes[0] if indexes else 0
    return slice(start, start + len(indexes)) if indexes == list(range(start, start + len(indexes))) else None


def _compile(raw_at: int, ntokens: int, consumed: int, lowest: int, values: list[_Ref], nodes: list[_Node],
             popped: int, pushed: list[Any], accepts: bool) -> _Trace:
    """Number the slots of a statement's symbolic run (see :class:`_Trace`).

    A group of consecutive tokens is a slice of the tokens; the other
    reductions (groups of other values too, whose methods return their
    children as a tuple) are calls.
    """
    groups: dict[int, slice] = {}
    for k, (_, is_group, children) in enumerate(nodes):
        span = _token_span(children) if is_group else None
        if span is not None:
            groups[k] = span
    slot_of_node = {k: consumed + ntokens + n for n, k in enumerate(groups)}
    calls = [k for k in range(len(nodes)) if k not in groups]
    slot_of_node.update((k, consumed + ntokens + len(groups) + n) for n, k in enumerate(calls))

    def slot(ref: _Ref) -> int:
        kind, n = ref
        if kind == "old":
            return n - lowest
        if kind == "token":
            return consumed + n
        return slot_of_node[n]

    return _Trace(raw_at, consumed, tuple(groups.values()),
                  tuple((nodes[k][0], _getter([slot(c) for c in nodes[k][2]])) for k in calls),
                  tuple(slot(v) for v in values[lowest:]), popped, tuple(pushed), accepts)


# ------------------------------------------------------------------ the lexemes

# The fast driver cuts a text with one regular expression whose alternatives are
# the grammar's own terminal patterns, read from the built grammar (Lark's
# public get_terminal), so a terminal is written once, in the .lark file.  Group
# 1 is the blanks and comments before a lexeme (the grammar's %ignore'd WS and
# COMMENT), group 2 the lexeme, empty at the end of the text.  The alternatives
# are in an order where each is tried only after those it must yield to: a
# "quoted string", then -P with the policy text after it (one lexeme here, two
# tokens for the parser), then the grammar's STRING (which also covers the
# keywords, numbers and 0x-numbers, told apart by _Fast), then any option word
# (the grammar's options and AIFLAGS, or an unknown one that lark's own parser
# then reports), then the symbols.  The blanks are matched possessively (*+):
# no lexeme starts with a blank or "#".  A comment's text stays plain: after a
# comment line that no lexeme follows, the search goes back into the comment,
# as it always did.
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
    pattern = re.compile(prefix + "(" + "|".join(f"(?:{a})" for a in [*alternatives, r"\Z"]) + ")")
    if pattern.groups != 2:  # a terminal with a capturing group would shift the lexeme's group
        raise AssertionError(f"lexeme pattern has {pattern.groups} groups: {pattern.pattern}")
    return pattern


class _SetkeyLexemes(NamedTuple):
    commented: re.Pattern[str]
    uncommented: re.Pattern[str]
    aiflags: re.Pattern[str]
    hex: re.Pattern[str]


@functools.cache
def _setkey_lexemes() -> _SetkeyLexemes:
    """The lexeme patterns of setkey.lark (see above)."""
    lark = setkey_grammar()
    alternatives = [
        _terminal_re(lark, "QUOTED"),
        re.escape("-P") + "(?:" + _terminal_re(lark, "POLICY") + ")",
        _terminal_re(lark, "STRING"),
        _OPTION_WORD,
        _symbols_re(lark, ("SEMI", "SLASH", "LSQB", "RSQB")),
    ]
    return _SetkeyLexemes(_lexemes(_BLANKS_AND_COMMENTS, alternatives), _lexemes(_BLANKS, alternatives),
                          re.compile(_terminal_re(lark, "AIFLAGS")), re.compile(_terminal_re(lark, "HEX")))


@functools.cache
def _policy_lexemes() -> re.Pattern[str]:
    """The lexeme pattern of policy.lark: unique:N, an address or word, a symbol."""
    lark = policy_grammar()
    return _lexemes(_BLANKS_AND_COMMENTS, [
        _terminal_re(lark, "UNIQUE_ID"),
        _terminal_re(lark, "ADDRESS"),
        _symbols_re(lark, ("MINUS", "PLUS", "SLASH", "LSQB", "RSQB")),
    ])


@functools.cache
def _fast_setkey() -> _Fast:
    lexemes = _setkey_lexemes()
    return _Fast(setkey_grammar(), "start", lexemes.commented, "STRING", statement_end=";",
                 raw_prefix=("-P", "POLICY"), option_fallback=("AIFLAGS", lexemes.aiflags),
                 uncommented_re=lexemes.uncommented, hex_re=lexemes.hex)


@functools.cache
def _fast_policy() -> _Fast:
    return _Fast(policy_grammar(), "policy", _policy_lexemes(), "ADDRESS", statement_end=None,
                 locate_statements=False)


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
        offset = _offset(text, error.line, error.column)
        found = _find(text, offset, _setkey_lexemes().commented, error.hint, error.nth, "-P")
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


#: A word that may end a script (matched before the careful scan below runs).
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
    if _EXIT_WORD.search(text) is None:
        return text  # the common case: one scan of the text, nothing cut
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

