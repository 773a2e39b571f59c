"""The docstring examples of mpq.quantizers run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

import mpq.quantizers as Q


@pytest.mark.parametrize("module", ["integer", "packing", "float8", "fake_quant"])
def test_docstring_examples(module):
    mod = importlib.import_module(f"mpq.quantizers.{module}")
    torch.manual_seed(0)
    globs = {"torch": torch, **{name: getattr(Q, name) for name in Q.__all__}}
    result = doctest.testmod(
        mod, extraglobs=globs, optionflags=doctest.NORMALIZE_WHITESPACE, report=False
    )
    assert result.attempted > 0
    assert result.failed == 0


def test_public_api_is_explicit():
    assert sorted(Q.__all__) == sorted(set(Q.__all__))
    for name in Q.__all__:
        obj = getattr(Q, name)
        assert obj.__doc__ and "Example" in obj.__doc__, name
