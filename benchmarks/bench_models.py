"""Forward latency and weight bytes of a converted Hugging Face GPT-2 (small shape: 12 layers,
hidden 768, 12 heads, vocab 50257; random weights, nothing downloaded) under mpq policies.

    python benchmarks/bench_models.py                  # batch 1 x 128 tokens, ~1-3 min on CPU
    python benchmarks/bench_models.py --tokens 32 --layers 2   # a quick look

Latency is the median of ``--reps`` timed forward passes (after one warm-up), printed as a ratio
to the float32 converted model measured in the same run; the SQNR of the logits against the
original torch model checks that the fast path is also right. Weight bytes: every parameter of the
model once (tied tensors once), including quantization scales and float8 histories.
Needs the `models` extra (transformers). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

import mpq
from mpq.quantization import QuantizationConfig, weight_bytes
from mpq.testing import sqnr
from mpq.training import from_torch

# (row label, from_torch policy, quantization config applied after conversion or None)
POLICIES = [
    ("float32", None, None),
    ("bfloat16", "bfloat16", None),
    ("mixed_bfloat16", "mixed_bfloat16", None),
    ("int8 W8A8", None, QuantizationConfig("int8")),
    ("int8 W8A16", None, QuantizationConfig("int8", weight_only=True)),
    ("int4 W4A16 g128", None, QuantizationConfig("int4/128")),
    ("float8 static (calibrated)", None, QuantizationConfig("float8", scaling="static")),
    ("float8 delayed", None, QuantizationConfig("float8")),
]


def _gpt2(layers: int):
    import transformers

    config = transformers.GPT2Config(
        n_layer=layers, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def _time(model, ids, reps: int) -> float:
    with torch.no_grad():
        model(input_ids=ids)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(input_ids=ids)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("bench_models.py needs the `models` extra: pip install -e '.[models]'")
        return 2
    torch.set_num_threads(args.threads)
    net = _gpt2(args.layers)
    ids = torch.randint(
        0, 50257, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        ref = net(input_ids=ids).logits
    load_before = os.getloadavg()
    print(
        f"GPT-2 {args.layers} layers, hidden 768, batch {args.batch} x {args.tokens} tokens; "
        f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}"
    )
    rows = []
    base = None
    for label, policy, cfg in POLICIES:
        model, _ = from_torch(net, policy)
        model.eval()
        if cfg is not None:
            mpq.quantize(model, cfg)
            if cfg.scaling == "static":
                mpq.calibrate(model, [{"input_ids": ids}])
        seconds = _time(model, ids, args.reps)
        base = seconds if base is None else base
        with torch.no_grad():
            y = model(input_ids=ids).logits
        rows.append((label, seconds, seconds / base, weight_bytes(model), sqnr(ref, y.float())))
        print(f"  {label}: {seconds * 1e3:.0f} ms", flush=True)
    load_after = os.getloadavg()
    print()
    print("| policy | latency (ms) | ratio to float32 | weight bytes | ratio | logits SQNR (dB) |")
    print("|---|---|---|---|---|---|")
    fp32_bytes = rows[0][3]
    for label, seconds, ratio, nbytes, db in rows:
        print(
            f"| {label} | {seconds * 1e3:.0f} | {ratio:.2f} | {nbytes:,} | "
            f"{nbytes / fp32_bytes:.2f} | {db:.1f} |"
        )
    print()
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
