"""Weight and activity regularizers (Keras 3 names): penalties added to ``Layer.losses``.

``l1``, ``l2``, ``l1_l2`` by name or as classes with ``get_config``; called on a tensor they
return a scalar tensor (float32 or wider) that stays on the autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from typing_extensions import Self

from mpq._catalog import Catalog

__all__ = ["L1", "L1L2", "L2", "Regularizer", "deserialize", "get", "serialize"]


def _check_factor(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(
            f"Expected `{name}` to be a non-negative float. Received: {name}={value!r}"
        )
    return float(value)


def _wide(x: torch.Tensor) -> torch.Tensor:
    # Penalties are reductions: accumulate in float32 at least (autocast "reduction" rule).
    return x if x.dtype == torch.float64 else x.float()


class Regularizer:
    """Base class: ``reg(x) -> scalar tensor``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(x).")

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class L1(Regularizer):
    """``l1 * sum(|x|)``."""

    def __init__(self, l1: float = 0.01):
        self.l1 = _check_factor("l1", l1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.l1 * _wide(x).abs().sum()

    def get_config(self) -> dict[str, Any]:
        return {"l1": self.l1}


class L2(Regularizer):
    """``l2 * sum(x ** 2)``."""

    def __init__(self, l2: float = 0.01):
        self.l2 = _check_factor("l2", l2)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2 * _wide(x).square().sum()

    def get_config(self) -> dict[str, Any]:
        return {"l2": self.l2}


class L1L2(Regularizer):
    """``l1 * sum(|x|) + l2 * sum(x ** 2)``."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1 = _check_factor("l1", l1)
        self.l2 = _check_factor("l2", l2)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = _wide(x)
        return self.l1 * x.abs().sum() + self.l2 * x.square().sum()

    def get_config(self) -> dict[str, Any]:
        return {"l1": self.l1, "l2": self.l2}


# By name: "l1_l2" means l1=l2=0.01 (the Keras `l1_l2()` shortcut; the class defaults are 0).
_ALIASES: dict[str, Callable[[], Regularizer]] = {
    "l1": L1,
    "l2": L2,
    "l1_l2": lambda: L1L2(l1=0.01, l2=0.01),
}
_CATALOG = Catalog("regularizer", Regularizer, _ALIASES, (L1, L2, L1L2))


def serialize(regularizer: Regularizer | Callable[..., Any] | None) -> dict[str, Any] | None:
    """Config dict ``{"class_name", "config"}`` (None stays None)."""
    return _CATALOG.serialize(regularizer)


def deserialize(config: dict[str, Any]) -> Regularizer:
    """Inverse of :func:`serialize`."""
    return _CATALOG.deserialize(config)


def get(identifier: object) -> Regularizer | Callable[..., Any] | None:
    """Resolve a name (``"l1"``, ``"l2"``, ``"l1_l2"``), a config dict, an object or a callable.

    >>> round(float(get("l2")(torch.ones(3))), 6)
    0.03
    """
    return _CATALOG.get(identifier)
