"""Triton matmul kernels (float32/16, bfloat16, float8, int8, weight-only int4) and launchers.

Imported lazily by the dispatcher. Under TRITON_INTERPRET=1 (read by Triton when this module is
imported) the same kernels run on CPU tensors in Triton's interpreter.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _checks, _configs

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


def _to_triton(c: dict) -> triton.Config:
    """A plain-data config of ``_configs`` as a ``triton.Config``."""
    tiles = {k: c[k] for k in _configs.TILE_KEYS}
    return triton.Config(tiles, num_warps=c["num_warps"], num_stages=c["num_stages"])


def _prune_configs(configs, named_args, **kwargs):
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
    kept = _configs.prune(
        as_dicts, named_args["M"], named_args["N"], k_extent, elem, smem, kn_extra_bytes=extra
    )
    # prune may lower num_stages, so build the kept configs anew from their dicts.
    return [_to_triton(c) for c in kept]


def _triton_configs() -> list[triton.Config]:
    cap = None if INTERPRET or not torch.cuda.is_available() else torch.cuda.get_device_capability()
    return [_to_triton(c) for c in _configs.matmul_configs(cap, INTERPRET)]


def _launch_metadata(grid, kernel, args):
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


# --- shared device functions -----------------------------------------------------------------


@triton.jit
def _masked_load(ptrs, mask):
    # `other` is a float constant on purpose: Triton casts it to the element type, and only a
    # float source has a conversion to float8 (an int 0 fails for fp8 in the interpreter, and
    # int -> fp8 has no direct conversion on the GPU either); 0.0 is exact for every dtype here.
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _cast(x, dtype: tl.constexpr, INTERPRET: tl.constexpr):
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


@triton.jit
def _mma(a, b, acc, ACC_INT32: tl.constexpr, IEEE: tl.constexpr, INTERPRET: tl.constexpr):
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


@triton.jit
def _epilogue(
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


@triton.jit
def _store_result(
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


@triton.jit
def _tile_ids(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
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


# --- matmul: float / float8 / int8 -------------------------------------------------------------


@triton.autotune(
    configs=_triton_configs(),
    key=["M", "N", "K", "SPLIT_K"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit(launch_metadata=_launch_metadata)
def _matmul_kernel(
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


@triton.jit
def _splitk_reduce(
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


def matmul_checked(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None,
    spec: _checks.MatmulSpec,
    split_k: int | None = None,
) -> torch.Tensor:
    """Run the matmul for a checked call (``spec`` from ``_checks.check_matmul``)."""
    check_device(a)
    if spec.kind == "float8":
        check_float8_support(a)
    a2 = a.reshape(spec.M, spec.K)
    out = torch.empty((spec.M, spec.N), dtype=spec.out_dtype, device=a.device)
    launch_matmul(
        a2,
        b,
        out,
        a_scale_mode=spec.a_scale_mode,
        a_scale=spec.a_scale,
        b_scale_mode=spec.b_scale_mode,
        b_scale=spec.b_scale,
        bias=bias,
        activation=spec.activation,
        split_k=split_k,
    )
    return out.reshape(*spec.lead, spec.N)


# --- weight-only int4 ------------------------------------------------------------------------


@triton.autotune(
    configs=_triton_configs(),
    key=["M", "N", "K", "GROUP_SIZE"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit(launch_metadata=_launch_metadata)
def _matmul_int4_kernel(
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
        p = tl.load(b_ptrs, mask=p_mask, other=0).to(tl.int32)
        low = ((p & 0xF) ^ 8) - 8  # sign-extended nibbles
        high = (((p >> 4) & 0xF) ^ 8) - 8
        # Interleave: row 2i <- low[i], row 2i + 1 <- high[i].
        q = tl.reshape(tl.permute(tl.join(low, high), (0, 2, 1)), (BLOCK_K, BLOCK_N))
        g_offs = (kk // GROUP_SIZE)[:, None] * stride_sg + offs_n[None, :] * stride_sn
        g_mask = k_mask[:, None] & n_mask[None, :]
        w = q.to(tl.float32)
        if HAS_ZERO:
            w = w - tl.load(z_ptr + g_offs, mask=g_mask, other=0.0)
        # Precision: dequantize in fp32, round once to a's dtype, then the usual fp32 dot.
        w = _cast(
            w * tl.load(s_ptr + g_offs, mask=g_mask, other=0.0), a_ptr.dtype.element_ty, INTERPRET
        )
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
