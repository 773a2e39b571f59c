"""The docstring examples of the layers, activations and run_layer_test run as written."""

import doctest
import importlib

import pytest
import torch

MODULES = [
    "mpq.activations",
    "mpq.layers.conv",
    "mpq.layers.core",
    "mpq.layers.einsum_dense",
    "mpq.layers.embedding",
    "mpq.layers.merging",
    "mpq.layers.normalization",
    "mpq.testing.layer_test",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    torch.manual_seed(0)
    result = doctest.testmod(
        module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE, report=False
    )
    assert result.attempted > 0
    assert result.failed == 0
