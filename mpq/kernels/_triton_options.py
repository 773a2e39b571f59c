"""Which Triton matmul kernel runs, and how float8 products accumulate: data and one rule.

Pure Python (imports neither triton nor CUDA), so the selection rule is testable on any machine.
``triton_options(...)`` forces a kernel or sets the float8 accumulation for the calls inside
the block (local to the thread / async task); ``choose_matmul_kernel`` is the one rule.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from contextvars import ContextVar

from mpq._errors import describe

from ._configs import SMALL_M_BLOCK

__all__ = [
    "FP8_ACCUMULATIONS",
    "KERNELS",
    "MAX_SMALL_M",
    "SPLIT_K_M",
    "TritonOptions",
    "choose_matmul_kernel",
    "current",
    "triton_options",
]

KERNELS = ("auto", "tiled", "persistent", "small_m")
"""``tiled``: the K-loop kernel of every architecture (the fallback); ``persistent``: the
persistent TMA kernel (sm_90+); ``small_m``: the split-K weight-streaming kernel for M <= 16."""

FP8_ACCUMULATIONS = ("precise", "fast")
"""How the persistent kernel accumulates float8 products on Hopper: ``fast`` carries wgmma's
reduced-precision accumulator over the whole K loop (``torch._scaled_mm(use_fast_accum=True)``);
``precise`` adds it into a float32 accumulator every ``fp8_promote_every`` K tiles."""

MAX_SMALL_M = SMALL_M_BLOCK
"""Largest M the small-M kernel takes: one 16-row tile holds every row, so each weight element
is read once."""

SPLIT_K_M = 64
"""Up to this M the tiled kernel may split K (``_configs.split_k_for``); the persistent kernel
does not split K, so automatic selection keeps such shapes on the tiled kernel."""

# Operand kinds each kernel accepts (the launchers' names for them).
SMALL_M_KINDS = ("float16", "bfloat16", "int4", "int8_weight")
PERSISTENT_KINDS = ("float16", "bfloat16", "float8", "int8")


@dataclasses.dataclass(frozen=True)
class TritonOptions:
    """Kernel choice and float8 accumulation of the Triton matmul launchers.

    ``kernel="auto"`` picks by device capability and shape (``choose_matmul_kernel``); a forced
    kernel that cannot run the call raises (no silent fallback). ``fp8_accumulation`` and
    ``fp8_promote_every`` (>= 1 K tiles) apply to float8 operands on the persistent kernel; the
    tiled kernel always promotes every K tile.
    """

    kernel: str = "auto"
    fp8_accumulation: str = "precise"
    fp8_promote_every: int = 1

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(
                f"Expected `kernel` to be one of {KERNELS}. Received: kernel={describe(self.kernel)}"
            )
        if self.fp8_accumulation not in FP8_ACCUMULATIONS:
            raise ValueError(
                f"Expected `fp8_accumulation` to be one of {FP8_ACCUMULATIONS}. Received: "
                f"fp8_accumulation={describe(self.fp8_accumulation)}"
            )
        every = self.fp8_promote_every
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(
                "Expected `fp8_promote_every` to be a positive int (K tiles per float32 "
                f"promotion). Received: fp8_promote_every={describe(every)}"
            )

    @property
    def fp8_promote(self) -> int:
        """The kernels' ``FP8_PROMOTE`` constexpr: 0 for fast accumulation, else K tiles."""
        return 0 if self.fp8_accumulation == "fast" else self.fp8_promote_every


_DEFAULTS = TritonOptions()
_OPTIONS: ContextVar[TritonOptions | None] = ContextVar("mpq_triton_options", default=None)


def current() -> TritonOptions:
    """The options in force (the innermost ``triton_options`` block, else the defaults)."""
    return _OPTIONS.get() or _DEFAULTS


@contextlib.contextmanager
def triton_options(
    *,
    kernel: str | None = None,
    fp8_accumulation: str | None = None,
    fp8_promote_every: int | None = None,
) -> Iterator[TritonOptions]:
    """Set the Triton matmul options inside the block; unset fields keep the outer value.

    Example::

        >>> with triton_options(kernel="tiled"):
        ...     current().kernel
        'tiled'
    """
    outer = current()
    changes: dict[str, object] = {}
    if kernel is not None:
        changes["kernel"] = kernel
    if fp8_accumulation is not None:
        changes["fp8_accumulation"] = fp8_accumulation
    if fp8_promote_every is not None:
        changes["fp8_promote_every"] = fp8_promote_every
    options = dataclasses.replace(outer, **changes)  # type: ignore[arg-type]
    token = _OPTIONS.set(options)
    try:
        yield options
    finally:
        _OPTIONS.reset(token)


def choose_matmul_kernel(
    kind: str,
    M: int,
    capability: tuple[int, int] | None,
    *,
    tma_ok: bool,
    interpret: bool,
    forced: str = "auto",
) -> str:
    """The kernel ("tiled", "persistent" or "small_m") for one checked matmul call.

    ``kind``: "float32", "float16", "bfloat16", "float8", "int8" (8-bit x 8-bit), "int4" or
    "int8_weight" (weight-only). ``capability``: the CUDA device's, None in the interpreter.
    ``tma_ok``: the operands' layouts meet TMA's rules (``_triton_persistent.tma_compatible``).

    Automatic choice, on sm_90 and later only (older GPUs and the interpreter keep the tiled
    kernel): M <= 16 with a weight-streaming kind -> small_m; M <= 64 -> tiled (it splits K
    for such shapes); a persistent kind with TMA-compatible layouts -> persistent; else tiled.
    The weight-only int8 op exists only as the small-M kernel, so it is always small_m.
    A forced kernel that cannot run the call raises ``ValueError``.
    """
    if forced not in KERNELS:
        raise ValueError(f"Expected `forced` to be one of {KERNELS}. Received: forced={forced!r}")
    small_ok = kind in SMALL_M_KINDS and M <= MAX_SMALL_M
    hopper = capability is not None and capability >= (9, 0)
    if kind == "int8_weight" and forced in ("auto", "small_m"):
        forced = "small_m"
    if forced == "auto":
        if not hopper:
            return "tiled"
        if small_ok:
            return "small_m"
        if M <= SPLIT_K_M or kind not in PERSISTENT_KINDS or not tma_ok:
            return "tiled"
        return "persistent"
    if forced == "small_m" and not small_ok:
        raise ValueError(
            f"Expected M <= {MAX_SMALL_M} and operands of kind {SMALL_M_KINDS} for the small_m "
            f"kernel. Received: M={M}, kind={kind!r}"
        )
    if forced == "persistent":
        if kind not in PERSISTENT_KINDS or not tma_ok:
            raise ValueError(
                f"Expected operands of kind {PERSISTENT_KINDS} in TMA-compatible layouts (last "
                "stride 1, other strides and base pointers 16-byte aligned) for the persistent "
                f"kernel. Received: kind={kind!r}, tma_ok={tma_ok}"
            )
        if not (hopper or interpret):
            raise ValueError(
                "Expected a GPU of compute capability >= 9.0 (TMA) for the persistent kernel. "
                f"Received: capability={capability}"
            )
    if forced == "tiled" and kind == "int8_weight":
        raise ValueError(
            "Expected kernel 'small_m' or 'auto' for the weight-only int8 matmul (it has no "
            "tiled kernel). Received: kernel='tiled'"
        )
    return forced
