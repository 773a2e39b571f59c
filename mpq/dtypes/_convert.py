"""Bit-exact conversions between torch tensors and numpy arrays, and decoding to float.

torch and numpy share no dtype for bfloat16, float8, int4, float6 or float4, so conversions go
through same-width integer views of the bits; nothing here rounds.
"""

from __future__ import annotations

import functools
from typing import overload

import numpy as np
import torch

from mpq.dtypes._formats import DTypeLike, Format, get

__all__ = ["decode", "from_numpy", "to_numpy"]

# Signed torch integer dtype of each storage width: torch has no uint16 / uint32 view for every op.
_TORCH_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NUMPY_INT_OF_WIDTH = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a torch.Tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    if isinstance(x, np.ndarray):
        return f"a numpy array of dtype {x.dtype} and shape {x.shape}"
    return f"{x!r} (of type {type(x).__name__})"


def _is_sub_byte_code(fmt: Format) -> bool:
    """Formats held in torch as raw codes in a uint8 container (float6, float4, maybe e8m0)."""
    return fmt.torch_dtype is None and fmt.kind == "float"


def _check_container_range(values: np.ndarray | torch.Tensor, fmt: Format, name: str) -> None:
    """Values of int4 / uint4 / raw codes held in a container must fit the format."""
    if fmt.torch_dtype is not None:
        return
    if _is_sub_byte_code(fmt):
        lo, hi = 0, 2**fmt.bits - 1
        what = f"raw {fmt.bits}-bit codes in [0, {hi}]"
    else:
        lo, hi = int(fmt.min), int(fmt.max)
        what = f"values in [{lo}, {hi}]"
    bad = (values < lo) | (values > hi)
    if bool(bad.any()):
        if isinstance(bad, torch.Tensor):
            index = tuple(bad.nonzero()[0].tolist())
        else:
            index = tuple(int(i) for i in np.argwhere(bad)[0])
        size = values.numel() if isinstance(values, torch.Tensor) else values.size
        raise ValueError(
            f"Expected a {fmt.container} {name} holding {fmt.name} as {what}. Received: "
            f"{name}[{index}] = {values[index].item()} ({int(bad.sum())} of {size} out of range)"
        )


def to_numpy(t: torch.Tensor, fmt: str | Format | None = None) -> np.ndarray:
    """Copy a tensor to a numpy array of the format's numpy/ml_dtypes dtype, bit for bit.

    Args:
        t: a tensor of any shape and device, of dtype ``fmt.container``.
        fmt: the format ``t`` holds; None means the format whose torch dtype is ``t.dtype``.
            Needed for int4 / uint4 (int8 / uint8 containers) and float6 / float4 (uint8 codes).

    Returns:
        A new C-contiguous array of dtype ``fmt.numpy_dtype`` and the same shape (never a view
        of ``t``'s memory). NaN payloads and -0 are preserved.

    Raises:
        TypeError: ``t`` is not a tensor, or its dtype is not ``fmt.container``.
        ValueError: an int4 / uint4 value or a sub-byte code is out of the format's range.

    Example:
        >>> import torch
        >>> from mpq import dtypes
        >>> dtypes.to_numpy(torch.tensor([1.5], dtype=torch.bfloat16)).dtype.name
        'bfloat16'
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor. Received: t={_describe(t)}")
    fmt = get(t.dtype) if fmt is None else get(fmt)
    if t.dtype != fmt.container:
        raise TypeError(
            f"Expected a tensor of dtype {fmt.container} holding {fmt.name}. "
            f"Received: t={_describe(t)}"
        )
    t = t.detach().cpu()
    width = t.element_size()
    bits: np.ndarray = t.view(_TORCH_INT_OF_WIDTH[width]).contiguous().numpy().copy()
    if fmt.torch_dtype is not None:
        return bits.view(fmt.numpy_dtype)
    values = bits.view(np.int8 if fmt.container == torch.int8 else np.uint8)
    _check_container_range(values, fmt, "t")
    if _is_sub_byte_code(fmt):
        return values.view(fmt.numpy_dtype)
    # int4 / uint4: in-range small integers, so this cast is exact (ml_dtypes would wrap others).
    return values.astype(fmt.numpy_dtype)


def from_numpy(a: np.ndarray | np.generic, fmt: str | Format | None = None) -> torch.Tensor:
    """Copy a numpy array to a CPU tensor of the format's torch container, bit for bit.

    Args:
        a: an array (or numpy scalar) of dtype ``fmt.numpy_dtype``.
        fmt: the format; None means the format of ``a.dtype``.

    Returns:
        A new CPU tensor of dtype ``fmt.container`` and the same shape. int4 / uint4 come back as
        int8 / uint8 values; float6 / float4 as uint8 codes (upper bits zero).

    Raises:
        TypeError: ``a`` is not an array, or its dtype is not ``fmt.numpy_dtype``.

    Example:
        >>> import ml_dtypes, numpy as np
        >>> from mpq import dtypes
        >>> dtypes.from_numpy(np.array([1.5], dtype=ml_dtypes.float8_e4m3fn)).dtype
        torch.float8_e4m3fn
    """
    if not isinstance(a, np.ndarray | np.generic):
        raise TypeError(f"Expected a numpy array. Received: a={_describe(a)}")
    a = np.asarray(a)
    fmt = get(a.dtype) if fmt is None else get(fmt)
    if a.dtype != fmt.numpy_dtype:
        raise TypeError(
            f"Expected a numpy array of dtype {fmt.numpy_dtype} holding {fmt.name} (use "
            f"mpq.dtypes.encode to round other values into it). Received: a={_describe(a)}"
        )
    a = np.array(a, order="C")  # a C-contiguous copy (ascontiguousarray would make 0-d 1-d)
    if fmt.kind != "float" and fmt.torch_dtype is None:
        # int4 / uint4: ml_dtypes -> int8 / uint8 is exact for in-range values.
        values = a.astype(np.int8 if fmt.kind == "int" else np.uint8)
        return torch.from_numpy(values)
    codes = a.view(_NUMPY_INT_OF_WIDTH[a.dtype.itemsize])
    if _is_sub_byte_code(fmt):
        # ml_dtypes ignores the bits above the format's width; make the codes canonical.
        codes &= np.uint8(2**fmt.bits - 1)
    return torch.from_numpy(codes).view(fmt.container)


@functools.cache
def _code_values(fmt: Format) -> torch.Tensor:
    """float32 value of every code of a sub-byte float format (decoded by ml_dtypes)."""
    codes = np.arange(2**fmt.bits, dtype=np.uint8)
    return torch.from_numpy(codes.view(fmt.numpy_dtype).astype(np.float32))


def _default_float(fmt: Format) -> torch.dtype:
    """float32 when every value of ``fmt`` is exact in float32, else float64."""
    exact_in_float32 = fmt.name not in ("float64", "int32")
    return torch.float32 if exact_in_float32 else torch.float64


@overload
def decode(
    q: torch.Tensor, fmt: str | Format | None = None, *, dtype: DTypeLike | None = None
) -> torch.Tensor: ...
@overload
def decode(
    q: np.ndarray | np.generic, fmt: str | Format | None = None, *, dtype: DTypeLike | None = None
) -> np.ndarray: ...
def decode(
    q: torch.Tensor | np.ndarray | np.generic,
    fmt: str | Format | None = None,
    *,
    dtype: DTypeLike | None = None,
) -> torch.Tensor | np.ndarray:
    """Values of ``q`` (held in ``fmt``) as floats: the inverse of `encode`, exact.

    Args:
        q: a tensor of dtype ``fmt.container`` or an array of dtype ``fmt.numpy_dtype``.
        fmt: the format ``q`` holds; None means the format of ``q``'s dtype (pass it for float6
            / float4 codes held in uint8, which would otherwise decode as uint8 integers).
        dtype: float dtype of the result (torch or numpy, or its name); default float32, or
            float64 for float64 and int32 which float32 cannot hold exactly.

    Returns:
        A tensor (same device) or array of the same shape and float dtype.

    Example:
        >>> import torch
        >>> from mpq import dtypes
        >>> q = dtypes.encode(torch.tensor([0.3, -7.0]), "float4_e2m1fn")
        >>> dtypes.decode(q, "float4_e2m1fn")
        tensor([ 0.5000, -6.0000])
    """
    if isinstance(q, torch.Tensor):
        fmt = get(q.dtype) if fmt is None else get(fmt)
        if q.dtype != fmt.container:
            raise TypeError(
                f"Expected a tensor of dtype {fmt.container} holding {fmt.name}. "
                f"Received: q={_describe(q)}"
            )
        out_dtype = _default_float(fmt) if dtype is None else _torch_float(dtype)
        if _is_sub_byte_code(fmt):
            _check_container_range(q, fmt, "q")
            table = _code_values(fmt).to(device=q.device, dtype=out_dtype)
            return table[q.long()]
        _check_container_range(q, fmt, "q")
        return q.to(out_dtype)
    if isinstance(q, np.ndarray | np.generic):
        q = np.asarray(q)
        fmt = get(q.dtype) if fmt is None else get(fmt)
        if q.dtype != fmt.numpy_dtype:
            raise TypeError(
                f"Expected a numpy array of dtype {fmt.numpy_dtype} holding {fmt.name}. "
                f"Received: q={_describe(q)}"
            )
        out = _default_float(fmt) if dtype is None else _torch_float(dtype)
        # Signalling NaN payloads make numpy casts warn ("invalid value"); the cast is still
        # exact. ml_dtypes formats go through float32, which holds all of them exactly.
        with np.errstate(invalid="ignore"):
            if fmt.numpy_dtype.kind == "V":
                q = q.astype(np.float32)
            return q.astype(np.float32 if out == torch.float32 else np.float64)
    raise TypeError(f"Expected a torch.Tensor or a numpy array. Received: q={_describe(q)}")


_FLOAT_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _torch_float(dtype: object) -> torch.dtype:
    """float32 / float64 from a torch dtype, numpy dtype or name."""
    try:
        name = get(dtype).name
    except (TypeError, ValueError):
        name = None
    if name not in _FLOAT_DTYPES:
        raise ValueError(
            "Expected dtype to be float32 or float64 (torch, numpy or name). "
            f"Received: dtype={dtype!r}"
        )
    return _FLOAT_DTYPES[name]
