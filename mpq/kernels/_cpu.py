"""CPU fast path of mpq.kernels: the ops on torch's native CPU kernels, with the reference's numbers.

- int8 x int8: ``torch._int_mm`` (oneDNN, exact int32 accumulation, wraps like the reference),
  or, where that kernel is not exact on this CPU, exact chunked float32 GEMMs (K-chunks of at most
  1024: every partial sum of int8 products stays below 2**24); the int32 accumulator is then
  bit-identical to the reference's and the epilogue is the reference's own code.
- float8: an exact upcast by bit placement into float16 (``upcast_float8``, ~10x faster than
  torch's float8 -> float32 cast on CPU), then the reference's float32 GEMM / convolution.
- weight-only int4: the weight dequantized with broadcast group scales (no gathers, no stack)
  in the packed [N, K] orientation (the reference's values), then a float32 GEMM; for even K
  and whole even groups as two planes (even K, then odd K) with the input's columns reordered
  alike (same values, another summation order: float32 tolerance).
- int8 conv2d: one exact float32 convolution (oneDNN, direct algorithm) when KH*KW*C/groups
  <= 1024, else float64 (exact, slower).
- float operands: the reference (it already calls torch's kernels directly).

Every exact float32 path needs IEEE float32 GEMMs/convolutions: when torch is set to reduced
float32 precision (``torch.set_float32_matmul_precision("medium")``, oneDNN bf16/tf32) these
paths run in float64 instead (exact too, slower), never with fewer bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks, reference

__all__ = ["conv2d", "int8_linear", "int8_mm", "matmul", "matmul_int4", "upcast_float8"]

EXACT_FLOAT32_K = 1024
"""Longest reduction whose int8 products sum exactly in float32: 1024 * 128 * 128 = 2**24."""

_UPCAST_CHUNK = 1 << 18  # elements per table look-up: keeps the int32 indices in cache


# Memos filled on first use (plain containers, not functools caches, which torch.compile
# refuses to trace through).
_LUTS: dict[torch.dtype, torch.Tensor] = {}
_INT_MM_EXACT: list[bool] = []


def _lut(dtype: torch.dtype) -> torch.Tensor:
    """float32 value of each of the 256 bit patterns of a float8 ``dtype`` (exact)."""
    lut = _LUTS.get(dtype)
    if lut is None:
        codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
        lut = _LUTS[dtype] = codes.view(dtype).to(torch.float32)
    return lut


def upcast_float8(t: torch.Tensor) -> torch.Tensor:
    """Exact float32 copy of a contiguous float8 tensor, same shape (bit-identical to
    ``t.to(torch.float32)``): ``_decode_float8`` times its exact power-of-two rescale."""
    if t.dtype not in _FLOAT16_SHIFT:
        return _upcast_table(t)
    out = _decode_float8(t.reshape(-1), None)
    if t.dtype == torch.float8_e4m3fn:
        out.mul_(float(2**_E4M3_RESCALE))
    return out.view(t.shape)


_FLOAT16_SHIFT = {torch.float8_e4m3fn: 7, torch.float8_e5m2: 8}
_E4M3_RESCALE = 8
"""``_decode_float8`` of e4m3fn is the value times 2**-8."""
_E4M3_F16_MASK = -16512
"""0xBF80 as int16: the sign (bit 15) and the 7 exponent/mantissa bits of e4m3fn at 13..7."""


def _decode_float8(codes: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """float32 values of 1-D e4m3fn / e5m2 ``codes``, exact; e4m3fn's times 2**-8
    (``_E4M3_RESCALE``), written into ``out`` (same length) when given.

    e5m2 is the top byte of a float16. e4m3fn's bits ``s eeee mmm`` placed in a float16 (sign at
    bit 15, ``eeeemmm`` at bits 13..7) are the same number times 2**-8, subnormals included
    (the two formats' subnormals line up). So: int8 -> int16, a shift (and for e4m3fn a mask:
    sign extension put the sign at bits 15 and 14), then one exact float16 -> float32
    conversion; ~4x faster than the 256-entry table. e4m3fn's NaN codes (0x7F, 0xFF) come out
    as +-1.875 that way and are set to NaN where present (found by two 1-byte max scans:
    0x7F is the largest int8, 0xFF the largest uint8)."""
    c8 = codes.view(torch.int8)
    bits = c8.to(torch.int16).bitwise_left_shift_(_FLOAT16_SHIFT[codes.dtype])
    if out is None:
        out = torch.empty(c8.shape, dtype=torch.float32)
    if codes.dtype == torch.float8_e5m2:
        return out.copy_(bits.view(torch.float16))
    bits.bitwise_and_(_E4M3_F16_MASK)
    out.copy_(bits.view(torch.float16))
    u8 = c8.view(torch.uint8)
    if c8.numel() and (int(c8.max()) == 0x7F or int(u8.max()) == 0xFF):
        out[(u8 & 0x7F) == 0x7F] = float("nan")
    return out


_F8_CHUNK = 1 << 19
"""Weight elements decoded at a time by the float8 GEMM: the float32 chunk (2 MiB) is
multiplied while it is still in cache, and the whole float32 weight never exists."""


def _float8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32 accumulator of float8 ``a`` [M, K] (row-major) @ float8 ``b`` [K, N] (K-major).

    Both operands are decoded exactly (``_decode_float8``: e4m3fn as value * 2**-8) and
    multiplied in float32; the accumulator is then rescaled by the exact power of two. Scaling
    every operand by a power of two scales every product and partial sum alike (no overflow, no
    subnormals: e4m3fn products are >= 2**-34), so this is the float32 GEMM of the true values
    bit for bit. Large ``b`` goes in N-chunks of ``_F8_CHUNK`` elements (the same dot
    products, one [M, n] GEMM each)."""
    M, K = a.shape
    N = b.shape[1]
    a32 = _decode_float8(a.contiguous().reshape(-1), None).view(M, K)
    shift = _E4M3_RESCALE * ((a.dtype == torch.float8_e4m3fn) + (b.dtype == torch.float8_e4m3fn))
    b_nk = b.t()  # [N, K] contiguous
    rows = max(1, _F8_CHUNK // max(K, 1))
    if rows >= N:
        acc = F.linear(a32, _decode_float8(b_nk.reshape(-1), None).view(N, K))
    else:
        acc = torch.empty(M, N, dtype=torch.float32)
        w32 = torch.empty(rows * K, dtype=torch.float32)
        for n0 in range(0, N, rows):
            n1 = min(n0 + rows, N)
            w = _decode_float8(b_nk[n0:n1].reshape(-1), w32[: (n1 - n0) * K])
            acc[:, n0:n1] = F.linear(a32, w.view(n1 - n0, K))
    if shift:
        acc.mul_(float(2**shift))
    return acc


def _upcast_table(t: torch.Tensor) -> torch.Tensor:
    """``upcast_float8`` through the 256-entry table (any float8 dtype)."""
    lut = _lut(t.dtype)
    codes = t.reshape(-1).view(torch.uint8)
    out = torch.empty(codes.shape, dtype=torch.float32)
    for start in range(0, codes.numel(), _UPCAST_CHUNK):
        stop = min(start + _UPCAST_CHUNK, codes.numel())
        # uint8 -> float32 -> int32 is exact (0..255) and ~3x faster than uint8 -> int32 on CPU.
        index = codes[start:stop].to(torch.float32).to(torch.int32)
        torch.index_select(lut, 0, index, out=out[start:stop])
    return out.view(t.shape)


def _ieee_float32() -> bool:
    """True when torch's float32 GEMMs and convolutions on CPU run in full IEEE float32."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn = torch.backends.mkldnn
    for op in ("matmul", "conv"):
        backend = getattr(mkldnn, op, None)
        if getattr(backend, "fp32_precision", "none") not in ("none", "ieee"):
            return False
    return True


def _int_mm_exact() -> bool:
    """True when ``torch._int_mm`` accumulates exactly on this CPU.

    oneDNN computes s8 x s8 with u8 x s8 instructions; CPUs without VNNI pair the products in
    saturating int16 (``vpmaddubsw``), which is not exact for large codes. Probed once with the
    worst case (127 * -128 in every product, and -128 * -128)."""
    if not _INT_MM_EXACT:
        _INT_MM_EXACT.append(_probe_int_mm())
    return _INT_MM_EXACT[0]


def _probe_int_mm() -> bool:
    k = 64
    a = torch.full((2, k), 127, dtype=torch.int8)
    a[1] = -128
    b = torch.full((3, k), -128, dtype=torch.int8)
    b[1] = 127
    got = torch._int_mm(a, b.t())
    want = a.to(torch.int64) @ b.to(torch.int64).t()
    return torch.equal(got.to(torch.int64), want)


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int32 accumulator of ``a`` [M, K] int8 (row-major) @ ``b`` [K, N] int8 (K-major).

    Wraps past 2**31 like the reference (two's complement): callers that need more split K
    (K <= 131071 always fits)."""
    M, K = a.shape
    N = b.shape[1]
    if K >= 2 and _int_mm_exact():
        # torch._int_mm on CPU returns uninitialised memory for K == 1 (torch 2.13): K >= 2 only.
        return torch._int_mm(a if a.is_contiguous() else a.contiguous(), b)
    if K == 0 or M == 0 or N == 0:
        return torch.zeros(M, N, dtype=torch.int32, device=a.device)
    if not _ieee_float32():
        return reference._int32_accumulator(a.to(torch.float64) @ b.to(torch.float64))

    def chunk(start: int) -> torch.Tensor:
        stop = min(start + EXACT_FLOAT32_K, K)
        return (a[:, start:stop].to(torch.float32) @ b[start:stop].to(torch.float32)).to(
            torch.int64
        )

    acc = chunk(0)  # K >= 1 here
    for start in range(EXACT_FLOAT32_K, K, EXACT_FLOAT32_K):
        acc = acc + chunk(start)
    return acc.to(torch.int32)


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
    """CPU fast path of ``mpq.kernels.matmul`` (same contract)."""
    if isinstance(a, torch.Tensor) and a.dtype in _checks.FLOAT_DTYPES:
        return reference.matmul(
            a,
            b,
            a_scale=a_scale,
            b_scale=b_scale,
            bias=bias,
            activation=activation,
            out_dtype=out_dtype,
        )
    spec = _checks.check_matmul(a, b, a_scale, b_scale, bias, activation, out_dtype)
    a2 = a.reshape(spec.M, spec.K)
    # float8: exact decode, then the float32 GEMM on the reference's layouts, in N-chunks.
    acc = int8_mm(a2, b) if spec.kind == "int8" else _float8_mm(a2, b)
    out = reference._store(acc, spec.a_scale, spec.b_scale, bias, spec.activation, spec.out_dtype)
    return out.reshape(*spec.lead, spec.N)


def int8_linear(
    q: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``mpq.kernels.matmul(q, b, a_scale=a_scale, b_scale=b_scale, bias=bias,
    out_dtype=out_dtype)`` on this backend without its argument checks, for mpq's int8 layers,
    whose operands satisfy them by construction: ``q`` [M, K] int8 row-major, ``b`` [K, N] int8
    K-major with K <= ``_checks.INT8_EXACT_K``, ``a_scale`` [M] and ``b_scale`` [N] float32,
    ``bias`` None or [N] float, ``out_dtype`` a float dtype, no autograd history. Same ops, same
    numbers as the checked call. User code calls ``mpq.kernels.matmul``."""
    return reference._store(int8_mm(q, b), a_scale, b_scale, bias, "none", out_dtype)


def _dequantize_int4_nk(
    spec: _checks.Int4Spec, packed_nk: torch.Tensor, n0: int, n1: int, dtype: torch.dtype
) -> torch.Tensor:
    """Rows ``n0:n1`` of the weight of ``matmul_int4`` as [n, K] float32 (``w.t()`` of the
    reference's [K, N], the same values): ``((q - zero) * scale)`` in float32, rounded to
    ``dtype``. ``packed_nk`` is [N, ceil(K/2)] (``b_packed.t()``)."""
    K, gsize = spec.K, spec.group_size
    p = packed_nk[n0:n1]
    p = p.view(torch.int8) if p.dtype == torch.uint8 else p  # arithmetic shifts sign-extend
    n = p.shape[0]
    groups = spec.scale.shape[0]
    kpad = groups * gsize if groups > 1 else 2 * p.shape[1]
    q = torch.empty(n, max(kpad, 2 * p.shape[1]), dtype=torch.float32)
    pairs = q[:, : 2 * p.shape[1]].view(n, p.shape[1], 2)
    pairs[..., 0] = (p << 4) >> 4  # low nibble: element 2i
    pairs[..., 1] = p >> 4  # high nibble: element 2i + 1
    g = q[:, :kpad].view(n, groups, -1)
    _scale_groups(spec, g, n0, n1)
    w = q[:, :K]
    if dtype != torch.float32:
        w = w.to(dtype).to(torch.float32)
    return w if w.is_contiguous() else w.contiguous()


def _scale_groups(spec: _checks.Int4Spec, g: torch.Tensor, n0: int, n1: int) -> None:
    """``g = (g - zero) * scale`` in place; ``g`` [n, groups, group elements] float32 codes."""
    if spec.zero is not None:
        g.sub_(spec.zero[:, n0:n1].t().unsqueeze(-1))
    g.mul_(spec.scale[:, n0:n1].t().unsqueeze(-1))


def _planar_int4(spec: _checks.Int4Spec) -> bool:
    """True when the weight can be dequantized as planes (all even K, then all odd K): K even
    and whole groups of an even size (or one scale per output channel)."""
    K, groups = spec.K, spec.scale.shape[0]
    return K % 2 == 0 and (
        groups == 1 or (spec.group_size % 2 == 0 and groups * spec.group_size == K)
    )


def _dequantize_int4_planes(
    spec: _checks.Int4Spec,
    packed_nk: torch.Tensor,
    n0: int,
    n1: int,
    dtype: torch.dtype,
    buf: torch.Tensor,
) -> torch.Tensor:
    """The values of ``_dequantize_int4_nk`` with the K axis reordered as planes: columns
    ``0..K/2-1`` hold elements 0, 2, 4, ... (low nibbles), then 1, 3, 5, ... (high nibbles);
    the input's columns are reordered alike (``_planar_columns``). Each plane is one contiguous
    int8 -> float32 copy (exact and fast on CPU; interleaving stores are ~2x slower). Lives in
    ``buf`` (flat float32, at least ``(n1 - n0) * K`` elements)."""
    p = packed_nk[n0:n1]
    p = p.view(torch.int8) if p.dtype == torch.uint8 else p
    n, half = p.shape
    q = buf[: n * 2 * half].view(n, 2, half)
    q[:, 0].copy_((p << 4) >> 4)
    q[:, 1].copy_(p >> 4)
    groups = spec.scale.shape[0]
    # Group j of K covers columns j*g/2 .. (j+1)*g/2 - 1 of each plane.
    shape: tuple[int, ...]
    if groups == 1:
        g, shape = q.view(n, 2 * half), (n, 1)
    else:  # zero/scale made [n, 2, groups, 1] first: ~2x faster than a size-1 broadcast axis
        g, shape = q.view(n, 2, groups, -1), (n, 2, groups, 1)

    def per_row(t: torch.Tensor) -> torch.Tensor:
        t = t[:, n0:n1].t()
        return t if groups == 1 else t[:, None, :, None].expand(shape).contiguous()

    if spec.zero is not None:
        g.sub_(per_row(spec.zero))
    g.mul_(per_row(spec.scale))
    w = q.view(n, 2 * half)
    if dtype != torch.float32:
        w = w.to(dtype).to(torch.float32)
    return w


def _planar_columns(a2: torch.Tensor) -> torch.Tensor:
    """``a2`` [M, K] (K even) with its columns in the plane order of ``_dequantize_int4_planes``."""
    return torch.cat((a2[:, 0::2], a2[:, 1::2]), 1)


_INT4_CHUNK = 1 << 19
"""Weight elements dequantized at a time: larger weights are multiplied in N-chunks, so the
float32 copy of the weight never exists whole (2 MiB at a time, one buffer reused per chunk)."""


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
    """CPU fast path of ``mpq.kernels.matmul_int4`` (same contract; up to ``_INT4_CHUNK``
    weight elements one float32 GEMM, larger weights in N-chunks)."""
    spec = _checks.check_matmul_int4(
        a, b_packed, b_scale, b_zero, group_size, bias, activation, out_dtype
    )
    a2 = a.reshape(spec.M, spec.K)
    if a2.dtype != torch.float32:
        a2 = a2.to(torch.float32)
    packed_nk = b_packed.t()
    rows = max(1, min(spec.N, _INT4_CHUNK // max(spec.K, 1)))
    if _planar_int4(spec) and spec.M > 0:
        # Planes: the same weight values, the reduction in another order (float32 tolerance).
        a2 = _planar_columns(a2)
        acc = torch.empty(spec.M, spec.N, dtype=torch.float32)
        buf = torch.empty(rows * spec.K, dtype=torch.float32)
        for n0 in range(0, spec.N, rows):
            n1 = min(n0 + rows, spec.N)
            w = _dequantize_int4_planes(spec, packed_nk, n0, n1, a.dtype, buf)
            torch.mm(a2, w.t(), out=acc if n1 - n0 == spec.N else acc[:, n0:n1])
    elif rows >= spec.N:
        acc = F.linear(a2, _dequantize_int4_nk(spec, packed_nk, 0, spec.N, a.dtype))
    else:
        acc = torch.empty(spec.M, spec.N, dtype=torch.float32)
        for n0 in range(0, spec.N, rows):
            n1 = min(n0 + rows, spec.N)
            acc[:, n0:n1] = F.linear(a2, _dequantize_int4_nk(spec, packed_nk, n0, n1, a.dtype))
    out = reference.epilogue(acc, bias=bias, activation=spec.activation, out_dtype=spec.out_dtype)
    return out.reshape(*spec.lead, spec.N)


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
    """CPU fast path of ``mpq.kernels.conv2d`` (same contract)."""
    if not isinstance(x, torch.Tensor) or x.dtype in _checks.FLOAT_DTYPES:
        return reference.conv2d(
            x,
            w,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            x_scale=x_scale,
            w_scale=w_scale,
            bias=bias,
            activation=activation,
            out_dtype=out_dtype,
        )
    spec = _checks.check_conv2d(
        x, w, stride, padding, dilation, groups, x_scale, w_scale, bias, activation, out_dtype
    )
    if spec.kind == "int8":
        exact32 = spec.KH * spec.KW * (spec.C // spec.groups) <= EXACT_FLOAT32_K
        compute = torch.float32 if exact32 and _ieee_float32() else torch.float64
        xc, wc = x.to(compute), w.to(compute)
    else:
        compute = torch.float32
        xc = upcast_float8(x.contiguous())
        wc = upcast_float8(w)
    acc = reference.conv_accumulator(spec, xc, wc)
    if spec.kind == "int8" and compute == torch.float64:
        acc = reference._int32_accumulator(acc)
    elif spec.kind == "int8" and spec.out_dtype == torch.int32:
        acc = acc.to(torch.int32)
    # else: the exact float32 accumulator holds the integers that the epilogue would read back
    # from int32 (below 2**24), so it goes to the epilogue as it is.
    out = reference._store(acc, spec.x_scale, spec.w_scale, bias, spec.activation, spec.out_dtype)
    return out.reshape(spec.batch, spec.OH, spec.OW, spec.OC)
