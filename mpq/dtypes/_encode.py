"""`encode`: round floats into any format, to nearest-even, saturating explicitly.

Values are clamped explicitly and NaN is written explicitly, so no implicit cast decides overflow
or NaN. Rounding is explicit float64 arithmetic on the format's grid (frexp, an exact scaling by a
power of two, round-half-even, scale back), except for float32-or-narrower inputs into formats
whose torch cast is itself round-to-nearest-even (float32/16, bfloat16, the float8s but e8m0).
"""

from __future__ import annotations

from typing import Any, NamedTuple, overload

import numpy as np
import torch

from mpq.dtypes._convert import _describe, to_numpy
from mpq.dtypes._formats import Format, get

__all__ = ["encode"]

_TORCH_BITS_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """Exact float64 2**k for integer k in [-1022, 1023], built from the exponent bits."""
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)


class _Grid(NamedTuple):
    """The float-only fields of a float format, known to be set."""

    mantissa_bits: int
    min_exponent: int
    smallest_normal: float
    smallest_subnormal: float


def _grid(fmt: Format) -> _Grid:
    if (
        fmt.mantissa_bits is None
        or fmt.min_exponent is None
        or fmt.smallest_normal is None
        or fmt.smallest_subnormal is None
    ):
        raise ValueError(f"Expected a float format. Received: fmt={fmt!r}")
    return _Grid(fmt.mantissa_bits, fmt.min_exponent, fmt.smallest_normal, fmt.smallest_subnormal)


def _nan_code(fmt: Format) -> int:
    if fmt.nan_code is None:
        raise ValueError(f"Expected a format with a NaN code. Received: fmt={fmt!r}")
    return fmt.nan_code


def _round_to_grid(a: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Round non-negative float64 ``a`` (already clamped to the format's range) onto its grid."""
    grid = _grid(fmt)
    nmant, emin = grid.mantissa_bits, grid.min_exponent
    mant, e = torch.frexp(a)  # a = mant * 2**e with mant in [0.5, 1), or 0 with e = 0
    exp = torch.clamp(e.to(torch.int64) - 1, min=emin)  # exponent of a's binade, floored at emin
    # a / ulp = mant * 2**(e - exp + nmant). The shift is at most nmant + 1; below -64 the
    # quotient is far under 1/2 and rounds to 0 either way, so clamping keeps 2**shift normal.
    shift = torch.clamp(e.to(torch.int64) - exp + nmant, min=-64)
    scaled = mant * _pow2(shift)
    # torch.round rounds half to even; floor(s + 0.5) rounds half up, exact as s < 2**53.
    steps = torch.floor(scaled + 0.5) if fmt.ties == "up" else torch.round(scaled)
    return steps * _pow2(exp - nmant)  # exact: steps has at most nmant + 1 significant bits


def _float_codes(q: torch.Tensor, fmt: Format) -> torch.Tensor:
    """uint8 codes of float64 values ``q`` that lie on the grid of a format torch lacks."""
    grid = _grid(fmt)
    nmant, emin = grid.mantissa_bits, grid.min_exponent
    a = q.abs()
    mant, e = torch.frexp(a)
    normal = a >= grid.smallest_normal
    # Normal: exponent field (e - 1) - emin + 1 (the field 0 is kept for subnormals; e8m0 has
    # none, so its field starts at 0), fraction mant * 2**(nmant + 1) - 2**nmant.
    # Subnormal: exponent field 0, fraction a / smallest_subnormal.
    first_field = 1 if grid.smallest_subnormal < grid.smallest_normal else 0
    exp_field = torch.where(normal, e.to(torch.int64) - 1 - emin + first_field, 0)
    frac = torch.where(normal, mant * 2.0 ** (nmant + 1) - 2.0**nmant, a / grid.smallest_subnormal)
    codes = (exp_field << nmant) | frac.to(torch.int64)
    if fmt.is_signed:
        codes = codes | (torch.signbit(q).to(torch.int64) << (fmt.bits - 1))
    return codes.to(torch.uint8)


# Formats whose torch cast from float32 rounds to nearest-even (tests check it on every value,
# midpoint and neighbouring float32 of each): after an explicit clamp, the cast is the rounding.
_ROUNDING_CASTS = frozenset(
    ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
     "float8_e5m2fnuz")
)  # fmt: skip


def _encode_by_cast(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Clamp in float32, then the rounding cast; for float32-or-narrower inputs only (a float64
    input would be rounded twice)."""
    x32 = x.to(torch.float32)  # exact for every float input dtype except float64
    out = torch.clamp(x32, float(fmt.min), float(fmt.max)).to(fmt.container)  # NaN stays NaN
    nan = torch.isnan(x32)
    if bool(nan.any()):
        out.view(_TORCH_BITS_VIEW[out.element_size()])[nan] = _nan_code(fmt)
    return out


def _encode_tensor(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    if fmt.name in _ROUNDING_CASTS and fmt.torch_dtype is not None and x.dtype != torch.float64:
        return _encode_by_cast(x, fmt)
    x64 = x.to(torch.float64)  # exact for every float input dtype
    nan = torch.isnan(x64)
    if not fmt.has_nan and bool(nan.any()):
        raise ValueError(
            f"Expected values without NaN: {fmt.name} has no NaN to encode it to. "
            f"Received: x={_describe(x)} with {int(nan.sum())} NaN value(s)"
        )

    if fmt.kind != "float":
        # Clamp then round half to even; both exact in float64 for every integer format here.
        values = torch.round(torch.clamp(x64, float(fmt.min), float(fmt.max)))
        return values.to(fmt.container)

    if not fmt.is_signed:
        negative = x64 < 0
        if bool(negative.any()):
            raise ValueError(
                f"Expected non-negative values: {fmt.name} is unsigned. Received: "
                f"x={_describe(x)} with {int(negative.sum())} negative value(s)"
            )
    # Saturate: finite overflow and inf go to the largest finite value (satfinite). The unsigned
    # e8m0 has no zero, so 0 and tiny values go to its smallest value 2**-127.
    lo = float(fmt.min) if not fmt.is_signed else 0.0
    a = torch.clamp(x64.abs(), lo, float(fmt.max))
    if fmt.name != "float64":
        a = _round_to_grid(a, fmt)
    if fmt.is_signed and fmt.has_negative_zero:
        q = torch.where(torch.signbit(x64), -a, a)  # keeps -0 for negative values rounding to 0
    elif fmt.is_signed:
        q = torch.where(torch.signbit(x64) & (a != 0), -a, a)  # no -0 in the fnuz formats
    else:
        q = a

    if fmt.torch_dtype is not None:
        out = q.to(fmt.torch_dtype)  # exact: q is on the grid (NaN handled below)
    else:
        out = _float_codes(torch.where(nan, 0.0, q), fmt)
    if fmt.has_nan and bool(nan.any()):
        bits = out.view(_TORCH_BITS_VIEW[out.element_size()])
        bits[nan] = _nan_code(fmt)  # the canonical NaN, whatever sign or payload came in
    return out


def _is_float_numpy(dtype: np.dtype[Any]) -> bool:
    if dtype.kind == "f":
        return dtype.itemsize <= 8  # float16/32/64 (not longdouble, which torch cannot hold)
    try:
        return get(dtype).kind == "float"
    except ValueError:
        return False


@overload
def encode(x: torch.Tensor, fmt: str | Format) -> torch.Tensor: ...
@overload
def encode(x: np.ndarray | np.generic, fmt: str | Format) -> np.ndarray: ...
def encode(
    x: torch.Tensor | np.ndarray | np.generic, fmt: str | Format
) -> torch.Tensor | np.ndarray:
    """Round floats to the nearest value of ``fmt``, ties to even, saturating at +-``fmt.max``.

    Rules (the same for torch and numpy inputs, bit for bit; see docs/formats.md):

    - round to nearest, ties to the even code (integers: to the even integer);
      float8_e8m0fnu rounds ties up to the larger power of two, as torch and ml_dtypes do;
    - finite values beyond the range and +-inf saturate to ``fmt.max`` / ``fmt.min``
      (torch and ml_dtypes disagree on fp8 overflow, and ml_dtypes int4 casts wrap);
    - NaN becomes the format's canonical NaN (``fmt.nan_code``); formats without NaN (integers,
      float6, float4) raise ValueError;
    - -0 stays -0 where the format has it, else becomes 0; negative values that round to 0 give -0;
    - float8_e8m0fnu (no zero, no sign): 0 and values below 2**-127 give 2**-127; negative
      values raise ValueError.

    Args:
        x: floats of any shape: a tensor of any float dtype (float8 included) on any device
            with float64 support, or a numpy array of a float dtype (ml_dtypes included).
        fmt: the target format (anything `get` accepts).

    Returns:
        A tensor of dtype ``fmt.container`` on ``x``'s device for tensor input (int4: int8 in
        [-8, 7]; uint4: uint8 in [0, 15]; float6 / float4: uint8 codes), or a numpy array of
        dtype ``fmt.numpy_dtype`` for numpy input; same shape as ``x``.

    Raises:
        TypeError: ``x`` is not a float tensor or array.
        ValueError: NaN into a format without NaN, or a negative value into float8_e8m0fnu.

    Example:
        >>> import numpy as np
        >>> from mpq import dtypes
        >>> q = dtypes.encode(np.array([1e6, 0.1, -np.inf], np.float32), "float8_e4m3fn")
        >>> q.astype(np.float32).tolist()
        [448.0, 0.1015625, -448.0]
    """
    fmt = get(fmt)
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"Expected a floating-point tensor. Received: x={_describe(x)}")
        return _encode_tensor(x.detach(), fmt)
    if isinstance(x, np.ndarray | np.generic):
        x = np.asarray(x)
        if not _is_float_numpy(x.dtype):
            raise TypeError(f"Expected a floating-point numpy array. Received: x={_describe(x)}")
        if x.dtype.kind != "f":
            x = x.astype(np.float32)  # exact: every ml_dtypes float fits in float32
        out = _encode_tensor(torch.from_numpy(np.array(x, order="C")), fmt)
        return to_numpy(out, fmt)
    raise TypeError(f"Expected a torch.Tensor or a numpy array. Received: x={_describe(x)}")
