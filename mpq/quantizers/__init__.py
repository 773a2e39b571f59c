"""Quantizers: pure functions that quantize, dequantize and pack tensors (int8, int4, float8,
the OCP microscaling formats and NVFP4).

One convention everywhere: scales are dequantization scales, `x ~= q * scale` (and
`x ~= (q - zero) * scale` with zero points). See docs/quantization.md for the formulas.
"""

from mpq.quantizers.fake_quant import fake_quantize, fake_quantize_dynamic
from mpq.quantizers.float8 import (
    compute_amax,
    compute_float8_scale,
    delayed_scaling_update,
    dequantize_float8,
    float8_max,
    quantize_dequantize,
    quantize_float8,
    update_amax_history,
)
from mpq.quantizers.integer import (
    dequantize,
    quantize_asymmetric,
    quantize_symmetric,
    quantize_with_scale,
)
from mpq.quantizers.mx import (
    dequantize_mx,
    dequantize_nvfp4,
    quantize_mx,
    quantize_nvfp4,
)
from mpq.quantizers.packing import pack_int4, unpack_int4

__all__ = [
    "compute_amax",
    "compute_float8_scale",
    "delayed_scaling_update",
    "dequantize",
    "dequantize_float8",
    "dequantize_mx",
    "dequantize_nvfp4",
    "fake_quantize",
    "fake_quantize_dynamic",
    "float8_max",
    "pack_int4",
    "quantize_asymmetric",
    "quantize_dequantize",
    "quantize_float8",
    "quantize_mx",
    "quantize_nvfp4",
    "quantize_symmetric",
    "quantize_with_scale",
    "unpack_int4",
    "update_amax_history",
]
