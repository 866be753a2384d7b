"""The compiled parts of pfkeyd: ESP's AEAD fast path over OpenSSL's libcrypto, and
two steps of building a record (pfkeyd/recordfast.c).

Everything else is declared in pyproject.toml.  Both extensions are optional: where
they cannot be built (no C compiler, no OpenSSL headers -- Debian's libssl-dev) the
install still succeeds and the packet path and the records run in pure Python; the
test suite then fails in tests/packet/test_espfast.py and tests/test_record.py,
which say what to install.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pfkeyd.packet.espfast",
            sources=["pfkeyd/packet/espfast.c"],
            libraries=["crypto"],
            extra_compile_args=["-Wall", "-Wextra", "-O2"],
            optional=True,
        ),
        Extension(
            "pfkeyd.recordfast",
            sources=["pfkeyd/recordfast.c"],
            extra_compile_args=["-Wall", "-Wextra", "-O2"],
            optional=True,
        ),
    ]
)
