"""Charts to decide from and one self-contained page: the Pareto chart of each model's task
metric against weight bytes and against latency (`pareto.png`), and `report.html` with the
summary table and every PNG of the sweep embedded (base64; no other file needed).
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["pareto_front", "plot_pareto", "write_report"]

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
        return frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1

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


def _label(ax, x, y, text, color, dx, dy, renderer, remove):
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


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> list[str]:
    """One column per model, rows: metric against weight bytes, and against latency (when
    measured). One point per policy, labelled without overlaps; the Pareto front as a step line;
    the float32 value as a dashed reference line. `rows` are `records.summarize` rows with
    `metric`, `metric_value`, `higher_is_better`. Returns the models drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from mpq.sweep.records import _human_bytes

    ok = [r for r in rows if r.get("n") and r.get("metric_value") is not None]
    models = list(dict.fromkeys(r["model"] for r in ok))
    if not models:
        raise ValueError("Expected at least one ok run with a metric to plot. Received: none")
    has_latency = any(r.get("latency_ms") for r in ok)
    axes_rows = [("weight_bytes", "weight bytes (log scale)")]
    if has_latency:
        axes_rows.append(("latency_ms", "latency per batch (ms, log scale)"))
    fig = Figure(figsize=(5.2 * len(models), 4.2 * len(axes_rows)), layout="constrained")
    canvas = FigureCanvasAgg(fig)
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


def _table_html(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    from mpq.sweep.records import _fmt

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
    out: str | os.PathLike,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    images: Sequence[str | os.PathLike] = (),
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
