"""Where the policy in force is stored: a process-wide default plus a context-local scope (per
thread and per asyncio task). Storage only: reading with a default is
`mpq.policy.policies.dtype_policy`, validated writing is `mpq.policy.global_state`."""

from __future__ import annotations

import contextvars
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mpq.policy.policies import DTypePolicy

__all__ = ["current", "reset_scope", "set_global", "set_scope"]

_lock = threading.Lock()
_global_policy: DTypePolicy | None = None
# A context variable, not a global: a scope opened in one thread (or task) is invisible to
# the others, and `reset(token)` restores exactly what was there before, even on exceptions.
_scoped: contextvars.ContextVar[DTypePolicy | None] = contextvars.ContextVar(
    "mpq_policy_scope", default=None
)


def current() -> DTypePolicy | None:
    """The innermost scoped policy, else the process-wide one, else None (never set)."""
    scoped = _scoped.get()
    return scoped if scoped is not None else _global_policy


def set_global(policy: DTypePolicy) -> None:
    global _global_policy
    with _lock:
        _global_policy = policy


def set_scope(policy: DTypePolicy) -> contextvars.Token[DTypePolicy | None]:
    return _scoped.set(policy)


def reset_scope(token: contextvars.Token[DTypePolicy | None]) -> None:
    _scoped.reset(token)
