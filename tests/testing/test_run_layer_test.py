"""run_layer_test: built-in layers pass it; layers that break one rule each are caught with a
message naming the layer, the policy and the check; argument errors."""

import pytest
import torch

from mpq.layers.base import Layer
from mpq.layers.dense import Dense
from mpq.layers.quantization import (
    QuantizationScheme,
    register_scheme,
    registered_schemes,
    unregister_scheme,
)
from mpq.testing.layer_test import (
    DEFAULT_POLICIES,
    LayerConformanceError,
    run_layer_test,
)


# ----------------------------------------------------------------------------- a good layer
class Scale(Layer):
    """A user layer written as in the docs: one trainable weight, one non-trainable counter."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), name="w")
        self.calls = self.add_weight(shape=(1,), initializer="zeros", trainable=False, name="calls")

    def call(self, inputs, training=None):
        if training:
            self.calls.assign(self.calls + 1)
        return inputs @ self.w

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_user_layer_passes_and_report_lists_checks():
    report = run_layer_test(Scale, {"units": 2}, (3, 4), expected_output_shape=(3, 2))
    assert list(report.checks) == list(DEFAULT_POLICIES)
    for policy in DEFAULT_POLICIES:
        assert report.passed(policy) == [
            "build/call",
            "output dtype",
            "variable dtypes",
            "compute_output_shape",
            "compute_output_spec",
            "config",
            "get_weights/set_weights",
            "save_own_variables/load_own_variables",
            "stateless_call",
            "gradients",
        ]


@pytest.mark.parametrize(
    ("kwargs", "input_shape", "output_shape"),
    [
        ({"units": 4}, (2, 3), (2, 4)),
        ({"units": 4, "activation": "relu", "use_bias": False}, (2, 5, 3), (2, 5, 4)),
    ],
)
def test_dense_passes(kwargs, input_shape, output_shape):
    run_layer_test(Dense, kwargs, input_shape, expected_output_shape=output_shape)


# ----------------------------------------------------------------------------- broken layers
class OutputAlwaysFloat32(Scale):
    def call(self, inputs, training=None):
        return super().call(inputs, training).float()


class ForgetsConfig(Scale):
    def get_config(self):
        return Layer.get_config(self)


class WrongOutputShape(Scale):
    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units + 1)


class DeadWeight(Scale):
    def build(self, input_shape):
        super().build(input_shape)
        self.unused = self.add_weight(shape=(2,), name="unused")


class Float32Weight(Scale):
    def build(self, input_shape):
        super().build(input_shape)
        self.extra = self.add_weight(shape=(2,), dtype="float32", name="extra")

    def call(self, inputs, training=None):
        return super().call(inputs, training) + self.extra.sum().to(inputs.dtype)


class Nondeterministic(Scale):
    def call(self, inputs, training=None):
        return super().call(inputs, training) + torch.rand(()).to(inputs.dtype)


class NotJsonConfig(Scale):
    def get_config(self):
        return {**super().get_config(), "units": {3}}


@pytest.mark.parametrize(
    ("cls", "policies", "check", "detail"),
    [
        (OutputAlwaysFloat32, ("float32", "bfloat16"), "output dtype", "torch.bfloat16"),
        (ForgetsConfig, ("float32",), "config", "shape"),
        (WrongOutputShape, ("float32",), "compute_output_shape", r"\(3, 3\)"),
        (DeadWeight, ("float32",), "gradients", "unused"),
        (Float32Weight, ("float32", "mixed_float16", "float16"), "variable dtypes", "extra"),
        (Nondeterministic, ("float32",), "config", "differs"),
        (NotJsonConfig, ("float32",), "config", "JSON"),
    ],
)
def test_broken_layers_are_caught(cls, policies, check, detail):
    with pytest.raises(LayerConformanceError, match=detail) as info:
        run_layer_test(cls, {"units": 2}, (3, 4), policies=policies)
    message = str(info.value)
    assert f"run_layer_test({cls.__name__}" in message
    assert f"check {check!r}" in message
    assert isinstance(info.value, AssertionError)


def test_expected_output_shape_mismatch_is_caught():
    with pytest.raises(LayerConformanceError, match=r"expected output shape \(3, 5\)"):
        run_layer_test(Scale, {"units": 2}, (3, 4), expected_output_shape=(3, 5))


def test_weight_counts_are_checked():
    with pytest.raises(LayerConformanceError, match="expected 2 trainable weights"):
        run_layer_test(Scale, {}, (3, 4), expected_num_trainable_weights=2)
    with pytest.raises(LayerConformanceError, match="expected 0 non-trainable weights"):
        run_layer_test(Scale, {}, (3, 4), expected_num_non_trainable_weights=0)


def test_input_data_is_used():
    x = torch.arange(8.0).reshape(2, 4)
    report = run_layer_test(Scale, {}, input_data=x, policies=("float32",))
    assert report.passed("float32")[-1] == "gradients"


# ----------------------------------------------------------------------------- argument errors
def test_argument_errors():
    with pytest.raises(TypeError, match=r"layer_cls=.*\(of type Scale\)"):
        run_layer_test(Scale(), {}, (2, 3))
    with pytest.raises(ValueError, match=r"dtype='float16'"):
        run_layer_test(Scale, {"dtype": "float16"}, (2, 3))
    with pytest.raises(ValueError, match="input_shape"):
        run_layer_test(Scale, {}, None)
    with pytest.raises(ValueError, match=r"input_shape=\(2, None\)"):
        run_layer_test(Scale, {}, (2, None))
    with pytest.raises(ValueError, match=r"input_dtype='int77'"):
        run_layer_test(Scale, {}, (2, 3), input_dtype="int77")
    with pytest.raises(ValueError, match="policy"):
        run_layer_test(Scale, {}, (2, 3), policies=("float13",))


# ----------------------------------------------------------------------------- quantize_modes
class ScaleInt8(QuantizationScheme):
    """A toy per-column int8 scheme for Scale: w ~= w_q * w_scale."""

    def build(self, layer, input_shape, config=None):
        layer.calls = layer.add_weight(
            shape=(1,), initializer="zeros", trainable=False, name="calls"
        )
        self._add_quantized(layer, input_shape[-1])

    def _add_quantized(self, layer, fan_in):
        layer.w_q = layer.add_weight(
            shape=(fan_in, layer.units), dtype="int8", trainable=False, name="w_q"
        )
        layer.w_scale = layer.add_weight(
            shape=(layer.units,), initializer="ones", trainable=False, name="w_scale"
        )

    def quantize(self, layer, config=None):
        w = layer._parameters.pop("w").detach().float()
        scale = w.abs().amax(0).clamp(min=1e-7) / 127
        self._add_quantized(layer, w.shape[0])
        layer.w_q.assign(torch.round(w / scale).clamp(-127, 127).to(torch.int8))
        layer.w_scale.assign(scale)

    def call(self, layer, inputs, training=None):
        return inputs @ (layer.w_q.to(inputs.dtype) * layer.w_scale)


class ScaleInt8Float32Out(ScaleInt8):
    def call(self, layer, inputs, training=None):
        return super().call(layer, inputs, training).float()


@pytest.fixture
def scale_int8():
    def register(scheme):
        register_scheme(Scale, "int8", scheme)

    yield register
    if (Scale, "int8") in registered_schemes():
        unregister_scheme(Scale, "int8")


def test_quantize_modes_run_the_checks_on_the_quantized_layer(scale_int8):
    scale_int8(ScaleInt8)
    report = run_layer_test(
        Scale,
        {"units": 2},
        (3, 4),
        policies=("float32", "mixed_bfloat16"),
        quantize_modes=("int8",),
    )
    assert list(report.checks) == [
        "float32",
        "int8_from_float32",
        "mixed_bfloat16",
        "int8_from_mixed_bfloat16",
    ]
    assert report.passed("int8_from_mixed_bfloat16") == report.passed("float32")
    assert report.skipped == {}


def test_quantize_modes_catch_a_broken_scheme(scale_int8):
    scale_int8(ScaleInt8Float32Out)
    with pytest.raises(
        LayerConformanceError, match=r"policy='int8_from_float16'\), check 'output dtype'"
    ):
        run_layer_test(Scale, {}, (3, 4), policies=("float16",), quantize_modes=("int8",))


def test_quantize_modes_skip_unregistered_modes():
    report = run_layer_test(Scale, {}, (3, 4), policies=("float32",), quantize_modes=("int4",))
    assert list(report.checks) == ["float32"]
    assert "Scale" in report.skipped["int4_from_float32"]
    assert "int4" in report.skipped["int4_from_float32"]


def test_a_policy_map_is_not_a_policy():
    # Each entry of `policies` is one policy; a map is refused up front (it used to fail with
    # an AttributeError on the map's missing `name`).
    from mpq.policy import DTypePolicyMap

    with pytest.raises(TypeError, match=r"Expected each of `policies` to name one dtype policy"):
        run_layer_test(Scale, {}, (2, 3), policies=[DTypePolicyMap("float32")])
