"""EinsumDense: a dense layer whose contraction is an einsum equation (Keras 3 semantics).

The kernel and bias shapes, and the output shape, are inferred from the equation, the input
shape and the partial `output_shape`; the product runs through `torch.einsum`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mpq import activations, constraints, initializers, regularizers
from mpq._errors import MAX_SIZE
from mpq.layers.base import Layer
from mpq.layers.lora import LoRAMixin
from mpq.layers.serialization import register_layer
from mpq.layers.variables import Variable

__all__ = ["EinsumDense", "analyze_einsum"]

Shape = tuple[int | None, ...]

_PLAIN = re.compile(r"([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]+)")
_LEFT = re.compile(r"\.\.\.([a-zA-Z]+),([a-zA-Z]+)->\.\.\.([a-zA-Z]+)")
_RIGHT = re.compile(r"([a-zA-Z]{2,})\.\.\.,([a-zA-Z]+)->([a-zA-Z]+)\.\.\.")


@dataclass(frozen=True)
class EinsumShapes:
    """What an einsum equation implies for one input shape."""

    kernel_shape: tuple[int, ...]
    bias_shape: tuple[int, ...] | None
    output_shape: Shape


def analyze_einsum(
    equation: str,
    input_shape: Sequence[int | None],
    output_shape: Sequence[int | None],
    bias_axes: str | None = None,
) -> EinsumShapes:
    """Kernel, bias and full output shapes of `EinsumDense(equation, output_shape, bias_axes)`
    applied to inputs of `input_shape` (batch included; its first entry may be None).

    Equations take one of three forms (Keras 3): `"ab,bc->ac"` (every axis named; the output
    letters cover the batch axis, `output_shape` the rest), `"...b,bc->...c"` (leading axes
    elided; `output_shape` covers the named output letters) or `"ab...,bc->ac..."` (trailing
    axes elided and carried to the end of the output). An entry of `output_shape` may be None
    when its letter also appears in the input: it is then read from the input shape.

    >>> s = analyze_einsum("abc,cd->abd", (None, 7, 16), (None, 32), bias_axes="d")
    >>> s.kernel_shape, s.bias_shape, s.output_shape
    ((16, 32), (32,), (None, 7, 32))
    """
    input_shape = tuple(input_shape)
    partial = list(output_shape)
    form, match = "", None
    for name, pattern in (("plain", _PLAIN), ("left", _LEFT), ("right", _RIGHT)):
        match = pattern.fullmatch(equation)
        if match:
            form = name
            break
    if match is None:
        raise ValueError(
            "Expected an einsum equation of the form 'ab,bc->ac', '...b,bc->...c' or "
            f"'ab...,bc->ac...'. Received: equation={equation!r}"
        )
    in_spec, w_spec, out_spec = match.groups()
    if form == "plain":
        n_elided = 0
        if len(in_spec) != len(input_shape):
            raise ValueError(
                f"Expected inputs of rank {len(in_spec)} for equation {equation!r}. "
                f"Received: input_shape={input_shape}"
            )
    else:
        n_elided = len(input_shape) - len(in_spec)
        if n_elided < (1 if form == "left" else 0):
            raise ValueError(
                f"Expected inputs of rank at least {len(in_spec) + (form == 'left')} for "
                f"equation {equation!r}. Received: input_shape={input_shape}"
            )

    # Where each named letter sits in the input and in the full output.
    if form == "left":
        in_index = {c: n_elided + i for i, c in enumerate(in_spec)}
        expected_partial = len(out_spec)
    else:
        in_index = {c: i for i, c in enumerate(in_spec)}
        expected_partial = len(out_spec) - 1
    if len(partial) != expected_partial:
        raise ValueError(
            f"Expected `output_shape` to have {expected_partial} entries for equation "
            f"{equation!r} (the output axes after the batch axis"
            f"{'' if form == 'plain' else ', elided axes excluded'}). "
            f"Received: output_shape={tuple(partial)}"
        )
    if form == "left":
        full = list(input_shape[:n_elided]) + partial
        out_index = {c: n_elided + i for i, c in enumerate(out_spec)}
    else:
        full = [input_shape[0], *partial]
        if form == "right":
            full += list(input_shape[len(in_spec) :])
        out_index = {c: i for i, c in enumerate(out_spec)}

    for c in out_spec:
        if c not in in_spec and c not in w_spec:
            raise ValueError(
                f"Expected every output letter to appear in the input spec {in_spec!r} or the "
                f"weight spec {w_spec!r}. Received: letter {c!r} in equation {equation!r}"
            )
        i = out_index[c]
        if c in in_index and i > 0:  # index 0 is the batch axis, copied from the input
            size_in = input_shape[in_index[c]]
            if full[i] is None:
                full[i] = size_in
            elif size_in is not None and full[i] != size_in:
                raise ValueError(
                    f"Expected output_shape to agree with the input on the shared axis {c!r} "
                    f"({size_in}). Received: output_shape={tuple(partial)} with "
                    f"input_shape={input_shape}"
                )

    kernel_shape = []
    for c in w_spec:
        size = input_shape[in_index[c]] if c in in_index else None
        if size is None and c in out_index:
            size = full[out_index[c]]
        if size is None:
            raise ValueError(
                f"Expected the size of weight axis {c!r} to be known from the input shape or "
                f"output_shape. Received: equation={equation!r}, input_shape={input_shape}, "
                f"output_shape={tuple(partial)}"
            )
        kernel_shape.append(int(size))

    bias_shape = None
    if bias_axes is not None:
        if not isinstance(bias_axes, str) or not bias_axes:
            raise ValueError(
                f"Expected `bias_axes` to be a non-empty string of output letters or None. "
                f"Received: bias_axes={bias_axes!r}"
            )
        for c in bias_axes:
            if c not in out_spec:
                raise ValueError(
                    f"Expected every bias axis to be an output letter of {out_spec!r}. "
                    f"Received: bias_axes={bias_axes!r}"
                )
        first = min(out_spec.index(c) for c in bias_axes)
        bias = []
        for c in out_spec[first:]:
            if c in bias_axes:
                size = full[out_index[c]]
                if size is None:
                    raise ValueError(
                        f"Expected the size of bias axis {c!r} to be known. "
                        f"Received: input_shape={input_shape}, output_shape={tuple(partial)}"
                    )
                bias.append(int(size))
            else:
                bias.append(1)
        if form == "right":
            bias += [1] * n_elided
        bias_shape = tuple(bias)
    return EinsumShapes(tuple(kernel_shape), bias_shape, tuple(full))


@register_layer("mpq")
class EinsumDense(LoRAMixin, Layer):  # type: ignore[misc]  # apply(): see extras
    """A dense layer computing `activation(einsum(equation, inputs, kernel) + bias)`.

    Args (Keras 3 names and defaults): equation (see `analyze_einsum`), output_shape (int or
    tuple: the output shape without the batch axis and without elided axes; None entries are
    read from the input), activation=None, bias_axes=None (output letters that get a bias),
    kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel/bias regularizers
    and constraints, lora_rank=None / lora_alpha=None (``enable_lora`` at build, see
    ``mpq.layers.lora``).

    Weights: `kernel` (shape from the equation), `bias` (shape from `bias_axes`) or None.
    Runs in the compute dtype (autocast rule "matmul").

    >>> layer = EinsumDense("abc,cde->abde", output_shape=(None, 4, 8), bias_axes="de")
    >>> layer(torch.zeros(2, 5, 16)).shape
    torch.Size([2, 5, 4, 8])
    >>> tuple(layer.kernel.shape), tuple(layer.bias.shape)
    ((16, 4, 8), (4, 8))
    """

    _input_kind = "float"  # see Layer._input_kind

    # Variables from ``build`` (inside ``call`` a read gives the autocast value, a tensor).
    kernel: Variable
    bias: Variable | None

    def __init__(
        self,
        equation: str,
        output_shape: int | Sequence[int | None],
        activation: Any = None,
        bias_axes: str | None = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_lora(lora_rank, lora_alpha)
        if not isinstance(equation, str):
            raise TypeError(
                "Expected `equation` to be a string such as 'ab,bc->ac'. "
                f"Received: equation={equation!r} (of type {type(equation).__name__})"
            )
        if (
            isinstance(output_shape, int)
            and not isinstance(output_shape, bool)
            and 0 < output_shape <= MAX_SIZE
        ):
            partial: tuple[int | None, ...] = (output_shape,)
        elif isinstance(output_shape, (tuple, list)) and all(
            d is None or (isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_SIZE)
            for d in output_shape
        ):
            partial = tuple(output_shape)
        else:
            raise ValueError(
                f"Expected `output_shape` to be a positive int or a tuple of positive ints / "
                f"None (each <= {MAX_SIZE}). Received: output_shape={output_shape!r} "
                f"(of type {type(output_shape).__name__})"
            )
        if bias_axes is not None and not isinstance(bias_axes, str):
            raise TypeError(
                "Expected `bias_axes` to be a string of output letters or None. "
                f"Received: bias_axes={bias_axes!r} (of type {type(bias_axes).__name__})"
            )
        self.equation = equation
        self.partial_output_shape = partial
        self.bias_axes = bias_axes
        self.activation = activations.get(activation)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.full_output_shape: Shape | None = None

    def build(self, input_shape: Sequence[int | None]) -> None:  # type: ignore[override]
        shapes = analyze_einsum(
            self.equation, input_shape, self.partial_output_shape, self.bias_axes
        )
        self.full_output_shape = shapes.output_shape
        self.kernel = self.add_weight(
            shape=shapes.kernel_shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=True,
            name="kernel",
        )
        if shapes.bias_shape is not None:
            self.bias = self.add_weight(
                shape=shapes.bias_shape,
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                trainable=True,
                name="bias",
            )
        else:
            self.bias = None
        self._build_lora()

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        return analyze_einsum(
            self.equation, input_shape, self.partial_output_shape, self.bias_axes
        ).output_shape

    def call(self, inputs: torch.Tensor) -> torch.Tensor:
        kernel: torch.Tensor = self.kernel
        if self._call_hooks:  # LoRA / QAT (mpq.training)
            kernel, inputs = self._call_kernel_and_inputs(kernel, inputs)
        x = torch.einsum(self.equation, inputs, kernel)
        if self.bias is not None:
            x = x + self.bias
        out: torch.Tensor = self.activation(x)
        return out

    def _linear(self, inputs: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return torch.einsum(self.equation, inputs, kernel)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha,
                "output_shape": self.partial_output_shape,
                "equation": self.equation,
                "activation": activations.serialize(self.activation),
                "bias_axes": self.bias_axes,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint),
            }
        )
        return config
