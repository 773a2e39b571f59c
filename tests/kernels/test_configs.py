"""Autotuning configurations: per-architecture tables, pruning and the split-K heuristic."""

from __future__ import annotations

import pytest

from mpq.kernels import _configs

pytestmark = pytest.mark.kernels


def test_interpreter_gets_one_small_config():
    assert _configs.matmul_configs((9, 0), interpret=True) == [_configs.INTERPRETER_CONFIG]


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), _configs.hopper_configs), ((8, 0), _configs.ampere_configs),
     ((8, 9), _configs.ada_configs), ((7, 5), _configs.generic_configs),
     (None, _configs.generic_configs)],
)  # fmt: skip
def test_configs_per_architecture(capability, expected):
    configs = _configs.matmul_configs(capability, interpret=False)
    assert configs == expected()
    for c in configs:
        assert set(c) == {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages"}
        assert c["BLOCK_M"] >= 16 and c["BLOCK_K"] >= 32  # tensor-core and int4-unpack minimums
        assert all(c[k] & (c[k] - 1) == 0 for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))


def test_prune_small_m_keeps_small_tiles_only():
    kept = _configs.prune(_configs.hopper_configs(), M=1, N=4096, K=4096, elem_bytes=2,
                          smem_bytes=228 * 1024)  # fmt: skip
    assert kept and all(c["BLOCK_M"] == 16 for c in kept)


def test_prune_large_m_drops_small_tiles_and_respects_shared_memory():
    smem = 100 * 1024
    kept = _configs.prune(_configs.hopper_configs(), M=4096, N=4096, K=4096, elem_bytes=2,
                          smem_bytes=smem)  # fmt: skip
    assert kept
    for c in kept:
        assert c["BLOCK_M"] >= 64
        assert (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * 2 * c["num_stages"] <= smem


def test_prune_never_returns_nothing():
    kept = _configs.prune(_configs.hopper_configs(), M=4096, N=4096, K=4096, elem_bytes=4,
                          smem_bytes=1024)  # fmt: skip
    assert len(kept) == 1


@pytest.mark.parametrize(
    ("shape", "sms", "expected"),
    [((1, 4096, 4096), 132, 2), ((16, 4096, 11008), 132, 2), ((1, 1024, 8192), 132, 8),
     ((4096, 4096, 4096), 132, 1), ((64, 4096, 512), 132, 1), ((1, 11008, 4096), 132, 1)],
)  # fmt: skip
def test_split_k_heuristic(shape, sms, expected):
    split = _configs.split_k_for(*shape, num_sms=sms)
    assert split == expected
    assert shape[2] // split >= 512 or split == 1


def test_each_architecture_has_its_own_table_with_more_8_bit_tiles():
    tables = {
        cap: _configs.matmul_configs(cap, interpret=False) for cap in ((8, 0), (8, 9), (9, 0))
    }
    assert tables[(8, 0)] != tables[(8, 9)] != tables[(9, 0)]
    extra = {(8, 0): _configs.EIGHT_BIT_SM8X, (8, 9): _configs.EIGHT_BIT_SM8X,
             (9, 0): _configs.EIGHT_BIT_SM90}  # fmt: skip
    smem = {(8, 0): 163 * 1024, (8, 9): 99 * 1024, (9, 0): 227 * 1024}
    for cap, configs in tables.items():
        assert all(c in configs for c in extra[cap])
        kept8 = _configs.prune(configs, 4096, 4096, 4096, 1, smem[cap])
        tiles = {(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]) for c in kept8}
        # every extra 8-bit tile survives pruning for 8-bit operands on its own device
        assert {(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]) for c in extra[cap]} <= tiles, cap
    # sm_89's 99 KiB: every kept config fits without lowering below 2 stages
    for c in _configs.prune(tables[(8, 9)], 4096, 4096, 4096, 2, 99 * 1024):
        assert _configs.smem_estimate(c, 2) <= 99 * 1024


def test_register_pruning_drops_the_spilling_128x256_tiles():
    spills = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3)
    fits = dict(spills, BLOCK_N=128)
    # the fit of register_estimate: the measured (compile_check, sm_90) 255 + spill vs 146-170
    assert _configs.register_estimate(spills, True) > _configs.MAX_REGISTERS
    assert _configs.register_estimate(fits, True) <= _configs.MAX_REGISTERS
    assert _configs.register_estimate(spills, False) <= _configs.MAX_REGISTERS  # split-K
    assert _configs.register_estimate(spills, True, subtile=2) <= _configs.MAX_REGISTERS
    args = (4096, 4096, 4096, 1, 227 * 1024)
    assert _configs.prune([spills, fits], *args, heavy_epilogue=True) == [fits]
    assert _configs.prune([spills, fits], *args) == [spills, fits]
    hopper = _configs.prune(_configs.hopper_configs(), *args, heavy_epilogue=True)
    assert hopper and all(c["BLOCK_M"] * c["BLOCK_N"] / (32 * c["num_warps"]) <= 64 for c in hopper)


def test_persistent_configs_and_pruning():
    assert _configs.persistent_configs((9, 0), interpret=True) == [
        _configs.INTERPRETER_PERSISTENT_CONFIG
    ]
    table = _configs.persistent_configs((9, 0), interpret=False)
    assert table == _configs.persistent_hopper_configs()
    for c in table:
        assert set(c) == set(_configs.PERSISTENT_TILE_KEYS) | {"num_warps", "num_stages"}
        assert c["EPILOGUE_SUBTILE"] in (1, 2) and c["BLOCK_K"] >= 32
    smem = 227 * 1024
    kept16 = _configs.prune_persistent(table, 8192, 8192, 4096, 2, 2, smem)
    kept8 = _configs.prune_persistent(table, 8192, 8192, 4096, 1, 2, smem)
    assert kept16 and kept8
    for kept, elem in ((kept16, 2), (kept8, 1)):
        for c in kept:
            sub = c["EPILOGUE_SUBTILE"]
            store = c["BLOCK_M"] * c["BLOCK_N"] // sub * 2
            assert _configs.smem_estimate(c, elem) + store <= smem
            assert _configs.register_estimate(c, True, sub) <= _configs.MAX_REGISTERS
    # the 128x256 tiles are kept only with the sub-tiled epilogue
    assert any(c["BLOCK_N"] == 256 and c["BLOCK_M"] == 128 for c in kept16)
    # promoting fp8 every n > 1 tiles keeps a second accumulator: large tiles drop
    promoted = _configs.prune_persistent(table, 8192, 8192, 4096, 1, 2, smem, fp8_promote=4)
    assert promoted and all(c["BLOCK_M"] * c["BLOCK_N"] <= 128 * 128 for c in promoted)
    # never empty
    assert len(_configs.prune_persistent(table, 8192, 8192, 4096, 1, 2, 1024)) == 1


def test_small_m_configs():
    assert _configs.small_m_configs((9, 0), interpret=True) == [_configs.INTERPRETER_SMALL_M_CONFIG]
    for cap in ((8, 0), (9, 0)):
        for c in _configs.small_m_configs(cap, interpret=False):
            assert c["BLOCK_M"] == _configs.SMALL_M_BLOCK and c["BLOCK_K"] % 2 == 0


def test_conv_gather_pruning_drops_deep_k_tiles_with_large_accumulators():
    deep = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3)
    shallow = dict(deep, BLOCK_K=64)
    narrow = dict(deep, BLOCK_N=64)  # 32 accumulator elements per thread
    args = (4096, 4096, 4096, 1, 227 * 1024)
    assert _configs.prune([deep, shallow, narrow], *args, gather=True) == [shallow, narrow]
    assert _configs.prune([deep, shallow, narrow], *args) == [deep, shallow, narrow]
    for cap in ((8, 0), (8, 9), (9, 0)):  # every table keeps conv tiles
        assert _configs.prune(_configs.matmul_configs(cap, False), *args, gather=True)
