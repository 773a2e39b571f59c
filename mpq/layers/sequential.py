"""`Sequential`: a plain stack of layers, each feeding the next (Keras 3 API, torch container).

Layers are registered as submodules ``"0"``, ``"1"``, ... so ``state_dict`` keys
(``"0.kernel"``) match between two models built from the same code or config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from mpq._errors import check_config_depth
from mpq._errors import describe as _describe
from mpq.layers import serialization
from mpq.layers.base import Layer
from mpq.layers.building import as_shape as _as_shape
from mpq.layers.functional import InputLayer
from mpq.layers.node import SymbolicTensor
from mpq.layers.serialization import register_layer

__all__ = ["Sequential"]


def _output_shape(layer: torch.nn.Module, shape: Any) -> Any:
    """``layer``'s output shape: ``compute_output_shape`` for an mpq layer, a meta-device run
    (unknown sizes as 1) for a plain torch module."""
    if isinstance(layer, Layer):
        return layer.compute_output_shape(shape)
    dims = tuple(1 if d is None else d for d in shape)
    with torch.no_grad():
        return tuple(layer(torch.empty(dims, device="meta")).shape)


@register_layer("mpq")
class Sequential(Layer):
    """A stack of layers called in order: ``x = layer_n(...layer_1(x))``.

    Args:
        layers: optional list of layers to add.
        name, dtype, trainable: as for ``Layer`` (layers without their own ``dtype`` inherit
            the Sequential's policy).

    >>> from mpq.layers import Dense
    >>> model = Sequential([Dense(8, activation="relu"), Dense(1)])
    >>> model(torch.ones(4, 3)).shape
    torch.Size([4, 1])
    """

    _build_input_shape: Any  # the shape the model was built with (None: not yet)

    def __init__(
        self,
        layers: list[Any] | None = None,
        trainable: bool = True,
        name: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(trainable=trainable, name=name, **kwargs)
        self.__dict__["_build_input_shape"] = None
        for layer in layers or ():
            self.add(layer)

    # ------------------------------------------------------------------ container
    def add(self, layer: Any) -> None:
        """Append ``layer`` (an mpq Layer or any ``torch.nn.Module``). An ``Input(shape)``
        tensor or an ``InputLayer``, first, gives the input shape (Keras
        ``Sequential([Input((16,)), Dense(8)])``): the layers then build as they are added,
        and the InputLayer itself is not one of ``layers``."""
        if isinstance(layer, SymbolicTensor):
            producer = layer.node.operation if layer.node is not None else None
            if not isinstance(producer, InputLayer):
                raise TypeError(
                    "Expected the output of Input(...) to start a Sequential model. Received: "
                    f"{layer!r}, made by {type(producer).__name__}"
                )
            layer = producer
        if isinstance(layer, InputLayer):
            if self._modules or self._build_input_shape is not None:
                raise ValueError(
                    "Expected an Input / InputLayer only as the first layer of a Sequential "
                    f"model. Received: {layer.name!r} after {len(self._modules)} layer(s)"
                )
            self.__dict__["_build_input_shape"] = layer.batch_shape
            return
        if not isinstance(layer, torch.nn.Module):
            raise TypeError(
                "Only instances of mpq.layers.Layer (or torch.nn.Module) can be added to a "
                f"Sequential model. Received: {layer!r} (of type {type(layer).__name__})"
            )
        if isinstance(layer, Layer):
            names = {m.name for m in self._modules.values() if isinstance(m, Layer)}
            if layer.name in names:
                raise ValueError(
                    "All layers added to a Sequential model should have unique names. "
                    f"Name {layer.name!r} is already the name of a layer in this model."
                )
        first = len(self._modules) == 0
        setattr(self, str(len(self._modules)), layer)
        shape = self._build_input_shape
        if first and isinstance(layer, Layer) and layer.__dict__.get("_input_shape_arg"):
            shape = layer._input_shape_arg
        if shape is not None:
            self.build(shape)  # known input shape: build the new layer now (Keras)
        else:
            self.__dict__["built"] = False

    def pop(self) -> torch.nn.Module:
        """Remove and return the last layer."""
        if not self._modules:
            raise IndexError("pop from an empty Sequential model. Received: 0 layers")
        key = str(len(self._modules) - 1)
        layer = self._modules.pop(key)
        if isinstance(layer, Layer):
            layer.__dict__["_parent"] = None
        if layer is None:
            raise IndexError(f"Sequential {self.name!r} has no layer at position {key}.")
        return layer

    def _children(self) -> list[torch.nn.Module]:
        return [m for m in self._modules.values() if m is not None]

    @property
    def layers(self) -> list[torch.nn.Module]:  # type: ignore[override]  # plain torch modules too
        return self._children()

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[torch.nn.Module]:
        return iter(self._children())

    def __getitem__(self, index: int | slice) -> Any:
        layers = self._children()
        if isinstance(index, slice):
            return layers[index]
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(
                f"Expected an int or a slice to index a Sequential model. Received: "
                f"index={index!r} (of type {type(index).__name__})"
            )
        if not -len(layers) <= index < len(layers):
            raise IndexError(
                f"Sequential {self.name!r} has {len(layers)} layers. Received: index={index}"
            )
        return layers[index]

    # ------------------------------------------------------------------ build / call
    def build(self, input_shape: Any = None) -> None:
        if input_shape is None:
            raise ValueError(
                f"Sequential {self.name!r} needs an input shape to build. Received: input_shape=None"
            )
        shape = _as_shape(input_shape)
        self.__dict__["_build_input_shape"] = shape
        for layer in self._children():
            if isinstance(layer, Layer) and not layer.built:
                layer.build(shape)
            shape = _output_shape(layer, shape)

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        x = inputs
        for layer in self._children():
            if isinstance(layer, Layer):
                x = layer(x, training=training) if training is not None else layer(x)
            else:
                x = layer(x)
        return x

    def compute_output_shape(self, input_shape: Any) -> Any:
        shape = _as_shape(input_shape)
        for layer in self._children():
            shape = _output_shape(layer, shape)
        return shape

    # ------------------------------------------------------------------ config / summary
    def get_config(self) -> dict[str, Any]:
        for layer in self._children():
            if not isinstance(layer, Layer):
                raise ValueError(
                    f"Sequential {self.name!r} holds a plain torch module "
                    f"({type(layer).__name__}); only mpq layers can be serialized."
                )
        config = super().get_config()
        config["layers"] = [serialization.serialize(layer) for layer in self._children()]
        shape = self._build_input_shape
        if shape is not None:
            config["build_input_shape"] = shape
        return config

    @classmethod
    def from_config(
        cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
    ) -> Sequential:
        check_config_depth(config)
        if not isinstance(config, dict):
            raise TypeError(
                f"Expected a config dict for Sequential. Received: config={_describe(config)}"
            )
        from mpq.layers import keras_config  # a Keras 3.15 config (InputLayer first) too

        config = dict(keras_config.translate_layer_config(cls.__name__, config))
        layer_configs = config.pop("layers", [])
        build_shape = config.pop("build_input_shape", None)
        model = cls(**config)
        for layer_config in layer_configs:
            model.add(serialization.deserialize(layer_config, custom_objects))
        if build_shape is not None and not model.built:
            model.build(_as_shape(build_shape))
        return model

    def summary(self, print_fn: Callable[[str], Any] = print) -> None:
        """Print one row per layer: name (class), output shape, parameter count, policy."""
        shape = self._build_input_shape
        rows = []
        for layer in self._children():
            out = "?"
            if shape is not None:
                try:
                    shape = _output_shape(layer, shape)
                    out = str(shape)
                except Exception:  # a layer that cannot infer shapes: show '?'
                    shape = None
            built = layer.built if isinstance(layer, Layer) else True
            if not built:
                params = "unbuilt"
            elif isinstance(layer, Layer):  # weights only: no seed-generator or metric state
                params = str(sum(w.numel() for w in layer.weights))
            else:
                params = str(sum(p.numel() for p in layer.parameters()))
            if isinstance(layer, Layer):
                name, policy = layer.name, layer.dtype_policy.name
            else:
                name, policy = type(layer).__name__.lower(), "-"
            rows.append((f"{name} ({type(layer).__name__})", out, params, policy))
        header = ("Layer (type)", "Output Shape", "Param #", "Policy")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        line = "  ".join("-" * w for w in widths)
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        total = sum(w.numel() for w in self.weights)
        trainable = sum(w.numel() for w in self.trainable_weights)
        print_fn(f'Model: "{self.name}"  (policy {self.dtype_policy.name})')
        print_fn(line)
        print_fn(fmt.format(*header))
        print_fn(line)
        for row in rows:
            print_fn(fmt.format(*row))
        print_fn(line)
        print_fn(
            f"Total params: {total}  (trainable: {trainable}, non-trainable: {total - trainable})"
        )
