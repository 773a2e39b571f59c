"""Triton implicit-GEMM conv2d on channels-last input, with the fused epilogue of the matmul.

Imported lazily by the dispatcher; a 1x1, stride-1, unpadded, ungrouped conv runs the matmul.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from . import _checks, _configs
from ._triton_common import (
    INTERPRET,
    EpilogueArgs,
    _device_limits,
    _masked_load,
    _mma,
    _prune_configs,
    _store_result,
    _tile_ids,
    _to_triton,
    _triton_configs,
    check_device,
    check_float8_support,
)
from ._triton_matmul import _capability, launch_matmul
from ._triton_options import PERSISTENT_KINDS
from ._triton_options import current as current_options
from ._triton_persistent import (
    INTERPRETER_NUM_SMS,
    _store_tile,
    launch_persistent,
    operands_tma_ok,
)

MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y (gridDim.x allows 2**31 - 1)


def _launch_metadata(grid: Any, kernel: Any, args: dict[str, Any]) -> dict[str, Any]:
    M, N, K = args["M"], args["N"], args["K"]
    groups = grid[1]
    x, w, y = args["x_ptr"], args["w_ptr"], args["y_ptr"]
    return {
        "name": f"{kernel.name} [M={M}, N={N}x{groups}, K={K}]",
        "flops": 2 * M * N * K * groups,
        "bytes": x.numel() * x.element_size()
        + w.numel() * w.element_size()
        + y.numel() * y.element_size(),
    }


@triton.jit  # type: ignore[untyped-decorator]
def _conv_acc(  # type: ignore[no-untyped-def]
    x_ptr,
    w_ptr,
    offs_m,
    offs_n,
    g,
    M,
    N,
    H,
    W,
    OH,
    OW,
    Cg,
    KH,
    KW,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    sxn,
    sxh,
    sxw,
    sxc,
    swo,
    swh,
    sww,
    swc,
    ACC_INT32: tl.constexpr,
    IEEE: tl.constexpr,
    INT64: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The accumulator of one [BLOCK_M, BLOCK_N] output tile of group g: the reduction walks
    the filter taps (kh, kw) and, inside each, BLOCK_K input channels, so the im2col gather
    needs no division per element and padding is a per-row mask."""
    offs_c = tl.arange(0, BLOCK_K)
    if INT64:
        offs_c = offs_c.to(tl.int64)
    m_mask = offs_m < M
    n_mask = offs_n < N
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    nb = offs_m // (OW * OH)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_base = x_ptr + nb * sxn + (g * Cg) * sxc
    w_base = w_ptr + (g * N + offs_n) * swo
    if ACC_INT32:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in range(KH):
        ih = ih0 + kh * dil_h
        h_ok = m_mask & (ih >= 0) & (ih < H)
        for kw in range(KW):
            iw = iw0 + kw * dil_w
            row_ok = h_ok & (iw >= 0) & (iw < W)
            x_row = x_base + ih * sxh + iw * sxw
            w_col = w_base + kh * swh + kw * sww
            for c in range(0, Cg, BLOCK_K):
                cc = c + offs_c
                c_ok = cc < Cg
                xv = _masked_load(
                    x_row[:, None] + cc[None, :] * sxc, row_ok[:, None] & c_ok[None, :]
                )
                wv = _masked_load(
                    w_col[None, :] + cc[:, None] * swc, c_ok[:, None] & n_mask[None, :]
                )
                acc = _mma(xv, wv, acc, ACC_INT32, IEEE, INTERPRET)
    return acc


@triton.autotune(  # type: ignore[untyped-decorator]
    configs=_triton_configs(),
    key=["M", "N", "K"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit(launch_metadata=_launch_metadata)  # type: ignore[untyped-decorator]
def _conv2d_kernel(  # type: ignore[no-untyped-def]
    x_ptr,
    w_ptr,
    y_ptr,
    x_scale_ptr,
    w_scale_ptr,
    bias_ptr,
    M,  # GEMM view per group: M = batch * OH * OW, N = OC / groups, K = KH * KW * C / groups
    N,
    K,
    H,
    W,
    OH,
    OW,
    Cg,
    KH,
    KW,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    sxn,
    sxh,
    sxw,
    sxc,
    swo,
    swh,
    sww,
    swc,
    sym,
    syn,
    X_SCALE: tl.constexpr,
    W_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    ACC_INT32: tl.constexpr,  # precision: int8 operands accumulate exactly in int32
    IEEE: tl.constexpr,  # precision: fp32 operands use IEEE fp32 products (no TF32)
    OUT_INT32: tl.constexpr,
    INT64: tl.constexpr,  # some element offset reaches 2**31 (N*H*W*C, or the output): int64
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """y[m, g*N + n] = epilogue(sum_{kh, kw, c} x[pixel(m, kh, kw), g*Cg + c] * w[g*N + n, kh, kw, c]).

    The reduction walks the filter taps (kh, kw) and, inside each, BLOCK_K input channels, so
    the im2col gather needs no division per element and padding is a per-row mask."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if INT64:
        # nb * sxn, ih * sxh and offs_m * sym exceed int32 once a tensor has >= 2**31 elements
        # (64 x 512 x 512 x 128 activations do); promote the index vectors (and the group id) so
        # every offset product below is computed in int64.
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        g = g.to(tl.int64)
    acc = _conv_acc(
        x_ptr, w_ptr, offs_m, offs_n, g, M, N, H, W, OH, OW, Cg, KH, KW, stride_h, stride_w,
        pad_h, pad_w, dil_h, dil_w, sxn, sxh, sxw, sxc, swo, swh, sww, swc, ACC_INT32, IEEE,
        INT64, INTERPRET, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    m_mask = offs_m < M
    n_mask = offs_n < N
    y_ptrs = y_ptr + offs_m[:, None] * sym + (g * N + offs_n)[None, :] * syn
    mask = m_mask[:, None] & n_mask[None, :]
    if W_SCALE == 2:  # noqa: SIM108 (a constexpr branch, kept explicit for Triton)
        col_scale_ptr = w_scale_ptr + g * N
    else:
        col_scale_ptr = w_scale_ptr
    _store_result(
        y_ptrs, acc, mask, offs_m, offs_n, M, N, x_scale_ptr, col_scale_ptr, bias_ptr + g * N,
        X_SCALE, W_SCALE, HAS_BIAS, ACTIVATION, OUT_INT32, INTERPRET,
    )  # fmt: skip


def _persistent_configs() -> list[triton.Config]:
    cap = None if INTERPRET or not torch.cuda.is_available() else torch.cuda.get_device_capability()
    if INTERPRET:
        return [_to_triton(c) for c in _configs.persistent_configs(cap, INTERPRET)]
    return [_to_triton(c) for c in _configs.persistent_conv_configs()]


@triton.autotune(  # type: ignore[untyped-decorator]
    configs=_persistent_configs(),
    key=["M", "N", "K"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit(launch_metadata=_launch_metadata)  # type: ignore[untyped-decorator]
def _conv2d_persistent_kernel(  # type: ignore[no-untyped-def]
    x_ptr,
    w_ptr,
    y_ptr,
    x_scale_ptr,
    w_scale_ptr,
    bias_ptr,
    M,
    N,
    K,
    H,
    W,
    OH,
    OW,
    Cg,
    KH,
    KW,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    sxn,
    sxh,
    sxw,
    sxc,
    swo,
    swh,
    sww,
    swc,
    sym,
    syn,
    GROUPS,
    X_SCALE: tl.constexpr,
    W_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    ACC_INT32: tl.constexpr,
    IEEE: tl.constexpr,
    OUT_INT32: tl.constexpr,
    INT64: tl.constexpr,
    NUM_SMS: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EPILOGUE_SUBTILE: tl.constexpr,
):
    """``_conv2d_kernel`` with persistent scheduling and the persistent matmul's sub-tiled
    epilogue: NUM_SMS programs walk the (group, tile) pairs, groups outermost and the tiles of
    a group in grouped order, so one 1-D grid covers any number of groups."""
    tiles_per_group = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile_id in tl.range(tl.program_id(0), tiles_per_group * GROUPS, NUM_SMS, flatten=False):
        g = tile_id // tiles_per_group
        pid_m, pid_n = _tile_ids(tile_id % tiles_per_group, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        if INT64:
            offs_m = offs_m.to(tl.int64)
            offs_n = offs_n.to(tl.int64)
            g = g.to(tl.int64)
        acc = _conv_acc(
            x_ptr, w_ptr, offs_m, offs_n, g, M, N, H, W, OH, OW, Cg, KH, KW, stride_h,
            stride_w, pad_h, pad_w, dil_h, dil_w, sxn, sxh, sxw, sxc, swo, swh, sww, swc,
            ACC_INT32, IEEE, INT64, INTERPRET, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        if W_SCALE == 2:  # noqa: SIM108 (a constexpr branch, kept explicit for Triton)
            col_scale_ptr = w_scale_ptr + g * N
        else:
            col_scale_ptr = w_scale_ptr
        # Group g's output columns, bias and scales start at g * N; no TMA store (a tile may
        # cross into the next group's columns, which TMA's bounds would not clip).
        _store_tile(
            acc, y_ptr, y_ptr + g * N * syn, pid_m, pid_n, M, N, sym, syn, x_scale_ptr,
            col_scale_ptr, bias_ptr + g * N, X_SCALE, W_SCALE, HAS_BIAS, ACTIVATION, OUT_INT32,
            False, INTERPRET, BLOCK_M, BLOCK_N, EPILOGUE_SUBTILE,
        )  # fmt: skip


def choose_conv_kernel(
    capability: tuple[int, int] | None, forced: str, interpret: bool = INTERPRET
) -> str:
    """ "persistent" on sm_90+ (automatically) or when forced (sm_90+ or the interpreter), else
    "tiled"; the small-M kernel has no conv, so forcing it raises."""
    if forced == "small_m":
        raise ValueError(
            "Expected kernel 'auto', 'tiled' or 'persistent' for conv2d (the small-M kernel is a "
            "matmul only). Received: kernel='small_m'"
        )
    hopper = capability is not None and capability >= (9, 0)
    if forced == "persistent" and not (hopper or interpret):
        raise ValueError(
            "Expected a GPU of compute capability >= 9.0 for the persistent conv2d kernel. "
            f"Received: capability={capability}"
        )
    if forced == "auto":
        return "persistent" if hopper else "tiled"
    return forced


def conv2d_checked(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, spec: _checks.Conv2dSpec
) -> torch.Tensor:
    """Launcher: run the conv for a call the dispatcher checked (``_checks.check_conv2d``),
    which also needs the spec to decide on autograd; checking once serves both."""
    check_device(x)
    if spec.kind == "float8":
        check_float8_support(x)
    M = spec.batch * spec.OH * spec.OW
    y = torch.empty((spec.batch, spec.OH, spec.OW, spec.OC), dtype=spec.out_dtype, device=x.device)
    if M == 0:
        return y
    y2 = y.view(M, spec.OC)
    kernel = choose_conv_kernel(_capability(x), current_options().kernel)
    pointwise = (
        spec.KH == spec.KW == 1
        and spec.stride == (1, 1)
        and spec.padding == (0, 0, 0, 0)
        and spec.groups == 1
    )
    if pointwise:
        # A 1x1 conv is a matmul: [N*H*W, C] @ w.reshape(OC, C).t() (K-major for 8-bit w): the
        # tiled matmul, or the persistent one when its layout rule holds (else the persistent
        # conv kernel below).
        x2, w_t = x.reshape(M, spec.C), w.reshape(spec.OC, spec.C).t()
        epilogue = EpilogueArgs(
            a_scale_mode=spec.x_scale_mode,
            a_scale=spec.x_scale,
            b_scale_mode=spec.w_scale_mode,
            b_scale=spec.w_scale,
            bias=bias,
            activation=spec.activation,
        )
        kind = str(x.dtype).removeprefix("torch.") if spec.kind == "float" else spec.kind
        if kernel == "tiled":
            launch_matmul(x2, w_t, y2, **epilogue)
            return y
        if (
            kind in PERSISTENT_KINDS
            and operands_tma_ok(x2, w_t)
            and not _checks.needs_int64(x2, w_t, y2)
        ):
            launch_persistent(x2, w_t, y2, fp8_promote=current_options().fp8_promote, **epilogue)
            return y
    dummy = x.new_empty(1, dtype=torch.float32)
    Cg = spec.C // spec.groups
    N = spec.OC // spec.groups
    K = spec.KH * spec.KW * Cg
    args = (
        x, w, y2,
        dummy if spec.x_scale is None else spec.x_scale,
        dummy if spec.w_scale is None else spec.w_scale,
        dummy if bias is None else bias,
        M, N, K, spec.H, spec.W, spec.OH, spec.OW, Cg, spec.KH, spec.KW,
        spec.stride[0], spec.stride[1], spec.padding[0], spec.padding[2],
        spec.dilation[0], spec.dilation[1],
        *x.stride(), *w.stride(), y2.stride(0), y2.stride(1),
    )  # fmt: skip
    flags = dict(
        X_SCALE=spec.x_scale_mode, W_SCALE=spec.w_scale_mode, HAS_BIAS=bias is not None,
        ACTIVATION=_checks.ACTIVATION_CODES[spec.activation], ACC_INT32=spec.kind == "int8",
        IEEE=x.dtype == torch.float32, OUT_INT32=spec.out_dtype == torch.int32,
        INT64=_checks.needs_int64(x, w, y2), INTERPRET=INTERPRET,
    )  # fmt: skip
    if kernel == "persistent":
        num_sms = INTERPRETER_NUM_SMS if INTERPRET else _device_limits(x.device.index or 0)[1]

        def persistent_grid(meta: dict[str, Any]) -> tuple[int]:
            tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])
            return (min(num_sms, tiles * spec.groups),)

        _conv2d_persistent_kernel[persistent_grid](*args, spec.groups, NUM_SMS=num_sms, **flags)
        return y
    if spec.groups > MAX_GRID_Y:
        raise ValueError(
            f"Expected groups <= {MAX_GRID_Y} for the Triton conv2d (groups run on CUDA's grid "
            f"axis 1, limited to {MAX_GRID_Y} blocks). Received: groups={spec.groups}; use the "
            "reference backend for this conv"
        )
    grid = lambda META: (  # noqa: E731
        triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]),
        spec.groups,
    )
    _conv2d_kernel[grid](*args, **flags)
    return y
