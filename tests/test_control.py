"""The control commands (sysctl, stats, lookup) run against a key engine, no sockets.

``pfkeyd.control.run(engine, argv, now)`` is what the daemon runs for each request
on its control socket; these tests call it directly and drive the engine with
PF_KEY messages the way the shell would (encoded in the client's dialect, decoded as
a kernel decodes a request, then handed to ``KeyEngine.handle``).
"""

from __future__ import annotations

import errno
import random
import re
from collections.abc import Sequence

import pytest

from pfkeyd import control
from pfkeyd.control import Outcome
from pfkeyd.effects import ClientId, Effect, Error, Instant, Send
from pfkeyd.engine import KeyEngine
from pfkeyd.knobs import KNOBS, Knobs
from pfkeyd.packet.counters import DESCRIPTIONS, Drop
from pfkeyd.wire import (
    Address,
    AuthAlg,
    Dialect,
    Direction,
    EncAlg,
    Extension,
    ExtType,
    IpProto,
    IpsecRequest,
    Key,
    Level,
    Message,
    Mode,
    MsgType,
    Policy,
    PolicyType,
    Sa,
    SaType,
    SockAddr,
    decode,
    encode,
)

#: Client ids: a FreeBSD-built setkey, a Linux-built key manager, a bystander.
SETKEY, KM, BYSTANDER = 1, 2, 3
PID = 4242
WALL0 = 1_700_000_000


def at(t: float) -> Instant:
    return Instant(float(t), WALL0 + int(t))


@pytest.fixture
def engine() -> KeyEngine:
    eng = KeyEngine(rng=random.Random(2367))
    eng.client_opened(SETKEY, Dialect.FREEBSD)
    eng.client_opened(KM, Dialect.LINUX)
    eng.client_opened(BYSTANDER, Dialect.LINUX)
    return eng


def run(eng: KeyEngine, *argv: str, t: float = 1) -> Outcome:
    return control.run(eng, list(argv), at(t))


def send(eng: KeyEngine, client: ClientId, msg: Message, t: float = 0) -> list[Effect]:
    """``msg`` through the client's codec, then to the engine, as the shell does."""
    dialect = eng.clients[client].dialect
    data = encode(msg.replace(pid=PID) if msg.pid == 0 else msg, dialect)
    return eng.handle(client, decode(data, dialect, request=True), at(t))


def ok(effects: Sequence[Effect]) -> Message:
    """The reply of a request that succeeded."""
    assert not any(isinstance(e, Error) for e in effects), effects
    return next(e.msg for e in effects if isinstance(e, Send) and e.reply)


def host(exttype: ExtType, text: str, port: int = 0, proto: int = IpProto.ANY) -> Address:
    sa = SockAddr.parse(text, port)
    return Address(exttype, sa, sa.max_prefix, proto)


def spdadd(
    eng: KeyEngine,
    ptype: int,
    *,
    direction: int = Direction.OUTBOUND,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    requests: Sequence[IpsecRequest] = (),
    proto: int = IpProto.ANY,
) -> int:
    """Add a policy (from setkey's socket); its id."""
    msg = Message(
        MsgType.X_SPDADD,
        SaType.UNSPEC,
        1,
        PID,
        exts=(
            Policy(ptype, direction, 0, 0, 0, tuple(requests)),
            host(ExtType.ADDRESS_SRC, src, proto=proto),
            host(ExtType.ADDRESS_DST, dst, proto=proto),
        ),
    )
    pol = ok(send(eng, SETKEY, msg)).policy
    assert pol is not None
    return pol.id


def esp_transport(level: int) -> IpsecRequest:
    return IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level)


def add_sa(eng: KeyEngine, spi: int, src: str = "10.0.0.1", dst: str = "10.0.0.2") -> None:
    exts: tuple[Extension, ...] = (
        Sa(spi, 0, 0, AuthAlg.X_SHA2_256, EncAlg.X_AESCBC),
        host(ExtType.ADDRESS_SRC, src),
        host(ExtType.ADDRESS_DST, dst),
        Key(ExtType.KEY_AUTH, bytes(32)),
        Key(ExtType.KEY_ENCRYPT, bytes(16)),
    )
    ok(send(eng, SETKEY, Message(MsgType.ADD, SaType.ESP, 2, PID, exts=exts)))


def register(eng: KeyEngine, client: ClientId = KM) -> None:
    ok(send(eng, client, Message(MsgType.REGISTER, SaType.ESP, 3, PID)))


def getspi(eng: KeyEngine, dst: str) -> int:
    exts = (host(ExtType.ADDRESS_SRC, "10.0.0.1"), host(ExtType.ADDRESS_DST, dst))
    sa = ok(send(eng, KM, Message(MsgType.GETSPI, SaType.ESP, 4, PID, exts=exts))).sa
    assert sa is not None
    return sa.spi


def acquires(effects: Sequence[Effect]) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and e.msg.type == MsgType.ACQUIRE and not e.promisc]


# ------------------------------------------------------------------ sysctl: reading


def test_sysctl_a_lists_every_knob_in_table_order_with_its_value(engine: KeyEngine) -> None:
    out = run(engine, "sysctl", "-a")
    assert (out.status, out.err) == (0, "")
    lines = out.out.splitlines()
    assert lines == [f"{spec.name}: {spec.default}" for spec in KNOBS]
    assert len(lines) == len(KNOBS)


def test_sysctl_a_shows_current_values_not_defaults(engine: KeyEngine) -> None:
    engine.set_knob("net.key.blockacq_count", 3)
    lines = run(engine, "sysctl", "-a").out.splitlines()
    assert "net.key.blockacq_count: 3" in lines
    assert "net.key.blockacq_count: 10" not in lines


def test_sysctl_reads_one_knob_and_several_in_the_order_given(engine: KeyEngine) -> None:
    out = run(engine, "sysctl", "net.key.spi_minval")
    assert (out.status, out.out, out.err) == (0, "net.key.spi_minval: 256\n", "")
    out = run(engine, "sysctl", "pfkeyd.max_sas", "net.inet.ipsec.esp_randpad")
    assert out.out == "pfkeyd.max_sas: 2000000\nnet.inet.ipsec.esp_randpad: -1\n"


def test_sysctl_d_prints_descriptions(engine: KeyEngine) -> None:
    out = run(engine, "sysctl", "-d", "net.key.larval_lifetime")
    assert out.out == "net.key.larval_lifetime: Lifetime of a LARVAL SA that GETSPI created and no UPDATE completed\n"
    every = run(engine, "sysctl", "-ad").out.splitlines()
    assert every == [f"{spec.name}: {spec.description}" for spec in KNOBS]


def test_sysctl_n_prints_values_or_descriptions_without_names(engine: KeyEngine) -> None:
    assert run(engine, "sysctl", "-n", "net.key.spi_maxval").out == "268435455\n"
    assert run(engine, "sysctl", "-n", "-d", "net.key.spi_minval").out == "Lowest automatically allocated SPI\n"
    assert run(engine, "sysctl", "-an").out.splitlines() == [str(spec.default) for spec in KNOBS]


def test_sysctl_without_a_name_or_with_a_bad_flag_is_a_usage_error(engine: KeyEngine) -> None:
    for argv in (["sysctl"], ["sysctl", "-d"], ["sysctl", "-x", "net.key.debug"], ["sysctl", "-aq"]):
        out = run(engine, *argv)
        assert out.status == 64, argv
        assert out.out == ""
        assert "usage: pfkeyd sysctl [-adn] [name[=value] ...]" in out.err


# ------------------------------------------------------------------ sysctl: setting


def test_sysctl_set_prints_old_and_new_value_and_changes_the_engine(engine: KeyEngine) -> None:
    out = run(engine, "sysctl", "net.key.blockacq_count=4")
    assert (out.status, out.out, out.err) == (0, "net.key.blockacq_count: 10 -> 4\n", "")
    assert engine.knobs.blockacq_count == 4
    # values in any base, as the sysctl does
    assert run(engine, "sysctl", "net.key.spi_minval=0x1000").out == "net.key.spi_minval: 256 -> 4096\n"
    assert run(engine, "sysctl", "net.key.spi_minval").out == "net.key.spi_minval: 4096\n"


def test_sysctl_n_set_prints_the_change_without_the_name(engine: KeyEngine) -> None:
    # FreeBSD sysctl(8): "sysctl -n kern.x=5" prints "old -> new".
    out = run(engine, "sysctl", "-n", "net.key.esp_auth=1")
    assert (out.status, out.out) == (0, "0 -> 1\n")
    assert engine.knobs.esp_auth == 1


def test_sysctl_d_with_a_value_shows_the_description_and_changes_nothing(engine: KeyEngine) -> None:
    # FreeBSD sysctl(8) only describes a name=value argument under -d.
    before = engine.knobs
    out = run(engine, "sysctl", "-d", "net.key.esp_auth=1")
    assert (out.status, out.out) == (
        0,
        "net.key.esp_auth: Include authentication algorithms in ESP ACQUIRE proposals\n",
    )
    assert engine.knobs is before


def test_spi_range_set_by_sysctl_narrows_the_next_getspi(engine: KeyEngine) -> None:
    assert run(engine, "sysctl", "net.key.spi_maxval=0x5003", "net.key.spi_minval=0x5000").status == 0
    spis = {getspi(engine, f"10.0.1.{i}") for i in range(4)}
    assert spis == {0x5000, 0x5001, 0x5002, 0x5003}
    # The range is used up: the next GETSPI finds no free SPI.
    exts = (host(ExtType.ADDRESS_SRC, "10.0.0.1"), host(ExtType.ADDRESS_DST, "10.0.2.1"))
    effects = send(engine, KM, Message(MsgType.GETSPI, SaType.ESP, 5, PID, exts=exts))
    assert [e.errno for e in effects if isinstance(e, Error)] == [errno.EEXIST]


def test_def_policy_set_by_sysctl_makes_the_next_unmatched_lookup_a_discard(engine: KeyEngine) -> None:
    before = run(engine, "lookup", "out", "10.9.9.1", "10.9.9.2")
    assert before.out.endswith("decision: pass (sent in the clear)\n")
    assert run(engine, "sysctl", "net.inet.ipsec.def_policy=0").out == "net.inet.ipsec.def_policy: 1 -> 0\n"
    after = run(engine, "lookup", "out", "10.9.9.1", "10.9.9.2")
    assert after.out == ("no policy matches: default policy discard (net.inet.ipsec.def_policy=0)\ndecision: discard\n")


def test_the_ipv6_def_policy_node_is_the_same_variable(engine: KeyEngine) -> None:
    out = run(engine, "sysctl", "net.inet6.ipsec6.def_policy=0")
    assert out.out == "net.inet6.ipsec6.def_policy: 1 -> 0\n"
    assert run(engine, "sysctl", "-n", "net.inet.ipsec.def_policy").out == "0\n"
    assert run(engine, "lookup", "out", "10.9.9.1", "10.9.9.2").out.endswith("decision: discard\n")


def test_esp_keymin_set_by_sysctl_changes_the_next_acquire_proposal(engine: KeyEngine) -> None:
    register(engine)
    spdadd(engine, PolicyType.IPSEC, requests=[esp_transport(Level.REQUIRE)])

    def proposal_minbits(t: float) -> set[int]:
        out = run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2", t=t)
        (acq,) = acquires(out.effects)
        prop = acq.msg.proposal
        assert prop is not None
        return {c.encrypt_minbits for c in prop.combs if c.encrypt != EncAlg.NULL}

    assert proposal_minbits(1) == {256}
    assert run(engine, "sysctl", "net.key.esp_keymin=128").status == 0
    engine.tick(at(100))  # net.key.blockacq_lifetime: the ACQUIRE record is forgotten
    assert min(proposal_minbits(101)) == 128


def test_several_settings_apply_in_order(engine: KeyEngine) -> None:
    out = run(engine, "sysctl", "net.key.esp_auth=1", "net.key.esp_auth=0", "net.key.ah_keymin=256")
    assert out.out == "net.key.esp_auth: 0 -> 1\nnet.key.esp_auth: 1 -> 0\nnet.key.ah_keymin: 128 -> 256\n"
    assert (engine.knobs.esp_auth, engine.knobs.ah_keymin) == (0, 256)


def test_the_kame_spelling_prefered_oldsa_reads_and_sets_preferred_oldsa(engine: KeyEngine) -> None:
    assert run(engine, "sysctl", "net.key.prefered_oldsa").out == "net.key.preferred_oldsa: 1\n"
    out = run(engine, "sysctl", "net.key.prefered_oldsa=0")
    assert (out.status, out.out) == (0, "net.key.preferred_oldsa: 1 -> 0\n")
    assert engine.knobs.preferred_oldsa == 0
    # the alias is accepted, never listed
    assert "prefered_oldsa" not in run(engine, "sysctl", "-a").out


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("net.key.nonesuch", "sysctl: unknown oid 'net.key.nonesuch'"),
        ("net.key.nonesuch=1", "sysctl: unknown oid 'net.key.nonesuch'"),
        ("net.key.spi_trycnt=lots", "sysctl: invalid integer 'lots'"),
        ("net.key.spi_trycnt=", "sysctl: invalid integer ''"),
        ("net.key.spi_trycnt=1.5", "sysctl: invalid integer '1.5'"),
        ("net.key.spi_trycnt=0", "sysctl: net.key.spi_trycnt: 0 is out of range 1..1000000"),
        ("net.inet.ipsec.def_policy=2", "sysctl: net.inet.ipsec.def_policy: 2 is out of range 0..1"),
        (
            "net.key.spi_minval=0x10000000",
            "sysctl: net.key.spi_minval: net.key.spi_minval must not exceed net.key.spi_maxval",
        ),
        ("net.key.spdcache.maxentries=1", "sysctl: oid 'net.key.spdcache.maxentries' is read only"),
    ],
)
def test_a_bad_name_or_value_is_refused_with_status_1_and_changes_nothing(
    engine: KeyEngine, arg: str, message: str
) -> None:
    before = engine.knobs
    out = run(engine, "sysctl", arg)
    assert (out.status, out.out, out.err) == (1, "", message + "\n")
    assert engine.knobs is before  # not even an equal copy: the very same object
    assert engine.knobs == Knobs()


def test_a_bad_argument_among_good_ones_is_reported_and_the_good_ones_apply(engine: KeyEngine) -> None:
    # As sysctl(8) does: each argument on its own, the status says something failed.
    out = run(engine, "sysctl", "net.key.esp_auth=1", "net.key.nonesuch=1", "net.key.debug")
    assert out.status == 1
    assert out.out == "net.key.esp_auth: 0 -> 1\nnet.key.debug: 0\n"
    assert out.err == "sysctl: unknown oid 'net.key.nonesuch'\n"
    assert engine.knobs == Knobs(esp_auth=1)


# ------------------------------------------------------------------ stats


def stats_block(text: str, title: str) -> tuple[int, dict[str, int]]:
    """The total and the per-name counts under one title of the stats output."""
    lines = text.splitlines()
    (i,) = [n for n, line in enumerate(lines) if re.fullmatch(rf"\t\d+ {title}", line)]
    total = int(lines[i].split()[0])
    detail: dict[str, int] = {}
    for line in lines[i + 1 :]:
        if not line.startswith("\t\t"):
            break
        count, name = line.split()
        detail[name] = int(count)
    return total, detail


def test_stats_of_a_fresh_engine_are_zero(engine: KeyEngine) -> None:
    out = run(engine, "stats")
    assert (out.status, out.err) == (0, "")
    assert out.out == (
        "pfkey:\n\t0 messages in\n\t0 messages out\n\t0 errors\n\t0 drops\n"
        "\t3 clients\n\t0 SAs\n\t0 policies\n" + zero_packet_blocks()
    )


def zero_packet_blocks() -> str:
    """The packet path's counters of a fresh daemon: every name of every protocol, at 0."""
    return "".join(
        f"{proto}:\n" + "".join(f"\t0 {name}\n" for name in sorted(names)) for proto, names in DESCRIPTIONS.items()
    )


def packet_block(text: str, proto: str) -> dict[str, int]:
    lines = text.splitlines()
    i = lines.index(f"{proto}:")
    out: dict[str, int] = {}
    for line in lines[i + 1 :]:
        if not line.startswith("\t"):
            break
        count, name = line.split()
        out[name] = int(count)
    return out


def test_stats_show_the_packet_counters(engine: KeyEngine) -> None:
    counters = engine.packet_counters
    counters.drop(Drop("esp", "badauth"))
    counters.drop(Drop("esp", "badauth"))
    counters.add("ah", "input", 5)
    counters.drop(Drop("ipcomp", "recursive"))
    counters.add("natt", "keepalive")
    text = run(engine, "stats").out
    esp = packet_block(text, "esp")
    assert esp["badauth"] == 2 and esp["replay"] == 0 and set(esp) == set(DESCRIPTIONS["esp"])
    assert packet_block(text, "ah")["input"] == 5
    assert packet_block(text, "ipcomp")["recursive"] == 1
    assert packet_block(text, "natt")["keepalive"] == 1


def test_stats_count_messages_errors_drops_clients_sas_and_policies(engine: KeyEngine) -> None:
    register(engine)  # REGISTER: reply to KM only
    spdadd(engine, PolicyType.DISCARD)  # X_SPDADD: to all 3
    add_sa(engine, 0x1000)  # ADD: to all 3
    get = Message(
        MsgType.GET,
        SaType.ESP,
        6,
        PID,
        exts=(Sa(0x9999), host(ExtType.ADDRESS_SRC, "10.0.0.1"), host(ExtType.ADDRESS_DST, "10.0.0.2")),
    )
    assert [e.errno for e in send(engine, SETKEY, get) if isinstance(e, Error)] == [errno.ESRCH]
    engine.stats.note_drop("broadcast_buffer_full", 2)  # as the shell counts them
    engine.client_closed(BYSTANDER)

    text = run(engine, "stats").out
    assert text.startswith("pfkey:\n")
    assert stats_block(text, "messages in") == (4, {"REGISTER": 1, "ADD": 1, "GET": 1, "X_SPDADD": 1})
    assert stats_block(text, "messages out") == (7, {"REGISTER": 1, "ADD": 3, "X_SPDADD": 3})
    assert stats_block(text, "errors") == (1, {"ESRCH": 1})
    assert stats_block(text, "drops") == (2, {"broadcast_buffer_full": 2})
    assert text.endswith("\t2 clients\n\t1 SAs\n\t1 policies\n" + zero_packet_blocks())


def test_stats_count_the_acquires_a_lookup_sends(engine: KeyEngine) -> None:
    register(engine)
    spdadd(engine, PolicyType.IPSEC, requests=[esp_transport(Level.REQUIRE)])
    run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2")
    assert stats_block(run(engine, "stats").out, "messages out")[1]["ACQUIRE"] == 1


def test_stats_takes_no_arguments_but_json_or_prometheus(engine: KeyEngine) -> None:
    for args in (["-v"], ["--prometheus", "-v"], ["--prom"], ["--json", "--prometheus"]):
        out = run(engine, "stats", *args)
        assert (out.status, out.out, out.err) == (64, "", "usage: pfkeyd stats [--json | --prometheus]\n")
    out = run(engine, "stats", "--prometheus")
    assert out.status == 0 and out.out.startswith("# HELP pfkeyd_messages_received_total ")


def test_stats_json_is_the_same_counters_machine_readable(engine: KeyEngine) -> None:
    import json

    register(engine)
    spdadd(engine, PolicyType.IPSEC, requests=[esp_transport(Level.REQUIRE)])
    run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2")
    engine.packet_counters.add("esp", "badauth", 3)
    doc = json.loads(run(engine, "stats", "--json").out)
    assert doc["pfkey"]["messages_out"]["ACQUIRE"] == 1
    assert doc["pfkey"]["policies"] == 1
    assert doc["packets"]["esp.badauth"] == 3
    assert doc["dataplane"] is None  # no data plane in this daemon


def test_an_unknown_control_command_is_a_usage_error(engine: KeyEngine) -> None:
    for argv in (["frobnicate"], []):
        out = control.run(engine, argv, at(1))
        assert out.status == 64 and out.out == ""
        assert "sysctl, stats, lookup" in out.err


# ------------------------------------------------------------------ lookup: parsing


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["out", "10.0.0.1"], 64, "usage: pfkeyd lookup DIR SRC DST [PROTO [SPORT DPORT]]"),
        (["out", "10.0.0.1", "10.0.0.2", "tcp", "80"], 64, "usage: pfkeyd lookup"),
        (["out", "10.0.0.1", "10.0.0.2", "tcp", "1", "2", "3"], 64, "usage: pfkeyd lookup"),
        (["sideways", "10.0.0.1", "10.0.0.2"], 1, "pfkeyd lookup: bad direction 'sideways' (in, out or fwd)"),
        (["out", "10.0.0.300", "10.0.0.2"], 1, "pfkeyd lookup: bad address '10.0.0.300'"),
        (["out", "10.0.0.1", "host.example"], 1, "pfkeyd lookup: bad address 'host.example'"),
        (["out", "10.0.0.1", "2001:db8::2"], 1, "pfkeyd lookup: source and destination must be of one address family"),
        (["out", "10.0.0.1", "10.0.0.2", "nosuchproto"], 1, "pfkeyd lookup: bad protocol 'nosuchproto'"),
        (["out", "10.0.0.1", "10.0.0.2", "256"], 1, "pfkeyd lookup: bad protocol '256'"),
        (["out", "10.0.0.1", "10.0.0.2", "-1"], 1, "pfkeyd lookup: bad protocol '-1'"),
        (["out", "10.0.0.1", "10.0.0.2", "tcp", "1", "65536"], 1, "pfkeyd lookup: ports (or icmp type and code)"),
        (["out", "10.0.0.1", "10.0.0.2", "tcp", "x", "22"], 1, "pfkeyd lookup: ports (or icmp type and code)"),
        (["out", "10.0.0.1", "10.0.0.2", "tcp", "-1", "22"], 1, "pfkeyd lookup: ports (or icmp type and code)"),
        (["out", "10.0.0.1", "10.0.0.2", "tcp", "\u00b2", "22"], 1, "pfkeyd lookup: ports (or icmp type and code)"),
        (["out", "10.0.0.1", "10.0.0.2", "\u00b2"], 1, "pfkeyd lookup: bad protocol"),
    ],
)
def test_lookup_refuses_bad_arguments(engine: KeyEngine, argv: list[str], status: int, message: str) -> None:
    out = run(engine, "lookup", *argv)
    assert (out.status, out.out, out.effects) == (status, "", ())
    assert out.err.startswith(message) and out.err.endswith("\n") and out.err.count("\n") == 1


def test_lookup_parses_protocol_names_numbers_and_ports() -> None:
    src, dst = SockAddr.parse("10.0.0.1"), SockAddr.parse("10.0.0.2")
    assert control.parse_flow(["in", "10.0.0.1", "10.0.0.2"])[0] == Direction.INBOUND
    assert control.parse_flow(["fwd", "10.0.0.1", "10.0.0.2"])[0] == Direction.FWD
    _, flow = control.parse_flow(["out", "10.0.0.1", "10.0.0.2", "TCP", "40000", "22"])
    assert (flow.src, flow.dst, flow.proto, flow.sport, flow.dport) == (src, dst, IpProto.TCP, 40000, 22)
    assert control.parse_flow(["out", "10.0.0.1", "10.0.0.2", "17"])[1].proto == IpProto.UDP
    assert control.parse_flow(["out", "10.0.0.1", "10.0.0.2", "icmp", "8", "0"])[1].sport == 8
    _, flow6 = control.parse_flow(["out", "2001:db8::1", "2001:db8::2", "icmp6", "128", "0"])
    assert (flow6.proto, flow6.sport, flow6.dport) == (IpProto.IPV6_ICMP, 128, 0)
    assert control.parse_flow(["out", "10.0.0.1", "10.0.0.2"])[1].proto == IpProto.ANY


# ------------------------------------------------------------------ lookup: decisions


def test_lookup_without_a_policy_follows_def_policy(engine: KeyEngine) -> None:
    out = run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2", "tcp", "40000", "22")
    assert (out.status, out.err, out.effects) == (0, "", ())
    assert out.out == (
        "no policy matches: default policy none (net.inet.ipsec.def_policy=1)\ndecision: pass (sent in the clear)\n"
    )
    engine.set_knob("net.inet.ipsec.def_policy", 0)
    out = run(engine, "lookup", "in", "10.0.0.1", "10.0.0.2")
    assert out.out == ("no policy matches: default policy discard (net.inet.ipsec.def_policy=0)\ndecision: discard\n")


def test_lookup_of_a_discard_policy(engine: KeyEngine) -> None:
    pid = spdadd(engine, PolicyType.DISCARD)
    out = run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2", "udp", "500", "500")
    assert out.out == f"policy {pid}: out discard priority 0x0\ndecision: discard\n"
    assert out.effects == ()


def test_lookup_of_a_none_policy_passes_even_when_def_policy_discards(engine: KeyEngine) -> None:
    engine.set_knob("net.inet.ipsec.def_policy", 0)
    pid = spdadd(engine, PolicyType.NONE, direction=Direction.INBOUND)
    out = run(engine, "lookup", "in", "10.0.0.1", "10.0.0.2")
    assert out.out == f"policy {pid}: in none priority 0x0\ndecision: pass (sent in the clear)\n"


def test_lookup_of_an_ipsec_policy_with_an_sa_names_its_spi(engine: KeyEngine) -> None:
    register(engine)
    pid = spdadd(engine, PolicyType.IPSEC, requests=[esp_transport(Level.REQUIRE)])
    add_sa(engine, 0x12345)
    out = run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2", "tcp", "40000", "22")
    assert out.out == (
        f"policy {pid}: out ipsec priority 0x0\n"
        "  esp/transport//require (level require): SA spi 0x00012345 (mature)\n"
        "decision: ipsec (protected by the SAs above)\n"
    )
    assert out.effects == ()  # an SA exists: no ACQUIRE


def test_lookup_without_an_sa_sends_one_acquire_then_reports_it_pending(engine: KeyEngine) -> None:
    register(engine)
    pid = spdadd(engine, PolicyType.IPSEC, requests=[esp_transport(Level.REQUIRE)])
    first = run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2", t=1)
    (acq,) = acquires(first.effects)
    assert acq.to == (KM,)  # the registered key manager only
    assert first.out == (
        f"policy {pid}: out ipsec priority 0x0\n"
        f"  esp/transport//require (level require): no SA: ACQUIRE sent (seq {acq.msg.seq})"
        " to 1 registered key manager\n"
        "decision: discard (held back until an SA exists)\n"
    )
    # Paced by net.key.blockacq_count: the next triggers send nothing.
    second = run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2", t=2)
    assert second.effects == ()
    assert "  esp/transport//require (level require): no SA: ACQUIRE already pending\n" in second.out
    assert second.out.endswith("decision: discard (held back until an SA exists)\n")


def test_lookup_sends_no_acquire_when_no_key_manager_is_registered(engine: KeyEngine) -> None:
    spdadd(engine, PolicyType.IPSEC, requests=[esp_transport(Level.REQUIRE)])
    out = run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2")
    assert acquires(out.effects) == []
    assert out.out.endswith("decision: discard (held back until an SA exists)\n")


def test_lookup_at_level_use_without_an_sa_passes_in_the_clear(engine: KeyEngine) -> None:
    register(engine)
    spdadd(engine, PolicyType.IPSEC, requests=[esp_transport(Level.USE)])
    out = run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2")
    assert len(acquires(out.effects)) == 1  # a USE request still asks for an SA
    assert "(level use): no SA: ACQUIRE sent (seq " in out.out
    assert out.out.endswith("decision: ipsec where SAs exist; the rest passes in the clear (level use)\n")


def test_lookup_resolves_level_default_through_the_deflev_knob(engine: KeyEngine) -> None:
    spdadd(engine, PolicyType.IPSEC, requests=[esp_transport(Level.DEFAULT)])
    out = run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2")
    assert "esp/transport//default (level use)" in out.out
    assert run(engine, "sysctl", "net.inet.ipsec.esp_trans_deflev=2").status == 0
    out = run(engine, "lookup", "out", "10.0.0.1", "10.0.0.2")
    assert "esp/transport//default (level require)" in out.out
    assert out.out.endswith("decision: discard (held back until an SA exists)\n")


def test_lookup_of_an_inbound_require_policy_without_an_sa_discards_and_asks_nobody(engine: KeyEngine) -> None:
    register(engine)
    pid = spdadd(
        engine,
        PolicyType.IPSEC,
        direction=Direction.INBOUND,
        src="10.0.0.2",
        dst="10.0.0.1",
        requests=[esp_transport(Level.REQUIRE)],
    )
    out = run(engine, "lookup", "in", "10.0.0.2", "10.0.0.1")
    assert out.out == (
        f"policy {pid}: in ipsec priority 0x0\n"
        "  esp/transport//require (level require): no SA\n"
        "decision: discard (a clear packet where IPsec is required)\n"
    )
    assert out.effects == ()  # inbound traffic never triggers an ACQUIRE


def test_lookup_names_tunnel_endpoints(engine: KeyEngine) -> None:
    tunnel = IpsecRequest(
        IpProto.ESP, Mode.TUNNEL, Level.REQUIRE, 0, SockAddr.parse("192.0.2.1"), SockAddr.parse("192.0.2.2")
    )
    spdadd(engine, PolicyType.IPSEC, src="10.1.0.0", dst="10.2.0.0", requests=[tunnel])
    add_sa(engine, 0x7000, "192.0.2.1", "192.0.2.2")
    out = run(engine, "lookup", "out", "10.1.0.0", "10.2.0.0")
    assert "  esp/tunnel/192.0.2.1-192.0.2.2/require (level require): SA spi 0x00007000 (mature)\n" in out.out
    assert out.out.endswith("decision: ipsec (protected by the SAs above)\n")


# ------------------------------------------------------------------ dialect


def test_dialect_answers_the_dialect_of_the_socket_asked() -> None:
    engine = KeyEngine(rng=random.Random(1))
    now = Instant(0.0, 0)
    for dialect in Dialect:
        assert control.run(engine, ["dialect"], now, dialect) == Outcome(0, f"{dialect.value}\n")
    assert control.run(engine, ["dialect"], now) == Outcome(
        1, err="dialect: this control socket belongs to no PF_KEY socket\n"
    )
    assert control.run(engine, ["dialect", "x"], now, Dialect.LINUX).status == 64
    unknown = control.run(engine, ["nope"], now, Dialect.LINUX)
    assert unknown.err == "unknown control command; one of: sysctl, stats, lookup, dialect\n"
