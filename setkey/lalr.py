"""The fast LALR driver of :mod:`setkey.parser`: lark's parse tables run
statement by statement, each statement shape traced once and replayed.

:func:`setkey.parser.parse` uses it first and falls back to lark's own parser
on :class:`Fail`; the theory of operation is in :mod:`setkey.parser`.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from lark import Lark
from lark.lexer import PatternStr

from setkey.transformer import Located

__all__ = ["Fast", "Fail"]


# ------------------------------------------------------------------ lark's tables

# The fast driver (here, :func:`_lalr_tables`) and the error recovery
# (:func:`setkey.parser.parse_with_recovery`) read lark's LALR tables and parser
# state, which lark does not document: the parse table
# (``Lark.parser.parser.parser``), the rules' options and the inlined
# transformer's ``base_func``; the interactive parser's state and value stacks
# and its lexer's line counter.  pyproject.toml therefore names the lark versions
# this was checked with (``lark>=1.3.1,<1.4``), and
# tests/setkey/test_lark_version.py fails on any other: a new lark is taken up by
# checking these two places against it and widening the range.  Everything else
# uses lark's public API (Lark, get_terminal, parse with on_error).


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


class Fail(Exception):
    """The fast driver gives up; lark's own parser takes over."""


# Signature marks of lexemes that are not keywords or symbols (never a keyword);
# _RAW_LEXEME is "-P" and the policy text in one lexeme, _RAW the policy text.
_NUMBER, _HEXNUM, _WORD, _QUOTED, _RAW, _UNIQUE, _END = "\0#", "\0x", "\0w", "\0q", "\0r", "\0u", "\0$"
_RAW_LEXEME = "\0P"
#: The marks that always stand for one terminal.
_MARK_TERMINALS = {_QUOTED: "QUOTED", _RAW: "POLICY", _UNIQUE: "UNIQUE_ID", _END: "$END"}

#: Distinct lexemes whose marks one parse remembers (see Fast.parse).
_LEARNED_LIMIT = 1 << 16


class _Marks(dict[str, str]):
    """The marks of lexemes (see :class:`Fast`): those of keywords and symbols
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


class Fast:
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

    def __init__(
        self,
        lark: Lark,
        start: str,
        lexeme_re: re.Pattern[str],
        word_type: str,
        *,
        statement_end: str | None,
        raw_prefix: tuple[str, str] | None = None,
        option_fallback: tuple[str, re.Pattern[str]] | None = None,
        locate_statements: bool = True,
        uncommented_re: re.Pattern[str] | None = None,
        hex_re: re.Pattern[str] | None = None,
    ) -> None:
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
        self.raw_text = raw_prefix[0] if raw_prefix is not None else ""
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
        parts = self._cut(text)
        lexemes = parts[2::3]
        end = lexemes.index("")  # the first empty lexeme: the end of the text
        mark_of = self.learned.__getitem__
        traces = self.traces
        statement_end = self.statement_end
        raw_text, raw_len = self.raw_text, len(self.raw_text)
        locate_statements = self.locate_statements
        stack = [self.start_state]
        values: list[Any] = []
        i = 0
        pos = 0  # the offset of parts[3 * i], the gap before lexeme i
        plain_end = self._plain_end(text)
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
                trace = self._learn(key, stack, lexemes[i:j])
            raw_at, consumed, groups, calls, kept, popped, pushed, accepts = trace
            if raw_at >= 0:
                raw = tokens[raw_at]
                tokens[raw_at : raw_at + 1] = raw_text, raw[raw_len:]
            toks = tuple(tokens)
            below = len(values) - consumed
            slots = values[below:]
            del values[below:]
            slots += toks
            slots += map(toks.__getitem__, groups)
            for function, arguments in calls:
                slots.append(function(*arguments(slots)))
            values += map(slots.__getitem__, kept)
            if accepts:
                return values[-1]
            del stack[len(stack) - popped :]
            stack += pushed
            i = j

    def _cut(self, text: str) -> tuple[str, ...]:
        """``text`` as re.split cuts it; raises :class:`Fail` where no lexeme matches."""
        parts = tuple((self.split if "#" in text else self.split_uncommented)(text))
        if any(itertools.islice(parts, 0, None, 3)):
            raise Fail
        return parts

    def _plain_end(self, text: str) -> str | None:
        """A statement ends where its parts joined end; in a text without quotes
        and comments, where no other lexeme or blank holds the character of
        statement_end, where that character is found: that character then."""
        return self.statement_end if '"' not in text and "#" not in text else None

    def _learn(self, key: tuple[Any, ...], stack: list[Any], lexemes: tuple[str, ...]) -> _Trace:
        """The trace of a statement whose signature has none yet, kept for the next."""
        trace = self._trace(stack, list(lexemes), list(key[1:]))
        if len(self.traces) >= self._TRACE_LIMIT:
            self.traces.clear()
        self.traces[key] = trace
        return trace

    def _trace(self, stack: list[Any], lexemes: list[str], marks: list[str]) -> _Trace:
        """Run the LALR automaton over one statement and record what it does.

        Works on a copy of ``stack``; raises :class:`Fail` where the grammar
        does not accept the statement.
        """
        raw_at, tokens, signature = self._split_raw(lexemes, marks)
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
                    raise Fail
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
        return _compile(raw_at, len(tokens), below - lowest, lowest, values, nodes, height - low, stack[low:], accepts)

    def _split_raw(self, lexemes: list[str], marks: list[str]) -> tuple[int, list[str], list[str]]:
        """The statement's tokens and their marks, "-P" and the policy text after it
        made two (see :class:`_Trace`), and where that lexeme was (-1: nowhere)."""
        tokens, signature = list(lexemes), list(marks)
        if _RAW_LEXEME not in marks:
            return -1, tokens, signature
        raw_at = marks.index(_RAW_LEXEME)
        raw_text = self.raw_text
        tokens[raw_at : raw_at + 1] = raw_text, tokens[raw_at][len(raw_text) :]
        signature[raw_at : raw_at + 1] = raw_text, _RAW
        return raw_at, tokens, signature

    def _terminal(self, value: str, m: str, row: Mapping[str, Any]) -> str:
        """The terminal of a token in the state whose actions are ``row``: the
        contextual lexer's choice."""
        if m == _WORD:
            return self.word_type
        if m in (_NUMBER, _HEXNUM):
            # a number only where the state accepts one, a word elsewhere
            number = "DEC" if m == _NUMBER else "HEX"
            return number if number in row else self.word_type
        fixed = _MARK_TERMINALS.get(m)
        if fixed is not None:
            return fixed
        if m == value and value in self.types:
            # a keyword is one where the state accepts it, a word elsewhere
            t = self.types[value]
            if t not in row and value[0].isalnum():
                return self.word_type
            return t
        fallback = self.option_fallback
        if fallback is None or not fallback[1].fullmatch(value):
            raise Fail
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


def _compile(
    raw_at: int,
    ntokens: int,
    consumed: int,
    lowest: int,
    values: list[_Ref],
    nodes: list[_Node],
    popped: int,
    pushed: list[Any],
    accepts: bool,
) -> _Trace:
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

    return _Trace(
        raw_at,
        consumed,
        tuple(groups.values()),
        tuple((nodes[k][0], _getter([slot(c) for c in nodes[k][2]])) for k in calls),
        tuple(slot(v) for v in values[lowest:]),
        popped,
        tuple(pushed),
        accepts,
    )
