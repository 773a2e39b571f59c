"""Dtype policies: variable and compute dtypes, quantization modes, per-layer policy maps, the
global policy, and the autocast rules that say which ops run in which dtype.

    >>> import mpq
    >>> mpq.policy.get("int4/128_from_mixed_bfloat16")
    <QuantizedDTypePolicy "int4/128_from_mixed_bfloat16">
"""

from __future__ import annotations

from mpq.policy import autocast
from mpq.policy._resolve import deserialize, get, serialize
from mpq.policy.global_state import dtype_policy, policy_scope, set_dtype_policy
from mpq.policy.policies import (
    FLOAT_POLICY_NAMES,
    MX_MODES,
    QUANTIZATION_MODES,
    DTypePolicy,
    QuantizedAlgorithmDTypePolicy,
    QuantizedDTypePolicy,
    QuantizedFloat8DTypePolicy,
)
from mpq.policy.policy_map import DTypePolicyMap

__all__ = [
    "FLOAT_POLICY_NAMES",
    "MX_MODES",
    "QUANTIZATION_MODES",
    "DTypePolicy",
    "DTypePolicyMap",
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
