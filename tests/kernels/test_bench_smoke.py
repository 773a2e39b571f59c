"""Smoke test of benchmarks/bench_kernels.py on tiny shapes (CPU interpreter, timing stubbed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import mpq.kernels as K
from tests.kernels._helpers import DEVICE, requires_triton_device

pytestmark = [pytest.mark.kernels, requires_triton_device]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench_module(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "bench_kernels", ROOT / "benchmarks" / "bench_kernels.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_kernels", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DEVICE", DEVICE)
    calls = []

    def fake_bench(fn):
        fn()
        calls.append(fn)
        return 1.0

    monkeypatch.setattr(module, "bench", fake_bench)
    return module


def test_bench_cases_run_and_agree_with_their_baselines(bench_module, capsys):
    with K.use_backend("triton"):
        rows = [
            bench_module.matmul_case(d, 17, 24, 256) for d in ("bfloat16", "float8", "int8", "int4")
        ]
        rows.append(bench_module.matmul_case("int8", 4, 16, 128))  # _int_mm refuses M <= 16 on GPU
        rows += [
            bench_module.conv_case(d, 5, 8, 8, k, fused, batch=2)
            for d in ("float16", "int8")
            for k in (1, 3)
            for fused in (False, True)
        ]
    for row in rows:
        assert row.mpq_ms == 1.0
        # A baseline that did not run says why in its name (torch._int_mm refuses M <= 16).
        assert row.sqnr_db is not None or ": n/a (" in row.baseline, row
        if row.sqnr_db is not None:
            assert row.sqnr_db > 20, row
            # Same operands and math as the baseline: only accumulation order and the output
            # rounding differ (CPU: bit-identical or >= 70 dB). The int8 conv is compared with
            # a bfloat16 conv of the unquantized tensors (CPU: about 40 dB).
            quantized_vs_float = row.op == "conv2d" and row.dtype in ("int8", "float8")
            assert row.sqnr_db > (30 if quantized_vs_float else 40), row
    bench_module.report(rows, bench_module.PEAKS["H100 SXM"], None)
    out = capsys.readouterr().out
    assert "geometric mean of baseline_ms / mpq_ms" in out
    assert "conv2d  int8      large" in out
    peaks = bench_module.PEAKS
    assert bench_module.device_peaks("NVIDIA H100 80GB HBM3") is peaks["H100 SXM"]
    assert bench_module.device_peaks("NVIDIA H100 PCIe") is peaks["H100 PCIe"]
    assert bench_module.device_peaks("NVIDIA H200") is peaks["H200"]
    assert bench_module.device_peaks("NVIDIA GeForce RTX 4090") == {}


def test_bench_without_cuda_exits_with_a_message(bench_module, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_module.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
