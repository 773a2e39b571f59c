"""The language-model task's model: a small decoder-only transformer built from mpq layers
(Embedding, Dense attention and MLP, LayerNormalization) over a byte-level vocabulary. Its data
is `mpq.sweep.data.stdlib_bytes` (the corpus: `mpq.sweep.tasks.corpus`).

    >>> from mpq.sweep.tasks.lm import tiny_lm
    >>> model = tiny_lm(dtype="float32", dim=32, depth=1, heads=2, context=16)
"""

from __future__ import annotations

from typing import Any

import torch

from mpq.layers import Dense, Embedding, Layer, LayerNormalization, register_layer
from mpq.policy import DTypePolicy

__all__ = ["VOCAB", "CausalSelfAttention", "TinyLM", "TransformerBlock", "tiny_lm"]

VOCAB = 256  # one token per byte


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
@register_layer("mpq.sweep")
class CausalSelfAttention(Layer):
    """Multi-head causal self-attention: one Dense for q, k, v, one for the output. Scores and
    softmax run in float32 (the autocast rule for softmax); the projections in the policy's
    compute dtype (and quantize like any Dense). `[B, T, dim] -> [B, T, dim]`."""

    def __init__(self, dim: int, heads: int, **kwargs: Any):
        super().__init__(**kwargs)
        if dim % heads:
            raise ValueError(f"Expected dim divisible by heads. Received: dim={dim}, heads={heads}")
        self.dim, self.heads = dim, heads
        self.qkv = Dense(3 * dim, name="qkv")
        self.out = Dense(dim, name="out")

    def call(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        b, t, _ = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.dim // self.heads).float()
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, head_dim]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, self.dim).to(x.dtype)
        out: torch.Tensor = self.out(y)
        return out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim, "heads": self.heads}


@register_layer("mpq.sweep")
class TransformerBlock(Layer):
    """Pre-norm block: `x + attn(ln(x))`, then `x + mlp(ln(x))` with a 4x GELU MLP."""

    def __init__(self, dim: int, heads: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.dim, self.heads = dim, heads
        self.ln_1 = LayerNormalization(name="ln_1")
        self.attn = CausalSelfAttention(dim, heads, name="attn")
        self.ln_2 = LayerNormalization(name="ln_2")
        self.mlp_in = Dense(4 * dim, activation="gelu", name="mlp_in")
        self.mlp_out = Dense(dim, name="mlp_out")

    def call(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        out: torch.Tensor = x + self.mlp_out(self.mlp_in(self.ln_2(x)))
        return out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim, "heads": self.heads}


@register_layer("mpq.sweep")
class TinyLM(Layer):
    """Decoder-only byte-level transformer: token + learned position embeddings, `depth` blocks,
    a final LayerNormalization and a Dense head. `[B, T] int64 -> [B, T, 256]` logits."""

    def __init__(
        self, dim: int = 48, depth: int = 2, heads: int = 4, context: int = 32, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.dim, self.depth, self.heads, self.context = dim, depth, heads, context
        self.tok = Embedding(VOCAB, dim, name="tok")
        self.pos = Embedding(context, dim, name="pos")
        self.blocks = [TransformerBlock(dim, heads, name=f"block_{i}") for i in range(depth)]
        for i, blk in enumerate(self.blocks):  # attribute assignment: tracked, named paths
            setattr(self, f"block_{i}", blk)
        self.ln_f = LayerNormalization(name="ln_f")
        self.head = Dense(VOCAB, name="head")

    def call(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        if t > self.context:
            raise ValueError(
                f"Expected at most context={self.context} tokens. Received: {t} (shape {tuple(ids.shape)})"
            )
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))[None]
        for i in range(self.depth):
            x = getattr(self, f"block_{i}")(x)
        logits: torch.Tensor = self.head(self.ln_f(x))
        return logits

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "dim": self.dim,
            "depth": self.depth,
            "heads": self.heads,
            "context": self.context,
        }


def tiny_lm(
    dtype: str | DTypePolicy | None = None,
    dim: int = 48,
    depth: int = 2,
    heads: int = 4,
    context: int = 32,
) -> TinyLM:
    """The language-model task's model (about 82k parameters at the defaults; `context` must
    not be less than the data's)."""
    return TinyLM(dim=dim, depth=depth, heads=heads, context=context, dtype=dtype, name="tiny_lm")
