"""The fast paths of setkey's parse, resolve and build give what the general
paths give: the dotted-quad reader against ipaddress, the lexer's possessive
quantifiers against plain ones, the one-address shortcuts against the loops,
and memoised parts of messages and checks against fresh values."""

from __future__ import annotations

import re
import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfkeyd.wire import Dialect, encode
from pfkeyd.wire.sockaddr import SockAddr
from setkey import build as build_module
from setkey import check as check_module
from setkey import resolve as resolve_module
from setkey.build import build
from setkey.check import problems
from setkey.commands import Command
from setkey.errors import SetkeyErrors
from setkey.formatter import format
from setkey.numeric import ip_from_text
from setkey.parser import fast_setkey_parser, parse, setkey_lexemes
from setkey.resolve import Resolver, resolve
from tests.setkey.test_roundtrip import commands

# ------------------------------------------------------------------ numeric addresses


def _reference_ip(text: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(text)
    except ValueError:
        return None


def _same_ip(text: str) -> None:
    found, expected = ip_from_text(text), _reference_ip(text)
    assert type(found) is type(expected), text
    assert found == expected and str(found) == str(expected), text


octets = st.one_of(
    st.integers(0, 255).map(str),
    st.integers(0, 999).map(lambda n: f"{n:03d}"),
    st.sampled_from(["", "256", "1000", "-1", "+1", "0x1", " 1", "1 ", "\u0661", "1_0", "01", "00"]),
)


@settings(max_examples=2000)
@given(st.lists(octets, min_size=1, max_size=6).map(".".join))
def test_dotted_quads_read_as_ipaddress_reads_them(text: str) -> None:
    _same_ip(text)


@settings(max_examples=1000)
@given(st.text(alphabet="0123456789.:abcdefx%_ +-\n", max_size=24))
def test_any_text_reads_as_ipaddress_reads_it(text: str) -> None:
    _same_ip(text)


@pytest.mark.parametrize(
    "text",
    [
        "0.0.0.0",
        "255.255.255.255",
        "10.0.0.1",
        "192.0.2.1\n",
        "1.2.3",
        "1.2.3.4.5",
        "1.2.3.04",
        "::1",
        "fe80::1%em0",
        "::ffff:10.0.0.1",
        "10.0.0.1%em0",
        "",
        "unique",
        "1.2.3.4 ",
    ],
)
def test_edge_addresses_read_as_ipaddress_reads_them(text: str) -> None:
    _same_ip(text)


# ------------------------------------------------------------------ the lexer

_FRAGMENTS = [
    " ",
    "\t",
    "\n",
    "# c ",
    "#",
    '"',
    '"a;b"',
    "-P",
    "-Pout",
    " in ",
    "unique#3",
    "unique:4",
    ";",
    "/",
    "[",
    "]",
    "add",
    "10.0.0.1",
    "0x1f",
    "1,2",
    ",",
    "-m",
    "-4n",
    "!",
    "+",
    ".",
    "_",
    "%",
    "::1",
    "x",
]


@settings(max_examples=1500)
@given(
    st.one_of(
        st.lists(st.sampled_from(_FRAGMENTS), max_size=16).map("".join),
        st.text(alphabet=' \t\n#"-P;/[]aeu0123x,:%.+_!', max_size=40),
    )
)
def test_lexer_cuts_text_as_the_plain_one(text: str) -> None:
    # the possessive blanks change no cut: the same pattern with plain quantifiers agrees
    lexeme = setkey_lexemes().commented
    plain = re.compile(lexeme.pattern.replace("*+", "*").replace("++", "+"))
    assert lexeme.split(text) == plain.split(text)
    assert [m.span(2) for m in lexeme.finditer(text)] == [m.span(2) for m in plain.finditer(text)]


@settings(max_examples=1500)
@given(
    st.one_of(
        st.lists(st.sampled_from([f for f in _FRAGMENTS if "#" not in f]), max_size=16).map("".join),
        st.text(alphabet=' \t\n"-P;/[]aeu0123x,:%.+_!', max_size=40),
    )
)
def test_lexer_for_texts_without_comments_cuts_them_as_the_plain_one(text: str) -> None:
    assert setkey_lexemes().uncommented.split(text) == setkey_lexemes().commented.split(text)


@settings(max_examples=300)
@given(st.lists(commands, min_size=1, max_size=6), st.sampled_from([" ", "\n", "\n\n\t "]))
def test_statements_of_a_text_without_quotes_and_comments_are_placed_as_in_any_text(
    cmds: list[Command], joint: str
) -> None:
    text = joint.join(format(c) for c in cmds)
    found = fast_setkey_parser().parse(text)
    # a comment at the end: the statements are found and placed the general way
    general = fast_setkey_parser().parse(text + "\n# the end")
    assert found == general == cmds
    assert [(c.line, c.column) for c in found] == [(c.line, c.column) for c in general]


# ------------------------------------------------------------------ address pairs


def _sa(text: str) -> SockAddr:
    return SockAddr(ip_address(text))


_ADDRESSES = [_sa("10.0.0.1"), _sa("10.0.0.2"), _sa("2001:db8::1"), _sa("2001:db8::2")]


@given(
    st.lists(st.sampled_from(_ADDRESSES), min_size=1, max_size=3),
    st.lists(st.sampled_from(_ADDRESSES), min_size=1, max_size=3),
)
def test_one_address_shortcuts_agree_with_the_loops(src: list[SockAddr], dst: list[SockAddr]) -> None:
    pairs = [(s, d) for s in src for d in dst if s.version == d.version]
    assert build_module._pairs(tuple(src), tuple(dst)) == pairs
    assert resolve_module._pairs_exist(tuple(src), tuple(dst)) == bool(pairs)


# ------------------------------------------------------------------ memoised parts

K16 = "0x00112233445566778899aabbccddeeff"
K20 = "0x00112233445566778899aabbccddeeff00112233"
K32 = "0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

# Statements that share some of the parts that are memoised (protocol,
# options, algorithms, policy) and differ in others.
_SCRIPT = f"""
add 10.0.0.1 10.0.0.2 esp 0x1000 -m transport -E aes-cbc {K16} -A hmac-sha2-256 {K32};
add 10.0.0.1 10.0.0.2 esp 0x1001 -m transport -E aes-cbc {K16} -A hmac-sha1 {K20};
add 10.0.0.1 10.0.0.2 esp 0x1002 -m tunnel -u 7 -lh 60 -bs 1000 -E aes-cbc {K16} -A hmac-sha2-256 {K32};
add 10.0.0.1 10.0.0.2 esp-udp 0x1003 -m transport -E aes-cbc {K16} -A hmac-sha2-256 {K32};
add 10.0.0.1 10.0.0.2 esp-old 0x1004 -m transport -E des-deriv 0x0011223344556677;
add 10.0.0.1 10.0.0.2 esp 0x1005 -m transport -r 300 -E aes-cbc {K16} -A hmac-sha2-256 {K32};
add 10.0.0.1 10.0.0.2 ah 0x1006 -m transport -A hmac-sha2-256 {K32};
add 10.0.0.1 10.0.0.2 ipcomp 0x1007 -m transport -C deflate;
getspi 10.0.0.1 10.0.0.2 esp 0x2000 -m transport;
delete 10.0.0.1 10.0.0.2 esp 0x2001 -m transport;
spdadd 10.0.0.0/24 10.0.1.0/24 any -P in ipsec esp/tunnel/10.0.0.1-10.0.0.2/unique:3;
spdadd 10.0.0.0/24 10.0.1.0/24 any -P out ipsec esp/tunnel/10.0.0.1-10.0.0.2/unique:3;
spdadd 10.0.0.0/24 10.0.1.0/24 any -P in ipsec esp/tunnel/10.0.0.1-10.0.0.3/require;
spdadd ::/0 ::/0 tcp -P out prio high + 3 ipsec tcp/transport//require;
spdadd -n 10.0.0.0/24 10.0.1.0/24 icmp 8,0 -ctx 1 2 "system_u" -P in none;
"""


def _run(dialect: Dialect) -> tuple[list[str], list[bytes | str]]:
    """The problems and the message bytes of _SCRIPT (or why one cannot be built)."""
    commands = parse(_SCRIPT)
    found = [repr(p) for p in problems(commands, dialect)]
    data: list[bytes | str] = []
    for item in resolve(commands, resolver=Resolver(getaddrinfo=lambda *a: [])):
        for fwd in (True, False):
            try:
                data += [encode(m, dialect) for m in build(item, dialect, 9, fwd_copies=fwd)]
            except ValueError as exc:  # EncodeError, or an algorithm the dialect lacks
                data.append(f"{type(exc).__name__}: {exc}")
    return found, data


@pytest.mark.parametrize("dialect", list(Dialect))
def test_memoised_parts_give_what_the_functions_give(dialect: Dialect, monkeypatch: pytest.MonkeyPatch) -> None:
    memoised = _run(dialect)
    for module, name in [
        (build_module, "_sa_parts"),
        (build_module, "_policies"),
        (check_module, "_sa_problems"),
        (check_module, "_policy_problems"),
        (check_module, "_proto_problems"),
    ]:
        monkeypatch.setattr(module, name, getattr(module, name).__wrapped__)
    assert _run(dialect) == memoised
    assert len([d for d in memoised[1] if isinstance(d, bytes)]) >= 18 and memoised[0]


def test_resolver_cache_keeps_flags_apart() -> None:
    def getaddrinfo(host: str, port: object, family: int, *args: object) -> list[tuple[object, ...]]:
        v4 = (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.1", 0))
        v6 = (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("2001:db8::1", 0, 0, 0))
        return [v4, v6] if family == socket.AF_UNSPEC else [v4]

    r = Resolver(getaddrinfo=getaddrinfo)
    (every,) = resolve(parse("add gw gw esp 1 -E null;"), resolver=r)
    (v4,) = resolve(parse("add -4 gw gw esp 1 -E null;"), resolver=r)
    assert len(every.src) == 2 and len(v4.src) == 1
    with pytest.raises(SetkeyErrors, match="not a numeric address"):
        resolve(parse("add -n gw gw esp 1 -E null;"), resolver=r)
