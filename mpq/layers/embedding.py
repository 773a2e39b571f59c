"""Embedding: integer indices to dense vectors (Keras 3 `Embedding`), with `mask_zero` masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mpq import constraints, initializers, regularizers
from mpq._errors import MAX_SIZE
from mpq.layers.base import Layer
from mpq.layers.lora import LoRAMixin
from mpq.layers.serialization import register_layer
from mpq.layers.torch_views import EmbeddingViews

__all__ = ["Embedding"]

Shape = tuple[int | None, ...]


def _positive_int(value: Any, name: str) -> int:
    if (
        not isinstance(value, (int, np.integer))
        or isinstance(value, bool)
        or not 0 < value <= MAX_SIZE
    ):
        raise ValueError(
            f"Expected `{name}` to be a positive int <= {MAX_SIZE}. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
    return int(value)


@register_layer("mpq")
class Embedding(EmbeddingViews, LoRAMixin, Layer):  # type: ignore[misc]  # apply(): see extras
    """Looks up rows of an `[input_dim, output_dim]` table: `[...]` ints -> `[..., output_dim]`.

    Args (Keras 3 names and defaults): input_dim (vocabulary size), output_dim,
    embeddings_initializer="uniform" (uniform in [-0.05, 0.05]), embeddings_regularizer=None,
    embeddings_constraint=None, mask_zero=False (index 0 is padding: `compute_mask` returns
    `inputs != 0`, and input_dim must count it), weights=None (a list with the initial
    `[input_dim, output_dim]` table; the layer is then built at once).
    lora_rank=None, lora_alpha=None: `enable_lora(lora_rank, lora_alpha)` at build (below).

    Weights: `embeddings` [input_dim, output_dim] in the variable dtype. The lookup gathers
    rows of the variable-dtype table and casts only the gathered rows to the compute dtype
    (autocast rule "embedding": a gather is exact, so this equals a lookup in a cast table,
    without casting the whole table each call). Float indices are truncated to int64.

    LoRA (Keras 3): `enable_lora(rank, lora_alpha=None)` freezes `embeddings` and adds trainable
    float32 `lora_embeddings_a` [input_dim, rank] (he_uniform) and `lora_embeddings_b`
    [rank, output_dim] (zeros); a lookup returns `embeddings[ids] + (lora_alpha / rank) *
    (lora_embeddings_a[ids] @ lora_embeddings_b)` (only the looked-up rows of A are multiplied),
    float or quantized (int8, int4, float8 tables); `merge_lora()` folds the update into the
    table (quantized: requantized with the layer's scheme). See docs/training.md, "LoRA".

    >>> layer = Embedding(10, 4, mask_zero=True)
    >>> ids = torch.tensor([[1, 2, 0]])
    >>> layer(ids).shape, layer.compute_mask(ids).tolist()
    (torch.Size([1, 3, 4]), [[True, True, False]])
    """

    _input_kind = "index"  # see Layer._input_kind
    _lora_target = "embeddings"  # LoRA adapts the table (mpq.layers.lora)
    _lora_autocast = False  # the factors read in float32, as the table does

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        embeddings_initializer: Any = "uniform",
        embeddings_regularizer: Any = None,
        embeddings_constraint: Any = None,
        mask_zero: bool = False,
        weights: Sequence[Any] | None = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_lora(lora_rank, lora_alpha)
        self.input_dim = _positive_int(input_dim, "input_dim")
        self.output_dim = _positive_int(output_dim, "output_dim")
        # Keras' "uniform" alias: RandomUniform(-0.05, 0.05)
        if embeddings_initializer == "uniform":
            embeddings_initializer = "random_uniform"
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = constraints.get(embeddings_constraint)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        if weights is not None:
            self.build()
            if not isinstance(weights, (list, tuple)):
                weights = [weights]
            self.set_weights(list(weights))

    def build(self, input_shape: Sequence[int | None] | None = None) -> None:
        self.embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim),
            initializer=self.embeddings_initializer,
            regularizer=self.embeddings_regularizer,
            constraint=self.embeddings_constraint,
            trainable=True,
            autocast=False,
            name="embeddings",
        )
        self._build_lora()

    def call(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dtype not in (torch.int32, torch.int64):
            inputs = inputs.to(torch.int64)
        out = F.embedding(inputs, self.embeddings)
        if self.lora_enabled:
            # float32 term; torch promotion adds it in max(variable dtype, float32)
            out = out + self._lora_rows(inputs)
        return out.to(self.dtype_policy.torch_compute_dtype)

    def _lora_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """``(lora_alpha / rank) * lora_embeddings_a[ids] @ lora_embeddings_b`` in float32."""
        a, b = self._lora_factors()
        term = torch.matmul(F.embedding(ids, a), b)
        scaling = self._lora_scaling()
        return term * scaling if scaling != 1 else term

    def lora_output(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """The LoRA rows of a lookup (float32), None without LoRA: a quantized table's scheme
        adds them to the dequantized rows before the cast to the compute dtype."""
        if not self.lora_enabled:
            return None
        ids = inputs if inputs.dtype in (torch.int32, torch.int64) else inputs.to(torch.int64)
        return self._lora_rows(ids)

    def compute_mask(
        self, inputs: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        if not self.mask_zero:
            return None
        return inputs != 0

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        return (*tuple(input_shape), self.output_dim)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "embeddings_initializer": initializers.serialize(self.embeddings_initializer),
                "embeddings_regularizer": regularizers.serialize(self.embeddings_regularizer),
                "embeddings_constraint": constraints.serialize(self.embeddings_constraint),
                "mask_zero": self.mask_zero,
                "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha,
            }
        )
        return config
