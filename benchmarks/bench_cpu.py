"""Quantized mpq layers on CPU as ratios to float32 torch, measured side by side in one run.

    python benchmarks/bench_cpu.py                       # the table of docs/benchmarks.md
    python benchmarks/bench_cpu.py --threads 1,2 --repeats 31
    python benchmarks/bench_cpu.py --quick               # fewer repeats

Per shape and policy: the median forward time of the mpq layer (inference: ``torch.no_grad()``,
``training=False``) divided by the median of float32 ``nn.Linear`` / ``F.conv2d`` on the same
shape ("best ratio": the same for the fastest sample of each, steadier when other processes
load the machine). Repeats are interleaved (baseline, policy 1, policy 2, ... then again), so load from
other processes hits every column alike. Each quantized output is checked against the float
layer's (SQNR in dB) before anything is timed. Also: per-call overhead over ``nn.Linear`` at
(M, K, N) = (1, 64, 64), in microseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

import torch
import torch.nn.functional as F

from mpq.layers import Conv2D, Dense
from mpq.quantization import QuantizationConfig
from mpq.testing import sqnr

LINEAR_SHAPES = [(1, 1024, 1024), (64, 1024, 1024), (512, 1024, 4096), (1, 4096, 4096)]
CONV_SHAPES = [(8, 64, 56, 56, 3, 64)]  # batch, C, H, W, kernel, filters
LINEAR_POLICIES = ["float32", "int8", "int8_weight_only", "int4/-1", "int4/128", "float8"]
CONV_POLICIES = ["float32", "int8", "int8_weight_only", "float8"]
OVERHEAD_SHAPE = (1, 64, 64)
OVERHEAD_POLICIES = ["float32", "int8"]
# SQNR floors (dB) of each policy's output against the float32 layer's on N(0, 1) data.
SQNR_FLOOR = {
    "float32": 100.0,
    "int8": 30.0,
    "int8_weight_only": 30.0,
    "int4/-1": 10.0,
    "int4/128": 12.0,
    "float8": 20.0,
}


@dataclass
class Row:
    op: str
    shape: str
    policy: str
    threads: int
    baseline_us: float
    mpq_us: float
    ratio: float
    best_ratio: float  # ratio of the fastest samples: steadier than medians on a loaded machine
    sqnr_db: float


def config(policy: str) -> QuantizationConfig | None:
    if policy == "float32":
        return None
    if policy == "int8_weight_only":
        return QuantizationConfig("int8", weight_only=True)
    return QuantizationConfig.get(policy) if "/" in policy else QuantizationConfig(policy)


def quantized(layer, policy: str):
    cfg = config(policy)
    if cfg is not None:
        layer.quantize(cfg)
    return layer.eval()


def _timer(fn, target_s: float) -> tuple[int, float]:
    """Calls per sample so that one sample takes about ``target_s``."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, int(target_s / once)), once


def interleaved(
    fns: dict[str, object], repeats: int, target_s: float
) -> dict[str, tuple[float, float]]:
    """(median, minimum) seconds per call of each function, timed in interleaved rounds."""
    loops = {name: _timer(fn, target_s)[0] for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            n = loops[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: (statistics.median(s), min(s)) for name, s in samples.items()}


def _row(op: str, shape: str, policy: str, threads: int, times: dict, quality: float) -> Row:
    (base, base_min), (t, t_min) = times["baseline"], times[policy]
    return Row(op, shape, policy, threads, base * 1e6, t * 1e6, t / base, t_min / base_min, quality)


def linear_rows(shape, policies, threads, repeats, target_s, seed=0) -> list[Row]:
    M, K, N = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=gen)
    ref = torch.nn.Linear(K, N)
    layers = {}
    for policy in policies:
        layer = Dense(N)
        layer(x[:1])
        with torch.no_grad():
            layer.kernel.copy_(ref.weight.t())
            layer.bias.copy_(ref.bias)
        layers[policy] = quantized(layer, policy)
    with torch.no_grad():
        want = ref(x)
        quality = {p: sqnr(want, layer(x, training=False)) for p, layer in layers.items()}
        fns = {"baseline": lambda: ref(x)}
        for p, layer in layers.items():
            fns[p] = lambda layer=layer: layer(x, training=False)
        times = interleaved(fns, repeats, target_s)
    return [_row("Dense", f"{M}x{K}x{N}", p, threads, times, quality[p]) for p in policies]


def conv_rows(shape, policies, threads, repeats, target_s, seed=0) -> list[Row]:
    batch, C, H, W, k, filters = shape
    gen = torch.Generator().manual_seed(seed)
    x_nchw = torch.randn(batch, C, H, W, generator=gen)
    w = torch.randn(filters, C, k, k, generator=gen) / (C * k * k) ** 0.5
    b = torch.randn(filters, generator=gen)
    x_cl = x_nchw.permute(0, 2, 3, 1).contiguous()  # mpq's Conv2D is channels-last (NHWC)
    layers = {}
    for policy in policies:
        layer = Conv2D(filters, k, padding="same")
        layer(x_cl[:1])
        with torch.no_grad():
            layer.kernel.copy_(w.permute(2, 3, 1, 0))
            layer.bias.copy_(b)
        layers[policy] = quantized(layer, policy)
    pad = k // 2
    with torch.no_grad():
        want = F.conv2d(x_nchw, w, b, padding=pad).permute(0, 2, 3, 1)
        quality = {p: sqnr(want, layer(x_cl, training=False)) for p, layer in layers.items()}
        fns = {"baseline": lambda: F.conv2d(x_nchw, w, b, padding=pad)}
        for p, layer in layers.items():
            fns[p] = lambda layer=layer: layer(x_cl, training=False)
        times = interleaved(fns, repeats, target_s)
    name = f"{batch}x{C}x{H}x{W} {k}x{k} {filters}"
    return [_row("Conv2D", name, p, threads, times, quality[p]) for p in policies]


def run(
    linear_shapes=LINEAR_SHAPES,
    conv_shapes=CONV_SHAPES,
    linear_policies=LINEAR_POLICIES,
    conv_policies=CONV_POLICIES,
    overhead_policies=OVERHEAD_POLICIES,
    threads=(1,),
    repeats: int = 15,
    target_s: float = 0.02,
) -> list[Row]:
    rows: list[Row] = []
    before = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            rows += linear_rows(OVERHEAD_SHAPE, overhead_policies, t, repeats, target_s)
            for shape in linear_shapes:
                rows += linear_rows(shape, linear_policies, t, repeats, target_s)
            for shape in conv_shapes:
                rows += conv_rows(shape, conv_policies, t, repeats, target_s)
    finally:
        torch.set_num_threads(before)
    for row in rows:
        floor = SQNR_FLOOR[row.policy]
        if not row.sqnr_db >= floor:
            raise RuntimeError(
                f"Expected {row.policy} {row.op} {row.shape} within {floor} dB of float32. "
                f"Received: sqnr={row.sqnr_db:.1f} dB"
            )
    return rows


def report(rows: list[Row]) -> str:
    lines = [
        "| threads | layer | shape | policy | float32 torch (us) | mpq (us) | ratio | best ratio | "
        "overhead (us) | SQNR (dB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        overhead = (
            f"{r.mpq_us - r.baseline_us:+.1f}"
            if r.shape == "x".join(map(str, OVERHEAD_SHAPE))
            else ""
        )
        lines.append(
            f"| {r.threads} | {r.op} | {r.shape} | {r.policy} | {r.baseline_us:.1f} | "
            f"{r.mpq_us:.1f} | {r.ratio:.2f}x | {r.best_ratio:.2f}x | {overhead} | {r.sqnr_db:.1f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{name}, {os.cpu_count()} CPUs, torch {torch.__version__}, load average {load}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="5 repeats, shorter samples")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON Lines")
    args = parser.parse_args(argv)
    threads = tuple(int(t) for t in args.threads.split(","))
    repeats, target = (5, 0.005) if args.quick else (args.repeats, 0.02)
    print(f"# {machine()}")
    rows = run(threads=threads, repeats=repeats, target_s=target)
    print(report(rows))
    print(f"# after: load average {machine().rsplit('load average ', 1)[1]}")
    if args.json:
        with args.json.open("w") as f:
            for r in rows:
                f.write(json.dumps(asdict(r)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
