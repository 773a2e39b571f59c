"""Sweep plots (matplotlib, Agg backend, no display): `sweep.png` (SQNR and accuracy against
weight bytes, one series per model) and the per-layer sensitivity heatmap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_per_layer", "plot_sweep"]


def _pyplot() -> type[Figure]:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "Expected matplotlib for sweep plots (`pip install mpq[sweep]`). "
            "Received: no module named 'matplotlib'"
        ) from None
    del matplotlib
    # A bare Figure renders with the Agg canvas: no pyplot, no display, no global backend change.
    from matplotlib.figure import Figure

    return Figure


def plot_sweep(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str = "mpq policy sweep"
) -> None:
    """Two panels sharing a log x axis (weight bytes): logits SQNR (dB) against the float32 run,
    and held-out accuracy; one series (colour, marker) per model; each point labelled with its
    policy. Float32 (infinite SQNR) is drawn on the top edge of the SQNR panel, marked "exact".

    `rows` are `records.summarize` rows (ok ones are plotted).
    """
    Figure = _pyplot()
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ax_s, ax_a = fig.subplots(1, 2, sharex=True)
    models = list(dict.fromkeys(r["model"] for r in rows))
    markers = "osD^vP*X"
    ok = [r for r in rows if r.get("n") and r.get("weight_bytes")]
    finite = [r["sqnr_db"] for r in ok if r["sqnr_db"] is not None and math.isfinite(r["sqnr_db"])]
    top = (max(finite) + 8) if finite else 60.0
    for i, model in enumerate(models):
        rs = sorted((r for r in ok if r["model"] == model), key=lambda r: r["weight_bytes"])
        if not rs:
            continue
        style = {
            "linestyle": "none",
            "marker": markers[i % len(markers)],
            "color": f"C{i}",
            "label": model,
        }
        sq_points, acc_points = _sweep_points(rs, top)
        _draw_series(ax_s, sq_points, style)
        _draw_series(ax_a, acc_points, style)
    for ax in (ax_s, ax_a):
        _bytes_axis(ax)
    ax_s.set_ylabel("logits SQNR vs float32 (dB, higher is better)")
    ax_a.set_ylabel("held-out accuracy (%)")
    ax_s.set_title("Fidelity")
    ax_a.set_title("Accuracy")
    if ok:
        ax_s.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


#: Labelled points of one panel: (x, y) -> the labels of the policies drawn there.
_Points = dict[tuple[float, float], list[str]]


def _sweep_points(rows: Sequence[Mapping[str, Any]], top: float) -> tuple[_Points, _Points]:
    """The SQNR and accuracy points of one model's rows (exact SQNR drawn at `top`; a row
    without an accuracy, such as a regression's, has no accuracy point)."""
    sq_points: _Points = {}
    acc_points: _Points = {}
    for r in rows:
        x = float(r["weight_bytes"])
        if r["sqnr_db"] is not None:
            exact = math.isinf(r["sqnr_db"])
            y = top if exact else round(float(r["sqnr_db"]), 1)
            sq_points.setdefault((x, y), []).append(r["variant"] + (" (exact)" if exact else ""))
        if r.get("accuracy") is not None:
            acc_points.setdefault((x, round(100 * r["accuracy"], 2)), []).append(r["variant"])
    return sq_points, acc_points


def _draw_series(ax: Any, points: _Points, style: Mapping[str, Any]) -> None:
    """One model's points in its style, coincident points sharing one label."""
    ax.plot([p[0] for p in points], [p[1] for p in points], **style)
    for (x, y), labels in points.items():
        ax.annotate(
            " / ".join(labels),
            (x, y),
            textcoords="offset points",
            xytext=(5, 3),
            fontsize=7,
            color=style["color"],
        )


def _bytes_axis(ax: Any) -> None:
    """A log2 x axis of weight bytes, ticks at powers of two (4 KiB, 8 KiB, ...): measured
    sizes crowd each other on a log axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from mpq.sweep.records import _human_bytes

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _human_bytes(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", which="major", labelsize=7, labelrotation=30)
    ax.margins(x=0.25, y=0.08)
    ax.set_xlabel("weight bytes (scales included, log scale)")
    ax.grid(True, which="both", alpha=0.3)


def plot_per_layer(
    panels: Sequence[tuple[str, list[str], list[str], list[list[float | None]]]],
    path: str | os.PathLike[str],
    failed: set[tuple[str, str, str]] | None = None,
) -> None:
    """Heatmaps of per-layer SQNR (dB): rows are layers, columns are variants, one panel per
    (model, seed) title; each cell annotated. Low (dark) cells are the layers to keep in higher
    precision. `panels` are `(title, layers, variants, matrix)` from `per_layer_matrix`; an empty
    cell reads "fail" when `(title, layer, variant)` is in `failed` (None: every empty cell), else
    "n/a" (not run: the layer has no scheme for the variant's mode)."""
    import numpy as np

    Figure = _pyplot()
    n = len(panels)
    height = max(2.5, sum(0.45 * len(p[1]) + 1.4 for p in panels))
    width = max(6.0, 0.9 * max(len(p[2]) for p in panels) + 3.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    finite = [v for p in panels for row in p[3] for v in row if v is not None and math.isfinite(v)]
    vmax = max(finite) if finite else 60.0
    vmin = min(finite) if finite else 0.0
    for ax, (title, layers, variants, matrix) in zip(axes, panels, strict=True):
        arr = np.array(
            [[np.nan if v is None else min(v, vmax) for v in row] for row in matrix], dtype=float
        )
        im = ax.imshow(arr, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), layers, fontsize=8)
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if v is None:
                    bad = failed is None or (title, layers[i], variants[j]) in failed
                    text = "fail" if bad else "n/a"
                else:
                    text = "inf" if math.isinf(v) else f"{v:.0f}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if (v is not None and v < (vmin + vmax) / 2) else "black",
                )
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label="SQNR dB")
    fig.suptitle("Per-layer sensitivity: one layer under the policy, the rest float32")
    _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Save as PNG all at once (`write_atomic`): a crash leaves the old picture or the new one."""
    import io

    from mpq.sweep.records import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    write_atomic(path, buf.getvalue())
