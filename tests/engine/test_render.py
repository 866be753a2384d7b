"""The fast SADB_DUMP renderer gives exactly the bytes of the generic path."""

from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pfkeyd.engine import render_sa, render_sa_fast, sa_message
from pfkeyd.sad import NatT, SaIndex, SecAssoc, Usage
from pfkeyd.wire import AuthAlg, Dialect, EncAlg, ExtType, Key, Lifetime, Mode, MsgType, SaState, SaType, SockAddr
from pfkeyd.wire import encode as wire_encode

ADDRS = [
    SockAddr(IPv4Address("192.0.2.1")),
    SockAddr(IPv4Address("10.9.8.7")),
    SockAddr(IPv6Address("2001:db8::1")),
    SockAddr(IPv6Address("fe80::1"), 0, 0, 3),
]


@st.composite
def sas(draw: st.DrawFn) -> SecAssoc:
    v6 = draw(st.booleans())
    src, dst = (ADDRS[2], ADDRS[3]) if v6 else (ADDRS[0], ADDRS[1])
    satype = draw(st.sampled_from([SaType.ESP, SaType.AH, SaType.X_IPCOMP]))
    index = SaIndex(
        50, draw(st.sampled_from([Mode.ANY, Mode.TRANSPORT, Mode.TUNNEL])), draw(st.integers(0, 0xFFFF)), src, dst
    )
    key_len = draw(st.integers(0, 40))
    hard = draw(
        st.one_of(
            st.none(),
            st.builds(
                Lifetime,
                st.just(ExtType.LIFETIME_HARD),
                st.integers(0, 9),
                st.integers(0, 2**40),
                st.integers(0, 9999),
                st.integers(0, 9999),
            ),
        )
    )
    soft = None if hard is None else replace(hard, exttype=ExtType.LIFETIME_SOFT)
    return SecAssoc(
        draw(st.integers(0x100, 0xFFFFFFFF)),
        satype,
        index,
        draw(st.sampled_from([SaState.LARVAL, SaState.MATURE, SaState.DYING])),
        draw(st.sampled_from([AuthAlg.NONE, AuthAlg.X_SHA2_256, AuthAlg.X_AES128GMAC, AuthAlg.X_SM3_256HMAC])),
        draw(st.sampled_from([EncAlg.X_AESCBC, EncAlg.NULL, EncAlg.X_CHACHA20POLY1305, EncAlg.X_AES_CCM_ICV8])),
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 255)),
        draw(st.sampled_from([0, 64, 4096])),
        draw(st.one_of(st.none(), st.just(Key(ExtType.KEY_AUTH, bytes(range(key_len)))))),
        draw(st.one_of(st.none(), st.just(Key(ExtType.KEY_ENCRYPT, bytes(key_len))))),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 2**32 - 1)),
        1.0,
        draw(st.integers(0, 2**40)),
        hard,
        soft,
        draw(st.one_of(st.none(), st.just(NatT(2, 4500, 4501)))),
        draw(
            st.one_of(
                st.none(),
                st.builds(
                    Usage,
                    st.integers(0, 2**40),
                    st.integers(0, 2**31),
                    st.just(None),
                    st.integers(0, 2**40),
                    st.integers(0, 2**40),
                ),
            )
        ),
    )


def generic(sa: SecAssoc, dialect: Dialect, seq: int, pid: int) -> bytes | None:
    try:
        return wire_encode(sa_message(sa, MsgType.DUMP, seq, pid, dialect), dialect)
    except ValueError:
        return None


@pytest.mark.parametrize("dialect", list(Dialect))
@given(sa=sas(), seq=st.integers(0, 2**32 - 1), pid=st.integers(0, 2**32 - 1))
def test_fast_rendering_equals_the_generic_encoding(dialect: Dialect, sa: SecAssoc, seq: int, pid: int) -> None:
    fast = render_sa_fast(sa, dialect, seq, pid)
    slow = generic(sa, dialect, seq, pid)
    if fast is not None:
        assert fast == slow
    if slow is not None:
        assert render_sa(sa, dialect, seq, pid) == slow


def test_the_common_shape_takes_the_fast_path() -> None:
    sa = SecAssoc(
        0x1234,
        SaType.ESP,
        SaIndex(50, Mode.TRANSPORT, 0, ADDRS[0], ADDRS[1]),
        SaState.MATURE,
        AuthAlg.X_SHA2_256,
        EncAlg.X_AESCBC,
        0x40,
        4,
        0,
        Key(ExtType.KEY_AUTH, bytes(32)),
        Key(ExtType.KEY_ENCRYPT, bytes(16)),
        0,
        1,
        1.0,
        1_700_000_000,
    )
    for dialect in Dialect:
        assert render_sa_fast(sa, dialect, 5, random.Random(1).randrange(9)) is not None
