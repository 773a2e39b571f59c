"""Round-to-nearest: each layer's scheme rounds its own float weights (today's behaviour, the
default ``algorithm`` of ``mpq.quantize``); no calibration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mpq.policy.policies import QUANTIZATION_MODES
from mpq.quantization.algorithms import _base

if TYPE_CHECKING:
    from mpq.quantization.config import QuantizationConfig

__all__ = ["RTNConfig"]


@_base.register_algorithm
@dataclass(frozen=True)
class RTNConfig(_base.Algorithm):
    """Round-to-nearest (no options): every mode, every layer kind with a scheme.

    Example:
        >>> RTNConfig().name
        'rtn'
    """

    algorithm = "rtn"
    modes = QUANTIZATION_MODES
    needs_calibration = False

    def check_layer(self, layer: Any, cfg: QuantizationConfig) -> None:
        """Every layer with a scheme for the mode (checked by mpq.quantize)."""

    def apply(self, ctx: _base.AlgorithmContext) -> None:
        for layer in ctx.layers:
            ctx.quantize_layer(layer)
