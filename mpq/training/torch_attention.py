"""`MultiheadAttention`: what ``from_torch`` puts in place of ``torch.nn.MultiheadAttention``:
the same forward contract, with its projections as mpq ``Dense`` layers (``q_proj``, ``k_proj``,
``v_proj``, ``out_proj``) so that policies, ``mpq.quantize`` and calibration reach them.

torch packs the query/key/value projections into one ``in_proj_weight [3E, E]``; here it is
split into three ``[E, E]`` Dense layers (the same products, one GEMM each). Attention itself
(scores, mask, softmax, dropout, weighted sum) runs in torch in the projections' output dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mpq.layers.torch_views import no_float_weight

__all__ = ["MultiheadAttention"]


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward on mpq Dense projections (built by ``from_torch``).

    Attributes read by torch's own Transformer layers are kept: ``embed_dim``, ``num_heads``,
    ``batch_first``, ``dropout``, ``head_dim``, ``_qkv_same_embed_dim``, and
    ``in_proj_weight`` / ``in_proj_bias`` as shape-only ``NoFloatWeight`` tensors (the packed
    float weight no longer exists; they also keep ``TransformerEncoderLayer`` off its fused
    fast path, which would read raw float weights and bypass the mpq layers).
    """

    def __init__(
        self,
        q_proj: nn.Module,
        k_proj: nn.Module,
        v_proj: nn.Module,
        out_proj: nn.Module,
        *,
        embed_dim: int,
        num_heads: int,
        dropout: float,
        batch_first: bool,
        qkv_same_embed_dim: bool,
        has_in_bias: bool,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self._qkv_same_embed_dim = qkv_same_embed_dim
        self._has_in_bias = has_in_bias
        self._dtype = dtype

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return no_float_weight((3 * self.embed_dim, self.embed_dim), self._dtype)

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        if not self._has_in_bias:
            return None
        return no_float_weight((3 * self.embed_dim,), self._dtype)

    def merge_masks(  # torch's API, not used here
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        query: torch.Tensor,
    ) -> tuple[torch.Tensor | None, int | None]:
        raise NotImplementedError(
            "Expected torch's fused attention path to be skipped for mpq's MultiheadAttention. "
            "Received: a call to merge_masks"
        )

    @staticmethod
    def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """A bool mask (True = not allowed) or a float mask (added) as an additive float mask."""
        if mask is None:
            return None
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask, float("-inf")
            )
        if not mask.is_floating_point():
            raise TypeError(
                "Expected an attention mask of dtype bool or a floating dtype. "
                f"Received: mask of dtype {mask.dtype}"
            )
        return mask.to(dtype)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:  # [N, L, E] -> [L, N, E]
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        # sequence first from here: [L, N, E]
        tgt_len, bsz, _ = query.shape
        src_len = key.shape[0]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query)
        k = self.k_proj(key)
        v = self.v_proj(value)
        dtype = q.dtype

        def heads(t: torch.Tensor, length: int) -> torch.Tensor:  # [len, N, E] -> [N, H, len, d]
            return t.reshape(length, bsz, h, d).permute(1, 2, 0, 3)

        q, k, v = heads(q, tgt_len), heads(k.to(dtype), src_len), heads(v.to(dtype), src_len)
        mask = self._additive(attn_mask, dtype)
        if mask is not None:
            mask = mask.reshape(bsz, h, tgt_len, src_len) if mask.dim() == 3 else mask
        elif is_causal:
            mask = torch.triu(
                torch.full((tgt_len, src_len), float("-inf"), dtype=dtype, device=q.device), 1
            )
        kpm = self._additive(key_padding_mask, dtype)
        if kpm is not None:
            kpm = kpm.reshape(bsz, 1, 1, src_len)
            mask = kpm if mask is None else mask + kpm
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, p=self.dropout)
        out = torch.matmul(weights, v)  # [N, H, L, d]
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, h * d)
        out = self.out_proj(out)
        if self.batch_first and not unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            weights = weights.squeeze(0)
        return out, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
