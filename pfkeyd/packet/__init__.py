"""The packet library: ESP, AH and IPComp as pure transforms on IP datagrams (issue 12).

No I/O, no clock, no logging: a transform takes an SA (:mod:`pfkeyd.packet.sa`), its
mutable state (:mod:`pfkeyd.packet.runtime`) and a datagram, and returns the datagram
it made or a :class:`~pfkeyd.packet.counters.Drop`.  Randomness is an injected
function.  See ``esp``, ``ah``, ``ipcomp``, ``ip``, ``natt`` and ``bundle``.
"""
