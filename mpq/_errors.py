"""How error messages describe what they received (``Received: name=<repr> (of type T)``), the
error types loading may raise, and the limits that configs and files are checked against before
anything is allocated."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

__all__ = [
    "LOAD_ERRORS",
    "MAX_CONFIG_DEPTH",
    "MAX_SIZE",
    "check_config_depth",
    "check_size",
    "describe",
]

# What `from_config`, `mpq.layers.deserialize`, `mpq.saving.load` and `load_weights` raise for a
# config or file they refuse (plus FileNotFoundError for a missing file): ValueError for a bad
# value, an unknown name, a size out of range, a damaged or mismatching file; TypeError for a
# value of the wrong type. Nothing else is part of the contract (no RecursionError,
# OverflowError, MemoryError, KeyError...).
LOAD_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError)

# How deeply dicts and lists may nest in a config (a Sequential inside a Sequential costs 4).
MAX_CONFIG_DEPTH = 100

# The largest size (units, filters, dimensions, block sizes, history lengths) a config may give:
# torch indexes with int64, but no mpq dimension needs more than int32 can count.
MAX_SIZE = 2**31 - 1


def describe(value: object) -> str:
    """``repr(value)`` and its type, as error messages show a received value.

    Example:
        >>> describe(3)
        '3 (of type int)'
    """
    return f"{value!r} (of type {type(value).__name__})"


def check_config_depth(config: object, limit: int = MAX_CONFIG_DEPTH) -> None:
    """Raise ValueError if dicts and lists nest more than ``limit`` levels deep in ``config``
    (checked without recursion, so before anything recurses into it).

    >>> check_config_depth({"a": [1, {"b": 2}]})
    """
    stack: list[tuple[object, int]] = [(config, 1)]
    while stack:
        value, depth = stack.pop()
        children: Iterable[object]
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth > limit:
            raise ValueError(
                f"Expected a config nested at most {limit} levels deep. "
                f"Received: a config nested more than {limit} levels deep"
            )
        stack.extend((child, depth + 1) for child in children)


def check_size(
    value: object,
    name: str,
    *,
    minimum: int = 1,
    maximum: int = MAX_SIZE,
    allow: tuple[int, ...] = (),
) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (or one of the special values ``allow``,
    e.g. -1); TypeError for a non-integer (bools included), ValueError out of range.

    >>> check_size(128, "units")
    128
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected `{name}` to be an integer. Received: {name}={describe(value)}")
    size = int(value)
    if size in allow:
        return size
    if not minimum <= size <= maximum:
        also = f" (or one of {list(allow)})" if allow else ""
        raise ValueError(
            f"Expected `{name}` to be an integer in [{minimum}, {maximum}]{also}. "
            f"Received: {name}={size}"
        )
    return size
