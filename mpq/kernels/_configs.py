"""Autotuning configurations of the mpq Triton kernels, one function per GPU architecture.

Plain data (dicts), so this module imports neither triton nor CUDA; the kernel modules turn the
dicts into ``triton.Config`` objects and prune them per call shape with ``prune``.
"""

from __future__ import annotations

from collections.abc import Iterable

Config = dict[str, int]
"""One config: tile sizes, grouped-ordering width, warps, stages, by name."""

# One config: tile sizes, grouped-ordering width, warps, software-pipelining stages.
_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
TILE_KEYS = _KEYS[:4]  # the constexpr meta-parameters of the kernels

INTERPRETER_CONFIG: Config = dict(
    BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=1
)
"""The single config used under TRITON_INTERPRET=1 (fast tests; no autotuning)."""


def _rows(rows: Iterable[tuple[int, int, int, int, int, int]]) -> list[Config]:
    return [dict(zip(_KEYS, row, strict=True)) for row in rows]


# Small-M (decode / memory-bound) tiles: tensor cores need M >= 16; long K blocks, narrow N tiles
# so that enough programs stream the weight matrix. Shared by every architecture.
_SMALL_M = _rows(
    [
        (16, 32, 128, 1, 4, 4),
        (16, 64, 128, 1, 4, 4),
        (16, 64, 256, 1, 4, 3),
        (16, 128, 128, 1, 4, 4),
        (32, 64, 128, 1, 4, 4),
        (32, 128, 128, 1, 4, 3),
        (64, 64, 128, 4, 4, 4),
        (64, 128, 64, 4, 4, 4),
    ]
)


def hopper_configs() -> list[Config]:
    """sm_90 (H100/H200): 228 KB shared memory, wgmma wants 64-row warpgroup tiles."""
    return (
        _rows(
            [
                (128, 256, 64, 8, 8, 3),
                (256, 128, 64, 8, 8, 3),
                (128, 128, 64, 8, 8, 4),
                (128, 128, 64, 8, 4, 4),
                (128, 256, 128, 8, 8, 3),  # 8-bit operands: 128-deep K tiles
                (128, 128, 128, 8, 8, 4),
                (64, 256, 64, 8, 4, 4),
                (128, 64, 64, 8, 4, 4),
                (64, 128, 64, 8, 4, 4),
            ]
        )
        + EIGHT_BIT_SM90
        + _SMALL_M
    )


# More 8-bit tiles: 8-bit operands halve the shared memory of a K tile, so deeper K tiles and
# more stages fit; prune() drops them for 16-bit operands only when shared memory runs out.
EIGHT_BIT_SM90 = _rows(
    [
        (128, 128, 256, 8, 8, 3),
        (128, 256, 128, 8, 8, 4),  # 8 warps: the 128-register accumulator plus the epilogue
        (256, 128, 128, 8, 8, 3),
        (64, 256, 128, 8, 4, 4),
        (128, 64, 128, 8, 4, 5),
    ]
)
EIGHT_BIT_SM8X = _rows(
    [
        (128, 128, 64, 8, 4, 4),
        (128, 64, 128, 8, 4, 3),
        (64, 128, 128, 8, 4, 3),
        (64, 64, 128, 8, 4, 4),
    ]
)


def ampere_configs() -> list[Config]:
    """sm_80/86 (A100, RTX 30): mma.sync tiles, 100-164 KB shared memory."""
    return (
        _rows(
            [
                (128, 256, 32, 8, 8, 3),
                (256, 128, 32, 8, 8, 3),
                (128, 128, 32, 8, 4, 4),
                (128, 128, 64, 8, 4, 3),
                (128, 64, 32, 8, 4, 4),
                (64, 128, 32, 8, 4, 4),
                (64, 64, 64, 8, 4, 3),
                (128, 128, 128, 8, 8, 3),  # 8-bit operands
            ]
        )
        + EIGHT_BIT_SM8X
        + _SMALL_M
    )


def ada_configs() -> list[Config]:
    """sm_89 (RTX 40, L4, L40): mma.sync with float8, 99 KB shared memory per block: fewer
    stages and no 256-wide 16-bit tiles."""
    return (
        _rows(
            [
                (128, 128, 32, 8, 4, 4),
                (128, 128, 64, 8, 8, 3),
                (128, 64, 64, 8, 4, 3),
                (64, 128, 64, 8, 4, 3),
                (64, 64, 64, 8, 4, 4),
                (128, 128, 128, 8, 8, 3),  # 8-bit operands
            ]
        )
        + EIGHT_BIT_SM8X
        + _SMALL_M
    )


def generic_configs() -> list[Config]:
    """Anything else (older NVIDIA, AMD): conservative tiles."""
    return (
        _rows([(128, 128, 32, 8, 4, 3), (64, 128, 32, 8, 4, 3), (64, 64, 32, 8, 4, 2)]) + _SMALL_M
    )


def matmul_configs(capability: tuple[int, int] | None, interpret: bool) -> list[Config]:
    """Candidate configs for a device of compute ``capability`` (or the interpreter's one)."""
    if interpret:
        return [dict(INTERPRETER_CONFIG)]
    if capability is not None and capability[0] >= 9:
        return hopper_configs()
    if capability is not None and capability >= (8, 9):
        return ada_configs()
    if capability is not None and capability[0] == 8:
        return ampere_configs()
    return generic_configs()


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


FMA_MAX_BLOCK_K = 32  # fp32 (FMA) tiles: see prune()
FMA_MAX_ACC_PER_THREAD = 64  # fp32 accumulator elements per thread, BLOCK_M*BLOCK_N/(32*warps)
DEQUANT_MAX_PER_THREAD = 32  # weight-only: dequantized weight elements per thread (see prune)
CONV_WIDE_K = 128  # conv: K tiles this deep ...
CONV_WIDE_K_MAX_ACC = 64  # ... only with fewer accumulator elements per thread (see prune)


def smem_estimate(
    c: Config, elem_bytes: int, kn_extra_bytes: int = 0, stages: int | None = None
) -> int:
    """Shared memory of the pipelined loads of config ``c``, in bytes.

    Triton keeps ``num_stages`` copies of each tile loaded in the K loop: the A and B operand
    tiles, ``(BLOCK_M + BLOCK_N) * BLOCK_K * elem_bytes``, plus any other [BLOCK_K, BLOCK_N]
    tile loaded per iteration (``kn_extra_bytes`` per element: the int4 kernel's fp32 group
    scales and zero points). This matched the sizes Triton 3.9 reports for sm_90 compiles of the
    matmul kernels and over-estimates the int4 kernel's (``benchmarks/compile_check.py``).
    """
    stages = c["num_stages"] if stages is None else stages
    per_stage = (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * elem_bytes
    return (per_stage + c["BLOCK_K"] * c["BLOCK_N"] * kn_extra_bytes) * stages


def prune(
    configs: list[Config],
    M: int,
    N: int,
    K: int,
    elem_bytes: int,
    smem_bytes: int,
    kn_extra_bytes: int = 0,
    keep_one: bool = True,
    heavy_epilogue: bool = False,
    gather: bool = False,
) -> list[Config]:
    """Drop configs that don't fit the shape or the shared memory; keep at least one (the
    smallest legal tile) unless ``keep_one=False``.

    - ``BLOCK_M`` at most the next power of two of M (min 16): no wasted rows at small M; and
      for M >= 256 the small-M tiles are dropped (they lose on compute-bound shapes).
    - ``BLOCK_N``/``BLOCK_K`` at most the next power of two of N/K (min 32).
    - pipelined tiles (``smem_estimate``) must fit in ``smem_bytes``; a config that does not
      fit is first retried with fewer stages (down to 2) before it is dropped, so that a device
      with less shared memory (sm_89: 99 KiB per block) still gets pipelined tiles.
    - 8-bit operands (``elem_bytes == 1``) need ``BLOCK_K >= 32``: Triton's NVIDIA backend
      refuses a ``tl.dot`` on 8-bit types with K < 32 (``min_dot_size`` in
      triton/backends/nvidia/compiler.py; 16 for 16-bit, 8 for fp32), which the interpreter
      does not check.
    - fp32 operands (``elem_bytes == 4``) run IEEE products on the FMA units, not tensor cores:
      their tiles are clamped to ``BLOCK_K = 32`` and at most 64 accumulator elements per
      thread. Compiled for sm_90, the tables' BLOCK_K = 64/128 tiles spilled 1.8 to 15 KB of
      registers per thread; the clamped ones spill at most 40 bytes
      (``benchmarks/compile_check.py``).
    - weight-only codes (``kn_extra_bytes > 0``) are dequantized in registers: at most
      ``DEQUANT_MAX_PER_THREAD`` weight elements of a [BLOCK_K, BLOCK_N] tile per thread
      (compiled for sm_90, the small-M kernel's 64-per-thread int8 tiles spilled 112 bytes and
      128-per-thread tiles 0.5-1.1 KB).
    - ``gather`` (the implicit-GEMM conv, whose input tile is gathered through registers):
      K tiles of ``CONV_WIDE_K`` or more are dropped when the accumulator has
      ``CONV_WIDE_K_MAX_ACC`` or more elements per thread (compiled with the fused epilogue,
      every such conv tile spilled 24-352 bytes on sm_80/sm_89 and some on sm_90).
    - registers: with ``heavy_epilogue`` (scales, bias or an activation on the accumulator)
      configs whose ``register_estimate`` exceeds ``MAX_REGISTERS`` are dropped (on sm_90 the
      128x256 tiles with 8 warps spilled 32 to 168 bytes per thread with the fused epilogue).
    """
    min_k = 32 if elem_bytes == 1 else 16
    if gather:  # the conv's im2col gather: see CONV_WIDE_K
        configs = [
            c
            for c in configs
            if c["BLOCK_K"] < CONV_WIDE_K
            or c["BLOCK_M"] * c["BLOCK_N"] < CONV_WIDE_K_MAX_ACC * 32 * c["num_warps"]
        ]
    if kn_extra_bytes:  # weight-only codes: the dequantized tile lives in registers
        configs = [
            c
            for c in configs
            if c["BLOCK_K"] * c["BLOCK_N"] <= DEQUANT_MAX_PER_THREAD * 32 * c["num_warps"]
        ]
    if heavy_epilogue:
        configs = [c for c in configs if register_estimate(c, heavy_epilogue) <= MAX_REGISTERS]
    if elem_bytes == 4:
        configs = [
            dict(c, BLOCK_K=min(c["BLOCK_K"], FMA_MAX_BLOCK_K))
            for c in configs
            if c["BLOCK_M"] * c["BLOCK_N"] <= FMA_MAX_ACC_PER_THREAD * 32 * c["num_warps"]
        ]
    kept: list[Config] = []
    for c in configs:
        if c["BLOCK_K"] < min_k:
            continue
        if c["BLOCK_M"] > max(16, _next_pow2(M)):
            continue
        if M >= 256 and c["BLOCK_M"] < 64:
            continue
        if c["BLOCK_N"] > max(32, _next_pow2(N)) or c["BLOCK_K"] > max(32, _next_pow2(K)):
            continue
        stages = c["num_stages"]
        while stages > 2 and smem_estimate(c, elem_bytes, kn_extra_bytes, stages) > smem_bytes:
            stages -= 1
        if smem_estimate(c, elem_bytes, kn_extra_bytes, stages) > smem_bytes:
            continue
        c = c if stages == c["num_stages"] else dict(c, num_stages=stages)
        if c not in kept:
            kept.append(c)
    if not kept and keep_one:
        legal = [c for c in configs if c["BLOCK_K"] >= min_k] or configs
        kept = [min(legal, key=lambda c: c["BLOCK_M"] * c["BLOCK_N"] * c["BLOCK_K"])]
    return kept


MAX_REGISTERS = 255  # registers per thread on sm_80..sm_90
REG_BASE = 45  # addresses, indices, loop state (fit, see register_estimate)
EPILOGUE_REGS_PER_ACC = 0.9  # fp32 epilogue temporaries per accumulator element (fit)


def register_estimate(c: Config, heavy_epilogue: bool, subtile: int = 1) -> float:
    """Registers per thread of a tensor-core config: the fp32/int32 accumulator
    (BLOCK_M*BLOCK_N / threads), plus, with a fused epilogue on it, temporaries for the
    ``1 / subtile`` of the tile the epilogue works on at a time, plus a constant.

    A fit, not a model of the compiler: ``benchmarks/compile_check.py`` on sm_90 (Triton 3.9,
    fused row/column scales + bias + GELU) gave 146-170 registers for 128x128 tiles with 8 warps
    (64 accumulator elements per thread, no spill) and 255 registers plus 32-168 bytes of spill
    for 128x256 tiles with 8 warps (128 per thread, all dtypes); without the epilogue (split-K)
    the 128x256 tiles used 167-186 registers."""
    acc = c["BLOCK_M"] * c["BLOCK_N"] / (32 * c["num_warps"])
    live = EPILOGUE_REGS_PER_ACC * acc / subtile if heavy_epilogue else 0.0
    return acc + live + REG_BASE


# --- persistent TMA matmul (sm_90) ----------------------------------------------------------

PERSISTENT_TILE_KEYS = (*TILE_KEYS, "EPILOGUE_SUBTILE")
_PERSISTENT_KEYS = (*PERSISTENT_TILE_KEYS, "num_warps", "num_stages")

INTERPRETER_PERSISTENT_CONFIG = dict(
    BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, EPILOGUE_SUBTILE=2, num_warps=4, num_stages=1
)
"""The single persistent config under TRITON_INTERPRET=1 (sub-tiled epilogue exercised)."""


def persistent_hopper_configs() -> list[Config]:
    """sm_90 persistent tiles: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EPILOGUE_SUBTILE, warps,
    stages). The sub-tiled epilogue keeps 128x256 tiles under the register budget."""
    return [
        dict(zip(_PERSISTENT_KEYS, row, strict=True))
        for row in [
            (128, 256, 64, 8, 2, 8, 3),
            (128, 128, 64, 8, 1, 8, 4),
            (128, 128, 64, 8, 2, 4, 4),
            (256, 128, 64, 8, 2, 8, 3),
            (64, 256, 64, 8, 2, 4, 4),
            # 8-bit operands
            (128, 256, 128, 8, 2, 8, 3),
            (128, 128, 128, 8, 1, 8, 4),
            (256, 128, 128, 8, 2, 8, 3),
            (128, 128, 256, 8, 2, 8, 3),
            (64, 256, 128, 8, 2, 4, 4),
        ]
    ]


def persistent_conv_configs() -> list[Config]:
    """sm_90 persistent conv tiles: the im2col gather keeps a pointer and a mask per row live,
    so at most 64 accumulator elements per thread (compiled for sm_90 with the fused epilogue:
    128x128 tiles with 8 warps used 176-254 registers and spilled nothing; every 128x256 and
    4-warp 128x128 tile spilled 8-880 bytes)."""
    return [
        dict(zip(_PERSISTENT_KEYS, row, strict=True))
        for row in [
            (128, 128, 64, 8, 1, 8, 4),
            (128, 128, 128, 8, 1, 8, 3),
            (64, 128, 64, 8, 1, 4, 4),
            (128, 64, 64, 8, 1, 4, 4),
        ]
    ]


def persistent_configs(capability: tuple[int, int] | None, interpret: bool) -> list[Config]:
    """Candidate configs of the persistent kernel (selected on sm_90+ only; other devices get
    the Hopper table, which only a forced kernel would use)."""
    if interpret:
        return [dict(INTERPRETER_PERSISTENT_CONFIG)]
    return persistent_hopper_configs()


def prune_persistent(
    configs: list[Config],
    M: int,
    N: int,
    K: int,
    elem_bytes: int,
    out_bytes: int,
    smem_bytes: int,
    fp8_promote: int = 0,
) -> list[Config]:
    """``prune`` for the persistent kernel: shape, 8-bit BLOCK_K, registers (the epilogue is
    sub-tiled; precise float8, ``fp8_promote >= 1``, keeps a second fp32 accumulator live:
    compiled for sm_90, promotion every tile spilled 8-88 bytes in every tile but 128x128 with 8
    warps, and those spilled nothing), and shared
    memory including the TMA store buffer of one epilogue sub-tile. Keeps at least one."""
    kept: list[Config] = []
    for c in configs:
        sub = c["EPILOGUE_SUBTILE"]
        regs = register_estimate(c, True, sub)
        if fp8_promote >= 1:  # precise float8: the promoted fp32 sum is a second accumulator
            regs += c["BLOCK_M"] * c["BLOCK_N"] / (32 * c["num_warps"])
        if regs > MAX_REGISTERS:
            continue
        store = c["BLOCK_M"] * c["BLOCK_N"] // sub * out_bytes
        tiles = prune([c], M, N, K, elem_bytes, smem_bytes - store, keep_one=False)
        kept += [t for t in tiles if t not in kept]
    if not kept:
        legal = [c for c in configs if c["BLOCK_K"] >= (32 if elem_bytes == 1 else 16)]
        kept = [min(legal or configs, key=lambda c: c["BLOCK_M"] * c["BLOCK_N"] * c["BLOCK_K"])]
    return kept


# --- small-M weight-streaming kernel --------------------------------------------------------

SMALL_M_BLOCK = 16
"""Rows of the small-M kernel's one M tile (tensor cores' minimum): it takes M <= 16."""

INTERPRETER_SMALL_M_CONFIG = dict(
    BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=1, num_warps=4, num_stages=1
)


def small_m_configs(capability: tuple[int, int] | None, interpret: bool) -> list[Config]:
    """Small-M (M <= 16) tiles: one 16-row tile, wide K blocks streamed through many stages,
    narrow N so that (with split-K) every SM streams its share of the weight."""
    if interpret:
        return [dict(INTERPRETER_SMALL_M_CONFIG)]
    stages = 4 if capability is not None and capability >= (9, 0) else 3
    return _rows(
        [
            (16, 32, 128, 1, 4, stages),
            (16, 64, 64, 1, 4, stages),
            (16, 64, 128, 1, 8, stages),
            (16, 128, 64, 1, 8, stages),
            (16, 32, 256, 1, 8, stages),
            # float weights only (prune drops them for weight-only codes: DEQUANT_MAX_PER_THREAD)
            (16, 64, 256, 1, 8, stages),
            (16, 128, 128, 1, 4, stages),
        ]
    )


def split_k_for(M: int, N: int, K: int, num_sms: int) -> int:
    """Split-K factor for small-M shapes whose output tiles cannot fill the GPU, else 1.

    Assumes the small-M tiles (16-32 rows, 64 columns); each split keeps >= 512 of K.
    """
    if M > 64 or K < 1024:
        return 1
    tiles = -(-M // 32) * -(-N // 64)
    split = 1
    while split < 16 and tiles * split * 2 <= num_sms and K // (split * 2) >= 512:
        split *= 2
    return split
