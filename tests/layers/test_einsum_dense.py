"""EinsumDense: shape inference from the equation (Keras 3 rules), values against a float64
einsum, config, errors, and the conformance harness."""

import pytest
import torch

from mpq.layers.einsum_dense import EinsumDense, analyze_einsum
from mpq.testing.layer_test import run_layer_test

# equation, input shape, output_shape, bias_axes -> kernel shape, bias shape, full output shape
SHAPE_CASES = [
    ("ab,bc->ac", (None, 32), 64, "c", (32, 64), (64,), (None, 64)),
    ("ab,bc->ac", (4, 32), (64,), None, (32, 64), None, (4, 64)),
    ("abc,cd->abd", (None, 7, 16), (None, 32), "d", (16, 32), (32,), (None, 7, 32)),
    ("abc,cd->abd", (3, 7, 16), (7, 32), "bd", (16, 32), (7, 32), (3, 7, 32)),
    ("abc,cde->abde", (2, 5, 16), (None, 4, 8), "de", (16, 4, 8), (4, 8), (2, 5, 4, 8)),
    ("abc,cde->abde", (2, 5, 16), (5, 4, 8), "e", (16, 4, 8), (8,), (2, 5, 4, 8)),
    ("abc,cde->abde", (2, 5, 16), (5, 4, 8), "d", (16, 4, 8), (4, 1), (2, 5, 4, 8)),
    ("...b,bc->...c", (None, 7, 16), 32, "c", (16, 32), (32,), (None, 7, 32)),
    ("...b,bc->...c", (2, 3, 7, 16), (32,), None, (16, 32), None, (2, 3, 7, 32)),
    ("...bc,cd->...bd", (2, 3, 7, 16), (7, 32), "b", (16, 32), (7, 1), (2, 3, 7, 32)),
    ("ab...,bc->ac...", (2, 16, 5, 6), (32,), "c", (16, 32), (32, 1, 1), (2, 32, 5, 6)),
    ("abcd,cde->abe", (2, 5, 4, 8), (None, 16), "e", (4, 8, 16), (16,), (2, 5, 16)),
]


@pytest.mark.parametrize(("eq", "inp", "out", "bias", "kshape", "bshape", "full"), SHAPE_CASES)
def test_analyze_einsum(eq, inp, out, bias, kshape, bshape, full):
    shapes = analyze_einsum(eq, inp, (out,) if isinstance(out, int) else out, bias)
    assert shapes.kernel_shape == kshape
    assert shapes.bias_shape == bshape
    assert shapes.output_shape == full


@pytest.mark.parametrize(("eq", "inp", "out", "bias", "kshape", "bshape", "full"), SHAPE_CASES)
def test_layer_values_and_shapes(eq, inp, out, bias, kshape, bshape, full):
    concrete = tuple(3 if d is None else d for d in inp)
    layer = EinsumDense(eq, out, bias_axes=bias, bias_initializer="random_normal", dtype="float64")
    x = torch.randn(concrete, dtype=torch.float64)
    y = layer(x)
    assert tuple(layer.kernel.shape) == kshape
    expected = torch.einsum(eq, x, layer.kernel.detach())
    if bias is not None:
        assert tuple(layer.bias.shape) == bshape
        expected = expected + layer.bias.detach()
    else:
        assert layer.bias is None
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert layer.compute_output_shape(concrete) == tuple(y.shape)
    assert layer.compute_output_shape(inp)[1:] == full[1:]


def test_activation_is_applied():
    layer = EinsumDense("ab,bc->ac", 8, activation="relu", dtype="float64")
    x = torch.randn(16, 4, dtype=torch.float64)
    y = layer(x)
    pre = x @ layer.kernel.detach()
    assert (pre < 0).any()
    torch.testing.assert_close(y, pre.clamp(min=0))


def test_config_round_trip():
    layer = EinsumDense("abc,cd->abd", (None, 8), bias_axes="d", activation="gelu")
    config = layer.get_config()
    assert config["equation"] == "abc,cd->abd"
    assert config["output_shape"] == (None, 8)
    assert config["bias_axes"] == "d"
    assert config["activation"] == "gelu"
    assert EinsumDense.from_config(config).get_config() == config


def test_mixed_policy_dtypes():
    layer = EinsumDense("abc,cd->abd", (None, 8), bias_axes="d", dtype="mixed_float16")
    y = layer(torch.randn(2, 3, 4))
    assert y.dtype == torch.float16
    assert layer.kernel.dtype == torch.float32 and layer.bias.dtype == torch.float32


@pytest.mark.parametrize(
    ("eq", "inp", "out", "bias", "exc", "match"),
    [
        ("ab->b", (2, 3), 4, None, ValueError, r"equation='ab->b'"),
        ("a.b,bc->ac", (2, 3), 4, None, ValueError, r"equation='a.b,bc->ac'"),
        ("ab,bc->ac", (2, 3, 4), 4, None, ValueError, r"input_shape=\(2, 3, 4\)"),
        ("abc,cd->abd", (2, 3, 4), (5, 8), None, ValueError, r"output_shape=\(5, 8\)"),
        ("abc,cd->abd", (2, 3, 4), (8,), None, ValueError, r"output_shape=\(8,\)"),
        ("ab,bc->acz", (2, 3), (4, 5), None, ValueError, r"letter 'z'"),
        ("ab,bcz->ac", (2, 3), 4, None, ValueError, r"weight axis 'z'"),
        ("ab,bc->ac", (2, 3), 4, "x", ValueError, r"bias_axes='x'"),
        ("...b,bc->...c", (3,), 4, None, ValueError, r"input_shape=\(3,\)"),
    ],
)
def test_bad_equations_and_shapes(eq, inp, out, bias, exc, match):
    layer = EinsumDense(eq, out, bias_axes=bias)
    with pytest.raises(exc, match=match):
        layer.build(inp)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"equation": 3, "output_shape": 4}, TypeError, r"equation=3 \(of type int\)"),
        ({"equation": "ab,bc->ac", "output_shape": 0}, ValueError, r"output_shape=0"),
        ({"equation": "ab,bc->ac", "output_shape": "4"}, ValueError, r"output_shape='4'"),
        ({"equation": "ab,bc->ac", "output_shape": 4, "bias_axes": 1}, TypeError, r"bias_axes=1"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        EinsumDense(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "input_shape", "output_shape"),
    [
        ({"equation": "ab,bc->ac", "output_shape": 4, "bias_axes": "c"}, (2, 3), (2, 4)),
        (
            {"equation": "abc,cde->abde", "output_shape": (None, 2, 3), "bias_axes": "de"},
            (2, 3, 4),
            (2, 3, 2, 3),
        ),
        (
            {"equation": "...b,bc->...c", "output_shape": 5, "activation": "silu"},
            (2, 3, 4),
            (2, 3, 5),
        ),
    ],
)
def test_conformance(kwargs, input_shape, output_shape):
    run_layer_test(EinsumDense, kwargs, input_shape, expected_output_shape=output_shape)
