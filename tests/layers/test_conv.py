"""Conv1D / Conv2D: values against a float64 numpy oracle (TensorFlow "same" padding, groups,
dilation, both data formats), shapes, config, errors, and the conformance harness."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpq.layers.conv import Conv1D, Conv2D, conv_output_length, same_padding
from mpq.testing.layer_test import run_layer_test

POLICIES = ("float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16")


# ----------------------------------------------------------------------------- oracle
def _tf_pads(n, k, s, d, padding):
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return (k - 1) * d, 0
    out = -(-n // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def conv_nd_oracle(x, kernel, bias, strides, padding, dilation, groups):
    """Direct float64 cross-correlation, channels last. x: [N, *spatial, C];
    kernel: [*k, C // groups, F]."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    rank = x.ndim - 2
    ks = kernel.shape[:rank]
    pads = [_tf_pads(x.shape[1 + i], ks[i], strides[i], dilation[i], padding) for i in range(rank)]
    x = np.pad(x, [(0, 0), *pads, (0, 0)])
    cin_g = kernel.shape[-2]
    filters = kernel.shape[-1]
    f_g = filters // groups
    out_sizes = [
        (x.shape[1 + i] - (ks[i] - 1) * dilation[i] - 1) // strides[i] + 1 for i in range(rank)
    ]
    out = np.zeros((x.shape[0], *out_sizes, filters))
    for pos in itertools.product(*[range(o) for o in out_sizes]):
        for offs in itertools.product(*[range(k) for k in ks]):
            idx = tuple(
                p * s + o * d for p, s, o, d in zip(pos, strides, offs, dilation, strict=True)
            )
            patch = x[(slice(None), *idx)]  # [N, C]
            w = kernel[offs]  # [C // g, F]
            for g in range(groups):
                out[(slice(None), *pos, slice(g * f_g, (g + 1) * f_g))] += (
                    patch[:, g * cin_g : (g + 1) * cin_g] @ w[:, g * f_g : (g + 1) * f_g]
                )
    if bias is not None:
        out += np.asarray(bias, np.float64)
    return out


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# ----------------------------------------------------------------------------- values
CONV2D_CASES = [
    # kernel, strides, padding, dilation, groups, spatial (H, W)
    ((3, 3), (1, 1), "valid", (1, 1), 1, (7, 6)),
    ((3, 3), (1, 1), "same", (1, 1), 1, (7, 6)),
    ((2, 2), (1, 1), "same", (1, 1), 1, (5, 5)),  # even kernel: asymmetric padding
    ((3, 2), (2, 2), "same", (1, 1), 1, (7, 6)),
    ((4, 3), (3, 2), "same", (1, 1), 2, (8, 9)),
    ((3, 3), (1, 1), "same", (2, 2), 1, (7, 7)),
    ((3, 3), (2, 1), "valid", (1, 2), 2, (9, 8)),  # strides and dilation together
    ((1, 1), (2, 2), "valid", (1, 1), 4, (5, 5)),
]


@pytest.mark.parametrize(("kernel", "strides", "padding", "dilation", "groups", "hw"), CONV2D_CASES)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_conv2d_matches_oracle(kernel, strides, padding, dilation, groups, hw, data_format):
    x = _rand(2, *hw, 4)
    layer = Conv2D(
        8,
        kernel,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        groups=groups,
        data_format=data_format,
        bias_initializer="random_normal",
        dtype="float64",
    )
    inp = x if data_format == "channels_last" else x.permute(0, 3, 1, 2).contiguous()
    y = layer(inp)
    if data_format == "channels_first":
        y = y.permute(0, 2, 3, 1)
    assert tuple(layer.kernel.shape) == (*kernel, 4 // groups, 8)
    expected = conv_nd_oracle(
        x.numpy(), layer.kernel.numpy(), layer.bias.numpy(), strides, padding, dilation, groups
    )
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    assert layer.compute_output_shape(tuple(inp.shape)) == tuple(layer(inp).shape)


@pytest.mark.parametrize(
    ("kernel", "strides", "padding", "dilation", "groups", "length"),
    [
        (3, 1, "valid", 1, 1, 9),
        (3, 1, "same", 1, 1, 9),
        (4, 2, "same", 1, 2, 9),
        (3, 1, "causal", 1, 1, 9),
        (3, 1, "causal", 3, 2, 10),
        (2, 3, "causal", 1, 1, 10),
    ],
)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_conv1d_matches_oracle(kernel, strides, padding, dilation, groups, length, data_format):
    x = _rand(3, length, 4)
    layer = Conv1D(
        6,
        kernel,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        groups=groups,
        data_format=data_format,
        bias_initializer="random_normal",
        dtype="float64",
    )
    inp = x if data_format == "channels_last" else x.transpose(1, 2).contiguous()
    y = layer(inp)
    if data_format == "channels_first":
        y = y.transpose(1, 2)
    expected = conv_nd_oracle(
        x.numpy(),
        layer.kernel.numpy(),
        layer.bias.numpy(),
        (strides,),
        padding,
        (dilation,),
        groups,
    )
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def test_conv1d_causal_output_ignores_the_future():
    layer = Conv1D(3, 4, padding="causal", dilation_rate=2, dtype="float64")
    x = _rand(1, 12, 2)
    y = layer(x)
    x2 = x.clone()
    x2[:, 7:] += 10.0
    y2 = layer(x2)
    assert y.shape == (1, 12, 3)
    assert torch.equal(y[:, :7], y2[:, :7])
    assert not torch.equal(y[:, 7:], y2[:, 7:])


def test_use_bias_false_and_activation():
    layer = Conv2D(4, 3, use_bias=False, activation="relu", dtype="float64")
    x = _rand(2, 5, 5, 3)
    y = layer(x)
    assert layer.bias is None
    assert len(layer.weights) == 1
    expected = conv_nd_oracle(x.numpy(), layer.kernel.numpy(), None, (1, 1), "valid", (1, 1), 1)
    np.testing.assert_allclose(y.detach().numpy(), np.maximum(expected, 0), rtol=1e-10, atol=1e-10)
    assert (expected < 0).any()  # the activation did something


def test_same_padding_matches_tensorflow_rule():
    # TF: out = ceil(n / s); total = max((out - 1) * s + (k - 1) * d + 1 - n, 0); extra after
    assert same_padding(5, 2, 1, 1) == (0, 1)
    assert same_padding(5, 3, 1, 1) == (1, 1)
    assert same_padding(6, 3, 2, 1) == (0, 1)
    assert same_padding(7, 3, 2, 1) == (1, 1)
    assert same_padding(8, 4, 3, 1) == (1, 1)
    assert same_padding(7, 3, 1, 2) == (2, 2)
    assert same_padding(4, 1, 4, 1) == (0, 0)


def test_conv_output_length():
    assert conv_output_length(None, 3, "valid", 1, 1) is None
    assert conv_output_length(10, 3, "valid", 1, 1) == 8
    assert conv_output_length(10, 3, "valid", 3, 2) == 2
    assert conv_output_length(10, 3, "same", 3, 2) == 4
    assert conv_output_length(10, 5, "causal", 2, 1) == 5


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_compute_output_shape_with_unknown_dims(data_format):
    layer = Conv2D(5, 3, strides=2, padding="same", data_format=data_format)
    if data_format == "channels_last":
        assert layer.compute_output_shape((None, 9, None, 3)) == (None, 5, None, 5)
    else:
        assert layer.compute_output_shape((None, 3, 9, None)) == (None, 5, 5, None)


def test_kernel_layout_and_config():
    layer = Conv2D(6, (3, 2), groups=2, strides=2)
    layer.build((1, 8, 8, 4))
    assert tuple(layer.kernel.shape) == (3, 2, 2, 6)
    assert tuple(layer.bias.shape) == (6,)
    config = layer.get_config()
    for key, value in {
        "filters": 6,
        "kernel_size": (3, 2),
        "strides": (2, 2),
        "padding": "valid",
        "data_format": "channels_last",
        "dilation_rate": (1, 1),
        "groups": 2,
        "activation": "linear",
        "use_bias": True,
    }.items():
        assert config[key] == value, key
    for key in (
        "kernel_initializer",
        "bias_initializer",
        "kernel_regularizer",
        "bias_regularizer",
        "kernel_constraint",
        "bias_constraint",
    ):
        assert key in config
    clone = Conv2D.from_config(config)
    assert clone.get_config() == config


def test_mixed_policy_dtypes():
    layer = Conv2D(4, 3, padding="same", dtype="mixed_bfloat16")
    y = layer(torch.randn(2, 6, 6, 3))
    assert y.dtype == torch.bfloat16
    assert layer.kernel.dtype == torch.float32


def test_channels_first_agrees_with_channels_last():
    x = torch.randn(2, 7, 7, 4)
    last = Conv2D(6, 3, strides=2, padding="same", groups=2)
    first = Conv2D(6, 3, strides=2, padding="same", groups=2, data_format="channels_first")
    last.build(x.shape)
    first.build((2, 4, 7, 7))
    first.set_weights(last.get_weights())
    y_last = last(x)
    y_first = first(x.permute(0, 3, 1, 2).contiguous())
    torch.testing.assert_close(y_first.permute(0, 2, 3, 1), y_last, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"filters": 0, "kernel_size": 3}, ValueError, r"filters=0 \(of type int\)"),
        ({"filters": "8", "kernel_size": 3}, ValueError, r"filters='8' \(of type str\)"),
        ({"filters": 8, "kernel_size": (3,)}, ValueError, r"kernel_size=\(3,\)"),
        ({"filters": 8, "kernel_size": 0}, ValueError, r"kernel_size=0"),
        ({"filters": 8, "kernel_size": 3, "strides": 0}, ValueError, r"strides=0"),
        ({"filters": 8, "kernel_size": 3, "strides": 1.5}, ValueError, r"strides=1.5"),
        ({"filters": 8, "kernel_size": 3, "padding": "full"}, ValueError, r"padding='full'"),
        ({"filters": 8, "kernel_size": 3, "padding": "causal"}, ValueError, r"padding='causal'"),
        ({"filters": 8, "kernel_size": 3, "data_format": "NHWC"}, ValueError, r"'NHWC'"),
        ({"filters": 8, "kernel_size": 3, "groups": 3}, ValueError, r"filters=8, groups=3"),
        ({"filters": 8, "kernel_size": 3, "groups": 0}, ValueError, r"groups=0"),
        ({"filters": 8, "kernel_size": 3, "dilation_rate": (1, -1)}, ValueError, r"\(1, -1\)"),
        ({"filters": 8, "kernel_size": 3, "activation": "nope"}, ValueError, r"'nope'"),
    ],
)
def test_conv2d_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Conv2D(**kwargs)


def test_conv_bad_inputs():
    with pytest.raises(ValueError, match=r"groups=2.*3 channels"):
        Conv2D(4, 1, groups=2).build((1, 5, 5, 3))
    with pytest.raises(ValueError, match=r"input_shape=\(1, 2, 2, 3\)"):
        Conv2D(4, 3).build((1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"rank 4.*input_shape=\(1, 5, 3\)"):
        Conv2D(4, 3).build((1, 5, 3))
    with pytest.raises(ValueError, match=r"input_shape=\(1, 5, None\)"):
        Conv1D(4, 3).build((1, 5, None))


# ----------------------------------------------------------------------------- conformance
CONFORMANCE = [
    (Conv2D, {"filters": 4, "kernel_size": 3}, (2, 5, 5, 3), (2, 3, 3, 4)),
    (
        Conv2D,
        {"filters": 4, "kernel_size": 2, "strides": 2, "padding": "same", "groups": 2},
        (2, 5, 5, 2),
        (2, 3, 3, 4),
    ),
    (
        Conv2D,
        {"filters": 3, "kernel_size": 3, "data_format": "channels_first", "activation": "gelu"},
        (2, 2, 5, 4),
        (2, 3, 3, 2),
    ),
    (Conv1D, {"filters": 4, "kernel_size": 3, "padding": "causal"}, (2, 6, 3), (2, 6, 4)),
    (
        Conv1D,
        {"filters": 4, "kernel_size": 2, "strides": 2, "use_bias": False},
        (2, 7, 2),
        (2, 3, 4),
    ),
]


@pytest.mark.parametrize(("cls", "kwargs", "input_shape", "output_shape"), CONFORMANCE)
def test_conformance(cls, kwargs, input_shape, output_shape):
    report = run_layer_test(
        cls,
        kwargs,
        input_shape,
        expected_output_shape=output_shape,
        expected_num_trainable_weights=1 + kwargs.get("use_bias", True),
        expected_num_non_trainable_weights=0,
    )
    assert set(report.checks) == set(POLICIES)


# ----------------------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(
    length=st.integers(1, 12),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 3),
    padding=st.sampled_from(["valid", "same", "causal"]),
    groups=st.sampled_from([1, 2]),
)
def test_conv1d_property_shapes_and_values(length, kernel, stride, dilation, padding, groups):
    layer = Conv1D(
        2,
        kernel,
        strides=stride,
        padding=padding,
        dilation_rate=dilation,
        groups=groups,
        bias_initializer="random_normal",
        dtype="float64",
    )
    x = torch.randn(2, length, 2, dtype=torch.float64)
    if padding == "valid" and length < (kernel - 1) * dilation + 1:
        with pytest.raises(ValueError, match="positions"):
            layer(x)
        return
    y = layer(x)
    assert layer.compute_output_shape((None, length, 2)) == (None, *y.shape[1:])
    if padding != "valid":
        assert y.shape[1] == -(-length // stride)
    expected = conv_nd_oracle(
        x.numpy(),
        layer.kernel.numpy(),
        layer.bias.numpy(),
        (stride,),
        padding,
        (dilation,),
        groups,
    )
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def test_conv2d_defaults_are_keras_pairs():
    config = Conv2D(2, 3).get_config()
    assert config["kernel_size"] == (3, 3)
    assert config["strides"] == (1, 1)
    assert config["dilation_rate"] == (1, 1)
