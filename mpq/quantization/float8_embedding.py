"""The ``"float8"`` mode of Embedding: a weight-only float8_e4m3fn table with one float32
dequantization scale per row (per token); a lookup gathers rows and dequantizes only those.

No delayed scaling: a lookup has no activations to scale, and the table's scales are computed
once from the table itself, so the policy's ``amax_history_length`` plays no part here. Stored
(non-trainable): ``embeddings`` float8_e4m3fn ``[V, D]`` and ``embeddings_scale`` float32 ``[V]``.
See docs/quantization.md, "Layer modes".
"""

from __future__ import annotations

from typing import Any

import torch

from mpq.layers import Embedding
from mpq.layers import quantization as _registry
from mpq.layers.quantization import QuantizableLayer
from mpq.quantization import _common as C
from mpq.quantization.config import QuantizationConfig
from mpq.quantizers import dequantize_float8, float8_max, quantize_float8

__all__ = ["TABLE_FORMAT", "Float8EmbeddingScheme", "quantize_table"]

TABLE_FORMAT = "float8_e4m3fn"
# Floor of a row's abs-max before the division, as for the integer quantizers (float32(1e-7)):
# an all-zero row gets a positive scale and codes 0.
_EPS = 1e-7


def quantize_table(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize an embedding table ``[V, D]`` to float8_e4m3fn with one scale per row.

    In float32 (float16/bfloat16 widened exactly, float64 rounded first)::

        absmax = max_j |table[i, j]|
        scale  = max(absmax, 1e-7) / 448                    float32, one per row
        q      = cast_e4m3fn(clip(table / scale, -448, 448))  round to nearest even

    The clip is explicit (``mpq.quantizers.quantize_float8``): ``table / scale`` may round to
    just above 448 at a row's abs-max element.

    Args:
        table: finite floating tensor ``[V, D]``.

    Returns:
        ``(q, scale)``: ``q`` float8_e4m3fn ``[V, D]``, ``scale`` float32 ``[V]``.

    Raises:
        ValueError: ``table`` has non-finite elements (their rows would dequantize to NaN).

    Example:
        >>> q, s = quantize_table(torch.tensor([[896.0, -3.5], [0.0, 0.0]]))
        >>> q.float().tolist(), s.tolist()
        ([[448.0, -1.75], [0.0, 0.0]], [2.0, 2.2321429427041295e-10])
    """
    w32 = table.detach().to(torch.float32)
    bad = int((~torch.isfinite(w32)).sum())
    if bad:
        raise ValueError(
            "Expected a finite embedding table to quantize to float8. "
            f"Received: a table with {bad} non-finite element(s) (NaN or inf)"
        )
    fmt_max = torch.tensor(float8_max(TABLE_FORMAT), dtype=torch.float32)
    absmax = torch.amax(w32.abs(), dim=-1)
    scale = torch.clamp_min(absmax, _EPS) / fmt_max
    return quantize_float8(w32, scale.unsqueeze(-1), TABLE_FORMAT), scale


class Float8EmbeddingScheme(C.Scheme):
    """Embedding in float8: the table as float8_e4m3fn codes with per-row float32 scales."""

    def convert(
        self, layer: QuantizableLayer, cfg: QuantizationConfig, form: Any, values: bool
    ) -> None:
        shape = tuple(form.stored_shape)
        q = scale = None
        if values:
            q, scale = quantize_table(C.float_kernel(layer))
        C.replace_kernel(
            layer,
            {
                "embeddings": (shape, torch.float8_e4m3fn, q, "zeros", None),
                "embeddings_scale": (shape[:1], torch.float32, scale, "ones", C.POSITIVE_FINITE),
            },
        )

    def call(
        self, layer: QuantizableLayer, inputs: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        kwargs.pop("training", None)  # nothing to update: the table's scales are fixed
        ids = C.embedding_ids(inputs)
        table, scale = C.read(layer, "embeddings"), C.read(layer, "embeddings_scale")
        rows = table[ids]  # [..., D] float8: only the looked-up rows are dequantized
        row_scale = scale[ids].unsqueeze(-1)
        return C.embedding_output(
            layer, ids, lambda dtype: dequantize_float8(rows, row_scale, dtype)
        )

    def dequantized_kernel(self, layer: QuantizableLayer) -> torch.Tensor:
        """The float8 codes times their row scales in float32 ``[V, D]`` (``merge_lora``
        requantizes ``this + delta`` with ``quantize_table``)."""
        table = C.variable(layer, "embeddings").detach()
        scale = C.variable(layer, "embeddings_scale").detach()
        return dequantize_float8(table, scale.unsqueeze(-1), torch.float32)


_registry.register_scheme(Embedding, "float8", Float8EmbeddingScheme())
