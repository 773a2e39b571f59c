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
