"""Any reply rendered as the options ask: the text, short or JSON format, or the error."""

from __future__ import annotations

from collections.abc import Callable

from pfkeyd.wire import (
    Dialect,
    Message,
    MsgType,
    SaState,
)
from setkey.dump.common import _STYLES, DumpOptions, _pfkey_check
from setkey.dump.error import format_error
from setkey.dump.json_lines import format_json
from setkey.dump.short import format_short
from setkey.dump.text import format_policy, format_sa


def _dump_sa(msg: Message, now: int, opts: DumpOptions) -> str:
    sa = msg.sa
    if not opts.show_dead and sa is not None and sa.state == SaState.DEAD:
        return ""
    return format_short(msg, now, opts) if opts.short else format_sa(msg, now, opts)


def _policy(msg: Message, now: int, opts: DumpOptions) -> str:
    return format_policy(msg, opts)


_Renderer = Callable[[Message, int, DumpOptions], str]

#: postproc(): which replies print what, per reference tool.  FreeBSD's setkey
#: ignores SPDGET replies; ipsec-tools prints them like dump entries.
_RENDERERS: dict[Dialect, dict[int, _Renderer]] = {
    Dialect.FREEBSD: {MsgType.GET: format_sa, MsgType.DUMP: _dump_sa, MsgType.X_SPDDUMP: _policy},
    Dialect.LINUX: {
        MsgType.GET: format_sa,
        MsgType.DUMP: _dump_sa,
        MsgType.X_SPDDUMP: _policy,
        MsgType.X_SPDGET: _policy,
    },
}


def render_reply(msg: Message, now: int, opts: DumpOptions) -> str:
    """Everything setkey prints for one reply (postproc): the error line, the SA or
    policy, the ``-l`` line or the JSON line; ``""`` for replies it does not print
    (dead SAs without ``-a``, ADD/DELETE/FLUSH acknowledgements, ...)."""
    if opts.json:
        return format_json(msg, opts)
    if msg.errno:
        return format_error(msg, opts)
    render = _RENDERERS[opts.dialect].get(msg.type)
    return "" if render is None else render(msg, now, opts)


def priority_warning(request: Message, reply: Message, opts: DumpOptions) -> str:
    """ipsec-tools' check that the kernel kept a policy priority (linux format only).

    After an SPDADD request with a non-zero priority, the first SPDADD reply that
    carries setkey's own pid is compared with it; a different priority prints
    ``WARNING: Kernel does not support policy priorities``.  ipsec-tools does this
    once per run: the caller keeps that state and calls this for the first such
    reply only.  Returns the text to print on stdout, or ``""``.
    """
    if opts.dialect is not Dialect.LINUX or request.type != MsgType.X_SPDADD or reply.type != MsgType.X_SPDADD:
        return ""
    sent = request.policy
    if sent is None or sent.priority == 0 or reply.pid != request.pid:
        return ""
    problem = _pfkey_check(reply, _STYLES[opts.dialect])
    if problem is not None:
        return problem + "\n"
    got = reply.policy
    if got is None:
        return "no X_POLICY extension.\n"
    return "" if got.priority == sent.priority else "WARNING: Kernel does not support policy priorities\n"
