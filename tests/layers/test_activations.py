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
        assert config == {"swish": "silu", "hard_swish": "hard_silu"}.get(name, name)
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


# --- The 14 activations Keras 3 added (issue 16) ---

# Keras 3.15 docstrings (keras/src/activations/activations.py), quoted per function
_KERAS3_FORMULAS = [
    # "hard_silu ... `0` if `if x < -3`, `x` if `x > 3`, `x * (x + 3) / 6` if `-3 <= x <= 3`"
    (
        "hard_silu",
        {},
        lambda x: torch.where(x < -3, 0 * x, torch.where(x > 3, x, x * (x + 3) / 6)),
    ),
    (
        "hard_swish",
        {},
        lambda x: torch.where(x < -3, 0 * x, torch.where(x > 3, x, x * (x + 3) / 6)),
    ),
    # "`celu(x) = alpha * (exp(x / alpha) - 1) for x < 0`,`celu(x) = x for x >= 0`"
    ("celu", {}, lambda x: torch.where(x >= 0, x, torch.exp(x) - 1)),
    ("celu", {"alpha": 2.0}, lambda x: torch.where(x >= 0, x, 2.0 * (torch.exp(x / 2.0) - 1))),
    # "`hard_shrink(x) = x` if `|x| > threshold`, `hard_shrink(x) = 0` otherwise" (0.5)
    ("hard_shrink", {}, lambda x: torch.where(x.abs() > 0.5, x, 0 * x)),
    ("hard_shrink", {"threshold": 2.0}, lambda x: torch.where(x.abs() > 2.0, x, 0 * x)),
    # "`hard_tanh(x) = -1 for x < -1`, `x for -1 <= x <= 1`, `1 for x > 1`"
    ("hard_tanh", {}, lambda x: torch.where(x < -1, -1 + 0 * x, torch.where(x > 1, 1 + 0 * x, x))),
    # "`f(x) = log(1 / (1 + exp(-x)))`"
    ("log_sigmoid", {}, lambda x: torch.log(1 / (1 + torch.exp(-x)))),
    # "`x - threshold` if `x > threshold`, `x + threshold` if `x < -threshold`, 0 otherwise"
    (
        "soft_shrink",
        {},
        lambda x: torch.where(x > 0.5, x - 0.5, torch.where(x < -0.5, x + 0.5, 0 * x)),
    ),
    (
        "soft_shrink",
        {"threshold": 1.5},
        lambda x: torch.where(x > 1.5, x - 1.5, torch.where(x < -1.5, x + 1.5, 0 * x)),
    ),
    # "`f(x) = 0` for `x <= -1`, `f(x) = (1/4) * (x + 1)^2` for `-1 < x < 1`, `x` for `x >= 1`"
    (
        "sparse_plus",
        {},
        lambda x: torch.where(x <= -1, 0 * x, torch.where(x < 1, (x + 1) ** 2 / 4, x)),
    ),
    # "`f(x) = 0` for `x <= -1`, `0.5 * (x + 1)` for `-1 < x < 1`, `1` for `x >= 1`"
    (
        "sparse_sigmoid",
        {},
        lambda x: torch.where(x <= -1, 0 * x, torch.where(x >= 1, 1 + 0 * x, 0.5 * (x + 1))),
    ),
    # "`squareplus(x) = (x + sqrt(x^2 + b)) / 2`" with b=4 by default
    ("squareplus", {}, lambda x: (x + torch.sqrt(x * x + 4)) / 2),
    ("squareplus", {"b": 1.0}, lambda x: (x + torch.sqrt(x * x + 1)) / 2),
    # "`f(x) = x - tanh(x)`"
    ("tanh_shrink", {}, lambda x: x - torch.tanh(x)),
    # "`threshold(x) = x` if `x > threshold`, `default_value` otherwise"
    (
        "threshold",
        {"threshold": 0.5, "default_value": -2.0},
        lambda x: torch.where(x > 0.5, x, -2 + 0 * x),
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "formula"), _KERAS3_FORMULAS)
def test_keras3_activation_matches_its_documented_formula(name, kwargs, formula):
    """Keras 3 `keras.activations.<name>`: the definition in its docstring (quoted above each
    case), in float64, with Keras' default arguments."""
    x = torch.cat([_x(), torch.tensor([-3.0, -1.0, -0.5, 0.5, 1.0, 3.0], dtype=torch.float64)])
    torch.testing.assert_close(
        activations.get(name)(x, **kwargs), formula(x), rtol=1e-12, atol=1e-12
    )


def test_glu_matches_its_documented_formula():
    """Keras 3 `glu`: "`glu(x) = a * sigmoid(b)`, where `x` is split into two equal parts `a`
    and `b` along the given axis" (axis=-1 by default)."""
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    a, b = x[..., :2], x[..., 2:]
    torch.testing.assert_close(activations.glu(x), a / (1 + torch.exp(-b)), rtol=1e-12, atol=0)
    a, b = x[:, :3], x[:, 3:]
    torch.testing.assert_close(
        activations.glu(x, axis=1), a / (1 + torch.exp(-b)), rtol=1e-12, atol=0
    )


def _sparsemax_oracle(z: torch.Tensor) -> list[float]:
    """Martins & Astudillo (2016), Algorithm 1, on one vector, in Python floats."""
    values = z.tolist()
    s = sorted(values, reverse=True)
    k, cumsum, total = 0, 0.0, 0.0
    for j, v in enumerate(s, start=1):
        cumsum += v
        if 1 + j * v > cumsum:
            k, total = j, cumsum
    tau = (total - 1) / k
    return [max(v - tau, 0.0) for v in values]


def test_sparsemax_is_the_projection_onto_the_simplex():
    """Keras 3 `sparsemax`: "`sparsemax(x)[i, j] = max(x[i, j] - τ(x[i, :]), 0)`" with
    reference Martins et al. 2016: the result sums to 1 along `axis`."""
    torch.manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float64) * 2
    out = activations.sparsemax(x)
    expected = torch.tensor([_sparsemax_oracle(row) for row in x], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.sum(-1), torch.ones(5, dtype=torch.float64))
    out0 = activations.sparsemax(x, axis=0)
    expected0 = torch.tensor([_sparsemax_oracle(col) for col in x.T], dtype=torch.float64).T
    torch.testing.assert_close(out0, expected0, rtol=0, atol=1e-12)
    assert activations.sparsemax(torch.tensor([1.0, 0.5, 0.0])).tolist() == [0.75, 0.25, 0.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sparsemax_half_inputs_computed_in_float32(dtype):
    x = torch.randn(4, 9).to(dtype)
    out = activations.sparsemax(x)
    assert out.dtype == dtype
    expected = activations.sparsemax(x.float()).to(dtype)
    assert torch.equal(out, expected)


def test_threshold_needs_its_arguments_as_in_keras():
    """Keras 3 `threshold(x, threshold, default_value)` has no defaults."""
    with pytest.raises(TypeError, match="threshold"):
        activations.threshold(torch.zeros(2))


@pytest.mark.parametrize(
    "name",
    [
        "hard_silu",
        "hard_swish",
        "celu",
        "glu",
        "hard_shrink",
        "hard_tanh",
        "log_sigmoid",
        "soft_shrink",
        "sparse_plus",
        "sparse_sigmoid",
        "sparsemax",
        "squareplus",
        "tanh_shrink",
        "threshold",
    ],
)
def test_keras3_activation_serializable_by_name(name):
    fn = activations.get(name)
    config = activations.serialize(fn)
    assert activations.get(config) is fn
    assert config == ("hard_silu" if name == "hard_swish" else name)
    layer = mpq.layers.Dense(4, activation=name)
    assert mpq.layers.Dense.from_config(layer.get_config()).activation is fn


_KERAS_CASES = [
    ("hard_silu", {}),
    ("hard_swish", {}),
    ("celu", {}),
    ("celu", {"alpha": 0.5}),
    ("glu", {}),
    ("glu", {"axis": 0}),
    ("hard_shrink", {}),
    ("hard_tanh", {}),
    ("log_sigmoid", {}),
    ("soft_shrink", {}),
    ("sparse_plus", {}),
    ("sparse_sigmoid", {}),
    ("squareplus", {}),
    ("squareplus", {"b": 2.0}),
    ("tanh_shrink", {}),
    ("threshold", {"threshold": 0.25, "default_value": -1.0}),
]


@pytest.mark.parametrize(("name", "kwargs"), _KERAS_CASES)
def test_keras3_activation_matches_live_keras(name, kwargs):
    """The same function as `keras.activations.get(name)` of Keras 3.15 (torch backend):
    float32 inputs, results equal within float32 rounding of these one-op formulas."""
    from tests._keras import import_keras

    keras = import_keras()
    torch.manual_seed(1)
    x = torch.randn(6, 8) * 3
    expected = keras.activations.get(name)(x, **kwargs)
    got = activations.get(name)(x, **kwargs)
    torch.testing.assert_close(got, torch.as_tensor(expected), rtol=2**-23, atol=2**-24)


def test_sparsemax_against_live_keras():
    """Keras 3.15's sparsemax takes `tau` from the sum of the cumulative sums over the support,
    not the cumulative sum at its end (all backends): the two agree when one element is in
    the support and differ (Keras' rows then do not sum to 1) otherwise. mpq follows the
    documented definition; this pins both facts so a Keras fix shows up here."""
    from tests._keras import import_keras

    keras = import_keras()
    single = torch.tensor([[3.0, 0.5, -1.0], [-2.0, 4.0, 1.0]])  # support of one element
    torch.testing.assert_close(
        activations.sparsemax(single), torch.as_tensor(keras.activations.sparsemax(single))
    )
    wide = torch.tensor([[1.0, 0.5, 0.0]])
    keras_out = torch.as_tensor(keras.activations.sparsemax(wide))
    assert keras_out.sum().item() != 1.0
    assert activations.sparsemax(wide).sum().item() == 1.0
