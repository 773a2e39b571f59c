"""Quantized layers, whatever the mode: the paths into the registry (quantize, policy setter,
build under a quantized policy, from_config), bit-exact round trips, and the errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import mpq
import mpq.quantization
from mpq import saving
from mpq.layers import (
    Conv1D,
    Conv2D,
    Dense,
    EinsumDense,
    LayerNormalization,
    Sequential,
    deserialize,
    serialize,
)
from mpq.quantization import QuantizationConfig

MODES = [
    "int8",
    QuantizationConfig("int8", weight_only=True),
    "int4/-1",
    "int4/4",
    QuantizationConfig("int4/-1", weight_only=False),
    QuantizationConfig("int4/4", weight_only=False),
    QuantizationConfig("float8", amax_history_length=4),
]
IDS = ["w8a8", "w8a16", "int4pc", "int4g4", "w4a8pc", "w4a8g4", "float8"]


def _name(mode):
    return mode if isinstance(mode, str) else mode.name


def _model():
    return Sequential(
        [
            Conv1D(4, 3, padding="same"),
            Dense(6, activation="relu"),
            EinsumDense("abc,cd->abd", (None, 5), bias_axes="d"),
        ]
    )


def _train_steps(model, x, n=2):
    for _ in range(n):
        model(x, training=True).float().sum().backward()


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_round_trips_are_bit_exact(mode, tmp_path):
    model = _model()
    x = torch.randn(2, 7, 3)
    model(x)
    report = mpq.quantization.quantize(model, mode)
    skipped = _name(mode) == "int4/4_int8_activations"  # grouped int4 + int8 acts: no conv
    assert len(report.quantized) == (2 if skipped else 3)
    if _name(mode).startswith("float8"):
        _train_steps(model, x)  # non-trivial amax histories and scales
    y = model(x, training=False)
    # get_config / from_config + get_weights / set_weights
    clone = deserialize(serialize(model))
    if not clone.built:
        clone.build_from_config(model.get_build_config())
    clone.set_weights(model.get_weights())
    for a, b in zip(model.get_weights(), clone.get_weights(), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert torch.equal(clone(x, training=False), y)
    assert [la.get_config() for la in clone.layers] == [la.get_config() for la in model.layers]
    # save_own_variables / load_own_variables
    for src, dst in zip(model.layers, deserialize(serialize(model)).layers, strict=True):
        store = {}
        src.save_own_variables(store)
        assert dst.built  # deserialize builds from the build config, quantized
        dst.load_own_variables(store)
        assert all(torch.equal(a, b) for a, b in zip(src.weights, dst.weights, strict=True))
    # mpq.saving: one file
    path = os.fspath(tmp_path / "model.safetensors")
    saving.save(model, path)
    loaded = saving.load(path)
    assert [w.dtype for w in loaded.weights] == [w.dtype for w in model.weights]
    assert all(torch.equal(a, b) for a, b in zip(model.weights, loaded.weights, strict=True))
    assert torch.equal(loaded(x, training=False), y)


def test_stored_variables_per_mode():
    dtypes = {}
    for mode, ident in zip(MODES, IDS, strict=True):
        layer = Dense(6)
        layer.build((None, 9))
        layer.quantize(mode)
        dtypes[ident] = [(w.name, w.dtype, tuple(w.shape)) for w in layer.weights]
    f32, i8, u8 = torch.float32, torch.int8, torch.uint8
    assert (
        dtypes["w8a8"]
        == dtypes["w8a16"]
        == [("bias", f32, (6,)), ("kernel", i8, (6, 9)), ("kernel_scale", f32, (6,))]
    )
    assert dtypes["int4pc"] == [
        ("bias", f32, (6,)),
        ("kernel", u8, (6, 5)),
        ("kernel_scale", f32, (6,)),
    ]
    assert dtypes["int4g4"] == [
        ("bias", f32, (6,)),
        ("kernel", u8, (6, 5)),
        ("kernel_scale", f32, (3, 6)),
        ("kernel_zero", i8, (3, 6)),
    ]
    assert dtypes["float8"] == [("kernel", f32, (9, 6)), ("bias", f32, (6,))] + [
        (f"{p}_{s}", f32, () if s == "scale" else (4,))
        for p in ("inputs", "kernel", "outputs_grad")
        for s in ("scale", "amax_history")
    ]


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_build_under_a_quantized_policy_matches_quantize(mode):
    config = QuantizationConfig.get(mode)
    policy = config.to_policy("mixed_bfloat16")
    built = Dense(4, dtype=policy, quantization_config=config)
    out = built(torch.randn(3, 8))
    assert out.dtype == torch.bfloat16 and built.dtype_policy == policy
    converted = Dense(4, dtype="mixed_bfloat16")
    converted.build((None, 8))
    converted.quantize(mode)
    assert converted.dtype_policy == policy
    assert [(w.name, w.dtype, w.shape) for w in built.weights] == [
        (w.name, w.dtype, w.shape) for w in converted.weights
    ]
    assert built.get_config() == {**converted.get_config(), "name": built.name}


def test_policy_setter_on_a_built_layer_quantizes_it():
    layer = Conv2D(3, 2)
    layer(torch.randn(1, 4, 4, 2))
    layer.dtype_policy = "int4/-1_from_float32"
    assert layer.quantization_mode == "int4" and layer.kernel.dtype == torch.uint8
    assert layer.get_config()["quantization_config"]["block_size"] == -1
    model = Sequential([Dense(3), Dense(2)])
    model(torch.ones(1, 4))
    model.dtype_policy = "float8_from_float32"
    assert [la.quantization_mode for la in model.layers] == ["float8", "float8"]


def test_a_config_that_contradicts_the_policy_raises():
    with pytest.raises(ValueError, match=r"config for mode 'int8'.*Received: config=.*'int4'"):
        Dense(2, dtype="int8_from_float32", quantization_config={"mode": "int4"}).build((1, 3))
    with pytest.raises(ValueError, match=r"match its policy 'int4/32_from_float32'.*64"):
        Dense(2, dtype="int4/32_from_float32", quantization_config={"mode": "int4/64"}).build(
            (1, 3)
        )


# ------------------------------------------------------------------------------ errors
def test_quantizing_an_unbuilt_layer_raises():
    with pytest.raises(ValueError, match=r"not built yet.*Received: built=False"):
        Dense(2).quantize("int8")


def test_quantizing_twice_raises():
    layer = Dense(2)
    layer.build((None, 3))
    layer.quantize("int8")
    with pytest.raises(ValueError, match=r"already quantized.*Received: mode='int4'"):
        layer.quantize("int4")


@pytest.mark.parametrize(
    ("mode", "error", "fragment"),
    [
        ("int3", ValueError, r"Received: mode='int3'"),
        ("int4/3", ValueError, r"block_size=3"),
        (None, TypeError, r"Received: mode=None \(of type NoneType\)"),
    ],
)
def test_unknown_mode_raises_and_leaves_the_policy(mode, error, fragment):
    layer = Dense(2, dtype="mixed_bfloat16")
    layer.build((None, 3))
    weights = [w.clone() for w in layer.weights]
    with pytest.raises(error, match=fragment):
        layer.quantize(mode)
    assert layer.dtype_policy.name == "mixed_bfloat16" and layer.quantization_mode is None
    assert all(torch.equal(a, b) for a, b in zip(weights, layer.weights, strict=True))


def test_config_and_mode_must_agree():
    layer = Dense(2)
    layer.build((None, 3))
    with pytest.raises(ValueError, match=r"Expected a config for mode 'int8'"):
        layer.quantize("int8", config=QuantizationConfig("int4"))
    with pytest.raises(TypeError, match=r"Received: config='int8' \(of type str\)"):
        layer.quantize("int8", config="int8")


def test_a_subclass_needs_type_check_false():
    class MyDense(Dense):
        pass

    layer = MyDense(2)
    layer.build((None, 3))
    with pytest.raises(NotImplementedError, match=r"MyDense.*base class Dense.*type_check=False"):
        layer.quantize("int8")
    layer.quantize("int8", type_check=False)
    assert layer.kernel.dtype == torch.int8


def test_an_unsupported_mode_raises_not_implemented_naming_layer_and_mode():
    norm = LayerNormalization()
    norm(torch.ones(2, 3))
    with pytest.raises(NotImplementedError, match=r"Layer LayerNormalization .* mode='int8'"):
        norm.quantize("int8")
    with pytest.raises(NotImplementedError, match=r"Layer LayerNormalization .* mode='float8'"):
        norm.quantize("float8")
    conv = Conv2D(2, 2)
    conv(torch.ones(1, 3, 3, 2))
    with pytest.raises(NotImplementedError, match=r"Conv2D .*int8 activations only per output"):
        conv.quantize(QuantizationConfig("int4/4", weight_only=False))
    assert conv.quantization_mode is None and conv.kernel.dtype == torch.float32


def test_int_weights_reject_float_values_in_set_weights_shapes():
    layer = Dense(2)
    layer.build((None, 3))
    layer.quantize("int8")
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*\(3, 2\)"):
        layer.set_weights([np.zeros(2), np.zeros((3, 2), np.int8), np.ones(2)])
