"""`mpq sweep` / `python -m mpq.sweep`: options, bad options failing before any work, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mpq
from mpq.sweep.cli import _parse_seeds, build_parser, config_from_args, main

ROOT = Path(__file__).resolve().parents[2]
TINY = "tests.sweep._helpers:tiny_factory"


def _args(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_options_map_to_the_config(tmp_path):
    cfg = _args(
        "--policies", "float32,int8-wo", "--models", "digits_mlp,digits_cnn", "--seeds", "0-2,5",
        "--out", str(tmp_path), "--executor", "ray", "--workers", "3", "--quick", "--per-layer",
        "--target-sqnr", "25", "--finetune-epochs", "0", "--no-plot", "--no-resume",
        "--gpus-per-run", "0.5", "--cpus-per-run", "2",
    )  # fmt: skip
    assert [v.label for v in cfg.variants] == ["float32", "int8-wo"]
    assert [m.resolved_name for m in cfg.models] == ["digits_mlp", "digits_cnn"]
    assert cfg.seeds == (0, 1, 2, 5)
    assert (cfg.out, cfg.executor, cfg.workers, cfg.quick) == (str(tmp_path), "ray", 3, True)
    assert (cfg.per_layer, cfg.suggest, cfg.target_sqnr, cfg.finetune_epochs) == (
        True,
        False,
        25.0,
        0,
    )
    assert (cfg.plot, cfg.resume) == (False, False)
    assert cfg.resources == {"num_cpus": 2.0, "num_gpus": 0.5}


def test_no_options_is_the_default_sweep():
    import mpq.sweep as sweep

    got = [r.config_hash for r in _args().run_configs()]
    assert got == [r.config_hash for r in sweep.default_config().run_configs()]


def test_file_plus_overrides():
    cfg = _args(str(ROOT / "experiments" / "digits_sensitivity.toml"), "--seeds", "3", "--no-plot")
    assert cfg.suggest and cfg.per_layer
    assert cfg.seeds == (3,)
    assert cfg.plot is False


def test_seeds_parsing():
    assert _parse_seeds("4") == (4,)
    assert _parse_seeds("1, 3-4") == (1, 3, 4)
    with pytest.raises(ValueError, match="--seeds 'x'"):
        _parse_seeds("x")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "resnet9000"], "'resnet9000'"),
        (["--policies", "float32,int9_from_float32"], "int9_from_float32"),
        (["--seeds", "a,b"], "--seeds 'a,b'"),
        (["--device", "tpu"], "device='tpu'"),
        (["--workers", "0"], "workers=0"),
        (["missing_sweep.toml"], "missing_sweep.toml"),
    ],
)
def test_bad_options_fail_fast(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mpq sweep: error: ")
    assert message in err
    assert not (out / "results.jsonl").exists()


def test_unwritable_or_file_out_fails_fast(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "f"), "--models", TINY])
    assert exc.value.code == 2
    assert "which is a file" in capsys.readouterr().err
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(SystemExit):
            main(["--out", str(ro / "sub"), "--models", TINY])
        assert "writable output directory" in capsys.readouterr().err


def test_exit_status_and_outputs(tmp_path, capsys, monkeypatch):
    monkeypatch.delattr(mpq, "quantize", raising=False)
    out = tmp_path / "ok"
    common = ["--executor", "serial", "--quick", "--no-plot"]
    rc = main(
        ["sweep", "--models", TINY, "--policies", "float32,bfloat16", "--out", str(out), *common]
    )
    captured = capsys.readouterr()
    assert rc == 0
    table = captured.out
    assert "policy" in table and "SQNR dB" in table and "bfloat16" in table
    assert "2/2" in captured.err  # progress
    assert (out / "results.jsonl").exists() and (out / "summary.csv").exists()
    rc = main(
        ["--models", TINY, "--policies", "float32,int8", "--out", str(tmp_path / "bad"), *common]
    )
    out_text = capsys.readouterr().out
    assert rc == 1
    assert "1 failed with QuantizationUnavailableError: quantization not available" in out_text


def test_python_dash_m(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mpq.sweep", "--policies", "nonsense_policy", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "nonsense_policy" in proc.stderr


def test_environment_checks_fail_fast(tmp_path, capsys, monkeypatch):
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        main(["--device", "cuda", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ray" else real_find_spec(name, *a),
    )
    with pytest.raises(SystemExit) as exc:
        main(["--executor", "ray", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "Expected Ray for executor='ray'" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()
