"""One resolver for the small families of objects that layers take by name, config dict,
instance or plain callable (initializers, regularizers, constraints): `get`, `serialize` and
`deserialize` with the same rules and the same errors for each family. Names resolve from the
family's classes and from objects the user registered (`mpq.saving.register_serializable`) or
passed in `custom_objects`; nothing is imported by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from typing_extensions import Self

from mpq import _registry
from mpq._errors import describe as _describe

__all__ = ["Catalog", "Serializable"]


class Serializable(Protocol):
    """What a family's base class offers: a config dict and a constructor from one."""

    def get_config(self) -> dict[str, Any]: ...

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self: ...


_B = TypeVar("_B", bound=Serializable)


class Catalog(Generic[_B]):
    """Names and classes of one family.

    Args:
        kind: the family's noun in messages and argument names, e.g. ``"initializer"``.
        base: the family's base class; instances of it are returned as they are.
        aliases: snake_case names -> factories (usually the class itself).
        classes: the classes a serialized config may name.
    """

    def __init__(
        self,
        kind: str,
        base: type[_B],
        aliases: Mapping[str, Callable[[], _B]],
        classes: Iterable[type[_B]],
    ):
        self.kind = kind
        self.base = base
        self.aliases = dict(aliases)
        self.classes = {cls.__name__: cls for cls in classes}

    def serialize(self, obj: object) -> dict[str, Any] | None:
        """``{"class_name": ..., "config": ...}`` (None stays None)."""
        if obj is None:
            return None
        if not isinstance(obj, self.base):
            raise TypeError(
                f"Expected an mpq {self.base.__name__} to serialize. "
                f"Received: {self.kind}={obj!r} (of type {type(obj).__name__})"
            )
        config: dict[str, Any] = {"class_name": type(obj).__name__, "config": obj.get_config()}
        registered = _registry.registered_name(type(obj))
        if registered is not None:
            config["registered_name"] = registered
        return config

    def deserialize(self, config: object) -> _B:
        """Inverse of `serialize`."""
        name = config.get("class_name") if isinstance(config, dict) else None
        cls = self._class(name)
        if cls is None and isinstance(config, dict):
            cls = self._custom_class(config.get("registered_name"), name)
        if cls is None or not isinstance(config, dict):
            raise ValueError(
                f"Expected a {self.kind} config with class_name one of {sorted(self.classes)}, "
                "or naming a class registered with @mpq.saving.register_serializable() or "
                f"passed in custom_objects. Received: config={config!r}"
            )
        inner = config.get("config")
        if inner is None:
            inner = {}
        if not isinstance(inner, dict):
            raise TypeError(
                f"Expected the 'config' of a {self.kind} config to be a dict. "
                f"Received: config={_describe(inner)}"
            )
        return cls.from_config(inner)

    def _class(self, name: object) -> type[_B] | None:
        """The family class a config's class_name names: a class name, or an alias that is a
        class (``"glorot_uniform"``)."""
        if not isinstance(name, str):
            return None
        cls = self.classes.get(name)
        if cls is not None:
            return cls
        alias = self.aliases.get(name)
        if isinstance(alias, type) and issubclass(alias, self.base):
            return alias
        return None

    def _custom_class(self, *names: object) -> type[_B] | None:
        found = _registry.lookup(*names)
        if found is None:
            return None
        if not (isinstance(found, type) and issubclass(found, self.base)):
            raise TypeError(
                f"Expected {next(n for n in names if isinstance(n, str))!r} to name a subclass "
                f"of {self.base.__name__}. Received: {_describe(found)}"
            )
        return found

    def get(self, identifier: object) -> _B | Callable[..., Any] | None:
        """Resolve a name (alias or class name), a config dict, an instance or a callable;
        None stays None. (A plain callable is the user's: it is returned as it is.)"""
        if identifier is None or isinstance(identifier, self.base):
            return identifier
        if isinstance(identifier, str):
            factory = (
                self.aliases.get(identifier)
                or self.classes.get(identifier)
                or self._custom_class(identifier)
            )
            if factory is None:
                raise ValueError(
                    f"Expected a {self.kind} name, one of {sorted(self.aliases)}. "
                    f"Received: {self.kind}={identifier!r}"
                )
            return factory()
        if isinstance(identifier, dict):
            return self.deserialize(identifier)
        if callable(identifier):
            return identifier
        raise TypeError(
            f"Expected a {self.kind} name, config dict, {self.base.__name__} or callable. "
            f"Received: {self.kind}={identifier!r} (of type {type(identifier).__name__})"
        )
