"""ESP (RFC 4303) as FreeBSD's ``xform_esp.c`` does it, on whole IP datagrams.

Theory of operation
-------------------
:func:`protect` applies ESP "in transport fashion": the ESP header goes where
:func:`pfkeyd.packet.ip.split` says (after the IPv4 header, or after the IPv6
extension headers that stay in front), the IP next header becomes 50 and the
lengths and IPv4 checksum are fixed.  Tunnel mode is the same operation on an
IP-in-IP datagram that the caller built first, as FreeBSD does.  :func:`unprotect`
undoes it and returns the datagram with the restored next header (4 or 41 for a
tunnel: the caller decapsulates), or a :class:`~pfkeyd.packet.counters.Drop`.

Output (``esp_output``): the sequence counter refuses to wrap unless CYCSEQ (on
all 64 bits with ESN; FreeBSD's ESP lacks this check, its AH has it, and the
issue asks for it), the pad is ``((blks - (len + 2) % blks) % blks)`` bytes with
``blks = max(4, block)`` (AES-CTR padded to 16 while ``ctr_compatibility`` is on),
filled 1, 2, 3, ... or per PRAND/PZERO; the IV is random for CBC and the per-SA
64-bit counter for CTR/GCM/ChaCha/GMAC; AEAD AAD is SPI || Seq, or
SPI || Seq_hi || Seq_lo with ESN; a separate MAC covers header, IV and
ciphertext, then Seq_hi with ESN (RFC 4303 §2.2.1).

Input (``esp_input``/``esp_input_cb``), in FreeBSD's order: header and total
length multiples of 4 (``badilen``); payload > 0 and a multiple of the block
(``badilen``); replay pre-check with Seq_hi inference (``replay``/``wrap``), only
with an ICV and a window; ICV (``badauth``); replay update (``replay``); trailer:
pad length fits (``badilen``), last pad byte equals the pad length unless PRAND or
the pad is empty (``badpad``, FreeBSD's ``badenc``: a PZERO SA with padding fails
this as it does on FreeBSD); next header 59 is a dummy packet (``dummy``).  A
dropped packet leaves the SA's state as it was.

Nothing here raises on packet bytes.
"""

from __future__ import annotations

import hmac as _hmac
import os
from collections.abc import Callable

from pfkeyd.packet import ip
from pfkeyd.packet.counters import ESP, Drop
from pfkeyd.packet.crypto import CtrCipher
from pfkeyd.packet.runtime import SaRuntime
from pfkeyd.packet.sa import PadKind, TransformSA

__all__ = ["protect", "unprotect", "peek", "pad_length", "IPPROTO_ESP", "Random"]

IPPROTO_ESP = 50
_IPPROTO_NONE = 59

Random = Callable[[int], bytes]

# Drops are values; one instance per reason is enough.
_HDROPS = Drop(ESP, "hdrops")
_BADILEN = Drop(ESP, "badilen")
_BADAUTH = Drop(ESP, "badauth")
_REPLAY = Drop(ESP, "replay")
_WRAP = Drop(ESP, "wrap")
_BADPAD = Drop(ESP, "badpad")
_DUMMY = Drop(ESP, "dummy")
_TOOBIG = Drop(ESP, "toobig")
_NOXFORM = Drop(ESP, "noxform")
_NOTDB = Drop(ESP, "notdb")

#: The pad contents of PSEQ, long enough for any pad (at most 255 bytes).
_SEQ_PAD = bytes(range(1, 256))


def pad_length(sa: TransformSA, length: int) -> int:
    """FreeBSD's pad for a payload of ``length`` bytes: bytes before Pad Length and Next Header."""
    c = sa.cipher
    block = c.block if c is not None else 4
    if sa.ctr_compatibility and isinstance(c, CtrCipher):
        block = c.native_block
    blks = block if block > 4 else 4
    return (blks - (length + 2) % blks) % blks


def protect(sa: TransformSA, state: SaRuntime, datagram: bytes, *, random: Random = os.urandom) -> bytes | Drop:
    """``datagram`` with ESP applied, or a Drop (``hdrops``: not a well-formed IP
    datagram; ``wrap``: the sequence counter is exhausted; ``toobig``: the result
    would exceed 65535 bytes; ``noxform``: not an ESP SA).  Takes a sequence number
    (and a counter IV) only when the packet goes out."""
    c = sa.cipher
    if c is None:
        return _NOXFORM
    sp = ip.split(datagram)
    if sp is None:
        return _HDROPS
    payload = datagram[sp.hlen :]
    n = len(payload)
    npad = pad_length(sa, n)
    old = sa.old
    mac = sa.mac
    icv = c.icv if c.aead else (mac.icv if mac is not None else 0)
    if not ip.fits(sp, (4 if old else 8) + c.iv + n + npad + 2 + icv):
        return _TOOBIG
    esn = sa.esn
    spi = sa.spi.to_bytes(4, "big")
    if old:
        header = spi
        seq = 0
    else:
        taken = state.next_seq(esn=esn, cycseq=sa.cycseq)
        if taken is None:
            return _WRAP
        seq = taken
        header = spi + (seq & 0xFFFFFFFF).to_bytes(4, "big")
    kind = sa.pad_kind
    if kind == PadKind.SEQ:
        pad = _SEQ_PAD[:npad]
    elif kind == PadKind.RANDOM:
        pad = random(npad) if npad else b""
    else:
        pad = bytes(npad)
    plain = payload + pad + bytes((npad, sp.proto))
    if c.counter_iv:
        iv = state.next_iv().to_bytes(8, "big")
    elif c.iv:
        iv = random(c.iv)
    else:
        iv = b""
    if c.aead:
        aad = spi + (seq >> 32).to_bytes(4, "big") + header[4:] if esn else header
        body = header + iv + c.encrypt(iv, plain, aad)
    else:
        body = header + iv + c.encrypt(iv, plain, b"")
        if mac is not None:
            body += mac.digest(body, (seq >> 32).to_bytes(4, "big") if esn else b"")
    return ip.join(datagram, sp, IPPROTO_ESP, body)


def peek(datagram: bytes) -> tuple[int, int, bytes] | Drop:
    """What the SAD lookup needs from an inbound ESP datagram: (50, SPI, destination
    address bytes), or ``hdrops`` (malformed, not ESP, or fewer than 8 bytes of ESP)."""
    sp = ip.split(datagram, inbound=True)
    if sp is None or sp.proto != IPPROTO_ESP or len(datagram) - sp.hlen < 8:
        return _HDROPS
    return IPPROTO_ESP, int.from_bytes(datagram[sp.hlen : sp.hlen + 4], "big"), sp.dst


def unprotect(sa: TransformSA, state: SaRuntime, datagram: bytes) -> bytes | Drop:
    """The datagram ESP protected, with ESP removed and the next header restored, or a Drop.

    ``sa`` must be the SA :func:`peek`'s SPI found (a mismatched SPI is ``notdb``).
    """
    c = sa.cipher
    if c is None:
        return _NOXFORM
    sp = ip.split(datagram, inbound=True)
    if sp is None or sp.proto != IPPROTO_ESP:
        return _HDROPS
    skip = sp.hlen
    total = len(datagram)
    if skip & 3 or total & 3:
        return _BADILEN
    old = sa.old
    hlen = (4 if old else 8) + c.iv
    mac = sa.mac
    aead = c.aead
    alen = c.icv if aead else (mac.icv if mac is not None else 0)
    plen = total - skip - hlen - alen
    if plen <= 0 or plen % c.block:
        return _BADILEN
    esp = datagram[skip:]
    if int.from_bytes(esp[:4], "big") != sa.spi:
        return _NOTDB
    esn = sa.esn
    # FreeBSD checks replay only for an SA with an authenticator (NULL auth counts).
    replay = state.replay if not old and (aead or mac is not None) else None
    seq = int.from_bytes(esp[4:8], "big") if not old else 0
    seq64 = seq
    if replay is not None:
        checked = replay.check(seq)
        if checked is None:
            return _WRAP if replay.wrapped(seq) else _REPLAY
        seq64 = checked
    iv = esp[hlen - c.iv : hlen]
    if aead:
        aad = esp[:4] + (seq64 >> 32).to_bytes(4, "big") + esp[4:8] if esn else esp[:8]
        decrypted = c.decrypt(iv, esp[hlen:], aad)
        if decrypted is None:
            return _BADAUTH
        plain = decrypted
    else:
        if mac is not None:
            covered = esp[: hlen + plen]
            want = mac.digest(covered, (seq64 >> 32).to_bytes(4, "big") if esn else b"")
            if not _hmac.compare_digest(want, esp[hlen + plen :]):
                return _BADAUTH
        plain = c.decrypt(iv, esp[hlen : hlen + plen], b"") or b""
    if replay is not None and not replay.update(seq):
        return _REPLAY
    if len(plain) < 2:
        return _BADILEN
    npad, nh = plain[-2], plain[-1]
    if npad + 2 > len(plain):
        return _BADILEN
    if npad and plain[-3] != npad and sa.pad_kind != PadKind.RANDOM:
        return _BADPAD
    if nh == _IPPROTO_NONE:
        return _DUMMY
    return ip.join(datagram, sp, nh, plain[: len(plain) - npad - 2])
