"""pfkeyd/man/pfkey.4's list of where the two dialects' answers differ, against the engine.

The page names, for a linux socket, every algorithm an ADD is refused with ENOSYS
for; the list must be the algorithm table's (pfkeyd.algorithms) and each named
algorithm must really get ENOSYS on a linux socket and EINVAL on a freebsd one
(unless FreeBSD installs it).  The one-lifetime rule is checked the same way.
Requests go through the codec of the client's dialect, as the server passes them on.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from pfkeyd import algorithms
from pfkeyd.algorithms import Algorithm, Kind
from pfkeyd.effects import Effect, Error
from pfkeyd.engine import KeyEngine
from pfkeyd.wire import UNKNOWN, AuthAlg, Dialect, EncAlg, Message, SaType
from tests.engine.conftest import add, hard, key_auth, key_enc, make_engine, soft
from tests.engine.spd_helpers import send

PFKEY_4 = Path(__file__).resolve().parent.parent / "pfkeyd" / "man" / "pfkey.4"
#: Linux's SADB_AALG_MAX, SADB_EALG_MAX and SADB_X_CALG_MAX (include/uapi/linux/pfkeyv2.h).
LINUX_MAX = {Kind.AUTH: 251, Kind.ENCRYPT: 253, Kind.COMPRESS: 4}
FB, LX = 1, 3
CLIENT = {Dialect.FREEBSD: FB, Dialect.LINUX: LX}


def differences_from_linux(text: str) -> list[str]:
    """The items of ``.Sh DIFFERENCES FROM LINUX``, each as plain words."""
    lines = text.splitlines()
    start = lines.index(".Sh DIFFERENCES FROM LINUX") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(".Sh "))
    items: list[list[str]] = []
    for line in lines[start:end]:
        if line == ".It":
            items.append([])
        elif items and line not in (".El",):
            # Drop the macro names; keep their arguments (".Er ENOSYS ," -> "ENOSYS ,").
            items[-1].append(re.sub(r"^\.\w+\s*", "", line) if line.startswith(".") else line)
    return [" ".join(words) for words in items]


def item_about(word: str, text: str) -> str:
    found = [item for item in differences_from_linux(text) if word in item.split()]
    assert len(found) == 1, f"expected one DIFFERENCES FROM LINUX item naming {word}, found {len(found)}"
    return found[0]


def named_algorithms(item: str) -> set[Algorithm]:
    """The algorithms of the table whose title the text names (as a whole word)."""
    return {a for a in algorithms.ALGORITHMS if re.search(rf"(?<![\w-]){re.escape(a.title)}(?![\w-])", item)}


def not_installable_on_linux() -> set[Algorithm]:
    """What the table says Linux defines but af_key cannot install (ids in range)."""
    return {
        a
        for a in algorithms.ALGORITHMS
        if a.linux.defined and not a.linux.installable and a.number <= LINUX_MAX[a.kind]
    }


def _engine() -> KeyEngine:
    return make_engine(clients=(FB, LX))


def _add_with(kind: Kind, alg_id: int, spi: int = 0x1000) -> Message:
    """An ADD whose ``kind`` algorithm is ``alg_id`` and every other part is valid."""
    if kind is Kind.AUTH:
        return add(SaType.AH, spi, auth=alg_id, enc=EncAlg.NONE, ka=key_auth(20), ke=None)
    if kind is Kind.ENCRYPT:
        return add(SaType.ESP, spi, auth=AuthAlg.NONE, enc=alg_id, ka=None, ke=key_enc(16))
    return add(SaType.X_IPCOMP, spi, auth=AuthAlg.NONE, enc=alg_id, ka=None, ke=None)


def _errno_of(effects: list[Effect]) -> int:
    """The errno of the error reply, or 0 when the request succeeded."""
    errors = [e.errno for e in effects if isinstance(e, Error)]
    return errors[0] if errors else 0


def _errno(dialect: Dialect, kind: Kind, alg_id: int) -> int:
    return _errno_of(send(_engine(), CLIENT[dialect], _add_with(kind, alg_id)))


def test_the_enosys_item_names_exactly_the_algorithms_linux_cannot_install() -> None:
    item = item_about("ENOSYS", PFKEY_4.read_text())
    assert named_algorithms(item) == not_installable_on_linux()
    assert "any number Linux does not define" in item
    for kind, limit in LINUX_MAX.items():
        assert f"({limit})" in item, (kind, limit)


def test_the_reader_would_see_a_missing_or_extra_algorithm() -> None:
    item = item_about("ENOSYS", PFKEY_4.read_text())
    assert named_algorithms(item.replace("AES-GCM-12, ", "")) != not_installable_on_linux()
    assert named_algorithms(item + " AES-CBC") != not_installable_on_linux()
    assert not named_algorithms("AES-GCM-160")  # a title inside a longer word does not count


def _table_order(alg: Algorithm) -> tuple[str, int]:
    return alg.kind.value, int(alg.id)


_NOT_INSTALLABLE_ON_LINUX: list[Algorithm] = sorted(not_installable_on_linux(), key=_table_order)


@pytest.mark.parametrize("alg", _NOT_INSTALLABLE_ON_LINUX, ids=str)
def test_each_named_algorithm_gets_enosys_on_linux_and_einval_on_freebsd(alg: Algorithm) -> None:
    assert _errno(Dialect.LINUX, alg.kind, alg.id) == errno.ENOSYS
    if alg.freebsd.defined and not alg.freebsd.installable:
        assert _errno(Dialect.FREEBSD, alg.kind, alg.id) == errno.EINVAL


@pytest.mark.parametrize(("kind", "number"), [(Kind.AUTH, 12), (Kind.AUTH, 200), (Kind.ENCRYPT, 100)])
def test_a_number_linux_does_not_define_gets_enosys(kind: Kind, number: int) -> None:
    assert _errno(Dialect.LINUX, kind, UNKNOWN | number) == errno.ENOSYS


@pytest.mark.parametrize(("kind", "number"), [(Kind.AUTH, 252), (Kind.ENCRYPT, 254), (Kind.COMPRESS, 5)])
def test_a_number_above_linux_maximum_gets_einval(kind: Kind, number: int) -> None:
    assert number == LINUX_MAX[kind] + 1
    # Compression ids are the same in both dialects and carried as plain numbers.
    assert _errno(Dialect.LINUX, kind, number if kind is Kind.COMPRESS else UNKNOWN | number) == errno.EINVAL


def test_a_freebsd_socket_answers_einval_where_linux_answers_enosys() -> None:
    gcm8 = algorithms.by_id(Kind.ENCRYPT, EncAlg.X_AESGCM8)
    assert gcm8 is not None and not gcm8.freebsd.installable and not gcm8.linux.installable
    assert (_errno(Dialect.FREEBSD, Kind.ENCRYPT, gcm8.id), _errno(Dialect.LINUX, Kind.ENCRYPT, gcm8.id)) == (
        errno.EINVAL,
        errno.ENOSYS,
    )


def test_the_lifetime_item_says_what_each_dialect_does() -> None:
    item = item_about("LIFETIME_HARD", PFKEY_4.read_text())
    assert "accepted on a linux socket" in item and "freebsd socket it is refused with EINVAL" in item
    for dialect, expect in ((Dialect.LINUX, 0), (Dialect.FREEBSD, errno.EINVAL)):
        for lifetime in (hard(addtime=86400), soft(addtime=3600)):
            eng = _engine()
            assert _errno_of(send(eng, CLIENT[dialect], add(extra=[lifetime]))) == expect, (dialect, lifetime)
            assert len(eng.sad) == (expect == 0)


def test_the_probe_adds_are_valid_but_for_the_algorithm() -> None:
    # Else the errnos above could come from another fault of the request.
    for dialect in Dialect:
        assert _errno(dialect, Kind.AUTH, AuthAlg.X_SHA2_256) == 0
        assert _errno(dialect, Kind.ENCRYPT, EncAlg.X_AESCBC) == 0
        assert _errno(dialect, Kind.COMPRESS, 2) == 0  # DEFLATE
