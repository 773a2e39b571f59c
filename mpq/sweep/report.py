"""The last step of a sweep (`write_outputs`): the summary table and CSV, the charts to decide
from (the Pareto chart of each model's task metric against weight bytes and against latency,
`pareto.png`), the per-layer table and heatmap, the verified suggestions, and `report.html`
with the summary table and every PNG of the sweep embedded (base64; no other file needed).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from mpq import policy as mpq_policy
from mpq.sweep.plan import Plan, Suggest
from mpq.sweep.records import (
    CSV_COLUMNS,
    SUMMARY_COLUMNS,
    Record,
    SummaryRow,
    _fmt,
    _human_bytes,
    format_table,
    write_atomic,
    write_csv,
)
from mpq.sweep.runner import Outcome
from mpq.sweep.sensitivity import Suggestion

__all__ = ["pareto_front", "plot_pareto", "write_outputs", "write_report"]

#: Label offsets tried in turn (points), until the label overlaps no label drawn before it.
_OFFSETS = [(6, 4), (6, -11), (-6, 4), (-6, -11), (6, 16), (6, -23), (-6, 16), (-6, -23)]
_OFFSETS += [(6, 28 + 12 * i) for i in range(8)] + [(6, -35 - 12 * i) for i in range(8)]


def pareto_front(
    points: Sequence[tuple[float, float]], higher_is_better: bool
) -> list[tuple[float, float]]:
    """The non-dominated points (less x is better; y better by `higher_is_better`), by x.

    Example:
        >>> pareto_front([(1, 0.5), (2, 0.9), (3, 0.8), (4, 0.95)], higher_is_better=True)
        [(1, 0.5), (2, 0.9), (4, 0.95)]
    """
    sign = 1.0 if higher_is_better else -1.0
    front: list[tuple[float, float]] = []
    best = -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * y > best:
            front.append((x, y))
            best = sign * y
    return front


def _place_labels(ax: Any, renderer: Any, items: list[tuple[float, float, str, str]]) -> None:
    """Annotate each (x, y, text, colour) at the first offset whose box overlaps no earlier
    label nor the legend and stays inside the axes; else at the first that overlaps nothing."""
    legend = ax.get_legend()
    placed: list[Any] = [legend.get_window_extent(renderer)] if legend is not None else []
    frame = ax.get_window_extent(renderer)

    def inside(b: Any) -> bool:
        return bool(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1)

    for x, y, text, color in items:
        fallback = None
        chosen = None
        for dx, dy in _OFFSETS:
            box = _label(ax, x, y, text, color, dx, dy, renderer, remove=True)
            if any(box.overlaps(b) for b in placed):
                continue
            if inside(box):
                chosen = (dx, dy)
                break
            fallback = fallback or (dx, dy)
        dx, dy = chosen or fallback or _OFFSETS[-1]
        placed.append(_label(ax, x, y, text, color, dx, dy, renderer, remove=False))


def _label(
    ax: Any,
    x: float,
    y: float,
    text: str,
    color: str,
    dx: int,
    dy: int,
    renderer: Any,
    remove: bool,
) -> Any:
    """Draw one label at offset (dx, dy) points; its box, padded by 3 px (a visible gap)."""
    ann = ax.annotate(
        text,
        (x, y),
        textcoords="offset points",
        xytext=(dx, dy),
        fontsize=7,
        color=color,
        ha="left" if dx > 0 else "right",
        arrowprops={"arrowstyle": "-", "color": color, "alpha": 0.4, "lw": 0.5}
        if abs(dy) > 16
        else None,
    )
    box = ann.get_window_extent(renderer).padded(3)
    if remove:
        ann.remove()
    return box


def plot_pareto(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> list[str]:
    """One column per model, rows: metric against weight bytes, and against latency (when
    measured). One point per policy, labelled without overlaps; the Pareto front as a step line;
    the float32 value as a dashed reference line. `rows` are `records.summarize` rows with
    `metric`, `metric_value`, `higher_is_better`. Returns the models drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ok = [r for r in rows if r.get("n") and r.get("metric_value") is not None]
    models = list(dict.fromkeys(r["model"] for r in ok))
    if not models:
        raise ValueError("Expected at least one ok run with a metric to plot. Received: none")
    has_latency = any(r.get("latency_ms") for r in ok)
    axes_rows = [("weight_bytes", "weight bytes (log scale)")]
    if has_latency:
        axes_rows.append(("latency_ms", "latency per batch (ms, log scale)"))
    fig = Figure(figsize=(5.2 * len(models), 4.2 * len(axes_rows)), layout="constrained")
    canvas: Any = FigureCanvasAgg(fig)  # its renderer API is untyped
    axes = fig.subplots(len(axes_rows), len(models), squeeze=False)
    for j, model in enumerate(models):
        rs = [r for r in ok if r["model"] == model]
        metric = rs[0]["metric"]
        hib = bool(rs[0].get("higher_is_better"))
        f32 = next((r["metric_value"] for r in rs if r["variant"] == "float32"), None)
        if f32 is None:
            f32 = rs[0].get("float32_metric")
        for i, (key, xlabel) in enumerate(axes_rows):
            ax = axes[i][j]
            pts = [
                (float(r[key]), float(r["metric_value"]), r["variant"]) for r in rs if r.get(key)
            ]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color="C0", ms=4)
            front = pareto_front([(x, y) for x, y, _ in pts], hib)
            ax.step(
                [p[0] for p in front], [p[1] for p in front], where="post", color="C1",
                lw=1, alpha=0.7, label="Pareto front",
            )  # fmt: skip
            if f32 is not None:
                ax.axhline(f32, color="0.4", ls="--", lw=0.8, label=f"float32 = {f32:.4g}")
            ax.set_xscale("log", base=2)
            if key == "weight_bytes":
                ax.xaxis.set_major_locator(LogLocator(base=2))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: _human_bytes(v)))
                ax.xaxis.set_minor_formatter(NullFormatter())
            else:
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(axis="x", labelsize=7, labelrotation=30)
            ax.margins(x=0.3, y=0.25)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel(xlabel, fontsize=8)
            better = "higher" if hib else "lower"
            ax.set_ylabel(f"{metric} ({better} is better)", fontsize=8)
            ax.set_title(model if i == 0 else f"{model}: against latency", fontsize=9)
            ax.legend(loc="best", fontsize=7)
            renderer = canvas.get_renderer()
            fig.canvas.draw()  # fixes the layout, so label boxes are where they will be drawn
            items = sorted(((x, y, v, "C0") for x, y, v in pts), key=lambda p: (-p[1], p[0]))
            _place_labels(ax, renderer, items)
    fig.suptitle("Task metric against cost, one point per policy (float32 dashed)")
    fig.savefig(os.fspath(path), dpi=130)
    return models


def _table_html(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns)
    body = []
    for r in rows:
        cells = "".join(
            f"<td class={'t' if f == 's' else 'n'}>{html.escape(_fmt(r.get(k), f))}</td>"
            for k, _, f in columns
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_report(
    out: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    images: Sequence[str | os.PathLike[str]] = (),
    title: str = "mpq policy sweep",
    notes: Sequence[str] = (),
) -> Path:
    """Write `out/report.html`: the summary table and each existing PNG in `images`, embedded as
    base64 data, so the one file can be mailed or archived. Returns its path."""
    out = Path(out)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:90em}"
        "table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:2px 8px}td.n{text-align:right}"
        "th{background:#eee}img{max-width:100%;margin:1em 0}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts += ["<h2>Summary</h2>", _table_html(rows, columns)]
    for img in images:
        p = Path(img)
        if not p.is_file():
            continue
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f"<h2>{html.escape(p.name)}</h2>")
        parts.append(f"<img alt='{html.escape(p.name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path = out / "report.html"
    tmp = out / ".report.html.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# The sweep's outputs: the last step of `mpq.sweep.run`
# --------------------------------------------------------------------------------------------
class _Say:
    """Prints a line to `stream` (default stdout) when `verbose`."""

    def __init__(self, verbose: bool, stream: TextIO | None):
        self.verbose, self.stream = verbose, stream

    def __call__(self, text: str = "") -> None:
        if self.verbose:
            print(text, file=self.stream if self.stream is not None else sys.stdout)


def write_outputs(
    plan: Plan,
    outcome: Outcome,
    rows: Sequence[SummaryRow],
    verbose: bool = True,
    stream: TextIO | None = None,
) -> None:
    """Write what a sweep reports from its records: `summary.csv` and the table, `sweep.png`
    and `pareto.png`, the per-layer table, CSV and heatmap, `report.html`, the verified
    suggestions (`suggested_policy_map.json`) and a closing summary of the failures."""
    out = plan.output.out
    say = _Say(verbose, stream)
    write_csv(rows, out / "summary.csv", CSV_COLUMNS)
    say()
    say(format_table(rows))
    images = _write_plots(plan, rows)
    if plan.per_layer:
        _report_per_layer(plan, outcome.records, say)
        images.append(out / "per_layer.png")
    if plan.output.plot:
        n_ok = sum(r.status == "ok" for r in outcome.records)
        write_report(
            out,
            rows,
            SUMMARY_COLUMNS,
            images,
            notes=[
                f"{len(outcome.records)} runs ({n_ok} ok) of {len(plan.models)} model(s) on "
                f"{plan.execution.device}. Value: each model's task metric; vs f32 %: its change "
                "against the float32 run; SQNR: the outputs against float32's."
            ],
        )
    if plan.suggest is not None:
        _report_suggestions(plan, plan.suggest, outcome, say)
    _report_failures(plan, outcome, say)


def _write_plots(plan: Plan, rows: Sequence[SummaryRow]) -> list[Path]:
    """`sweep.png` and (when some run has a metric) `pareto.png`; the images written."""
    out = plan.output.out
    images: list[Path] = []
    if plan.output.plot and rows:
        from mpq.sweep.plots import plot_sweep

        plot_sweep(rows, out / "sweep.png")
        if any(r.n and r.metric_value is not None for r in rows):
            plot_pareto(rows, out / "pareto.png")
            images.append(out / "pareto.png")
        images.append(out / "sweep.png")
    return images


def _report_failures(plan: Plan, outcome: Outcome, say: _Say) -> None:
    records = outcome.records
    n_failed = sum(r.status != "ok" for r in records) + len(outcome.errors)
    say()
    say(
        f"{len(records)} runs, {n_failed} failed. Results in {plan.output.out}/: results.jsonl, "
        "summary.csv" + (", pareto.png, sweep.png, report.html" if plan.output.plot else "")
    )
    by_error: dict[str, list[str]] = {}
    for r in records:
        if r.status != "ok":
            where = f"{r.model} {r.variant}" + (f"@{r.layer}" if r.layer else "")
            by_error.setdefault(str(r.error), []).append(f"{where} (seed {r.seed})")
    for error, runs in by_error.items():
        shown = ", ".join(runs[:6]) + (f" and {len(runs) - 6} more" if len(runs) > 6 else "")
        say(f"  {len(runs)} failed with {error}\n    {shown}")
    for e in outcome.errors:
        say(f"  failed: {e}")


def _report_per_layer(plan: Plan, records: Sequence[Record], say: _Say) -> None:
    """The per-layer SQNR table of each model (first seed), `per_layer.csv` and the heatmap."""
    from mpq.sweep.sensitivity import per_layer_matrix, per_layer_rows

    panels: list[tuple[str, list[str], list[str], list[list[float | None]]]] = []
    csv_rows: list[dict[str, Any]] = []
    failed: set[tuple[str, str, str]] = set()
    seed = plan.seeds[0]
    for model in plan.models:
        name = model.resolved_name
        rows = per_layer_rows(records, name, seed, ok_only=False)
        if not rows:
            continue
        layers, variants, matrix = per_layer_matrix(rows)
        title = f"{name} (seed {seed})"
        panels.append((title, layers, variants, matrix))
        failed |= {(title, r["layer"], r["variant"]) for r in rows if r.get("status") != "ok"}
        table_rows = []
        for layer, vals in zip(layers, matrix, strict=True):
            row: dict[str, Any] = {"model": name, "layer": layer}
            row.update({v: val for v, val in zip(variants, vals, strict=True)})
            table_rows.append(row)
            csv_rows.append(
                {
                    k: ("inf" if isinstance(v, float) and math.isinf(v) else v)
                    for k, v in row.items()
                }
            )
        cols = [("model", "model", "s"), ("layer", "layer", "s")] + [(v, v, "db") for v in variants]
        say()
        say(f"Per-layer SQNR (dB) of {name}: one layer under the policy, the rest float32")
        say(format_table(table_rows, cols))
    if csv_rows:
        write_csv(csv_rows, plan.output.out / "per_layer.csv")
        if plan.output.plot:
            from mpq.sweep.plots import plot_per_layer

            plot_per_layer(panels, plan.output.out / "per_layer.png", failed)


def _report_suggestions(plan: Plan, step: Suggest, outcome: Outcome, say: _Say) -> None:
    """Each model's verified candidates, cheapest first; the cheapest that met the target
    goes to `suggested_policy_map.json`."""
    chosen: dict[str, Any] = {}
    for model in plan.models:
        name = model.resolved_name
        verify = [r for r in outcome.records if r.kind == "suggest" and r.model == name]
        say()
        if not verify:
            say(
                f"Suggestion for {name}: no assignment reaches the predicted SQNR target of {step.target_sqnr} dB"
            )
            continue
        say(f"Suggested policy maps for {name} (target {step.target_sqnr} dB), cheapest first:")
        best = _report_candidates(step, verify, outcome.suggestions.get(name, []), say)
        if best is None:
            say("  none of the candidates met the target when verified")
            continue
        pmap = _policy_map(step, best)
        chosen[name] = {
            "policy_map": mpq_policy.serialize(pmap),
            "measured_sqnr_db": best.sqnr_db,
            "accuracy": best.accuracy,
            "weight_bytes": best.weight_bytes,
            "float32_weight_bytes": best.float32_weight_bytes,
            "target_sqnr_db": step.target_sqnr,
        }
        say(f"  -> {pmap!r}")
    if chosen:
        write_atomic(
            plan.output.out / "suggested_policy_map.json",
            json.dumps(chosen, indent=2, allow_nan=False, default=str),
        )


def _report_candidates(
    step: Suggest, verify: Sequence[Record], candidates: Sequence[Suggestion], say: _Say
) -> Record | None:
    """One line per verification run, cheapest first; returns the cheapest that met the target."""
    predicted = {tuple(sorted(c.assignment)): c.predicted_sqnr_db for c in candidates}
    best = None
    for r in sorted(verify, key=lambda r: r.weight_bytes or math.inf):
        sq = math.inf if r.status == "ok" and r.sqnr_db is None else r.sqnr_db
        ok = r.status == "ok" and sq is not None and sq >= step.target_sqnr
        assignment = r.assignment or {}
        desc = ", ".join(f"{p}: {v}" for p, v in assignment.items())
        measured = "failed: " + str(r.error) if r.status != "ok" else f"{sq:.1f} dB"
        pred = predicted.get(tuple(sorted(assignment.items())))
        pred_text = "" if pred is None else f"predicted {pred:.1f} dB, "
        size = _human_bytes(r.weight_bytes) if r.weight_bytes else "-"
        say(f"  {'OK ' if ok else 'no '} {size:>10}  {pred_text}measured {measured}  [{desc}]")
        if ok and best is None:
            best = r
    return best


def _policy_map(step: Suggest, best: Record) -> mpq_policy.DTypePolicyMap:
    names = step.policy_names()
    assignment = best.assignment or {}
    return mpq_policy.DTypePolicyMap(
        "float32", {p: names[v] for p, v in assignment.items() if v != "float32"}
    )
