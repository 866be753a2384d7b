"""setkey's own key-length checks: what it says about the key after ``-A``/``-E``/``-C``.

setkey checks a key against the list the kernel sent in its SADB_REGISTER reply,
as libipsec's ipsec_check_keylen does, before anything is sent; the kernel's own
checks at ADD are :func:`pfkeyd.algorithms.check_key`.  Both read the one
algorithm table (:mod:`pfkeyd.algorithms`); only the setkey side lives here.
"""

from __future__ import annotations

from collections.abc import Iterable

from pfkeyd.algorithms import ANY_KEY, Algorithm, KeyForm, Kind, supported
from pfkeyd.wire.dialect import Dialect
from pfkeyd.wire.ext import Alg

__all__ = ["NOT_SUPPORTED", "INVALID_KEY_LENGTH", "accepted_bits", "key_error"]

#: libipsec's messages (ipsec_strerror) for the outcomes of ipsec_check_keylen.
NOT_SUPPORTED = "Not supported"
INVALID_KEY_LENGTH = "Invalid key length"

#: tcp-md5 keys are checked by setkey's grammar itself, in bytes (parse.y).
_TCP_KEY_BITS = range(8, 80 * 8 + 1, 8)
#: ALG_ENC_SALT keys carry a 4-byte salt that ipsec_check_keylen is not shown.
_SALT_BITS = 32


def _form(alg: Algorithm, dialect: Dialect, form: KeyForm | None) -> KeyForm:
    if form is not None:
        return form
    spellings = alg.on(dialect).setkey
    return spellings[0].key if spellings else KeyForm.KEY


def accepted_bits(
    alg: Algorithm,
    dialect: Dialect | str = Dialect.FREEBSD,
    *,
    form: KeyForm | None = None,
    supported_algs: Iterable[Alg] | None = None,
) -> range | None:
    """The key lengths in bits setkey accepts for ``alg``, as typed (salt included).

    setkey checks keys against the list the kernel sent in its SADB_REGISTER reply:
    ``supported_algs`` when given, otherwise the table's list for ``dialect``.
    Returns None when that list lacks the algorithm ("Not supported").  A key-less
    encryption spelling (``-E null`` in ipsec-tools, ``simple``) has its empty key
    checked, so it yields ``range(0, 1)`` or an empty range; ``-A null`` and ``-C``
    are not checked at all and yield every length.  ``form`` defaults to the form
    of the dialect's first spelling.
    """
    d = Dialect(dialect)
    key_form = _form(alg, d, form)
    if alg.kind is Kind.COMPRESS or (alg.kind is Kind.AUTH and key_form is KeyForm.NONE):
        return range(0, ANY_KEY.stop * 8, 8)  # parse.y checks nothing here
    if key_form is KeyForm.TCP:
        return _TCP_KEY_BITS
    kind_list = supported(alg.kind, d) if supported_algs is None else tuple(supported_algs)
    entry = next((e for e in kind_list if e.id == alg.id), None)
    if entry is None:
        return None
    salt = _SALT_BITS if key_form is KeyForm.SALTED else 0
    low = -(-entry.minbits // 8) * 8 + salt
    bits = range(low, entry.maxbits + salt + 1, 8)
    if key_form is KeyForm.NONE:  # ALG_ENC_NOKEY / ALG_ENC_OLD check an empty key
        return range(1) if 0 in bits else range(0)
    return bits


def key_error(
    alg: Algorithm,
    bits: int,
    dialect: Dialect | str = Dialect.FREEBSD,
    *,
    form: KeyForm | None = None,
    supported_algs: Iterable[Alg] | None = None,
) -> str | None:
    """What setkey says about a ``bits``-bit key for ``alg``, or None when it is fine.

    The message is libipsec's (:data:`NOT_SUPPORTED`, :data:`INVALID_KEY_LENGTH`);
    a caller adds the value and the expected sizes from :func:`accepted_bits`.
    Real setkey fails a bad tcp-md5 key without any message.
    """
    accepted = accepted_bits(alg, dialect, form=form, supported_algs=supported_algs)
    if accepted is None:
        return NOT_SUPPORTED
    return None if bits in accepted else INVALID_KEY_LENGTH
