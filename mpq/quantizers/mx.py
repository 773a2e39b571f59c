"""Microscaling quantizers: OCP MX v1.0 blocks (MXFP8/6/4, MXINT8) and NVFP4, along the last axis.

Pure functions on raw codes (uint8): element codes per value, one scale code per block. Exact:
scales are computed from exponent bits (``frexp``), elements are rounded by `mpq.dtypes.encode`
(nearest-even, saturating) in float64, and dequantization multiplies exactly in float64 and casts
once. See docs/quantization.md, "Microscaling formats".
"""

from __future__ import annotations

import math

import torch

from mpq import dtypes
from mpq.quantizers import _common as C

__all__ = [
    "MX_BLOCK_SIZE",
    "MX_ELEMENT_FORMATS",
    "NVFP4_BLOCK_SIZE",
    "dequantize_mx",
    "dequantize_nvfp4",
    "mx_emax",
    "quantize_mx",
    "quantize_nvfp4",
]

MX_BLOCK_SIZE = 32  # OCP MX v1.0: k = 32 elements share one scale
NVFP4_BLOCK_SIZE = 16
MX_ELEMENT_FORMATS: tuple[str, ...] = (
    "float8_e4m3fn",
    "float8_e5m2",
    "float6_e2m3fn",
    "float6_e3m2fn",
    "float4_e2m1fn",
    "int8",
)
# MXINT8 elements: 8-bit two's complement with 6 fraction bits (value q * 2**-6), used
# symmetrically in [-127, 127] (code -128 is never produced).
_INT8_FRACTION_BITS = 6
_INT8_QMAX = 127
_E8M0_BIAS = 127
_E8M0_NAN = 0xFF
_SCALE_EXP_MIN, _SCALE_EXP_MAX = -127, 127
_E4M3_MAX = 448.0
_E2M1_MAX = 6.0
_F32_SMALLEST_NORMAL = 2.0**-126


def _element_format(elem: object) -> str:
    name = elem if isinstance(elem, str) else getattr(elem, "name", None)
    if name not in MX_ELEMENT_FORMATS:
        raise ValueError(
            f"Expected an MX element format, one of {list(MX_ELEMENT_FORMATS)}. "
            f"Received: elem={C.describe(elem)}"
        )
    return name


def mx_emax(elem: object) -> int:
    """``emax_elem`` of the OCP MX spec: the exponent of the element format's largest normal
    value (e4m3: 8, e5m2: 15, e2m3: 2, e3m2: 4, e2m1: 2, MXINT8: 0).

    Example:
        >>> mx_emax("float4_e2m1fn"), mx_emax("float8_e4m3fn")
        (2, 8)
    """
    name = _element_format(elem)
    if name == "int8":
        return 0
    return math.floor(math.log2(float(dtypes.get(name).max)))


def _blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[..., K]`` float64 -> ``[..., ceil(K / block), block]``, the last block zero-padded."""
    k = x.shape[-1]
    pad = -k % block_size
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, block_size)


def _check_block_size(block_size: object) -> int:
    return C.check_int_arg(block_size, "block_size", minimum=1)


def _check_input(x: object) -> torch.Tensor:
    x = C.check_float_tensor(x, "x")
    if x.dim() == 0:
        raise ValueError(
            "Expected `x` with at least one dimension (blocks run along the last axis). "
            "Received: x of shape ()"
        )
    return x


def _element_codes(v: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 codes of float64 ``v`` (already divided by the scale) in element format ``name``."""
    if name == "int8":
        steps = torch.round(v * 2.0**_INT8_FRACTION_BITS)  # exact scaling; half to even
        q = torch.clamp(steps, -_INT8_QMAX, _INT8_QMAX).to(torch.int8)
        return q.view(torch.uint8)
    q = dtypes.encode(v, name)
    return q if q.dtype == torch.uint8 else q.view(torch.uint8)


def _element_values(codes: torch.Tensor, name: str) -> torch.Tensor:
    """float64 values of uint8 element ``codes`` (exact)."""
    if name == "int8":
        return codes.view(torch.int8).to(torch.float64) * 2.0**-_INT8_FRACTION_BITS
    fmt = dtypes.get(name)
    held = codes if fmt.container == torch.uint8 else codes.view(fmt.container)
    return dtypes.decode(held, fmt, dtype=torch.float64)


def quantize_mx(
    x: torch.Tensor, elem: str, block_size: int = MX_BLOCK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """OCP MX v1.0 quantization of ``x`` in blocks of ``block_size`` along the last axis.

    Per block ``V`` (the last one zero-padded when ``block_size`` does not divide ``K``; zeros
    change no maximum, and only ``K`` codes are returned)::

        e = clamp(floor(log2(max|V|)) - emax_elem, -127, 127)     # shared exponent, X = 2**e
        P_i = round_nearest_even_saturating(V_i / X, elem)

    Special blocks: an all-zero block gets the smallest scale ``2**-127`` (code 0) and zero codes;
    a block holding NaN or +-inf gets the NaN scale (code 0xFF, the whole block decodes to NaN)
    and zero element codes.

    Args:
        x: float tensor ``[..., K]`` (float32, float16, bfloat16 or float64).
        elem: element format, one of `MX_ELEMENT_FORMATS` (``"int8"`` is MXINT8).
        block_size: elements per shared scale (32 in the spec).

    Returns:
        ``(codes, scale)``: uint8 ``[..., K]`` element codes (float8 bit patterns, float6/4 codes
        in the low bits, int8 two's complement) and uint8 ``[..., ceil(K / block_size)]``
        float8_e8m0fnu codes (biased exponent, 127 = 2**0).

    Example:
        >>> codes, scale = quantize_mx(torch.tensor([[6.0, -3.0, 0.75, 0.0]]), "float4_e2m1fn")
        >>> codes.tolist(), scale.tolist()
        ([[7, 13, 2, 0]], [[127]])
    """
    _check_input(x)
    name = _element_format(elem)
    block_size = _check_block_size(block_size)
    k = x.shape[-1]
    xb = _blocks(x.detach().to(torch.float64), block_size)
    finite = torch.isfinite(xb)
    special = ~finite.all(-1)  # NaN or inf somewhere in the block
    amax = torch.where(finite, xb.abs(), 0.0).amax(-1)
    _, e = torch.frexp(amax)  # amax = m * 2**e, m in [0.5, 1): floor(log2(amax)) = e - 1
    exp = torch.clamp(e.to(torch.int64) - 1 - mx_emax(name), _SCALE_EXP_MIN, _SCALE_EXP_MAX)
    exp = torch.where(amax > 0, exp, _SCALE_EXP_MIN)
    v = xb / torch.ldexp(torch.ones_like(amax), exp).unsqueeze(-1)  # exact: a power of two
    v = torch.where(special.unsqueeze(-1), 0.0, v)
    codes = _element_codes(v, name).reshape(*x.shape[:-1], -1)[..., :k].contiguous()
    scale = torch.where(special, _E8M0_NAN, exp + _E8M0_BIAS).to(torch.uint8)
    return codes, scale


def dequantize_mx(
    codes: torch.Tensor,
    scale: torch.Tensor,
    elem: str,
    block_size: int = MX_BLOCK_SIZE,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Values ``P_i * 2**(scale - 127)`` of `quantize_mx` output; a NaN scale (0xFF) makes its
    whole block NaN. Exact products in float64, one cast to ``dtype``.

    Args:
        codes: uint8 ``[..., K]`` element codes.
        scale: uint8 ``[..., ceil(K / block_size)]`` float8_e8m0fnu codes.
        elem: the element format the codes hold.
        block_size: elements per scale.
        dtype: float dtype of the result.

    Example:
        >>> dequantize_mx(torch.tensor([[7, 13]], dtype=torch.uint8),
        ...               torch.tensor([[126]], dtype=torch.uint8), "float4_e2m1fn")
        tensor([[ 3.0000, -1.5000]])
    """
    name = _element_format(elem)
    block_size = _check_block_size(block_size)
    for t, arg in ((codes, "codes"), (scale, "scale")):
        C.check_tensor(t, arg)
        if t.dtype != torch.uint8:
            raise TypeError(
                f"Expected `{arg}` to be a uint8 tensor of codes. Received: {arg} of dtype {t.dtype}"
            )
    k = codes.shape[-1] if codes.dim() else 0
    blocks = -(-k // block_size)
    if codes.dim() == 0 or tuple(scale.shape) != (*codes.shape[:-1], blocks):
        raise ValueError(
            f"Expected `scale` of shape {(*codes.shape[:-1], blocks)} (one code per block of "
            f"{block_size} along the last axis of `codes`). Received: scale of shape "
            f"{tuple(scale.shape)} for codes of shape {tuple(codes.shape)}"
        )
    values = _blocks(_element_values(codes, name), block_size)
    exp = scale.to(torch.int64) - _E8M0_BIAS
    x = torch.ldexp(values, exp.unsqueeze(-1).to(torch.float64))
    x = torch.where((scale == _E8M0_NAN).unsqueeze(-1), torch.nan, x)
    return x.reshape(*codes.shape[:-1], -1)[..., :k].to(dtype)


def quantize_nvfp4(
    x: torch.Tensor, tensor_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NVFP4: float4_e2m1 elements, a float8_e4m3fn scale per block of 16 along the last axis
    and one float32 scale for the tensor.

    In float64 (values of float32 ``t`` and e4m3 ``s_b`` exact)::

        t   = max(float32(max|x| / (448 * 6)), 2**-126)   (1 when x is all zero; or the given one)
        s_b = e4m3(max|V_b| / (6 * t))             # nearest-even, saturating at 448
        P_i = e2m1(V_i / (s_b * t))                # 0 where s_b == 0

    The last block is zero-padded when 16 does not divide ``K``. NVFP4 has no NaN or inf:
    non-finite inputs raise ValueError.

    Args:
        x: float tensor ``[..., K]``.
        tensor_scale: optional float32 0-d positive scale to use instead of the one computed.

    Returns:
        ``(codes, block_scale, tensor_scale)``: uint8 ``[..., K]`` e2m1 codes, uint8
        ``[..., ceil(K / 16)]`` float8_e4m3fn bit patterns, float32 0-d.

    Example:
        >>> codes, s, t = quantize_nvfp4(torch.tensor([2688.0, -1.0]))
        >>> codes.tolist(), s.tolist(), t.item()
        ([7, 8], [126], 1.0)
    """
    _check_input(x)
    C.require_finite(x, "x")
    k = x.shape[-1]
    x64 = x.detach().to(torch.float64)
    if tensor_scale is None:
        amax = x64.abs().max().to(torch.float32)
        t = amax / torch.tensor(_E4M3_MAX * _E2M1_MAX, dtype=torch.float32)
        t = torch.clamp(t, min=_F32_SMALLEST_NORMAL)  # never 0 or subnormal (tiny amax)
        t = torch.where(amax > 0, t, 1.0).to(torch.float32)
    else:
        C.check_tensor(tensor_scale, "tensor_scale")
        if tensor_scale.dtype != torch.float32 or tensor_scale.dim() != 0:
            raise TypeError(
                "Expected `tensor_scale` to be a 0-d float32 tensor. Received: tensor_scale of "
                f"dtype {tensor_scale.dtype} and shape {tuple(tensor_scale.shape)}"
            )
        if not (bool(torch.isfinite(tensor_scale)) and float(tensor_scale) > 0):
            raise ValueError(
                "Expected `tensor_scale` finite and > 0. Received: "
                f"tensor_scale={float(tensor_scale)}"
            )
        t = tensor_scale
    t64 = t.to(torch.float64)
    xb = _blocks(x64, NVFP4_BLOCK_SIZE)
    s = dtypes.encode(xb.abs().amax(-1) / (_E2M1_MAX * t64), "float8_e4m3fn")
    denom = (s.to(torch.float64) * t64).unsqueeze(-1)
    v = torch.where(denom > 0, xb / torch.where(denom > 0, denom, 1.0), 0.0)
    codes = dtypes.encode(v, "float4_e2m1fn").reshape(*x.shape[:-1], -1)[..., :k].contiguous()
    return codes, s.view(torch.uint8), t.detach().clone()


def dequantize_nvfp4(
    codes: torch.Tensor,
    block_scale: torch.Tensor,
    tensor_scale: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``P_i * s_b * t`` of `quantize_nvfp4` output: exact in float64, one cast to ``dtype``.

    Args:
        codes: uint8 ``[..., K]`` e2m1 codes.
        block_scale: uint8 ``[..., ceil(K / 16)]`` float8_e4m3fn bit patterns.
        tensor_scale: the float32 tensor scale.
        dtype: float dtype of the result.

    Example:
        >>> dequantize_nvfp4(torch.tensor([7, 8], dtype=torch.uint8),
        ...                  torch.tensor([126], dtype=torch.uint8), torch.tensor(1.0))
        tensor([2688.,   -0.])
    """
    for t, arg in ((codes, "codes"), (block_scale, "block_scale")):
        C.check_tensor(t, arg)
        if t.dtype != torch.uint8:
            raise TypeError(
                f"Expected `{arg}` to be a uint8 tensor of codes. Received: {arg} of dtype {t.dtype}"
            )
    C.check_tensor(tensor_scale, "tensor_scale")
    k = codes.shape[-1] if codes.dim() else 0
    blocks = -(-k // NVFP4_BLOCK_SIZE)
    if codes.dim() == 0 or tuple(block_scale.shape) != (*codes.shape[:-1], blocks):
        raise ValueError(
            f"Expected `block_scale` of shape {(*codes.shape[:-1], blocks)} (one per block of "
            f"{NVFP4_BLOCK_SIZE} along the last axis of `codes`). Received: block_scale of shape "
            f"{tuple(block_scale.shape)} for codes of shape {tuple(codes.shape)}"
        )
    values = _blocks(dtypes.decode(codes, "float4_e2m1fn", dtype=torch.float64), NVFP4_BLOCK_SIZE)
    s = block_scale.view(torch.float8_e4m3fn).to(torch.float64)
    x = values * (s * tensor_scale.to(torch.float64)).unsqueeze(-1)
    return x.reshape(*codes.shape[:-1], -1)[..., :k].to(dtype)
