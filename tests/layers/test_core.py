"""Dropout, Activation, Flatten, Reshape, Add, Concatenate: values, masks, shapes, config,
errors, and the conformance harness."""

import pytest
import torch

from mpq import activations
from mpq.layers.core import Activation, Dropout, Flatten, Reshape
from mpq.layers.merging import Add, Concatenate
from mpq.testing.layer_test import run_layer_test


# ----------------------------------------------------------------------------- Dropout
def test_dropout_inference_is_identity():
    x = torch.randn(4, 5)
    assert torch.equal(Dropout(0.7)(x, training=False), x)


def test_dropout_training_zeroes_and_rescales():
    x = torch.ones(200, 50)
    y = Dropout(0.3)(x, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    frac = 1 - kept.float().mean().item()
    assert 0.27 < frac < 0.33  # 10000 draws: ~0.0046 standard deviation


def test_dropout_seed_is_reproducible_and_advances():
    x = torch.ones(8, 16)
    a, b = Dropout(0.5, seed=7), Dropout(0.5, seed=7)
    first = a(x, training=True)
    assert torch.equal(first, b(x, training=True))
    assert not torch.equal(first, a(x, training=True))  # the sequence moves on
    assert not torch.equal(first, Dropout(0.5, seed=8)(x, training=True))


def test_dropout_noise_shape_broadcasts():
    x = torch.ones(4, 6, 5)
    y = Dropout(0.5, noise_shape=(None, 1, 5), seed=1)(x, training=True)
    # the same features are dropped at every time step
    assert torch.equal(y, y[:, :1, :].expand_as(y))
    assert (y == 0).any() and (y != 0).any()


def test_dropout_rate_extremes():
    x = torch.randn(3, 4)
    assert torch.equal(Dropout(0.0)(x, training=True), x)
    assert torch.equal(Dropout(1.0)(x, training=True), torch.zeros_like(x))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"rate": 1.5}, ValueError, r"rate=1.5 \(of type float\)"),
        ({"rate": -0.1}, ValueError, r"rate=-0.1"),
        ({"rate": "0.5"}, ValueError, r"rate='0.5' \(of type str\)"),
        ({"rate": 0.5, "noise_shape": 3}, ValueError, r"noise_shape=3"),
        ({"rate": 0.5, "seed": 1.5}, TypeError, r"seed=1.5"),
    ],
)
def test_dropout_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Dropout(**kwargs)


def test_dropout_noise_shape_rank_mismatch():
    with pytest.raises(ValueError, match=r"noise_shape=\(1, 2\).*inputs.shape=\(2, 3, 2\)"):
        Dropout(0.5, noise_shape=(1, 2))(torch.ones(2, 3, 2), training=True)


def test_dropout_shape_inference_on_meta_with_seed():
    spec = Dropout(0.5, seed=1).compute_output_spec(torch.ones(2, 3), training=True)
    assert spec.shape == (2, 3) and spec.device.type == "meta"


def test_dropout_config():
    layer = Dropout(0.25, noise_shape=(None, 1), seed=3)
    config = layer.get_config()
    assert (config["rate"], config["noise_shape"], config["seed"]) == (0.25, (None, 1), 3)
    assert Dropout.from_config(config).get_config() == config


# ----------------------------------------------------------------------------- Activation
def test_activation_by_name_and_callable():
    x = torch.randn(3, 4)
    assert torch.equal(Activation("gelu")(x), activations.gelu(x))
    assert torch.equal(Activation(torch.tanh)(x), torch.tanh(x))
    assert torch.equal(Activation(None)(x), x)
    assert Activation("softmax").get_config()["activation"] == "softmax"


@pytest.mark.parametrize("policy", ["float16", "mixed_bfloat16"])
def test_activation_softmax_keeps_compute_dtype(policy):
    y = Activation("softmax", dtype=policy)(torch.randn(2, 5) * 20)
    assert y.dtype == getattr(torch, Activation("softmax", dtype=policy).compute_dtype)
    torch.testing.assert_close(y.float().sum(-1), torch.ones(2), rtol=0, atol=1e-2)


def test_activation_bad_name():
    with pytest.raises(ValueError, match="activation='relu7'"):
        Activation("relu7")


# ----------------------------------------------------------------------------- Flatten / Reshape
def test_flatten_channels_last_and_first():
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(Flatten()(x), x.reshape(2, 12))
    # channels_first: the channel axis moves last, matching a channels_last model's order
    assert torch.equal(Flatten(data_format="channels_first")(x), x.transpose(1, 2).reshape(2, 12))
    assert Flatten().compute_output_shape((None, 3, 4)) == (None, 12)
    assert Flatten().compute_output_shape((2, None, 4)) == (2, None)
    assert Flatten()(torch.ones(5)).shape == (5, 1)


def test_flatten_bad_data_format():
    with pytest.raises(ValueError, match="data_format='NCHW'"):
        Flatten(data_format="NCHW")


def test_reshape():
    x = torch.arange(24.0).reshape(2, 12)
    assert torch.equal(Reshape((3, 4))(x), x.reshape(2, 3, 4))
    assert Reshape((3, -1))(x).shape == (2, 3, 4)
    assert Reshape((-1, 2)).compute_output_shape((None, 12)) == (None, 6, 2)
    assert Reshape((-1, 2)).compute_output_shape((None, None)) == (None, None, 2)
    assert Reshape([6, 2]).get_config()["target_shape"] == (6, 2)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ((3, -1, -1), r"target_shape=\(3, -1, -1\)"),
        ((0, 2), r"target_shape=\(0, 2\)"),
        ("3", r"target_shape='3'"),
    ],
)
def test_reshape_bad_target(target, match):
    with pytest.raises(ValueError, match=match):
        Reshape(target)


def test_reshape_incompatible_input():
    with pytest.raises(ValueError, match=r"input_shape=\(2, 10\)"):
        Reshape((3, 4))(torch.ones(2, 10))
    with pytest.raises(ValueError, match=r"input_shape=\(2, 10\)"):
        Reshape((3, -1))(torch.ones(2, 10))


# ----------------------------------------------------------------------------- Add / Concatenate
def test_add_values_and_broadcasting():
    a, b, c = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 4)
    assert torch.equal(Add()([a, b]), a + b)
    # a lower-rank input gets axes inserted after the batch axis (Keras rule)
    assert torch.equal(Add()([a, c]), a + c[:, None, :])
    assert Add().compute_output_shape([(None, 3, 4), (2, 1, 4)]) == (2, 3, 4)
    assert Add().compute_output_shape([(None, 3, None), (None, 3, 4)]) == (None, 3, 4)


def test_add_masks_or():
    m1 = torch.tensor([[True, False, False]])
    m2 = torch.tensor([[False, False, True]])
    x = [torch.ones(1, 3, 2)] * 2
    assert Add().compute_mask(x, [m1, m2]).tolist() == [[True, False, True]]
    assert Add().compute_mask(x, [m1, None]) is None
    assert Add().compute_mask(x, None) is None


def test_add_errors():
    with pytest.raises(ValueError, match=r"shapes=\[\(2, 3\), \(2, 4\)\]"):
        Add().build([(2, 3), (2, 4)])
    with pytest.raises(ValueError, match=r"shapes=\[\(2, 3\), \(5, 3\)\]"):
        Add().build([(2, 3), (5, 3)])
    with pytest.raises(ValueError, match=r"input_shape=\(2, 3\)"):
        Add().build((2, 3))


def test_concatenate_values_and_shapes():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    assert torch.equal(Concatenate()([a, b]), torch.cat([a, b], -1))
    assert torch.equal(Concatenate(axis=1)([a, a]), torch.cat([a, a], 1))
    assert Concatenate().compute_output_shape([(None, 3, 4), (2, 3, 5)]) == (2, 3, 9)
    assert Concatenate().compute_output_shape([(2, 3, None), (2, 3, 5)]) == (2, 3, None)
    assert Concatenate(axis=1).get_config()["axis"] == 1


def test_concatenate_masks():
    a, b = torch.zeros(1, 3, 2), torch.zeros(1, 3, 4)
    m = torch.tensor([[True, False, True]])
    assert Concatenate().compute_mask([a, b], [m, None]).tolist() == [[True, True, True]]
    assert Concatenate().compute_mask([a, b], [m, m]).tolist() == [[True, False, True]]
    assert Concatenate(axis=1).compute_mask([a, a], [m, None]).tolist() == [
        [True, False, True, True, True, True]
    ]
    assert Concatenate().compute_mask([a, b], [None, None]) is None


def test_concatenate_errors():
    with pytest.raises(ValueError, match=r"shapes=\[\(2, 3, 4\), \(2, 4, 4\)\]"):
        Concatenate().build([(2, 3, 4), (2, 4, 4)])
    with pytest.raises(ValueError, match=r"shapes=\[\(2, 3\), \(2, 3, 4\)\]"):
        Concatenate().build([(2, 3), (2, 3, 4)])
    with pytest.raises(ValueError, match=r"axis=2"):
        Concatenate(axis=2).build([(2, 3), (2, 3)])
    with pytest.raises(TypeError, match=r"axis='1' \(of type str\)"):
        Concatenate(axis="1")


# ----------------------------------------------------------------------------- conformance
@pytest.mark.parametrize(
    ("cls", "kwargs", "input_shape", "output_shape"),
    [
        (Dropout, {"rate": 0.5}, (2, 3), (2, 3)),
        (Dropout, {"rate": 0.5, "noise_shape": (None, 1, 3), "seed": 1}, (2, 2, 3), (2, 2, 3)),
        (Activation, {"activation": "softmax"}, (2, 3), (2, 3)),
        (Activation, {"activation": "gelu"}, (2, 3), (2, 3)),
        (Flatten, {}, (2, 3, 4), (2, 12)),
        (Flatten, {"data_format": "channels_first"}, (2, 3, 4), (2, 12)),
        (Reshape, {"target_shape": (2, -1)}, (2, 3, 4), (2, 2, 6)),
        (Add, {}, [(2, 3), (2, 3), (2, 1)], (2, 3)),
        (Concatenate, {"axis": 1}, [(2, 3, 2), (2, 1, 2)], (2, 4, 2)),
    ],
)
def test_conformance(cls, kwargs, input_shape, output_shape):
    report = run_layer_test(cls, kwargs, input_shape, expected_output_shape=output_shape)
    assert "gradients" in report.passed("mixed_bfloat16")
