"""Hypothesis strategies for dtype policies (float, mixed, quantized with block sizes and
float8 history lengths); re-exported by `mpq.testing.strategies`."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from mpq.policy import (
    FLOAT_POLICY_NAMES,
    DTypePolicy,
    QuantizedDTypePolicy,
    QuantizedFloat8DTypePolicy,
)

__all__ = ["float_policies", "policies", "policy_names", "quantized_policies"]


def float_policies() -> st.SearchStrategy[DTypePolicy]:
    """Every non-quantized policy: float16, bfloat16, float32, float64, mixed_*."""
    return st.sampled_from(FLOAT_POLICY_NAMES).map(DTypePolicy)


def quantized_policies(
    modes: Sequence[str] = ("int8", "int4", "float8"),
) -> st.SearchStrategy[DTypePolicy]:
    """Quantized policies over any float source; int4 with per-channel or grouped blocks,
    float8 with history lengths from 1 to 2048."""
    sources = st.sampled_from(FLOAT_POLICY_NAMES)
    options = []
    if "int8" in modes:
        options.append(sources.map(lambda s: QuantizedDTypePolicy("int8", s)))
    if "int4" in modes:
        blocks = st.one_of(st.just(-1), st.integers(1, 256).map(lambda g: 2 * g))
        options.append(
            st.builds(lambda s, b: QuantizedDTypePolicy("int4", s, block_size=b), sources, blocks)
        )
    if "float8" in modes:
        options.append(
            st.builds(
                lambda s, n: QuantizedFloat8DTypePolicy("float8", s, amax_history_length=n),
                sources,
                st.integers(1, 2048),
            )
        )
    return st.one_of(options)


def policies() -> st.SearchStrategy[DTypePolicy]:
    """Any policy mpq knows: float, mixed or quantized."""
    return st.one_of(float_policies(), quantized_policies())


def policy_names() -> st.SearchStrategy[str]:
    """Names that `mpq.policy.get` parses (float8 names carry the default history length)."""
    return st.one_of(float_policies(), quantized_policies(modes=("int8", "int4"))).map(
        lambda p: p.name
    ) | st.sampled_from(FLOAT_POLICY_NAMES).map(lambda s: f"float8_from_{s}")
