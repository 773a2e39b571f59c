"""Microscaling formats: MX (OCP v1.0) and NVFP4 quantizers code by code against an independent
numpy/ml_dtypes oracle, and the mxfp*/mxint8/nvfp4 layer modes."""

from __future__ import annotations

import os
import pathlib

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mpq
import mpq.quantization
from mpq import saving
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Sequential, deserialize, serialize
from mpq.quantization import QuantizationConfig, weight_bytes
from mpq.quantizers import dequantize_mx, dequantize_nvfp4, quantize_mx, quantize_nvfp4

# ------------------------------------------------------------------------------ the oracle
# Constants straight from the OCP MX v1.0 spec (table of element formats), not from mpq.
EMAX = {
    "float8_e4m3fn": 8,
    "float8_e5m2": 15,
    "float6_e2m3fn": 2,
    "float6_e3m2fn": 4,
    "float4_e2m1fn": 2,
    "int8": 0,
}
NP_DTYPE = {
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float6_e2m3fn": ml_dtypes.float6_e2m3fn,
    "float6_e3m2fn": ml_dtypes.float6_e3m2fn,
    "float4_e2m1fn": ml_dtypes.float4_e2m1fn,
}
ELEMS = tuple(EMAX)


def _floor_log2(a: np.ndarray) -> np.ndarray:
    """floor(log2(a)) of positive finite float64 values from their bits (subnormals included)."""
    bits = a.view(np.uint64)
    biased = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64)
    mant = bits & np.uint64((1 << 52) - 1)
    sub_exp = np.array([int(m).bit_length() - 1 - 1074 if m else 0 for m in mant.ravel()])
    return np.where(biased > 0, biased - 1023, sub_exp.reshape(a.shape))


def oracle_mx(x: np.ndarray, elem: str, bs: int = 32) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    k = x.shape[-1]
    pad = -k % bs
    xb = np.concatenate([x, np.zeros((*x.shape[:-1], pad))], -1).reshape(*x.shape[:-1], -1, bs)
    finite = np.isfinite(xb)
    special = ~finite.all(-1)
    amax = np.where(finite, np.abs(xb), 0.0).max(-1)
    safe = np.where(amax > 0, amax, 1.0)
    exp = np.clip(_floor_log2(safe) - EMAX[elem], -127, 127)
    exp = np.where(amax > 0, exp, -127)
    v = xb / np.ldexp(1.0, exp)[..., None]
    v = np.where(special[..., None], 0.0, v)
    if elem == "int8":
        codes = np.clip(np.rint(v * 64), -127, 127).astype(np.int8).view(np.uint8)
    else:
        top = float(ml_dtypes.finfo(NP_DTYPE[elem]).max)
        codes = np.clip(v, -top, top).astype(NP_DTYPE[elem]).view(np.uint8)
    codes = codes.reshape(*x.shape[:-1], -1)[..., :k]
    scale = np.where(special, 255, exp + 127).astype(np.uint8)
    return codes, scale


def oracle_dequantize_mx(codes: np.ndarray, scale: np.ndarray, elem: str, bs: int = 32):
    k = codes.shape[-1]
    if elem == "int8":
        vals = codes.view(np.int8).astype(np.float64) / 64
    else:
        vals = codes.view(NP_DTYPE[elem]).astype(np.float64)
    pad = -k % bs
    vb = np.concatenate([vals, np.zeros((*vals.shape[:-1], pad))], -1)
    vb = vb.reshape(*vals.shape[:-1], -1, bs)
    out = vb * np.ldexp(1.0, scale.astype(np.int64) - 127)[..., None]
    out = np.where((scale == 255)[..., None], np.nan, out)
    return out.reshape(*vals.shape[:-1], -1)[..., :k]


def oracle_nvfp4(x: np.ndarray):
    x = np.asarray(x, np.float64)
    k = x.shape[-1]
    amax = np.float32(np.abs(x).max())
    t = max(np.float32(amax / np.float32(2688.0)), np.float32(2.0**-126))
    t = t if amax > 0 else np.float32(1.0)
    pad = -k % 16
    xb = np.concatenate([x, np.zeros((*x.shape[:-1], pad))], -1).reshape(*x.shape[:-1], -1, 16)
    raw = np.abs(xb).max(-1) / (6.0 * np.float64(t))
    s = np.clip(raw, 0, 448.0).astype(ml_dtypes.float8_e4m3fn)
    denom = s.astype(np.float64) * np.float64(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(denom[..., None] > 0, xb / denom[..., None], 0.0)
    codes = np.clip(v, -6, 6).astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    return codes.reshape(*x.shape[:-1], -1)[..., :k], s.view(np.uint8), t


def _mx(x: np.ndarray, elem: str, bs: int = 32):
    codes, scale = quantize_mx(torch.from_numpy(np.ascontiguousarray(x)), elem, bs)
    return codes.numpy(), scale.numpy()


def _all_values(elem: str) -> np.ndarray:
    """Every finite value of the element format (codes 0 .. 2**bits - 1, NaN codes dropped)."""
    if elem == "int8":
        return np.arange(-127, 128, dtype=np.float64) / 64
    bits = {"float8_e4m3fn": 8, "float8_e5m2": 8, "float6_e2m3fn": 6, "float6_e3m2fn": 6}
    n = 2 ** bits.get(elem, 4)
    vals = np.arange(n, dtype=np.uint8).view(NP_DTYPE[elem]).astype(np.float64)
    return vals[np.isfinite(vals)]


def _with_block_max(values: np.ndarray, elem: str, exp: int) -> np.ndarray:
    """Blocks of 31 values, each led by the format's largest value so the shared exponent is
    ``exp``; everything scaled by 2**exp."""
    top = 127 / 64 if elem == "int8" else float(ml_dtypes.finfo(NP_DTYPE[elem]).max)
    pad = -len(values) % 31
    v = np.concatenate([values, np.zeros(pad)]).reshape(-1, 31)
    blocks = np.concatenate([np.full((len(v), 1), top), v], 1)
    return np.ldexp(blocks, exp)


# ------------------------------------------------------------------------------ MX quantizers
@pytest.mark.parametrize("elem", ELEMS)
@pytest.mark.parametrize("exp", [-127, -20, 0, 7, 127 - 15])
def test_mx_every_code_round_trips_and_matches_oracle(elem, exp):
    values = _all_values(elem)
    x = _with_block_max(values, elem, exp)
    codes, scale = _mx(x, elem)
    ocodes, oscale = oracle_mx(x, elem)
    np.testing.assert_array_equal(codes, ocodes)
    np.testing.assert_array_equal(scale, oscale)
    assert (scale == exp + 127).all()
    back = dequantize_mx(
        torch.from_numpy(codes), torch.from_numpy(scale), elem, dtype=torch.float64
    )
    np.testing.assert_array_equal(back.numpy(), x)  # every value is exactly representable
    np.testing.assert_array_equal(back.numpy(), oracle_dequantize_mx(codes, scale, elem))


@pytest.mark.parametrize("elem", ELEMS)
def test_mx_midpoints_and_neighbours_match_oracle(elem):
    vals = np.unique(np.abs(_all_values(elem)))
    mids = (vals[:-1] + vals[1:]) / 2
    near = np.concatenate([mids, np.nextafter(mids, 0), np.nextafter(mids, np.inf)])
    x = _with_block_max(np.concatenate([near, -near]), elem, 3)
    codes, scale = _mx(x, elem)
    ocodes, oscale = oracle_mx(x, elem)
    np.testing.assert_array_equal(codes, ocodes)
    np.testing.assert_array_equal(scale, oscale)


@pytest.mark.parametrize("elem", ELEMS)
def test_mx_saturates_elements_above_the_format_max(elem):
    top = 127 / 64 if elem == "int8" else float(ml_dtypes.finfo(NP_DTYPE[elem]).max)
    # amax = 1.99 * 2**emax: the shared exponent is emax - emax = 0, and 1.99 * 2**emax > max.
    big = 1.99 * 2.0 ** EMAX[elem]
    x = np.array([[big, -big, top, 0.5] + [0.0] * 28])
    codes, scale = _mx(x, elem)
    ocodes, oscale = oracle_mx(x, elem)
    np.testing.assert_array_equal(codes, ocodes)
    np.testing.assert_array_equal(scale, oscale)
    back = dequantize_mx(
        torch.from_numpy(codes), torch.from_numpy(scale), elem, dtype=torch.float64
    )
    assert back[0, 0].item() == top and back[0, 1].item() == -top


@pytest.mark.parametrize("elem", ELEMS)
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_mx_nan_or_inf_makes_the_block_nan(elem, special):
    x = np.ones((2, 64))
    x[0, 5] = special
    codes, scale = _mx(x, elem)
    ocodes, oscale = oracle_mx(x, elem)
    np.testing.assert_array_equal(codes, ocodes)
    np.testing.assert_array_equal(scale, oscale)
    assert scale[0, 0] == 255 and scale[0, 1] != 255 and (scale[1] != 255).all()
    back = dequantize_mx(torch.from_numpy(codes), torch.from_numpy(scale), elem).numpy()
    assert np.isnan(back[0, :32]).all() and np.isfinite(back[0, 32:]).all()
    assert np.isfinite(back[1]).all()


@pytest.mark.parametrize("elem", ELEMS)
def test_mx_zero_blocks_get_the_smallest_scale_and_zero_codes(elem):
    x = np.zeros((1, 64))
    x[0, 40] = 3.0
    codes, scale = _mx(x, elem)
    assert scale[0, 0] == 0 and (codes[0, :32] == 0).all()
    np.testing.assert_array_equal(codes, oracle_mx(x, elem)[0])
    back = dequantize_mx(torch.from_numpy(codes), torch.from_numpy(scale), elem)
    assert (back[0, :32] == 0).all()


@pytest.mark.parametrize("elem", ELEMS)
def test_mx_partial_last_block_equals_zero_padding(elem):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 40)) * 10
    codes, scale = _mx(x, elem)
    padded = np.concatenate([x, np.zeros((3, 24))], 1)
    pcodes, pscale = _mx(padded, elem)
    np.testing.assert_array_equal(codes, pcodes[:, :40])
    np.testing.assert_array_equal(scale, pscale)
    assert scale.shape == (3, 2)


_F32_BITS = hnp.arrays(np.uint32, st.tuples(st.integers(1, 3), st.integers(1, 70)))


@pytest.mark.parametrize("elem", ELEMS)
@given(bits=_F32_BITS)
def test_mx_matches_oracle_on_arbitrary_float32_bits(elem, bits):
    x = bits.view(np.float32)
    codes, scale = quantize_mx(torch.from_numpy(x.copy()), elem)
    ocodes, oscale = oracle_mx(x.astype(np.float64), elem)
    np.testing.assert_array_equal(codes.numpy(), ocodes)
    np.testing.assert_array_equal(scale.numpy(), oscale)
    back = dequantize_mx(codes, scale, elem, dtype=torch.float64).numpy()
    np.testing.assert_array_equal(back, oracle_dequantize_mx(ocodes, oscale, elem))


@given(bits=_F32_BITS)
def test_nvfp4_matches_oracle_on_arbitrary_finite_float32(bits):
    x = bits.view(np.float32)
    x = np.where(np.isfinite(x), x, 1.0).astype(np.float32)
    codes, s, t = quantize_nvfp4(torch.from_numpy(x))
    ocodes, os_, ot = oracle_nvfp4(x)
    np.testing.assert_array_equal(codes.numpy(), ocodes)
    np.testing.assert_array_equal(s.numpy(), os_)
    assert t.item() == float(ot)
    back = dequantize_nvfp4(codes, s, t, dtype=torch.float64).numpy()
    k = x.shape[-1]
    expect = (
        ocodes.view(ml_dtypes.float4_e2m1fn).astype(np.float64)
        * np.repeat(os_.view(ml_dtypes.float8_e4m3fn).astype(np.float64), 16, -1)[..., :k]
        * np.float64(ot)
    )
    np.testing.assert_array_equal(back, expect)


def test_nvfp4_every_e2m1_code_and_every_e4m3_scale():
    vals = _all_values("float4_e2m1fn")  # 16 codes (both zeros)
    scales = np.arange(0, 127, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    scales = scales[scales > 0]
    t = np.float32(1.0)
    rows = np.stack([np.concatenate([[6.0], vals[:15]]) * s for s in scales])
    x = torch.from_numpy(rows)
    codes, s, tt = quantize_nvfp4(x, tensor_scale=torch.tensor(t))
    back = dequantize_nvfp4(codes, s, tt, dtype=torch.float64)
    np.testing.assert_array_equal(back.numpy(), rows)
    np.testing.assert_array_equal(
        s.numpy()[:, 0].view(ml_dtypes.float8_e4m3fn).astype(float), scales
    )


def test_nvfp4_zero_tensor_and_zero_block():
    x = torch.zeros(2, 32)
    codes, s, t = quantize_nvfp4(x)
    assert t.item() == 1.0 and (codes == 0).all() and (s == 0).all()
    x[1, 20] = 5.0
    codes, s, t = quantize_nvfp4(x)
    assert (s[0] == 0).all() and s[1, 0] == 0 and s[1, 1] != 0
    assert dequantize_nvfp4(codes, s, t)[1, 20].item() == pytest.approx(5.0, rel=0.25)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nvfp4_refuses_non_finite_input(bad):
    x = torch.ones(1, 16)
    x[0, 3] = bad
    with pytest.raises(ValueError, match=r"Expected `x` to hold only finite values\. Received"):
        quantize_nvfp4(x)


def test_mx_quantizer_errors():
    with pytest.raises(ValueError, match=r"Expected an MX element format.*Received: elem='int4'"):
        quantize_mx(torch.ones(4), "int4")
    with pytest.raises(TypeError, match=r"Expected `x` to be a floating tensor.*Received: x"):
        quantize_mx(torch.ones(4, dtype=torch.int32), "int8")
    with pytest.raises(ValueError, match=r"Expected `x` with at least one dimension.*shape \(\)"):
        quantize_mx(torch.tensor(1.0), "int8")
    with pytest.raises(ValueError, match=r"Expected `block_size` >= 1\. Received: block_size=0"):
        quantize_mx(torch.ones(4), "int8", 0)
    codes, scale = quantize_mx(torch.ones(2, 40), "float4_e2m1fn")
    with pytest.raises(ValueError, match=r"Expected `scale` of shape \(2, 2\).*Received: scale of"):
        dequantize_mx(codes, scale[:, :1], "float4_e2m1fn")
    with pytest.raises(TypeError, match=r"Expected `codes` to be a uint8 tensor.*int8"):
        dequantize_mx(codes.view(torch.int8), scale, "float4_e2m1fn")
    with pytest.raises(TypeError, match=r"Expected `tensor_scale` to be a 0-d float32 tensor"):
        quantize_nvfp4(torch.ones(16), tensor_scale=torch.ones(1))
    with pytest.raises(ValueError, match=r"Expected `tensor_scale` finite and > 0\. Received"):
        quantize_nvfp4(torch.ones(16), tensor_scale=torch.tensor(0.0))


# ------------------------------------------------------------------------------ layer modes
MODE_ELEM = {
    "mxfp8": "float8_e4m3fn",
    "mxfp8_e5m2": "float8_e5m2",
    "mxfp6": "float6_e2m3fn",
    "mxfp6_e3m2": "float6_e3m2fn",
    "mxfp4": "float4_e2m1fn",
    "mxint8": "int8",
    "nvfp4": None,
}
MODES = tuple(MODE_ELEM)


def _oracle_weight(mode: str, w_nk: np.ndarray) -> np.ndarray:
    """Dequantized ``[N, K]`` kernel by the oracle."""
    if mode == "nvfp4":
        codes, s, t = oracle_nvfp4(w_nk)
        k = w_nk.shape[-1]
        scale = np.repeat(s.view(ml_dtypes.float8_e4m3fn).astype(np.float64), 16, -1)[..., :k]
        return codes.view(ml_dtypes.float4_e2m1fn).astype(np.float64) * scale * np.float64(t)
    codes, scale = oracle_mx(w_nk, MODE_ELEM[mode])
    return oracle_dequantize_mx(codes, scale, MODE_ELEM[mode])


@pytest.mark.parametrize("weight_only", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_dense_mode_matches_the_oracle(mode, weight_only):
    torch.manual_seed(0)
    layer = Dense(8)
    x = torch.randn(5, 40)  # K = 40: one full block and a partial one
    layer(x)
    w = layer.kernel.detach().numpy().astype(np.float64).T.copy()  # [N, K]
    b = layer.bias.detach().numpy().astype(np.float64)
    layer.quantize(QuantizationConfig(mode, weight_only=weight_only))
    assert layer.quantization_mode == mode
    wq = _oracle_weight(mode, w)
    xq = x.numpy().astype(np.float64)
    if not weight_only:
        xq = _oracle_weight(mode, xq)  # inputs: the same format per row along K
    expect = xq @ wq.T + b
    got = layer(x).detach().numpy().astype(np.float64)
    # float32 accumulation of exact float32 operands over K = 40 terms
    atol = 40 * np.finfo(np.float32).eps * (np.abs(xq) @ np.abs(wq).T + np.abs(b)).max()
    np.testing.assert_allclose(got, expect, rtol=0, atol=atol)


@pytest.mark.parametrize("mode", MODES)
def test_stored_codes_equal_the_oracle_and_weight_bytes(mode):
    layer = Dense(6)
    layer.build((None, 40))
    w = layer.kernel.detach().numpy().astype(np.float64).T.copy()
    layer.quantize(mode)
    names = {v.name: v for v in layer.weights}
    packed = mode in ("mxfp4", "nvfp4")
    if mode == "nvfp4":
        codes, s, t = oracle_nvfp4(w)
        assert names["kernel_tensor_scale"].item() == float(t)
    else:
        codes, s = oracle_mx(w, MODE_ELEM[mode])
    stored = names["kernel"]
    if packed:
        stored = mpq.quantizers.unpack_int4(stored, size=40).view(torch.uint8) & 0xF
    np.testing.assert_array_equal(stored.numpy(), codes)
    np.testing.assert_array_equal(names["kernel_scale"].numpy(), s)
    blocks = 3 if mode == "nvfp4" else 2
    code_bytes = 6 * 20 if packed else 6 * 40
    extra = 4 if mode == "nvfp4" else 0
    assert weight_bytes(layer) == code_bytes + 6 * blocks + extra + 6 * 4  # + float32 bias


@pytest.mark.parametrize("mode", MODES)
def test_policy_names_parse_and_round_trip(mode):
    policy = mpq.policy.get(f"{mode}_from_bfloat16")
    assert policy.quantization_mode == mode and policy.name == f"{mode}_from_bfloat16"
    assert mpq.policy.deserialize(mpq.policy.serialize(policy)) == policy
    cfg = QuantizationConfig(mode)
    assert cfg.weight_only is True and cfg.short_str() == f"{mode}-w"
    both = QuantizationConfig(mode, weight_only=False)
    assert both.name == f"{mode}_quantized_activations" and both.short_str() == f"{mode}-wa"
    assert QuantizationConfig.from_config(both.get_config()) == both


def test_mx_mode_takes_no_block_size():
    with pytest.raises(ValueError, match=r"Expected a block size only with mode 'int4'.*mxfp4/32"):
        mpq.policy.get("mxfp4/32_from_float32")


def _model():
    return Sequential(
        [
            Conv1D(4, 3, padding="same"),
            Dense(6, activation="relu"),
            EinsumDense("abc,cd->abd", (None, 5), bias_axes="d"),
        ]
    )


@pytest.mark.parametrize("weight_only", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_round_trips_are_bit_exact(mode, weight_only, tmp_path):
    model = _model()
    x = torch.randn(2, 7, 3)
    model(x)
    report = mpq.quantize(model, QuantizationConfig(mode, weight_only=weight_only))
    assert len(report.quantized) == (3 if weight_only else 2)
    if not weight_only:  # conv inputs are not quantized: the conv is skipped, with the reason
        (why,) = report.skipped.values()
        assert why.startswith("unsupported: Layer Conv1D supports") and "weight_only=False" in why
    y = model(x)
    clone = deserialize(serialize(model))
    if not clone.built:
        clone.build_from_config(model.get_build_config())
    clone.set_weights(model.get_weights())
    for a, b in zip(model.get_weights(), clone.get_weights(), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert torch.equal(clone(x), y)
    path = os.fspath(tmp_path / "model.safetensors")
    saving.save(model, path)
    loaded = saving.load(path)
    assert [w.dtype for w in loaded.weights] == [w.dtype for w in model.weights]
    assert all(torch.equal(a, b) for a, b in zip(model.weights, loaded.weights, strict=True))
    assert torch.equal(loaded(x), y)


@pytest.mark.parametrize("mode", ["mxfp4", "nvfp4"])
def test_build_under_a_quantized_policy_matches_quantize(mode):
    policy = mpq.policy.get(f"{mode}_from_mixed_bfloat16")
    built = Dense(4, dtype=policy)
    out = built(torch.randn(3, 40))
    assert out.dtype == torch.bfloat16 and built.dtype_policy == policy
    converted = Dense(4, dtype="mixed_bfloat16")
    converted.build((None, 40))
    converted.quantize(mode)
    assert converted.dtype_policy == policy
    assert [(w.name, w.dtype, w.shape) for w in built.weights] == [
        (w.name, w.dtype, w.shape) for w in converted.weights
    ]


def test_conv_weight_only_and_refused_activations():
    conv = Conv2D(3, 2)
    x = torch.randn(1, 5, 5, 4)
    y0 = conv(x)
    conv.quantize("mxfp8")
    y = conv(x)
    sqnr = 10 * torch.log10(y0.pow(2).sum() / (y - y0).pow(2).sum())
    assert sqnr > 20  # e4m3: 3 mantissa bits, ~25 dB on Gaussian weights
    other = Conv2D(3, 2)
    other(x)
    with pytest.raises(NotImplementedError, match=r"supports mxfp4 weight-only.*Received: mode"):
        other.quantize(QuantizationConfig("mxfp4", weight_only=False))
    assert other.quantization_mode is None


def test_nvfp4_non_finite_weight_refused_and_layer_untouched():
    layer = Dense(3)
    layer.build((None, 16))
    with torch.no_grad():
        layer.kernel[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"Expected `x` to hold only finite values"):
        layer.quantize("nvfp4")
    assert layer.quantization_mode is None and layer.kernel.dtype == torch.float32


def test_mx_nan_weight_block_gives_nan_outputs_only_where_it_should():
    layer = Dense(2)
    layer.build((None, 64))
    with torch.no_grad():
        layer.kernel[3, 1] = float("nan")  # K index 3 (block 0) of output channel 1
    layer.quantize("mxfp8")
    y = layer(torch.ones(1, 64))
    assert torch.isfinite(y[0, 0]) and torch.isnan(y[0, 1])


@pytest.mark.parametrize("mode", ["mxfp4", "nvfp4"])
def test_weight_and_activation_mode_passes_gradients_straight_through(mode):
    layer = Dense(4)
    x = torch.randn(3, 32, requires_grad=True)
    layer(x)
    layer.quantize(QuantizationConfig(mode, weight_only=False))
    layer(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _mx_table_rows() -> list[str]:
    """The measured rows of the microscaling table in docs/quantization.md."""
    rows = []
    for mode in MODES:
        means = []
        for weight_only in (True, False):
            values = []
            for seed in range(5):
                torch.manual_seed(seed)
                layer = Dense(32)
                x = torch.randn(16, 64)
                y = layer(x).detach()
                layer.quantize(QuantizationConfig(mode, weight_only=weight_only))
                got = layer(x).detach()
                values.append(float(10 * torch.log10(y.pow(2).sum() / (y - got).pow(2).sum())))
            means.append(sum(values) / len(values))
        big = Dense(1024)
        big.build((None, 1024))
        big.quantize(mode)
        n = weight_bytes(big)
        rows.append(
            f"| {mode} | {means[0]:.1f} | {means[1]:.1f} | {n:,} | {100 * n / 4198400:.1f}% |"
        )
    return rows


def test_docs_microscaling_table_is_measured():
    docs = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "quantization.md").read_text()
    for row in _mx_table_rows():
        assert row in docs, f"update the microscaling table in docs/quantization.md: {row}"


@pytest.mark.parametrize(
    ("mode", "variable", "bad"),
    [
        ("mxfp6", "kernel", 64),  # 6-bit codes live in 0..63 of their byte
        ("mxfp6_e3m2", "kernel", 255),
        ("nvfp4", "kernel_scale", 0x7F),  # e4m3 NaN as a block scale
        ("nvfp4", "kernel_tensor_scale", 0.0),
    ],
)
def test_out_of_range_codes_and_scales_are_refused_on_write(mode, variable, bad):
    layer = Dense(4)
    layer.build((None, 64))
    layer.quantize(mode)
    var = layer._parameters[variable]
    before = var.detach().clone()
    value = torch.full_like(var, bad)
    with pytest.raises(ValueError, match=r"Expected .*Received: "):
        var.assign(value)
    assert torch.equal(var.detach(), before)


@pytest.mark.parametrize("mode", ["mxfp8", "mxfp4", "nvfp4"])
def test_merge_lora_without_update_keeps_every_code(mode):
    """The dequantized kernel is exact and in the float layout: requantizing it (LoRA B = 0)
    gives back the same scales bit for bit and the same kernel values (a 4-bit code of -0 may
    come back as +0: ``-0.0 + 0.0`` is ``+0.0``)."""
    layer = Dense(8)
    layer.build((None, 64))
    layer.quantize(mode)
    before = {k: v.detach().clone() for k, v in layer._parameters.items()}
    kernel = layer.quantization_scheme.dequantized_kernel(layer)
    assert kernel.shape == (64, 8) and kernel.dtype == torch.float32
    layer.enable_lora(2)  # B starts at zero
    layer.merge_lora()
    assert set(layer._parameters) == set(before)
    assert torch.equal(layer.quantization_scheme.dequantized_kernel(layer), kernel)
    for name, value in before.items():
        if name != "kernel":
            assert torch.equal(layer._parameters[name], value), name


@pytest.mark.parametrize("mode", ["mxfp8", "nvfp4"])
def test_merge_lora_requantizes_the_merged_kernel(mode):
    layer = Dense(8)
    layer.build((None, 64))
    layer.quantize(mode)
    layer.enable_lora(2)
    with torch.no_grad():
        layer.lora_kernel_b.copy_(torch.randn(2, 8) * 0.1)
        merged = layer.quantization_scheme.dequantized_kernel(layer) + layer._lora_delta(
            torch.float32
        )
    bias = layer.bias.detach().clone()
    layer.merge_lora()
    ref = Dense(8)
    ref.build((None, 64))
    with torch.no_grad():
        ref.kernel.copy_(merged)
        ref.bias.copy_(bias)
    ref.quantize(mode)
    for name, value in ref._parameters.items():
        assert torch.equal(layer._parameters[name], value), name
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.equal(layer(x), ref(x))
