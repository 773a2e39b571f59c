"""Layer registry and (de)serialization by class name: ``serialize``/``deserialize``/``register_layer``.

Built-in layers register under ``"mpq>ClassName"``; user layers with ``@register_layer()``
(``"Custom>ClassName"``) or by passing ``custom_objects`` to :func:`deserialize`.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["deserialize", "get_registered_layer", "register_layer", "serialize"]

_REGISTRY: dict[str, type] = {}


class _CustomObjects(threading.local):
    def __init__(self) -> None:
        self.stack: list[dict[str, type]] = []


_CUSTOM_OBJECTS = _CustomObjects()


def register_layer(package: str = "Custom", name: str | None = None):
    """Class decorator: make a Layer subclass loadable by :func:`deserialize` / ``mpq.saving.load``.

    >>> from mpq.layers import Layer
    >>> @register_layer("my_pkg")
    ... class MyLayer(Layer):
    ...     def call(self, x):
    ...         return 2 * x
    >>> MyLayer._registered_name
    'my_pkg>MyLayer'
    """
    if not isinstance(package, str) or ">" in package:
        raise ValueError(
            f"Expected `package` to be a string without '>'. Received: package={package!r}"
        )

    def decorator(cls: type) -> type:
        from mpq.layers.base import Layer

        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise TypeError(
                f"Expected a subclass of mpq.layers.Layer. Received: {cls!r} "
                f"(of type {type(cls).__name__})"
            )
        key = f"{package}>{name or cls.__name__}"
        existing = _REGISTRY.get(key)
        if (
            existing is not None
            and existing is not cls
            and (
                existing.__module__,
                existing.__qualname__,
            )
            != (cls.__module__, cls.__qualname__)
        ):
            raise ValueError(
                f"{key!r} is already registered to {existing.__module__}.{existing.__qualname__}. "
                f"Received: {cls.__module__}.{cls.__qualname__}"
            )
        _REGISTRY[key] = cls
        cls._registered_name = key
        return cls

    return decorator


def get_registered_layer(name: str) -> type | None:
    """The class registered as ``name`` (``"pkg>Class"``), or a built-in by bare class name."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    return _REGISTRY.get(f"mpq>{name}")


def serialize(layer: Any) -> dict[str, Any]:
    """``{"class_name", "registered_name", "config", "build_config"}`` for a layer."""
    from mpq.layers.base import Layer

    if not isinstance(layer, Layer):
        raise TypeError(
            f"Expected an mpq.layers.Layer to serialize. Received: {layer!r} "
            f"(of type {type(layer).__name__})"
        )
    cls = type(layer)
    registered = cls.__dict__.get("_registered_name")
    return {
        "module": cls.__module__,
        "class_name": cls.__name__,
        "registered_name": registered,
        "config": layer.get_config(),
        "build_config": layer.get_build_config(),
    }


def deserialize(config: dict[str, Any], custom_objects: dict[str, type] | None = None) -> Any:
    """Rebuild a layer (and build it, when ``build_config`` is present) from :func:`serialize`."""
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise ValueError(
            "Expected a layer config dict with 'class_name' and 'config' keys. "
            f"Received: config={config!r}"
        )
    # Nested deserialize calls (a Sequential's layers) see the outer custom_objects too.
    outer = _CUSTOM_OBJECTS.stack[-1] if _CUSTOM_OBJECTS.stack else {}
    custom_objects = {**outer, **(custom_objects or {})}
    registered = config.get("registered_name")
    class_name = config["class_name"]
    cls = (
        custom_objects.get(registered or "")
        or custom_objects.get(class_name)
        or (get_registered_layer(registered) if registered else None)
        or get_registered_layer(class_name)
    )
    if cls is None:
        raise ValueError(
            f"Unknown layer class {class_name!r} (registered name {registered!r}). Register it with "
            "@mpq.layers.register_layer() or pass custom_objects={name: cls}. "
            f"Known layers: {sorted(_REGISTRY)}"
        )
    _CUSTOM_OBJECTS.stack.append(custom_objects)
    try:
        layer = cls.from_config(config["config"])
        build_config = config.get("build_config")
        if build_config:
            layer.build_from_config(build_config)
    finally:
        _CUSTOM_OBJECTS.stack.pop()
    return layer
