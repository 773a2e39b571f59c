"""Resolve one policy (never a `DTypePolicyMap`) from what names it: None (the policy in
force), a policy, a name, a serialized config or a float dtype. `mpq.policy.get` adds maps."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mpq import dtypes
from mpq.policy.policies import (
    ALGORITHM_BITS,
    FLOAT_POLICY_NAMES,
    DTypePolicy,
    Int4DTypePolicy,
    QuantizedAlgorithmDTypePolicy,
    QuantizedDTypePolicy,
    QuantizedFloat8DTypePolicy,
    dtype_policy,
)

__all__ = [
    "POLICY_CLASSES",
    "check_serialized",
    "deserialize_policy",
    "parse_name",
    "resolve_policy",
    "serialize_policy",
]

POLICY_CLASSES: dict[str, type[DTypePolicy]] = {
    cls.__name__: cls
    for cls in (
        DTypePolicy,
        QuantizedDTypePolicy,
        QuantizedFloat8DTypePolicy,
        QuantizedAlgorithmDTypePolicy,
        Int4DTypePolicy,
    )
}


def parse_name(name: str) -> DTypePolicy:
    """The policy a name spells: `"mixed_bfloat16"`, `"int4/128_from_float32"`, `"gptq/4/128_from_bfloat16"`."""
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


def serialize_policy(policy: DTypePolicy) -> dict[str, Any]:
    """`{"class_name": ..., "config": ...}`, JSON-serializable."""
    return {"class_name": type(policy).__name__, "config": policy.get_config()}


def check_serialized(config: object, class_names: list[str]) -> tuple[str, Any]:
    """`(class_name, inner config)` of a serialized policy, its class one of `class_names`."""
    if not isinstance(config, dict) or set(config) != {"class_name", "config"}:
        raise ValueError(
            "Expected a serialized policy: a dict with exactly the keys 'class_name' and "
            f"'config'. Received: config={config!r}"
        )
    class_name = config["class_name"]
    if class_name not in class_names:
        raise ValueError(
            f"Expected 'class_name' to be one of {sorted(class_names)}. "
            f"Received: class_name={class_name!r}"
        )
    return class_name, config["config"]


def deserialize_policy(config: object) -> DTypePolicy:
    """Rebuild a single policy from `serialize_policy`'s output."""
    class_name, inner = check_serialized(config, list(POLICY_CLASSES))
    return POLICY_CLASSES[class_name].from_config(inner)


def resolve_policy(identifier: object = None) -> DTypePolicy:
    """One policy from None (the policy in force), a policy, a name, a serialized config or a
    floating torch/numpy dtype; ValueError for anything else."""
    if identifier is None:
        return dtype_policy()
    if isinstance(identifier, DTypePolicy):
        return identifier
    if isinstance(identifier, str):
        return parse_name(identifier)
    if isinstance(identifier, dict):
        return deserialize_policy(identifier)
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


def _dtype_name(identifier: object) -> str | None:
    """Canonical format name of a torch or numpy dtype, or None if it is not a dtype."""
    if isinstance(identifier, (torch.dtype, np.dtype)):
        return dtypes.get(identifier).name
    if isinstance(identifier, type) and issubclass(identifier, np.generic):
        return dtypes.get(identifier).name
    return None
