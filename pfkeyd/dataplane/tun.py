"""Opening a TUN device: the one ioctl pyroute2 cannot do for us.

pyroute2 can create a *persistent* tuntap interface, but the file descriptor that
carries the packets only comes from opening ``/dev/net/tun`` and attaching it to an
interface with ``TUNSETIFF`` (linux/if_tun.h), so that ioctl is written here.  We
attach with ``IFF_TUN | IFF_NO_PI``: every ``read()`` returns exactly one IP datagram
with no packet-information prefix (the version nibble tells IPv4 from IPv6), every
``write()`` injects one datagram as if it had arrived on the interface.

The interface is created non-persistent: it lives exactly as long as the descriptor.
That is the last line of cleanup: if the daemon dies by SIGKILL the kernel deletes the
interface and every route through it; only the ip rules (see netlink.py) outlive it.

The interface is created in the network namespace of the calling thread.

With ``offload=True`` the interface also takes the offloads a NIC would
(``IFF_VNET_HDR``, then ``TUNSETOFFLOAD`` with ``TUN_F_CSUM | TUN_F_TSO4``): the
kernel then hands it TCP/IPv4 segments of up to 64 KB and datagrams whose L4
checksum is left to finish, each behind a 10-byte ``virtio_net_hdr`` that says so,
and every write must carry such a header too (all zeros: nothing left to do).  The
compiled loop cuts and finishes them (``pfkeyd.packet.espfast.tun_frames``, the
data plane's module doc says why); :class:`~pfkeyd.dataplane.io.TunDevice` reads
and writes through the header.
"""

from __future__ import annotations

import fcntl
import os
import struct

__all__ = ["IFNAMSIZ", "TUNSETIFF", "IFF_TUN", "IFF_NO_PI", "VNET_HDR", "check_ifname", "open_tun"]

TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
#: The size of struct virtio_net_hdr, in front of every frame of an offloading TUN.
VNET_HDR = 10
IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name, ifr_flags, the rest of the union


def check_ifname(name: str) -> bytes:
    """The interface name as the kernel wants it; ValueError for one it would refuse."""
    raw = name.encode("ascii", "strict") if name.isascii() else b""
    if not raw or len(raw) >= IFNAMSIZ or raw in (b".", b"..") or any(c in raw for c in b"/: \t\n\0"):
        raise ValueError(f"bad interface name {name!r} (1 to {IFNAMSIZ - 1} characters, no '/', ':' or spaces)")
    return raw


def open_tun(name: str, *, nonblocking: bool = True, offload: bool = False) -> int:
    """Create the TUN interface ``name`` (IFF_TUN | IFF_NO_PI, with ``offload`` also
    IFF_VNET_HDR and the offloads of the module doc) and return its descriptor.

    EBUSY if an interface of that name exists and is attached; EPERM without
    CAP_NET_ADMIN.  The caller owns the descriptor: closing it deletes the interface.
    """
    raw = check_ifname(name)
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
    fd = os.open("/dev/net/tun", flags)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(raw, IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)))
        if offload:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
    except BaseException:
        os.close(fd)
        raise
    return fd
