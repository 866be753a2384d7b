"""Which extensions each message type must carry, and which it may: one table.

OpenBSD's ``sadb_exts_required_in`` and ``sadb_exts_allowed_in``
(``pfkeyv2_parsemessage.c``) as data, checked once, in ``KeyEngine.handle``,
before the handler runs.  A request that lacks a required extension, or carries
one its type does not allow, is refused EINVAL, as key.c's handlers refuse it
(``SADB_CHECKHDR``; af_key.c's ``pfkey_add`` and the like say the same).  The
handlers then rely on what the table promises.

The reference kernels ignore extensions a message does not use, so "allowed" is
the exception here, not the rule: only X_SPDFLUSH refuses anything beyond its
header (key_spdflush checks the message's length).  Requirements that depend on
more than the message type stay with their handler: an ADD's keys (by satype), an
ACQUIRE's addresses and proposal (only when it is not a bare failure report).
The order of the checks before the table (the codec's, then key_parse's in
``check_request_generic``) and of those after it (each handler's) is the
reference kernels', and all of the table's refusals are EINVAL, so checking it in
one place changes no errno.
"""

from __future__ import annotations

from pfkeyd.errors import InvalidArgument
from pfkeyd.record import record
from pfkeyd.wire import ExtType, Message, MsgType

__all__ = ["EXTENSIONS", "ExtensionRule", "check_extensions"]

_SA, _SRC, _DST, _POLICY = ExtType.SA, ExtType.ADDRESS_SRC, ExtType.ADDRESS_DST, ExtType.X_POLICY


@record
class ExtensionRule:
    """What one message type carries: ``required`` extensions (in the order the
    refusal names them) and ``allowed`` ones (None: any)."""

    required: tuple[ExtType, ...] = ()
    allowed: frozenset[ExtType] | None = None


#: Message type -> its rule.  A type with a handler and no entry requires nothing.
EXTENSIONS: dict[int, ExtensionRule] = {
    MsgType.GETSPI: ExtensionRule((_SRC, _DST)),
    MsgType.UPDATE: ExtensionRule((_SA, _SRC, _DST)),
    MsgType.ADD: ExtensionRule((_SA, _SRC, _DST)),
    MsgType.DELETE: ExtensionRule((_SRC, _DST)),  # without SA: every SA of the pair (FreeBSD)
    MsgType.GET: ExtensionRule((_SA, _SRC, _DST)),
    MsgType.X_SPDADD: ExtensionRule((_SRC, _DST, _POLICY)),
    MsgType.X_SPDUPDATE: ExtensionRule((_SRC, _DST, _POLICY)),
    MsgType.X_SPDSETIDX: ExtensionRule((_SRC, _DST, _POLICY)),
    MsgType.X_SPDDELETE: ExtensionRule((_SRC, _DST, _POLICY)),
    MsgType.X_SPDDELETE2: ExtensionRule((_POLICY,)),
    MsgType.X_SPDGET: ExtensionRule((_POLICY,)),
    MsgType.X_SPDFLUSH: ExtensionRule((), frozenset()),
    MsgType.X_MIGRATE: ExtensionRule((_SRC, _DST, _POLICY)),
}


def check_extensions(msg: Message) -> None:
    """Refuse (EINVAL) a request its type's rule does not admit; change nothing."""
    rule = EXTENSIONS.get(msg.type)
    if rule is None:
        return
    missing = [t for t in rule.required if not msg.has(t)]
    if missing:
        error = f"{MsgType(msg.type).name} requires {', '.join(t.name for t in missing)}"
        raise InvalidArgument(error)
    allowed = rule.allowed
    if allowed is not None:
        extra = [e.exttype for e in msg.exts if e.exttype not in allowed]
        if extra:
            names = ", ".join(ExtType(t).name if t in ExtType._value2member_map_ else str(t) for t in extra)
            error = (
                f"{MsgType(msg.type).name} takes no {names}"
                if allowed
                else f"{MsgType(msg.type).name} takes no extensions ({names})"
            )
            raise InvalidArgument(error)
