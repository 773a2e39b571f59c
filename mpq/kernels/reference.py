"""Reference (torch) implementations of the mpq.kernels ops: the CPU path and the test oracle.

Same semantics as the Triton kernels: same accumulation dtype, same epilogue order
(scales -> bias -> activation on the fp32 accumulator), one cast at the end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import _checks

__all__ = [
    "activation_fn",
    "conv2d",
    "conv_accumulator",
    "epilogue",
    "matmul",
    "matmul_int4",
    "unpack_int4",
]

_SQRT1_2 = 0.7071067811865476


def _gelu(x: torch.Tensor) -> torch.Tensor:
    # Exact (erf) GELU, written as the kernels compute it: 0.5 * x * (1 + erf(x / sqrt(2))).
    return 0.5 * x * (1.0 + torch.erf(x * _SQRT1_2))


def _silu(x: torch.Tensor) -> torch.Tensor:
    # x * sigmoid(x), written as the kernels compute it (through exp(-|x|), no overflow).
    e = torch.exp(-x.abs())
    return torch.where(x >= 0, x / (1.0 + e), x * e / (1.0 + e))


Activation = Callable[[torch.Tensor], torch.Tensor]

_ACTIVATIONS: dict[str, Activation | None] = {
    "none": None,
    "relu": torch.relu,
    "gelu": _gelu,
    "silu": _silu,
}


def activation_fn(name: str | None) -> Activation | None:
    """The epilogue activation ``name`` as a torch function (None for "none"/None)."""
    return _ACTIVATIONS[_checks.check_activation(name)]


def epilogue(
    acc: torch.Tensor,
    *,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Apply the fused epilogue to an fp32 accumulator ``acc`` [M, N], in the kernels' order.

    ``acc * row_scale[:, None]``, then ``* col_scale[None, :]`` (each a 1-D float32 tensor of
    length 1, M or N), then ``+ bias``, then the activation, all in float32, then one cast.
    """
    # The first step makes a new tensor; later steps update it in place (same values, fewer
    # allocations).
    owned = False
    if row_scale is not None:
        acc = acc * (row_scale if row_scale.numel() == 1 else row_scale[:, None])
        owned = True
    if col_scale is not None:
        acc = acc.mul_(col_scale) if owned else acc * col_scale
        owned = True
    if bias is not None:
        b = bias.to(torch.float32)
        acc = acc.add_(b) if owned else acc + b
    fn = _ACTIVATIONS[activation or "none"]
    if fn is not None:
        acc = fn(acc)
    return acc.to(out_dtype)


def _int32_accumulator(exact: torch.Tensor) -> torch.Tensor:
    # An int32 accumulator wraps on overflow (two's complement); so does this conversion.
    return exact.to(torch.int64).to(torch.int32)


def _store(
    acc: torch.Tensor,
    row_scale: torch.Tensor | None,
    col_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    activation: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """What the kernels store: the raw int32 accumulator for ``out_dtype=int32`` (the checks
    allow it only without scales, bias or activation), else the epilogue on fp32 ``acc``."""
    if out_dtype == torch.int32:
        return acc
    return epilogue(
        acc.to(torch.float32),
        row_scale=row_scale,
        col_scale=col_scale,
        bias=bias,
        activation=activation,
        out_dtype=out_dtype,
    )


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    a_scale: torch.Tensor | None = None,
    b_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """Reference of ``mpq.kernels.matmul``: ``act((a @ b) * a_scale * b_scale + bias)``.

    Shapes: ``a`` [..., M, K] (leading dims flattened into M), ``b`` [K, N] -> [..., M, N].
    Float inputs accumulate in float32 (differentiable); int8 accumulates exactly in int32;
    float8 upcasts exactly to float32 and accumulates in float32.

    Example::

        >>> a, b = torch.randn(4, 8), torch.randn(8, 3)
        >>> matmul(a, b, activation="relu").shape
        torch.Size([4, 3])
    """
    if (
        isinstance(a, torch.Tensor)
        and a.dtype == torch.float32
        and isinstance(b, torch.Tensor)
        and b.dtype == torch.float32
        and out_dtype is None
        and a_scale is None
        and b_scale is None
        and a.ndim >= 2
        and b.ndim == 2
        and a.shape[-1] == b.shape[0]
        and a.device == b.device
        and (
            bias is None
            or (
                isinstance(bias, torch.Tensor)
                and bias.dtype == torch.float32
                and bias.shape == (b.shape[1],)
                and bias.device == a.device
            )
        )
    ):
        # Hot path (float32 layers on CPU): cheap checks only, one fused torch call.
        if a.ndim == 2:
            out = torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)
        else:
            out = F.linear(a, b.t(), bias)
        if activation is None:
            return out
        fn = _ACTIVATIONS[_checks.check_activation(activation)]
        return out if fn is None else fn(out)
    spec = _checks.check_matmul(a, b, a_scale, b_scale, bias, activation, out_dtype)
    a2 = a.reshape(spec.M, spec.K)
    if spec.kind != "int8":
        # float16/bfloat16/float8 -> float32 is exact; the products are accumulated in float32.
        acc = torch.matmul(a2.to(torch.float32), b.to(torch.float32))
    else:
        # Exact integer accumulation (float64 holds every partial sum of int8 products exactly
        # up to K = 2**53 / 2**14), then the int32 accumulator of the kernels.
        acc = _int32_accumulator(torch.matmul(a2.to(torch.float64), b.to(torch.float64)))
    out = _store(acc, spec.a_scale, spec.b_scale, bias, spec.activation, spec.out_dtype)
    return out.reshape(*spec.lead, spec.N)


def unpack_int4(b_packed: torch.Tensor, k: int) -> torch.Tensor:
    """Unpack int4 values packed two per byte along dim 0: [ceil(k/2), N] -> int8 [k, N].

    Element ``2i`` sits in the low nibble of byte ``i`` and ``2i + 1`` in the high nibble; both
    are sign-extended (codes 8..15 are -8..-1). Works for int8 and uint8 containers.
    """
    p = b_packed.to(torch.int16)
    low = ((p & 0xF) ^ 8) - 8
    high = (((p >> 4) & 0xF) ^ 8) - 8
    q = torch.stack((low, high), dim=1).reshape(2 * p.shape[0], *p.shape[1:])
    return q[:k].to(torch.int8)


def dequantize_int4(
    spec: _checks.Int4Spec, b_packed: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """The [K, N] weight the int4 kernel multiplies: ``((q - zero) * scale)`` cast to ``dtype``."""
    q = unpack_int4(b_packed, spec.K).to(torch.float32)
    group = torch.arange(spec.K, device=q.device) // spec.group_size
    w = q
    if spec.zero is not None:
        w = w - spec.zero[group]
    w = w * spec.scale[group]
    return w.to(dtype)


def matmul_int4(
    a: torch.Tensor,
    b_packed: torch.Tensor,
    b_scale: torch.Tensor,
    *,
    b_zero: torch.Tensor | None = None,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """Reference of ``mpq.kernels.matmul_int4`` (weight-only int4).

    The weight is dequantized as the kernel does it in registers, ``w = ((q - zero) * scale)``
    cast to ``a.dtype``, then ``a @ w`` accumulates in float32, then bias and activation.

    Example::

        >>> a = torch.randn(2, 4)
        >>> b_packed = torch.zeros(2, 3, dtype=torch.int8)
        >>> matmul_int4(a, b_packed, torch.ones(3)).shape
        torch.Size([2, 3])
    """
    spec = _checks.check_matmul_int4(
        a, b_packed, b_scale, b_zero, group_size, bias, activation, out_dtype
    )
    w = dequantize_int4(spec, b_packed, a.dtype)
    # The GEMM of the CPU fast path (same op, same layouts: an [N, K] weight), so the two agree
    # bit for bit on one machine.
    w_nk = w.to(torch.float32).t().contiguous()
    acc = F.linear(a.reshape(spec.M, spec.K).to(torch.float32), w_nk)
    out = epilogue(acc, bias=bias, activation=spec.activation, out_dtype=spec.out_dtype)
    return out.reshape(*spec.lead, spec.N)


def conv_accumulator(spec: _checks.Conv2dSpec, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``F.conv2d`` of NHWC ``x`` and ``w`` [OC, KH, KW, C/groups] (already in the compute dtype)
    on channels-last views, as [N*OH*OW, OC]. Shared by the reference and the CPU fast path, so
    both run the same op on the same layout.

    NHWC viewed as NCHW is a channels_last tensor: torch's CPU/cuDNN convolutions run on it
    natively. The weight is given the same memory format (a strided weight sends torch's CPU
    convolution to a path ~20x slower); symmetric padding goes to conv2d itself."""
    x_nchw = x.permute(0, 3, 1, 2)
    layout = (
        torch.channels_last
        if x_nchw.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    w_oihw = w.permute(0, 3, 1, 2).contiguous(memory_format=layout)
    top, bottom, left, right = spec.padding
    pad: tuple[int, int] | int = (top, left)
    if top != bottom or left != right:
        x_nchw = F.pad(x_nchw, (left, right, top, bottom))
        pad = 0
    acc = F.conv2d(x_nchw, w_oihw, None, spec.stride, pad, spec.dilation, spec.groups)
    return acc.permute(0, 2, 3, 1).reshape(-1, spec.OC)


def conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    stride: int | tuple[int, int] = 1,
    padding: _checks.Padding = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    x_scale: torch.Tensor | None = None,
    w_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """Reference of ``mpq.kernels.conv2d`` through ``F.conv2d`` on channels-last views.

    Shapes: ``x`` [N, H, W, C], ``w`` [OC, KH, KW, C/groups] -> [N, OH, OW, OC] (contiguous).
    Float inputs are convolved in float32 (differentiable), float8 in float32 after an exact
    upcast, int8 in float64 (exact) then wrapped to the int32 accumulator.

    Example::

        >>> x, w = torch.randn(1, 5, 5, 3), torch.randn(4, 3, 3, 3)
        >>> conv2d(x, w, padding=1).shape
        torch.Size([1, 5, 5, 4])
    """
    spec = _checks.check_conv2d(
        x, w, stride, padding, dilation, groups, x_scale, w_scale, bias, activation, out_dtype
    )
    compute = torch.float64 if spec.kind == "int8" else torch.float32
    acc = conv_accumulator(spec, x.to(compute), w.to(compute))
    if spec.kind == "int8":
        acc = _int32_accumulator(acc)
    out = _store(acc, spec.x_scale, spec.w_scale, bias, spec.activation, spec.out_dtype)
    return out.reshape(spec.batch, spec.OH, spec.OW, spec.OC)
