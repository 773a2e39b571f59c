"""Quantized layer modes ("int8", "int4", "float8") for Dense, EinsumDense, Conv1D, Conv2D and
Embedding, the `QuantizationConfig` that describes them, and the model-level verb `quantize`.

Importing this package registers every scheme (one file per mode: int8.py, int4.py, float8.py,
and float8_embedding.py for Embedding's float8 table) with the layer registry
(`mpq.layers.quantization`). See docs/quantization.md, "Layer modes".
"""

from mpq.quantization import float8, float8_embedding, int4, int8, mx  # noqa: F401  (register)
from mpq.quantization.config import QuantizationConfig
from mpq.quantization.model import QuantizationReport, quantize, weight_bytes

__all__ = ["QuantizationConfig", "QuantizationReport", "quantize", "weight_bytes"]
