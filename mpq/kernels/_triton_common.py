"""Shared pieces of mpq's Triton kernels: device checks, config plumbing, and the @triton.jit
helpers (loads, the accumulation decision ``_mma``, the epilogue, the one cast, grouped tile
order, the split-K reduction, int4 unpacking and weight-only dequantization).

Imported lazily (through the kernel modules). Under TRITON_INTERPRET=1 (read by Triton when
this module is imported) the same code runs on CPU tensors in Triton's interpreter.
"""

from __future__ import annotations

import functools
from typing import Any, TypedDict

import torch
import triton
import triton.language as tl

from . import _configs

# Triton 3.9 decides at decoration time whether @triton.jit functions are interpreted.
INTERPRET = bool(triton.knobs.runtime.interpret)


def check_device(t: torch.Tensor) -> None:
    """Refuse devices these kernels were not built for (no silent fallback)."""
    if t.device.type == "cuda" or (t.device.type == "cpu" and INTERPRET):
        return
    if t.device.type == "cpu":
        raise RuntimeError(
            "Expected mpq's Triton kernels to be imported with TRITON_INTERPRET=1 to run on CPU "
            "tensors. Received: CPU tensors, but TRITON_INTERPRET was not set when "
            "mpq.kernels._triton_matmul was first imported (set it before the first Triton call)"
        )
    raise RuntimeError(
        f"Expected CUDA tensors (or CPU tensors under TRITON_INTERPRET=1) for the Triton backend. "
        f"Received: tensors on {t.device}"
    )


def check_float8_support(t: torch.Tensor) -> None:
    if t.device.type == "cuda" and not INTERPRET:
        cap = torch.cuda.get_device_capability(t.device)
        if cap < (8, 9):
            raise RuntimeError(
                "Expected a GPU of compute capability >= 8.9 (Ada, Hopper) for float8 operands. "
                f"Received: {torch.cuda.get_device_name(t.device)} with capability {cap}; use "
                "the reference backend"
            )


@functools.cache
def _device_limits(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or 99 * 1024
    return smem, props.multi_processor_count


def _to_triton(c: _configs.Config) -> triton.Config:
    """A plain-data config of ``_configs`` as a ``triton.Config``."""
    meta = {k: v for k, v in c.items() if k not in ("num_warps", "num_stages")}
    return triton.Config(meta, num_warps=c["num_warps"], num_stages=c["num_stages"])


def _prune_configs(
    configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any
) -> list[triton.Config]:
    """early_config_prune hook: shape/shared-memory pruning of ``_configs.prune``."""
    if INTERPRET:
        return configs
    a = named_args["a_ptr"] if "a_ptr" in named_args else named_args["x_ptr"]
    b = named_args["b_ptr"] if "b_ptr" in named_args else named_args["w_ptr"]
    smem, _ = _device_limits(a.device.index or 0)
    elem = max(a.element_size(), b.element_size())
    as_dicts = [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in configs]
    # The conv kernel's BLOCK_K runs over the input channels of one filter tap (Cg), not all of K.
    k_extent = named_args["Cg"] if "Cg" in named_args else named_args["K"]
    # The int4 kernel also loads [BLOCK_K, BLOCK_N] tiles of group scales (and zero points) in
    # its K loop, which Triton pipelines in shared memory like the operands; without counting
    # them most Hopper configs overflowed shared memory (compile_check.py: up to 448 KiB).
    extra = 0
    if "s_ptr" in named_args:
        extra = named_args["s_ptr"].element_size()
        if kwargs.get("HAS_ZERO"):
            extra += named_args["z_ptr"].element_size()
    # Register pressure: a fused epilogue on the accumulator (not split-K partial sums).
    heavy = kwargs.get("SPLIT_K", 1) == 1 and any(kwargs.get(flag) for flag in EPILOGUE_FLAGS)
    kept = _configs.prune(
        as_dicts, named_args["M"], named_args["N"], k_extent, elem, smem, kn_extra_bytes=extra,
        heavy_epilogue=heavy, gather="Cg" in named_args,
    )  # fmt: skip
    # prune may lower num_stages, so build the kept configs anew from their dicts.
    return [_to_triton(c) for c in kept]


EPILOGUE_FLAGS = ("A_SCALE", "B_SCALE", "X_SCALE", "W_SCALE", "HAS_BIAS", "ACTIVATION")


def _triton_configs() -> list[triton.Config]:
    cap = None if INTERPRET or not torch.cuda.is_available() else torch.cuda.get_device_capability()
    return [_to_triton(c) for c in _configs.matmul_configs(cap, INTERPRET)]


def _launch_metadata(grid: Any, kernel: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Flops and compulsory bytes (each operand read once, output written once) for profilers.

    ``b`` is counted by its storage (numel), so a packed int4 weight counts K*N/2 bytes, not
    K*N; split-K workspace traffic is not counted."""
    M, N, K = args["M"], args["N"], args["K"]
    a, b, c = args["a_ptr"], args["b_ptr"], args["c_ptr"]
    return {
        "name": f"{kernel.name} [M={M}, N={N}, K={K}]",
        "flops": 2 * M * N * K,
        "bytes": M * K * a.element_size() + b.numel() * b.element_size() + M * N * c.element_size(),
    }


class EpilogueArgs(TypedDict):
    """The epilogue arguments every matmul launcher takes (scale modes of ``_checks``)."""

    a_scale_mode: int
    a_scale: torch.Tensor | None
    b_scale_mode: int
    b_scale: torch.Tensor | None
    bias: torch.Tensor | None
    activation: str


# --- shared device functions -----------------------------------------------------------------


@triton.jit
def _masked_load(ptrs, mask):  # type: ignore[no-untyped-def]
    # `other` is a float constant on purpose: Triton casts it to the element type, and only a
    # float source has a conversion to float8 (an int 0 fails for fp8 in the interpreter, and
    # int -> fp8 has no direct conversion on the GPU either); 0.0 is exact for every dtype here.
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit  # type: ignore[untyped-decorator]
def _cast(x, dtype: tl.constexpr, INTERPRET: tl.constexpr):  # type: ignore[no-untyped-def]
    """The one cast of a result (round to nearest even)."""
    if INTERPRET:
        if dtype == tl.bfloat16:
            # Interpreter quirk (Triton 3.9): fp32 -> bf16 truncates; round to nearest even by
            # hand on the bits (NaN kept), which is what the GPU's conversion does.
            bits = x.to(tl.uint32, bitcast=True)
            rounded = bits + 0x7FFF + ((bits >> 16) & 1)
            out = (rounded >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
            return tl.where(x != x, x.to(tl.bfloat16), out)
        else:
            return x.to(dtype)
    else:
        return x.to(dtype)


@triton.jit  # type: ignore[untyped-decorator]
def _mma(a, b, acc, ACC_INT32: tl.constexpr, IEEE: tl.constexpr, INTERPRET: tl.constexpr):  # type: ignore[no-untyped-def]
    """acc += a @ b: int32 accumulation for int8, IEEE fp32 for fp32 operands, else fp32."""
    if ACC_INT32:
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    elif IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    elif INTERPRET:
        # Interpreter quirk (Triton 3.9): tl.dot on bfloat16 operands gives wrong numbers; the
        # upcast to fp32 is exact, so the products and the fp32 accumulation are unchanged.
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
        if b.dtype == tl.bfloat16:
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision="ieee")
    elif a.dtype.is_fp8():
        # Precision (fp8 x fp8 -> fp32): on sm_90 Triton 3.9 defaults to
        # max_num_imprecise_acc = 2**30 (triton/backends/nvidia/compiler.py), i.e. wgmma's
        # reduced-precision fp8 accumulator is carried over the whole K loop ("fast accum", like
        # torch._scaled_mm(use_fast_accum=True)). Capping it at this tile's K makes the compiler
        # add each tile's wgmma partial sum into a separate fp32 accumulator (promotion every
        # BLOCK_K products), the fp32-accumulation contract of mpq.kernels. No effect on sm_89
        # (mma.sync accumulates in fp32) nor in the interpreter.
        acc = tl.dot(a, b, acc, max_num_imprecise_acc=a.shape[1])
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit  # type: ignore[untyped-decorator]
def _epilogue(  # type: ignore[no-untyped-def]
    acc,
    offs_m,
    offs_n,
    M,
    N,
    row_scale_ptr,
    col_scale_ptr,
    bias_ptr,
    ROW_SCALE: tl.constexpr,
    COL_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
):
    """Precision decision: scales, bias and activation act on the fp32 accumulator, in this
    order (row scale, column scale, bias, activation); the caller casts once at the store."""
    if ROW_SCALE == 1:
        acc = acc * tl.load(row_scale_ptr)
    elif ROW_SCALE == 2:
        acc = acc * tl.load(row_scale_ptr + offs_m, mask=offs_m < M, other=0.0)[:, None]
    if COL_SCALE == 1:
        acc = acc * tl.load(col_scale_ptr)
    elif COL_SCALE == 2:
        acc = acc * tl.load(col_scale_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    if ACTIVATION == 1:
        acc = tl.where(acc < 0.0, 0.0, acc)  # relu; keeps NaN like torch.relu
    elif ACTIVATION == 2:
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))  # exact (erf) GELU
    elif ACTIVATION == 3:
        # silu = x * sigmoid(x), through exp(-|x|) so that nothing overflows
        e = tl.exp(-tl.abs(acc))
        acc = tl.where(acc >= 0.0, acc / (1.0 + e), acc * e / (1.0 + e))
    return acc


@triton.jit  # type: ignore[untyped-decorator]
def _store_result(  # type: ignore[no-untyped-def]
    c_ptrs,
    acc,
    mask,
    offs_m,
    offs_n,
    M,
    N,
    row_scale_ptr,
    col_scale_ptr,
    bias_ptr,
    ROW_SCALE: tl.constexpr,
    COL_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    OUT_INT32: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Store a tile: the raw int32 accumulator (OUT_INT32), else the epilogue on the fp32
    accumulator and the one cast to the output's element type."""
    if OUT_INT32:
        tl.store(c_ptrs, acc, mask=mask)
    else:
        acc = _epilogue(
            acc.to(tl.float32), offs_m, offs_n, M, N, row_scale_ptr, col_scale_ptr, bias_ptr,
            ROW_SCALE, COL_SCALE, HAS_BIAS, ACTIVATION,
        )  # fmt: skip
        tl.store(c_ptrs, _cast(acc, c_ptrs.dtype.element_ty, INTERPRET), mask=mask)


@triton.jit  # type: ignore[untyped-decorator]
def _tile_ids(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):  # type: ignore[no-untyped-def]
    """Grouped ordering: GROUP_M row-tiles share each column-tile of b while it is in L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit  # type: ignore[untyped-decorator]
def _splitk_reduce(  # type: ignore[no-untyped-def]
    ws_ptr,
    c_ptr,
    a_scale_ptr,
    b_scale_ptr,
    bias_ptr,
    M,
    N,
    stride_cm,
    stride_cn,
    stride_ws,  # M * N: one split's slice of the workspace (an i64 argument when >= 2**31)
    A_SCALE: tl.constexpr,
    B_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    OUT_INT32: tl.constexpr,
    SPLIT_K: tl.constexpr,
    INT64: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Sum the SPLIT_K partial accumulators in a fixed order (deterministic; exact for int32),
    then apply the epilogue and cast once. 1-D grid over (M, N) tiles: a 2-D grid would put
    cdiv(N, BLOCK_N) on CUDA's grid axis 1, which is limited to 65535."""
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    offs_m = (pid // num_pid_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid % num_pid_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    if INT64:
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    ws_ptrs = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
    acc = tl.load(ws_ptrs, mask=mask, other=0)
    for _ in range(1, SPLIT_K):
        ws_ptrs += stride_ws
        acc += tl.load(ws_ptrs, mask=mask, other=0)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    _store_result(
        c_ptrs, acc, mask, offs_m, offs_n, M, N, a_scale_ptr, b_scale_ptr, bias_ptr,
        A_SCALE, B_SCALE, HAS_BIAS, ACTIVATION, OUT_INT32, INTERPRET,
    )  # fmt: skip


def _dummy(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty(1, dtype=torch.float32)


@triton.jit  # type: ignore[untyped-decorator]
def _unpack_int4(p, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):  # type: ignore[no-untyped-def]
    """[BLOCK_K // 2, BLOCK_N] bytes (int8 or uint8) -> [BLOCK_K, BLOCK_N] int32 codes in
    [-8, 7]: byte i holds row 2i in its low nibble and row 2i + 1 in its high nibble."""
    p = p.to(tl.int32)
    low = ((p & 0xF) ^ 8) - 8  # sign-extended nibbles, whatever the container's signedness
    high = (((p >> 4) & 0xF) ^ 8) - 8
    # Interleave: row 2i <- low[i], row 2i + 1 <- high[i].
    return tl.reshape(tl.permute(tl.join(low, high), (0, 2, 1)), (BLOCK_K, BLOCK_N))


@triton.jit  # type: ignore[untyped-decorator]
def _dequantize(  # type: ignore[no-untyped-def]
    q,
    kk,
    k_mask,
    offs_n,
    n_mask,
    s_ptr,
    z_ptr,
    GROUP_SIZE,
    stride_sg,
    stride_sn,
    HAS_ZERO: tl.constexpr,
    dtype: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Weight-only dequantization in registers of the [BLOCK_K, BLOCK_N] integer codes ``q`` of
    rows ``kk``: w = (q - z[g]) * s[g], g = kk // GROUP_SIZE. Precision: computed in fp32 and
    rounded once to ``dtype`` (a's), then the usual fp32-accumulating dot."""
    g_offs = (kk // GROUP_SIZE)[:, None] * stride_sg + offs_n[None, :] * stride_sn
    g_mask = k_mask[:, None] & n_mask[None, :]
    w = q.to(tl.float32)
    if HAS_ZERO:
        w = w - tl.load(z_ptr + g_offs, mask=g_mask, other=0.0)
    return _cast(w * tl.load(s_ptr + g_offs, mask=g_mask, other=0.0), dtype, INTERPRET)
