"""Per-call state of layer calls: autocast of inputs and variable reads, stateless scopes.

Every ``Layer.__call__`` pushes a :class:`Frame` (thread-local); a variable read inside it is
served in the frame's compute dtype from a cache, so each weight is cast once per call.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

__all__ = ["STATE", "Frame", "StatelessScope", "convert_structure", "read"]


class _State(threading.local):
    frame: Frame | None = None  # innermost running layer call
    stateless: StatelessScope | None = None  # active stateless_call / meta shape inference
    meta_build: bool = False  # build variables on the meta device (shape inference)


STATE = _State()


class Frame:
    """One running layer call: the dtype autocast variables read in (None: no cast), the cast
    cache, and an explicitly passed ``training`` flag inherited by nested calls."""

    __slots__ = ("cache", "cast_dtype", "training")

    def __init__(self, cast_dtype: torch.dtype | None, training: bool | None):
        self.cast_dtype = cast_dtype
        self.training = training
        self.cache: dict | None = None


class StatelessScope:
    """Variable values by identity for ``stateless_call``; assigns are recorded, not written."""

    def __init__(self, mapping: dict[int, tuple[Any, torch.Tensor]]):
        self.values = mapping  # id(variable) -> (variable, value)
        self.losses: list[torch.Tensor] = []

    def get(self, var: torch.Tensor) -> torch.Tensor:
        hit = self.values.get(id(var))
        return var if hit is None else hit[1]

    def record(self, var: torch.Tensor, value: torch.Tensor) -> None:
        self.values[id(var)] = (var, value)


def read(var: torch.Tensor) -> torch.Tensor:
    """The value of ``var`` for the running call (itself outside any call)."""
    frame = STATE.frame
    if frame is None:
        return var
    stateless = STATE.stateless
    value = var if stateless is None else stateless.get(var)
    dtype = frame.cast_dtype
    if dtype is None or value.dtype == dtype or not var.__dict__.get("_autocast_float", False):
        return value
    cache = frame.cache
    if cache is None:
        cache = frame.cache = {}
    key = id(var)
    hit = cache.get(key)
    # The version counter invalidates the cached cast after an in-place assign.
    if hit is not None and hit[0] is value and hit[1] == value._version:
        return hit[2]
    cast = value.to(dtype)
    cache[key] = (value, value._version, cast)
    return cast


def _convert(x: Any, dtype: torch.dtype | None) -> Any:
    if isinstance(x, torch.Tensor):
        if dtype is not None and x.dtype != dtype and x.is_floating_point():
            return x.to(dtype)
        return x
    if isinstance(x, (np.ndarray, np.generic)) and not isinstance(x, (np.str_, np.bytes_)):
        from mpq.layers.variables import to_tensor

        return _convert(to_tensor(x), dtype)
    if isinstance(x, (list, tuple)):
        items = [_convert(i, dtype) for i in x]
        if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
            return type(x)(*items)
        return type(x)(items)
    if isinstance(x, dict):
        return type(x)((k, _convert(v, dtype)) for k, v in x.items())
    return x


def convert_structure(args: tuple, kwargs: dict, dtype: torch.dtype | None) -> tuple[tuple, dict]:
    """numpy arrays -> tensors; floating tensors -> ``dtype`` (when not None), in nested
    lists/tuples/dicts of args and kwargs. Integer/bool tensors and Python scalars stay."""
    args = tuple(_convert(a, dtype) for a in args)
    if kwargs:
        kwargs = {k: _convert(v, dtype) for k, v in kwargs.items()}
    return args, kwargs
