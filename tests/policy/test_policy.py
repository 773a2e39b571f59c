"""mpq.policy: DTypePolicy, quantized policies, get/serialize, DTypePolicyMap, global policy."""

import copy
import json
import pickle
import threading

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given

import mpq
from mpq.policy import (
    DTypePolicy,
    DTypePolicyMap,
    QuantizedDTypePolicy,
    QuantizedFloat8DTypePolicy,
    deserialize,
    get,
    serialize,
)
from mpq.testing import strategies as mst

FLOAT_CASES = {
    "float16": ("float16", "float16", torch.float16),
    "bfloat16": ("bfloat16", "bfloat16", torch.bfloat16),
    "float32": ("float32", "float32", torch.float32),
    "float64": ("float64", "float64", torch.float64),
    "mixed_float16": ("float32", "float16", torch.float16),
    "mixed_bfloat16": ("float32", "bfloat16", torch.bfloat16),
}


# -- DTypePolicy -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FLOAT_CASES))
def test_float_policy_fields(name):
    variable, compute, torch_compute = FLOAT_CASES[name]
    p = DTypePolicy(name)
    assert (p.name, p.variable_dtype, p.compute_dtype) == (name, variable, compute)
    assert p.torch_compute_dtype == torch_compute
    assert p.torch_variable_dtype == getattr(torch, variable)
    assert p.quantization_mode is None
    assert p.is_mixed == name.startswith("mixed")
    assert repr(p) == f'<DTypePolicy "{name}">'


def test_name_none_takes_global_policy():
    assert DTypePolicy().name == "float32"
    with mpq.policy_scope("mixed_bfloat16"):
        assert DTypePolicy().name == "mixed_bfloat16"
        assert QuantizedDTypePolicy("int8").name == "int8_from_mixed_bfloat16"
    with mpq.policy_scope("int8_from_mixed_float16"):
        # A quantized global policy lends its float source.
        assert DTypePolicy().name == "mixed_float16"


@pytest.mark.parametrize("bad", [3, 1.5, None.__class__, ["float32"], torch.float32])
def test_non_string_name_is_type_error(bad):
    with pytest.raises(TypeError, match="Received: name=") as info:
        DTypePolicy(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", ["float8_e4m3fn", "int8", "mixed_float32", "", "FLOAT32", "fp16"])
def test_unknown_name_is_value_error_listing_valid_names(bad):
    with pytest.raises(ValueError, match="mixed_bfloat16") as info:
        DTypePolicy(bad)
    assert f"Received: name={bad!r}" in str(info.value)


def test_policies_are_immutable():
    p = DTypePolicy("float16")
    with pytest.raises(AttributeError, match="immutable"):
        p.name = "float32"
    with pytest.raises(AttributeError, match="immutable"):
        p._compute_dtype = "float32"
    with pytest.raises(AttributeError, match="immutable"):
        del p._name


# -- quantized policies ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, mode, block, source",
    [
        ("int8_from_mixed_bfloat16", "int8", None, "mixed_bfloat16"),
        ("int8_from_float32", "int8", None, "float32"),
        ("int4/128_from_mixed_bfloat16", "int4", 128, "mixed_bfloat16"),
        ("int4/-1_from_float16", "int4", -1, "float16"),
        ("int4/32_from_bfloat16", "int4", 32, "bfloat16"),
        ("float8_from_mixed_float16", "float8", None, "mixed_float16"),
    ],
)
def test_quantized_policy_names(name, mode, block, source):
    p = get(name)
    assert p.name == name
    assert (p.mode, p.quantization_mode, p.block_size, p.source_name) == (mode, mode, block, source)
    src = DTypePolicy(source)
    assert (p.variable_dtype, p.compute_dtype) == (src.variable_dtype, src.compute_dtype)
    assert p.torch_compute_dtype == src.torch_compute_dtype
    assert isinstance(p, QuantizedDTypePolicy)
    assert isinstance(p, QuantizedFloat8DTypePolicy) == (mode == "float8")
    assert repr(p) == f'<{type(p).__name__} "{name}">'


def test_plain_int4_policy_is_per_channel_as_in_keras():
    """Keras 3.15 `dtype_policies.get`: "int4_from_<source>" is a (legacy) QuantizedDTypePolicy,
    which Keras' int4 layers build per output channel (`get_block_size_for_layer` returns None:
    "Returns `None` or `-1` for per-channel quantization"); "int4/<block_size>" is an
    Int4DTypePolicy ("Use -1 for per-channel (legacy) quantization. Any positive integer
    enables sub-channel quantization with that block size.")."""
    p = get("int4_from_float32")
    assert p.block_size == -1
    assert p.name == "int4/-1_from_float32"
    assert p == get("int4/-1_from_float32") == QuantizedDTypePolicy("int4", "float32")
    assert p == QuantizedDTypePolicy("int4", "float32", block_size=-1)
    # explicit block sizes keep their meaning
    g = get("int4/128_from_float32")
    assert g.block_size == 128
    assert g == QuantizedDTypePolicy("int4", "float32", block_size=128) != p


def test_int4_dtype_policy_with_block_size():
    """Keras 3.15 `Int4DTypePolicy(mode="int4/<block_size>", source_name)`."""
    from mpq.policy import Int4DTypePolicy, deserialize, serialize

    p = Int4DTypePolicy("int4/64", "bfloat16")
    assert (p.name, p.mode, p.block_size, p.compute_dtype) == (
        "int4/64_from_bfloat16",
        "int4",
        64,
        "bfloat16",
    )
    assert p == QuantizedDTypePolicy("int4/64", "bfloat16")
    assert hash(p) == hash(QuantizedDTypePolicy("int4/64", "bfloat16"))
    assert Int4DTypePolicy("int4", "float32", block_size=-1).block_size == -1
    assert p.get_config() == {"mode": "int4/64", "source_name": "bfloat16"}
    keras_config = {"class_name": "Int4DTypePolicy", "config": p.get_config()}
    assert deserialize(keras_config) == p
    assert isinstance(deserialize(serialize(p)), Int4DTypePolicy)
    with pytest.raises(
        ValueError,
        match=r"Expected an Int4DTypePolicy mode with a block size.*"
        r"Received: mode='int4'",
    ):
        Int4DTypePolicy("int4", "float32")
    with pytest.raises(ValueError, match=r"to be one of \['int4'\].*Received: mode='int8/4'"):
        Int4DTypePolicy("int8/4", "float32")


def test_quantize_int4_groups_by_128_as_keras_quantize_does():
    """Keras 3.15 `layer.quantize("int4")` uses `Int4QuantizationConfig()` (block_size=128) and
    sets the policy "int4/128_from_<source>"; mpq does the same."""
    from mpq.layers import Dense

    layer = Dense(4)
    layer.build((None, 256))
    layer.quantize("int4")
    assert layer.dtype_policy.name == "int4/128_from_float32"
    per_channel = Dense(4, dtype="int4_from_float32")
    per_channel.build((None, 256))
    assert per_channel.dtype_policy.block_size == -1


def test_int4_policy_names_against_live_keras():
    """The names mean what Keras 3.15 makes of them: same class family, same block size."""
    from tests._keras import import_keras

    keras = import_keras()
    for name, block in (
        ("int4_from_float32", -1),
        ("int4/128_from_float32", 128),
        ("int4/-1_from_bfloat16", -1),
    ):
        k = keras.dtype_policies.get(name)
        k_block = getattr(k, "block_size", -1)  # legacy QuantizedDTypePolicy: per channel
        assert get(name).block_size == k_block == block
        assert get(name).source_name == k._source_name
        k_config = keras.dtype_policies.serialize(k)
        assert get({"class_name": k_config["class_name"], "config": k_config["config"]}) == get(
            name
        )


def test_float8_history_length():
    assert get("float8_from_float32").amax_history_length == 1024
    p = QuantizedFloat8DTypePolicy("float8", "bfloat16", amax_history_length=16)
    assert p.amax_history_length == 16
    assert p.get_config() == {
        "mode": "float8",
        "source_name": "bfloat16",
        "amax_history_length": 16,
    }
    assert p != QuantizedFloat8DTypePolicy("float8", "bfloat16")


@pytest.mark.parametrize("bad", [1.5, "16", True, None])
def test_float8_history_length_type_error(bad):
    with pytest.raises(TypeError, match="amax_history_length") as info:
        QuantizedFloat8DTypePolicy("float8", "float32", amax_history_length=bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [0, -3])
def test_float8_history_length_value_error(bad):
    with pytest.raises(ValueError, match=f"Received: amax_history_length={bad}"):
        QuantizedFloat8DTypePolicy("float8", "float32", amax_history_length=bad)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("int3_from_float32", "mode='int3'"),
        ("int8/32_from_float32", "mode='int8/32'"),
        ("int4/abc_from_float32", "mode='int4/abc'"),
        ("int4/0_from_float32", "block_size=0"),
        ("int4/3_from_float32", "block_size=3"),
        ("int4/-2_from_float32", "block_size=-2"),
        ("int4/_from_float32", "mode='int4/'"),
        ("float8/16_from_float32", "mode='float8/16'"),
        ("int8_from_int8_from_float32", "name='int8_from_int8_from_float32'"),
        ("int8_from_float8_e4m3fn", "source_name='float8_e4m3fn'"),
        ("int8_from_", "source_name=''"),
        ("_from_float32", "mode=''"),
    ],
)
def test_bad_quantized_names(name, fragment):
    with pytest.raises(ValueError) as info:
        get(name)
    assert fragment in str(info.value)
    assert "Expected" in str(info.value)


def test_quantized_constructor_errors():
    with pytest.raises(ValueError, match="QuantizedFloat8DTypePolicy") as info:
        QuantizedDTypePolicy("float8", "float32")
    assert "mode='float8'" in str(info.value)
    with pytest.raises(ValueError, match="mode='int8'"):
        QuantizedFloat8DTypePolicy("int8", "float32")
    with pytest.raises(TypeError, match="mode=8"):
        QuantizedDTypePolicy(8, "float32")
    with pytest.raises(TypeError, match="source_name=32"):
        QuantizedDTypePolicy("int8", 32)
    with pytest.raises(ValueError, match="block_size=64"):
        QuantizedDTypePolicy("int4/128", "float32", block_size=64)
    with pytest.raises(ValueError, match="block_size=64"):
        QuantizedDTypePolicy("int8", "float32", block_size=64)
    with pytest.raises(TypeError, match=r"block_size=64\.0"):
        QuantizedDTypePolicy("int4", "float32", block_size=64.0)


def test_short_str_is_compact_and_distinct():
    names = [
        "float32",
        "mixed_bfloat16",
        "int8_from_mixed_bfloat16",
        "int4/-1_from_float32",
        "int4/32_from_float32",
        "float8_from_mixed_bfloat16",
    ]
    tags = [get(n).short_str() for n in names]
    assert tags == [
        "f32",
        "mixed_bf16",
        "int8<-mixed_bf16",
        "int4pc<-f32",
        "int4g32<-f32",
        "float8<-mixed_bf16",
    ]


# -- value semantics -----------------------------------------------------------------------------
@given(mst.policies())
def test_value_semantics(policy):
    again = get(policy.name) if not isinstance(policy, QuantizedFloat8DTypePolicy) else None
    if again is not None:
        assert again == policy and hash(again) == hash(policy)
    assert type(policy).from_config(policy.get_config()) == policy
    assert deserialize(json.loads(json.dumps(serialize(policy)))) == policy
    assert pickle.loads(pickle.dumps(policy)) == policy
    assert copy.deepcopy(policy) == policy
    assert copy.copy(policy) is policy
    assert get(policy) is policy


def test_equality_is_by_config_and_type():
    assert DTypePolicy("float32") == DTypePolicy("float32")
    assert DTypePolicy("float32") != QuantizedDTypePolicy("int8", "float32")
    assert QuantizedDTypePolicy("int4/-1", "float32") != QuantizedDTypePolicy("int4/128", "float32")
    assert len({DTypePolicy("float16"), DTypePolicy("float16"), get("int8_from_float16")}) == 2
    assert DTypePolicy("float32") != "float32"


# -- get / serialize ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype, name",
    [
        (torch.float16, "float16"),
        (torch.bfloat16, "bfloat16"),
        (torch.float32, "float32"),
        (torch.float64, "float64"),
        (np.float16, "float16"),
        (np.dtype("float32"), "float32"),
        (np.float64, "float64"),
        (ml_dtypes.bfloat16, "bfloat16"),
        (np.dtype(ml_dtypes.bfloat16), "bfloat16"),
    ],
)
def test_get_from_dtype(dtype, name):
    assert get(dtype) == DTypePolicy(name)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn, np.int32])
def test_get_from_dtype_without_policy(dtype):
    with pytest.raises(ValueError, match="Received: dtype"):
        get(dtype)


def test_get_none_is_global_policy():
    assert get(None) is mpq.dtype_policy()
    with mpq.policy_scope("bfloat16") as p:
        assert get() is p


@pytest.mark.parametrize("bad", [3, 2.0, ["float32"], ("float32",), object()])
def test_get_rejects_other_things(bad):
    with pytest.raises(ValueError, match="Received: identifier=") as info:
        get(bad)
    assert type(bad).__name__ in str(info.value)


def test_get_from_serialized_config():
    config = {
        "class_name": "QuantizedDTypePolicy",
        "config": {"mode": "int4/-1", "source_name": "float16"},
    }
    assert get(config) == get("int4/-1_from_float16")


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"name": "float32"}, "Received: config={'name': 'float32'}"),
        ({"class_name": "Nope", "config": {}}, "class_name='Nope'"),
        # Unhashable: a ValueError naming it (was "TypeError: unhashable type: 'list'").
        ({"class_name": ["x"], "config": {}}, "class_name=['x']"),
        ([("class_name", "DTypePolicy")], "Received: config=["),
    ],
)
def test_deserialize_errors(bad, fragment):
    with pytest.raises(ValueError) as info:
        deserialize(bad)
    assert fragment in str(info.value)


def test_from_config_type_error():
    with pytest.raises(TypeError, match="Received: config='float32'"):
        DTypePolicy.from_config("float32")


def test_serialize_type_error():
    with pytest.raises(TypeError, match="Received: policy='float32'"):
        serialize("float32")


# -- DTypePolicyMap ------------------------------------------------------------------------------------
def test_policy_map_lookup_order():
    m = DTypePolicyMap(
        "mixed_bfloat16",
        {
            "model/dense_\\d+": "int8_from_mixed_bfloat16",
            "model/dense_head": "float32",
            "model/block_\\d+/conv": get("int4/-1_from_mixed_bfloat16"),
        },
    )
    assert m["model/dense_head"] == DTypePolicy("float32")  # exact beats regex
    assert m["model/dense_1"].name == "int8_from_mixed_bfloat16"
    assert m["model/block_12/conv"].name == "int4/-1_from_mixed_bfloat16"
    # Full match only: a key never matches a prefix or a substring.
    assert m["model/dense_1/inner"] == DTypePolicy("mixed_bfloat16")
    assert m["outer/model/dense_1"] == DTypePolicy("mixed_bfloat16")
    assert m.default_policy == DTypePolicy("mixed_bfloat16")
    assert len(m) == 3 and list(m) == [
        "model/dense_\\d+",
        "model/dense_head",
        "model/block_\\d+/conv",
    ]
    assert "model/dense_\\d+" in m


def test_policy_map_ambiguous_match_names_keys():
    m = DTypePolicyMap("float32", {"model/.*": "float16", ".*/dense": "bfloat16"})
    with pytest.raises(ValueError, match="model/dense") as info:
        m["model/dense"]
    assert "'model/.*'" in str(info.value) and "'.*/dense'" in str(info.value)


def test_policy_map_errors():
    m = DTypePolicyMap("float32", {"a": "float16"})
    with pytest.raises(ValueError, match="Received: key='a'"):
        m["a"] = "bfloat16"
    with pytest.raises(ValueError, match="Received: identifier=3"):
        m["b"] = 3
    with pytest.raises(ValueError, match="Received: name='float99'"):
        m["b"] = "float99"
    with pytest.raises(TypeError, match="Received: key=3"):
        m[3] = "float16"
    with pytest.raises(ValueError, match=r"Received: key='dense\['"):
        m["dense["] = "float16"
    with pytest.raises(TypeError, match="Received: path=3"):
        m[3]
    with pytest.raises(TypeError, match="DTypePolicyMap"):
        m["c"] = DTypePolicyMap("float32")
    with pytest.raises(TypeError, match="default_policy"):
        DTypePolicyMap(DTypePolicyMap("float32"))
    with pytest.raises(TypeError, match="Received: policy_map=\\['a'\\]"):
        DTypePolicyMap("float32", ["a"])
    assert "b" not in m  # failed insertions leave nothing behind


def test_policy_map_replace_via_delete():
    m = DTypePolicyMap("float32", {"a": "float16"})
    del m["a"]
    m["a"] = "bfloat16"
    assert m["a"] == DTypePolicy("bfloat16")


def test_policy_map_default_none_takes_global():
    with mpq.policy_scope("mixed_float16"):
        m = DTypePolicyMap()
    assert m.default_policy == DTypePolicy("mixed_float16")


def test_policy_map_config_round_trip_does_not_mutate():
    m = DTypePolicyMap(
        "mixed_bfloat16", {"x.*": "int8_from_mixed_bfloat16", "y": "float8_from_float32"}
    )
    before = dict(m)
    config = m.get_config()
    config_again = m.get_config()
    assert config == config_again and config is not config_again
    restored = DTypePolicyMap.from_config(json.loads(json.dumps(config)))
    assert restored == m and dict(m) == before
    assert get(serialize(m)) == m
    assert deserialize(serialize(m)) == m
    assert get(m) is m
    with pytest.raises(TypeError, match="Received: config='x'"):
        DTypePolicyMap.from_config("x")


# -- global policy ---------------------------------------------------------------------------------------
def test_global_policy_default_and_set():
    assert mpq.dtype_policy() == DTypePolicy("float32")
    mpq.set_dtype_policy("mixed_bfloat16")
    assert mpq.dtype_policy() == DTypePolicy("mixed_bfloat16")
    mpq.set_dtype_policy(get("int8_from_float16"))
    assert mpq.dtype_policy().name == "int8_from_float16"


def test_set_dtype_policy_errors():
    with pytest.raises(TypeError, match="Received: policy=None"):
        mpq.set_dtype_policy(None)
    with pytest.raises(TypeError, match="DTypePolicyMap"):
        mpq.set_dtype_policy(DTypePolicyMap("float32"))
    with pytest.raises(ValueError, match="Received: name='float99'"):
        mpq.set_dtype_policy("float99")
    assert mpq.dtype_policy() == DTypePolicy("float32")


def test_policy_scope_nests_and_restores_on_exception():
    with mpq.policy_scope("float16"):
        with pytest.raises(RuntimeError):
            with mpq.policy_scope("bfloat16"):
                assert mpq.dtype_policy().name == "bfloat16"
                raise RuntimeError("boom")
        assert mpq.dtype_policy().name == "float16"
    assert mpq.dtype_policy().name == "float32"


def test_policy_scope_is_thread_local():
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def scoped():
        with mpq.policy_scope("bfloat16"):
            seen["scoped"] = mpq.dtype_policy().name
            inside.set()
            release.wait(5)

    def other():
        inside.wait(5)
        seen["other"] = mpq.dtype_policy().name
        release.set()

    threads = [threading.Thread(target=scoped), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"scoped": "bfloat16", "other": "float32"}


def test_policy_scope_rejects_bad_policy_before_entering():
    with pytest.raises(ValueError, match="Received: identifier=3"):
        with mpq.policy_scope(3):
            pass
    assert mpq.dtype_policy().name == "float32"


# -- autocast rules ----------------------------------------------------------------------------------------
def test_autocast_rules():
    from mpq.policy import autocast

    assert (
        autocast.rule("matmul") == autocast.rule("conv") == autocast.rule("embedding") == "compute"
    )
    for family in ("normalization", "softmax", "loss", "reduction", "transcendental"):
        assert autocast.rule(family) == "float32"
    assert autocast.rule("elementwise") == "input"
    bf16, f32, f64 = torch.bfloat16, torch.float32, torch.float64
    assert autocast.op_dtype("matmul", bf16, f32) == bf16
    assert autocast.op_dtype("softmax", bf16, bf16) == f32
    assert autocast.op_dtype("softmax", f64, f64) == f64
    assert autocast.op_dtype("elementwise", bf16, torch.float16) == torch.float16
    with pytest.raises(ValueError, match="Received: family='conv3d'"):
        autocast.rule("conv3d")
    with pytest.raises(TypeError):
        autocast.RULES["new"] = None


def test_docs_show_the_autocast_table():
    from pathlib import Path

    from mpq.policy import autocast

    doc = (Path(__file__).parents[2] / "docs" / "policies.md").read_text()
    assert autocast.rules_table() in doc


@pytest.mark.parametrize(
    "name",
    ["gptq/4/1_0_from_float32", "gptq/4/ 8_from_float32", "awq/4/" + "9" * 40 + "_from_float32"],
)
def test_algorithm_policy_sizes_are_digits_within_limits(name):
    with pytest.raises(ValueError, match="Expected a calibrated-algorithm mode"):
        mpq.policy.get(name)
