"""The formatter inverts the parser: parse(format(cmd)) == [cmd] for generated
commands of every kind; and the fast driver agrees with lark's own parser on
the scripts they make."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pfkeyd import algorithms as alg
from pfkeyd.wire.constants import Direction, IpProto, Level, Mode, PolicyType, SaFlag
from setkey.commands import (
    Add,
    AddrFlags,
    Algorithms,
    AlgSpec,
    Command,
    Delete,
    DeleteAll,
    Dump,
    Endpoints,
    Exit,
    Flush,
    Get,
    GetSpi,
    Host,
    NatT,
    Policy,
    Proto,
    Request,
    SaOptions,
    SecContext,
    SpdAdd,
    SpdDelete,
    SpdDump,
    SpdFlush,
    SpdTagged,
    SpdUpdate,
    Update,
)
from setkey.formatter import format, format_policy, format_script
from setkey.parser import fast_policy_parser, fast_setkey_parser, parse, parse_with_recovery, policy_grammar

U16 = 0xFFFF
U32 = 0xFFFFFFFF

# ------------------------------------------------------------------ strategies

ipv4 = st.builds(IPv4Address, st.integers(0, U32))
ipv6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
scoped = st.builds(lambda a, zone: IPv6Address(f"{a}%{zone}"), ipv6, st.sampled_from(["em0", "eth1", "7"]))
names = st.sampled_from(
    [
        "host",
        "gw-1.example.net",
        "a",
        "esp",
        "ah",
        "any",
        "tunnel",
        "transport",
        "add",
        "deflate",
        "in",
        "out",
        "me",
        "unique",
        "esp-udp",
        "spdadd",
        "x1",
        "node.example.",
        "zero-pad",
    ]
)
host_names = st.one_of(names, ipv4.map(str), ipv6.map(str), scoped.map(str))
services = st.sampled_from(["ntp", "l2tp", "isakmp", "domain"])
ports = st.one_of(st.just(0), st.integers(1, U16), services)


@st.composite
def hosts(draw: st.DrawFn, *, port: bool = True, prefix: bool = False) -> Host:
    return Host(
        draw(host_names),
        draw(ports) if port else 0,
        draw(st.one_of(st.none(), st.integers(0, 128))) if prefix else None,
    )


flags = st.builds(AddrFlags, st.sampled_from([0, 4, 6]), st.booleans())
keys = st.one_of(st.none(), st.binary(max_size=40))
labels = st.text(st.characters(codec="ascii", exclude_characters='"\x00'), max_size=30)


def alg_names(kind: alg.Kind) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted({n for a in alg.algorithms(kind) for n in a.names}))


algorithm_sets = st.one_of(
    st.builds(
        lambda e, a: Algorithms(encrypt=e, auth=a),
        st.builds(AlgSpec, alg_names(alg.Kind.ENCRYPT), keys),
        st.one_of(st.none(), st.builds(AlgSpec, alg_names(alg.Kind.AUTH), keys)),
    ),
    st.builds(lambda a: Algorithms(auth=a), st.builds(AlgSpec, alg_names(alg.Kind.AUTH), keys)),
    st.builds(lambda c, r: Algorithms(compress=AlgSpec(c), rawcpi=r), alg_names(alg.Kind.COMPRESS), st.booleans()),
)


@st.composite
def sa_options(draw: st.DrawFn, proto: Proto) -> SaOptions:
    maybe = st.one_of(st.just(0), st.integers(1, 2**64 - 1))
    return SaOptions(
        mode=draw(st.sampled_from([Mode.ANY, Mode.TRANSPORT, Mode.TUNNEL])),
        reqid=draw(st.integers(0, U32)),
        replay=0 if proto.old else draw(st.integers(0, U32)),
        pad=draw(st.sampled_from([0, SaFlag.X_EXT_PRAND, SaFlag.X_EXT_PZERO, SaFlag.X_EXT_PRAND | SaFlag.X_EXT_PZERO])),
        cyclic_seq=draw(st.booleans()),
        lifetime_hard=draw(maybe),
        lifetime_soft=draw(maybe),
        bytes_hard=draw(maybe),
        bytes_soft=draw(maybe),
        context=draw(st.one_of(st.none(), st.builds(SecContext, st.integers(0, 255), st.integers(0, 255), labels))),
        natt=draw(
            st.one_of(
                st.none(),
                st.builds(NatT, hosts(port=False), st.integers(0, U16), hosts(port=False), st.integers(0, U16)),
            )
        ),
        natt_mtu=draw(st.one_of(st.none(), st.integers(0, U16))),
        esn=draw(st.booleans()),
        hwif=draw(st.one_of(st.none(), st.sampled_from(["em0", "vlan0.100", "ix1", "lagg-2"]))),
    )


@st.composite
def sa_statements(draw: st.DrawFn) -> Command:
    classes: list[type[Add] | type[Update] | type[GetSpi] | type[Get] | type[Delete]] = [
        Add,
        Update,
        GetSpi,
        Get,
        Delete,
    ]
    cls = draw(st.sampled_from(classes))
    proto = draw(st.sampled_from(list(Proto)))
    fields: dict[str, Any] = {
        "flags": draw(flags),
        "src": draw(hosts()),
        "dst": draw(hosts()),
        "proto": proto,
        "natt_oa": draw(st.one_of(st.none(), hosts(port=False))) if proto is Proto.ESP_UDP else None,
        "spi": draw(st.integers(0, U32)),
        "options": draw(sa_options(proto)),
    }
    if cls in (Add, Update):
        fields["algorithms"] = draw(algorithm_sets)
    return cls(**fields)


@st.composite
def requests(draw: st.DrawFn, direction: Direction, action: PolicyType) -> Request:
    proto = draw(st.sampled_from([IpProto.ESP, IpProto.AH, IpProto.IPCOMP, IpProto.TCP]))
    mode = draw(st.sampled_from([Mode.TRANSPORT, Mode.TUNNEL]))
    level = draw(st.sampled_from(list(Level)))
    reqid = draw(st.integers(1, U32)) if level == Level.UNIQUE and draw(st.booleans()) else 0
    anchors = (
        [""]
        + (["me-any"] if direction == Direction.OUTBOUND else [])
        + (["any-me"] if direction == Direction.INBOUND else [])
    )
    choice = draw(st.sampled_from(["ends", "none", "anchor"]))
    if action == PolicyType.IPSEC and mode == Mode.TUNNEL:
        choice = "ends"
    if choice == "ends":
        families: list[st.SearchStrategy[IPv4Address | IPv6Address]] = [ipv4, st.one_of(ipv6, scoped)]
        family = draw(st.sampled_from(families))
        with_ports = draw(st.booleans())
        ends = Endpoints(
            draw(family),
            draw(family),
            draw(st.integers(0, U16)) if with_ports else 0,
            draw(st.integers(1, U16)) if with_ports else 0,
        )
        return Request(proto, mode, level, reqid, ends)
    if choice == "anchor":
        return Request(proto, mode, level, reqid, None, draw(st.sampled_from(anchors)))
    return Request(proto, mode, level, reqid)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    direction = draw(st.sampled_from([Direction.INBOUND, Direction.OUTBOUND, Direction.FWD]))
    if draw(st.integers(0, 5)) == 0:
        return Policy(direction)
    action = draw(st.sampled_from(list(PolicyType)))
    priority = draw(st.one_of(st.none(), st.integers(0, U32)))
    reqs = draw(st.lists(requests(direction, action), max_size=3))
    return Policy(direction, action, priority, tuple(reqs))


@st.composite
def upper_layers(draw: st.DrawFn) -> tuple[int, tuple[int, int] | None]:
    proto = draw(st.integers(0, 255))
    if proto in (1, 58, 135) and draw(st.booleans()):
        return proto, (draw(st.integers(0, 255)), draw(st.integers(0, 255)))
    if proto == 47 and draw(st.booleans()):
        return proto, (draw(st.integers(0, U16)), draw(st.integers(0, U16)))
    return proto, None


@st.composite
def spd_statements(draw: st.DrawFn) -> Command:
    classes: list[type[SpdAdd] | type[SpdUpdate] | type[SpdDelete]] = [SpdAdd, SpdUpdate, SpdDelete]
    cls = draw(st.sampled_from(classes))
    upper, upper_ports = draw(upper_layers())
    return cls(
        flags=draw(flags),
        src=draw(hosts(prefix=True)),
        dst=draw(hosts(prefix=True)),
        upper=upper,
        upper_ports=upper_ports,
        context=draw(st.one_of(st.none(), st.builds(SecContext, st.integers(0, 255), st.integers(0, 255), labels))),
        policy=draw(policies()),
    )


commands = st.one_of(
    sa_statements(),
    spd_statements(),
    st.builds(
        lambda f, s, d, p: DeleteAll(flags=f, src=s, dst=d, proto=p),
        flags,
        hosts(port=False),
        hosts(port=False),
        st.sampled_from([p for p in Proto if p is not Proto.ESP_UDP]),
    ),
    st.builds(lambda p: Flush(proto=p), st.sampled_from(list(Proto))),
    st.builds(lambda p: Dump(proto=p), st.sampled_from(list(Proto))),
    st.builds(
        lambda k, t, p: SpdTagged(keyword=k, tag=t, policy=p),
        st.sampled_from(["spdadd", "spdupdate"]),
        labels,
        policies(),
    ),
    st.just(SpdFlush()),
    st.just(SpdDump()),
    st.just(Exit()),
)


# ------------------------------------------------------------------ properties

_OUTSIDE_QUOTES = re.compile(r' (?=(?:[^"]*"[^"]*")*[^"]*$)')


@settings(max_examples=500)
@given(commands)
def test_parse_inverts_format(cmd: Command) -> None:
    text = format(cmd)
    assert parse(text) == [cmd], text


@settings(max_examples=100)
@given(st.lists(commands, min_size=1, max_size=8), st.sampled_from([" ", "\n", "\n  # note\n\t"]))
def test_fast_driver_and_lark_agree_on_scripts(cmds: list[Command], joint: str) -> None:
    # blanks between words (not inside quotes) become the joint too
    text = joint.join(_OUTSIDE_QUOTES.sub(joint, format(c)) for c in cmds)
    fast = fast_setkey_parser().parse(text)
    slow, errors = parse_with_recovery(text)
    assert errors == []
    assert fast == slow == cmds
    assert [(c.line, c.column) for c in fast] == [(c.line, c.column) for c in slow]


def test_format_script_round_trips() -> None:
    text = (
        "add -4n 10.0.0.1[4500] gw.example esp-udp 192.0.2.9 0x1000 -m tunnel -u 5 -r 4 -f random-pad"
        ' -f nocyclic-seq -lh 10 -ls 5 -ctx 1 2 "l" -E aes-cbc 0x00112233 -A null;\n'
        "spdadd 10.0.0.0/24[any] ::/0[ntp] icmp6 135,0 -P out prio low - 7 ipsec"
        " esp/tunnel/fe80::1%em0[500]-fe80::2%em0[4500]/unique:9 ah/transport/me-any/use;\n"
    )
    cmds = parse(text)
    assert parse(format_script(cmds)) == cmds
    assert format_script(cmds).splitlines()[1] == (
        "spdadd 10.0.0.0/24 ::/0[ntp] icmp6 135,0 -P out prio low - 7 ipsec"
        " esp/tunnel/fe80::1%em0[500]-fe80::2%em0[4500]/unique:9 ah/transport/me-any/use;"
    )
    assert str(ip_address("fe80::1%em0")) == "fe80::1%em0"


@settings(max_examples=300)
@given(policies())
def test_both_policy_parsers_read_a_formatted_policy_back(policy: Policy) -> None:
    text = format_policy(policy)
    # The fast driver must not give up on a valid policy (it would fall back
    # to lark silently), and lark's own parser must agree with it.
    assert fast_policy_parser().parse(text) == policy
    assert policy_grammar().parse(text) == policy
