"""Embedding in "float8": the float8_e4m3fn table with per-row scales against a float64 numpy
oracle bit for bit, every path into the registry, round trips, conformance and the errors."""

from __future__ import annotations

import copy
import os

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mpq.quantization
from mpq import saving
from mpq.layers import Dense, Embedding, Sequential, deserialize, serialize
from mpq.quantization import QuantizationConfig
from mpq.quantization.float8_embedding import Float8EmbeddingScheme, quantize_table
from mpq.testing import strategies as st_mpq
from mpq.testing.layer_test import run_layer_test

E4M3 = ml_dtypes.float8_e4m3fn


def _oracle(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference of the quantized table, rounded to float32 after each operation:
    ``scale = max(absmax, 1e-7) / 448``, ``q = e4m3fn(clip(w / scale, -448, 448))``."""
    w = table.astype(np.float32).astype(np.float64)
    eps = np.float64(np.float32(1e-7))
    absmax = np.abs(w).max(axis=-1)
    scale = (np.maximum(absmax, eps) / 448.0).astype(np.float32)
    v = (w / scale.astype(np.float64)[:, None]).astype(np.float32)
    q = np.clip(v, -448.0, 448.0).astype(E4M3)
    return q, scale


def _dequantized(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``q * scale`` in float32 (exact in float64: 4 + 24 significant bits)."""
    return (q.astype(np.float64) * scale.astype(np.float64)[:, None]).astype(np.float32)


def _quantized(table: np.ndarray, policy: str = "float32") -> Embedding:
    layer = Embedding(*table.shape, dtype=policy)
    layer.build()
    layer.embeddings.assign(torch.from_numpy(table))
    layer.quantize("float8")
    return layer


def _codes(t: torch.Tensor) -> np.ndarray:
    return t.detach().view(torch.uint8).numpy()


def _rows_of_every_magnitude() -> np.ndarray:
    g = np.random.default_rng(0)
    rows = [g.standard_normal(16) * 10.0**k for k in range(-40, 39, 3)]
    rows.append(np.zeros(16))  # all zero: scale 1e-7 / 448, codes 0
    rows.append(np.full(16, -3.0))  # every element at the abs-max
    rows.append(np.r_[1e-9, -1e-9, np.zeros(14)])  # below the epsilon: subnormal codes
    return np.stack(rows).astype(np.float32)


def test_table_matches_the_float64_oracle_bit_for_bit():
    table = _rows_of_every_magnitude()
    layer = _quantized(table)
    q_ref, scale_ref = _oracle(table)
    assert layer.embeddings.dtype == torch.float8_e4m3fn
    np.testing.assert_array_equal(_codes(layer.embeddings), q_ref.view(np.uint8))
    np.testing.assert_array_equal(
        layer.embeddings_scale.numpy().view(np.uint32), scale_ref.view(np.uint32)
    )
    # Every row above the epsilon puts its abs-max on 448 (0 / subnormal codes below it).
    big = np.abs(table).max(axis=-1) >= np.float32(1e-7)
    assert 15 <= big.sum() < len(table) - 3
    assert (np.abs(q_ref.astype(np.float32)).max(axis=-1)[big] == 448.0).all()
    # The lookup: the looked-up rows dequantized in float32, cast once to the compute dtype.
    ids = torch.tensor([[0, 5, len(table) - 1], [len(table) - 3, 5, 2]])
    want = _dequantized(q_ref, scale_ref)[ids.numpy()]
    np.testing.assert_array_equal(layer(ids).numpy().view(np.uint32), want.view(np.uint32))


@settings(max_examples=40, deadline=None)
@given(
    st_mpq.float32_arrays((3, 7), allow_nan=False, allow_infinity=False),
    st.sampled_from(["float32", "mixed_bfloat16", "mixed_float16"]),
)
def test_quantize_table_property_bit_exact(table, policy):
    layer = _quantized(table, policy)
    q_ref, scale_ref = _oracle(table)
    np.testing.assert_array_equal(_codes(layer.embeddings), q_ref.view(np.uint8))
    np.testing.assert_array_equal(layer.embeddings_scale.numpy(), scale_ref)
    ids = torch.tensor([2, 0, 1, 2])
    out = layer(ids)
    compute = layer.dtype_policy.torch_compute_dtype
    assert out.dtype == compute
    want = torch.from_numpy(_dequantized(q_ref, scale_ref)[ids.numpy()]).to(compute)
    assert torch.equal(
        out.view(torch.int16 if compute != torch.float32 else torch.int32),
        want.view(torch.int16 if compute != torch.float32 else torch.int32),
    )


def test_every_path_gives_the_same_variables_and_config():
    ids = torch.tensor([[1, 2], [3, 0]])
    built = Embedding(6, 5, dtype="float8_from_mixed_bfloat16")
    out = built(ids)
    assert out.dtype == torch.bfloat16 and built.quantization_mode == "float8"
    converted = Embedding(6, 5, dtype="mixed_bfloat16")
    converted.build()
    converted.quantize("float8")
    setter = Embedding(6, 5, dtype="mixed_bfloat16")
    setter.build()
    setter.dtype_policy = "float8_from_mixed_bfloat16"
    layouts = [
        [(w.name, w.dtype, tuple(w.shape), w.trainable) for w in layer.weights]
        for layer in (built, converted, setter)
    ]
    assert (
        layouts[0]
        == layouts[1]
        == layouts[2]
        == [
            ("embeddings", torch.float8_e4m3fn, (6, 5), False),
            ("embeddings_scale", torch.float32, (6,), False),
        ]
    )
    assert built.get_config() == {**converted.get_config(), "name": built.name}
    assert isinstance(mpq.layers.quantization.get_scheme(built, "float8"), Float8EmbeddingScheme)


def test_quantize_model_converts_the_embedding_too():
    model = Sequential([Embedding(10, 8, name="embed"), Dense(4, name="fc")], name="net")
    model(torch.tensor([[1, 2, 3]]))
    float_bytes = mpq.quantization.weight_bytes(model.layers[0])
    report = mpq.quantization.quantize(model, "float8")
    assert report.quantized == ["net/embed", "net/fc"] and not report.skipped
    assert model.layers[0].embeddings.dtype == torch.float8_e4m3fn
    assert mpq.quantization.weight_bytes(model.layers[0]) == 10 * 8 + 10 * 4 < float_bytes


def test_round_trips_are_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = Sequential([Embedding(12, 6, name="embed"), Dense(3, name="fc")], name="net")
    ids = torch.randint(0, 12, (2, 5))
    model(ids)
    with torch.no_grad():
        model.layers[0].embeddings.normal_()
    model.layers[0].quantize(QuantizationConfig("float8", amax_history_length=4))
    y = model(ids, training=False)
    # get_config / from_config + get_weights / set_weights
    clone = deserialize(serialize(model))
    clone.set_weights(model.get_weights())
    for a, b in zip(model.get_weights(), clone.get_weights(), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert model.get_weights()[0].dtype == E4M3
    assert torch.equal(clone(ids, training=False), y)
    # save_own_variables / load_own_variables
    store = {}
    model.layers[0].save_own_variables(store)
    fresh = deserialize(serialize(model.layers[0]))
    fresh.load_own_variables(store)
    for a, b in zip(model.layers[0].weights, fresh.weights, strict=True):
        assert a.dtype == b.dtype and np.array_equal(_codes(a), _codes(b))
    # mpq.saving: one file
    path = os.fspath(tmp_path / "model.safetensors")
    saving.save(model, path)
    loaded = saving.load(path)
    assert [w.dtype for w in loaded.weights] == [w.dtype for w in model.weights]
    for a, b in zip(model.weights, loaded.weights, strict=True):
        assert np.array_equal(_codes(a), _codes(b))
    assert torch.equal(loaded(ids, training=False), y)


def test_training_updates_nothing_and_the_table_gets_no_gradient():
    layer = _quantized(np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32))
    before = [w.detach().clone() for w in layer.weights]
    out = layer(torch.tensor([1, 3]), training=True)
    assert not out.requires_grad
    assert not layer.trainable_weights
    assert all(
        np.array_equal(_codes(a), _codes(b)) for a, b in zip(before, layer.weights, strict=True)
    )
    nt = [w.detach().clone() for w in layer.non_trainable_variables]
    out2, new_nt = layer.stateless_call([], nt, torch.tensor([1, 3]), training=True)
    assert torch.equal(out2, out) and all(a is b for a, b in zip(new_nt, nt, strict=True))


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "float64"])
def test_run_layer_test_float8_embedding(policy):
    report = run_layer_test(
        Embedding,
        {"input_dim": 6, "output_dim": 4},
        (2, 3),
        input_dtype="int64",
        input_range=(0, 6),
        policies=(policy,),
        quantize_modes=("float8",),
    )
    assert not report.skipped and len(report.checks) == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_table_raises_and_leaves_the_layer(bad):
    table = np.ones((3, 4), dtype=np.float32)
    table[1, 2] = bad
    layer = Embedding(3, 4)
    layer.build()
    layer.embeddings.assign(torch.from_numpy(table))
    with pytest.raises(ValueError, match=r"finite.*Received: a table with 1 non-finite element"):
        layer.quantize("float8")
    assert layer.quantization_mode is None and layer.embeddings.dtype == torch.float32
    with pytest.raises(ValueError, match=r"Received: a table with 2 non-finite"):
        quantize_table(torch.tensor([[float("nan"), 1.0], [float("inf"), 0.0]]))


def test_set_weights_checks_dtype_and_shape():
    layer = _quantized(np.ones((3, 4), dtype=np.float32))
    before = copy.deepcopy(layer.get_weights())
    with pytest.raises(ValueError, match=r"has shape \(3, 4\).*provided weight shape \(4, 3\)"):
        layer.set_weights([np.zeros((4, 3), dtype=E4M3), np.ones(3, dtype=np.float32)])
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, layer.get_weights(), strict=True))
