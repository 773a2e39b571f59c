"""Persistent TMA matmul for Hopper (sm_90+): float16, bfloat16, float8 and int8 operands.

One program per SM walks the output tiles in grouped order; operands arrive through host-side
TMA tensor descriptors (``triton.tools.tensor_descriptor.TensorDescriptor``: no device-side
allocator needed); the epilogue (the tiled kernel's ``_epilogue``) runs on sub-tiles, stored
through a TMA descriptor when the output's layout allows it, else with masked stores.
Imported lazily by ``_triton_matmul``; runs in Triton's interpreter under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from . import _checks, _configs
from ._triton_common import (
    INTERPRET,
    _cast,
    _device_limits,
    _dummy,
    _epilogue,
    _mma,
    _tile_ids,
)

TMA_ALIGN = 16  # bytes: TMA needs 16-byte aligned base pointers and non-last strides


def tma_compatible(t: torch.Tensor) -> bool:
    """True when a 2-D ``t`` (or its transpose) can be read through a TMA descriptor: one unit
    stride, the other stride and the base address 16-byte aligned."""
    if t.ndim != 2:
        return False
    elem = t.element_size()
    for major, minor in ((0, 1), (1, 0)):
        if t.stride(minor) == 1 or t.shape[minor] <= 1:
            if (t.stride(major) * elem) % TMA_ALIGN == 0 and t.data_ptr() % TMA_ALIGN == 0:
                return True
    return False


def operands_tma_ok(a2: torch.Tensor, b: torch.Tensor) -> bool:
    """The persistent kernel's layout rule: row-major ``a`` [M, K] and ``b`` [K, N] either
    K-major (``w.t()``) or row-major, each TMA-compatible."""
    a_ok = a2.stride(1) == 1 and tma_compatible(a2)
    b_ok = (b.stride(0) == 1 or b.stride(1) == 1) and tma_compatible(b)
    return a_ok and b_ok


def _b_is_k_major(b: torch.Tensor) -> bool:
    return b.stride(0) == 1 and (b.stride(1) != 1 or b.shape[1] == 1)


def _set_block_shapes(nargs: dict[str, Any]) -> None:
    """Autotune pre-hook: give the host-side descriptors the block shape of the config."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk] if nargs["B_KMAJOR"] else [bk, bn]
    if nargs["C_TMA"]:
        nargs["c_desc"].block_shape = [bm, bn // nargs["EPILOGUE_SUBTILE"]]


def _to_triton(c: dict[str, int]) -> triton.Config:
    meta = {k: c[k] for k in _configs.PERSISTENT_TILE_KEYS}
    return triton.Config(
        meta, num_warps=c["num_warps"], num_stages=c["num_stages"], pre_hook=_set_block_shapes
    )


def _triton_configs() -> list[triton.Config]:
    cap = None if INTERPRET or not torch.cuda.is_available() else torch.cuda.get_device_capability()
    return [_to_triton(c) for c in _configs.persistent_configs(cap, INTERPRET)]


def _prune(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """early_config_prune hook: shape, shared-memory and register pruning of ``_configs``."""
    if INTERPRET:
        return configs
    a = named_args["a_desc"].base
    smem, _ = _device_limits(a.device.index or 0)
    as_dicts = [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in configs]
    kept = _configs.prune_persistent(
        as_dicts,
        named_args["M"],
        named_args["N"],
        named_args["K"],
        a.element_size(),
        named_args["c_desc"].base.element_size(),
        smem,
        fp8_promote=kwargs["FP8_PROMOTE"] if kwargs.get("FP8") else 0,
    )
    return [_to_triton(c) for c in kept]


def _launch_metadata(grid: Any, kernel: Any, args: dict[str, Any]) -> dict[str, Any]:
    M, N, K = args["M"], args["N"], args["K"]
    a, b, c = args["a_desc"].base, args["b_desc"].base, args["c_desc"].base
    return {
        "name": f"{kernel.name} [M={M}, N={N}, K={K}]",
        "flops": 2 * M * N * K,
        "bytes": M * K * a.element_size() + K * N * b.element_size() + M * N * c.element_size(),
    }


# --- device code -------------------------------------------------------------------------------


@triton.jit  # type: ignore[untyped-decorator]
def _load_b(  # type: ignore[no-untyped-def]
    b_desc, pid_n, ki, B_KMAJOR: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
    """The [BLOCK_K, BLOCK_N] tile ki of b: a transposed view of the K-major [N, K] weight's
    [BLOCK_N, BLOCK_K] box (what wgmma reads for 8-bit operands), or the row-major box."""
    if B_KMAJOR:
        return b_desc.load([pid_n * BLOCK_N, ki * BLOCK_K]).T
    else:
        return b_desc.load([ki * BLOCK_K, pid_n * BLOCK_N])


@triton.jit  # type: ignore[untyped-decorator]
def _k_loop(  # type: ignore[no-untyped-def]
    a_desc,
    b_desc,
    pid_m,
    pid_n,
    k_tiles,
    ACC_INT32: tl.constexpr,
    FP8: tl.constexpr,
    FP8_PROMOTE: tl.constexpr,
    B_KMAJOR: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The accumulator of one output tile. Precision decision for float8 (FP8_PROMOTE):
    0 = fast: one chain of dots, wgmma's reduced-precision accumulator carried over all of K
    (sm_90's default max_num_imprecise_acc = 2**30); 1 = promote every K tile
    (max_num_imprecise_acc = BLOCK_K, the tiled kernel's contract, via ``_mma``); n > 1 = a
    chain of n dots into a fresh partial sum, then one float32 add into ``acc``. Out-of-bounds
    boxes read zeros (TMA padding), so partial tiles need no masks."""
    if ACC_INT32:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FP8 and FP8_PROMOTE == 0:
        for ki in range(k_tiles):
            a = a_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
            b = _load_b(b_desc, pid_n, ki, B_KMAJOR, BLOCK_N, BLOCK_K)
            acc = tl.dot(a, b, acc)
    elif FP8 and FP8_PROMOTE > 1:
        for k0 in range(0, k_tiles, FP8_PROMOTE):
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ki in range(k0, tl.minimum(k0 + FP8_PROMOTE, k_tiles)):
                a = a_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
                b = _load_b(b_desc, pid_n, ki, B_KMAJOR, BLOCK_N, BLOCK_K)
                part = tl.dot(a, b, part)
            acc += part
    else:
        for ki in range(k_tiles):
            a = a_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
            b = _load_b(b_desc, pid_n, ki, B_KMAJOR, BLOCK_N, BLOCK_K)
            acc = _mma(a, b, acc, ACC_INT32, False, INTERPRET)
    return acc


@triton.jit  # type: ignore[untyped-decorator]
def _store_subtile(  # type: ignore[no-untyped-def]
    acc,
    c_desc,
    c_ptr,
    m0,
    n0,
    M,
    N,
    stride_cm,
    stride_cn,
    a_scale_ptr,
    b_scale_ptr,
    bias_ptr,
    A_SCALE: tl.constexpr,
    B_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    OUT_INT32: tl.constexpr,
    C_TMA: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    SUB_N: tl.constexpr,
):
    """Epilogue and store of one [BLOCK_M, SUB_N] sub-tile whose first column is n0: the raw
    int32 accumulator (OUT_INT32) or ``_epilogue`` and the one cast; through the TMA descriptor
    (which clips at the tensor's bounds) or masked pointer stores."""
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, SUB_N)
    if OUT_INT32:
        out = acc
    else:
        out = _epilogue(
            acc.to(tl.float32), offs_m, offs_n, M, N, a_scale_ptr, b_scale_ptr, bias_ptr,
            A_SCALE, B_SCALE, HAS_BIAS, ACTIVATION,
        )  # fmt: skip
        out = _cast(out, c_ptr.dtype.element_ty, INTERPRET)
    if C_TMA:
        c_desc.store([m0, n0], out)
    else:
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, out, mask=mask)


@triton.jit  # type: ignore[untyped-decorator]
def _store_tile(  # type: ignore[no-untyped-def]
    acc,
    c_desc,
    c_ptr,
    pid_m,
    pid_n,
    M,
    N,
    stride_cm,
    stride_cn,
    a_scale_ptr,
    b_scale_ptr,
    bias_ptr,
    A_SCALE: tl.constexpr,
    B_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    OUT_INT32: tl.constexpr,
    C_TMA: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    EPILOGUE_SUBTILE: tl.constexpr,
):
    """The sub-tiled epilogue: EPILOGUE_SUBTILE = 2 splits the tile in two column halves, so
    half the fp32 epilogue temporaries are live at a time (fewer registers, smaller TMA
    store boxes); 1 stores the whole tile."""
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    if EPILOGUE_SUBTILE == 2:
        halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
        acc0, acc1 = tl.split(halves)
        _store_subtile(
            acc0, c_desc, c_ptr, m0, n0, M, N, stride_cm, stride_cn, a_scale_ptr,
            b_scale_ptr, bias_ptr, A_SCALE, B_SCALE, HAS_BIAS, ACTIVATION, OUT_INT32, C_TMA,
            INTERPRET, BLOCK_M, BLOCK_N // 2,
        )  # fmt: skip
        _store_subtile(
            acc1, c_desc, c_ptr, m0, n0 + BLOCK_N // 2, M, N, stride_cm, stride_cn,
            a_scale_ptr, b_scale_ptr, bias_ptr, A_SCALE, B_SCALE, HAS_BIAS, ACTIVATION,
            OUT_INT32, C_TMA, INTERPRET, BLOCK_M, BLOCK_N // 2,
        )  # fmt: skip
    else:
        _store_subtile(
            acc, c_desc, c_ptr, m0, n0, M, N, stride_cm, stride_cn, a_scale_ptr,
            b_scale_ptr, bias_ptr, A_SCALE, B_SCALE, HAS_BIAS, ACTIVATION, OUT_INT32, C_TMA,
            INTERPRET, BLOCK_M, BLOCK_N,
        )  # fmt: skip


@triton.autotune(  # type: ignore[untyped-decorator]
    configs=_triton_configs(),
    key=["M", "N", "K", "FP8_PROMOTE"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit(launch_metadata=_launch_metadata)  # type: ignore[untyped-decorator]
def _matmul_persistent_kernel(  # type: ignore[no-untyped-def]
    a_desc,
    b_desc,
    c_desc,
    c_ptr,
    a_scale_ptr,
    b_scale_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_cm,
    stride_cn,
    A_SCALE: tl.constexpr,
    B_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    ACC_INT32: tl.constexpr,  # precision: int8 operands accumulate exactly in int32
    FP8: tl.constexpr,  # float8 operands: FP8_PROMOTE decides their accumulation
    FP8_PROMOTE: tl.constexpr,  # precision: 0 fast, n >= 1 promote to fp32 every n K tiles
    OUT_INT32: tl.constexpr,
    B_KMAJOR: tl.constexpr,  # b is w.t() of a contiguous [N, K] weight
    C_TMA: tl.constexpr,  # the output is stored through c_desc (else masked stores)
    NUM_SMS: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EPILOGUE_SUBTILE: tl.constexpr,
):
    """c = epilogue(a @ b), NUM_SMS programs each taking every NUM_SMS-th output tile in the
    grouped order of ``_tile_ids`` (GROUP_M row tiles share a column tile of b in L2)."""
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=False):
        pid_m, pid_n = _tile_ids(tile_id, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = _k_loop(
            a_desc, b_desc, pid_m, pid_n, k_tiles, ACC_INT32, FP8, FP8_PROMOTE, B_KMAJOR,
            INTERPRET, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        _store_tile(
            acc, c_desc, c_ptr, pid_m, pid_n, M, N, stride_cm, stride_cn, a_scale_ptr,
            b_scale_ptr, bias_ptr, A_SCALE, B_SCALE, HAS_BIAS, ACTIVATION, OUT_INT32, C_TMA,
            INTERPRET, BLOCK_M, BLOCK_N, EPILOGUE_SUBTILE,
        )  # fmt: skip


# --- launcher ----------------------------------------------------------------------------------

INTERPRETER_NUM_SMS = 3
"""Programs under the interpreter: fewer than the tiles of the tests' shapes, so every program
walks several tiles (the persistent loop is exercised)."""


@functools.cache
def _num_sms(index: int) -> int:
    return _device_limits(index)[1]


def _descriptor(t: torch.Tensor, block: list[int]) -> TensorDescriptor:
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block)


def launch_persistent(
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
    fp8_promote: int = 1,
) -> torch.Tensor:
    """Launch the persistent kernel on checked, TMA-compatible operands (``operands_tma_ok``):
    out[M, N] = epilogue(a2 @ b). ``fp8_promote``: see ``TritonOptions.fp8_promote``."""
    M, K = a2.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return out
    if not operands_tma_ok(a2, b):
        raise ValueError(
            "Expected TMA-compatible operands for the persistent kernel (row-major a, K-major "
            "or row-major b, 16-byte aligned strides and base pointers). Received: "
            f"a={_checks.describe(a2)} with strides {a2.stride()}, b={_checks.describe(b)} "
            f"with strides {b.stride()}"
        )
    b_kmajor = _b_is_k_major(b)
    # Block shapes are placeholders here: the autotuner's pre-hook sets each config's.
    a_desc = _descriptor(a2, [1, 1])
    b_desc = _descriptor(b.t() if b_kmajor else b, [1, 1])
    c_tma = out.stride(1) == 1 and tma_compatible(out)
    # Without a TMA-compatible output the kernel stores through pointers; c_desc is unused.
    c_desc = _descriptor(out if c_tma else out.new_empty((1, TMA_ALIGN)), [1, TMA_ALIGN])
    dummy = _dummy(a2)
    num_sms = INTERPRETER_NUM_SMS if INTERPRET else _num_sms(a2.device.index or 0)
    fp8 = a2.dtype in _checks.FLOAT8_DTYPES

    def grid(meta: dict[str, Any]) -> tuple[int]:
        tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])
        return (min(num_sms, tiles),)

    _matmul_persistent_kernel[grid](
        a_desc, b_desc, c_desc, out,
        dummy if a_scale is None else a_scale,
        dummy if b_scale is None else b_scale,
        dummy if bias is None else bias,
        M, N, K, out.stride(0), out.stride(1),
        A_SCALE=a_scale_mode, B_SCALE=b_scale_mode, HAS_BIAS=bias is not None,
        ACTIVATION=_checks.ACTIVATION_CODES[activation], ACC_INT32=a2.dtype == torch.int8,
        FP8=fp8, FP8_PROMOTE=fp8_promote if fp8 else 1, OUT_INT32=out.dtype == torch.int32,
        B_KMAJOR=b_kmajor, C_TMA=c_tma, NUM_SMS=num_sms, INTERPRET=INTERPRET,
    )  # fmt: skip
    return out
