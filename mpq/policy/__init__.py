"""Dtype policies: variable and compute dtypes, quantization modes, per-layer policy maps, the
global policy, and the autocast rules that say which ops run in which dtype.

    >>> import mpq
    >>> mpq.policy.get("int4/128_from_mixed_bfloat16")
    <QuantizedDTypePolicy "int4/128_from_mixed_bfloat16">
    >>> mpq.policy.get("int4_from_float32").block_size  # per output channel, as in Keras
    -1
"""

from __future__ import annotations

from typing import Any

from mpq.policy import autocast
from mpq.policy.global_state import dtype_policy, policy_scope, set_dtype_policy
from mpq.policy.policies import (
    ALGORITHM_BITS,
    DEFAULT_INT4_BLOCK_SIZE,
    FLOAT_POLICY_NAMES,
    MX_MODES,
    QUANTIZATION_MODES,
    DTypePolicy,
    Int4DTypePolicy,
    QuantizedAlgorithmDTypePolicy,
    QuantizedDTypePolicy,
    QuantizedFloat8DTypePolicy,
)
from mpq.policy.policy_map import DTypePolicyMap

__all__ = [
    "DEFAULT_INT4_BLOCK_SIZE",
    "FLOAT_POLICY_NAMES",
    "MX_MODES",
    "QUANTIZATION_MODES",
    "DTypePolicy",
    "DTypePolicyMap",
    "Int4DTypePolicy",
    "QuantizedAlgorithmDTypePolicy",
    "QuantizedDTypePolicy",
    "QuantizedFloat8DTypePolicy",
    "autocast",
    "deserialize",
    "dtype_policy",
    "get",
    "policy_scope",
    "serialize",
    "set_dtype_policy",
]

_CLASSES = {
    cls.__name__: cls
    for cls in (
        DTypePolicy,
        QuantizedDTypePolicy,
        QuantizedFloat8DTypePolicy,
        QuantizedAlgorithmDTypePolicy,
        Int4DTypePolicy,
        DTypePolicyMap,
    )
}


def _parse_name(name: str) -> DTypePolicy:
    if "_from_" not in name:
        return DTypePolicy(name)
    parts = name.split("_from_")
    if len(parts) != 2:
        raise ValueError(
            "Expected a quantized policy name with exactly one '_from_', as in "
            f"'int8_from_mixed_bfloat16'. Received: name={name!r}"
        )
    mode, source = parts
    if mode.split("/")[0] == "float8":
        return QuantizedFloat8DTypePolicy(mode, source)
    if mode.split("/")[0] in ALGORITHM_BITS:  # Keras 3.15: "gptq/4/128", "awq/4/128"
        return QuantizedAlgorithmDTypePolicy(mode, source)
    return QuantizedDTypePolicy(mode, source)


def serialize(policy: DTypePolicy | DTypePolicyMap) -> dict[str, Any]:
    """`{"class_name": ..., "config": ...}`, JSON-serializable; inverse of `deserialize`."""
    if not isinstance(policy, (DTypePolicy, DTypePolicyMap)):
        raise TypeError(
            "Expected a DTypePolicy or DTypePolicyMap to serialize. "
            f"Received: policy={policy!r} (of type {type(policy).__name__})"
        )
    return {"class_name": type(policy).__name__, "config": policy.get_config()}


def deserialize(config: dict[str, Any]) -> DTypePolicy | DTypePolicyMap:
    """Rebuild a policy (or policy map) from `serialize`'s output."""
    if not isinstance(config, dict) or set(config) != {"class_name", "config"}:
        raise ValueError(
            "Expected a serialized policy: a dict with exactly the keys 'class_name' and "
            f"'config'. Received: config={config!r}"
        )
    cls = _CLASSES.get(config["class_name"])
    if cls is None:
        raise ValueError(
            f"Expected 'class_name' to be one of {sorted(_CLASSES)}. "
            f"Received: class_name={config['class_name']!r}"
        )
    return cls.from_config(config["config"])


def get(identifier: Any = None) -> DTypePolicy | DTypePolicyMap:
    """Resolve anything that names a policy.

    - `None` -> the global policy (`mpq.dtype_policy()`);
    - a `DTypePolicy` or `DTypePolicyMap` -> itself;
    - a name (`"mixed_bfloat16"`, `"int8_from_float32"`, `"int4/-1_from_bfloat16"`,
      `"float8_from_mixed_float16"`) -> the parsed policy;
    - a serialized config dict (`serialize`'s output) -> the deserialized policy;
    - a floating torch dtype or numpy/ml_dtypes dtype (float16, bfloat16, float32, float64) ->
      that float policy.

    Anything else raises ValueError, as Keras' `dtype_policies.get` does.

    Example:
        >>> get("int8_from_mixed_bfloat16").compute_dtype
        'bfloat16'
    """
    if identifier is None:
        return dtype_policy()
    if isinstance(identifier, (DTypePolicy, DTypePolicyMap)):
        return identifier
    if isinstance(identifier, str):
        return _parse_name(identifier)
    if isinstance(identifier, dict):
        return deserialize(identifier)
    name = _dtype_name(identifier)
    if name is not None:
        if name in FLOAT_POLICY_NAMES:
            return DTypePolicy(name)
        raise ValueError(
            f"Expected a floating dtype with a policy ({list(FLOAT_POLICY_NAMES[:4])}). "
            f"Received: dtype {name!r}"
        )
    raise ValueError(
        "Expected a dtype policy: None, a DTypePolicy, a policy name such as 'mixed_bfloat16', a "
        "serialized config dict, or a float torch/numpy dtype. "
        f"Received: identifier={identifier!r} (of type {type(identifier).__name__})"
    )


def _dtype_name(identifier: Any) -> str | None:
    """Canonical format name of a torch or numpy dtype, or None if it is not a dtype."""
    import numpy as np
    import torch

    if isinstance(identifier, (torch.dtype, np.dtype)) or (
        isinstance(identifier, type) and issubclass(identifier, np.generic)
    ):
        from mpq import dtypes

        return dtypes.get(identifier).name
    return None
