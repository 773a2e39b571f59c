"""The sweep runner end to end on tiny torch-only models: records, streaming, failures,
resume, per-layer sensitivity and verified suggestions, executors."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import math

import pytest
import torch

import mpq
import mpq.sweep as sweep
from mpq.sweep.config import ModelSpec, SweepConfig
from mpq.sweep.records import read_jsonl
from tests.sweep._helpers import TINY, tiny_config


def test_run_records_every_variant(tmp_path):
    cfg = tiny_config(tmp_path, seeds=(0, 1), plot=True)
    records = sweep.run(cfg, verbose=False)
    assert [(r["variant"], r["seed"]) for r in records] == [
        (v, s) for s in (0, 1) for v in ("float32", "float16", "bfloat16", "mixed_bfloat16")
    ]
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    by = {(r["variant"], r["seed"]): r for r in records}
    f32 = by[("float32", 0)]
    assert f32["sqnr_db"] is None  # identical logits: infinite SQNR
    assert f32["accuracy"] == f32["float32_accuracy"] > 0.9
    assert f32["weight_bytes"] == (4 * 8 + 8 + 8 * 3 + 3) * 4
    assert by[("float16", 0)]["weight_bytes"] * 2 == f32["weight_bytes"]
    assert by[("mixed_bfloat16", 0)]["weight_bytes"] == f32["weight_bytes"]
    # bfloat16 has 8 bits of precision, float16 11: about 3 bits (18 dB) apart
    assert 20 < by[("bfloat16", 0)]["sqnr_db"] < by[("float16", 0)]["sqnr_db"] < 90
    assert by[("mixed_bfloat16", 0)]["finetune_epochs"] == 1
    assert by[("mixed_bfloat16", 0)]["finetune_accuracy"] > 0.8
    assert by[("float16", 0)]["finetune_accuracy"] is None
    for key in (
        "torch_version",
        "mpq_version",
        "device",
        "device_name",
        "latency_ms",
        "config_hash",
    ):
        assert f32[key] is not None, key
    assert f32["mpq_version"] == mpq.__version__
    assert f32["triton_version"] is None or isinstance(f32["triton_version"], str)
    out = tmp_path / "out"
    assert len(read_jsonl(out / "results.jsonl")) == 8
    assert (out / "summary.csv").read_text().startswith("model,variant,policy,n,accuracy")
    assert (out / "sweep.png").stat().st_size > 10_000


def test_run_is_deterministic_per_seed(tmp_path):
    a = sweep.run(tiny_config(tmp_path / "a", policies=["float32", "bfloat16"]), verbose=False)
    b = sweep.run(tiny_config(tmp_path / "b", policies=["float32", "bfloat16"]), verbose=False)
    assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]
    assert a[1]["sqnr_db"] == b[1]["sqnr_db"]
    assert [r["config_hash"] for r in a] == [r["config_hash"] for r in b]


def test_records_stream_as_runs_finish(tmp_path):
    seen = []

    def on_record(rec):
        seen.append(rec["variant"])
        lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
        assert len(lines) == len(seen)  # written before the callback, one line per run

    sweep.run(tiny_config(tmp_path), verbose=False, on_record=on_record)
    assert sorted(seen) == sorted(["float32", "float16", "bfloat16", "mixed_bfloat16"])


def test_failed_runs_are_recorded_and_the_sweep_continues(tmp_path, monkeypatch):
    monkeypatch.delattr(mpq, "quantize", raising=False)
    cfg = tiny_config(
        tmp_path,
        models=[{"name": "nan", "factory": "tests.sweep._helpers:nan_in_half", "epochs": 2}],
        policies=["float32", "float16", "int8", "bfloat16"],
    )
    records = sweep.run(cfg, verbose=False)
    status = {r["variant"]: r["status"] for r in records}
    assert status == {"float32": "ok", "float16": "error", "int8": "error", "bfloat16": "ok"}
    by = {r["variant"]: r for r in records}
    assert by["float16"]["error"].startswith("FloatingPointError: Expected finite logits")
    assert by["int8"]["error"].startswith(
        "QuantizationUnavailableError: quantization not available"
    )
    assert "Traceback" in by["int8"]["traceback"]
    assert read_jsonl(tmp_path / "out" / "results.jsonl")[-1]["status"] in {"ok", "error"}


def test_a_failing_baseline_fails_its_runs_only(tmp_path):
    cfg = tiny_config(
        tmp_path,
        models=[{"name": "broken", "factory": "tests.sweep._helpers:broken_factory"},
                {"name": "tiny", "factory": TINY}],
        policies=["float32", "bfloat16"],
    )  # fmt: skip
    records = sweep.run(cfg, verbose=False)
    by = {(r["model"], r["variant"]): r for r in records}
    assert by[("broken", "float32")]["status"] == "error"
    assert (
        "baseline training failed: RuntimeError: factory exploded"
        in by[("broken", "bfloat16")]["error"]
    )
    assert by[("tiny", "bfloat16")]["status"] == "ok"


def test_resume_skips_finished_runs_and_retries_failed_ones(tmp_path, monkeypatch):
    monkeypatch.delattr(mpq, "quantize", raising=False)
    cfg = tiny_config(tmp_path, policies=["float32", "bfloat16", "int8"])
    first = sweep.run(cfg, verbose=False)
    new = []
    second = sweep.run(cfg, verbose=False, on_record=new.append)
    assert [r["variant"] for r in new] == ["int8"]  # only the failed run ran again
    assert [r["config_hash"] for r in second] == [r["config_hash"] for r in first]
    assert second[0]["timestamp"] == first[0]["timestamp"]  # the recorded run, not a new one
    new.clear()
    sweep.run(
        cfg.replace(policies=["float32", "bfloat16", "float16"]),
        verbose=False,
        on_record=new.append,
    )
    assert [r["variant"] for r in new] == ["float16"]
    new.clear()
    sweep.run(cfg.replace(resume=False, policies=["float32"]), verbose=False, on_record=new.append)
    assert [r["variant"] for r in new] == ["float32"]


def test_per_layer_and_verified_suggestion(tmp_path):
    cfg = tiny_config(
        tmp_path,
        models=[
            {
                "name": "tiny",
                "factory": "tests.sweep._helpers:tiny_mpq_factory",
                "epochs": 3,
                "lr": 0.05,
            }
        ],
        policies=["float32", "float16", "bfloat16"],
        suggest=True,
        target_sqnr=45.0,
        plot=True,
    )
    records = sweep.run(cfg, verbose=False)
    per_layer = [r for r in records if r["kind"] == "per_layer"]
    assert sorted((r["layer"], r["variant"]) for r in per_layer) == [
        ("tiny/fc1", "bfloat16"), ("tiny/fc1", "float16"), ("tiny/fc2", "bfloat16"), ("tiny/fc2", "float16"),
    ]  # fmt: skip
    for r in per_layer:
        assert r["status"] == "ok", r["error"]
        assert r["layer_weight_bytes"] * 2 == r["float32_layer_weight_bytes"]
        assert r["weight_bytes"] < r["float32_weight_bytes"]
    suggested = [r for r in records if r["kind"] == "suggest"]
    assert suggested and all(r["status"] == "ok" for r in suggested)
    saved = json.loads((tmp_path / "out" / "suggested_policy_map.json").read_text())
    best = saved["tiny"]
    assert best["measured_sqnr_db"] >= 45.0
    pmap = mpq.policy.deserialize(best["policy_map"])
    assert isinstance(pmap, mpq.policy.DTypePolicyMap)
    # the cheapest verified map: as few bytes as any suggestion that met the target
    ok = [r for r in suggested if (r["sqnr_db"] or math.inf) >= 45.0]
    assert best["weight_bytes"] == min(r["weight_bytes"] for r in ok)
    assert (tmp_path / "out" / "per_layer.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "per_layer.csv").read_text().startswith("model,layer,")
    # resuming needs no training at all: layer tables come from layers.json
    new = []
    again = sweep.run(cfg.replace(plot=False), verbose=False, on_record=new.append)
    assert new == []
    assert [r["config_hash"] for r in again] == [r["config_hash"] for r in records]


def test_per_layer_needs_mpq_layers(tmp_path):
    records = sweep.run(
        tiny_config(tmp_path, policies=["float32", "float16"], per_layer=True), verbose=False
    )
    per_layer = [r for r in records if r["kind"] == "per_layer"]
    assert [r["layer"] for r in per_layer] == ["fc1", "fc2"]
    assert all(
        "Expected an mpq layer at 'fc1'" in r["error"] or "at 'fc2'" in r["error"]
        for r in per_layer
    )
    assert all(r["status"] == "ok" for r in records if r["kind"] == "policy")


def test_any_executor_is_accepted(tmp_path):
    with cf.ThreadPoolExecutor(max_workers=2) as ex:
        records = sweep.run(tiny_config(tmp_path, executor="local"), executor=ex, verbose=False)
    assert all(r["status"] == "ok" for r in records)


class _Broken(cf.Executor):
    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        fut.set_exception(OSError("worker lost"))
        return fut


def test_executor_failures_become_records(tmp_path):
    records = sweep.run(
        tiny_config(tmp_path, policies=["float32", "float16"]), executor=_Broken(), verbose=False
    )
    assert [r["status"] for r in records] == ["error", "error"]
    assert records[0]["error"] == "baseline training failed: OSError: worker lost"


def test_local_process_pool(tmp_path):
    records = sweep.run(
        tiny_config(tmp_path, executor="local", workers=1, policies=["float32", "float16"]),
        verbose=False,
    )
    assert [r["status"] for r in records] == ["ok", "ok"]


def test_run_one_is_pure_and_trains_its_own_baseline():
    cfg = SweepConfig(
        models=[{"name": "tiny", "factory": TINY, "epochs": 2}], policies=["bfloat16"]
    )
    (rc,) = cfg.run_configs()
    a = sweep.run_one(rc)
    b = sweep.run_one(rc, baseline=sweep.train_baseline(rc.model, rc.seed))
    assert a["status"] == b["status"] == "ok"
    assert (a["accuracy"], a["sqnr_db"], a["config_hash"]) == (
        b["accuracy"],
        b["sqnr_db"],
        b["config_hash"],
    )


def test_user_factory_with_separate_data(tmp_path):
    spec = ModelSpec("tests.sweep._helpers:tiny_model", name="m", data="tests.sweep._helpers:blobs",
                     data_kwargs={"n_train": 64, "n_test": 32}, epochs=1)  # fmt: skip
    records = sweep.run(tiny_config(tmp_path, models=[spec], policies=["float32"]), verbose=False)
    assert records[0]["status"] == "ok"
    bad = ModelSpec("tests.sweep._helpers:tiny_model", name="nodata")
    rec = sweep.run(tiny_config(tmp_path / "b", models=[bad], policies=["float32"]), verbose=False)[
        0
    ]
    assert "return (model, data), or the model spec to name its data" in rec["error"]


def test_bad_output_dir_fails_before_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="which is a file"):
        sweep.run(SweepConfig(models=[{"name": "t", "factory": TINY}], out=str(tmp_path / "file")))


def test_cuda_requested_without_cuda_fails_fast(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="device='cuda'"):
        sweep.run(tiny_config(tmp_path, device="cuda"), verbose=False)


class _RefusesWork(cf.Executor):
    def submit(self, fn, /, *args, **kwargs):
        raise cf.process.BrokenProcessPool("A child process terminated abruptly")


def test_an_executor_that_refuses_work_fails_runs_not_the_sweep(tmp_path):
    records = sweep.run(
        tiny_config(tmp_path, policies=["float32"]), executor=_RefusesWork(), verbose=False
    )
    assert records[0]["status"] == "error"
    assert "BrokenProcessPool: A child process terminated abruptly" in records[0]["error"]


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("tty", [False, True])
def test_progress_bar(tty):
    from mpq.sweep.runner import Progress

    stream = _Tty() if tty else io.StringIO()
    bar = Progress(2, stream=stream)
    bar.update({"model": "m", "variant": "int8", "seed": 0, "status": "ok"})
    bar.update({"model": "m", "variant": "int4", "seed": 0, "status": "error"})
    bar.close()
    text = stream.getvalue()
    assert "[############............] 1/2" in text
    assert "[########################] 2/2" in text
    assert "m int4 seed 0: error (1 failed)" in text
    if tty:
        assert text.count("\r\033[K") == 2 and text.endswith("\n")
    else:
        assert len(text.splitlines()) == 2 and "\r" not in text


def test_per_layer_with_a_failing_baseline_is_reported(tmp_path):
    cfg = tiny_config(
        tmp_path,
        models=[{"name": "broken", "factory": "tests.sweep._helpers:broken_factory"}],
        policies=["float32", "bfloat16"],
        per_layer=True,
    )
    records = sweep.run(cfg, verbose=False)
    assert [r["status"] for r in records] == ["error", "error", "error"]
    assert records[-1]["kind"] == "error"
    assert "baseline training failed: RuntimeError: factory exploded" in records[-1]["error"]


def test_run_accepts_a_dict_or_a_file_and_rejects_the_rest(tmp_path):
    as_dict = {
        "sweep": {
            "policies": ["float32"],
            "out": str(tmp_path / "d"),
            "executor": "serial",
            "plot": False,
        },
        "models": [{"name": "tiny", "factory": TINY, "epochs": 1}],
    }
    (rec,) = sweep.run(as_dict, verbose=False)
    assert rec["status"] == "ok"
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps({**as_dict, "sweep": {**as_dict["sweep"], "out": str(tmp_path / "f")}})
    )
    (rec_file,) = sweep.run(str(path), verbose=False)
    assert rec_file["config_hash"] == rec["config_hash"]
    with pytest.raises(TypeError, match=r"Received: config=42 \(of type int\)"):
        sweep.run(42)


def test_a_task_without_accuracy_sweeps_end_to_end(tmp_path):
    """A regression model (its metric: MSE; no accuracy) goes through training, the progress
    note, every run, the table and the plots."""
    pytest.importorskip("matplotlib")
    stream = io.StringIO()
    cfg = SweepConfig(
        models=[{"factory": "regression_mlp", "epochs": 1}], policies=["float32", "bfloat16"],
        quick=True, executor="serial", out=str(tmp_path / "out"),
    )  # fmt: skip
    records = sweep.run(cfg, stream=stream)
    assert [(r.status, r.metric, r.accuracy) for r in records] == [("ok", "mse", None)] * 2
    assert "trained regression_mlp (seed 0): float32 mse " in stream.getvalue()
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 10_000
