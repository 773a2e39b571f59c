"""Smoke test of benchmarks/bench_kernels.py on tiny shapes (CPU interpreter, timing stubbed)."""

from __future__ import annotations

import functools
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


def test_issue19_plan_runs_on_tiny_shapes_and_prints_a_markdown_table(bench_module, capsys):
    m = bench_module
    m.ISSUE19_LARGE = [(32, 32, 128)]
    m.ISSUE19_SMALL_M = [(1, 32, 128), (16, 32, 128), (20, 32, 128)]
    m.ISSUE19_CONV = [(5, 8, 8, 3)]
    plan = m.issue19_plan()
    ops = [(op, args[0]) for op, args in plan]
    for wanted in (("matmul", "bfloat16"), ("matmul", "float8"), ("matmul", "int8"),
                   ("matmul", "int4"), ("conv2d", "bfloat16")):  # fmt: skip
        assert wanted in ops
    assert ("float8", 32, 32, 128, "fast") in [args for _, args in plan]
    m.conv_case = functools.partial(m.conv_case, batch=2)
    with K.use_backend("triton"):
        rows = m.run_plan(plan, budget_s=1e9)
    assert len(rows) == len(plan)
    for row in rows:
        assert row.sqnr_db is not None or ": n/a (" in row.baseline, row
        if row.op == "matmul":
            assert row.kernel == "tiled"  # the interpreter keeps the tiled kernel
            assert row.weight_bytes > 0
        forced = [
            m.matmul_case("bfloat16", 32, 32, 128, kernel="persistent"),
            m.matmul_case("float8", 32, 32, 128, "fast", kernel="persistent"),
            m.matmul_case("int4", 1, 32, 128, kernel="small_m"),
        ]
    assert [r.kernel for r in forced] == ["persistent", "persistent", "small_m"]
    assert all(r.sqnr_db > 40 for r in forced), forced
    fast = [r for r in rows if r.dtype == "float8 fast"]
    assert fast and all("fast accum)" in r.baseline for r in fast)
    assert all("no fast accum" in r.baseline for r in rows if r.dtype == "float8 precise")
    table = m.markdown(rows, m.PEAKS["H200"])
    lines = table.splitlines()
    assert lines[0].startswith("| op | dtype | shape | mpq kernel |")
    assert len(lines) == len(rows) + 2
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    # % of HBM bandwidth for the weight bytes, with the stubbed 1 ms timing: bytes / 4.8 TB/s
    int8_row = next(r for r in rows if r.dtype == "int8" and r.shape == "M=1 N=32 K=128")
    assert (
        f"| {100 * 32 * 128 / 1e-3 / 4.8e12:.1f} |" in table.splitlines()[rows.index(int8_row) + 2]
    )


def test_issue19_budget_skips_the_rest_and_says_so(bench_module, capsys):
    m = bench_module
    now = [0.0]

    def fake_case(*args):
        now[0] += 100  # every row takes 100 s
        return args

    m.matmul_case = fake_case
    rows = m.run_plan([("matmul", (i,)) for i in range(5)], budget_s=250, clock=lambda: now[0])
    assert rows == [(0,), (1,), (2,)]  # started at 0, 100 and 200 s; 300 s is past the budget
    err = capsys.readouterr().err
    assert "time budget of 250 s spent: skipped 2 rows" in err
    assert "skipped matmul (3,)" in err and "skipped matmul (4,)" in err


def test_fp8_accuracy_script_measures_every_mode_within_the_float32_bound():
    spec = importlib.util.spec_from_file_location(
        "fp8_accuracy", ROOT / "benchmarks" / "fp8_accuracy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    K_ = 160
    results = module.measure(16, 16, K_, DEVICE)
    assert [name for name, _, _ in results][:4] == [name for name, _ in module.MODES]
    for name, rel, sqnr in results:
        # fp8 products are exact in float32: only the float32 accumulation (and the scale
        # products) round, so the error is within K float32 ulps of sum |a b|
        assert rel <= K_ * torch.finfo(torch.float32).eps, name
        assert sqnr > 100, name
