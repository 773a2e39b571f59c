"""float8 for inference (QuantizationConfig("float8", scaling="static")) and mpq.calibrate; the
delayed-scaling kernel scale initialised from the weights (issue 12)."""

from __future__ import annotations

import copy

import pytest
import torch

import mpq
from mpq.layers import Conv2D, Dense, Dropout, Sequential
from mpq.quantization import QuantizationConfig, weight_bytes
from mpq.testing import sqnr

STATIC = QuantizationConfig("float8", scaling="static")
E4M3_MAX = 448.0


def _e4m3(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()


def _dense(scale=1.0, k=32, n=16):
    layer = Dense(n)
    layer.build((None, k))
    with torch.no_grad():
        layer.kernel.uniform_(-scale, scale)
        layer.bias.uniform_(-1, 1)
    return layer


def test_config_names_and_errors():
    assert STATIC.name == "float8_static" and STATIC.short_str() == "fp8s"
    assert STATIC.amax_history_length is None
    assert QuantizationConfig("float8").scaling == "delayed"
    assert QuantizationConfig.from_config(STATIC.get_config()) == STATIC
    assert QuantizationConfig("int8").scaling is None
    with pytest.raises(ValueError, match=r"one of \['delayed', 'static'\].*Received: scaling='x'"):
        QuantizationConfig("float8", scaling="x")
    with pytest.raises(ValueError, match=r"Expected no `scaling` for mode 'int8'"):
        QuantizationConfig("int8", scaling="static")
    with pytest.raises(ValueError, match=r"no amax_history_length with scaling='static'"):
        QuantizationConfig("float8", scaling="static", amax_history_length=16)


def test_static_layer_matches_its_definition_exactly():
    torch.manual_seed(0)
    layer = _dense(scale=1000.0)
    w = layer.kernel.detach().clone()
    b = layer.bias.detach().clone()
    layer.quantize(STATIC)
    sw = torch.amax(w.abs()) / torch.tensor(E4M3_MAX)
    assert torch.equal(layer.kernel_scale, sw)
    assert layer.kernel.dtype == torch.float8_e4m3fn
    # codes stored K-major ([units, input_dim], the 8-bit kernels' layout, as int8 stores them)
    assert tuple(layer.kernel.shape) == (16, 32) and layer.kernel.is_contiguous()
    codes = layer.kernel.float().t()
    assert torch.equal(codes, _e4m3(w / sw))
    assert torch.equal(layer.quantization_scheme.dequantized_kernel(layer), codes * sw)
    assert float(layer.inputs_amax) == 0.0  # not calibrated
    assert weight_bytes(layer) == 32 * 16 + 16 * 4 + 4 + 4
    x = torch.randn(5, 32) * 3
    # uncalibrated: this call's own amax (dynamic), never a unit scale
    sx = torch.amax(x.abs()) / torch.tensor(E4M3_MAX)
    want = (_e4m3(x / sx) @ codes) * (sx * sw) + b
    torch.testing.assert_close(layer(x), want, rtol=2**-20, atol=0.0)
    ref = x @ w + b
    assert sqnr(ref, layer(x)) > 25  # e4m3: 3 mantissa bits, ~30 dB per rounding
    # calibrated on a range of 2: larger inputs saturate at 2
    report = mpq.calibrate(layer, [torch.full((1, 32), -2.0), torch.full((1, 32), 1.5)])
    assert float(layer.inputs_amax) == 2.0 and report.inputs_amax == {layer.path: 2.0}
    sx = torch.tensor(2.0) / torch.tensor(E4M3_MAX)
    want = (_e4m3(x / sx) @ codes) * (sx * sw) + b
    torch.testing.assert_close(layer(x), want, rtol=2**-20, atol=0.0)


def test_weights_of_magnitude_1000_are_accurate_in_both_float8_variants():
    # issue 12: the kernel scale was 1 until a training step: |w| ~ 1000 saturated at 448.
    torch.manual_seed(0)
    layer = _dense(scale=1000.0)
    x = torch.randn(8, 32)
    ref = layer(x)
    for cfg in (QuantizationConfig("float8"), STATIC):
        q = copy.deepcopy(layer)
        q.quantize(cfg)
        err = float((q(x) - ref).detach().norm() / ref.detach().norm())
        assert err < 0.1, (cfg.name, err)  # was 0.55 with a unit kernel scale
    delayed = copy.deepcopy(layer)
    delayed.quantize("float8")
    amax = layer.kernel.detach().abs().max()
    assert torch.equal(delayed.kernel_scale, amax / torch.tensor(E4M3_MAX))
    assert torch.equal(delayed.kernel_amax_history[0], amax)


def test_calibrate_a_model_and_conv_and_no_training_side_effects():
    torch.manual_seed(0)
    model = Sequential([Conv2D(4, 3, padding="same"), Dropout(0.5), Conv2D(2, 1)])
    x = torch.randn(2, 8, 8, 3)
    model(x)
    ref = model(x, training=False)
    report = mpq.quantize(model, STATIC)
    assert len(report.quantized) == 2
    model.train()
    cal = mpq.calibrate(model, iter([x, (x,)]))
    assert cal.batches == 2 and len(cal.inputs_amax) == 2 and cal.uncalibrated == []
    assert model.training  # restored
    # the first conv saw x; dropout was off (eval), so the second saw conv1(x) unscaled
    assert cal.inputs_amax[model.layers[0].path] == float(x.abs().max())
    assert sqnr(ref, model(x, training=False)) > 25
    assert "2 batches" in str(cal)


def test_calibrate_errors_leave_layers_unchanged():
    layer = _dense()
    with pytest.raises(
        ValueError, match=r"float8 inference layers to calibrate.*Received: a model with none"
    ):
        mpq.calibrate(layer, [torch.ones(1, 32)])
    layer.quantize(STATIC)
    mpq.calibrate(layer, [torch.full((1, 32), 3.0)])
    with pytest.raises(ValueError, match=r"at least one calibration batch. Received: an empty"):
        mpq.calibrate(layer, [])
    assert float(layer.inputs_amax) == 3.0
    with pytest.raises(
        TypeError, match=r"Expected each calibration batch to be a tensor.*Received: batch=3"
    ):
        mpq.calibrate(layer, [torch.full((1, 32), 5.0), 3])
    assert float(layer.inputs_amax) == 3.0
    with pytest.raises(TypeError, match=r"Expected `batches` to be an iterable of batches"):
        mpq.calibrate(layer, torch.ones(1, 32))
    with pytest.raises(
        TypeError, match=r"Expected a torch.nn.Module to calibrate. Received: model='x'"
    ):
        mpq.calibrate("x", [])


def test_static_layers_save_load_and_gradients(tmp_path):
    torch.manual_seed(0)
    model = Sequential([Dense(8), Dense(4)])
    x = torch.randn(3, 6)
    model(x)
    mpq.quantize(model, STATIC)
    mpq.calibrate(model, [x])
    path = tmp_path / "m.safetensors"
    mpq.saving.save(model, path)
    loaded = mpq.saving.load(path)
    assert torch.equal(loaded(x), model(x))
    assert loaded.layers[0].get_config()["quantization_config"]["scaling"] == "static"
    # gradients reach the inputs (straight through), not the frozen codes
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    assert not model.layers[0].kernel.requires_grad


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("kernel_scale", 0.0),
        ("kernel_scale", float("nan")),
        ("inputs_amax", -1.0),
        ("inputs_amax", float("inf")),
        ("inputs_amax", float("nan")),
    ],
)
def test_static_scales_and_ranges_are_checked_on_every_write(name, bad):
    layer = _dense()
    layer.quantize(STATIC)
    before = getattr(layer, name).detach().clone()
    with pytest.raises(ValueError, match=rf"Expected (scales|input ranges) .*variable '.*/{name}'"):
        getattr(layer, name).assign(torch.tensor(bad))
    assert torch.equal(getattr(layer, name).detach(), before)
    layer.inputs_amax.assign(torch.tensor(0.0))  # 0 = not calibrated: allowed
