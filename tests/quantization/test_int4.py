"""The "int4" mode: packed storage along K, per-channel symmetric and grouped asymmetric scales,
weight-only (matmul_int4) and int8-activation forwards against exact oracles, conformance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mpq.quantization  # noqa: F401  (registers the schemes)
from mpq.kernels import reference
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Embedding
from mpq.quantization import QuantizationConfig
from mpq.quantizers import (
    dequantize,
    pack_int4,
    quantize_asymmetric,
    quantize_symmetric,
    unpack_int4,
)
from mpq.testing.layer_test import run_layer_test

A8 = {
    "int4/-1": QuantizationConfig("int4/-1", weight_only=False),
    "int4/4": QuantizationConfig("int4/4", weight_only=False),
}


def _dense(mode, k=9, n=5):
    layer = Dense(n)
    layer.build((None, k))
    w = layer.kernel.detach().clone()
    layer.quantize(mode)
    return layer, w


def test_per_channel_storage_is_packed_symmetric_int4_along_k():
    layer, w = _dense("int4/-1")
    q, scale = quantize_symmetric(w.t(), "int4", reduce_axes=-1)  # [N, K]
    assert layer.kernel.dtype == torch.uint8 and tuple(layer.kernel.shape) == (5, 5)
    assert torch.equal(layer.kernel, pack_int4(q, axis=-1))
    assert torch.equal(layer.kernel_scale, scale.reshape(5))
    assert "kernel_zero" not in dict(layer.named_parameters())


def test_grouped_storage_has_scales_and_zero_points_per_group_and_channel():
    layer, w = _dense("int4/4")
    q, scale, zero = quantize_asymmetric(w.t(), "int4", reduce_axes=-1, group_size=4)
    assert torch.equal(layer.kernel, pack_int4(q, axis=-1))
    assert tuple(layer.kernel_scale.shape) == (3, 5)  # [ceil(9 / 4), N]
    assert torch.equal(layer.kernel_scale, scale.t())
    assert torch.equal(layer.kernel_zero, zero.t()) and layer.kernel_zero.dtype == torch.int8
    assert layer.dtype_policy.name == "int4/4_from_float32"


@pytest.mark.parametrize("mode", ["int4/-1", "int4/4"])
def test_weight_only_forward_is_matmul_int4_and_its_gradient_the_dequantized_kernel(mode):
    layer, _ = _dense(mode)
    x = torch.randn(3, 2, 9, requires_grad=True)
    y = layer(x)
    grouped = mode == "int4/4"
    expected = reference.matmul_int4(
        x.detach(),
        layer.kernel.t(),
        layer.kernel_scale,
        b_zero=layer.kernel_zero if grouped else None,
        group_size=4 if grouped else None,
        bias=layer.bias.detach(),
    )
    assert torch.equal(y.detach(), expected)
    y.sum().backward()
    q = unpack_int4(layer.kernel, axis=-1, size=9)
    if grouped:
        w = dequantize(
            q, layer.kernel_scale.t(), layer.kernel_zero.t(), group_size=4, group_axis=-1
        )
    else:
        w = dequantize(q, layer.kernel_scale[:, None])
    torch.testing.assert_close(x.grad, torch.ones(3, 2, 5) @ w, rtol=1e-6, atol=1e-6)
    assert torch.equal(layer.bias.grad, torch.full((5,), 6.0))


def test_int8_activations_per_channel_is_one_int8_matmul():
    layer, _ = _dense(A8["int4/-1"])
    x = torch.randn(4, 9)
    xq, xs = quantize_symmetric(x, "int8", reduce_axes=-1)
    q = unpack_int4(layer.kernel, axis=-1, size=9)
    expected = reference.matmul(
        xq,
        q.t(),
        a_scale=xs,
        b_scale=layer.kernel_scale,
        bias=layer.bias.detach(),
        out_dtype=torch.float32,
    )
    assert torch.equal(layer(x), expected)


def test_int8_activations_grouped_sums_one_exact_int8_matmul_per_group():
    layer, _ = _dense(A8["int4/4"])
    x = torch.randn(4, 9)
    xq, xs = quantize_symmetric(x, "int8", reduce_axes=-1)
    q = unpack_int4(layer.kernel, axis=-1, size=9).to(torch.int64)
    centred = q - layer.kernel_zero.t().repeat_interleave(4, dim=1)[:, :9]
    # Per group: exact integer dot products, then scales; groups summed in float32.
    acc = torch.zeros(4, 5)
    for j, start in enumerate(range(0, 9, 4)):
        part = xq[:, start : start + 4].to(torch.int64) @ centred[:, start : start + 4].t()
        acc = acc + (part.to(torch.float32) * xs) * layer.kernel_scale[j]
    torch.testing.assert_close(layer(x), acc + layer.bias, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["int4/-1", "int4/4"])
def test_embedding_rows_are_quantized_per_token(mode):
    layer = Embedding(6, 7)
    layer.build((None,))
    table = layer.embeddings.detach().clone()
    layer.quantize(mode)
    ids = torch.tensor([[0, 5, 5], [2, 1, 0]])
    if mode == "int4/-1":
        q, scale = quantize_symmetric(table, "int4", reduce_axes=-1)
        rows = dequantize(q, scale)
        assert tuple(layer.embeddings_scale.shape) == (6,)
    else:
        q, scale, zero = quantize_asymmetric(table, "int4", reduce_axes=-1, group_size=4)
        rows = dequantize(q, scale, zero, group_size=4, group_axis=-1)
        assert tuple(layer.embeddings_zero.shape) == (6, 2)  # [rows, groups]
    assert torch.equal(layer.embeddings, pack_int4(q, axis=-1))
    assert torch.equal(layer(ids), rows[ids])


def test_conv_int4_weight_only_equals_a_float_conv_on_the_dequantized_kernel():
    layer = Conv2D(3, 2, padding="same")
    x = torch.randn(2, 5, 5, 4)
    layer(x)
    layer.quantize("int4/4")
    q = unpack_int4(layer.kernel, axis=-1, size=16)  # [OC, 2*2*4]
    w = dequantize(q, layer.kernel_scale, layer.kernel_zero, group_size=4, group_axis=-1)
    w_keras = w.reshape(3, 2, 2, 4).permute(1, 2, 3, 0)  # [kh, kw, cin, cout]
    float_layer = Conv2D(3, 2, padding="same")
    float_layer(x)
    float_layer.kernel.assign(w_keras)
    float_layer.bias.assign(layer.bias)
    torch.testing.assert_close(layer(x), float_layer(x), rtol=1e-6, atol=1e-5)


MODES = ("int4/-1", "int4/4", *A8.values())


@pytest.mark.parametrize(
    ("cls", "kwargs", "shape", "modes"),
    [
        (Dense, {"units": 3}, (2, 5), MODES),
        (
            EinsumDense,
            {"equation": "abc,cde->abde", "output_shape": (None, 2, 3), "bias_axes": "de"},
            (2, 3, 5),
            MODES,
        ),
        (EinsumDense, {"equation": "abc,bcd->abd", "output_shape": (3, 2)}, (2, 3, 5), MODES),
        (Conv2D, {"filters": 3, "kernel_size": 2}, (2, 4, 4, 3), MODES[:3]),
        (Conv1D, {"filters": 3, "kernel_size": 2, "padding": "causal"}, (2, 5, 3), MODES[:3]),
        (Embedding, {"input_dim": 5, "output_dim": 5}, (2, 4), ("int4/-1", "int4/4")),
    ],
    ids=["dense", "einsum", "einsum_shared", "conv2d", "conv1d", "embedding"],
)
def test_run_layer_test_int4(cls, kwargs, shape, modes):
    extra = {"input_dtype": "int64", "input_range": (0, 5)} if cls is Embedding else {}
    report = run_layer_test(
        cls, kwargs, shape, policies=("float32", "mixed_bfloat16"), quantize_modes=modes, **extra
    )
    assert not report.skipped and len(report.checks) == 2 * (1 + len(modes))


# --- stored codes and scales are checked on every write (issue #12) --------------------------


def test_int4_zero_points_and_packed_bytes_out_of_range_are_refused():
    layer = Dense(3)
    layer.build((None, 8))
    layer.quantize("int4/4")
    bias, packed, scale, zero = layer.get_weights()
    for z in (9, -9, 8):
        with pytest.raises(
            ValueError,
            match=r"Expected int4 zero points in \[-8, 7\] to set_weights into variable "
            rf"'dense(_\d+)?/kernel_zero' of dtype torch.int8\. Received: 6 value\(s\) out of range, "
            rf"the first value={z} at index \[0, 0\]",
        ):
            layer.set_weights([bias, packed, scale, np.full_like(zero, z)])
    for byte in (256, -1):
        with pytest.raises(
            ValueError,
            match=r"Expected values of torch.uint8 in \[0, 255\] to set_weights into variable "
            rf"'dense(_\d+)?/kernel' of dtype torch.uint8\. Received: 12 value\(s\) out of range, "
            rf"the first value={byte}",
        ):
            layer.set_weights([bias, np.full(packed.shape, byte), scale, zero])
    with pytest.raises(ValueError, match=r"Expected scales that are finite and > 0 to load into"):
        layer.load_own_variables(
            {"bias": torch.tensor(bias), "kernel": torch.tensor(packed),
             "kernel_scale": torch.zeros(scale.shape), "kernel_zero": torch.tensor(zero)}
        )  # fmt: skip
    layer.set_weights([bias, np.full(packed.shape, 255), scale, np.full_like(zero, -8)])
    after = layer.get_weights()
    assert (after[1] == 255).all() and (after[3] == -8).all()
