"""The one compiled part of pfkeyd: ESP's AEAD fast path over OpenSSL's libcrypto.

Everything else is declared in pyproject.toml.  The extension is optional: where it
cannot be built (no C compiler, no OpenSSL headers -- Debian's libssl-dev) the
install still succeeds and the packet path runs in pure Python; the test suite
then fails in tests/packet/test_espfast.py, which says what to install.
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
        )
    ]
)
