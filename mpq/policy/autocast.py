"""Autocast rules as data: for each family of ops, the dtype it runs in under a policy.

Layers consult these rules instead of hard-coding casts, so the table in docs/policies.md is
the whole story. The rules follow PyTorch's autocast op lists (matmul/conv in the low-precision
type; reductions, norms, softmax, losses and transcendental pointwise ops in float32) and Keras 3's
layers (normalization statistics and softmax in float32 under mixed policies).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

__all__ = ["COMPUTE", "FLOAT32", "INPUT", "RULES", "Rule", "op_dtype", "rule", "rules_table"]

COMPUTE = "compute"  # run in the policy's compute dtype
FLOAT32 = "float32"  # run in float32 (or float64 when the input is float64), cast back after
INPUT = "input"  # keep the dtype of the inputs


@dataclass(frozen=True)
class Rule:
    family: str
    dtype: str  # COMPUTE | FLOAT32 | INPUT
    ops: str  # examples, as documentation
    why: str


_RULES = (
    Rule(
        "matmul",
        COMPUTE,
        "linear, matmul, bmm, addmm, einsum (Dense, EinsumDense)",
        "Tensor-core work: the reason to use a low-precision policy. Accumulation is float32 "
        "(int32 for int8) inside the kernel.",
    ),
    Rule(
        "conv",
        COMPUTE,
        "conv1d, conv2d, conv_transpose (Conv1D, Conv2D)",
        "Same as matmul: implicit GEMM with float32 accumulation.",
    ),
    Rule(
        "attention",
        COMPUTE,
        "scaled_dot_product_attention",
        "Fused kernels keep the softmax statistics in float32 internally.",
    ),
    Rule(
        "embedding",
        COMPUTE,
        "embedding lookup (Embedding)",
        "A gather: exact in any dtype; the table is read in the compute dtype.",
    ),
    Rule(
        "normalization",
        FLOAT32,
        "mean/variance of layer_norm, batch_norm, group_norm, rms_norm",
        "Sums of squares lose precision and overflow in float16; statistics run in float32 and "
        "the normalized output is cast back to the compute dtype.",
    ),
    Rule(
        "softmax",
        FLOAT32,
        "softmax, log_softmax",
        "exp overflows float16 and the normalizing sum needs float32.",
    ),
    Rule(
        "loss",
        FLOAT32,
        "cross_entropy, nll_loss, mse_loss, binary_cross_entropy",
        "Losses are reductions over a batch; compute them in float32.",
    ),
    Rule(
        "reduction",
        FLOAT32,
        "sum, mean, prod, cumsum, norm, var, std",
        "Long reductions accumulate rounding error in low precision.",
    ),
    Rule(
        "transcendental",
        FLOAT32,
        "exp, log, pow, reciprocal, rsqrt, softplus",
        "Range and accuracy: PyTorch's autocast runs these in float32.",
    ),
    Rule(
        "elementwise",
        INPUT,
        "add, mul, relu, gelu, silu, sigmoid, tanh, dropout, reshape",
        "Cheap and well-conditioned: no cast, the input dtype is kept.",
    ),
)

RULES: MappingProxyType[str, Rule] = MappingProxyType({r.family: r for r in _RULES})


def rule(family: str) -> str:
    """The rule for an op family: `"compute"`, `"float32"` or `"input"`.

    Example:
        >>> rule("softmax")
        'float32'
    """
    found = RULES.get(family)
    if found is None:
        raise ValueError(
            f"Expected an op family, one of {list(RULES)}. Received: family={family!r}"
        )
    return found.dtype


def op_dtype(family: str, compute_dtype: torch.dtype, input_dtype: torch.dtype) -> torch.dtype:
    """The torch dtype an op of `family` runs in, given the policy's compute dtype and the dtype
    of its input. float32 rules never lower a float64 input (float64 policies stay float64)."""
    kind = rule(family)
    if kind == COMPUTE:
        return compute_dtype
    if kind == INPUT:
        return input_dtype
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def rules_table() -> str:
    """The rules as a Markdown table (the one in docs/policies.md)."""
    lines = ["| op family | runs in | ops | why |", "| --- | --- | --- | --- |"]
    shown = {COMPUTE: "compute dtype", FLOAT32: "float32", INPUT: "input dtype"}
    lines += [f"| {r.family} | {shown[r.dtype]} | {r.ops} | {r.why} |" for r in _RULES]
    return "\n".join(lines)
