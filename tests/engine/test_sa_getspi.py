"""SADB_GETSPI (reference §3.1): SPI choice, the LARVAL SA, the reply to ONE."""

from __future__ import annotations

import errno

import pytest

from pfkeyd.engine import KeyEngine
from pfkeyd.sad import SaIndex
from pfkeyd.wire import Address, ExtType, IpProto, Mode, Sa, Sa2, SaState, SaType, SockAddr
from tests.engine.conftest import (
    FB,
    FB2,
    LX,
    LX2,
    PID,
    A,
    B,
    acquire_request,
    add,
    at,
    ext_types,
    fails,
    getspi,
    make_engine,
    ok,
    register,
    reply,
    sends,
    targets,
)


def new_spi(engine: KeyEngine, client: int, satype: int = SaType.ESP, spirange: tuple[int, int] | None = None) -> int:
    msg = reply(ok(engine, client, getspi(satype, spirange=spirange)), client)
    sa = msg.sa
    assert sa is not None
    return sa.spi


def test_getspi_without_spirange_draws_from_the_knobs_range(engine: KeyEngine) -> None:
    spis = {new_spi(engine, FB) for _ in range(50)}
    assert len(spis) == 50
    assert all(0x100 <= spi <= 0x0FFFFFFF for spi in spis)


def test_getspi_range_follows_spi_minval_and_spi_maxval_changed_at_run_time(engine: KeyEngine) -> None:
    engine.set_knob("net.key.spi_maxval", 0x5000)
    engine.set_knob("net.key.spi_minval", 0x4FF0)
    spis = {new_spi(engine, FB) for _ in range(17)}
    assert spis == set(range(0x4FF0, 0x5001))
    # The range is full: every random attempt hits a used SPI.
    assert fails(engine, FB, getspi()) == errno.EEXIST


def test_getspi_with_spirange_stays_inside_it(engine: KeyEngine) -> None:
    spis = [new_spi(engine, FB, spirange=(0x10000, 0x1000F)) for _ in range(16)]
    assert sorted(spis) == list(range(0x10000, 0x10010))


def test_getspi_spirange_overrides_the_knobs(engine: KeyEngine) -> None:
    engine.set_knob("net.key.spi_minval", 0x100)
    engine.set_knob("net.key.spi_maxval", 0x200)
    assert new_spi(engine, FB, spirange=(0x7777, 0x7777)) == 0x7777


def test_getspi_min_equal_max_allocates_exactly_that_spi(engine: KeyEngine) -> None:
    assert new_spi(engine, FB, spirange=(0xABCDEF, 0xABCDEF)) == 0xABCDEF
    assert engine.sad.get(0xABCDEF) is not None


def test_getspi_exact_spi_in_use_replies_eexist(engine: KeyEngine) -> None:
    ok(engine, FB, add(spi=0x3000))
    assert fails(engine, FB, getspi(spirange=(0x3000, 0x3000))) == errno.EEXIST


def test_getspi_spi_namespace_is_global_across_protocols_and_addresses(engine: KeyEngine) -> None:
    # An AH SA between other hosts still owns the SPI (§3, "global SPI namespace").
    ok(engine, FB, add(SaType.AH, 0x3000, s="192.0.2.1", d="192.0.2.2"))
    assert fails(engine, FB, getspi(SaType.ESP, spirange=(0x3000, 0x3000))) == errno.EEXIST


def test_getspi_exhausted_range_replies_eexist(engine: KeyEngine) -> None:
    for spi in range(0x400, 0x404):
        ok(engine, FB, add(spi=spi))
    assert fails(engine, FB, getspi(spirange=(0x400, 0x403))) == errno.EEXIST


@pytest.mark.parametrize("satype", [SaType.ESP, SaType.AH], ids=lambda s: s.name)
@pytest.mark.parametrize("spi", [1, 0xFF])
def test_getspi_of_a_reserved_spi_for_esp_and_ah_replies_einval(engine: KeyEngine, satype: SaType, spi: int) -> None:
    assert fails(engine, FB, getspi(satype, spirange=(spi, spi))) == errno.EINVAL


def test_getspi_of_spi_256_is_allowed(engine: KeyEngine) -> None:
    assert new_spi(engine, FB, spirange=(0x100, 0x100)) == 0x100


def test_getspi_ipcomp_clamps_bounds_to_16_bits(engine: KeyEngine) -> None:
    assert new_spi(engine, FB, satype=SaType.X_IPCOMP, spirange=(0x20000, 0x30000)) == 0xFFFF


def test_getspi_ipcomp_default_range_is_clamped_to_16_bits(engine: KeyEngine) -> None:
    spis = [new_spi(engine, FB, satype=SaType.X_IPCOMP) for _ in range(30)]
    assert all(0x100 <= spi <= 0xFFFF for spi in spis)


def test_getspi_ipcomp_swaps_reversed_bounds(engine: KeyEngine) -> None:
    spis = {new_spi(engine, FB, satype=SaType.X_IPCOMP, spirange=(0x1003, 0x1000)) for _ in range(4)}
    assert spis == {0x1000, 0x1001, 0x1002, 0x1003}


def test_getspi_ipcomp_may_use_a_cpi_below_256(engine: KeyEngine) -> None:
    assert new_spi(engine, FB, satype=SaType.X_IPCOMP, spirange=(0x50, 0x50)) == 0x50


def test_getspi_creates_a_larval_sa_with_request_seq_pid_and_sa_index() -> None:
    engine = make_engine()
    ok(engine, FB, getspi(seq=77, pid=1234, spirange=(0x9000, 0x9000), sa2=Sa2(Mode.TUNNEL, 0, 42)), at(5))
    sa = engine.sad.get(0x9000)
    assert sa is not None
    assert sa.state == SaState.LARVAL
    assert (sa.seq, sa.pid, sa.satype) == (77, 1234, SaType.ESP)
    assert sa.index == SaIndex(IpProto.ESP, Mode.TUNNEL, 42, SockAddr.parse(A), SockAddr.parse(B))
    assert (sa.created, sa.created_wall) == (at(5).mono, at(5).wall)
    assert sa.key_auth is None and sa.key_encrypt is None


def test_getspi_sa_index_ignores_ports(engine: KeyEngine) -> None:
    msg = getspi(spirange=(0x9000, 0x9000)).replace(
        exts=(
            Address.host(ExtType.ADDRESS_SRC, A, port=500),
            Address.host(ExtType.ADDRESS_DST, B, port=4500),
            getspi(spirange=(0x9000, 0x9000)).spirange,
        )
    )
    ok(engine, FB, msg)
    sa = engine.sad.get(0x9000)
    assert sa is not None
    assert sa.index.src.port == 0 and sa.index.dst.port == 0
    assert sa.index.mode == Mode.ANY and sa.index.reqid == 0


@pytest.mark.parametrize("client", [FB, LX], ids=["freebsd", "linux"])
def test_getspi_replies_to_the_requester_only_with_sa_spi_src_dst(client: int) -> None:
    engine = make_engine()
    ok(engine, FB2, register(SaType.ESP))
    ok(engine, LX2, register(SaType.ESP))
    request = getspi(seq=0xFEEDF00D, pid=321, spirange=(0x9000, 0x9000), sa2=Sa2(Mode.TRANSPORT, 0, 0)).replace(
        exts=(
            Address.host(ExtType.ADDRESS_SRC, A, port=500),
            Address.host(ExtType.ADDRESS_DST, B, port=500),
            getspi(spirange=(0x9000, 0x9000)).spirange,
            Sa2(Mode.TRANSPORT, 0, 0),
        )
    )
    effects = ok(engine, client, request)
    assert [(s.to, s.reply) for s in sends(effects)] == [((client,), True)]
    assert targets(effects, promisc=True) == set()
    msg = reply(effects, client)
    assert (msg.type, msg.satype, msg.seq, msg.pid, msg.errno) == (request.type, SaType.ESP, 0xFEEDF00D, 321, 0)
    # SA with only the SPI set, then SRC and DST exactly as sent; SA2 is not echoed.
    assert ext_types(msg) == [ExtType.SA, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST]
    assert msg.sa == Sa(0x9000, 0, SaState.LARVAL, 0, 0, 0)
    assert msg.src == request.src and msg.dst == request.dst


@pytest.mark.parametrize("missing", [ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST], ids=lambda t: t.name)
def test_getspi_without_an_address_replies_einval(engine: KeyEngine, missing: ExtType) -> None:
    assert fails(engine, FB, getspi(omit=[missing])) == errno.EINVAL


def test_getspi_with_mixed_address_families_replies_einval(engine: KeyEngine) -> None:
    msg = getspi().replace(
        exts=(Address.host(ExtType.ADDRESS_SRC, A), Address.host(ExtType.ADDRESS_DST, "2001:db8::2"))
    )
    assert fails(engine, FB, msg) == errno.EINVAL


def test_getspi_beyond_max_sas_replies_enobufs() -> None:
    engine = make_engine(max_sas=2)
    ok(engine, FB, getspi())
    ok(engine, FB, getspi())
    assert fails(engine, FB, getspi()) == errno.ENOBUFS


def test_getspi_with_an_acquire_seq_completes_that_acquire(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    ok(engine, FB, acquire_request())
    (rec,) = engine.acquires.by_index.values()
    ok(engine, FB2, getspi(seq=rec.seq))
    assert len(engine.acquires) == 0


def test_getspi_with_an_acquire_seq_for_another_sa_index_leaves_the_acquire(engine: KeyEngine) -> None:
    ok(engine, FB2, register(SaType.ESP))
    ok(engine, FB, acquire_request())
    (rec,) = engine.acquires.by_index.values()
    ok(engine, FB2, getspi(seq=rec.seq, d="10.9.9.9"))
    assert len(engine.acquires) == 1


def test_getspi_pid_is_the_requests_not_the_clients(engine: KeyEngine) -> None:
    ok(engine, FB, getspi(pid=PID + 1, spirange=(0x9000, 0x9000)))
    sa = engine.sad.get(0x9000)
    assert sa is not None and sa.pid == PID + 1
