"""`Dense`: ``activation(inputs @ kernel + bias)`` with a Keras-layout kernel ``[input_dim, units]``.

The matmul runs through `mpq.kernels.matmul` (Triton on CUDA, the torch reference on CPU), with
bias and relu/gelu/silu fused into its epilogue.
"""

from __future__ import annotations

from typing import Any

import torch

from mpq import activations, constraints, initializers, kernels, regularizers
from mpq._errors import MAX_SIZE
from mpq.layers.base import Layer
from mpq.layers.input_spec import InputSpec
from mpq.layers.lora import LoRAMixin
from mpq.layers.serialization import register_layer
from mpq.layers.torch_views import DenseViews
from mpq.layers.variables import Variable

__all__ = ["Dense"]


# Input dtypes `mpq.kernels.matmul` covers for float layers (float64 runs in plain torch).
_KERNEL_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
# Activations the kernels' epilogue applies on the float32 accumulator (same formulas).
_FUSED_ACTIVATIONS = {activations.relu: "relu", activations.gelu: "gelu", activations.silu: "silu"}


@register_layer("mpq")
class Dense(DenseViews, LoRAMixin, Layer):  # type: ignore[misc]  # apply(): see extras
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
        lora_rank / lora_alpha: if set, ``enable_lora(lora_rank, lora_alpha)`` at build
            (see ``mpq.layers.lora``: frozen kernel, trainable float32 A and B).
        **kwargs: ``Layer`` arguments (``name``, ``dtype``, ``trainable``, ``autocast``, ...).

    >>> layer = Dense(4, activation="relu")
    >>> layer(torch.ones(2, 3)).shape
    torch.Size([2, 4])
    """

    _input_kind = "float"  # see Layer._input_kind

    # Variables from ``build`` (inside ``call`` a read gives the autocast value, a tensor).
    kernel: Variable
    bias: Variable | None

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
        lora_alpha: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if isinstance(units, bool) or not isinstance(units, int) or not 0 < units <= MAX_SIZE:
            raise ValueError(
                f"Received an invalid value for `units`, expected a positive integer <= {MAX_SIZE}. "
                f"Received: units={units!r}"
            )
        self._init_lora(lora_rank, lora_alpha)
        self.units = units
        self.activation = activations.get(activation)
        # Identity activations cost nothing; relu/gelu/silu run in the matmul's epilogue.
        self._fused_activation = _FUSED_ACTIVATIONS.get(self.activation)
        unfused = self.activation is activations.linear or self._fused_activation is not None
        self._activation_fn = None if unfused else self.activation
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.input_spec = InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape: tuple[int | None, ...]) -> None:  # type: ignore[override]
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
        self._build_lora()

    def call(self, inputs: torch.Tensor, training: bool | None = None) -> torch.Tensor:
        kernel: torch.Tensor = self.kernel
        if self._call_hooks:  # LoRA / QAT (mpq.training)
            kernel, inputs = self._call_kernel_and_inputs(kernel, inputs)
        if inputs.dtype in _KERNEL_DTYPES:
            x = kernels.matmul(inputs, kernel, bias=self.bias, activation=self._fused_activation)
            activation = self._activation_fn
        else:  # float64 is not a kernel dtype: plain torch, same formula
            x = torch.matmul(inputs, kernel)
            x = x if self.bias is None else x + self.bias
            activation = None if self.activation is activations.linear else self.activation
        return x if activation is None else activation(x)

    def _linear(self, inputs: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        if inputs.dtype in _KERNEL_DTYPES:
            return kernels.matmul(inputs, kernel)
        return torch.matmul(inputs, kernel)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*tuple(input_shape)[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
        }
