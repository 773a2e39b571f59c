"""Compile mpq's Triton kernels ahead of time for NVIDIA targets, on a machine without a GPU.

    python benchmarks/compile_check.py                  # sm_90 (Hopper), every config, main dtypes
    python benchmarks/compile_check.py --arch 80,89,90 --quick

Triton's interpreter (TRITON_INTERPRET=1, which the tests use) accepts code that the real
compiler rejects. This script runs the real compiler (Triton -> TTGIR -> PTX -> cubin with the
ptxas bundled in the triton wheel) for GPUTarget("cuda", arch, 32), so compile errors, shared
memory per config, register spills and the tensor-core instruction chosen (wgmma / mma.sync)
are checked without a GPU. It compiles; it runs nothing: numerics and speed still need a GPU.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile the real kernels, not interpreted ones
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated explicitly
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mpq.kernels import _configs
from mpq.kernels import _triton_conv as tc
from mpq.kernels import _triton_matmul as tm
from mpq.kernels import _triton_persistent as tp
from mpq.kernels import _triton_small_m as ts
from mpq.kernels._configs import TILE_KEYS

# Largest dynamic shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin), bytes.
SMEM_OPTIN = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
PTR_TYPES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8e4nv": 1, "fp8e5": 1, "i8": 1, "i32": 4}
CONV_STRIDES = ("sxn", "sxh", "sxw", "swo", "swh", "sww", "sym")  # multiples of C (C % 16 == 0)
# Operand pairs -> (a, b, out) Triton pointer types and the kernel's precision flags.
CASES = {
    "fp16": ("fp16", "fp16", "fp16", {}),
    "bf16": ("bf16", "bf16", "bf16", {}),
    "fp32": ("fp32", "fp32", "fp32", {"IEEE": True}),
    "e4m3": ("fp8e4nv", "fp8e4nv", "bf16", {}),
    "e5m2xe4m3": ("fp8e5", "fp8e4nv", "bf16", {}),
    "int8": ("i8", "i8", "bf16", {"ACC_INT32": True}),
    "int8->i32": ("i8", "i8", "i32", {"ACC_INT32": True, "OUT_INT32": True}),
}


def _compile(fn, ptrs: dict, consts: dict, arch: int, num_warps: int, num_stages: int):
    """Compile ``fn`` with pointer types ``ptrs`` (a "tensordesc<...>" type for a host-side TMA
    descriptor), constexprs ``consts``, other args i32."""
    signature, divisible = {}, []
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name in ptrs and ptrs[name].startswith("tensordesc"):
            signature[name] = ptrs[name]
        elif name in ptrs:
            signature[name] = "*" + ptrs[name]
            divisible.append(i)  # torch allocations are 16-byte aligned
        else:
            signature[name] = "i32"
            # Sizes and leading strides divisible by 16, as Triton specializes for typical shapes.
            if name in ("M", "N", "K", "Cg") or name.startswith("stride") or name in CONV_STRIDES:
                divisible.append(i)
    attrs = {(i,): [["tt.divisibility", 16]] for i in divisible}
    src = ASTSource(fn, signature, consts, attrs)
    return triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps,
                                                           "num_stages": num_stages}
    )  # fmt: skip


def _resources(kernel) -> tuple[int | None, int | None]:
    """(registers per thread, spill bytes) from the cubin, via the bundled cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run(
            [str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True
        ).stdout
    regs = re.search(r"REG:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    return (int(regs.group(1)) if regs else None, int(stack.group(1)) if stack else None)


def _mma(kernel) -> str:
    ptx = kernel.asm["ptx"]
    tma = " TMA" if "cp.async.bulk.tensor" in ptx else ""
    found = sorted(
        set(re.findall(r"(wgmma\.mma_async\.sync\.aligned\.\S+|mma\.sync\.aligned\.\S+)", ptx))
    )
    if not found:
        return "no tensor-core MMA" + tma
    acc = re.search(r"maxNumImpreciseAcc = (\d+)", kernel.asm["ttgir"])
    extra = f" maxNumImpreciseAcc={acc.group(1)}" if acc and acc.group(1) != "0" else ""
    return ", ".join(found[:2]) + extra + tma


def _first_light(configs: list[dict]) -> dict:
    """The first config the launchers keep with a fused epilogue (register pruning), or the
    first config when none is (``--configs`` naming only heavy ones)."""
    light = [c for c in configs if _configs.register_estimate(c, True) <= _configs.MAX_REGISTERS]
    return (light or configs)[0]


def matmul_variants(arch: int, configs: list[dict], cases: list[str]):
    for case in cases:
        a, b, c, flags = CASES[case]
        for cfg in configs:
            tiles = {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
            consts = dict(
                A_SCALE=2, B_SCALE=2, HAS_BIAS=True, ACTIVATION=2, ACC_INT32=False, IEEE=False,
                OUT_INT32=False, SPLIT_K=1, INTERPRET=False, INT64=False,
                stride_ak=1, stride_cn=1, **tiles,
            )  # fmt: skip
            consts.update(flags)
            if consts["OUT_INT32"]:
                consts.update(A_SCALE=0, B_SCALE=0, HAS_BIAS=False, ACTIVATION=0)
            if PTR_TYPES[b] == 1:
                consts["stride_bk"] = 1  # 8-bit b is K-major: stride 1 along K, specialized
            else:
                consts["stride_bn"] = 1  # row-major [K, N] 16-bit b
            ptrs = dict(a_ptr=a, b_ptr=b, c_ptr=c, ws_ptr="fp32", a_scale_ptr="fp32",
                        b_scale_ptr="fp32", bias_ptr="fp32")  # fmt: skip
            yield f"matmul {case}", cfg, tm._matmul_kernel.fn, ptrs, consts
    # The other code paths, on the first config: split-K (int32 / fp32 workspace), int64
    # offsets, and the split-K reduction kernel.
    cfg = _first_light(configs)
    tiles = {k: cfg[k] for k in TILE_KEYS}
    for case, ws, extra in (
        ("int8", "i32", dict(SPLIT_K=4)),
        ("bf16", "fp32", dict(SPLIT_K=4)),
        ("bf16", "fp32", dict(INT64=True)),
        ("int8", "i32", dict(INT64=True)),
    ):
        a, b, c, flags = CASES[case]
        consts = dict(A_SCALE=2, B_SCALE=1, HAS_BIAS=True, ACTIVATION=3, ACC_INT32=False,
                      IEEE=False, OUT_INT32=False, SPLIT_K=1, INTERPRET=False, INT64=False,
                      stride_ak=1, stride_cn=1, **tiles)  # fmt: skip
        consts.update(flags)
        consts.update(extra)
        consts["stride_bk" if PTR_TYPES[b] == 1 else "stride_bn"] = 1
        ptrs = dict(a_ptr=a, b_ptr=b, c_ptr=c, ws_ptr=ws, a_scale_ptr="fp32",
                    b_scale_ptr="fp32", bias_ptr="fp32")  # fmt: skip
        label = "matmul " + case + (" splitk" if "SPLIT_K" in extra else " int64")
        yield label, cfg, tm._matmul_kernel.fn, ptrs, consts
    for ws, c in (("i32", "bf16"), ("fp32", "fp16"), ("i32", "i32")):
        consts = dict(A_SCALE=0, B_SCALE=0, HAS_BIAS=c != "i32", ACTIVATION=2 * (c != "i32"),
                      OUT_INT32=c == "i32", SPLIT_K=4, INT64=False, INTERPRET=False,
                      BLOCK_M=64, BLOCK_N=64, stride_cn=1)  # fmt: skip
        ptrs = dict(ws_ptr=ws, c_ptr=c, a_scale_ptr="fp32", b_scale_ptr="fp32", bias_ptr="fp32")
        grid_cfg = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=0, GROUP_M=1, num_warps=4, num_stages=1)
        yield f"splitk_reduce {ws}->{c}", grid_cfg, tm._splitk_reduce, ptrs, consts
    # weight-only int4 with bf16 activations, grouped scales and zero points
    for cfg in configs:
        tiles = {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
        consts = dict(HAS_ZERO=True, HAS_BIAS=True, ACTIVATION=1, IEEE=False, INTERPRET=False,
                      INT64=False, stride_ak=1, stride_bk=1, stride_cn=1, **tiles)  # fmt: skip
        ptrs = dict(a_ptr="bf16", b_ptr="i8", c_ptr="bf16", s_ptr="fp32", z_ptr="fp32",
                    bias_ptr="fp32")  # fmt: skip
        yield "int4 bf16", cfg, tm._matmul_int4_kernel.fn, ptrs, consts
    small = configs[-1]  # a tile every device keeps for int4
    yield (
        "int4 bf16 int64",
        small,
        tm._matmul_int4_kernel.fn,
        ptrs,
        dict(consts, INT64=True, **{k: small[k] for k in TILE_KEYS}),
    )
    # implicit-GEMM conv
    # e4m3 exists from sm_89 on (Triton refuses fp8e4nv below; mpq raises before launching)
    for case in ("bf16", "e4m3", "int8") if arch >= 89 else ("bf16", "int8"):
        a, b, c, flags = CASES[case]
        for cfg in configs:
            tiles = {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
            consts = dict(X_SCALE=1, W_SCALE=2, HAS_BIAS=True, ACTIVATION=1, ACC_INT32=False,
                          IEEE=False, OUT_INT32=False, INTERPRET=False, INT64=False, sxc=1,
                          swc=1, syn=1, **tiles)  # fmt: skip
            consts.update(flags)
            ptrs = dict(x_ptr=a, w_ptr=b, y_ptr=c, x_scale_ptr="fp32", w_scale_ptr="fp32",
                        bias_ptr="fp32")  # fmt: skip
            yield f"conv2d {case}", cfg, tc._conv2d_kernel.fn, ptrs, consts
        yield (
            f"conv2d {case} int64",
            _first_light(configs),
            tc._conv2d_kernel.fn,
            ptrs,
            dict(consts, INT64=True, **{k: _first_light(configs)[k] for k in TILE_KEYS}),
        )


# Persistent TMA matmul cases: (a, b, out) element types, flags, K-major b (8-bit must be).
PERSISTENT_CASES = {
    "bf16": ("bf16", "bf16", "bf16", {}, False),
    "fp16": ("fp16", "fp16", "fp16", {}, False),
    "e4m3 fast": ("fp8e4nv", "fp8e4nv", "bf16", {"FP8": True, "FP8_PROMOTE": 0}, True),
    "e4m3 promote1": ("fp8e4nv", "fp8e4nv", "bf16", {"FP8": True, "FP8_PROMOTE": 1}, True),
    "e4m3 promote4": ("fp8e4nv", "fp8e4nv", "bf16", {"FP8": True, "FP8_PROMOTE": 4}, True),
    "int8": ("i8", "i8", "bf16", {"ACC_INT32": True}, True),
}


def persistent_variants(arch: int, cases: list[str], quick: bool = False):
    """The persistent kernel (TMA descriptors, sub-tiled epilogue) on every config kept for
    8192x8192x4096 operands, with the heaviest epilogue (row/column scales, bias, GELU)."""
    limit = SMEM_OPTIN.get(arch, 99 * 1024)
    for case in cases:
        a, b, c, flags, kmajor = PERSISTENT_CASES[case]
        elem = PTR_TYPES[a]
        table = _configs.persistent_configs((arch // 10, arch % 10), interpret=False)
        kept = _configs.prune_persistent(
            table, 8192, 8192, 4096, elem, PTR_TYPES[c], limit, flags.get("FP8_PROMOTE", 0)
        )
        for cfg in kept[:1] if quick else kept:
            bm, bn, bk, sub = (
                cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "EPILOGUE_SUBTILE")
            )
            consts = dict(A_SCALE=2, B_SCALE=2, HAS_BIAS=True, ACTIVATION=2, ACC_INT32=False,
                          FP8=False, FP8_PROMOTE=1, OUT_INT32=False, B_KMAJOR=kmajor, C_TMA=True,
                          NUM_SMS=132, INTERPRET=False, stride_cn=1,
                          **{k: cfg[k] for k in _configs.PERSISTENT_TILE_KEYS})  # fmt: skip
            consts.update(flags)
            ptrs = dict(
                a_desc=f"tensordesc<{a}[{bm}, {bk}]>",
                b_desc=f"tensordesc<{b}[{bn}, {bk}]>" if kmajor else f"tensordesc<{b}[{bk}, {bn}]>",
                c_desc=f"tensordesc<{c}[{bm}, {bn // sub}]>",
                c_ptr=c, a_scale_ptr="fp32", b_scale_ptr="fp32", bias_ptr="fp32",
            )  # fmt: skip
            yield f"persistent {case}", cfg, tp._matmul_persistent_kernel.fn, ptrs, consts


def small_m_variants(arch: int, quick: bool = False):
    """The small-M kernel: bf16 weights, int8 and int4 weight-only (grouped, zero points)."""
    cap = (arch // 10, arch % 10)
    for label, weight, b in (("bf16", 16, "bf16"), ("int8w", 8, "i8"), ("int4", 4, "i8")):
        table = _configs.small_m_configs(cap, interpret=False)
        extra = 8 if weight != 16 else 0  # fp32 scales + zero points, as the launcher prunes
        limit = SMEM_OPTIN.get(arch, 99 * 1024)
        kept = _configs.prune(table, 1, 8192, 8192, PTR_TYPES[b], limit, extra, False)
        for cfg in kept[:1] if quick else kept:
            consts = dict(WEIGHT=weight, HAS_ZERO=weight != 16, HAS_BIAS=True, ACTIVATION=3,
                          IEEE=False, SPLIT_K=4, INT64=False, INTERPRET=False, stride_ak=1,
                          stride_bk=1, stride_cn=1,
                          **{k: cfg[k] for k in TILE_KEYS})  # fmt: skip
            ptrs = dict(a_ptr="bf16", b_ptr=b, c_ptr="bf16", ws_ptr="fp32", s_ptr="fp32",
                        z_ptr="fp32", bias_ptr="fp32")  # fmt: skip
            yield f"small_m {label}", cfg, ts._small_m_kernel.fn, ptrs, consts


def conv_persistent_variants(arch: int, quick: bool = False):
    """The persistent conv (sub-tiled epilogue) on the persistent table's tiles."""
    for case in ("bf16", "e4m3", "int8") if arch >= 89 else ("bf16", "int8"):
        a, b, c, flags = CASES[case]
        kept = _configs.prune(
            _configs.persistent_conv_configs(), 4096, 4096, 4096, PTR_TYPES[a],
            SMEM_OPTIN.get(arch, 99 * 1024), heavy_epilogue=True, gather=True,
        )  # fmt: skip
        for cfg in kept[:1] if quick else kept:
            consts = dict(X_SCALE=1, W_SCALE=2, HAS_BIAS=True, ACTIVATION=1, ACC_INT32=False,
                          IEEE=False, OUT_INT32=False, INT64=False, NUM_SMS=132, INTERPRET=False,
                          sxc=1, swc=1, syn=1,
                          **{k: cfg[k] for k in _configs.PERSISTENT_TILE_KEYS})  # fmt: skip
            consts.update(flags)
            ptrs = dict(x_ptr=a, w_ptr=b, y_ptr=c, x_scale_ptr="fp32", w_scale_ptr="fp32",
                        bias_ptr="fp32")  # fmt: skip
            yield f"conv_persistent {case}", cfg, tc._conv2d_persistent_kernel.fn, ptrs, consts


def _run(arch: int, label: str, cfg: dict, fn, ptrs: dict, consts: dict) -> int:
    """Compile one variant and print its line; returns the number of problems (0 or 1)."""
    limit = SMEM_OPTIN.get(arch, 99 * 1024)
    tile = f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']}"
    tile += f" w{cfg['num_warps']} s{cfg['num_stages']}"
    if "EPILOGUE_SUBTILE" in cfg:
        tile += f" sub{cfg['EPILOGUE_SUBTILE']}"
    t = time.perf_counter()
    try:
        k = _compile(fn, ptrs, consts, arch, cfg["num_warps"], cfg["num_stages"])
    except Exception as e:  # report every failure, keep going
        msg = str(e).strip().splitlines()[-1][:150]
        print(f"sm_{arch} {label:22} {tile:26} FAILED: {type(e).__name__}: {msg}")
        return 1
    regs, stack = _resources(k)
    smem = k.metadata.shared
    flag = " OVER SMEM" if smem > limit else ""
    problems = int(bool(flag))
    flag += f" (spills: {stack} B of stack)" if stack else ""
    print(f"sm_{arch} {label:22} {tile:26} smem {smem // 1024:4d} KiB regs {regs:3d} "
          f"{time.perf_counter() - t:5.1f}s  {_mma(k)}{flag}")  # fmt: skip
    return problems


NEW_KERNELS = ("persistent", "small_m", "conv_persistent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="90", help="comma list of SM versions: 80,89,90")
    parser.add_argument("--cases", default="fp16,bf16,fp32,e4m3,e5m2xe4m3,int8,int8->i32")
    parser.add_argument(
        "--quick", action="store_true", help="first two configs per table (new kernels: one)"
    )
    parser.add_argument("--configs", default=None, help="comma list of config indices to compile")
    parser.add_argument(
        "--kernels",
        default="matmul,int4,conv2d,persistent,small_m,conv_persistent",
        help="kernels to compile (persistent and conv_persistent: sm_90 only)",
    )
    parser.add_argument(
        "--persistent-cases", default=",".join(PERSISTENT_CASES), help="persistent matmul cases"
    )
    args = parser.parse_args(argv)
    failures = 0
    print(f"triton {triton.__version__}; compile only, nothing runs")
    for arch in (int(a) for a in args.arch.split(",")):
        configs = _configs.matmul_configs((arch // 10, arch % 10), interpret=False)
        if args.quick:
            configs = configs[:1] + configs[-8:-7]
        elif args.configs:
            configs = [configs[int(i)] for i in args.configs.split(",")]
        cases = [c for c in args.cases.split(",") if arch >= 89 or not c.startswith("e")]
        limit = SMEM_OPTIN.get(arch, 99 * 1024)
        kernels = args.kernels.split(",")
        new = []
        if "persistent" in kernels and arch >= 90:
            new += list(persistent_variants(arch, args.persistent_cases.split(","), args.quick))
        if "small_m" in kernels:
            new += list(small_m_variants(arch, args.quick))
        if "conv_persistent" in kernels and arch >= 90:
            new += list(conv_persistent_variants(arch, args.quick))
        for variant in new:
            failures += _run(arch, *variant)
        for label, cfg, fn, ptrs, consts in matmul_variants(arch, configs, cases):
            if label.split()[0].replace("splitk_reduce", "matmul") not in kernels:
                continue
            elem = max(PTR_TYPES[ptrs[n]] for n in list(ptrs)[:2])
            if not label.startswith("splitk_reduce"):  # not autotuned: no pruning
                extra = 8 if label.startswith("int4") else 0  # fp32 scales + zero points
                # the fused epilogue these variants compile: register pruning applies, as in the
                # launchers, unless --configs names the configs to compile
                heavy = (
                    not args.configs
                    and bool(consts.get("ACTIVATION"))
                    and consts.get("SPLIT_K", 1) == 1
                )
                kept = _configs.prune(
                    [cfg], 4096, 4096, 4096, elem, limit, extra, keep_one=False,
                    heavy_epilogue=heavy, gather=label.startswith("conv2d"),
                )  # fmt: skip
                if not kept:
                    continue  # the launcher prunes this config for these operands on this device
                cfg = kept[0]  # possibly with fewer stages or (fp32) a shorter BLOCK_K
                consts = dict(consts, **{k: cfg[k] for k in TILE_KEYS})
            tile = f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']}"
            tile += f" w{cfg['num_warps']} s{cfg['num_stages']}"
            t = time.perf_counter()
            try:
                k = _compile(fn, ptrs, consts, arch, cfg["num_warps"], cfg["num_stages"])
            except Exception as e:  # report every failure, keep going
                failures += 1
                msg = str(e).strip().splitlines()[-1][:150]
                print(f"sm_{arch} {label:18} {tile:22} FAILED: {type(e).__name__}: {msg}")
                continue
            regs, stack = _resources(k)
            smem = k.metadata.shared
            flag = " OVER SMEM" if smem > limit else ""
            failures += bool(flag)  # the autotuner would hit OutOfResources on this config
            flag += f" (spills: {stack} B of stack)" if stack else ""  # slow, not wrong
            print(f"sm_{arch} {label:18} {tile:22} smem {smem // 1024:4d} KiB regs {regs:3d} "
                  f"{time.perf_counter() - t:5.1f}s  {_mma(k)}{flag}")  # fmt: skip
    print(f"{failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
