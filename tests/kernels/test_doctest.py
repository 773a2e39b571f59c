"""The examples in the docstrings of mpq.kernels run and print what they show."""

from __future__ import annotations

import doctest

import pytest

from mpq.kernels import _dispatch, reference

pytestmark = pytest.mark.kernels


@pytest.mark.parametrize("module", [_dispatch, reference], ids=lambda m: m.__name__)
def test_docstring_examples(module, monkeypatch):
    monkeypatch.delenv("MPQ_KERNEL_BACKEND", raising=False)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
