"""Smoke test of benchmarks/bench_cpu.py on tiny shapes (no timing assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench_cpu(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_cpu", ROOT / "benchmarks" / "bench_cpu.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_cpu", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_every_policy_runs_and_is_checked_against_float32(bench_cpu):
    rows = bench_cpu.run(
        linear_shapes=[(3, 130, 20), (1, 64, 9)],
        conv_shapes=[(2, 5, 6, 6, 3, 4)],
        threads=(1,),
        repeats=1,
        target_s=1e-4,
    )
    policies = bench_cpu.LINEAR_POLICIES
    expected = len(bench_cpu.OVERHEAD_POLICIES) + 2 * len(policies) + len(bench_cpu.CONV_POLICIES)
    assert len(rows) == expected
    assert {r.policy for r in rows if r.op == "Dense"} == set(policies)
    for r in rows:
        assert r.mpq_us > 0 and r.baseline_us > 0
        assert r.ratio == pytest.approx(r.mpq_us / r.baseline_us)
        assert r.sqnr_db >= bench_cpu.SQNR_FLOOR[r.policy]  # run() raises otherwise
    table = bench_cpu.report(rows)
    assert table.count("\n") == len(rows) + 1
    assert "| 1 | Dense | 1x64x64 | int8 |" in table


def test_a_policy_below_its_sqnr_floor_raises(bench_cpu, monkeypatch):
    monkeypatch.setitem(bench_cpu.SQNR_FLOOR, "int4/-1", 200.0)
    with pytest.raises(RuntimeError, match=r"Expected int4/-1 Dense .* within 200.0 dB"):
        bench_cpu.run(
            linear_shapes=[(2, 32, 8)],
            conv_shapes=[],
            linear_policies=["float32", "int4/-1"],
            overhead_policies=["float32"],
            repeats=1,
            target_s=1e-4,
        )
