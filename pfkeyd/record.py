"""Immutable value records that are cheap to build.

A frozen dataclass stores each field through ``object.__setattr__``, slow for
records built per message (bench/README.md has the figures).  :func:`record` keeps what a frozen
dataclass promises -- no field can be assigned or deleted, by the type checker
(``mypy --strict`` refuses it) or at run time (``FrozenInstanceError``) -- and
builds as fast as a plain slotted dataclass.

How: every record is a pair of classes.  The *twin* is a plain slotted dataclass
made from the class body; its generated ``__init__`` stores the fields directly.
The public class is a subclass of the twin with no slots of its own, whose
``__setattr__`` and ``__delattr__`` refuse.  Calling the public class builds a twin
and then retypes it (``__class__`` assignment, allowed because the two layouts are
identical), so an instance's type is always the public class.  ``isinstance``,
equality (``__class__`` identity), hashing, ``dataclasses.fields``,
``dataclasses.replace``, ``copy`` and pattern matching behave as for a frozen
dataclass.  ``bench/record.py`` measures the three constructions side by side.

Code that needs a changed copy uses ``dataclasses.replace``.  A field that caches a
derived value (``_hash``) is set once with ``object.__setattr__``, as it would be on
a frozen dataclass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any, NoReturn, TypeVar, dataclass_transform, overload

__all__ = ["record"]

_T = TypeVar("_T")


def _refuse_set(self: object, name: str, value: object) -> NoReturn:
    raise FrozenInstanceError(f"cannot assign to field {name!r} of {type(self).__name__}")


def _refuse_del(self: object, name: str) -> NoReturn:
    raise FrozenInstanceError(f"cannot delete field {name!r} of {type(self).__name__}")


def _set_state(self: object, state: Any) -> None:
    # copy and pickle restore a slotted object's state with setattr; a record takes
    # it field by field below the refusing __setattr__.
    _, slots = state if isinstance(state, tuple) else (state, None)
    for name, value in {**(_ or {}), **(slots or {})}.items():
        object.__setattr__(self, name, value)


_build = type.__call__


class _Sealed(type):
    """The metaclass of public record classes: build the mutable twin, then seal it."""

    _twin: type | None

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        twin = cls._twin
        if twin is None:  # the twin of a record that derives from another record
            return _build(cls, *args, **kwargs)
        obj = twin(*args, **kwargs)
        obj.__class__ = cls
        return obj


@overload
def record(cls: type[_T], /) -> type[_T]: ...


@overload
def record(*, kw_only: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_T] | None = None, /, *, kw_only: bool = False) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """Make ``cls`` an immutable, slotted, value-compared record (see the module doc);
    ``@record(kw_only=True)`` makes its fields keyword-only."""

    def make(c: type[_T]) -> type[_T]:
        twin: Any = dataclass(slots=True, kw_only=kw_only, unsafe_hash="__hash__" not in c.__dict__)(c)
        # A twin whose base is another record inherits the refusing methods: give it
        # back plain ones, and mark it as built directly.
        twin.__setattr__ = object.__setattr__
        twin.__delattr__ = object.__delattr__
        twin._twin = None
        public: Any = _Sealed(
            twin.__name__,
            (twin,),
            {
                "__slots__": (),
                "__setattr__": _refuse_set,
                "__delattr__": _refuse_del,
                "__setstate__": _set_state,
                "_twin": twin,
                "__module__": twin.__module__,
                "__qualname__": twin.__qualname__,
                "__doc__": twin.__doc__,
            },
        )
        sealed: type[_T] = public
        return sealed

    return make if cls is None else make(cls)
