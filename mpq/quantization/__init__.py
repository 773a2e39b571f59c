"""Quantized layer modes ("int8", "int4", "float8", the microscaling modes "mxfp8" ... "nvfp4")
for Dense, EinsumDense, Conv1D, Conv2D and Embedding, the `QuantizationConfig` that describes
them, the model-level verb `quantize`, `calibrate` (static float8 input scales), and the
algorithms that choose the codes (round-to-nearest, GPTQ, AWQ, SmoothQuant: `GPTQConfig`, ... as
`quantize(..., algorithm=...)`).

Importing this package registers every scheme (one file per mode: int8.py, int4.py, float8.py,
mx.py, float8_embedding.py for Embedding's float8 table, float8_static.py for float8 inference)
with the layer registry (`mpq.layers.quantization`). See docs/quantization.md, "Layer modes" and
"Algorithms".
"""

from mpq.quantization import (  # noqa: F401  (register)
    float8,
    float8_embedding,
    float8_static,
    int4,
    int8,
    mx,
)
from mpq.quantization.algorithms import AWQConfig, GPTQConfig, RTNConfig, SmoothQuantConfig
from mpq.quantization.calibration import CalibrationReport, calibrate
from mpq.quantization.config import QuantizationConfig
from mpq.quantization.model import QuantizationReport, quantize, weight_bytes

__all__ = [
    "AWQConfig",
    "CalibrationReport",
    "GPTQConfig",
    "QuantizationConfig",
    "QuantizationReport",
    "RTNConfig",
    "SmoothQuantConfig",
    "calibrate",
    "quantize",
    "weight_bytes",
]
