"""Immutable value records that are cheap to build.

A frozen dataclass stores each field through ``object.__setattr__``, slow for
records built per message (bench/README.md has the figures).  :func:`record` keeps what a frozen
dataclass promises -- no field can be assigned or deleted, by the type checker
(``mypy --strict`` refuses it) or at run time (``FrozenInstanceError``) -- and
builds as fast as a plain slotted dataclass.

How: every record is a pair of classes.  The *twin* is a plain slotted dataclass
made from the class body; its fields are stored directly, as a plain
dataclass's ``__init__`` stores them.  The public class is a subclass of the twin
with no slots of its own, whose ``__setattr__`` and ``__delattr__`` refuse.
Calling the public class builds a twin and then retypes it (``__class__``
assignment, allowed because the two layouts are identical), so an instance's
type is always the public class.  ``isinstance``, equality (``__class__``
identity), hashing, ``dataclasses.fields``, ``dataclasses.replace``, ``copy`` and
pattern matching behave as for a frozen dataclass.

The call is the record's own: each public class has a metaclass of its own
whose ``__call__`` is written for the record's fields, with the signature of the
dataclass's ``__init__`` (``inspect.signature`` and ``help`` show the fields).
It takes its arguments as any function does, stores them in a new twin (itself
where every field is a plain one, else through the dataclass's ``__init__``) and
retypes it: no ``*args``/``**kwargs`` to pack and unpack, and one call of Python
code per record where a plain dataclass makes one too.  ``bench/record.py``
measures the three constructions side by side.  Where the extension
``pfkeyd.recordfast`` (``recordfast.c``) was built, the blank twin and the
retyping come from it, which checks the two layouts itself and skips the generic
``__class__`` store; otherwise ``object.__new__`` and that store do the same.

Code that needs a changed copy uses ``dataclasses.replace``.  A field that caches a
derived value (``_hash``) is set once with ``object.__setattr__``, as it would be on
a frozen dataclass.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any, NoReturn, TypeVar, dataclass_transform, overload

try:
    from pfkeyd import recordfast
except ImportError:  # not compiled (no C compiler at install): the same steps in Python
    recordfast = None  # type: ignore[assignment]

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


class _Sealed(type):
    """The metaclass of public record classes; each record's own metaclass is a
    subclass whose ``__call__`` is made by :func:`_constructor`."""


#: The names the generated constructors use for themselves: no field starts so.
_OWN = "__record_"


def _constructor(twin: type) -> Callable[..., Any]:
    """The ``__call__`` of a record's metaclass: ``(cls, <the fields>)``, as the twin's
    ``__init__`` takes them, building a twin and retyping it as ``cls``."""
    init: Any = vars(twin)["__init__"]  # the dataclass made one for the twin
    params = list(inspect.signature(init).parameters.values())[1:]
    fields = dataclasses.fields(twin)
    if any(p.name.startswith(_OWN) for p in params):  # pragma: no cover - no field is named so
        raise TypeError(f"{twin.__name__}: a field name starts with {_OWN}")
    names: dict[str, Any] = {f"{_OWN}twin": twin, f"{_OWN}init": init}
    if recordfast is not None:
        names[f"{_OWN}new"], names[f"{_OWN}seal"] = recordfast.blank, recordfast.seal
    else:
        names[f"{_OWN}new"] = object.__new__
    signature, passed = [], []
    for n, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and "*" not in signature:
            signature.append("*")
        if p.default is p.empty:
            signature.append(p.name)
        else:
            names[f"{_OWN}d{n}"] = p.default  # the very default (or factory marker) of __init__
            signature.append(f"{p.name}={_OWN}d{n}")
        passed.append(p.name if p.kind is p.POSITIONAL_OR_KEYWORD else f"{p.name}={p.name}")
    # Plain fields (no factory, no __post_init__, no InitVar) are stored here, as the
    # dataclass's __init__ would store them; otherwise that __init__ does it.
    plain = (
        not hasattr(twin, "__post_init__")
        and [p.name for p in params] == [f.name for f in fields if f.init]
        and all(f.default_factory is dataclasses.MISSING for f in fields)
        and all(f.init or f.default is not dataclasses.MISSING for f in fields)
    )
    lines = [f"def __call__({_OWN}cls, {', '.join(signature)}):", f"    {_OWN}obj = {_OWN}new({_OWN}twin)"]
    if plain:
        for f in fields:
            if f.init:
                lines.append(f"    {_OWN}obj.{f.name} = {f.name}")
            else:
                names[f"{_OWN}f_{f.name}"] = f.default
                lines.append(f"    {_OWN}obj.{f.name} = {_OWN}f_{f.name}")
    else:
        lines.append(f"    {_OWN}init({_OWN}obj, {', '.join(passed)})")
    if recordfast is not None:
        lines.append(f"    return {_OWN}seal({_OWN}obj, {_OWN}cls)")
    else:
        lines += [f"    {_OWN}obj.__class__ = {_OWN}cls", f"    return {_OWN}obj"]
    exec("\n".join(lines), names)  # our own text, as dataclasses writes __init__
    call: Callable[..., Any] = names["__call__"]
    call.__qualname__ = f"{twin.__qualname__}.__call__"
    call.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not p.empty}
    return call


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
        # The twin of a record derived from another has that record's metaclass;
        # this record's own derives from it (Python requires so) and is never
        # used to build the twin, which is made with object.__new__.
        base_meta = type(twin) if isinstance(twin, _Sealed) else _Sealed
        meta: Any = type(f"{twin.__name__}Meta", (base_meta,), {"__call__": _constructor(twin)})
        meta.__module__ = twin.__module__
        public: Any = meta(
            twin.__name__,
            (twin,),
            {
                "__slots__": (),
                "__setattr__": _refuse_set,
                "__delattr__": _refuse_del,
                "__setstate__": _set_state,
                "__module__": twin.__module__,
                "__qualname__": twin.__qualname__,
                "__doc__": twin.__doc__,
            },
        )
        sealed: type[_T] = public
        return sealed

    return make if cls is None else make(cls)
