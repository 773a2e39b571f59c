"""mpq.quantization.quantize(model, ...): filters, the report, all-or-nothing, weight_bytes."""

from __future__ import annotations

import pytest
import torch

from mpq.layers import (
    Conv1D,
    Dense,
    Dropout,
    Embedding,
    Layer,
    LayerNormalization,
    Sequential,
)
from mpq.quantization import QuantizationConfig, QuantizationReport, quantize, weight_bytes
from mpq.quantization.int8 import Int8Scheme


class Block(Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = Embedding(10, 8, name="embed")
        self.body = Sequential(
            [
                Dense(8, name="fc1"),
                Dropout(0.1, name="drop"),
                LayerNormalization(name="norm"),
                Dense(4, name="fc2"),
            ],
            name="body",
        )

    def call(self, ids):
        return self.body(self.embed(ids))


def _model():
    model = Block(name="block")
    model(torch.tensor([[1, 2, 3]]))
    return model


def test_quantizes_every_supported_layer_and_reports_the_rest():
    model = _model()
    before = weight_bytes(model)
    report = quantize(model, "int8")
    assert isinstance(report, QuantizationReport)
    assert report.quantized == ["block/embed", "block/body/fc1", "block/body/fc2"]
    assert set(report.skipped) == {"block/body/drop", "block/body/norm"}
    assert report.skipped["block/body/norm"].startswith(
        "unsupported: Layer LayerNormalization has no quantization scheme for mode='int8'"
    )
    assert (report.bytes_before, report.bytes_after) == (before, weight_bytes(model))
    assert report.bytes_after < report.bytes_before
    assert "3 quantized, 2 skipped" in str(report)
    again = quantize(model, "int4")
    assert again.quantized == []
    assert again.skipped["block/body/fc1"] == "already quantized (int8_from_float32)"


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        (r"fc\d$", ["block/body/fc1", "block/body/fc2"]),
        (["fc2", "block/embed"], ["block/embed", "block/body/fc2"]),
        (lambda layer: isinstance(layer, Dense) and layer.units == 8, ["block/body/fc1"]),
    ],
    ids=["regex", "names", "callable"],
)
def test_filters(filter_, expected):
    model = _model()
    report = quantize(model, QuantizationConfig("int4/-1"), filter=filter_)
    assert report.quantized == expected
    filtered = {p for p, why in report.skipped.items() if why == "filtered"}
    assert filtered == {"block/embed", "block/body/fc1", "block/body/fc2"} - set(expected)
    for layer in model.modules():
        if isinstance(layer, Layer) and layer.path in expected:
            assert layer.dtype_policy.name == "int4/-1_from_float32"


def test_options_a_layer_kind_cannot_run_are_skipped_with_the_reason():
    model = Sequential([Conv1D(4, 3, name="conv"), Dense(2, name="fc")], name="net")
    model(torch.randn(1, 5, 3))
    report = quantize(model, QuantizationConfig("int4/4", weight_only=False))
    assert report.quantized == ["net/fc"]
    assert report.skipped["net/conv"].startswith("unsupported: ")
    assert "int8 activations only per output" in report.skipped["net/conv"]
    assert model.layers[0].quantization_mode is None


def test_float8_quantizes_every_weighted_layer_the_embedding_included():
    model = _model()
    report = quantize(model, "float8")
    assert report.quantized == ["block/embed", "block/body/fc1", "block/body/fc2"]
    assert model.embed.embeddings.dtype == torch.float8_e4m3fn


def test_bad_arguments():
    model = _model()
    with pytest.raises(TypeError, match=r"Received: filter=3 \(of type int\)"):
        quantize(model, "int8", filter=3)
    with pytest.raises(ValueError, match=r"Received: filter='\('"):
        quantize(model, "int8", filter="(")
    with pytest.raises(TypeError, match=r"Received: filter=\[1\]"):
        quantize(model, "int8", filter=[1])
    with pytest.raises(ValueError, match=r"Received: mode='int3'"):
        quantize(model, "int3")
    with pytest.raises(TypeError, match=r"Expected an mpq.layers.Layer.*of type Linear"):
        quantize(torch.nn.Linear(2, 2), "int8")
    assert all(
        layer.quantization_mode is None for layer in model.modules() if isinstance(layer, Layer)
    )


def test_an_unbuilt_layer_raises_before_anything_changes():
    model = Sequential([Dense(3), Dense(2)])
    model.layers[0].build((None, 4))
    with pytest.raises(ValueError, match=r"Cannot quantize \['sequential.*/dense.*'\]: not built"):
        quantize(model, "int8")
    assert model.layers[0].kernel.dtype == torch.float32


def test_a_failure_midway_restores_the_layers_already_converted(monkeypatch):
    model = _model().eval()  # no dropout
    x = torch.tensor([[1, 2, 3]])
    y = model(x)
    weights = [(w.name, w.clone()) for w in model.weights]
    real = Int8Scheme.convert
    calls = []

    def flaky(self, layer, cfg, form, values):
        calls.append(layer.name)
        if layer.name == "fc2" and values:
            raise RuntimeError("disk on fire")
        return real(self, layer, cfg, form, values)

    monkeypatch.setattr(Int8Scheme, "convert", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        quantize(model, "int8")
    assert calls == ["embed", "fc1", "fc2"]
    assert [(w.name, w.dtype) for w in model.weights] == [(n, t.dtype) for n, t in weights]
    assert all(torch.equal(w, t) for w, (_, t) in zip(model.weights, weights, strict=True))
    assert all(
        layer.quantization_mode is None for layer in model.modules() if isinstance(layer, Layer)
    )
    assert "quantization_config" not in model.body.layers[0].get_config()
    assert torch.equal(model(x), y)
    monkeypatch.undo()
    assert quantize(model, "int8").quantized == ["block/embed", "block/body/fc1", "block/body/fc2"]


def test_weight_bytes_counts_every_variable_once():
    layer = Dense(4)
    layer.build((None, 8))
    assert weight_bytes(layer) == (8 * 4 + 4) * 4
    layer.quantize("float8")  # the float kernel stays; six float32 state variables are added
    assert weight_bytes(layer) == (8 * 4 + 4) * 4 + 3 * 4 * (1 + 1024)
    with pytest.raises(TypeError, match=r"Received: 'dense' \(of type str\)"):
        weight_bytes("dense")


def test_options_as_config_next_to_a_mode_string():
    model = _model()
    report = quantize(model, "int8", config={"weight_only": True}, filter="fc1")
    assert report.config == QuantizationConfig("int8", weight_only=True)
    assert model.body.layers[0].get_config()["quantization_config"]["weight_only"] is True
    report = quantize(model, "int4/32", config=QuantizationConfig("int4/32", weight_only=False))
    assert report.config.name == "int4/32_int8_activations"
    with pytest.raises(ValueError, match=r"config for mode 'int8'.*mode='int4'"):
        quantize(model, "int8", config=QuantizationConfig("int4"))
    with pytest.raises(TypeError, match=r"Received: config=3 \(of type int\)"):
        quantize(model, "int8", config=3)
    with pytest.raises(TypeError, match=r"Expected a mode string"):
        quantize(model, QuantizationConfig("int8"), config={"weight_only": True})
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'bits'"):
        quantize(model, "int8", config={"bits": 8})


def test_a_quantized_layer_can_join_a_model_later():
    """Quantizing is an explicit policy choice: a Sequential built around the layer afterwards
    keeps it quantized and gives its own policy to the other layers only."""
    import torch

    from mpq.layers import Dense, Sequential

    dense = Dense(4)
    dense(torch.ones(1, 3))
    dense.quantize("int8")
    model = Sequential([dense, Dense(2)], dtype="mixed_bfloat16")
    out = model(torch.ones(1, 3))
    assert out.shape == (1, 2)
    assert dense.dtype_policy.name == "int8_from_float32"
    assert model.layers[1].dtype_policy.name == "mixed_bfloat16"


@pytest.mark.parametrize("bug", ["twice", "unplanned"])
def test_an_algorithm_that_quantizes_a_layer_it_was_not_given_raises_and_rolls_back(bug):
    """``quantize_layer`` applies the plan validated for a layer: a layer quantized twice or
    one that was not validated (a bug in an algorithm) raises, and nothing stays applied."""
    from dataclasses import dataclass

    from mpq.quantization.algorithms import Algorithm

    model = Sequential([Dense(3, name="a"), Dense(2, name="b")], name="m")
    model(torch.ones(1, 4))
    other = Dense(2, name="other")
    other.build((None, 4))

    @dataclass(frozen=True)
    class Buggy(Algorithm):
        algorithm = "buggy"
        modes = ("int8",)
        needs_calibration = False

        def check_layer(self, layer, cfg):
            pass

        def apply(self, ctx):
            ctx.quantize_layer(ctx.layers[0])
            ctx.quantize_layer(ctx.layers[0] if bug == "twice" else other)

    with pytest.raises(RuntimeError) as e:
        quantize(model, "int8", algorithm=Buggy())
    what = "already quantized" if bug == "twice" else "not validated"
    path = "m/a" if bug == "twice" else "other"
    assert str(e.value) == (
        "Expected a layer that mpq.quantize validated and has not quantized yet. "
        f"Received: layer {path!r} ({what})"
    )
    assert all(layer.quantization_scheme is None for layer in model.layers)
    assert other.quantization_scheme is None
