"""Array helpers shared by the mpq.dtypes tests: every code of a format, codes <-> values."""

from __future__ import annotations

import numpy as np

from mpq import dtypes


def all_codes(fmt: dtypes.Format) -> np.ndarray:
    """Every bit pattern of a format of at most 16 bits, as an array of its numpy dtype."""
    return np.arange(2**fmt.bits, dtype=np.int64).astype(fmt.code_dtype).view(fmt.numpy_dtype)


def values_of(a: np.ndarray) -> np.ndarray:
    """float64 values of an array of any format (through float32, which holds every ml_dtypes
    value exactly; numpy warns on a direct bfloat16 NaN -> float64 cast)."""
    with np.errstate(invalid="ignore"):  # signalling NaN payloads warn; the cast is exact
        if a.dtype.kind in "fiu":
            return a.astype(np.float64)
        return a.astype(np.float32).astype(np.float64)


def bits_of(a: np.ndarray, fmt: dtypes.Format) -> np.ndarray:
    """The codes of `a` (an array of `fmt`'s numpy dtype) as `fmt.code_dtype` integers."""
    return np.ascontiguousarray(a).view(fmt.code_dtype)
