"""Loading never runs code from a file, and configs and files are validated before anything is
allocated (issue #12, docs/security.md): names resolve from mpq's catalogs and registered or
custom objects only; sizes, shapes and nesting depth are checked first; damaged files are
rejected with nothing half-loaded; only mpq's documented error types come out."""

from __future__ import annotations

import builtins
import copy
import json
import os
import pickle
import sys
import tempfile
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import mpq
from mpq import activations, initializers, layers, saving
from mpq.layers import Conv2D, Dense, EinsumDense, Embedding, Layer, Sequential

LOAD_ERRORS = saving.LOAD_ERRORS


# -- helpers ----------------------------------------------------------------------------------
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _small_model() -> Sequential:
    model = Sequential([Dense(4, activation="relu"), Dense(3)], name="small")
    model(torch.randn(2, 5))
    return model


def _save_with_config(model: Layer, path, edit_config=None) -> None:
    """Save ``model``, then rewrite its stored JSON config (the checksum covers tensors only)."""
    saving.save(model, path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if edit_config is not None:
        config = json.loads(meta["config"])
        result = edit_config(config)
        meta["config"] = result if isinstance(result, str) else json.dumps(config)
    save_file(tensors, str(path), metadata=meta)


@pytest.fixture
def hostile_module(tmp_path, monkeypatch):
    """A module on sys.path, not imported yet, whose top-level code writes a marker file."""
    name = "mpq_hostile_module_for_tests"
    marker = tmp_path / "imported.marker"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            open({str(marker)!r}, "w").write("imported")

            def f(x):
                return x

            from mpq.layers import Layer as _Layer

            class Evil(_Layer):
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    yield name, marker
    sys.modules.pop(name, None)


def _assert_not_imported(name, marker):
    assert not marker.exists()
    assert name not in sys.modules


# -- nothing is imported by name ---------------------------------------------------------------
def test_activation_naming_an_unimported_module_imports_nothing(hostile_module, tmp_path):
    name, marker = hostile_module
    activation = {"module": name, "function_name": "f"}
    with pytest.raises(ValueError, match=rf"nothing is imported.*'module': '{name}'"):
        activations.get(activation)
    config = layers.serialize(Dense(2))
    config["config"]["activation"] = activation
    with pytest.raises(LOAD_ERRORS, match="nothing is imported"):
        layers.deserialize(config)
    with pytest.raises(LOAD_ERRORS, match="nothing is imported"):
        Dense.from_config(config["config"])

    def hostile(config):
        config["config"]["layers"][0]["config"]["activation"] = activation

    path = tmp_path / "hostile.safetensors"
    _save_with_config(_small_model(), path, hostile)
    with pytest.raises(LOAD_ERRORS, match="nothing is imported"):
        saving.load(path)
    _assert_not_imported(name, marker)


def test_layer_and_initializer_naming_a_module_import_nothing(hostile_module, tmp_path):
    name, marker = hostile_module
    with pytest.raises(ValueError, match="Unknown layer class 'Evil'"):
        layers.deserialize({"module": name, "class_name": "Evil", "config": {}})
    with pytest.raises(ValueError, match=r"Unknown layer class 'Evil'.*registered_name='x>Evil'"):
        layers.deserialize({"class_name": "Evil", "registered_name": "x>Evil", "config": {}})
    with pytest.raises(ValueError, match="Evil"):
        initializers.get({"module": name, "class_name": "Evil", "config": {}})

    def hostile(config):
        config["config"]["layers"][1]["module"] = name
        config["config"]["layers"][1]["class_name"] = "Evil"
        config["config"]["layers"][1]["registered_name"] = f"{name}>Evil"

    path = tmp_path / "hostile.safetensors"
    _save_with_config(_small_model(), path, hostile)
    with pytest.raises(ValueError, match="Unknown layer class 'Evil'"):
        saving.load(path)
    _assert_not_imported(name, marker)


@pytest.mark.parametrize(
    "activation",
    [
        {"module": "os", "function_name": "system"},
        {"module": "builtins", "function_name": "eval"},
        {"module": "builtins", "function_name": "exec", "registered_name": "builtins>exec"},
        "os.system",
        "eval",
    ],
)
def test_dangerous_functions_are_not_resolved(activation, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    monkeypatch.setattr(builtins, "eval", lambda *a: calls.append(a))
    with pytest.raises(ValueError, match="Received: activation="):
        activations.get(activation)

    def hostile(config):
        config["config"]["layers"][0]["config"]["activation"] = activation

    path = tmp_path / "hostile.safetensors"
    _save_with_config(_small_model(), path, hostile)
    with pytest.raises(LOAD_ERRORS, match="Received: activation="):
        saving.load(path)
    assert calls == []


# -- registered and custom objects ---------------------------------------------------------------
@saving.register_serializable("tests_security")
def cube(x):
    return x**3


@saving.register_serializable("tests_security")
class Halves(initializers.Initializer):
    def __call__(self, shape, dtype=None):
        return torch.full(tuple(shape), 0.5, dtype=initializers._torch_dtype(dtype))


@saving.register_serializable("tests_security")
class Negate(Layer):
    def call(self, x):
        return -x


def unregistered_square(x):
    return x * x


class UnregisteredLayer(Layer):
    def call(self, x):
        return x + 1


def test_registered_objects_round_trip_through_a_file(tmp_path):
    model = Sequential([Dense(3, activation=cube, kernel_initializer=Halves()), Negate()])
    model(torch.randn(2, 4))
    config = json.loads(json.dumps(layers.serialize(model)))
    dense = config["config"]["layers"][0]["config"]
    assert dense["activation"]["registered_name"] == "tests_security>cube"
    assert dense["kernel_initializer"]["registered_name"] == "tests_security>Halves"
    assert config["config"]["layers"][1]["registered_name"] == "tests_security>Negate"
    path = tmp_path / "registered.safetensors"
    saving.save(model, path)
    loaded = saving.load(path)
    assert loaded[0].activation is cube and isinstance(loaded[0].kernel_initializer, Halves)
    assert type(loaded[1]) is Negate
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), model(x))


def test_custom_objects_resolve_unregistered_names(tmp_path):
    model = Sequential([Dense(3, activation=unregistered_square), UnregisteredLayer()])
    model(torch.randn(2, 4))
    path = tmp_path / "custom.safetensors"
    saving.save(model, path)
    with pytest.raises(TypeError, match=r"nothing is imported.*'unregistered_square'"):
        saving.load(path)
    with pytest.raises(ValueError, match="Unknown layer class 'UnregisteredLayer'"):
        saving.load(path, custom_objects={"unregistered_square": unregistered_square})
    custom = {"unregistered_square": unregistered_square, "UnregisteredLayer": UnregisteredLayer}
    loaded = saving.load(path, custom_objects=custom)
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), model(x))
    with saving.custom_object_scope(custom):
        assert type(layers.deserialize(layers.serialize(model))[1]) is UnregisteredLayer
    dense_config = model[0].get_config()
    with pytest.raises(TypeError, match="nothing is imported"):
        Dense.from_config(dense_config)
    assert Dense.from_config(dense_config, custom_objects=custom).activation is unregistered_square


def test_custom_objects_must_name_the_right_kind():
    config = layers.serialize(Dense(2))
    with pytest.raises(TypeError, match=r"subclass of mpq.layers.Layer. Received: .*cube"):
        layers.deserialize(config, custom_objects={"Dense": cube})
    with pytest.raises(TypeError, match=r"subclass of Initializer. Received: .*Negate"):
        initializers.get(
            {"class_name": "Negate", "registered_name": "tests_security>Negate", "config": {}}
        )
    with pytest.raises(TypeError, match=r"Expected `custom_objects` to be a dict.*of type list"):
        layers.deserialize(config, custom_objects=[cube])


def test_register_serializable_errors():
    with pytest.raises(ValueError, match=r"Received: package='a>b' \(of type str\)"):
        saving.register_serializable("a>b")
    with pytest.raises(ValueError, match=r"Received: name='' \(of type str\)"):
        saving.register_serializable("pkg", name="")
    with pytest.raises(TypeError, match=r"named function to register. Received: 3 \(of type int\)"):
        saving.register_serializable("pkg")(3)

    def other(x):
        return x

    with pytest.raises(ValueError, match="'tests_security>cube' is already registered"):
        saving.register_serializable("tests_security", name="cube")(other)


# -- no pickle, nothing half-loaded ---------------------------------------------------------------
def test_load_path_never_unpickles(tmp_path, monkeypatch):
    model = _small_model()
    path = tmp_path / "m.safetensors"
    saving.save(model, path)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = saving.load(path)
    saving.load_weights(loaded, path)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        assert torch.equal(_bits(a), _bits(b))


def test_truncated_file_leaves_the_model_unchanged(tmp_path):
    path = tmp_path / "m.safetensors"
    saving.save(_small_model(), path)
    data = path.read_bytes()
    target = _small_model()
    before = [w.detach().clone() for w in target.weights]
    for cut in (8, len(data) // 2, len(data) - 1):
        broken = tmp_path / f"cut{cut}.safetensors"
        broken.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated, corrupted or not a safetensors file"):
            saving.load_weights(target, broken)
        for w, b in zip(target.weights, before, strict=True):
            assert torch.equal(_bits(w), _bits(b))


# -- sizes and depth before allocation -------------------------------------------------------------
@pytest.fixture
def no_big_allocation(monkeypatch):
    """Fail (instead of allocating gigabytes) if a big variable is initialised off the meta
    device."""
    real = Layer.add_weight

    def guarded(self, shape=None, *args, **kwargs):
        numel = int(np.prod([int(d) for d in (shape or ())], dtype=np.float64))
        if numel > 10**7 and str(torch.get_default_device()) != "meta":
            raise AssertionError(f"allocating {numel} elements for {self.name}")
        return real(self, shape, *args, **kwargs)

    monkeypatch.setattr(Layer, "add_weight", guarded)


def test_config_sizes_are_checked_against_the_stored_tensors(tmp_path, no_big_allocation):
    def huge(config):
        config["config"]["layers"][0]["config"]["units"] = 10**9

    path = tmp_path / "huge.safetensors"
    _save_with_config(_small_model(), path, huge)
    with pytest.raises(ValueError, match=r"0/kernel: model \(5, 1000000000\) torch.float32, file"):
        saving.load(path)

    def huge_input(config):
        config["config"]["build_input_shape"] = [None, 10**9]
        config["config"]["layers"][0]["build_config"]["input_shape"] = [None, 10**9]

    _save_with_config(_small_model(), path, huge_input)
    with pytest.raises(ValueError, match=r"0/kernel: model \(1000000000, 4\)"):
        saving.load(path)


@layers.register_layer("tests_security")
class ReadsValuesInBuild(Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")
        self.total = float(self.w.detach().sum())  # reads a value: not on the meta device

    def call(self, x):
        return x * self.w


def test_load_explains_a_build_that_cannot_run_on_the_meta_device(tmp_path):
    layer = ReadsValuesInBuild()
    layer(torch.ones(1, 3))
    path = tmp_path / "reads.safetensors"
    saving.save(layer, path)
    with pytest.raises(ValueError, match=r"builds on the meta device.*Received: a build that fail"):
        saving.load(path)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Dense(2**31), r"positive integer <= 2147483647. Received: units=2147483648"),
        (lambda: Dense(10**20), r"Received: units=100000000000000000000"),
        (lambda: Conv2D(10**20, 3), r"`filters` to be a positive int <= 2147483647"),
        (lambda: Conv2D(2, 2**40), r"`kernel_size` to hold positive ints <= 2147483647"),
        (lambda: Embedding(10**12, 4), r"`input_dim` to be a positive int <= 2147483647"),
        (lambda: EinsumDense("ab,bc->ac", 10**12), r"each <= 2147483647"),
        (lambda: Dense(2, lora_rank=10**12), r"`lora_rank` to be a positive int <= 2147483647"),
        (lambda: layers.Reshape((10**12,)), r"positive ints \(<= 2147483647\)"),
    ],
)
def test_sizes_out_of_range_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_build_config_sizes_out_of_range_raise():
    config = layers.serialize(Dense(2))
    config["build_config"] = {"input_shape": [None, 10**20]}
    with pytest.raises(ValueError, match=r"sizes in \[0, 2147483647\]. Received: shape=\(None, 1"):
        layers.deserialize(config)
    config["build_config"] = {"input_shape": [None, True]}
    with pytest.raises(ValueError, match=r"Received: shape=\(None, True\)"):
        layers.deserialize(config)


@pytest.mark.parametrize(
    "name",
    [
        "int4/10000000000_from_float32",
        f"int4/{10**20}_from_float32",
        "int4/4000000000_from_float32",
        "int4/1_000_from_float32",
        "int4/ 128_from_float32",
        f"int4/{'9' * 5000}_from_float32",
    ],
)
def test_policy_block_sizes_out_of_range_raise(name):
    with pytest.raises(ValueError, match="int4 block size"):
        mpq.policy.get(name)


def test_quantization_config_sizes_out_of_range_raise():
    with pytest.raises(ValueError, match=r"even group size in \[2, 2147483647\]"):
        mpq.QuantizationConfig("int4", block_size=10**20)
    with pytest.raises(ValueError, match=r"in \[1, 1048576\]. Received: amax_history_length=10"):
        mpq.QuantizationConfig("float8", amax_history_length=10**20)
    with pytest.raises(ValueError, match=r"in \[1, 1048576\]. Received: amax_history_length=10"):
        mpq.policy.QuantizedFloat8DTypePolicy("float8", "float32", amax_history_length=10**9)


def test_int4_block_larger_than_the_input_allocates_no_padding():
    """A block of 2**30 on K=8 is one group of 8: the same codes and outputs as block 8."""
    x = torch.randn(3, 8)
    outs, kernels = [], []
    for block in (8, 2**30):
        layer = Dense(4)
        layer(x)
        with torch.no_grad():
            layer.kernel.copy_(torch.linspace(-1, 1, 32).reshape(8, 4))
        layer.quantize(f"int4/{block}")
        outs.append(layer(x))
        kernels.append([_bits(w) for w in layer.weights])
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*kernels, strict=True))


def _nested(depth: int) -> dict:
    config: dict = {"class_name": "Dense", "config": {"units": 1}}
    for _ in range(depth):
        config = {"class_name": "Sequential", "config": {"layers": [config]}}
    return config


def test_deeply_nested_configs_raise_not_recurse(tmp_path):
    with pytest.raises(ValueError, match="nested at most 100 levels deep"):
        layers.deserialize(_nested(5000))
    deep_list: list = []
    for _ in range(5000):
        deep_list = [deep_list]
    with pytest.raises(ValueError, match="nested at most 100 levels deep"):
        layers.deserialize({"class_name": "Dense", "config": {"units": deep_list}})
    for from_config in (Dense.from_config, Sequential.from_config):
        with pytest.raises(ValueError, match="nested at most 100 levels deep"):
            from_config({"name": deep_list})
        with pytest.raises(ValueError, match="nested at most 100 levels deep"):
            from_config(deep_list)
    assert type(layers.deserialize(_nested(20))) is Sequential  # legitimate nesting still loads

    def deep(config):  # json.dumps itself would recurse: write the text directly
        inner = json.dumps(_nested(0))
        wrap = '{"class_name": "Sequential", "config": {"layers": ['
        return wrap * 5000 + inner + "]}}" * 5000

    path = tmp_path / "deep.safetensors"
    _save_with_config(_small_model(), path, deep)
    with pytest.raises(ValueError, match="nested at most 100 levels deep"):
        saving.load(path)

    def deep_string(config):  # brackets inside strings do not count
        config["config"]["name"] = "[" * 5000
        return None

    _save_with_config(_small_model(), path, deep_string)
    assert saving.load(path).name == "[" * 5000


@pytest.mark.parametrize("input_shape", [[], {}, "abc", {"x": [1]}])
def test_malformed_build_configs_raise_documented_errors(input_shape):
    """Found by the fuzz test: Dense.build on these raised IndexError / KeyError."""
    config = layers.serialize(Dense(2))
    config["build_config"] = {"input_shape": input_shape}
    with pytest.raises(LOAD_ERRORS, match="Received"):
        layers.deserialize(config)


def test_dtype_names_do_not_import_torch_submodules(monkeypatch):
    """torch's module __getattr__ imports submodules (torch._inductor, torch.onnx) on first
    access: a dtype name from a config must never reach it."""
    from mpq.layers.variables import to_torch_dtype

    looked_up = []

    def spy(name):
        looked_up.append(name)
        raise AttributeError(name)

    monkeypatch.setattr(torch, "__getattr__", spy, raising=False)
    assert to_torch_dtype("int64") is torch.int64 and to_torch_dtype("long") is torch.int64
    for name in ("_inductor", "onnx", "not_a_torch_name", "os", "__builtins__"):
        with pytest.raises(ValueError, match=f"Received: dtype='{name}'"):
            to_torch_dtype(name)
    assert looked_up == []


def test_policy_map_regex_nested_too_deeply_raises():
    config = {
        "class_name": "DTypePolicyMap",
        "config": {"default_policy": "float32", "policy_map": {"(" * 5000 + ")" * 5000: "float16"}},
    }
    with pytest.raises(
        ValueError, match=r"valid regular expression. Received: key='\(\(\(.*RecursionError"
    ):
        mpq.policy.get(config)


# -- fuzz: only success or the documented error types -------------------------------------------
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_sizes = st.sampled_from([0, -1, -(2**63), 1, 3, 2**31 - 1, 2**31, 10**20, True, 2.5, "4", None])


def _valid_configs() -> list[dict]:
    model = Sequential(
        [
            Dense(3, activation="gelu", kernel_regularizer="l2", kernel_constraint="non_neg"),
            layers.Reshape((3, 1)),
            layers.Flatten(),
            layers.LayerNormalization(),
        ]
    )
    model(torch.randn(2, 4))
    conv = Conv2D(2, 3, padding="same")
    conv(torch.randn(1, 5, 5, 3))
    emb = Embedding(10, 4, mask_zero=True)
    emb(torch.zeros(2, 3, dtype=torch.long))
    q = Dense(4)
    q(torch.randn(2, 8))
    q.quantize("int4/4")
    return [json.loads(json.dumps(layers.serialize(m))) for m in (model, conv, emb, q)]


_VALID = _valid_configs()


def _paths(obj, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, obj
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    )
    for k, v in items:
        yield from _paths(v, (*prefix, k))


@st.composite
def _mutated_configs(draw):
    config = copy.deepcopy(draw(st.sampled_from(_VALID)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(config) if p]
        path = draw(st.sampled_from(paths))
        parent = config
        for k in path[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "size", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(_json)
        elif action == "size":
            parent[path[-1]] = draw(_sizes)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(_json)
    return config


def _accepts(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except LOAD_ERRORS as e:
        assert str(e)  # a message, not a bare exception


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=_mutated_configs() | _json)
def test_fuzz_deserialize_and_from_config(config):
    # On the meta device: a config may legitimately ask for a huge layer (the sizes are
    # checked against tensors by mpq.saving.load, not here); nothing real gets allocated.
    with torch.device("meta"):
        _accepts(layers.deserialize, config)
        if isinstance(config, dict) and isinstance(config.get("config"), dict):
            _accepts(Dense.from_config, config["config"])
            _accepts(Sequential.from_config, config["config"])


_SAVED: dict[str, bytes] = {}


def _saved_bytes() -> bytes:
    if not _SAVED:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.safetensors")
            saving.save(_small_model(), path)
            with open(path, "rb") as f:
                _SAVED["m"] = f.read()
    return _SAVED["m"]


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_fuzz_load_mutated_files(data, tmp_path_factory):
    blob = bytearray(_saved_bytes())
    header = int.from_bytes(blob[:8], "little") + 8
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "config"]))
    if kind == "flip":  # mostly inside the JSON header, where the parser and config live
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, min(header, len(blob)) - 1))
            blob[i] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "insert":
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    path = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    path.write_bytes(bytes(blob))
    if kind == "config":
        config = data.draw(_mutated_configs() | _json)
        _save_with_config(_small_model(), path, lambda _: json.dumps(config))
    _accepts(saving.load, path)


def test_docs_security_md_examples_run(tmp_path, monkeypatch, capsys):
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[2] / "docs" / "security.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/security.md", "exec"), {"__name__": "docs_security"})
    assert "TypeError" in capsys.readouterr().out
