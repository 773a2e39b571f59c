"""Runs a sweep's tasks on an executor: local processes (default), this process, any
`concurrent.futures.Executor`, or Ray; streams records to JSONL as runs finish, resumes by hash.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mpq.sweep import experiment
from mpq.sweep.config import ModelSpec, RunConfig, SweepConfig
from mpq.sweep.experiment import BaselineInfo, BaselineResult
from mpq.sweep.plan import Baseline, Execution, LayerRow, Output, PerLayer, Plan, make_plan
from mpq.sweep.records import (
    JsonlWriter,
    Record,
    latest_by_hash,
    scan_results,
    set_aside_torn_tail,
    write_atomic,
)
from mpq.sweep.sensitivity import Suggestion

__all__ = [
    "InlineExecutor",
    "Outcome",
    "Progress",
    "RayExecutor",
    "WorkerPool",
    "check_environment",
    "execute",
    "make_executor",
    "prepare_output",
    "prepare_results",
    "stop_now",
]

#: How often the wait loop looks for a Ctrl-C (seconds).
_POLL_S = 0.2


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------
class InlineExecutor(cf.Executor):
    """Runs each task in the calling thread at `submit` (executor="serial"); no pickling.

    Example:
        >>> InlineExecutor().submit(pow, 2, 5).result()
        32
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
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

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
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
        self._ray: Any = ray  # its decorators take arbitrary resource options
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

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        remote = self._remotes.get(fn)
        if remote is None:
            remote = self._ray.remote(**self._resources)(fn)
            self._remotes[fn] = remote
        future: cf.Future[Any] = remote.remote(*args, **kwargs).future()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns = False


def make_executor(execution: Execution | SweepConfig) -> cf.Executor:
    """The executor named by `execution.executor` (the caller shuts it down)."""
    if execution.executor == "serial":
        return InlineExecutor()
    if execution.executor == "ray":
        return RayExecutor(dict(execution.resources), execution.ray_address)
    workers = execution.workers or max(1, min(os.cpu_count() or 1, 2))
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

    def update(self, record: Mapping[str, Any], resumed: bool = False) -> None:
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
class PackedBaseline(BaselineInfo):
    """`experiment.BaselineResult` with its tensors as safetensors bytes."""

    state: tuple[list[str], bytes]  # keys in model order, and the tensors
    logits: bytes


def _info(baseline: BaselineInfo) -> BaselineInfo:
    return {
        "accuracy": baseline["accuracy"],
        "loss": baseline["loss"],
        "metric": baseline["metric"],
        "metric_value": baseline["metric_value"],
        "metrics": baseline["metrics"],
        "train_loss": baseline["train_loss"],
        "epochs": baseline["epochs"],
        "cached": baseline["cached"],
        "layers": baseline["layers"],
        "weight_bytes": baseline["weight_bytes"],
        "train_seconds": baseline["train_seconds"],
    }


def _pack(baseline: BaselineResult) -> PackedBaseline:
    from safetensors.torch import save

    return PackedBaseline(
        **_info(baseline),
        state=(list(baseline["state"]), save(baseline["state"])),
        logits=save({"logits": baseline["logits"]}),
    )


def _unpack(baseline: PackedBaseline) -> BaselineResult:
    from safetensors.torch import load

    keys, blob = baseline["state"]
    state = load(blob)
    return BaselineResult(
        **_info(baseline),
        state={k: state[k] for k in keys},
        logits=load(baseline["logits"])["logits"],
    )


def _known_modes() -> set[str]:
    """The quantization modes some layer class has a scheme for."""
    import mpq.quantization  # noqa: F401  (registers the schemes)
    from mpq.layers.quantization import registered_schemes

    return {mode for _, mode in registered_schemes()}


def _train_task(
    model: ModelSpec, seed: int, device: str, quick: bool, cache_dir: str | None = None
) -> PackedBaseline:
    """`experiment.train_baseline`, its tensors packed as bytes."""
    return _pack(experiment.train_baseline(model, seed, device, quick, cache_dir))


def _run_task(rc: RunConfig, packed_baseline: PackedBaseline) -> Record:
    """`experiment.run_one` on a packed baseline."""
    return experiment.run_one(rc, _unpack(packed_baseline))


# --------------------------------------------------------------------------------------------
# The task graph: baselines -> runs -> (per-layer -> suggestions)
# --------------------------------------------------------------------------------------------
def _failure(rc: RunConfig, error: str) -> Record:
    """The record of a run that could not run (its baseline failed, or the executor did)."""
    return Record.for_run(
        rc,
        status="error",
        error=error,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


#: What waits for a baseline: a run, or a per-layer expansion (called with the layer table).
_Waiting = RunConfig | Callable[[Sequence[LayerRow]], None]
#: What a submitted future stands for: a baseline's training, or a run.
_Tag = Baseline | RunConfig


@dataclass
class Outcome:
    """What `execute` hands on: the records in plan order (resumed ones included), the
    suggestion candidates per model, and the failures outside any run (a per-layer
    expansion whose baseline failed)."""

    records: list[Record]
    suggestions: dict[str, list[Suggestion]]
    errors: list[str]


class _Scheduler:
    """Submits the plan's tasks as their inputs become ready and collects the records."""

    def __init__(
        self,
        plan: Plan,
        executor: cf.Executor,
        progress: Progress,
        on_record: Callable[[Record], None] | None,
        previous: Mapping[str, Record],
    ):
        self.plan = plan
        self.executor = executor
        self.progress = progress
        self.on_record = on_record
        self.previous_ok = {h: r for h, r in previous.items() if r.status == "ok"}
        self.layers_file = plan.output.out / "layers.json"
        self.layers: dict[str, Sequence[LayerRow]] = _read_layers(self.layers_file)
        self.baselines: dict[str, PackedBaseline] = {}
        self.baseline_errors: dict[str, str] = {}
        self.waiting: dict[str, list[_Waiting]] = {}  # baseline key -> runs / expansions
        self.futures: dict[cf.Future[Any], _Tag] = {}
        self.records: dict[str, Record] = {}
        self.order: list[str] = []
        self.per_layer_left: dict[str, int] = {}
        self.writer: JsonlWriter | None = None
        self.suggestions: dict[str, list[Suggestion]] = {}
        self.failed_expansions: list[str] = []  # per-layer expansions whose baseline failed

    # -- submission ------------------------------------------------------------------------
    def _ensure_baseline(self, baseline: Baseline, item: _Waiting) -> None:
        key = baseline.key
        if key in self.baselines:
            self._dispatch(item, key)
            return
        if key in self.baseline_errors:
            self._dispatch_failed(item, key)
            return
        first = key not in self.waiting
        self.waiting.setdefault(key, []).append(item)
        if first:
            self.progress.note(f"training {baseline.title} in float32")
            self._submit(
                baseline,
                _train_task,
                baseline.model,
                baseline.seed,
                baseline.device,
                baseline.quick,
                baseline.cache_dir,
            )

    def _submit(self, tag: _Tag, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fut = self.executor.submit(fn, *args)
        except Exception as e:  # e.g. a process pool broken by a dead worker: a failed run
            fut = cf.Future()
            fut.set_exception(e)
        if fut.done():  # an in-process executor: handle it now, so progress and JSONL stream
            self._on_done(fut, tag)
        else:
            self.futures[fut] = tag

    def _dispatch(self, item: _Waiting, key: str) -> None:
        if isinstance(item, RunConfig):
            self._submit(item, _run_task, item, self.baselines[key])
        else:
            item(self.baselines[key]["layers"])

    def _dispatch_failed(self, item: _Waiting, key: str) -> None:
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
        self._ensure_baseline(self.plan.baseline_for(rc), rc)

    def _expand_per_layer(self, expansion: PerLayer) -> None:
        baseline = expansion.baseline
        known = _known_modes()

        def expand(layers: Sequence[LayerRow]) -> None:
            runs = expansion.runs(layers, known)
            self.per_layer_left[baseline.key] = len(runs)
            self.progress.add(len(runs))
            if not runs:
                self._maybe_suggest(baseline)
            for rc in runs:
                self.submit_run(rc)

        if baseline.key in self.layers:
            expand(self.layers[baseline.key])
        else:
            self._ensure_baseline(baseline, expand)

    # -- completion ------------------------------------------------------------------------
    def _record(self, rec: Record) -> None:
        self.records[rec.config_hash] = rec
        if self.writer is not None:
            self.writer.write(rec)
        if self.on_record is not None:
            self.on_record(rec)
        self.progress.update(rec)
        self._after_run(rec)

    def _after_run(self, rec: Record) -> None:
        if rec.kind != "per_layer":
            return
        baseline = self.plan.baseline_of(rec.model, rec.seed)
        if baseline is None or baseline.key not in self.per_layer_left:
            return
        self.per_layer_left[baseline.key] -= 1
        if self.per_layer_left[baseline.key] == 0:
            self._maybe_suggest(baseline)

    def _maybe_suggest(self, baseline: Baseline) -> None:
        step = self.plan.suggest
        if step is None or baseline.seed != step.seed:
            return
        from mpq.sweep.sensitivity import per_layer_rows, suggest

        rows = per_layer_rows(list(self.records.values()), baseline.model.resolved_name, step.seed)
        candidates = suggest(rows, step.target_sqnr)
        self.suggestions[baseline.model.resolved_name] = candidates
        runs = step.runs(baseline, candidates)
        self.progress.add(len(runs))
        for rc in runs:
            self.submit_run(rc)

    def _on_done(self, fut: cf.Future[Any], tag: _Tag) -> None:
        try:
            result = fut.result()
            error = None
        except BaseException as e:  # the executor itself failed (pickling, dead worker, Ray)
            result = None
            error = f"{type(e).__name__}: {e}"
            if not str(e):
                error += traceback.format_exc()[-300:]
        if isinstance(tag, Baseline):
            self._baseline_done(tag, result, error)
        else:
            self._record(result if error is None else _failure(tag, error))

    def _baseline_done(
        self, baseline: Baseline, result: PackedBaseline | None, error: str | None
    ) -> None:
        key = baseline.key
        waiting = self.waiting.pop(key, [])
        if result is None:
            self.baseline_errors[key] = str(error)
            for item in waiting:
                self._dispatch_failed(item, key)
            return
        self.baselines[key] = result
        acc = result["accuracy"]
        score = (
            f"accuracy {100 * acc:.1f}%"
            if acc is not None
            else f"{result['metric']} {result['metric_value']:.4g}"  # no accuracy: regression
        )
        self.progress.note(
            f"trained {baseline.title}: float32 {score} ({result['epochs']} epochs, "
            f"{result['train_seconds']:.1f} s)"
        )
        self.layers[key] = result["layers"]
        write_atomic(self.layers_file, json.dumps(self.layers, indent=1))
        for item in waiting:
            self._dispatch(item, key)

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> Outcome:
        with JsonlWriter(self.plan.output.results) as writer, _CtrlC(self.executor) as ctrl_c:
            self.writer = writer
            for rc in self.plan.runs:
                self.submit_run(rc)
            for expansion in self.plan.per_layer:
                self._expand_per_layer(expansion)
            self._wait(ctrl_c)
            self.writer = None
        records = [self.records[h] for h in dict.fromkeys(self.order) if h in self.records]
        return Outcome(records, self.suggestions, self.failed_expansions)

    def _wait(self, ctrl_c: _CtrlC) -> None:
        while self.futures:
            ctrl_c.check()
            done, _ = cf.wait(list(self.futures), timeout=_POLL_S, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                ctrl_c.check()
                self._on_done(fut, self.futures.pop(fut))
        ctrl_c.check()


def _read_layers(path: Path) -> dict[str, Sequence[LayerRow]]:
    """The layer tables of earlier sweeps by baseline key (`layers.json`: a cache, rebuilt from
    the baselines when absent or unreadable)."""
    if not path.exists():
        return {}
    try:
        layers = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return layers if isinstance(layers, dict) else {}


def prepare_results(output: Output, stream: TextIO | None = None) -> dict[str, Record]:
    """Get `results.jsonl` ready for appending, before any work, and return the records to
    resume from (the last one per config hash; {} without `output.resume`).

    - `output.overwrite`: an existing file is renamed to `results.jsonl.old-<UTC time>`.
    - A torn last line (a crash mid-write) is moved to `results.jsonl.torn-<UTC time>`; every
      complete record is kept. Said on `stream` (default stderr).
    - Any other bad line raises `ResultsFileError` (file and line; the file is not changed),
      unless `output.skip_bad_lines`: then the bad lines are skipped (their runs are computed
      again) with a warning on `stream`, and left in the file.
    """
    stream = stream if stream is not None else sys.stderr
    path = output.results
    if output.overwrite and path.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        old = path.with_name(f"{path.name}.old-{stamp}")
        n = 1
        while old.exists():
            n += 1
            old = path.with_name(f"{path.name}.old-{stamp}-{n}")
        os.replace(path, old)
        print(f"mpq sweep: --overwrite: moved the previous results to {old}", file=stream)
    scan = scan_results(path, skip_bad_lines=output.skip_bad_lines)
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
    if not output.resume:
        return {}
    return {h: Record.from_dict(r) for h, r in latest_by_hash(scan.records).items()}


# --------------------------------------------------------------------------------------------
# The execute step of `mpq.sweep.run`
# --------------------------------------------------------------------------------------------
def prepare_output(out: str | os.PathLike[str]) -> Path:
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


def check_environment(plan: Plan | SweepConfig, executor: cf.Executor | None = None) -> None:
    """Checks that need more than the config itself, done before any work: CUDA for
    `device="cuda"`, Ray for `executor="ray"`, picklable factories for process pools and Ray."""
    if isinstance(plan, SweepConfig):
        plan = make_plan(plan)
    ex = plan.execution
    if ex.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                f"Expected a CUDA device for device={ex.device!r}. "
                "Received: torch.cuda.is_available() is False"
            )
    if executor is None and ex.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ModuleNotFoundError(
                "Expected Ray for executor='ray' (`pip install mpq[ray]`). "
                "Received: no module named 'ray'"
            )
    pickled = (executor is None and ex.executor != "serial") or isinstance(
        executor, cf.ProcessPoolExecutor
    )
    if pickled:
        plan.check_picklable()


def execute(
    plan: Plan,
    executor: cf.Executor | None = None,
    *,
    verbose: bool = True,
    stream: TextIO | None = None,
    on_record: Callable[[Record], None] | None = None,
) -> Outcome:
    """Run every task of `plan` and hand on the `Outcome`: check the output directory and the
    environment, read the records to resume from (a bad results file raises here, before any
    work), then run on `executor` (None: the one the plan names, shut down afterwards) with a
    progress bar on `stream` (default stderr) when `verbose`. On Ctrl-C (KeyboardInterrupt)
    the workers are stopped at once and the exception propagates."""
    prepare_output(plan.output.out)
    check_environment(plan, executor)
    progress = Progress(
        len(plan.runs), stream=stream if stream is not None else sys.stderr, enabled=verbose
    )
    previous = prepare_results(plan.output, progress.stream)
    own = executor is None
    pool = make_executor(plan.execution) if executor is None else executor
    if verbose:
        _announce(plan, type(pool).__name__ if not own else plan.execution.executor, progress)
    try:
        outcome = _Scheduler(plan, pool, progress, on_record, previous).run()
    except BaseException:  # Ctrl-C (KeyboardInterrupt) above all: stop the workers now
        progress.close()
        if own:
            stop_now(pool)
        raise
    progress.close()
    if own:
        pool.shutdown(wait=True)
    return outcome


def _announce(plan: Plan, how: str, progress: Progress) -> None:
    extra = " + per-layer runs" if plan.per_layer else ""
    n_variants = len({r.variant.label for r in plan.runs})
    print(
        f"mpq sweep: {len(plan.models)} model(s) x {n_variants} policies x "
        f"{len(plan.seeds)} seed(s) = {len(plan.runs)} runs{extra} on {plan.execution.device}, "
        f"executor {how} -> {plan.output.out}/",
        file=progress.stream,
        flush=True,
    )
