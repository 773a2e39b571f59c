"""mpq.saving: one-file save/load, bit-exact weights, clear errors on damaged or mismatching files."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import mpq
from mpq import saving
from mpq.layers import Dense, Layer, Sequential, register_layer


@register_layer("tests_saving")
class Counter(Layer):
    """Own float8 and integer state next to a float kernel."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 2), name="kernel")
        self.codes = self.add_weight(
            shape=(4,), dtype="float8_e4m3fn", trainable=False, name="codes", initializer="zeros"
        )
        self.steps = self.add_weight(shape=(), dtype="int64", trainable=False, name="steps")

    def call(self, x):
        self.steps.assign_add(1)
        return x @ self.kernel


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _model():
    model = Sequential(
        [Dense(4, activation="relu"), Dense(3, dtype="bfloat16"), Counter(dtype="float16")],
        dtype="mixed_bfloat16",
        name="saved",
    )
    model(torch.randn(2, 5))
    with torch.no_grad():
        model[2].codes.copy_(
            torch.tensor([0, 1, 127, 255], dtype=torch.uint8).view(torch.float8_e4m3fn)
        )
    return model


def test_round_trip_is_bit_exact(tmp_path):
    model = _model()
    path = tmp_path / "model.safetensors"
    saving.save(model, path)
    loaded = saving.load(path)
    assert type(loaded) is Sequential and loaded.name == "saved"
    assert [type(layer).__name__ for layer in loaded] == ["Dense", "Dense", "Counter"]
    assert [layer.dtype_policy.name for layer in loaded] == [
        "mixed_bfloat16",
        "bfloat16",
        "float16",
    ]
    for a, b in zip(model.weights, loaded.weights, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(_bits(a), _bits(b))
    assert int(loaded[2].steps) == 1
    x = torch.randn(3, 5)
    assert torch.equal(loaded(x), model(x))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_file_is_plain_safetensors_with_config(tmp_path):
    path = tmp_path / "m.safetensors"
    saving.save(_model(), path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == saving.FORMAT
    assert json.loads(meta["config"])["class_name"] == "Sequential"
    assert {"0/kernel", "0/bias", "1/kernel", "2/codes", "2/steps"} <= keys


def test_truncated_and_corrupted_files_raise(tmp_path):
    path = tmp_path / "m.safetensors"
    saving.save(_model(), path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 7])
    with pytest.raises(ValueError, match="truncated, corrupted or not a safetensors file"):
        saving.load(truncated)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # a byte of tensor data
    corrupted = tmp_path / "corrupted.safetensors"
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="do not match their checksum"):
        saving.load(corrupted)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a file at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        saving.load(garbage)
    with pytest.raises(FileNotFoundError, match="No mpq file"):
        saving.load(tmp_path / "missing.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"a": torch.zeros(1)}, str(foreign))
    with pytest.raises(ValueError, match="Received: format=None"):
        saving.load(foreign)


def _rewrite(src, dst, edit_config=None, edit_tensors=None):
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config = json.loads(meta["config"])
    if edit_config:
        edit_config(config)
    if edit_tensors:
        edit_tensors(tensors)
    meta["config"] = json.dumps(config)
    meta["sha256"] = saving._digest(tensors)
    save_file(tensors, str(dst), metadata=meta)


def test_weights_not_matching_config_raise(tmp_path):
    path = tmp_path / "m.safetensors"
    saving.save(_model(), path)

    def wider(config):
        config["config"]["layers"][0]["config"]["units"] = 6

    bad_shape = tmp_path / "bad_shape.safetensors"
    _rewrite(path, bad_shape, edit_config=wider)
    with pytest.raises(ValueError, match=r"0/kernel: model \(5, 6\) torch.float32, file \(5, 4\)"):
        saving.load(bad_shape)
    missing = tmp_path / "missing.safetensors"
    _rewrite(path, missing, edit_tensors=lambda t: t.pop("2/steps"))
    with pytest.raises(ValueError, match=r"missing \['2/steps'\], unexpected \[\]"):
        saving.load(missing)
    bad_dtype = tmp_path / "bad_dtype.safetensors"

    def to_half(tensors):
        tensors["1/bias"] = tensors["1/bias"].half()

    _rewrite(path, bad_dtype, edit_tensors=to_half)
    with pytest.raises(
        ValueError, match=r"1/bias: model \(3,\) torch.bfloat16, file \(3,\) torch.float16"
    ):
        saving.load(bad_dtype)


def test_load_weights_leaves_nothing_half_loaded(tmp_path):
    model = _model()
    path = tmp_path / "m.safetensors"
    saving.save(model, path)
    target = _model()
    before = [w.detach().clone() for w in target.weights]
    bad = tmp_path / "bad.safetensors"

    def break_last(tensors):
        tensors["2/kernel"] = torch.zeros(7, 2, dtype=tensors["2/kernel"].dtype)

    _rewrite(path, bad, edit_tensors=break_last)
    with pytest.raises(ValueError, match="2/kernel"):
        saving.load_weights(target, bad)
    for w, b in zip(target.weights, before, strict=True):
        assert torch.equal(_bits(w), _bits(b))  # the first layers were not written either
    saving.load_weights(target, path)
    for a, b in zip(model.weights, target.weights, strict=True):
        assert torch.equal(_bits(a), _bits(b))


def test_save_rejects_non_layers(tmp_path):
    with pytest.raises(TypeError, match=r"Received: .*\(of type Linear\)"):
        saving.save(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


@settings(max_examples=12, deadline=None)
@given(
    policy=st.sampled_from(mpq.policy.FLOAT_POLICY_NAMES),
    units=st.integers(1, 5),
    in_dim=st.integers(1, 5),
    use_bias=st.booleans(),
)
def test_round_trip_property_over_policies(policy, units, in_dim, use_bias):
    model = Sequential([Dense(units, use_bias=use_bias), Counter()], dtype=policy)
    model(torch.randn(2, in_dim))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.safetensors")
        saving.save(model, path)
        loaded = saving.load(path)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(model.weights, loaded.weights, strict=True):
        assert a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def test_layer_built_without_a_shape_round_trips(tmp_path):
    """`Embedding.build()` takes no shape; its build config still says it was built."""
    from mpq.layers import Embedding

    layer = Embedding(10, 4)
    layer.build()
    assert layer.get_build_config() == {"input_shape": None}
    path = tmp_path / "emb.safetensors"
    mpq.saving.save(layer, path)
    loaded = mpq.saving.load(path)
    assert torch.equal(loaded.embeddings, layer.embeddings)


# --- quantized state is validated before anything is written (issue #12) --------------------


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["inputs_scale", "kernel_scale", "outputs_grad_scale"])
def test_load_and_load_weights_refuse_invalid_float8_scales(tmp_path, name, bad):
    import mpq.quantization

    model = Sequential([Dense(3), Dense(2)])
    model.build((None, 4))
    mpq.quantize(model, "float8")
    with torch.no_grad():  # torch's own in-place write: not a checked mpq write path
        getattr(model.layers[1], name).fill_(bad)
    path = tmp_path / "bad.safetensors"
    saving.save(model, path)
    pattern = (
        rf"Expected scales that are finite and > 0 to load '.*/{name}' from '.*bad.safetensors'"
    )
    with pytest.raises(ValueError, match=pattern):
        saving.load(path)
    target = Sequential([Dense(3), Dense(2)])
    target.build((None, 4))
    mpq.quantize(target, "float8")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=pattern):
        saving.load_weights(target, path)
    after = target.state_dict()
    assert all(
        torch.equal(
            before[k],
            after[k],
        )
        for k in before
    )  # nothing half-loaded
