"""Immutable value records that are cheap to build.

A frozen dataclass stores each field through ``object.__setattr__``, about a tenth
of a microsecond per field: an SA record of twenty fields costs two microseconds
before it holds anything, and the daemon builds one per ADD, the codec one per
extension, setkey several per statement.  :func:`record` gives the type checker a
frozen dataclass -- assigning to a field is an error under ``mypy --strict``, which
CI runs -- and gives the run time a slotted dataclass whose ``__init__`` stores its
fields directly, several times faster.  Equality and hashing are those of a frozen
dataclass (by value, over the compared fields); a class that defines its own
``__hash__`` keeps it.

Records are never changed after construction; code that needs a changed copy uses
``dataclasses.replace``.  A field that caches a derived value (``_hash``) is set once
with ``object.__setattr__``, as it would be on a frozen dataclass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform, overload

__all__ = ["record"]

_T = TypeVar("_T")


@overload
def record(cls: type[_T], /) -> type[_T]: ...


@overload
def record(*, kw_only: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_T] | None = None, /, *, kw_only: bool = False) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """Make ``cls`` an immutable, slotted, value-compared record (see the module doc);
    ``@record(kw_only=True)`` makes its fields keyword-only."""

    def make(c: type[_T]) -> type[_T]:
        return dataclass(slots=True, kw_only=kw_only, unsafe_hash="__hash__" not in c.__dict__)(c)

    return make if cls is None else make(cls)
