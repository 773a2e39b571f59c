"""mpq.layers.quantization: what the base QuantizationScheme refuses, and the one attribute a
layer carries for quantization."""

from __future__ import annotations

import pytest
import torch

from mpq.layers import Dense, QuantizationScheme


def test_a_float_layer_has_no_scheme_and_a_quantized_one_has_its_own():
    a, b = Dense(3), Dense(3)
    a.build((None, 4))
    b.build((None, 4))
    assert a.quantization_scheme is None
    a.quantize("int8")
    b.quantize("int8")
    assert a.quantization_scheme is not None and b.quantization_scheme is not None
    assert a.quantization_scheme is not b.quantization_scheme  # per-layer state
    assert a.quantization_scheme.kernel_shape() == (4, 3)
    assert a.quantization_scheme.get_config() == a.get_config()["quantization_config"]


@pytest.mark.parametrize(
    ("method", "args", "what"),
    [
        ("dequantized_kernel", (), "dequantized_kernel()"),
        ("requantize", (torch.zeros(4, 3),), "requantize() (merge_lora)"),
    ],
)
def test_the_base_scheme_refuses_what_it_does_not_implement(method, args, what):
    layer = Dense(3)
    layer.build((None, 4))
    with pytest.raises(NotImplementedError) as e:
        getattr(QuantizationScheme(), method)(layer, *args)
    assert str(e.value) == f"QuantizationScheme does not implement {what} for layer Dense."


def test_the_base_scheme_has_no_config_and_no_other_kernel_shape():
    assert QuantizationScheme().get_config() is None
    assert QuantizationScheme().kernel_shape() is None


def test_apply_asks_resolve_then_quantize_and_attaches_the_registered_object():
    """The default ``apply``: ``resolve`` once, then ``quantize`` with what it returned (None:
    the target policy); a None from ``quantize`` attaches the registered object."""
    from mpq import policy as mpq_policy
    from mpq.layers import quantization as q

    class Probe(Dense):
        pass

    class Recording(QuantizationScheme):
        def __init__(self):
            self.calls = []

        def resolve(self, layer, mode, config):
            self.calls.append(("resolve", mode, config))
            return None, mpq_policy.get(f"{mode}_from_float32")

        def quantize(self, layer, config=None):
            self.calls.append(("quantize", config))

    scheme = Recording()
    q.register_scheme(Probe, "int8", scheme)
    try:
        layer = Probe(3)
        layer.build((None, 4))
        layer.quantize("int8")
    finally:
        q.unregister_scheme(Probe, "int8")
    target = mpq_policy.get("int8_from_float32")
    assert scheme.calls == [("resolve", "int8", None), ("quantize", target)]
    assert layer.quantization_scheme is scheme
    assert layer.dtype_policy == target
