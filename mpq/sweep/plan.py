"""The plan of a sweep: what `SweepConfig` asks for, as typed steps the runner executes. The
float32 baselines to train, the whole-model runs, the per-layer expansions (their runs are
known once a baseline's layer table is), the suggestion step, how to execute and where the
files go. Built once from the config (`make_plan`); nothing downstream reads the config.

    >>> from mpq.sweep.config import SweepConfig
    >>> plan = make_plan(SweepConfig(models=["digits_mlp"], policies=["float32", "int8"]))
    >>> [(r.model.resolved_name, r.variant.label) for r in plan.runs], len(plan.baselines)
    ([('digits_mlp', 'float32'), ('digits_mlp', 'int8')], 1)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpq.sweep.config import (
    BUILTIN_VARIANTS,
    ModelSpec,
    RunConfig,
    SweepConfig,
    Variant,
    check_picklable,
    whole_model_runs,
)

__all__ = [
    "SUGGESTED",
    "Baseline",
    "Execution",
    "Output",
    "PerLayer",
    "Plan",
    "Suggest",
    "make_plan",
]

#: The variant of a suggested-map verification run (the map itself is the run's `assignment`).
SUGGESTED = Variant("suggested", "float32")

#: A row of a baseline's layer table (`experiment.layer_table`: path, module, class, params,
#: bytes, modes), as read back from `layers.json` too.
LayerRow = Mapping[str, Any]


@dataclass(frozen=True)
class Baseline:
    """One float32 training: `model` from `seed` (`experiment.train_baseline`), cached by
    `key` (the model's config, the seed, the device and `quick`)."""

    key: str
    model: ModelSpec
    seed: int
    device: str
    quick: bool
    cache_dir: str

    @property
    def title(self) -> str:
        return f"{self.model.resolved_name} (seed {self.seed})"


@dataclass(frozen=True)
class PerLayer:
    """One layer at a time under each variant (but float32), the rest float32: the runs of a
    baseline's sensitivity table, known once its layer table is (`runs`)."""

    baseline: Baseline
    variants: tuple[Variant, ...]

    def runs(self, layers: Sequence[LayerRow], known_modes: set[str]) -> list[RunConfig]:
        """The per-layer runs over `layers`. A quantized variant is not run on a layer that has
        no scheme for its mode (a LayerNormalization under int8): there is nothing to measure.
        Rows without `modes` (a layers.json of an older sweep) and modes no scheme names run as
        before. Sensitivity is about the weights as trained: no fine-tuning."""
        b = self.baseline
        return [
            RunConfig(
                model=b.model,
                variant=v,
                seed=b.seed,
                device=b.device,
                quick=b.quick,
                kind="per_layer",
                layers=(row["path"],),
            )
            for row in layers
            for v in self.variants
            if _applies(v, row, known_modes)
        ]


def _applies(variant: Variant, row: LayerRow, known_modes: set[str]) -> bool:
    mode = variant.dtype_policy.quantization_mode
    return mode is None or "modes" not in row or mode not in known_modes or mode in row["modes"]


@dataclass(frozen=True)
class Suggest:
    """After a model's per-layer runs (of the first seed): candidate policy maps meeting
    `target_sqnr` (`sensitivity.suggest`), each verified by a run (`runs`)."""

    target_sqnr: float
    seed: int
    variants: tuple[Variant, ...]

    def runs(self, baseline: Baseline, candidates: Sequence[Any]) -> list[RunConfig]:
        """One verification run per candidate (a `sensitivity.Suggestion`)."""
        by_label = {v.label: v for v in self.variants}
        by_label.setdefault("float32", BUILTIN_VARIANTS["float32"])
        return [
            RunConfig(
                model=baseline.model,
                variant=SUGGESTED,
                seed=baseline.seed,
                device=baseline.device,
                quick=baseline.quick,
                kind="suggest",
                assignment=tuple((path, by_label[label]) for path, label in cand.assignment),
            )
            for cand in candidates
        ]

    def policy_names(self) -> dict[str, str]:
        """Variant label -> policy name, float32 included (what a suggested map assigns)."""
        names = {v.label: v.policy for v in self.variants}
        names["float32"] = "float32"
        return names


@dataclass(frozen=True)
class Execution:
    """How the runs are executed: the executor's name and its settings."""

    executor: str
    workers: int | None
    resources: Mapping[str, float]
    ray_address: str | None
    device: str


@dataclass(frozen=True)
class Output:
    """Where the files go and how an existing `results.jsonl` is treated."""

    out: Path
    plot: bool
    resume: bool
    overwrite: bool
    skip_bad_lines: bool

    @property
    def results(self) -> Path:
        return self.out / "results.jsonl"


@dataclass(frozen=True)
class Plan:
    """Everything a sweep will do, in order: `baselines`, then `runs` (each waits for its
    baseline), then the `per_layer` expansions, then `suggest` (None: no suggestion)."""

    models: tuple[ModelSpec, ...]
    seeds: tuple[int, ...]
    baselines: tuple[Baseline, ...]
    runs: tuple[RunConfig, ...]
    per_layer: tuple[PerLayer, ...]
    suggest: Suggest | None
    execution: Execution
    output: Output

    def baseline_for(self, run: RunConfig) -> Baseline:
        """The baseline a run starts from."""
        found = self.baseline_of(run.model.resolved_name, run.seed)
        if found is None:
            raise ValueError(
                f"Expected a run of a model and seed of the plan. Received: model="
                f"{run.model.resolved_name!r}, seed={run.seed}"
            )
        return found

    def baseline_of(self, model_name: str, seed: int) -> Baseline | None:
        """The baseline of `model_name` from `seed` (None: not in the plan)."""
        return next(
            (b for b in self.baselines if b.model.resolved_name == model_name and b.seed == seed),
            None,
        )

    def check_picklable(self) -> None:
        """Process pools and Ray pickle the model factories: say so before any work if not."""
        check_picklable(self.models, self.execution.executor)


def baseline_key(model: ModelSpec, seed: int, device: str, quick: bool) -> str:
    """The cache key of a baseline: its model's config, seed, device and `quick`."""
    blob = json.dumps([model.to_dict(), seed, device, quick], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_plan(config: SweepConfig) -> Plan:
    """The plan of `config` (see `Plan`)."""
    # Trained float32 weights are cached in `cache_dir`, by default `out/cache`.
    cache_dir = (
        config.cache_dir if config.cache_dir is not None else os.path.join(config.out, "cache")
    )
    baselines = tuple(
        Baseline(
            key=baseline_key(model, seed, config.device, config.quick),
            model=model,
            seed=seed,
            device=config.device,
            quick=config.quick,
            cache_dir=cache_dir,
        )
        for model in config.models
        for seed in config.seeds
    )
    layer_variants = tuple(v for v in config.variants if v.label != "float32")
    return Plan(
        models=config.models,
        seeds=config.seeds,
        baselines=baselines,
        runs=tuple(
            whole_model_runs(
                config.models,
                config.variants,
                config.seeds,
                config.device,
                config.quick,
                config.finetune_epochs,
            )
        ),
        per_layer=tuple(PerLayer(b, layer_variants) for b in baselines) if config.per_layer else (),
        suggest=Suggest(config.target_sqnr, config.seeds[0], config.variants)
        if config.suggest
        else None,
        execution=Execution(
            config.executor, config.workers, config.resources, config.ray_address, config.device
        ),
        output=Output(
            Path(config.out), config.plot, config.resume, config.overwrite, config.skip_bad_lines
        ),
    )
