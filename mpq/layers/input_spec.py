"""`InputSpec`: what a layer accepts (rank, dtype, fixed axes); checked on every call.

Keras 3 semantics; the error names the layer, the input index and the shape received.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["InputSpec", "assert_input_compatibility"]


class InputSpec:
    """Constraints on one input of a layer.

    Args:
        dtype: expected dtype (name or torch dtype), checked after autocast.
        shape: full expected shape; ``None`` entries match anything.
        ndim / max_ndim / min_ndim: rank constraints.
        axes: ``{axis: size}`` for axes with a fixed size (negative axes count from the end).

    >>> InputSpec(min_ndim=2, axes={-1: 64})
    InputSpec(min_ndim=2, axes={-1: 64})
    """

    def __init__(
        self,
        dtype: Any = None,
        shape: tuple[int | None, ...] | None = None,
        ndim: int | None = None,
        max_ndim: int | None = None,
        min_ndim: int | None = None,
        axes: dict[int, int | None] | None = None,
        allow_last_axis_squeeze: bool = False,
        name: str | None = None,
        optional: bool = False,
    ):
        if dtype is not None:
            from mpq.layers.variables import to_torch_dtype

            dtype = to_torch_dtype(dtype)
        self.dtype = dtype
        self.shape = tuple(shape) if shape is not None else None
        self.ndim = len(self.shape) if self.shape is not None else ndim
        self.max_ndim, self.min_ndim = max_ndim, min_ndim
        self.name, self.optional = name, optional
        self.allow_last_axis_squeeze = allow_last_axis_squeeze
        try:
            self.axes = {int(k): v for k, v in (axes or {}).items()}
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"Expected `axes` to be a dict with int keys. Received: axes={axes!r}"
            ) from e
        self._axes_items = tuple((k, v) for k, v in self.axes.items() if v is not None)
        if self.axes and (self.ndim is not None or self.max_ndim is not None):
            top = self.ndim if self.ndim is not None else self.max_ndim
            if top is not None and max(self.axes) >= top:
                raise ValueError(
                    f"Axis {max(self.axes)} is greater than the maximum allowed value: "
                    f"{top - 1}. Received: axes={self.axes}"
                )

    def check(self, x: Any, layer_name: str, index: int = 0) -> None:
        """Raise if ``x`` breaks this spec (a fast pass; the detailed check builds the error)."""
        if isinstance(x, torch.Tensor):
            ndim = x.dim()
            if (
                (self.ndim is None or ndim == self.ndim)
                and (self.min_ndim is None or ndim >= self.min_ndim)
                and (self.max_ndim is None or ndim <= self.max_ndim)
                and (self.dtype is None or x.dtype == self.dtype)
                and self.shape is None
            ):
                shape = x.shape
                for axis, size in self._axes_items:
                    if not -ndim <= axis < ndim or shape[axis] != size:
                        break
                else:
                    return
        _check_one(self, x, index, layer_name)

    def __repr__(self) -> str:
        parts = [
            f"{k}={v!r}"
            for k, v in (
                ("dtype", self.dtype),
                ("shape", self.shape),
                ("ndim", None if self.shape is not None else self.ndim),
                ("max_ndim", self.max_ndim),
                ("min_ndim", self.min_ndim),
                ("axes", self.axes or None),
            )
            if v is not None
        ]
        return f"InputSpec({', '.join(parts)})"

    def get_config(self) -> dict[str, Any]:
        return {
            "dtype": None if self.dtype is None else str(self.dtype).removeprefix("torch."),
            "shape": self.shape,
            "ndim": self.ndim,
            "max_ndim": self.max_ndim,
            "min_ndim": self.min_ndim,
            "axes": self.axes,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> InputSpec:
        return cls(**config)


def _fail(layer_name: str, index: int, what: str, shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f'Input {index} of layer "{layer_name}" is incompatible with the layer: {what}. '
        f"Full shape received: {shape}"
    )


def _check_one(spec: InputSpec, x: Any, index: int, layer_name: str) -> None:
    if not isinstance(x, torch.Tensor):
        if x is None and spec.optional:
            return
        raise TypeError(
            f'Input {index} of layer "{layer_name}" should be a tensor. '
            f"Received: {x!r} (of type {type(x).__name__})"
        )
    shape = tuple(x.shape)
    ndim = len(shape)
    if spec.ndim is not None and ndim != spec.ndim and not spec.allow_last_axis_squeeze:
        raise _fail(layer_name, index, f"expected ndim={spec.ndim}, found ndim={ndim}", shape)
    if spec.max_ndim is not None and ndim > spec.max_ndim:
        raise _fail(
            layer_name, index, f"expected max_ndim={spec.max_ndim}, found ndim={ndim}", shape
        )
    if spec.min_ndim is not None and ndim < spec.min_ndim:
        raise _fail(
            layer_name, index, f"expected min_ndim={spec.min_ndim}, found ndim={ndim}", shape
        )
    if spec.dtype is not None and x.dtype != spec.dtype:
        raise _fail(layer_name, index, f"expected dtype={spec.dtype}, found dtype={x.dtype}", shape)
    for axis, size in spec.axes.items():
        if size is None:
            continue
        if not -ndim <= axis < ndim or shape[axis] != size:
            raise _fail(
                layer_name,
                index,
                f"expected axis {axis} of input shape to have value {size}",
                shape,
            )
    if spec.shape is not None:
        for expected, got in zip(spec.shape, shape, strict=False):
            if expected is not None and expected != got:
                raise _fail(layer_name, index, f"expected shape={spec.shape}", shape)


def assert_input_compatibility(
    input_spec: InputSpec | list[InputSpec] | None, inputs: Any, layer_name: str
) -> None:
    """Raise ValueError/TypeError if ``inputs`` (a tensor or a list of them) break the spec."""
    if input_spec is None:
        return
    if isinstance(input_spec, InputSpec):
        input_spec.check(inputs, layer_name)
        return
    specs = list(input_spec)
    if isinstance(inputs, dict):
        inputs = [inputs.get(s.name) for s in specs]
    flat = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if len(flat) != len(specs):
        raise ValueError(
            f'Layer "{layer_name}" expects {len(specs)} input(s), but it received '
            f"{len(flat)} input tensors."
        )
    for i, (spec, x) in enumerate(zip(specs, flat, strict=True)):
        if spec is not None:
            spec.check(x, layer_name, i)
