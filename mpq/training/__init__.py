"""Training with mpq layers: dynamic loss scaling, quantization-aware training, LoRA helpers
and conversion of existing PyTorch modules (see docs/training.md).

The layers import ``mpq.training.lora``, so the submodules that import the layers (``qat``,
``torch_import``, home of ``from_torch``) are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from mpq.training.loss_scaling import LossScaler

__all__ = ["FromTorchReport", "LossScaler", "from_torch", "qat"]

_LAZY = {
    "qat": ("mpq.training.qat", None),
    "from_torch": ("mpq.training.torch_import", "from_torch"),
    "FromTorchReport": ("mpq.training.torch_import", "FromTorchReport"),
}


def __getattr__(name: str) -> Any:
    entry = _LAZY.get(name)
    if entry is None:
        raise AttributeError(f"module 'mpq.training' has no attribute {name!r}")
    module = importlib.import_module(entry[0])
    value = module if entry[1] is None else getattr(module, entry[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
