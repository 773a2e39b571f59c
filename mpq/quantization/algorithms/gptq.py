"""GPTQ (Frantar et al. 2022, arXiv:2210.17323): int4 / int8 codes chosen column by column with
the inverse Hessian of the layer's calibration inputs compensating each rounding error.

Layer by layer in model order: capture the layer's inputs X through the already-quantized model,
``H = 2 X^T X / M``, damp, invert through Cholesky, then quantize columns in blocks, spreading
each column's error over the columns not yet quantized. The codes land in exactly the layout
round-to-nearest produces (same scales/zero-point formulas), so kernels, saving and LoRA are
unchanged. See docs/quantization.md, "Algorithms".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from mpq._errors import describe as _describe
from mpq.quantization.algorithms import _base
from mpq.quantizers import quantize_asymmetric, quantize_symmetric

__all__ = ["GPTQConfig", "gptq_quantize"]


@_base.register_algorithm
@dataclass(frozen=True)
class GPTQConfig(_base.Algorithm):
    """GPTQ options.

    Args:
        percdamp: damping ``percdamp * mean(diag(H))`` added to the diagonal (default 0.01).
        block_size: columns per lazy-update block (default 128; any size gives the same codes
            up to float rounding).
        act_order: quantize columns in order of decreasing ``diag(H)`` (the group scales and
            zero points are then fixed up front from the float weights, "static groups", so the
            stored layout stays that of round-to-nearest).
        min_rows: fewer calibration rows (tokens) reaching a layer raise ValueError (default 32).
        max_damping_tries: when the damped Hessian is not positive definite, the damping is
            multiplied by 10 and Cholesky retried up to this many times (the report names the
            damping used), then ValueError.

    Example:
        >>> GPTQConfig(act_order=True).name
        'gptq'
    """

    algorithm = "gptq"
    modes = ("int4", "int8")

    percdamp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    min_rows: int = 32
    max_damping_tries: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.percdamp, bool) or not isinstance(self.percdamp, (int, float)):
            raise TypeError(
                f"Expected `percdamp` to be a float. Received: percdamp={_describe(self.percdamp)}"
            )
        if not self.percdamp > 0:
            raise ValueError(f"Expected `percdamp` > 0. Received: percdamp={self.percdamp}")
        for arg in ("block_size", "min_rows", "max_damping_tries"):
            value = getattr(self, arg)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"Expected `{arg}` to be an int >= 1. Received: {arg}={_describe(value)}"
                )
        if not isinstance(self.act_order, bool):
            raise TypeError(
                f"Expected `act_order` to be a bool. Received: act_order={_describe(self.act_order)}"
            )

    def apply(self, ctx: _base.AlgorithmContext) -> None:
        cfg = ctx.config
        for layer in ctx.layers:
            h, rows = _base.hessian(ctx.model, layer, ctx.batches)
            if rows < self.min_rows:
                raise ValueError(
                    f"Expected at least min_rows={self.min_rows} calibration rows reaching layer "
                    f"{layer.path!r} for its Hessian. Received: {rows} row(s)"
                )
            w = _base.matrix(layer)
            results = [gptq_quantize(w[s], h[s], cfg, self) for s in range(w.shape[0])]
            ctx.quantize_layer(layer)
            q = torch.stack([r[0] for r in results])
            scale = torch.stack([r[1] for r in results])
            zero = (
                None
                if results[0][2] is None
                else torch.stack([cast(torch.Tensor, r[2]) for r in results])
            )
            _base.store_int_codes(layer, q, scale, zero)
            damping = max(r[3] for r in results)
            if damping > self.percdamp:
                ctx.note(layer.path, f"gptq: damping escalated to percdamp={damping:g}")


def _params(w: torch.Tensor, cfg: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest's scale (and zero point) of ``w [N, k]``, one per row: ``[N, 1]``."""
    w32 = w.to(torch.float32)
    if cfg.mode == "int8":
        return quantize_symmetric(w32, "int8", reduce_axes=-1)[1], None
    if cfg.block_size == -1:
        return quantize_symmetric(w32, "int4", reduce_axes=-1)[1], None
    _, scale, zero = quantize_asymmetric(w32, "int4", reduce_axes=-1)
    return scale, zero


def _round_column(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, qmin: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8, dequantized float64)`` of one column: the float32 arithmetic of
    `quantize_with_scale` and `dequantize`, without their per-call checks (the column loop runs
    K times; `test_gptq_with_a_diagonal_hessian_is_exactly_rtn` checks the codes bit for bit)."""
    v = torch.round(w.to(torch.float32) / scale)
    if zero is not None:
        v = v + zero
    q = v.clamp_(qmin, qmax)
    deq = (q - zero if zero is not None else q) * scale
    return q.to(torch.int8), deq.to(torch.float64)


def _inverse_cholesky(h: torch.Tensor, percdamp: float, tries: int) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of ``(H + damp I)^-1`` and the percdamp used (escalated x10 while
    ``H + damp I`` is not positive definite)."""
    mean_diag = float(torch.diagonal(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    damp = percdamp
    for _ in range(tries + 1):
        chol, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if int(info) == 0:
            # (L L^T)^-1 = L^-T L^-1 through one triangular solve (BLAS-3; torch's
            # cholesky_inverse is ~20x slower on CPU at K = 4096).
            chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
            upper, info = torch.linalg.cholesky_ex(chol_inv.T @ chol_inv, upper=True)
            if int(info) == 0:
                return upper, damp
        damp *= 10
    raise ValueError(
        f"Expected a Hessian that damping makes positive definite. Received: H + damp * "
        f"mean(diag(H)) * I is singular up to percdamp={damp / 10:g} "
        f"(mean(diag(H))={mean_diag:g}); use more or more varied calibration data"
    )


def gptq_quantize(
    w: torch.Tensor, h: torch.Tensor, cfg: Any, options: GPTQConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """GPTQ codes of one ``[N, K]`` matrix for Hessian ``h [K, K]`` (float64).

    Returns ``(q [N, K] int8, scale [N] or [N, G] float32, zero [N, G] int8 or None, percdamp)``
    in round-to-nearest's layout for ``cfg`` (int8 per channel; int4 per channel or grouped).
    """
    w = w.clone().to(torch.float64)
    h = h.clone().to(torch.float64)
    n, k = w.shape
    dead = torch.diagonal(h) == 0  # inputs never seen: no error flows into or out of them
    h[dead, dead] = 1.0
    g = cfg.block_size if cfg.mode == "int4" and cfg.block_size != -1 else None
    groups = 1 if g is None else -(-k // g)
    scale = torch.empty(n, groups, dtype=torch.float32)
    zero = None if g is None else torch.empty(n, groups, dtype=torch.int8)
    fixed = [False] * groups
    if g is None:  # per channel: from the float weights, as round-to-nearest
        s, _ = _params(w, cfg)
        scale[:, 0:1] = s
        fixed[0] = True
    perm = torch.arange(k)
    if options.act_order:
        perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
        if g is not None:  # static groups: parameters from the float weights up front
            for j in range(groups):
                s, z = _params(w[:, j * g : (j + 1) * g], cfg)
                scale[:, j : j + 1] = s
                cast(torch.Tensor, zero)[:, j : j + 1] = cast(torch.Tensor, z)  # grouped
                fixed[j] = True
        w, h = w[:, perm], h[perm][:, perm]
    hinv, damp = _inverse_cholesky(h, options.percdamp, options.max_damping_tries)
    q_all = torch.empty(n, k, dtype=torch.int8)
    qmin, qmax = (-128, 127) if cfg.mode == "int8" else (-8, 7)
    if zero is None:  # symmetric: the range is +-qmax
        qmin = -qmax
    bs = options.block_size
    for i1 in range(0, k, bs):
        i2 = min(i1 + bs, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            j = 0 if g is None else col // g
            if not fixed[j]:  # group start (in order): parameters from the updated weights
                window = torch.cat([w1[:, i:], w[:, i2:]], dim=1)[:, :g]
                s, z = _params(window, cfg)
                scale[:, j : j + 1] = s
                cast(torch.Tensor, zero)[:, j : j + 1] = cast(torch.Tensor, z)  # grouped
                fixed[j] = True
            s = scale[:, j]
            z = None if zero is None else zero[:, j].to(torch.float32)
            wc = w1[:, i : i + 1]
            q, deq = _round_column(wc[:, 0], s, z, qmin, qmax)
            q_all[:, col] = q
            e = (wc - deq.unsqueeze(1)) / hinv1[i, i]
            w1[:, i:] -= e * hinv1[i, i:].unsqueeze(0)
            err1[:, i : i + 1] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if g is None:
        return q_all, scale[:, 0], None, damp
    return q_all, scale, zero, damp
