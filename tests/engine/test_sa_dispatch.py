"""Every message type 0-24 has a handler or the reference kernel's refusal (reference §1.3, §1.4, §2)."""

from __future__ import annotations

import errno

import pytest

from pfkeyd.engine import HANDLERS
from pfkeyd.wire import Dialect, Message, MsgType, SaType
from tests.engine.conftest import (
    CLIENT_OF,
    FB,
    LX,
    T0,
    acquire_error,
    add,
    delete,
    dump,
    error_of,
    fails,
    flush,
    get,
    getspi,
    make_engine,
    ok,
    promisc,
    register,
    update,
)

#: Types only a kernel sends, and RESERVED: FreeBSD has no handler (EINVAL); Linux EOPNOTSUPP.
KERNEL_ONLY = (MsgType.RESERVED, MsgType.EXPIRE, MsgType.X_PCHANGE, MsgType.X_SPDACQUIRE, MsgType.X_SPDEXPIRE)
#: Types with a handler in both reference kernels.
HANDLED = frozenset(MsgType) - set(KERNEL_ONLY) - {MsgType.X_NAT_T_NEW_MAPPING}


def test_handler_table_serves_exactly_the_user_to_kernel_types() -> None:
    assert set(HANDLERS) == HANDLED


@pytest.mark.parametrize("mtype", KERNEL_ONLY, ids=lambda t: t.name)
@pytest.mark.parametrize(
    ("dialect", "expected"),
    [(Dialect.FREEBSD, errno.EINVAL), (Dialect.LINUX, errno.EOPNOTSUPP)],
    ids=["freebsd", "linux"],
)
def test_kernel_only_type_is_refused_with_the_dialects_errno(mtype: MsgType, dialect: Dialect, expected: int) -> None:
    engine = make_engine()
    # An SA satype gets past key_parse's satype check (UNSPEC is refused for EXPIRE first).
    satype = SaType.ESP if mtype is not MsgType.RESERVED else SaType.UNSPEC
    assert fails(engine, CLIENT_OF[dialect], Message(mtype, satype, 1, 99)) == expected


def test_expire_with_satype_unspec_is_refused_by_the_satype_check_first() -> None:
    # FreeBSD fails satype 0 with EINVAL before noticing there is no handler (§3.8);
    # on Linux the satype check is the engine's shared key_parse check as well.
    engine = make_engine()
    assert fails(engine, FB, Message(MsgType.EXPIRE, SaType.UNSPEC)) == errno.EINVAL
    assert fails(engine, LX, Message(MsgType.EXPIRE, SaType.UNSPEC)) == errno.EINVAL


def test_nat_t_new_mapping_from_a_linux_socket_is_eopnotsupp() -> None:
    assert fails(make_engine(), LX, Message(MsgType.X_NAT_T_NEW_MAPPING, SaType.ESP)) == errno.EOPNOTSUPP


def test_migrate_without_its_extensions_is_einval() -> None:
    # pfkey_migrate: SRC, DST and X_POLICY are required (§3.19).
    assert fails(make_engine(), LX, Message(MsgType.X_MIGRATE, SaType.UNSPEC)) == errno.EINVAL


@pytest.mark.parametrize("mtype", [MsgType.X_NAT_T_NEW_MAPPING, MsgType.X_MIGRATE], ids=lambda t: t.name)
def test_linux_only_type_on_a_freebsd_socket_is_einval(mtype: MsgType) -> None:
    # FreeBSD: type > SADB_MAX (22) gets an EINVAL error reply (§1.3 step 2).
    assert fails(make_engine(), FB, Message(mtype, SaType.ESP)) == errno.EINVAL


@pytest.mark.parametrize("dialect", [Dialect.FREEBSD, Dialect.LINUX], ids=["freebsd", "linux"])
def test_every_sa_message_type_reaches_its_handler(dialect: Dialect) -> None:
    engine = make_engine()
    me = CLIENT_OF[dialect]
    ok(engine, me, getspi(spirange=(0x3000, 0x3000)))
    ok(engine, me, update(spi=0x3000))
    ok(engine, me, add(spi=0x4000))
    assert ok(engine, me, get(spi=0x4000))
    ok(engine, me, delete(spi=0x4000))
    ok(engine, me, register(SaType.ESP))
    assert ok(engine, me, acquire_error(seq=7, err=errno.ENOENT)) == []
    assert ok(engine, me, dump())
    ok(engine, me, flush())
    ok(engine, me, promisc(1))


@pytest.mark.parametrize("satype", [SaType.RSVP, SaType.OSPFV2, SaType.RIPV2, SaType.MIP], ids=lambda s: s.name)
def test_unsupported_rfc_satypes_get_eopnotsupp(satype: SaType) -> None:
    assert fails(make_engine(), FB, flush(satype)) == errno.EOPNOTSUPP


@pytest.mark.parametrize("satype", [1, 4, 10, 12, 200])
def test_undefined_satypes_get_einval(satype: int) -> None:
    assert fails(make_engine(), FB, Message(MsgType.FLUSH, satype)) == errno.EINVAL


@pytest.mark.parametrize(
    "mtype",
    [MsgType.GETSPI, MsgType.UPDATE, MsgType.ADD, MsgType.DELETE, MsgType.GET, MsgType.ACQUIRE],
    ids=lambda t: t.name,
)
def test_sa_message_with_satype_unspec_is_einval(mtype: MsgType) -> None:
    engine = make_engine()
    msg = add(SaType.ESP).replace(type=mtype, satype=SaType.UNSPEC)
    assert fails(engine, FB, msg) == errno.EINVAL


@pytest.mark.parametrize(
    "mtype", [MsgType.GETSPI, MsgType.ADD, MsgType.REGISTER, MsgType.FLUSH, MsgType.DUMP], ids=lambda t: t.name
)
def test_tcp_signature_satype_from_a_linux_socket_is_einval(mtype: MsgType) -> None:
    # Linux defines no satype 11: pfkey_satype2proto gives 0 and REGISTER refuses
    # satype > SADB_SATYPE_MAX (9), both EINVAL (§3.7, §5.1).  A freebsd socket may use it.
    engine = make_engine()
    msg = add(SaType.X_TCPSIGNATURE).replace(type=mtype)
    if mtype in (MsgType.REGISTER, MsgType.FLUSH, MsgType.DUMP):
        msg = msg.replace(exts=())
    assert fails(engine, LX, msg) == errno.EINVAL


def test_tcp_signature_satype_from_a_freebsd_socket_is_served() -> None:
    engine = make_engine()
    ok(engine, FB, add(SaType.X_TCPSIGNATURE))
    ok(engine, FB, register(SaType.X_TCPSIGNATURE))
    assert error_of(engine.handle(FB, dump(SaType.X_TCPSIGNATURE), T0)) is None
