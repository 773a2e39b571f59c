"""Runs a sweep's tasks on an executor: local processes (default), this process, any
`concurrent.futures.Executor`, or Ray; streams records to JSONL as runs finish, resumes by hash.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from mpq.sweep import experiment
from mpq.sweep.config import BUILTIN_VARIANTS, RunConfig, SweepConfig, Variant
from mpq.sweep.records import JsonlWriter, latest_by_hash, read_jsonl

__all__ = ["InlineExecutor", "Progress", "RayExecutor", "execute", "make_executor"]

#: The variant of a suggested-map verification run (the map itself is the run's `assignment`).
SUGGESTED = Variant("suggested", "float32")


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------
class InlineExecutor(cf.Executor):
    """Runs each task in the calling thread at `submit` (executor="serial"); no pickling.

    Example:
        >>> InlineExecutor().submit(pow, 2, 5).result()
        32
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as e:  # delivered through the future, as a pool would (Ctrl-C is not)
            fut.set_exception(e)
        return fut


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class RayExecutor(cf.Executor):
    """A `concurrent.futures.Executor` that sends each task to Ray as a remote task with its own
    resource request, e.g. `{"num_cpus": 1, "num_gpus": 0.25}` (fractional GPUs let several runs
    share one device). Futures come from `ObjectRef.future()`, so results stream back as tasks
    finish. Initialises Ray (`address`, `init_kwargs`) when it is not running, and shuts it down
    again on `shutdown()` in that case.

    Example:
        >>> ex = RayExecutor({"num_cpus": 1}, init_kwargs={"num_cpus": 2})  # doctest: +SKIP
        >>> ex.submit(pow, 2, 5).result()  # doctest: +SKIP
        32
    """

    def __init__(
        self,
        resources: dict[str, float] | None = None,
        address: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ):
        try:
            import ray
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "Expected Ray for executor='ray' (`pip install mpq[ray]`). Received: no module named 'ray'"
            ) from None
        self._ray = ray
        self._resources = dict(resources or {"num_cpus": 1})
        self._owns = False
        if not ray.is_initialized():
            kwargs = dict(init_kwargs or {})
            kwargs.setdefault("include_dashboard", False)
            kwargs.setdefault("log_to_driver", False)
            if address is None:  # a local Ray: workers import mpq from wherever we do
                pythonpath = os.pathsep.join(p for p in sys.path if p)
                env = kwargs.setdefault("runtime_env", {}).setdefault("env_vars", {})
                env.setdefault("PYTHONPATH", pythonpath)
            ray.init(address=address, **kwargs)
            self._owns = True
        self._remotes: dict[Any, Any] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        remote = self._remotes.get(fn)
        if remote is None:
            remote = self._ray.remote(**self._resources)(fn)
            self._remotes[fn] = remote
        return remote.remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns = False


def make_executor(config: SweepConfig) -> cf.Executor:
    """The executor named by `config.executor` (the caller shuts it down)."""
    if config.executor == "serial":
        return InlineExecutor()
    if config.executor == "ray":
        return RayExecutor(config.resources, config.ray_address)
    workers = config.workers or max(1, min(os.cpu_count() or 1, 2))
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn: forking a process that may already run torch's thread pools can deadlock.
    return cf.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    )


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------
class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, one line per
    finished run otherwise (logs, CI)."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True):
        self.total = total
        self.done = 0
        self.failed = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        self.total += n

    def update(self, record: dict[str, Any], resumed: bool = False) -> None:
        with self._lock:
            self.done += 1
            self.failed += record.get("status") != "ok"
            if not self.enabled:
                return
            width = 24
            filled = int(width * self.done / max(self.total, 1))
            bar = "#" * filled + "." * (width - filled)
            elapsed = time.perf_counter() - self.t0
            what = f"{record.get('model')} {record.get('variant')}"
            if record.get("layer"):
                what += f" @{record['layer']}"
            status = "resumed" if resumed else record.get("status", "?")
            left = self.total - self.done
            eta = f" eta {elapsed / self.done * left:4.0f}s" if left and not resumed else ""
            line = (
                f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s{eta}  {what} seed {record.get('seed')}: "
                f"{status}" + (f" ({self.failed} failed)" if self.failed else "")
            )
            if self.tty:
                self.stream.write("\r\033[K" + line[:160])
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A status line that is not a finished run (e.g. a float32 training started)."""
        with self._lock:
            if not self.enabled:
                return
            elapsed = time.perf_counter() - self.t0
            line = f"[{self.done}/{self.total} runs] {elapsed:5.0f}s  {text}"
            self.stream.write(("\r\033[K" + line[:160]) if self.tty else line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------------------------
# The task graph: baselines -> runs -> (per-layer -> suggestions)
# --------------------------------------------------------------------------------------------
def _baseline_key(config: SweepConfig, model_name: str, seed: int) -> str:
    model = next(m for m in config.models if m.resolved_name == model_name)
    blob = json.dumps([model.to_dict(), seed, config.device, config.quick], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _failure(rc: RunConfig, error: str) -> dict[str, Any]:
    return {
        "config_hash": rc.config_hash,
        "kind": rc.kind,
        "model": rc.model.resolved_name,
        "variant": rc.variant.label,
        "policy": rc.variant.policy,
        "seed": rc.seed,
        "layer": None if rc.layers is None else ",".join(rc.layers),
        "status": "error",
        "error": error,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class _Scheduler:
    def __init__(
        self,
        config: SweepConfig,
        executor: cf.Executor,
        out: Path,
        progress: Progress,
        on_record: Callable[[dict[str, Any]], None] | None,
    ):
        self.config = config
        self.executor = executor
        self.out = out
        self.progress = progress
        self.on_record = on_record
        previous = latest_by_hash(read_jsonl(out / "results.jsonl")) if config.resume else {}
        self.previous_ok = {h: r for h, r in previous.items() if r.get("status") == "ok"}
        self.layers_file = out / "layers.json"
        self.layers: dict[str, list[dict[str, Any]]] = {}
        if self.layers_file.exists():
            try:
                self.layers = json.loads(self.layers_file.read_text())
            except json.JSONDecodeError:  # a cache: rebuilt from the baselines when unreadable
                self.layers = {}
        self.baselines: dict[str, dict[str, Any]] = {}
        self.baseline_names: dict[str, str] = {}
        self.baseline_errors: dict[str, str] = {}
        self.waiting: dict[str, list[Any]] = {}  # baseline key -> RunConfigs / callbacks
        self.futures: dict[cf.Future, tuple[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.per_layer_left: dict[str, int] = {}
        self.writer: JsonlWriter | None = None
        self.suggestions: dict[str, list[Any]] = {}
        self.failed_expansions: list[str] = []  # per-layer expansions whose baseline failed

    # -- submission ------------------------------------------------------------------------
    def _ensure_baseline(self, key: str, rc_or_cb: Any, model_name: str, seed: int) -> None:
        if key in self.baselines:
            self._dispatch(rc_or_cb, key)
            return
        if key in self.baseline_errors:
            self._dispatch_failed(rc_or_cb, key)
            return
        first = key not in self.waiting
        self.baseline_names[key] = f"{model_name} (seed {seed})"
        self.waiting.setdefault(key, []).append(rc_or_cb)
        if first:
            model = next(m for m in self.config.models if m.resolved_name == model_name)
            self.progress.note(f"training {model_name} (seed {seed}) in float32")
            self._submit(
                ("baseline", key),
                experiment.train_baseline,
                model,
                seed,
                self.config.device,
                self.config.quick,
                self.config.baseline_cache,
            )

    def _submit(self, tag: tuple[str, Any], fn: Callable[..., Any], *args: Any) -> None:
        try:
            fut = self.executor.submit(fn, *args)
        except Exception as e:  # e.g. a process pool broken by a dead worker: a failed run
            fut = cf.Future()
            fut.set_exception(e)
        if fut.done():  # an in-process executor: handle it now, so progress and JSONL stream
            self._on_done(fut, *tag)
        else:
            self.futures[fut] = tag

    def _dispatch(self, item: Any, key: str) -> None:
        if isinstance(item, RunConfig):
            self._submit(("run", item), experiment.run_one, item, self.baselines[key])
        else:
            item(self.baselines[key]["layers"])

    def _dispatch_failed(self, item: Any, key: str) -> None:
        err = f"baseline training failed: {self.baseline_errors[key]}"
        if isinstance(item, RunConfig):
            self._record(_failure(item, err))
        else:  # a per-layer expansion that cannot happen
            self.progress.failed += 1
            self.failed_expansions.append(err)

    def submit_run(self, rc: RunConfig) -> None:
        self.order.append(rc.config_hash)
        prev = self.previous_ok.get(rc.config_hash)
        if prev is not None:
            self.records[rc.config_hash] = prev
            self.progress.update(prev, resumed=True)
            self._after_run(prev)
            return
        key = _baseline_key(self.config, rc.model.resolved_name, rc.seed)
        self._ensure_baseline(key, rc, rc.model.resolved_name, rc.seed)

    def _expand_per_layer(self, model, seed: int) -> None:
        key = _baseline_key(self.config, model.resolved_name, seed)
        variants = [v for v in self.config.variants if v.label != "float32"]

        def expand(layers: list[dict[str, Any]]) -> None:
            # Sensitivity is about the weights as trained: no fine-tuning.
            runs = [
                self.config.run_config(
                    model, v, seed, kind="per_layer", layers=(row["path"],), finetune_epochs=0
                )
                for row in layers
                for v in variants
            ]
            self.per_layer_left[key] = len(runs)
            self.progress.add(len(runs))
            if not runs:
                self._maybe_suggest(model, seed, key)
            for rc in runs:
                self.submit_run(rc)

        if key in self.layers:
            expand(self.layers[key])
        else:
            self._ensure_baseline(key, expand, model.resolved_name, seed)

    # -- completion ------------------------------------------------------------------------
    def _record(self, rec: dict[str, Any]) -> None:
        self.records[rec["config_hash"]] = rec
        if self.writer is not None:
            self.writer.write(rec)
        if self.on_record is not None:
            self.on_record(rec)
        self.progress.update(rec)
        self._after_run(rec)

    def _after_run(self, rec: dict[str, Any]) -> None:
        if rec.get("kind") != "per_layer":
            return
        key = _baseline_key(self.config, rec["model"], rec["seed"])
        if key not in self.per_layer_left:
            return
        self.per_layer_left[key] -= 1
        if self.per_layer_left[key] == 0:
            model = next(m for m in self.config.models if m.resolved_name == rec["model"])
            self._maybe_suggest(model, rec["seed"], key)

    def _maybe_suggest(self, model, seed: int, key: str) -> None:
        if not self.config.suggest or seed != self.config.seeds[0]:
            return
        from mpq.sweep.sensitivity import per_layer_rows, suggest

        recs = list(self.records.values())
        rows = per_layer_rows(recs, model.resolved_name, seed)
        candidates = suggest(rows, self.config.target_sqnr)
        self.suggestions[model.resolved_name] = candidates
        by_label = {v.label: v for v in self.config.variants}
        by_label.setdefault("float32", BUILTIN_VARIANTS["float32"])
        self.progress.add(len(candidates))
        for cand in candidates:
            assignment = tuple((p, by_label[label]) for p, label in cand.assignment)
            rc = self.config.run_config(
                model, SUGGESTED, seed, kind="suggest", assignment=assignment, finetune_epochs=0
            )
            self.submit_run(rc)

    def _on_done(self, fut: cf.Future, what: str, payload: Any) -> None:
        try:
            result = fut.result()
            error = None
        except BaseException as e:  # the executor itself failed (pickling, dead worker, Ray)
            result = None
            error = f"{type(e).__name__}: {e}"
            if not str(e):
                error += traceback.format_exc()[-300:]
        if what == "baseline":
            key = payload
            waiting = self.waiting.pop(key, [])
            if error is None:
                self.baselines[key] = result
                self.progress.note(
                    f"trained {self.baseline_names[key]}: float32 accuracy "
                    f"{100 * result['accuracy']:.1f}% ({result['epochs']} epochs, "
                    f"{result['train_seconds']:.1f} s)"
                )
                self.layers[key] = result["layers"]
                self.layers_file.write_text(json.dumps(self.layers, indent=1))
                for item in waiting:
                    self._dispatch(item, key)
            else:
                self.baseline_errors[key] = error
                for item in waiting:
                    self._dispatch_failed(item, key)
        else:
            self._record(result if error is None else _failure(payload, error))

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        with JsonlWriter(self.out / "results.jsonl") as writer:
            self.writer = writer
            for rc in self.config.run_configs():
                self.submit_run(rc)
            if self.config.per_layer:
                for model in self.config.models:
                    for seed in self.config.seeds:
                        self._expand_per_layer(model, seed)
            while self.futures:
                done, _ = cf.wait(list(self.futures), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    what, payload = self.futures.pop(fut)
                    self._on_done(fut, what, payload)
            self.writer = None
        return [self.records[h] for h in dict.fromkeys(self.order) if h in self.records]


def execute(
    config: SweepConfig,
    executor: cf.Executor,
    out: Path,
    progress: Progress,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, list[Any]], list[str]]:
    """Run every task of `config` on `executor`; returns `(records, suggestions, errors)` where
    errors are failures outside any run (a per-layer expansion whose baseline failed)."""
    sched = _Scheduler(config, executor, out, progress, on_record)
    records = sched.run()
    return records, sched.suggestions, sched.failed_expansions
