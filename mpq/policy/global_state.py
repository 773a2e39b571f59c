"""The global dtype policy: a process-wide default plus `policy_scope`, a context-local
override (per thread and per asyncio task) that always restores on exit."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

from mpq.policy.policies import DTypePolicy

__all__ = ["dtype_policy", "policy_scope", "set_dtype_policy"]

_lock = threading.Lock()
_global_policy: DTypePolicy | None = None
# A context variable, not a global: a scope opened in one thread (or task) is invisible to
# the others, and `reset(token)` restores exactly what was there before, even on exceptions.
_scoped: contextvars.ContextVar[DTypePolicy | None] = contextvars.ContextVar(
    "mpq_policy_scope", default=None
)


def _as_policy(policy: Any) -> DTypePolicy:
    from mpq.policy import get

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


def dtype_policy() -> DTypePolicy:
    """The policy in force: the innermost `policy_scope`, else the global one (`float32`)."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    global _global_policy
    if _global_policy is None:
        with _lock:
            if _global_policy is None:
                _global_policy = DTypePolicy("float32")
    return _global_policy


def set_dtype_policy(policy: Any) -> None:
    """Set the process-wide default policy (a name, a config dict or a policy).

    Example:
        >>> import mpq
        >>> mpq.set_dtype_policy("mixed_bfloat16")
        >>> mpq.dtype_policy().compute_dtype
        'bfloat16'
        >>> mpq.set_dtype_policy("float32")
    """
    resolved = _as_policy(policy)
    global _global_policy
    with _lock:
        _global_policy = resolved


@contextlib.contextmanager
def policy_scope(policy: Any) -> Iterator[DTypePolicy]:
    """Use `policy` as the global policy inside the `with` block, in this thread/task only.

    Example:
        >>> import mpq
        >>> with mpq.policy_scope("mixed_float16") as p:
        ...     mpq.dtype_policy() is p
        True
    """
    resolved = _as_policy(policy)
    token = _scoped.set(resolved)
    try:
        yield resolved
    finally:
        _scoped.reset(token)
