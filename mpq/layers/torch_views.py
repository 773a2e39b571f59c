"""Read-only ``torch.nn`` attribute views on mpq layers, so that model code written for the torch
module a layer replaces (``self.wo.weight.dtype``, ``norm1.eps``, ``conv.in_channels``) still runs.

Every view is a property without a setter: assigning raises AttributeError (change the mpq
variables instead). ``weight`` is in torch's layout (``nn.Linear``: ``[out, in]``; ``nn.Conv2d``:
``[out, in/groups, kh, kw]``) and, for a float layer, a view of the live variable (autograd
flows to it). A quantized layer has no float weight: its ``weight`` is a tensor on the ``meta``
device with the torch shape and the layer's variable dtype (a ``NoFloatWeight``); it answers
``.shape`` / ``.dtype`` and any arithmetic with it raises TypeError (never a stand-in value).
Names that mean something else in Keras keep their Keras meaning (``Conv.padding``,
``Conv.kernel_size``, ``BatchNormalization.momentum``); see docs/models.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

import torch

if TYPE_CHECKING:
    from mpq.layers.variables import Variable
    from mpq.policy import DTypePolicy

__all__ = [
    "BatchNormViews",
    "ConvViews",
    "DenseViews",
    "EmbeddingViews",
    "LayerNormViews",
    "NoFloatWeight",
    "no_float_weight",
]


class NoFloatWeight(torch.Tensor):
    """What ``.weight`` of a quantized layer is: a tensor on the ``meta`` device that answers
    ``shape``, ``dtype``, ``device``, ``size()``, ``dim()``, ``numel()`` and
    ``is_floating_point()``; every other torch operation raises TypeError (a torch op given
    a meta weight and CPU inputs may return an uninitialised CPU tensor: never a stand-in
    number)."""

    @classmethod
    def __torch_function__(
        cls,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in _DESCRIPTIVE:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", repr(func))
        raise TypeError(
            "Expected the float weight of a float layer. Received: the `weight` of a quantized "
            f"layer in {name}: it has no float weight (read its quantized variables, or keep "
            "this layer in float)"
        )

    def __repr__(self) -> str:  # type: ignore[override]  # (torch's tensor_contents= unused)
        return f"NoFloatWeight(shape={tuple(self.shape)}, dtype={self.dtype})"


def _getter(name: str) -> Any:
    """The getter of the ``torch.Tensor`` property ``name`` (what ``__torch_function__`` is
    given for a read of it)."""
    return getattr(torch.Tensor, name).__get__


_DESCRIPTIVE = frozenset(
    {
        *(
            _getter(name)
            for name in ("dtype", "shape", "device", "ndim", "requires_grad", "is_meta", "is_cuda")
        ),
        torch.Tensor.size,
        torch.Tensor.dim,
        torch.Tensor.numel,
        torch.Tensor.element_size,
        torch.Tensor.is_floating_point,
    }
)


def no_float_weight(shape: tuple[int, ...], dtype: torch.dtype) -> NoFloatWeight:
    """A :class:`NoFloatWeight` of ``shape`` and ``dtype``."""
    return torch.empty(shape, dtype=dtype, device="meta").as_subclass(NoFloatWeight)


def _variable_view(
    layer: _LayerViews,
    name: str,
    to_torch: Callable[[torch.Tensor], torch.Tensor],
    torch_shape: Callable[[], tuple[int, ...]],
) -> torch.Tensor:
    """``to_torch(variable)`` for a float layer; a :class:`NoFloatWeight` once quantized."""
    var = layer._parameters.get(name)
    if var is not None and layer.quantization_scheme is None:
        return to_torch(var)
    return no_float_weight(tuple(torch_shape()), layer.dtype_policy.torch_variable_dtype)


@overload
def _view(t: torch.Tensor) -> torch.Tensor: ...
@overload
def _view(t: torch.Tensor | None) -> torch.Tensor | None: ...
def _view(t: torch.Tensor | None) -> torch.Tensor | None:
    """A view of a variable (not the variable: assigning it to an attribute cannot re-register
    it under the torch name)."""
    return None if t is None else t.view(t.shape)


if TYPE_CHECKING:

    class _LayerViews:
        """What the views read from the layer they are mixed into (``Layer`` provides it)."""

        __dict__: dict[str, Any]
        _parameters: dict[str, torch.nn.Parameter | None]
        built: bool
        input_spec: Any  # an InputSpec once built, or None
        quantization_scheme: Any  # the attached scheme, None while float

        @property
        def name(self) -> str: ...
        @property
        def dtype_policy(self) -> DTypePolicy: ...
        @dtype_policy.setter
        def dtype_policy(self, value: Any) -> None: ...

else:
    _LayerViews = object  # nothing at run time: the views are mixed into Layer subclasses


def _built(layer: _LayerViews, what: str) -> None:
    # AttributeError, so that hasattr() is False (torch then reports "has no attribute").
    if not layer.built:
        raise AttributeError(
            f"Expected a built layer to read `{what}` from. Received: layer {layer.name!r} with "
            "built=False"
        )


class DenseViews(_LayerViews):
    """``nn.Linear`` views of Dense: ``weight [out, in]``, ``in_features``, ``out_features``."""

    if TYPE_CHECKING:
        units: int

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


class ConvViews(_LayerViews):
    """``nn.Conv1d/2d`` views of Conv1D/Conv2D: ``weight [out, in/groups, *k]``, ``in_channels``,
    ``out_channels``, ``stride``, ``dilation``."""

    if TYPE_CHECKING:
        rank: int
        filters: int
        groups: int
        kernel_size: tuple[int, ...]
        strides: tuple[int, ...]
        dilation_rate: tuple[int, ...]

        def _channel_axis(self) -> int: ...

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


class EmbeddingViews(_LayerViews):
    """``nn.Embedding`` views: ``weight [num_embeddings, embedding_dim]``, ``num_embeddings``,
    ``embedding_dim``, ``padding_idx`` (set by ``from_torch``, else None)."""

    if TYPE_CHECKING:
        input_dim: int
        output_dim: int

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
        return _variable_view(self, "embeddings", _view, lambda: (self.input_dim, self.output_dim))


class _NormAffineViews(_LayerViews):
    """The torch names of a normalization's affine variables: ``weight`` (gamma) and ``bias``
    (beta), read-only views, None when the layer has none."""

    if TYPE_CHECKING:
        epsilon: float
        scale: bool

    @property
    def weight(self) -> torch.Tensor | None:
        return _view(self._parameters.get("gamma"))

    @property
    def bias(self) -> torch.Tensor | None:
        return _view(self._parameters.get("beta"))


class LayerNormViews(_NormAffineViews):
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

    def _norm_shape(self) -> tuple[int, ...]:
        for name in ("gamma", "beta"):
            var = self._parameters.get(name)
            if var is not None:
                return tuple(var.shape)
        return tuple(self.input_spec.axes[a] for a in sorted(self.input_spec.axes))


class BatchNormViews(_NormAffineViews):
    """``nn.BatchNorm`` views: ``weight`` (gamma), ``bias`` (beta), ``running_mean``,
    ``running_var``, ``eps``, ``num_features``, ``affine``. (``momentum`` stays Keras':
    ``1 - torch's``.)"""

    if TYPE_CHECKING:
        moving_mean: Variable

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
    def running_mean(self) -> torch.Tensor | None:  # (as torch's: Optional[Tensor])
        return _view(self._parameters["moving_mean"])

    @property
    def running_var(self) -> torch.Tensor | None:
        return _view(self._parameters["moving_variance"])
