"""Read-only ``torch.nn`` attribute views on mpq layers, so that model code written for the torch
module a layer replaces (``self.wo.weight.dtype``, ``norm1.eps``, ``conv.in_channels``) still runs.

Every view is a property without a setter: assigning raises AttributeError (change the mpq
variables instead). ``weight`` is in torch's layout (``nn.Linear``: ``[out, in]``; ``nn.Conv2d``:
``[out, in/groups, kh, kw]``) and, for a float layer, a view of the live variable (autograd
flows to it). A quantized layer has no float weight: its ``weight`` is a tensor on the ``meta``
device with the torch shape and the layer's variable dtype; it answers ``.shape`` / ``.dtype``
and any arithmetic with it fails loudly instead of computing with a stand-in value.
Names that mean something else in Keras keep their Keras meaning (``Conv.padding``,
``Conv.kernel_size``, ``BatchNormalization.momentum``); see docs/models.md.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["BatchNormViews", "ConvViews", "DenseViews", "EmbeddingViews", "LayerNormViews"]


def _variable_view(layer: Any, name: str, to_torch: Any, torch_shape: Any) -> torch.Tensor:
    """``to_torch(variable)`` for a float layer; a meta tensor of ``torch_shape`` once quantized."""
    var = layer._parameters.get(name)
    if var is not None and layer.__dict__.get("_scheme") is None:
        return to_torch(var)
    return torch.empty(torch_shape(), dtype=layer.dtype_policy.torch_variable_dtype, device="meta")


def _built(layer: Any, what: str) -> None:
    if not layer.built:
        raise AttributeError(
            f"Expected a built layer to read `{what}` from. Received: layer {layer.name!r} with "
            "built=False"
        )


class DenseViews:
    """``nn.Linear`` views of Dense: ``weight [out, in]``, ``in_features``, ``out_features``."""

    @property
    def in_features(self) -> int:
        _built(self, "in_features")
        return int(self.input_spec.axes[-1])

    @property
    def out_features(self) -> int:
        return int(self.units)

    @property
    def weight(self) -> torch.Tensor:
        _built(self, "weight")
        return _variable_view(
            self, "kernel", lambda k: k.t(), lambda: (self.out_features, self.in_features)
        )


class ConvViews:
    """``nn.Conv1d/2d`` views of Conv1D/Conv2D: ``weight [out, in/groups, *k]``, ``in_channels``,
    ``out_channels``, ``stride``, ``dilation``."""

    @property
    def in_channels(self) -> int:
        _built(self, "in_channels")
        return int(self.input_spec.axes[self._channel_axis()])

    @property
    def out_channels(self) -> int:
        return int(self.filters)

    @property
    def stride(self) -> tuple[int, ...]:
        return tuple(self.strides)

    @property
    def dilation(self) -> tuple[int, ...]:
        return tuple(self.dilation_rate)

    @property
    def weight(self) -> torch.Tensor:
        _built(self, "weight")
        rank = self.rank
        dims = (rank + 1, rank, *range(rank))  # Keras [*k, in/g, out] -> torch [out, in/g, *k]
        shape = (self.filters, self.in_channels // self.groups, *self.kernel_size)
        return _variable_view(self, "kernel", lambda k: k.permute(dims), lambda: shape)


class EmbeddingViews:
    """``nn.Embedding`` views: ``weight [num_embeddings, embedding_dim]``, ``num_embeddings``,
    ``embedding_dim``, ``padding_idx`` (set by ``from_torch``, else None)."""

    @property
    def num_embeddings(self) -> int:
        return int(self.input_dim)

    @property
    def embedding_dim(self) -> int:
        return int(self.output_dim)

    @property
    def padding_idx(self) -> int | None:
        return self.__dict__.get("_padding_idx")

    @property
    def weight(self) -> torch.Tensor:
        _built(self, "weight")
        return _variable_view(
            self, "embeddings", lambda e: e, lambda: (self.input_dim, self.output_dim)
        )


class LayerNormViews:
    """``nn.LayerNorm`` views: ``weight`` (gamma), ``bias`` (beta), ``eps``,
    ``normalized_shape``, ``elementwise_affine``."""

    @property
    def eps(self) -> float:
        return float(self.epsilon)

    @property
    def normalized_shape(self) -> tuple[int, ...]:
        _built(self, "normalized_shape")
        return tuple(int(d) for d in self._norm_shape())

    @property
    def elementwise_affine(self) -> bool:
        return bool(self.scale)

    @property
    def weight(self) -> torch.Tensor | None:
        return self._parameters.get("gamma")

    @property
    def bias(self) -> torch.Tensor | None:
        return self._parameters.get("beta")

    def _norm_shape(self) -> tuple[int, ...]:
        for name in ("gamma", "beta"):
            var = self._parameters.get(name)
            if var is not None:
                return tuple(var.shape)
        return tuple(self.input_spec.axes[a] for a in sorted(self.input_spec.axes))


class BatchNormViews:
    """``nn.BatchNorm`` views: ``weight`` (gamma), ``bias`` (beta), ``running_mean``,
    ``running_var``, ``eps``, ``num_features``, ``affine``. (``momentum`` stays Keras':
    ``1 - torch's``.)"""

    @property
    def eps(self) -> float:
        return float(self.epsilon)

    @property
    def num_features(self) -> int:
        _built(self, "num_features")
        return int(self.moving_mean.shape[0])

    @property
    def affine(self) -> bool:
        return bool(self.scale)

    @property
    def weight(self) -> torch.Tensor | None:
        return self._parameters.get("gamma")

    @property
    def bias(self) -> torch.Tensor | None:
        return self._parameters.get("beta")

    @property
    def running_mean(self) -> torch.Tensor:
        return self._parameters["moving_mean"]

    @property
    def running_var(self) -> torch.Tensor:
        return self._parameters["moving_variance"]
