"""mpq.activations: values against float64 formulas, Keras defaults, float32 softmax for half
inputs, get/serialize round trips and errors."""

import math

import pytest
import torch

import mpq
from mpq import activations


def _x():
    return torch.linspace(-6.0, 6.0, 49, dtype=torch.float64)


@pytest.mark.parametrize(
    ("name", "formula"),
    [
        ("relu", lambda x: x.clamp(min=0)),
        ("sigmoid", lambda x: 1 / (1 + torch.exp(-x))),
        ("tanh", lambda x: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x))),
        ("silu", lambda x: x / (1 + torch.exp(-x))),
        ("swish", lambda x: x / (1 + torch.exp(-x))),
        ("linear", lambda x: x),
        ("relu6", lambda x: x.clamp(0, 6)),
        ("leaky_relu", lambda x: torch.where(x > 0, x, 0.2 * x)),
        ("elu", lambda x: torch.where(x > 0, x, torch.exp(x) - 1)),
        ("softplus", lambda x: torch.log1p(torch.exp(x))),
        ("softsign", lambda x: x / (1 + x.abs())),
        ("exponential", torch.exp),
        ("hard_sigmoid", lambda x: (x / 6 + 0.5).clamp(0, 1)),
        ("mish", lambda x: x * torch.tanh(torch.log1p(torch.exp(x)))),
        # Keras 3 default gelu is the exact erf form
        ("gelu", lambda x: 0.5 * x * (1 + torch.special.erf(x / math.sqrt(2)))),
    ],
)
def test_activation_values_match_formula(name, formula):
    x = _x()
    torch.testing.assert_close(activations.get(name)(x), formula(x), rtol=1e-12, atol=1e-12)


def test_gelu_approximate_is_tanh_form():
    x = _x()
    expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(activations.gelu(x, approximate=True), expected)
    assert not torch.allclose(activations.gelu(x, approximate=True), activations.gelu(x))


def test_relu_keras_arguments():
    x = torch.tensor([-3.0, -1.0, 0.5, 1.0, 2.0, 8.0], dtype=torch.float64)
    # threshold: values <= threshold are zeroed, the rest kept unshifted
    assert activations.relu(x, threshold=1.0).tolist() == [0, 0, 0, 0, 2, 8]
    assert activations.relu(x, max_value=6.0).tolist() == [0, 0, 0.5, 1, 2, 6]
    assert activations.relu(x, negative_slope=0.5).tolist() == [-1.5, -0.5, 0.5, 1, 2, 8]
    # negative part measured from the threshold
    assert activations.relu(x, negative_slope=0.5, threshold=1.0).tolist() == [
        -2.0,
        -1.0,
        -0.25,
        0,
        2,
        8,
    ]


def test_softmax_sums_to_one_along_axis():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    for axis in (0, 1, -1):
        s = activations.softmax(x, axis=axis)
        torch.testing.assert_close(s.sum(axis), torch.ones_like(s.sum(axis)))
        torch.testing.assert_close(s, torch.softmax(x, dim=axis))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [activations.softmax, activations.log_softmax])
def test_softmax_half_inputs_computed_in_float32(dtype, fn):
    # values whose exp overflows float16: a float16 softmax would give inf/nan
    x = (torch.randn(4, 33) * 8 + 12).to(dtype)
    out = fn(x)
    assert out.dtype == dtype
    reference = fn(x.float()).to(dtype)  # float32 statistics, one rounding at the end
    assert torch.equal(out, reference)
    assert torch.isfinite(out).all()


def test_get_resolves_names_callables_and_none():
    assert activations.get("relu") is activations.relu
    assert activations.get(None) is activations.linear
    assert activations.get("swish") is activations.silu
    fn = torch.sin
    assert activations.get(fn) is fn


def test_serialize_round_trip_builtins():
    for name, fn in activations.ALL_ACTIVATIONS.items():
        config = activations.serialize(fn)
        assert activations.get(config) is fn
        assert config == ("silu" if name == "swish" else name)
    assert activations.serialize(None) is None
    assert activations.serialize("gelu") == "gelu"


def module_level_activation(x):
    return x * 2


def test_serialize_round_trip_module_function():
    """An unregistered function is written by name but only read back from custom objects:
    the config's module is never imported (docs/security.md)."""
    config = activations.serialize(module_level_activation)
    assert config == {"module": __name__, "function_name": "module_level_activation"}
    with pytest.raises(ValueError, match="nothing is imported by name from a config"):
        activations.get(config)
    with mpq.saving.custom_object_scope({"module_level_activation": module_level_activation}):
        assert activations.get(config) is module_level_activation
        assert activations.get("module_level_activation") is module_level_activation


@mpq.saving.register_serializable("tests_activations")
def registered_activation(x):
    return x * 3


def test_serialize_round_trip_registered_function():
    config = activations.serialize(registered_activation)
    assert config == {
        "module": __name__,
        "function_name": "registered_activation",
        "registered_name": "tests_activations>registered_activation",
    }
    assert activations.get(config) is registered_activation
    assert activations.get("tests_activations>registered_activation") is registered_activation


def test_serialize_rejects_lambdas():
    with pytest.raises(ValueError, match="lambda"):
        activations.serialize(lambda x: x)


def test_get_unknown_name_raises():
    with pytest.raises(ValueError, match="activation='relux'"):
        activations.get("relux")


def test_get_bad_type_raises():
    with pytest.raises(TypeError, match=r"activation=3 \(of type int\)"):
        activations.get(3)


def test_get_bad_dict_raises():
    with pytest.raises(ValueError, match="function_name"):
        activations.get({"module": "math"})
    with pytest.raises(ValueError, match="nope"):
        activations.get({"module": "math", "function_name": "nope"})
    with pytest.raises(ValueError, match=r"string keys .*Received: activation=\{'module': 1"):
        activations.get({"module": 1, "function_name": "sin"})
    with pytest.raises(ValueError, match="'extra'"):
        activations.get({"module": "math", "function_name": "sin", "extra": "x"})
