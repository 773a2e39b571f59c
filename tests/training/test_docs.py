"""docs/training.md's examples run; experiments/train_quantized.py runs (one short epoch)."""

import pathlib
import re
import runpy
import sys

import torch

ROOT = pathlib.Path(__file__).parents[2]


def test_docs_training_md_examples_run(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "training.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 6
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    for block in blocks:
        exec(compile(block, "docs/training.md", "exec"), {})
    out = capsys.readouterr().out
    assert "32768.0 0" in out
    assert "int8 None" in out
    assert (tmp_path / "lora.safetensors").exists() and (tmp_path / "fp8.safetensors").exists()


def test_public_names_are_documented_and_not_shadowed_by_submodules():
    import importlib
    import pkgutil
    import types

    import mpq.training as T

    for info in pkgutil.iter_modules(T.__path__, prefix="mpq.training."):
        importlib.import_module(info.name)  # importing a submodule sets a package attribute
    for name in T.__all__:
        assert getattr(T, name).__doc__, name
    assert isinstance(T.from_torch, types.FunctionType)
    assert isinstance(T.qat, types.ModuleType)


def test_experiment_script_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train_quantized.py", "--epochs", "1"])
    runpy.run_path(str(ROOT / "experiments" / "train_quantized.py"), run_name="__main__")
    out = capsys.readouterr().out
    for step in ("mixed_bfloat16", "int8 W8A8", "float8 after", "LoRA", "QAT"):
        assert step in out
    accuracies = [float(a) for a in re.findall(r"acc\s+([\d.]+)%", out)]
    assert len(accuracies) == 9 and min(accuracies) > 50.0
