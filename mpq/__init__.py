"""mpq: mixed precision and quantization for PyTorch models.

Keras-3-style layers on `torch.nn.Module`, first-class dtype policies, quantization modes
(int8, int4, float8) and Triton kernels, plus tools to sweep a model over many policies.
`import mpq` is lean: it compiles no kernel, initialises no CUDA and changes no environment.
"""

from mpq import (
    activations,
    constraints,
    dtypes,
    initializers,
    kernels,
    layers,
    metrics,
    policy,
    quantizers,
    regularizers,
    saving,
)
from mpq.policy import dtype_policy, policy_scope, set_dtype_policy
from mpq.quantization import QuantizationConfig, calibrate, quantize
from mpq.training import LossScaler, from_torch, qat

__version__ = "0.1.0.dev0"

__all__ = [
    "LossScaler",
    "QuantizationConfig",
    "__version__",
    "activations",
    "calibrate",
    "constraints",
    "dtype_policy",
    "dtypes",
    "from_torch",
    "initializers",
    "kernels",
    "layers",
    "metrics",
    "policy",
    "policy_scope",
    "qat",
    "quantize",
    "quantizers",
    "regularizers",
    "saving",
    "set_dtype_policy",
]
