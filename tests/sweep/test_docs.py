"""The sweep's public API is explicit, and docs/sweeps.md covers every CLI option and every
record key. (Its docstring examples run in tests/test_doctests.py.)"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_public_api_is_explicit():
    import mpq.sweep as S

    assert sorted(S.__all__) == sorted(set(S.__all__))
    for name in S.__all__:
        assert getattr(S, name).__doc__, name


def test_docs_cover_every_option_and_record_key(tmp_path):
    from mpq.sweep.cli import build_parser
    from mpq.sweep.config import SweepConfig
    from mpq.sweep.experiment import run_one

    doc = (ROOT / "docs" / "sweeps.md").read_text()
    options = [o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")]
    missing = [o for o in options if o != "--help" and f"`{o}" not in doc]
    assert missing == []
    cfg = SweepConfig(models=[{"name": "t", "factory": "tests.sweep._helpers:tiny_factory", "epochs": 1}],
                      policies=["int8"], quick=True)  # fmt: skip
    record = run_one(cfg.run_configs()[0])  # a failed run has every key too
    table = doc[doc.index("## Records") : doc.index("## The plot")]
    missing = [k for k in record if f"`{k}`" not in table]
    assert missing == []
    assert "](sweep.png)" in doc and (ROOT / "docs" / "sweep.png").exists()
