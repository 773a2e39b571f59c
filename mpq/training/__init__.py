"""Training with mpq layers: dynamic loss scaling, quantization-aware training and conversion
of existing PyTorch modules (see docs/training.md). LoRA lives on the layers themselves
(`layer.enable_lora`, `mpq.layers.lora`).
"""

from mpq.training import qat
from mpq.training.loss_scaling import LossScaler
from mpq.training.torch_import import FromTorchReport, from_torch

__all__ = ["FromTorchReport", "LossScaler", "from_torch", "qat"]
