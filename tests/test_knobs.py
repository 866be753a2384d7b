"""The knob table against reference §9, and the knobs' run-time effect on the engine.

The names and defaults below are written out from pfkey-protocol.md §9.1 and §9.2,
not read from pfkeyd.knobs, so that a missing or mis-set knob makes a test fail.
"""

from __future__ import annotations

import dataclasses
import errno

import pytest

from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import ALIASES, KNOBS, KnobError, Knobs, KnobSpec
from pfkeyd.wire import Dialect, EncAlg, Extension, ExtType, Message, MsgType, SaType, SpiRange
from tests.engine.conftest import PID, at, make_engine, reply, sends
from tests.engine.spd_helpers import (
    ALONE,
    DIALECTS,
    FREEBSD,
    KM,
    ME,
    OUT,
    add_policy,
    address,
    errno_of,
    flow,
    register_km,
    send,
)

# Reference §9.1 (net.inet.ipsec, net.inet6.ipsec6, the per-protocol switches).
REFERENCE_IPSEC = {
    "net.inet.ipsec.def_policy": 1,
    "net.inet.ipsec.esp_trans_deflev": 1,
    "net.inet.ipsec.esp_net_deflev": 1,
    "net.inet.ipsec.ah_trans_deflev": 1,
    "net.inet.ipsec.ah_net_deflev": 1,
    "net.inet.ipsec.ah_cleartos": 1,
    "net.inet.ah.ah_cleartos": 1,
    "net.inet.ipsec.ah_offsetmask": 0,
    "net.inet.ipsec.dfbit": 0,
    "net.inet.ipsec.min_pmtu": 576,
    "net.inet.ipsec.ecn": 0,
    "net.inet.ipsec.debug": 0,
    "net.inet.ipsec.crypto_support": 0x03000000,
    "net.inet.ipsec.async_crypto": 0,
    "net.inet.ipsec.check_policy_history": 0,
    "net.inet.ipsec.natt_cksum_policy": 0,
    "net.inet.ipsec.filtertunnel": 0,
    "net.inet.ipsec.esp_randpad": -1,
    "net.inet6.ipsec6.def_policy": 1,
    "net.inet6.ipsec6.esp_trans_deflev": 1,
    "net.inet6.ipsec6.esp_net_deflev": 1,
    "net.inet6.ipsec6.ah_trans_deflev": 1,
    "net.inet6.ipsec6.ah_net_deflev": 1,
    "net.inet6.ipsec6.ecn": 0,
    "net.inet6.ipsec6.debug": 0,
    "net.inet6.ipsec6.filtertunnel": 0,
    "net.inet.esp.esp_enable": 1,
    "net.inet.esp.ctr_compatibility": 1,
    "net.inet.ah.ah_enable": 1,
    "net.inet.ipcomp.ipcomp_enable": 1,
}
# Reference §9.2 (net.key).
REFERENCE_KEY = {
    "net.key.debug": 0,
    "net.key.spi_trycnt": 1000,
    "net.key.spi_minval": 0x100,
    "net.key.spi_maxval": 0x0FFFFFFF,
    "net.key.int_random": 60,
    "net.key.larval_lifetime": 30,
    "net.key.blockacq_count": 10,
    "net.key.blockacq_lifetime": 20,
    "net.key.esp_keymin": 256,
    "net.key.esp_auth": 0,
    "net.key.ah_keymin": 128,
    "net.key.preferred_oldsa": 1,
    "net.key.spdcache.maxentries": 0,
    "net.key.spdcache.threshold": 32,
    "net.key.sendspace": 8192,
    "net.key.recvspace": 8192,
}
REFERENCE = {**REFERENCE_IPSEC, **REFERENCE_KEY}
DEFLEV = [n for n in REFERENCE if n.endswith("_deflev")]


# ------------------------------------------------------------------ the table


@pytest.mark.parametrize(("name", "default"), sorted(REFERENCE.items()))
def test_every_reference_knob_is_in_the_table_with_its_default(name: str, default: int) -> None:
    spec = Knobs.spec(name)
    assert spec.name == name
    assert spec.default == default
    assert Knobs().get(name) == default


@pytest.mark.parametrize("spec", KNOBS, ids=lambda k: k.name)
def test_every_knob_has_a_consistent_range_unit_and_description(spec: KnobSpec) -> None:
    assert spec.minimum <= spec.default <= spec.maximum
    assert spec.unit.strip() and spec.description.strip()
    assert not spec.description.endswith(".")
    assert getattr(Knobs(), spec.attr) == spec.default


def test_knob_names_are_unique_and_every_attribute_has_a_name() -> None:
    names = [k.name for k in KNOBS]
    assert len(names) == len(set(names))
    fields = {f.name for f in dataclasses.fields(Knobs)}
    assert {k.attr for k in KNOBS} == fields


def test_knobs_outside_the_reference_are_pfkeyds_own_or_enc4s() -> None:
    # net.enc.* are FreeBSD's if_enc.c knobs (packet-path reference §1.1.7), used by
    # the data plane's enc0; the key-engine reference table does not list them.
    extra = {k.name for k in KNOBS} - set(REFERENCE)
    assert extra and all(n.startswith(("pfkeyd.", "net.enc.")) for n in extra)
    assert (Knobs().get("net.enc.in.ipsec_bpf_mask"), Knobs().get("net.enc.out.ipsec_bpf_mask")) == (1, 3)


def test_shared_nodes_share_one_value() -> None:
    # FreeBSD's IPv4 and IPv6 def_policy (and debug) nodes are one variable (§9.1).
    k = Knobs().set("net.inet6.ipsec6.def_policy", 0)
    assert k.get("net.inet.ipsec.def_policy") == 0
    k = Knobs().set("net.inet.ipsec.debug", 1)
    assert k.get("net.inet6.ipsec6.debug") == 1
    k = Knobs().set("net.inet.ah.ah_cleartos", 0)
    assert k.get("net.inet.ipsec.ah_cleartos") == 0


def test_the_kame_spelling_of_preferred_oldsa_is_an_alias() -> None:
    assert ALIASES["net.key.prefered_oldsa"] == "net.key.preferred_oldsa"
    assert Knobs().set("net.key.prefered_oldsa", 0).preferred_oldsa == 0


# -------------------------------------------------------------- bad requests


@pytest.mark.parametrize("name", ["net.key.nonesuch", "net.inet.ipsec", "", "net.key.SPI_MINVAL"])
def test_unknown_knob_raises_knob_error(name: str) -> None:
    with pytest.raises(KnobError) as exc:
        Knobs().set(name, 1)
    assert exc.value.kind == "unknown"
    with pytest.raises(KnobError):
        Knobs().get(name)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("net.inet.ipsec.def_policy", 2),  # only DISCARD and NONE (EINVAL in FreeBSD)
        ("net.inet.ipsec.def_policy", -1),
        ("net.key.esp_auth", 2),
        ("net.key.blockacq_count", -1),
        ("net.key.spi_trycnt", 0),
        ("net.key.spi_minval", 0x10000000),  # above spi_maxval
        ("net.key.spi_maxval", 0xFF),  # below spi_minval
        ("net.inet.ipsec.esp_trans_deflev", 2**31),
        ("net.key.esp_keymin", "lots"),
        ("net.key.esp_keymin", "1.5"),
        # ASCII digits only: int() would read these as 123, 123, 1000, 7 and 7.
        ("pfkeyd.max_sas", "\u0661\u0662\u0663"),
        ("pfkeyd.max_sas", "\uff11\uff12\uff13"),
        ("pfkeyd.max_sas", "1_000"),
        ("pfkeyd.max_sas", " 7"),
        ("pfkeyd.max_sas", "7\n"),
        ("pfkeyd.max_sas", "9" * 5000),  # more digits than int() converts
        ("pfkeyd.max_sas", "0x" + "f" * 5000),
        ("pfkeyd.max_sas", ""),
        ("pfkeyd.max_sas", "-"),
        ("pfkeyd.max_sas", "0b11"),
    ],
)
def test_bad_value_raises_knob_error_and_changes_nothing(name: str, value: int | str) -> None:
    eng = make_engine(clients=ALONE)
    before = eng.knobs
    with pytest.raises(KnobError) as exc:
        eng.set_knob(name, value)
    assert exc.value.kind == "invalid"
    assert eng.knobs is before


def test_read_only_knob_raises_knob_error() -> None:
    eng = make_engine(clients=ALONE)
    before = eng.knobs
    with pytest.raises(KnobError) as exc:
        eng.set_knob("net.key.spdcache.maxentries", 0)
    assert exc.value.kind == "readonly"
    assert eng.knobs is before


def test_knobs_cannot_be_built_out_of_range() -> None:
    with pytest.raises(KnobError):
        Knobs(def_policy=3)


def test_a_refused_value_is_quoted_short() -> None:
    with pytest.raises(KnobError, match=r"^invalid integer '9{32}\.\.\.'$"):
        Knobs().set("pfkeyd.max_sas", "9" * 100_000)


@pytest.mark.parametrize(
    ("text", "value"), [("0x200", 0x200), ("300", 300), ("0o777", 0o777), ("+5", 5), ("0X1F", 0x1F), ("0", 0)]
)
def test_values_may_be_given_as_text_in_any_base(text: str, value: int) -> None:
    assert Knobs().set("net.key.spi_minval", text).spi_minval == value


@pytest.mark.parametrize("name", DEFLEV)
@pytest.mark.parametrize("value", [0, 1, 2, 3, 4, -1])
def test_deflev_knobs_take_any_integer_like_the_sysctl(name: str, value: int) -> None:
    # §9.1: a value outside 1-3 is accepted and treated as REQUIRE at use (§6.4).
    assert Knobs().set(name, value).get(name) == value


def test_a_new_knobs_value_leaves_the_old_one_alone() -> None:
    old = Knobs()
    new = old.set("net.key.blockacq_count", 3)
    assert (old.blockacq_count, new.blockacq_count) == (10, 3)


# ------------------------------------------------------------ run-time effect


def test_def_policy_discard_takes_effect_on_the_next_lookup() -> None:
    eng = make_engine(clients=ALONE)
    assert eng.lookup(OUT, flow(), at(1))[0].action == "pass"
    eng.set_knob("net.inet.ipsec.def_policy", 0)
    decision, _ = eng.lookup(OUT, flow(), at(2))
    assert (decision.action, decision.default) == ("discard", True)
    eng.set_knob("net.inet.ipsec.def_policy", "1")
    assert eng.lookup(OUT, flow(), at(3))[0].action == "pass"


def _getspi(eng: KeyEngine, dst: str, rng: SpiRange | None = None) -> Message:
    exts: tuple[Extension, ...] = (address(ExtType.ADDRESS_SRC, "10.0.0.1"), address(ExtType.ADDRESS_DST, dst))
    if rng is not None:
        exts += (rng,)
    return Message(MsgType.GETSPI, SaType.ESP, 0, PID, 0, 0, exts)


def test_spi_range_knobs_change_the_next_getspi() -> None:
    eng = make_engine(clients=ALONE)
    eng.set_knob("net.key.spi_maxval", 0x5000)
    eng.set_knob("net.key.spi_minval", 0x5000)
    sa = reply(send(eng, ME, _getspi(eng, "10.0.0.2"))).sa
    assert sa is not None and sa.spi == 0x5000
    # the only SPI of the range is taken now
    assert errno_of(send(eng, ME, _getspi(eng, "10.0.0.3"))) == errno.EEXIST
    eng.set_knob("net.key.spi_maxval", 0x5003)
    for dst in ("10.0.0.4", "10.0.0.5", "10.0.0.6"):
        sa = reply(send(eng, ME, _getspi(eng, dst))).sa
        assert sa is not None and 0x5001 <= sa.spi <= 0x5003


def test_spirange_extension_overrides_the_knobs() -> None:
    eng = make_engine(clients=ALONE)
    eng.set_knob("net.key.spi_maxval", 0x5000)
    eng.set_knob("net.key.spi_minval", 0x5000)
    sa = reply(send(eng, ME, _getspi(eng, "10.0.0.2", SpiRange(0x7777, 0x7777)))).sa
    assert sa is not None and sa.spi == 0x7777


@pytest.mark.parametrize("dialect", DIALECTS)
def test_esp_keymin_changes_the_next_acquire_proposal(dialect: Dialect) -> None:
    eng = make_engine(clients={ME: FREEBSD, KM: dialect})
    register_km(eng, KM)
    add_policy(eng)
    eng.set_knob("net.key.esp_keymin", 128)
    _, effects = eng.lookup(OUT, flow(), at(1))
    prop = sends(effects, promisc=False)[0].msg.proposal
    assert prop is not None and min(c.encrypt_minbits for c in prop.combs if c.encrypt != EncAlg.NULL) <= 160
    eng.set_knob("net.key.esp_keymin", 256)
    eng.tick(at(30))  # forget the ACQUIRE record
    _, effects = eng.lookup(OUT, flow(), at(31))
    prop = sends(effects, promisc=False)[0].msg.proposal
    assert prop is not None and {c.encrypt_minbits for c in prop.combs} == {256}


def test_larval_lifetime_knob_applies_to_the_next_getspi() -> None:
    eng = make_engine(clients=ALONE)
    eng.set_knob("net.key.larval_lifetime", 5)
    sa = reply(send(eng, ME, _getspi(eng, "10.0.0.2"), at(0))).sa
    assert sa is not None
    eng.tick(at(6))
    assert sa.spi not in eng.sad.by_spi
