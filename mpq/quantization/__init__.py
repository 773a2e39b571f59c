"""Quantized layer modes ("int8", "int4", "float8", the microscaling modes "mxfp8" ... "nvfp4")
for Dense, EinsumDense, Conv1D, Conv2D and Embedding, the `QuantizationConfig` that describes
them, the model-level verb `quantize`, and the algorithms that choose the codes (round-to-nearest,
GPTQ, AWQ, SmoothQuant: `GPTQConfig`, ... as `quantize(..., algorithm=...)`).

Importing this package registers every scheme (one file per mode: int8.py, int4.py, float8.py,
mx.py, and float8_embedding.py for Embedding's float8 table) with the layer registry
(`mpq.layers.quantization`). See docs/quantization.md, "Layer modes" and "Algorithms".
"""

from mpq.quantization import float8, float8_embedding, int4, int8, mx  # noqa: F401  (register)
from mpq.quantization.algorithms import AWQConfig, GPTQConfig, RTNConfig, SmoothQuantConfig
from mpq.quantization.config import QuantizationConfig
from mpq.quantization.model import QuantizationReport, quantize, weight_bytes

__all__ = [
    "AWQConfig",
    "GPTQConfig",
    "QuantizationConfig",
    "QuantizationReport",
    "RTNConfig",
    "SmoothQuantConfig",
    "quantize",
    "weight_bytes",
]
