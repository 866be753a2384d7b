"""The ADD/UPDATE-time refusal of SAs the packet library cannot run (issue 12), and
TransformSA built from the SAD."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from pfkeyd.errors import InvalidArgument, NotImplementedBySystem
from pfkeyd.knobs import Knobs
from pfkeyd.packet import esp, sa
from pfkeyd.packet.runtime import SaRuntime
from pfkeyd.wire import AuthAlg, EncAlg, ExtType, Key, SaFlag, SaType
from pfkeyd.wire.constants import IpProto
from tests.engine.conftest import FB, LX, add, fails, getspi, key_auth, key_enc, make_engine, ok, update
from tests.packet.esp_helpers import v4


def test_add_esp_gmac_without_salt_is_refused_at_add_with_einval() -> None:
    # FreeBSD's kernel takes a bare 16-byte AES key for ESP AES-GMAC (id 23); RFC 4543
    # needs a 4-byte salt after it, which the packet library cannot invent.
    engine = make_engine()
    assert fails(engine, FB, add(enc=EncAlg.X_AESGMAC, ke=key_enc(16), auth=AuthAlg.NONE, ka=None)) == errno.EINVAL
    assert engine.sad.get(0x1000) is None


def test_add_ah_gmac_is_refused_at_add_with_einval() -> None:
    engine = make_engine()
    err = fails(engine, FB, add(SaType.AH, auth=AuthAlg.X_AES128GMAC, ka=key_auth(16), enc=EncAlg.NONE, ke=None))
    assert err == errno.EINVAL


def test_update_completing_a_larval_sa_runs_the_same_check() -> None:
    engine = make_engine()
    ok(engine, FB, getspi())
    spi = next(iter(engine.sad.by_spi))
    msg = update(spi=spi, enc=EncAlg.X_AESGMAC, ke=key_enc(16), auth=AuthAlg.NONE, ka=None)
    assert fails(engine, FB, msg) == errno.EINVAL


def test_check_names_the_algorithm_and_uses_the_dialects_errno() -> None:
    ke = Key(ExtType.KEY_ENCRYPT, b"k" * 16)
    with pytest.raises(InvalidArgument, match="AES-GMAC needs an AES key and a 4-byte salt") as fb:
        sa.check(IpProto.ESP, 0, EncAlg.X_AESGMAC, None, ke, 0, "freebsd")
    assert fb.value.errno == errno.EINVAL
    with pytest.raises(NotImplementedBySystem, match="authentication algorithm 11") as lx:
        sa.check(IpProto.AH, AuthAlg.X_AES128GMAC, 0, Key(ExtType.KEY_AUTH, b"a" * 16), None, 0, "linux")
    assert lx.value.errno == errno.ENOSYS


@pytest.mark.parametrize(
    ("enc", "klen", "auth", "aklen"),
    [
        (EncAlg.X_AESCBC, 16, AuthAlg.X_SHA2_256, 32),
        (EncAlg.X_AESGCM16, 20, AuthAlg.NONE, 0),
        (EncAlg.X_AESCTR, 20, AuthAlg.SHA1HMAC, 20),
        (EncAlg.X_CHACHA20POLY1305, 36, AuthAlg.NONE, 0),
        (EncAlg.NULL, 0, AuthAlg.X_SHA2_512, 64),
    ],
)
def test_add_of_a_runnable_sa_is_accepted_and_its_transform_works(enc: int, klen: int, auth: int, aklen: int) -> None:
    engine = make_engine()
    ok(engine, FB, add(enc=enc, ke=key_enc(klen), auth=auth, ka=key_auth(aklen) if aklen else None, replay=8))
    stored = engine.sad.get(0x1000)
    assert stored is not None
    tsa = sa.from_sad(stored, Knobs())
    assert tsa.window == 64 and tsa.dst == bytes([10, 0, 0, 2]) and tsa.proto == IpProto.ESP
    tx, rx = SaRuntime.for_sa(tsa.window), SaRuntime.for_sa(tsa.window)
    datagram = v4(17, b"through an SA the SAD holds")
    out = esp.protect(tsa, tx, datagram)
    assert isinstance(out, bytes)
    assert esp.unprotect(tsa, rx, out) == datagram


def test_add_refused_when_cryptography_lacks_the_cipher() -> None:
    # A cryptography without OpenSSL's legacy provider has no Blowfish: the Linux
    # dialect (whose kernel would take blowfish-cbc) then refuses it at ADD with
    # ENOSYS, and accepts AES-CBC as before.  Run in a child so the setting is real.
    script = textwrap.dedent("""
        from pfkeyd.effects import Error
        from pfkeyd.wire import AuthAlg, EncAlg
        from tests.engine.conftest import LX, T0, add, key_auth, key_enc, make_engine
        for enc, spi in ((EncAlg.X_BLOWFISHCBC, 0x1000), (EncAlg.X_AESCBC, 0x1001)):
            e = make_engine()
            msg = add(spi=spi, enc=enc, ke=key_enc(16), auth=AuthAlg.X_SHA2_256, ka=key_auth(32))
            effects = e.handle(LX, msg, T0)
            errs = [x.errno for x in effects if isinstance(x, Error)]
            print(errs[0] if errs else 0, e.sad.get(spi) is not None)
    """)
    env = dict(os.environ, CRYPTOGRAPHY_OPENSSL_NO_LEGACY="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[0] == f"{errno.ENOSYS} False"
    assert out[1] == "0 True"
    # Without the setting, this cryptography has Blowfish and the same ADD succeeds.
    engine = make_engine()
    ok(engine, LX, add(enc=EncAlg.X_BLOWFISHCBC, ke=key_enc(16), auth=AuthAlg.X_SHA2_256, ka=key_auth(32)))


def test_from_sad_copies_flags_window_and_knobs() -> None:
    engine = make_engine()
    flags = SaFlag.X_EXT_CYCSEQ | SaFlag.X_EXT_PZERO | SaFlag.X_ESN
    ok(engine, FB, add(enc=EncAlg.X_AESGCM16, ke=key_enc(20), auth=AuthAlg.NONE, ka=None, flags=flags, replay=4))
    stored = engine.sad.get(0x1000)
    assert stored is not None
    tsa = sa.from_sad(stored, Knobs(ctr_compatibility=0, ah_cleartos=0))
    assert (tsa.esn, tsa.cycseq, tsa.pad_kind, tsa.window) == (True, True, sa.PadKind.ZERO, 32)
    assert (tsa.ctr_compatibility, tsa.ah_cleartos) == (False, False)
    assert tsa.icv_len == 16 and tsa.mac is None
