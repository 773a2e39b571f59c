"""`--executor ray`: each run is a Ray task with its own resource request; results stream back
to the same JSONL. Skipped only when Ray is not installed."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

import mpq.sweep as sweep
from mpq.sweep.config import SweepConfig
from mpq.sweep.records import read_jsonl
from mpq.sweep.runner import RayExecutor


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ray_executor_runs_the_sweep(tmp_path):
    import ray

    cfg = SweepConfig(
        models=[
            {
                "name": "tiny",
                "factory": "tests.sweep._helpers:tiny_factory",
                "epochs": 2,
                "lr": 0.05,
            }
        ],
        policies=["float32", "float16", "bfloat16"],
        seeds=(0, 1),
        out=str(tmp_path / "out"),
        executor="ray",
        resources={"num_cpus": 1},
        finetune_epochs=0,
        plot=False,
    )
    executor = RayExecutor(cfg.resources, init_kwargs={"num_cpus": 2})
    try:
        assert ray.is_initialized()
        streamed = []
        records = sweep.run(cfg, executor=executor, verbose=False, on_record=streamed.append)
        assert ray.cluster_resources().get("CPU") == 2.0
    finally:
        executor.shutdown()
    assert not ray.is_initialized()
    assert len(records) == 6
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    assert len(streamed) == 6
    assert len(read_jsonl(tmp_path / "out" / "results.jsonl")) == 6
    # the same numbers as in this process: runs are pure functions of their config
    local = sweep.run(cfg.replace(executor="serial", out=str(tmp_path / "local")), verbose=False)
    assert [(r["variant"], r["seed"], r["sqnr_db"]) for r in records] == [
        (r["variant"], r["seed"], r["sqnr_db"]) for r in local
    ]
