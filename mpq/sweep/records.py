"""Sweep records: JSON Lines streaming and reading (for resume), aggregation over seeds, the
aligned terminal table, and `summary.csv`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RECORD_KEYS",
    "SUMMARY_COLUMNS",
    "JsonlWriter",
    "ResultsFileError",
    "ResultsScan",
    "format_table",
    "latest_by_hash",
    "read_jsonl",
    "scan_results",
    "set_aside_torn_tail",
    "summarize",
    "write_atomic",
    "write_csv",
]


def _clean(value: Any) -> Any:
    """JSON has no inf/nan: they are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Appends one record per line, each as a single write of the whole line followed by a
    flush and an fsync, so that the file holds only complete lines (a crash loses at most the
    runs in flight, never a written record).

    Example:
        >>> with JsonlWriter("out/results.jsonl") as w:
        ...     w.write({"model": "digits_cnn", "accuracy": 0.97})
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> JsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def write(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            raise RuntimeError(
                "Expected JsonlWriter to be used inside `with`. Received: a closed writer"
            )
        line = json.dumps({k: _clean(v) for k, v in record.items()}, allow_nan=False, default=str)
        data = memoryview((line + "\n").encode("utf-8"))
        while data:  # one write on local disks; the loop only guards against short writes
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Replace `path` with `data` all at once: written to a temporary file in the same
    directory, fsynced, then renamed over `path`, so a crash leaves the old or the new file,
    never half of one.

    Example:
        >>> write_atomic("summary.csv", "model,accuracy")
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: Keys that every line of results.jsonl has (runs and failures alike); resume needs them.
RECORD_KEYS: tuple[str, ...] = ("config_hash", "model", "variant", "seed", "status")


class ResultsFileError(ValueError):
    """A line of a JSON Lines results file that is not a record, other than a torn last line:
    the message names the file and the line, and the file is left as it is."""


@dataclass
class ResultsScan:
    """What `scan_results` found in a results file.

    Attributes:
        records: the complete, valid records, in file order.
        bad_lines: `(line number, reason)` of the lines skipped (with `skip_bad_lines`).
        torn_tail: the bytes after the last newline when they are not a valid record (a write
            cut short by a crash); empty when the file ends with a complete line.
        complete_bytes: the length of the file up to and including its last complete line.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    torn_tail: bytes = b""
    complete_bytes: int = 0


def _parse_record(raw: bytes, required: Sequence[str]) -> tuple[dict[str, Any] | None, str]:
    """`(record, "")` for a valid line, `(None, reason)` otherwise."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except json.JSONDecodeError as e:
        return None, f"is not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return None, f"is not a JSON object (a {type(obj).__name__})"
    missing = [k for k in required if k not in obj]
    if missing:
        return None, f"lacks the key(s) {missing}"
    return obj, ""


def scan_results(
    path: str | os.PathLike,
    *,
    skip_bad_lines: bool = False,
    required: Sequence[str] = RECORD_KEYS,
) -> ResultsScan:
    """Read a results file without changing it. A last line without its newline that is not a
    valid record is a torn tail (returned, not raised: `set_aside_torn_tail` deals with it).
    Any other bad line (torn JSON, not an object, a missing key) raises `ResultsFileError`
    naming the file and the line, or, with `skip_bad_lines`, is skipped and listed.

    Example:
        >>> scan_results("sweep-results/results.jsonl").records  # doctest: +SKIP
    """
    path = Path(path)
    scan = ResultsScan()
    if not path.exists():
        return scan
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    offset = 0
    for i, raw in enumerate(lines, start=1):
        offset += len(raw) + 1
        if not raw.strip():
            continue
        rec, reason = _parse_record(raw, required)
        if rec is not None:
            scan.records.append(rec)
            continue
        if not skip_bad_lines:
            keys = f" with keys {', '.join(required)}" if required else ""
            raise ResultsFileError(
                f"Expected one JSON record per line{keys} in {str(path)!r}. "
                f"Received: line {i} {reason}: {raw[:80].decode('utf-8', 'replace')!r}"
                ". The file is left as it is: rerun with --skip-bad-lines to skip such lines "
                "(their runs are computed again) or --overwrite to start a new file (the old one "
                "is kept aside)"
            )
        scan.bad_lines.append((i, reason))
    scan.complete_bytes = offset
    if tail.strip():
        rec, _ = _parse_record(tail, required)
        if rec is not None:  # complete but for its newline: keep it
            scan.records.append(rec)
        else:
            scan.torn_tail = tail
    return scan


def set_aside_torn_tail(path: str | os.PathLike, scan: ResultsScan) -> Path | None:
    """Make the file end with a complete line before anything is appended to it: a torn tail
    is copied to `<path>.torn-<UTC time>` (fsynced) and cut from the file, which keeps every
    complete record; a valid last record without its newline gets the newline. Returns where
    the tail went (None when there was none)."""
    path = Path(path)
    if not path.exists():
        return None
    size = path.stat().st_size
    if not scan.torn_tail:
        if size > scan.complete_bytes:  # a complete last record without its newline
            with path.open("ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.torn-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.torn-{stamp}-{n}")
    write_atomic(aside, scan.torn_tail)
    os.truncate(path, scan.complete_bytes)
    return aside


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSON Lines file ([] if absent); a torn last line (crash) is skipped, any
    other bad line raises `ResultsFileError` with the file and line number."""
    return scan_results(path, required=()).records


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
    """Write rows as CSV (raw values, not formatted; infinite SQNR written as `inf`), replacing
    the file at once (`write_atomic`)."""
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    write_atomic(path, buf.getvalue())
