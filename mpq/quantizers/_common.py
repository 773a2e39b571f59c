"""Private helpers shared by the quantizers: format lookup, argument validation, group expansion.

Nothing here is public API; the public functions re-validate through these helpers so that every
bad input raises the same kind of error with the same wording.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mpq import dtypes

# Epsilon that keeps scales positive for all-zero channels/groups. It enters as a floor on the
# reduced statistic *before* the division by the integer range: scale = max(stat, EPS) / qrange,
# computed in float32 (so EPS is float32(1e-7) = 1.00000001e-07).
EPS = 1e-7

_FLOAT_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class IntFormat:
    """Storage range of an integer format (int4 values are held in int8 containers)."""

    name: str
    qmin: int
    qmax: int


@dataclass(frozen=True)
class Float8Format:
    """A float8 format: its torch dtype, largest finite value and bound of the saturating clamp.

    `sat_bound`/`sat_inclusive` describe the magnitudes that round (nearest-even, no saturation)
    to at most `max`: |v| < sat_bound, or |v| == sat_bound when `sat_inclusive`.
    """

    name: str
    torch_dtype: torch.dtype
    max: float
    mantissa_bits: int

    @property
    def sat_bound(self) -> float:
        ulp = 2.0 ** (math.floor(math.log2(self.max)) - self.mantissa_bits)
        return self.max + ulp / 2

    @property
    def sat_inclusive(self) -> bool:
        # A tie at max + ulp/2 rounds to the neighbour with an even last mantissa bit.
        ulp = 2.0 ** (math.floor(math.log2(self.max)) - self.mantissa_bits)
        return int(self.max / ulp) % 2 == 0


# Ranges come from the formats table (`mpq.dtypes`), the single source of truth.
_INT_FORMATS = {
    name: IntFormat(name, int(dtypes.get(name).min), int(dtypes.get(name).max))
    for name in ("int8", "int4")
}


def _float8_spec(name: str) -> Float8Format:
    fmt = dtypes.get(name)
    if fmt.mantissa_bits is None:
        raise ValueError(f"Expected a float format. Received: {fmt!r}")
    return Float8Format(name, fmt.container, float(fmt.max), fmt.mantissa_bits)


_FLOAT8_FORMATS = {
    name: _float8_spec(name)
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
}
_TORCH_DTYPE_NAMES = {torch.int8: "int8"} | {f.torch_dtype: n for n, f in _FLOAT8_FORMATS.items()}


def describe(value: object) -> str:
    """`repr` of a received value plus its type, for error messages."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (of type {type(value).__name__})"


def _format_name(fmt: object) -> str | None:
    if isinstance(fmt, str):
        return fmt
    if isinstance(fmt, torch.dtype):
        return _TORCH_DTYPE_NAMES.get(fmt)
    name = getattr(fmt, "name", None)  # numpy / ml_dtypes dtypes, mpq.dtypes.Format
    return name if isinstance(name, str) else None


def int_format(fmt: object, *, arg: str = "fmt") -> IntFormat:
    """Resolve an integer format ("int8", "int4", torch.int8, ...) or raise ValueError."""
    name = _format_name(fmt)
    spec = _INT_FORMATS.get(name) if name is not None else None
    if spec is None:
        raise ValueError(
            f"Expected an integer format, one of {sorted(_INT_FORMATS)}. "
            f"Received: {arg}={describe(fmt)}"
        )
    return spec


def float8_format(fmt: object, *, arg: str = "fmt") -> Float8Format:
    """Resolve a float8 format ("float8_e4m3fn", torch.float8_e5m2, ...) or raise ValueError."""
    name = _format_name(fmt)
    spec = _FLOAT8_FORMATS.get(name) if name is not None else None
    if spec is None:
        raise ValueError(
            f"Expected a float8 format, one of {sorted(_FLOAT8_FORMATS)}. "
            f"Received: {arg}={describe(fmt)}"
        )
    return spec


def any_format(fmt: object, *, arg: str = "fmt") -> IntFormat | Float8Format:
    """Resolve an integer or float8 format or raise ValueError."""
    name = _format_name(fmt)
    if name in _INT_FORMATS:
        return _INT_FORMATS[name]
    if name in _FLOAT8_FORMATS:
        return _FLOAT8_FORMATS[name]
    raise ValueError(
        f"Expected a quantized format, one of {sorted(_INT_FORMATS) + sorted(_FLOAT8_FORMATS)}. "
        f"Received: {arg}={describe(fmt)}"
    )


def check_tensor(x: object, arg: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected `{arg}` to be a torch.Tensor. Received: {arg}={describe(x)}")
    return x


def check_float_tensor(x: object, arg: str, *, allow_empty: bool = False) -> torch.Tensor:
    """A floating torch tensor (float32/float16/bfloat16/float64), non-empty unless allowed."""
    x = check_tensor(x, arg)
    if x.dtype not in _FLOAT_INPUT_DTYPES:
        raise TypeError(
            f"Expected `{arg}` to be a floating tensor (float32, float16, bfloat16 or float64). "
            f"Received: {arg} of dtype {x.dtype}"
        )
    if not allow_empty and x.numel() == 0:
        raise ValueError(
            f"Expected `{arg}` to be a non-empty tensor. Received: {arg} of shape {tuple(x.shape)}"
        )
    return x


def check_int_tensor(x: object, arg: str) -> torch.Tensor:
    """A torch tensor of a (non-bool) integer dtype."""
    x = check_tensor(x, arg)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(
            f"Expected `{arg}` to be an integer tensor (e.g. torch.int8). "
            f"Received: {arg} of dtype {x.dtype}"
        )
    return x


def require_finite(x: torch.Tensor, arg: str) -> None:
    """Raise ValueError if `x` holds NaN or +-inf (synchronises with the device)."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = x.reshape(-1)[(~finite).reshape(-1)][0].item()
        raise ValueError(
            f"Expected `{arg}` to hold only finite values. Received: {arg} with {bad} non-finite "
            f"element(s) (e.g. {first}); pass check_finite=False to skip this check"
        )


def check_int_arg(value: object, arg: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `{arg}` to be an int. Received: {arg}={describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"Expected `{arg}` >= {minimum}. Received: {arg}={value}")
    return value


def normalize_axis(axis: object, ndim: int, arg: str = "axis") -> int:
    """One axis in [-ndim, ndim) -> its non-negative index."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"Expected `{arg}` to be an int. Received: {arg}={describe(axis)}")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"Expected `{arg}` in [-{ndim}, {ndim}) for a tensor of rank {ndim}. "
            f"Received: {arg}={axis}"
        )
    return axis % ndim


def normalize_reduce_axes(reduce_axes: object, ndim: int) -> tuple[int, ...]:
    """None -> all axes; an int or a sequence of ints -> sorted, unique, non-negative axes."""
    if reduce_axes is None:
        return tuple(range(ndim))
    if isinstance(reduce_axes, int) and not isinstance(reduce_axes, bool):
        return (normalize_axis(reduce_axes, ndim, "reduce_axes"),)
    if not isinstance(reduce_axes, (tuple, list)):
        raise TypeError(
            "Expected `reduce_axes` to be None, an int or a tuple of ints. "
            f"Received: reduce_axes={describe(reduce_axes)}"
        )
    axes = [normalize_axis(a, ndim, "reduce_axes") for a in reduce_axes]
    if len(set(axes)) != len(axes):
        raise ValueError(
            f"Expected `reduce_axes` without repeated axes. Received: reduce_axes={reduce_axes!r} "
            f"for a tensor of rank {ndim}"
        )
    return tuple(sorted(axes))


def group_axis_of(reduce_axes: object, ndim: int) -> int:
    """With `group_size`, `reduce_axes` must name exactly one axis (the one split into groups)."""
    if isinstance(reduce_axes, (tuple, list)) and len(reduce_axes) == 1:
        reduce_axes = reduce_axes[0]
    if reduce_axes is None or isinstance(reduce_axes, (tuple, list)):
        raise ValueError(
            "Expected `reduce_axes` to be a single axis when `group_size` is given (the axis that "
            f"is split into groups). Received: reduce_axes={reduce_axes!r}"
        )
    return normalize_axis(reduce_axes, ndim, "reduce_axes")


def grouped(x: torch.Tensor, axis: int, group_size: int) -> torch.Tensor:
    """View `x` with `axis` moved last and split into groups: (..., n_groups, group_size).

    The last group is zero-padded. Zeros leave the abs-max unchanged, and the asymmetric
    statistics are widened to include 0 anyway (min <= 0 <= max), so padding never changes a
    group's statistics.
    """
    moved = x.movedim(axis, -1)
    n = moved.shape[-1]
    group_size = min(group_size, max(n, 1))  # one group of n, not n padded up to a huge size
    n_groups = -(-n // group_size)
    pad = n_groups * group_size - n
    if pad:
        moved = torch.nn.functional.pad(moved, (0, pad))
    return moved.reshape(*moved.shape[:-1], n_groups, group_size)


def ungroup_stat(stat: torch.Tensor, axis: int) -> torch.Tensor:
    """(..., n_groups) statistics from `grouped` -> `axis` holding the n_groups dimension."""
    return stat.movedim(-1, axis)


def expand_groups(t: torch.Tensor, axis: int, group_size: int, size: int) -> torch.Tensor:
    """Repeat each group's parameter `group_size` times along `axis` and trim to `size`."""
    group_size = min(group_size, max(size, 1))  # never materialise more than `size` entries
    return t.repeat_interleave(group_size, dim=axis).narrow(axis, 0, size)


def check_group_params(
    q_shape: tuple[int, ...], t: torch.Tensor, arg: str, axis: int, group_size: int
) -> None:
    """A grouped parameter must have ceil(n / group_size) entries along `axis`, q's sizes elsewhere
    (or 1)."""
    n_groups = -(-q_shape[axis] // group_size)
    expected = list(q_shape)
    expected[axis] = n_groups
    ok = t.dim() == len(q_shape) and all(
        s == e or (s == 1 and d != axis)
        for d, (s, e) in enumerate(zip(t.shape, expected, strict=True))
    )
    if not ok:
        raise ValueError(
            f"Expected `{arg}` of shape {tuple(expected)} (ceil({q_shape[axis]} / {group_size}) = "
            f"{n_groups} groups along axis {axis}; size 1 allowed on other axes). "
            f"Received: {arg} of shape {tuple(t.shape)}"
        )


def check_broadcast(target_shape: tuple[int, ...], t: torch.Tensor, arg: str, what: str) -> None:
    """`t` must broadcast to `target_shape` without enlarging it."""
    try:
        out = torch.broadcast_shapes(tuple(target_shape), tuple(t.shape))  # type: ignore[no-untyped-call]  # torch: unannotated
    except RuntimeError:
        out = None
    if out != tuple(target_shape):
        raise ValueError(
            f"Expected `{arg}` to broadcast against {what} of shape {tuple(target_shape)}. "
            f"Received: {arg} of shape {tuple(t.shape)}"
        )
