"""The public API of mpq.quantizers is explicit and documented with examples (the examples
themselves run in tests/test_doctests.py)."""

from __future__ import annotations

import mpq.quantizers as Q


def test_public_api_is_explicit():
    assert sorted(Q.__all__) == sorted(set(Q.__all__))
    for name in Q.__all__:
        obj = getattr(Q, name)
        assert obj.__doc__ and "Example" in obj.__doc__, name


def test_float8_spec_refuses_a_format_without_mantissa():
    import pytest

    from mpq.quantizers._common import _float8_spec

    with pytest.raises(ValueError, match=r"Expected a float format\. Received: <Format \"int8\">"):
        _float8_spec("int8")
