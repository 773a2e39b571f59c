"""The sweep as a pipeline: the plan of a config (runs, baselines, per-layer expansions, the
suggestion step), and `mpq.sweep.run` reading top to bottom (call-trace probes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import mpq.sweep as sweep
from mpq.sweep.config import SweepConfig
from mpq.sweep.plan import SUGGESTED, make_plan
from tests.sweep._helpers import TINY, tiny_config

SWEEP_DIR = Path(sweep.__file__).parent


def test_plan_lists_baselines_runs_and_expansions():
    cfg = SweepConfig(
        models=["digits_mlp", "digits_cnn"],
        policies=["float32", "int8"],
        seeds=(0, 1),
        suggest=True,
    )
    plan = make_plan(cfg)
    assert [r.config_hash for r in plan.runs] == [r.config_hash for r in cfg.run_configs()]
    assert [(b.model.resolved_name, b.seed) for b in plan.baselines] == [
        ("digits_mlp", 0), ("digits_mlp", 1), ("digits_cnn", 0), ("digits_cnn", 1),
    ]  # fmt: skip
    assert len({b.key for b in plan.baselines}) == 4
    assert all(plan.baseline_for(r).model == r.model for r in plan.runs)
    # per-layer: every baseline, every variant but float32
    assert [p.baseline for p in plan.per_layer] == list(plan.baselines)
    assert all([v.label for v in p.variants] == ["int8"] for p in plan.per_layer)
    assert plan.suggest is not None and plan.suggest.seed == 0
    assert plan.output.results == Path(cfg.out) / "results.jsonl"
    assert plan.execution.executor == "local"


def test_per_layer_expansion_and_suggestion_runs():
    plan = make_plan(SweepConfig(models=["digits_mlp"], policies=["float32", "int8", "float16"],
                                 suggest=True))  # fmt: skip
    (expansion,) = plan.per_layer
    layers = [
        {"path": "digits_mlp/dense_0", "modes": ["int8"]},
        {"path": "digits_mlp/norm", "modes": []},  # no int8 scheme: int8 is not run there
        {"path": "old/row"},  # a layers.json of an older sweep: runs as before
    ]
    runs = expansion.runs(layers, known_modes={"int8"})
    assert [(r.layers, r.variant.label) for r in runs] == [
        (("digits_mlp/dense_0",), "int8"), (("digits_mlp/dense_0",), "float16"),
        (("digits_mlp/norm",), "float16"),
        (("old/row",), "int8"), (("old/row",), "float16"),
    ]  # fmt: skip
    assert {(r.kind, r.finetune_epochs) for r in runs} == {("per_layer", 0)}

    class _Candidate:
        assignment = (("digits_mlp/dense_0", "int8"), ("digits_mlp/dense_1", "float32"))

    (verify,) = plan.suggest.runs(expansion.baseline, [_Candidate()])
    assert verify.kind == "suggest" and verify.variant == SUGGESTED
    assert [(p, v.label) for p, v in verify.assignment] == list(_Candidate.assignment)


def test_a_run_outside_the_plan_has_no_baseline():
    plan = make_plan(SweepConfig(models=["digits_mlp"], policies=["float32"]))
    other = SweepConfig(models=["digits_cnn"], policies=["float32"]).run_configs()[0]
    with pytest.raises(ValueError, match=r"Expected a run of a model and seed of the plan\. "
                                         r"Received: model='digits_cnn', seed=0"):  # fmt: skip
        plan.baseline_for(other)


def _trace(run, keep):
    """The files under mpq/sweep of the calls `keep(frame)` selects while `run()` runs, with
    consecutive calls into one file collapsed into one stop."""
    stops: list[str] = []

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(str(SWEEP_DIR)):
            return
        if keep(frame):
            rel = os.path.relpath(frame.f_code.co_filename, SWEEP_DIR)
            if not stops or stops[-1] != rel:
                stops.append(rel)

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return stops


def test_run_reads_top_to_bottom(tmp_path):
    """The steps `mpq.sweep.run` takes, by the module of each function it calls itself: load
    the config, plan, execute, records, report; each module once, in that order."""
    cfg = tiny_config(tmp_path, policies=["float32", "bfloat16"])
    run_code = sweep.run.__code__
    stops = _trace(
        lambda: sweep.run(cfg, verbose=False),
        lambda frame: frame.f_back is not None and frame.f_back.f_code is run_code,
    )
    assert stops == ["config.py", "plan.py", "runner.py", "records.py", "report.py"]


def test_the_config_is_read_by_the_load_and_plan_steps_only(tmp_path):
    """Following the config object through the calls that receive it (as an argument or as an
    attribute of one): `run`, the load step, the plan; nothing downstream reads it."""
    cfg = tiny_config(tmp_path, policies=["float32", "bfloat16"], per_layer=True)

    def holds_config(frame):
        code = frame.f_code
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        values = [frame.f_locals.get(n) for n in names]
        return any(
            v is cfg or any(a is cfg for a in getattr(v, "__dict__", {}).values()) for v in values
        )

    stops = _trace(lambda: sweep.run(cfg, verbose=False), holds_config)
    assert stops == ["__init__.py", "config.py", "plan.py"]


def test_run_of_a_dict_is_loaded_once(tmp_path):
    as_dict = {
        "sweep": {"policies": ["float32"], "out": str(tmp_path / "d"), "executor": "serial",
                  "plot": False},
        "models": [{"name": "tiny", "factory": TINY, "epochs": 1}],
    }  # fmt: skip
    (rec,) = sweep.run(as_dict, verbose=False)
    assert isinstance(rec, sweep.Record) and rec.status == "ok"
