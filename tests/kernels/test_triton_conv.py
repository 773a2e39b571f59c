"""Triton implicit-GEMM conv2d (interpreter on CPU, or a GPU) against the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mpq.kernels as K
from mpq.kernels import reference
from tests.kernels._helpers import DEVICE, assert_close, rand, requires_triton_device

pytestmark = [pytest.mark.kernels, requires_triton_device]

# (N, H, W, C, OC, KH, KW, stride, padding, dilation, groups)
CASES = {
    "3x3": (2, 6, 5, 3, 5, 3, 3, 1, 1, 1, 1),
    "3x3_s2_asym_pad_g2": (1, 9, 8, 4, 6, 3, 3, 2, ((0, 1), (1, 0)), 1, 2),
    "3x3_s12_dil2_depthwise": (1, 8, 9, 4, 4, 3, 3, (1, 2), (2, 1), 2, 4),
    "1x1_matmul_route": (2, 4, 5, 6, 7, 1, 1, 1, 0, 1, 1),
    "1x1_s2_grouped": (1, 5, 6, 6, 4, 1, 1, 2, 0, 1, 2),
    "7x7_s2_pad3": (1, 9, 9, 2, 3, 7, 7, 2, 3, 1, 1),
    "wide_channels": (1, 3, 3, 40, 36, 3, 3, 1, 1, 1, 1),  # C and OC span several blocks
}
DTYPES = {
    "float32": (torch.float32, torch.float32),
    "float16": (torch.float16, torch.float16),
    "bfloat16": (torch.bfloat16, torch.bfloat16),
    "e4m3xe4m3": (torch.float8_e4m3fn, torch.float8_e4m3fn),
    "e5m2xe4m3": (torch.float8_e5m2, torch.float8_e4m3fn),
    "int8": (torch.int8, torch.int8),
}


def make(case, x_dtype, w_dtype, gen):
    n, h, wd, c, oc, kh, kw, stride, padding, dilation, groups = case
    x = rand((n, h, wd, c), x_dtype, gen, DEVICE)
    w = rand((oc, kh, kw, c // groups), w_dtype, gen, DEVICE)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x, w, geometry


def run_both(x, w, **kwargs):
    with K.use_backend("triton"):
        out = K.conv2d(x, w, **kwargs)
    cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    ref = reference.conv2d(x.cpu(), w.cpu(), **cpu)
    assert out.device.type == DEVICE
    assert out.is_contiguous() and out.shape == ref.shape and out.dtype == ref.dtype
    return out, ref


@pytest.mark.parametrize("epilogue", ["plain", "fused"])
@pytest.mark.parametrize("dtypes", list(DTYPES), ids=str)
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_conv2d_grid(case, dtypes, epilogue):
    x_dtype, w_dtype = DTYPES[dtypes]
    gen = torch.Generator().manual_seed(list(CASES).index(case) * 10 + list(DTYPES).index(dtypes))
    x, w, geometry = make(CASES[case], x_dtype, w_dtype, gen)
    oc = w.shape[0]
    kwargs = dict(geometry)
    eight_bit = x_dtype in (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2)
    if epilogue == "fused":
        kwargs.update(bias=rand((oc,), torch.float32, gen, DEVICE), activation="relu")
        if eight_bit:
            kwargs.update(
                x_scale=torch.tensor(0.05, device=DEVICE),
                w_scale=(torch.rand(oc, generator=gen) / 10).to(DEVICE),
            )
    elif x_dtype == torch.int8:
        kwargs.update(out_dtype=torch.int32)
    out, ref = run_both(x, w, **kwargs)
    if x_dtype == torch.int8:
        assert torch.equal(out.cpu(), ref)  # exact int32 accumulator, same fp32 epilogue ops
    else:
        kh, kw, cg = w.shape[1:]
        assert_close(out, ref, ref.dtype, k=kh * kw * cg)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_conv2d_smooth_activations_and_out_dtype(activation):
    gen = torch.Generator().manual_seed(3)
    x, w, geometry = make(CASES["3x3"], torch.bfloat16, torch.bfloat16, gen)
    bias = rand((w.shape[0],), torch.bfloat16, gen, DEVICE)
    out, ref = run_both(x, w, bias=bias, activation=activation, out_dtype=torch.float32, **geometry)
    assert_close(out, ref, torch.float32, k=27)


def test_conv2d_input_layouts():
    # NHWC views of an NCHW tensor and a strided weight: any strides are read in place.
    gen = torch.Generator().manual_seed(4)
    x_nchw = rand((2, 4, 6, 5), torch.float16, gen, DEVICE)
    w_oihw = rand((3, 4, 3, 3), torch.float16, gen, DEVICE)
    x, w = x_nchw.permute(0, 2, 3, 1), w_oihw.permute(0, 2, 3, 1)
    out, ref = run_both(x, w, padding=1)
    assert_close(out, ref, torch.float16, k=36)


def test_conv2d_empty_batch():
    x = torch.zeros(0, 5, 5, 3, device=DEVICE)
    with K.use_backend("triton"):
        out = K.conv2d(x, torch.ones(4, 3, 3, 3, device=DEVICE), padding=1)
    assert out.shape == (0, 5, 5, 4)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 2),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    cg=st.integers(1, 5),
    ocg=st.integers(1, 5),
    groups=st.integers(1, 2),
    kh=st.sampled_from([1, 2, 3]),
    kw=st.sampled_from([1, 3]),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    dtype=st.sampled_from([torch.float16, torch.int8, torch.float8_e4m3fn]),
)
def test_conv2d_hypothesis_geometry(n, h, w, cg, ocg, groups, kh, kw, stride, dilation, pad, dtype):
    oh = h + pad[0] + pad[1] - dilation[0] * (kh - 1)
    ow = w + pad[2] + pad[3] - dilation[1] * (kw - 1)
    assume(oh >= 1 and ow >= 1)  # no output pixel is an error case, tested in test_dispatch
    gen = torch.Generator().manual_seed(n * h * w * cg)
    x = rand((n, h, w, cg * groups), dtype, gen, DEVICE)
    wt = rand((ocg * groups, kh, kw, cg), dtype, gen, DEVICE)
    kwargs = dict(
        stride=stride, padding=((pad[0], pad[1]), (pad[2], pad[3])), dilation=dilation,
        groups=groups, bias=rand((ocg * groups,), torch.float32, gen, DEVICE), activation="relu",
    )  # fmt: skip
    if dtype != torch.float16:
        kwargs.update(x_scale=torch.tensor(0.125, device=DEVICE))
    out, ref = run_both(x, wt, **kwargs)
    if dtype == torch.int8:
        assert torch.equal(out.cpu(), ref)
    else:
        assert_close(out, ref, ref.dtype, k=kh * kw * cg)


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("case", ["3x3_s2_asym_pad_g2", "1x1_matmul_route"])
def test_triton_conv2d_gradients_match_reference(case, activation):
    gen = torch.Generator().manual_seed(5)
    x0, w0, geometry = make(CASES[case], torch.float32, torch.float32, gen)
    bias0 = rand((w0.shape[0],), torch.float32, gen, DEVICE)
    grads = {}
    for backend in ("triton", "reference"):
        device = DEVICE if backend == "triton" else "cpu"
        x, w, bias = (t.detach().to(device).requires_grad_() for t in (x0, w0, bias0))
        with K.use_backend(backend):
            out = K.conv2d(x, w, bias=bias, activation=activation, **geometry)
        g = torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(device)
        out.backward(g)
        grads[backend] = (x.grad, w.grad, bias.grad)
    for got, want in zip(grads["triton"], grads["reference"], strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-4)


# --- persistent conv (the Hopper kernel, forced in the interpreter) ---------------------------


@pytest.mark.parametrize("dtypes", ["bfloat16", "e5m2xe4m3", "int8"], ids=str)
@pytest.mark.parametrize(
    "case",
    ["3x3", "3x3_s2_asym_pad_g2", "3x3_s12_dil2_depthwise", "1x1_matmul_route", "wide_channels"],
    ids=str,
)
def test_persistent_conv2d(case, dtypes):
    from mpq.kernels import _triton_options

    x_dtype, w_dtype = DTYPES[dtypes]
    gen = torch.Generator().manual_seed(100 + list(CASES).index(case))
    x, w, geometry = make(CASES[case], x_dtype, w_dtype, gen)
    oc = w.shape[0]
    kwargs = dict(geometry, bias=rand((oc,), torch.float32, gen, DEVICE), activation="gelu")
    if x_dtype != torch.bfloat16:
        kwargs.update(x_scale=torch.tensor(0.05, device=DEVICE),
                      w_scale=(torch.rand(oc, generator=gen) / 10).to(DEVICE))  # fmt: skip
    with _triton_options.triton_options(kernel="persistent"):
        out, ref = run_both(x, w, **kwargs)
        if x_dtype == torch.int8:
            raw, raw_ref = run_both(x, w, out_dtype=torch.int32, **geometry)
            assert torch.equal(raw.cpu(), raw_ref)
    kh, kw, cg = w.shape[1:]
    assert_close(out, ref, ref.dtype, k=kh * kw * cg)


def test_persistent_pointwise_conv_takes_the_tma_matmul_when_aligned(monkeypatch):
    from mpq.kernels import _triton_conv, _triton_options

    calls = []
    real = _triton_conv.launch_persistent
    monkeypatch.setattr(
        _triton_conv, "launch_persistent", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    gen = torch.Generator().manual_seed(7)
    for c, expected in ((16, [1]), (6, [])):  # C * 2 bytes: 32 (TMA-aligned) or 12 (not)
        calls.clear()
        x, w = (
            rand((2, 3, 4, c), torch.float16, gen, DEVICE),
            rand((8, 1, 1, c), torch.float16, gen, DEVICE),
        )
        with _triton_options.triton_options(kernel="persistent"):
            out, ref = run_both(x, w, activation="relu")
        assert calls == expected
        assert_close(out, ref, torch.float16, k=c)


def test_conv_kernel_choice():
    from mpq.kernels import _triton_conv

    choose = _triton_conv.choose_conv_kernel
    assert choose((9, 0), "auto") == "persistent"
    assert choose((8, 9), "auto") == "tiled"
    assert choose(None, "auto") == "tiled"
    assert choose((9, 0), "tiled") == "tiled"
    with pytest.raises(ValueError, match=r"matmul only\). Received: kernel='small_m'"):
        choose((9, 0), "small_m")
    assert choose(None, "persistent", interpret=True) == "persistent"
    with pytest.raises(ValueError, match=r"capability >= 9.0.*capability=\(8, 0\)"):
        choose((8, 0), "persistent", interpret=False)
