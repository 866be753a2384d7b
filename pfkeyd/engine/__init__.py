"""The key engine: PF_KEY semantics as a pure, synchronous state machine.

Theory of operation
-------------------
The daemon layer (:mod:`pfkeyd.daemon`) decodes each datagram and calls
``handle(client, msg, now)``; the engine answers with a list of :mod:`pfkeyd.effects` values (send this message to
these clients, send an error reply, stream this dump).  Timers come from outside
too: the daemon asks ``next_deadline()`` and calls ``tick(now)`` when that moment
comes (``tick(now, limit=n)`` takes on at most n due deadlines, so that a storm of
expiries can be served in slices).  The engine never reads a clock, never touches a socket and never logs; it
counts (``stats``).

Semantics follow FreeBSD's key.c message by message (reference §3, §7, §8).  The
engine is written once for both dialects: it only knows a client's dialect to
answer in that dialect's own terms where the kernels genuinely differ in what they
can express (the algorithms REGISTER advertises, extensions a dialect has no number
for, the errno for a message type no handler serves).

Dispatch is a table (``HANDLERS``), like key.c's ``key_typesw``.  A handler raises a
:class:`~pfkeyd.errors.PfkeyError`; ``handle`` turns it into the error reply in one
place.  Every handler checks everything before it changes anything, so a rejected
request leaves every table as it was.

Key material travels only in replies to the socket that asked (GET, DUMP); every
broadcast (ADD/UPDATE/DELETE replies to ALL, EXPIRE, promiscuous copies) is built
without keys — stricter than Linux, which broadcasts them.

Layout
------
* :mod:`~pfkeyd.engine.core` -- the state (SAD, SPD, ACQUIREs, clients, knobs,
  counters) and the steps every handler shares: admission checks, id allocation,
  insertion and scheduling, fan-out to ONE/ALL/REGISTERED, ``tick``;
* :mod:`~pfkeyd.engine.sa` -- the SA handlers; :mod:`~pfkeyd.engine.policy` -- the
  SPD handlers and X_MIGRATE; :mod:`~pfkeyd.engine.lookup` -- a flow's decision;
* :mod:`~pfkeyd.engine.messages` -- building the messages sent, reading requests;
* :mod:`~pfkeyd.engine.hotpath` -- ADD and SPDADD of a known shape, from their bytes,
  through the same admission steps;
* :mod:`~pfkeyd.engine.keyengine` -- :class:`KeyEngine`, the dispatch table
  :data:`HANDLERS` and ``handle``.

Imports go one way: messages <- core <- sa, policy, hotpath <- lookup <- keyengine.
"""

from __future__ import annotations

from pfkeyd.engine.core import ClientState
from pfkeyd.engine.keyengine import HANDLERS, NO_HANDLER_ERRNO, KeyEngine
from pfkeyd.engine.lookup import Decision, RequestOutcome
from pfkeyd.engine.messages import render_sa, render_sa_fast, render_sp, sa_message, sp_message

__all__ = [
    "HANDLERS",
    "NO_HANDLER_ERRNO",
    "ClientState",
    "Decision",
    "KeyEngine",
    "RequestOutcome",
    "render_sa",
    "render_sa_fast",
    "render_sp",
    "sa_message",
    "sp_message",
]
