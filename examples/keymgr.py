"""keymgr: a small key manager that keys two pfkeyd hosts from one ACQUIRE.

It stands in for a pair of IKE daemons, the way racoon's initiator and responder
drive their kernels (reference real-clients.md §3.8), without the network in
between.  Registered for ESP on host A, it waits for SADB_ACQUIRE.  For the flow
from A to B that an ACQUIRE asks for, it

1. finds the policy that triggered it in A's SPD by the ACQUIRE's policy id
   (racoon's ``getspbyspid``) and takes the mode and reqid of its ESP request;
2. allocates each direction's SPI on the host that will receive with it: GETSPI
   on B for A -> B, GETSPI on A for B -> A (with the ACQUIRE's seq, as racoon's
   initiator does);
3. draws fresh random keys for each direction, from the algorithms the
   ACQUIRE's PROPOSAL offers (AES-CBC preferred) plus HMAC-SHA2-256;
4. completes the two LARVAL SAs with UPDATE and installs the other end of each
   direction with ADD.  The ADD of A's outbound SA carries the ACQUIRE's seq,
   which tells A's key engine that the ACQUIRE is answered.

Both hosts end up holding the same two SAs: same addresses, SPIs and keys.

Running it by hand
------------------
Everything in one go (two daemons on private sockets, a policy on each, a lookup
on host A, both SADs printed):

    python examples/two_hosts.py

Against two daemons of your own, each with an ESP policy for the pair of hosts
(``spdadd 10.0.0.1 10.0.0.2 any -P out ipsec esp/transport//require;`` on A, and
its mirror on B, loaded with setkey or as two_hosts.py does):

    python -m pfkeyd -s /tmp/a.sock:linux &
    python -m pfkeyd -s /tmp/b.sock:linux &
    python examples/keymgr.py /tmp/a.sock /tmp/b.sock &
    python -m pfkeyd lookup -s /tmp/a.sock out 10.0.0.1 10.0.0.2

The lookup stands in for an outbound packet: host A sends an ACQUIRE, and the key
manager keys both hosts, printing each SA it installs.  It keys every ACQUIRE
host A sends until SIGINT or SIGTERM.  The sockets' dialect is what the daemons
report (``--dialect`` overrides it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

import trio

import pfkeyd.client
from pfkeyd.client import Connection
from pfkeyd.wire import (
    Address,
    AuthAlg,
    Comb,
    EncAlg,
    Extension,
    ExtType,
    IpProto,
    Key,
    Lifetime,
    Message,
    Mode,
    MsgType,
    Sa,
    Sa2,
    SaState,
    SaType,
    SockAddr,
)

__all__ = ["Keyed", "KeyManager", "choose_algorithms", "sa_message", "main"]

#: The encryption algorithm taken when the proposal offers it.
PREFERRED_ENCRYPT = EncAlg.X_AESCBC
#: Integrity for every SA (ESP proposals without esp_auth offer none).
AUTH = (AuthAlg.X_SHA2_256, 256)


@dataclass(frozen=True, slots=True)
class Keyed:
    """One SA as the key manager installed it on both hosts."""

    src: str
    dst: str
    spi: int
    encrypt: int
    enc_key: bytes
    auth: int
    auth_key: bytes


def choose_algorithms(combs: tuple[Comb, ...]) -> tuple[int, int, int, int]:
    """(encrypt id, encryption key bits, auth id, auth key bits) for a PROPOSAL.

    AES-CBC if it is offered, otherwise the first combination; the key is the
    smallest the combination allows.  An auth algorithm the combination names is
    kept, otherwise HMAC-SHA2-256.
    """
    if not combs:
        return PREFERRED_ENCRYPT, 256, *AUTH
    comb = next((c for c in combs if c.encrypt == PREFERRED_ENCRYPT), combs[0])
    enc_bits = -(-comb.encrypt_minbits // 8) * 8
    if comb.auth:
        return comb.encrypt, enc_bits, comb.auth, -(-comb.auth_minbits // 8) * 8
    return comb.encrypt, enc_bits, *AUTH


def sa_message(
    msgtype: MsgType,
    sa: Keyed,
    *,
    mode: int,
    reqid: int,
    hard: Lifetime | None = None,
    soft: Lifetime | None = None,
    seq: int = 0,
) -> Message:
    """The UPDATE or ADD of ``sa``; ``seq`` 0 lets the connection pick one."""
    exts: list[Extension] = [
        Sa(sa.spi, 0, SaState.MATURE, sa.auth, sa.encrypt),
        Sa2(mode, 0, reqid),
        Address.host(ExtType.ADDRESS_SRC, sa.src),
        Address.host(ExtType.ADDRESS_DST, sa.dst),
        Key(ExtType.KEY_ENCRYPT, sa.enc_key),
        Key(ExtType.KEY_AUTH, sa.auth_key),
    ]
    if hard is not None and soft is not None:
        exts += [hard, soft]
    return Message(msgtype, SaType.ESP, seq, exts=tuple(exts))


class KeyManager:
    """Keys host A and host B, connected as ``host_a`` and ``host_b``, on A's ACQUIREs.

    ``random_bytes`` makes the keys (os.urandom unless a test wants them fixed);
    ``hard``/``soft`` are the add-time lifetimes, in seconds, of the SAs it
    installs (0: none).
    """

    def __init__(
        self,
        host_a: Connection,
        host_b: Connection,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        hard: int = 0,
        soft: int = 0,
    ) -> None:
        self.a = host_a
        self.b = host_b
        self.random_bytes = random_bytes
        self.hard = hard
        self.soft = soft
        # An ACQUIRE is sent again, with the same seq, while its SA is still being
        # set up (net.key.blockacq_count); racoon too keys each seq once.
        self._answered: set[int] = set()

    async def serve(
        self,
        keyed: trio.MemorySendChannel[tuple[Keyed, Keyed]] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Register for ESP on A, then key every ACQUIRE until A's connection closes.

        Each pair of SAs installed (A -> B, B -> A) is sent on ``keyed``.
        """
        await self.a.register(SaType.ESP)
        task_status.started()
        async for msg in self.a.events():
            if msg.type == MsgType.ACQUIRE and msg.satype == SaType.ESP and msg.errno == 0:
                if msg.seq in self._answered:
                    continue
                self._answered.add(msg.seq)
                pair = await self.key(msg)
                if keyed is not None:
                    await keyed.send(pair)

    async def _policy_request(self, acq: Message) -> tuple[int, int]:
        """(mode, reqid) of the ESP request of the policy that sent ``acq``."""
        pol = acq.policy
        if pol is not None:
            async for entry in self.a.spddump():
                found = entry.policy
                if found is not None and found.id == pol.id:
                    for r in found.requests:
                        if r.proto == IpProto.ESP:
                            return r.mode, r.reqid
        sa2 = acq.sa2
        return (sa2.mode, sa2.reqid) if sa2 is not None else (Mode.TRANSPORT, 0)

    async def key(self, acq: Message) -> tuple[Keyed, Keyed]:
        """Answer one ACQUIRE from host A: returns the SAs (A -> B, B -> A)."""
        src, dst = acq.src, acq.dst
        if src is None or dst is None:
            msg = "an ACQUIRE without ADDRESS_SRC and ADDRESS_DST"
            raise ValueError(msg)
        if not isinstance(src.addr, SockAddr) or not isinstance(dst.addr, SockAddr):
            msg = "an ACQUIRE for addresses that are not IP addresses"
            raise ValueError(msg)
        addr_a, addr_b = str(src.addr.ip), str(dst.addr.ip)
        mode, reqid = await self._policy_request(acq)
        prop = acq.proposal
        enc, enc_bits, auth, auth_bits = choose_algorithms(prop.combs if prop is not None else ())

        # Each receiver picks the SPI it will see in incoming packets.
        larval_b = await self.b.getspi(SaType.ESP, addr_a, addr_b, mode=mode, reqid=reqid)
        larval_a = await self.a.getspi(SaType.ESP, addr_b, addr_a, mode=mode, reqid=reqid, seq=acq.seq)
        assert larval_a.sa is not None and larval_b.sa is not None
        out = Keyed(
            addr_a,
            addr_b,
            larval_b.sa.spi,
            enc,
            self.random_bytes(enc_bits // 8),
            auth,
            self.random_bytes(auth_bits // 8),
        )
        back = Keyed(
            addr_b,
            addr_a,
            larval_a.sa.spi,
            enc,
            self.random_bytes(enc_bits // 8),
            auth,
            self.random_bytes(auth_bits // 8),
        )

        hard = soft = None
        if self.hard or self.soft:
            hard = Lifetime(ExtType.LIFETIME_HARD, addtime=self.hard)
            soft = Lifetime(ExtType.LIFETIME_SOFT, addtime=self.soft)

        def message(msgtype: MsgType, sa: Keyed, seq: int = 0) -> Message:
            return sa_message(msgtype, sa, mode=mode, reqid=reqid, hard=hard, soft=soft, seq=seq)

        # The receivers' LARVAL SAs become MATURE ...
        await self.b.request(message(MsgType.UPDATE, out))
        await self.a.request(message(MsgType.UPDATE, back))
        # ... and each sender gets its SA; A's ADD carries the ACQUIRE's seq, which
        # completes the ACQUIRE (reference pfkey-protocol.md §7.4, step 3).
        await self.b.request(message(MsgType.ADD, back))
        await self.a.request(message(MsgType.ADD, out, seq=acq.seq))
        return out, back


async def _serve_forever(path_a: str, path_b: str, dialect: str | None) -> None:
    # SIGINT and SIGTERM stop it cleanly (exit status 0), as a daemon's supervisor expects.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with pfkeyd.client.open(path_a, dialect) as a, pfkeyd.client.open(path_b, dialect) as b:
            send, receive = trio.open_memory_channel[tuple[Keyed, Keyed]](16)

            async def report() -> None:
                async for out, back in receive:
                    for sa in (out, back):
                        print(f"keymgr: {sa.src} -> {sa.dst} spi {sa.spi:#010x} installed on both hosts", flush=True)

            async with trio.open_nursery() as nursery:
                await nursery.start(KeyManager(a, b).serve, send)
                print(
                    f"keymgr: registered on {path_a} ({a.dialect.value} dialect), keying {path_a} and {path_b}",
                    flush=True,
                )
                nursery.start_soon(report)
                async for signum in signals:
                    print(f"keymgr: {signal.Signals(signum).name} received, stopping", flush=True)
                    nursery.cancel_scope.cancel()
                    break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Key two pfkeyd hosts from host A's ACQUIREs.")
    parser.add_argument("host_a", help="host A's pfkeyd socket (the one whose ACQUIREs are answered)")
    parser.add_argument("host_b", help="host B's pfkeyd socket")
    parser.add_argument(
        "-d",
        "--dialect",
        choices=("linux", "freebsd"),
        default=None,
        help="the sockets' dialect (default: what the daemons report)",
    )
    args = parser.parse_args(argv)
    try:
        trio.run(_serve_forever, args.host_a, args.host_b, args.dialect)
    except OSError as exc:
        # a daemon that is not there: say which socket, as setkey does
        where = exc.filename or args.host_a
        print(f"keymgr: {where}: {exc.strerror or exc} (is pfkeyd running on that socket?)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
