"""Numeric IP addresses from text: one definition, with a fast path for IPv4.

:func:`ipaddress.ip_address` reads an IPv4 text octet by octet in Python, slow for
the hundreds of thousands a big script holds (bench/README.md; setkey.resolve reads
every host, setkey.transformer every tunnel end point).
The text of a dotted quad that ipaddress accepts is exactly what
``_DOTTED_QUAD`` matches: four decimal octets of ASCII digits, each 0 to 255,
without leading zeros.  Such a text is converted by ``inet_aton``, which reads
every one of them the same way on any libc; anything else (IPv6, a ``%scope``,
an invalid text) goes to ipaddress, so what is an address, and its value, stay
ipaddress's (tests/setkey/test_numeric.py compares the two paths).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address, ip_address
from socket import inet_aton

__all__ = ["ip_from_text"]

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def ip_from_text(text: str) -> IPv4Address | IPv6Address | None:
    """``ipaddress.ip_address(text)``, or None where it raises ValueError."""
    if _DOTTED_QUAD.fullmatch(text):
        return IPv4Address(int.from_bytes(inet_aton(text)))
    try:
        return ip_address(text)
    except ValueError:
        return None
