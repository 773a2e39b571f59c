"""Per-call overhead of ``mpq.layers.Dense`` against ``torch.nn.Linear`` (CPU, forward+backward).

Prints, per shape, the median time of each and the ratio Dense / nn.Linear measured in the same
run (interleaved repeats). Targets (issue 3): <= 1.05x at 256x1024->1024, <= 1.5x at 32x64->64.

    python experiments/bench_layer_overhead.py [--repeats 15] [--policy float32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mpq
from mpq.layers import Dense

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


def step(module: torch.nn.Module, x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    module(x).sum().backward()


def time_loop(module: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step(module, x)
    return (time.perf_counter() - start) / iters


def bench(batch: int, k: int, n: int, repeats: int, policy: str) -> tuple[float, float]:
    torch.manual_seed(0)
    dense, linear = make_pair(batch, k, n, policy)
    x = torch.randn(batch, k)
    # Same function: check before timing (the thing timed is the thing tested).
    torch.testing.assert_close(dense(x).float(), linear(x), rtol=1e-2, atol=1e-2)
    target_s = 0.05
    t = time_loop(linear, x, 3)
    iters = max(3, int(target_s / max(t, 1e-7)))
    for m in (dense, linear):  # warm-up
        time_loop(m, x, iters)
    dense_t, linear_t = [], []
    for _ in range(repeats):
        dense_t.append(time_loop(dense, x, iters))
        linear_t.append(time_loop(linear, x, iters))
    return statistics.median(dense_t), statistics.median(linear_t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--policy", default="float32")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, policy {args.policy}")
    print(f"{'shape':>22}  {'nn.Linear':>11}  {'mpq Dense':>11}  {'ratio':>6}")
    for batch, k, n in SHAPES:
        d, lin = bench(batch, k, n, args.repeats, args.policy)
        print(f"{f'{batch}x{k}->{n}':>22}  {lin * 1e6:9.1f}us  {d * 1e6:9.1f}us  {d / lin:6.3f}")
    _ = mpq  # imported for the side-effect-free import check


if __name__ == "__main__":
    main()
