"""Weightless core layers with Keras 3 arguments: Dropout, Activation, Flatten, Reshape.
They keep their input dtype (the compute dtype, after `__call__`'s autocast) and pass masks on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mpq import activations
from mpq._errors import MAX_SIZE
from mpq._errors import describe as _describe
from mpq.layers import random as _random
from mpq.layers import tracking as _tracking
from mpq.layers.base import Layer
from mpq.layers.serialization import register_layer

__all__ = ["Activation", "Dropout", "Flatten", "Reshape"]

Shape = tuple[int | None, ...]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@register_layer("mpq")
class Dropout(Layer):
    """Zeroes inputs at random with probability `rate` in training, scaling the rest by
    `1 / (1 - rate)`; the identity otherwise.

    Args (Keras 3): rate (float in [0, 1]), noise_shape=None (a shape broadcast against the
    inputs, None entries taken from the inputs: e.g. `(None, 1, None)` drops whole time
    steps), seed=None (an int makes the sequence of masks reproducible: the layer draws from
    a ``SeedGenerator`` whose ``[seed, counter]`` state is a non-trainable variable, listed in
    ``variables`` / ``non_trainable_variables`` so ``stateless_call`` takes and returns it; the
    masks are exact integer hashes of the seed, not of the device's RNG). Without a seed:
    torch's global RNG.

    >>> Dropout(0.5)(torch.ones(2, 3), training=False).tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """

    def __init__(
        self,
        rate: float,
        noise_shape: Sequence[int | None] | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise ValueError(
                f"Expected `rate` to be a float in [0, 1]. Received: rate={_describe(rate)}"
            )
        if noise_shape is not None and not (
            isinstance(noise_shape, (tuple, list))
            and all(d is None or (_is_int(d) and d > 0) for d in noise_shape)
        ):
            raise ValueError(
                "Expected `noise_shape` to be None or a tuple of positive ints / None. "
                f"Received: noise_shape={_describe(noise_shape)}"
            )
        if seed is not None and not _is_int(seed):
            raise TypeError(
                f"Expected `seed` to be an int or None. Received: seed={_describe(seed)}"
            )
        self.rate = float(rate)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.seed = seed
        self.supports_masking = True
        self.seed_generator = None if seed is None else _random.SeedGenerator(seed)
        if self.seed_generator is not None:
            _tracking.set_owner(self.seed_generator.state, self)  # path: "<dropout path>/..."
        self.built = True

    def call(self, inputs: torch.Tensor, training: bool | None = None) -> torch.Tensor:
        if not training or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:
            return torch.zeros_like(inputs)
        if self.noise_shape is None and self.seed is None:
            return F.dropout(inputs, self.rate, training=True)
        shape = inputs.shape if self.noise_shape is None else self._noise_shape(inputs.shape)
        if self.seed_generator is None:
            keep = torch.rand(shape, device=inputs.device)
        else:
            keep = _random.uniform(tuple(shape), self.seed_generator.next(), inputs.device)
        keep = (keep >= self.rate).to(inputs.dtype)
        return inputs * keep * (1.0 / (1.0 - self.rate))

    def _noise_shape(self, shape: torch.Size) -> tuple[int, ...]:
        noise_shape = self.noise_shape if self.noise_shape is not None else tuple(shape)
        if len(noise_shape) != len(shape):
            raise ValueError(
                f"Expected `noise_shape` of rank {len(shape)} to match the inputs. "
                f"Received: noise_shape={self.noise_shape} with inputs.shape={tuple(shape)}"
            )
        return tuple(s if d is None else d for d, s in zip(noise_shape, shape, strict=True))

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"rate": self.rate, "noise_shape": self.noise_shape, "seed": self.seed})
        return config


@register_layer("mpq")
class Activation(Layer):
    """Applies an activation function: a name from `mpq.activations` ("relu", "gelu", ...),
    a callable, or None (identity).

    >>> Activation("relu")(torch.tensor([-1.0, 2.0])).tolist()
    [0.0, 2.0]
    """

    def __init__(self, activation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation = activations.get(activation)
        self.supports_masking = True
        self.built = True

    def call(self, inputs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.activation(inputs)
        return out

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"activation": activations.serialize(self.activation)})
        return config


@register_layer("mpq")
class Flatten(Layer):
    """Flattens every axis but the batch axis: `[N, d1, d2, ...]` -> `[N, d1 * d2 * ...]`.

    Args (Keras 3): data_format=None (-> "channels_last"); with "channels_first" and rank >= 3
    the channel axis is moved last before flattening, so the element order matches a
    channels-last model.

    >>> Flatten()(torch.zeros(2, 3, 4)).shape
    torch.Size([2, 12])
    """

    def __init__(self, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if data_format is None:
            data_format = "channels_last"
        if not isinstance(data_format, str) or data_format.lower() not in (
            "channels_last",
            "channels_first",
        ):
            raise ValueError(
                "Expected `data_format` to be 'channels_last', 'channels_first' or None. "
                f"Received: data_format={_describe(data_format)}"
            )
        self.data_format = data_format.lower()
        self.built = True

    def call(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.ndim < 1:
            raise ValueError(
                f"Expected inputs with a batch axis. Received: inputs.shape={tuple(inputs.shape)}"
            )
        if self.data_format == "channels_first" and inputs.ndim >= 3:
            inputs = inputs.movedim(1, -1)
        return inputs.reshape(inputs.shape[0], -1)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        rest = [d for d in tuple(input_shape)[1:] if d is not None]
        if len(rest) < len(input_shape) - 1:
            return (input_shape[0], None)
        return (input_shape[0], math.prod(rest))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"data_format": self.data_format})
        return config


@register_layer("mpq")
class Reshape(Layer):
    """Reshapes every example to `target_shape` (batch axis excluded; one entry may be -1).

    >>> Reshape((3, -1))(torch.zeros(2, 12)).shape
    torch.Size([2, 3, 4])
    """

    def __init__(self, target_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(target_shape, (tuple, list)) or not all(
            _is_int(d) and (0 < d <= MAX_SIZE or d == -1) for d in target_shape
        ):
            raise ValueError(
                f"Expected `target_shape` to be a tuple of positive ints (<= {MAX_SIZE}) with at "
                "most one -1. "
                f"Received: target_shape={_describe(target_shape)}"
            )
        if list(target_shape).count(-1) > 1:
            raise ValueError(
                "Expected at most one -1 in `target_shape`. "
                f"Received: target_shape={tuple(target_shape)}"
            )
        self.target_shape = tuple(target_shape)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        input_shape = tuple(input_shape)
        if -1 not in self.target_shape:
            known = [d for d in input_shape[1:] if d is not None]
            if len(known) == len(input_shape) - 1 and math.prod(known) != math.prod(
                self.target_shape
            ):
                raise ValueError(
                    f"Expected inputs with {math.prod(self.target_shape)} elements per example "
                    f"for target_shape={self.target_shape}. Received: input_shape={input_shape}"
                )
            return (input_shape[0], *self.target_shape)
        rest = [d for d in input_shape[1:] if d is not None]
        if len(rest) < len(input_shape) - 1:
            return (input_shape[0], *(None if d == -1 else d for d in self.target_shape))
        total = math.prod(rest)
        fixed = math.prod(d for d in self.target_shape if d != -1)
        if total % fixed != 0:
            raise ValueError(
                f"Expected the {total} elements per example to be divisible by {fixed} for "
                f"target_shape={self.target_shape}. Received: input_shape={input_shape}"
            )
        return (input_shape[0], *(total // fixed if d == -1 else d for d in self.target_shape))

    def call(self, inputs: torch.Tensor) -> torch.Tensor:
        out_shape = self.compute_output_shape(tuple(inputs.shape))  # no None: a real shape
        return inputs.reshape([-1 if d is None else d for d in out_shape])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"target_shape": self.target_shape})
        return config
