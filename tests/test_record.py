"""Records are immutable at run time, not only to the type checker, and still behave
as frozen dataclasses: equality, hashing, replace, copy, pickle, inheritance."""

from __future__ import annotations

import copy
import dataclasses
import pickle
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
