"""Format-aware tolerances, `assert_close` and `sqnr` for tests of numerics.

Tolerances are data: a table of multiples of each format's eps. Everything is compared in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mpq import dtypes
from mpq.dtypes import Format

__all__ = ["TOLERANCES", "Tolerance", "assert_close", "sqnr", "tolerance"]


@dataclass(frozen=True)
class Tolerance:
    """Tolerance of one format, in units of its eps: ``rtol = rtol_eps * eps`` and
    ``atol = atol_eps * eps * sqrt(k)`` for a result of a length-``k`` reduction of unit-scale data.
    """

    rtol_eps: float
    atol_eps: float


_LOW = Tolerance(rtol_eps=2.0, atol_eps=4.0)
_HIGH = Tolerance(rtol_eps=4.0, atol_eps=32.0)
_EXACT = Tolerance(rtol_eps=0.0, atol_eps=0.0)

# Calibration (docs/formats.md has the numbers): products of N(0, 1) matrices with inputs rounded
# to the format and the result compared with float64 of the unrounded inputs. The largest error
# seen over 16k outputs was about 1.5 eps*sqrt(k) (bf16, fp16, fp8, beyond 2 eps relative) and
# 9 eps*sqrt(k) for float32 GEMMs (accumulation order); the table keeps a factor ~3 above that.
TOLERANCES: dict[str, Tolerance] = {
    "float64": _HIGH,
    "float32": _HIGH,
    "float16": _LOW,
    "bfloat16": _LOW,
    "float8_e4m3fn": _LOW,
    "float8_e5m2": _LOW,
    "float8_e4m3fnuz": _LOW,
    "float8_e5m2fnuz": _LOW,
    "float8_e8m0fnu": _LOW,
    "float6_e2m3fn": _LOW,
    "float6_e3m2fn": _LOW,
    "float4_e2m1fn": _LOW,
    # Integer results (int8 x int8 -> int32, quantize) are exact: compare them exactly.
    "int32": _EXACT,
    "int8": _EXACT,
    "uint8": _EXACT,
    "int4": _EXACT,
    "uint4": _EXACT,
}


def _check_k(k: object) -> int:
    if k is None:
        return 1
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(
            "Expected k (the reduction length) to be None or a positive int. "
            f"Received: k={k!r} (of type {type(k).__name__})"
        )
    if k < 1:
        raise ValueError(f"Expected k (the reduction length) to be >= 1. Received: k={k!r}")
    return int(k)


def tolerance(
    fmt: str | Format | torch.dtype | np.dtype, k: int | None = None
) -> tuple[float, float]:
    """``(rtol, atol)`` for results computed in ``fmt``, from a reduction of length ``k``.

    ``rtol = TOLERANCES[fmt].rtol_eps * eps`` covers the rounding of the result itself (half an
    ulp is eps/2 relative). ``atol = TOLERANCES[fmt].atol_eps * eps * sqrt(k)``: the error of a
    sum of ``k`` products whose inputs were rounded is a sum of ``k`` independent rounding errors,
    so it grows like ``eps * sqrt(k)`` whatever the size of the result (which cancellation can make
    tiny). This assumes unit-scale data (entries of magnitude about 1); scale atol with the data
    otherwise. ``k=None`` means an elementwise result (k = 1). Integer formats are exact: (0, 0).

    Example:
        >>> from mpq.testing import tolerance
        >>> tolerance("bfloat16", k=256)
        (0.015625, 0.5)
    """
    fmt = dtypes.get(fmt)
    kk = _check_k(k)
    tol = TOLERANCES[fmt.name]
    if fmt.eps is None:
        return (0.0, 0.0)
    return (tol.rtol_eps * fmt.eps, tol.atol_eps * fmt.eps * math.sqrt(kk))


def _as_float64(x: object, name: str) -> np.ndarray:
    """float64 numpy copy of a tensor, array or Python number (torch float8/bf16 included)."""
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"Expected a real tensor. Received: {name} of dtype {x.dtype}")
        x = x.detach().cpu()
        try:
            fmt = dtypes.get(x.dtype)
        except ValueError:
            return x.to(torch.float64).numpy()
        return dtypes.decode(dtypes.to_numpy(x, fmt), fmt, dtype="float64")
    if isinstance(x, np.ndarray | np.generic):
        a = np.asarray(x)
        if a.dtype.kind in "iuf":
            with np.errstate(invalid="ignore"):  # signalling NaNs warn, the cast is exact
                return a.astype(np.float64)
        try:
            fmt = dtypes.get(a.dtype)
        except ValueError:
            raise TypeError(
                f"Expected a real numeric array. Received: {name} of dtype {a.dtype}"
            ) from None
        return dtypes.decode(a, fmt, dtype="float64")
    if isinstance(x, int | float) and not isinstance(x, bool):
        return np.asarray(float(x), dtype=np.float64)
    raise TypeError(
        f"Expected a torch.Tensor, a numpy array or a Python number. "
        f"Received: {name}={x!r:.80} (of type {type(x).__name__})"
    )


def _fmt_index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def assert_close(
    actual: torch.Tensor | np.ndarray | float,
    expected: torch.Tensor | np.ndarray | float,
    fmt: str | Format | torch.dtype | np.dtype | None,
    k: int | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    msg: str = "",
) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise, in float64.

    Shapes must be equal (no broadcasting), NaN must be at the same positions, infinities at
    the same positions with the same sign. The failure message names the worst element (the one
    furthest beyond its tolerance): index, actual, expected, absolute and relative error.

    Args:
        actual: the value under test: tensor (any dtype and device, float8 / bf16 included),
            numpy array (ml_dtypes included) or Python number.
        expected: the reference, usually computed in float64.
        fmt: the format the result was computed in; gives the default tolerances via
            `tolerance`. May be None only when both ``rtol`` and ``atol`` are given.
        k: length of the reduction behind each element (e.g. K of a matmul), None if none.
        rtol, atol: override the defaults from `tolerance`.
        msg: prefix of the failure message.

    Raises:
        AssertionError: the values are not close, or shapes / NaN / inf positions differ.
        TypeError, ValueError: bad arguments.

    Example:
        >>> import torch
        >>> from mpq.testing import assert_close
        >>> a, b = torch.randn(8, 256), torch.randn(256, 4)
        >>> assert_close(a.bfloat16() @ b.bfloat16(), a.double() @ b.double(), "bfloat16", k=256)
    """
    if fmt is None:
        if rtol is None or atol is None:
            raise TypeError(
                "Expected a format, or both rtol and atol. Received: fmt=None with "
                f"rtol={rtol!r}, atol={atol!r}"
            )
        fmt_name = "explicit tolerances"
    else:
        default_rtol, default_atol = tolerance(fmt, k)
        rtol = default_rtol if rtol is None else rtol
        atol = default_atol if atol is None else atol
        fmt_name = dtypes.get(fmt).name
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
            raise ValueError(
                f"Expected {name} to be a non-negative number. Received: {name}={value!r}"
            )
    if not isinstance(msg, str):
        raise TypeError(
            f"Expected msg to be a str. Received: msg={msg!r} (of type {type(msg).__name__})"
        )

    a = _as_float64(actual, "actual")
    e = _as_float64(expected, "expected")
    prefix = f"{msg}: " if msg else ""
    where = f"(fmt={fmt_name}, k={k}, rtol={rtol:.3g}, atol={atol:.3g})"
    if a.shape != e.shape:
        raise AssertionError(
            f"{prefix}shapes differ: actual {a.shape} vs expected {e.shape} {where}"
        )
    if a.size == 0:
        return

    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if (nan_a != nan_e).any():
        i = int(np.flatnonzero(nan_a != nan_e)[0])
        raise AssertionError(
            f"{prefix}NaN positions differ at {int((nan_a != nan_e).sum())} of {a.size} "
            f"elements; first at index {_fmt_index(i, a.shape)}: actual={float(a.flat[i])!r}, "
            f"expected={float(e.flat[i])!r} {where}"
        )
    inf_a, inf_e = np.isinf(a), np.isinf(e)
    inf_bad = (inf_a | inf_e) & (a != e)
    if inf_bad.any():
        i = int(np.flatnonzero(inf_bad)[0])
        raise AssertionError(
            f"{prefix}infinities differ at {int(inf_bad.sum())} of {a.size} elements; first at "
            f"index {_fmt_index(i, a.shape)}: actual={float(a.flat[i])!r}, "
            f"expected={float(e.flat[i])!r} {where}"
        )

    finite = ~(nan_a | inf_a | inf_e)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(finite, np.abs(a - e), 0.0)
        allowed = atol + rtol * np.abs(e)
        bad = finite & (err > allowed)
    if not bad.any():
        return
    # The worst element: largest error in units of its own tolerance (inf where allowed == 0).
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.where(bad, np.where(allowed > 0, err / allowed, np.inf), -1.0)
    i = int(np.argmax(excess))
    rel = err.flat[i] / abs(e.flat[i]) if e.flat[i] != 0 else math.inf
    raise AssertionError(
        f"{prefix}not close: {int(bad.sum())} of {a.size} elements beyond tolerance {where}. "
        f"Worst at index {_fmt_index(i, a.shape)}: actual={float(a.flat[i])!r}, "
        f"expected={float(e.flat[i])!r}, abs error={err.flat[i]:.6g}, rel error={rel:.6g}, "
        f"allowed={allowed.flat[i]:.6g}"
    )


def sqnr(reference: torch.Tensor | np.ndarray, x: torch.Tensor | np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``x`` against ``reference``, in dB, in float64.

    ``10 * log10(sum(reference**2) / sum((reference - x)**2))``; +inf when ``x`` equals
    ``reference`` exactly, -inf when the reference is all zeros and ``x`` is not.

    Raises:
        ValueError: shapes differ, the inputs are empty, or either holds NaN or inf.

    Example:
        >>> import numpy as np
        >>> from mpq.testing import sqnr
        >>> round(sqnr(np.array([1.0, 1.0]), np.array([1.0, 1.1])), 3)
        23.01
    """
    ref = _as_float64(reference, "reference")
    val = _as_float64(x, "x")
    if ref.shape != val.shape:
        raise ValueError(
            f"Expected reference and x of the same shape. Received: reference of shape "
            f"{ref.shape}, x of shape {val.shape}"
        )
    if ref.size == 0:
        raise ValueError(f"Expected non-empty inputs. Received: reference of shape {ref.shape}")
    for name, arr in (("reference", ref), ("x", val)):
        if not np.isfinite(arr).all():
            raise ValueError(
                f"Expected finite values. Received: {name} with "
                f"{int((~np.isfinite(arr)).sum())} NaN/inf value(s)"
            )
    diff = ref - val
    scale = max(float(np.abs(ref).max()), float(np.abs(diff).max()))
    if scale > 0:  # normalise so that squares of large values cannot overflow
        ref, diff = ref / scale, diff / scale
    noise = float(np.sum(diff**2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
