"""Quantized layer modes ("int8", "int4", "float8") for Dense, EinsumDense, Conv1D, Conv2D and
Embedding, the `QuantizationConfig` that describes them, and the model-level verb `quantize`.

Importing this package registers every scheme (one file per mode) with the layer registry.
"""

from mpq.quantization import float8, int4, int8  # noqa: F401  (register the schemes)
from mpq.quantization.config import QuantizationConfig

__all__ = ["QuantizationConfig"]
