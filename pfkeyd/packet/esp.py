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
packet dropped before its ICV passed leaves the SA's state as it was.  Without a
replay window there is nothing to infer Seq_hi from: an ESN SA then takes it as 0
(FreeBSD leaves it unset; Linux refuses ESN without a window).

For IPv4 datagrams without options and the combined-mode ciphers (AES-GCM-16,
ChaCha20-Poly1305) both directions take a fast path that does the same steps in
the same order with less parsing; a property test holds it equal to the general
path, drops and state included.  Where the compiled module
``pfkeyd.packet.espfast`` was built (setup.py, over OpenSSL's libcrypto), that
fast path hands the bytes and the crypto of a packet to it in one call
(:class:`~pfkeyd.packet.espfast.EspV4`: header, IV, pad, trailer, AAD, seal or
open, the inner header rebuilt), while this module keeps every decision: which
packets go there, the sequence and IV counters and the wrap rule, the replay
check before the ICV and the update after it, and which Drop a failure is.
Without the module the pure-Python fast path does the same; it is the reference a
property test holds the compiled one to (tests/packet/test_espfast.py).

Nothing here raises on packet bytes.
"""

from __future__ import annotations

import functools
import hmac as _hmac
import os
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag

from pfkeyd.packet import ip
from pfkeyd.packet.counters import ESP, Drop
from pfkeyd.packet.crypto import AeadCipher, Cipher, CtrCipher, espfast
from pfkeyd.packet.runtime import U32, U64, SaRuntime
from pfkeyd.packet.sa import PadKind, TransformSA

__all__ = ["protect", "unprotect", "peek", "pad_length", "plan_of", "IPPROTO_ESP", "Random"]

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


class _Plan:
    """What ESP precomputes per SA (stored in ``TransformSA.plan`` on first use).

    ``fast`` marks the SAs the IPv4 fast paths below handle: AES-GCM-16 or
    ChaCha20-Poly1305 (:class:`AeadCipher`), new-style framing, pad contents that
    need no random bytes, padding to 4.  ``trailers[(n % blks) * 256 + nh]`` is the
    pad, Pad Length and Next Header that follow an ``n``-byte payload, built once per
    block size and pad kind.  ``wrap_mask``: the outbound counter is exhausted when
    ``seq & mask == mask`` (32 bits, 64 with ESN, never with CYCSEQ: 0).  The rest
    is what the fast paths would otherwise look up per packet: the SPI as bytes and
    as a number (for the header pack), ESN, the salt and the bound AEAD methods.

    ``native`` is the compiled module's :class:`~pfkeyd.packet.espfast.EspV4` for a
    ``fast`` plan whose cipher has its compiled twin (None otherwise, or when built
    with ``native=False``: the tests' pure reference).

    The sequence number and the counter IV stay two counters (in
    :class:`SaRuntime`), as FreeBSD keeps ``replay->count`` and ``sav->cntr``: here
    both advance once per packet of an AEAD SA, so the IV is ``seq - 1`` until
    something sets one of them (the known-answer tests do), but neither is derived
    from the other.
    """

    __slots__ = (
        "blks",
        "decrypt",
        "encrypt",
        "esn",
        "fast",
        "native",
        "salt",
        "spi",
        "spi_int",
        "trailers",
        "wrap_mask",
    )

    def __init__(self, sa: TransformSA, *, native: bool = True) -> None:
        c = sa.cipher
        block = c.block if c is not None else 4
        if sa.ctr_compatibility and isinstance(c, CtrCipher):
            block = c.native_block
        self.blks = block if block > 4 else 4
        self.spi_int = sa.spi & 0xFFFFFFFF
        self.spi = self.spi_int.to_bytes(4, "big")
        self.esn = sa.esn
        # The fast paths' ciphers have a block of 1, padded to 4 (the IPv4 fast path relies on it).
        self.fast = type(c) is AeadCipher and not sa.old and sa.pad_kind != PadKind.RANDOM and self.blks == 4
        self.trailers = _trailers(self.blks, sa.pad_kind) if sa.pad_kind != PadKind.RANDOM else ()
        self.wrap_mask = 0 if sa.cycseq else U64 if sa.esn else U32
        self.encrypt: Callable[[bytes, bytes, bytes], bytes] = _not_fast
        self.decrypt: Callable[[bytes, bytes, bytes], bytes] = _not_fast
        self.salt = b""
        self.native: espfast.EspV4 | None = None
        if isinstance(c, AeadCipher):
            self.encrypt, self.decrypt, self.salt = c.primitive.encrypt, c.primitive.decrypt, c.salt
            if native and self.fast and c.native is not None:
                self.native = espfast.EspV4(c.native, self.spi_int, self.esn, sa.pad_kind == PadKind.ZERO)


def _not_fast(nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """The AEAD call of a plan that is not ``fast``: never reached (the fast paths check ``fast``)."""
    raise AssertionError("ESP fast path taken for an SA without a combined-mode cipher")


@functools.cache
def _trailers(blks: int, kind: int) -> tuple[bytes, ...]:
    pad = _SEQ_PAD if kind == PadKind.SEQ else bytes(255)
    npads = [(blks - (r + 2) % blks) % blks for r in range(blks)]
    return tuple(pad[:npad] + bytes((npad, nh)) for npad in npads for nh in range(256))


def plan_of(sa: TransformSA) -> _Plan:
    """The SA's plan (made once, then kept on the SA): what the fast paths and the
    data plane's compiled loop read (``fast``, ``native``, ``wrap_mask``...)."""
    plan = sa.plan
    if plan is None:
        plan = _Plan(sa)
        object.__setattr__(sa, "plan", plan)  # a cached derived value, set once
    assert isinstance(plan, _Plan)
    return plan


#: An IPv4 header without options as the fast paths read it: version/IHL and TOS, total
#: length, ID with flags and fragment offset, TTL, protocol, checksum, both addresses.
_V4 = struct.Struct("!HHIBBHQ")
#: That header followed by an ESP header and its 8-byte IV (SPI, Seq_lo, IV): the 36
#: bytes protect packs in one call in front of the ciphertext.
_V4_ESP = struct.Struct("!HHIBBHQIIQ")
#: The same without the IV: what unprotect reads in one call (the IV goes on as bytes).
_V4_ESP_IN = struct.Struct("!HHIBBHQII")


def pad_length(sa: TransformSA, length: int) -> int:
    """FreeBSD's pad for a payload of ``length`` bytes: bytes before Pad Length and Next Header."""
    blks = plan_of(sa).blks
    return (blks - (length + 2) % blks) % blks


def protect(sa: TransformSA, state: SaRuntime, datagram: bytes, *, random: Random = os.urandom) -> bytes | Drop:
    """``datagram`` with ESP applied, or a Drop (``hdrops``: not a well-formed IP
    datagram; ``wrap``: the sequence counter is exhausted; ``toobig``: the result
    would exceed 65535 bytes; ``noxform``: not an ESP SA).  Takes a sequence number
    (and a counter IV) only when the packet goes out."""
    plan: _Plan = sa.plan if sa.plan is not None else plan_of(sa)  # type: ignore[assignment]
    native = plan.native
    if native is not None:
        # The compiled fast path: the counters are taken only if it takes the packet
        # (an IPv4 datagram without options).  A counter at its end goes on to the
        # paths below, which drop the packet (``wrap``).
        seq = state.seq
        mask = plan.wrap_mask
        if not mask or seq & mask != mask:
            seq = (seq + 1) & 0xFFFFFFFFFFFFFFFF
            counter = state.iv_counter
            out = native.protect(datagram, seq, counter)
            if out is not None:
                state.seq = seq
                state.iv_counter = (counter + 1) & 0xFFFFFFFFFFFFFFFF
                return out
    if plan.fast:
        done = _protect_fast(plan, state, datagram)
        if done is not None:
            return done
    return _protect_general(sa, plan, state, datagram, random)


def _protect_general(sa: TransformSA, plan: _Plan, state: SaRuntime, datagram: bytes, random: Random) -> bytes | Drop:
    c = sa.cipher
    if c is None:  # a fast plan has a cipher
        return _NOXFORM
    sp = ip.split(datagram)
    if sp is None:
        return _HDROPS
    payload = datagram[sp.hlen :]
    n = len(payload)
    blks = plan.blks
    npad = (blks - (n + 2) % blks) % blks
    old = sa.old
    mac = sa.mac
    icv = c.icv if c.aead else (mac.icv if mac is not None else 0)
    if not ip.fits(sp, (4 if old else 8) + c.iv + n + npad + 2 + icv):
        return _TOOBIG
    esn = sa.esn
    spi = plan.spi
    if old:
        header = spi
        seq = 0
    else:
        taken = state.next_seq(esn=esn, cycseq=sa.cycseq)
        if taken is None:
            return _WRAP
        seq = taken
        header = spi + (seq & 0xFFFFFFFF).to_bytes(4, "big")
    if sa.pad_kind == PadKind.RANDOM:
        plain = payload + (random(npad) if npad else b"") + bytes((npad, sp.proto))
    else:
        plain = payload + plan.trailers[n % blks * 256 + sp.proto]
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


def _protect_fast(plan: _Plan, state: SaRuntime, datagram: bytes) -> bytes | Drop | None:
    """IPv4 without options through AES-GCM-16 or ChaCha20-Poly1305 in pure Python:
    the steps of the general path without its parsing.  None: not such a datagram."""
    total = len(datagram)
    if 20 <= total <= 65000:
        vt, length, ident, ttl, proto, _, addrs = _V4.unpack_from(datagram)
        if vt >> 8 == 0x45 and length == total:
            # The header is packed whole from the fields read above; its checksum is
            # summed afresh (any input checksum, even a wrong one, gives the general
            # path's bytes): the one's-complement sum is the number the words spell
            # modulo 0xFFFF, which is the sum of the fields as numbers since
            # 2**16 = 1 (mod 0xFFFF), and ``-sum % 0xFFFF`` is ``~sum`` with 0 for a
            # sum of 0xFFFF.
            seq = state.seq
            mask = plan.wrap_mask
            if seq & mask == mask and mask:
                return _WRAP
            seq = state.seq = (seq + 1) & U64
            counter = state.iv_counter
            state.iv_counter = (counter + 1) & U64
            trailer = plan.trailers[(total & 3) << 8 | proto]  # blks is 4: n % 4 == total % 4
            total += 32 + len(trailer)  # IP, ESP header, IV, payload, trailer, ICV
            head = _V4_ESP.pack(
                vt,
                total,
                ident,
                ttl,
                IPPROTO_ESP,
                -(vt + total + ident + (ttl << 8) + IPPROTO_ESP + addrs) % 0xFFFF,
                addrs,
                plan.spi_int,
                seq & U32,
                counter,
            )
            aad = plan.spi + (seq >> 32).to_bytes(4, "big") + head[24:28] if plan.esn else head[20:28]
            return head + plan.encrypt(plan.salt + head[28:], datagram[20:] + trailer, aad)
    return None


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
    plan: _Plan = sa.plan if sa.plan is not None else plan_of(sa)  # type: ignore[assignment]
    native = plan.native
    if native is not None:
        # The compiled fast path, inline (a call costs as much as a check): the steps
        # of _unprotect_fast in the same order, the bytes and the crypto in C.  peek
        # reads the sequence number of an IPv4 ESP datagram it can take (-1: another
        # SPI); open verifies and decrypts, and says what the trailer holds.
        seq = native.peek(datagram)
        if seq is not None:
            return open_compiled(native, state, datagram, seq) if seq >= 0 else _NOTDB
    total = len(datagram)
    if plan.fast and total > 52 and not total & 3:
        out = _unprotect_fast(plan, state, datagram, total)
        if out is not None:
            return out
    return _unprotect_general(sa, state, datagram, total)


def _unprotect_fast(plan: _Plan, state: SaRuntime, datagram: bytes, total: int) -> bytes | Drop | None:
    """IPv4 without options through AES-GCM-16 or ChaCha20-Poly1305: the steps of
    :func:`_unprotect_general`, in the same order, without the general parsing; the
    header is rebuilt as protect builds it.  None: not such a datagram."""
    vt, length, ident, ttl, proto, _, addrs, spi, seq = _V4_ESP_IN.unpack_from(datagram)
    if vt >> 8 != 0x45 or proto != IPPROTO_ESP or length != total:
        return None
    if spi != plan.spi_int:
        return _NOTDB
    replay = state.replay
    seq64 = seq
    ahead = False
    if replay is not None:
        last = replay.last
        low = last & U32
        if low < seq < low + 0x100000001 - replay.size:
            # Above the top of the window, in the same 2^32 subspace: what
            # check() says for it (its first case; the bound is its ``bl``
            # taken modulo 2^32 when the window is not yet full).
            seq64, ahead = last - low + seq, True
        else:
            checked = replay.check(seq)
            if checked is None:
                return _WRAP if replay.wrapped(seq) else _REPLAY
            seq64 = checked
    aad = plan.spi + (seq64 >> 32).to_bytes(4, "big") + datagram[24:28] if plan.esn else datagram[20:28]
    try:
        plain = plan.decrypt(plan.salt + datagram[28:36], datagram[36:], aad)
    except InvalidTag:
        return _BADAUTH
    if ahead:
        replay.advance(seq64)  # type: ignore[union-attr]  # what update() does for it
    elif replay is not None and not replay.update(seq):
        return _REPLAY
    npad, nh = plain[-2], plain[-1]
    n = len(plain) - npad - 2
    if n < 0:
        return _BADILEN
    if npad and plain[-3] != npad:
        return _BADPAD
    if nh == _IPPROTO_NONE:
        return _DUMMY
    total = 20 + n
    return (
        _V4.pack(vt, total, ident, ttl, nh, -(vt + total + ident + (ttl << 8) + nh + addrs) % 0xFFFF, addrs) + plain[:n]
    )


#: What ``EspV4.open`` returns instead of a datagram, as Drops.
_OPEN_DROPS: dict[int, Drop] = (
    {
        espfast.OPEN_BADAUTH: _BADAUTH,
        espfast.OPEN_BADILEN: _BADILEN,
        espfast.OPEN_BADPAD: _BADPAD,
        espfast.OPEN_DUMMY: _DUMMY,
    }
    if espfast is not None
    else {}
)


def open_compiled(native: espfast.EspV4, state: SaRuntime, datagram: bytes, seq: int) -> bytes | Drop:
    """ESP undone on the compiled path, once ``native.peek`` gave the datagram's
    sequence number ``seq``: the replay check before the ICV, the window's update
    after it, the trailer's verdict after the window moved (the steps of
    :func:`_unprotect_fast`, the bytes and the crypto in C).  Shared by
    :func:`unprotect` and the one-step tunnel path (:mod:`.fasttunnel`)."""
    replay = state.replay
    if replay is None:
        opened = native.open(datagram, 0)
        return opened if isinstance(opened, bytes) else _OPEN_DROPS[opened]
    last = replay.last
    low = last & U32
    size = replay.size
    if low < seq < low + 0x100000001 - size:
        # Above the window, in its 2^32 subspace (the common case): the ICV, then
        # what replay.advance does, inline.
        seq64 = last - low + seq
        opened = native.open(datagram, seq64 >> 32)
        if isinstance(opened, bytes):
            shift = seq - low
            replay.bits = ((replay.bits << shift) | 1) & replay.mask if shift < size else 1
            replay.last = seq64
            replay.count += 1
            return opened
        if opened != espfast.OPEN_BADAUTH:
            replay.advance(seq64)
        return _OPEN_DROPS[opened]
    # Inside the window or in another 2^32 subspace: check (Seq_hi inferred), ICV, update.
    checked = replay.check(seq)
    if checked is None:
        return _WRAP if replay.wrapped(seq) else _REPLAY
    opened = native.open(datagram, checked >> 32)
    if opened == espfast.OPEN_BADAUTH:
        return _BADAUTH
    if not replay.update(seq):
        return _REPLAY
    return opened if isinstance(opened, bytes) else _OPEN_DROPS[opened]


def _unprotect_general(sa: TransformSA, state: SaRuntime, datagram: bytes, total: int) -> bytes | Drop:
    c = sa.cipher
    if c is None:  # a fast plan has a cipher
        return _NOXFORM
    sp = ip.split(datagram, inbound=True)
    if sp is None or sp.proto != IPPROTO_ESP:
        return _HDROPS
    skip = sp.hlen
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
    # FreeBSD checks replay only for an SA with an authenticator (NULL auth counts).
    replay = state.replay if not old and (aead or mac is not None) else None
    seq = int.from_bytes(esp[4:8], "big") if not old else 0
    seq64 = seq
    if replay is not None:
        checked = replay.check(seq)
        if checked is None:
            return _WRAP if replay.wrapped(seq) else _REPLAY
        seq64 = checked
    plain = _open(sa, c, esp, hlen, plen, seq64)
    if plain is None:
        return _BADAUTH
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


def _open(sa: TransformSA, c: Cipher, esp: bytes, hlen: int, plen: int, seq64: int) -> bytes | None:
    """The payload and trailer of an ESP packet, decrypted; None if its ICV is wrong."""
    iv = esp[hlen - c.iv : hlen]
    if c.aead:
        aad = esp[:4] + (seq64 >> 32).to_bytes(4, "big") + esp[4:8] if sa.esn else esp[:8]
        return c.decrypt(iv, esp[hlen:], aad)
    mac = sa.mac
    if mac is not None:
        covered = esp[: hlen + plen]
        want = mac.digest(covered, (seq64 >> 32).to_bytes(4, "big") if sa.esn else b"")
        if not _hmac.compare_digest(want, esp[hlen + plen :]):
            return None
    return c.decrypt(iv, esp[hlen : hlen + plen], b"") or b""
