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
     ((8, 9), _configs.ampere_configs), ((7, 5), _configs.generic_configs),
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
