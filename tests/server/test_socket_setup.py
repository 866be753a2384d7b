"""Setting up a socket file cannot be redirected, and a directory where another user
could replace it is refused.

The racing test repoints a symlinked socket directory between a directory of our
own and one holding a victim file of the socket's name, from another process, in a
tight loop, while the daemon starts over and over: no start may change the
victim's mode, owner or ACL.  (Before the fix, chmod/chown followed the path
after bind() and did.)
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import subprocess
import sys

import pytest
import trio

from pfkeyd.server import SUN_PATH_MAX, Endpoint, Server, ServerError, socket_acl
from pfkeyd.wire import Dialect, Message, MsgType
from tests.server.peers import FakeEngine, Peer
from tests.server.test_sockets import echo

LINUX = Dialect.LINUX


async def _start_and_stop(path: str, *, probe: bool = True, **kwargs: object) -> str | None:
    """Start a server on ``path``; None if it started (and served a request, if
    ``probe``), else its ServerError."""
    server = Server(FakeEngine(echo), [Endpoint(path, LINUX)], **kwargs)  # type: ignore[arg-type]  # a fake engine
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            if probe:
                peer = Peer(path, LINUX)
                await peer.send(Message(MsgType.FLUSH, 0, 1))
                assert (await peer.recv()).seq == 1
                peer.close()
            server.stop()
    except BaseExceptionGroup as group:
        refused = group.subgroup(ServerError)
        if refused is None:
            raise
        first: BaseException = refused
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        return str(first)
    return None


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o2777])
def test_a_directory_others_may_write_without_the_sticky_bit_is_refused(sockdir: str, mode: int) -> None:
    os.chmod(sockdir, mode)
    error = trio.run(_start_and_stop, f"{sockdir}/p.sock")
    assert error is not None and "other users may write to this directory" in error
    assert f"mode {mode & 0o7777:04o}" in error
    assert os.listdir(sockdir) == []  # nothing was made there


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o1777, 0o1770])
def test_a_directory_only_its_owner_can_write_or_a_sticky_one_is_used(sockdir: str, mode: int) -> None:
    os.chmod(sockdir, mode)
    assert trio.run(_start_and_stop, f"{sockdir}/p.sock") is None
    assert os.listdir(sockdir) == []  # the socket is removed on stop, the private directory at once


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_owned_by_another_user_is_refused(sockdir: str) -> None:
    os.chown(sockdir, 4242, -1)
    error = trio.run(_start_and_stop, f"{sockdir}/p.sock")
    assert error is not None and "owned by uid 4242, who could replace the socket" in error


def test_the_socket_gets_its_mode_before_it_appears_and_no_private_directory_stays(sockdir: str) -> None:
    async def main() -> None:
        server = Server(FakeEngine(echo), [Endpoint(f"{sockdir}/p.sock", LINUX)])
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            assert os.listdir(sockdir) == ["p.sock"]
            st = os.lstat(f"{sockdir}/p.sock")
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 1
            server.stop()

    trio.run(main)


def test_a_path_that_fits_the_file_system_but_not_sun_path_is_refused(sockdir: str) -> None:
    path = f"{sockdir}/" + "x" * (SUN_PATH_MAX + 1 - len(sockdir) - 1)
    assert len(path) == SUN_PATH_MAX + 1
    error = trio.run(_start_and_stop, path)
    assert error is not None and f"too long for a Unix socket (at most {SUN_PATH_MAX} bytes)" in error


_RACER = """
import os, sys
link, a, b = sys.argv[1:4]
tmp = link + ".new"
while True:
    for target in (a, b):
        try:
            os.symlink(target, tmp)
            os.rename(tmp, link)
        except FileExistsError:
            os.unlink(tmp)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
def test_a_racing_renamer_cannot_redirect_the_setup_to_another_file(sockdir: str) -> None:
    good, other = f"{sockdir}/good", f"{sockdir}/other"
    os.mkdir(good, 0o755)
    os.mkdir(other, 0o755)
    victim = f"{other}/p.sock"  # a file of the socket's name where the directory may lead
    with open(victim, "w") as fh:
        fh.write("precious")
    os.chmod(victim, 0o644)
    before = os.lstat(victim)
    link = f"{sockdir}/dir"
    os.symlink(good, link)
    racer = subprocess.Popen([sys.executable, "-c", _RACER, link, good, other])
    outcomes: dict[str, int] = {}
    try:
        for _ in range(150):
            error = trio.run(_start_with_group, f"{link}/p.sock")
            key = "served" if error is None else error.split(": ", 1)[1][:40]
            outcomes[key] = outcomes.get(key, 0) + 1
            after = os.lstat(victim)
            assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == (
                stat.S_IMODE(before.st_mode),
                before.st_uid,
                before.st_gid,
            ), outcomes
            with pytest.raises(OSError):
                os.getxattr(victim, "system.posix_acl_access")
    finally:
        racer.kill()
        racer.wait()
    with open(victim) as fh:
        assert fh.read() == "precious"
    assert outcomes.get("served", 0) > 0, outcomes  # the race was run, not just refused
    assert os.listdir(good) == [] and os.listdir(other) == ["p.sock"]


async def _start_with_group(path: str) -> str | None:
    # The path leads elsewhere from one moment to the next: no request through it.
    return await _start_and_stop(path, probe=False, group=4242, allow_uids=[4343])


# ------------------------------------------------------------------ --allow-uid


_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("connect", exc.errno)
    sys.exit(0)
s.send(bytes([2, 9, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]))  # SADB_FLUSH, seq 5
reply = s.recv(65536)
print("reply", len(reply), reply[8] if reply else None)
"""


async def _as_user(uid: int, path: str) -> str:
    result = await trio.run_process(
        ["/usr/bin/python3", "-c", _CLIENT, path], user=uid, group=uid, capture_stdout=True, capture_stderr=True
    )
    return result.stdout.decode().strip()


@pytest.mark.skipif(os.geteuid() != 0 or not hasattr(os, "setxattr"), reason="needs root and POSIX ACLs")
@pytest.mark.parametrize("group", [None, 4545])
async def test_allow_uid_makes_the_socket_reachable_by_exactly_those_users(sockdir: str, group: int | None) -> None:
    os.chmod(sockdir, 0o755)  # others may look the socket up; the file decides who may connect
    path = f"{sockdir}/p.sock"
    server = Server(FakeEngine(echo), [Endpoint(path, LINUX)], group=group, allow_uids=[4343])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        st = os.lstat(path)
        assert stat.S_IMODE(st.st_mode) == (0o600 if group is None else 0o660) | 0o060  # group bits: the mask
        assert os.getxattr(path, "system.posix_acl_access") == socket_acl(0o600 if group is None else 0o660, [4343])
        assert await _as_user(4343, path) == "reply 16 5"  # reaches the socket and is admitted
        assert await _as_user(4444, path) == "connect 13"  # EACCES: the file refuses everyone else
        assert server.statistics().refused_peers == 0
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
async def test_without_allow_uid_other_users_cannot_even_connect(sockdir: str) -> None:
    os.chmod(sockdir, 0o755)
    path = f"{sockdir}/p.sock"
    server = Server(FakeEngine(echo), [Endpoint(path, LINUX)])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        with pytest.raises(OSError):
            os.getxattr(path, "system.posix_acl_access")
        assert await _as_user(4343, path) == "connect 13"
        server.stop()


def test_the_acl_names_the_allowed_users_in_order_and_nobody_else() -> None:
    acl = socket_acl(0o600, [4343, 1000, 4343])
    (version,) = struct.unpack_from("<I", acl)
    entries = [struct.unpack_from("<HHI", acl, 4 + 8 * i) for i in range((len(acl) - 4) // 8)]
    none = 0xFFFFFFFF
    assert version == 2
    assert entries == [
        (0x01, 6, none),
        (0x02, 6, 1000),
        (0x02, 6, 4343),
        (0x04, 0, none),
        (0x10, 6, none),
        (0x20, 0, none),
    ]
    assert socket_acl(0o660, [7])[4 + 16 : 4 + 24] == struct.pack("<HHI", 0x04, 6, none)


@pytest.mark.skipif(not hasattr(os, "setxattr"), reason="POSIX ACLs are Linux's")
async def test_a_file_system_without_acls_makes_allow_uid_a_clear_start_error(
    sockdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_acls(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "setxattr", no_acls)
    path = f"{sockdir}/p.sock"
    error = await _start_and_stop(path, allow_uids=[4343])
    assert error == (
        f"{path}: cannot let the --allow-uid users reach the socket: no POSIX ACL "
        f"({os.strerror(errno.EOPNOTSUPP)}); use --group with a group of those users"
    )
    assert os.listdir(sockdir) == []
