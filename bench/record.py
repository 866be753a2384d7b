"""Record construction: pfkeyd's immutable records beside the two obvious alternatives.

    .venv/bin/python bench/record.py [--seconds S]

Builds the SAD's twenty-field :class:`pfkeyd.sad.SecAssoc` and the codec's
five-field :class:`pfkeyd.wire.Lifetime` as

* ``record``: what the tree uses -- immutable at run time (a sealed twin, see
  ``pfkeyd/record.py``);
* a plain slotted dataclass with the same fields, mutable: the cheapest possible
  construction and what ``record`` built before it refused assignment (baseline);
* a ``frozen=True`` slotted dataclass: the standard library's immutable record;

all measured in the same run, and prints each rate with its ratio to the baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from pfkeyd.sad import SecAssoc
from pfkeyd.wire import Lifetime


def _variant(public: Any, **params: Any) -> Any:
    """A dataclass with the same fields as the record ``public``, built with ``params``."""
    fields = [(f.name, f.type, f) for f in dataclasses.fields(public)]
    return dataclasses.make_dataclass(public.__name__, fields, slots=True, eq=True, **params)


def _rate(make: Callable[[], object], seconds: float) -> float:
    n = 0
    batch = 10_000
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            make()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    sa_kwargs = {f.name: None for f in dataclasses.fields(SecAssoc) if f.init}
    for cls, kwargs in ((SecAssoc, sa_kwargs), (Lifetime, {"exttype": 3, "allocations": 1, "bytes": 2, "addtime": 3})):
        plain = _variant(cls)
        frozen = _variant(cls, frozen=True)
        base = _rate(partial(plain, **kwargs), args.seconds)
        print(f"{cls.__name__} ({len(kwargs)} fields)")
        print(f"  plain slotted dataclass (mutable; baseline) {base:12,.0f}/s")
        for name, make in (("record (immutable)", cls), ("frozen dataclass", frozen)):
            r = _rate(partial(make, **kwargs), args.seconds)
            print(f"  {name:40} {r:12,.0f}/s  ratio {r / base:.2f}")


if __name__ == "__main__":
    main()
