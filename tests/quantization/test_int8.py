"""The "int8" mode: W8A8 (dynamic per-row int8 inputs) and weight-only (W8A16) on every
weighted layer; stored layouts, exact dequantization, gradients, conformance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mpq.quantization  # noqa: F401  (registers the schemes)
from mpq.kernels import reference
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Embedding
from mpq.quantization import QuantizationConfig
from mpq.quantizers import dequantize, quantize_symmetric
from mpq.testing.layer_test import run_layer_test

W8A16 = QuantizationConfig("int8", weight_only=True)


def test_dense_int8_stores_a_k_major_int8_kernel_and_per_channel_scales():
    layer = Dense(5, dtype="float32")
    layer.build((None, 7))
    w = layer.kernel.detach().clone()
    layer.quantize("int8")
    q_ref, s_ref = quantize_symmetric(w, "int8", reduce_axes=0)
    assert layer.kernel.dtype == torch.int8 and tuple(layer.kernel.shape) == (5, 7)
    assert torch.equal(layer.kernel, q_ref.t())  # [N, K], K-major
    assert torch.equal(layer.kernel_scale, s_ref.reshape(5))
    assert not layer.kernel.requires_grad and not layer.kernel_scale.requires_grad
    assert layer.dtype_policy.name == "int8_from_float32" and layer.quantization_mode == "int8"


def test_dense_w8a8_forward_is_the_int8_matmul_of_per_row_quantized_inputs():
    layer = Dense(6, activation="relu")
    x = torch.randn(3, 4, 10)
    layer(x)
    layer.quantize("int8")
    xq, xs = quantize_symmetric(x.reshape(12, 10), "int8", reduce_axes=-1)
    expected = reference.matmul(
        xq,
        layer.kernel.t(),
        a_scale=xs,
        b_scale=layer.kernel_scale,
        bias=layer.bias.detach(),
        out_dtype=torch.float32,
    )
    torch.testing.assert_close(layer(x), torch.relu(expected).reshape(3, 4, 6), rtol=0, atol=0)


def test_dense_w8a16_forward_uses_the_dequantized_kernel_and_float_inputs():
    layer = Dense(6)
    x = torch.randn(4, 10)
    layer(x)
    layer.quantize(W8A16)
    assert layer.get_config()["quantization_config"]["weight_only"] is True
    w = dequantize(layer.kernel, layer.kernel_scale[:, None]).t()
    torch.testing.assert_close(layer(x), x @ w + layer.bias, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config", ["int8", W8A16], ids=["w8a8", "w8a16"])
def test_gradients_reach_inputs_and_bias_through_the_dequantized_kernel(config):
    layer = Dense(3)
    x = torch.randn(4, 5, requires_grad=True)
    layer(x)
    layer.quantize(config)
    layer(x).sum().backward()
    w = dequantize(layer.kernel, layer.kernel_scale[:, None])  # [N, K]
    torch.testing.assert_close(x.grad, torch.ones(4, 3) @ w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.bias.grad, torch.full((3,), 4.0))
    assert [v.name for v in layer.trainable_weights] == ["bias"]


@pytest.mark.parametrize("config", ["int8", W8A16], ids=["w8a8", "w8a16"])
@pytest.mark.parametrize(
    ("cls", "kwargs", "shape"),
    [
        (Dense, {"units": 3}, (2, 4)),
        (
            EinsumDense,
            {"equation": "abc,cde->abde", "output_shape": (None, 2, 3), "bias_axes": "de"},
            (2, 3, 4),
        ),
        (EinsumDense, {"equation": "abc,bcd->abd", "output_shape": (3, 2)}, (2, 3, 4)),
        (Conv2D, {"filters": 3, "kernel_size": 2, "padding": "same"}, (2, 4, 4, 2)),
        (Conv1D, {"filters": 3, "kernel_size": 2, "padding": "causal"}, (2, 5, 2)),
    ],
    ids=["dense", "einsum", "einsum_shared", "conv2d", "conv1d"],
)
def test_run_layer_test_int8(cls, kwargs, shape, config):
    report = run_layer_test(
        cls, kwargs, shape, policies=("float32", "mixed_bfloat16"), quantize_modes=(config,)
    )
    assert not report.skipped and len(report.checks) == 4


def test_run_layer_test_int8_embedding():
    report = run_layer_test(
        Embedding,
        {"input_dim": 6, "output_dim": 4},
        (2, 3),
        input_dtype="int64",
        input_range=(0, 6),
        policies=("float32", "mixed_bfloat16"),
        quantize_modes=("int8",),
    )
    assert not report.skipped


def test_conv2d_w8a8_quantizes_inputs_per_tensor_and_runs_the_int8_conv():
    layer = Conv2D(3, 2, strides=2, padding="same", data_format="channels_first")
    x = torch.randn(2, 4, 5, 5)
    layer(x)
    kernel = layer.kernel.detach().clone()  # [kh, kw, cin, cout]
    layer.quantize("int8")
    q_ref, s_ref = quantize_symmetric(kernel, "int8", reduce_axes=(0, 1, 2))
    assert torch.equal(layer.kernel, q_ref.permute(3, 0, 1, 2))  # [OC, KH, KW, C]
    assert torch.equal(layer.kernel_scale, s_ref.reshape(3))
    x_nhwc = x.permute(0, 2, 3, 1)
    xq, xs = quantize_symmetric(x_nhwc, "int8")  # one scale for the whole input
    expected = reference.conv2d(
        xq.contiguous(),
        layer.kernel,
        stride=2,
        padding=((0, 1), (0, 1)),
        x_scale=xs.reshape(()),
        w_scale=layer.kernel_scale,
        bias=layer.bias.detach(),
        out_dtype=torch.float32,
    )
    assert torch.equal(layer(x), expected.permute(0, 3, 1, 2))


def test_embedding_int8_dequantizes_only_the_looked_up_rows():
    layer = Embedding(7, 5, mask_zero=True)
    ids = torch.tensor([[0, 3, 6, 3]])
    layer(ids)
    table = layer.embeddings.detach().clone()
    layer.quantize("int8")
    q, scale = quantize_symmetric(table, "int8", reduce_axes=-1)
    assert torch.equal(layer.embeddings, q) and torch.equal(layer.embeddings_scale, scale[:, 0])
    assert torch.equal(layer(ids), dequantize(q, scale)[ids])
    assert layer.compute_mask(ids).tolist() == [[False, True, True, True]]


@pytest.mark.parametrize("chunk", [1, 5, 14])  # weight elements per N-chunk (K = 7)
@pytest.mark.parametrize(
    ("cls", "kwargs", "shape"),
    [
        (Dense, {"units": 5}, (3, 7)),
        (EinsumDense, {"equation": "abc,bcd->abd", "output_shape": (2, 5)}, (3, 2, 7)),
    ],
    ids=["dense", "einsum_shared"],
)
def test_weight_only_inference_in_n_chunks_matches_the_whole_kernel(
    chunk, cls, kwargs, shape, monkeypatch
):
    from mpq.quantization import int8
    from mpq.testing import assert_close

    layer = cls(**kwargs)
    x = torch.randn(*shape)
    layer(x)
    layer.quantize(W8A16)
    with torch.no_grad():
        whole = layer(x)
        monkeypatch.setattr(int8, "WEIGHT_CHUNK", chunk)
        chunked = layer(x)
    assert chunked.shape == whole.shape and chunked.dtype == whole.dtype
    assert_close(chunked, whole, torch.float32, k=7)


# --- reductions past the int32 bound (issue #12) ---------------------------------------------

K_PAST_INT32 = 140_000  # 127 * 127 * K > 2**31 - 1: a wrapped int32 accumulator goes negative


@pytest.mark.parametrize(
    "make, input_shape",
    [
        (lambda: Dense(2, use_bias=False), (1, K_PAST_INT32)),
        (lambda: EinsumDense("ab,bc->ac", output_shape=2), (1, K_PAST_INT32)),
        (lambda: Conv1D(2, 1, use_bias=False), (1, 1, K_PAST_INT32)),
        (lambda: Conv2D(2, 1, use_bias=False), (1, 1, 1, K_PAST_INT32)),
    ],
    ids=["Dense", "EinsumDense", "Conv1D", "Conv2D"],
)
def test_w8a8_layers_past_the_int32_bound_are_exact(make, input_shape):
    """All-127 kernel codes (unit scales) and all-one inputs (code 127, scale 1/127): each
    output is fp32(127 * 127 * K) * fp32(1/127), the epilogue of the exact integer sum."""
    layer = make()
    x = torch.ones(input_shape)
    layer(x)
    layer.quantize("int8")
    layer.kernel.assign(torch.full(tuple(layer.kernel.shape), 127, dtype=torch.int8))
    layer.kernel_scale.assign(torch.ones(tuple(layer.kernel_scale.shape)))
    _, x_scale = quantize_symmetric(torch.ones(()), "int8")
    exact = torch.tensor(127 * 127 * K_PAST_INT32, dtype=torch.float64).to(torch.float32)
    y = layer(x)
    assert torch.equal(y, (exact * x_scale).expand(y.shape))
    assert float(y.min()) > 0  # what a wrapped accumulator would have made negative


# --- stored codes and scales are checked on every write (issue #12) --------------------------


def _int8_dense():
    layer = Dense(3, dtype="float32")
    layer.build((None, 4))
    layer.quantize("int8")
    return layer


@pytest.mark.parametrize("code", [1000, 128, -128, -1000])
def test_int8_codes_out_of_the_symmetric_range_are_refused_on_every_write(code):
    layer = _int8_dense()
    before = [w.copy() for w in layer.get_weights()]  # bias, kernel, kernel_scale
    bad = torch.full((3, 4), code)
    pattern = r"Expected (values of torch.int8 in \[-128, 127\]|int8 codes in \[-127, 127\]) to "
    with pytest.raises(ValueError, match=pattern + r"assign variable 'dense(_\d+)?/kernel'"):
        layer.kernel.assign(bad)
    weights = [before[0], bad.numpy(), before[2]]
    with pytest.raises(ValueError, match=pattern + r"set_weights into variable"):
        layer.set_weights(weights)
    store = {"bias": torch.zeros(3), "kernel": bad, "kernel_scale": torch.ones(3)}
    with pytest.raises(ValueError, match=pattern + r"load into variable"):
        layer.load_own_variables(store)
    for w, b in zip(layer.get_weights(), before, strict=True):
        assert np.array_equal(w, b)


def test_int8_non_integral_codes_and_bad_scales_are_refused():
    layer = _int8_dense()
    with pytest.raises(
        ValueError, match=r"Expected integral, finite values to assign integer variable"
    ):
        layer.kernel.assign(torch.full((3, 4), 0.5))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(
            ValueError,
            match=r"Expected scales that are finite and > 0 to assign variable '.*kernel_scale'",
        ):
            layer.kernel_scale.assign(torch.tensor([1.0, bad, 1.0]))


@pytest.mark.parametrize("mode", ["int8", "int4", "int4/2"])
def test_rtn_state_of_all_zero_channels_is_valid_and_round_trips(mode):
    """RTN floors the statistic at 1e-7: all-zero channels get finite positive scales and
    in-range codes/zero points, which every write path accepts."""
    layer = Dense(3, use_bias=False)
    layer.build((None, 4))
    layer.kernel.assign(torch.zeros(4, 3))
    layer.quantize(mode)
    weights = layer.get_weights()
    scale = layer.kernel_scale.detach()
    assert bool((scale > 0).all()) and bool(torch.isfinite(scale).all())
    layer.set_weights(weights)
    store = {}
    layer.save_own_variables(store)
    layer.load_own_variables(store)
    assert torch.equal(layer(torch.ones(2, 4)), torch.zeros(2, 3))


# --- the lean CPU paths of the linear layers (#14 follow-up) ----------------------------------


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: Dense(5), (3, 7)),
        (lambda: Dense(6, use_bias=False), (2, 4, 9)),
        (lambda: EinsumDense("abc,bcd->abd", output_shape=(2, 5), bias_axes="d"), (3, 2, 7)),
    ],
    ids=["dense", "dense_3d_no_bias", "einsum_shared"],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_w8a8_unchecked_kernel_entry_matches_the_checked_matmul(make, shape, dtype, monkeypatch):
    from mpq.kernels import _cpu
    from mpq.quantization import _common

    layer = make()
    layer.dtype_policy = dtype
    x = torch.randn(*shape) * 3
    layer(x)
    layer.quantize("int8")
    calls = []
    lean = _cpu.int8_linear
    monkeypatch.setattr(_cpu, "int8_linear", lambda *a: calls.append(1) or lean(*a))
    with torch.no_grad():
        got = layer(x)
        assert calls, "the layer did not take the unchecked entry"
        monkeypatch.setattr(_common, "prevalidated_int8", lambda *a: False)
        want = layer(x)
    assert got.dtype == want.dtype and torch.equal(got, want)


def test_w8a8_unchecked_entry_is_not_taken_on_another_backend(monkeypatch):
    from mpq import kernels
    from mpq.kernels import _cpu

    layer = Dense(4)
    x = torch.randn(2, 8)
    layer(x)
    layer.quantize("int8")
    monkeypatch.setattr(_cpu, "int8_linear", lambda *a: pytest.fail("unchecked entry taken"))
    with torch.no_grad(), kernels.use_backend("reference"):
        y = layer(x)
    assert y.shape == (2, 4)


@pytest.mark.parametrize("use_bias", [True, False])
def test_w8a16_one_chunk_is_bit_identical_to_the_reference_backend(use_bias):
    """One chunk: the same dequantized values and the same float32 GEMM on the same layouts."""
    from mpq import kernels

    layer = Dense(12, use_bias=use_bias)
    x = torch.randn(5, 16)
    layer(x)
    with torch.no_grad():
        if use_bias:
            layer.bias.copy_(torch.randn(12))
    layer.quantize(W8A16)
    with torch.no_grad():
        got = layer(x)
        with kernels.use_backend("reference"):
            want = layer(x)
    assert torch.equal(got, want)


@pytest.mark.parametrize("chunk", [1, 16, 48, 1 << 19])
def test_w8a16_chunks_match_the_reference_backend(chunk, monkeypatch):
    from mpq import kernels
    from mpq.quantization import int8
    from mpq.testing import assert_close

    layer = Dense(13)
    x = torch.randn(4, 16)
    layer(x)
    layer.quantize(W8A16)
    monkeypatch.setattr(int8, "WEIGHT_CHUNK", chunk)
    with torch.no_grad():
        got = layer(x)
        with kernels.use_backend("reference"):
            want = layer(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close(got, want, torch.float32, k=16)


def _mpq_frames_at_int_mm(layer, x) -> list[str]:
    """``file:function`` of the mpq frames from ``Layer.forward`` down to the kernel entry
    (the outermost ``mpq.kernels`` frame) when ``torch._int_mm`` is called during ``layer(x)``,
    outermost first."""
    import os
    import sys

    import mpq

    root = os.path.dirname(os.path.abspath(mpq.__file__)) + os.sep
    kernels_dir = root + "kernels" + os.sep
    found: list[str] = []

    def probe(frame, event, arg):
        if found or event != "c_call" or getattr(arg, "__name__", "") != "_int_mm":
            return
        stack = []
        f = frame
        while f is not None:
            if f.f_code.co_filename.startswith(root):
                stack.append(f)
            f = f.f_back
        stack.reverse()
        for f in stack:
            name = f.f_code.co_filename
            found.append(f"{os.path.relpath(name, root)}:{f.f_code.co_name}")
            if name.startswith(kernels_dir):
                break

    sys.setprofile(probe)
    try:
        layer(x)
    finally:
        sys.setprofile(None)
    return found


def test_int8_dense_forward_reaches_the_kernel_in_at_most_4_mpq_frames():
    """Issue 18: Layer.__call__ (``forward``) -> scheme -> matmul -> kernel entry, no more
    (frames that returned before the kernel runs, e.g. input quantization, do not count)."""
    from mpq.kernels import use_backend

    layer = Dense(16)
    layer.build((None, 32))
    layer.quantize("int8")
    x = torch.randn(4, 32)
    with torch.no_grad(), use_backend("cpu"):
        layer(x)  # warm: lazy imports and caches are not the path being measured
        frames = _mpq_frames_at_int_mm(layer, x)
    assert frames, "the int8 forward pass did not reach torch._int_mm"
    assert frames[0] == "layers/base.py:forward", frames
    assert frames[-1].startswith("kernels/"), frames
    assert len(frames) <= 4, frames
