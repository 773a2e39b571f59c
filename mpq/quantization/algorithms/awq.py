"""AWQ (Lin et al. 2023, arXiv:2306.00978): activation-aware weight quantization. Per input
channel ``j`` a scale ``s_j = mean|x_j|^alpha`` (normalised by ``sqrt(max(s) * min(s))``), with
``alpha`` searched on a grid to minimise the layer's output error on the calibration data after
int4 round-to-nearest of ``W * s``; ``1/s`` is folded into the previous layer, then the scaled
kernel is quantized (int4, per channel or grouped). See docs/quantization.md, "Algorithms".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mpq._errors import describe as _describe
from mpq.quantization.algorithms import _base
from mpq.quantizers import dequantize, quantize_asymmetric, quantize_symmetric

if TYPE_CHECKING:
    from mpq.quantization.config import QuantizationConfig

__all__ = ["AWQConfig", "awq_search"]


@_base.register_algorithm
@dataclass(frozen=True)
class AWQConfig(_base.Algorithm):
    """AWQ options.

    Args:
        grid: number of ``alpha`` values tried, ``alpha = i / grid`` for ``i`` in
            ``0 .. grid - 1`` (``alpha = 0`` is round-to-nearest, so on the calibration data
            AWQ is never worse than it). Default 20.
        min_rows: fewer calibration rows reaching a layer raise ValueError (default 32).

    Example:
        >>> AWQConfig(grid=10).name
        'awq'
    """

    algorithm = "awq"
    modes = ("int4",)

    grid: int = 20
    min_rows: int = 32

    def __post_init__(self) -> None:
        for arg in ("grid", "min_rows"):
            value = getattr(self, arg)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"Expected `{arg}` to be an int >= 1. Received: {arg}={_describe(value)}"
                )

    def check_layer(self, layer: Any, cfg: QuantizationConfig) -> None:
        _base.check_dense(self.algorithm, layer)

    def apply(self, ctx: _base.AlgorithmContext) -> None:
        for layer in ctx.layers:
            x = _base.inputs(ctx.model, layer, ctx.batches)[0]  # [M, K]
            if x.shape[0] < self.min_rows:
                raise ValueError(
                    f"Expected at least min_rows={self.min_rows} calibration rows reaching layer "
                    f"{layer.path!r}. Received: {x.shape[0]} row(s)"
                )
            w = _base.matrix(layer)[0]  # [N, K]
            s, alpha = awq_search(x, w, ctx.config.block_size, self.grid)
            if alpha > 0:
                _base.fold_input_scale(ctx, layer, s, self.algorithm)
        for layer in ctx.layers:
            ctx.quantize_layer(layer)


def _rtn_int4(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """Round-to-nearest int4 of ``w [N, K]``, dequantized (float64): the int4 scheme's math."""
    w32 = w.to(torch.float32)
    if block_size == -1:
        q, scale = quantize_symmetric(w32, "int4", reduce_axes=-1)
        return (q.to(torch.float32) * scale).to(torch.float64)
    q, scale, zero = quantize_asymmetric(w32, "int4", reduce_axes=-1, group_size=block_size)
    return dequantize(q, scale, zero, group_size=block_size, group_axis=-1).to(torch.float64)


def awq_search(
    x: torch.Tensor, w: torch.Tensor, block_size: int, grid: int
) -> tuple[torch.Tensor, float]:
    """The AWQ input scale ``s [K]`` and its ``alpha`` for inputs ``x [M, K]`` and kernel
    ``w [N, K]``: the grid point with the lowest mean squared output error
    ``|x W^T - (x / s) Q(W * s)^T|^2`` (ties: the smaller alpha)."""
    x = x.to(torch.float64)
    w = w.to(torch.float64)
    ref = x @ w.T
    mean = x.abs().mean(0).clamp_min(1e-8)
    best = (float("inf"), torch.ones_like(mean), 0.0)
    for i in range(grid):
        alpha = i / grid
        s = mean.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = float(((x / s) @ _rtn_int4(w * s, block_size).T - ref).pow(2).mean())
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]
