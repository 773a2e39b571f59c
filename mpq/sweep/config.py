"""Sweep configuration as data: variants (policy + optional quantize config), model specs, the
sweep itself, TOML/JSON loading, validation that fails before any work, and run hashes for resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpq import policy as mpq_policy
from mpq._errors import describe as _describe
from mpq.policy import DTypePolicy, QuantizedDTypePolicy

if TYPE_CHECKING:
    from mpq.sweep.tasks import Task, TaskSpec

__all__ = [
    "BUILTIN_VARIANTS",
    "DEFAULT_POLICIES",
    "ModelSpec",
    "RunConfig",
    "SweepConfig",
    "Variant",
    "as_config",
    "check_picklable",
    "config_from_dict",
    "default_config",
    "load_config",
    "resolve_variant",
    "resolve_variants",
    "whole_model_runs",
]


def _check_unique(names: list[str], what: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"Expected each {what} once. Received duplicates: {dup}")


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _VariantFields:
    label: str
    policy: str
    quantize_config: dict[str, Any] | None
    finetune: bool
    dtype_policy: DTypePolicy = field(compare=False, repr=False)


class Variant(_VariantFields):
    """One point of a sweep: a dtype policy, an optional quantization config, a label.

    Float policies (`float16`, `mixed_bfloat16`, ...) build the model under that policy and load
    the float32-trained weights; quantized policies (`int8_from_float32`, ...) build the model
    under the source policy, load the weights, then call
    `mpq.quantize(model, policy.mode_spec, config=quantize_config)`.

    Args:
        label: short name used in tables and plots, e.g. `"int8-wo"`.
        policy: a policy name that `mpq.policy.get` parses, e.g. `"int4/32_from_float32"`, or a
            policy object. It is parsed once, here, into `dtype_policy` (the object every use
            reads); `policy` keeps the name as given: the run's identity in records and hashes.
        quantize_config: extra options for `mpq.quantize` (e.g. `{"weight_only": True}`), or None.
        finetune: whether the run also fine-tunes under the policy (when the sweep's
            `finetune_epochs` > 0).
        dtype_policy: what `dataclasses.replace` hands back; the policy is parsed from `policy`.

    Example:
        >>> v = Variant("int8-wo", "int8_from_float32", {"weight_only": True})
        >>> v.is_quantized, v.dtype_policy.quantization_mode
        (True, 'int8')
    """

    def __init__(
        self,
        label: str,
        policy: str | DTypePolicy,
        quantize_config: Mapping[str, Any] | None = None,
        finetune: bool = False,
        dtype_policy: DTypePolicy | None = None,
    ) -> None:
        del dtype_policy  # parsed from `policy` (dataclasses.replace passes the old one back)
        _check_variant_args(label, policy, quantize_config, finetune)
        parsed = _parse_policy(policy)
        if quantize_config and parsed.quantization_mode is None:
            raise ValueError(
                "Expected `quantize_config` only with a quantized policy (such as "
                f"'int8_from_float32'). Received: policy={parsed.name!r} with "
                f"quantize_config={dict(quantize_config)!r}"
            )
        super().__init__(
            label,
            policy if isinstance(policy, str) else parsed.name,
            None if quantize_config is None else dict(quantize_config),
            finetune,
            parsed,
        )

    @property
    def is_quantized(self) -> bool:
        return self.dtype_policy.quantization_mode is not None

    @property
    def quantized_policy(self) -> QuantizedDTypePolicy | None:
        """The policy when it quantizes (its `mode_spec` goes to `mpq.quantize`), else None."""
        pol = self.dtype_policy
        return pol if isinstance(pol, QuantizedDTypePolicy) else None

    @property
    def source_policy(self) -> str:
        """The float policy the model is built under before quantization (itself if float)."""
        pol = self.dtype_policy
        return pol.source_name if isinstance(pol, QuantizedDTypePolicy) else pol.name

    def short_str(self) -> str:
        """A compact tag for plot labels: the label for built-ins, else the policy's tag."""
        if self.label in BUILTIN_VARIANTS and BUILTIN_VARIANTS[self.label] == self:
            return self.label
        tag: str = self.dtype_policy.short_str()
        if self.quantize_config:
            tag += "+" + ",".join(f"{k}={v}" for k, v in sorted(self.quantize_config.items()))
        return tag

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "policy": self.policy,
            "quantize_config": None if self.quantize_config is None else dict(self.quantize_config),
            "finetune": self.finetune,
        }


def _check_variant_args(label: Any, policy: Any, quantize_config: Any, finetune: Any) -> None:
    if not isinstance(label, str) or not label:
        raise TypeError(
            f"Expected `label` to be a non-empty string. Received: label={_describe(label)}"
        )
    if not isinstance(policy, (str, DTypePolicy)):
        raise TypeError(
            "Expected `policy` to be a policy name such as 'int8_from_float32'. "
            f"Received: policy={_describe(policy)}"
        )
    if quantize_config is not None and not isinstance(quantize_config, Mapping):
        raise TypeError(
            "Expected `quantize_config` to be a dict of options for mpq.quantize or None. "
            f"Received: quantize_config={_describe(quantize_config)}"
        )
    if not isinstance(finetune, bool):
        raise TypeError(
            f"Expected `finetune` to be a bool. Received: finetune={_describe(finetune)}"
        )


def _parse_policy(policy: str | DTypePolicy) -> DTypePolicy:
    """The policy object of a name (`mpq.policy.get`), with the sweep's labels in the error."""
    if isinstance(policy, DTypePolicy):
        return policy
    try:
        parsed: object = mpq_policy.get(policy)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Expected a policy name or one of the sweep labels {list(BUILTIN_VARIANTS)}. "
            f"Received: policy={policy!r} ({e})"
        ) from None
    if not isinstance(parsed, DTypePolicy):  # a DTypePolicyMap: not one policy
        raise TypeError(
            "Expected one policy per variant (a policy map is per layer: use --suggest). "
            f"Received: policy={policy!r}"
        )
    return parsed


def _builtin_variants() -> dict[str, Variant]:
    entries = [
        ("float32", "float32", None, False),
        ("float16", "float16", None, False),
        ("bfloat16", "bfloat16", None, False),
        ("mixed_float16", "mixed_float16", None, True),
        ("mixed_bfloat16", "mixed_bfloat16", None, True),
        ("int8", "int8_from_float32", None, False),
        ("int8-wo", "int8_from_float32", {"weight_only": True}, False),
        ("int4", "int4/-1_from_float32", None, False),
        ("int4-g32", "int4/32_from_float32", None, False),
        ("float8", "float8_from_float32", None, True),
        ("float8-static", "float8_from_float32", {"scaling": "static"}, False),
    ]
    return {label: Variant(label, name, cfg, ft) for label, name, cfg, ft in entries}


#: The default set, by label: float32 (the reference), half and mixed policies, int8 W8A8, int8
#: weight-only, int4 per output channel, int4 grouped (g=32), float8 with delayed scaling (the
#: training recipe, fine-tuned) and float8 for inference (e4m3 kernel, calibrated input scale).
BUILTIN_VARIANTS: dict[str, Variant] = _builtin_variants()
DEFAULT_POLICIES: tuple[str, ...] = tuple(BUILTIN_VARIANTS)


def resolve_variant(spec: Any) -> Variant:
    """A `Variant` from a label (`"int8-wo"`), a policy name (`"int8_from_mixed_bfloat16"`), a
    dict (`{"policy": ..., "label": ..., "quantize_config": ..., "finetune": ...}`) or a Variant.

    Example:
        >>> resolve_variant("int4_from_float32").label
        'int4_from_float32'
        >>> resolve_variant("int4/-1_from_float32").label
        'int4'
    """
    if isinstance(spec, Variant):
        return spec
    if isinstance(spec, str):
        name = spec.strip()
        if name in BUILTIN_VARIANTS:
            return BUILTIN_VARIANTS[name]
        for v in BUILTIN_VARIANTS.values():  # a name that a built-in label stands for
            if v.policy == name and v.quantize_config is None:
                return v
        return Variant(name, name, None, False)
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"label", "policy", "quantize_config", "finetune"}
        if unknown or "policy" not in spec:
            raise ValueError(
                "Expected a variant table with a 'policy' key and optionally 'label', "
                f"'quantize_config', 'finetune'. Received: {dict(spec)!r}"
            )
        base = resolve_variant(spec["policy"])
        cfg = spec.get("quantize_config", base.quantize_config)
        label = spec.get("label")
        if label is None:
            label = base.label if cfg == base.quantize_config else spec["policy"]
        return Variant(label, base.policy, cfg, spec.get("finetune", base.finetune))
    raise TypeError(
        "Expected a policy name, a sweep label such as 'int8-wo', a variant table, or a Variant. "
        f"Received: {_describe(spec)}"
    )


def resolve_variants(specs: Any) -> tuple[Variant, ...]:
    """Resolve a list of variant specs, or a comma-separated string, or a file path (`.txt`: one
    per line, `#` comments; `.json`: a list; `.toml`: a `policies = [...]` array)."""
    if isinstance(specs, (str, os.PathLike)):
        path = Path(specs)
        if isinstance(specs, os.PathLike) or (
            path.suffix in {".txt", ".json", ".toml"} or path.is_file()
        ):
            specs = _read_policy_file(path)
        else:
            specs = [s for s in str(specs).split(",") if s.strip()]
    if not isinstance(specs, Sequence) or isinstance(specs, str) or not specs:
        raise ValueError(
            "Expected a non-empty list of policies (names, labels or variant tables). "
            f"Received: policies={_describe(specs)}"
        )
    variants = tuple(resolve_variant(s) for s in specs)
    _check_unique([v.label for v in variants], "policy label")
    return variants


def _read_policy_file(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected a policy file. Received: {str(path)!r}, which does not exist"
        )
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        data = data.get("policies", data) if isinstance(data, dict) else data
    elif path.suffix == ".toml":
        data = _toml_loads(text, path).get("policies")
    else:
        data = [ln.split("#")[0].strip() for ln in text.splitlines()]
        data = [ln for ln in data if ln]
    if not isinstance(data, list):
        raise ValueError(
            f"Expected a list of policies in {str(path)!r}. Received: {_describe(data)}"
        )
    return data


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A model to sweep: a factory (built-in name, `"package.module:function"`, or a callable)
    and, optionally, its data, plus training settings for the float32 baseline.

    The factory is called as `factory(dtype=policy, **kwargs)` and returns an mpq layer/model,
    or `(model, data)` when `data` is None. `data` is a built-in data name (`"digits"`,
    `"digits_flat"`, `"synthetic"`), an import string or callable `data(**data_kwargs)` returning
    a `mpq.sweep.data.Data` (or `(x_train, y_train, x_test, y_test)` arrays, or
    `(train_loader, test_loader)`).

    Example:
        >>> ModelSpec("digits_cnn").resolved_name
        'digits_cnn'
    """

    factory: str | Callable[..., Any]
    name: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    data: str | Callable[..., Any] | None = None
    data_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 64
    finetune_lr: float = 1e-3
    task: TaskSpec = None
    checkpoint: str | os.PathLike[str] | None = None
    train: bool = True
    finetune_epochs: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.factory, str) or callable(self.factory)):
            raise TypeError(
                "Expected `factory` to be a built-in model name, 'module:function', or a callable. "
                f"Received: factory={_describe(self.factory)}"
            )
        for key in ("epochs", "batch_size"):
            val = getattr(self, key)
            if (
                not isinstance(val, int)
                or isinstance(val, bool)
                or val < (0 if key == "epochs" else 1)
            ):
                raise ValueError(
                    f"Expected `{key}` to be a positive int. Received: {key}={_describe(val)}"
                )
        for key in ("lr", "finetune_lr"):
            val = getattr(self, key)
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not val > 0:
                raise ValueError(
                    f"Expected `{key}` to be a positive number. Received: {key}={_describe(val)}"
                )
        from mpq.sweep.tasks import resolve_task

        resolve_task(self.task, self.data)  # raises on unknown names
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, os.PathLike)):
            raise TypeError(
                "Expected `checkpoint` to be a file path. "
                f"Received: checkpoint={_describe(self.checkpoint)}"
            )
        if self.finetune_epochs is not None and (
            not isinstance(self.finetune_epochs, int)
            or isinstance(self.finetune_epochs, bool)
            or self.finetune_epochs < 0
        ):
            raise ValueError(
                "Expected `finetune_epochs` to be an int >= 0 or None (the sweep's). "
                f"Received: finetune_epochs={_describe(self.finetune_epochs)}"
            )
        if not isinstance(self.train, bool):
            raise TypeError(
                f"Expected `train` to be a bool. Received: train={_describe(self.train)}"
            )
        for key in ("kwargs", "data_kwargs"):
            if not isinstance(getattr(self, key), Mapping):
                raise TypeError(
                    f"Expected `{key}` to be a dict. Received: {key}={_describe(getattr(self, key))}"
                )

    @property
    def resolved_name(self) -> str:
        if self.name:
            return self.name
        if isinstance(self.factory, str):
            return self.factory.rsplit(":", 1)[-1]
        return getattr(self.factory, "__name__", type(self.factory).__name__)

    @property
    def resolved_data(self) -> str | Callable[..., Any] | None:
        """`data`, else the built-in model's data (`"digits_cnn"`: `"digits"`), else the data
        the task's name brings (`task="lm"`: `"stdlib_bytes"`); None: the factory returns it."""
        if self.data is not None:
            return self.data
        if isinstance(self.factory, str):
            from mpq.sweep.models import BUILTIN_MODELS

            if self.factory in BUILTIN_MODELS:
                return BUILTIN_MODELS[self.factory][1]
        from mpq.sweep.tasks import resolve_task

        return resolve_task(self.task, None).data

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; callables are named by `module:qualname` (used for hashing)."""
        data = self.resolved_data
        return {
            "name": self.resolved_name,
            "factory": _callable_ref(self.factory),
            "kwargs": dict(self.kwargs),
            "data": None if data is None else _callable_ref(data),
            "data_kwargs": dict(self.data_kwargs),
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "finetune_lr": self.finetune_lr,
            "task": _callable_ref(self.task) if callable(self.task) else self.task_obj.name,
            "checkpoint": None if self.checkpoint is None else os.fspath(self.checkpoint),
            "train": self.train,
            "finetune_epochs": self.finetune_epochs,
        }

    @property
    def task_obj(self) -> Task:
        """The resolved `mpq.sweep.tasks.Task`."""
        from mpq.sweep.tasks import resolve_task

        return resolve_task(self.task, self.resolved_data)


def _callable_ref(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    mod = getattr(obj, "__module__", None) or "?"
    qual = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{mod}:{qual}"


def resolve_model(spec: Any) -> ModelSpec:
    """A `ModelSpec` from a name or import string, a dict of ModelSpec fields, a callable, or a
    ModelSpec. Unknown built-in names raise here, before any work."""
    if isinstance(spec, ModelSpec):
        model = spec
    elif isinstance(spec, str):
        model = ModelSpec(spec.strip())
    elif isinstance(spec, Mapping):
        fields = {f.name for f in dataclasses.fields(ModelSpec)}
        unknown = set(spec) - fields
        if unknown or ("factory" not in spec and "name" not in spec):
            raise ValueError(
                f"Expected a model table with keys from {sorted(fields)} (at least 'factory' or "
                f"'name'). Received: {dict(spec)!r}"
            )
        spec = dict(spec)
        spec.setdefault("factory", spec.get("name"))
        model = ModelSpec(**spec)
    elif callable(spec):
        model = ModelSpec(spec)
    else:
        raise TypeError(
            "Expected a model: a built-in name such as 'digits_cnn', 'package.module:function', "
            f"a model table, or a callable. Received: {_describe(spec)}"
        )
    from mpq.sweep import models

    models.resolve_factory(model.factory)  # raises on unknown names / missing imports
    if model.data is not None:
        from mpq.sweep import data

        data.resolve_data(model.data)
    # Spelled out, so that the spec reads as it runs (and equal specs compare equal).
    return dataclasses.replace(
        model,
        data=model.resolved_data,
        checkpoint=None if model.checkpoint is None else os.fspath(model.checkpoint),
        kwargs=dict(model.kwargs),
        data_kwargs=dict(model.data_kwargs),
    )


# --------------------------------------------------------------------------------------------
# One run, and the sweep
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunConfig:
    """Everything one run depends on; `run_one(RunConfig) -> record` is a pure function of it.

    `layers` restricts the variant to the listed layer paths (per-layer sensitivity);
    `assignment` maps layer paths to variant labels (a suggested DTypePolicyMap to verify); when
    both are None the variant applies to the whole model.
    """

    model: ModelSpec
    variant: Variant
    seed: int = 0
    device: str = "cpu"
    quick: bool = False
    finetune_epochs: int = 0
    kind: str = "policy"  # "policy" | "per_layer" | "suggest"
    layers: tuple[str, ...] | None = None
    assignment: tuple[tuple[str, Variant], ...] | None = None
    latency_repeats: int = 5

    def to_dict(self) -> dict[str, Any]:
        from mpq import __version__

        return {
            "model": self.model.to_dict(),
            "variant": self.variant.to_dict(),
            "seed": self.seed,
            "device": self.device,
            "quick": self.quick,
            "finetune_epochs": self.finetune_epochs if self.variant.finetune else 0,
            "kind": self.kind,
            "layers": None if self.layers is None else list(self.layers),
            "assignment": None
            if self.assignment is None
            else [[p, v.to_dict()] for p, v in self.assignment],
            "mpq_version": __version__,
        }

    @property
    def config_hash(self) -> str:
        """sha256 (16 hex digits) of the canonical JSON of `to_dict()`: same hash, same run."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


EXECUTORS = ("local", "ray", "serial")

#: Limits of a sweep's options, checked before any work (docs/sweeps.md, "Limits").
#: Seeds seed numpy's and torch's generators: 32-bit unsigned values.
SEED_LIMIT = 2**32
#: Seeds in one sweep (each trains a model per model spec).
MAX_SEEDS = 1000
#: Process-pool workers.
MAX_WORKERS = 256
#: Fine-tuning epochs per run.
MAX_FINETUNE_EPOCHS = 10_000

#: The default sweep's models (same as experiments/digits.toml). The tiny LM comes first: its
#: training is the longest, so it starts first. The CNN reaches 98-99% held-out accuracy in
#: float32 (seeds 0-2), the MLP about 98.5%; the LM a validation perplexity of about 11.5.
DEFAULT_MODELS: tuple[dict[str, Any], ...] = (
    {
        "name": "tiny_lm",
        "factory": "tiny_lm",
        "task": "lm",
        "epochs": 4,
        "lr": 0.01,
        "batch_size": 32,
        "finetune_epochs": 0,  # its fine-tuning would double the sweep's time
    },
    {
        "name": "digits_cnn",
        "factory": "digits_cnn",
        "data": "digits",
        "epochs": 12,
        "lr": 0.01,
        "batch_size": 32,
    },
    {
        "name": "digits_mlp",
        "factory": "digits_mlp",
        "data": "digits_flat",
        "epochs": 10,
        "lr": 0.003,
        "batch_size": 64,
    },
)


@dataclass(frozen=True)
class _SweepFields:
    models: tuple[ModelSpec, ...]
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    out: str
    device: str
    executor: str
    workers: int | None
    quick: bool
    finetune_epochs: int
    per_layer: bool
    suggest: bool
    target_sqnr: float
    resources: dict[str, float]
    ray_address: str | None
    plot: bool
    resume: bool
    overwrite: bool
    skip_bad_lines: bool
    cache_dir: str | None


class SweepConfig(_SweepFields):
    """A whole sweep: models x variants x seeds, plus where and how to run it.

    Built whole by its constructor from the specs below (checked and resolved there, before any
    work), and never changed afterwards: `replace` (or `dataclasses.replace`) builds a new one.

    Args:
        models: model specs (names such as `"digits_cnn"`, import strings, tables, callables).
        policies: variant specs (labels, policy names, tables); resolved to `variants`.
        seeds: training seeds; each (model, seed) trains one float32 baseline.
        out: output directory (results.jsonl, summary.csv, sweep.png, ...).
        device: `"cpu"` or `"cuda"` (`"cuda:1"` too).
        executor: `"local"` (process pool), `"serial"` (in this process) or `"ray"`.
        workers: process-pool size for executor="local"; None: min(CPUs, 2).
        quick: tiny epochs and a test subset, for smoke tests.
        finetune_epochs: epochs of fine-tuning under variants marked `finetune` (0: none).
        per_layer: also quantize one layer at a time (sensitivity table and heatmap).
        suggest: propose and verify a DTypePolicyMap reaching `target_sqnr` at the fewest bytes
            (implies `per_layer`).
        target_sqnr: the SQNR target in dB for `suggest`: finite and > 0.
        resources: per-run Ray resource request, e.g. `{"num_cpus": 1, "num_gpus": 0.25}`.
        ray_address: passed to `ray.init(address=...)` when Ray is not initialised yet.
        plot: write the PNGs.
        resume: skip runs whose config hash is already recorded as ok in `out/results.jsonl`.
        overwrite: start `out/results.jsonl` afresh (the old file is renamed aside, not deleted).
        skip_bad_lines: skip (with a warning) lines of `out/results.jsonl` that are not records,
            instead of stopping before any work; their runs are computed again.
        cache_dir: where trained float32 weights are cached by (model config, seed), so a later
            sweep only evaluates; None: `out/cache`.
        variants: resolved variants instead of `policies` (what `dataclasses.replace` passes).

    Limits (checked here, before any work): seeds in [0, 2**32), at most 1000 of them; workers
    in [1, 256]; finetune_epochs in [0, 10000]; resources finite and >= 0.

    Example:
        >>> cfg = SweepConfig(models=["digits_mlp"], policies=["float32", "int8"], quick=True)
        >>> [v.label for v in cfg.variants]
        ['float32', 'int8']
    """

    def __init__(
        self,
        models: Any = DEFAULT_MODELS,
        policies: Any = DEFAULT_POLICIES,
        seeds: int | Sequence[int] = (0,),
        out: str | os.PathLike[str] = "sweep-results",
        device: str = "cpu",
        executor: str = "local",
        workers: int | None = None,
        quick: bool = False,
        finetune_epochs: int = 2,
        per_layer: bool = False,
        suggest: bool = False,
        target_sqnr: float = 30.0,
        resources: Mapping[str, float] | None = None,
        ray_address: str | None = None,
        plot: bool = True,
        resume: bool = True,
        overwrite: bool = False,
        skip_bad_lines: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        variants: Sequence[Variant] | None = None,
    ) -> None:
        flags = {"quick": quick, "per_layer": per_layer, "suggest": suggest, "plot": plot}
        flags.update(resume=resume, overwrite=overwrite, skip_bad_lines=skip_bad_lines)
        _check_flags(flags)
        _check_limits(device, executor, workers, finetune_epochs, target_sqnr, ray_address)
        super().__init__(
            models=_resolve_models(models),
            variants=resolve_variants(policies if variants is None else tuple(variants)),
            seeds=_resolve_seeds(seeds),
            out=_resolve_out(out),
            device=device,
            executor=executor,
            workers=workers,
            quick=quick,
            finetune_epochs=finetune_epochs,
            per_layer=per_layer or suggest,  # suggest needs the per-layer table
            suggest=suggest,
            target_sqnr=target_sqnr,
            resources=_resolve_resources({"num_cpus": 1} if resources is None else resources),
            ray_address=ray_address,
            plot=plot,
            resume=resume,
            overwrite=overwrite,
            skip_bad_lines=skip_bad_lines,
            cache_dir=_resolve_cache_dir(cache_dir),
        )

    @property
    def policies(self) -> tuple[str, ...]:
        """The variants' labels."""
        return tuple(v.label for v in self.variants)

    def replace(self, **changes: Any) -> SweepConfig:
        """A copy with some fields changed (re-validated); `policies` replaces the variants."""
        if "policies" in changes:
            changes["variants"] = resolve_variants(changes.pop("policies"))
        return dataclasses.replace(self, **changes)

    def run_configs(self) -> list[RunConfig]:
        """The whole-model runs of this sweep, in (model, seed, variant) order."""
        return whole_model_runs(
            self.models, self.variants, self.seeds, self.device, self.quick, self.finetune_epochs
        )

    def check_picklable(self) -> None:
        """Process pools and Ray pickle the model factories: say so before any work if not."""
        check_picklable(self.models, self.executor)


def whole_model_runs(
    models: Sequence[ModelSpec],
    variants: Sequence[Variant],
    seeds: Sequence[int],
    device: str,
    quick: bool,
    finetune_epochs: int,
) -> list[RunConfig]:
    """Each variant on each whole model from each seed, in (model, seed, variant) order;
    fine-tuned when the variant says so (the model's `finetune_epochs`, else the sweep's)."""
    runs = []
    for model in models:
        epochs = finetune_epochs if model.finetune_epochs is None else model.finetune_epochs
        for seed in seeds:
            for variant in variants:
                ft = epochs if variant.finetune else 0
                runs.append(RunConfig(model, variant, seed, device, quick, finetune_epochs=ft))
    return runs


def check_picklable(models: Sequence[ModelSpec], executor: str) -> None:
    """Raise before any work when a model's factory, data or task does not pickle (process
    pools and Ray send them to their workers)."""
    for model in models:
        for obj in (model.factory, model.data, model.task):
            if obj is None or isinstance(obj, str):
                continue
            try:
                pickle.dumps(obj)
            except Exception as e:
                raise ValueError(
                    f"Expected a picklable model factory for executor={executor!r} "
                    "(a module-level function, or executor='serial'). "
                    f"Received: {_callable_ref(obj)} ({type(e).__name__}: {e})"
                ) from None


# The constructor's steps: each checks (and resolves) one group of fields, before any work.
def _check_flags(flags: Mapping[str, Any]) -> None:
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(
                f"Expected `{key}` to be true or false. Received: {key}={_describe(value)}"
            )


def _resolve_models(models: Any) -> tuple[ModelSpec, ...]:
    given = models
    if isinstance(models, str):  # "digits_cnn,digits_mlp", as `policies` accepts
        models = [m.strip() for m in models.split(",") if m.strip()]
    elif isinstance(models, (ModelSpec, Mapping)) or callable(models):
        models = [models]
    if not isinstance(models, Sequence) or not models:
        raise ValueError(
            f"Expected a non-empty list of models. Received: models={_describe(given)}"
        )
    resolved = tuple(resolve_model(m) for m in models)
    _check_unique([m.resolved_name for m in resolved], "model name")
    return resolved


def _resolve_seeds(seeds: Any) -> tuple[int, ...]:
    given = seeds
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = (seeds,)
    if (
        not isinstance(seeds, Sequence)
        or isinstance(seeds, str)
        or not seeds
        or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds)
    ):
        raise ValueError(
            f"Expected seeds as a non-empty list of ints in [0, 2**32). Received: seeds={_describe(given)}"
        )
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"Expected at most {MAX_SEEDS} seeds. Received: {len(seeds)} seeds")
    bad = [s for s in seeds if not 0 <= s < SEED_LIMIT]
    if bad:
        raise ValueError(f"Expected seeds in [0, 2**32). Received: seed={_describe(bad[0])}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Expected each seed once. Received: seeds={list(seeds)}")
    return tuple(seeds)


def _resolve_out(out: Any) -> str:
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"Expected `out` to be a directory path. Received: out={_describe(out)}")
    path = os.fspath(out)
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"Expected `out` to be a directory path. Received: out={_describe(out)}")
    return path


def _check_limits(
    device: Any,
    executor: Any,
    workers: Any,
    finetune_epochs: Any,
    target_sqnr: Any,
    ray_address: Any,
) -> None:
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:[0-9]{1,3})?", device):
        raise ValueError(
            f"Expected device 'cpu', 'cuda' or 'cuda:N'. Received: device={_describe(device)}"
        )
    if executor not in EXECUTORS:
        raise ValueError(
            f"Expected executor to be one of {list(EXECUTORS)}. Received: executor={_describe(executor)}"
        )
    if workers is not None and (
        not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS
    ):
        raise ValueError(
            f"Expected `workers` to be an int in [1, {MAX_WORKERS}] or None. Received: workers={_describe(workers)}"
        )
    if (
        not isinstance(finetune_epochs, int)
        or isinstance(finetune_epochs, bool)
        or not 0 <= finetune_epochs <= MAX_FINETUNE_EPOCHS
    ):
        raise ValueError(
            f"Expected `finetune_epochs` to be an int in [0, {MAX_FINETUNE_EPOCHS}]. Received: finetune_epochs={_describe(finetune_epochs)}"
        )
    if not isinstance(target_sqnr, (int, float)) or isinstance(target_sqnr, bool):
        raise TypeError(
            f"Expected `target_sqnr` in dB as a number. Received: target_sqnr={_describe(target_sqnr)}"
        )
    if not (math.isfinite(target_sqnr) and target_sqnr > 0):
        raise ValueError(
            "Expected `target_sqnr` in dB, finite and > 0 (at 0 dB the noise is as large "
            f"as the signal). Received: target_sqnr={_describe(target_sqnr)}"
        )
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise ValueError(
            f"Expected `ray_address` to be a Ray address such as 'ray://head:10001' or None. Received: ray_address={_describe(ray_address)}"
        )


def _resolve_resources(resources: Any) -> dict[str, float]:
    if not isinstance(resources, Mapping) or any(
        not isinstance(v, (int, float)) or isinstance(v, bool) or not (math.isfinite(v) and v >= 0)
        for v in resources.values()
    ):
        raise ValueError(
            "Expected `resources` as a dict of non-negative numbers such as "
            f"{{'num_cpus': 1, 'num_gpus': 0.5}}. Received: resources={_describe(resources)}"
        )
    return dict(resources)


def _resolve_cache_dir(cache_dir: Any) -> str | None:
    if cache_dir is None:
        return None
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(
            "Expected `cache_dir` to be a directory path or None. "
            f"Received: cache_dir={_describe(cache_dir)}"
        )
    path = os.fspath(cache_dir)
    return path if isinstance(path, str) else os.fsdecode(path)


def as_config(
    config: SweepConfig | str | os.PathLike[str] | Mapping[str, Any] | None,
) -> SweepConfig:
    """The first step of a sweep: a `SweepConfig` from itself, a sweep file (`load_config`),
    its parsed dict form (`config_from_dict`), or None (the default sweep)."""
    if isinstance(config, SweepConfig):
        return config
    if config is None:
        return default_config()
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    if isinstance(config, dict):
        return config_from_dict(config)
    raise TypeError(
        "Expected a SweepConfig, a sweep file path, a config dict, or None (the default sweep). "
        f"Received: config={config!r} (of type {type(config).__name__})"
    )


def default_config(**changes: Any) -> SweepConfig:
    """The default sweep (`mpq sweep` with no arguments); same as `experiments/digits.toml`."""
    return SweepConfig(**changes)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
_SWEEP_KEYS = {f.name for f in dataclasses.fields(SweepConfig)} - {"models", "variants"}


def _toml_loads(text: str, path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise RuntimeError(
                f"Expected Python >= 3.11 (tomllib) or the 'tomli' package to read {str(path)!r}. "
                "Received: Python 3.10 without tomli; `pip install tomli` or use a JSON sweep file"
            ) from None
    try:
        parsed: dict[str, Any] = tomllib.loads(text)
        return parsed
    except tomllib.TOMLDecodeError as e:
        raise ValueError(
            f"Expected a valid TOML sweep file. Received: {str(path)!r}: {e}"
        ) from None


def load_config(path: str | os.PathLike[str], **overrides: Any) -> SweepConfig:
    """Read a sweep file (`.toml` or `.json`) into a `SweepConfig`; `overrides` win over it.

    Format (TOML; JSON has the same structure):

        [sweep]            # any SweepConfig field but models/policies, all optional
        seeds = [0]
        out = "sweep-results"
        policies = ["float32", "int8", { label = "int8-wo", policy = "int8_from_float32",
                    quantize_config = { weight_only = true } }]

        [[models]]         # ModelSpec fields
        name = "digits_cnn"
        factory = "digits_cnn"
        epochs = 12

    Example:
        >>> cfg = load_config("experiments/digits.toml", quick=True)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected a sweep file (.toml or .json). Received: {str(path)!r}, which does not exist"
        )
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"Expected a valid JSON sweep file. Received: {str(path)!r}: {e}"
            ) from None
    elif path.suffix == ".toml":
        data = _toml_loads(path.read_text(), path)
    else:
        raise ValueError(f"Expected a sweep file ending in .toml or .json. Received: {str(path)!r}")
    return config_from_dict(data, source=str(path), **overrides)


def config_from_dict(
    data: Mapping[str, Any], source: str = "<dict>", **overrides: Any
) -> SweepConfig:
    """`SweepConfig` from the parsed file structure (`{"sweep": {...}, "models": [...]}`)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"Expected a table at the top of {source}. Received: {_describe(data)}")
    unknown_top = set(data) - {"sweep", "models", "policies"}
    if unknown_top:
        raise ValueError(
            f"Expected top-level keys 'sweep', 'models', 'policies' in {source}. Received unknown: {sorted(unknown_top)}"
        )
    sweep = dict(data.get("sweep", {}))
    unknown = set(sweep) - _SWEEP_KEYS - {"policies"}
    if unknown:
        raise ValueError(
            f"Expected [sweep] keys from {sorted(_SWEEP_KEYS | {'policies'})} in {source}. "
            f"Received unknown: {sorted(unknown)}"
        )
    if "policies" in data:
        sweep["policies"] = data["policies"]
    if "models" in data:
        sweep["models"] = data["models"]
    if "seeds" in sweep and isinstance(sweep["seeds"], list):
        sweep["seeds"] = tuple(sweep["seeds"])
    sweep.update({k: v for k, v in overrides.items() if v is not None})
    return SweepConfig(**sweep)
