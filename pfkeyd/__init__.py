"""pfkeyd: a user-space PF_KEY v2 key engine.

The packages inside:

* :mod:`pfkeyd.wire` - the PF_KEY v2 wire codec, both dialects (pure);
* :mod:`pfkeyd.algorithms` - the one algorithm table of the project (pure).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
