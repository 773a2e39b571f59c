"""SmoothQuant (Xiao et al. 2022, arXiv:2211.10438): move activation outliers into the weights
before W8A8. Per input channel ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``; ``1/s`` is folded
into the previous layer and ``W * s`` is quantized to int8 (W8A8, dynamic per-row int8 inputs).
See docs/quantization.md, "Algorithms".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mpq._errors import describe as _describe
from mpq.quantization.algorithms import _base

if TYPE_CHECKING:
    from mpq.quantization.config import QuantizationConfig

__all__ = ["SmoothQuantConfig", "smoothing_scale"]


@_base.register_algorithm
@dataclass(frozen=True)
class SmoothQuantConfig(_base.Algorithm):
    """SmoothQuant options.

    Args:
        alpha: migration strength in [0, 1] (default 0.5; 0 leaves activations as they are).

    Example:
        >>> SmoothQuantConfig(alpha=0.8).name
        'smoothquant'
    """

    algorithm = "smoothquant"
    modes = ("int8",)

    alpha: float = 0.5

    def __post_init__(self) -> None:
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
            raise ValueError(f"Expected `alpha` in [0, 1]. Received: alpha={_describe(a)}")

    def check_mode(self, cfg: QuantizationConfig) -> None:
        super().check_mode(cfg)
        if cfg.weight_only:
            raise ValueError(
                "Expected W8A8 (weight_only=False) for smoothquant: it balances activation and "
                f"weight quantization. Received: mode={cfg.name!r}"
            )

    def check_layer(self, layer: Any, cfg: QuantizationConfig) -> None:
        _base.check_dense(self.algorithm, layer)

    def apply(self, ctx: _base.AlgorithmContext) -> None:
        for layer in ctx.layers:
            amax: list[torch.Tensor] = []

            def consume(rows: torch.Tensor, amax: list[torch.Tensor] = amax) -> None:
                m = rows[0].abs().amax(0)
                amax[:] = [m if not amax else torch.maximum(amax[0], m)]

            _base.capture(ctx.model, layer, ctx.batches, consume)
            w = _base.matrix(layer)[0]
            _base.fold_input_scale(
                ctx, layer, smoothing_scale(amax[0], w, self.alpha), self.algorithm
            )
        for layer in ctx.layers:
            ctx.quantize_layer(layer)


def smoothing_scale(x_amax: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^alpha / max_n |W_nj|^(1 - alpha)`` (float64 ``[K]``), 1 where either
    maximum is 0."""
    w_amax = w.to(torch.float64).abs().amax(0)
    x_amax = x_amax.to(torch.float64)
    ok = (x_amax > 0) & (w_amax > 0)
    s = x_amax.clamp_min(1e-12).pow(alpha) / w_amax.clamp_min(1e-12).pow(1 - alpha)
    return torch.where(ok, s, 1.0)
