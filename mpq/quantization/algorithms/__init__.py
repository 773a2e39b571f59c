"""Algorithms that decide a quantized layer's codes: round-to-nearest (``"rtn"``, the default),
GPTQ, AWQ and SmoothQuant. Each is a frozen config class in its own file, registered by name;
``mpq.quantize(model, mode, algorithm=..., calibration=batches)`` runs them. See
docs/quantization.md, "Algorithms".
"""

from mpq.quantization.algorithms._base import (
    Algorithm,
    AlgorithmContext,
    algorithm_names,
    check_calibration,
    get_algorithm,
    register_algorithm,
)
from mpq.quantization.algorithms.awq import AWQConfig
from mpq.quantization.algorithms.gptq import GPTQConfig
from mpq.quantization.algorithms.rtn import RTNConfig
from mpq.quantization.algorithms.smoothquant import SmoothQuantConfig

__all__ = [
    "AWQConfig",
    "Algorithm",
    "AlgorithmContext",
    "GPTQConfig",
    "RTNConfig",
    "SmoothQuantConfig",
    "algorithm_names",
    "check_calibration",
    "get_algorithm",
    "register_algorithm",
]
