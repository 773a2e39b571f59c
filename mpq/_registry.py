"""The objects a user made loadable by name: ``register_serializable``, ``custom_objects`` and
``custom_object_scope``. Loading resolves names from mpq's own catalogs and from here, nowhere
else: nothing is ever imported, and no attribute is taken from a module, by a name from a file.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from mpq._errors import describe as _describe

__all__ = [
    "custom_object_scope",
    "custom_objects_in_scope",
    "lookup",
    "register_serializable",
    "registered_name",
]

# Registered objects are the user's classes and functions: arbitrary callables, so `Any`.
_GLOBAL: dict[str, Any] = {}  # "package>name" -> class or function
_NAMES: dict[int, str] = {}  # id(object) -> "package>name" (the object is kept alive by _GLOBAL)


class _Scopes(threading.local):
    def __init__(self) -> None:
        self.stack: list[dict[str, Any]] = []


_SCOPES = _Scopes()

_T = TypeVar("_T")
# Classes get their registered name as this attribute (layers serialize it as "registered_name").
_NAME_ATTR = "_registered_name"


def register_serializable(package: str = "Custom", name: str | None = None) -> Callable[[_T], _T]:
    """Decorator: make a class or function loadable by name as ``"package>name"``.

    Registered activations, initializers, regularizers, constraints and layers are written to
    configs with their registered name and resolved from it by ``from_config``,
    ``mpq.layers.deserialize`` and ``mpq.saving.load``. (Keras' ``register_keras_serializable``.)

    >>> @register_serializable("my_pkg")
    ... def scaled_tanh(x):
    ...     return 2 * x.tanh()
    >>> registered_name(scaled_tanh)
    'my_pkg>scaled_tanh'
    """
    if not isinstance(package, str) or not package or ">" in package:
        raise ValueError(
            "Expected `package` to be a non-empty string without '>'. "
            f"Received: package={_describe(package)}"
        )
    if name is not None and (not isinstance(name, str) or not name or ">" in name):
        raise ValueError(
            "Expected `name` to be None or a non-empty string without '>'. "
            f"Received: name={_describe(name)}"
        )

    def decorator(obj: _T) -> _T:
        is_class = isinstance(obj, type)
        if not callable(obj) or getattr(obj, "__name__", None) is None:
            raise TypeError(
                f"Expected a class or a named function to register. Received: {_describe(obj)}"
            )
        key = f"{package}>{name or getattr(obj, '__name__', '')}"
        existing = _GLOBAL.get(key)
        if (
            existing is not None
            and existing is not obj
            and _where(existing) != _where(obj)  # the same definition, re-run: fine
        ):
            raise ValueError(
                f"Expected a name that is not registered yet: {key!r} is already registered to "
                f"{'.'.join(_where(existing))}. Received: {'.'.join(_where(obj))}"
            )
        if existing is not None:
            _NAMES.pop(id(existing), None)
        _GLOBAL[key] = obj
        _NAMES[id(obj)] = key
        if is_class:
            setattr(obj, _NAME_ATTR, key)
        return obj

    return decorator


def _where(obj: object) -> tuple[str, str]:
    return (
        str(getattr(obj, "__module__", "?")),
        str(getattr(obj, "__qualname__", getattr(obj, "__name__", "?"))),
    )


def registered_name(obj: object) -> str | None:
    """``"package>name"`` of a registered object, else None."""
    key = _NAMES.get(id(obj))
    return key if key is not None and _GLOBAL.get(key) is obj else None


def _check_custom_objects(custom_objects: object) -> dict[str, Any]:
    if custom_objects is None:
        return {}
    if not isinstance(custom_objects, Mapping) or not all(
        isinstance(k, str) for k in custom_objects
    ):
        raise TypeError(
            "Expected `custom_objects` to be a dict from names to classes or functions. "
            f"Received: custom_objects={_describe(custom_objects)}"
        )
    return dict(custom_objects)


@contextlib.contextmanager
def custom_object_scope(custom_objects: Mapping[str, Any] | None) -> Iterator[None]:
    """Within the block, names in ``custom_objects`` resolve to the given classes or functions
    (on top of any outer scope) when configs are deserialized. Thread-local.

    >>> with custom_object_scope({"double": lambda x: 2 * x}):
    ...     callable(lookup("double"))
    True
    >>> lookup("double") is None
    True
    """
    merged = {**custom_objects_in_scope(), **_check_custom_objects(custom_objects)}
    _SCOPES.stack.append(merged)
    try:
        yield
    finally:
        _SCOPES.stack.pop()


def custom_objects_in_scope() -> dict[str, Any]:
    """The custom objects of the innermost scope (outer scopes merged in)."""
    return _SCOPES.stack[-1] if _SCOPES.stack else {}


def lookup(*names: object) -> Any:
    """The first object found for ``names`` in the custom objects in scope, then in the
    registered objects; None when there is none. Non-string names are skipped."""
    keys = [n for n in names if isinstance(n, str) and n]
    scoped = custom_objects_in_scope()
    for key in keys:
        if key in scoped:
            return scoped[key]
    for key in keys:
        if key in _GLOBAL:
            return _GLOBAL[key]
    return None
