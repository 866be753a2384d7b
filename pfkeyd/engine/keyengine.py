"""The key engine: the handlers of every message type behind one entry point.

:class:`KeyEngine` is :class:`~pfkeyd.engine.core.EngineCore` with the SA handlers,
the policy handlers, the lookup and the hot path.  ``handle`` dispatches through
:data:`HANDLERS`, key.c's ``key_typesw`` as a table, and turns a
:class:`~pfkeyd.errors.PfkeyError` into the error reply in one place.
"""

from __future__ import annotations

import errno as E
import random
from collections.abc import Callable

from pfkeyd.effects import ClientId, Effect, Error, Instant, Send
from pfkeyd.engine.core import Request
from pfkeyd.engine.extensions import check_extensions
from pfkeyd.engine.hotpath import HotPath
from pfkeyd.engine.lookup import Lookup
from pfkeyd.engine.policy import PolicyHandlers
from pfkeyd.errors import (
    DecodeError,
    InvalidArgument,
    PfkeyError,
)
from pfkeyd.knobs import Knobs
from pfkeyd.sad import (
    SecAssoc,
)
from pfkeyd.spd import SecPolicy
from pfkeyd.wire import (
    Dialect,
    Message,
    MsgType,
    SaType,
)
from pfkeyd.wire.message import check_request_generic

__all__ = ["HANDLERS", "NO_HANDLER_ERRNO", "KeyEngine"]

#: The errno a kernel answers for a message type it has no handler for (reference §1.3, §1.4).
NO_HANDLER_ERRNO = {Dialect.FREEBSD: E.EINVAL, Dialect.LINUX: E.EOPNOTSUPP}
#: The requests the hot path learns (pfkeyd.engine.hotpath).
_HOT_TYPES = frozenset({MsgType.ADD, MsgType.X_SPDADD})


class KeyEngine(Lookup, PolicyHandlers):
    """The SAD, the SPD, the registrations and the PF_KEY message handlers."""

    def __init__(self, knobs: Knobs | None = None, *, rng: random.Random | None = None) -> None:
        super().__init__(knobs, rng=rng)
        self.hot = HotPath()  # the hot path's learned request shapes

    def _knobs_changed(self) -> None:
        self.hot.clear()

    # --------------------------------------------------------------- dispatch

    def serve_hot(self, client: ClientId, data: bytes, now: Instant) -> list[Effect] | None:
        """Answer the undecoded request ``data`` on the hot path (:mod:`pfkeyd.engine.hotpath`),
        or return None having changed nothing: then decode it and call :meth:`handle`
        with ``raw=data``."""
        state = self.clients.get(client)
        if state is None or not self._knobs.hot_path:
            return None
        self.generation += 1
        return self.hot.serve(self, client, state.dialect, data, now)

    def handle(self, client: ClientId, msg: Message, now: Instant, *, raw: bytes | None = None) -> list[Effect]:
        """Handle one decoded request from ``client``; ``raw``, its bytes, lets the hot
        path learn the request's shape."""
        state = self.clients.get(client)
        if state is None:
            self.client_opened(client)
            state = self.clients[client]
        self.generation += 1
        self.stats.note_in(msg.type)
        req = Request(client, msg, now, state.dialect)
        try:
            try:
                check_request_generic(msg)
            except DecodeError as exc:
                raise PfkeyError(str(exc), errno=exc.errno) from None
            if msg.satype == SaType.X_TCPSIGNATURE and msg.satype not in state.dialect.spec.satypes:
                # Linux has no satype 11: pfkey_satype2proto gives 0 -> EINVAL, and
                # REGISTER refuses satype > SADB_SATYPE_MAX (reference §3.7, §5.1).
                raise InvalidArgument(f"satype {msg.satype} is not defined in the {state.dialect.value} dialect")
            handler = HANDLERS.get(msg.type)
            if handler is None:
                name = MsgType(msg.type).name if msg.type in MsgType._value2member_map_ else msg.type
                error = f"no handler for message type {name}"
                raise PfkeyError(error, errno=NO_HANDLER_ERRNO[state.dialect])
            check_extensions(msg)  # the one table of required and allowed extensions
            effects = handler(self, req)
        except PfkeyError as exc:
            self.stats.note_error(exc.errno)
            return [Error(client, exc.errno)]
        self._count(effects)
        if raw is not None and msg.type in _HOT_TYPES and self._knobs.hot_path:
            self._teach(client, state.dialect, raw, msg, effects)
        return effects

    def _teach(self, client: ClientId, dialect: Dialect, raw: bytes, msg: Message, effects: list[Effect]) -> None:
        """Show the hot path a successful ADD or SPDADD whose answer it could have
        given: one keyless message to every socket, all of the requester's dialect."""
        audience = self.same_dialect_audience(client, dialect)
        first = effects[0]
        if audience is None or not isinstance(first, Send) or first.to != (client,):
            return
        to: list[ClientId] = []
        for eff in effects:
            if not isinstance(eff, Send) or eff.msg is not first.msg or eff.promisc:
                return
            to += eff.to
        if tuple(to) != audience:
            return
        stored: SecAssoc | SecPolicy | None = None
        if msg.type == MsgType.ADD:
            sa_ext = msg.sa
            stored = self.sad.get(sa_ext.spi) if sa_ext is not None else None
        else:
            policy = first.msg.policy
            stored = self.spd.by_id.get(policy.id) if policy is not None else None
        if stored is not None:
            self.hot.learn(self, dialect, raw, stored, first.msg)


Handler = Callable[[KeyEngine, Request], list[Effect]]

HANDLERS: dict[int, Handler] = {
    MsgType.GETSPI: KeyEngine._getspi,
    MsgType.UPDATE: KeyEngine._update,
    MsgType.ADD: KeyEngine._add,
    MsgType.DELETE: KeyEngine._delete,
    MsgType.GET: KeyEngine._get,
    MsgType.ACQUIRE: KeyEngine._acquire,
    MsgType.REGISTER: KeyEngine._register,
    MsgType.FLUSH: KeyEngine._flush,
    MsgType.DUMP: KeyEngine._dump,
    MsgType.X_PROMISC: KeyEngine._promisc_mode,
    MsgType.X_SPDUPDATE: KeyEngine._spdadd,
    MsgType.X_SPDADD: KeyEngine._spdadd,
    MsgType.X_SPDSETIDX: KeyEngine._spdadd,
    MsgType.X_SPDDELETE: KeyEngine._spddelete,
    MsgType.X_SPDDELETE2: KeyEngine._spddelete2,
    MsgType.X_SPDGET: KeyEngine._spdget,
    MsgType.X_SPDFLUSH: KeyEngine._spdflush,
    MsgType.X_SPDDUMP: KeyEngine._spddump,
    MsgType.X_MIGRATE: KeyEngine._migrate,
}
