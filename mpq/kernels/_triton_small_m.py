"""Small-M (decode, M <= 16) matmul: split-K weight streaming, each weight element read once.

One 16-row tile holds every row of ``a``; the grid runs over column blocks of the weight and
SPLIT_K slices of K, so even M = 1 keeps every SM streaming its share of the weight. Weights are
float16/bfloat16 (the same dtype as ``a``), or weight-only int8 codes, or packed int4 codes,
dequantized in registers (``_dequantize``: the int4 kernel's numerics). Partial sums go to a
workspace and ``_splitk_reduce`` adds them in a fixed order and applies the epilogue.
Imported lazily by ``_triton_matmul``.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from . import _checks, _configs
from ._triton_common import (
    INTERPRET,
    _dequantize,
    _device_limits,
    _dummy,
    _masked_load,
    _mma,
    _prune_configs,
    _splitk_reduce,
    _store_result,
    _unpack_int4,
    check_device,
)

WEIGHT_FLOAT, WEIGHT_INT8, WEIGHT_INT4 = 16, 8, 4  # the kernel's WEIGHT constexpr


def _to_triton(c: dict[str, int]) -> triton.Config:
    tiles = {k: c[k] for k in _configs.TILE_KEYS}
    return triton.Config(tiles, num_warps=c["num_warps"], num_stages=c["num_stages"])


def _triton_configs() -> list[triton.Config]:
    cap = None if INTERPRET or not torch.cuda.is_available() else torch.cuda.get_device_capability()
    return [_to_triton(c) for c in _configs.small_m_configs(cap, INTERPRET)]


def _launch_metadata(grid: Any, kernel: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Compulsory bytes: the weight by its storage (packed int4: K*N/2), scales, a and c."""
    M, N, K = args["M"], args["N"], args["K"]
    a, b, c, s = args["a_ptr"], args["b_ptr"], args["c_ptr"], args["s_ptr"]
    return {
        "name": f"{kernel.name} [M={M}, N={N}, K={K}]",
        "flops": 2 * M * N * K,
        "bytes": M * K * a.element_size()
        + b.numel() * b.element_size()
        + s.numel() * s.element_size()
        + M * N * c.element_size(),
    }


@triton.autotune(  # type: ignore[untyped-decorator]
    configs=_triton_configs(),
    key=["N", "K", "SPLIT_K", "WEIGHT"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit(launch_metadata=_launch_metadata)  # type: ignore[untyped-decorator]
def _small_m_kernel(  # type: ignore[no-untyped-def]
    a_ptr,
    b_ptr,
    c_ptr,
    ws_ptr,
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
    stride_ws,  # M * N: one split's slice of the workspace
    WEIGHT: tl.constexpr,  # 16: a's float dtype; 8: int8 codes; 4: packed int4 codes
    HAS_ZERO: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    IEEE: tl.constexpr,  # precision: fp32 activations use IEEE fp32 products
    SPLIT_K: tl.constexpr,
    INT64: tl.constexpr,  # some element offset reaches 2**31: index in int64
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Partial (or, with SPLIT_K = 1, final) c[:M, n-block] = a[:M, k-slice] @ w[k-slice, n-block]
    with w dequantized in registers. Each split owns whole BLOCK_K tiles (and whole int4 bytes,
    BLOCK_K being even), so every weight element is read by exactly one program."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kp = tl.arange(0, BLOCK_K // 2)
    if INT64:
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
        offs_kp = offs_kp.to(tl.int64)
        pid_k = pid_k.to(tl.int64)
    m_mask = offs_m < M
    n_mask = offs_n < N
    k_tiles = tl.cdiv(K, BLOCK_K)
    k_start = pid_k * tl.cdiv(k_tiles, SPLIT_K) * BLOCK_K
    k_end = tl.minimum(K, k_start + tl.cdiv(k_tiles, SPLIT_K) * BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        kk = k + offs_k
        k_mask = kk < k_end
        a = _masked_load(
            a_ptr + offs_m[:, None] * stride_am + kk[None, :] * stride_ak,
            m_mask[:, None] & k_mask[None, :],
        )
        if WEIGHT == 16:
            w = _masked_load(
                b_ptr + kk[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                k_mask[:, None] & n_mask[None, :],
            )
        else:
            if WEIGHT == 4:
                kp = k // 2 + offs_kp
                p = tl.load(
                    b_ptr + kp[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=(kp < (K + 1) // 2)[:, None] & n_mask[None, :],
                    other=0,
                )
                q = _unpack_int4(p, BLOCK_K, BLOCK_N)
            else:
                q = tl.load(
                    b_ptr + kk[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=k_mask[:, None] & n_mask[None, :],
                    other=0,
                )
            w = _dequantize(
                q, kk, k_mask, offs_n, n_mask, s_ptr, z_ptr, GROUP_SIZE, stride_sg, stride_sn,
                HAS_ZERO, a_ptr.dtype.element_ty, INTERPRET,
            )  # fmt: skip
        acc = _mma(a, w, acc, False, IEEE, INTERPRET)
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K > 1:
        tl.store(ws_ptr + pid_k * stride_ws + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)
    else:
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        _store_result(
            c_ptrs, acc, mask, offs_m, offs_n, M, N, s_ptr, s_ptr, bias_ptr,
            0, 0, HAS_BIAS, ACTIVATION, False, INTERPRET,
        )  # fmt: skip


def launch_small_m(
    a2: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor,
    *,
    weight: int,
    K: int,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
    group_size: int = 1,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    split_k: int | None = None,
) -> torch.Tensor:
    """Launch the small-M kernel on checked operands: ``a2`` [M <= 16, K]; ``b`` the weight:
    [K, N] float (``weight=16``) or int8 codes (8), or [ceil(K/2), N] packed int4 (4); ``scale``
    / ``zero`` [groups, N] for the codes (same strides)."""
    M = a2.shape[0]
    N = out.shape[1]
    if M > _configs.SMALL_M_BLOCK:
        raise ValueError(
            f"Expected M <= {_configs.SMALL_M_BLOCK} rows for the small-M kernel. Received: M={M}"
        )
    if M == 0 or N == 0:
        return out
    if split_k is None:
        split_k = 1
        if not INTERPRET and a2.is_cuda:
            split_k = _configs.split_k_for(M, N, K, _device_limits(a2.device.index or 0)[1])
    dummy = _dummy(a2)
    ws = dummy
    if split_k > 1:
        ws = torch.empty((split_k, M, N), device=a2.device, dtype=torch.float32)
    s = dummy if scale is None else scale
    z = dummy if zero is None else zero
    stride_sg = s.stride(0) if s.ndim == 2 and s.shape[0] > 1 else 0
    stride_sn = s.stride(-1) if s.ndim == 2 else 0
    int64 = _checks.needs_int64(a2, b, out, ws)
    flags = dict(HAS_BIAS=bias is not None, ACTIVATION=_checks.ACTIVATION_CODES[activation])
    bias_arg = dummy if bias is None else bias

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (triton.cdiv(N, meta["BLOCK_N"]), split_k)

    _small_m_kernel[grid](
        a2, b, out, ws, s, z, bias_arg, M, N, K, group_size,
        a2.stride(0), a2.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        stride_sg, stride_sn, M * N,
        WEIGHT=weight, HAS_ZERO=zero is not None, IEEE=a2.dtype == torch.float32,
        SPLIT_K=split_k, INT64=int64, INTERPRET=INTERPRET, **flags,
    )  # fmt: skip
    if split_k > 1:
        block = 32 if INTERPRET else 64
        _splitk_reduce[(triton.cdiv(M, block) * triton.cdiv(N, block),)](
            ws, out, dummy, dummy, bias_arg, M, N, out.stride(0), out.stride(1), M * N,
            A_SCALE=0, B_SCALE=0, OUT_INT32=False, SPLIT_K=split_k, INT64=int64,
            INTERPRET=INTERPRET, BLOCK_M=block, BLOCK_N=block, **flags,
        )  # fmt: skip
    return out


def matmul_int8_weight_only(
    a: torch.Tensor,
    b_q: torch.Tensor,
    b_scale: torch.Tensor,
    *,
    b_zero: torch.Tensor | None = None,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype | str | None = None,
    split_k: int | None = None,
) -> torch.Tensor:
    """Weight-only int8 matmul for M <= 16 rows (Triton only; no public op yet):
    ``act(a @ w + bias)``, ``w = (b_q - b_zero) * b_scale`` dequantized in registers to
    ``a.dtype`` (the numerics of ``mpq.kernels.matmul_int4``, with int8 codes [K, N], any
    strides; ``b_q = q.t()`` of a contiguous [N, K] int8 weight is the fast layout). Scales,
    zero points, bias, activation and ``out_dtype`` as ``matmul_int4``."""
    b_q = _checks.check_tensor(b_q, "b_q")
    a = _checks.check_tensor(a, "a")
    if b_q.dtype != torch.int8 or b_q.ndim != 2 or a.ndim < 2 or b_q.shape[0] != a.shape[-1]:
        raise ValueError(
            "Expected a 2-D int8 `b_q` of shape [K, N] with K = a.shape[-1]. Received: "
            f"a={_checks.describe(a)}, b_q={_checks.describe(b_q)}"
        )
    if b_q.device != a.device:
        raise ValueError(
            f"Expected `a` and `b_q` on the same device. Received: a on {a.device}, b_q on "
            f"{b_q.device}"
        )
    K, N = b_q.shape
    # Everything else is the int4 op's contract: check it against a stand-in of the packed
    # shape [ceil(K/2), N] (a one-element int8 tensor broadcast, nothing allocated for it).
    packed_like = torch.zeros((), dtype=torch.int8, device=a.device).expand((K + 1) // 2, N)
    spec = _checks.check_matmul_int4(
        a, packed_like, b_scale, b_zero, group_size, bias, activation, out_dtype
    )
    if spec.M > _configs.SMALL_M_BLOCK:
        raise ValueError(
            f"Expected at most {_configs.SMALL_M_BLOCK} rows (M, the product of a's leading dims) "
            f"for the small-M weight-only int8 kernel. Received: a={_checks.describe(a)} (M={spec.M})"
        )
    check_device(a)
    out = torch.empty((spec.M, N), dtype=spec.out_dtype, device=a.device)
    scale, zero = spec.scale, spec.zero
    if zero is not None and zero.stride() != scale.stride():
        zero, scale = zero.contiguous(), scale.contiguous()
    launch_small_m(
        a.reshape(spec.M, K), b_q, out, weight=WEIGHT_INT8, K=K, scale=scale, zero=zero,
        group_size=spec.group_size, bias=bias, activation=spec.activation, split_k=split_k,
    )  # fmt: skip
    return out.reshape(*spec.lead, N)
