"""Per-call overhead of ``mpq.layers.Dense`` against ``torch.nn.Linear`` (CPU, forward+backward).

Prints, per shape, the best and the median time of each over interleaved repeats, and the ratios
Dense / nn.Linear measured in the same run (the best-of ratio is the least sensitive to other load
on the machine). Targets (issue 3): <= 1.05x at 256x1024->1024, <= 1.5x at 32x64->64.
Under a mixed policy the baseline is nn.Linear inside ``torch.autocast("cpu", <compute dtype>)``,
so the ratio is the cost of mpq's autocast against torch's.

    python experiments/bench_layer_overhead.py [--repeats 15] [--policy float32] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

import mpq
from mpq.layers import Dense
from mpq.testing import assert_close

SHAPES = [(32, 64, 64), (256, 1024, 1024)]


def make_pair(batch: int, k: int, n: int, policy: str):
    """A Dense and an nn.Linear computing the same function (kernel = weight.T)."""
    dense = Dense(n, dtype=policy)
    dense.build((batch, k))
    linear = torch.nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.copy_(dense.kernel.detach().T)
        linear.bias.copy_(dense.bias.detach())
    return dense, linear


def step(module: torch.nn.Module, x: torch.Tensor, context) -> None:
    module.zero_grad(set_to_none=True)
    with context():
        out = module(x)
    out.float().sum().backward()


def time_loop(module: torch.nn.Module, x: torch.Tensor, iters: int, context) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step(module, x, context)
    return (time.perf_counter() - start) / iters


def bench(batch: int, k: int, n: int, repeats: int, policy: str) -> tuple[list, list]:
    torch.manual_seed(0)
    dense, linear = make_pair(batch, k, n, policy)
    x = torch.randn(batch, k)
    compute = mpq.policy.get(policy).torch_compute_dtype
    mixed = compute != mpq.policy.get(policy).torch_variable_dtype
    no_context = contextlib.nullcontext
    linear_context = (lambda: torch.autocast("cpu", dtype=compute)) if mixed else no_context
    # Same function: check before timing (the thing timed is the thing tested).
    with linear_context():
        baseline = linear(x.to(dense.dtype_policy.torch_variable_dtype))
    exact = x.double() @ dense.kernel.detach().double() + dense.bias.detach().double()
    fmt = mpq.policy.get(policy).compute_dtype
    assert_close(dense(x), exact, fmt, k=k)
    assert_close(baseline, exact, fmt, k=k)
    target_s = 0.05
    t = time_loop(linear, x, 3, linear_context)
    iters = max(3, int(target_s / max(t, 1e-7)))
    time_loop(dense, x, iters, no_context)  # warm-up
    time_loop(linear, x, iters, linear_context)
    dense_t, linear_t = [], []
    for _ in range(repeats):
        dense_t.append(time_loop(dense, x, iters, no_context))
        linear_t.append(time_loop(linear, x, iters, linear_context))
    return dense_t, linear_t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--policy", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"mpq from {mpq.__file__}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, policy {args.policy}")
    print("forward+backward per step; best / median over interleaved repeats")
    print(
        f"{'shape':>16}  {'nn.Linear':>21}  {'mpq Dense':>21}  {'ratio best':>10}  {'ratio med':>9}"
    )
    for batch, k, n in SHAPES:
        d, lin = bench(batch, k, n, args.repeats, args.policy)
        d_best, l_best = min(d), min(lin)
        d_med, l_med = statistics.median(d), statistics.median(lin)
        print(
            f"{f'{batch}x{k}->{n}':>16}  {l_best * 1e6:9.1f} / {l_med * 1e6:7.1f}us  "
            f"{d_best * 1e6:9.1f} / {d_med * 1e6:7.1f}us  {d_best / l_best:10.3f}  {d_med / l_med:9.3f}"
        )


if __name__ == "__main__":
    main()
