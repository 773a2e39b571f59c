"""Dtype policies: variable and compute dtypes, quantization modes, per-layer policy maps, the
global policy, and the autocast rules that say which ops run in which dtype.

    >>> import mpq
    >>> mpq.policy.get("int4/128_from_mixed_bfloat16")
    <QuantizedDTypePolicy "int4/128_from_mixed_bfloat16">
    >>> mpq.policy.get("int4_from_float32").block_size  # per output channel, as in Keras
    -1
"""

from __future__ import annotations

from mpq.policy import autocast
from mpq.policy._resolve import deserialize, get, serialize
from mpq.policy.global_state import dtype_policy, policy_scope, set_dtype_policy
from mpq.policy.policies import (
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
