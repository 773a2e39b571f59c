"""Tasks that answer a researcher's question: the language-model task (perplexity, bits per
byte), your own model by `module:factory` (mpq or torch, checkpoint, eval-only), the Python API,
the Pareto chart, heatmap and report, and clear errors that leave the rest of the sweep going."""

from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
import pytest
import torch

import mpq
import mpq.sweep as sweep
from mpq.sweep import cli
from mpq.sweep.config import ModelSpec, SweepConfig
from mpq.sweep.data import digits_flat, stdlib_bytes
from mpq.sweep.experiment import _load_checkpoint, evaluate, train_baseline
from mpq.sweep.records import read_jsonl
from mpq.sweep.report import pareto_front
from mpq.sweep.tasks import TASKS, Task, resolve_task
from mpq.sweep.tasks import corpus as lm_corpus

LM_SMALL = {"dim": 16, "depth": 1, "heads": 2, "context": 32}


def returns_int(dtype=None):
    """A user factory that does not return a module."""
    return 3


def nan_metric(outputs, targets):
    """A user metric that returns NaN."""
    return float("nan")


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------
def test_lm_metrics_are_exact_on_uniform_logits():
    # uniform logits over 256 bytes: cross-entropy ln 256, perplexity 256, 8 bits per byte
    out = resolve_task("lm").evaluate(torch.zeros(4, 8, 256), torch.randint(0, 256, (4, 8)))
    assert out["perplexity"] == pytest.approx(256.0, rel=1e-6)
    assert out["bits_per_byte"] == pytest.approx(8.0, rel=1e-6)
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]), rel=1e-12)


def test_regression_task_scores_mse_exactly():
    out = resolve_task("regression").evaluate(
        torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])
    )
    assert out["mse"] == 2.5  # (1 + 4) / 2


def test_task_names_are_checked():
    with pytest.raises(
        ValueError, match=r"Expected a task name from \[.*'lm'.*\]. Received: task='nope'"
    ):
        resolve_task("nope")
    with pytest.raises(
        TypeError, match=r"Expected a task name, an mpq.sweep.tasks.Task, or a metric"
    ):
        resolve_task(3)
    assert {"lm", "digits", "digits_flat", "regression", "classification"} <= set(TASKS)


def test_nan_metric_is_an_error():
    task = resolve_task(nan_metric)
    with pytest.raises(
        FloatingPointError,
        match=r"Expected metric 'nan_metric' of task 'nan_metric' to be finite. Received: nan",
    ):
        task.evaluate(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_task_must_score_its_metric():
    t = Task("t", "top1", True, TASKS["classification"].loss, lambda o, y: {"other": 1.0})
    with pytest.raises(
        ValueError, match=r"Expected task 't' to score a 'top1' value. Received: keys \['other'\]"
    ):
        t.evaluate(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_lm_corpus_split_by_file_and_missing_files(tmp_path):
    d = stdlib_bytes(context=16)
    assert d.x_train.dtype == np.int64 and d.x_train.shape[1] == 16
    np.testing.assert_array_equal(d.x_train[:, 1:], d.y_train[:, :-1])  # next-byte targets
    train, val, _ = lm_corpus.corpus()
    assert len(val) < len(train) and bytes(val[:200]) not in bytes(train)
    with pytest.raises(
        FileNotFoundError,
        match=r"Expected the Python standard-library sources .* Received: missing \['textwrap.py'",
    ):
        lm_corpus.corpus(stdlib=str(tmp_path))


def test_lm_windows_are_checked():
    with pytest.raises(
        ValueError, match=r"Expected a corpus longer than context=8 bytes. Received: 5 bytes"
    ):
        lm_corpus.windows(np.zeros(5, np.uint8), 8, 8)
    with pytest.raises(
        ValueError, match=r"Expected `stride` to be an int >= 1. Received: stride=0"
    ):
        stdlib_bytes(stride=0)


def test_lm_task_quick_sweep(tmp_path):
    cfg = SweepConfig(models=[{"name": "lm", "factory": "tiny_lm", "task": "lm", "kwargs": LM_SMALL,
                               "epochs": 1, "lr": 0.01, "batch_size": 32}],
                      policies=["float32", "int8", "int4"], quick=True, executor="serial",
                      out=str(tmp_path / "out"), plot=False)  # fmt: skip
    recs = sweep.run(cfg, verbose=False)
    assert [r["status"] for r in recs] == ["ok"] * 3, [r["error"] for r in recs]
    by = {r["variant"]: r for r in recs}
    for r in recs:
        assert r["metric"] == "perplexity" and r["task"] == "lm" and r["higher_is_better"] is False
        assert r["bits_per_byte"] == pytest.approx(math.log2(r["perplexity"]), rel=1e-9)
        assert 1.0 < r["perplexity"] < 256.0  # trained: better than a uniform guess
    assert by["float32"]["metric_value"] == by["float32"]["float32_metric"]
    assert by["int4"]["sqnr_db"] < by["int8"]["sqnr_db"]  # 4 bits add more noise than 8
    assert by["int4"]["metric_value"] != by["float32"]["metric_value"]


def test_baseline_cache_makes_the_second_sweep_only_evaluate(tmp_path):
    spec = ModelSpec("digits_mlp", epochs=1)
    first = train_baseline(spec, 0, quick=True, cache_dir=tmp_path)
    second = train_baseline(spec, 0, quick=True, cache_dir=tmp_path)
    assert (first["cached"], second["cached"]) == (False, True)
    for k, v in first["state"].items():
        assert torch.equal(v, second["state"][k]), k
    assert len(list(tmp_path.glob("digits_mlp-s0-*.mpq"))) == 1


# --------------------------------------------------------------------------------------------
# Your own model
# --------------------------------------------------------------------------------------------
MYMODELS = textwrap.dedent("""
    import torch

    def make_net():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
""")


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(MYMODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    yield tmp_path
    sys.modules.pop("mymodels", None)


def test_user_factory_from_the_current_directory(user_dir):
    rc = cli.main(["--model", "mymodels:make_net", "--task", "digits_flat", "--policies",
                   "float32,int8", "--quick", "--executor", "serial", "--out", "res", "--quiet"])  # fmt: skip
    assert rc == 0
    recs = read_jsonl(user_dir / "res" / "results.jsonl")
    assert [(r["variant"], r["status"], r["metric"]) for r in recs] == [
        ("float32", "ok", "accuracy"), ("int8", "ok", "accuracy")
    ]  # fmt: skip
    assert recs[1]["quantized_layers"] == 2  # the torch Linears, converted by from_torch


def test_eval_only_checkpoint_equals_direct_evaluation(user_dir):
    from safetensors.torch import save_file

    sys.path.insert(0, str(user_dir))
    import mymodels

    net = mymodels.make_net()
    save_file(net.state_dict(), str(user_dir / "net.safetensors"))
    data = digits_flat()
    with torch.no_grad():
        logits = net(torch.from_numpy(data.x_test))
    direct = float((logits.argmax(1) == torch.from_numpy(data.y_test)).float().mean())
    rc = cli.main(["--model", "mymodels:make_net", "--task", "digits_flat", "--checkpoint",
                   "net.safetensors", "--eval-only", "--policies", "float32,int4", "--executor",
                   "serial", "--out", "res", "--quiet"])  # fmt: skip
    assert rc == 0
    recs = read_jsonl(user_dir / "res" / "results.jsonl")
    assert recs[0]["train_epochs"] == 0
    assert recs[0]["metric_value"] == direct  # same weights, same data: the same accuracy
    assert recs[0]["float32_metric"] == direct


def test_eval_only_mpq_checkpoint_equals_evaluate(tmp_path):
    model, data = sweep.experiment._build(ModelSpec("digits_mlp"), "float32")
    sweep.experiment._materialize(model, data.x_test[:2])
    mpq.saving.save(model, tmp_path / "mlp.mpq")
    direct = evaluate(model, data, "cpu")
    recs = sweep.run(model="digits_mlp", checkpoint=str(tmp_path / "mlp.mpq"), train=False,
                     policies=["float32", "int8"], verbose=False)  # fmt: skip
    assert recs[0]["status"] == "ok" and recs[0]["train_epochs"] == 0
    assert recs[0]["accuracy"] == direct["accuracy"] and recs[0]["loss"] == direct["loss"]


def test_pickle_checkpoints_are_refused(tmp_path):
    path = tmp_path / "net.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(
        ValueError,
        match=r"Expected a safetensors checkpoint .* Received: checkpoint='.*net.pt', a pickle-based torch file",
    ):
        _load_checkpoint(torch.nn.Linear(2, 2), str(path))
    with pytest.raises(
        FileNotFoundError,
        match=r"Expected a checkpoint file. Received: checkpoint='nope.safetensors'",
    ):
        _load_checkpoint(torch.nn.Linear(2, 2), "nope.safetensors")


def test_bad_factory_path_fails_at_start_up(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", "no_such_module_xyz:make", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert (
        "Expected an importable module for model factory 'no_such_module_xyz:make'"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        cli.main(["--task", "lm", "--out", str(tmp_path / "o")])
    assert "Expected --model with --task. Received: no --model" in capsys.readouterr().err


def test_non_module_factory_and_nan_metric_fail_in_their_records_only(tmp_path):
    models = [
        {
            "name": "int_factory",
            "factory": "tests.sweep.test_tasks:returns_int",
            "data": "digits_flat",
        },
        {"name": "nan", "factory": "digits_mlp", "task": nan_metric, "epochs": 1},
        {"name": "fine", "factory": "digits_mlp", "epochs": 1},
    ]
    cfg = SweepConfig(models=models, policies=["float32", "int8"], quick=True, executor="serial",
                      out=str(tmp_path / "out"), plot=False)  # fmt: skip
    recs = sweep.run(cfg, verbose=False)
    errors = {r["model"]: r["error"] for r in recs if r["status"] != "ok"}
    assert (
        "Expected model factory 'int_factory' to return an mpq model or a torch.nn.Module. Received: 3 (of type int)"
        in errors["int_factory"]
    )
    assert (
        "FloatingPointError: Expected metric 'nan_metric' of task 'nan_metric' to be finite. Received: nan"
        in errors["nan"]
    )
    assert [r["status"] for r in recs if r["model"] == "fine"] == ["ok", "ok"]


def test_python_api_sweeps_a_model_instance_without_files():
    net = torch.nn.Sequential(torch.nn.Linear(64, 10))
    recs = sweep.run(
        model=net,
        data=digits_flat(),
        policies=["float32", "int8"],
        metric="classification",
        verbose=False,
    )
    assert [(r["variant"], r["status"]) for r in recs] == [("float32", "ok"), ("int8", "ok")]
    assert recs[0]["train_epochs"] == 0  # a given instance is swept as it is
    with pytest.raises(
        TypeError, match=r"Expected `model=...` with the options \['metric'\]. Received: model=None"
    ):
        sweep.run(metric="lm")


# --------------------------------------------------------------------------------------------
# Plots and report
# --------------------------------------------------------------------------------------------
def test_pareto_front():
    assert pareto_front([(1, 5.0), (2, 4.0), (3, 4.5), (4, 3.0)], higher_is_better=False) == [
        (1, 5.0),
        (2, 4.0),
        (4, 3.0),
    ]


def test_pareto_heatmap_and_report_are_written(tmp_path):
    cfg = SweepConfig(models=[{"name": "mlp", "factory": "digits_mlp", "epochs": 1}],
                      policies=["float32", "bfloat16", "int8", "int4"], quick=True, per_layer=True,
                      executor="serial", out=str(tmp_path / "out"))  # fmt: skip
    recs = sweep.run(cfg, verbose=False)
    assert all(r["status"] == "ok" for r in recs)
    out = tmp_path / "out"
    for name in ("pareto.png", "per_layer.png", "report.html"):
        assert (out / name).stat().st_size > 1000, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<td class=t>int4</td>" in html


# --------------------------------------------------------------------------------------------
# docs/sweeps.md: the "sweep your own model" walkthrough runs as written
# --------------------------------------------------------------------------------------------
def test_docs_walkthrough_runs(user_dir, capsys):
    import re
    import shlex
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "sweeps.md").read_text()
    walk = doc[doc.index("<!-- walkthrough:start -->") : doc.index("<!-- walkthrough:end -->")]
    blocks = re.findall(r"```(python|bash)\n(.*?)```", walk, flags=re.S)
    assert [lang for lang, _ in blocks] == ["python", "bash", "python", "bash", "python"]
    namespace: dict = {}
    for lang, code in blocks:
        if code.startswith("# mymodels.py"):
            (user_dir / "mymodels.py").write_text(code)
            sys.path.insert(0, str(user_dir))
        elif lang == "python":
            exec(compile(code, "docs/sweeps.md", "exec"), namespace)
        else:
            (line,) = [ln for ln in code.splitlines() if ln.strip()]
            assert line.startswith("mpq sweep ")
            assert cli.main(shlex.split(line)[2:]) == 0, line
    trained = read_jsonl(user_dir / "results" / "results.jsonl")
    evaluated = read_jsonl(user_dir / "results-eval" / "results.jsonl")
    assert [r["status"] for r in trained + evaluated] == ["ok"] * 6
    assert trained[0]["train_epochs"] == 10 and evaluated[0]["train_epochs"] == 0
    assert (user_dir / "results" / "pareto.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "('float32', " in printed and "('int4', " in printed


def test_process_pools_need_a_picklable_metric():
    cfg = SweepConfig(
        models=[{"factory": "digits_mlp", "task": lambda o, y: 0.0}], executor="local"
    )
    with pytest.raises(
        ValueError, match=r"Expected a picklable model factory for executor='local'"
    ):
        cfg.check_picklable()


def test_per_layer_skips_layers_without_a_scheme_for_the_mode(tmp_path):
    cfg = SweepConfig(models=[{"name": "lm", "factory": "tiny_lm", "task": "lm", "kwargs": LM_SMALL,
                               "epochs": 1}], policies=["float32", "bfloat16", "int8"], quick=True,
                      per_layer=True, executor="serial", out=str(tmp_path / "out"))  # fmt: skip
    recs = sweep.run(cfg, verbose=False)
    assert all(r["status"] == "ok" for r in recs), [r["error"] for r in recs]
    ran = {(r["layer"], r["variant"]) for r in recs if r["kind"] == "per_layer"}
    assert ("tiny_lm/block_0/ln_1", "bfloat16") in ran  # a float policy applies to any layer
    assert ("tiny_lm/block_0/ln_1", "int8") not in ran  # LayerNormalization has no int8 scheme
    assert ("tiny_lm/block_0/attn/qkv", "int8") in ran and ("tiny_lm/tok", "int8") in ran
    assert (tmp_path / "out" / "per_layer.png").stat().st_size > 0
