"""How error messages describe what they received: ``Received: name=<repr> (of type T)``."""

from __future__ import annotations

from typing import Any

__all__ = ["describe"]


def describe(value: Any) -> str:
    """``repr(value)`` and its type, as error messages show a received value.

    Example:
        >>> describe(3)
        '3 (of type int)'
    """
    return f"{value!r} (of type {type(value).__name__})"
