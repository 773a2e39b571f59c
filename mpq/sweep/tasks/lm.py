"""The language-model task: a byte-level corpus made of a fixed list of Python standard-library
source files (present offline on every machine), split by file, and a small decoder-only
transformer built from mpq layers (Embedding, Dense attention and MLP, LayerNormalization).

    >>> from mpq.sweep.tasks.lm import tiny_lm
    >>> model = tiny_lm(dtype="float32", dim=32, depth=1, heads=2, context=16)
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from typing import Any

import numpy as np

from mpq.layers import Dense, Embedding, Layer, LayerNormalization, register_layer

__all__ = [
    "TRAIN_FILES",
    "VAL_FILES",
    "CausalSelfAttention",
    "TinyLM",
    "TransformerBlock",
    "corpus",
    "stdlib_bytes",
    "tiny_lm",
]

#: Training files (about 40 KB), relative to the stdlib directory; present in CPython 3.10-3.13.
TRAIN_FILES: tuple[str, ...] = ("textwrap.py", "string.py", "fnmatch.py", "bisect.py")
#: Validation files: held out by file, not by position.
VAL_FILES: tuple[str, ...] = ("csv.py",)

VOCAB = 256  # one token per byte


def _read_files(names: tuple[str, ...], root: str) -> bytes:
    missing = [n for n in names if not os.path.isfile(os.path.join(root, n))]
    if missing:
        raise FileNotFoundError(
            "Expected the Python standard-library sources of the language-model task under "
            f"{root!r} (sysconfig.get_paths()['stdlib']). Received: missing {missing}; "
            "install the Python sources (e.g. Debian's libpython3-stdlib ships them) or pass "
            "stdlib=PATH"
        )
    parts = []
    for n in names:
        with open(os.path.join(root, n), "rb") as f:
            parts.append(f.read())
    return b"\n".join(parts)


def corpus(stdlib: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """`(train_bytes, val_bytes, sha256)`: uint8 arrays of the concatenated train and validation
    files, and a digest of both (the files differ between Python versions; caches key on it)."""
    root = stdlib if stdlib is not None else sysconfig.get_paths()["stdlib"]
    train = _read_files(TRAIN_FILES, root)
    val = _read_files(VAL_FILES, root)
    digest = hashlib.sha256(train + b"\0" + val).hexdigest()[:16]
    return np.frombuffer(train, np.uint8), np.frombuffer(val, np.uint8), digest


def _windows(stream: np.ndarray, context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs `[N, context]` and next-byte targets `[N, context]` (int64) from one byte stream."""
    n = (len(stream) - 1 - context) // stride + 1
    if n < 1:
        raise ValueError(
            f"Expected a corpus longer than context={context} bytes. Received: {len(stream)} bytes"
        )
    starts = np.arange(n) * stride
    idx = starts[:, None] + np.arange(context + 1)[None, :]
    win = stream[idx].astype(np.int64)
    return win[:, :-1], win[:, 1:]


def stdlib_bytes(context: int = 32, stride: int | None = None, stdlib: str | None = None):
    """The task's data (`mpq.sweep.data.Data`): non-overlapping `context`-byte windows (training
    windows may overlap with `stride` < context) of the train files, and of the validation files.

    Example:
        >>> d = stdlib_bytes(context=32)
        >>> d.x_train.shape[1], d.y_test.dtype
        (32, dtype('int64'))
    """
    from mpq.sweep.data import Data

    if not isinstance(context, int) or isinstance(context, bool) or context < 1:
        raise ValueError(f"Expected `context` to be an int >= 1. Received: context={context!r}")
    train, val, _ = corpus(stdlib)
    xtr, ytr = _windows(train, context, stride or context)
    xte, yte = _windows(val, context, context)
    return Data(xtr, ytr, xte, yte, name="stdlib_bytes")


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

    def call(self, x):
        import torch.nn.functional as F

        b, t, _ = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.dim // self.heads).float()
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, head_dim]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, self.dim).to(x.dtype)
        return self.out(y)

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

    def call(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_out(self.mlp_in(self.ln_2(x)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim, "heads": self.heads}


@register_layer("mpq.sweep")
class TinyLM(Layer):
    """Decoder-only byte-level transformer: token + learned position embeddings, `depth` blocks,
    a final LayerNormalization and a Dense head. `[B, T] int64 -> [B, T, 256]` logits."""

    def __init__(self, dim: int = 48, depth: int = 2, heads: int = 4, context: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.depth, self.heads, self.context = dim, depth, heads, context
        self.tok = Embedding(VOCAB, dim, name="tok")
        self.pos = Embedding(context, dim, name="pos")
        self.blocks = [TransformerBlock(dim, heads, name=f"block_{i}") for i in range(depth)]
        for i, blk in enumerate(self.blocks):  # attribute assignment: tracked, named paths
            setattr(self, f"block_{i}", blk)
        self.ln_f = LayerNormalization(name="ln_f")
        self.head = Dense(VOCAB, name="head")

    def call(self, ids):
        import torch

        t = ids.shape[1]
        if t > self.context:
            raise ValueError(
                f"Expected at most context={self.context} tokens. Received: {t} (shape {tuple(ids.shape)})"
            )
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))[None]
        for i in range(self.depth):
            x = getattr(self, f"block_{i}")(x)
        return self.head(self.ln_f(x))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "dim": self.dim,
            "depth": self.depth,
            "heads": self.heads,
            "context": self.context,
        }


def tiny_lm(dtype: Any = None, dim: int = 48, depth: int = 2, heads: int = 4, context: int = 32):
    """The language-model task's model (about 82k parameters at the defaults; `context` must
    not be less than the data's)."""
    return TinyLM(dim=dim, depth=depth, heads=heads, context=context, dtype=dtype, name="tiny_lm")
