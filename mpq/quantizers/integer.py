"""Integer quantization (int8, int4) with dequantization scales: `x ~= (q - zero) * scale`.

Symmetric abs-max (per-tensor, per-channel over any axes, per-group along one axis) and asymmetric
min/max with zero points (Keras 3's grouped int4 scheme), plus `dequantize`. Pure tensor functions.

Conventions shared by every function here:

* Scales are *dequantization* scales, float32: `x ~= q * scale` (symmetric) and
  `x ~= (q - zero) * scale` (asymmetric). `q` and `zero` are int8 tensors (int4 values are held in
  int8, packed separately by `pack_int4`).
* `reduce_axes` names the axes *reduced over*, as in `numpy.max(axis=...)`: all elements that share
  their indices on the remaining axes share one scale. `None` reduces every axis (per-tensor);
  `()` reduces none (one scale per element). Per-output-channel of a `[in, out]` kernel is
  `reduce_axes=0`; per-row (per-token) of `[batch, seq, features]` inputs is `reduce_axes=-1`.
* With `group_size=g`, `reduce_axes` must be one axis; it is cut into consecutive groups of `g`
  (the last one possibly shorter) and each group gets its own scale. Scales then keep that axis with
  `ceil(n / g)` entries instead of 1; pass the same `group_size` and the axis as `group_axis` to
  `dequantize` / `quantize_with_scale`.
* All arithmetic is float32 (float16/bfloat16 inputs are widened exactly, float64 inputs are rounded
  to float32 first); rounding is half-to-even (`torch.round`); the epsilon floors the statistic
  before the division: `scale = max(stat, 1e-7) / qrange` (in float32).
"""

from __future__ import annotations

import torch

from mpq.dtypes import DTypeLike
from mpq.quantizers import _common as C

__all__ = ["dequantize", "quantize_asymmetric", "quantize_symmetric", "quantize_with_scale"]

Axes = int | tuple[int, ...] | list[int] | None


def _reduce(
    x32: torch.Tensor, reduce_axes: Axes, group_size: int | None, ops: tuple[str, ...]
) -> tuple[list[torch.Tensor], int | None]:
    """Statistics ("absmax", "min", "max") over `reduce_axes` (keepdims) or per group.

    Returns the statistics and the group axis (None when not grouped).
    """
    fns = {
        "absmax": lambda t, **kw: torch.amax(t.abs(), **kw),
        "min": lambda t, **kw: torch.amin(t, **kw),
        "max": lambda t, **kw: torch.amax(t, **kw),
    }
    if group_size is None:
        axes = C.normalize_reduce_axes(reduce_axes, x32.dim())
        if not axes:  # torch reduces everything for dim=(), so handle "no reduction" here
            return [x32.abs() if op == "absmax" else x32.clone() for op in ops], None
        return [fns[op](x32, dim=axes, keepdim=True) for op in ops], None
    axis = C.group_axis_of(reduce_axes, x32.dim())
    g = C.grouped(x32, axis, group_size)
    return [C.ungroup_stat(fns[op](g, dim=-1), axis) for op in ops], axis


def _full(t: torch.Tensor, axis: int | None, group_size: int | None, size: int) -> torch.Tensor:
    if axis is None or group_size is None:  # not grouped (`_check_params` gives both or neither)
        return t
    return C.expand_groups(t, axis, group_size, size)


def _symmetric_scale(
    x32: torch.Tensor, spec: C.IntFormat, reduce_axes: Axes, group_size: int | None
) -> tuple[torch.Tensor, int | None]:
    """`max(absmax, eps) / qmax` (float32, compact shape) and the group axis. Internal."""
    (absmax,), axis = _reduce(x32, reduce_axes, group_size, ("absmax",))
    return torch.clamp_min(absmax, C.EPS) / spec.qmax, axis


def _asymmetric_params(
    x32: torch.Tensor, spec: C.IntFormat, reduce_axes: Axes, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """Float32 `scale`, float32 integer-valued `zero` (compact shapes) and the group axis."""
    (mn, mx), axis = _reduce(x32, reduce_axes, group_size, ("min", "max"))
    lo = torch.clamp_max(mn, 0.0)
    hi = torch.clamp_min(mx, 0.0)
    scale = torch.clamp_min(hi - lo, C.EPS) / (spec.qmax - spec.qmin)
    zero = torch.round(-lo / scale).add_(spec.qmin).clamp_(spec.qmin, spec.qmax)
    return scale, zero, axis


def _prepare(
    x: object, fmt: DTypeLike, group_size: object, check_finite: bool
) -> tuple[torch.Tensor, C.IntFormat]:
    x = C.check_float_tensor(x, "x")
    spec = C.int_format(fmt)
    if group_size is not None:
        C.check_int_arg(group_size, "group_size", minimum=1)
    if check_finite:
        C.require_finite(x, "x")
    return x.to(torch.float32), spec


def quantize_symmetric(
    x: torch.Tensor,
    fmt: DTypeLike = "int8",
    *,
    reduce_axes: Axes = None,
    group_size: int | None = None,
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric abs-max quantization: `scale = max(absmax, 1e-7) / qmax`, `q = round(x / scale)`.

    Ranges as in Keras 3: int8 `qmax = 127` (q in [-127, 127]); int4 `qmax = 7` (q in [-7, 7]; -8 is
    a valid stored int4 value but symmetric quantization never produces it). In float32::

        absmax = max |x|               over reduce_axes (or over each group)
        scale  = max(absmax, 1e-7) / qmax
        q      = clip(round_half_even(x / scale), -qmax, qmax)

    Args:
        x: floating tensor of any shape `S` (float32/float16/bfloat16; float64 is rounded to
            float32). Must be non-empty.
        fmt: "int8" or "int4" (or torch.int8).
        reduce_axes: axes sharing one scale (see the module docstring). None = per-tensor.
        group_size: if given, `reduce_axes` is a single axis cut into groups of this size.
        check_finite: raise ValueError on NaN/inf in `x` (synchronises with the device). With
            False, a non-finite value makes its scale non-finite and its `q` unspecified.

    Returns:
        `(q, scale)`: `q` int8 of shape `S`; `scale` float32 with the rank of `x`, size 1 on the
        reduced axes (keepdims, broadcasts against `q`), or `ceil(n / group_size)` on the grouped
        axis.

    Example:
        >>> w = torch.randn(64, 32)                      # [in, out] kernel
        >>> q, scale = quantize_symmetric(w, "int8", reduce_axes=0)   # per output channel
        >>> q.dtype, scale.shape
        (torch.int8, torch.Size([1, 32]))
        >>> w_hat = dequantize(q, scale)                 # q * scale
    """
    x32, spec = _prepare(x, fmt, group_size, check_finite)
    scale, axis = _symmetric_scale(x32, spec, reduce_axes, group_size)
    full = _full(scale, axis, group_size, x32.shape[axis] if axis is not None else 0)
    q = torch.round(x32 / full).clamp_(-spec.qmax, spec.qmax).to(torch.int8)
    return q, scale


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) symmetric int8 over the last axis for mpq's own hot paths: the codes
    and scales of ``quantize_symmetric(x, "int8", reduce_axes=-1, check_finite=False)``, bit for
    bit (the same float32 ops in the same order), without its argument handling.

    ``x``: a float32/float16/bfloat16/float64 tensor the caller has validated; an empty one goes
    through ``quantize_symmetric`` (which raises). Not exported: user code calls
    ``quantize_symmetric``.
    """
    if x.numel() == 0:
        return quantize_symmetric(x, "int8", reduce_axes=-1, check_finite=False)
    x32 = x if x.dtype == torch.float32 else x.to(torch.float32)
    # scale = max(absmax, eps) / 127; q = clip(round_half_even(x / scale), -127, 127)
    scale = torch.amax(x32.abs(), dim=-1, keepdim=True).clamp_min_(C.EPS).div_(127)
    q = torch.div(x32, scale).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_asymmetric(
    x: torch.Tensor,
    fmt: DTypeLike = "int4",
    *,
    reduce_axes: Axes = None,
    group_size: int | None = None,
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min/max quantization with an integer zero point: `x ~= (q - zero) * scale`.

    Keras 3's sub-channel int4 scheme, generalised to any axes. With `[qmin, qmax]` the full storage
    range (int4 [-8, 7], int8 [-128, 127]), in float32::

        lo    = min(min x, 0)          over reduce_axes (or each group): the range always holds 0,
        hi    = max(max x, 0)          so the zero point is representable and 0 is exact
        scale = max(hi - lo, 1e-7) / (qmax - qmin)        # int4: / 15
        zero  = clip(round_half_even(-lo / scale) + qmin, qmin, qmax)
        q     = clip(round_half_even(x / scale) + zero, qmin, qmax)

    An all-zero group gets `scale = 1e-7 / 15`, `zero = qmin`, `q = qmin`, which dequantizes to 0.
    (Keras adds the epsilon to the range and floors the scale at float32 `tiny`; mpq uses the same
    `max(stat, eps)` floor as the symmetric quantizer, so scales are exactly `(hi - lo) / 15`.)

    Args:
        x: floating tensor of shape `S`, non-empty.
        fmt: "int4" (default) or "int8".
        reduce_axes: axes sharing one (scale, zero) pair. None = per-tensor. For the Keras grouped
            int4 kernel scheme on an `[in, out]` kernel: `reduce_axes=0, group_size=128`.
        group_size: if given, `reduce_axes` is a single axis cut into groups of this size.
        check_finite: raise ValueError on NaN/inf in `x`, or when `hi - lo` overflows float32.

    Returns:
        `(q, scale, zero)`: `q` int8 of shape `S`; `scale` float32 and `zero` int8, both shaped
        like `quantize_symmetric`'s scale (keepdims, or `ceil(n / group_size)` on the group axis).

    Example:
        >>> w = torch.randn(256, 32)                     # [in, out] kernel
        >>> q, scale, zero = quantize_asymmetric(w, "int4", reduce_axes=0, group_size=128)
        >>> scale.shape, zero.dtype
        (torch.Size([2, 32]), torch.int8)
        >>> w_hat = dequantize(q, scale, zero, group_size=128, group_axis=0)
    """
    x32, spec = _prepare(x, fmt, group_size, check_finite)
    qmin, qmax = spec.qmin, spec.qmax
    scale, zero, axis = _asymmetric_params(x32, spec, reduce_axes, group_size)
    if check_finite and not bool(torch.isfinite(scale).all()):
        raise ValueError(
            "Expected the range max(x) - min(x) of every group to be finite in float32. Received: "
            f"x with values in [{float(x32.min())}, {float(x32.max())}], whose range overflows"
        )
    size = x32.shape[axis] if axis is not None else 0
    q = torch.round(x32 / _full(scale, axis, group_size, size))
    q = q.add_(_full(zero, axis, group_size, size)).clamp_(qmin, qmax).to(torch.int8)
    return q, scale, zero.to(torch.int8)


def _check_params(
    q_shape: tuple[int, ...],
    scale: object,
    zero: object,
    group_size: object,
    group_axis: object,
) -> int | None:
    """Validate scale/zero against `q_shape`; return the normalised group axis (or None)."""
    scale = C.check_float_tensor(scale, "scale")
    if zero is not None:
        zero = C.check_int_tensor(zero, "zero")
    if group_size is None:
        if group_axis is not None:
            raise ValueError(
                "Expected `group_axis` only together with `group_size`. "
                f"Received: group_axis={group_axis!r}, group_size=None"
            )
        C.check_broadcast(q_shape, scale, "scale", "q")
        if zero is not None:
            C.check_broadcast(q_shape, zero, "zero", "q")
        return None
    group_size = C.check_int_arg(group_size, "group_size", minimum=1)
    if group_axis is None:
        raise ValueError(
            "Expected `group_axis` (the axis cut into groups) together with `group_size`. "
            f"Received: group_axis=None, group_size={group_size}"
        )
    axis = C.normalize_axis(group_axis, len(q_shape), "group_axis")
    C.check_group_params(q_shape, scale, "scale", axis, group_size)
    if zero is not None:
        C.check_group_params(q_shape, zero, "zero", axis, group_size)
    return axis


def quantize_with_scale(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None = None,
    *,
    fmt: DTypeLike = "int8",
    group_size: int | None = None,
    group_axis: int | None = None,
) -> torch.Tensor:
    """Quantize with given (e.g. stored or static) parameters: the rounding step of the quantizers.

    In float32: without `zero`, `q = clip(round_half_even(x / scale), -qmax, qmax)` (the symmetric
    range); with `zero`, `q = clip(round_half_even(x / scale) + zero, qmin, qmax)` (the full
    storage range). Non-finite values are not checked: NaN gives an unspecified `q`.

    Args:
        x: floating tensor of shape `S`.
        scale: float tensor broadcasting to `S`, or grouped (`ceil(n / group_size)` along
            `group_axis`, as returned by the quantizers with `group_size`).
        zero: optional int tensor shaped like `scale`.
        fmt: "int8" or "int4".
        group_size, group_axis: describe grouped `scale`/`zero`.

    Returns:
        int8 tensor of shape `S`.

    Example:
        >>> x = torch.tensor([0.5, -1.0, 3.0])
        >>> quantize_with_scale(x, torch.tensor(0.5), fmt="int4")
        tensor([ 1, -2,  6], dtype=torch.int8)
    """
    C.check_float_tensor(x, "x", allow_empty=True)
    spec = C.int_format(fmt)
    shape = tuple(x.shape)
    axis = _check_params(shape, scale, zero, group_size, group_axis)
    size = shape[axis] if axis is not None else 0
    v = torch.round(x.to(torch.float32) / _full(scale.to(torch.float32), axis, group_size, size))
    if zero is None:
        return v.clamp_(-spec.qmax, spec.qmax).to(torch.int8)
    v = v.add_(_full(zero, axis, group_size, size).to(torch.float32))
    return v.clamp_(spec.qmin, spec.qmax).to(torch.int8)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None = None,
    *,
    group_size: int | None = None,
    group_axis: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`q * scale`, or `(q - zero) * scale`, computed in float32 then cast to `dtype`.

    Args:
        q: integer tensor (int8 from the quantizers; any integer dtype exact in float32) of shape
            `S`.
        scale: float tensor broadcasting to `S` (keepdims scales), or grouped with `group_size`.
        zero: optional integer tensor shaped like `scale`.
        group_size, group_axis: for grouped parameters: `scale` has `ceil(S[group_axis] /
            group_size)` entries along `group_axis`; entry `j` covers indices
            `[j * group_size, (j + 1) * group_size)`.
        dtype: floating output dtype (the float32 product is rounded once to it).

    Returns:
        Tensor of shape `S` and dtype `dtype`.

    Example:
        >>> q = torch.tensor([[1, -7], [3, 2]], dtype=torch.int8)
        >>> dequantize(q, torch.tensor([[0.5, 0.25]]))
        tensor([[ 0.5000, -1.7500],
                [ 1.5000,  0.5000]])
    """
    C.check_int_tensor(q, "q")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"Expected `dtype` to be a floating torch.dtype. Received: dtype={dtype!r}")
    shape = tuple(q.shape)
    axis = _check_params(shape, scale, zero, group_size, group_axis)
    size = shape[axis] if axis is not None else 0
    v = q.to(torch.float32)
    if zero is not None:
        v = v - _full(zero, axis, group_size, size).to(torch.float32)
    out = v * _full(scale.to(torch.float32), axis, group_size, size)
    return out.to(dtype)
