"""Sweep records: the one `Record` dataclass of a run (its fields are the keys of
`results.jsonl`), JSON Lines streaming and reading (for resume), the `SummaryRow` of a (model,
variant) over seeds (its fields are the columns of `summary.csv`), and the aligned table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpq.sweep.config import RunConfig

__all__ = [
    "CSV_COLUMNS",
    "RECORD_KEYS",
    "SUMMARY_COLUMNS",
    "JsonlWriter",
    "Record",
    "ResultsFileError",
    "ResultsScan",
    "SummaryRow",
    "format_table",
    "latest_by_hash",
    "read_jsonl",
    "scan_results",
    "set_aside_torn_tail",
    "summarize",
    "with_sweep_errors",
    "write_atomic",
    "write_csv",
]


# --------------------------------------------------------------------------------------------
# The record of one run
# --------------------------------------------------------------------------------------------
#: A JSON value as read back from a file or given by a user (arbitrary by nature).
JSON = Any


class _Row(Mapping[str, Any]):
    """A frozen dataclass that also reads as a mapping of its JSON form (`row["accuracy"]`,
    `row.get("sqnr_db")`, `dict(row)`), so code and files that know records as dicts keep
    working."""

    def as_dict(self) -> dict[str, JSON]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> JSON:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())


@dataclass(frozen=True, kw_only=True)
class Record(_Row):
    """One run of a sweep, as written to `results.jsonl` (one line each, keys in this order).

    Declared once: the JSONL keys are these fields (`traceback` only when there is one; keys a
    file has that this version does not know are kept in `extra` and written back), the
    summary rows average them (`summarize`), and the docs table lists them. The fields without
    a default (`RECORD_KEYS`) are the ones resume needs in every line.

    Example:
        >>> r = Record(config_hash="ab12", model="digits_mlp", variant="int8", seed=0, status="ok")
        >>> r["variant"], r.get("sqnr_db"), Record.from_dict(dict(r)) == r
        ('int8', None, True)
    """

    # What ran
    config_hash: str
    kind: str = "policy"  # "policy" | "per_layer" | "suggest"
    model: str
    variant: str
    policy: str | None = None
    quantize_config: dict[str, JSON] | None = None
    seed: int
    layer: str | None = None
    quick: bool | None = None
    status: str  # "ok" | "error"
    error: str | None = None
    # What it measured
    accuracy: float | None = None
    loss: float | None = None
    float32_accuracy: float | None = None
    accuracy_delta: float | None = None
    sqnr_db: float | None = None  # null on an ok run: identical outputs (infinite SQNR)
    weight_bytes: int | None = None
    float32_weight_bytes: int | None = None
    bytes_ratio: float | None = None
    layer_weight_bytes: int | None = None
    float32_layer_weight_bytes: int | None = None
    quantized_layers: int | None = None
    latency_ms: float | None = None
    latency_batch: int | None = None
    finetune_epochs: int | None = None
    finetune_accuracy: float | None = None
    finetune_loss: float | None = None
    task: str | None = None
    metric: str | None = None
    higher_is_better: bool | None = None
    metric_value: float | None = None
    float32_metric: float | None = None
    metric_delta: float | None = None
    perplexity: float | None = None
    bits_per_byte: float | None = None
    mse: float | None = None
    finetune_metric: float | None = None
    baseline_cached: bool | None = None
    train_epochs: int | None = None
    assignment: dict[str, str] | None = None
    # Where it ran (`experiment.environment`)
    device: str | None = None
    device_name: str | None = None
    torch_version: str | None = None
    triton_version: str | None = None
    mpq_version: str | None = None
    python_version: str | None = None
    host: str | None = None
    cpu_count: int | None = None
    torch_threads: int | None = None
    traceback: str | None = None  # written only when there is one
    duration_s: float | None = None
    timestamp: str | None = None
    extra: dict[str, JSON] = field(default_factory=dict)

    @classmethod
    def for_run(cls, run: RunConfig, **values: JSON) -> Record:
        """The record of `run`: its identity (hash, model, variant, seed, layers) and `values`."""
        v = run.variant
        return cls(
            config_hash=run.config_hash,
            kind=run.kind,
            model=run.model.resolved_name,
            variant=v.label,
            policy=v.policy,
            quantize_config=None if not v.quantize_config else dict(v.quantize_config),
            seed=run.seed,
            layer=None if run.layers is None else ",".join(run.layers),
            quick=run.quick,
            assignment=None
            if run.assignment is None
            else {path: var.label for path, var in run.assignment},
            **values,
        )

    @classmethod
    def sweep_error(cls, error: str) -> Record:
        """Not a run: the failures of a sweep outside any run (`kind="error"`; no hash, model
        or variant, seed -1), as `mpq.sweep.run` returns them last."""
        return cls(
            config_hash="", kind="error", model="", variant="", seed=-1, status="error", error=error
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, JSON]) -> Record:
        """A record from one parsed line of `results.jsonl` (this version's or an older one's;
        keys it lacks read as None, keys this version does not know go to `extra`)."""
        known = {k: v for k, v in data.items() if k in _RECORD_FIELDS}
        missing = [k for k in RECORD_KEYS if k not in known]
        if missing:
            raise ValueError(
                f"Expected a record with the keys {list(RECORD_KEYS)}. Received: a record "
                f"without {missing}"
            )
        return cls(**known, extra={k: v for k, v in data.items() if k not in _RECORD_FIELDS})

    def __getitem__(self, key: str) -> JSON:
        if key in _RECORD_FIELD_SET and not (key == "traceback" and self.traceback is None):
            return getattr(self, key)
        return self.extra[key]

    def as_dict(self) -> dict[str, JSON]:
        """The JSON form: one key per field, in order (`traceback` only when set), then `extra`."""
        out = {
            name: getattr(self, name)
            for name in _RECORD_FIELDS
            if not (name == "traceback" and self.traceback is None)
        }
        out.update(self.extra)
        return out


_RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Record) if f.name != "extra")
_RECORD_FIELD_SET = frozenset(_RECORD_FIELDS)

#: Keys that every line of results.jsonl has (runs and failures alike); resume needs them: the
#: fields of `Record` without a default.
RECORD_KEYS: tuple[str, ...] = tuple(
    f.name
    for f in fields(Record)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


def with_sweep_errors(records: Sequence[Record], errors: Sequence[str]) -> list[Record]:
    """What `mpq.sweep.run` returns: the records, then one `Record.sweep_error` for the
    failures outside any run (when there were some)."""
    if not errors:
        return list(records)
    return [*records, Record.sweep_error("; ".join(errors))]


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

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> JsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def write(self, record: Mapping[str, Any]) -> None:
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


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
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
    path: str | os.PathLike[str],
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


def set_aside_torn_tail(path: str | os.PathLike[str], scan: ResultsScan) -> Path | None:
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


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a JSON Lines file ([] if absent); a torn last line (crash) is skipped, any
    other bad line raises `ResultsFileError` with the file and line number."""
    return scan_results(path, required=()).records


def latest_by_hash(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The last record written for each config hash."""
    return {r["config_hash"]: r for r in records if "config_hash" in r}


# --------------------------------------------------------------------------------------------
# The summary of a (model, variant) over seeds
# --------------------------------------------------------------------------------------------
def _mean_of_runs() -> Any:
    """A `SummaryRow` field that is the mean over the ok runs of the `Record` field of its name."""
    return field(default=None, metadata={"mean": True})


@dataclass(frozen=True, kw_only=True)
class SummaryRow(_Row):
    """One (model, variant) of a sweep: means over its ok seeds (None when no seed has the
    value), the number of ok seeds `n`, and `status` `ok` or `"<k> failed: <first error>"`.

    Declared once: `summary.csv` has these columns in this order (`CSV_COLUMNS`: all but the
    two marked `csv=False`), the table (`SUMMARY_COLUMNS`) and report show some of them.
    """

    model: str
    variant: str
    policy: str | None = None
    n: int = 0
    accuracy: float | None = _mean_of_runs()
    accuracy_delta: float | None = _mean_of_runs()
    loss: float | None = _mean_of_runs()
    sqnr_db: float | None = None  # +inf: every ok run had identical outputs
    weight_bytes: float | None = _mean_of_runs()
    bytes_ratio: float | None = _mean_of_runs()
    latency_ms: float | None = _mean_of_runs()
    finetune_accuracy: float | None = _mean_of_runs()
    float32_accuracy: float | None = _mean_of_runs()
    task: str | None = None
    metric: str | None = None
    metric_value: float | None = _mean_of_runs()
    metric_delta: float | None = _mean_of_runs()
    metric_delta_pct: float | None = None
    float32_metric: float | None = _mean_of_runs()
    perplexity: float | None = _mean_of_runs()
    bits_per_byte: float | None = _mean_of_runs()
    mse: float | None = _mean_of_runs()
    status: str = "ok"
    error: str | None = None
    higher_is_better: bool | None = field(default=None, metadata={"csv": False})
    finetune_metric: float | None = field(default=None, metadata={"mean": True, "csv": False})

    def __getitem__(self, key: str) -> JSON:
        if key in _SUMMARY_FIELD_SET:
            return getattr(self, key)
        raise KeyError(key)

    def as_dict(self) -> dict[str, JSON]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_SUMMARY_FIELD_SET = frozenset(f.name for f in fields(SummaryRow))

#: The columns of `summary.csv`, in order.
CSV_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in fields(SummaryRow) if f.metadata.get("csv", True)
)
_MEANS: tuple[str, ...] = tuple(f.name for f in fields(SummaryRow) if f.metadata.get("mean"))

# (SummaryRow field, header, format) of the terminal table and report.html.
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


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return statistics.fmean(vals)


def _summary_row(key: tuple[str, str], runs: Sequence[Mapping[str, JSON]]) -> SummaryRow:
    """The `SummaryRow` of one (model, variant) from its records."""
    ok = [r for r in runs if r.get("status") == "ok"]
    failed = [r for r in runs if r.get("status") != "ok"]
    means = {k: _mean([r.get(k) for r in ok]) for k in _MEANS}
    first = ok[0] if ok else runs[0]
    f32, delta = means["float32_metric"], means["metric_delta"]
    sq = [r.get("sqnr_db") for r in ok]
    first_error = str(failed[0].get("error")) if failed else None
    return SummaryRow(
        model=key[0],
        variant=key[1],
        policy=runs[0].get("policy"),
        n=len(ok),
        **means,
        task=first.get("task"),
        metric=first.get("metric"),
        higher_is_better=first.get("higher_is_better"),
        metric_delta_pct=None if delta is None or not f32 else 100.0 * delta / abs(f32),
        # null SQNR on an ok run means identical logits (infinite SQNR)
        sqnr_db=None if not ok else (math.inf if all(s is None for s in sq) else _mean(sq)),
        status="ok"
        if first_error is None
        else f"{len(failed)} failed: {first_error.split(':')[0]}",
        error=first_error,
    )


def _summary_order(row: SummaryRow) -> tuple[str, float, float, str]:
    """By model, then weight bytes (largest first), then SQNR (best first), then label."""
    wb = row.weight_bytes if row.weight_bytes is not None else -1.0
    sq = row.sqnr_db if row.sqnr_db is not None else -math.inf
    return (row.model, -wb, -sq, row.variant)


def summarize(records: Iterable[Mapping[str, JSON]], kind: str = "policy") -> list[SummaryRow]:
    """One `SummaryRow` per (model, variant) of the records of `kind` (`Record`s or their
    dicts). Float32's SQNR is +inf (identical logits). Sorted by model, then weight bytes
    (largest first), then SQNR."""
    groups: dict[tuple[str, str], list[Mapping[str, JSON]]] = {}
    for r in records:
        if r.get("kind", "policy") == kind:
            groups.setdefault((r["model"], r["variant"]), []).append(r)
    return sorted((_summary_row(k, rs) for k, rs in groups.items()), key=_summary_order)


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
    rows: Sequence[Mapping[str, Any]],
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
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
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
