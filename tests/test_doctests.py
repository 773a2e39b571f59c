"""Every docstring example in the package runs and prints what it shows.

Modules are discovered, so a new module's examples are checked without touching this file. The
Triton kernel modules are left to tests/kernels (they need the interpreter set up first).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import shutil
from pathlib import Path

import pytest
import torch

import mpq

SKIP = ("mpq.kernels._triton",)
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(mpq.__path__, prefix="mpq.")
    if not info.name.startswith(SKIP)
)


def _examples(name: str) -> int:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return sum(len(test.examples) for test in finder.find(module, name))


WITH_EXAMPLES = [name for name in MODULES if _examples(name)]


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name, monkeypatch, tmp_path):
    monkeypatch.delenv("MPQ_KERNEL_BACKEND", raising=False)
    # Examples that write files (saving, sweeps) do so in a scratch directory that has the
    # sweep configs the sweep examples name.
    shutil.copytree(Path(__file__).resolve().parents[1] / "experiments", tmp_path / "experiments")
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    torch.manual_seed(0)
    result = doctest.testmod(
        module,
        extraglobs={"torch": torch, "mpq": mpq},
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
        report=False,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_examples_are_found_where_expected():
    for name in (
        "mpq.policy",
        "mpq.dtypes",
        "mpq.layers.dense",
        "mpq.quantizers.integer",
        "mpq.kernels._dispatch",
        "mpq.activations",
        "mpq.testing.layer_test",
    ):
        assert name in WITH_EXAMPLES, name
