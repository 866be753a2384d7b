"""The command-line entry points that exist so far, run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "examples" / "captures"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False, cwd=ROOT)


def test_pfkeyd_decode_prints_the_captured_add_field_by_field() -> None:
    result = run("-m", "pfkeyd", "decode", "-d", "linux", str(CAPTURES / "linux-setkey-add.hex"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "sadb_msg: type ADD (3), satype ESP (3), errno 0" in out
    assert "  pid: 13397" in out
    assert "  spi: 0x00001000" in out
    assert "  auth: X_SHA2_256 (5)" in out
    assert "  encrypt: X_AESCBC (12)" in out
    assert "  addr: 10.0.0.2[0]" in out
    # key material stays hidden unless asked for
    assert "00112233" not in out
    assert "key: <16 bytes hidden>" in out


def test_pfkeyd_decode_shows_keys_only_when_asked() -> None:
    result = run("-m", "pfkeyd", "decode", "-k", str(CAPTURES / "linux-setkey-add.hex"))
    assert "00112233445566778899aabbccddeeff" in result.stdout


def test_pfkeyd_decode_reports_a_malformed_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.hex"
    bad.write_text("02 03 00 03 03 00 00 00 00 00 00 00 00 00 00 00\n")  # len 3 units, 16 bytes
    result = run("-m", "pfkeyd", "decode", str(bad))
    assert result.returncode == 65
    assert "does not match" in result.stderr
    assert "Traceback" not in result.stderr


def test_pfkeyd_without_a_command_is_a_usage_error() -> None:
    result = run("-m", "pfkeyd", "frobnicate")
    assert result.returncode == 64
    assert result.stderr.startswith("usage: pfkeyd")


def test_setkey_decodes_raw_message_files_and_reports_usage() -> None:
    # setkey file ... prints messages as replies would be; -v adds the kdebug dump
    ok = run("-m", "setkey", "-v", "--dialect", "linux", str(CAPTURES / "linux-setkey-spdadd.hex"))
    assert ok.returncode == 0, ok.stderr
    assert "sadb_msg{ version=2 type=14 errno=0 satype=0" in ok.stdout
    assert "priority=2147483648" in ok.stdout
    usage = run("-m", "setkey", "-Z")
    assert usage.returncode == 64
    assert usage.stderr.startswith("usage: setkey")


def _two_flushes() -> bytes:
    from pfkeyd.wire import Message, MsgType, SaType, encode

    return encode(Message(MsgType.FLUSH, SaType.ESP, 1, 2), "linux") + encode(
        Message(MsgType.X_SPDFLUSH, 0, 3, 4), "linux"
    )


def test_pfkeyd_decode_and_setkey_split_message_files_alike(tmp_path: Path) -> None:
    # one splitter (pfkeyd.wire.framing) serves both commands: the same files give the same messages
    raw = tmp_path / "two.bin"
    raw.write_bytes(_two_flushes())
    text = tmp_path / "two.hex"
    text.write_text(f"# two flushes\n{_two_flushes()[:16].hex(' ')}\n{_two_flushes()[16:].hex()}  # the second\n")
    for path in (raw, text):
        decoded = run("-m", "pfkeyd", "decode", "-d", "linux", str(path))
        assert decoded.returncode == 0, decoded.stderr
        assert decoded.stdout.count(f"# {path}: message ") == 2
        shown = run("-m", "setkey", "-v", "--dialect", "linux", str(path))
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.count("sadb_msg{ version=2") == 2


def test_a_file_that_only_looks_like_hex_is_reported_not_a_traceback(tmp_path: Path) -> None:
    odd = tmp_path / "odd.hex"
    odd.write_text("02 09 0\n")  # an odd number of digits: not hex text, so raw bytes that do not decode
    decoded = run("-m", "pfkeyd", "decode", str(odd))
    assert decoded.returncode == 65
    assert "message 1:" in decoded.stderr
    assert "Traceback" not in decoded.stderr
    shown = run("-m", "setkey", "--dialect", "linux", str(odd))
    assert shown.returncode == 1
    assert "message 1:" in shown.stderr
    assert "Traceback" not in shown.stderr
