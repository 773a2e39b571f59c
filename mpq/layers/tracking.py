"""Names, paths and the layer tree: unique default names, parent links, weight collection.

A layer assigned as an attribute of another (directly or inside nn.ModuleList/ModuleDict/
nn.Sequential) gets it as parent; ``path`` is the chain of layer names from the root.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeGuard

import torch

if TYPE_CHECKING:
    from mpq.layers.base import Layer
    from mpq.layers.variables import Variable

__all__ = ["is_weight", "reset_name_counters", "to_snake_case", "unique_name"]

_NAME_LOCK = threading.Lock()
_NAME_COUNTS: dict[str, int] = {}


def to_snake_case(name: str) -> str:
    """``"LayerNormalization"`` -> ``"layer_normalization"``, ``"Conv2D"`` -> ``"conv2d"``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def unique_name(base: str) -> str:
    """``base``, then ``base_1``, ``base_2``, ... (process-wide, thread-safe)."""
    with _NAME_LOCK:
        n = _NAME_COUNTS.get(base, 0)
        _NAME_COUNTS[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def reset_name_counters() -> None:
    """Forget the names handed out so far (the next ``Dense()`` is ``dense`` again)."""
    with _NAME_LOCK:
        _NAME_COUNTS.clear()


_LAYER_BASES: list[type] = []
"""``mpq.layers.base.Layer``, registered by base.py at import (tracking sits below base)."""


def register_layer_base(cls: type) -> None:
    """Make ``direct_sublayers`` and the tracking helpers treat instances of ``cls`` as layers."""
    if cls not in _LAYER_BASES:
        _LAYER_BASES.append(cls)


def _is_layer(m: object) -> TypeGuard[Layer]:
    return isinstance(m, tuple(_LAYER_BASES))


def direct_sublayers(module: torch.nn.Module) -> Iterator[Layer]:
    """Layers reachable from ``module`` without crossing another Layer, in registration order."""
    for child in module._modules.values():
        if child is None:
            continue
        if _is_layer(child):
            yield child
        else:
            yield from direct_sublayers(child)


def track(parent: Layer, value: torch.nn.Module) -> None:
    """Attach ``value`` (a Layer, or a container of Layers) under ``parent``."""
    layers = [value] if _is_layer(value) else list(direct_sublayers(value))
    for layer in layers:
        if layer is parent:
            continue
        layer.__dict__["_parent"] = parent
        layer._on_tracked(parent)


def retrack(parent: Layer) -> None:
    """Re-link all direct sublayers (catches containers mutated after assignment)."""
    for layer in direct_sublayers(parent):
        if layer.__dict__.get("_parent") is not parent:
            layer.__dict__["_parent"] = parent
            layer._on_tracked(parent)


def layer_path(layer: Layer) -> str:
    names = [layer.name]
    seen = {id(layer)}
    root = layer
    parent = layer.__dict__.get("_parent")
    while parent is not None and id(parent) not in seen:
        seen.add(id(parent))
        names.append(parent.name)
        root = parent
        parent = parent.__dict__.get("_parent")
    prefix = root.__dict__.get("_scope_prefix")  # the name_scope the root was created in
    if prefix:
        names.append(prefix)
    return "/".join(reversed(names))


def own_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module._parameters.values() if p is not None]


def collect_weights(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Own parameters first (Keras order: those created trainable, then those created
    non-trainable, each in creation order), then each submodule's, depth first, no duplicates."""
    out: list[torch.nn.Parameter] = []
    seen: set[int] = set()

    def visit(m: torch.nn.Module) -> None:
        own = [p for p in m._parameters.values() if p is not None]
        created_trainable = [p.__dict__.get("_created_trainable", True) for p in own]
        for wanted in (True, False):
            for p, flag in zip(own, created_trainable, strict=True):
                if flag is wanted and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        for child in m._modules.values():
            if child is not None:
                visit(child)

    visit(module)
    return out


def is_weight(p: torch.nn.Parameter) -> bool:
    """False for state that is not a weight: metric and seed-generator variables."""
    return bool(p.__dict__.get("_kind", "weight") == "weight")


def set_trainable(module: torch.nn.Module, value: bool) -> None:
    """Recursive ``trainable`` switch: variables created trainable follow ``value``."""
    from mpq.layers.variables import Variable

    if _is_layer(module):
        module.__dict__["_trainable"] = value
    for p in module._parameters.values():
        if p is None:
            continue
        if isinstance(p, Variable):
            if p._created_trainable:
                p.requires_grad_(value)
        elif p.is_floating_point():
            p.requires_grad_(value)
    for child in module._modules.values():
        if child is not None:
            set_trainable(child, value)


def adopt_variable(layer: Layer, attr: str, var: Variable) -> bool:
    """``layer.attr = var`` for a variable the layer created under another key: re-key it
    (keeping creation order) and, if it was unnamed, give it the attribute's name.

    Returns False when ``var`` is not one of the layer's own variables (plain registration)."""
    params = layer._parameters
    old_key = next((k for k, p in params.items() if p is var), None)
    if old_key is None:
        return False
    if old_key != attr:
        for store in (layer.__dict__, layer._buffers, layer._modules):
            store.pop(attr, None)
        items = [(attr if k == old_key else k, p) for k, p in params.items() if k != attr]
        params.clear()
        params.update(items)
        if not var.__dict__.get("_name_given", True) and var._name == old_key:
            var._name = attr
    return True


def set_owner(var: Variable, layer: Layer) -> None:
    var._owner = weakref.ref(layer)
