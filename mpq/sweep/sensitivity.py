"""Per-layer sensitivity (one layer under a variant, the rest float32) and `--suggest`: a
`DTypePolicyMap` that meets an SQNR target at the fewest weight bytes, ranked for verification.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpq.policy import DTypePolicyMap

__all__ = ["Suggestion", "per_layer_matrix", "per_layer_rows", "predicted_sqnr", "suggest"]

#: Above this many combinations the search is greedy instead of exhaustive.
EXHAUSTIVE_LIMIT = 50_000


def per_layer_rows(
    records: Iterable[Mapping[str, Any]], model: str, seed: int, ok_only: bool = True
) -> list[Mapping[str, Any]]:
    """The per-layer records of one (model, seed) (only the ok ones by default), in order."""
    return [
        r
        for r in records
        if r.get("kind") == "per_layer"
        and r["model"] == model
        and r["seed"] == seed
        and (r["status"] == "ok" or not ok_only)
    ]


def per_layer_matrix(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[list[str], list[str], list[list[float | None]]]:
    """`(layers, variants, sqnr[layer][variant])` in dB (inf: exact; None: failed or missing)."""
    layers: list[str] = []
    variants: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for r in rows:
        if r["layer"] not in layers:
            layers.append(r["layer"])
        if r["variant"] not in variants:
            variants.append(r["variant"])
        if r.get("status", "ok") == "ok":
            values[(r["layer"], r["variant"])] = (
                math.inf if r.get("sqnr_db") is None else r["sqnr_db"]
            )
    return layers, variants, [[values.get((lay, v)) for v in variants] for lay in layers]


def predicted_sqnr(sqnrs_db: Iterable[float]) -> float:
    """SQNR of the model when each layer adds independent noise: noise powers (relative to the
    signal) add, `-10 log10(sum 10^(-s/10))`. Exact layers (inf) add nothing.

    Example:
        >>> round(predicted_sqnr([30.0, 30.0]), 2)
        26.99
    """
    noise = sum(10.0 ** (-s / 10.0) for s in sqnrs_db if not math.isinf(s))
    return math.inf if noise == 0 else -10.0 * math.log10(noise)


@dataclass(frozen=True)
class Suggestion:
    """An assignment of a variant label to each layer path, its predicted SQNR and bytes."""

    assignment: tuple[tuple[str, str], ...]
    predicted_sqnr_db: float
    weight_bytes: int

    def policy_map(self, policies: Mapping[str, str]) -> DTypePolicyMap:
        """The `mpq.policy.DTypePolicyMap` (default float32; one exact key per non-float32 layer)."""
        from mpq.policy import DTypePolicyMap

        return DTypePolicyMap(
            "float32", {p: policies[v] for p, v in self.assignment if v != "float32"}
        )


def suggest(
    rows: Sequence[Mapping[str, Any]],
    target_sqnr: float,
    top_k: int = 3,
    base_bytes: int | None = None,
) -> list[Suggestion]:
    """Candidate assignments meeting `target_sqnr` (predicted), cheapest first, at most `top_k`
    of them, of distinct sizes.

    `rows` are the per-layer records of one model and seed. Only variants a `DTypePolicyMap`
    can express (no extra quantize config) are candidates; every layer may also stay float32.
    `base_bytes` adds the bytes of layers that were not in the per-layer sweep (default: the
    model's float32 bytes minus the listed layers' float32 bytes, from the records).
    Exhaustive up to `EXHAUSTIVE_LIMIT` combinations, greedy beyond.
    """
    options: dict[str, list[tuple[str, float, int]]] = {}
    f32_bytes: dict[str, int] = {}
    model_f32 = None
    for r in rows:
        if r.get("quantize_config") or r["status"] != "ok":
            continue
        layer = r["layer"]
        f32_bytes[layer] = int(r["float32_layer_weight_bytes"])
        model_f32 = r["float32_weight_bytes"]
        s = math.inf if r.get("sqnr_db") is None else float(r["sqnr_db"])
        options.setdefault(layer, []).append((r["variant"], s, int(r["layer_weight_bytes"])))
    if not options:
        return []
    for layer, opts in options.items():
        if not any(v == "float32" for v, _, _ in opts):
            opts.insert(0, ("float32", math.inf, f32_bytes[layer]))
    if base_bytes is None:
        base_bytes = int(model_f32 or 0) - sum(f32_bytes.values())
    layers = list(options)
    n_combos = math.prod(len(options[lay]) for lay in layers)
    found: list[Suggestion] = []
    if n_combos <= EXHAUSTIVE_LIMIT:
        for combo in itertools.product(*(options[lay] for lay in layers)):
            pred = predicted_sqnr(s for _, s, _ in combo)
            if pred >= target_sqnr:
                nbytes = base_bytes + sum(b for _, _, b in combo)
                found.append(
                    Suggestion(
                        tuple((lay, c[0]) for lay, c in zip(layers, combo, strict=True)),
                        pred,
                        nbytes,
                    )
                )
    else:
        found = _greedy(options, layers, target_sqnr, base_bytes)
    found.sort(key=lambda s: (s.weight_bytes, -s.predicted_sqnr_db, s.assignment))
    # One candidate per size (the one predicted best at that size): if the cheapest fails
    # verification, the next candidates are larger, safer ones, not near-copies of it.
    unique: list[Suggestion] = []
    for cand in found:
        if not unique or cand.weight_bytes != unique[-1].weight_bytes:
            unique.append(cand)
        if len(unique) == top_k:
            break
    return unique


def _greedy(
    options: dict[str, list[tuple[str, float, int]]],
    layers: list[str],
    target: float,
    base_bytes: int,
) -> list[Suggestion]:
    """Start from each layer's cheapest option; while below target, take the upgrade with the
    largest noise reduction per extra byte."""
    choice = {lay: min(options[lay], key=lambda o: (o[2], -o[1])) for lay in layers}

    def noise(o: tuple[str, float, int]) -> float:
        return 0.0 if math.isinf(o[1]) else 10.0 ** (-o[1] / 10.0)

    while predicted_sqnr(choice[lay][1] for lay in layers) < target:
        best, best_gain = None, 0.0
        for lay in layers:
            cur = choice[lay]
            for o in options[lay]:
                extra = o[2] - cur[2]
                gain = noise(cur) - noise(o)
                if gain > 0:
                    score = gain / max(extra, 1)
                    if score > best_gain:
                        best, best_gain = (lay, o), score
        if best is None:
            return []
        choice[best[0]] = best[1]
    pred = predicted_sqnr(choice[lay][1] for lay in layers)
    return [
        Suggestion(
            tuple((lay, choice[lay][0]) for lay in layers),
            pred,
            base_bytes + sum(choice[lay][2] for lay in layers),
        )
    ]
