"""LayerNormalization and BatchNormalization: values against float64 references, float32
statistics under half policies, moving-statistics updates, masks, config, errors, conformance."""

import numpy as np
import pytest
import torch

from mpq.layers.normalization import BatchNormalization, LayerNormalization
from mpq.testing.layer_test import run_layer_test


def _layer_norm_ref(x, axes, eps, gamma=None, beta=None, rms=False):
    x = x.double()
    if rms:
        # Keras 3 `rms_scaling=True`: x scaled by the variance over `axes`, no mean subtracted
        mean = x.mean(axes, keepdim=True)
        var = ((x - mean) ** 2).mean(axes, keepdim=True)
        y = x / torch.sqrt(var + eps)
    else:
        mean = x.mean(axes, keepdim=True)
        var = ((x - mean) ** 2).mean(axes, keepdim=True)
        y = (x - mean) / torch.sqrt(var + eps)
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    if gamma is not None:
        y = y * gamma.double().reshape(shape)
    if beta is not None:
        y = y + beta.double().reshape(shape)
    return y


# ----------------------------------------------------------------------------- LayerNormalization
@pytest.mark.parametrize(
    ("axis", "axes", "rms"),
    [
        (-1, (2,), False),
        ([1, 2], (1, 2), False),
        (1, (1,), False),
        ([2, 1], (1, 2), False),
        (-1, (2,), True),
        ([0, 2], (0, 2), True),
    ],
)
def test_layer_norm_values(axis, axes, rms):
    x = torch.randn(3, 4, 5, dtype=torch.float64) * 3 + 1
    layer = LayerNormalization(
        axis=axis,
        rms_scaling=rms,
        gamma_initializer="random_normal",
        beta_initializer="random_normal",
        dtype="float64",
    )
    y = layer(x)
    assert tuple(layer.gamma.shape) == tuple(x.shape[a] for a in axes)
    beta = None if rms else layer.beta.detach()
    if rms:
        assert layer.beta is None
    expected = _layer_norm_ref(x, axes, 1e-3, layer.gamma.detach(), beta, rms)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


def test_layer_norm_center_scale_off():
    layer = LayerNormalization(center=False, scale=False, epsilon=1e-5, dtype="float64")
    x = torch.randn(4, 6, dtype=torch.float64)
    y = layer(x)
    assert layer.weights == []
    torch.testing.assert_close(y, _layer_norm_ref(x, (1,), 1e-5), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("policy", ["float16", "mixed_float16", "bfloat16", "mixed_bfloat16"])
@pytest.mark.parametrize("axis", [-1, [1, 2]])
def test_layer_norm_statistics_in_float32(policy, axis):
    # large values: a float16 sum of squares overflows (300^2 * 64 > 65504)
    x = torch.randn(2, 8, 8, dtype=torch.float64) + 300.0
    layer = LayerNormalization(axis=axis, dtype=policy)
    y = layer(x)
    compute = getattr(torch, layer.compute_dtype)
    assert y.dtype == compute
    assert layer.gamma.dtype == getattr(torch, layer.variable_dtype)
    axes = (2,) if axis == -1 else (1, 2)
    # the reference sees the same (rounded) inputs, computes in float64, rounds once
    expected = _layer_norm_ref(x.to(compute), axes, 1e-3)
    eps = torch.finfo(compute).eps
    torch.testing.assert_close(
        y.double(), expected.to(compute).double(), rtol=2 * eps, atol=4 * eps
    )


def test_layer_norm_compute_output_shape_and_config():
    layer = LayerNormalization(axis=[1, -1], rms_scaling=True)
    assert layer.compute_output_shape((None, 3, 4)) == (None, 3, 4)
    with pytest.raises(ValueError, match=r"axis=-3 .*input_shape=\(None, 4\)"):
        LayerNormalization(axis=-3).compute_output_shape((None, 4))
    config = layer.get_config()
    assert config["axis"] == [1, -1] and config["rms_scaling"] is True
    assert config["epsilon"] == 1e-3
    assert LayerNormalization.from_config(config).get_config() == config


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"axis": "x"}, TypeError, r"axis='x' \(of type str\)"),
        ({"axis": []}, TypeError, r"axis=\[\]"),
        ({"axis": [1, 1.5]}, TypeError, r"axis=\[1, 1.5\]"),
        ({"epsilon": -1.0}, ValueError, r"epsilon=-1.0"),
    ],
)
def test_layer_norm_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LayerNormalization(**kwargs)


def test_layer_norm_duplicate_axes():
    with pytest.raises(ValueError, match=r"axis=\[1, -1\]"):
        LayerNormalization(axis=[1, -1]).build((2, 3))


# ----------------------------------------------------------------------------- BatchNormalization
def test_batch_norm_training_updates_moving_stats():
    layer = BatchNormalization(momentum=0.9, epsilon=1e-3, dtype="float64")
    x = torch.randn(16, 3, dtype=torch.float64) * 2 + 5
    y = layer(x, training=True)
    mean = x.mean(0)
    var = x.var(0, unbiased=False)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + 1e-3), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.moving_mean.detach(), 0.9 * 0 + 0.1 * mean)
    torch.testing.assert_close(layer.moving_variance.detach(), 0.9 * 1 + 0.1 * var)
    # a second step follows the same recurrence
    x2 = torch.randn(16, 3, dtype=torch.float64)
    layer(x2, training=True)
    torch.testing.assert_close(layer.moving_mean.detach(), 0.9 * (0.1 * mean) + 0.1 * x2.mean(0))


def test_batch_norm_inference_uses_moving_stats_and_updates_nothing():
    layer = BatchNormalization(dtype="float64", gamma_initializer="random_normal")
    x = torch.randn(8, 4, dtype=torch.float64)
    layer.build(x.shape)
    layer.moving_mean.assign(torch.arange(4.0, dtype=torch.float64))
    layer.moving_variance.assign(torch.full((4,), 4.0, dtype=torch.float64))
    before = [w.detach().clone() for w in layer.weights]
    y = layer(x, training=False)
    expected = (x - torch.arange(4.0)) / np.sqrt(4.0 + 1e-3) * layer.gamma.detach()
    torch.testing.assert_close(y, expected.double())
    for w, b in zip(layer.weights, before, strict=True):
        assert torch.equal(w, b)


def test_batch_norm_frozen_layer_runs_in_inference_mode():
    layer = BatchNormalization(dtype="float64")
    x = torch.randn(8, 4, dtype=torch.float64) + 3
    layer.build(x.shape)
    layer.trainable = False
    y = layer(x, training=True)
    torch.testing.assert_close(y, x / np.sqrt(1 + 1e-3))
    assert torch.equal(layer.moving_mean.detach(), torch.zeros(4, dtype=torch.float64))


def test_batch_norm_channels_first_axis():
    layer = BatchNormalization(axis=1, dtype="float64")
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    y = layer(x, training=True)
    assert tuple(layer.gamma.shape) == (3,)
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + 1e-3))


def test_batch_norm_mask_excludes_positions():
    layer = BatchNormalization(momentum=0.0, dtype="float64")
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, False], [True, False, True, True, True]])
    layer(x, training=True, mask=mask)
    valid = x[mask]  # [n_valid, 3]
    torch.testing.assert_close(layer.moving_mean.detach(), valid.mean(0), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(
        layer.moving_variance.detach(), valid.var(0, unbiased=False), rtol=1e-6, atol=1e-9
    )
    with pytest.raises(ValueError, match=r"mask.shape=\(2,\)"):
        layer(x, training=True, mask=mask[:, 0])


@pytest.mark.parametrize("policy", ["float16", "mixed_float16", "mixed_bfloat16"])
def test_batch_norm_statistics_in_float32(policy):
    layer = BatchNormalization(momentum=0.0, dtype=policy)
    x = torch.randn(64, 2) * 0.5 + 250.0  # float16 sums of squares would overflow
    y = layer(x, training=True)
    compute = getattr(torch, layer.compute_dtype)
    assert y.dtype == compute
    assert torch.isfinite(y).all()
    xc = x.to(compute).double()
    expected = (xc - xc.mean(0)) / torch.sqrt(xc.var(0, unbiased=False) + 1e-3)
    eps = torch.finfo(compute).eps
    # the mean subtraction cancels ~250: allow for the float32 rounding of the mean
    torch.testing.assert_close(y.double(), expected, rtol=4 * eps, atol=2e-3)
    assert layer.moving_mean.dtype == getattr(torch, layer.variable_dtype)
    torch.testing.assert_close(layer.moving_mean.double(), xc.mean(0), rtol=1e-3, atol=0)


def test_batch_norm_config_and_shape():
    layer = BatchNormalization(axis=1, momentum=0.5, center=False)
    config = layer.get_config()
    assert config["axis"] == 1 and config["momentum"] == 0.5 and config["center"] is False
    assert config["synchronized"] is False
    assert BatchNormalization.from_config(config).get_config() == config
    assert layer.compute_output_shape((None, 3, 4)) == (None, 3, 4)
    layer.build((2, 3, 4))
    assert [w.name for w in layer.weights] == ["gamma", "moving_mean", "moving_variance"]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"axis": [1]}, TypeError, r"axis=\[1\] \(of type list\)"),
        ({"momentum": 1.5}, ValueError, r"momentum=1.5"),
        ({"momentum": "0.9"}, ValueError, r"momentum='0.9'"),
        ({"epsilon": -0.1}, ValueError, r"epsilon=-0.1"),
        ({"synchronized": True}, ValueError, r"synchronized=True"),
    ],
)
def test_batch_norm_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BatchNormalization(**kwargs)


def test_batch_norm_axis_out_of_range():
    with pytest.raises(ValueError, match=r"axis=3 .*input_shape=\(2, 3\)"):
        BatchNormalization(axis=3).build((2, 3))


# ----------------------------------------------------------------------------- conformance
@pytest.mark.parametrize(
    ("cls", "kwargs", "input_shape", "n_trainable", "n_non_trainable"),
    [
        (LayerNormalization, {}, (2, 3, 4), 2, 0),
        (LayerNormalization, {"axis": [1, 2], "center": False}, (2, 3, 4), 1, 0),
        (LayerNormalization, {"axis": 1}, (2, 3, 4), 2, 0),
        (LayerNormalization, {"rms_scaling": True}, (2, 5), 1, 0),
        (BatchNormalization, {}, (4, 3), 2, 2),
        (BatchNormalization, {"axis": 1, "scale": False}, (4, 3, 2, 2), 1, 2),
    ],
)
def test_conformance(cls, kwargs, input_shape, n_trainable, n_non_trainable):
    run_layer_test(
        cls,
        kwargs,
        input_shape,
        expected_output_shape=input_shape,
        expected_num_trainable_weights=n_trainable,
        expected_num_non_trainable_weights=n_non_trainable,
        supports_masking=True,
    )


# ------------------------------------------------------------------ Keras parity (issue 16)
def test_layer_norm_rms_scaling_is_keras3s_definition():
    """Keras 3.15 `ops.layer_normalization(..., rms_scaling=True)`:
    `variance = var(x, axis); outputs = x * rsqrt(variance + epsilon) * gamma` (its warning:
    "This argument incorrectly scales the input by the variance, not the root mean square").
    Not the root mean square: on inputs with a non-zero mean the two differ."""
    x = torch.randn(3, 16, dtype=torch.float64) + 2.0
    layer = LayerNormalization(rms_scaling=True, gamma_initializer="random_normal", dtype="float64")
    y = layer(x)
    var = ((x - x.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True)
    expected = x / torch.sqrt(var + 1e-3) * layer.gamma.detach()
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    true_rms = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-3) * layer.gamma.detach()
    assert (y - true_rms).abs().max() > 0.1


@pytest.mark.parametrize(("axis", "rms"), [(-1, True), ([1, 2], True), (1, True), (-1, False)])
def test_layer_norm_matches_live_keras(axis, rms):
    """Same outputs as `keras.layers.LayerNormalization` (Keras 3.15, torch backend) with the
    same gamma/beta, float32: within float32 rounding of a normalization over <= 20 values."""
    import warnings

    from tests._keras import import_keras

    keras = import_keras()
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5) * 2 + 1.5
    layer = LayerNormalization(axis=axis, rms_scaling=rms)
    layer.build(x.shape)
    gamma = torch.randn(tuple(layer.gamma.shape))
    layer.gamma.assign(gamma)
    beta = None if rms else torch.randn(tuple(layer.beta.shape))
    if beta is not None:
        layer.beta.assign(beta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Keras deprecates rms_scaling=True
        k_layer = keras.layers.LayerNormalization(axis=axis, rms_scaling=rms)
        k_layer.build(tuple(x.shape))
        k_layer.gamma.assign(gamma.numpy())
        if beta is not None:
            k_layer.beta.assign(beta.numpy())
        expected = torch.as_tensor(k_layer(x.numpy())).detach()
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(layer(x), expected, rtol=16 * eps, atol=16 * eps)


def _renorm_oracle(x, gamma, beta, state, eps, momentum, renorm_momentum, clipping):
    """tf.keras 2.x `BatchNormalization(renorm=True)` training step, in float64, hand-written
    from `_renorm_correction_and_moments` and the `variance_update` renorm branch."""
    x = x.double()
    mean = x.mean(0)
    var = ((x - mean) ** 2).mean(0)
    std = torch.sqrt(var + eps)
    renorm_std = torch.clamp(state["renorm_stddev"], min=eps**0.5)
    r = std / renorm_std
    d = (mean - state["renorm_mean"]) / renorm_std
    if "rmin" in clipping:
        r = torch.clamp(r, min=clipping["rmin"])
    if "rmax" in clipping:
        r = torch.clamp(r, max=clipping["rmax"])
    if "dmax" in clipping:
        d = torch.clamp(d, -clipping["dmax"], clipping["dmax"])
    out = (x - mean) / std * (r * gamma) + (d * gamma + beta)
    new = {
        "renorm_mean": state["renorm_mean"] * renorm_momentum + mean * (1 - renorm_momentum),
        "renorm_stddev": state["renorm_stddev"] * renorm_momentum + std * (1 - renorm_momentum),
        "moving_mean": state["moving_mean"] * momentum + mean * (1 - momentum),
        "moving_stddev": state["moving_stddev"] * momentum + std * (1 - momentum),
    }
    new["moving_variance"] = torch.relu(new["moving_stddev"] ** 2 - eps)
    return out, new


@pytest.mark.parametrize(
    "clipping", [{}, {"rmax": 1.5, "rmin": 0.75, "dmax": 0.25}, {"rmax": 3.0, "dmax": None}]
)
def test_batch_norm_renorm_matches_tf_keras_2(clipping):
    """tf.keras 2.x BatchNormalization: "renorm: Whether to use Batch Renormalization
    (Ioffe, 2017). This adds extra variables during training. The inference is the same for
    either value of this parameter. renorm_clipping: A dictionary that may map keys 'rmax',
    'rmin', 'dmax' to scalar Tensors used to clip the renorm correction. The correction
    (r, d) is used as corrected_value = normalized_value * r + d, with r clipped to
    [rmin, rmax], and d to [-dmax, dmax]. renorm_momentum: Momentum used to update the moving
    means and standard deviations with renorm." Three training steps against a float64 oracle,
    then inference from the moving statistics."""
    torch.manual_seed(0)
    bn = BatchNormalization(
        renorm=True,
        renorm_clipping=clipping,
        renorm_momentum=0.9,
        momentum=0.8,
        gamma_initializer="random_normal",
        beta_initializer="random_normal",
        dtype="float64",
    )
    bn.build((None, 3))
    names = ["renorm_mean", "renorm_stddev", "moving_mean", "moving_stddev", "moving_variance"]
    state = {n: getattr(bn, n).detach().clone() for n in names}
    assert state["renorm_stddev"].tolist() == [1.0, 1.0, 1.0]  # sqrt(moving_variance init)
    gamma, beta = bn.gamma.detach(), bn.beta.detach()
    used = {k: v for k, v in clipping.items() if v is not None}
    for step in range(3):
        x = torch.randn(16, 3, dtype=torch.float64) * (2 + step) + step
        out = bn(x, training=True)
        expected, state = _renorm_oracle(x, gamma, beta, state, 1e-3, 0.8, 0.9, used)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        for n in names:
            torch.testing.assert_close(getattr(bn, n).detach(), state[n], rtol=1e-12, atol=1e-12)
    x = torch.randn(4, 3, dtype=torch.float64)
    inference = (x - state["moving_mean"]) / torch.sqrt(state["moving_variance"] + 1e-3)
    torch.testing.assert_close(
        bn(x, training=False), inference * gamma + beta, rtol=1e-12, atol=1e-12
    )


def test_batch_norm_renorm_corrections_carry_no_gradient():
    """tf.keras 2.x: `r = stop_gradient(r)`, `d = stop_gradient(d)`: the gradient is that of
    plain batch normalization scaled by r (here r = 1, d = 0 on the first step from the
    initial renorm statistics only when the batch is standardized)."""
    torch.manual_seed(0)
    x = torch.randn(8, 2, dtype=torch.float64)
    x = (x - x.mean(0)) / torch.sqrt(x.var(0, correction=0) + 0) * (1 - 1e-3) ** 0.5
    x.requires_grad_(True)
    bn = BatchNormalization(renorm=True, dtype="float64")
    plain = BatchNormalization(dtype="float64")
    (bn(x, training=True) ** 3).sum().backward()
    g_renorm = x.grad.clone()
    x.grad = None
    (plain(x, training=True) ** 3).sum().backward()
    torch.testing.assert_close(g_renorm, x.grad, rtol=1e-10, atol=1e-12)


def test_batch_norm_renorm_config_round_trip_and_weights():
    bn = BatchNormalization(renorm=True, renorm_clipping={"rmax": 2.0}, renorm_momentum=0.5)
    config = bn.get_config()
    assert config["renorm"] is True
    assert config["renorm_clipping"] == {"rmax": 2.0}
    assert config["renorm_momentum"] == 0.5
    assert BatchNormalization.from_config(config).get_config() == config
    bn.build((None, 4))
    assert [w.name for w in bn.non_trainable_weights] == [
        "moving_mean",
        "moving_variance",
        "moving_stddev",
        "renorm_mean",
        "renorm_stddev",
    ]
    assert "renorm" not in BatchNormalization().get_config()  # only written when set


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"renorm_clipping": {"rmax": 2.0, "r": 1.0}},
            ValueError,
            r"Expected `renorm_clipping` keys among \['rmax', 'rmin', 'dmax'\]\. "
            r"Received: renorm_clipping=\{'rmax': 2.0, 'r': 1.0\}",
        ),
        (
            {"renorm_clipping": [1.0]},
            TypeError,
            r"Expected `renorm_clipping` to be None or a dict.*Received: renorm_clipping=\[1.0\] "
            r"\(of type list\)",
        ),
        (
            {"renorm_clipping": {"rmax": "2"}},
            TypeError,
            r"Expected renorm_clipping\['rmax'\] to be a number\. Received: rmax='2' \(of type str\)",
        ),
        (
            {"renorm_clipping": {"rmin": 2.0, "rmax": 1.0}},
            ValueError,
            r"Expected renorm_clipping with dmax >= 0 and rmin <= rmax",
        ),
        (
            {"renorm_momentum": 1.5},
            ValueError,
            r"Expected `renorm_momentum` to be a float in \[0, 1\]\. "
            r"Received: renorm_momentum=1.5 \(of type float\)",
        ),
    ],
)
def test_batch_norm_renorm_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BatchNormalization(renorm=True, **kwargs)


def test_batch_norm_renorm_matches_live_keras():
    """Keras 3.15 `BatchNormalization(renorm=True, ...)` (torch backend): the same outputs and
    the same moving statistics after two training steps, float32, within float32 rounding."""
    from tests._keras import import_keras

    keras = import_keras()
    torch.manual_seed(0)
    kwargs = {
        "renorm": True,
        "renorm_clipping": {"rmax": 1.5, "rmin": 0.8, "dmax": 0.5},
        "renorm_momentum": 0.9,
        "momentum": 0.8,
    }
    k_bn = keras.layers.BatchNormalization(**kwargs)
    k_bn.build((None, 3))
    bn = BatchNormalization(**kwargs)
    bn.build((None, 3))
    gamma, beta = torch.randn(3), torch.randn(3)
    k_bn.gamma.assign(gamma.numpy())
    k_bn.beta.assign(beta.numpy())
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    eps = torch.finfo(torch.float32).eps
    for step in range(2):
        x = torch.randn(16, 3) * (2 + step) + step
        expected = torch.as_tensor(k_bn(x.numpy(), training=True)).detach()
        torch.testing.assert_close(bn(x, training=True), expected, rtol=64 * eps, atol=64 * eps)
    for name in ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev"):
        k_value = getattr(k_bn, name).value.detach()
        torch.testing.assert_close(
            getattr(bn, name).detach(), k_value, rtol=64 * eps, atol=64 * eps
        )


def test_rms_normalization_is_the_root_mean_square():
    """Keras 3.15 `RMSNormalization`: "rms_normalization(x) = x * rsqrt(mean(square(x))) *
    scale" (plus epsilon, default 1e-6), over `axis`."""
    from mpq.layers import RMSNormalization

    x = torch.randn(3, 4, 6, dtype=torch.float64) + 1.5
    for axis, axes in ((-1, (2,)), ([1, 2], (1, 2)), (1, (1,))):
        layer = RMSNormalization(axis=axis, dtype="float64")
        layer.build(x.shape)
        layer.gamma.assign(torch.randn(tuple(layer.gamma.shape), dtype=torch.float64))
        shape = [1, 1, 1]
        for a in axes:
            shape[a] = x.shape[a]
        expected = x / torch.sqrt((x * x).mean(axes, keepdim=True) + 1e-6)
        expected = expected * layer.gamma.detach().reshape(shape)
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert RMSNormalization().get_config()["epsilon"] == 1e-6
    config = RMSNormalization(axis=[1, 2]).get_config()
    assert RMSNormalization.from_config(config).get_config() == config


def test_rms_normalization_matches_live_keras():
    """Same outputs as `keras.layers.RMSNormalization` (Keras 3.15, torch backend), float32,
    and Keras' config loads."""
    from mpq.layers import RMSNormalization
    from tests._keras import import_keras

    keras = import_keras()
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5) * 2 + 1.5
    k_layer = keras.layers.RMSNormalization(axis=-1)
    k_layer.build(tuple(x.shape))
    scale = torch.randn(5)
    k_layer.scale.assign(scale.numpy())
    layer = RMSNormalization.from_config(k_layer.get_config())
    layer.build(tuple(x.shape))
    layer.gamma.assign(scale)
    expected = torch.as_tensor(k_layer(x.numpy())).detach()
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(layer(x), expected, rtol=16 * eps, atol=16 * eps)
