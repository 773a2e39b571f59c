"""Training with mpq layers: dynamic loss scaling, quantization-aware training, LoRA helpers
and conversion of existing PyTorch modules (see docs/training.md)."""

from mpq.training.loss_scaling import LossScaler

__all__ = ["LossScaler"]
