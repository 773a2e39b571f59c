"""Fake quantization (quantize then dequantize in float) with a straight-through estimator, for QAT.

The forward value is bit-identical to `dequantize(quantize(...))`; the backward pass lets the
gradient through where the saturating clamp did not change the result and blocks it elsewhere.

Gradient rule (`v = x / scale` in float32):

* integer formats: 1 where `qlo <= round_half_even(v) + zero <= qhi`, else 0 (PyTorch's
  `fake_quantize_per_tensor_affine` rule). `[qlo, qhi]` is `[-qmax, qmax]` without a zero point
  (int8 [-127, 127], int4 [-7, 7]) and the storage range with one (int4 [-8, 7], int8 [-128, 127]).
* float8 formats: 1 where round-to-nearest-even of `v` without saturation is finite and at most
  `fmt_max` in magnitude (e4m3fn: |v| <= 464, e5m2: |v| < 61440), else 0.
* NaN inputs get gradient 0. `scale` and `zero` are treated as constants (no gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mpq.dtypes import DTypeLike
from mpq.quantizers import _common as C
from mpq.quantizers.float8 import compute_float8_scale
from mpq.quantizers.integer import (
    Axes,
    _asymmetric_params,
    _check_params,
    _reduce,
    _symmetric_scale,
)

__all__ = ["fake_quantize", "fake_quantize_dynamic"]


class _StraightThrough(torch.autograd.Function):
    """y = fn(x) forward (fn returns the value and a bool mask); dx = dy * mask backward."""

    @staticmethod
    def forward(
        ctx: Any,  # torch's autograd context: its stubs lack `saved_tensors`
        x: torch.Tensor,
        fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        y, mask = fn(x)
        ctx.save_for_backward(mask)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)), None


def _straight_through(
    x: torch.Tensor, fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    out: torch.Tensor = _StraightThrough.apply(x, fn)  # type: ignore[no-untyped-call]  # torch: unannotated
    return out


def _int_fake(
    scale: torch.Tensor, zero: torch.Tensor | None, spec: C.IntFormat
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def fn(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.round(t.to(torch.float32) / scale)
        if zero is None:
            lo, hi = -spec.qmax, spec.qmax
        else:
            lo, hi = spec.qmin, spec.qmax
            r = r + zero
        mask = (r >= lo) & (r <= hi)
        q = r.clamp(lo, hi)
        if zero is not None:
            q = q - zero
        return (q * scale).to(t.dtype), mask

    return fn


def _float8_fake(
    scale: torch.Tensor, spec: C.Float8Format
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def fn(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = t.to(torch.float32) / scale
        mag = v.abs()
        mask = (mag <= spec.sat_bound) if spec.sat_inclusive else (mag < spec.sat_bound)
        q = v.clamp(-spec.max, spec.max).to(spec.torch_dtype).to(torch.float32)
        return (q * scale).to(t.dtype), mask

    return fn


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None = None,
    *,
    fmt: DTypeLike = "int8",
    group_size: int | None = None,
    group_axis: int | None = None,
) -> torch.Tensor:
    """Quantize-dequantize `x` with given parameters; straight-through gradient (module docstring).

    Forward, in float32 then cast to `x.dtype`:

    * int formats: `dequantize(quantize_with_scale(x, scale, zero, fmt=fmt), scale, zero)`;
    * float8 formats: `quantize_dequantize(x, scale, fmt)` (`zero` must be None).

    Args:
        x: floating tensor of shape `S` (may require grad).
        scale: float dequantization scale broadcasting to `S`, or grouped (see `group_size`).
        zero: optional int zero point shaped like `scale` (integer formats only).
        fmt: "int8", "int4", "float8_e4m3fn", "float8_e5m2", ...
        group_size, group_axis: grouped parameters, as in `dequantize`.

    Returns:
        tensor of shape `S` and dtype `x.dtype`.

    Example:
        >>> x = torch.tensor([0.2, 1.0, 9.0], requires_grad=True)
        >>> y = fake_quantize(x, torch.tensor(1.0), fmt="int4")
        >>> y.sum().backward()
        >>> y.detach(), x.grad
        (tensor([0., 1., 7.]), tensor([1., 1., 0.]))
    """
    C.check_float_tensor(x, "x", allow_empty=True)
    spec = C.any_format(fmt)
    if isinstance(spec, C.Float8Format) and zero is not None:
        raise ValueError(
            f"Expected no zero point for float8 format {spec.name!r}. "
            f"Received: zero of shape {tuple(zero.shape)}"
        )
    shape = tuple(x.shape)
    axis = _check_params(shape, scale, zero, group_size, group_axis)
    scale32 = scale.detach().to(torch.float32)
    zero32 = None if zero is None else zero.to(torch.float32)
    if axis is not None and group_size is not None:  # grouped: `_check_params` checked both
        scale32 = C.expand_groups(scale32, axis, group_size, shape[axis])
        if zero32 is not None:
            zero32 = C.expand_groups(zero32, axis, group_size, shape[axis])
    if isinstance(spec, C.Float8Format):
        fn = _float8_fake(scale32, spec)
    else:
        fn = _int_fake(scale32, zero32, spec)
    return _straight_through(x, fn)


def fake_quantize_dynamic(
    x: torch.Tensor,
    fmt: DTypeLike = "int8",
    *,
    reduce_axes: Axes = None,
    group_size: int | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """Fake-quantize with parameters computed from `x` itself (abs-max or min/max, no gradient).

    Parameters are those of `quantize_symmetric` (`symmetric=True`) or `quantize_asymmetric`
    (`symmetric=False`, integer formats only); for float8 formats the scale is
    `compute_float8_scale(amax, 1, fmt)` per reduced slice/group (1.0 for an all-zero slice).
    Then `fake_quantize`. Symmetric abs-max never saturates, so finite inputs get gradient 1
    everywhere; asymmetric can saturate at a tie on the range ends (gradient 0 there).
    NaN/inf are not checked: they propagate to their slice.

    Args:
        x: floating tensor of shape `S`, non-empty.
        fmt: "int8", "int4" or a float8 format.
        reduce_axes, group_size: as in `quantize_symmetric`.
        symmetric: abs-max (True) or min/max with zero point (False).

    Returns:
        tensor of shape `S` and dtype `x.dtype`.

    Example:
        >>> x = torch.randn(4, 16, requires_grad=True)
        >>> y = fake_quantize_dynamic(x, "int4", reduce_axes=-1, group_size=8)
        >>> y.shape
        torch.Size([4, 16])
    """
    C.check_float_tensor(x, "x")
    spec = C.any_format(fmt)
    if group_size is not None:
        C.check_int_arg(group_size, "group_size", minimum=1)
    if not isinstance(symmetric, bool):
        raise TypeError(f"Expected `symmetric` to be a bool. Received: symmetric={symmetric!r}")
    x32 = x.detach().to(torch.float32)
    zero = None
    if isinstance(spec, C.Float8Format):
        if not symmetric:
            raise ValueError(
                f"Expected symmetric=True for float8 format {spec.name!r} (float8 has no zero "
                "point). Received: symmetric=False"
            )
        (amax,), axis = _reduce(x32, reduce_axes, group_size, ("absmax",))
        scale = compute_float8_scale(amax, torch.ones_like(amax), spec.name)
    elif symmetric:
        scale, axis = _symmetric_scale(x32, spec, reduce_axes, group_size)
    else:
        scale, zero, axis = _asymmetric_params(x32, spec, reduce_axes, group_size)
        zero = zero.to(torch.int8)
    if axis is None:
        return fake_quantize(x, scale, zero, fmt=spec.name)
    return fake_quantize(x, scale, zero, fmt=spec.name, group_size=group_size, group_axis=axis)
