"""The setkey language as values: one frozen dataclass per statement.

The transformer builds these from the parse (names are not resolved yet: a host
is the text that was written); :mod:`setkey.formatter` turns them back into
canonical text, and ``parse(format(cmd)) == [cmd]``.

Only statements know where they were written (``line`` and ``column``,
``compare=False``, so the same statement written twice compares equal); an
error about a value inside a statement is placed by finding the value in the
statement's text again (:func:`setkey.parser.locate`), which keeps the values
small and shareable.  Repetitions that setkey folds are folded here already: the
last ``-m``, ``-u``, ``-r``, ... wins, ``-f`` flags accumulate, ``[any]`` and
``[0]`` are port 0, and the policy level ``default`` is the level of a request
written without one.
"""

from __future__ import annotations

import enum
from dataclasses import field
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar

from pfkeyd.record import record
from pfkeyd.wire.constants import Direction, Level, Mode, PolicyType, SaType

__all__ = [
    "Proto",
    "AddrFlags",
    "NO_FLAGS",
    "Host",
    "SecContext",
    "NatT",
    "SaOptions",
    "DEFAULT_OPTIONS",
    "AlgSpec",
    "Algorithms",
    "Endpoints",
    "Request",
    "Policy",
    "PRIORITY_LOW",
    "PRIORITY_DEFAULT",
    "PRIORITY_HIGH",
    "SaStatement",
    "Add",
    "Update",
    "GetSpi",
    "Get",
    "Delete",
    "DeleteAll",
    "Flush",
    "Dump",
    "SpdStatement",
    "SpdAdd",
    "SpdUpdate",
    "SpdDelete",
    "SpdTagged",
    "SpdFlush",
    "SpdDump",
    "Exit",
    "Command",
]


class Proto(enum.Enum):
    """The protocol word of an SA statement, as written (empty: SADB_SATYPE_UNSPEC)."""

    UNSPEC = ""
    ESP = "esp"
    ESP_OLD = "esp-old"
    AH = "ah"
    AH_OLD = "ah-old"
    IPCOMP = "ipcomp"
    TCP = "tcp"
    ESP_UDP = "esp-udp"

    @property
    def satype(self) -> SaType:
        return _SATYPE[self]

    @property
    def old(self) -> bool:
        """esp-old / ah-old: the RFC 1827/1826 formats (SADB_X_EXT_OLD)."""
        return self in (Proto.ESP_OLD, Proto.AH_OLD)


_SATYPE = {
    Proto.UNSPEC: SaType.UNSPEC,
    Proto.ESP: SaType.ESP,
    Proto.ESP_OLD: SaType.ESP,
    Proto.AH: SaType.AH,
    Proto.AH_OLD: SaType.AH,
    Proto.IPCOMP: SaType.X_IPCOMP,
    Proto.TCP: SaType.X_TCPSIGNATURE,
    Proto.ESP_UDP: SaType.ESP,
}


@record
class AddrFlags:
    """-4, -6, -n: how the statement's host names are resolved."""

    family: int = 0  # 0: any family, 4: -4, 6: -6 (the last one written wins)
    numeric: bool = False  # -n: numeric addresses only, no DNS

    def __str__(self) -> str:
        word = ("" if not self.family else str(self.family)) + ("n" if self.numeric else "")
        return f"-{word}" if word else ""


NO_FLAGS = AddrFlags()


@record
class Host:
    """A host as written: a name or a numeric address, with its port and prefix.

    ``port`` is a number (0 for none, ``[any]`` or ``[0]``) or a UDP service
    name; ``prefix`` is an SPD selector's ``/N`` (None: the full length).
    """

    name: str
    port: int | str = 0
    prefix: int | None = None


@record
class SecContext:
    """-ctx doi algorithm "label": a Linux security context (ipsec-tools)."""

    doi: int
    alg: int
    label: str


@record
class NatT:
    """-natt oai[sport] oar[dport]: FreeBSD's UDP encapsulation of ESP."""

    oai: Host
    sport: int
    oar: Host
    dport: int


@record
class SaOptions:
    """The extensions of an SA statement, folded as setkey folds them."""

    mode: Mode = Mode.ANY  # -m
    reqid: int = 0  # -u
    replay: int = 0  # -r, in bytes of the bitmap
    pad: int = 0  # -f random-pad / zero-pad: SADB_X_EXT_PRAND | SADB_X_EXT_PZERO
    cyclic_seq: bool = True  # -f nocyclic-seq clears SADB_X_EXT_CYCSEQ
    lifetime_hard: int = 0  # -lh seconds
    lifetime_soft: int = 0  # -ls seconds
    bytes_hard: int = 0  # -bh bytes (ipsec-tools)
    bytes_soft: int = 0  # -bs bytes (ipsec-tools)
    context: SecContext | None = None  # -ctx (ipsec-tools, Linux)
    natt: NatT | None = None  # -natt (FreeBSD)
    natt_mtu: int | None = None  # -natt_mtu (FreeBSD)
    esn: bool = False  # -esn (FreeBSD)
    hwif: str | None = None  # -hwif (FreeBSD)


DEFAULT_OPTIONS = SaOptions()


@record
class AlgSpec:
    """An algorithm after -E, -A or -C, by the name written, and its key (None: no key)."""

    name: str
    key: bytes | None = None

    def __repr__(self) -> str:
        # Key material does not reach logs through repr().
        key = "None" if self.key is None else f"<{len(self.key)} bytes>"
        return f"AlgSpec({self.name!r}, key={key})"


@record
class Algorithms:
    """-E enc [-A auth] | -A auth | -C comp [-R]."""

    encrypt: AlgSpec | None = None
    auth: AlgSpec | None = None
    compress: AlgSpec | None = None
    rawcpi: bool = False  # -R: the SPI is the CPI as sent (SADB_X_EXT_RAWCPI)


# ------------------------------------------------------------------ policies

#: ipsec-tools' priority bases (libpfkey.h); smaller is looked at first.
PRIORITY_HIGH = 0x40000000
PRIORITY_DEFAULT = 0x80000000
PRIORITY_LOW = 0xC0000000


@record
class Endpoints:
    """The tunnel end points of a request, numeric, with ipsec-tools' optional ports."""

    src: IPv4Address | IPv6Address
    dst: IPv4Address | IPv6Address
    src_port: int = 0
    dst_port: int = 0


@record
class Request:
    """One protocol/mode/endpoints/level of an ipsec policy.

    ``proto`` is the IP protocol (50 esp, 51 ah, 108 ipcomp, 6 tcp); ``reqid``
    is the N of ``unique:N``; ``anchor`` is ``"me-any"`` or ``"any-me"`` when
    written (they add nothing to the message).
    """

    proto: int
    mode: Mode
    level: Level = Level.DEFAULT
    reqid: int = 0
    endpoints: Endpoints | None = None
    anchor: str = ""


@record
class Policy:
    """The text after -P.  ``action`` None is the bare ``-P dir`` of spddelete;
    ``priority`` None means that no priority was written."""

    direction: Direction
    action: PolicyType | None = None
    priority: int | None = None
    requests: tuple[Request, ...] = ()


# ------------------------------------------------------------------ statements


@record(kw_only=True)
class SaStatement:
    """The fields shared by add, update, getspi, get and delete."""

    keyword: ClassVar[str] = ""

    flags: AddrFlags = NO_FLAGS
    src: Host
    dst: Host
    proto: Proto = Proto.UNSPEC
    natt_oa: Host | None = None  # the host after esp-udp
    spi: int
    options: SaOptions = DEFAULT_OPTIONS
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)


@record(kw_only=True)
class Add(SaStatement):
    keyword: ClassVar[str] = "add"
    algorithms: Algorithms


@record(kw_only=True)
class Update(SaStatement):
    keyword: ClassVar[str] = "update"
    algorithms: Algorithms


@record(kw_only=True)
class GetSpi(SaStatement):
    keyword: ClassVar[str] = "getspi"


@record(kw_only=True)
class Get(SaStatement):
    keyword: ClassVar[str] = "get"


@record(kw_only=True)
class Delete(SaStatement):
    keyword: ClassVar[str] = "delete"


@record(kw_only=True)
class DeleteAll:
    keyword: ClassVar[str] = "deleteall"

    flags: AddrFlags = NO_FLAGS
    src: Host
    dst: Host
    proto: Proto = Proto.UNSPEC
    natt_oa: Host | None = None
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)


@record(kw_only=True)
class Flush:
    keyword: ClassVar[str] = "flush"

    proto: Proto = Proto.UNSPEC
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)


@record(kw_only=True)
class Dump:
    keyword: ClassVar[str] = "dump"

    proto: Proto = Proto.UNSPEC
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)


@record(kw_only=True)
class SpdStatement:
    """The fields shared by spdadd, spdupdate and spddelete.

    ``upper`` is the IP protocol number (255: any).  ``upper_ports`` is the
    ``type,code`` of icmp, icmp6 and mh, or the key of gre, as the source and
    destination port values setkey puts in the selector instead of its ports.
    """

    keyword: ClassVar[str] = ""

    flags: AddrFlags = NO_FLAGS
    src: Host
    dst: Host
    upper: int = 255
    upper_ports: tuple[int, int] | None = None
    context: SecContext | None = None
    policy: Policy
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)


@record(kw_only=True)
class SpdAdd(SpdStatement):
    keyword: ClassVar[str] = "spdadd"


@record(kw_only=True)
class SpdUpdate(SpdStatement):
    keyword: ClassVar[str] = "spdupdate"


@record(kw_only=True)
class SpdDelete(SpdStatement):
    keyword: ClassVar[str] = "spddelete"


@record(kw_only=True)
class SpdTagged:
    """spdadd tagged "name" -P ... (and spdupdate): a policy for a PF tag."""

    keyword: str = "spdadd"  # or "spdupdate"
    tag: str
    policy: Policy
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)


@record(kw_only=True)
class SpdFlush:
    keyword: ClassVar[str] = "spdflush"

    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)


@record(kw_only=True)
class SpdDump:
    keyword: ClassVar[str] = "spddump"

    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)


@record(kw_only=True)
class Exit:
    """exit, quit or bye: stop here (ipsec-tools)."""

    keyword: ClassVar[str] = "exit"

    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)


Command = (
    Add
    | Update
    | GetSpi
    | Get
    | Delete
    | DeleteAll
    | Flush
    | Dump
    | SpdAdd
    | SpdUpdate
    | SpdDelete
    | SpdTagged
    | SpdFlush
    | SpdDump
    | Exit
)
