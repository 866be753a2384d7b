# The compiled module pfkeyd/recordfast.c: two steps of building a record (pfkeyd/record.py).
from typing import TypeVar

_T = TypeVar("_T")

def blank(twin: type[_T], /) -> _T: ...
def seal(obj: object, cls: type[_T], /) -> _T: ...
