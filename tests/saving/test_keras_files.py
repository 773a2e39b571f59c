"""`.keras` files into mpq (issue 16): "A `.keras` file (config.json + weights) of a model made of
supported layers loads into mpq, including quantized int8/int4/float8 layers, with outputs
matching within float32 rounding (h5py as an optional extra)." Fixtures: tools/make_keras_fixtures.py
(real Keras 3.15); the same security rules as mpq files (docs/security.md)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpq
from mpq import saving_keras

h5py = pytest.importorskip("h5py")

DATA = os.path.join(os.path.dirname(__file__), "data", "keras")
FLOAT_FIXTURES = ["mlp", "cnn", "text", "functional"]
EPS32 = torch.finfo(torch.float32).eps


def _fixture(name):
    data = np.load(os.path.join(DATA, f"{name}.npz"), allow_pickle=False)
    return (
        os.path.join(DATA, f"{name}.keras"),
        torch.from_numpy(data["x"]),
        torch.from_numpy(data["y"]),
    )


def _float32_tolerance(y: torch.Tensor, terms: int = 256) -> float:
    """float32 rounding of outputs made of reductions over at most `terms` products (two
    float32 orders of summation differ by at most ~terms * eps * the largest magnitude)."""
    return terms * EPS32 * float(y.abs().max())


@pytest.mark.parametrize("name", FLOAT_FIXTURES)
def test_float_keras_model_loads_and_matches_keras(name):
    path, x, y = _fixture(name)
    model = mpq.saving.load(path)
    assert isinstance(model, mpq.layers.Sequential if name != "functional" else mpq.layers.Layer)
    out = model(x, training=False)
    torch.testing.assert_close(out, y, rtol=0, atol=_float32_tolerance(y))


@pytest.mark.parametrize("name", ["dense_int8", "text_int8"])
def test_int8_keras_model_loads_with_its_codes(name):
    """Keras stores int8 kernels [in, out] with `kernel_scale = 1 / scale`; mpq keeps the same
    codes in its layout and the inverted scale: outputs within float32 rounding."""
    path, x, y = _fixture(name)
    model = mpq.saving.load(path)
    quantized = [layer for layer in model.layers if layer.quantization_mode == "int8"]
    assert quantized and all(
        layer.dtype_policy == mpq.policy.get("int8_from_float32") for layer in quantized
    )
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
        codes = f["layers/dense/vars/0"][()] if name == "dense_int8" else None
    if codes is not None:  # the same int8 codes, transposed to mpq's [out, in]
        assert torch.equal(model.layers[0].kernel.detach(), torch.from_numpy(codes).t())
    out = model(x, training=False)
    torch.testing.assert_close(out, y, rtol=0, atol=_float32_tolerance(y))


@pytest.mark.parametrize(
    ("name", "policy"),
    [
        ("dense_int4", "int4/128_from_float32"),
        ("dense_int4_g8", "int4/8_from_float32"),
        ("dense_int4_pc", "int4/-1_from_float32"),
    ],
)
def test_int4_keras_model_loads_with_its_codes(name, policy):
    """Keras 3.15 int4 Dense: codes packed along the output axis ([in, ceil(out/2)]), per
    channel with `kernel_scale = 1 / scale`, or in groups with `(q - zero) * scale` and a
    `g_idx`; mpq holds the same codes packed along the input axis."""
    from mpq.quantizers import unpack_int4

    path, x, y = _fixture(name)
    model = mpq.saving.load(path)
    assert [layer.dtype_policy for layer in model.layers] == [mpq.policy.get(policy)] * 2
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
        packed = torch.from_numpy(f["layers/dense/vars/0"][()])
    keras_codes = unpack_int4(packed, axis=-1, size=16)  # [in=32, out=16]
    mpq_codes = unpack_int4(model.layers[0].kernel.detach(), axis=-1, size=32)  # [out, in]
    assert torch.equal(mpq_codes, keras_codes.t())
    out = model(x, training=False)
    torch.testing.assert_close(out, y, rtol=0, atol=_float32_tolerance(y))


@pytest.mark.parametrize(
    ("name", "policy"),
    [
        ("text_int4", "int4/128_from_float32"),
        ("text_int4_g4", "int4/4_from_float32"),
        ("text_int4_pc", "int4/-1_from_float32"),
        ("einsum_int4_g2", "int4/2_from_float32"),
        ("einsum_int4_pc", "int4/-1_from_float32"),
        ("einsum_swapped_int4_pc", "int4/-1_from_float32"),
    ],
)
def test_int4_einsum_and_embedding_keras_models_load(name, policy):
    """Keras 3.15 int4 EinsumDense (kernel reshaped to [contracted, other letters] and packed
    along the second axis) and int4 Embedding ([input_dim, output_dim] packed along output_dim,
    groups along output_dim): mpq holds the same codes in its layouts, outputs within float32
    rounding of live Keras'."""
    from mpq.quantizers import unpack_int4

    path, x, y = _fixture(name)
    model = mpq.saving.load(path)
    quantized = [layer for layer in model.layers if layer.quantization_mode is not None]
    assert {type(layer).__name__ for layer in quantized} >= {"EinsumDense"}
    assert all(layer.dtype_policy == mpq.policy.get(policy) for layer in quantized)
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
        if name.startswith("text"):  # Embedding(20, 8): the very same packed codes
            keras_codes = unpack_int4(torch.from_numpy(f["layers/embedding/vars/0"][()]))
            mpq_codes = unpack_int4(model.layers[0].embeddings.detach())
            assert torch.equal(mpq_codes, keras_codes)
        else:  # "abcd,cde->abe": Keras [c*d, e], mpq [e, c*d]
            packed = torch.from_numpy(f["layers/einsum_dense/vars/0"][()])
            keras_codes = unpack_int4(packed, axis=-1, size=5)  # [24, 5]
            layer = model.layers[0]
            mpq_codes = unpack_int4(layer.kernel.detach(), axis=-1, size=24)  # [5, 24]
            if name.startswith("einsum_swapped"):  # "dce": Keras rows run d-major, mpq c-major
                keras_codes = keras_codes.reshape(6, 4, 5).transpose(0, 1).reshape(24, 5)
            assert torch.equal(mpq_codes, keras_codes.t())
    out = model(x, training=False)
    torch.testing.assert_close(out, y, rtol=0, atol=_float32_tolerance(y))


def _with_layer_config(name, tmp_path, index, **changes):
    """Fixture `name` with layer `index` of its config updated (weights as they are)."""
    path, _, _ = _fixture(name)
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    layer = config["config"]["layers"][index]["config"]
    for key, value in changes.items():
        if key == "mode":
            layer["dtype"]["config"]["mode"] = value
        else:
            layer[key] = value
    return _rewrite(path, tmp_path / "m.keras", config__json=json.dumps(config).encode())


def test_int4_einsum_groups_in_another_order_are_refused(tmp_path):
    """Keras groups an EinsumDense kernel along its contracted letters in the kernel's order
    ("dc"), mpq in the input's ("cd"): other groups, so a clear error."""
    path = _with_layer_config(
        "einsum_swapped_int4_pc", tmp_path, 1, mode="int4/2", quantization_config=None
    )
    with pytest.raises(
        ValueError,
        match=r"Expected an int4 EinsumDense with groups whose kernel lists its contracted "
        r"letters in the input's order .* Received: 'einsum_dense' with "
        r"equation='abcd,dce->abe' and block_size=2",
    ):
        mpq.saving.load(path)


def test_int4_einsum_with_contracted_letters_last_is_refused(tmp_path):
    """Keras reshapes a "bef" kernel contracted over "e" to [e, b*f] without moving axes: its
    scales then cover elements of several output channels, which mpq's int4 cannot hold."""
    path = _with_layer_config("einsum_int4_pc", tmp_path, 2, equation="abe,bef->abf")
    with pytest.raises(
        ValueError,
        match=r"Expected an int4 EinsumDense whose kernel lists its contracted letters first "
        r".* Received: 'einsum_dense_1' with equation='abe,bef->abf'",
    ):
        mpq.saving.load(path)


def test_int4_reordered_groups_are_refused(tmp_path):
    def build(f):
        path, _, _ = _fixture("dense_int4_g8")
        with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as src:

            def copy(name, obj):  # (visititems stops at a callback's first non-None result)
                if isinstance(obj, h5py.Dataset):
                    value = obj[()]
                    if name == "layers/dense/vars/4":
                        value = value[::-1].copy()
                    f.create_dataset(name, data=value)

            src.visititems(copy)

    path = _rewrite(
        _fixture("dense_int4_g8")[0], tmp_path / "m.keras", model__weights__h5=_h5(build)
    )
    with pytest.raises(
        ValueError,
        match=r"Expected the int4 group index g_idx of '.*' to be arange\(32\) // 8 \(contiguous "
        r"groups; mpq has no reordered groups\)\. Received: \[3\.0, 3\.0",
    ):
        mpq.saving.load(path)


def test_float8_keras_model_loads():
    """Keras 3.15's float8 Dense (float32 compute) adds its bias rounded to bfloat16 ("F32 bias
    has to be converted to BF16 first to get the biasAdd fusion support"); mpq adds the stored
    float32 bias. With the bias rounded the same way, outputs agree within float32 rounding."""
    path, x, y = _fixture("dense_float8")
    model = mpq.saving.load(path)
    assert [layer.dtype_policy.name for layer in model.layers] == ["float8_from_float32"] * 2
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.copy_(layer.bias.to(torch.bfloat16).float())
    out = model(x, training=False)
    torch.testing.assert_close(out, y, rtol=0, atol=_float32_tolerance(y))


def test_fixtures_are_what_the_script_makes(tmp_path):
    """tools/make_keras_fixtures.py with live Keras writes the committed configs and weights
    (object ids and timestamps aside), and Keras' outputs within float32 rounding."""
    from tests._keras import import_keras

    import_keras()
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_keras_fixtures",
        os.path.join(os.path.dirname(__file__), "..", "..", "tools", "make_keras_fixtures.py"),
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path)]) == 0
    for name in script.FIXTURES:
        ours, theirs = os.path.join(DATA, f"{name}.keras"), tmp_path / f"{name}.keras"
        with zipfile.ZipFile(ours) as a, zipfile.ZipFile(theirs) as b:
            assert _strip_ids(json.loads(a.read("config.json"))) == _strip_ids(
                json.loads(b.read("config.json"))
            )
            assert _datasets(a) == _datasets(b)
        committed = np.load(os.path.join(DATA, f"{name}.npz"))
        fresh = np.load(tmp_path / f"{name}.npz")
        assert np.array_equal(committed["x"], fresh["x"])
        y = torch.from_numpy(committed["y"])
        torch.testing.assert_close(
            torch.from_numpy(fresh["y"]), y, rtol=0, atol=_float32_tolerance(y)
        )


def _strip_ids(value):
    if isinstance(value, dict):
        return {k: _strip_ids(v) for k, v in value.items() if k != "shared_object_id"}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value]
    return value


def _datasets(archive):
    out = {}
    with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()].tobytes()) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return out


# ------------------------------------------------------------------------------- security
def _rewrite(src, dst, **entries):
    """A copy of the .keras zip `src` with entries replaced (bytes) or removed (None)."""
    with zipfile.ZipFile(src) as z:
        content = {n: z.read(n) for n in z.namelist()}
    for name, data in entries.items():
        name = name.replace("__", ".")
        if data is None:
            content.pop(name, None)
        else:
            content[name] = data
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in content.items():
            z.writestr(name, data)
    return dst


def _h5(build):
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        build(f)
    return buffer.getvalue()


def _mlp_weights(f, skip=None, extra=False, shape_change=None):
    path, _, _ = _fixture("mlp")
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as src:

        def copy(name, obj):
            if isinstance(obj, h5py.Dataset) and name != skip:
                value = obj[()]
                if name == shape_change:
                    value = np.zeros((value.size + 1,), value.dtype)
                f.create_dataset(name, data=value)

        src.visititems(copy)
    if extra:
        f.create_dataset("layers/dense/vars/9", data=np.zeros(3, "float32"))


def test_missing_entries(tmp_path):
    path = _rewrite(_fixture("mlp")[0], tmp_path / "m.keras", model__weights__h5=None)
    with pytest.raises(
        ValueError,
        match=r"Expected a \.keras file with config\.json and model\.weights\.h5\. "
        r"Received: entries \['config\.json', 'metadata\.json'\]",
    ):
        mpq.saving.load(path)


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    path = _rewrite(_fixture("mlp")[0], tmp_path / "m.keras", config__json=b" " * (8 * 2**20))
    with pytest.raises(
        ValueError,
        match=r"Expected zip entries that inflate at most 200x\. Received: "
        r"'config\.json' inflates \d+x \(8388608 bytes\)",
    ):
        mpq.saving.load(path)


def test_config_size_and_json_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(saving_keras, "MAX_CONFIG_BYTES", 100)
    path = _rewrite(_fixture("mlp")[0], tmp_path / "a.keras")
    with pytest.raises(
        ValueError, match=r"Expected config\.json of at most 100 bytes\. Received: \d+ bytes"
    ):
        mpq.saving.load(path)
    monkeypatch.undo()
    path = _rewrite(_fixture("mlp")[0], tmp_path / "b.keras", config__json=b"{not json")
    with pytest.raises(ValueError, match=r"The config\.json in .* is not valid JSON"):
        mpq.saving.load(path)
    path = _rewrite(_fixture("mlp")[0], tmp_path / "c.keras", config__json=b"[" * 5000)
    with pytest.raises(ValueError, match=r"Expected a config nested at most 100 levels deep"):
        mpq.saving.load(path)


def test_weights_larger_than_the_model_are_refused_before_reading(tmp_path):
    noise = np.random.default_rng(0).normal(size=2**19).astype("float32")  # incompressible
    big = _h5(lambda f: f.create_dataset("pad", data=noise))
    path = _rewrite(_fixture("mlp")[0], tmp_path / "m.keras", model__weights__h5=big)
    with pytest.raises(
        ValueError,
        match=r"Expected model\.weights\.h5 of at most \d+ bytes for the model its config "
        r"describes\. Received: \d+ bytes",
    ):
        mpq.saving.load(path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"skip": "layers/dense/vars/1"}, r"missing \['layers/dense/vars/1'\], unexpected \[\]"),
        ({"extra": True}, r"missing \[\], unexpected \['layers/dense/vars/9'\]"),
        (
            {"shape_change": "layers/dense/vars/0"},
            r"layers/dense/vars/0 holds \(129,\) float32, the model expects 128 values of 4 bytes",
        ),
    ],
)
def test_datasets_must_match_the_model(tmp_path, kwargs, match):
    weights = _h5(lambda f: _mlp_weights(f, **kwargs))
    path = _rewrite(_fixture("mlp")[0], tmp_path / "m.keras", model__weights__h5=weights)
    with pytest.raises(ValueError, match=match):
        mpq.saving.load(path)


def test_links_and_odd_datasets_are_refused(tmp_path):
    def soft(f):
        _mlp_weights(f)
        f["layers/link"] = h5py.SoftLink("/layers/dense/vars/0")

    def external(f):
        _mlp_weights(f)
        f["layers/ext"] = h5py.ExternalLink("/etc/passwd", "/x")

    def strings(f):
        _mlp_weights(f)
        f.create_dataset("layers/s", data=np.array([b"abc"]))

    for build, match in (
        (soft, r"Expected only hard links .* Received: a SoftLink at 'layers/link'"),
        (external, r"Expected only hard links .* Received: a ExternalLink at 'layers/ext'"),
        (strings, r"Expected numeric datasets .* Received: dtype \|S3 at 'layers/s'"),
    ):
        path = _rewrite(_fixture("mlp")[0], tmp_path / "m.keras", model__weights__h5=_h5(build))
        with pytest.raises(ValueError, match=match):
            mpq.saving.load(path)


def test_damaged_weights(tmp_path):
    path = _rewrite(_fixture("mlp")[0], tmp_path / "m.keras", model__weights__h5=b"\x89HDF" * 10)
    with pytest.raises(ValueError, match=r"Could not read model\.weights\.h5 in .* as HDF5"):
        mpq.saving.load(path)


def test_unsupported_keras_layout_is_refused(tmp_path):
    """A quantized layout Keras 3.15 does not write (float8 Embedding) is not read: a clear
    error, never a wrong number."""
    path, _, _ = _fixture("text_int8")
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    embedding = config["config"]["layers"][1]
    assert embedding["class_name"] == "Embedding"
    embedding["config"]["dtype"] = {
        "module": "keras.dtype_policies",
        "class_name": "QuantizedFloat8DTypePolicy",
        "config": {"mode": "float8", "source_name": "float32", "amax_history_length": 1024},
        "registered_name": None,
    }
    embedding["config"]["quantization_config"] = None
    bad = _rewrite(path, tmp_path / "m.keras", config__json=json.dumps(config).encode())
    with pytest.raises(
        ValueError,
        match=r"Expected a layer whose Keras weights mpq can read .* Received: Embedding .* "
        r"with policy 'float8_from_float32'",
    ):
        mpq.saving.load(bad)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzzed_files_raise_only_load_errors(tmp_path, data):
    """Flipped bytes anywhere in a .keras file: it loads or raises one of LOAD_ERRORS."""
    path, _, _ = _fixture("text_int8")
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    fuzzed = tmp_path / "f.keras"
    fuzzed.write_bytes(bytes(raw))
    with contextlib.suppress(*mpq.saving.LOAD_ERRORS):  # anything else fails the test
        mpq.saving.load(fuzzed)
