"""`Variable`: a ``torch.nn.Parameter`` with the Keras variable API (assign, numpy, path, ...).

Optimizers, ``state_dict``, ``.to()``, DDP, deepcopy and pickling see an ordinary Parameter;
inside a layer's ``call`` reads through ``.value`` (or ``layer.attr``) are autocast.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import numpy as np
import torch

from mpq import dtypes as _dtypes
from mpq.layers import autocast as _autocast

__all__ = ["Variable", "to_numpy", "to_tensor", "to_torch_dtype"]


def to_torch_dtype(dtype: Any) -> torch.dtype:
    """A torch dtype from a name (``"bfloat16"``), a torch dtype or a numpy/ml_dtypes dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        fmt = _dtypes.get(dtype)
    except (TypeError, ValueError):  # not an mpq format (int64, bool, ...): torch's names
        fmt = None
    if fmt is not None and fmt.torch_dtype is not None:
        return fmt.torch_dtype
    name = dtype if isinstance(dtype, str) else _np_dtype_name(dtype)
    if name in ("bool", "bool_"):
        return torch.bool
    candidate = _TORCH_DTYPES.get(name) if isinstance(name, str) else None
    if candidate is not None:
        return candidate
    raise ValueError(
        "Expected a dtype with a torch equivalent such as 'float32' or 'bfloat16'. "
        f"Received: dtype={dtype!r} (of type {type(dtype).__name__})"
    )


# torch's dtypes by attribute name ("int64", "long", "bool", ...), read from the module's
# namespace: a name from a config is never passed to getattr(torch, ...), which would import
# torch's lazily loaded submodules (torch._inductor, torch.onnx, ...) for their names.
_TORCH_DTYPES: dict[str, torch.dtype] = {
    name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)
}


def _np_dtype_name(dtype: Any) -> str | None:
    try:
        return np.dtype(dtype).name
    except TypeError:
        return None


# torch dtypes numpy holds natively; the others (bfloat16, float8) go through mpq.dtypes.
_NUMPY_NATIVE = {
    torch.float64,
    torch.float32,
    torch.float16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.complex128,
}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Bit-exact numpy copy of a tensor (ml_dtypes arrays for bfloat16 / float8)."""
    t = t.detach().cpu()
    if t.dtype in _NUMPY_NATIVE:
        return t.numpy().copy()
    return _dtypes.to_numpy(t)


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


class Variable(torch.nn.Parameter):
    """A layer weight: a Parameter plus ``name``, ``path``, ``trainable``, ``autocast``,
    ``assign``/``assign_add``/``assign_sub``, ``value`` and ``numpy()``.

    Create them with ``Layer.add_weight``. Non-trainable variables have ``requires_grad=False``;
    integer variables are always non-trainable.

    >>> v = Variable(torch.zeros(2), name="v")
    >>> _ = v.assign_add(torch.ones(2))
    >>> v.numpy()
    array([1., 1.], dtype=float32)
    """

    def __new__(
        cls,
        data: torch.Tensor | None = None,
        requires_grad: bool | None = None,
        *,
        name: str | None = None,
        trainable: bool | None = None,
        autocast: bool = True,
        regularizer: Any = None,
        constraint: Any = None,
        aggregation: str = "none",
        overwrite_with_gradient: bool = False,
    ) -> Variable:
        if data is None:
            data = torch.empty(0)
        if trainable is None:
            trainable = True if requires_grad is None else bool(requires_grad)
        if trainable and not (data.is_floating_point() or data.is_complex()):
            raise ValueError(
                "Only floating variables can be trainable. Pass trainable=False for "
                f"variable {name!r}. Received: dtype={data.dtype}"
            )
        self = torch.Tensor._make_subclass(cls, data.detach(), bool(trainable))
        d = self.__dict__
        d["_name"] = name or "variable"
        d["_name_given"] = name is not None
        d["_created_trainable"] = bool(trainable)
        d["_autocast"] = bool(autocast)
        d["_autocast_float"] = bool(autocast) and data.is_floating_point()
        d["regularizer"] = regularizer
        d["constraint"] = constraint
        d["aggregation"] = aggregation
        d["overwrite_with_gradient"] = overwrite_with_gradient
        d["_owner"] = None
        return self

    # --- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:  # shadows torch.Tensor.name (named tensors), unused by mpq
        return self.__dict__["_name"]

    @property
    def path(self) -> str:
        """``"<layer path>/<name>"``, or just the name for a variable that no layer owns."""
        owner = self.__dict__["_owner"]
        layer = owner() if owner is not None else None
        return self._name if layer is None else f"{layer.path}/{self._name}"

    @property
    def trainable(self) -> bool:
        return self.requires_grad

    @trainable.setter
    def trainable(self, value: bool) -> None:
        value = bool(value)
        if value and not self.is_floating_point():
            raise ValueError(
                f"Only floating variables can be trainable. Received: trainable=True for "
                f"variable {self.path!r} of dtype {self.dtype}"
            )
        self.requires_grad_(value)

    @property
    def autocast(self) -> bool:
        return self._autocast

    # --- reads ------------------------------------------------------------------------------
    @property
    def value(self) -> torch.Tensor:
        """The value to compute with: inside a layer call, cast to the layer's compute dtype
        (autocast floating variables; gradients reach this variable); outside, the variable."""
        return _autocast.read(self)

    def numpy(self) -> np.ndarray:  # type: ignore[override]
        """A numpy copy (ml_dtypes arrays for bfloat16 / float8), bit-exact."""
        return to_numpy(self)

    # --- writes -----------------------------------------------------------------------------
    def _check_value(self, value: Any, what: str) -> torch.Tensor:
        try:
            t = to_tensor(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(
                f"Expected a tensor, array or scalar to {what} variable {self.path!r}. "
                f"Received: value={value!r} (of type {type(value).__name__})"
            ) from e
        if t.shape != self.shape and not (what != "assign" and t.dim() == 0):
            raise ValueError(
                f"Expected a value of shape {tuple(self.shape)} to {what} variable "
                f"{self.path!r}. Received: value.shape={tuple(t.shape)}"
            )
        return t

    def assign(self, value: Any) -> Variable:
        """Write ``value`` (cast to this variable's dtype); no gradient flows through it."""
        t = self._check_value(value, "assign")
        stateless = _autocast.STATE.stateless
        if stateless is not None:
            stateless.record(self, t.detach().to(device=self.device, dtype=self.dtype))
            return self
        with torch.no_grad():
            self.copy_(t)
        return self

    def assign_add(self, delta: Any) -> Variable:
        """``self += delta`` in this variable's dtype."""
        t = self._check_value(delta, "assign_add")
        stateless = _autocast.STATE.stateless
        if stateless is not None:
            current = stateless.get(self)
            stateless.record(self, (current.detach() + t.to(current.device)).to(self.dtype))
            return self
        with torch.no_grad():
            self.add_(t.to(device=self.device, dtype=self.dtype))
        return self

    def assign_sub(self, delta: Any) -> Variable:
        """``self -= delta`` in this variable's dtype."""
        return self.assign_add(-to_tensor(delta))

    # --- copying / pickling -----------------------------------------------------------------
    def __deepcopy__(self, memo: dict) -> Variable:
        if id(self) in memo:
            return memo[id(self)]
        result = Variable._make_subclass(
            type(self), self.data.clone(memory_format=torch.preserve_format), self.requires_grad
        )
        memo[id(self)] = result
        state = {k: v for k, v in self.__dict__.items() if k != "_owner"}
        result.__dict__.update(copy.deepcopy(state, memo))
        owner = self.__dict__["_owner"]
        new_owner = memo.get(id(owner())) if owner is not None and owner() is not None else None
        result.__dict__["_owner"] = weakref.ref(new_owner) if new_owner is not None else None
        return result

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_owner"}

    def __reduce_ex__(self, proto):
        return (_rebuild_variable, (type(self), self.data, self.requires_grad, self.__getstate__()))

    def __repr__(self) -> str:
        return (
            f"<Variable path={self.path} shape={tuple(self.shape)} dtype={self.dtype} "
            f"trainable={self.requires_grad} value={torch.Tensor.__repr__(self.detach())}>"
        )


def _rebuild_variable(cls, data, requires_grad, state):
    v = torch.Tensor._make_subclass(cls, data, requires_grad)
    v.__dict__.update(state)
    v.__dict__["_owner"] = None
    return v
