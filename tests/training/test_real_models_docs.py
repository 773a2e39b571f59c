"""docs/models.md's example runs (needs the `models` extra: transformers)."""

import pathlib
import re

import pytest

pytest.importorskip("transformers")

ROOT = pathlib.Path(__file__).parents[2]


def test_docs_models_md_example_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "models.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/models.md", "exec"), {})
    out = capsys.readouterr().out
    assert "coverage 100%" in out
    assert "weight tied to 'transformer.wte'" in out
    assert "['transformer.ln_f', 'transformer.wpe', 'transformer.wte']" in out
    assert "tied: its variable is also the weight" in out
    int8 = float(re.search(r"int8 SQNR ([\d.]+) dB", out).group(1))
    fp8 = float(re.search(r"fp8 SQNR ([\d.]+) dB", out).group(1))
    assert int8 > 30 and fp8 > 20, out
