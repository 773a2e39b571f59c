"""``to_torch_dtype``: the torch dtype of a format name, a torch dtype or a numpy/ml_dtypes dtype
(mpq's formats from the table, torch's other dtypes by name)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mpq.dtypes._formats import get

__all__ = ["to_torch_dtype"]


def to_torch_dtype(dtype: Any) -> torch.dtype:
    """A torch dtype from a name (``"bfloat16"``), a torch dtype or a numpy/ml_dtypes dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        fmt = get(dtype)
    except (TypeError, ValueError):  # not an mpq format (int64, bool, ...): torch's names
        fmt = None
    if fmt is not None and fmt.torch_dtype is not None:
        return fmt.torch_dtype
    name = dtype if isinstance(dtype, str) else _np_dtype_name(dtype)
    if name in ("bool", "bool_"):
        return torch.bool
    candidate = _TORCH_DTYPES.get(name) if isinstance(name, str) else None
    if candidate is not None:
        return candidate
    raise ValueError(
        "Expected a dtype with a torch equivalent such as 'float32' or 'bfloat16'. "
        f"Received: dtype={dtype!r} (of type {type(dtype).__name__})"
    )


# torch's dtypes by attribute name ("int64", "long", "bool", ...), read from the module's
# namespace: a name from a config is never passed to getattr(torch, ...), which would import
# torch's lazily loaded submodules (torch._inductor, torch.onnx, ...) for their names.
_TORCH_DTYPES: dict[str, torch.dtype] = {
    name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)
}


def _np_dtype_name(dtype: Any) -> str | None:
    try:
        name: str = np.dtype(dtype).name
    except TypeError:
        return None
    return name
