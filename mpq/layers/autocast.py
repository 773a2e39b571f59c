"""Per-call state of layer calls: autocast of inputs and variable reads, stateless scopes.

Every ``Layer.__call__`` pushes a :class:`Frame` (thread-local); a variable read inside it is
served in the frame's compute dtype from a cache, so each weight is cast once per call.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from mpq import dtypes as _dtypes

__all__ = [
    "STATE",
    "Frame",
    "StatelessScope",
    "VariableValue",
    "convert_structure",
    "read",
    "stateless_value",
    "to_tensor",
]


class _State(threading.local):
    frame: Frame | None = None  # innermost running layer call
    stateless: StatelessScope | None = None  # active stateless_call / meta shape inference
    meta_build: bool = False  # build variables on the meta device (shape inference)
    name_scopes: tuple[str, ...] = ()  # active mpq.layers.name_scope names, outermost first


STATE = _State()


class Frame:
    """One running layer call: the dtype autocast variables read in (None: no cast), the cast
    cache, and an explicitly passed ``training`` flag inherited by nested calls."""

    __slots__ = ("cache", "cast_dtype", "plain", "training")

    def __init__(self, cast_dtype: torch.dtype | None, training: bool | None, not_stateless: bool):
        self.cast_dtype = cast_dtype
        self.training = training
        # id(variable) -> (value read, its version, what the read returned)
        self.cache: dict[int, tuple[torch.Tensor, int, torch.Tensor]] | None = None
        # Reads return the variable itself: no cast and no stateless substitution.
        self.plain = cast_dtype is None and not_stateless


class StatelessScope:
    """Variable values by identity for ``stateless_call``; assigns are recorded, not written,
    and updates that run after the call (a backward pass) write ``deferred`` buffers."""

    def __init__(self, mapping: dict[int, tuple[Any, torch.Tensor]]):
        self.values = mapping  # id(variable) -> (variable, value)
        self.losses: list[torch.Tensor] = []
        self.deferred_ids: set[int] = set()  # variables whose value is a `deferred` buffer
        # A meta-device shape run: a variable created during the run (a sublayer built on its
        # first call) is read as a meta stand-in, like those mapped up front.
        self.meta = False

    def get(self, var: torch.Tensor) -> torch.Tensor:
        hit = self.values.get(id(var))
        if hit is not None:
            return hit[1]
        if self.meta and var.device.type != "meta":
            value = torch.empty_like(var, device="meta")
            self.values[id(var)] = (var, value)
            return value
        return var

    def record(self, var: torch.Tensor, value: torch.Tensor) -> None:
        self.values[id(var)] = (var, value)
        self.deferred_ids.discard(id(var))

    def deferred(self, var: torch.Tensor) -> torch.Tensor:
        """A buffer for an update of ``var`` that happens after the scope has closed (a backward
        pass): a copy of ``var``'s value in this scope, recorded as its new value, so that
        ``stateless_call`` returns it; the late update writes it in place. One buffer per
        variable per scope (later calls return the same one)."""
        key = id(var)
        if key in self.deferred_ids:
            return self.values[key][1]
        buffer = self.get(var).detach().clone()
        self.record(var, buffer)
        self.deferred_ids.add(key)
        return buffer


class VariableValue(torch.Tensor):
    """What reading a variable inside a call returns when it is not the variable itself (a cast
    copy under autocast, or a substituted value in ``stateless_call``). It computes like any
    tensor (results are plain tensors; gradients reach the variable) and ``assign``,
    ``assign_add``, ``assign_sub`` write the variable it was read from."""

    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]

    # The Variable read from, set by `read` (Any: mpq.layers.variables imports this module).
    _variable: Any

    @property
    def variable(self) -> torch.Tensor:
        var: torch.Tensor = self._variable
        return var

    def assign(self, value: Any) -> Any:
        return self._variable.assign(value)

    def assign_add(self, delta: Any) -> Any:
        return self._variable.assign_add(delta)

    def assign_sub(self, delta: Any) -> Any:
        return self._variable.assign_sub(delta)


def read(var: torch.Tensor) -> torch.Tensor:
    """The value of ``var`` for the running call (itself outside any call)."""
    frame = STATE.frame
    if frame is None:
        return var
    stateless = STATE.stateless
    dtype = frame.cast_dtype
    cast = dtype is not None and var.dtype != dtype and var.__dict__.get("_autocast_float", False)
    if stateless is None:
        if not cast:
            return var
        value = var
    else:
        value = stateless.get(var)
        cast = cast and value.dtype != dtype
    cache = frame.cache
    if cache is None:
        cache = frame.cache = {}
    key = id(var)
    hit = cache.get(key)
    # The version counter invalidates the cached read after an in-place assign.
    if hit is not None and hit[0] is value and hit[1] == value._version:
        return hit[2]
    out = (value.to(dtype) if cast else value).as_subclass(VariableValue)
    out.__dict__["_variable"] = var
    cache[key] = (value, value._version, out)
    return out


def stateless_value(var: torch.Tensor) -> torch.Tensor:
    """``var`` as the running ``stateless_call`` sees it, in or out of a layer call (the variable
    itself outside any scope); the result's ``assign``/``assign_add`` write the variable. For
    state that is not read through a layer (metric and seed-generator state)."""
    scope = STATE.stateless
    if scope is None:
        return var
    value = scope.get(var)
    if value is var:
        return var
    out = value.as_subclass(VariableValue)
    out.__dict__["_variable"] = var
    return out


def _convert(x: Any, dtype: torch.dtype | None) -> Any:
    if isinstance(x, torch.Tensor):
        if dtype is not None and x.dtype != dtype and x.is_floating_point():
            return x.to(dtype)
        return x
    if isinstance(x, (np.ndarray, np.generic)) and not isinstance(x, (np.str_, np.bytes_)):
        return _convert(to_tensor(x), dtype)
    if isinstance(x, (list, tuple)):
        items = [_convert(i, dtype) for i in x]
        if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
            return type(x)(*items)
        return type(x)(items)
    if isinstance(x, dict):
        return type(x)((k, _convert(v, dtype)) for k, v in x.items())
    return x


def convert_structure(
    args: tuple[Any, ...], kwargs: dict[str, Any], dtype: torch.dtype | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """numpy arrays -> tensors; floating tensors -> ``dtype`` (when not None), in nested
    lists/tuples/dicts of args and kwargs. Integer/bool tensors and Python scalars stay."""
    args = tuple(_convert(a, dtype) for a in args)
    if kwargs:
        kwargs = {k: _convert(v, dtype) for k, v in kwargs.items()}
    return args, kwargs


def float_input(x: torch.Tensor, dtype: torch.dtype, layer: str) -> torch.Tensor:
    """The input of a layer that computes in floating point (Dense, EinsumDense, Conv,
    normalization): integer and bool tensors are cast to the compute ``dtype`` (the promotion
    Keras 3's ops apply to them); complex tensors raise TypeError (no imaginary part dropped)."""
    if x.is_complex():
        raise TypeError(
            f"Expected a real (floating, integer or bool) input for layer {layer!r}, which "
            f"computes in {dtype}. Received: inputs of dtype {x.dtype} and shape "
            f"{list(x.shape)}; pass inputs.real or inputs.abs() explicitly"
        )
    return x if x.is_floating_point() else x.to(dtype)


def index_input(x: torch.Tensor, layer: str) -> torch.Tensor:
    """The integer ids of an Embedding: integer/bool tensors as they are, floating tensors only
    when every value is integral (cast to int64); complex tensors raise TypeError."""
    if x.is_complex():
        raise TypeError(
            f"Expected integer ids for layer {layer!r}. Received: inputs of dtype {x.dtype} "
            f"and shape {list(x.shape)}"
        )
    if x.is_floating_point():
        if x.device.type != "meta" and x.numel() and not bool((x == torch.round(x)).all()):
            raise ValueError(
                f"Expected integer ids (or floats with integral values) for layer {layer!r}. "
                f"Received: inputs of dtype {x.dtype} with non-integral or non-finite values"
            )
        return x.to(torch.int64)
    return x


def to_tensor(value: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor from a tensor, numpy array (incl. ml_dtypes) or Python scalar; cast if asked."""
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, (np.ndarray, np.generic)):
        t = _from_numpy(np.asarray(value))
    else:
        t = torch.as_tensor(value)
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    if a.dtype.kind in "biufc":
        # Shares memory when it can; copies (keeping 0-d shapes, unlike np.ascontiguousarray)
        # when the array is strided or read-only, which torch.from_numpy refuses or warns on.
        if not (a.flags.c_contiguous and a.flags.writeable):
            a = a.copy(order="C")
        return torch.from_numpy(a)
    if a.dtype.kind == "V":  # ml_dtypes: bfloat16, float8, ...; bit-exact
        return _dtypes.from_numpy(a)
    raise TypeError(f"Expected a numeric numpy array. Received: array of dtype {a.dtype}")
