"""Weight constraints (Keras 3 names): projections applied to a variable after an update.

torch optimizers do not know about them: call :func:`apply_constraints` after
``optimizer.step()``, or :func:`attach` them to an optimizer once (a post-step hook).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle
from typing_extensions import Self

from mpq._catalog import Catalog

__all__ = [
    "Constraint",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "UnitNorm",
    "apply_constraints",
    "attach",
    "deserialize",
    "get",
    "serialize",
]

_EPSILON = 1e-7  # Keras' backend.epsilon()


def _norms(w: torch.Tensor, axis: int | list[int]) -> torch.Tensor:
    return torch.sqrt(torch.sum(w * w, dim=axis, keepdim=True))


class Constraint:
    """Base class: ``c(w) -> projected w`` (same shape and dtype)."""

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class MaxNorm(Constraint):
    """Rescale slices whose L2 norm along ``axis`` exceeds ``max_value``."""

    def __init__(self, max_value: float = 2.0, axis: int | list[int] = 0):
        self.max_value, self.axis = max_value, axis

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        norms = _norms(w, self.axis)
        desired = torch.clamp(norms, 0, self.max_value)
        return w * (desired / (_EPSILON + norms))

    def get_config(self) -> dict[str, Any]:
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    """Zero out negative entries."""

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w * (w >= 0).to(w.dtype)


class UnitNorm(Constraint):
    """Rescale slices along ``axis`` to unit L2 norm."""

    def __init__(self, axis: int | list[int] = 0):
        self.axis = axis

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w / (_EPSILON + _norms(w, self.axis))

    def get_config(self) -> dict[str, Any]:
        return {"axis": self.axis}


class MinMaxNorm(Constraint):
    """Move slice norms into ``[min_value, max_value]`` at ``rate`` (1.0: all the way)."""

    def __init__(
        self,
        min_value: float = 0.0,
        max_value: float = 1.0,
        rate: float = 1.0,
        axis: int | list[int] = 0,
    ):
        self.min_value, self.max_value, self.rate, self.axis = min_value, max_value, rate, axis

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        norms = _norms(w, self.axis)
        desired = self.rate * torch.clamp(norms, self.min_value, self.max_value)
        desired = desired + (1 - self.rate) * norms
        return w * (desired / (_EPSILON + norms))

    def get_config(self) -> dict[str, Any]:
        return {
            "min_value": self.min_value,
            "max_value": self.max_value,
            "rate": self.rate,
            "axis": self.axis,
        }


_ALIASES: dict[str, type[Constraint]] = {
    "max_norm": MaxNorm,
    "non_neg": NonNeg,
    "unit_norm": UnitNorm,
    "min_max_norm": MinMaxNorm,
}


_CATALOG = Catalog("constraint", Constraint, _ALIASES, _ALIASES.values())


def serialize(constraint: Constraint | Callable[..., Any] | None) -> dict[str, Any] | None:
    """Config dict ``{"class_name", "config"}`` (None stays None)."""
    return _CATALOG.serialize(constraint)


def deserialize(config: dict[str, Any]) -> Constraint:
    """Inverse of :func:`serialize`."""
    return _CATALOG.deserialize(config)


def get(identifier: object) -> Constraint | Callable[..., Any] | None:
    """Resolve a name (``"max_norm"``, ``"non_neg"``, ...), a config dict, an object or a callable."""
    return _CATALOG.get(identifier)


def apply_constraints(module: torch.nn.Module) -> None:
    """Project every mpq variable of ``module`` that has a constraint, in place.

    Call after ``optimizer.step()``: ``apply_constraints(model)``.
    """
    with torch.no_grad():
        for p in module.parameters():
            # mpq variables carry a ``constraint`` attribute (None when unconstrained).
            constraint = getattr(p, "constraint", None)
            if constraint is not None:
                p.copy_(constraint(p))


def attach(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> RemovableHandle:
    """Apply ``module``'s constraints after every ``optimizer.step()``; returns the hook handle."""
    return optimizer.register_step_post_hook(lambda *_: apply_constraints(module))
