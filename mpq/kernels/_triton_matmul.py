"""Triton matmul kernels (float32/16, bfloat16, float8, int8, weight-only int4) and launchers.

Imported lazily by the dispatcher. Under TRITON_INTERPRET=1 (read by Triton when this module is
imported) the same kernels run on CPU tensors in Triton's interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _checks, _configs, _triton_options, _triton_persistent, _triton_small_m
from ._triton_common import (
    INTERPRET,
    EpilogueArgs,
    _dequantize,
    _device_limits,
    _dummy,
    _launch_metadata,
    _masked_load,
    _mma,
    _prune_configs,
    _splitk_reduce,
    _store_result,
    _tile_ids,
    _triton_configs,
    _unpack_int4,
    check_device,
    check_float8_support,
)

__all__ = ["choose_kernel", "launch_matmul", "matmul", "matmul_checked", "matmul_int4"]

# --- matmul: float / float8 / int8 -------------------------------------------------------------


@triton.autotune(  # type: ignore[untyped-decorator]
    configs=_triton_configs(),
    key=["M", "N", "K", "SPLIT_K"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit(launch_metadata=_launch_metadata)  # type: ignore[untyped-decorator]
def _matmul_kernel(  # type: ignore[no-untyped-def]
    a_ptr,
    b_ptr,
    c_ptr,
    ws_ptr,
    a_scale_ptr,
    b_scale_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    stride_ws,  # M * N: one split's slice of the workspace (an i64 argument when >= 2**31)
    A_SCALE: tl.constexpr,
    B_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    ACC_INT32: tl.constexpr,  # precision: int8 operands accumulate exactly in int32
    IEEE: tl.constexpr,  # precision: fp32 operands use IEEE fp32 products (no TF32)
    OUT_INT32: tl.constexpr,  # store the raw int32 accumulator (no epilogue)
    SPLIT_K: tl.constexpr,  # > 1: write partial sums to ws, _splitk_reduce applies the epilogue
    INT64: tl.constexpr,  # some element offset reaches 2**31: index in int64 (see needs_int64)
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    if INT64:
        # int32 offsets * strides wrap past 2**31 elements (e.g. M*K for M = 2**20, K = 4096);
        # the products below then promote to int64. Off (int32, cheaper) for smaller tensors.
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        pid_k = pid_k.to(tl.int64)  # so k_start, and the K offsets below, are int64 too
        # the per-iteration pointer steps too: BLOCK_K * stride_bk wraps for a row-major
        # [K, N] b with N >= 2**31 / BLOCK_K
        step_a = tl.cast(stride_ak, tl.int64) * BLOCK_K
        step_b = tl.cast(stride_bk, tl.int64) * BLOCK_K
    else:
        step_a = BLOCK_K * stride_ak
        step_b = BLOCK_K * stride_bk
    m_mask = offs_m < M
    n_mask = offs_n < N
    k_tiles = tl.cdiv(K, BLOCK_K)
    k_start = pid_k * tl.cdiv(k_tiles, SPLIT_K) * BLOCK_K
    k_end = tl.minimum(K, k_start + tl.cdiv(k_tiles, SPLIT_K) * BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + (k_start + offs_k)[None, :] * stride_ak
    b_ptrs = b_ptr + (k_start + offs_k)[:, None] * stride_bk + offs_n[None, :] * stride_bn
    if ACC_INT32:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        k_mask = (k + offs_k) < k_end
        a = _masked_load(a_ptrs, m_mask[:, None] & k_mask[None, :])
        b = _masked_load(b_ptrs, k_mask[:, None] & n_mask[None, :])
        acc = _mma(a, b, acc, ACC_INT32, IEEE, INTERPRET)
        a_ptrs += step_a
        b_ptrs += step_b
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K > 1:
        ws_ptrs = ws_ptr + pid_k * stride_ws + offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws_ptrs, acc, mask=mask)
    else:
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        _store_result(
            c_ptrs, acc, mask, offs_m, offs_n, M, N, a_scale_ptr, b_scale_ptr, bias_ptr,
            A_SCALE, B_SCALE, HAS_BIAS, ACTIVATION, OUT_INT32, INTERPRET,
        )  # fmt: skip


def launch_matmul(
    a2: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor,
    *,
    a_scale_mode: int = 0,
    a_scale: torch.Tensor | None = None,
    b_scale_mode: int = 0,
    b_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    split_k: int | None = None,
) -> torch.Tensor:
    """Launch the matmul kernel on checked 2-D operands: out[M, N] = epilogue(a2 @ b)."""
    M, K = a2.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return out
    int8 = a2.dtype == torch.int8
    if split_k is None:
        split_k = 1
        if not INTERPRET and a2.is_cuda:
            split_k = _configs.split_k_for(M, N, K, _device_limits(a2.device.index or 0)[1])
    dummy = _dummy(a2)
    ws = dummy
    if split_k > 1:
        # Partial sums are stored (not atomically added): no zeroing is needed, autotuning
        # trials may overwrite ws freely, and the fixed-order reduction is deterministic.
        ws = torch.empty(
            (split_k, M, N), device=a2.device, dtype=torch.int32 if int8 else torch.float32
        )
    flags = dict(
        A_SCALE=a_scale_mode,
        B_SCALE=b_scale_mode,
        HAS_BIAS=bias is not None,
        ACTIVATION=_checks.ACTIVATION_CODES[activation],
        OUT_INT32=out.dtype == torch.int32,
        INT64=_checks.needs_int64(a2, b, out, ws),
    )
    scales_and_bias = (
        dummy if a_scale is None else a_scale,
        dummy if b_scale is None else b_scale,
        dummy if bias is None else bias,
    )
    grid = lambda META: (  # noqa: E731
        triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]),
        META["SPLIT_K"],
    )
    _matmul_kernel[grid](
        a2, b, out, ws, *scales_and_bias, M, N, K,
        a2.stride(0), a2.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1), M * N,
        ACC_INT32=int8, IEEE=a2.dtype == torch.float32, SPLIT_K=split_k, INTERPRET=INTERPRET,
        **flags,
    )  # fmt: skip
    if split_k > 1:
        block = 32 if INTERPRET else 64
        reduce_grid = (triton.cdiv(M, block) * triton.cdiv(N, block),)
        _splitk_reduce[reduce_grid](
            ws, out, *scales_and_bias, M, N, out.stride(0), out.stride(1), M * N,
            SPLIT_K=split_k, INTERPRET=INTERPRET, BLOCK_M=block, BLOCK_N=block, **flags,
        )  # fmt: skip
    return out


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    a_scale: torch.Tensor | None = None,
    b_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype | str | None = None,
    split_k: int | None = None,
) -> torch.Tensor:
    """Triton launcher of ``mpq.kernels.matmul`` (same contract; ``split_k`` forces a split)."""
    spec = _checks.check_matmul(a, b, a_scale, b_scale, bias, activation, out_dtype)
    if split_k is not None and (not isinstance(split_k, int) or split_k < 1):
        raise ValueError(f"Expected `split_k` to be a positive int. Received: split_k={split_k!r}")
    return matmul_checked(a, b, bias, spec, split_k=split_k)


def _capability(t: torch.Tensor) -> tuple[int, int] | None:
    if INTERPRET or not t.is_cuda:
        return None
    return torch.cuda.get_device_capability(t.device)


def choose_kernel(kind: str, a2: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> str:
    """The kernel for one launch: ``_triton_options.choose_matmul_kernel`` on this device's
    capability, the operands' layouts and the options in force (``triton_options``)."""
    tma_ok = (
        kind in _triton_options.PERSISTENT_KINDS
        and _triton_persistent.operands_tma_ok(a2, b)
        and not _checks.needs_int64(a2, b, out)  # TMA coordinates are int32
    )
    return _triton_options.choose_matmul_kernel(
        kind,
        a2.shape[0],
        _capability(a2),
        tma_ok=tma_ok,
        interpret=INTERPRET,
        forced=_triton_options.current().kernel,
    )


def _kind(spec: _checks.MatmulSpec, a: torch.Tensor) -> str:
    """The operand kind of ``_triton_options`` ("float32", "float16", ..., "float8", "int8")."""
    return str(a.dtype).removeprefix("torch.") if spec.kind == "float" else spec.kind


def matmul_checked(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None,
    spec: _checks.MatmulSpec,
    split_k: int | None = None,
) -> torch.Tensor:
    """Run the matmul for a checked call (``spec`` from ``_checks.check_matmul``) on the kernel
    ``choose_kernel`` picks."""
    check_device(a)
    if spec.kind == "float8":
        check_float8_support(a)
    a2 = a.reshape(spec.M, spec.K)
    out = torch.empty((spec.M, spec.N), dtype=spec.out_dtype, device=a.device)
    kernel = choose_kernel(_kind(spec, a), a2, b, out)
    epilogue = EpilogueArgs(
        a_scale_mode=spec.a_scale_mode,
        a_scale=spec.a_scale,
        b_scale_mode=spec.b_scale_mode,
        b_scale=spec.b_scale,
        bias=bias,
        activation=spec.activation,
    )
    if kernel == "persistent":
        if split_k is not None:
            raise ValueError(
                "Expected no `split_k` for the persistent kernel (it does not split K). "
                f"Received: split_k={split_k!r}"
            )
        _triton_persistent.launch_persistent(
            a2, b, out, fp8_promote=_triton_options.current().fp8_promote, **epilogue
        )
    elif kernel == "small_m":
        _triton_small_m.launch_small_m(
            a2, b, out, weight=_triton_small_m.WEIGHT_FLOAT, K=spec.K, bias=bias,
            activation=spec.activation, split_k=split_k,
        )  # fmt: skip
    else:
        launch_matmul(a2, b, out, split_k=split_k, **epilogue)
    return out.reshape(*spec.lead, spec.N)


# --- weight-only int4 ------------------------------------------------------------------------


@triton.autotune(  # type: ignore[untyped-decorator]
    configs=_triton_configs(),
    key=["M", "N", "K", "GROUP_SIZE"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit(launch_metadata=_launch_metadata)  # type: ignore[untyped-decorator]
def _matmul_int4_kernel(  # type: ignore[no-untyped-def]
    a_ptr,
    b_ptr,
    c_ptr,
    s_ptr,
    z_ptr,
    bias_ptr,
    M,
    N,
    K,
    GROUP_SIZE,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    stride_sg,
    stride_sn,
    HAS_ZERO: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    IEEE: tl.constexpr,
    INT64: tl.constexpr,  # some element offset reaches 2**31: index in int64
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """c = act(a @ w + bias), w[k, n] = (q[k, n] - z[g, n]) * s[g, n] with g = k // GROUP_SIZE,
    q unpacked in registers from b (two int4 per byte along K, element 2i in the low nibble)."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kp = tl.arange(0, BLOCK_K // 2)
    if INT64:
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
        offs_kp = offs_kp.to(tl.int64)
        step_a = tl.cast(stride_ak, tl.int64) * BLOCK_K
        step_b = tl.cast(stride_bk, tl.int64) * (BLOCK_K // 2)
    else:
        step_a = BLOCK_K * stride_ak
        step_b = (BLOCK_K // 2) * stride_bk
    m_mask = offs_m < M
    n_mask = offs_n < N
    KP = (K + 1) // 2
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_kp[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        kk = k + offs_k
        k_mask = kk < K
        a = _masked_load(a_ptrs, m_mask[:, None] & k_mask[None, :])
        p_mask = ((k // 2 + offs_kp) < KP)[:, None] & n_mask[None, :]
        q = _unpack_int4(tl.load(b_ptrs, mask=p_mask, other=0), BLOCK_K, BLOCK_N)
        w = _dequantize(
            q, kk, k_mask, offs_n, n_mask, s_ptr, z_ptr, GROUP_SIZE, stride_sg, stride_sn,
            HAS_ZERO, a_ptr.dtype.element_ty, INTERPRET,
        )  # fmt: skip
        acc = _mma(a, w, acc, False, IEEE, INTERPRET)
        a_ptrs += step_a
        b_ptrs += step_b
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    _store_result(
        c_ptrs, acc, m_mask[:, None] & n_mask[None, :], offs_m, offs_n, M, N, s_ptr, s_ptr,
        bias_ptr, 0, 0, HAS_BIAS, ACTIVATION, False, INTERPRET,
    )  # fmt: skip


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
    """Triton launcher of ``mpq.kernels.matmul_int4`` (same contract)."""
    spec = _checks.check_matmul_int4(
        a, b_packed, b_scale, b_zero, group_size, bias, activation, out_dtype
    )
    check_device(a)
    M, N, K = spec.M, spec.N, spec.K
    a2 = a.reshape(M, K)
    out = torch.empty((M, N), dtype=spec.out_dtype, device=a.device)
    if M == 0 or N == 0:
        return out.reshape(*spec.lead, N)
    scale, zero = spec.scale, spec.zero
    if zero is not None and zero.stride() != scale.stride():
        # The kernel indexes scale and zero with the same offsets.
        zero = zero.contiguous()
        scale = scale.contiguous()
    if choose_kernel("int4", a2, b_packed, out) == "small_m":
        _triton_small_m.launch_small_m(
            a2, b_packed, out, weight=_triton_small_m.WEIGHT_INT4, K=K, scale=scale, zero=zero,
            group_size=spec.group_size, bias=bias, activation=spec.activation,
        )  # fmt: skip
        return out.reshape(*spec.lead, N)
    # One group (per-channel scales): every k reads row 0.
    stride_sg = scale.stride(0) if scale.shape[0] > 1 else 0
    dummy = _dummy(a2)
    grid = lambda META: (  # noqa: E731
        triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]),
    )
    _matmul_int4_kernel[grid](
        a2, b_packed, out, scale, dummy if zero is None else zero,
        dummy if bias is None else bias, M, N, K, spec.group_size,
        a2.stride(0), a2.stride(1), b_packed.stride(0), b_packed.stride(1),
        out.stride(0), out.stride(1), stride_sg, scale.stride(1),
        HAS_ZERO=zero is not None, HAS_BIAS=bias is not None,
        ACTIVATION=_checks.ACTIVATION_CODES[spec.activation],
        IEEE=a2.dtype == torch.float32, INTERPRET=INTERPRET,
        INT64=_checks.needs_int64(a2, b_packed, out, scale),
    )  # fmt: skip
    return out.reshape(*spec.lead, N)
