"""The ciphers and MACs of the packet path, built from ``cryptography`` per algorithm id.

Theory of operation
-------------------
:func:`cipher` turns an ESP encryption algorithm id and its key material (salt
included, as PF_KEY carries it) into a :class:`Cipher`; :func:`mac` turns an
authentication id and key into a :class:`Mac`.  Both raise :class:`Unavailable`
when this library, or the ``cryptography`` build it runs on, lacks the algorithm
(the SA is then refused at ADD time, never when a packet arrives).  Nothing here
knows ESP framing: ``esp.py`` gives each cipher an IV, the plaintext and the AAD.

Building a ``cryptography`` CBC context costs more than encrypting a packet
(bench/README.md), so the CBC ciphers keep one encryptor and
one decryptor per SA for its whole life and steer them with the IV: CBC computes
``C1 = E(P1 ^ C0)`` where ``C0`` is the previous block the context saw, so
feeding ``P1 ^ C0 ^ IV`` as the first block gives the ciphertext of a fresh
``CBC(IV)`` context; decryption undoes ``C0`` the same way.  The contexts only
ever see whole blocks (``esp.py`` checks lengths first), so they stay in step.
AES-XCBC-MAC (RFC 3566) is not in ``cryptography``; :class:`XcbcMac` builds it from
AES-ECB as the RFC's §4 describes.

AES-GCM-16 and ChaCha20-Poly1305 are also keyed, once per SA, in the compiled module
``pfkeyd.packet.espfast`` (libcrypto's EVP interface) when it was built:
:attr:`AeadCipher.native` holds that object, which ``esp.py``'s IPv4 fast path
calls for a whole packet at once.  ``native`` is None when the module is missing
(built without OpenSSL's headers); the ``cryptography`` objects then serve alone,
as they always do on the general path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher
from cryptography.hazmat.primitives.ciphers import CipherAlgorithm, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from pfkeyd.wire.constants import AuthAlg, EncAlg

try:
    from pfkeyd.packet import espfast as espfast  # noqa: PLC0414 - re-exported to esp.py and fasttunnel.py
except ImportError:  # not compiled (no libssl-dev at install): the pure-Python path alone
    espfast = None  # type: ignore[assignment]

__all__ = [
    "Unavailable",
    "Cipher",
    "NullCipher",
    "CbcCipher",
    "CtrCipher",
    "AeadCipher",
    "GcmShortCipher",
    "GmacCipher",
    "Mac",
    "HmacMac",
    "NullMac",
    "XcbcMac",
    "xcbc_mac",
    "cipher",
    "mac",
    "ENCRYPTION_IDS",
    "AUTH_IDS",
]


class Unavailable(Exception):
    """This library (or its ``cryptography``) lacks the algorithm or the key form."""


def _xor(a: bytes, b: bytes) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(n, "big")


class Cipher:
    """An ESP encryption transform.

    ``iv`` is the IV carried in each packet, ``block`` the block the payload is padded
    to (before RFC 4303's minimum of 4), ``icv`` the tag a combined-mode cipher
    appends (0 otherwise), ``counter_iv`` whether the IV is the per-SA counter (CTR,
    GCM, ChaCha, GMAC) rather than random bytes (CBC).
    """

    __slots__ = ()
    iv: int = 0
    block: int = 4
    icv: int = 0
    aead: bool = False
    counter_iv: bool = False

    def encrypt(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """The ciphertext (with the tag at its end for combined modes)."""
        raise NotImplementedError

    def decrypt(self, iv: bytes, data: bytes, aad: bytes) -> bytes | None:
        """The plaintext, or None when a combined mode's tag does not verify."""
        raise NotImplementedError


class NullCipher(Cipher):
    """RFC 2410: the identity, block size 4 (FreeBSD's ``enc_xform_null``)."""

    __slots__ = ()

    def encrypt(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return plaintext

    def decrypt(self, iv: bytes, data: bytes, aad: bytes) -> bytes | None:
        return data


class CbcCipher(Cipher):
    """A block cipher in CBC mode with a random IV per packet (RFC 2451, 3602, 4312).

    ``iv`` is normally the block size; RFC 1829's 4-byte IV (the IV4B flag with OLD)
    is widened to a block as ``IV || ~IV``.
    """

    __slots__ = ("_dec", "_dec_prev", "_enc", "_enc_prev", "block", "iv")

    def __init__(self, algorithm: CipherAlgorithm, block: int, iv: int | None = None) -> None:
        self.block = block
        self.iv = block if iv is None else iv
        zero = bytes(block)
        self._enc = _Cipher(algorithm, modes.CBC(zero)).encryptor()
        self._dec = _Cipher(algorithm, modes.CBC(zero)).decryptor()
        self._enc_prev = zero  # the last ciphertext block each context saw
        self._dec_prev = zero

    def _full_iv(self, iv: bytes) -> bytes:
        if len(iv) == self.block:
            return iv
        inverted = bytes(b ^ 0xFF for b in iv)  # RFC 1829 §3.1
        return iv + inverted

    def encrypt(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if not plaintext:
            return b""
        b = self.block
        first = _xor(plaintext[:b], _xor(self._enc_prev, self._full_iv(iv)))
        out = self._enc.update(first + plaintext[b:])
        self._enc_prev = out[-b:]
        return out

    def decrypt(self, iv: bytes, data: bytes, aad: bytes) -> bytes | None:
        if not data:
            return b""
        b = self.block
        out = self._dec.update(data)
        prev, self._dec_prev = self._dec_prev, data[-b:]
        return _xor(out[:b], _xor(prev, self._full_iv(iv))) + out[b:]


class CtrCipher(Cipher):
    """AES-CTR for ESP (RFC 3686): counter block = nonce(4) || IV(8) || block counter from 1."""

    __slots__ = ("_aes", "_nonce")
    iv = 8
    block = 1
    #: FreeBSD's net.inet.esp.ctr_compatibility=1 pads CTR frames to this (AES's block).
    native_block = 16
    counter_iv = True

    def __init__(self, key: bytes, nonce: bytes) -> None:
        self._aes = algorithms.AES(key)
        self._nonce = nonce

    def _run(self, iv: bytes, data: bytes) -> bytes:
        ctx = _Cipher(self._aes, modes.CTR(self._nonce + iv + b"\x00\x00\x00\x01")).encryptor()
        return ctx.update(data)

    def encrypt(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._run(iv, plaintext)

    def decrypt(self, iv: bytes, data: bytes, aad: bytes) -> bytes | None:
        return self._run(iv, data)


class AeadCipher(Cipher):
    """AES-GCM-16 (RFC 4106) or ChaCha20-Poly1305 (RFC 7634): nonce = salt(4) || IV(8), 16-byte tag."""

    __slots__ = ("native", "primitive", "salt")
    iv = 8
    block = 1
    icv = 16
    aead = True
    counter_iv = True

    def __init__(self, aead: AESGCM | ChaCha20Poly1305, salt: bytes, native: espfast.Aead | None = None) -> None:
        self.primitive = aead  # public: esp.py's fast path calls it directly
        self.salt = salt
        #: The same key in the compiled module (None without it): esp.py's one-call path.
        self.native = native

    def encrypt(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self.primitive.encrypt(self.salt + iv, plaintext, aad)

    def decrypt(self, iv: bytes, data: bytes, aad: bytes) -> bytes | None:
        try:
            return self.primitive.decrypt(self.salt + iv, data, aad)
        except InvalidTag:
            return None


class GcmShortCipher(Cipher):
    """AES-GCM with an 8- or 12-byte ICV (RFC 4106 ids 18 and 19): the tag is truncated."""

    __slots__ = ("_aes", "_gcm", "_salt", "icv")
    iv = 8
    block = 1
    aead = True
    counter_iv = True

    def __init__(self, key: bytes, salt: bytes, icv: int) -> None:
        self._gcm = AESGCM(key)
        self._aes = algorithms.AES(key)
        self._salt = salt
        self.icv = icv

    def encrypt(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._gcm.encrypt(self._salt + iv, plaintext, aad)[: len(plaintext) + self.icv]

    def decrypt(self, iv: bytes, data: bytes, aad: bytes) -> bytes | None:
        body, tag = data[: -self.icv], data[-self.icv :]
        ctx = _Cipher(self._aes, modes.GCM(self._salt + iv, tag, min_tag_length=self.icv)).decryptor()
        ctx.authenticate_additional_data(aad)
        out = ctx.update(body)
        try:
            return out + ctx.finalize()
        except InvalidTag:
            return None


class GmacCipher(Cipher):
    """ESP with AES-GMAC (RFC 4543, "ENCR_NULL_AUTH_AES_GMAC"): nothing is encrypted; the
    16-byte tag is GCM's over AAD = ESP header || IV || payload, with empty plaintext."""

    __slots__ = ("_gcm", "_salt")
    iv = 8
    block = 1
    icv = 16
    aead = True
    counter_iv = True

    def __init__(self, key: bytes, salt: bytes) -> None:
        self._gcm = AESGCM(key)
        self._salt = salt

    def encrypt(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return plaintext + self._gcm.encrypt(self._salt + iv, b"", aad + iv + plaintext)

    def decrypt(self, iv: bytes, data: bytes, aad: bytes) -> bytes | None:
        body, tag = data[:-16], data[-16:]
        try:
            self._gcm.decrypt(self._salt + iv, tag, aad + iv + body)
        except InvalidTag:
            return None
        return body


class Mac:
    """An integrity transform: ``icv`` bytes over the data (and Seq_hi after it with ESN)."""

    __slots__ = ()
    icv: int = 0

    def digest(self, data: bytes, trailer: bytes = b"") -> bytes:
        """The (truncated) ICV of ``data || trailer``."""
        raise NotImplementedError


class HmacMac(Mac):
    """HMAC truncated to ``icv`` bytes (RFC 2403, 2404; RFC 4868 keeps half the hash)."""

    __slots__ = ("_keyed", "icv")

    def __init__(self, algorithm: hashes.HashAlgorithm, key: bytes, icv: int) -> None:
        self._keyed = hmac.HMAC(key, algorithm)  # copied per packet: keying costs more than a copy
        self.icv = icv

    def digest(self, data: bytes, trailer: bytes = b"") -> bytes:
        h = self._keyed.copy()
        h.update(data)
        if trailer:
            h.update(trailer)
        return h.finalize()[: self.icv]


class NullMac(Mac):
    """The NULL authentication algorithm (id 251): an empty ICV."""

    __slots__ = ()

    def digest(self, data: bytes, trailer: bytes = b"") -> bytes:
        return b""


class XcbcMac(Mac):
    """AES-XCBC-MAC (RFC 3566 §4), 12 bytes for ESP/AH (AES-XCBC-MAC-96)."""

    __slots__ = ("_aes", "_k2", "_k3", "icv")

    def __init__(self, key: bytes, icv: int = 12) -> None:
        if len(key) != 16:
            raise Unavailable("AES-XCBC-MAC takes a 16-byte key (RFC 3566 §4)")
        ecb = _Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        k1 = ecb.update(b"\x01" * 16)
        self._k2 = ecb.update(b"\x02" * 16)
        self._k3 = ecb.update(b"\x03" * 16)
        self._aes = algorithms.AES(k1)
        self.icv = icv

    def digest(self, data: bytes, trailer: bytes = b"") -> bytes:
        msg = data + trailer
        # All blocks but the last are CBC-MACed under K1 with a zero IV; the last is
        # XORed with K2 when complete, or padded 10* and XORed with K3 (§4 steps 3-4).
        if msg and len(msg) % 16 == 0:
            head, last = msg[:-16], _xor(msg[-16:], self._k2)
        else:
            cut = len(msg) - len(msg) % 16
            tail = msg[cut:] + b"\x80" + bytes(15 - len(msg) % 16)
            head, last = msg[:cut], _xor(tail, self._k3)
        ctx = _Cipher(self._aes, modes.CBC(bytes(16))).encryptor()
        out = ctx.update(head + last)
        return out[-16:][: self.icv]


def xcbc_mac(key: bytes, message: bytes) -> bytes:
    """The full 16-byte AES-XCBC-MAC of ``message`` (RFC 3566 §4), for tests and callers."""
    return XcbcMac(key, 16).digest(message)


# ------------------------------------------------------------------ factories


def _split(key: bytes, salt: int) -> tuple[bytes, bytes]:
    return key[: len(key) - salt], key[len(key) - salt :]


def _aes_key(key: bytes, what: str) -> bytes:
    if len(key) not in (16, 24, 32):
        raise Unavailable(f"{what} needs an AES key of 16, 24 or 32 bytes, not {len(key)}")
    return key


def _decrepit(name: str) -> Callable[[bytes], CipherAlgorithm]:
    """A cipher from ``cryptography.hazmat.decrepit`` (public API), or Unavailable."""

    def make(key: bytes) -> CipherAlgorithm:
        try:
            from cryptography.hazmat.decrepit.ciphers import algorithms as old
        except ImportError as e:  # an older cryptography
            raise Unavailable(f"this cryptography has no {name}") from e
        alg: CipherAlgorithm = getattr(old, name)(key)
        return alg

    return make


def _cbc(make: Callable[[bytes], CipherAlgorithm], block: int) -> Callable[[bytes, bool, bool], Cipher]:
    def build(key: bytes, ctr_compat: bool, iv4b: bool) -> Cipher:
        if iv4b and block != 8:
            raise Unavailable("a 4-byte IV (IV4B, RFC 1829) needs a cipher with 8-byte blocks")
        return CbcCipher(make(key), block, 4 if iv4b else None)

    return build


def _des(key: bytes) -> CipherAlgorithm:
    # Single DES is 3DES with K1 = K2 = K3 (EDE collapses to one encryption).
    if len(key) != 8:
        raise Unavailable(f"DES takes an 8-byte key, not {len(key)}")
    return _decrepit("TripleDES")(key * 3)


def _null(key: bytes, ctr_compat: bool, iv4b: bool) -> Cipher:
    return NullCipher()


def _ctr(key: bytes, ctr_compat: bool, iv4b: bool) -> Cipher:
    k, nonce = _split(key, 4)
    return CtrCipher(_aes_key(k, "AES-CTR"), nonce)


def _gcm(icv: int) -> Callable[[bytes, bool, bool], Cipher]:
    def build(key: bytes, ctr_compat: bool, iv4b: bool) -> Cipher:
        k, salt = _split(key, 4)
        _aes_key(k, "AES-GCM")
        if icv == 16:
            return AeadCipher(AESGCM(k), salt, _native(_KIND_AES_GCM, k, salt))
        return GcmShortCipher(k, salt, icv)

    return build


#: The kinds of ``espfast.Aead`` (its AES_GCM and CHACHA20_POLY1305, named here for a build without it).
_KIND_AES_GCM, _KIND_CHACHA20_POLY1305 = 0, 1


def _native(kind: int, key: bytes, salt: bytes) -> espfast.Aead | None:
    """The compiled twin of an AEAD (``kind`` 0 AES-GCM, 1 ChaCha20-Poly1305), or None
    without the module, or when this libcrypto refuses the cipher (a FIPS-only
    provider without ChaCha20, say): the ``cryptography`` object then serves alone."""
    if espfast is None:
        return None
    try:
        return espfast.Aead(kind, key, salt)
    except RuntimeError:
        return None


def _chacha(key: bytes, ctr_compat: bool, iv4b: bool) -> Cipher:
    if len(key) != 36:
        raise Unavailable(f"ChaCha20-Poly1305 takes 32 key bytes and a 4-byte salt, not {len(key)} bytes")
    k, salt = _split(key, 4)
    return AeadCipher(ChaCha20Poly1305(k), salt, _native(_KIND_CHACHA20_POLY1305, k, salt))


def _gmac(key: bytes, ctr_compat: bool, iv4b: bool) -> Cipher:
    if len(key) not in (20, 28, 36):
        # FreeBSD's esp_init subtracts no salt for id 23, so a bare AES key is
        # accepted there; RFC 4543 needs the 4-byte salt, which such a key lacks.
        raise Unavailable(f"AES-GMAC needs an AES key and a 4-byte salt (20, 28 or 36 bytes), not {len(key)}")
    k, salt = _split(key, 4)
    return GmacCipher(k, salt)


_ENCRYPTION: dict[int, Callable[[bytes, bool, bool], Cipher]] = {
    EncAlg.NULL: _null,
    EncAlg.DESCBC: _cbc(_des, 8),
    EncAlg.DES3CBC: _cbc(_decrepit("TripleDES"), 8),
    EncAlg.X_BLOWFISHCBC: _cbc(_decrepit("Blowfish"), 8),
    EncAlg.X_CAST128CBC: _cbc(_decrepit("CAST5"), 8),
    EncAlg.X_CAMELLIACBC: _cbc(_decrepit("Camellia"), 16),
    EncAlg.X_AESCBC: _cbc(lambda k: algorithms.AES(_aes_key(k, "AES-CBC")), 16),
    EncAlg.X_AESCTR: _ctr,
    EncAlg.X_AESGCM8: _gcm(8),
    EncAlg.X_AESGCM12: _gcm(12),
    EncAlg.X_AESGCM16: _gcm(16),
    EncAlg.X_CHACHA20POLY1305: _chacha,
    EncAlg.X_AESGMAC: _gmac,
}

#: Encryption ids this library implements (given a cryptography that has them).
ENCRYPTION_IDS: frozenset[int] = frozenset(int(i) for i in _ENCRYPTION)


def _hmac(algorithm: hashes.HashAlgorithm, icv: int) -> Callable[[bytes], Mac]:
    def build(key: bytes) -> Mac:
        return HmacMac(algorithm, key, icv)

    return build


_AUTH: dict[int, Callable[[bytes], Mac]] = {
    AuthAlg.MD5HMAC: _hmac(hashes.MD5(), 12),
    AuthAlg.SHA1HMAC: _hmac(hashes.SHA1(), 12),
    AuthAlg.X_SHA2_256: _hmac(hashes.SHA256(), 16),
    AuthAlg.X_SHA2_384: _hmac(hashes.SHA384(), 24),
    AuthAlg.X_SHA2_512: _hmac(hashes.SHA512(), 32),
    AuthAlg.X_AES_XCBC_MAC: lambda key: XcbcMac(key, 12),
    AuthAlg.X_NULL: lambda key: NullMac(),
}

#: Authentication ids this library implements as a separate MAC (AEAD ids excluded).
AUTH_IDS: frozenset[int] = frozenset(int(i) for i in _AUTH)


def _probe(build: Callable[[], object], what: str) -> object:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decrepit ciphers warn; the SA was asked for
            return build()
    except UnsupportedAlgorithm as e:
        raise Unavailable(f"{what} is not available in this cryptography build") from e
    except (ValueError, TypeError) as e:
        raise Unavailable(f"{what}: {e}") from e


def cipher(alg_id: int, key: bytes, *, iv4b: bool = False) -> Cipher:
    """The :class:`Cipher` of ESP encryption algorithm ``alg_id`` keyed with ``key`` (salt at the end).

    Raises :class:`Unavailable` when the id is not implemented, the key does not fit,
    or ``cryptography`` lacks the primitive (a build without OpenSSL's legacy
    provider has no Blowfish or CAST5).
    """
    build = _ENCRYPTION.get(int(alg_id))
    if build is None:
        raise Unavailable(f"encryption algorithm {int(alg_id)} is not implemented by the packet library")
    made = _probe(lambda: build(key, True, iv4b), f"encryption algorithm {int(alg_id)}")
    assert isinstance(made, Cipher)
    if isinstance(made, CbcCipher):
        # Some providers fail only when a context first runs: run one block now.  The
        # chaining trick keeps every later packet right whatever the contexts saw.
        _probe(lambda: made.encrypt(bytes(made.iv), bytes(made.block), b""), f"encryption algorithm {int(alg_id)}")
    return made


def mac(alg_id: int, key: bytes) -> Mac:
    """The :class:`Mac` of authentication algorithm ``alg_id`` keyed with ``key``."""
    build = _AUTH.get(int(alg_id))
    if build is None:
        raise Unavailable(f"authentication algorithm {int(alg_id)} is not implemented by the packet library")
    made = _probe(lambda: build(key), f"authentication algorithm {int(alg_id)}")
    assert isinstance(made, Mac)
    _probe(lambda: made.digest(b""), f"authentication algorithm {int(alg_id)}")
    return made
