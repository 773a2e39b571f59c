"""Checks, runnable on CPU, of what a real GPU compile needs and the interpreter does not check.

int64 offsets for tensors of 2**31+ elements, the 8-bit ``tl.dot`` K >= 32 rule in config
pruning, CUDA's grid-axis-1 limit, and (slow) an ahead-of-time compile of the kernels for
sm_90 with Triton's real compiler (see docs/kernels.md, "GPU readiness").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mpq.kernels as K
from mpq.kernels import _checks, _configs, reference
from mpq.testing import device as capability
from tests.kernels._helpers import (
    DEVICE,
    assert_close,
    k_major,
    pack_int4,
    rand,
    requires_triton_device,
)

pytestmark = pytest.mark.kernels
ROOT = Path(__file__).resolve().parents[2]


# --- int64 offsets ---------------------------------------------------------------------------


def test_max_offset_and_needs_int64_on_meta_tensors():
    # meta tensors: shapes and strides only, no memory
    small = torch.empty(2**15, 2**15, device="meta")  # 2**30 elements
    assert _checks.max_offset(small) == 2**30 - 1
    assert not _checks.needs_int64(small)
    big = torch.empty(2**20, 4096, device="meta", dtype=torch.int8)  # M*K = 2**32
    assert _checks.max_offset(big) == 2**32 - 1
    assert _checks.needs_int64(small, big)
    # a K-major view [K, N] of an [N, K] weight: same extent as the weight
    assert _checks.max_offset(big.t()) == 2**32 - 1
    # the boundary: the last offset 2**31 - 1 still fits in int32
    assert not _checks.needs_int64(torch.empty(2**31, device="meta", dtype=torch.int8))
    assert _checks.needs_int64(torch.empty(2**31 + 1, device="meta", dtype=torch.int8))
    # strided: 2 rows 2**31 elements apart reach past int32 with only 2 elements
    assert _checks.needs_int64(torch.empty(2, 1, device="meta").as_strided((2, 1), (2**31, 1)))
    assert not _checks.needs_int64(torch.empty(0, 2**40, device="meta"))  # empty: no offset


@pytest.fixture
def force_int64(monkeypatch):
    """Make the launchers take the INT64 code path on small tensors, counting the calls."""
    calls = []

    def always(*tensors):
        calls.append(len(tensors))
        return True

    monkeypatch.setattr(_checks, "needs_int64", always)
    return calls


@requires_triton_device
@pytest.mark.parametrize(
    ("a_dtype", "split_k"),
    [(torch.bfloat16, None), (torch.float32, 2), (torch.int8, None), (torch.int8, 3)],
    ids=str,
)
def test_int64_index_path_matches_reference(force_int64, a_dtype, split_k):
    from mpq.kernels import _triton_matmul

    gen = torch.Generator().manual_seed(64)
    M, N, Kd = 37, 29, 130
    a = rand((M, Kd), a_dtype, gen, DEVICE)
    b = k_major(rand((N, Kd), a_dtype, gen, DEVICE))
    bias = rand((N,), torch.float32, gen, DEVICE)
    if a_dtype == torch.int8:
        raw = _triton_matmul.matmul(a, b, out_dtype=torch.int32, split_k=split_k)
        assert torch.equal(raw.cpu(), reference.matmul(a.cpu(), b.cpu(), out_dtype=torch.int32))
    out = _triton_matmul.matmul(a, b, bias=bias, activation="relu", split_k=split_k)
    ref = reference.matmul(a.cpu(), b.cpu(), bias=bias.cpu(), activation="relu")
    if a_dtype == torch.int8:
        assert torch.equal(out.cpu(), ref)
    else:
        assert_close(out, ref, ref.dtype, k=Kd)
    assert len(force_int64) == (2 if a_dtype == torch.int8 else 1)  # one ask per launch


@requires_triton_device
def test_int64_index_path_of_int4_and_conv(force_int64):
    gen = torch.Generator().manual_seed(65)
    a = rand((6, 40), torch.bfloat16, gen, DEVICE)
    q = torch.randint(-8, 8, (40, 9), generator=gen)
    scale = torch.rand((3, 9), generator=gen) / 4
    zero = torch.randint(-8, 8, (3, 9), generator=gen, dtype=torch.int8)
    packed = pack_int4(q)
    ref = reference.matmul_int4(a.cpu(), packed, scale, b_zero=zero, group_size=16)
    with K.use_backend("triton"):
        out = K.matmul_int4(
            a, packed.to(DEVICE), scale.to(DEVICE), b_zero=zero.to(DEVICE), group_size=16
        )
    assert_close(out, ref, torch.bfloat16, k=40)
    x = rand((2, 7, 6, 4), torch.int8, gen, DEVICE)
    w = rand((6, 3, 3, 2), torch.int8, gen, DEVICE)
    geometry = dict(stride=(2, 1), padding=((1, 0), (0, 1)), groups=2, out_dtype=torch.int32)
    with K.use_backend("triton"):
        y = K.conv2d(x, w, **geometry)
    assert torch.equal(y.cpu(), reference.conv2d(x.cpu(), w.cpu(), **geometry))
    assert len(force_int64) == 2


# --- launch limits ---------------------------------------------------------------------------


@requires_triton_device
def test_conv_refuses_more_groups_than_cuda_grid_axis_1_allows():
    from mpq.kernels import _triton_conv

    groups = _triton_conv.MAX_GRID_Y + 1
    x = torch.zeros(1, 1, 1, groups, device=DEVICE)
    w = torch.zeros(groups, 1, 1, 1, device=DEVICE)
    with K.use_backend("triton"), pytest.raises(ValueError, match=r"groups=65536"):
        K.conv2d(x, w, groups=groups)
    with K.use_backend("reference"):  # the reference has no such limit
        assert K.conv2d(x.cpu(), w.cpu(), groups=groups).shape == (1, 1, 1, groups)


# --- config pruning --------------------------------------------------------------------------


def test_prune_drops_short_k_tiles_for_8_bit_operands():
    short = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=3)
    ok = dict(short, BLOCK_K=32)
    assert _configs.prune([short, ok], 4096, 4096, 4096, 1, 228 * 1024) == [ok]
    assert _configs.prune([short, ok], 4096, 4096, 4096, 2, 228 * 1024) == [short, ok]
    # the "keep at least one" fallback never picks an illegal 8-bit tile
    huge = dict(ok, BLOCK_M=256, BLOCK_N=256, BLOCK_K=256)
    assert _configs.prune([short, huge], 4096, 4096, 4096, 1, 1024) == [huge]


@pytest.mark.parametrize("capability_", [(8, 0), (8, 9), (9, 0), None], ids=str)
def test_every_table_has_legal_8_bit_and_16_bit_tiles(capability_):
    configs = _configs.matmul_configs(capability_, interpret=False)
    for elem in (1, 2):
        kept = _configs.prune(configs, 4096, 4096, 4096, elem, 99 * 1024)
        assert kept and all(c["BLOCK_K"] >= 32 for c in kept)


# --- real compiler (no GPU needed) -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not capability.has_triton(), reason="needs the triton package")
def test_kernels_compile_for_hopper_without_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compile_check.py"), "--arch", "90",
           "--configs", "0", "--cases", "e4m3,e5m2xe4m3,int8", "--kernels", "matmul"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "wgmma.mma_async.sync.aligned.m64n256k32.f32.e4m3.e4m3" in out
    assert "f32.e5m2.e4m3" in out  # mixed fp8 pair runs natively on Hopper's wgmma
    assert ".s32.s8.s8" in out  # int8 x int8 -> int32 on tensor cores
    # fp8: the accumulator is promoted to fp32 every BLOCK_K (= 64 in config 0)
    assert "maxNumImpreciseAcc=64" in out


@pytest.mark.slow
@pytest.mark.skipif(not capability.has_triton(), reason="needs the triton package")
def test_new_kernels_compile_for_hopper_with_tma_wgmma_and_no_spills():
    """The persistent TMA matmul, the small-M kernel and the persistent conv, compiled for sm_90
    on the first config each keeps (Triton's real compiler and ptxas, no GPU)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compile_check.py"), "--arch", "90",
           "--quick", "--kernels", "persistent,small_m,conv_persistent"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("sm_90")]
    persistent = [line for line in lines if " persistent " in line]
    assert len(persistent) == 6  # bf16, fp16, e4m3 fast / promote1 / promote4, int8
    for line in persistent:
        # TMA loads and stores (cp.async.bulk.tensor), wgmma
        assert line.endswith(" TMA") and "wgmma.mma_async" in line, line
    fast = next(line for line in persistent if "e4m3 fast" in line)
    promote1 = next(line for line in persistent if "e4m3 promote1" in line)
    assert "maxNumImpreciseAcc=1073741824" in fast  # wgmma accumulates over all of K
    block_k = promote1.split()[4].split("x")[2]
    assert f"maxNumImpreciseAcc={block_k} " in promote1  # promotion every K tile
    assert ".s32.s8.s8" in next(line for line in persistent if "int8" in line)
    assert sum("small_m" in line for line in lines) == 3  # bf16, int8 and int4 weights
    assert sum("conv_persistent" in line for line in lines) == 3  # bf16, e4m3, int8
    assert not [line for line in lines if "spills" in line or "FAILED" in line]
    assert "0 problem(s)" in proc.stdout


@pytest.mark.parametrize("capability_", [(8, 0), (9, 0), None], ids=str)
@pytest.mark.parametrize("M", [1, 4096])
def test_prune_gives_fp32_operands_short_k_fma_tiles(capability_, M):
    configs = _configs.matmul_configs(capability_, interpret=False)
    kept = _configs.prune(configs, M, 4096, 4096, 4, 227 * 1024)
    assert kept
    for c in kept:
        assert c["BLOCK_K"] == _configs.FMA_MAX_BLOCK_K
        per_thread = c["BLOCK_M"] * c["BLOCK_N"] // (32 * c["num_warps"])
        assert per_thread <= _configs.FMA_MAX_ACC_PER_THREAD
    assert len(kept) == len({tuple(sorted(c.items())) for c in kept})  # no duplicates
    # 16-bit operands keep the tables' long K tiles
    assert any(c["BLOCK_K"] > 32 for c in _configs.prune(configs, M, 4096, 4096, 2, 227 * 1024))
