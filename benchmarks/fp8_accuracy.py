"""Error of mpq's float8 accumulation modes against a float64 oracle (CPU interpreter or GPU).

    python benchmarks/fp8_accuracy.py                  # GPU if there is one, else the interpreter
    python benchmarks/fp8_accuracy.py --k 512,4096,16384 --m 64

Per mode (tiled kernel: promotion every K tile; persistent kernel: fast, precise every 1 and 4
K tiles; on a GPU also torch._scaled_mm with and without fast accumulation), e4m3 x e4m3 with
per-tensor scales, float32 output: the largest error relative to sum_k |a_k b_k| (the scale of
accumulation error; 2**-23 ~ 1.2e-7 is one float32 ulp of it) and the SQNR in dB against the
float64 oracle. Under the interpreter every dot runs in float32 (numpy), so the modes differ only
in their float32 summation order: the interpreter cannot show the reduced-precision wgmma
accumulator that makes "fast" less accurate on Hopper; only a GPU run can.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

import torch

MODES = [
    ("tiled (promote every tile)", dict(kernel="tiled")),
    ("persistent fast", dict(kernel="persistent", fp8_accumulation="fast")),
    ("persistent precise, every tile", dict(kernel="persistent", fp8_promote_every=1)),
    ("persistent precise, every 4 tiles", dict(kernel="persistent", fp8_promote_every=4)),
]


def measure(M: int, N: int, K: int, device: str, seed: int = 0) -> list[tuple[str, float, float]]:
    """(mode, max error / sum|a b|, SQNR dB) for one e4m3 x e4m3 problem."""
    import mpq.kernels as mk
    from mpq.kernels._triton_options import triton_options

    gen = torch.Generator().manual_seed(seed)
    a_hp = torch.randn(M, K, generator=gen)
    w_hp = torch.randn(N, K, generator=gen)
    fmax = torch.finfo(torch.float8_e4m3fn).max
    sa = a_hp.abs().amax() / fmax
    sw = w_hp.abs().amax() / fmax
    a = (a_hp / sa).to(torch.float8_e4m3fn).to(device)
    w = (w_hp / sw).to(torch.float8_e4m3fn).to(device)
    sa, sw = sa.to(device), sw.to(device)
    a64, w64 = a.cpu().double() * sa.item(), w.cpu().double() * sw.item()
    exact = a64 @ w64.t()
    magnitude = a64.abs() @ w64.abs().t()
    results = []
    runs = [(name, opts) for name, opts in MODES]
    for name, opts in runs:
        with mk.use_backend("triton"), triton_options(**opts):
            out = mk.matmul(a, w.t(), a_scale=sa, b_scale=sw, out_dtype=torch.float32)
        results.append((name, *_errors(out.cpu().double(), exact, magnitude)))
    if device == "cuda":
        for fast in (True, False):
            out = torch._scaled_mm(
                a, w.t(), scale_a=sa, scale_b=sw, out_dtype=torch.float32, use_fast_accum=fast
            )
            name = f"torch._scaled_mm use_fast_accum={fast}"
            results.append((name, *_errors(out.cpu().double(), exact, magnitude)))
    return results


def _errors(out: torch.Tensor, exact: torch.Tensor, magnitude: torch.Tensor) -> tuple[float, float]:
    err = (out - exact).abs()
    rel = (err / magnitude.clamp_min(1e-300)).max().item()
    noise = err.pow(2).sum().item()
    sqnr = math.inf if noise == 0 else 10 * math.log10(exact.pow(2).sum().item() / noise)
    return rel, sqnr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", default="512,4096", help="comma list of reduction lengths K")
    parser.add_argument("--m", type=int, default=32, help="M = N")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("no GPU: run with TRITON_INTERPRET=1 to measure in Triton's interpreter",
              file=sys.stderr)  # fmt: skip
        return 2
    where = torch.cuda.get_device_name() if device == "cuda" else "Triton interpreter (float32)"
    print(f"e4m3 x e4m3, per-tensor scales, float32 out, M = N = {args.m}; {where}")
    print("| K | mode | max error / sum abs(a b) | SQNR dB vs float64 |")
    print("|---|---|---|---|")
    for k in (int(v) for v in args.k.split(",")):
        for name, rel, sqnr in measure(args.m, args.m, k, device):
            print(f"| {k} | {name} | {rel:.2e} | {sqnr:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
