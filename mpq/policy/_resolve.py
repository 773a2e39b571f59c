"""`get`, `serialize`, `deserialize`: resolve anything that names a policy or a policy map
(a name, a config dict, a dtype, a policy), as Keras' `dtype_policies.get` does."""

from __future__ import annotations

from typing import Any, overload

import numpy as np
import torch

from mpq.policy._parse import (
    POLICY_CLASSES,
    check_serialized,
    deserialize_policy,
    resolve_policy,
    serialize_policy,
)
from mpq.policy.policies import DTypePolicy
from mpq.policy.policy_map import DTypePolicyMap

__all__ = ["deserialize", "get", "serialize"]

_CLASS_NAMES = [*POLICY_CLASSES, DTypePolicyMap.__name__]


def serialize(policy: object) -> dict[str, Any]:
    """`{"class_name": ..., "config": ...}`, JSON-serializable; inverse of `deserialize`."""
    if isinstance(policy, DTypePolicy):
        return serialize_policy(policy)
    if isinstance(policy, DTypePolicyMap):
        return {"class_name": type(policy).__name__, "config": policy.get_config()}
    raise TypeError(
        "Expected a DTypePolicy or DTypePolicyMap to serialize. "
        f"Received: policy={policy!r} (of type {type(policy).__name__})"
    )


def deserialize(config: object) -> DTypePolicy | DTypePolicyMap:
    """Rebuild a policy (or policy map) from `serialize`'s output."""
    class_name, inner = check_serialized(config, _CLASS_NAMES)
    if class_name == DTypePolicyMap.__name__:
        return DTypePolicyMap.from_config(inner)
    return deserialize_policy(config)


@overload
def get(identifier: DTypePolicyMap) -> DTypePolicyMap: ...
@overload
def get(
    identifier: str | DTypePolicy | torch.dtype | np.dtype[Any] | None = None,
) -> DTypePolicy: ...
@overload
def get(identifier: object) -> DTypePolicy | DTypePolicyMap: ...
def get(identifier: object = None) -> DTypePolicy | DTypePolicyMap:
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
    if isinstance(identifier, DTypePolicyMap):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    return resolve_policy(identifier)
