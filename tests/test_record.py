"""Records are immutable at run time, not only to the type checker, and still behave
as frozen dataclasses: equality, hashing, replace, copy, pickle, inheritance."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
import sys
from collections.abc import Callable
from dataclasses import field

import pytest

from pfkeyd.record import record
from pfkeyd.wire import ExtType, Lifetime


@record
class Point:
    x: int
    y: int = 0
    _cache: int | None = field(default=None, init=False, repr=False, compare=False)


@record(kw_only=True)
class Base:
    a: int


@record(kw_only=True)
class Derived(Base):
    b: str = "b"


def test_assigning_a_field_raises_and_changes_nothing() -> None:
    life = Lifetime(ExtType.LIFETIME_HARD, 0, 100, 3600, 0)
    with pytest.raises(dataclasses.FrozenInstanceError, match="bytes"):
        life.bytes = 999  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del life.addtime
    with pytest.raises(dataclasses.FrozenInstanceError):
        life.unknown = 1  # type: ignore[attr-defined]
    assert life == Lifetime(ExtType.LIFETIME_HARD, 0, 100, 3600, 0)


def test_derived_records_are_immutable_too() -> None:
    d = Derived(a=1, b="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.a = 2  # type: ignore[misc]
    assert isinstance(d, Base)
    assert type(d) is Derived
    assert d == Derived(a=1, b="x")
    assert d != Base(a=1)
    assert [f.name for f in dataclasses.fields(d)] == ["a", "b"]


def test_value_semantics_are_a_frozen_dataclasses() -> None:
    p = Point(1, 2)
    assert type(p) is Point
    assert p == Point(1, 2) and p != Point(2, 1)
    assert hash(p) == hash(Point(1, 2))
    assert repr(p) == "Point(x=1, y=2)"
    q = dataclasses.replace(p, y=5)
    assert type(q) is Point and q == Point(1, 5) and p == Point(1, 2)
    match p:
        case Point(x, y):
            assert (x, y) == (1, 2)


def test_a_cache_field_is_set_through_object_setattr_only() -> None:
    p = Point(3)
    object.__setattr__(p, "_cache", 42)
    assert p._cache == 42
    assert p == Point(3)  # the cache takes no part in equality


@pytest.mark.parametrize("clone", [copy.copy, copy.deepcopy, lambda v: pickle.loads(pickle.dumps(v))])
def test_copies_and_pickles_are_equal_immutable_records(clone: Callable[[object], object]) -> None:
    for value in (Point(7, 8), Derived(a=3), Lifetime(ExtType.LIFETIME_SOFT, 1, 2, 3, 4)):
        c = clone(value)
        assert c == value and type(c) is type(value)
        with pytest.raises(dataclasses.FrozenInstanceError):
            c.__setattr__(dataclasses.fields(c)[0].name, 0)


@record
class Tally:
    """A record whose dataclass __init__ does more than store: a factory and __post_init__."""

    name: str
    seen: list[int] = field(default_factory=list)
    size: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", len(self.name))


def test_a_record_takes_its_fields_as_its_signature_says() -> None:
    # The constructor has the dataclass's own signature, so help() and
    # inspect show the fields (a generic (*args, **kwargs) did before).
    assert str(inspect.signature(Point)) == "(x: 'int', y: 'int' = 0)"
    assert str(inspect.signature(Derived)) == "(*, a: 'int', b: 'str' = 'b')"
    assert list(inspect.signature(Lifetime).parameters) == [f.name for f in dataclasses.fields(Lifetime)]
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'x'"):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Point(1, z=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional argument"):
        Derived(1)  # type: ignore[call-arg]


def test_fields_with_factories_and_post_init_are_built_as_the_dataclass_builds_them() -> None:
    a, b = Tally("abc"), Tally("de", [1])
    assert (a.seen, a.size, b.seen, b.size) == ([], 3, [1], 2)
    assert a.seen is not Tally("x").seen  # a new list each time
    assert type(a) is Tally
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.size = 1  # type: ignore[misc]
    p = Point(1)
    assert p._cache is None and p.y == 0  # a field not in __init__ gets its default


def test_every_record_builds_what_its_dataclass_init_builds() -> None:
    # The constructor stores plain fields itself: for each record class of the
    # tree, the same arguments give the same fields as the twin's own __init__.
    import pfkeyd.sad
    import pfkeyd.wire.ext
    import setkey.commands

    checked = 0
    for module in (pfkeyd.wire.ext, pfkeyd.sad, setkey.commands):
        for cls in vars(module).values():
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__):
                continue
            if hasattr(cls, "__post_init__"):
                continue  # built by the dataclass's __init__ itself (and it checks its values)
            params = list(inspect.signature(cls).parameters.values())
            args = {p.name: object() for p in params if p.default is p.empty}
            built = cls(**args)
            twin: object = object.__new__(cls.__mro__[1])
            vars(cls.__mro__[1])["__init__"](twin, **args)
            for f in dataclasses.fields(cls):
                assert getattr(built, f.name, None) is getattr(twin, f.name, None), (cls, f.name)
            checked += 1
    assert checked > 40


# ------------------------------------------------------- the compiled steps


def test_the_compiled_steps_are_built() -> None:
    try:
        from pfkeyd import recordfast  # noqa: F401
    except ImportError:  # pragma: no cover - the message is the point
        pytest.fail(
            "pfkeyd.recordfast is not built: install a C compiler (Debian: apt-get install gcc), "
            "then reinstall pfkeyd (setup.py builds pfkeyd/recordfast.c)"
        )


def test_records_are_built_by_the_compiled_steps() -> None:
    from pfkeyd import recordfast

    call = type(Lifetime).__call__
    assert call.__globals__["__record_new"] is recordfast.blank
    assert call.__globals__["__record_seal"] is recordfast.seal
    life = Lifetime(ExtType.LIFETIME_HARD, 1, 2, 3, 4)
    assert type(life) is Lifetime and life.bytes == 2


def test_seal_refuses_what_it_cannot_retype_and_changes_nothing() -> None:
    from pfkeyd import recordfast

    twin = Point.__mro__[1]
    obj: object = recordfast.blank(twin)
    for cls in (Derived, Base, twin, int, object):
        with pytest.raises(TypeError, match="does not extend"):
            recordfast.seal(obj, cls)
        assert type(obj) is twin
    with pytest.raises(TypeError, match="needs a class"):
        recordfast.seal(obj, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="2 arguments"):
        recordfast.seal(obj)  # type: ignore[call-arg]
    for bad in (int, tuple, 3, type):
        with pytest.raises(TypeError, match="plain slotted class"):
            recordfast.blank(bad)  # type: ignore[arg-type]
    assert type(recordfast.seal(obj, Point)) is Point


def test_sealing_keeps_the_classes_reference_counts() -> None:
    twin = Point.__mro__[1]
    before = sys.getrefcount(Point), sys.getrefcount(twin)
    points = [Point(i) for i in range(1000)]
    assert sys.getrefcount(Point) == before[0] + 1000
    del points
    assert (sys.getrefcount(Point), sys.getrefcount(twin)) == before


def test_without_the_compiled_steps_records_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    import pfkeyd.record

    monkeypatch.setattr(pfkeyd.record, "recordfast", None)

    @record
    class Pure:
        x: int
        y: int = 0

    assert "__record_seal" not in type(Pure).__call__.__globals__
    p = Pure(1)
    assert type(p) is Pure and (p.x, p.y) == (1, 0) and p == Pure(1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    assert copy.deepcopy(p) == p and pickle.loads(pickle.dumps(Lifetime(ExtType.LIFETIME_HARD, 0, 1, 2, 3))).bytes == 1
