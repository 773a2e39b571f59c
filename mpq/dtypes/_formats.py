"""The table of number formats mpq knows, and the resolver `get`.

Every fact about a format (bit width, torch / numpy / Triton dtypes, range, epsilon, special
values) lives in the `_TABLE` literal below; code elsewhere reads it and never re-derives it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

import ml_dtypes
import numpy as np
import numpy.typing as npt
import torch

__all__ = ["FORMATS", "DTypeLike", "Format", "format_table", "get", "names"]

Kind = Literal["float", "int", "uint"]
_KINDS = ("float", "int", "uint")


@dataclass(frozen=True, eq=False)
class Format:
    """One number format: its names in torch / numpy / Triton, its range and its special values.

    Formats are singletons (compare them with ``is`` or ``==``, both are identity); get one with
    `mpq.dtypes.get`. Float-only fields (`smallest_normal`, `smallest_subnormal`, `eps`,
    `exponent_bits`, `mantissa_bits`) are None for integer formats.

    Example:
        >>> from mpq import dtypes
        >>> f = dtypes.get("float8_e4m3fn")
        >>> f.bits, f.max, f.eps, f.triton_dtype
        (8, 448.0, 0.125, 'fp8e4nv')
    """

    name: str
    """Canonical name, as in ml_dtypes / torch: ``"bfloat16"``, ``"float8_e4m3fn"``, ``"int4"``."""
    bits: int
    """Bits of information per value (4 for int4 and float4, 6 for float6)."""
    kind: Kind
    """``"float"`` (including the unsigned float8_e8m0fnu), ``"int"`` or ``"uint"``."""
    torch_dtype: torch.dtype | None
    """The torch dtype whose tensors hold this format, or None when torch has no usable one."""
    container: torch.dtype
    """The torch dtype that holds values of this format in mpq (``torch_dtype`` when there is one;
    int4 -> int8 values in [-8, 7]; uint4 -> uint8 values in [0, 15]; float6/float4 (and
    float8_e8m0fnu on a torch without it) -> uint8 raw codes in the low bits)."""
    numpy_dtype: np.dtype
    """The numpy dtype (an ml_dtypes dtype for bfloat16, float8, float6, float4, int4, uint4)."""
    triton_dtype: str | None
    """Name of the ``triton.language`` dtype (``tl.float8e4nv.name == "fp8e4nv"``), or None."""
    max: float | int
    """Largest finite value."""
    min: float | int
    """Lowest finite value (``-max`` for signed floats; ``2**-127`` for float8_e8m0fnu)."""
    smallest_normal: float | None
    """Smallest positive normal value."""
    smallest_subnormal: float | None
    """Smallest positive value (equals `smallest_normal` when the format has no subnormals)."""
    eps: float | None
    """Distance from 1.0 to the next larger representable value."""
    has_inf: bool
    has_nan: bool
    has_negative_zero: bool
    exponent_bits: int | None
    mantissa_bits: int | None
    """Explicitly stored mantissa (fraction) bits."""
    nan_code: int | None
    """The bit pattern `encode` writes for NaN (the format's canonical quiet NaN), or None."""
    ties: Literal["even", "up"] | None
    """How `encode` breaks ties: ``"even"`` (even code) everywhere except float8_e8m0fnu,
    which rounds ties up to the larger power of two like torch and ml_dtypes do."""
    note: str
    """One line for the docs table."""

    @property
    def is_floating(self) -> bool:
        """True for float formats (including float8_e8m0fnu)."""
        return self.kind == "float"

    @property
    def is_signed(self) -> bool:
        """True when the format has negative values."""
        return self.min < 0

    @property
    def min_exponent(self) -> int | None:
        """Unbiased exponent of `smallest_normal` (``-126`` for float32), None for ints."""
        if self.smallest_normal is None:
            return None
        return math.frexp(self.smallest_normal)[1] - 1

    @property
    def code_dtype(self) -> np.dtype:
        """Unsigned numpy dtype of the format's bit patterns (uint8 for 8 bits or fewer)."""
        return np.dtype(f"uint{max(8, self.bits)}")

    def __repr__(self) -> str:
        return f'<Format "{self.name}">'

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles by name so that unpickling returns the singleton.
        return (get, (self.name,))


def _t(name: str) -> torch.dtype | None:
    """A torch dtype by name, or None when this torch does not have it."""
    return getattr(torch, name, None)


def _float(
    name: str,
    *,
    bits: int,
    torch_dtype: torch.dtype | None,
    numpy_dtype: npt.DTypeLike,
    triton: str | None,
    max: float,
    min: float,
    normal: float,
    subnormal: float,
    eps: float,
    inf: bool,
    nan: bool,
    negzero: bool,
    ebits: int,
    mbits: int,
    nan_code: int | None,
    note: str,
    ties: Literal["even", "up"] = "even",
) -> Format:
    return Format(
        name=name,
        bits=bits,
        kind="float",
        torch_dtype=torch_dtype,
        container=torch_dtype if torch_dtype is not None else torch.uint8,
        numpy_dtype=np.dtype(numpy_dtype),
        triton_dtype=triton,
        max=max,
        min=min,
        smallest_normal=normal,
        smallest_subnormal=subnormal,
        eps=eps,
        has_inf=inf,
        has_nan=nan,
        has_negative_zero=negzero,
        exponent_bits=ebits,
        mantissa_bits=mbits,
        nan_code=nan_code,
        ties=ties,
        note=note,
    )


def _integer(
    name: str,
    *,
    bits: int,
    kind: Kind,
    torch_dtype: torch.dtype | None,
    container: torch.dtype,
    numpy_dtype: npt.DTypeLike,
    triton: str | None,
    max: int,
    min: int,
    note: str,
) -> Format:
    return Format(
        name=name,
        bits=bits,
        kind=kind,
        torch_dtype=torch_dtype,
        container=container,
        numpy_dtype=np.dtype(numpy_dtype),
        triton_dtype=triton,
        max=max,
        min=min,
        smallest_normal=None,
        smallest_subnormal=None,
        eps=None,
        has_inf=False,
        has_nan=False,
        has_negative_zero=False,
        exponent_bits=None,
        mantissa_bits=None,
        nan_code=None,
        ties="even",
        note=note,
    )


# The table. Numbers are written as exact powers of two so that they can be checked by eye against
# the format definitions (IEEE 754, OCP 8-bit floating point, OCP Microscaling v1.0); the tests
# check every one against ml_dtypes.finfo and against an enumeration of all codes.
_TABLE: tuple[Format, ...] = (
    _float("float64", bits=64, torch_dtype=torch.float64, numpy_dtype=np.float64, triton="fp64",
           max=(2 - 2.0**-52) * 2.0**1023, min=-(2 - 2.0**-52) * 2.0**1023,
           normal=2.0**-1022, subnormal=2.0**-1074, eps=2.0**-52,
           inf=True, nan=True, negzero=True, ebits=11, mbits=52,
           nan_code=0x7FF8000000000000, note="IEEE 754 binary64"),
    _float("float32", bits=32, torch_dtype=torch.float32, numpy_dtype=np.float32, triton="fp32",
           max=(2 - 2.0**-23) * 2.0**127, min=-(2 - 2.0**-23) * 2.0**127,
           normal=2.0**-126, subnormal=2.0**-149, eps=2.0**-23,
           inf=True, nan=True, negzero=True, ebits=8, mbits=23,
           nan_code=0x7FC00000, note="IEEE 754 binary32"),
    _float("float16", bits=16, torch_dtype=torch.float16, numpy_dtype=np.float16, triton="fp16",
           max=65504.0, min=-65504.0, normal=2.0**-14, subnormal=2.0**-24, eps=2.0**-10,
           inf=True, nan=True, negzero=True, ebits=5, mbits=10,
           nan_code=0x7E00, note="IEEE 754 binary16"),
    _float("bfloat16", bits=16, torch_dtype=torch.bfloat16, numpy_dtype=ml_dtypes.bfloat16,
           triton="bf16", max=(2 - 2.0**-7) * 2.0**127, min=-(2 - 2.0**-7) * 2.0**127,
           normal=2.0**-126, subnormal=2.0**-133, eps=2.0**-7,
           inf=True, nan=True, negzero=True, ebits=8, mbits=7,
           nan_code=0x7FC0, note="float32 with a 7-bit mantissa"),
    _float("float8_e4m3fn", bits=8, torch_dtype=_t("float8_e4m3fn"),
           numpy_dtype=ml_dtypes.float8_e4m3fn, triton="fp8e4nv",
           max=448.0, min=-448.0, normal=2.0**-6, subnormal=2.0**-9, eps=2.0**-3,
           inf=False, nan=True, negzero=True, ebits=4, mbits=3,
           nan_code=0x7F, note="OCP FP8 E4M3: no inf, NaN = S.1111.111"),
    _float("float8_e5m2", bits=8, torch_dtype=_t("float8_e5m2"),
           numpy_dtype=ml_dtypes.float8_e5m2, triton="fp8e5",
           max=57344.0, min=-57344.0, normal=2.0**-14, subnormal=2.0**-16, eps=2.0**-2,
           inf=True, nan=True, negzero=True, ebits=5, mbits=2,
           nan_code=0x7E, note="OCP FP8 E5M2: IEEE-like, the top byte of float16"),
    _float("float8_e4m3fnuz", bits=8, torch_dtype=_t("float8_e4m3fnuz"),
           numpy_dtype=ml_dtypes.float8_e4m3fnuz, triton="fp8e4b8",
           max=240.0, min=-240.0, normal=2.0**-7, subnormal=2.0**-10, eps=2.0**-3,
           inf=False, nan=True, negzero=False, ebits=4, mbits=3,
           nan_code=0x80, note="E4M3, bias 8, no inf, no -0: NaN = 0x80 (AMD MI300)"),
    _float("float8_e5m2fnuz", bits=8, torch_dtype=_t("float8_e5m2fnuz"),
           numpy_dtype=ml_dtypes.float8_e5m2fnuz, triton="fp8e5b16",
           max=57344.0, min=-57344.0, normal=2.0**-15, subnormal=2.0**-17, eps=2.0**-2,
           inf=False, nan=True, negzero=False, ebits=5, mbits=2,
           nan_code=0x80, note="E5M2, bias 16, no inf, no -0: NaN = 0x80 (AMD MI300)"),
    _float("float8_e8m0fnu", bits=8, torch_dtype=_t("float8_e8m0fnu"),
           numpy_dtype=ml_dtypes.float8_e8m0fnu, triton=None,
           max=2.0**127, min=2.0**-127, normal=2.0**-127, subnormal=2.0**-127, eps=1.0,
           inf=False, nan=True, negzero=False, ebits=8, mbits=0,
           nan_code=0xFF, ties="up",
           note="MX scale: unsigned powers of two 2**-127..2**127, no zero, NaN = 0xFF"),
    _float("float6_e2m3fn", bits=6, torch_dtype=None,
           numpy_dtype=ml_dtypes.float6_e2m3fn, triton=None,
           max=7.5, min=-7.5, normal=1.0, subnormal=2.0**-3, eps=2.0**-3,
           inf=False, nan=False, negzero=True, ebits=2, mbits=3,
           nan_code=None, note="MX FP6 E2M3: no inf, no NaN"),
    _float("float6_e3m2fn", bits=6, torch_dtype=None,
           numpy_dtype=ml_dtypes.float6_e3m2fn, triton=None,
           max=28.0, min=-28.0, normal=2.0**-2, subnormal=2.0**-4, eps=2.0**-2,
           inf=False, nan=False, negzero=True, ebits=3, mbits=2,
           nan_code=None, note="MX FP6 E3M2: no inf, no NaN"),
    _float("float4_e2m1fn", bits=4, torch_dtype=None,
           numpy_dtype=ml_dtypes.float4_e2m1fn, triton=None,
           max=6.0, min=-6.0, normal=1.0, subnormal=0.5, eps=0.5,
           inf=False, nan=False, negzero=True, ebits=2, mbits=1,
           nan_code=None, note="MX FP4 E2M1: +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}"),
    _integer("int32", bits=32, kind="int", torch_dtype=torch.int32, container=torch.int32,
             numpy_dtype=np.int32, triton="i32", max=2**31 - 1, min=-(2**31),
             note="accumulator of int8 matmuls"),
    _integer("int8", bits=8, kind="int", torch_dtype=torch.int8, container=torch.int8,
             numpy_dtype=np.int8, triton="i8", max=127, min=-128, note="two's complement"),
    _integer("uint8", bits=8, kind="uint", torch_dtype=torch.uint8, container=torch.uint8,
             numpy_dtype=np.uint8, triton="u8", max=255, min=0, note="unsigned"),
    _integer("int4", bits=4, kind="int", torch_dtype=None, container=torch.int8,
             numpy_dtype=ml_dtypes.int4, triton=None, max=7, min=-8,
             note="held in torch as int8 values in [-8, 7]"),
    _integer("uint4", bits=4, kind="uint", torch_dtype=None, container=torch.uint8,
             numpy_dtype=ml_dtypes.uint4, triton=None, max=15, min=0,
             note="held in torch as uint8 values in [0, 15]"),
)  # fmt: skip

FORMATS: Mapping[str, Format] = MappingProxyType({f.name: f for f in _TABLE})
"""Read-only mapping from canonical name to `Format`, in table order."""

# torch dtypes that name a format although mpq does not hold the format in them (torch.int4 and
# torch.uint4 exist as dtypes but most operators do not support them).
_TORCH_ALIASES: dict[torch.dtype, str] = {
    d: n for n, d in (("int4", _t("int4")), ("uint4", _t("uint4"))) if d is not None
}
_BY_TORCH: dict[torch.dtype, Format] = {
    **{d: FORMATS[n] for d, n in _TORCH_ALIASES.items()},
    **{f.torch_dtype: f for f in _TABLE if f.torch_dtype is not None},
}
_BY_NUMPY: dict[np.dtype, Format] = {f.numpy_dtype: f for f in _TABLE}


def names(kind: Kind | None = None) -> tuple[str, ...]:
    """Canonical names of the known formats, in table order, optionally of one kind only.

    Example:
        >>> from mpq import dtypes
        >>> dtypes.names("uint")
        ('uint8', 'uint4')
    """
    if kind is None:
        return tuple(FORMATS)
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(
            f"Expected kind to be None or one of {_KINDS}. Received: kind={kind!r} "
            f"(of type {type(kind).__name__})"
        )
    return tuple(f.name for f in _TABLE if f.kind == kind)


# What names a format: a canonical name, a torch dtype, a numpy/ml_dtypes dtype or scalar type,
# or a Format.
DTypeLike: TypeAlias = "str | Format | torch.dtype | np.dtype[Any] | type[np.generic[Any]]"


def get(identifier: object) -> Format:
    """Resolve a format from a canonical name, a torch dtype, a numpy/ml_dtypes dtype, or a Format.

    Args:
        identifier: ``"bfloat16"``, ``torch.bfloat16``, ``np.dtype(ml_dtypes.bfloat16)``,
            ``ml_dtypes.bfloat16`` (a scalar type) or a `Format`.

    Returns:
        The `Format` singleton.

    Raises:
        TypeError: ``identifier`` is of another type.
        ValueError: it names no known format (the message lists the valid names).

    Example:
        >>> import torch
        >>> from mpq import dtypes
        >>> dtypes.get(torch.float8_e4m3fn) is dtypes.get("float8_e4m3fn")
        True
    """
    if isinstance(identifier, Format):
        return identifier
    if isinstance(identifier, str):
        fmt = FORMATS.get(identifier)
        if fmt is None:
            raise ValueError(
                f"Expected a format name, one of {names()}. Received: identifier={identifier!r}"
            )
        return fmt
    if isinstance(identifier, torch.dtype):
        fmt = _BY_TORCH.get(identifier)
        if fmt is None:
            raise ValueError(
                "Expected a torch dtype of a known format, one of "
                f"{tuple(str(d) for d in _BY_TORCH)}. Received: identifier={identifier!r}"
            )
        return fmt
    if isinstance(identifier, np.dtype) or (
        isinstance(identifier, type) and issubclass(identifier, np.generic)
    ):
        dtype = np.dtype(identifier)
        fmt = _BY_NUMPY.get(dtype)
        if fmt is None:
            raise ValueError(
                "Expected a numpy dtype of a known format, one of "
                f"{tuple(str(d) for d in _BY_NUMPY)}. Received: identifier={identifier!r}"
            )
        return fmt
    raise TypeError(
        "Expected a format name (str), a torch.dtype, a numpy dtype or an mpq.dtypes.Format. "
        f"Received: identifier={identifier!r} (of type {type(identifier).__name__})"
    )


def _num(x: float | int | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    mant, exp = math.frexp(abs(x))
    if mant == 0.5 and abs(exp - 1) > 4:  # a power of two too long to print as a decimal
        return f"{'-' if x < 0 else ''}2^{exp - 1}"
    return f"{x:.6g}"


def format_table() -> str:
    """The table of formats as GitHub markdown (docs/formats.md embeds this output verbatim).

    Example:
        >>> from mpq import dtypes
        >>> dtypes.format_table().splitlines()[0].startswith("| name |")
        True
    """

    def yn(b: bool) -> str:
        return "yes" if b else "no"

    header = (
        "| name | bits | kind | torch dtype | torch container | numpy dtype | Triton | max | min "
        "| smallest normal | smallest subnormal | eps | inf | NaN | -0 | notes |"
    )
    rows = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for f in _TABLE:
        torch_name = str(f.torch_dtype).removeprefix("torch.") if f.torch_dtype else "-"
        rows.append(
            f"| `{f.name}` | {f.bits} | {f.kind} | {torch_name} | "
            f"{str(f.container).removeprefix('torch.')} | {f.numpy_dtype.name} | "
            f"{f.triton_dtype or '-'} | {_num(f.max)} | {_num(f.min)} | "
            f"{_num(f.smallest_normal)} | {_num(f.smallest_subnormal)} | {_num(f.eps)} | "
            f"{yn(f.has_inf)} | {yn(f.has_nan)} | {yn(f.has_negative_zero)} | {f.note} |"
        )
    return "\n".join(rows) + "\n"
