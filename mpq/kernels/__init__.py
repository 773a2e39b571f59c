"""mpq.kernels: matmul and conv2d in float32/16, bfloat16, float8 and int8 with fused epilogues.

CUDA tensors run Triton kernels, CPU tensors the torch reference; importing this module imports
no triton and touches no GPU (the Triton path is imported on its first call).
"""

from . import reference
from ._checks import ACTIVATIONS
from ._dispatch import BACKENDS, conv2d, matmul, matmul_int4, selected_backend, use_backend

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "conv2d",
    "matmul",
    "matmul_int4",
    "reference",
    "selected_backend",
    "use_backend",
]
