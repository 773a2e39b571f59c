"""mpq.layers' public API is explicit and documented; docs/layers.md's examples run. (Docstring
examples run in tests/test_doctests.py.)"""

from __future__ import annotations


def test_public_api_is_explicit():
    import mpq.layers as L

    assert sorted(L.__all__) == sorted(set(L.__all__))
    for name in L.__all__:
        assert getattr(L, name).__doc__, name


def test_docs_layers_md_examples_run(tmp_path, monkeypatch, capsys):
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[2] / "docs" / "layers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the quick start saves a file
    for block in blocks:
        exec(compile(block, "docs/layers.md", "exec"), {})
    assert (tmp_path / "mlp.safetensors").exists()
    assert "Total params" in capsys.readouterr().out
