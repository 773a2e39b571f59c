"""`Dense`: ``activation(inputs @ kernel + bias)`` with a Keras-layout kernel ``[input_dim, units]``.

The matmul goes through one private function, ``_matmul``, to be pointed at
``mpq.kernels.matmul`` when the kernel dispatcher lands.
"""

from __future__ import annotations

from typing import Any

import torch

from mpq import activations, constraints, initializers, regularizers
from mpq.layers.base import Layer
from mpq.layers.input_spec import InputSpec
from mpq.layers.serialization import register_layer

__all__ = ["Dense"]


def _matmul(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ kernel + bias`` for ``x [..., K]``, ``kernel [K, N]``, ``bias [N]`` -> ``[..., N]``.

    2D inputs use one fused addmm; others are flattened to 2D (a view when contiguous).
    The gradient of ``kernel`` comes out contiguous in its ``[K, N]`` layout (no extra copy).
    """
    if x.dim() == 2:
        return torch.mm(x, kernel) if bias is None else torch.addmm(bias, x, kernel)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.mm(x2, kernel) if bias is None else torch.addmm(bias, x2, kernel)
    return out.reshape(*lead, kernel.shape[-1])


@register_layer("mpq")
class Dense(Layer):
    """Densely connected layer: ``outputs = activation(inputs @ kernel + bias)``.

    Shapes: inputs ``[..., input_dim]`` -> outputs ``[..., units]``; ``kernel`` is
    ``[input_dim, units]`` (Keras layout), ``bias`` is ``[units]``.

    Args:
        units: positive int, output size.
        activation: name (relu, gelu, silu, sigmoid, tanh, softmax, linear) or callable.
        use_bias: whether to add ``bias``.
        kernel_initializer / bias_initializer: initializer names, configs or objects.
        kernel_regularizer / bias_regularizer / activity_regularizer: regularizers.
        kernel_constraint / bias_constraint: constraints (see ``mpq.constraints.apply_constraints``).
        lora_rank: not supported yet (must be None).
        **kwargs: ``Layer`` arguments (``name``, ``dtype``, ``trainable``, ``autocast``, ...).

    >>> layer = Dense(4, activation="relu")
    >>> layer(torch.ones(2, 3)).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        units: int,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        lora_rank: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if isinstance(units, bool) or not isinstance(units, int) or units <= 0:
            raise ValueError(
                "Received an invalid value for `units`, expected a positive integer. "
                f"Received: units={units!r}"
            )
        if lora_rank is not None:
            raise NotImplementedError(
                f"Dense(lora_rank=...) is not supported yet. Received: lora_rank={lora_rank!r}"
            )
        self.units = units
        self.activation = activations.get(activation)
        # Identity activations are skipped on the hot path.
        self._activation_fn = None if self.activation is activations.linear else self.activation
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.lora_rank = lora_rank
        self.input_spec = InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"The last dimension of the inputs to Dense {self.name!r} must be known. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_dim, self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self.input_spec = InputSpec(min_ndim=2, axes={-1: int(input_dim)})

    def call(self, inputs: torch.Tensor, training: bool | None = None) -> torch.Tensor:
        x = _matmul(inputs, self.kernel, self.bias)
        activation = self._activation_fn
        return x if activation is None else activation(x)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*tuple(input_shape)[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": _serialize(initializers, self.kernel_initializer),
            "bias_initializer": _serialize(initializers, self.bias_initializer),
            "kernel_regularizer": _serialize(regularizers, self.kernel_regularizer),
            "bias_regularizer": _serialize(regularizers, self.bias_regularizer),
            "kernel_constraint": _serialize(constraints, self.kernel_constraint),
            "bias_constraint": _serialize(constraints, self.bias_constraint),
            "lora_rank": self.lora_rank,
        }


def _serialize(module: Any, obj: Any) -> Any:
    if obj is None:
        return None
    try:
        return module.serialize(obj)
    except TypeError as e:
        raise ValueError(
            f"Cannot serialize {obj!r}: use a built-in {module.__name__} object or name."
        ) from e
