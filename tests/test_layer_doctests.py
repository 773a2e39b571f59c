"""The docstring examples of mpq.layers, initializers, regularizers, constraints and saving run."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

MODULES = [
    "mpq.layers.base",
    "mpq.layers.dense",
    "mpq.layers.sequential",
    "mpq.layers.serialization",
    "mpq.layers.variables",
    "mpq.layers.input_spec",
    "mpq.initializers",
    "mpq.regularizers",
    "mpq.saving",
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


def test_public_api_is_explicit():
    import mpq.layers as L

    assert sorted(L.__all__) == sorted(set(L.__all__))
    for name in L.__all__:
        assert getattr(L, name).__doc__, name


def test_docs_layers_md_examples_run(tmp_path, monkeypatch, capsys):
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "docs" / "layers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the quick start saves a file
    for block in blocks:
        exec(compile(block, "docs/layers.md", "exec"), {})
    assert (tmp_path / "mlp.safetensors").exists()
    assert "Total params" in capsys.readouterr().out
