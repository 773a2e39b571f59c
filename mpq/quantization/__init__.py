"""Quantized layer modes ("int8", "int4", "float8") for Dense, EinsumDense, Conv1D, Conv2D and
Embedding, the `QuantizationConfig` that describes them, the model-level verb `quantize` and
`calibrate` (static float8 input scales).

Importing this package registers every scheme (one file per mode: int8.py, int4.py, float8.py,
float8_embedding.py for Embedding's float8 table, float8_static.py for float8 inference) with
the layer registry (`mpq.layers.quantization`). See docs/quantization.md, "Layer modes".
"""

from mpq.quantization import (  # noqa: F401  (register)
    float8,
    float8_embedding,
    float8_static,
    int4,
    int8,
)
from mpq.quantization.calibration import CalibrationReport, calibrate
from mpq.quantization.config import QuantizationConfig
from mpq.quantization.model import QuantizationReport, quantize, weight_bytes

__all__ = [
    "CalibrationReport",
    "QuantizationConfig",
    "QuantizationReport",
    "calibrate",
    "quantize",
    "weight_bytes",
]
