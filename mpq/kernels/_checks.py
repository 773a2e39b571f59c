"""Argument checks shared by the reference and the Triton backends of mpq.kernels.

Every public op validates its inputs here once, so both backends accept and reject the same calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mpq import dtypes

ACTIVATIONS = ("none", "relu", "gelu", "silu")
"""Activation names accepted by the fused epilogue (``None`` means ``"none"``)."""

ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Scale modes, shared with the kernels: 0 = no scale, 1 = per-tensor, 2 = one per row/column.
SCALE_NONE, SCALE_TENSOR, SCALE_VECTOR = 0, 1, 2


INT32_MAX = 2**31 - 1


INT8_EXACT_K = (2**31 - 1) // (128 * 128)
"""Longest int8 x int8 reduction whose int32 sum is exact for every operand (131071): past it
``|sum| <= 128 * 128 * K`` can exceed 2**31 - 1 and an int32 accumulator wraps (or saturates)."""


def split_k_for_int32(k: int, bound: int = INT8_EXACT_K) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` chunks of ``range(k)`` of at most ``bound`` each, so that each
    chunk of an int8 reduction sums exactly in int32; the partial sums are added in int64.

    >>> split_k_for_int32(300_000)
    [(0, 131071), (131071, 262142), (262142, 300000)]
    """
    return [(start, min(start + bound, k)) for start in range(0, k, bound)]


def exact_int32(acc: torch.Tensor, what: str) -> torch.Tensor:
    """The exact int64 accumulator ``acc`` as int32 for ``out_dtype=int32``; raises when a value
    does not fit (never a wrapped number)."""
    if acc.numel() == 0:
        return acc.to(torch.int32)
    lo, hi = int(acc.min()), int(acc.max())
    if lo < -(2**31) or hi > INT32_MAX:
        raise OverflowError(
            f"Expected the exact int8 accumulator of the {what} to fit in int32 for "
            f"out_dtype=int32. Received: values in [{lo}, {hi}]; use a float out_dtype (the "
            "epilogue applies to the exact sum)"
        )
    return acc.to(torch.int32)


def max_offset(t: torch.Tensor) -> int:
    """Largest element offset a kernel computes into ``t``: sum((size - 1) * stride)."""
    if t.numel() == 0:
        return 0
    return sum((d - 1) * abs(s) for d, s in zip(t.shape, t.stride(), strict=True))


def needs_int64(*tensors: torch.Tensor) -> bool:
    """True when some element offset into one of ``tensors`` does not fit in int32.

    The Triton kernels compute offsets as (int32 index) * (stride); Triton passes a Python int
    argument as i32 when it fits, so ``offs_m * stride_am`` wraps silently once M*K reaches 2**31
    (e.g. M = 2**20 tokens, K = 4096) and the kernel reads or writes out of bounds. The launchers
    then switch the kernels' INT64 constexpr on (int64 index vectors)."""
    return any(max_offset(t) > INT32_MAX for t in tensors)


def describe(value: object) -> str:
    """Short description of a received value for error messages."""
    if isinstance(value, torch.Tensor):
        return (
            f"tensor of shape {list(value.shape)}, dtype {value.dtype}, strides "
            f"{tuple(value.stride())} on {value.device}"
        )
    return f"{value!r} (of type {type(value).__name__})"


def check_tensor(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"Expected `{name}` to be a torch.Tensor. Received: {name}={describe(value)}"
        )
    return value


def check_on_device(t: torch.Tensor, name: str, device: torch.device) -> None:
    """Refuse a scale, bias or zero point that is not on the operands' device."""
    if t.device != device:
        raise ValueError(
            f"Expected `{name}` on the operands' device {device}. Received: {name}={describe(t)}"
        )


def check_float32(value: object, name: str, device: torch.device) -> torch.Tensor:
    """A float32 tensor on ``device`` (scales)."""
    t = check_tensor(value, name)
    if t.dtype != torch.float32:
        raise TypeError(f"Expected `{name}` to be a float32 tensor. Received: {name}={describe(t)}")
    check_on_device(t, name, device)
    return t


def check_activation(activation: object) -> str:
    if activation is None:
        return "none"
    if not isinstance(activation, str) or activation not in ACTIVATION_CODES:
        raise ValueError(
            f"Expected `activation` to be one of {(None, *ACTIVATIONS)}. "
            f"Received: activation={activation!r}"
        )
    return activation


def resolve_out_dtype(out_dtype: object, default: torch.dtype, allow_int32: bool) -> torch.dtype:
    """The output dtype: a torch dtype, or anything ``mpq.dtypes.get`` resolves ("bfloat16")."""
    if out_dtype is None:
        return default
    allowed = (*OUT_DTYPES, torch.int32) if allow_int32 else OUT_DTYPES
    resolved: torch.dtype | None
    if isinstance(out_dtype, torch.dtype):
        resolved = out_dtype
    else:
        try:
            resolved = dtypes.get(out_dtype).torch_dtype
        except (TypeError, ValueError):
            resolved = None
    if resolved is None or resolved not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise ValueError(
            f"Expected `out_dtype` to be one of ({names}) or None. Received: out_dtype={out_dtype!r}"
        )
    return resolved


def operand_kind(a_dtype: torch.dtype, b_dtype: torch.dtype) -> str | None:
    """Classify a pair of operand dtypes: "float", "float8", "int8", or None if unsupported."""
    if a_dtype in FLOAT_DTYPES and a_dtype == b_dtype:
        return "float"
    if a_dtype in FLOAT8_DTYPES and b_dtype in FLOAT8_DTYPES:
        return "float8"
    if a_dtype == torch.int8 and b_dtype == torch.int8:
        return "int8"
    return None


SUPPORTED_PAIRS = (
    "float32 x float32, float16 x float16, bfloat16 x bfloat16, float8 (float8_e4m3fn or "
    "float8_e5m2, in any pairing) or int8 x int8"
)


def check_operands(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> str:
    """Both operands on one device and a supported dtype pair; return ``operand_kind``."""
    na, nb = names
    if a.device != b.device:
        raise ValueError(
            f"Expected `{na}` and `{nb}` on the same device. "
            f"Received: {na} on {a.device}, {nb} on {b.device}"
        )
    kind = operand_kind(a.dtype, b.dtype)
    if kind is None:
        raise TypeError(
            f"Expected operand dtypes {SUPPORTED_PAIRS}. "
            f"Received: {na}.dtype={a.dtype}, {nb}.dtype={b.dtype}"
        )
    return kind


def float_out_dtype(
    name: str, op_dtype: torch.dtype, out_dtype: object, scales: dict[str, object]
) -> torch.dtype:
    """Float operands: refuse scales (they apply to 8-bit operands); resolve ``out_dtype``."""
    if any(v is not None for v in scales.values()):
        names = "/".join(f"`{n}`" for n in scales)
        received = ", ".join(f"{n}={describe(v)}" for n, v in scales.items())
        raise ValueError(
            f"Expected no {names} for float operands (scales apply to float8 and int8 operands). "
            f"Received: {name}.dtype={op_dtype} with {received}"
        )
    return resolve_out_dtype(out_dtype, op_dtype, allow_int32=False)


def eight_bit_out_dtype(
    kind: str,
    out_dtype: object,
    scales: dict[str, object],
    modes: tuple[int, int],
    bias: object,
    activation: str,
) -> torch.dtype:
    """8-bit operands: bfloat16 by default; int32 (int8 only) only for the raw accumulator."""
    out = resolve_out_dtype(out_dtype, torch.bfloat16, allow_int32=kind == "int8")
    plain = modes == (SCALE_NONE, SCALE_NONE) and bias is None and activation == "none"
    if out == torch.int32 and not plain:
        received = ", ".join(f"{n}={describe(v)}" for n, v in scales.items())
        raise ValueError(
            "Expected out_dtype=int32 only for the raw int8 accumulator (no scales, bias or "
            f"activation). Received: out_dtype=int32 with {received}, bias={describe(bias)}, "
            f"activation={activation!r}"
        )
    return out


def scale_mode(
    scale: object,
    length: int,
    name: str,
    what: str,
    device: torch.device,
    shapes: tuple[tuple[int, ...], ...],
) -> tuple[int, torch.Tensor | None]:
    """Validate a float32 scale; return (mode, flat 1-D scale or None).

    ``shapes`` are the accepted shapes of a per-row/per-column scale (besides ``()`` and ``(1,)``
    for a per-tensor scale).
    """
    if scale is None:
        return SCALE_NONE, None
    scale = check_float32(scale, name, device)
    shape = tuple(scale.shape)
    if shape in ((), (1,)):
        return SCALE_TENSOR, scale.reshape(1)
    if shape in shapes:
        return SCALE_VECTOR, scale.reshape(length)
    accepted = ", ".join(str(list(s)) for s in ((), (1,), *dict.fromkeys(shapes)))
    raise ValueError(
        f"Expected `{name}` to be per-tensor or {what}, i.e. of shape {accepted}. "
        f"Received: {name}={describe(scale)}"
    )


def check_bias(bias: object, n: int, device: torch.device, name: str = "bias") -> None:
    if bias is None:
        return
    bias = check_tensor(bias, name)
    if bias.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"Expected `{name}` to be a float32, float16 or bfloat16 tensor. "
            f"Received: {name}={describe(bias)}"
        )
    if tuple(bias.shape) != (n,):
        raise ValueError(f"Expected `{name}` of shape [{n}]. Received: {name}={describe(bias)}")
    check_on_device(bias, name, device)


def check_no_grad(op: str, tensors: tuple[tuple[str, object], ...]) -> None:
    """8-bit and int4 paths are forward-only: refuse inputs that carry autograd history."""
    if torch.is_grad_enabled():
        for name, t in tensors:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise RuntimeError(
                    f"Expected no autograd history on the inputs of the {op} (the float8, int8 and "
                    "int4 paths are forward-only; the quantization layers handle their gradients). "
                    f"Received: {name}={describe(t)} with requires_grad=True; detach it or run "
                    "under torch.no_grad()"
                )


@dataclass(frozen=True)
class MatmulSpec:
    """Checked description of one matmul call."""

    kind: str  # "float", "float8", "int8"
    M: int
    N: int
    K: int
    lead: tuple[int, ...]  # leading dims of `a` (output shape is lead + (N,))
    a_scale_mode: int
    a_scale: torch.Tensor | None
    b_scale_mode: int
    b_scale: torch.Tensor | None
    activation: str
    out_dtype: torch.dtype


def is_k_major(b: torch.Tensor) -> bool:
    """True when the logical [K, N] tensor ``b`` is the transpose of a contiguous [N, K] tensor."""
    return b.t().is_contiguous()


def check_matmul(
    a: object,
    b: object,
    a_scale: object,
    b_scale: object,
    bias: object,
    activation: object,
    out_dtype: object,
) -> MatmulSpec:
    """Validate a matmul call (see ``mpq.kernels.matmul``) and return its spec."""
    a = check_tensor(a, "a")
    b = check_tensor(b, "b")
    if a.ndim < 2:
        raise ValueError(
            f"Expected `a` with at least 2 dims [..., M, K]. Received: a={describe(a)}"
        )
    if b.ndim != 2:
        raise ValueError(f"Expected `b` with 2 dims [K, N]. Received: b={describe(b)}")
    if a.shape[-1] != b.shape[0]:
        raise ValueError(
            f"Expected a.shape[-1] == b.shape[0] (the reduction length K). "
            f"Received: a={describe(a)} and b={describe(b)}"
        )
    kind = check_operands(a, b, ("a", "b"))
    lead = tuple(a.shape[:-1])
    M = math.prod(lead)
    K, N = b.shape
    activation = check_activation(activation)
    check_bias(bias, N, a.device)
    scales = {"a_scale": a_scale, "b_scale": b_scale}
    if kind == "float":
        out = float_out_dtype("a", a.dtype, out_dtype, scales)
        return MatmulSpec(kind, M, N, K, lead, 0, None, 0, None, activation, out)
    check_no_grad(
        "8-bit matmul",
        (("a", a), ("b", b), ("a_scale", a_scale), ("b_scale", b_scale), ("bias", bias)),
    )
    # 8-bit operands: K-major storage, as torch._scaled_mm wants it; nothing is transposed here.
    if a.stride(-1) != 1 and a.shape[-1] > 1:
        raise ValueError(
            "Expected a row-major 8-bit `a` (stride 1 along K). Received: "
            f"a={describe(a)}; call a.contiguous() if that copy is intended"
        )
    if not is_k_major(b):
        raise ValueError(
            "Expected a K-major 8-bit `b` of logical shape [K, N], i.e. b = w.t() for a contiguous "
            f"[N, K] weight w. Received: b={describe(b)}"
        )
    a_mode, a_flat = scale_mode(
        a_scale, M, "a_scale", f"per-row of a (M={M})", a.device, ((M,), (M, 1), lead, (*lead, 1))
    )
    b_mode, b_flat = scale_mode(
        b_scale, N, "b_scale", f"per-column of b (N={N})", a.device, ((N,), (1, N))
    )
    out = eight_bit_out_dtype(kind, out_dtype, scales, (a_mode, b_mode), bias, activation)
    return MatmulSpec(kind, M, N, K, lead, a_mode, a_flat, b_mode, b_flat, activation, out)


@dataclass(frozen=True)
class Int4Spec:
    """Checked description of one weight-only int4 matmul call."""

    M: int
    N: int
    K: int
    lead: tuple[int, ...]
    group_size: int  # == K (or more) for per-channel scales
    scale: torch.Tensor  # [G, N] float32
    zero: torch.Tensor | None  # [G, N] float32
    activation: str
    out_dtype: torch.dtype


def check_matmul_int4(
    a: object,
    b_packed: object,
    b_scale: object,
    b_zero: object,
    group_size: object,
    bias: object,
    activation: object,
    out_dtype: object,
) -> Int4Spec:
    """Validate a weight-only int4 matmul call (see ``mpq.kernels.matmul_int4``)."""
    a = check_tensor(a, "a")
    b_packed = check_tensor(b_packed, "b_packed")
    if a.ndim < 2:
        raise ValueError(
            f"Expected `a` with at least 2 dims [..., M, K]. Received: a={describe(a)}"
        )
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"Expected a float32, float16 or bfloat16 `a` for the int4 weight-only matmul. "
            f"Received: a={describe(a)}"
        )
    if b_packed.dtype not in (torch.int8, torch.uint8) or b_packed.ndim != 2:
        raise TypeError(
            "Expected `b_packed` to be a 2-D int8 or uint8 tensor of shape [ceil(K/2), N] holding "
            f"two int4 values per byte along K. Received: b_packed={describe(b_packed)}"
        )
    K = a.shape[-1]
    N = b_packed.shape[1]
    if b_packed.shape[0] != (K + 1) // 2:
        raise ValueError(
            f"Expected `b_packed` of shape [ceil(K/2), N] = [{(K + 1) // 2}, N] for K={K} "
            f"(a.shape[-1]). Received: b_packed={describe(b_packed)}"
        )
    if a.device != b_packed.device:
        raise ValueError(
            f"Expected `a` and `b_packed` on the same device. Received: a on {a.device}, "
            f"b_packed on {b_packed.device}"
        )
    lead = tuple(a.shape[:-1])
    M = math.prod(lead)
    b_scale = check_float32(b_scale, "b_scale", a.device)
    if group_size is not None and (
        not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1
    ):
        raise ValueError(
            f"Expected `group_size` to be a positive int or None. Received: group_size={describe(group_size)}"
        )
    shape = tuple(b_scale.shape)
    if shape in ((N,), (1, N)) and group_size is None:
        groups, gsize = 1, max(K, 1)
    elif len(shape) == 2 and shape[1] == N and group_size is not None:
        groups, gsize = shape[0], group_size
        if groups != -(-K // group_size):
            raise ValueError(
                f"Expected `b_scale` of shape [ceil(K/group_size), N] = [{-(-K // group_size)}, {N}] "
                f"for K={K}, group_size={group_size}. Received: b_scale={describe(b_scale)}"
            )
    else:
        raise ValueError(
            f"Expected `b_scale` per output channel ([{N}] or [1, {N}], group_size=None) or per "
            f"group ([ceil(K/group_size), {N}] with group_size given). Received: "
            f"b_scale={describe(b_scale)}, group_size={group_size!r}"
        )
    scale = b_scale.reshape(groups, N)
    zero = None
    if b_zero is not None:
        b_zero = check_tensor(b_zero, "b_zero")
        if tuple(b_zero.shape) != shape:
            raise ValueError(
                f"Expected `b_zero` of the same shape as b_scale {list(shape)}. "
                f"Received: b_zero={describe(b_zero)}"
            )
        if b_zero.dtype not in (torch.float32, torch.int8, torch.int32):
            raise TypeError(
                f"Expected `b_zero` to be a float32, int8 or int32 tensor. Received: b_zero={describe(b_zero)}"
            )
        check_on_device(b_zero, "b_zero", a.device)
        zero = b_zero.reshape(groups, N).to(torch.float32)
    activation = check_activation(activation)
    check_bias(bias, N, a.device)
    check_no_grad(
        "int4 matmul", (("a", a), ("b_scale", b_scale), ("b_zero", b_zero), ("bias", bias))
    )
    out = resolve_out_dtype(out_dtype, a.dtype, allow_int32=False)
    return Int4Spec(M, N, K, lead, gsize, scale, zero, activation, out)


def _pair(value: object, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        pair = (value[0], value[1])
    else:
        raise ValueError(
            f"Expected `{name}` to be an int or a pair of ints. Received: {name}={value!r}"
        )
    if min(pair) < minimum:
        raise ValueError(f"Expected `{name}` >= {minimum}. Received: {name}={value!r}")
    return pair


Padding = int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]
"""A conv padding: one int, (ph, pw), or ((top, bottom), (left, right))."""


def _padding(value: object) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right) from an int, (ph, pw) or ((top, bottom), (left, right))."""
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (tuple, list)) for v in value)
    ):
        (top, bottom), (left, right) = _pair(value[0], "padding", 0), _pair(value[1], "padding", 0)
        return top, bottom, left, right
    try:
        ph, pw = _pair(value, "padding", 0)
    except ValueError:
        raise ValueError(
            "Expected `padding` to be an int, a pair (ph, pw) or ((top, bottom), (left, right)) of "
            f"non-negative ints. Received: padding={value!r}"
        ) from None
    return ph, ph, pw, pw


@dataclass(frozen=True)
class Conv2dSpec:
    """Checked description of one conv2d call."""

    kind: str
    batch: int
    H: int
    W: int
    C: int
    OC: int
    KH: int
    KW: int
    OH: int
    OW: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    dilation: tuple[int, int]
    groups: int
    x_scale_mode: int
    x_scale: torch.Tensor | None
    w_scale_mode: int
    w_scale: torch.Tensor | None
    activation: str
    out_dtype: torch.dtype


def check_conv2d(
    x: object,
    w: object,
    stride: object,
    padding: object,
    dilation: object,
    groups: object,
    x_scale: object,
    w_scale: object,
    bias: object,
    activation: object,
    out_dtype: object,
) -> Conv2dSpec:
    """Validate a conv2d call (see ``mpq.kernels.conv2d``) and return its spec."""
    x = check_tensor(x, "x")
    w = check_tensor(w, "w")
    if x.ndim != 4:
        raise ValueError(
            f"Expected a channels-last `x` of shape [N, H, W, C]. Received: x={describe(x)}"
        )
    if w.ndim != 4:
        raise ValueError(
            f"Expected `w` of shape [OC, KH, KW, C/groups] (K-major). Received: w={describe(w)}"
        )
    kind = check_operands(x, w, ("x", "w"))
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"Expected `groups` to be a positive int. Received: groups={groups!r}")
    stride = _pair(stride, "stride", 1)
    dilation = _pair(dilation, "dilation", 1)
    pad = _padding(padding)
    batch, H, W, C = x.shape
    OC, KH, KW, Cg = w.shape
    if C % groups or OC % groups or Cg != C // groups:
        raise ValueError(
            f"Expected C and OC divisible by groups={groups} and w.shape[3] == C/groups. "
            f"Received: x={describe(x)}, w={describe(w)}"
        )
    OH = (H + pad[0] + pad[1] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    OW = (W + pad[2] + pad[3] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    if OH < 1 or OW < 1 or KH < 1 or KW < 1:
        raise ValueError(
            "Expected a kernel that fits in the padded input (output size >= 1). Received: "
            f"x={describe(x)}, w={describe(w)}, padding={padding!r}, dilation={dilation}"
        )
    activation = check_activation(activation)
    check_bias(bias, OC, x.device)
    scales = {"x_scale": x_scale, "w_scale": w_scale}
    if kind == "float":
        out = float_out_dtype("x", x.dtype, out_dtype, scales)
        return Conv2dSpec(
            kind, batch, H, W, C, OC, KH, KW, OH, OW, stride, pad, dilation, groups,
            0, None, 0, None, activation, out,
        )  # fmt: skip
    check_no_grad(
        "8-bit conv2d",
        (("x", x), ("w", w), ("x_scale", x_scale), ("w_scale", w_scale), ("bias", bias)),
    )
    if not w.is_contiguous():
        raise ValueError(
            "Expected a contiguous 8-bit `w` of shape [OC, KH, KW, C/groups] (K-major). "
            f"Received: w={describe(w)}"
        )
    x_mode, x_flat = scale_mode(x_scale, 1, "x_scale", "per-tensor only", x.device, ())
    w_mode, w_flat = scale_mode(
        w_scale, OC, "w_scale", f"per output channel (OC={OC})", x.device, ((OC,),)
    )
    out = eight_bit_out_dtype(kind, out_dtype, scales, (x_mode, w_mode), bias, activation)
    return Conv2dSpec(
        kind, batch, H, W, C, OC, KH, KW, OH, OW, stride, pad, dilation, groups,
        x_mode, x_flat, w_mode, w_flat, activation, out,
    )  # fmt: skip
