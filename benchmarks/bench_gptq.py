"""Time GPTQ calibration on CPU: one 4096 x 4096 Dense layer, 128 calibration rows, against
round-to-nearest of the same layer measured in the same run.

    python benchmarks/bench_gptq.py                   # 4096 x 4096, int4/128, 128 rows
    python benchmarks/bench_gptq.py --k 1024 --n 1024 --mode int8 --act-order

Prints wall time of mpq.quantize(..., algorithm="gptq") split into Hessian capture and the
column loop, the RTN time and the ratio, and the held-out output SQNR of both (dB).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

import torch

import mpq
from mpq.layers import Dense
from mpq.quantization import GPTQConfig, QuantizationConfig
from mpq.quantization.algorithms import _base
from mpq.quantization.algorithms.gptq import gptq_quantize


def _layer(k: int, n: int) -> Dense:
    torch.manual_seed(0)
    layer = Dense(n)
    layer.build((None, k))
    return layer


def _sqnr(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--mode", default="int4/128")
    p.add_argument("--act-order", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(64, args.k, generator=g) / 8

    def data(m: int) -> torch.Tensor:
        return torch.randn(m, 64, generator=g) @ mix + 0.1 * torch.randn(m, args.k, generator=g)

    calibration, test = [data(args.rows)], data(256)
    options = GPTQConfig(act_order=args.act_order, min_rows=1)
    cfg = QuantizationConfig(args.mode)

    rtn = _layer(args.k, args.n)
    ref = rtn(test).detach()
    t0 = time.perf_counter()
    mpq.quantize(rtn, cfg)
    t_rtn = time.perf_counter() - t0

    layer = _layer(args.k, args.n)
    t0 = time.perf_counter()
    h, _ = _base.hessian(layer, layer, calibration)
    t_h = time.perf_counter() - t0
    t0 = time.perf_counter()
    gptq_quantize(_base.matrix(layer)[0], h[0], cfg, options)
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    mpq.quantize(layer, cfg, algorithm=options, calibration=calibration)
    t_total = time.perf_counter() - t0

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"layer {args.k} x {args.n}, {args.rows} calibration rows, {cfg.name}, "
        f"act_order={args.act_order}"
    )
    print(f"  hessian capture   {t_h:8.2f} s")
    print(f"  gptq column loop  {t_loop:8.2f} s")
    print(
        f"  mpq.quantize gptq {t_total:8.2f} s   (rtn {t_rtn:.2f} s, ratio {t_total / t_rtn:.0f}x)"
    )
    print(
        f"  held-out SQNR     gptq {_sqnr(ref, layer(test).detach()):.2f} dB, "
        f"rtn {_sqnr(ref, rtn(test).detach()):.2f} dB"
    )
    hessian_mib = args.k * args.k * 8 * 2 / 2**20
    print(f"  memory: H and its inverse factor in float64: {hessian_mib:.0f} MiB")


if __name__ == "__main__":
    main()
