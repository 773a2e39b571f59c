"""Policy sweeps: train a model once in float32, evaluate it under many dtype policies and
quantization modes, and write records, a summary table, CSV and plots (`mpq sweep`).

A sweep is a pipeline that reads top to bottom (`run`): load the config (`config`) -> plan the
runs (`plan`) -> execute them (`runner`, `experiment`) -> records (`records`) -> report
(`report`); each step hands the next one value.

    >>> import mpq.sweep
    >>> cfg = mpq.sweep.SweepConfig(models=["digits_mlp"], policies=["float32", "bfloat16"],
    ...                             quick=True, executor="serial", out="sweep-results/demo")
    >>> records = mpq.sweep.run(cfg, verbose=False)
    >>> [(r["variant"], r["status"], r["bytes_ratio"]) for r in records]
    [('float32', 'ok', 1.0), ('bfloat16', 'ok', 0.5)]
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from mpq.sweep.config import (
    BUILTIN_VARIANTS,
    DEFAULT_POLICIES,
    ModelSpec,
    RunConfig,
    SweepConfig,
    Variant,
    as_config,
    default_config,
    load_config,
    resolve_variant,
)
from mpq.sweep.data import Data
from mpq.sweep.experiment import apply_policy, run_one, train_baseline, weight_bytes
from mpq.sweep.plan import Plan, make_plan
from mpq.sweep.records import Record, summarize, with_sweep_errors
from mpq.sweep.report import write_outputs
from mpq.sweep.runner import check_environment, execute, prepare_output

__all__ = [
    "BUILTIN_VARIANTS",
    "DEFAULT_POLICIES",
    "Data",
    "ModelSpec",
    "Plan",
    "Record",
    "RunConfig",
    "SweepConfig",
    "Variant",
    "apply_policy",
    "check_environment",
    "default_config",
    "load_config",
    "make_plan",
    "prepare_output",
    "resolve_variant",
    "run",
    "run_one",
    "train_baseline",
    "weight_bytes",
]


class _Given:
    """A factory that returns a copy of a given model (or the given data) on every call, so a
    notebook can sweep an object it already holds (executor='serial')."""

    def __init__(self, obj: Any, name: str):
        self.obj = obj
        self.__name__ = self.__qualname__ = name

    def __call__(self) -> Any:  # no `dtype`: the sweep applies each policy (from_torch)
        import copy

        from mpq.sweep.data import Data

        return self.obj if isinstance(self.obj, Data) else copy.deepcopy(self.obj)


def _api_config(
    model: Any,
    data: Any,
    policies: Any,
    metric: Any,
    options: dict[str, Any],
) -> SweepConfig:
    """The SweepConfig of `run(model=..., data=..., policies=..., metric=...)`."""
    import torch

    from mpq.sweep.data import Data, as_data

    spec: dict[str, Any] = {
        k: options.pop(k)
        for k in ("checkpoint", "train", "epochs", "lr", "batch_size", "name", "kwargs")
        if k in options
    }
    given = isinstance(model, torch.nn.Module)
    if given:  # a model instance: swept as it is unless train=True
        spec.setdefault("name", type(model).__name__)
        spec["factory"] = _Given(model, spec["name"])
        spec.setdefault("train", False)
    else:
        spec["factory"] = model
    if data is not None:
        if isinstance(data, (Data, tuple, list)):
            spec["data"] = _Given(as_data(data), "data")
        else:
            spec["data"] = data
    if metric is not None:
        spec["task"] = metric
    options.setdefault("executor", "serial")
    if policies is not None:
        options["policies"] = policies
    return SweepConfig(models=[ModelSpec(**spec)], **options)


def run(
    config: SweepConfig | str | os.PathLike[str] | Mapping[str, Any] | None = None,
    executor: cf.Executor | None = None,
    *,
    model: Any = None,
    data: Any = None,
    policies: Any = None,
    metric: Any = None,
    verbose: bool = True,
    stream: TextIO | None = None,
    on_record: Callable[[Record], None] | None = None,
    **options: Any,
) -> list[Record]:
    """Run a sweep and return its flat records (one per model x variant x seed, plus per-layer
    and suggestion runs); write `results.jsonl` (streamed), `summary.csv`, `sweep.png` (and
    `per_layer.csv`, `per_layer.png`, `suggested_policy_map.json`) under `config.out`.

    Args:
        config: a `SweepConfig`, a `.toml`/`.json` sweep file, its dict form, or None (default).
        executor: any `concurrent.futures.Executor`; None makes the one `config.executor` names
            (and shuts it down afterwards). Tasks are `train_baseline` and `run_one`, so a
            process pool or Ray needs picklable (module-level) model factories.
        verbose: print the progress bar and the tables.
        stream: where tables and progress go (default: tables to stdout, progress to stderr).
        on_record: called with each record as it is written.
        model, data, policies, metric: sweep one model without a config (instead of `config`):
            `model` is a factory (`"package.module:factory"`, a built-in name, a callable) or a
            model instance (an mpq model or a torch module, swept as given: `train=False`);
            `data` a data name, callable, `Data` or arrays; `metric` a task name (`"lm"`,
            `"classification"`, `"regression"`, ...), an `mpq.sweep.tasks.Task`, or a
            `metric(outputs, targets) -> float`. `options` are ModelSpec fields (`checkpoint`,
            `train`, `epochs`, `lr`, `batch_size`, `name`, `kwargs`) and SweepConfig fields;
            without `out` the files go to a temporary directory that is removed afterwards.

    Example (a notebook):
        >>> from mpq.sweep.data import digits_flat
        >>> records = run(model="digits_mlp", data=digits_flat(), policies=["float32", "int8"],
        ...               metric="classification", quick=True, verbose=False)
        >>> [r["metric"] for r in records]
        ['accuracy', 'accuracy']

    Runs already recorded as ok in `out/results.jsonl` with the same config hash are reused,
    not recomputed (`config.resume`). A failed run is a record with `status="error"`; the
    sweep goes on. Records are appended as complete lines only; a line cut short by a crash is
    set aside at the next run (`runner.prepare_results`), and any other bad line raises
    `mpq.sweep.records.ResultsFileError` before any work (`config.skip_bad_lines` skips them,
    `config.overwrite` starts a new file). On Ctrl-C (KeyboardInterrupt) the workers are
    stopped at once and the exception propagates; the file keeps every finished run.
    """
    if model is not None:
        if config is not None:
            raise TypeError(
                "Expected either a sweep `config` or `model=...`, not both. "
                f"Received: config={config!r:.80} and model={model!r:.80}"
            )
        if "out" not in options:
            with tempfile.TemporaryDirectory(prefix="mpq-sweep-") as tmp:
                options.setdefault("plot", False)
                cfg = _api_config(model, data, policies, metric, {**options, "out": tmp})
                return run(cfg, executor, verbose=verbose, stream=stream, on_record=on_record)
        config = _api_config(model, data, policies, metric, options)
    elif data is not None or policies is not None or metric is not None or options:
        given = sorted(
            [
                k
                for k, v in (("data", data), ("policies", policies), ("metric", metric))
                if v is not None
            ]
            + list(options)
        )
        raise TypeError(
            f"Expected `model=...` with the options {given}. Received: model=None "
            "(put them in the SweepConfig instead)"
        )
    config = as_config(config)  # 1. load the config
    plan = make_plan(config)  # 2. plan: baselines, runs, per-layer expansions, suggestions
    outcome = execute(plan, executor, verbose=verbose, stream=stream, on_record=on_record)  # 3.
    rows = summarize(outcome.records)  # 4. records: one summary row per (model, variant)
    records = with_sweep_errors(outcome.records, outcome.errors)
    write_outputs(plan, outcome, rows, verbose=verbose, stream=stream)  # 5. report
    return records
