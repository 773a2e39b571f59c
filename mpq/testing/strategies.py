"""Hypothesis strategies for mpq tests: formats, shapes, arrays and tensors of any format.

Formats that hypothesis cannot build (bfloat16, float8, float6, float4, int4, uint4: the ml_dtypes
ones) are drawn as raw bit patterns and reinterpreted, so every code, NaN payloads included, can
come up.

Example:
    >>> from hypothesis import given
    >>> from mpq.testing import strategies as st_mpq
    >>> @given(st_mpq.arrays("float8_e4m3fn", shape=(4, 8), finite=True))
    ... def test_something(a): ...
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpq import dtypes
from mpq.dtypes import Format
from mpq.dtypes._formats import Kind

__all__ = [
    "arrays",
    "float32_arrays",
    "float32_values",
    "float_policies",
    "format_names",
    "formats",
    "policies",
    "policy_names",
    "quantized_policies",
    "shapes",
    "tensors",
]

_NATIVE = {"float64", "float32", "float16", "int32", "int8", "uint8"}
"""Formats hypothesis draws natively; all others are drawn as raw codes."""


def format_names(
    kind: Kind | None = None,
    max_bits: int | None = None,
    min_bits: int | None = None,
    has_torch_dtype: bool | None = None,
) -> st.SearchStrategy[str]:
    """Canonical format names, optionally filtered by kind, bit width and torch support.

    Raises:
        ValueError: no format passes the filters (the message says which filters were given).

    Example:
        >>> from mpq.testing import strategies as st_mpq
        >>> s = st_mpq.format_names(kind="float", max_bits=8, has_torch_dtype=True)
    """
    chosen = [
        f.name
        for f in (dtypes.get(n) for n in dtypes.names(kind))  # names() validates kind
        if (max_bits is None or f.bits <= max_bits)
        and (min_bits is None or f.bits >= min_bits)
        and (has_torch_dtype is None or (f.torch_dtype is not None) == has_torch_dtype)
    ]
    if not chosen:
        raise ValueError(
            "Expected filters that leave at least one format. Received: "
            f"kind={kind!r}, max_bits={max_bits!r}, min_bits={min_bits!r}, "
            f"has_torch_dtype={has_torch_dtype!r}"
        )
    return st.sampled_from(chosen)


def formats(
    kind: Kind | None = None,
    max_bits: int | None = None,
    min_bits: int | None = None,
    has_torch_dtype: bool | None = None,
) -> st.SearchStrategy[Format]:
    """`Format` objects, with the filters of `format_names`."""
    return format_names(kind, max_bits, min_bits, has_torch_dtype).map(dtypes.get)


def shapes(
    min_dims: int = 1, max_dims: int = 3, min_side: int = 1, max_side: int = 8
) -> st.SearchStrategy[tuple[int, ...]]:
    """Array shapes (tuples of ints) with ``min_dims..max_dims`` sides of ``min_side..max_side``."""
    return hnp.array_shapes(
        min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    )


@functools.cache
def _all_codes(fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """(codes, float64 values) of every bit pattern of a format of at most 16 bits."""
    codes = np.arange(2**fmt.bits, dtype=np.int64).astype(fmt.code_dtype)
    values = dtypes.decode(codes.view(fmt.numpy_dtype), fmt, dtype="float64")
    return codes, values


@functools.cache
def _allowed_codes(
    fmt: Format, finite: bool, allow_subnormal: bool, max_abs: float | None
) -> tuple[int, ...]:
    codes, values = _all_codes(fmt)
    keep = np.ones(codes.shape, dtype=bool)
    if finite or max_abs is not None:
        keep &= np.isfinite(values)
    if not allow_subnormal and fmt.smallest_normal is not None:
        keep &= ~((values != 0) & (np.abs(values) < fmt.smallest_normal))
    if max_abs is not None:
        with np.errstate(invalid="ignore"):
            keep &= np.abs(values) <= max_abs
    if not keep.any():
        raise ValueError(
            f"Expected options that leave at least one {fmt.name} value. Received: "
            f"finite={finite!r}, allow_subnormal={allow_subnormal!r}, max_abs={max_abs!r}"
        )
    return tuple(int(c) for c in codes[keep])


def _special_codes(fmt: Format, allowed: tuple[int, ...]) -> tuple[int, ...]:
    """The allowed codes of the edge values of a format."""
    codes, values = _all_codes(fmt)
    finite = values[np.isfinite(values)]
    edges = [0.0, 1.0, -1.0, finite.max(), finite.min()]
    if fmt.smallest_subnormal is not None and fmt.smallest_normal is not None:  # float formats
        edges += [fmt.smallest_subnormal, -fmt.smallest_subnormal]
        edges += [fmt.smallest_normal, -fmt.smallest_normal]
    with np.errstate(invalid="ignore"):
        hit = np.isin(values, edges) | np.isinf(values)
    nan_codes = np.flatnonzero(np.isnan(values))
    picked = set(codes[hit].tolist()) | set(codes[nan_codes[:1]].tolist())
    picked |= set(codes[nan_codes[-1:]].tolist()) | set(codes[:1].tolist())
    if fmt.nan_code is not None:
        picked.add(fmt.nan_code)
    allowed_set = set(allowed)
    return tuple(sorted(c for c in picked if c in allowed_set))


def _shape_strategy(shape: object) -> st.SearchStrategy[tuple[int, ...]]:
    if shape is None:
        return shapes()
    if isinstance(shape, st.SearchStrategy):
        return shape
    if isinstance(shape, int) and not isinstance(shape, bool):
        return st.just((shape,))
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return st.just(shape)
    raise TypeError(
        "Expected shape to be None, an int, a tuple of ints or a hypothesis strategy. "
        f"Received: shape={shape!r} (of type {type(shape).__name__})"
    )


def _native_elements(
    fmt: Format, finite: bool, allow_subnormal: bool, max_abs: float | None
) -> st.SearchStrategy:
    if fmt.kind != "float":
        lo, hi = int(fmt.min), int(fmt.max)
        if max_abs is not None:
            lo, hi = max(lo, -math.floor(max_abs)), min(hi, math.floor(max_abs))
        return st.integers(lo, hi)
    if max_abs is not None:
        return hnp.from_dtype(
            fmt.numpy_dtype,
            min_value=-max_abs,
            max_value=max_abs,
            allow_nan=False,
            allow_infinity=False,
            allow_subnormal=allow_subnormal,
        )
    return hnp.from_dtype(
        fmt.numpy_dtype,
        allow_nan=not finite,
        allow_infinity=not finite,
        allow_subnormal=allow_subnormal,
    )


def arrays(
    fmt: str | Format,
    shape: int | tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None,
    *,
    finite: bool = False,
    allow_subnormal: bool = True,
    max_abs: float | None = None,
) -> st.SearchStrategy[np.ndarray]:
    """numpy arrays of dtype ``fmt.numpy_dtype`` (ml_dtypes for bf16, float8, int4, ...).

    Args:
        fmt: any format `mpq.dtypes.get` accepts.
        shape: a shape, an int, a strategy of shapes, or None for `shapes()`.
        finite: no NaN or inf.
        allow_subnormal: allow subnormal values (float formats).
        max_abs: only values with ``|v| <= max_abs`` (implies finite).

    ml_dtypes formats are drawn as raw codes (every code equally likely, shrinking towards code
    0, which is +0 or the lowest value); float16/32/64 and int8/uint8/int32 natively.

    Example:
        >>> from mpq.testing import strategies as st_mpq
        >>> s = st_mpq.arrays("bfloat16", shape=(3, 5), max_abs=100.0)
    """
    fmt = dtypes.get(fmt)
    shape_st = _shape_strategy(shape)
    if max_abs is not None and not (isinstance(max_abs, int | float) and max_abs >= 0):
        raise ValueError(
            f"Expected max_abs to be None or a number >= 0. Received: max_abs={max_abs!r}"
        )
    if fmt.name in _NATIVE:
        return hnp.arrays(
            fmt.numpy_dtype,
            shape_st,
            elements=_native_elements(fmt, finite, allow_subnormal, max_abs),
        )
    allowed = _allowed_codes(fmt, finite, allow_subnormal, max_abs)
    special = _special_codes(fmt, allowed)
    # One element in four from the edges (+-0, +-max, smallest values, +-1, inf, NaN), which a
    # uniform draw over 65536 bfloat16 codes would almost never hit.
    codes = st.sampled_from(allowed)
    if special:
        codes = st.one_of(codes, codes, codes, st.sampled_from(special))
    raw = hnp.arrays(fmt.code_dtype, shape_st, elements=codes)
    return raw.map(lambda c: c.view(fmt.numpy_dtype))


def tensors(
    fmt: str | Format,
    shape: int | tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None,
    *,
    finite: bool = False,
    allow_subnormal: bool = True,
    max_abs: float | None = None,
) -> st.SearchStrategy[torch.Tensor]:
    """CPU tensors of dtype ``fmt.container`` (int4 as int8 values, float6/float4 as uint8 codes),
    built from `arrays` with `mpq.dtypes.from_numpy`; same arguments as `arrays`."""
    fmt = dtypes.get(fmt)
    return arrays(fmt, shape, finite=finite, allow_subnormal=allow_subnormal, max_abs=max_abs).map(
        lambda a: dtypes.from_numpy(a, fmt)
    )


@functools.cache
def _grid(fmt: Format) -> np.ndarray:
    """Sorted distinct finite values of a format of at most 16 bits (float64)."""
    _, values = _all_codes(fmt)
    return np.unique(values[np.isfinite(values)])


def _near(fmt: Format, where: str, i: int, nudge: int) -> float:
    """A float32 at a rounding decision of ``fmt``: its i-th value or the midpoint after it
    (a tie), or a value beyond its max, or a fraction of its smallest subnormal; then moved by
    ``nudge`` float32 ulps (-1, 0, 1). Non-finite results become 0."""
    if fmt.bits > 16:  # float32 / float64 / int32: their extremes, and the int32 edge
        top = min(fmt.max, float(np.finfo(np.float32).max))
        v = [top, -top, 2.0**31, -(2.0**31), 2.0**31 - 128][i % 5]
    else:
        grid = _grid(fmt)
        i %= len(grid)
        if where == "value":
            v = grid[i]
        elif where == "tie":
            v = (grid[i] + grid[min(i + 1, len(grid) - 1)]) / 2  # exact in float32 here
        elif where == "beyond":
            step = grid[-1] - grid[-2]
            v = [fmt.max + step / 2, fmt.max * 1.5, fmt.max * 2][i % 3] * (-1) ** (i // 3)
        else:  # "tiny"
            v = (fmt.smallest_subnormal or 1.0) * [0.25, 0.5, 0.75][i % 3] * (-1) ** (i // 3)
    with np.errstate(over="ignore", under="ignore"):
        x = np.float32(v)
    if nudge:
        with np.errstate(over="ignore"):
            x = np.nextafter(x, np.float32(math.inf * nudge))
    return float(x) if np.isfinite(x) else 0.0


def _near_values(fmt: Format) -> st.SearchStrategy[float]:
    n = len(_grid(fmt)) if fmt.bits <= 16 else 5
    # Any index, or one at either end of the grid (the largest values, the lowest values).
    index = st.integers(0, n - 1) | st.integers(max(0, n - 3), n - 1) | st.integers(0, 2)
    return st.builds(
        _near,
        st.just(fmt),
        st.sampled_from(["value", "tie", "tie", "beyond", "tiny"]),
        index,
        st.sampled_from([0, 0, -1, 1]),
    )


_SPECIAL_FLOAT32 = (
    0.0,
    -0.0,
    math.inf,
    -math.inf,
    math.nan,
    float(np.finfo(np.float32).max),
    -float(np.finfo(np.float32).max),
    float(np.finfo(np.float32).smallest_subnormal),
    -float(np.finfo(np.float32).smallest_subnormal),
    float(np.finfo(np.float32).smallest_normal),
)


def float32_values(
    fmt: str | Format | None = None, *, allow_nan: bool = True, allow_infinity: bool = True
) -> st.SearchStrategy[float]:
    """Python floats exactly representable in float32, aimed at the edges of rounding.

    A mix of: any float32 (subnormals included); the values of ``fmt`` (or of every format of
    at most 16 bits when None), the exact midpoints between neighbours (ties), one float32 ulp
    either side of both, values beyond the format's max, fractions of its smallest subnormal;
    and +-0, +-inf, NaN, the float32 extremes.

    Example:
        >>> from mpq.testing import strategies as st_mpq
        >>> s = st_mpq.float32_values("float8_e4m3fn", allow_nan=False)
    """
    if fmt is None:
        fmts = [dtypes.get(n) for n in dtypes.names() if dtypes.get(n).bits <= 16]
    else:
        fmts = [dtypes.get(fmt)]
    special = [
        v
        for v in _SPECIAL_FLOAT32
        if (allow_nan or not math.isnan(v)) and (allow_infinity or not math.isinf(v))
    ]
    near = st.sampled_from(fmts).flatmap(_near_values)
    return st.one_of(
        near,
        st.floats(width=32, allow_nan=allow_nan, allow_infinity=allow_infinity),
        st.sampled_from(special),
    )


def float32_arrays(
    shape: int | tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None,
    fmt: str | Format | None = None,
    *,
    allow_nan: bool = True,
    allow_infinity: bool = True,
) -> st.SearchStrategy[np.ndarray]:
    """float32 arrays whose elements come from `float32_values`."""
    elements = float32_values(fmt, allow_nan=allow_nan, allow_infinity=allow_infinity)
    return hnp.arrays(np.float32, _shape_strategy(shape), elements=elements)


# ---------------------------------------------------------------------------------------------
# Policy strategies (float, mixed and quantized policies with block sizes and amax history
# lengths) live in `mpq.testing._policy_strategies`, next to mpq.policy; re-exported here.
# ---------------------------------------------------------------------------------------------
from mpq.testing._policy_strategies import (  # noqa: E402
    float_policies,
    policies,
    policy_names,
    quantized_policies,
)
