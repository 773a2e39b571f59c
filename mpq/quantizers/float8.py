"""Float8 quantization with delayed scaling (Transformer Engine "HYBRID": e4m3fn forward, e5m2 grads).

Scales are dequantization scales (`x ~= q * scale`); casts saturate explicitly to +-fmt_max; the
amax history and scale recurrence are pure functions that layers apply to their buffers.

Delayed-scaling recurrence for one tensor (history length L, index 0 = newest)::

    y_t      = quantize_dequantize(x_t, s_{t-1}, fmt)          # uses the scale of the past steps
    H_t      = [amax(x_t), H_{t-1}[0], ..., H_{t-1}[L-2]]       # update_amax_history
    s_t      = compute_float8_scale(max(H_t), s_{t-1}, fmt, margin)
"""

from __future__ import annotations

import torch

from mpq.dtypes import DTypeLike
from mpq.quantizers import _common as C

__all__ = [
    "compute_amax",
    "compute_float8_scale",
    "delayed_scaling_update",
    "dequantize_float8",
    "float8_max",
    "quantize_dequantize",
    "quantize_float8",
    "update_amax_history",
]


def float8_max(fmt: DTypeLike) -> float:
    """Largest finite value of a float8 format (e4m3fn: 448, e5m2: 57344, e4m3fnuz: 240, ...).

    Example:
        >>> float8_max("float8_e4m3fn"), float8_max(torch.float8_e5m2)
        (448.0, 57344.0)
    """
    return C.float8_format(fmt).max


def compute_float8_scale(
    amax: torch.Tensor, scale: torch.Tensor, fmt: DTypeLike, margin: int = 0
) -> torch.Tensor:
    """New dequantization scale `amax * 2**margin / fmt_max`, keeping `scale` where that is invalid.

    In float32: `new = (amax * 2**margin) / fmt_max`; the result is `new` where `amax` is finite and
    > 0 and `new` is finite and > 0 (no overflow/underflow), and the old `scale` elsewhere. This is
    Transformer Engine's update written for dequantization scales (TE/Keras keep the reciprocal,
    `fmt_max / amax / 2**margin`); `margin` leaves `2**margin` of headroom.

    Args:
        amax: float tensor (any shape, usually 0-d: the max over an amax history).
        scale: the current float scale, broadcasting with `amax`.
        fmt: float8 format ("float8_e4m3fn", "float8_e5m2", ...).
        margin: int exponent of the headroom, in [-126, 127].

    Returns:
        float32 tensor of the broadcast shape of `amax` and `scale`.

    Example:
        >>> compute_float8_scale(torch.tensor(896.0), torch.tensor(1.0), "float8_e4m3fn")
        tensor(2.)
        >>> compute_float8_scale(torch.tensor(0.0), torch.tensor(3.0), "float8_e4m3fn")
        tensor(3.)
    """
    C.check_float_tensor(amax, "amax", allow_empty=True)
    C.check_float_tensor(scale, "scale", allow_empty=True)
    spec = C.float8_format(fmt)
    C.check_int_arg(margin, "margin")
    if not -126 <= margin <= 127:
        raise ValueError(
            f"Expected `margin` in [-126, 127] (2**margin a normal float32). Received: margin={margin}"
        )
    amax32 = amax.to(torch.float32)
    new = (amax32 * float(2.0**margin)) / spec.max
    ok = torch.isfinite(amax32) & (amax32 > 0) & torch.isfinite(new) & (new > 0)
    return torch.where(ok, new, scale.to(torch.float32))


def compute_amax(x: torch.Tensor) -> torch.Tensor:
    """`max |x|` over all elements as a float32 0-d tensor (NaN if `x` holds NaN).

    Example:
        >>> compute_amax(torch.tensor([1.0, -3.0]))
        tensor(3.)
    """
    C.check_float_tensor(x, "x")
    return torch.amax(x.abs()).to(torch.float32)


def update_amax_history(amax_history: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Roll the history by one and put `amax(x)` at index 0 (index i = amax of i steps ago).

    `new = [amax(x), h[0], ..., h[L-2]]`: the oldest entry drops out. The amax used for the next
    scale is the max over the whole new history (current step included), as in Keras 3 / TE. (Keras
    and TE roll the other way and overwrite index 0, a rotated circular buffer holding the same
    set of values; mpq keeps chronological order.) Pure: returns a new tensor.

    Args:
        amax_history: 1-D float tensor of length L >= 1.
        x: the tensor whose amax is recorded.

    Returns:
        1-D tensor of length L, dtype of `amax_history`.

    Example:
        >>> update_amax_history(torch.tensor([2.0, 5.0, 1.0]), torch.tensor([-4.0, 3.0]))
        tensor([4., 2., 5.])
    """
    C.check_float_tensor(amax_history, "amax_history")
    if amax_history.dim() != 1:
        raise ValueError(
            "Expected `amax_history` to be 1-D. "
            f"Received: amax_history of shape {tuple(amax_history.shape)}"
        )
    amax = compute_amax(x).to(device=amax_history.device, dtype=amax_history.dtype)
    return torch.cat((amax.reshape(1), amax_history[:-1]))


def delayed_scaling_update(
    x: torch.Tensor,
    amax_history: torch.Tensor,
    scale: torch.Tensor,
    fmt: DTypeLike,
    margin: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the delayed-scaling recurrence: record `amax(x)`, then recompute the scale.

    `H' = update_amax_history(H, x)`; `s' = compute_float8_scale(max(H'), s, fmt, margin)`.
    The caller quantizes `x` with the *old* scale (that is what makes the scaling delayed).

    Returns:
        `(new_amax_history, new_scale)`.

    Example:
        >>> h, s = delayed_scaling_update(torch.tensor([448.0]), torch.zeros(4), torch.tensor(1.0),
        ...                               "float8_e4m3fn")
        >>> h, s
        (tensor([448.,   0.,   0.,   0.]), tensor(1.))
    """
    history = update_amax_history(amax_history, x)
    return history, compute_float8_scale(torch.amax(history), scale, fmt, margin)


def _check_scale(x_shape: tuple[int, ...], scale: object) -> None:
    C.check_broadcast(x_shape, C.check_float_tensor(scale, "scale"), "scale", "x")


def quantize_float8(x: torch.Tensor, scale: torch.Tensor, fmt: DTypeLike) -> torch.Tensor:
    """`cast(clip(x / scale, -fmt_max, fmt_max))` to a torch float8 dtype.

    In float32: `v = x / scale`, clamped to `[-fmt_max, fmt_max]` (so +-inf saturates, NaN stays
    NaN), then rounded to nearest-even by the cast. The clamp is explicit: torch and ml_dtypes
    disagree on what an overflowing cast does.

    Args:
        x: floating tensor of shape `S`.
        scale: positive float dequantization scale broadcasting to `S` (per-tensor: 0-d).
        fmt: float8 format.

    Returns:
        tensor of shape `S` and the format's torch dtype (e.g. torch.float8_e4m3fn).

    Example:
        >>> quantize_float8(torch.tensor([1000.0, 3.0]), torch.tensor(1.0), "float8_e4m3fn").float()
        tensor([448.,   3.])
    """
    C.check_float_tensor(x, "x", allow_empty=True)
    spec = C.float8_format(fmt)
    _check_scale(tuple(x.shape), scale)
    v = x.to(torch.float32) / scale.to(torch.float32)
    return v.clamp_(-spec.max, spec.max).to(spec.torch_dtype)


def dequantize_float8(
    q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`q * scale` in float32, cast once to `dtype`.

    Example:
        >>> q = torch.tensor([2.0, -3.0]).to(torch.float8_e4m3fn)
        >>> dequantize_float8(q, torch.tensor(0.5))
        tensor([ 1.0000, -1.5000])
    """
    C.check_tensor(q, "q")
    if q.dtype not in {s.torch_dtype for s in C._FLOAT8_FORMATS.values()}:
        raise TypeError(
            f"Expected `q` to be a float8 tensor (e.g. torch.float8_e4m3fn). "
            f"Received: q of dtype {q.dtype}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"Expected `dtype` to be a floating torch.dtype. Received: dtype={dtype!r}")
    _check_scale(tuple(q.shape), scale)
    return (q.to(torch.float32) * scale.to(torch.float32)).to(dtype)


def quantize_dequantize(
    x: torch.Tensor, scale: torch.Tensor, fmt: DTypeLike, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Round trip through float8: `dequantize_float8(quantize_float8(x, scale, fmt), scale)`.

    Args:
        x: floating tensor of shape `S`.
        scale: dequantization scale broadcasting to `S`.
        fmt: float8 format.
        dtype: output dtype; defaults to `x.dtype`.

    Returns:
        tensor of shape `S`: the values of `x` representable as `fmt * scale`, saturated.

    Example:
        >>> y = quantize_dequantize(torch.tensor([0.3, 900.0]), torch.tensor(1.0), "float8_e4m3fn")
        >>> y.tolist()
        [0.3125, 448.0]
    """
    q = quantize_float8(x, scale, fmt)
    return dequantize_float8(q, scale, x.dtype if dtype is None else dtype)
