"""Runs a sweep's tasks on an executor: local processes (default), this process, any
`concurrent.futures.Executor`, or Ray; streams records to JSONL as runs finish, resumes by hash.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from mpq.sweep import experiment
from mpq.sweep.config import BUILTIN_VARIANTS, RunConfig, SweepConfig, Variant
from mpq.sweep.records import (
    JsonlWriter,
    latest_by_hash,
    scan_results,
    set_aside_torn_tail,
    write_atomic,
)

__all__ = [
    "InlineExecutor",
    "Progress",
    "RayExecutor",
    "WorkerPool",
    "execute",
    "make_executor",
    "prepare_results",
    "stop_now",
]

#: How often the wait loop looks for a Ctrl-C (seconds).
_POLL_S = 0.2

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
    # Ctrl-C reaches the whole process group: the parent alone answers it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)


class WorkerPool(cf.ProcessPoolExecutor):
    """The local process pool: `spawn`ed workers that live for the whole sweep (each imports
    torch and mpq once, not once per task; no scikit-learn or matplotlib), `initializer` sets
    their torch threads. No fork of this process: it may already run torch's thread pools,
    and forking those can deadlock.

    Workers never see Ctrl-C: they are started (inside `submit`) while SIGINT is blocked in
    this thread, and inherit the blocked signal; the parent answers Ctrl-C and `stop_now`
    terminates them.
    """

    def __init__(self, workers: int, threads: int):
        super().__init__(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
            return super().submit(fn, *args, **kwargs)
        # A Ctrl-C that arrives meanwhile stays pending and is delivered on unblocking.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return super().submit(fn, *args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def stop_now(self) -> None:
        """Cancel the tasks that have not started and terminate the workers (their runs are
        lost; nothing is half-written, since only the parent writes results)."""
        procs = list((getattr(self, "_processes", None) or {}).values())
        self.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=10)
        self.shutdown(wait=True)


def stop_now(executor: cf.Executor) -> None:
    """Stop an executor at once (Ctrl-C): `WorkerPool.stop_now`, or a shutdown that cancels
    the tasks not started yet (Ray tasks go with the Ray it started). A further Ctrl-C is
    ignored meanwhile (in the main thread), so that the stop is not cut short."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        if isinstance(executor, WorkerPool):
            executor.stop_now()
        else:
            executor.shutdown(wait=False, cancel_futures=True)
    finally:
        if main:
            signal.signal(signal.SIGINT, old)


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
    # One torch thread per worker when several run (the runs are small: threads would only
    # contend for the cores); a lone worker gets them all. No fork of this process: it may
    # already run torch's thread pools, and forking those can deadlock.
    threads = 1 if workers > 1 else max(1, os.cpu_count() or 1)
    return WorkerPool(workers, threads)


class _CtrlC:
    """Ctrl-C while the tasks run in other processes: the first one only sets `requested`, and
    the wait loop raises KeyboardInterrupt at a point where it holds none of the executor's
    locks (an interrupt inside `concurrent.futures.wait` can leave a future's lock taken, and
    the pool's shutdown then waits forever); a second Ctrl-C raises at once. Installed only in
    the main thread and over Python's default handler."""

    def __init__(self, executor: cf.Executor):
        self.requested = False
        self._old: Any = None
        self._active = (
            not isinstance(executor, InlineExecutor)
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> _CtrlC:
        if self._active:
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._active:
            signal.signal(signal.SIGINT, self._old)


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
# Tasks: tensors cross process boundaries as bytes
# --------------------------------------------------------------------------------------------
# A tensor pickled through a process pool travels as a shared-memory file descriptor, fetched
# from the sender's `multiprocessing.resource_sharer` thread; a worker terminated by Ctrl-C
# in the middle of such a fetch makes that thread print a traceback. As safetensors bytes
# (exact, every dtype) the baseline's weights and logits are plain data.


def _pack(baseline: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import save

    out = dict(baseline)
    out["state"] = (list(baseline["state"]), save(baseline["state"]))  # keys in model order
    out["logits"] = save({"logits": baseline["logits"]})
    return out


def _unpack(baseline: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load

    out = dict(baseline)
    keys, blob = baseline["state"]
    state = load(blob)
    out["state"] = {k: state[k] for k in keys}
    out["logits"] = load(baseline["logits"])["logits"]
    return out


def _known_modes() -> set[str]:
    """The quantization modes some layer class has a scheme for."""
    import mpq.quantization  # noqa: F401  (registers the schemes)
    from mpq.layers.quantization import registered_schemes

    return {mode for _, mode in registered_schemes()}


def _train_task(
    model: Any, seed: int, device: str, quick: bool, cache_dir: str | None = None
) -> dict[str, Any]:
    """`experiment.train_baseline`, its tensors packed as bytes."""
    return _pack(experiment.train_baseline(model, seed, device, quick, cache_dir))


def _run_task(rc: RunConfig, packed_baseline: dict[str, Any]) -> dict[str, Any]:
    """`experiment.run_one` on a packed baseline."""
    return experiment.run_one(rc, _unpack(packed_baseline))


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
        previous: dict[str, dict[str, Any]],
    ):
        self.config = config
        self.executor = executor
        self.out = out
        self.progress = progress
        self.on_record = on_record
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
                _train_task,
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
            self._submit(("run", item), _run_task, item, self.baselines[key])
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

        known = _known_modes()

        def applies(v: Variant, row: dict[str, Any]) -> bool:
            # A quantized variant is not run on a layer that has no scheme for its mode (a
            # LayerNormalization under int8): there is nothing to measure. Rows without `modes`
            # (a layers.json of an older sweep) and modes no scheme names run as before.
            mode = v.dtype_policy.quantization_mode
            return mode is None or "modes" not in row or mode not in known or mode in row["modes"]

        def expand(layers: list[dict[str, Any]]) -> None:
            # Sensitivity is about the weights as trained: no fine-tuning.
            runs = [
                self.config.run_config(
                    model, v, seed, kind="per_layer", layers=(row["path"],), finetune_epochs=0
                )
                for row in layers
                for v in variants
                if applies(v, row)
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
                write_atomic(self.layers_file, json.dumps(self.layers, indent=1))
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
        with JsonlWriter(self.out / "results.jsonl") as writer, _CtrlC(self.executor) as ctrl_c:
            self.writer = writer
            for rc in self.config.run_configs():
                self.submit_run(rc)
            if self.config.per_layer:
                for model in self.config.models:
                    for seed in self.config.seeds:
                        self._expand_per_layer(model, seed)
            while self.futures:
                ctrl_c.check()
                done, _ = cf.wait(
                    list(self.futures), timeout=_POLL_S, return_when=cf.FIRST_COMPLETED
                )
                for fut in done:
                    ctrl_c.check()
                    what, payload = self.futures.pop(fut)
                    self._on_done(fut, what, payload)
            ctrl_c.check()
            self.writer = None
        return [self.records[h] for h in dict.fromkeys(self.order) if h in self.records]


def prepare_results(
    config: SweepConfig, out: Path, stream: TextIO | None = None
) -> dict[str, dict[str, Any]]:
    """Get `out/results.jsonl` ready for appending, before any work, and return the records to
    resume from (the last one per config hash; {} without `config.resume`).

    - `config.overwrite`: an existing file is renamed to `results.jsonl.old-<UTC time>`.
    - A torn last line (a crash mid-write) is moved to `results.jsonl.torn-<UTC time>`; every
      complete record is kept. Said on `stream` (default stderr).
    - Any other bad line raises `ResultsFileError` (file and line; the file is not changed),
      unless `config.skip_bad_lines`: then the bad lines are skipped (their runs are computed
      again) with a warning on `stream`, and left in the file.
    """
    stream = stream if stream is not None else sys.stderr
    path = out / "results.jsonl"
    if config.overwrite and path.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        old = path.with_name(f"{path.name}.old-{stamp}")
        n = 1
        while old.exists():
            n += 1
            old = path.with_name(f"{path.name}.old-{stamp}-{n}")
        os.replace(path, old)
        print(f"mpq sweep: --overwrite: moved the previous results to {old}", file=stream)
    scan = scan_results(path, skip_bad_lines=config.skip_bad_lines)
    aside = set_aside_torn_tail(path, scan)
    if aside is not None:
        print(
            f"mpq sweep: {path} ended in a line cut short by a crash ({len(scan.torn_tail)} "
            f"bytes); moved it to {aside} and kept the {len(scan.records)} complete records",
            file=stream,
        )
    if scan.bad_lines:
        shown = ", ".join(str(i) for i, _ in scan.bad_lines[:10])
        more = f" and {len(scan.bad_lines) - 10} more" if len(scan.bad_lines) > 10 else ""
        print(
            f"mpq sweep: warning: skipped {len(scan.bad_lines)} bad line(s) of {path} (line "
            f"{shown}{more}: {scan.bad_lines[0][1]}); their runs are computed again",
            file=stream,
        )
    return latest_by_hash(scan.records) if config.resume else {}


def execute(
    config: SweepConfig,
    executor: cf.Executor,
    out: Path,
    progress: Progress,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    previous: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, list[Any]], list[str]]:
    """Run every task of `config` on `executor`; returns `(records, suggestions, errors)` where
    errors are failures outside any run (a per-layer expansion whose baseline failed).
    `previous`: the records to resume from (`prepare_results`, which runs here when None)."""
    if previous is None:
        previous = prepare_results(config, out, progress.stream)
    sched = _Scheduler(config, executor, out, progress, on_record, previous)
    records = sched.run()
    return records, sched.suggestions, sched.failed_expansions
