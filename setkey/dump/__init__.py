"""What setkey prints for the PF_KEY messages it receives: SA and policy dumps,
error replies, the ``-l`` short format, ``-v``/``-x`` debug dumps, ``-h`` hex dumps
and the ``--json`` lines.

Theory of operation
-------------------
Every function here is pure: it takes decoded :class:`~pfkeyd.wire.Message` values
(or raw bytes, for the debug and hex dumps) and returns text.  Nothing reads the
clock, the time zone database, ``/etc/protocols`` or the interface list: the
current time comes in as ``now``, local time through ``DumpOptions.localtime``
(``time.localtime`` by default; tests pass ``time.gmtime`` or fix ``TZ``),
protocol names through ``DumpOptions.protocols`` and interface names through
``DumpOptions.ifname``.

The text imitates the reference tool of the daemon's dialect, byte for byte:

``freebsd``
    FreeBSD's setkey and libipsec (``pfkey_sadump``, ``pfkey_spdump``,
    ``ipsec_dump_policy``, ``shortdump``, ``postproc`` and the userland
    ``kdebug_sadb`` of ``sys/netipsec/key_debug.c``), current sources;
``linux``
    ipsec-tools 0.8.2 setkey built on Linux (the same functions in its
    ``libipsec``, with priorities and ``fwd`` compiled in).

The choices that differ are collected in one :class:`_Style` per dialect, so
the rendering code reads as one program.  Where the reference prints a C NULL
string (``printf("%s", NULL)``) both C libraries print ``(null)``, and so do we.

Two reference behaviours are deliberately not copied: with ``-v`` both setkeys
run ``kdebug_sadb`` a second time on the bytes *after* each dump message in
their receive buffer (left-over garbage), and FreeBSD 15's offload lines
(``hw offl if:``, ``sw offl use:``) need extensions 29-31 that the codec does
not carry.

The package has one module per output format: :mod:`~setkey.dump.text` (``-D``,
``-DP``), :mod:`~setkey.dump.short` (``-l``), :mod:`~setkey.dump.json_lines`
(``--json``), :mod:`~setkey.dump.error` (error replies), :mod:`~setkey.dump.kdebug`
(``-v``, ``-x``, ``-h``); :mod:`~setkey.dump.render` picks one for a reply, and
:mod:`~setkey.dump.common` holds the options, the styles and the shared helpers.

``--json``
----------
No reference setkey has it.  Each SA or policy is one JSON object on one line
(JSON Lines); keys always appear, in the order below, with ``null`` for what the
message lacks.  Names are lower case; a number that has no name is emitted as
the integer.  Key material and addresses are strings; times are integers
(seconds since the epoch for ``current`` lifetimes, seconds for ``hard`` and
``soft``), never local time.  The schema is the same for both dialects.

SA (from GET and DUMP)::

    {"type": "sa",
     "msg": {"type": "DUMP", "satype": 3, "seq": 0, "pid": 2301, "refcnt": 1},
     "satype": "esp",                         # ah esp ipcomp tcp ..., or the number
     "src": {"address": "192.0.2.1", "port": 0, "prefixlen": 32, "proto": 255},
     "dst": {...},
     "spi": 4097,
     "mode": "transport",                     # any transport tunnel, or the number
     "reqid": 5,
     "sequence": 0,                           # sadb_x_sa2_sequence
     "replay": 4,                             # window in bytes, as setkey -r
     "state": "mature",                       # larval mature dying dead, or the number
     "flags": 64,
     "encryption": {"algorithm": "aes-cbc", "id": 12, "bits": 128, "key": "0011..."},
     "authentication": {"algorithm": "hmac-sha2-512", "id": 7, "bits": 512, "key": "..."},
     "compression": {"algorithm": "deflate", "id": 2},
     "nat_t": {"type": 2, "sport": 4500, "dport": 4500, "oai": "10.0.0.9", "oar": null},
     "lifetime": {"current": {"allocations": 0, "bytes": 0, "addtime": 1709633702, "usetime": 0},
                  "hard": {...}, "soft": {...}},
     "sec_ctx": {"doi": 1, "alg": 1, "context": "system_u:..."}}

``encryption``, ``authentication``, ``compression``, ``nat_t``, ``sec_ctx`` and
each lifetime may be ``null``.  ``algorithm`` is the project-wide setkey name of
the algorithm (the first spelling in :mod:`pfkeyd.algorithms`), ``null`` when it
has none; ``id`` is the number on the wire.  ``key`` (lower-case hex) and
``bits`` (``sadb_key_bits``) are there only when the message carries the key;
an algorithm id without a key (FreeBSD's implied GMAC id of an AES-GCM SA)
gives ``{"algorithm": null, "id": 11}``.  ``encryption`` is filled from KEY_ENCRYPT for an
ESP SA and ``compression`` from ``sadb_sa_encrypt`` for an IPComp SA.

Policy (from SPDDUMP and SPDGET)::

    {"type": "policy",
     "msg": {"type": "X_SPDDUMP", "satype": 0, "seq": 1, "pid": 2301, "refcnt": 1},
     "id": 8,                                 # spid
     "src": {"address": "10.1.0.0", "port": 0, "prefixlen": 16, "proto": 255},
     "dst": {...},
     "upper": 255,                            # upper-layer protocol (255: any)
     "dir": "out",                            # any in out fwd, or the number
     "action": "ipsec",                       # discard none ipsec entrust bypass, or the number
     "priority": 2147483648,
     "scope": "global",                       # global ifnet pcb (freebsd), null (linux)
     "requests": [{"proto": "esp", "mode": "tunnel", "level": "require", "reqid": 0,
                   "src": {"address": "192.0.2.1", "port": 0},
                   "dst": {"address": "198.51.100.2", "port": 0}}],
     "lifetime": {"current": {...}, "hard": {...}},
     "sec_ctx": null}

A request's ``proto`` is ``esp``, ``ah``, ``ipcomp`` or the number; its ``src``
and ``dst`` are ``null`` when the request names no endpoints.

Error reply::

    {"type": "error", "msg": {...}, "errno": 3, "message": "No such process"}

An empty table (DUMP or SPDDUMP answered with ENOENT) prints nothing in JSON
mode; dead SAs are left out unless ``-a`` is given, as in the text formats.
"""

from __future__ import annotations

from setkey.dump.common import PROTOCOLS, DumpOptions, ctime20, parse_protocols
from setkey.dump.error import error_text, format_error
from setkey.dump.json_lines import format_json, to_json
from setkey.dump.kdebug import debug_block, hexdump, kdebug, promisc_block, timestamp
from setkey.dump.render import priority_warning, render_reply
from setkey.dump.short import SHORT_HEADER, format_short
from setkey.dump.text import format_policy, format_sa

__all__ = [
    "DumpOptions",
    "PROTOCOLS",
    "SHORT_HEADER",
    "parse_protocols",
    "ctime20",
    "render_reply",
    "priority_warning",
    "format_sa",
    "format_policy",
    "format_short",
    "error_text",
    "format_error",
    "to_json",
    "format_json",
    "hexdump",
    "kdebug",
    "debug_block",
    "timestamp",
    "promisc_block",
]
