"""QuantizationConfig: validation, defaults, derived names, config and policy round trips."""

from __future__ import annotations

import pytest

import mpq
from mpq.quantization import QuantizationConfig


@pytest.mark.parametrize(
    ("args", "kwargs", "fields", "name", "short"),
    [
        (("int8",), {}, ("int8", None, False, None), "int8", "w8a8"),
        (("int8",), {"weight_only": True}, ("int8", None, True, None), "int8_weight_only", "w8a16"),
        (("int4",), {}, ("int4", 128, True, None), "int4/128", "w4a16g128"),
        (("int4/-1",), {}, ("int4", -1, True, None), "int4/-1", "w4a16pc"),
        (
            ("int4",),
            {"block_size": 32, "weight_only": False},
            ("int4", 32, False, None),
            "int4/32_int8_activations",
            "w4a8g32",
        ),
        (("float8",), {}, ("float8", None, False, 1024), "float8", "fp8"),
        (
            ("float8",),
            {"amax_history_length": 16},
            ("float8", None, False, 16),
            "float8_h16",
            "fp8h16",
        ),
    ],
)
def test_fields_defaults_and_names(args, kwargs, fields, name, short):
    c = QuantizationConfig(*args, **kwargs)
    assert (c.mode, c.block_size, c.weight_only, c.amax_history_length) == fields
    assert c.name == name and c.short_str() == short
    assert QuantizationConfig.from_config(c.get_config()) == c
    assert hash(c) == hash(QuantizationConfig.from_config(c.get_config()))
    with pytest.raises(AttributeError):
        c.mode = "int8"  # frozen


def test_policy_round_trip():
    for policy in ("int8_from_mixed_bfloat16", "int4/-1_from_float32", "int4/64_from_float16"):
        p = mpq.policy.get(policy)
        c = QuantizationConfig.from_policy(p)
        assert c.to_policy(p.source_name) == p and c.matches_policy(p)
    f = mpq.policy.QuantizedFloat8DTypePolicy("float8", "float32", amax_history_length=8)
    c = QuantizationConfig.from_policy(f)
    assert c.amax_history_length == 8 and c.to_policy("float32") == f
    assert QuantizationConfig.get(f) == c and QuantizationConfig.get("int4/32").block_size == 32
    assert QuantizationConfig.get({"mode": "int8"}) == QuantizationConfig("int8")


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"mode": 8}, TypeError, r"Received: mode=8 \(of type int\)"),
        ({"mode": "int3"}, ValueError, r"Received: mode='int3'"),
        ({"mode": "int4/3"}, ValueError, r"Received: block_size=3"),
        ({"mode": "int4/x"}, ValueError, r"Received: mode='int4/x'"),
        ({"mode": "int8/4"}, ValueError, r"only with mode 'int4'.*Received: mode='int8/4'"),
        ({"mode": "int4/32", "block_size": 64}, ValueError, r"block_size=64"),
        ({"mode": "int8", "block_size": 32}, ValueError, r"Received: block_size=32"),
        ({"mode": "int4", "block_size": "32"}, TypeError, r"block_size='32' \(of type str\)"),
        ({"mode": "float8", "weight_only": True}, ValueError, r"Received: weight_only=True"),
        ({"mode": "int8", "weight_only": 1}, TypeError, r"weight_only=1 \(of type int\)"),
        ({"mode": "float8", "amax_history_length": 0}, ValueError, r"amax_history_length=0"),
        ({"mode": "int8", "amax_history_length": 4}, ValueError, r"amax_history_length=4"),
    ],
)
def test_bad_configs(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        QuantizationConfig(**kwargs)


def test_bad_identifiers():
    with pytest.raises(TypeError, match=r"Received: 3.5 \(of type float\)"):
        QuantizationConfig.get(3.5)
    with pytest.raises(ValueError, match=r"Received: policy='float32'"):
        QuantizationConfig.from_policy("float32")
    with pytest.raises(TypeError, match=r"Received: config=\['int8'\]"):
        QuantizationConfig.from_config(["int8"])
