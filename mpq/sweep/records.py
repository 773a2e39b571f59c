"""Sweep records: JSON Lines streaming and reading (for resume), aggregation over seeds, the
aligned terminal table, and `summary.csv`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "SUMMARY_COLUMNS",
    "JsonlWriter",
    "format_table",
    "latest_by_hash",
    "read_jsonl",
    "summarize",
    "write_csv",
]


def _clean(value: Any) -> Any:
    """JSON has no inf/nan: they are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Appends one record per line and flushes, so a crash loses at most the run in flight.

    Example:
        >>> with JsonlWriter("out/results.jsonl") as w:
        ...     w.write({"model": "digits_cnn", "accuracy": 0.97})
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: TextIO | None = None

    def __enter__(self) -> JsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise RuntimeError(
                "Expected JsonlWriter to be used inside `with`. Received: a closed writer"
            )
        line = json.dumps({k: _clean(v) for k, v in record.items()}, allow_nan=False, default=str)
        self._file.write(line + "\n")
        self._file.flush()

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSON Lines file ([] if absent); a torn last line (crash) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise ValueError(
                f"Expected one JSON record per line in {str(path)!r}. Received a bad line {i + 1}: {line[:120]!r}"
            ) from None
    return out


def latest_by_hash(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record written for each config hash."""
    return {r["config_hash"]: r for r in records if "config_hash" in r}


# (key, header, format) of the summary table and CSV.
SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "model", "s"),
    ("variant", "policy", "s"),
    ("n", "seeds", "d"),
    ("metric", "metric", "s"),
    ("metric_value", "value", ".4g"),
    ("metric_delta_pct", "vs f32 %", "+.2f"),
    ("sqnr_db", "SQNR dB", "db"),
    ("accuracy", "acc %", "pct"),
    ("weight_bytes", "weights", "bytes"),
    ("bytes_ratio", "x f32", ".3f"),
    ("latency_ms", "ms/batch", ".2f"),
    ("finetune_accuracy", "ft acc %", "pct"),
    ("status", "status", "s"),
)


def _mean(values: Sequence[Any]) -> Any:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return statistics.fmean(vals)


def summarize(records: Iterable[dict[str, Any]], kind: str = "policy") -> list[dict[str, Any]]:
    """One row per (model, variant): means over seeds (None when no seed has the value), the
    number of seeds, and status `ok` or `n failed: <first error>`. Float32's SQNR is +inf
    (identical logits). Sorted by model, then weight bytes (largest first), then SQNR."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    order: list[tuple[str, str]] = []
    for r in records:
        if r.get("kind", "policy") != kind:
            continue
        key = (r["model"], r["variant"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(r)
    rows = []
    for key in order:
        rs = groups[key]
        ok = [r for r in rs if r.get("status") == "ok"]
        failed = [r for r in rs if r.get("status") != "ok"]
        row: dict[str, Any] = {
            "model": key[0],
            "variant": key[1],
            "policy": rs[0].get("policy"),
            "n": len(ok),
        }
        for k in (
            "accuracy",
            "accuracy_delta",
            "loss",
            "weight_bytes",
            "bytes_ratio",
            "latency_ms",
            "finetune_accuracy",
            "float32_accuracy",
            "metric_value",
            "metric_delta",
            "float32_metric",
            "perplexity",
            "bits_per_byte",
            "mse",
            "finetune_metric",
        ):
            row[k] = _mean([r.get(k) for r in ok])
        first = ok[0] if ok else rs[0]
        row["task"] = first.get("task")
        row["metric"] = first.get("metric")
        row["higher_is_better"] = first.get("higher_is_better")
        f32 = row["float32_metric"]
        row["metric_delta_pct"] = (
            None
            if row["metric_delta"] is None or not f32
            else 100.0 * row["metric_delta"] / abs(f32)
        )
        sq = [r.get("sqnr_db") for r in ok]
        # null SQNR on an ok run means identical logits (infinite SQNR)
        row["sqnr_db"] = None if not ok else (math.inf if all(s is None for s in sq) else _mean(sq))
        first_error = str(failed[0].get("error")) if failed else None
        row["status"] = "ok" if not failed else f"{len(failed)} failed: {first_error.split(':')[0]}"
        row["error"] = first_error
        rows.append(row)

    def sort_key(row: dict[str, Any]) -> tuple:
        wb = row["weight_bytes"] if row["weight_bytes"] is not None else -1.0
        sq = row["sqnr_db"] if row["sqnr_db"] is not None else -math.inf
        return (row["model"], -wb, -sq, row["variant"])

    return sorted(rows, key=sort_key)


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "s":
        return str(value)
    if fmt == "d":
        return str(int(value))
    if fmt == "pct":
        return f"{100 * value:.1f}"
    if fmt == "dpct":
        return f"{100 * value:+.1f}"
    if fmt == "db":
        return "inf" if math.isinf(value) and value > 0 else f"{value:.1f}"
    if fmt == "bytes":
        return _human_bytes(value)
    return format(value, fmt)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def format_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str, str]] = SUMMARY_COLUMNS,
    max_width: int = 60,
) -> str:
    """An aligned plain-text table (text left, numbers right), a rule under the header, and a
    blank line between models."""
    cells = [[_fmt(r.get(k), f)[:max_width] for k, _, f in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    left = [f == "s" for _, _, f in columns]

    def line(vals: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if lft else v.rjust(w) for v, w, lft in zip(vals, widths, left, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(heads), "  ".join("-" * w for w in widths)]
    prev = None
    for r, c in zip(rows, cells, strict=True):
        if prev is not None and r.get("model") != prev:
            out.append("")
        prev = r.get("model")
        out.append(line(c))
    return "\n".join(out)


def write_csv(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike, columns: Sequence[str] | None = None
) -> None:
    """Write rows as CSV (raw values, not formatted; infinite SQNR written as `inf`)."""
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
