"""Setting up pfkeyd's listening sockets: where they may live, who may reach them.

A socket file is made where no other user can redirect it (:func:`bind_privately`):
bound inside a fresh private directory, given its group, mode and ACL there, then
hard-linked into place, listening from the moment it appears.  A directory another
user could write to is refused, a stale socket left by a daemon that died is
removed, a live one is refused.  Peers are checked by their credentials
(:func:`peer_credentials`, :func:`uid_allowed`).  Nothing here knows PF_KEY.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import stat
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pfkeyd.wire import Dialect

__all__ = [
    "Endpoint",
    "Listener",
    "ServerError",
    "SUN_PATH_MAX",
    "close_listener",
    "listen",
    "peer_credentials",
    "socket_acl",
    "uid_allowed",
]

log = logging.getLogger("pfkeyd.server")

_UCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid (Linux SO_PEERCRED)
_XUCRED = struct.Struct("=II")  # struct xucred: cr_version, cr_uid (FreeBSD LOCAL_PEERCRED)
_XUCRED_SIZE = 88


class ServerError(Exception):
    """The daemon cannot start: a socket path in use, not a socket, not writable."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One listening socket: where it is and which dialect it speaks.

    ``fd`` is a socket already listening at ``path`` that was passed in (systemd
    socket activation), and ``control_fd`` that of its control socket; the server
    takes them over as they are and leaves their files in place at exit.
    """

    path: str
    dialect: Dialect
    fd: int | None = None
    control_fd: int | None = None


@dataclass(slots=True)
class Listener:
    """A listening socket and what it takes to remove its file safely."""

    endpoint: Endpoint
    sock: socket.socket
    ident: tuple[int, int]  # (st_dev, st_ino) of the socket file we made
    dir_fd: int  # the directory it is in, to remove it from there


def listen(endpoint: Endpoint, *, group: int | None, allow: Sequence[int]) -> Listener:
    """A non-blocking socket listening at ``endpoint.path``: mode 0600, or 0660 and
    owned by ``group``; ``allow`` (uids other than root and ours) get an ACL entry.
    Raises :class:`ServerError` when the path cannot be used."""
    path = endpoint.path
    if endpoint.fd is not None:
        passed = socket.socket(fileno=endpoint.fd)
        passed.setblocking(False)
        log.info("listening on %s (%s), passed in", path, endpoint.dialect.value)
        return Listener(endpoint, passed, (0, 0), -1)  # dir_fd -1: not ours to remove
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    try:
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            # The file could be made (see bind_privately), but no client could connect to it.
            msg = f"{path}: too long for a Unix socket (at most {SUN_PATH_MAX} bytes)"
            raise ServerError(msg)
        parent = os.path.dirname(os.path.abspath(path))
        _check_directory(parent, os.stat(parent))
        _clear_stale_socket(path)
        ident = bind_privately(sock, path, mode=0o600 if group is None else 0o660, group=group, allow=allow)
    except ServerError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        msg = f"{path}: {exc.strerror or exc}"
        raise ServerError(msg) from exc
    log.info("listening on %s (%s)", path, endpoint.dialect.value)
    return Listener(endpoint, sock, *ident)


def close_listener(listener: Listener) -> None:
    """Close the socket and remove its file: from the directory it was linked into,
    whatever the path leads to now, and only if it is still ours, not a successor's.
    (The caller has told trio the socket is closing.)  A socket that was passed in
    is only closed: its file belongs to whoever made it."""
    listener.sock.close()
    if listener.dir_fd < 0:
        return
    path = listener.endpoint.path
    name = os.path.basename(path)
    try:
        st = os.stat(name, dir_fd=listener.dir_fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == listener.ident:
            os.unlink(name, dir_fd=listener.dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc.strerror)
    finally:
        os.close(listener.dir_fd)


def uid_allowed(uid: int, *, own_uid: int, allow: Iterable[int] = ()) -> bool:
    """Whether a peer of ``uid`` may use the daemon: root, the daemon's user, the allow list."""
    return uid in (0, own_uid) or uid in allow


def peer_credentials(sock: socket.socket) -> tuple[int, int] | None:
    """The (pid, uid) of the process at the other end of a Unix socket, None if unknown.

    Linux: SO_PEERCRED.  FreeBSD: LOCAL_PEERCRED (xucred carries no pid before
    FreeBSD 13; -1 then).
    """
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is not None:
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, so_peercred, _UCRED.size))
        return pid, uid
    local_peercred = getattr(socket, "LOCAL_PEERCRED", None)  # pragma: no cover - FreeBSD, macOS
    if local_peercred is None:  # pragma: no cover
        return None
    raw = sock.getsockopt(0, local_peercred, _XUCRED_SIZE)  # pragma: no cover - SOL_LOCAL is 0
    version, uid = _XUCRED.unpack_from(raw)  # pragma: no cover
    return (-1, uid) if version == 0 else None  # pragma: no cover


def _check_directory(parent: str, st: os.stat_result) -> None:
    """Refuse a socket directory where another user could replace the socket file:
    writable by group or others without the sticky bit, or owned by a user other
    than root and the daemon's."""
    if not stat.S_ISDIR(st.st_mode):
        msg = f"{parent}: not a directory"
        raise ServerError(msg)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        msg = (
            f"{parent}: other users may write to this directory (mode {stat.S_IMODE(st.st_mode):04o}, "
            "no sticky bit) and could replace the socket; use a directory only its owner can write, "
            "or one with the sticky bit"
        )
        raise ServerError(msg)
    if st.st_uid not in (0, os.geteuid()):
        msg = f"{parent}: owned by uid {st.st_uid}, who could replace the socket; use a directory of your own"
        raise ServerError(msg)


#: The longest path a Unix socket address holds (sun_path is 108 bytes on Linux, 104
#: on the BSDs, with its NUL).
SUN_PATH_MAX = 107 if sys.platform.startswith("linux") else 103

#: Linux's POSIX ACL xattr (include/uapi/linux/posix_acl_xattr.h): a version word,
#: then (tag, permissions, id) entries sorted by tag and id.
_ACL_XATTR = "system.posix_acl_access"
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_ACL_NO_ID = 0xFFFFFFFF
_RW = 6


def socket_acl(mode: int, uids: Sequence[int]) -> bytes:
    """The access ACL that gives ``uids`` read and write on a socket file of ``mode``
    (0600 or 0660): the owner and the group keep their bits, nobody else gets any."""
    entries = [(_ACL_USER_OBJ, (mode >> 6) & 7, _ACL_NO_ID)]
    entries += [(_ACL_USER, _RW, uid) for uid in sorted(set(uids))]
    entries += [
        (_ACL_GROUP_OBJ, (mode >> 3) & 7, _ACL_NO_ID),
        (_ACL_MASK, _RW, _ACL_NO_ID),
        (_ACL_OTHER, 0, _ACL_NO_ID),
    ]
    return _ACL_HEADER.pack(_ACL_VERSION) + b"".join(_ACL_ENTRY.pack(*e) for e in entries)


def bind_privately(
    sock: socket.socket, path: str, *, mode: int, group: int | None, allow: Sequence[int]
) -> tuple[tuple[int, int], int]:
    """Bind ``sock`` to ``path`` and listen, so that nothing done to the file can be redirected.

    The socket is bound inside a new directory of mode 0700 beside ``path``, which
    no other user can enter or change; it gets its group, mode and (for ``allow``,
    the --allow-uid users) an ACL there, through a descriptor of that directory,
    and is then hard-linked to ``path``.  link() neither follows a symlink nor
    replaces anything at ``path``: a file that appeared there meanwhile is an
    error.  Returns the file's (st_dev, st_ino) and a descriptor of the directory
    it is in (the caller closes it).
    """
    parent, base = os.path.split(os.path.abspath(path))
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    done = False
    try:
        _check_directory(parent, os.fstat(parent_fd))  # the directory itself, whatever its path leads to now
        for _ in range(100):
            private = f".pfk{secrets.token_hex(3)}"
            try:
                os.mkdir(private, 0o700, dir_fd=parent_fd)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 collisions of 24 random bits
            msg = f"{parent}: cannot make a private directory"
            raise ServerError(msg)
        try:
            dir_fd = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            try:
                ident = _setup_in(
                    sock,
                    dir_fd,
                    os.path.join(parent, private, "s"),
                    path,
                    base,
                    parent_fd,
                    mode=mode,
                    group=group,
                    allow=allow,
                )
                done = True
                return ident, parent_fd
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink("s", dir_fd=dir_fd)
                os.close(dir_fd)
        finally:
            os.rmdir(private, dir_fd=parent_fd)
    finally:
        if not done:
            os.close(parent_fd)


def _setup_in(
    sock: socket.socket,
    dir_fd: int,
    bind_path: str,
    path: str,
    base: str,
    parent_fd: int,
    *,
    mode: int,
    group: int | None,
    allow: Sequence[int],
) -> tuple[int, int]:
    own = os.fstat(dir_fd)
    if own.st_uid != os.geteuid() or stat.S_IMODE(own.st_mode) & 0o077:
        msg = f"{path}: the private directory beside it was replaced while starting"
        raise ServerError(msg)
    sock.bind(bind_path)
    st = os.stat("s", dir_fd=dir_fd, follow_symlinks=False)  # the file bind() made, seen through our descriptor
    if not stat.S_ISSOCK(st.st_mode):  # pragma: no cover - only we can write the private directory
        msg = f"{path}: the private directory beside it was tampered with while starting"
        raise ServerError(msg)
    if group is not None:
        os.chown("s", -1, group, dir_fd=dir_fd, follow_symlinks=False)
    os.chmod("s", mode, dir_fd=dir_fd)  # no symlink can be there: the directory is ours alone
    if allow:
        _grant(path, dir_fd, mode, allow)
    # Nobody could reach the file before it is linked into place with its final
    # mode, owner and ACL, and it listens from the moment it appears.
    sock.listen(socket.SOMAXCONN)
    try:
        os.link("s", base, src_dir_fd=dir_fd, dst_dir_fd=parent_fd)
    except FileExistsError:
        msg = f"{path}: a file appeared there while starting"
        raise ServerError(msg) from None
    return st.st_dev, st.st_ino


def _grant(path: str, dir_fd: int, mode: int, allow: Sequence[int]) -> None:
    """Let the --allow-uid users reach the socket file: a POSIX ACL naming them."""
    setxattr = getattr(os, "setxattr", None)
    if setxattr is None:  # pragma: no cover - not Linux
        msg = f"{path}: --allow-uid needs POSIX ACLs (Linux) to let those users reach the socket; use --group"
        raise ServerError(msg)
    try:
        # /proc/self/fd/N is our private directory itself, whatever its path now.
        setxattr(f"/proc/self/fd/{dir_fd}/s", _ACL_XATTR, socket_acl(mode, allow), follow_symlinks=False)
    except OSError as exc:
        msg = (
            f"{path}: cannot let the --allow-uid users reach the socket: no POSIX ACL "
            f"({exc.strerror}); use --group with a group of those users"
        )
        raise ServerError(msg) from exc


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a daemon that died; refuse a live one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        msg = f"{path}: {exc.strerror}"
        raise ServerError(msg) from exc
    if not stat.S_ISSOCK(st.st_mode):
        msg = f"{path}: exists and is not a socket"
        raise ServerError(msg)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    probe.setblocking(False)  # a full backlog must not block the daemon's start
    with probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            # Nobody listens: the file outlived its daemon.
            os.unlink(path)
            log.info("removed stale socket %s", path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            msg = f"{path}: in use ({exc.strerror})"
            raise ServerError(msg) from exc
    msg = f"{path}: another daemon is listening there"
    raise ServerError(msg)
