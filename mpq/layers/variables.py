"""`Variable`: a ``torch.nn.Parameter`` with the Keras variable API (assign, numpy, path, ...).

Optimizers, ``state_dict``, ``.to()``, DDP, deepcopy and pickling see an ordinary Parameter;
inside a layer's ``call`` reads through ``.value`` (or ``layer.attr``) are autocast.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mpq import dtypes as _dtypes
from mpq.dtypes import to_torch_dtype
from mpq.layers import autocast as _autocast
from mpq.layers.autocast import to_tensor

if TYPE_CHECKING:
    from mpq.constraints import Constraint
    from mpq.regularizers import Regularizer

__all__ = [
    "POSITIVE_FINITE",
    "ValueRule",
    "Variable",
    "check_write",
    "to_numpy",
    "to_tensor",
    "to_torch_dtype",
]


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
        out: np.ndarray = t.numpy().copy()
        return out
    return _dtypes.to_numpy(t)


@dataclass(frozen=True)
class ValueRule:
    """Values a variable may hold beyond what its dtype holds, checked on every write
    (``assign``, ``assign_add``, ``Layer.set_weights``, ``Layer.load_own_variables``, and so
    ``mpq.saving.load`` / ``load_weights``). Quantization schemes attach one to the variables
    they create (``set_value_rule``): int8 codes in [-127, 127], scales finite and > 0.

    ``low`` / ``high``: inclusive bounds; ``positive_finite``: every value finite and > 0.
    """

    what: str
    low: float | None = None
    high: float | None = None
    positive_finite: bool = False

    def expected(self) -> str:
        if self.positive_finite:
            return f"{self.what} that are finite and > 0"
        return f"{self.what} in [{self.low}, {self.high}]"

    def holds(self, t: torch.Tensor) -> bool:
        """True when every value of ``t`` (see ``_checkable``) follows the rule; reductions
        only (no mask of the tensor's size), in ``t``'s own dtype. NaN never holds."""
        if self.positive_finite:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return False
            if not t.amin().item() > 0:
                return False
        if self.low is not None or self.high is not None:
            low, high = torch.aminmax(t)
            if self.low is not None and not low.item() >= self.low:
                return False
            if self.high is not None and not high.item() <= self.high:
                return False
        return True

    def bad_mask(self, t: torch.Tensor) -> torch.Tensor:
        """True where ``t`` (float64 or int64) breaks the rule (for the error message)."""
        bad = torch.zeros(t.shape, dtype=torch.bool, device=t.device)
        if self.positive_finite:
            bad |= ~torch.isfinite(t) | (t <= 0) if t.is_floating_point() else t <= 0
        if self.low is not None:
            bad |= ~(t >= self.low)  # NaN counts as out of range
        if self.high is not None:
            bad |= ~(t <= self.high)
        return bad


POSITIVE_FINITE = ValueRule("scales", positive_finite=True)
"""The rule of quantization scales (dequantization scales ``x ~= q * scale``)."""


def set_value_rule(var: torch.Tensor, rule: ValueRule | None) -> None:
    """Attach ``rule`` to ``var`` (a ``Variable``); ``None`` removes it."""
    var.__dict__["_value_rule"] = rule


_NATIVE_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _checkable(value: torch.Tensor) -> torch.Tensor:
    """``value`` in a dtype the checks reduce over without a copy where possible: its own
    (integer, or float16/bfloat16/float32/float64), float8 -> float32 (exact), bool -> uint8."""
    t = value.detach()
    if t.is_floating_point():
        return t if t.dtype in _NATIVE_FLOATS else t.to(torch.float32)
    return t.to(torch.uint8) if t.dtype == torch.bool else t


def _first_bad(t: torch.Tensor, bad: torch.Tensor) -> str:
    count = int(bad.sum())
    index = tuple(int(i) for i in bad.nonzero()[0])
    value = t[index].item()
    return f"{count} value(s) out of range, the first value={value!r} at index {list(index)}"


def check_write(var: torch.Tensor, value: torch.Tensor, where: str = "assign") -> None:
    """Raise unless every element of ``value`` can be written to ``var`` unchanged in meaning.

    - a complex value into a real variable: TypeError (the imaginary part would be dropped);
    - into an integer variable: ValueError for a non-integral or non-finite float, or a value
      outside the dtype's range (torch's cast would wrap: 1000 -> -24 in int8, 256 -> 0 in uint8);
    - the variable's ``ValueRule`` (quantization codes, scales), if it has one: ValueError.

    Float values into float variables are cast as usual (rounding, as any cast does).
    """
    path = getattr(var, "path", None) or getattr(var, "name", "variable")
    if value.is_complex() and not var.is_complex():
        raise TypeError(
            f"Expected a real value to {where} variable {path!r} of dtype {var.dtype}. Received: "
            f"a complex value of dtype {value.dtype}; pass value.real explicitly if dropping the "
            "imaginary part is intended"
        )
    rule = var.__dict__.get("_value_rule") if isinstance(var, Variable) else None
    integer = not (var.is_floating_point() or var.is_complex() or var.dtype == torch.bool)
    if (not integer and rule is None) or value.numel() == 0 or value.is_complex():
        return
    if value.device.type == "meta":  # shape inference (compute_output_spec): no values
        return
    t = _checkable(value)
    if integer and t.is_floating_point():
        exact = torch.isfinite(t) & (t == torch.round(t))
        if not bool(exact.all()):
            wide = t.to(torch.float64)
            raise ValueError(
                f"Expected integral, finite values to {where} integer variable {path!r} of "
                f"dtype {var.dtype}. Received: "
                + _first_bad(wide, ~exact).replace("out of range", "not integral")
            )
    checks = []
    if integer:
        info = torch.iinfo(var.dtype)
        checks.append(ValueRule(f"values of {var.dtype}", info.min, info.max))
    if rule is not None:
        checks.append(rule)
    for check in checks:
        if not check.holds(t):
            wide = t.to(torch.float64 if t.is_floating_point() else torch.int64)
            raise ValueError(
                f"Expected {check.expected()} to {where} variable {path!r} of dtype {var.dtype}. "
                f"Received: {_first_bad(wide, check.bad_mask(wide))}"
            )


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

    # Instance state, written into ``__dict__`` by ``__new__`` (and ``_owner`` by layers).
    _name: str
    _name_given: bool
    _created_trainable: bool
    _autocast: bool
    _autocast_float: bool
    regularizer: Regularizer | Callable[..., Any] | None
    constraint: Constraint | Callable[..., Any] | None
    aggregation: str
    _overwrite_with_gradient: bool
    _owner: weakref.ref[Any] | None  # the owning Layer (not imported here: layers import us)
    _scope_prefix: str | None

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
        aggregation: str | None = "none",
        overwrite_with_gradient: bool = False,
    ) -> Variable:
        if aggregation not in _AGGREGATIONS:
            raise ValueError(
                "Expected `aggregation` to be one of None, 'none', 'mean', 'sum', "
                f"'only_first_replica'. Received: aggregation={aggregation!r} (of type "
                f"{type(aggregation).__name__}) for variable {name!r}"
            )
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
        d["aggregation"] = aggregation or "none"
        d["_overwrite_with_gradient"] = False
        d["_owner"] = None
        scopes = _autocast.STATE.name_scopes  # mpq.layers.name_scope: path of unowned variables
        d["_scope_prefix"] = "/".join(scopes) if scopes else None
        self.overwrite_with_gradient = overwrite_with_gradient
        return self

    # --- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:  # shadows torch.Tensor.name (named tensors), unused by mpq
        return self._name

    @property
    def path(self) -> str:
        """``"<layer path>/<name>"``; for a variable that no layer owns, its name, prefixed with
        the ``name_scope`` it was created in."""
        owner = self._owner
        layer = owner() if owner is not None else None
        if layer is not None:
            return f"{layer.path}/{self._name}"
        prefix = self.__dict__.get("_scope_prefix")
        name = self._name
        return f"{prefix}/{name}" if prefix else name

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

    @property
    def overwrite_with_gradient(self) -> bool:
        """Whether a backward pass writes the gradient into the value (Keras 3: "overwrite the
        variable with the computed gradient. This is useful for float8 training").

        A post-accumulate-grad hook copies ``grad`` into the variable and leaves ``grad`` None,
        so every torch optimizer (SGD with momentum or weight decay, Adam, ...) skips it: after
        ``backward()`` and ``step()`` the value equals the gradient of that backward pass."""
        return bool(self._overwrite_with_gradient)

    @overwrite_with_gradient.setter
    def overwrite_with_gradient(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(
                "Expected `overwrite_with_gradient` to be a bool. Received: "
                f"overwrite_with_gradient={value!r} (of type {type(value).__name__})"
            )
        self._overwrite_with_gradient = value
        _sync_gradient_hook(self)

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

    def _checks_values(self) -> bool:
        """True when writes are checked element by element (``check_write``)."""
        if self.__dict__.get("_value_rule") is not None:
            return True
        return not (self.is_floating_point() or self.is_complex() or self.dtype == torch.bool)

    def assign(self, value: Any) -> Variable:
        """Write ``value`` (cast to this variable's dtype); no gradient flows through it.

        Raises TypeError for a complex value into a real variable, ValueError for a value an
        integer dtype cannot hold exactly or that breaks the variable's ``ValueRule``."""
        t = self._check_value(value, "assign")
        if self._checks_values() or t.is_complex():
            check_write(self, t)
        return self._write(t)

    def _write(self, t: torch.Tensor) -> Variable:
        """The write of ``assign`` once ``t`` is checked (stateless calls record it)."""
        stateless = _autocast.STATE.stateless
        if stateless is not None:
            # A meta value (shape inference) stays on meta: it has no data to copy.
            device = t.device if t.device.type == "meta" else self.device
            stateless.record(self, t.detach().to(device=device, dtype=self.dtype))
            return self
        with torch.no_grad():
            self.copy_(t)
        return self

    def assign_add(self, delta: Any) -> Variable:
        """``self += delta`` in this variable's dtype."""
        t = self._check_value(delta, "assign_add")
        if t.is_complex():
            check_write(self, t, "assign_add to")
        if self._checks_values():
            # Checked on the exact result (int64 / float64), before the in-place write.
            current = _autocast.STATE.stateless
            base = (self if current is None else current.get(self)).detach()
            wide = (
                torch.float64
                if (base.is_floating_point() or t.is_floating_point())
                else torch.int64
            )
            check_write(self, base.to(wide) + t.to(device=base.device, dtype=wide), "assign_add to")
        stateless = _autocast.STATE.stateless
        if stateless is not None:
            value = stateless.get(self)
            stateless.record(self, (value.detach() + t.to(value.device)).to(self.dtype))
            return self
        with torch.no_grad():
            self.add_(t.to(device=self.device, dtype=self.dtype))
        return self

    def assign_sub(self, delta: Any) -> Variable:
        """``self -= delta`` in this variable's dtype."""
        return self.assign_add(-to_tensor(delta))

    # --- copying / pickling -----------------------------------------------------------------
    def __deepcopy__(self, memo: dict[int, Any]) -> Variable:
        if id(self) in memo:
            copied: Variable = memo[id(self)]
            return copied
        result = Variable._make_subclass(
            type(self), self.data.clone(memory_format=torch.preserve_format), self.requires_grad
        )
        memo[id(self)] = result
        state = {k: v for k, v in self.__dict__.items() if k not in _NOT_COPIED}
        result.__dict__.update(copy.deepcopy(state, memo))
        owner = self._owner
        new_owner = memo.get(id(owner())) if owner is not None and owner() is not None else None
        result._owner = weakref.ref(new_owner) if new_owner is not None else None
        _sync_gradient_hook(result)
        return result

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _NOT_COPIED}

    def __reduce_ex__(self, proto: Any) -> tuple[Any, ...]:
        return (_rebuild_variable, (type(self), self.data, self.requires_grad, self.__getstate__()))

    def __repr__(self) -> str:  # type: ignore[override]  # (torch's tensor_contents= unused)
        value = torch.Tensor.__repr__(self.detach())  # type: ignore[no-untyped-call]
        return (
            f"<Variable path={self.path} shape={tuple(self.shape)} dtype={self.dtype} "
            f"trainable={self.requires_grad} value={value}>"
        )


def _rebuild_variable(
    cls: type[Variable], data: torch.Tensor, requires_grad: bool, state: dict[str, Any]
) -> Variable:
    v = torch.Tensor._make_subclass(cls, data, requires_grad)
    v.__dict__.update(state)
    v.__dict__["_owner"] = None
    _sync_gradient_hook(v)
    return v


# Per-object state a copy or an unpickled variable makes anew (owner link, hook handle).
_NOT_COPIED = frozenset({"_owner", "_gradient_hook"})

_AGGREGATIONS = (None, "none", "mean", "sum", "only_first_replica")


def _write_gradient(var: torch.Tensor) -> None:
    """Post-accumulate-grad hook of ``overwrite_with_gradient`` variables: the gradient becomes
    the value, and no gradient is left for an optimizer to apply."""
    grad = var.grad
    if grad is None:
        return
    with torch.no_grad():
        var.copy_(grad)
    var.grad = None


def _sync_gradient_hook(var: Variable) -> None:
    """Register (or remove) the ``overwrite_with_gradient`` hook to match the flag. Floating
    variables only (others never get gradients); registered even while ``requires_grad`` is
    off, so a variable made trainable later keeps the behaviour."""
    d = var.__dict__
    handle = d.pop("_gradient_hook", None)
    if handle is not None:
        handle.remove()
    if not d.get("_overwrite_with_gradient") or not (var.is_floating_point() or var.is_complex()):
        return
    requires_grad = var.requires_grad
    if not requires_grad:
        var.requires_grad_(True)
    try:
        d["_gradient_hook"] = var.register_post_accumulate_grad_hook(_write_gradient)  # type: ignore[no-untyped-call]
    finally:
        if not requires_grad:
            var.requires_grad_(False)
