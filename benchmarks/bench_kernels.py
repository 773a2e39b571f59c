"""Benchmark mpq.kernels against the best PyTorch baseline, measured in the same run (GPU only).

    python benchmarks/bench_kernels.py                 # everything (autotuning takes a while)
    python benchmarks/bench_kernels.py --quick         # a few shapes per table
    python benchmarks/bench_kernels.py --ops matmul --dtypes bfloat16,float8 --json out.jsonl
    python benchmarks/bench_kernels.py --issue19       # the Hopper targets, a markdown table

Per shape: median time (triton.testing.do_bench, L2 flushed between runs), TFLOPS, % of the
device's dense datasheet peak, and the ratio baseline_time / mpq_time (> 1: mpq is faster);
geometric means of the ratio separately for small-M (M <= 64, memory-bound) and large shapes.
Each mpq output is first checked against its baseline's output (SQNR in dB).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

import torch
import torch.nn.functional as F

# Dense (no sparsity) datasheet peaks, TFLOPS / TOPS, and memory bandwidth in TB/s: NVIDIA's
# published specifications (half of the "with sparsity" figures), not measurements. A device not
# listed gets no % of peak (pass --peak).
PEAKS = {
    "H100 SXM": {
        "float16": 989.5,
        "bfloat16": 989.5,
        "float8": 1979.0,
        "int8": 1979.0,
        "tbps": 3.35,
    },
    "H100 PCIe": {
        "float16": 756.5,
        "bfloat16": 756.5,
        "float8": 1513.0,
        "int8": 1513.0,
        "tbps": 2.0,
    },
    "H100 NVL": {
        "float16": 835.5,
        "bfloat16": 835.5,
        "float8": 1670.5,
        "int8": 1670.5,
        "tbps": 3.9,
    },
    "H200": {"float16": 989.5, "bfloat16": 989.5, "float8": 1979.0, "int8": 1979.0, "tbps": 4.8},
    "A100 80GB": {"float16": 312.0, "bfloat16": 312.0, "int8": 624.0, "tbps": 2.039},
    "A100 40GB": {"float16": 312.0, "bfloat16": 312.0, "int8": 624.0, "tbps": 1.555},
}

SQUARES = [512, 1024, 2048, 4096, 8192]
LLM_M = [1, 16, 64, 4096]
LLM_NK = [(4096, 4096), (11008, 4096), (4096, 11008)]
# ResNet-50 layers at batch 32: (H=W, C_in, C_out, kernel)
RESNET = [(56, 64, 64, 3), (56, 64, 256, 1), (28, 128, 128, 3), (14, 256, 256, 3), (7, 512, 512, 3)]
SMALL_M = 64
DEVICE = "cuda"  # the smoke test of this script swaps in "cpu" (with Triton's interpreter)


@dataclass
class Row:
    op: str
    dtype: str
    shape: str
    small_m: bool
    flops: float
    bytes: float
    mpq_ms: float
    baseline: str
    baseline_ms: float | None
    sqnr_db: float | None
    extra: dict = field(default_factory=dict)
    kernel: str = ""  # the mpq kernel that ran: tiled / persistent / small_m (matmul)
    weight_bytes: float = 0.0  # the weight's storage, the bandwidth bound at small M

    @property
    def ratio(self) -> float | None:
        return None if self.baseline_ms is None else self.baseline_ms / self.mpq_ms


def device_peaks(name: str) -> dict:
    """Datasheet peaks for a torch.cuda device name such as 'NVIDIA H100 80GB HBM3'."""
    if "H200" in name:
        return PEAKS["H200"]
    if "H100" in name:
        variant = "PCIe" if "PCIe" in name else "NVL" if "NVL" in name else "SXM"
        return PEAKS[f"H100 {variant}"]
    if "A100" in name:
        return PEAKS["A100 80GB" if "80GB" in name else "A100 40GB"]
    return {}


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.double(), x.double()
    noise = (ref - x).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(ref.pow(2).sum().item() / noise)


def bench(fn) -> float:
    from triton.testing import do_bench

    fn()  # compile / autotune outside the timed region
    torch.cuda.synchronize()
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def fp8(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax().float() / torch.finfo(dtype).max
    return (x / scale).to(dtype), scale


def _options(**kwargs: object):
    """mpq's Triton options block (kernel choice, float8 accumulation)."""
    from mpq.kernels._triton_options import triton_options

    return triton_options(**kwargs)


def _kernel_name(kind: str, a: torch.Tensor, b: torch.Tensor, M: int, N: int) -> str:
    """The kernel mpq's rule picks for this call (what the row timed)."""
    from mpq.kernels import _triton_matmul

    out = torch.empty((M, N), device=a.device, dtype=torch.bfloat16)
    return _triton_matmul.choose_kernel(kind, a.reshape(M, -1), b, out)


def matmul_case(
    dtype: str, M: int, N: int, K: int, fp8_accumulation: str = "precise", kernel: str = "auto"
) -> Row:
    """One matmul row. ``fp8_accumulation``: "precise" (mpq promotes to fp32 every K tile;
    baseline ``_scaled_mm(use_fast_accum=False)``) or "fast" (both carry the tensor cores'
    accumulator: ``use_fast_accum=True``). ``kernel``: mpq's kernel choice ("auto" or forced)."""
    import mpq.kernels as mk

    dev = DEVICE
    fast = fp8_accumulation == "fast"
    a_hp = torch.randn(M, K, device=dev)
    w_hp = torch.randn(N, K, device=dev) / K**0.5
    flops = 2.0 * M * N * K
    if dtype in ("float16", "bfloat16"):
        dt = getattr(torch, dtype)
        a, b = a_hp.to(dt), w_hp.to(dt).t()  # b: K-major [K, N] view of the [N, K] weight
        ours = lambda: mk.matmul(a, b)  # noqa: E731
        base = lambda: torch.matmul(a, b)  # noqa: E731
        name, nbytes = "torch.matmul (cuBLAS)", 2 * (M * K + K * N + M * N)
        kind, wbytes = dtype, 2 * K * N
    elif dtype == "float8":
        a, sa = fp8(a_hp, torch.float8_e4m3fn)
        w, sb = fp8(w_hp, torch.float8_e4m3fn)
        b = w.t()
        ours = lambda: mk.matmul(a, b, a_scale=sa, b_scale=sb)  # noqa: E731
        # Matching accumulation: mpq's precise mode promotes the tensor-core partial sums to
        # fp32 every K tile (max_num_imprecise_acc), like cuBLAS without fast accumulation;
        # its fast mode carries them over all of K, like use_fast_accum=True. Comparing across
        # modes would time a less accurate GEMM against a more accurate one.
        base = lambda: torch._scaled_mm(  # noqa: E731
            a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=fast
        )
        name = f"torch._scaled_mm ({'fast accum' if fast else 'no fast accum'})"
        nbytes = M * K + K * N + 2 * M * N
        kind, wbytes = "float8", K * N
    elif dtype == "int8":
        sa = a_hp.abs().amax(1) / 127
        sb = w_hp.abs().amax(1) / 127
        a = (a_hp / sa[:, None]).round().clamp(-127, 127).to(torch.int8)
        b = (w_hp / sb[:, None]).round().clamp(-127, 127).to(torch.int8).t()
        ours = lambda: mk.matmul(a, b, a_scale=sa, b_scale=sb)  # noqa: E731
        base = lambda: (torch._int_mm(a, b).float() * sa[:, None] * sb).to(torch.bfloat16)  # noqa: E731
        name, nbytes = "torch._int_mm + scale", M * K + K * N + 2 * M * N
        kind, wbytes = "int8", K * N
    elif dtype == "int4":
        group = 128
        wg = w_hp.reshape(N, K // group, group)
        scale = (wg.abs().amax(2) / 7).t().contiguous()  # [K/group, N]
        q = (wg / scale.t()[..., None]).round().clamp(-8, 7).to(torch.int8).reshape(N, K)
        nib = (q & 0xF).to(torch.uint8)
        packed = (nib[:, 0::2] | (nib[:, 1::2] << 4)).view(torch.int8)  # [N, K/2]
        b_packed = packed.t()  # [K/2, N], K-major
        a = a_hp.to(torch.bfloat16)
        w_deq = mk.reference.dequantize_int4(
            mk._checks.check_matmul_int4(a, b_packed, scale, None, group, None, None, None),
            b_packed,
            torch.bfloat16,
        )
        ours = lambda: mk.matmul_int4(a, b_packed, scale, group_size=group)  # noqa: E731
        base = lambda: torch.matmul(a, w_deq)  # noqa: E731
        name, nbytes = (
            "bf16 torch.matmul on the dequantized weight",
            2 * M * K + K * N // 2 + 2 * M * N,
        )
        kind, wbytes = "int4", K * N // 2 + 4 * scale.numel()
    else:
        raise ValueError(f"Expected a dtype of the benchmark. Received: {dtype!r}")
    base_ms = err = None
    with _options(kernel=kernel, fp8_accumulation=fp8_accumulation):
        chosen = _kernel_name(kind, a, b_packed if dtype == "int4" else b, M, N)
        out = ours()
        mpq_ms = bench(ours)
    try:
        ref = base()
        err = sqnr_db(ref.float(), out.float())
        base_ms = bench(base)
    except RuntimeError as e:  # e.g. torch._int_mm needs M > 16
        name = f"{name}: n/a ({str(e).splitlines()[0][:60]})"
    label = dtype + (f" {fp8_accumulation}" if dtype == "float8" else "")
    return Row("matmul", label, f"M={M} N={N} K={K}", M <= SMALL_M, flops, nbytes, mpq_ms,
               name, base_ms, err, kernel=chosen, weight_bytes=wbytes)  # fmt: skip


def conv_case(
    dtype: str, hw: int, cin: int, cout: int, k: int, fused: bool, batch: int = 32
) -> Row:
    import mpq.kernels as mk

    dev = DEVICE
    x_hp = torch.randn(batch, hw, hw, cin, device=dev)
    w_hp = torch.randn(cout, k, k, cin, device=dev) / (k * k * cin) ** 0.5
    bias = torch.randn(cout, device=dev)
    pad = k // 2
    epi = dict(bias=bias, activation="relu") if fused else {}
    flops = 2.0 * batch * hw * hw * cout * k * k * cin
    dt = torch.bfloat16 if dtype in ("float8", "int8") else getattr(torch, dtype)
    # Baseline: cuDNN on channels_last tensors (16-bit; PyTorch has no fp8/int8 conv).
    x_cl = x_hp.permute(0, 3, 1, 2).to(dt)  # NCHW logical, NHWC memory = channels_last
    w_cl = w_hp.permute(0, 3, 1, 2).to(dt)
    b_dt = bias.to(dt)

    def base():
        y = F.conv2d(x_cl, w_cl, b_dt if fused else None, padding=pad)
        return torch.relu(y) if fused else y

    if dtype in ("float16", "bfloat16"):
        x, w = x_hp.to(dt), w_hp.to(dt)
        ours = lambda: mk.conv2d(x, w, padding=pad, **epi)  # noqa: E731
        name = "F.conv2d channels_last (cuDNN)" + (" + bias + relu" if fused else "")
        nbytes = 2 * (x.numel() + w.numel() + batch * hw * hw * cout)
    else:
        if dtype == "float8":
            x, sx = fp8(x_hp, torch.float8_e4m3fn)
            w, sw = fp8(w_hp, torch.float8_e4m3fn)
        else:
            sx = x_hp.abs().amax() / 127
            sw = w_hp.abs().amax((1, 2, 3)) / 127
            x = (x_hp / sx).round().clamp(-127, 127).to(torch.int8)
            w = (w_hp / sw[:, None, None, None]).round().clamp(-127, 127).to(torch.int8)
        ours = lambda: mk.conv2d(x, w, padding=pad, x_scale=sx, w_scale=sw, **epi)  # noqa: E731
        name = "bf16 F.conv2d channels_last (cuDNN)" + (" + bias + relu" if fused else "")
        nbytes = x.numel() + w.numel() + 2 * batch * hw * hw * cout
    out = ours()
    ref = base().permute(0, 2, 3, 1)
    shape = f"N={batch} {hw}x{hw}x{cin}->{cout} {k}x{k}" + (" +bias+relu" if fused else "")
    return Row("conv2d", dtype, shape, False, flops, nbytes, bench(ours), name, bench(base),
               sqnr_db(ref.float(), out.float()))  # fmt: skip


# Issue 19's targets (Hopper): ratios in one run on these shapes.
ISSUE19_LARGE = [(4096, 4096, 4096), (8192, 8192, 4096)]
ISSUE19_SMALL_M = [(1, 8192, 8192), (16, 8192, 8192), (128, 8192, 8192)]
ISSUE19_CONV = [(56, 64, 64, 3), (28, 128, 128, 3), (14, 256, 256, 3)]


def issue19_plan() -> list[tuple[str, tuple]]:
    """The rows of ``--issue19``, most important first (the time budget cuts from the end):
    each is ("matmul", (dtype, M, N, K, fp8_accumulation)) or ("conv2d", conv_case args)."""
    plan: list[tuple[str, tuple]] = []
    for M, N, K in ISSUE19_LARGE + ISSUE19_SMALL_M:
        plan.append(("matmul", ("bfloat16", M, N, K, "precise")))
    for M, N, K in ISSUE19_LARGE + ISSUE19_SMALL_M:
        plan.append(("matmul", ("float8", M, N, K, "precise")))
        plan.append(("matmul", ("int8", M, N, K, "precise")))
    for M, N, K in ISSUE19_LARGE:
        plan.append(("matmul", ("float8", M, N, K, "fast")))
    for M, N, K in ISSUE19_SMALL_M[:2]:
        plan.append(("matmul", ("int4", M, N, K, "precise")))
    for hw, cin, cout, k in ISSUE19_CONV:
        for fused in (False, True):
            plan.append(("conv2d", ("bfloat16", hw, cin, cout, k, fused)))
    for M, N, K in ISSUE19_LARGE:
        plan.append(("matmul", ("float16", M, N, K, "precise")))
    return plan


def run_plan(plan: list[tuple[str, tuple]], budget_s: float, clock=time.monotonic) -> list[Row]:
    """Run the plan's rows in order until ``budget_s`` seconds have passed (checked before
    each row; one row's autotuning can overrun it by its own duration). Skipped rows are listed
    on stderr, never silently dropped."""
    rows: list[Row] = []
    start = clock()
    for i, (op, args) in enumerate(plan):
        if clock() - start > budget_s:
            print(f"time budget of {budget_s:.0f} s spent: skipped {len(plan) - i} rows:",
                  file=sys.stderr)  # fmt: skip
            for op_, args_ in plan[i:]:
                print(f"  skipped {op_} {args_}", file=sys.stderr)
            break
        rows.append(matmul_case(*args) if op == "matmul" else conv_case(*args))
        print(f"  done {op} {args} ({clock() - start:.0f} s)", file=sys.stderr)
    return rows


def markdown(rows: list[Row], peaks: dict) -> str:
    """The rows as a GitHub markdown table (ratio = baseline time / mpq time; % of HBM
    bandwidth counts the weight bytes only, the issue's small-M target)."""
    bw = peaks.get("tbps")
    lines = [
        "| op | dtype | shape | mpq kernel | mpq ms | TFLOPS | baseline | base ms | ratio "
        "| % HBM BW (weights) | SQNR dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tflops = r.flops / r.mpq_ms / 1e9
        pct = (
            f"{100 * r.weight_bytes / (r.mpq_ms * 1e-3) / (bw * 1e12):.1f}"
            if bw and r.weight_bytes
            else "n/a"
        )
        lines.append(
            f"| {r.op} | {r.dtype} | {r.shape} | {r.kernel or 'n/a'} | {r.mpq_ms:.4f} | "
            f"{tflops:.1f} | {r.baseline} | "
            f"{'n/a' if r.baseline_ms is None else f'{r.baseline_ms:.4f}'} | "
            f"{'n/a' if r.ratio is None else f'{r.ratio:.3f}'} | {pct} | "
            f"{'n/a' if r.sqnr_db is None else f'{r.sqnr_db:.1f}'} |"
        )
    return "\n".join(lines)


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def report(rows: list[Row], peaks: dict, peak_override: float | None) -> None:
    header = (
        f"{'op':7} {'dtype':9} {'shape':38} {'mpq ms':>9} {'TFLOPS':>8} {'%peak':>6} "
        f"{'%BW':>5} {'base ms':>9} {'ratio':>6} {'SQNR dB':>8}  baseline"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        tflops = r.flops / r.mpq_ms / 1e9
        peak = peak_override or peaks.get(r.dtype if r.dtype != "int4" else "bfloat16")
        pct = f"{100 * tflops / peak:6.1f}" if peak else "   n/a"
        bw = peaks.get("tbps")
        pct_bw = f"{100 * r.bytes / (r.mpq_ms * 1e-3) / (bw * 1e12):5.1f}" if bw else "  n/a"
        base = f"{r.baseline_ms:9.4f}" if r.baseline_ms is not None else "      n/a"
        ratio = f"{r.ratio:6.3f}" if r.ratio is not None else "   n/a"
        sq = f"{r.sqnr_db:8.1f}" if r.sqnr_db is not None else "     n/a"
        print(
            f"{r.op:7} {r.dtype:9} {r.shape:38} {r.mpq_ms:9.4f} {tflops:8.1f} {pct} {pct_bw} "
            f"{base} {ratio} {sq}  {r.baseline}"
        )
    print()
    groups: dict[tuple[str, str, bool], list[float]] = {}
    for r in rows:
        groups.setdefault((r.op, r.dtype, r.small_m), []).append(r.ratio)
    print("geometric mean of baseline_ms / mpq_ms (> 1: mpq faster)")
    for (op, dtype, small), ratios in sorted(groups.items()):
        g = geomean(ratios)
        label = "small-M (M <= 64)" if small else "large"
        print(f"  {op:7} {dtype:9} {label:18} {'n/a' if g is None else f'{g:.3f}'}"
              f"  ({sum(r is not None for r in ratios)} shapes)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default="matmul,conv2d", help="comma list: matmul,conv2d")
    parser.add_argument(
        "--dtypes", default="float16,bfloat16,float8,int8,int4", help="comma list of dtypes"
    )
    parser.add_argument("--quick", action="store_true", help="a few shapes per table")
    parser.add_argument("--peak", type=float, default=None, help="override the peak TFLOPS")
    parser.add_argument("--json", type=Path, default=None, help="also write rows as JSON Lines")
    parser.add_argument(
        "--issue19", action="store_true", help="the Hopper targets of issue 19 as a markdown table"
    )
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="--issue19: stop starting rows after this"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench_kernels.py needs a CUDA GPU: no CUDA device is visible to torch "
            f"(torch {torch.__version__}). The CPU path of mpq.kernels is the torch reference; "
            "nothing to benchmark here.",
            file=sys.stderr,
        )
        return 2
    import triton

    torch.backends.cuda.matmul.allow_tf32 = False
    ops, dtypes = args.ops.split(","), args.dtypes.split(",")
    name = torch.cuda.get_device_name()
    peaks = device_peaks(name)
    print(f"device: {name}, capability {torch.cuda.get_device_capability()}, "
          f"torch {torch.__version__}, triton {triton.__version__}")  # fmt: skip
    if not peaks:
        print("(no datasheet peak known for this device: % of peak shows n/a; see --peak)")
    if args.issue19:
        rows = run_plan(issue19_plan(), args.budget_s)
        print()
        print(markdown(rows, peaks))
        _write_json(args.json, rows, name)
        return 0
    squares = [1024, 4096] if args.quick else SQUARES
    llm_m = [1, 4096] if args.quick else LLM_M
    llm_nk = LLM_NK[:1] if args.quick else LLM_NK
    rows: list[Row] = []
    if "matmul" in ops:
        shapes = [(s, s, s) for s in squares] + [(m, n, k) for m in llm_m for n, k in llm_nk]
        for dtype in dtypes:
            if dtype == "float8" and torch.cuda.get_device_capability() < (8, 9):
                print("skipping float8: needs compute capability >= 8.9")
                continue
            for M, N, K in shapes:
                rows.append(matmul_case(dtype, M, N, K))
                print(f"  done matmul {dtype} M={M} N={N} K={K}", file=sys.stderr)
    if "conv2d" in ops:
        layers = RESNET[:2] if args.quick else RESNET
        for dtype in (d for d in dtypes if d != "int4"):
            if dtype == "float8" and torch.cuda.get_device_capability() < (8, 9):
                continue
            for hw, cin, cout, k in layers:
                for fused in (False, True):
                    rows.append(conv_case(dtype, hw, cin, cout, k, fused))
                    print(f"  done conv2d {dtype} {hw}x{hw}x{cin}->{cout} {k}x{k}", file=sys.stderr)
    print()
    report(rows, peaks, args.peak)
    _write_json(args.json, rows, name)
    return 0


def _write_json(path: Path | None, rows: list[Row], device: str) -> None:
    if path:
        with path.open("w") as f:
            for r in rows:
                f.write(json.dumps({**asdict(r), "ratio": r.ratio, "device": device}) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
