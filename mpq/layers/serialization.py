"""Layer registry and (de)serialization by class name: ``serialize``/``deserialize``/``register_layer``.

Built-in layers register under ``"mpq>ClassName"``; user layers with ``@register_layer()``
(``"Custom>ClassName"``), ``@mpq.saving.register_serializable()``, or by passing
``custom_objects`` to :func:`deserialize`. Nothing is imported by name from a config.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from mpq import _registry
from mpq._errors import check_config_depth
from mpq._errors import describe as _describe

if TYPE_CHECKING:
    from mpq.layers.base import Layer

_LayerClass = TypeVar("_LayerClass", bound="type[Layer]")

__all__ = ["deserialize", "get_registered_layer", "register_layer", "serialize"]


class _Depth(threading.local):
    def __init__(self) -> None:
        self.level = 0


_DEPTH = _Depth()  # > 0 inside a deserialize call (the outermost one checks the nesting depth)


def register_layer(
    package: str = "Custom", name: str | None = None
) -> Callable[[_LayerClass], _LayerClass]:
    """Class decorator: make a Layer subclass loadable by :func:`deserialize` / ``mpq.saving.load``
    (``mpq.saving.register_serializable`` restricted to layers).

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
    register = _registry.register_serializable(package, name)

    def decorator(cls: _LayerClass) -> _LayerClass:
        from mpq.layers.base import Layer

        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise TypeError(
                f"Expected a subclass of mpq.layers.Layer. Received: {cls!r} "
                f"(of type {type(cls).__name__})"
            )
        return register(cls)

    return decorator


def _layer_class(obj: Any) -> type[Layer] | None:
    from mpq.layers.base import Layer

    return obj if isinstance(obj, type) and issubclass(obj, Layer) else None


def get_registered_layer(name: str) -> type[Layer] | None:
    """The layer class registered as ``name`` (``"pkg>Class"``), or a built-in by bare class name."""
    return _layer_class(_registry.lookup(name) if ">" in str(name) else None) or _layer_class(
        _registry.lookup(f"mpq>{name}")
    )


def serialize(layer: Any) -> dict[str, Any]:
    """``{"class_name", "registered_name", "config", "build_config"}`` for a layer."""
    from mpq.layers.base import Layer

    if not isinstance(layer, Layer):
        raise TypeError(
            f"Expected an mpq.layers.Layer to serialize. Received: {layer!r} "
            f"(of type {type(layer).__name__})"
        )
    cls = type(layer)
    return {
        "module": cls.__module__,  # informative only: never imported on load
        "class_name": cls.__name__,
        "registered_name": _registry.registered_name(cls),
        "config": layer.get_config(),
        "build_config": layer.get_build_config(),
    }


def deserialize(config: dict[str, Any], custom_objects: dict[str, type] | None = None) -> Any:
    """Rebuild a layer (and build it, when ``build_config`` is present) from :func:`serialize`.

    Layer classes (and the activations, initializers, regularizers and constraints their
    configs name) resolve from mpq's catalogs, registered objects and ``custom_objects`` only.
    Raises ValueError or TypeError for anything else, for a config nested deeper than
    ``mpq.saving.MAX_CONFIG_DEPTH`` levels, or for sizes out of range.
    """
    if _DEPTH.level == 0:
        check_config_depth(config)
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise ValueError(
            "Expected a layer config dict with 'class_name' and 'config' keys. "
            f"Received: config={_describe(config)}"
        )
    _DEPTH.level += 1
    try:
        with _registry.custom_object_scope(custom_objects):
            return _deserialize(config)
    finally:
        _DEPTH.level -= 1


def _deserialize(config: dict[str, Any]) -> Any:
    from mpq.layers import keras_config

    if keras_config.is_keras_object(config):  # Keras 3.15's wrapper: its module is checked
        keras_config.check_module(config)
    registered = config.get("registered_name")
    class_name = config["class_name"]
    for key, value in (("class_name", class_name), ("registered_name", registered)):
        if not (isinstance(value, str) or (value is None and key == "registered_name")):
            raise TypeError(
                f"Expected `{key}` in a layer config to be a string. "
                f"Received: {key}={_describe(value)}"
            )
    found = _registry.lookup(registered, class_name) or get_registered_layer(class_name)
    if found is None:
        raise ValueError(
            f"Unknown layer class {class_name!r}. "
            "Expected a built-in layer, one registered with @mpq.layers.register_layer() or "
            "@mpq.saving.register_serializable(), or one passed in custom_objects={name: cls} "
            "(nothing is imported by name from a config). "
            f"Received: class_name={class_name!r}, registered_name={registered!r}"
        )
    cls = _layer_class(found)
    if cls is None:
        raise TypeError(
            f"Expected {registered or class_name!r} to name a subclass of mpq.layers.Layer. "
            f"Received: {_describe(found)}"
        )
    layer = cls.from_config(config["config"])
    build_config = config.get("build_config")
    if build_config:
        layer.build_from_config(build_config)
    return layer
