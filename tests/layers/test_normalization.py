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
        y = x / torch.sqrt((x * x).mean(axes, keepdim=True) + eps)
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
