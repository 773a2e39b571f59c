"""Command line of the sweep: `mpq sweep [CONFIG] [options]` and `python -m mpq.sweep`.

Exit status: 0 when every run succeeded, 1 when any run failed, 2 for bad options or a bad
line in the results file (checked before any work), 130 when stopped by Ctrl-C (the finished
runs are kept; the same command resumes).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpq.sweep.config import SweepConfig

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of `mpq sweep`, its options in groups (the order of `--help`)."""
    p = argparse.ArgumentParser(
        prog="mpq sweep",
        description=(
            "Train small models once in float32, evaluate the same weights under many dtype "
            "policies and quantization modes, and write results.jsonl, summary.csv and sweep.png. "
            "With no arguments: the default digits sweep (CNN and MLP, ten policies)."
        ),
    )
    _add_what_options(p)
    _add_where_options(p)
    _add_run_options(p)
    _add_ray_options(p)
    _add_model_options(p)
    return p


def _add_what_options(p: argparse.ArgumentParser) -> None:
    """What to sweep: the sweep file, policies, models, seeds."""
    p.add_argument(
        "config", nargs="?", help="a sweep file (.toml or .json); options below override it"
    )
    p.add_argument(
        "--policies",
        help="comma-separated policy names or labels (e.g. 'float32,int8,"
        "int4_from_mixed_bfloat16'), or a file (.txt one per line, .json list, .toml policies = [...])",
    )
    p.add_argument(
        "--models",
        help="comma-separated built-in models (digits_cnn, digits_mlp, "
        "synthetic_mlp) or 'package.module:factory'",
    )
    p.add_argument(
        "--seeds",
        help="training seeds in [0, 2**32): '0,1,2' or an inclusive range '0-4', at most 1000 "
        "(default 0)",
    )


def _add_where_options(p: argparse.ArgumentParser) -> None:
    """Where the files go and where the runs run: --out, --device, --executor, --workers."""
    p.add_argument("--out", help="output directory (default sweep-results); re-running resumes")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--executor",
        choices=["local", "serial", "ray"],
        help="local: a process pool (default); serial: this process; ray: Ray tasks",
    )
    p.add_argument(
        "--workers", type=int, help="process-pool size, 1 to 256 (default: min(CPUs, 2))"
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """How the runs go: sizes, fine-tuning, per-layer runs and suggestions, plots, resume."""
    p.add_argument(
        "--quick",
        action="store_true",
        default=None,
        help="smoke-test sizes: 1 epoch, 256 train / 128 test samples",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        help="fine-tuning epochs for mixed and float8 policies, 0 to 10000 (default 2; 0: none)",
    )
    p.add_argument(
        "--per-layer",
        action="store_true",
        default=None,
        help="also put one layer at a time under each policy: per_layer.csv and per_layer.png",
    )
    p.add_argument(
        "--suggest",
        action="store_true",
        default=None,
        help="propose a DTypePolicyMap meeting --target-sqnr at the fewest bytes and verify it (implies --per-layer)",
    )
    p.add_argument(
        "--target-sqnr",
        type=float,
        help="SQNR target in dB for --suggest, finite and > 0 (default 30)",
    )
    p.add_argument(
        "--no-plot", dest="plot", action="store_false", default=None, help="skip the PNGs"
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        default=None,
        help="recompute runs already recorded in --out",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="start --out/results.jsonl afresh; the old file is renamed to "
        "results.jsonl.old-<time>, not deleted",
    )
    p.add_argument(
        "--skip-bad-lines",
        action="store_true",
        default=None,
        help="skip lines of --out/results.jsonl that are not records (with a warning; their "
        "runs are computed again) instead of stopping",
    )


def _add_ray_options(p: argparse.ArgumentParser) -> None:
    """Ray: the cluster and each run's resource request."""
    p.add_argument(
        "--ray-address", help="Ray cluster address for --executor ray (default: start a local Ray)"
    )
    p.add_argument("--cpus-per-run", type=float, help="Ray: CPUs requested per run (default 1)")
    p.add_argument(
        "--gpus-per-run",
        type=float,
        help="Ray: GPUs requested per run, fractions allowed (default 0)",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """Bring your own model: --model, --task, --checkpoint, --eval-only; and --quiet, --cache-dir."""
    from mpq.sweep.models import BUILTIN_MODELS
    from mpq.sweep.tasks import TASKS

    g = p.add_argument_group("your own model")
    g.add_argument(
        "--model",
        help="one model to sweep: 'package.module:factory' (resolved like an entry point, the "
        "current directory importable; the factory returns an mpq model or a torch.nn.Module, "
        f"converted with mpq.from_torch) or a built-in: {', '.join(BUILTIN_MODELS)}",
    )
    tasks = "; ".join(f"{n}: {t.description}" for n, t in TASKS.items())
    g.add_argument("--task", help=f"how --model is scored (and its data). Built-in tasks: {tasks}")
    g.add_argument(
        "--checkpoint",
        help="trained weights for --model: an mpq.saving file or a safetensors state dict "
        "(pickle-based .pt files are refused)",
    )
    g.add_argument(
        "--eval-only",
        action="store_true",
        default=None,
        help="do not train --model: sweep the weights of --checkpoint (or of the factory) as they are",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress and no tables (files are still written)"
    )
    p.add_argument(
        "--cache-dir",
        help="where trained float32 weights are cached by (model config, seed) (default OUT/cache)",
    )


def _model_override(args: argparse.Namespace) -> tuple[dict[str, Any], ...] | None:
    """The `models` of --model (with --task, --checkpoint, --eval-only), or None."""
    extra = {
        k: v
        for k, v in (
            ("task", args.task),
            ("checkpoint", args.checkpoint),
            ("train", False if args.eval_only else None),
        )
        if v is not None
    }
    if args.model is None:
        if extra:
            flags = [f"--{k.replace('_', '-')}" for k in ("task", "checkpoint", "eval_only")]
            given = [
                f
                for f, k in zip(flags, ("task", "checkpoint", "eval_only"), strict=True)
                if getattr(args, k)
            ]
            raise ValueError(f"Expected --model with {', '.join(given)}. Received: no --model")
        return None
    if args.models is not None:
        raise ValueError(
            "Expected either --model (one model, with --task/--checkpoint/--eval-only) or "
            f"--models. Received: --model {args.model!r} and --models {args.models!r}"
        )
    if args.task is not None:
        from mpq.sweep.tasks import resolve_task

        resolve_task(args.task)  # unknown names fail here, before any work
    return ({"factory": args.model.strip(), **extra},)


_SEED_PART = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")


def _parse_seeds(text: str) -> tuple[int, ...]:
    """`'0,1,2'` or inclusive ranges `'0-4'` (mixed: `'0-2,7'`); bounds are checked before a
    range is expanded (seeds in [0, 2**32), at most `MAX_SEEDS`)."""
    from mpq.sweep.config import MAX_SEEDS, SEED_LIMIT

    seeds: list[int] = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = _SEED_PART.fullmatch(part.strip())
        if m is None:
            raise ValueError(
                "Expected --seeds like '0,1,2' or an inclusive range '0-4'. "
                f"Received: --seeds {text[:80]!r}"
            )
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else int(m.group(2))
        if hi >= SEED_LIMIT or lo >= SEED_LIMIT:
            raise ValueError(
                f"Expected seeds in [0, 2**32). Received: --seeds {text[:80]!r} "
                f"(seed {max(lo, hi)})"
            )
        if hi < lo:
            raise ValueError(
                f"Expected a seed range 'low-high' with low <= high. Received: --seeds {m.group(0)!r}"
            )
        if len(seeds) + (hi - lo + 1) > MAX_SEEDS:
            raise ValueError(
                f"Expected at most {MAX_SEEDS} seeds. Received: --seeds {text[:80]!r} "
                f"({len(seeds) + (hi - lo + 1)} or more seeds)"
            )
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError(
            f"Expected --seeds like '0,1,2' or an inclusive range '0-4'. Received: --seeds {text!r}"
        )
    return tuple(seeds)


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The `SweepConfig` the parsed options describe (validated: raises on any bad option)."""
    from mpq.sweep.config import default_config, load_config

    overrides: dict[str, Any] = {}
    for key in (
        "policies",
        "out",
        "device",
        "executor",
        "workers",
        "quick",
        "finetune_epochs",
        "per_layer",
        "suggest",
        "target_sqnr",
        "plot",
        "resume",
        "overwrite",
        "skip_bad_lines",
        "ray_address",
    ):
        val = getattr(args, key)
        if val is not None:
            overrides[key] = val
    if args.models is not None:
        overrides["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    model = _model_override(args)
    if model is not None:
        overrides["models"] = model
    if args.cache_dir is not None:
        overrides["cache_dir"] = args.cache_dir
    if args.seeds is not None:
        overrides["seeds"] = _parse_seeds(args.seeds)
    if args.cpus_per_run is not None or args.gpus_per_run is not None:
        res = {"num_cpus": 1.0 if args.cpus_per_run is None else args.cpus_per_run}
        if args.gpus_per_run:
            res["num_gpus"] = args.gpus_per_run
        overrides["resources"] = res
    if args.config:
        return load_config(args.config, **overrides)
    return default_config(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `mpq sweep` / `python -m mpq.sweep`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:  # `mpq sweep ...` through a top-level `mpq` command
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    out = None
    try:
        from mpq.sweep import check_environment, prepare_output, run
        from mpq.sweep.records import ResultsFileError

        try:
            config = config_from_args(args)
            out = config.out
            prepare_output(config.out)
            check_environment(config)
        except (ValueError, TypeError, OSError, RuntimeError, ModuleNotFoundError) as e:
            parser.exit(2, f"mpq sweep: error: {e}\n")
        try:
            records = run(config, verbose=not args.quiet)
        except ResultsFileError as e:  # raised before any work
            parser.exit(2, f"mpq sweep: error: {e}\n")
    except KeyboardInterrupt:
        return _interrupted(out)
    return 0 if all(r.get("status") == "ok" for r in records) else 1


def _interrupted(out: str | None) -> int:
    """Ctrl-C: one line saying what was kept and how to resume; exit status 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    if out is None:
        sys.stderr.write("mpq sweep: interrupted before any run; nothing was written\n")
        return 130
    path = os.path.join(out, "results.jsonl")
    from mpq.sweep.records import scan_results

    try:
        n = len(scan_results(path, skip_bad_lines=True).records)
    except OSError as e:
        n_text = f"? (cannot read it: {e.strerror or e})"
    else:
        n_text = str(n)
    sys.stderr.write(
        f"mpq sweep: interrupted; kept {n_text} complete records in {path}; run the same "
        "command again to resume (recorded runs are not computed again)\n"
    )
    return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
