"""The harness itself: the two hosts talk over the veth, and nothing outlives them."""

from __future__ import annotations

import os
import socket

import trio

from tests.netns import NETNS_DIR, Pair, root_snapshot


async def _udp_exchange(p: Pair, family: int, dst: str) -> bytes:
    with p.b.inside():
        rx = trio.socket.socket(family, socket.SOCK_DGRAM)
    with p.a.inside():
        tx = trio.socket.socket(family, socket.SOCK_DGRAM)
    with rx, tx:
        await rx.bind((dst, 0))
        port = rx.getsockname()[1]
        await tx.sendto(b"hello", (dst, port))
        data, _ = await rx.recvfrom(100)
    return data


async def test_hosts_reach_each_other_over_ipv4_and_ipv6(netpair: Pair) -> None:
    assert await _udp_exchange(netpair, socket.AF_INET, Pair.V4[1]) == b"hello"
    assert await _udp_exchange(netpair, socket.AF_INET6, Pair.V6[1]) == b"hello"


def test_commands_run_inside_the_namespace(netpair: Pair) -> None:
    out = netpair.a.python("import socket; print(sorted(n for _, n in socket.if_nameindex()))").stdout
    assert out.strip() == "['lo', 'o0']"
    assert netpair.b.call(lambda: sorted(n for _, n in socket.if_nameindex())) == ["lo", "o0"]
    # the thread is back in the root namespace afterwards
    assert "o0" not in [n for _, n in socket.if_nameindex()]


def test_namespaces_are_removed_even_when_the_test_fails() -> None:
    from tests.netns import skip_reason

    reason = skip_reason()
    if reason:
        import pytest

        pytest.skip(reason)
    before = root_snapshot()
    names: list[str] = []
    try:
        from tests.netns import pair

        with pair() as p:
            names = [p.a.name, p.b.name]
            raise RuntimeError("the test failed")
    except RuntimeError:
        pass
    assert names and not any(os.path.exists(f"{NETNS_DIR}/{n}") for n in names)
    assert root_snapshot() == before


def test_stale_namespaces_of_dead_runs_are_swept(netpair: Pair) -> None:
    from pyroute2 import netns

    from tests.netns import PREFIX

    # a pid that cannot exist (above pid_max)
    stale = f"{PREFIX}99999999-0-a"
    netns.create(stale)
    try:
        Pair().remove()
        assert not os.path.exists(f"{NETNS_DIR}/{stale}")
    finally:
        if os.path.exists(f"{NETNS_DIR}/{stale}"):
            netns.remove(stale)


def test_skip_reason_names_the_refusal_where_namespaces_are_not_permitted() -> None:
    import pytest

    from tests.caps import run_without
    from tests.netns import skip_reason

    if skip_reason():
        pytest.skip("namespaces are not permitted here at all")
    # CAP_SYS_ADMIN (21) is what creating and mounting a namespace takes
    out = run_without((21,), "from tests.netns import skip_reason; print(skip_reason())").stdout
    assert out.startswith("cannot create a network namespace:")
    assert "Errno 1" in out  # EPERM
