"""The quantization-scheme registry and the Layer hooks that go through it.

The schemes themselves come later; here a toy int8 scheme on a test layer shows that quantize,
the dtype_policy setter, building under a quantized policy and deserialization all use it.
"""

from __future__ import annotations

import pytest
import torch

from mpq.layers import Layer, QuantizationScheme, Sequential, deserialize, serialize
from mpq.layers import quantization as q
from mpq.layers.serialization import register_layer


@register_layer("tests")
class TinyLinear(Layer):
    def __init__(self, units=2, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")

    def call(self, x):
        return x @ self.kernel


class ToyInt8(QuantizationScheme):
    """Per-tensor symmetric int8 weights, dequantized in call (enough to exercise the hooks)."""

    def __init__(self):
        self.calls = []

    def _add_qweights(self, layer, shape):
        layer.kernel_q = layer.add_weight(
            shape=shape, dtype="int8", trainable=False, name="kernel_q", initializer="zeros"
        )
        layer.kernel_scale = layer.add_weight(
            shape=(), trainable=False, name="kernel_scale", initializer="ones"
        )

    def build(self, layer, input_shape, config=None):
        self.calls.append("build")
        self._add_qweights(layer, (input_shape[-1], layer.units))

    def quantize(self, layer, config=None):
        self.calls.append("quantize")
        w = layer.kernel.detach()
        scale = w.abs().max() / 127
        del layer._parameters["kernel"]
        self._add_qweights(layer, tuple(w.shape))
        layer.kernel_q.assign(torch.round(w / scale).to(torch.int8))
        layer.kernel_scale.assign(scale)

    def call(self, layer, x):
        self.calls.append("call")
        return x @ (layer.kernel_q.to(x.dtype) * layer.kernel_scale.to(x.dtype))


@pytest.fixture
def toy_scheme():
    scheme = ToyInt8()
    q.register_scheme(TinyLinear, "int8", scheme)
    yield scheme
    q.unregister_scheme(TinyLinear, "int8")


def test_no_scheme_raises_not_implemented_naming_class_and_mode():
    # TinyLinear has no scheme outside the toy fixture (Dense has real ones: mpq.quantization).
    layer = TinyLinear(2)
    layer.build((None, 3))
    with pytest.raises(
        NotImplementedError, match=r"Layer TinyLinear has no quantization scheme for mode='int8'"
    ):
        layer.quantize("int8")
    with pytest.raises(NotImplementedError, match=r"TinyLinear.*mode='int4'"):
        layer.dtype_policy = "int4_from_float32"
    with pytest.raises(NotImplementedError, match=r"TinyLinear.*mode='float8'"):
        TinyLinear(2, dtype="float8_from_float32")(torch.ones(1, 3))
    with pytest.raises(
        NotImplementedError, match=r"TinyLinear is not quantized.*Received: mode=None"
    ):
        layer.quantized_call(torch.ones(1, 3))
    with pytest.raises(TypeError, match=r"Received: mode=8 \(of type int\)"):
        layer.quantize(8)


def test_quantize_goes_through_the_registry(toy_scheme):
    layer = TinyLinear(3)
    x = torch.randn(4, 5)
    y_float = layer(x).detach()
    layer.quantize("int8")
    assert toy_scheme.calls == ["quantize"]
    assert layer.quantization_mode == "int8"
    assert layer.dtype_policy.name == "int8_from_float32"
    assert [w.name for w in layer.weights] == ["kernel_q", "kernel_scale"]
    y_q = layer(x)
    assert toy_scheme.calls[-1] == "call"
    assert (y_q - y_float).abs().max() < 0.05 * y_float.abs().max()
    with pytest.raises(ValueError, match="already quantized"):
        layer.quantize("int8")
    with pytest.raises(ValueError, match=r"cannot be changed. Received: dtype_policy='float32'"):
        layer.dtype_policy = "float32"


def test_quantize_requires_built_and_type_check(toy_scheme):
    with pytest.raises(ValueError, match="not built yet"):
        TinyLinear().quantize("int8")

    class SubLinear(TinyLinear):
        pass

    sub = SubLinear()
    sub(torch.ones(1, 2))
    with pytest.raises(
        NotImplementedError,
        match=r"SubLinear.*base class TinyLinear has one: pass type_check=False",
    ):
        sub.quantize("int8")
    sub.quantize("int8", type_check=False)  # nearest registered base class
    assert sub.quantization_mode == "int8"


def test_setting_a_quantized_policy_on_a_built_layer_quantizes_it(toy_scheme):
    model = Sequential([TinyLinear(3), TinyLinear(1)])
    model(torch.ones(2, 4))
    model.dtype_policy = "int8_from_float32"  # a container passes it on to its layers
    assert toy_scheme.calls == ["quantize", "quantize"]
    assert [layer.quantization_mode for layer in model] == ["int8", "int8"]
    assert model(torch.ones(2, 4)).shape == (2, 1)


def test_build_and_deserialize_under_a_quantized_policy(toy_scheme):
    layer = TinyLinear(3, dtype="int8_from_mixed_bfloat16")
    y = layer(torch.ones(2, 4))
    assert toy_scheme.calls == ["build", "call"]
    assert y.dtype == torch.bfloat16
    assert [w.name for w in layer.weights] == ["kernel_q", "kernel_scale"]
    clone = deserialize(serialize(layer))
    assert toy_scheme.calls[-1] == "build" and clone.quantization_mode == "int8"
    assert [tuple(w.shape) for w in clone.weights] == [(4, 3), ()]
    store = {}
    layer.save_own_variables(store)
    clone.load_own_variables(store)


def test_registry_errors(toy_scheme):
    with pytest.raises(ValueError, match=r"already registered for \(TinyLinear, 'int8'\)"):
        q.register_scheme(TinyLinear, "int8", ToyInt8())
    with pytest.raises(TypeError, match="Expected a QuantizationScheme"):
        q.register_scheme(TinyLinear, "int4", object())
    with pytest.raises(TypeError, match=r"Received: layer_cls='Dense'"):
        q.register_scheme("Dense", "int8", ToyInt8())
    with pytest.raises(KeyError, match="No quantization scheme registered for"):
        q.unregister_scheme(TinyLinear, "int4")
    assert q.registered_schemes()[(TinyLinear, "int8")] is toy_scheme

    @q.register_scheme(TinyLinear, "int4")
    class Decorated(QuantizationScheme):
        pass

    assert isinstance(q.get_scheme(TinyLinear(), "int4"), Decorated)
    q.unregister_scheme(TinyLinear, "int4")


def test_container_under_a_quantized_policy_builds_its_layers_quantized(toy_scheme):
    model = Sequential([TinyLinear(3), TinyLinear(1)], dtype="int8_from_float32")
    out = model(torch.ones(2, 4))
    assert out.shape == (2, 1) and model.built
    # Sequential.build infers shapes with a meta-device call: "call" entries come in between.
    assert toy_scheme.calls.count("build") == 2 and toy_scheme.calls[-2:] == ["call", "call"]
    assert [w.name for w in model.weights] == ["kernel_q", "kernel_scale"] * 2

    class Owner(Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = TinyLinear(2)

        def build(self, input_shape):
            self.gain = self.add_weight(shape=(), name="gain")

        def call(self, x):
            return self.inner(x) * self.gain

    with pytest.raises(NotImplementedError, match=r"Layer Owner has no quantization scheme"):
        Owner(dtype="int8_from_float32")(torch.ones(1, 3))


def test_model_quantize_applies_a_user_scheme_with_the_resolved_config(toy_scheme):
    """A scheme that is not one of mpq's is asked once per layer (``apply``: its ``resolve``,
    then its ``quantize``) with the model-level config, and gets the target policy."""
    import mpq
    from mpq.quantization import QuantizationConfig

    model = Sequential([TinyLinear(3, name="a"), TinyLinear(1, name="b")], name="m")
    model(torch.ones(2, 4))
    report = mpq.quantize(model, "int8")
    assert report.quantized == ["m/a", "m/b"]
    assert toy_scheme.calls == ["quantize", "quantize"]
    for layer in model.layers:
        assert layer.quantization_scheme is toy_scheme
        assert layer.dtype_policy == mpq.policy.get("int8_from_float32")
    assert report.config == QuantizationConfig("int8")


def test_model_quantize_rolls_back_a_user_scheme(toy_scheme, monkeypatch):
    import mpq

    model = Sequential([TinyLinear(3, name="a"), TinyLinear(1, name="b")], name="m")
    model(torch.ones(2, 4))
    kernels = [layer.kernel.detach().clone() for layer in model.layers]
    real = ToyInt8.quantize

    def flaky(self, layer, config=None):
        if layer.name == "b":
            raise RuntimeError("boom")
        return real(self, layer, config)

    monkeypatch.setattr(ToyInt8, "quantize", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        mpq.quantize(model, "int8")
    for layer, kernel in zip(model.layers, kernels, strict=True):
        assert layer.quantization_scheme is None
        assert layer.dtype_policy.name == "float32"
        assert torch.equal(layer.kernel, kernel)
