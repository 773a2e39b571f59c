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
        + _SMALL_M
    )


def ampere_configs() -> list[Config]:
    """sm_80/86/89 (A100, RTX 30/40, L4/L40): mma.sync tiles, 100-164 KB shared memory."""
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
    if capability is not None and capability[0] == 8:
        return ampere_configs()
    return generic_configs()


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


FMA_MAX_BLOCK_K = 32  # fp32 (FMA) tiles: see prune()
FMA_MAX_ACC_PER_THREAD = 64  # fp32 accumulator elements per thread, BLOCK_M*BLOCK_N/(32*warps)


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
    """
    min_k = 32 if elem_bytes == 1 else 16
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
