"""Policy sweeps: train a model once in float32, evaluate it under many dtype policies and
quantization modes, and write records, a summary table, CSV and plots (`mpq sweep`).

    >>> import mpq.sweep
    >>> cfg = mpq.sweep.SweepConfig(models=["digits_mlp"], policies=["float32", "bfloat16"],
    ...                             quick=True, executor="serial", out="sweep-results/demo")
    >>> records = mpq.sweep.run(cfg, verbose=False)
    >>> [(r["variant"], r["status"], r["bytes_ratio"]) for r in records]
    [('float32', 'ok', 1.0), ('bfloat16', 'ok', 0.5)]
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from mpq.sweep.config import (
    BUILTIN_VARIANTS,
    DEFAULT_POLICIES,
    ModelSpec,
    RunConfig,
    SweepConfig,
    Variant,
    default_config,
    load_config,
    resolve_variant,
)
from mpq.sweep.data import Data
from mpq.sweep.experiment import apply_policy, run_one, train_baseline, weight_bytes

__all__ = [
    "BUILTIN_VARIANTS",
    "DEFAULT_POLICIES",
    "Data",
    "ModelSpec",
    "RunConfig",
    "SweepConfig",
    "Variant",
    "apply_policy",
    "check_environment",
    "default_config",
    "load_config",
    "prepare_output",
    "resolve_variant",
    "run",
    "run_one",
    "train_baseline",
    "weight_bytes",
]


def prepare_output(out: str | os.PathLike) -> Path:
    """Create `out` and check that it is writable, before any work (clear error otherwise)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"Expected --out to be a directory. Received: {str(path)!r}, which is a file"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        raise PermissionError(
            f"Expected a writable output directory. Received: out={str(path)!r} ({e.strerror or e})"
        ) from None
    return path


def check_environment(config: SweepConfig, executor: cf.Executor | None = None) -> None:
    """Checks that need more than the config itself, done before any work: CUDA for
    `device="cuda"`, Ray for `executor="ray"`, picklable factories for process pools and Ray."""
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                f"Expected a CUDA device for device={config.device!r}. "
                "Received: torch.cuda.is_available() is False"
            )
    if executor is None and config.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ModuleNotFoundError(
                "Expected Ray for executor='ray' (`pip install mpq[ray]`). "
                "Received: no module named 'ray'"
            )
    pickled = (executor is None and config.executor != "serial") or isinstance(
        executor, cf.ProcessPoolExecutor
    )
    if pickled:
        config.check_picklable()


def _as_config(config: Any) -> SweepConfig:
    if isinstance(config, SweepConfig):
        return config
    if config is None:
        return default_config()
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    if isinstance(config, dict):
        from mpq.sweep.config import config_from_dict

        return config_from_dict(config)
    raise TypeError(
        "Expected a SweepConfig, a sweep file path, a config dict, or None (the default sweep). "
        f"Received: config={config!r} (of type {type(config).__name__})"
    )


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
    config: SweepConfig | str | os.PathLike | dict | None = None,
    executor: cf.Executor | None = None,
    *,
    model: Any = None,
    data: Any = None,
    policies: Any = None,
    metric: Any = None,
    verbose: bool = True,
    stream: TextIO | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
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
    config = _as_config(config)
    out = prepare_output(config.out)
    check_environment(config, executor)
    from mpq.sweep.runner import Progress, execute, make_executor, prepare_results, stop_now

    progress = Progress(
        len(config.run_configs()),
        stream=stream if stream is not None else sys.stderr,
        enabled=verbose,
    )
    previous = prepare_results(config, out, progress.stream)  # a bad file: raise before work
    own = executor is None
    if executor is None:
        executor = make_executor(config)
    if verbose:
        n_runs = len(config.run_configs())
        how = config.executor if own else type(executor).__name__
        extra = " + per-layer runs" if config.per_layer else ""
        print(
            f"mpq sweep: {len(config.models)} model(s) x {len(config.variants)} policies x "
            f"{len(config.seeds)} seed(s) = {n_runs} runs{extra} on {config.device}, "
            f"executor {how} -> {out}/",
            file=progress.stream,
            flush=True,
        )
    try:
        records, suggestions, errors = execute(config, executor, out, progress, on_record, previous)
    except BaseException:  # Ctrl-C (KeyboardInterrupt) above all: stop the workers now
        progress.close()
        if own:
            stop_now(executor)
        raise
    progress.close()
    if own:
        executor.shutdown(wait=True)
    _report(config, records, suggestions, errors, out, verbose, stream)
    if errors:
        records.append({"kind": "error", "status": "error", "error": "; ".join(errors)})
    return records


def _report(
    config: SweepConfig,
    records: list[dict[str, Any]],
    suggestions: dict[str, list[Any]],
    errors: list[str],
    out: Path,
    verbose: bool,
    stream: TextIO | None,
) -> None:
    from mpq.sweep.records import format_table, summarize, write_csv

    def say(text: str = "") -> None:
        if verbose:
            print(text, file=stream if stream is not None else sys.stdout)

    rows = summarize(records)
    columns = [
        "model",
        "variant",
        "policy",
        "n",
        "accuracy",
        "accuracy_delta",
        "loss",
        "sqnr_db",
        "weight_bytes",
        "bytes_ratio",
        "latency_ms",
        "finetune_accuracy",
        "float32_accuracy",
        "task",
        "metric",
        "metric_value",
        "metric_delta",
        "metric_delta_pct",
        "float32_metric",
        "perplexity",
        "bits_per_byte",
        "mse",
        "status",
        "error",
    ]
    write_csv(rows, out / "summary.csv", columns)
    say()
    say(format_table(rows))
    images = []
    if config.plot and rows:
        from mpq.sweep.plots import plot_sweep
        from mpq.sweep.report import plot_pareto

        plot_sweep(rows, out / "sweep.png")
        if any(r.get("n") and r.get("metric_value") is not None for r in rows):
            plot_pareto(rows, out / "pareto.png")
            images.append(out / "pareto.png")
        images.append(out / "sweep.png")
    if config.per_layer:
        _report_per_layer(config, records, out, say)
        images.append(out / "per_layer.png")
    if config.plot:
        from mpq.sweep.records import SUMMARY_COLUMNS
        from mpq.sweep.report import write_report

        n_ok = sum(r.get("status") == "ok" for r in records)
        write_report(
            out,
            rows,
            SUMMARY_COLUMNS,
            images,
            notes=[
                f"{len(records)} runs ({n_ok} ok) of {len(config.models)} model(s) on "
                f"{config.device}. Value: each model's task metric; vs f32 %: its change "
                "against the float32 run; SQNR: the outputs against float32's."
            ],
        )
    if config.suggest:
        _report_suggestions(config, records, suggestions, out, say)
    n_failed = sum(r.get("status") != "ok" for r in records) + len(errors)
    say()
    say(
        f"{len(records)} runs, {n_failed} failed. Results in {out}/: results.jsonl, summary.csv"
        + (", pareto.png, sweep.png, report.html" if config.plot else "")
    )
    by_error: dict[str, list[str]] = {}
    for r in records:
        if r.get("status") != "ok":
            where = f"{r.get('model')} {r.get('variant')}" + (
                f"@{r['layer']}" if r.get("layer") else ""
            )
            by_error.setdefault(str(r.get("error")), []).append(f"{where} (seed {r.get('seed')})")
    for error, runs in by_error.items():
        shown = ", ".join(runs[:6]) + (f" and {len(runs) - 6} more" if len(runs) > 6 else "")
        say(f"  {len(runs)} failed with {error}\n    {shown}")
    for e in errors:
        say(f"  failed: {e}")


def _report_per_layer(
    config: SweepConfig, records: list[dict[str, Any]], out: Path, say: Callable[[str], None]
) -> None:
    from mpq.sweep.records import format_table, write_csv
    from mpq.sweep.sensitivity import per_layer_matrix, per_layer_rows

    panels, csv_rows = [], []
    failed: set[tuple[str, str, str]] = set()
    for model in config.models:
        seed = config.seeds[0]
        rows = per_layer_rows(records, model.resolved_name, seed, ok_only=False)
        if not rows:
            continue
        layers, variants, matrix = per_layer_matrix(rows)
        title = f"{model.resolved_name} (seed {seed})"
        panels.append((title, layers, variants, matrix))
        failed |= {(title, r["layer"], r["variant"]) for r in rows if r.get("status") != "ok"}
        table_rows = []
        for layer, vals in zip(layers, matrix, strict=True):
            row = {"model": model.resolved_name, "layer": layer}
            row.update({v: val for v, val in zip(variants, vals, strict=True)})
            table_rows.append(row)
            csv_rows.append(
                {
                    k: ("inf" if isinstance(v, float) and math.isinf(v) else v)
                    for k, v in row.items()
                }
            )
        cols = [("model", "model", "s"), ("layer", "layer", "s")] + [(v, v, "db") for v in variants]
        say()
        say(
            f"Per-layer SQNR (dB) of {model.resolved_name}: one layer under the policy, the rest float32"
        )
        say(format_table(table_rows, cols))
    if csv_rows:
        write_csv(csv_rows, out / "per_layer.csv")
        if config.plot:
            from mpq.sweep.plots import plot_per_layer

            plot_per_layer(panels, out / "per_layer.png", failed)


def _report_suggestions(
    config: SweepConfig,
    records: list[dict[str, Any]],
    suggestions: dict[str, list[Any]],
    out: Path,
    say: Callable[[str], None],
) -> None:
    from mpq import policy as mpq_policy
    from mpq.sweep.records import _human_bytes

    policies = {v.label: v.policy for v in config.variants}
    policies["float32"] = "float32"
    chosen: dict[str, Any] = {}
    for model in config.models:
        name = model.resolved_name
        verify = [r for r in records if r.get("kind") == "suggest" and r["model"] == name]
        say()
        if not verify:
            say(
                f"Suggestion for {name}: no assignment reaches the predicted SQNR target of {config.target_sqnr} dB"
            )
            continue
        say(f"Suggested policy maps for {name} (target {config.target_sqnr} dB), cheapest first:")
        predicted = {
            tuple(sorted(c.assignment)): c.predicted_sqnr_db for c in suggestions.get(name, [])
        }
        best = None
        for r in sorted(verify, key=lambda r: r.get("weight_bytes") or math.inf):
            sq = (
                math.inf
                if r.get("status") == "ok" and r.get("sqnr_db") is None
                else r.get("sqnr_db")
            )
            ok = r.get("status") == "ok" and sq is not None and sq >= config.target_sqnr
            desc = ", ".join(f"{p}: {v}" for p, v in (r.get("assignment") or {}).items())
            measured = (
                "failed: " + str(r.get("error")) if r.get("status") != "ok" else f"{sq:.1f} dB"
            )
            pred = predicted.get(tuple(sorted((r.get("assignment") or {}).items())))
            pred_text = "" if pred is None else f"predicted {pred:.1f} dB, "
            size = _human_bytes(r["weight_bytes"]) if r.get("weight_bytes") else "-"
            say(f"  {'OK ' if ok else 'no '} {size:>10}  {pred_text}measured {measured}  [{desc}]")
            if ok and best is None:
                best = r
        if best is None:
            say("  none of the candidates met the target when verified")
            continue
        pmap = mpq_policy.DTypePolicyMap(
            "float32", {p: policies[v] for p, v in best["assignment"].items() if v != "float32"}
        )
        chosen[name] = {
            "policy_map": mpq_policy.serialize(pmap),
            "measured_sqnr_db": best.get("sqnr_db"),
            "accuracy": best.get("accuracy"),
            "weight_bytes": best.get("weight_bytes"),
            "float32_weight_bytes": best.get("float32_weight_bytes"),
            "target_sqnr_db": config.target_sqnr,
        }
        say(f"  -> {pmap!r}")
    if chosen:
        from mpq.sweep.records import write_atomic

        write_atomic(
            out / "suggested_policy_map.json",
            json.dumps(chosen, indent=2, allow_nan=False, default=str),
        )
