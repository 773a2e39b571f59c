"""The global dtype policy: a process-wide default plus `policy_scope`, a context-local
override (per thread and per asyncio task) that always restores on exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mpq.policy import _state
from mpq.policy._resolve import get
from mpq.policy.policies import DTypePolicy, dtype_policy

__all__ = ["dtype_policy", "policy_scope", "set_dtype_policy"]


def _as_policy(policy: object) -> DTypePolicy:
    if policy is None:
        raise TypeError(
            "Expected a dtype policy (a name such as 'mixed_bfloat16', a config or a DTypePolicy). "
            "Received: policy=None"
        )
    resolved = get(policy)
    if not isinstance(resolved, DTypePolicy):
        raise TypeError(
            "Expected a single dtype policy for the global policy (a DTypePolicyMap is given to "
            f"a model's `dtype=` instead). Received: policy={resolved!r} "
            f"(of type {type(resolved).__name__})"
        )
    return resolved


def set_dtype_policy(policy: object) -> None:
    """Set the process-wide default policy (a name, a config dict or a policy).

    Example:
        >>> import mpq
        >>> mpq.set_dtype_policy("mixed_bfloat16")
        >>> mpq.dtype_policy().compute_dtype
        'bfloat16'
        >>> mpq.set_dtype_policy("float32")
    """
    _state.set_global(_as_policy(policy))


@contextlib.contextmanager
def policy_scope(policy: object) -> Iterator[DTypePolicy]:
    """Use `policy` as the global policy inside the `with` block, in this thread/task only.

    Example:
        >>> import mpq
        >>> with mpq.policy_scope("mixed_float16") as p:
        ...     mpq.dtype_policy() is p
        True
    """
    resolved = _as_policy(policy)
    token = _state.set_scope(resolved)
    try:
        yield resolved
    finally:
        _state.reset_scope(token)
