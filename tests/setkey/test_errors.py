"""Every kind of problem in a script is reported as file:line:col, the source
line and a caret, all of them at once, and no lark exception escapes."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from setkey.check import check
from setkey.errors import SetkeyError, SetkeyErrors, SetkeySyntaxError, SetkeyValueError, Source
from setkey.parser import parse
from setkey.resolve import Resolver, resolve

KEY16 = "0x00112233445566778899aabbccddeeff"


def errors_of(text: str, dialect: str | None = None, filename: str = "test.conf") -> list[SetkeyError]:
    with pytest.raises(SetkeyErrors) as info:
        commands = parse(text, filename)
        if dialect is not None:
            check(commands, dialect, Source(text, filename))
    return list(info.value.errors)


def only(text: str, dialect: str | None = None) -> SetkeyError:
    (error,) = errors_of(text, dialect)
    return error


def assert_shown(error: SetkeyError, line: int, column: int, source_line: str) -> None:
    assert (error.filename, error.line, error.column) == ("test.conf", line, column)
    assert error.source_line == source_line
    text = str(error)
    head, shown, caret = text.split("\n")
    assert head.startswith(f"test.conf:{line}:{column}: ")
    assert shown == source_line
    assert caret == " " * (column - 1) + "^"
    assert "__ANON" not in text and "Token(" not in text and "lark" not in text.lower()


# ------------------------------------------------------------------ syntax


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc;\nadd 1 2 esp;\n", 2, 12, ['unexpected ";"', "a decimal number"]),
        ("flush\nspdflush;", 2, 1, ['unexpected "spdflush"', '";"']),
        ("add 10.0.0.1 10.0.0.2 esp 0x1000 -x 1 -E null;", 1, 34, ['unexpected "-x"']),
        ("spdadd a b any -P out ipsec esp/;", 1, 32, ["policy: syntax error", '"transport" or "tunnel"']),
        ("add a b esp 1 -E null \\ ;", 1, 23, ['unexpected character "\\"']),
        ("add a b esp 1 -E null", 1, 18, ["unexpected end of input"]),
        ("ADD a b esp 1 -E null;", 1, 1, ['unexpected "ADD"']),
        ("spdadd a b any -P out ipsec esp/tunnel/1.2.3.4 - /require;", 1, 50, ["policy: syntax error", "an address"]),
    ],
)
def test_syntax_errors_are_placed_and_described(text: str, line: int, column: int, words: list[str]) -> None:
    error = only(text)
    assert isinstance(error, SetkeySyntaxError)
    assert_shown(error, line, column, text.split("\n")[line - 1])
    for word in words:
        assert word in error.message


def test_every_syntax_error_is_reported_and_good_statements_are_kept_out() -> None:
    text = """flush;
add 1.1.1.1 2.2.2.2 esp 1 -E;
spdadd a b any -P out ipsec esp/transport//require
add 1.1.1.1 2.2.2.2 esp 2 -E null ;
get 1.1.1.1 2.2.2.2 esp 0x1g;
dump esp;
spdadd a b any -P out ipsec esp/transport//require;
delete 1.1.1.1 2.2.2.2 esp 3
"""
    errors = errors_of(text)
    assert [(e.line, e.column) for e in errors] == [(2, 29), (4, 1), (5, 25), (8, 28)]
    assert all(isinstance(e, SetkeySyntaxError) for e in errors)
    assert "a missing" not in errors[1].message  # the policy swallowed line 4: setkey does that too
    assert errors[1].message.startswith("policy: syntax error")


def test_value_errors_and_syntax_errors_together() -> None:
    text = f"""add 1.1.1.1 2.2.2.2 esp 1 -E aes-cbcx {KEY16};
add 1.1.1.1 2.2.2.2 esp 1 -E null
flush;
"""
    errors = errors_of(text)
    assert [(type(e), e.line, e.column) for e in errors] == [(SetkeyValueError, 1, 30), (SetkeySyntaxError, 3, 1)]


# ------------------------------------------------------------------ values


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        (f"add 1.1.1.1 2.2.2.2 esp 1 -E aes-cbcx {KEY16};", 30, 'unknown encryption algorithm "aes-cbcx" after -E'),
        (
            f"add 1.1.1.1 2.2.2.2 esp 1 -E aes-cbc {KEY16} -A sha1 {KEY16};",
            76,
            'unknown authentication algorithm "sha1" after -A',
        ),
        ("add 1.1.1.1 2.2.2.2 ipcomp 1 -C gzip;", 33, 'unknown compression algorithm "gzip" after -C'),
        ("get 1.1.1.1 2.2.2.2 esp 0x100000000;", 25, "SPI 0x100000000 is out of range (at most 0xffffffff)"),
        ("get 1.1.1.1 2.2.2.2 esp 4294967296;", 25, "SPI 4294967296 is out of range (at most 4294967295)"),
        ("get 1.1.1.1 2.2.2.2 esp 1 -u 4294967296;", 30, "reqid 4294967296 is out of range"),
        ("get 1.1.1.1[65536] 2.2.2.2 esp 1;", 13, "port 65536 is out of range"),
        ("get 1.1.1.1 2.2.2.2 esp-old 1 -r 4;", 31, "replay prevention cannot be used with ah-old or esp-old"),
        ("get 1.1.1.1 2.2.2.2 esp 1 -hwif averyveryverylongname;", 33, "longer than 15 characters"),
        ("spdadd 1.1.1.1/129 2.2.2.2 any -P out none;", 16, "prefix length 129 is out of range"),
        ("spdadd 1.1.1.1 2.2.2.2 foo -P out none;", 24, 'unknown upper-layer protocol "foo"'),
        ("spdadd 1.1.1.1 2.2.2.2 256 -P out none;", 24, "upper-layer protocol 256 is out of range"),
        ("spdadd 1.1.1.1 2.2.2.2 tcp 1,2 -P out none;", 28, "only valid for icmp, icmp6, mh and gre"),
        ("spdadd 1.1.1.1 2.2.2.2 icmp 300 -P out none;", 29, "invalid upper-layer specification"),
        ("spdadd 1.1.1.1 2.2.2.2 any -P out ipsec esp/tunnel//require;", 41, "tunnel mode needs the tunnel end points"),
        (
            "spdadd 1.1.1.1 2.2.2.2 any -P out ipsec esp/tunnel/1.1.1.1-::1/require;",
            52,
            "tunnel end points of different address families",
        ),
        ("spdadd 1.1.1.1 2.2.2.2 any -P out ipsec esp/tunnel/gw-1.1.1.1/require;", 52, 'invalid tunnel end point "gw"'),
        (
            "spdadd 1.1.1.1 2.2.2.2 any -P in ipsec esp/transport/me-any/require;",
            54,
            '"me-any" is only valid in an "out"',
        ),
        ("spdadd 1.1.1.1 2.2.2.2 any -P out prio 2147483649 none;", 40, "priority offset 2147483649 is out of range"),
        ("spdadd 1.1.1.1 2.2.2.2 any -P out prio def + 1073741825 none;", 46, "priority offset"),
        ("spdadd 1.1.1.1 2.2.2.2 any -P out ipsec esp/transport//unique:4294967296;", 56, "reqid 4294967296"),
    ],
)
def test_value_errors_are_placed_on_the_value(text: str, column: int, message: str) -> None:
    error = only(text)
    assert isinstance(error, SetkeyValueError)
    assert message in error.message
    assert_shown(error, 1, column, text)


def test_a_value_error_in_a_multi_line_policy_is_placed_on_its_line() -> None:
    text = "spdadd 1.1.1.1 2.2.2.2 any\n  -P out ipsec\n   esp/transport//require\n   ah/tunnel//require;\n"
    error = only(text)
    assert "tunnel mode needs" in error.message
    assert_shown(error, 4, 4, "   ah/tunnel//require;")


# ------------------------------------------------------------------ dialects


@pytest.mark.parametrize(
    ("text", "dialect", "column", "message"),
    [
        (
            f"add 1.1.1.1 2.2.2.2 esp 1 -E aes-cbc {KEY16[:-2]};",
            "linux",
            30,
            'invalid key length for "aes-cbc": 120 bits, expected 128 to 256 bits',
        ),
        (
            'add 1.1.1.1 2.2.2.2 ah 1 -A hmac-sha1 "short";',
            "freebsd",
            29,
            'invalid key length for "hmac-sha1": 40 bits, expected 160 bits',
        ),
        (
            "add 1.1.1.1 2.2.2.2 esp 1 -E aes-gcm-16 0x00112233445566778899aabbccddeeff;",
            "freebsd",
            30,
            'invalid key length for "aes-gcm-16": 128 bits, expected 160 to 288 bits',
        ),
        ("add 1.1.1.1 2.2.2.2 esp 1 -E null;", "freebsd", 30, 'encryption algorithm "null" needs a key'),
        ('add 1.1.1.1 2.2.2.2 esp 1 -E null "";', "linux", 30, 'encryption algorithm "null" takes no key in the linux'),
        (
            f"add 1.1.1.1 2.2.2.2 esp 1 -E 3des-cbc {KEY16};",
            "freebsd",
            30,
            'encryption algorithm "3des-cbc" is not available in the freebsd dialect',
        ),
        (
            f"add 1.1.1.1 2.2.2.2 esp 1 -E des-32iv {KEY16[:18]};",
            "linux",
            30,
            'algorithm mismatched: "des-32iv" needs esp-old',
        ),
        (
            "add 1.1.1.1 2.2.2.2 esp 1 -r 256 -E null;",
            "linux",
            27,
            "replay window 256 is too large for the linux dialect (at most 255 bytes)",
        ),
        ('add 1.1.1.1 2.2.2.2 esp 1 -r 536870908 -E null "";', "freebsd", 27, "replay window 536870908 is too large"),
        (
            'add 1.1.1.1 2.2.2.2 esp 1 -ctx 1 1 "l" -E null "";',
            "freebsd",
            27,
            "-ctx (a security context, SADB_X_EXT_SEC_CTX) cannot be carried by the freebsd dialect",
        ),
        (
            "add 1.1.1.1 2.2.2.2 esp 1 -natt 1.1.1.1[4500] 2.2.2.2[4500] -E null;",
            "linux",
            27,
            "-natt (the NAT-T original addresses OAI and OAR) cannot be carried by the linux dialect",
        ),
        ("add 1.1.1.1 2.2.2.2 esp 1 -natt_mtu 100 -E null;", "linux", 27, "-natt_mtu"),
        ("add 1.1.1.1 2.2.2.2 esp 1 -esn -E null;", "linux", 27, "-esn (SADB_X_SAFLAGS_ESN) cannot be carried"),
        ("add 1.1.1.1 2.2.2.2 esp 1 -hwif em0 -E null;", "linux", 27, "-hwif"),
        ("flush tcp;", "linux", 7, "tcp (TCP-MD5 SAs"),
        ("spdadd 1.1.1.1 2.2.2.2 any -P fwd none;", "freebsd", 28, 'a "fwd" policy cannot be carried by the freebsd'),
        ("spdadd 1.1.1.1 2.2.2.2 any -P out prio high none;", "freebsd", 28, "a policy priority cannot be carried"),
        (
            "spdadd 1.1.1.1 2.2.2.2 any -P out ipsec esp/transport//unique:70000;",
            "freebsd",
            28,
            "reqid 70000 of unique:70000 is too large for the freebsd dialect (at most 65535)",
        ),
        ("spdadd 1.1.1.1 2.2.2.2 any -P out ipsec tcp/transport//require;", "linux", 28, "a tcp (TCP-MD5) request"),
        ('spdadd 1.1.1.1 2.2.2.2 any -ctx 1 1 "l" -P out none;', "freebsd", 28, "-ctx"),
        ('spdadd tagged "x" -P out none;', "linux", 8, 'spdadd tagged "x" (a policy for a packet tag'),
        ('spdupdate tagged "x" -P out none;', "freebsd", 11, "cannot be carried by the freebsd dialect"),
    ],
)
def test_dialect_errors_name_the_construct_and_the_dialect(text: str, dialect: str, column: int, message: str) -> None:
    error = only(text, dialect)
    assert isinstance(error, SetkeyValueError)
    assert message in error.message
    assert_shown(error, 1, column, text)


def test_the_other_dialect_accepts_them() -> None:
    good = {
        "linux": [
            'add 1.1.1.1 2.2.2.2 esp 1 -ctx 1 1 "l" -E null;',
            "spdadd 1.1.1.1 2.2.2.2 any -P fwd none;",
            "spdadd 1.1.1.1 2.2.2.2 any -P out ipsec esp/transport//unique:70000;",
            f"add 1.1.1.1 2.2.2.2 esp 1 -E 3des-cbc {KEY16}{KEY16[2:18]};",
        ],
        "freebsd": [
            "add 1.1.1.1 2.2.2.2 esp 1 -natt 1.1.1.1[4500] 2.2.2.2[4500] -natt_mtu 9 -esn -hwif em0 "
            "-E aes-gcm-16 0x00112233445566778899aabbccddeeff00112233;",
            'add 1.1.1.1 2.2.2.2 esp 1 -E null "";',
            'add 1.1.1.1 2.2.2.2 tcp 0x1000 -A tcp-md5 "k";',
            'add 1.1.1.1 2.2.2.2 esp 1 -r 300 -E null "";',
            "spdadd 1.1.1.1 2.2.2.2 any -P out ipsec tcp/transport//require;",
        ],
    }
    for dialect, lines in good.items():
        for line in lines:
            check(parse(line), dialect)


def test_all_dialect_errors_are_reported_together() -> None:
    text = (
        'spdadd 1.1.1.1 2.2.2.2 any -P fwd none;\nflush;\nadd 1.1.1.1 2.2.2.2 esp 1 -esn -E null "";\n'
        'add 1.1.1.1 2.2.2.2 tcp 0x1000 -A tcp-md5 "k";\n'
    )
    assert [(e.line, e.column) for e in errors_of(text, "freebsd")] == [(1, 28)]
    assert [(e.line, e.column) for e in errors_of(text, "linux")] == [(3, 27), (3, 35), (4, 21), (4, 35)]


# ------------------------------------------------------------------ resolution


class FakeDNS:
    """getaddrinfo for a few names, failing for the rest."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    def __call__(self, host: str, port: object, family: int = 0, *args: object) -> list[tuple[object, ...]]:
        found = self.table.get(host)
        if found is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out: list[tuple[object, ...]] = []
        for addr in found:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            if family in (0, fam):
                out.append((fam, socket.SOCK_DGRAM, 17, "", (addr, 0) if fam == socket.AF_INET else (addr, 0, 0, 0)))
        if not out:
            raise socket.gaierror(socket.EAI_ADDRFAMILY, "Address family for hostname not supported")
        return out


def fake_if_nametoindex(name: str) -> int:
    if name != "em0":
        raise OSError("no such device")
    return 3


def fake_getservbyname(name: str, proto: str) -> int:
    if (name, proto) != ("ntp", "udp"):
        raise OSError("service/proto not found")
    return 123


def resolve_errors(text: str, dns: dict[str, list[str]]) -> list[SetkeyError]:
    commands = parse(text, "test.conf")
    resolver = Resolver(getaddrinfo=FakeDNS(dns), if_nametoindex=fake_if_nametoindex, getservbyname=fake_getservbyname)
    with pytest.raises(SetkeyErrors) as info:
        resolve(commands, Source(text, "test.conf"), resolver=resolver)
    return list(info.value.errors)


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        (
            "add 10.0.0.1 nowhere.example esp 1 -E null;",
            14,
            'cannot resolve "nowhere.example": Name or service not known',
        ),
        ("add -n 10.0.0.1 gw.example esp 1 -E null;", 17, '"gw.example" is not a numeric address (-n)'),
        ("add -6 10.0.0.1 ::1 esp 1 -E null;", 8, '"10.0.0.1" is not an IPv6 address (-6)'),
        ("delete 10.0.0.1 two.example esp 1;", 17, 'multiple addresses for "two.example": delete needs exactly one'),
        ("spdadd 10.0.0.1 two.example any -P out none;", 17, "spdadd needs exactly one"),
        ("spdadd 10.0.0.1/33 10.0.0.2 any -P out none;", 17, "prefix length /33 is too long for the IPv4 address"),
        ("spdadd 10.0.0.1 ::1 any -P out none;", 8, "are of different address families"),
        ("add 10.0.0.1 ::1 esp 1 -E null;", 5, "have no addresses of the same family"),
        ("spdadd 10.0.0.1[nosuch] 10.0.0.2 any -P out none;", 17, 'unknown UDP service "nosuch"'),
        ("spdadd fe80::1%eth9 fe80::2 any -P out none;", 8, 'unknown interface "eth9"'),
        ("spdadd 10.0.0.1%3 10.0.0.2 any -P out none;", 8, "only IPv6 addresses have a scope"),
    ],
)
def test_resolution_errors_are_placed_on_the_host(text: str, column: int, message: str) -> None:
    (error,) = resolve_errors(text, {"two.example": ["10.0.0.7", "10.0.0.8"]})
    assert message in error.message
    assert_shown(error, 1, column, text)


def test_every_resolution_error_is_reported() -> None:
    text = "add a.example b.example esp 1 -E null;\nflush;\nspdadd c.example 10.0.0.1 any -P out none;\n"
    errors = resolve_errors(text, {})
    assert [(e.line, e.column) for e in errors] == [(1, 5), (3, 8)]


# ------------------------------------------------------------------ robustness

_ALPHABET = st.sampled_from(
    [
        *'abcdefgimnopstuxyz0123456789:;./[]-"# \n\t\\%,+_=',
        "add ",
        "spdadd ",
        "esp ",
        "-E ",
        "-A ",
        "-P ",
        "out ",
        "in ",
        "ipsec ",
        "esp/transport//require",
        "0x1000 ",
        "10.0.0.1 ",
        "any ",
        "-m ",
        "tunnel ",
        "null ",
        ";\n",
        "unique:3",
        "prio ",
        "def ",
    ]
)


@settings(max_examples=300)
@given(st.lists(_ALPHABET, max_size=40).map("".join))
def test_any_text_parses_or_raises_setkey_errors_only(text: str) -> None:
    try:
        parse(text, "fuzz")
    except SetkeyErrors as exc:
        for error in exc.errors:
            assert error.line >= 1 and error.column >= 1, error
            assert error.filename == "fuzz"
            assert "__ANON" not in str(error)


def test_an_error_names_the_right_one_of_equal_words() -> None:
    text = (
        "spdadd 1.1.1.1 2.2.2.2 any -P out ipsec esp/tunnel/10.0.0.1-10.0.0.2/require"
        " esp/tunnel/10.0.0.1-10.0.0.x/require esp/tunnel//require;"
    )
    error = only(text)
    assert 'invalid tunnel end point "10.0.0.x"' in error.message
    assert_shown(error, 1, text.index("10.0.0.x") + 1, text)
    text = "spdadd 1.1.1.1 2.2.2.2 any -P out ipsec esp/transport//use esp/tunnel//require;"
    assert_shown(only(text), 1, text.rindex("esp") + 1, text)
