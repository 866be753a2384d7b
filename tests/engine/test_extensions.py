"""The one table of required and allowed extensions (pfkeyd.engine.extensions),
checked once before any handler: a request without a required extension, or with
one its type does not allow, is refused EINVAL and changes nothing."""

from __future__ import annotations

import errno

import pytest

from pfkeyd.engine import HANDLERS
from pfkeyd.engine.extensions import EXTENSIONS, check_extensions
from pfkeyd.errors import InvalidArgument
from pfkeyd.wire import Message, MsgType, SaType
from tests.engine.conftest import FB, LX, T0, add, dst, fails, get, make_engine, mature, snapshot, src

SA_TYPES = {MsgType.GETSPI, MsgType.UPDATE, MsgType.ADD, MsgType.DELETE, MsgType.GET}


def test_every_type_in_the_table_has_a_handler() -> None:
    assert set(EXTENSIONS) <= set(HANDLERS)


@pytest.mark.parametrize("client", [FB, LX])
@pytest.mark.parametrize("msgtype", sorted(t for t, rule in EXTENSIONS.items() if rule.required))
def test_a_request_without_its_required_extensions_is_refused_einval(client: int, msgtype: int) -> None:
    engine = make_engine()
    mature(engine)
    before = snapshot(engine)
    satype = SaType.ESP if msgtype in SA_TYPES else SaType.UNSPEC
    assert fails(engine, client, Message(msgtype, satype, 1, 4242)) == errno.EINVAL
    assert snapshot(engine) == before


@pytest.mark.parametrize("msgtype", [MsgType.ADD, MsgType.GET])
def test_each_required_extension_alone_missing_is_refused(msgtype: int) -> None:
    engine = make_engine()
    mature(engine)
    full = add(SaType.ESP, 0x2000) if msgtype == MsgType.ADD else get(SaType.ESP, 0x1000)
    for exttype in EXTENSIONS[msgtype].required:
        before = snapshot(engine)
        partial = full.replace(exts=tuple(e for e in full.exts if e.exttype != exttype))
        assert fails(engine, FB, partial) == errno.EINVAL
        assert snapshot(engine) == before


def test_spdflush_allows_no_extension() -> None:
    engine = make_engine()
    before = snapshot(engine)
    msg = Message(MsgType.X_SPDFLUSH, 0, 1, 4242, exts=(src(), dst()))
    assert fails(engine, FB, msg, T0) == errno.EINVAL
    assert snapshot(engine) == before


def test_the_refusal_names_what_is_missing() -> None:
    with pytest.raises(InvalidArgument, match="ADD requires SA, ADDRESS_DST"):
        check_extensions(Message(MsgType.ADD, SaType.ESP, 0, 0, exts=(src(),)))
