"""setkey's command line without a daemon: options, usage text and exit 64, the
man page's option list, errors in scripts (file:line:col, caret, exit 1), -n,
-c's statement splitter, and file arguments of raw PF_KEY messages.

Runs against a daemon are in test_cli_e2e.py.
"""

from __future__ import annotations

import json
import os
import socket
import string
from pathlib import Path

import pytest

from pfkeyd.defaults import default_socket_path
from pfkeyd.wire import Address, Dialect, ExtType, Key, Lifetime, Message, MsgType, Sa, Sa2, SaType, encode
from pfkeyd.wire.framing import split_messages
from setkey.cli import StatementSplitter, UsageError, accepted_options, modes, parse_args
from setkey.usage import EX_USAGE, USAGE
from tests.setkey import manpage
from tests.setkey.clihelp import NOW, WALL, Result, run

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "examples" / "captures"
NOWHERE = "/nonexistent/pfkeyd.sock"
KEY16 = "0x00112233445566778899aabbccddeeff"

# ------------------------------------------------------------------ usage


def test_no_arguments_is_a_usage_error_with_the_synopsis_on_stderr() -> None:
    r = run([])
    assert r.status == EX_USAGE == 64
    assert r.out == ""
    assert r.err.startswith(USAGE)
    assert r.err[len(USAGE) :] == "setkey: nothing to do: give -c, -D, -e, -F, -f, -x or files\n"


def test_the_usage_text_is_the_man_page_synopsis() -> None:
    printed = run(["-Z"]).err
    usage = printed[: printed.index("setkey: unknown option")]
    assert usage == USAGE
    assert manpage.synopsis_lines(manpage.source()) == manpage.usage_lines(usage)


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["-Z"], "unknown option -Z"),
        (["-Dq"], "unknown option -q"),
        (["--help"], "unknown option --help"),
        (["--js", "-D"], "unknown option --js"),  # no abbreviations
        (["-f"], "option -f needs an argument"),
        (["-D", "--socket"], "option --socket needs an argument"),
        (["--json=yes", "-D"], "option --json takes no argument"),
        (["--dialect", "openbsd", "-D"], "unknown dialect 'openbsd' (freebsd or linux)"),
        (["--socket=", "-D"], "--socket needs a path"),
        (["--timeout", "0", "-D"], "--timeout needs a number of seconds above 0, not '0'"),
        (["--timeout=-1", "-D"], "--timeout needs a number of seconds above 0, not '-1'"),
        (["--timeout=soon", "-D"], "--timeout needs a number of seconds above 0, not 'soon'"),
        (["--timeout=inf", "-D"], "--timeout needs a number of seconds above 0, not 'inf'"),
        (["--timeout=nan", "-D"], "--timeout needs a number of seconds above 0, not 'nan'"),
        (["--timeout=\u0665", "-D"], "--timeout needs a number of seconds above 0, not '\u0665'"),
        (["-D", "--timeout"], "option --timeout needs an argument"),
        (["-D", "-F"], "-D and -F cannot be combined"),
        (["-f", "a", "-e", "b"], "-f and -e cannot be combined"),
        (["-f", "a", "-f", "b"], "-f may be given only once"),
        (["-c", "-x"], "-c and -x cannot be combined"),
        (["-D", "file.bin"], "file arguments cannot be combined with -c, -D, -e, -F, -f or -x"),
        (["-P"], "nothing to do: give -c, -D, -e, -F, -f, -x or files"),
    ],
)
def test_usage_errors_exit_64_and_say_why(argv: list[str], reason: str) -> None:
    r = run(argv)
    assert (r.status, r.out) == (EX_USAGE, "")
    assert r.err == USAGE + f"setkey: {reason}\n"


def test_the_man_page_lists_exactly_the_options_setkey_accepts() -> None:
    assert manpage.option_flags(manpage.source()) == accepted_options()


def _accepted(option: str) -> bool:
    try:
        parse_args([option, "-D"] if option[1] not in "ef" else [option, "x"])
    except UsageError as exc:
        return not str(exc).startswith("unknown option")
    return True


def test_the_parser_accepts_the_man_page_options_and_refuses_every_other() -> None:
    documented = manpage.option_flags(manpage.source())
    letters = {f"-{c}" for c in string.ascii_letters + string.digits}
    assert {o for o in letters if _accepted(o)} == {o for o in documented if len(o) == 2}
    longs = {
        "--json",
        "--socket=x",
        "--dialect=linux",
        "--timeout=1",
        "--help",
        "--version",
        "--verbose",
        "--sock=x",
        "--jsonx",
    }
    assert {o.split("=")[0] for o in longs if _accepted(o)} == {o for o in documented if o.startswith("--")}


def test_timeout_takes_seconds() -> None:
    assert parse_args(["--timeout", "2.5", "-D"]).timeout == 2.5
    assert parse_args(["--timeout=.5", "-F"]).timeout == 0.5
    assert parse_args(["-D"]).timeout is None  # the Runtime's default: cli.DEFAULT_TIMEOUT


def test_options_combine_and_come_in_any_order() -> None:
    o = parse_args(["-DPalv", "--json", "--dialect=freebsd", "--socket", "/tmp/s"])
    assert (o.mode, o.policy, o.show_dead, o.loop, o.verbose, o.json) == ("D", True, True, True, True, True)
    assert (o.dialect, o.socket) == (Dialect.FREEBSD, "/tmp/s")
    assert parse_args(["-fscript.conf", "-n"]).source == "script.conf"
    assert parse_args(["-f", "-", "-k"]).source == "-"
    assert parse_args(["-f", "-", "-k"]).fwd_copies is False
    assert parse_args(["-xx", "-H"]).promisc == 2
    assert parse_args(["-x", "-x", "-h"]).hex is True
    files = parse_args(["-v", "a.bin", "--", "-D"])
    assert (files.mode, files.files) == ("files", ["a.bin", "-D"])


def test_version_exits_0() -> None:
    r = run(["-V"])
    assert (r.status, r.err) == (0, "")
    assert r.out.startswith("setkey (pfkeyd) ")


# ------------------------------------------------------------------ scripts with mistakes


def _assert_error(err: str, where: str, message: str, source: str, column: int) -> list[str]:
    """The first error in ``err`` is at ``where``, says ``message`` (a part of
    it), and shows ``source`` with a caret under ``column``; the rest is returned."""
    lines = err.splitlines()
    assert lines[0].startswith(f"setkey: {where}: "), lines[0]
    assert message in lines[0]
    assert lines[1] == source
    assert lines[2] == " " * (column - 1) + "^"
    return lines[3:]


def test_syntax_and_semantic_errors_are_all_reported_with_file_line_column(tmp_path: Path) -> None:
    script = tmp_path / "ipsec.conf"
    good = f"add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc {KEY16};"
    bad_alg = "add 10.0.0.1 10.0.0.2 esp 0x1001 -E aes-cbcx 0x00;"
    bad_syntax = "deleteal 10.0.0.1 10.0.0.2 esp;"
    script.write_text(f"{good}\n{bad_alg}\n{bad_syntax}\n")
    r = run(["-f", str(script)], socket=NOWHERE)
    assert (r.status, r.out) == (1, "")
    rest = _assert_error(r.err, f"{script}:2:37", '"aes-cbcx"', bad_alg, 37)
    rest = _assert_error("\n".join(rest), f"{script}:3:19", "syntax error", bad_syntax, 19)
    assert rest == []


@pytest.mark.parametrize(
    ("statement", "column", "message"),
    [
        ("add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc 0x0011;", 37, "invalid key length"),
        (f"add -n host.example 10.0.0.2 esp 0x1000 -E aes-cbc {KEY16};", 8, "not a numeric address"),
        ("spdadd 10.0.0.1 fec0::1 any -P out none;", 8, "different address families"),
        ("spdadd 10.0.0.1/33 10.0.0.2 any -P out none;", 17, "prefix length /33"),
    ],
)
def test_semantic_errors_point_at_the_value(statement: str, column: int, message: str) -> None:
    r = run(["-e", f"flush;\n{statement}\n"], socket=NOWHERE)
    assert r.status == 1
    assert _assert_error(r.err, "(-e):2:" + str(column), message, statement, column) == []


def test_dialect_checks_follow_the_dialect() -> None:
    statement = "spdadd 10.0.0.1 10.0.0.2 any -P fwd none;"
    assert run(["-n", "-e", statement], dialect=Dialect.LINUX).status == 0
    r = run(["-n", "-e", statement], dialect=Dialect.FREEBSD)
    assert r.status == 1
    _assert_error(r.err, "(-e):1:30", 'a "fwd" policy cannot be carried by the freebsd dialect', statement, 30)


def test_check_only_contacts_no_daemon() -> None:
    r = run(["-n", "-e", f"add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc {KEY16}; spdflush;"], socket=NOWHERE)
    assert (r.status, r.out, r.err) == (0, "", "")


def test_an_unreadable_script_or_a_missing_daemon_exits_1(tmp_path: Path) -> None:
    r = run(["-f", str(tmp_path / "missing.conf")])
    assert (r.status, r.err) == (1, f"setkey: {tmp_path}/missing.conf: No such file or directory\n")
    hint = "pfkeyd may not be running, or it listens on another socket: choose that one with --socket or PFKEY_SOCKET"
    r = run(["-e", "flush;"], socket=NOWHERE)
    assert (r.status, r.err) == (
        1,
        f"setkey: {NOWHERE}: No such file or directory (the PF_KEY socket, from --socket): {hint}\n",
    )
    r = run(["-D"], environ={"PFKEY_SOCKET": NOWHERE})
    assert (r.status, r.err) == (
        1,
        f"setkey: {NOWHERE}: No such file or directory (the PF_KEY socket, from PFKEY_SOCKET): {hint}\n",
    )
    environ = {"XDG_RUNTIME_DIR": str(tmp_path)}
    default = default_socket_path(environ)  # /run/pfkeyd.sock for root
    if default is not None and not os.path.exists(default):
        r = run(["-x"], environ=environ)
        assert (r.status, r.err) == (
            1,
            f"setkey: {default}: No such file or directory (the PF_KEY socket, from the default): {hint}\n",
        )


def test_a_socket_file_nobody_listens_on_says_pfkeyd_may_not_be_running(tmp_path: Path) -> None:
    # what a daemon that died leaves behind: the file, and ECONNREFUSED
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.bind(stale)
    r = run(["-D"], socket=stale)
    assert r.status == 1
    assert r.err == (
        f"setkey: {stale}: Connection refused (the PF_KEY socket, from --socket): pfkeyd may not be "
        "running, or it listens on another socket: choose that one with --socket or PFKEY_SOCKET\n"
    )


def test_a_script_that_sends_nothing_needs_no_daemon() -> None:
    assert run(["-e", "# nothing but a comment\n"], socket=NOWHERE).status == 0
    assert run(["-e", "exit; flush;"], socket=NOWHERE).status == 0
    # text after quit is not even parsed
    assert run(["-n", "-e", "flush; quit; this is ( not setkey"], socket=NOWHERE) == Result(0, "", "")


def test_a_script_can_come_from_stdin() -> None:
    r = run(["-n", "-f", "-"], stdin="flush;\nspdflush\n")
    assert r.status == 1
    assert r.err.startswith("setkey: (stdin):2:")
    assert "unexpected end of input" in r.err.splitlines()[0]


def test_an_unexpected_exception_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> object:
        raise RuntimeError("wires crossed")

    monkeypatch.setattr(modes, "parse", boom)
    r = run(["-n", "-e", "flush;"])
    assert (r.status, r.err) == (1, "setkey: internal error: RuntimeError: wires crossed\n")


# ------------------------------------------------------------------ -c


def test_splitter_cuts_statements_at_their_semicolons() -> None:
    s = StatementSplitter()
    assert s.feed("flush; spdflush;\n") == [
        ("flush;", 1, {1: "flush; spdflush;"}),
        ("       spdflush;", 1, {1: "flush; spdflush;"}),
    ]
    assert s.feed("add 10.0.0.1\n") == []
    out = s.feed("  10.0.0.2 esp 0x1000 -A null; # done\n")
    assert out == [
        (
            "add 10.0.0.1\n  10.0.0.2 esp 0x1000 -A null;",
            2,
            {2: "add 10.0.0.1", 3: "  10.0.0.2 esp 0x1000 -A null; # done"},
        )
    ]
    assert s.feed("\n") == []
    assert s.finish() == []


def test_splitter_ignores_semicolons_in_quotes_and_comments() -> None:
    s = StatementSplitter()
    assert s.feed('add a b ah 0x1000 -A hmac-md5 "ab;cd";\n')[0][0] == 'add a b ah 0x1000 -A hmac-md5 "ab;cd";'
    assert s.feed("# a comment; not a statement\n") == []
    assert s.feed('add a b ah 0x1001 -A hmac-md5 "12\n') == []
    last = '34"; spdadd a b any -P out ipsec esp/transport//unique#4;'
    assert s.feed(last + "\n") == [
        ('add a b ah 0x1001 -A hmac-md5 "12\n34";', 3, {3: 'add a b ah 0x1001 -A hmac-md5 "12', 4: last}),
        ("     spdadd a b any -P out ipsec esp/transport//unique#4;", 4, {4: last}),
    ]


def test_splitter_hands_over_an_unfinished_statement_at_the_end() -> None:
    s = StatementSplitter()
    assert s.feed("flush;\n") != []
    assert s.feed("dump esp\n") == []
    assert s.finish() == [("dump esp\n", 2, {2: "dump esp"})]


def test_interactive_check_only_reports_each_statement_and_goes_on() -> None:
    stdin = (
        f"add 10.0.0.1 10.0.0.2 esp 0x1000 -E aes-cbc {KEY16}; foo;\n"
        "add 10.0.0.1\n 10.0.0.2 esp 0x1001 -E aes-cbc 0x0011; # short key\n"
        f"add 10.0.0.1 10.0.0.2 esp 0x1002 -E aes-cbc {KEY16};\n"
        "exit; this is never read;\n"
    )
    r = run(["-n", "-c"], stdin=stdin, socket=NOWHERE)
    assert r.status == 1
    first = stdin.splitlines()[0]
    rest = _assert_error(r.err, "(stdin):1:81", 'unexpected "foo"', first, 81)
    rest = _assert_error("\n".join(rest), "(stdin):3:25", "invalid key length", stdin.splitlines()[2], 25)
    assert rest == []


def test_interactive_without_mistakes_exits_0() -> None:
    assert run(["-n", "-c"], stdin="flush;\nspdflush;\n", socket=NOWHERE).status == 0


# ------------------------------------------------------------------ file arguments


def test_split_messages_reads_raw_bytes_and_hex_text() -> None:
    one = encode(Message(MsgType.FLUSH, SaType.ESP, 1, 2), "linux")
    two = encode(Message(MsgType.X_SPDFLUSH, 0, 3, 4), "linux")
    assert split_messages(one + two) == [one, two]
    assert split_messages(f"# a comment\n{one.hex()}\n{two.hex(' ')}\n".encode()) == [one, two]
    assert split_messages(b"\x02\x09") == [b"\x02\x09"]


def _dump_entry(dialect: Dialect) -> bytes:
    msg = Message(
        MsgType.DUMP,
        SaType.ESP,
        0,
        4242,
        exts=(
            Sa(0x1001, 4, 1, 3, 12, 0x40),
            Sa2(1, 0, 5),
            Lifetime(ExtType.LIFETIME_CURRENT, 0, 0, WALL, 0),
            Address.host(ExtType.ADDRESS_SRC, "192.0.2.1"),
            Address.host(ExtType.ADDRESS_DST, "198.51.100.2"),
            Key(ExtType.KEY_ENCRYPT, bytes(range(16))),
            Key(ExtType.KEY_AUTH, bytes(range(20))),
        ),
    )
    return encode(msg, dialect)


def test_file_arguments_print_messages_as_replies(tmp_path: Path) -> None:
    raw = tmp_path / "dump.bin"
    raw.write_bytes(_dump_entry(Dialect.FREEBSD))
    r = run([str(raw)], dialect=Dialect.FREEBSD)
    assert (r.status, r.err) == (0, "")
    assert r.out.splitlines() == [
        "192.0.2.1 198.51.100.2",
        "\tesp mode=transport spi=4097(0x00001001) reqid=5(0x00000005)",
        "\tE: aes-cbc  00010203 04050607 08090a0b 0c0d0e0f",
        "\tA: hmac-sha1  00010203 04050607 08090a0b 0c0d0e0f 10111213",
        "\tseq=0x00000000 replay=4 flags=0x00000040 state=mature ",
        "\tcreated: Nov 14 22:13:20 2023\tcurrent: Nov 14 22:13:27 2023",
        f"\tdiff: {NOW - WALL}(s)\thard: 0(s)\tsoft: 0(s)",
        "\tlast:                     \thard: 0(s)\tsoft: 0(s)",
        "\tcurrent: 0(bytes)\thard: 0(bytes)\tsoft: 0(bytes)",
        "\tallocated: 0\thard: 0\tsoft: 0",
        "\tsadb_seq=0 pid=4242 refcnt=0",
    ]
    js = run(["--json", "-a", str(raw)], dialect=Dialect.FREEBSD)
    entry = json.loads(js.out)
    assert (entry["type"], entry["spi"], entry["src"]["address"]) == ("sa", 0x1001, "192.0.2.1")


def test_file_arguments_with_v_print_the_kdebug_dump() -> None:
    r = run(["-v", str(CAPTURES / "linux-setkey-add.hex")], dialect=Dialect.LINUX)
    assert r.status == 0
    assert r.out.startswith("sadb_msg{ version=2 type=3 errno=0 satype=3\n  len=20 reserved=0 seq=0 pid=13397\n")


def test_bad_file_arguments_exit_1_and_the_rest_is_printed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes.fromhex("02030003030000000000000000000000"))  # len 3 units, 16 bytes
    good = tmp_path / "good.bin"
    good.write_bytes(_dump_entry(Dialect.LINUX))
    r = run([str(tmp_path / "none.bin"), str(bad), str(good)], dialect=Dialect.LINUX)
    assert r.status == 1
    lines = r.err.splitlines()
    assert lines[0] == f"setkey: {tmp_path}/none.bin: No such file or directory"
    assert lines[1].startswith(f"setkey: {bad}: message 1: ")
    assert len(lines) == 2
    assert r.out.startswith("192.0.2.1 198.51.100.2 \n")
