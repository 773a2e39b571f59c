"""Merge layers on a list of tensors (Keras 3 semantics): Add (broadcasting sum) and
Concatenate (along one axis), with their mask rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mpq.layers.base import Layer
from mpq.layers.serialization import register_layer

__all__ = ["Add", "Concatenate"]

Shape = tuple[int | None, ...]


def _is_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list, torch.Size)) and all(
        d is None or isinstance(d, int) for d in value
    )


def _check_shape_list(input_shape: Any, layer: str) -> list[Shape]:
    if (
        not isinstance(input_shape, (tuple, list))
        or not input_shape
        or not all(_is_shape(s) for s in input_shape)
    ):
        raise ValueError(
            f"Expected {layer} to be called on a non-empty list of tensors. "
            f"Received: input_shape={input_shape!r}"
        )
    return [tuple(s) for s in input_shape]


def _check_tensor_list(inputs: Any, layer: str) -> list[torch.Tensor]:
    if not isinstance(inputs, (tuple, list)) or not inputs:
        raise ValueError(
            f"Expected {layer} to be called on a non-empty list of tensors. "
            f"Received: inputs of type {type(inputs).__name__}"
        )
    return list(inputs)


def _check_mask_list(mask: Any, inputs: Sequence[torch.Tensor]) -> None:
    """A merge's masks: one (or None) per input."""
    if not isinstance(mask, (tuple, list)) or len(mask) != len(inputs):
        raise ValueError(
            f"Expected one mask (or None) per input ({len(inputs)}). Received: mask={mask!r}"
        )


def _broadcast_pair(a: Shape, b: Shape, shapes: Sequence[Shape]) -> Shape:
    if len(a) < len(b):
        a, b = b, a
    out = list(a[: len(a) - len(b)])
    for i, j in zip(a[len(a) - len(b) :], b, strict=True):
        if i is None or j is None:
            # broadcasting an unknown size with a known one > 1 gives the known one
            known = j if i is None else i
            out.append(known if known not in (None, 1) else None)
        elif i == 1 or j == 1 or i == j:
            out.append(j if i == 1 else i)
        else:
            raise ValueError(
                f"Expected input shapes that broadcast together. Received: shapes={list(shapes)}"
            )
    return tuple(out)


@register_layer("mpq")
class Add(Layer):
    """Element-wise sum of a list of tensors with broadcasting; lower-rank inputs get axes
    inserted after the batch axis (Keras 3). Masks: the output mask is the OR of the input
    masks (None if any input has none).

    >>> Add()([torch.ones(2, 3), torch.ones(2, 3)]).tolist()
    [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]) -> Shape:
        shapes = _check_shape_list(input_shape, "Add")
        batch = {s[0] for s in shapes if s} - {None}
        if len(batch) > 1:
            raise ValueError(f"Expected inputs with one batch size. Received: shapes={shapes}")
        out: Shape = shapes[0][1:]
        for s in shapes[1:]:
            out = _broadcast_pair(out, s[1:], shapes)
        return (batch.pop() if batch else None, *out)

    def build(self, input_shape: Any = None) -> None:  # a list of shapes
        self.compute_output_shape(input_shape)

    def call(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        tensors = _check_tensor_list(inputs, "Add")
        ndim = max(t.ndim for t in tensors)
        expanded = []
        for t in tensors:
            while t.ndim < ndim:
                t = t.unsqueeze(1)
            expanded.append(t)
        out = expanded[0]
        for t in expanded[1:]:
            out = out + t
        return out

    def compute_mask(
        self, inputs: Sequence[torch.Tensor], mask: Sequence[torch.Tensor | None] | None = None
    ) -> torch.Tensor | None:
        if mask is None:
            return None
        _check_mask_list(mask, inputs)
        masks = [m for m in mask if m is not None]
        if len(masks) < len(mask):
            return None
        out = masks[0]
        for m in masks[1:]:
            out = out | m
        return out


@register_layer("mpq")
class Concatenate(Layer):
    """Concatenates a list of tensors along `axis` (default -1); all other axes must agree.
    Masks: inputs without a mask count as all-valid; the masks are concatenated along `axis`
    and reduced with OR over the last axis (Keras 3).

    >>> Concatenate()([torch.zeros(2, 3), torch.zeros(2, 5)]).shape
    torch.Size([2, 8])
    """

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise TypeError(
                f"Expected `axis` to be an int. Received: axis={axis!r} "
                f"(of type {type(axis).__name__})"
            )
        self.axis = axis
        self.supports_masking = True

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]) -> Shape:
        shapes = _check_shape_list(input_shape, "Concatenate")
        ranks = {len(s) for s in shapes}
        if len(ranks) != 1:
            raise ValueError(
                f"Expected inputs of one rank for Concatenate. Received: shapes={shapes}"
            )
        rank = ranks.pop()
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"Expected axis in [-{rank}, {rank}) for inputs of rank {rank}. "
                f"Received: axis={self.axis}"
            )
        axis = self.axis % rank
        out: list[int | None] = []
        for i in range(rank):
            dims = [s[i] for s in shapes]
            if i == axis:
                sizes = [d for d in dims if d is not None]
                out.append(None if len(sizes) < len(dims) else sum(sizes))
                continue
            known = set(dims) - {None}
            if len(known) > 1:
                raise ValueError(
                    f"Expected inputs that agree on every axis but axis={self.axis}. "
                    f"Received: shapes={shapes}"
                )
            out.append(known.pop() if known else None)
        return tuple(out)

    def build(self, input_shape: Any = None) -> None:  # a list of shapes
        self.compute_output_shape(input_shape)

    def call(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        tensors = _check_tensor_list(inputs, "Concatenate")
        return torch.cat(tensors, dim=self.axis)

    def compute_mask(
        self, inputs: Sequence[torch.Tensor], mask: Sequence[torch.Tensor | None] | None = None
    ) -> torch.Tensor | None:
        if mask is None:
            return None
        _check_mask_list(mask, inputs)
        if all(m is None for m in mask):
            return None
        full = []
        for x, m in zip(inputs, mask, strict=True):
            if m is None:
                m = torch.ones(x.shape, dtype=torch.bool, device=x.device)
            while m.ndim < x.ndim:
                m = m.unsqueeze(-1)
            full.append(m.expand(x.shape))
        return torch.cat(full, dim=self.axis).any(dim=-1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"axis": self.axis})
        return config
