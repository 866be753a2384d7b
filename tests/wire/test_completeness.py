"""Every message and extension type the codec knows has a codec entry and a
known-answer vector, in every dialect that carries it (STYLE.md §2: a test checks
that every enum member appears in every table that should know it)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from pfkeyd.wire import Address, ExtType, IpsecRequest, MsgType, Policy, SockAddr
from pfkeyd.wire.dialect import spec
from pfkeyd.wire.ext import DECODERS
from pfkeyd.wire.message import MIN_LEN
from tests.wire.vectors import VECTORS, Vector

DIALECTS = ("freebsd", "linux")


#: Types whose number a dialect's codebook knows but whose kernel refuses them on
#: input, so no known-answer vector can exist: FreeBSD's key_align rejects
#: X_KMPRIVATE like an unknown type (reference §1.3, §4.1).  The refusal itself is
#: in test_vectors.FAULTS ("freebsd/ext-type-17-kmprivate").
REFUSED_ON_INPUT = {"freebsd": {ExtType.X_KMPRIVATE}, "linux": set()}


def carried_ext_types(dialect: str) -> set[ExtType]:
    return {ExtType(c) for c in spec(dialect).ext.to_wire} - REFUSED_ON_INPUT[dialect]


def message_types(dialect: str) -> range:
    return range(spec(dialect).msg_max + 1)


def missing_ext_vectors(vectors: Iterable[Vector], dialect: str) -> set[ExtType]:
    seen = {ext.exttype for v in vectors if v.dialect == dialect for ext in v.value.exts}
    return carried_ext_types(dialect) - seen


def missing_message_vectors(vectors: Iterable[Vector], dialect: str) -> set[int]:
    seen = {v.value.type for v in vectors if v.dialect == dialect and v.whole_message}
    return set(message_types(dialect)) - seen


@pytest.mark.parametrize("exttype", [e for e in ExtType if e != ExtType.RESERVED], ids=lambda e: e.name)
def test_every_extension_type_has_a_codec_entry(exttype: ExtType) -> None:
    assert exttype in DECODERS
    assert exttype in MIN_LEN


@pytest.mark.parametrize("exttype", [e for e in ExtType if e != ExtType.RESERVED], ids=lambda e: e.name)
def test_every_extension_type_is_carried_by_some_dialect(exttype: ExtType) -> None:
    assert any(exttype in carried_ext_types(d) for d in DIALECTS)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_extension_type_of_the_dialect_has_a_vector(dialect: str) -> None:
    assert missing_ext_vectors(VECTORS, dialect) == set()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_message_type_of_the_dialect_has_a_whole_message_vector(dialect: str) -> None:
    assert missing_message_vectors(VECTORS, dialect) == set()


@pytest.mark.parametrize("mtype", list(MsgType), ids=lambda m: m.name)
def test_every_message_type_is_carried_and_has_a_vector(mtype: MsgType) -> None:
    assert any(mtype <= spec(d).msg_max for d in DIALECTS)
    assert any(v.value.type == mtype and v.whole_message for v in VECTORS)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_extension_class_of_the_dialect_has_a_vector(dialect: str) -> None:
    classes = {DECODERS[e] for e in carried_ext_types(dialect)}
    seen = {type(ext) for v in VECTORS if v.dialect == dialect for ext in v.value.exts}
    assert classes - seen == set()


def _addresses(v: Vector) -> Iterable[SockAddr]:
    for ext in v.value.exts:
        if isinstance(ext, Address) and isinstance(ext.addr, SockAddr):
            yield ext.addr


def _tunnel_requests(v: Vector) -> Iterable[IpsecRequest]:
    for ext in v.value.exts:
        if isinstance(ext, Policy):
            yield from (r for r in ext.requests if isinstance(r.src, SockAddr))


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("version", [4, 6])
def test_both_address_families_appear_in_addresses_and_tunnel_endpoints(dialect: str, version: int) -> None:
    mine = [v for v in VECTORS if v.dialect == dialect]
    assert any(a.version == version for v in mine for a in _addresses(v))
    assert any(r.src is not None and r.src.version == version for v in mine for r in _tunnel_requests(v))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_ipv6_ports_and_scope_ids_appear(dialect: str) -> None:
    addrs = [a for v in VECTORS if v.dialect == dialect for a in _addresses(v)]
    assert any(a.version == 6 and a.port and a.scope_id for a in addrs)
    assert any(a.version == 6 and a.flowinfo for a in addrs)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_types_refused_on_input_are_really_refused(dialect: str) -> None:
    from tests.wire.test_vectors import FAULTS

    for exttype in REFUSED_ON_INPUT[dialect]:
        wire = spec(dialect).ext.to_wire[exttype]
        assert any(f.dialect == dialect and f.hex[32:40] == f"0100{wire:02x}00" for f in FAULTS)


def test_the_completeness_checks_notice_a_missing_vector() -> None:
    """The checks above can fail: drop the vectors that carry SEC_CTX, or the only
    Linux X_MIGRATE message, and they are reported."""
    without_sec_ctx = [v for v in VECTORS if not any(e.exttype == ExtType.X_SEC_CTX for e in v.value.exts)]
    assert missing_ext_vectors(without_sec_ctx, "linux") == {ExtType.X_SEC_CTX}
    assert missing_ext_vectors(without_sec_ctx, "freebsd") == set()
    without_migrate = [v for v in VECTORS if v.value.type != MsgType.X_MIGRATE]
    assert missing_message_vectors(without_migrate, "linux") == {MsgType.X_MIGRATE}
    ext_only = [v for v in VECTORS if not v.whole_message]
    assert MsgType.GETSPI in missing_message_vectors(ext_only, "freebsd")
