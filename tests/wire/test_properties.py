"""Properties of the wire codec, in both dialects.

Round trips
    For every message type and every extension kind a dialect carries,
    ``decode(encode(m), request=False) == m`` and ``encode(decode(b)) == b``.
    Valid requests also pass ``decode(..., request=True)``.

Robustness
    Arbitrary bytes and mutated valid messages (bits and bytes flipped, truncated,
    extended, length fields changed, extensions duplicated, reordered, removed or
    spliced, header fields changed) given to ``decode`` in both dialects, with
    ``request=True`` and ``request=False``, decode or raise a well-formed
    ``DecodeError`` - nothing else.  A message that decodes re-encodes or raises
    ``EncodeError``, and its re-encoding decodes to the same message.  A modest
    hypothesis run is combined with a seeded mutation loop over a corpus of valid
    encodings, which is where the volume comes from (100 000 mutants, each
    decoded four ways, by default).

Semantic faults
    A valid request whose only fault is its satype, its message type (within the
    dialect's range) or its addresses is answered with an error reply
    (``DecodeError.reply``), never with a failed send.

Longer runs::

    PFKEYD_FUZZ_EXAMPLES=2000000 .venv/bin/python -m pytest tests/wire/test_properties.py -q
    PFKEYD_FUZZ_SEED=7            # another seed for the mutation loop (default 2367)
    PFKEYD_HYPOTHESIS_SCALE=20    # 20 times the hypothesis examples of every test here
    HYPOTHESIS_PROFILE=explore    # randomized hypothesis instead of derandomized
"""

from __future__ import annotations

import errno
import os
import random
import struct
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pfkeyd.errors import DecodeError, EncodeError
from pfkeyd.wire import (
    Address,
    ExtType,
    Filter,
    KmAddress,
    KmPrivate,
    Message,
    NatTFrag,
    RawSockAddr,
    SaReplay,
    SecCtx,
    SockAddr,
    UnknownExt,
    decode,
    encode,
)
from tests.wire.strategies import (
    DIALECTS,
    EXTENSION_CLASSES,
    UNKNOWN_EXT,
    ExtKind,
    ext_class,
    ext_kinds,
    messages,
    msg_types,
    request_satypes,
    requests,
    sockaddrs,
)

FUZZ_EXAMPLES = int(os.environ.get("PFKEYD_FUZZ_EXAMPLES", "100000"))
FUZZ_SEED = int(os.environ.get("PFKEYD_FUZZ_SEED", "2367"))
_SCALE = int(os.environ.get("PFKEYD_HYPOTHESIS_SCALE", "1"))

#: What the codec may answer a bad datagram with (reference §1.3, §1.4).
DECODE_ERRNOS = frozenset({errno.EINVAL, errno.ENOBUFS, errno.EMSGSIZE, errno.EAFNOSUPPORT, errno.EOPNOTSUPP})
#: What the kernels answer a semantic fault in a request with.
SEMANTIC_ERRNOS = frozenset({errno.EINVAL, errno.EAFNOSUPPORT, errno.EOPNOTSUPP})


def examples(n: int) -> settings:
    return settings(max_examples=n * _SCALE, suppress_health_check=[HealthCheck.too_slow])


def _kind_id(kind: ExtKind) -> str:
    return kind if isinstance(kind, str) else kind.name


EXT_CASES = [pytest.param(d, k, id=f"{d}-{_kind_id(k)}") for d in DIALECTS for k in ext_kinds(d)]
TYPE_CASES = [pytest.param(d, t, id=f"{d}-{t}") for d in DIALECTS for t in msg_types(d)]


def _has_kind(msg: Message, kind: ExtKind) -> bool:
    if kind == UNKNOWN_EXT:
        return any(isinstance(e, UnknownExt) for e in msg.exts)
    return any(e.exttype == kind and isinstance(e, ext_class(kind)) for e in msg.exts)


def assert_round_trip(msg: Message, dialect: str) -> None:
    data = encode(msg, dialect)
    back = decode(data, dialect, request=False)
    assert back == msg
    assert encode(back, dialect) == data


# ------------------------------------------------------------------ the tables


def test_strategies_cover_every_extension_class() -> None:
    carried = {d: {ext_class(k) for k in ext_kinds(d)} for d in DIALECTS}
    assert carried["freebsd"] | carried["linux"] == EXTENSION_CLASSES
    assert EXTENSION_CLASSES - carried["freebsd"] == {KmPrivate, SecCtx, KmAddress, Filter, UnknownExt}
    assert EXTENSION_CLASSES - carried["linux"] == {NatTFrag, SaReplay}


def test_strategies_cover_every_extension_type_and_message_type() -> None:
    # Written out from reference §4.1 rather than from the codebooks.
    freebsd = {ExtType(n) for n in range(1, 29)} - {ExtType.X_KMPRIVATE}  # FreeBSD refuses KMPRIVATE
    linux = {ExtType(n) for n in range(1, 24)} | {ExtType.X_SEC_CTX, ExtType.X_KMADDRESS, ExtType.X_FILTER}
    assert set(ext_kinds("freebsd")) == freebsd
    assert set(ext_kinds("linux")) == linux | {UNKNOWN_EXT}
    assert msg_types("freebsd") == tuple(range(23))
    assert msg_types("linux") == tuple(range(25))


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize(("dialect", "kind"), EXT_CASES)
@examples(12)
@given(data=st.data())
def test_round_trip_every_extension_kind(dialect: str, kind: ExtKind, data: st.DataObject) -> None:
    msg = data.draw(messages(dialect, require=kind, max_exts=3), label="message")
    assert _has_kind(msg, kind)
    assert_round_trip(msg, dialect)


@pytest.mark.parametrize(("dialect", "msg_type"), TYPE_CASES)
@examples(12)
@given(data=st.data())
def test_round_trip_every_message_type(dialect: str, msg_type: int, data: st.DataObject) -> None:
    msg = data.draw(messages(dialect, msg_type=msg_type), label="message")
    assert msg.type == msg_type
    assert_round_trip(msg, dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
@examples(100)
@given(data=st.data())
def test_valid_requests_decode_as_requests(dialect: str, data: st.DataObject) -> None:
    msg = data.draw(requests(dialect), label="request")
    raw = encode(msg, dialect)
    assert decode(raw, dialect, request=True) == msg
    assert decode(raw, dialect, request=False) == msg


# ------------------------------------------------------------------- robustness


def check_decode(data: bytes, stats: Counter[str] | None = None) -> None:
    """decode() in both dialects and both directions returns a Message or raises a
    well-formed DecodeError; what decodes re-encodes or raises EncodeError."""
    for dialect in DIALECTS:
        for request in (True, False):
            try:
                msg = decode(data, dialect, request=request)
            except DecodeError as exc:
                assert isinstance(exc.reply, bool)
                assert exc.errno in DECODE_ERRNOS, exc
                assert request or not exc.reply, "only a request is answered with an error reply"
                assert exc.header is None or exc.header == data[:16]
                assert not exc.reply or exc.header == data[:16], "an error reply needs the base header"
                if stats is not None:
                    stats[f"{dialect} request={request} {'reply' if exc.reply else 'send fails'}"] += 1
                continue
            assert isinstance(msg, Message)
            try:
                again = encode(msg, dialect)
            except EncodeError:
                again = None
            if again is not None and not request:
                # Decoding loses only what the model does not represent (reserved
                # fields, padding): the re-encoding decodes to the same message.
                assert decode(again, dialect, request=False) == msg
            if stats is not None:
                stats[f"{dialect} request={request} decoded"] += 1


_HEADER = struct.Struct("=BBBBHHII")


@st.composite
def framed_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes behind a base header whose version and length are right, so that
    the extension walk sees them."""
    body = draw(st.binary(max_size=320))
    body += bytes(-len(body) % 8) if draw(st.booleans()) else b""
    mtype, satype, err, reserved = draw(st.integers(0, 30)), draw(st.integers(0, 12)), draw(st.integers(0, 255)), 0
    units = (16 + len(body)) // 8
    return _HEADER.pack(2, mtype, err, satype, units, reserved, 0, 0) + body


@examples(400)
@given(st.one_of(st.binary(max_size=200), framed_bytes()))
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    check_decode(data)


# --------------------------------------------------------------------- mutation


@dataclass(frozen=True, slots=True)
class Seed:
    """A valid encoding cut into its base header and its extensions."""

    dialect: str
    data: bytes
    head: bytes
    exts: tuple[bytes, ...]

    @classmethod
    def of(cls, data: bytes, dialect: str) -> Seed:
        exts, off = [], 16
        while off < len(data):
            size = struct.unpack_from("=H", data, off)[0] * 8
            exts.append(data[off : off + size])
            off += size
        return cls(dialect, data, data[:16], tuple(exts))


_BYTES = (0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 16, 17, 18, 19, 22, 23, 24, 25, 26, 27, 28, 29, 31, 32, 40, 64, 127, 128, 255)
_WORDS = (0, 1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 24, 28, 32, 40, 255, 256, 0x7FFF, 0x8000, 0xFFFF)
_LONGS = (*_WORDS, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _interesting(rng: random.Random, size: int) -> int:
    if rng.random() < 0.3:
        return rng.getrandbits(8 * size)
    return rng.choice(_BYTES if size == 1 else _WORDS if size == 2 else _LONGS) & ((1 << (8 * size)) - 1)


def _poke(rng: random.Random, buf: bytearray, start: int) -> None:
    """Overwrite a byte, a u16 or a u32 inside ``buf[start:]``, mostly near the front
    where the fixed fields (lengths, types, families, sa_len) are."""
    if len(buf) <= start:
        return
    size = rng.choice((1, 1, 2, 4))
    span = len(buf) - start - size + 1
    if span <= 0:
        size, span = 1, len(buf) - start
    near = min(span, 24)
    off = start + (rng.randrange(near) if rng.random() < 0.7 else rng.randrange(span))
    buf[off : off + size] = _interesting(rng, size).to_bytes(size, "little")


def _mutate_structure(rng: random.Random, head: bytearray, exts: list[bytearray], pool: list[Seed]) -> None:
    op = rng.randrange(12)
    if not exts and op < 8:
        op = rng.choice((8, 9, 10, 11))
    if op == 0:  # remove an extension
        exts.pop(rng.randrange(len(exts)))
    elif op == 1:  # duplicate one
        exts.insert(rng.randrange(len(exts) + 1), bytearray(rng.choice(exts)))
    elif op == 2:  # reorder
        rng.shuffle(exts)
    elif op == 3:  # change an extension's length field
        ext = rng.choice(exts)
        cur = struct.unpack_from("=H", ext)[0]
        struct.pack_into("=H", ext, 0, rng.choice((0, 1, max(cur - 1, 0), min(cur + 1, 0xFFFF), _interesting(rng, 2))))
    elif op == 4:  # change an extension's type
        ext = rng.choice(exts)
        struct.pack_into("=H", ext, 2, rng.randrange(33) if rng.random() < 0.8 else _interesting(rng, 2))
    elif op in (5, 6):  # a field inside an extension
        _poke(rng, rng.choice(exts), 4)
    elif op == 7:  # shorten or lengthen an extension by whole units, its length field kept
        i = rng.randrange(len(exts))
        ext = exts[i]
        exts[i] = ext[:-8] if len(ext) > 8 and rng.random() < 0.5 else ext + bytearray(rng.randbytes(8))
    elif op == 8:  # splice in an extension of another message (maybe of the other dialect)
        donor = rng.choice(pool)
        if donor.exts:
            exts.insert(rng.randrange(len(exts) + 1), bytearray(rng.choice(donor.exts)))
    elif op == 9:  # a random extension with a consistent header
        units = rng.randrange(1, 7)
        ext = bytearray(struct.pack("=HH", units, rng.randrange(33)) + rng.randbytes(units * 8 - 4))
        exts.insert(rng.randrange(len(exts) + 1), ext)
    else:  # a header field: version, type, errno, satype, reserved
        field = rng.choice((0, 1, 1, 2, 3, 3, 6))
        if field == 6:
            struct.pack_into("=H", head, 6, _interesting(rng, 2))
        else:
            head[field] = _interesting(rng, 1)


def _mutate_bytes(rng: random.Random, data: bytearray) -> None:
    op = rng.randrange(7)
    if op == 0:  # flip bits
        for _ in range(rng.randrange(1, 4)):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif op == 1:  # set a byte, a u16 or a u32 anywhere
        _poke(rng, data, rng.randrange(len(data) + 1) if rng.random() < 0.5 else 0)
    elif op == 2:  # truncate
        del data[rng.randrange(len(data) + 1) :]
    elif op == 3:  # extend
        data += rng.randbytes(rng.choice((1, 4, 7, 8, 16, rng.randrange(1, 64))))
    elif op == 4:  # the base header's length field
        if len(data) >= 6:
            units = _interesting(rng, 2) if rng.random() < 0.5 else (len(data) // 8 + rng.choice((-1, 1))) & 0xFFFF
            struct.pack_into("=H", data, 4, units)
    elif op == 5:  # insert bytes in the middle
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randrange(1, 17))
    else:  # delete a range
        at = rng.randrange(len(data) + 1)
        del data[at : at + rng.randrange(1, 17)]


def mutate(rng: random.Random, seed: Seed, pool: list[Seed]) -> bytes:
    """One mutant of ``seed``: structural edits, the base header's length usually
    fixed up so that the mutant reaches the extension walk, then maybe byte edits."""
    head = bytearray(seed.head)
    exts = [bytearray(e) for e in seed.exts]
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        _mutate_structure(rng, head, exts, pool)
    data = head + b"".join(exts)
    if rng.random() < 0.9:
        struct.pack_into("=H", data, 4, (len(data) // 8) & 0xFFFF)
    if rng.random() < 0.3:
        for _ in range(rng.choice((1, 1, 2))):
            _mutate_bytes(rng, data)
    return bytes(data)


@pytest.mark.parametrize("dialect", DIALECTS)
@examples(100)
@given(data=st.data())
def test_mutated_messages_decode_or_raise_decode_error(dialect: str, data: st.DataObject) -> None:
    seed = Seed.of(encode(data.draw(messages(dialect), label="message"), dialect), dialect)
    donor = Seed.of(encode(data.draw(requests(dialect), label="donor"), dialect), dialect)
    rng = data.draw(st.randoms(use_true_random=False), label="rng")
    for _ in range(8):
        check_decode(mutate(rng, seed, [seed, donor]))


def _collect(strategy: st.SearchStrategy[Message], dialect: str, n: int) -> list[bytes]:
    """``n`` encodings drawn from ``strategy`` by a derandomized hypothesis run: the
    corpus is the same on every machine whatever the hypothesis profile."""
    out: list[bytes] = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(msg: Message) -> None:
        out.append(encode(msg, dialect))

    collect()
    return out


@pytest.fixture(scope="module")
def corpus() -> list[Seed]:
    """Valid encodings with every extension kind of each dialect, and valid requests
    (which get past the request checks when mutated mildly)."""
    seeds: dict[bytes, Seed] = {}
    for dialect in DIALECTS:
        plans = [(messages(dialect, require=kind, max_exts=3), 8) for kind in ext_kinds(dialect)]
        plans.append((requests(dialect), 150))
        for strategy, n in plans:
            for raw in _collect(strategy, dialect, n):
                seeds.setdefault(raw, Seed.of(raw, dialect))
    return list(seeds.values())


def test_corpus_is_valid(corpus: list[Seed]) -> None:
    assert len(corpus) >= 500
    kinds: set[tuple[str, ExtKind]] = set()
    for seed in corpus:
        msg = decode(seed.data, seed.dialect, request=False)
        assert encode(msg, seed.dialect) == seed.data
        kinds |= {(seed.dialect, k) for k in ext_kinds(seed.dialect) if _has_kind(msg, k)}
    assert kinds == {(d, k) for d in DIALECTS for k in ext_kinds(d)}


def test_seeded_mutants_decode_or_raise_decode_error(corpus: list[Seed]) -> None:
    rng = random.Random(FUZZ_SEED)
    stats: Counter[str] = Counter()
    distinct: set[bytes] = set()
    count = 0
    while count < FUZZ_EXAMPLES:
        seed = corpus[rng.randrange(len(corpus))]
        data = mutate(rng, seed, corpus)
        try:
            check_decode(data, stats)
        except Exception as exc:
            msg = f"mutant {count} of a {seed.dialect} seed; check_decode(bytes.fromhex({data.hex()!r}))"
            raise AssertionError(msg) from exc
        if len(distinct) < 10_000:
            distinct.add(data)
        count += 1
    # Every mutant went through all four decoders: the run is as long as promised.
    assert count == FUZZ_EXAMPLES
    assert sum(stats.values()) == 4 * count
    assert FUZZ_EXAMPLES >= 100_000 or "PFKEYD_FUZZ_EXAMPLES" in os.environ
    # The mutants must reach deep: many decode, many fail only in the extension walk
    # or later (an error reply), and few are duplicates.
    for dialect in DIALECTS:
        assert stats[f"{dialect} request=False decoded"] >= count // 20, stats
        assert stats[f"{dialect} request=True reply"] >= count // 50, stats
    assert len(distinct) >= min(count, 10_000) * 9 // 10


# ------------------------------------------------------------- semantic faults


def _inet(version: int) -> st.SearchStrategy[SockAddr]:
    ips = st.ip_addresses(v=4) if version == 4 else st.ip_addresses(v=6)
    return st.builds(SockAddr, ips, st.integers(0, 0xFFFF))


def _raw(dialect: str, family: int | None = None, size: int | None = None) -> st.SearchStrategy[RawSockAddr]:
    """A sockaddr of a family PF_KEY does not serve (not AF_INET/AF_INET6 of the dialect)."""
    inet = {"freebsd": (2, 28), "linux": (2, 10)}[dialect]
    top = 0xFF if dialect == "freebsd" else 0xFFFF
    families = st.integers(0, top).filter(lambda f: f not in inet) if family is None else st.just(family)
    data = st.binary(max_size=40) if size is None else st.binary(min_size=size, max_size=size)
    return st.builds(RawSockAddr, families, data)


@st.composite
def faulty_endpoints(draw: st.DrawFn, dialect: str) -> tuple[tuple[Address, ...], bool, frozenset[int]]:
    """SRC and/or DST with one semantic fault, whether the parser of ``dialect`` must
    refuse it (reference §1.3 step 6, §1.4), and the errnos it may answer with."""
    src_t, dst_t = ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST
    version = draw(st.sampled_from([4, 6]))
    top = 32 if version == 4 else 128
    proto = draw(st.integers(0, 255))
    src = Address(src_t, draw(_inet(version)), draw(st.integers(0, 32)), proto)
    dst = Address(dst_t, draw(_inet(version)), draw(st.integers(0, 32)), proto)
    freebsd = dialect == "freebsd"
    fault = draw(st.sampled_from(["proto", "family", "raw", "prefix", "unsupported", "salen", "one", "any"]))
    if fault == "proto":  # FreeBSD compares protocols; Linux does not
        other = draw(st.integers(0, 255).filter(lambda p: p != proto))
        return (src, Address(dst_t, dst.addr, dst.prefixlen, other)), freebsd, frozenset({errno.EINVAL})
    if fault == "family":  # IPv4 with IPv6: FreeBSD compares families; Linux does not
        return (src, Address(dst_t, draw(_inet(10 - version)), dst.prefixlen, proto)), freebsd, SEMANTIC_ERRNOS
    if fault == "raw":  # a family PF_KEY does not serve, with an inet partner
        return (src, Address(dst_t, draw(_raw(dialect)), dst.prefixlen, proto)), True, SEMANTIC_ERRNOS
    if fault == "prefix":  # longer than the address
        long = draw(st.integers(top + 1, 255))
        return (Address(src_t, src.addr, long, proto), dst), True, frozenset({errno.EINVAL})
    if fault == "unsupported":  # the same unserved family on both sides: EAFNOSUPPORT on FreeBSD
        a = draw(_raw(dialect))
        b = draw(_raw(dialect, a.family, len(a.data)))
        want = frozenset({errno.EAFNOSUPPORT if freebsd else errno.EINVAL})
        return (Address(src_t, a, 0, proto), Address(dst_t, b, 0, proto)), True, want
    if fault == "salen":  # one unserved family, two lengths
        a = draw(_raw(dialect))
        b = draw(_raw(dialect, a.family).filter(lambda r: len(r.data) != len(a.data)))
        return (Address(src_t, a, 0, proto), Address(dst_t, b, 0, proto)), True, SEMANTIC_ERRNOS
    anything = st.one_of(sockaddrs(dialect), _raw(dialect))
    if fault == "one":  # a lone SRC or DST is not compared with anything
        kind = draw(st.sampled_from([src_t, dst_t]))
        lone = Address(kind, draw(anything), draw(st.integers(0, 255)), proto)
        return (lone,), False, SEMANTIC_ERRNOS
    pair = tuple(
        Address(k, draw(anything), draw(st.integers(0, 255)), draw(st.integers(0, 255))) for k in (src_t, dst_t)
    )
    return pair, False, SEMANTIC_ERRNOS


@pytest.mark.parametrize("dialect", DIALECTS)
@examples(150)
@given(data=st.data())
def test_semantic_faults_get_an_error_reply(dialect: str, data: st.DataObject) -> None:
    msg = data.draw(requests(dialect), label="request")
    fault = data.draw(st.sampled_from(["satype", "type", "addresses"]), label="fault")
    must_fail, errnos = False, SEMANTIC_ERRNOS
    if fault == "addresses":
        endpoints, must_fail, errnos = data.draw(faulty_endpoints(dialect), label="endpoints")
        exts = [e for e in msg.exts if e.exttype not in (ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST)]
        for ext in endpoints:
            exts.insert(data.draw(st.integers(0, len(exts))), ext)
        raw = bytearray(encode(msg.replace(exts=tuple(exts)), dialect))
    else:
        raw = bytearray(encode(msg, dialect))
        if fault == "satype":
            raw[3] = data.draw(st.integers(0, 255), label="satype")
        else:  # another type of the dialect (Linux refuses type 0 in the header: a failed send)
            raw[1] = data.draw(st.integers(0 if dialect == "freebsd" else 1, max(msg_types(dialect))), label="type")
        accepted = request_satypes(dialect, raw[1])
        if accepted is not None and raw[3] not in accepted:
            must_fail = True
            errnos = frozenset({errno.EOPNOTSUPP if raw[3] in range(5, 9) else errno.EINVAL})
    try:
        decode(bytes(raw), dialect, request=True, max_size=1 << 20)
    except DecodeError as exc:
        assert exc.reply, f"a semantic fault must be an error reply, not a failed send: {exc}"
        assert exc.errno in errnos, exc
        assert exc.header == bytes(raw[:16])
    else:
        assert not must_fail, "the fault went unnoticed"
