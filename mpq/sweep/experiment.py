"""One run of a sweep: train the float32 baseline, apply a variant (float policy, quantization,
per-layer or mapped), evaluate, time, optionally fine-tune, and return one flat record.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from mpq import policy as mpq_policy
from mpq._errors import describe as _describe
from mpq.policy import DTypePolicy, QuantizedAlgorithmDTypePolicy
from mpq.sweep.config import ModelSpec, RunConfig, Variant
from mpq.sweep.data import Data, as_data, resolve_data
from mpq.sweep.models import resolve_factory
from mpq.sweep.records import Record
from mpq.sweep.tasks import TaskSpec

__all__ = [
    "QuantizationUnavailableError",
    "apply_policy",
    "environment",
    "evaluate",
    "layer_table",
    "run_one",
    "train_baseline",
    "weight_bytes",
]

#: `--quick` sizes: samples per split, epoch cap. Latency is timed over as many repeats as in
#: a full run (`RunConfig.latency_repeats`): one repeat is noise, and the repeats cost little.
QUICK_TRAIN, QUICK_TEST, QUICK_EPOCHS = 256, 128, 1
EVAL_BATCH = 256


#: What a model factory's `dtype` takes: a policy name, a policy, or None (the global one).
PolicyArg = str | DTypePolicy | None


class BaselineInfo(TypedDict):
    """What a float32 baseline measured (`train_baseline`), its tensors aside."""

    accuracy: float | None
    loss: float | None
    metric: str
    metric_value: float
    metrics: dict[str, float]
    train_loss: float
    epochs: int
    cached: bool
    layers: list[dict[str, Any]]  # `layer_table` rows (JSON: path, module, class, ...)
    weight_bytes: int
    train_seconds: float


class BaselineResult(BaselineInfo):
    """A trained float32 baseline: its weights (CPU tensors, model order) and test outputs."""

    state: dict[str, torch.Tensor]
    logits: torch.Tensor


class QuantizationUnavailableError(RuntimeError):
    """The installed mpq has no `mpq.quantize` (or the layer has no scheme for the mode)."""


# --------------------------------------------------------------------------------------------
# Building models and data
# --------------------------------------------------------------------------------------------
def _call_factory(
    factory: Callable[..., Any], dtype: PolicyArg, spec: ModelSpec
) -> tuple[Any, bool]:
    """`(factory(dtype=dtype, **kwargs), True)`, or `(factory(**kwargs), False)` for a factory
    without a `dtype` parameter (the sweep then applies the policy to what it returns)."""
    import inspect

    try:
        params = inspect.signature(factory).parameters.values()
        takes_dtype = any(
            p.name == "dtype" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params
        )
    except (TypeError, ValueError):  # no signature (a builtin): try the keyword
        takes_dtype = True
    if takes_dtype:
        return factory(dtype=dtype, **spec.kwargs), True
    return factory(**spec.kwargs), False


def _build(
    spec: ModelSpec, dtype: PolicyArg, checkpoint: bool = False
) -> tuple[torch.nn.Module, Data]:
    """`(model, data)` from a spec: `factory(dtype=..., **kwargs)`, data from the spec, the
    built-in default, or the factory's second return value. A factory with a `dtype` parameter
    applies the policy itself; otherwise a plain `torch.nn.Module` is converted with
    `mpq.from_torch(module, dtype)` (after its checkpoint is loaded, when `checkpoint`) and an
    mpq model gets `dtype_policy = dtype`. With `checkpoint`, `spec.checkpoint` is loaded."""
    import torch

    from mpq.layers import Layer

    factory, default_data = resolve_factory(spec.factory)
    out, took_dtype = _call_factory(factory, dtype, spec)
    data_ref = spec.data if spec.data is not None else default_data
    if isinstance(out, tuple) and len(out) == 2 and data_ref is None:
        model, data = out[0], as_data(out[1])
    else:
        if data_ref is None:
            raise TypeError(
                f"Expected model factory {spec.resolved_name!r} to return (model, data), or the "
                f"model spec to name its data. Received: a {type(out).__name__} and data=None"
            )
        model, data = out, _load_data(data_ref, json.dumps(spec.data_kwargs, sort_keys=True))
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"Expected model factory {spec.resolved_name!r} to return an mpq model or a "
            f"torch.nn.Module. Received: {_describe(model)}"
        )
    path = spec.checkpoint if checkpoint else None
    if not isinstance(model, Layer):
        if path is not None:
            _load_checkpoint(model, path)
            path = None
        if not took_dtype:
            from mpq.training import from_torch

            sample = _to_tensor(_first_batch(data)[:2], "cpu")
            model, _ = from_torch(model, dtype, example_inputs=sample)
    elif not took_dtype and dtype is not None and model.dtype_policy != mpq_policy.get(dtype):
        model.dtype_policy = dtype
    if path is not None:
        _materialize(model, _first_batch(data))
        _load_checkpoint(model, path)
    return model, data


def _load_checkpoint(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load trained weights: an `mpq.saving` file (`mpq.saving.load_weights`: names, shapes and
    dtypes checked), or a safetensors state dict (`load_state_dict(strict=True)`). Pickle-based
    torch files are refused: loading never unpickles."""
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Expected a checkpoint file. Received: checkpoint={path!r}, which does not exist"
        )
    with open(path, "rb") as f:
        head = f.read(8)
    # safetensors starts with a little-endian u64 header length, then '{'; a zip/pickle does not
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise ValueError(
            "Expected a safetensors checkpoint (mpq.saving.save(model, path), or "
            "safetensors.torch.save_file(module.state_dict(), path)). Received: "
            f"checkpoint={path!r}, a pickle-based torch file; mpq does not unpickle files"
        )
    from safetensors import safe_open

    from mpq import saving

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise ValueError(
            f"Expected a safetensors checkpoint. Received: checkpoint={path!r} ({type(e).__name__}: {e})"
        ) from None
    if meta.get("format") == saving.FORMAT:
        saving.load_weights(model, path)
        return
    from safetensors.torch import load_file

    state = load_file(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"Expected checkpoint {path!r} to match the model's variables. Received: {e}"
        ) from None


@functools.lru_cache(maxsize=8)
def _load_data(ref: str | Callable[..., Any], kwargs_json: str) -> Data:
    """Data from a reference and its kwargs, loaded once per process (the runs of a sweep share
    it; nothing mutates a `Data`)."""
    return as_data(resolve_data(ref)(**json.loads(kwargs_json)))


def _sized(data: Data, quick: bool) -> Data:
    return data.subset(QUICK_TRAIN, QUICK_TEST) if quick else data


def _to_tensor(x: Any, device: str, integer: bool = False) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    t = t.to(device)
    return t.long() if integer else t


def _first_batch(data: Data, batch_size: int = 2) -> Any:
    for x, _ in data.test_batches(batch_size):
        return x
    raise ValueError("Expected a non-empty test split. Received: no test batches")


def _materialize(model: torch.nn.Module, sample: Any) -> None:
    """Build a lazily built model by calling it once on a small batch."""
    import torch

    model.eval()
    with torch.no_grad():
        model(_to_tensor(sample[:2], "cpu"))


# --------------------------------------------------------------------------------------------
# Weights, layers, bytes
# --------------------------------------------------------------------------------------------
def _variables(module: torch.nn.Module) -> list[torch.Tensor]:
    """The model's variables: `module.weights` (mpq) or parameters + buffers, without repeats."""
    found = getattr(module, "weights", None)
    if found is None or callable(found):
        found = [*module.parameters(), *module.buffers()]
    seen, out = set(), []
    for v in found:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of what the model stores: `sum(numel * element_size)` over its variables (int8
    kernels, packed int4 nibbles, scales, zero points, amax histories included).

    Example:
        >>> import torch
        >>> weight_bytes(torch.nn.Linear(4, 2))   # 8 + 2 float32 values
        40
    """
    return sum(int(v.numel()) * int(v.element_size()) for v in _variables(module))


def _leaf_layers(model: torch.nn.Module) -> Iterator[tuple[str, str, torch.nn.Module]]:
    """(path, module name, module) of each module that holds variables itself (Dense, ...).

    `path` is the mpq layer path (`"digits_cnn/conv_0"`); the torch module name (`"0"`) is the
    stable structural key: auto-generated layer names (`dense_7`) change between builds.
    """
    for name, m in model.named_modules():
        own = [*m.parameters(recurse=False), *m.buffers(recurse=False)]
        if own:
            yield (getattr(m, "path", None) or name or type(m).__name__), name, m


def layer_table(model: torch.nn.Module) -> list[dict[str, Any]]:
    """One row per variable-holding layer: path, module name, class, parameter count, bytes,
    and the quantization modes with a scheme for its class (`modes`)."""
    import mpq.quantization  # noqa: F401  (registers the schemes)
    from mpq.layers.quantization import registered_schemes

    schemes = registered_schemes()
    return [
        {
            "path": path,
            "module": name,
            "class": type(m).__name__,
            "params": int(sum(p.numel() for p in m.parameters(recurse=False))),
            "bytes": weight_bytes(m),
            "modes": sorted({mode for cls, mode in schemes if cls in type(m).__mro__}),
        }
        for path, name, m in _leaf_layers(model)
    ]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    import torch

    # contiguous copies: from_torch kernels are transposed views, and the runner ships the state
    # between processes as safetensors (which takes contiguous tensors only); values unchanged
    return {
        k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        for k, v in model.state_dict().items()
    }


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy float32 weights into a model built under another policy, casting to each
    variable's own dtype (exact for float32 targets; round-to-nearest for half types)."""
    import torch

    target = model.state_dict()
    if list(target) == list(state):
        pairs = [(target[k], state[k], k) for k in target]
    elif len(target) == len(state):  # names differ (e.g. unique-name counters): go by order
        pairs = [(t, s, k) for (k, t), s in zip(target.items(), state.values(), strict=True)]
    else:
        raise ValueError(
            f"Expected the model built under the variant to have the baseline's {len(state)} "
            f"variables. Received: {len(target)} ({list(target)[:6]}...)"
        )
    with torch.no_grad():
        for t, s, k in pairs:
            if tuple(t.shape) != tuple(s.shape):
                raise ValueError(
                    f"Expected variable {k!r} of shape {tuple(s.shape)} as in the baseline. "
                    f"Received: shape {tuple(t.shape)}"
                )
            t.copy_(s)


# --------------------------------------------------------------------------------------------
# Applying a variant
# --------------------------------------------------------------------------------------------
def _quantize_fn() -> Callable[..., Any]:
    import mpq

    fn: Callable[..., Any] | None = getattr(mpq, "quantize", None)
    if fn is None:
        raise QuantizationUnavailableError(
            "quantization not available: this mpq has no mpq.quantize(model, mode, config=..., "
            "filter=...) yet, so quantized policies cannot run"
        )
    return fn


def _path_filter(paths: tuple[str, ...]) -> str:
    # Anchored so that it selects exactly these paths whether matched with search or fullmatch.
    return "^(?:" + "|".join(re.escape(p) for p in paths) + ")$"


# Calibration for policies named after an algorithm ("gptq/4/128_from_float32"): this many
# training batches of the sweep's batch size 64.
_CALIBRATION_BATCHES = 4


def _calibration(data: Data) -> list[torch.Tensor]:
    batches = []
    for x, _ in data.train_batches(64, seed=0, epoch=0):
        batches.append(_to_tensor(x, "cpu"))
        if len(batches) == _CALIBRATION_BATCHES:
            break
    return batches


def _quantize(
    model: torch.nn.Module,
    variant: Variant,
    paths: tuple[str, ...] | None,
    data: Data | None = None,
) -> int:
    """`mpq.quantize(model, policy.mode_spec, ...)` on `paths` (None: the whole model), with the
    variant's quantize config and, for algorithm policies, calibration batches."""
    pol = variant.quantized_policy
    if pol is None:
        raise ValueError(
            "Expected a variant with a quantized policy (such as 'int8_from_float32'). "
            f"Received: variant {variant.label!r} with policy={variant.policy!r}"
        )
    fn = _quantize_fn()
    kwargs: dict[str, Any] = {}
    if variant.quantize_config:
        kwargs["config"] = dict(variant.quantize_config)
    if paths is not None:
        kwargs["filter"] = _path_filter(paths)
    if isinstance(pol, QuantizedAlgorithmDTypePolicy):  # gptq / awq names run that algorithm
        if data is None:
            raise ValueError(
                f"Expected calibration data for policy {pol.name!r}. Received: data=None"
            )
        kwargs["algorithm"] = pol.algorithm
        kwargs["calibration"] = _calibration(data)
    static_batches = None
    if (variant.quantize_config or {}).get("scaling") == "static":
        if data is None:
            raise ValueError(
                f"Expected calibration data for the static-scaling variant {variant.label!r}. "
                "Received: data=None"
            )
        static_batches = _calibration(data)
    before = {p for p, _, m in _leaf_layers(model) if getattr(m, "quantization_mode", None)}
    fn(model, pol.mode_spec, **kwargs)
    if static_batches is not None:  # static input scales: the batches the algorithms use
        import mpq

        mpq.calibrate(model, static_batches)
    after = {p for p, _, m in _leaf_layers(model) if getattr(m, "quantization_mode", None)}
    newly = after - before
    if not newly:
        where = "any layer" if paths is None else f"layers {list(paths)}"
        raise QuantizationUnavailableError(
            f"Expected mpq.quantize(model, {pol.mode_spec!r}) to quantize {where} of the model. "
            "Received: no layer was quantized (no scheme for these layer types?)"
        )
    return len(newly)


def apply_policy(
    spec: ModelSpec,
    state: dict[str, torch.Tensor],
    variant: Variant,
    layers: tuple[str, ...] | None = None,
    assignment: tuple[tuple[str, Variant], ...] | None = None,
    layer_rows: list[dict[str, Any]] | None = None,
) -> tuple[torch.nn.Module, Data, int]:
    """Build `spec`'s model under `variant` with the float32-trained `state` loaded.

    - Float variant: the model is built with `dtype=policy` and the weights cast into it.
    - Quantized variant: built under the source float policy, weights loaded, then
      `mpq.quantize(model, policy.mode_spec, config=quantize_config)`.
    - `layers`: the variant applies to these layer paths only (the rest stays float32): float
      policies are set on those layers before they are built, quantized ones go through
      `mpq.quantize(..., filter=...)`.
    - `assignment`: `(path, variant)` pairs, each applied as above (a suggested policy map).
    - `layer_rows`: the baseline's `layer_table`, which names the paths used in `layers` and
      `assignment` (matched to the new model by module name, since auto-generated layer names
      differ between builds); None: the paths of this build.

    Returns `(model, data, n_quantized_layers)`; the model is in eval mode on the CPU.

    Example:
        >>> base = train_baseline(ModelSpec("digits_mlp"), seed=0, quick=True)
        >>> model, data, n = apply_policy(ModelSpec("digits_mlp"), base["state"],
        ...                               Variant("bf16", "bfloat16"))
    """
    if assignment is None:
        assignment = (("*", variant),) if layers is None else tuple((p, variant) for p in layers)
    whole = len(assignment) == 1 and assignment[0][0] == "*"
    model, data = _build(spec, assignment[0][1].source_policy if whole else "float32")
    modules = dict(model.named_modules())
    module_of: dict[str, str] = {}
    if not whole:
        if layer_rows is None:
            probe, _ = _build(spec, "float32")
            _materialize(probe, _first_batch(data))
            layer_rows = layer_table(probe)
        module_of = {row["path"]: row["module"] for row in layer_rows}
        missing = [p for p, _ in assignment if p not in module_of or module_of[p] not in modules]
        if missing:
            raise ValueError(f"Expected layer paths from {list(module_of)}. Received: {missing}")
        for path, v in assignment:
            if v.source_policy != "float32":  # before the build, so variables get its dtype
                _set_layer_policy(modules[module_of[path]], path, v.source_policy)
    _materialize(model, _first_batch(data))
    _load_state(model, state)
    # One mpq.quantize call per distinct (policy, quantize config): the variants' own objects.
    groups: dict[tuple[str, str], tuple[Variant, list[str]]] = {}
    for path, v in assignment:
        if v.is_quantized:
            key = (v.policy, json.dumps(v.quantize_config or {}, sort_keys=True, default=str))
            groups.setdefault(key, (v, []))[1].append(path)
    new_path = {name: path for path, name, _ in _leaf_layers(model)}
    n_quantized = 0
    for v, paths in groups.values():
        targets = None if whole else tuple(new_path[module_of[p]] for p in paths)
        n_quantized += _quantize(model, v, targets, data)
    model.eval()
    return model, data, n_quantized


def _set_layer_policy(layer: torch.nn.Module, path: str, policy: str) -> None:
    from mpq.layers import Layer

    if not isinstance(layer, Layer):
        raise TypeError(
            f"Expected an mpq layer at {path!r} to put it alone under policy {policy!r} "
            f"(per-layer runs set `layer.dtype_policy`). Received: a {type(layer).__name__}"
        )
    layer.dtype_policy = policy


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------
def _targets(y: Any, device: str) -> torch.Tensor:
    """Targets as a tensor: class ids as int64, regression targets as they are."""
    t = _to_tensor(y, device)
    return t if t.is_floating_point() else t.long()


def _fit(
    model: torch.nn.Module,
    data: Data,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str,
    loss_scaling: bool = False,
    task: TaskSpec = None,
) -> float:
    """Adam on the trainable variables. With `loss_scaling` (float16 compute) the steps go
    through `mpq.LossScaler`: a step with non-finite gradients is skipped and the scale halved.
    Returns the last epoch's mean loss."""
    import torch

    from mpq.sweep.tasks import resolve_task
    from mpq.training import LossScaler

    loss_fn = resolve_task(task).loss
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("Expected trainable variables to train. Received: none")
    opt = torch.optim.Adam(params, lr=lr)
    scaler = LossScaler() if loss_scaling else None
    model.train()
    last = float("nan")
    for epoch in range(epochs):
        total, n = 0.0, 0
        for x, y in data.train_batches(batch_size, seed, epoch):
            x, y = _to_tensor(x, device), _targets(y, device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Expected a finite training loss. Received: loss={loss.item()} at epoch {epoch}"
                )
            if scaler is None:
                torch.autograd.backward(loss)
                opt.step()
            else:
                torch.autograd.backward(scaler.scale(loss))
                scaler.step(opt)
                scaler.update()
            total += float(loss.detach()) * len(y)
            n += len(y)
        last = total / max(n, 1)
    model.eval()
    return last


def evaluate(
    model: torch.nn.Module, data: Data, device: str, task: TaskSpec = None
) -> dict[str, Any]:
    """The task's metrics on the test split (classification: accuracy and mean cross-entropy;
    `lm`: perplexity, bits per byte, next-byte accuracy; `regression`: MSE), `"loss"`, and the
    float32 outputs `"logits"` (concatenated over batches). Non-finite outputs or metrics raise.
    """
    import torch

    from mpq.sweep.tasks import resolve_task

    task = resolve_task(task)
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for x, y in data.test_batches(EVAL_BATCH):
            out = model(_to_tensor(x, device))
            logits.append(out.float().cpu())
            labels.append(_targets(y, "cpu"))
    logits_t, labels_t = torch.cat(logits), torch.cat(labels)
    if not torch.isfinite(logits_t).all():
        bad = int((~torch.isfinite(logits_t)).sum())
        raise FloatingPointError(
            f"Expected finite logits. Received: {bad} non-finite of {logits_t.numel()}"
        )
    metrics = task.evaluate(logits_t, labels_t)
    return {
        **metrics,
        "accuracy": metrics.get("accuracy"),
        "loss": metrics.get("loss"),
        "metric": task.metric,
        "metric_value": metrics[task.metric],
        "logits": logits_t,
    }


def _sqnr_db(reference: torch.Tensor, x: torch.Tensor) -> float:
    """`mpq.testing.sqnr`: 10 log10(sum ref^2 / sum (ref - x)^2) in float64; +inf when equal."""
    from mpq.testing import sqnr

    return float(sqnr(reference, x))


def _latency_ms(model: torch.nn.Module, data: Data, device: str, repeats: int) -> tuple[float, int]:
    """Median wall time of one forward pass over a test batch, in ms, and the batch size."""
    import torch

    x = _to_tensor(_first_batch(data, EVAL_BATCH), device)
    cuda = device.startswith("cuda")
    times = []
    with torch.no_grad():
        model(x)  # warm-up (also compiles / autotunes kernels on a GPU)
        if cuda:
            torch.cuda.synchronize()
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), int(x.shape[0])


def _data_digest(data: Data) -> str | None:
    """sha256 of the arrays (None for loaders: their content cannot be fingerprinted cheaply)."""
    if data.uses_loaders:
        return None
    h = hashlib.sha256()
    for a in (data.x_train, data.y_train, data.x_test, data.y_test):
        arr = np.ascontiguousarray(a)
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def _cache_paths(
    spec: ModelSpec,
    seed: int,
    device: str,
    quick: bool,
    data: Data,
    cache_dir: str | os.PathLike[str] | None,
) -> tuple[Path, Path] | None:
    """`(weights.mpq, info.json)` of this (model config, seed) in `cache_dir`, or None when the
    baseline is not cacheable (data from loaders)."""

    import torch

    import mpq

    digest = _data_digest(data)
    if cache_dir is None or digest is None:
        return None
    key = json.dumps(
        [spec.to_dict(), seed, device, quick, digest, torch.__version__, mpq.__version__],
        sort_keys=True,
    )
    h = hashlib.sha256(key.encode()).hexdigest()[:16]
    base = Path(cache_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', spec.resolved_name)}-s{seed}-{h}"
    return base.with_suffix(".mpq"), base.with_suffix(".json")


def train_baseline(
    spec: ModelSpec,
    seed: int,
    device: str = "cpu",
    quick: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> BaselineResult:
    """Train `spec`'s model in float32 from `seed`; return its weights (CPU tensors), test
    logits, metrics and layer table. Deterministic for a given (spec, seed, device, quick).

    `spec.checkpoint` is loaded first (`mpq.saving` file or safetensors state dict);
    `spec.train=False` skips training (eval-only: the given weights are swept). With
    `cache_dir`, trained weights are saved there with `mpq.saving` keyed by (model config, seed,
    device, quick, data digest, versions), and a later sweep loads them instead of training.
    """
    import torch

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model, data = _build(spec, "float32", checkpoint=True)
    data = _sized(data, quick)
    _materialize(model, _first_batch(data))
    task = spec.task_obj
    epochs = 0 if not spec.train else (min(spec.epochs, QUICK_EPOCHS) if quick else spec.epochs)
    cache = _cache_paths(spec, seed, device, quick, data, cache_dir) if epochs else None
    cached = False
    train_loss = float("nan")
    if cache is not None and cache[0].is_file() and cache[1].is_file():
        from mpq import saving

        try:
            info = json.loads(cache[1].read_text())
            saving.load_weights(model, cache[0])
            train_loss, cached = float(info["train_loss"]), True
        except (ValueError, KeyError, TypeError, OSError):  # a broken cache entry: train again
            cached = False
    model.to(device)
    if epochs and not cached:
        train_loss = _fit(model, data, epochs, spec.lr, spec.batch_size, seed, device, task=task)
        if cache is not None:
            model.to("cpu")
            _write_cache(model, cache, train_loss)
            model.to(device)
    ev = evaluate(model, data, device, task)
    model.to("cpu")
    return {
        "state": _state(model),
        "logits": ev["logits"],
        "accuracy": ev["accuracy"],
        "loss": ev["loss"],
        "metric": ev["metric"],
        "metric_value": ev["metric_value"],
        "metrics": {k: v for k, v in ev.items() if isinstance(v, float)},
        "train_loss": train_loss,
        "epochs": epochs,
        "cached": cached,
        "layers": layer_table(model),
        "weight_bytes": weight_bytes(model),
        "train_seconds": time.perf_counter() - t0,
    }


def _write_cache(model: torch.nn.Module, cache: tuple[Path, Path], train_loss: float) -> None:
    """Save the trained weights (`mpq.saving`, atomic) and then the info file; a model that
    `mpq.saving` cannot write is simply not cached."""
    from mpq import saving

    weights, info = cache
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
        saving.save(model, weights)
    except (TypeError, ValueError, NotImplementedError, OSError):
        return
    tmp = info.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"train_loss": train_loss}))
    os.replace(tmp, info)


# --------------------------------------------------------------------------------------------
# Environment and run_one
# --------------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=4)
def environment(device: str = "cpu") -> dict[str, Any]:
    """Where a run ran: device and its name, torch/triton/mpq/python versions, host, CPUs."""
    import torch

    import mpq

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = platform.processor() or platform.machine() or "cpu"
    return {
        "device": device,
        "device_name": name,
        "torch_version": torch.__version__,
        "triton_version": _version("triton"),
        "mpq_version": mpq.__version__,
        "python_version": platform.python_version(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


_BASELINES: dict[tuple[str, int, str, bool], BaselineResult] = {}


def _baseline_for(config: RunConfig) -> BaselineResult:
    key = (
        json.dumps(config.model.to_dict(), sort_keys=True),
        config.seed,
        config.device,
        config.quick,
    )
    if key not in _BASELINES:
        _BASELINES[key] = train_baseline(config.model, config.seed, config.device, config.quick)
    return _BASELINES[key]


def run_one(config: RunConfig, baseline: BaselineResult | None = None) -> Record:
    """Run one (model, variant, seed[, layers]) and return its `Record`; never raises.

    Pure: the record is a function of `config` (plus timings and the environment). Without a
    `baseline` (the output of `train_baseline` for this model and seed) the float32 model is
    trained here first (memoised per process). A failed run is a record with `status="error"`,
    its error and traceback.

    Example:
        >>> from mpq.sweep.config import SweepConfig
        >>> cfg = SweepConfig(models=["digits_mlp"], policies=["bfloat16"], quick=True)
        >>> record = run_one(cfg.run_configs()[0])
        >>> record.status, record.policy
        ('ok', 'bfloat16')
    """
    t0 = time.perf_counter()
    values: dict[str, Any] = {"status": "ok", "finetune_epochs": 0}
    try:
        values.update(environment(config.device))
        base = baseline if baseline is not None else _baseline_for(config)
        values.update(_baseline_values(config, base))
        torch.manual_seed(config.seed)
        model, data, n_quantized = apply_policy(
            config.model,
            base["state"],
            config.variant,
            config.layers,
            config.assignment,
            base["layers"],
        )
        data = _sized(data, config.quick)
        values.update(_size_values(config, base, model, n_quantized))
        model.to(config.device)
        values.update(_eval_values(config, base, model, data))
        if config.finetune_epochs and config.variant.finetune:
            values.update(_finetune_values(config, model, data))
    except Exception as e:  # a failed run is a record, not a crash of the sweep
        values.update(
            status="error",
            error=f"{type(e).__name__}: {e}",
            traceback=traceback.format_exc()[-2000:],
        )
    values["duration_s"] = time.perf_counter() - t0
    values["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Record.for_run(config, **values)


def _baseline_values(config: RunConfig, base: BaselineResult) -> dict[str, Any]:
    """What a run takes from its float32 baseline (and its task)."""
    task = config.model.task_obj
    values = {
        "task": task.name,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "float32_accuracy": base["accuracy"],
        "float32_metric": base["metric_value"],
        "baseline_cached": base.get("cached"),
        "float32_weight_bytes": base["weight_bytes"],
        "train_epochs": base["epochs"],
    }
    if config.layers is not None:
        f32 = {row["path"]: row["bytes"] for row in base["layers"]}
        values["float32_layer_weight_bytes"] = sum(f32.get(p, 0) for p in config.layers)
    return values


def _size_values(
    config: RunConfig, base: BaselineResult, model: torch.nn.Module, n_quantized: int
) -> dict[str, Any]:
    """The model's bytes under the variant (and its layers' for a per-layer run)."""
    nbytes = weight_bytes(model)
    values: dict[str, Any] = {
        "quantized_layers": n_quantized,
        "weight_bytes": nbytes,
        "bytes_ratio": nbytes / base["weight_bytes"],
    }
    if config.layers is not None:
        by_module = {row["module"]: row["bytes"] for row in layer_table(model)}
        module_of = {row["path"]: row["module"] for row in base["layers"]}
        values["layer_weight_bytes"] = sum(by_module[module_of[p]] for p in config.layers)
    return values


def _eval_values(
    config: RunConfig, base: BaselineResult, model: torch.nn.Module, data: Data
) -> dict[str, Any]:
    """The task's metrics, their change against float32, SQNR and latency."""
    ev = evaluate(model, data, config.device, config.model.task_obj)
    sq = _sqnr_db(base["logits"], ev["logits"])
    values: dict[str, Any] = {k: ev[k] for k in ("perplexity", "bits_per_byte", "mse") if k in ev}
    values.update(
        accuracy=ev["accuracy"],
        loss=ev["loss"],
        metric_value=ev["metric_value"],
        metric_delta=ev["metric_value"] - base["metric_value"],
        accuracy_delta=None
        if ev["accuracy"] is None or base["accuracy"] is None
        else ev["accuracy"] - base["accuracy"],
        sqnr_db=None if math.isinf(sq) and sq > 0 else sq,
    )
    values["latency_ms"], values["latency_batch"] = _latency_ms(
        model, data, config.device, config.latency_repeats
    )
    return values


def _finetune_values(config: RunConfig, model: torch.nn.Module, data: Data) -> dict[str, Any]:
    """Fine-tune under the variant (loss scaling for float16 compute) and evaluate again."""
    epochs = min(config.finetune_epochs, QUICK_EPOCHS) if config.quick else config.finetune_epochs
    task = config.model.task_obj
    _fit(
        model,
        data,
        epochs,
        config.model.finetune_lr,
        config.model.batch_size,
        config.seed + 1000,
        config.device,
        loss_scaling=config.variant.dtype_policy.compute_dtype == "float16",
        task=task,
    )
    ft = evaluate(model, data, config.device, task)
    return {
        "finetune_epochs": epochs,
        "finetune_accuracy": ft["accuracy"],
        "finetune_loss": ft["loss"],
        "finetune_metric": ft["metric_value"],
    }
