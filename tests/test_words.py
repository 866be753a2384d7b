"""The one table of words for modes, levels, directions and policy types (pfkeyd.words)."""

from __future__ import annotations

import pytest

from pfkeyd import words
from pfkeyd.wire.constants import Direction, Level, Mode, PolicyType
from setkey import formatter
from setkey.commands import Policy
from setkey.parser import parse_policy


def test_every_member_of_the_policy_enums_has_its_word() -> None:
    assert set(words.LEVEL_WORDS) == set(Level)
    assert set(words.DIRECTION_WORDS) == set(Direction)
    assert set(words.POLICY_WORDS) == set(PolicyType)
    # TCPMD5 (FreeBSD-internal), BEET and IPTFS (Linux) are not words of the policy language.
    assert set(words.MODE_WORDS) == set(Mode) - {Mode.TCPMD5, Mode.BEET, Mode.IPTFS}


@pytest.mark.parametrize("table", [words.MODE_WORDS, words.LEVEL_WORDS, words.DIRECTION_WORDS, words.POLICY_WORDS])
def test_word_lists_are_indexed_by_number(table: dict[int, str]) -> None:
    listed = words.word_list(table)
    assert all(listed[value] == word for value, word in table.items())


def test_word_list_refuses_a_table_with_gaps() -> None:
    with pytest.raises(ValueError, match=r"0 \.\. n-1"):
        words.word_list(words.REQUEST_PROTO_WORDS)


def test_the_parsers_read_the_table_backwards() -> None:
    for word, mode in words.MODE_BY_WORD.items():
        assert words.MODE_WORDS[mode] == word
    assert words.POLICY_BY_WORD["bypass"] is PolicyType.BYPASS
    assert words.DIRECTION_BY_WORD["fwd"] is Direction.FWD


def test_formatter_and_parser_agree_on_every_action() -> None:
    # the setkey writer and reader use the same words, so each action survives a round trip
    for action in PolicyType:
        text = formatter.format_policy(Policy(Direction.OUTBOUND, action=action))
        assert text.split()[1] == words.POLICY_WORDS[action]
        assert parse_policy(text).action is action
