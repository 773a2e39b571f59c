"""Keras-style masks: a layer's output mask rides on its output tensor, so the next layer finds
it without being told (`Embedding(mask_zero=True)` -> a layer whose `call` takes `mask`).

A mask travels as an attribute of the tensor (`get_mask(x)`); an explicit `mask=` argument to a
call wins over it. A layer's output mask is `layer.compute_mask(inputs, previous_mask)`: the
previous mask unchanged for layers that support masking, None for the others, and a new mask
for layers that make one (Embedding) or merge several (Add, Concatenate).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["get_mask"]

_ATTR = "_mpq_mask"


def get_mask(x: Any) -> Any:
    """The mask carried by ``x`` (a tensor), or by each tensor of a list/tuple; None if none.

    Example:
        >>> from mpq.layers import Embedding
        >>> emb = Embedding(10, 2, mask_zero=True)
        >>> get_mask(emb(torch.tensor([[3, 0]])))
        tensor([[ True, False]])
    """
    if isinstance(x, torch.Tensor):
        return getattr(x, _ATTR, None)
    if isinstance(x, (list, tuple)):
        masks = [getattr(t, _ATTR, None) if isinstance(t, torch.Tensor) else None for t in x]
        return masks if any(m is not None for m in masks) else None
    return None


def set_mask(outputs: Any, mask: Any) -> None:
    """Attach ``mask`` to ``outputs`` (a tensor); nothing to attach, or no tensor: no-op."""
    if mask is not None and isinstance(outputs, torch.Tensor):
        setattr(outputs, _ATTR, mask)
