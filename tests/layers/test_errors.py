"""Every bad input of the layer core raises the documented type, naming what it received."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mpq import constraints, initializers, regularizers, saving
from mpq.layers import Dense, InputSpec, Layer, QuantizationScheme, Sequential, register_layer
from mpq.layers import quantization as q
from mpq.layers.input_spec import assert_input_compatibility
from mpq.layers.serialization import serialize
from mpq.layers.variables import to_tensor


class NoCall(Layer):
    pass


class Lazy(QuantizationScheme):
    """Registered but implements nothing."""


def _bad_initializer(shape, dtype=None):
    return torch.zeros(3)


CASES = [
    # layers
    (lambda: NoCall()(torch.ones(1)), NotImplementedError, r"NoCall does not have a `call\(\)`"),
    (
        lambda: Layer().add_weight(shape=(2,), initializer=_bad_initializer, name="w"),
        ValueError,
        r"returned shape \(3,\) for weight 'w'.*Expected: shape=\(2,\)",
    ),
    (lambda: Dense(2).build((4, None)), ValueError, r"Received: input_shape=\(4, None\)"),
    (lambda: InputSpec(axes={"a": 1}), TypeError, r"Received: axes=\{'a': 1\}"),
    (lambda: InputSpec(ndim=2, axes={3: 1}), ValueError, r"Received: axes=\{3: 1\}"),
    (
        lambda: assert_input_compatibility([InputSpec(), InputSpec()], [torch.ones(1)], "pair"),
        ValueError,
        r'Layer "pair" expects 2 input\(s\), but it received 1',
    ),
    (lambda: Sequential().pop(), IndexError, "Received: 0 layers"),
    (lambda: Sequential().build(None), ValueError, "Received: input_shape=None"),
    (
        lambda: Sequential([torch.nn.ReLU()]).get_config(),
        ValueError,
        r"plain torch module \(ReLU\)",
    ),
    (lambda: register_layer("a>b"), ValueError, "Received: package='a>b'"),
    (lambda: register_layer("x")(int), TypeError, r"Received: <class 'int'> \(of type type\)"),
    (lambda: serialize(torch.nn.ReLU()), TypeError, r"\(of type ReLU\)"),
    (lambda: to_tensor(np.array(["a"])), TypeError, "Received: array of dtype <U1"),
    # initializers / regularizers / constraints
    (lambda: initializers.Constant([1.0]), ValueError, r"Received: value=\[1.0\] \(of type list\)"),
    (lambda: initializers.Identity()((2, 3, 4)), ValueError, r"Received: shape=\(2, 3, 4\)"),
    (lambda: initializers.VarianceScaling(scale=0), ValueError, "Received: scale=0"),
    (lambda: initializers.serialize(len), TypeError, r"\(of type builtin_function_or_method\)"),
    (lambda: initializers.Initializer()((2,)), NotImplementedError, "must implement"),
    (lambda: regularizers.serialize(len), TypeError, r"\(of type builtin_function_or_method\)"),
    (lambda: regularizers.deserialize({"class_name": "L3"}), ValueError, "Received: config="),
    (lambda: regularizers.Regularizer()(torch.ones(1)), NotImplementedError, "must implement"),
    (lambda: constraints.serialize(len), TypeError, r"\(of type builtin_function_or_method\)"),
    (lambda: constraints.deserialize({"class_name": "X"}), ValueError, "Received: config="),
]


@pytest.mark.parametrize(("fn", "error", "pattern"), CASES)
def test_error(fn, error, pattern):
    with pytest.raises(error, match=pattern):
        fn()


def test_conflicting_registration():
    @register_layer("conflict")
    class Twin(Layer):
        pass

    first = Twin

    class Twin(Layer):  # same name, different class
        pass

    Twin.__qualname__ = "Other"
    with pytest.raises(
        ValueError, match=r"'conflict>Twin' is already registered.*Received: .*Other"
    ):
        register_layer("conflict")(Twin)
    assert first._registered_name == "conflict>Twin"


def test_scheme_without_methods_raises_naming_the_layer():
    class Target(Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(1,))

        def call(self, x):
            return x

    q.register_scheme(Target, "int8", Lazy)
    try:
        with pytest.raises(NotImplementedError, match=r"Lazy does not implement build.*Target"):
            Target(dtype="int8_from_float32").build((1,))
        layer = Target()
        layer.build((1,))
        with pytest.raises(NotImplementedError, match=r"Lazy does not implement quantize.*Target"):
            layer.quantize("int8")
        with pytest.raises(NotImplementedError, match=r"Lazy does not implement call.*Target"):
            Lazy().call(layer, torch.ones(1))
    finally:
        q.unregister_scheme(Target, "int8")


def test_saving_rejects_invalid_config_json(tmp_path):
    model = Dense(2)
    model.build((None, 3))
    path = tmp_path / "m.safetensors"
    saving.save(model, path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["config"] = "{not json"
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ValueError, match=r"config stored in .* is missing or not valid JSON"):
        saving.load(bad)
    meta["config"] = json.dumps({"class_name": "Dense"})
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ValueError, match="Expected a layer config dict"):
        saving.load(bad)
