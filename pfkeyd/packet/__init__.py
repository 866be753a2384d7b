"""The packet library: ESP, AH and IPComp as pure transforms on IP datagrams (issue 12).

No I/O, no clock, no logging: a transform takes an SA (:mod:`pfkeyd.packet.sa`), its
mutable state (:mod:`pfkeyd.packet.runtime`) and a datagram, and returns the datagram
it made or a :class:`~pfkeyd.packet.counters.Drop`.  Randomness is an injected
function.  See ``esp``, ``ah``, ``ipcomp``, ``ip``, ``natt`` and ``bundle``.

One step has a compiled twin: ``espfast`` (``espfast.c``, built by setup.py over
OpenSSL's libcrypto) does the bytes and the AEAD of ESP's IPv4 fast path in one call
per packet; ``esp`` and ``fasttunnel`` keep the decisions and fall back to their
pure-Python code, the reference, where it was not built.
"""
