"""The sweep's quantized path (`apply_policy` -> `mpq.quantize(model, mode, config=, filter=)`)
on real mpq layers, with a toy int8 scheme for Dense registered through the layer registry and a
toy `mpq.quantize` standing in for the real one: whole-model and per-layer quantization, the
bytes of what is stored, configs passed through, and a verified suggestion with int8 layers."""

from __future__ import annotations

import re

import pytest
import torch

import mpq
import mpq.sweep as sweep
from mpq.layers import Dense
from mpq.layers.quantization import (
    QuantizationScheme,
    register_scheme,
    registered_schemes,
    unregister_scheme,
)
from mpq.quantization import QuantizationConfig
from mpq.sweep.config import SweepConfig


class DenseInt8PerChannel(QuantizationScheme):
    """w ~= w_q * w_scale per output column; activations stay float (enough for the plumbing)."""

    def __init__(self):
        self.configs = []

    def _add(self, layer, shape):
        layer.kernel_q = layer.add_weight(
            shape=shape, dtype="int8", trainable=False, name="kernel_q", initializer="zeros"
        )
        layer.kernel_scale = layer.add_weight(
            shape=(shape[1],), trainable=False, name="kernel_scale", initializer="ones"
        )

    def build(self, layer, input_shape, config=None):
        self._add(layer, (input_shape[-1], layer.units))

    def quantize(self, layer, config=None):
        self.configs.append(config)
        w = layer._parameters.pop("kernel").detach().float()
        scale = w.abs().amax(0).clamp(min=1e-7) / 127
        self._add(layer, tuple(w.shape))
        layer.kernel_q.assign(torch.round(w / scale).clamp(-127, 127).to(torch.int8))
        layer.kernel_scale.assign(scale)

    def call(self, layer, inputs, training=None):
        x = inputs @ (layer.kernel_q.to(inputs.dtype) * layer.kernel_scale.to(inputs.dtype))
        if layer.bias is not None:
            x = x + layer.bias
        return x if layer.activation is None else layer.activation(x)


def toy_quantize(model, mode, config=None, filter=None):
    """The contract of `mpq.quantize` the sweep relies on (filter: a regex on layer paths)."""
    done = []
    for layer in model.modules():
        if isinstance(layer, Dense) and (filter is None or re.search(filter, layer.path)):
            # As mpq.quantize does: a dict of options becomes a QuantizationConfig.
            options = None if config is None else QuantizationConfig(mode, **config)
            layer.quantize(mode, config=options)
            done.append(layer.path)
    return {"quantized": done}


@pytest.fixture
def toy_int8(monkeypatch):
    """Swap the real (Dense, "int8") scheme for the recording toy, and put it back after."""
    real = registered_schemes().get((Dense, "int8"))
    if real is not None:
        unregister_scheme(Dense, "int8")
    scheme = DenseInt8PerChannel()
    register_scheme(Dense, "int8", scheme)
    monkeypatch.setattr(mpq, "quantize", toy_quantize, raising=False)
    try:
        yield scheme
    finally:
        unregister_scheme(Dense, "int8")
        if real is not None:
            register_scheme(Dense, "int8", real)


MODEL = {
    "name": "tiny",
    "factory": "tests.sweep._helpers:tiny_mpq_factory",
    "epochs": 3,
    "lr": 0.05,
}


def _cfg(tmp_path, **kw):
    kw.setdefault("policies", ["float32", "int8", "int8-wo"])
    return SweepConfig(models=[MODEL], out=str(tmp_path), executor="serial", plot=False, **kw)


def test_whole_model_int8(tmp_path, toy_int8):
    f32, int8, wo = sweep.run(_cfg(tmp_path), verbose=False)
    assert int8["status"] == wo["status"] == "ok", (int8["error"], wo["error"])
    assert int8["quantized_layers"] == wo["quantized_layers"] == 2
    # fc1: 4x8 int8 + 8 float32 scales + 8 float32 biases; fc2: 8x3 int8 + 3 + 3 float32
    assert int8["weight_bytes"] == (32 + 8 * 4 + 8 * 4) + (24 + 3 * 4 + 3 * 4)
    assert f32["weight_bytes"] == (32 + 8 + 24 + 3) * 4
    assert int8["bytes_ratio"] == int8["weight_bytes"] / f32["weight_bytes"]
    assert 30.0 < int8["sqnr_db"] < 80.0
    assert abs(int8["accuracy_delta"]) <= 0.05
    weight_only = QuantizationConfig("int8", weight_only=True)
    target = mpq.policy.get("int8_from_float32")  # what a scheme gets when no config is given
    assert toy_int8.configs == [target, target, weight_only, weight_only]


def test_per_layer_quantizes_exactly_one_layer(tmp_path, toy_int8):
    records = sweep.run(_cfg(tmp_path, policies=["float32", "int8"], per_layer=True), verbose=False)
    per_layer = {r["layer"]: r for r in records if r["kind"] == "per_layer"}
    assert set(per_layer) == {"tiny/fc1", "tiny/fc2"}
    for path, r in per_layer.items():
        assert r["status"] == "ok", r["error"]
        assert r["quantized_layers"] == 1
        units = 8 if path == "tiny/fc1" else 3
        fan_in = 4 if path == "tiny/fc1" else 8
        assert r["layer_weight_bytes"] == fan_in * units + 2 * units * 4
        assert r["float32_layer_weight_bytes"] == (fan_in + 1) * units * 4
    whole = next(r for r in records if r["variant"] == "int8" and r["kind"] == "policy")
    # each layer alone is at least as close to float32 as both together
    assert min(r["sqnr_db"] for r in per_layer.values()) >= whole["sqnr_db"] - 0.5


def test_suggestion_with_int8_layers_is_verified(tmp_path, toy_int8):
    cfg = _cfg(tmp_path, policies=["float32", "float16", "int8"], suggest=True, target_sqnr=25.0)
    records = sweep.run(cfg, verbose=False)
    suggested = [r for r in records if r["kind"] == "suggest"]
    assert suggested and all(r["status"] == "ok" for r in suggested), [
        r["error"] for r in suggested
    ]
    cheapest = min(suggested, key=lambda r: r["weight_bytes"])
    # fc1 (4x8): float16 stores 80 bytes, int8 96 (the scales cost more than they save);
    # fc2 (8x3): int8 stores 48 bytes, float16 54. A mixed map is the cheapest.
    assert cheapest["assignment"] == {"tiny/fc1": "float16", "tiny/fc2": "int8"}
    assert cheapest["weight_bytes"] == 80 + 48
    assert cheapest["quantized_layers"] == 1
    assert cheapest["sqnr_db"] >= 25.0
    import json

    saved = json.loads((tmp_path / "suggested_policy_map.json").read_text())["tiny"]
    pmap = mpq.policy.deserialize(saved["policy_map"])
    assert (pmap["tiny/fc1"].name, pmap["tiny/fc2"].name) == ("float16", "int8_from_float32")
    assert saved["weight_bytes"] == cheapest["weight_bytes"]


def test_no_layer_quantized_is_a_failed_run(tmp_path, monkeypatch):
    monkeypatch.setattr(mpq, "quantize", lambda model, mode, **kw: None, raising=False)
    (rec,) = sweep.run(_cfg(tmp_path, policies=["int8"]), verbose=False)
    assert rec["status"] == "error"
    assert "Received: no layer was quantized" in rec["error"]


def test_float8_static_variant_is_calibrated_and_smaller_than_float32():
    """The sweep's inference float8 (`float8-static`): e4m3fn kernels whose input ranges come
    from calibration batches (never the uncalibrated dynamic fallback), and fewer weight bytes
    than float32 (no amax histories)."""
    from mpq.sweep.config import resolve_variant
    from mpq.sweep.data import digits_flat
    from mpq.sweep.experiment import _quantize
    from mpq.sweep.models import digits_mlp

    variant = resolve_variant("float8-static")
    assert variant.quantize_config == {"scaling": "static"} and not variant.finetune
    data = digits_flat()
    model = digits_mlp(dtype="float32")
    model.build((None, 64))
    float_bytes = mpq.quantization.weight_bytes(model)
    assert _quantize(model, variant, None, data) == 3
    amax = [m._parameters["inputs_amax"] for m in model.layers]
    assert all(float(a) > 0 for a in amax)
    assert mpq.quantization.weight_bytes(model) < 0.35 * float_bytes


def test_quantizing_under_a_float_variant_is_refused():
    from mpq.sweep.config import resolve_variant
    from mpq.sweep.experiment import _quantize
    from mpq.sweep.models import digits_mlp

    with pytest.raises(ValueError, match=r"Expected a variant with a quantized policy .* "
                                         r"Received: variant 'bfloat16' with policy='bfloat16'"):  # fmt: skip
        _quantize(digits_mlp(dtype="float32"), resolve_variant("bfloat16"), None)
