"""Metric objects (Keras ``keras.metrics``): ``Metric``, ``Mean``, ``Sum``, ``MeanMetricWrapper``,
``Accuracy``. Public as ``mpq.metrics``.

A metric is a ``torch.nn.Module`` whose state is non-trainable ``Variable``s: assigned as an
attribute of a layer it is a submodule (its state is in ``state_dict`` and moves with ``.to()``)
and appears in ``layer.metrics``, ``metrics_variables``, ``variables`` and
``non_trainable_variables``, never in ``weights`` (so not in ``get_weights`` or saved files).
Reads and writes of the state go through ``stateless_call`` scopes like layer variables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mpq import initializers as _initializers
from mpq._errors import describe as _describe
from mpq.layers import autocast as _autocast
from mpq.layers import tracking as _tracking
from mpq.layers.variables import Variable, to_tensor, to_torch_dtype

__all__ = [
    "Accuracy",
    "BinaryAccuracy",
    "CategoricalAccuracy",
    "Mean",
    "MeanMetricWrapper",
    "Metric",
    "Sum",
]


class Metric(torch.nn.Module):
    """Encapsulates metric logic and state (Keras 3 ``keras.metrics.Metric``).

    Subclasses create their state in ``__init__`` with ``self.var = self.add_variable(...)``,
    update it in ``update_state`` with ``self.var.assign(...)`` and compute ``result()`` from
    it. ``metric(*args)`` is ``update_state(*args)`` then ``result()``.

    Args:
        name: default: snake_case of the class name, made unique (``mean``, ``mean_1``, ...).
        dtype: dtype of the state and the result; default float32.

    Example::

        class BinaryTruePositives(Metric):
            def __init__(self, name="binary_true_positives", **kwargs):
                super().__init__(name=name, **kwargs)
                self.true_positives = self.add_variable(shape=(), initializer="zeros",
                                                        name="true_positives")
            def update_state(self, y_true, y_pred, sample_weight=None):
                values = (y_true.bool() & y_pred.bool()).to(self.torch_dtype)
                self.true_positives.assign(self.true_positives + values.sum())
            def result(self):
                return self.true_positives
    """

    def __init__(self, name: str | None = None, dtype: Any = None) -> None:
        super().__init__()
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(
                f"Expected the metric `name` to be a non-empty string. Received: "
                f"name={_describe(name)}"
            )
        self.__dict__["name"] = name or _tracking.unique_name(
            _tracking.to_snake_case(type(self).__name__)
        )
        tdtype = to_torch_dtype(dtype if dtype is not None else "float32")
        if not tdtype.is_floating_point:
            raise ValueError(
                f"Expected a floating `dtype` for metric {self.name!r}. Received: dtype={dtype!r}"
            )
        self.__dict__["torch_dtype"] = tdtype

    @property
    def dtype(self) -> str:
        return str(self.torch_dtype).replace("torch.", "")

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("_parameters")
        if params is not None and name in params:
            return _autocast.stateless_value(params[name])
        return torch.nn.Module.__getattr__(self, name)

    # ------------------------------------------------------------------ state
    def add_variable(
        self,
        shape: Any = (),
        initializer: Any = "zeros",
        dtype: Any = None,
        aggregation: str = "sum",
        name: str | None = None,
    ) -> Variable:
        """A non-trainable state ``Variable`` of this metric (float32 unless ``dtype``)."""
        tdtype = to_torch_dtype(dtype) if dtype is not None else self.torch_dtype
        shape = tuple(int(s) for s in shape)
        init = _initializers.get(initializer)
        if init is None:
            raise ValueError(
                f"Expected an initializer for metric variable {name!r}. Received: initializer=None"
            )
        with torch.no_grad():
            data = to_tensor(init(shape, dtype=tdtype), tdtype)
        key = base = name or "variable"
        i = 0
        while key in self._parameters or key in self._modules or key in self._buffers:
            i += 1
            key = f"{base}_{i}"
        var = Variable(data, name=key, trainable=False, autocast=False, aggregation=aggregation)
        var.__dict__["_kind"] = "metric"
        self.register_parameter(key, var)
        return var

    add_weight = add_variable

    @property
    def variables(self) -> list[Variable]:
        """This metric's state variables, then those of metrics it holds."""
        return [p for p in self.parameters() if isinstance(p, Variable)]

    def reset_state(self) -> None:
        """Set every state variable to zeros (Keras: "called between epochs/steps")."""
        for v in self.variables:
            v.assign(torch.zeros(v.shape, dtype=v.dtype))

    reset_states = reset_state  # tf.keras 2 name

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"Metric {type(self).__name__} does not have an `update_state()` method implemented."
        )

    def result(self) -> Any:
        raise NotImplementedError(
            f"Metric {type(self).__name__} does not have a `result()` method implemented."
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``update_state(*args, **kwargs)``, then ``result()`` (the tensor remembers this metric,
        so ``layer.add_metric(metric(x))`` tracks it without updating it twice)."""
        self.update_state(*args, **kwargs)
        out = self.result()
        if isinstance(out, torch.Tensor):
            out = out.detach().view_as(out)  # a new tensor object to tag, never the state
            out.__dict__["_metric_obj"] = self
        return out

    # ------------------------------------------------------------------ stateless
    def _check_values(self, metric_variables: Any) -> list[torch.Tensor]:
        own = self.variables
        if not isinstance(metric_variables, (list, tuple)) or len(metric_variables) != len(own):
            got = (
                len(metric_variables)
                if isinstance(metric_variables, (list, tuple))
                else _describe(metric_variables)
            )
            raise ValueError(
                f"Expected `metric_variables` to be a list of {len(own)} tensors in the order of "
                f"{type(self).__name__}().variables. Received: {got}"
            )
        return [to_tensor(v) for v in metric_variables]

    def _in_scope(self, values: list[torch.Tensor] | None, fn: Callable[[], Any]) -> Any:
        own = self.variables
        mapping = (
            {} if values is None else {id(v): (v, x) for v, x in zip(own, values, strict=True)}
        )
        scope = _autocast.StatelessScope(mapping)
        state = _autocast.STATE
        previous = state.stateless
        state.stateless = scope
        try:
            out = fn()
        finally:
            state.stateless = previous
        return out, [scope.get(v) for v in own]

    def stateless_update_state(
        self, metric_variables: Any, *args: Any, **kwargs: Any
    ) -> list[torch.Tensor]:
        """``update_state`` on the given state values; returns the new values, writes nothing."""
        values = self._check_values(metric_variables)
        return self._in_scope(values, lambda: self.update_state(*args, **kwargs))[1]  # type: ignore[no-any-return]

    def stateless_result(self, metric_variables: Any) -> Any:
        """``result()`` computed from the given state values."""
        values = self._check_values(metric_variables)
        return self._in_scope(values, self.result)[0]

    def stateless_reset_state(self) -> list[torch.Tensor]:
        """The state values ``reset_state`` would write (nothing is written)."""
        return self._in_scope(None, self.reset_state)[1]  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Metric:
        return cls(**config)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def _weighted(values: Any, sample_weight: Any, dtype: torch.dtype) -> tuple[torch.Tensor, Any]:
    values = to_tensor(values).to(dtype)
    if sample_weight is None:
        return values, None
    weight = to_tensor(sample_weight).to(dtype=dtype, device=values.device)
    given = list(weight.shape)
    if weight.dim() < values.dim():
        # Keras: a weight of lower rank weighs whole samples (trailing axes added), so a
        # (batch,) weight applies to each row of (batch, ...) values.
        weight = weight.reshape(*weight.shape, *([1] * (values.dim() - weight.dim())))
    try:
        weight = torch.broadcast_to(weight, values.shape)
    except RuntimeError:
        raise ValueError(
            f"Expected `sample_weight` broadcastable to the values of shape "
            f"{list(values.shape)}. Received: sample_weight of shape {given}"
        ) from None
    return values, weight


class Sum(Metric):
    """The (weighted) sum of the given values.

    >>> m = Sum(); m.update_state([1.0, 3.0, 5.0, 7.0]); float(m.result())
    16.0
    """

    def __init__(self, name: str | None = None, dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, values: Any, sample_weight: Any = None) -> None:
        values, weight = _weighted(values, sample_weight, self.torch_dtype)
        if weight is not None:
            values = values * weight
        self.total.assign_add(values.sum().to(self.total.device))

    def result(self) -> torch.Tensor:
        return self.total.detach().clone()


class Mean(Metric):
    """The (weighted) mean of all values given so far: ``sum(w * x) / sum(w)`` over every element
    (w = 1 without ``sample_weight``; a ``(batch,)`` weight weighs whole samples); 0 before any.

    >>> m = Mean(); m.update_state([1.0, 3.0, 5.0, 7.0]); float(m.result())
    4.0
    """

    def __init__(self, name: str | None = None, dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values: Any, sample_weight: Any = None) -> None:
        values, weight = _weighted(values, sample_weight, self.torch_dtype)
        if weight is None:
            total, count = values.sum(), torch.tensor(float(values.numel()), dtype=values.dtype)
        else:
            total, count = (values * weight).sum(), weight.sum()
        self.total.assign_add(total.detach().to(self.total.device))
        self.count.assign_add(count.detach().to(self.count.device))

    def result(self) -> torch.Tensor:
        total, count = self.total.detach(), self.count.detach()
        # Keras divide_no_nan: 0 before any value.
        return torch.where(
            count == 0, torch.zeros_like(total), total / torch.where(count == 0, 1, count)
        )


class MeanMetricWrapper(Mean):
    """The mean of ``fn(y_true, y_pred, **kwargs)`` (a stateless metric function) over all
    samples seen.

    >>> m = MeanMetricWrapper(lambda t, p: (t - p).abs(), name="mae")
    >>> m.update_state(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])); float(m.result())
    1.5
    """

    def __init__(
        self, fn: Callable[..., Any], name: str | None = None, dtype: Any = None, **kwargs: Any
    ) -> None:
        if not callable(fn):
            raise TypeError(f"Expected `fn` to be a callable. Received: fn={_describe(fn)}")
        super().__init__(name=name, dtype=dtype)
        self._fn = fn
        self._fn_kwargs = kwargs

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:  # type: ignore[override]
        values = self._fn(to_tensor(y_true), to_tensor(y_pred), **self._fn_kwargs)
        super().update_state(values, sample_weight=sample_weight)

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(
            "MeanMetricWrapper wraps a Python function and has no config; subclass it (as "
            "Accuracy does) to make a metric that can be configured. Received: "
            f"fn={self._fn!r}"
        )


def _accuracy(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    if y_true.shape != y_pred.shape:
        raise ValueError(
            "Expected `y_true` and `y_pred` of the same shape for Accuracy. Received: "
            f"y_true.shape={list(y_true.shape)}, y_pred.shape={list(y_pred.shape)}"
        )
    return (y_true == y_pred).to(torch.float32)


class Accuracy(MeanMetricWrapper):
    """How often predictions equal labels (Keras ``keras.metrics.Accuracy``).

    >>> m = Accuracy(); m.update_state([[1], [2], [3], [4]], [[0], [2], [3], [4]])
    >>> float(m.result())
    0.75
    """

    def __init__(self, name: str = "accuracy", dtype: Any = None) -> None:
        super().__init__(_accuracy, name=name, dtype=dtype)

    def get_config(self) -> dict[str, Any]:
        return Metric.get_config(self)


class BinaryAccuracy(MeanMetricWrapper):
    """How often ``y_pred > threshold`` equals the binary label (Keras ``BinaryAccuracy``).

    >>> m = BinaryAccuracy(); m.update_state([[1], [1], [0], [0]], [[0.98], [1], [0], [0.6]])
    >>> float(m.result())
    0.75
    """

    def __init__(self, name: str = "binary_accuracy", dtype: Any = None, threshold: float = 0.5):
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
            raise TypeError(
                f"Expected `threshold` to be a number. Received: threshold={_describe(threshold)}"
            )
        self.threshold = float(threshold)
        super().__init__(self._binary, name=name, dtype=dtype)

    def _binary(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        return _accuracy(y_true.to(torch.float32), (y_pred > self.threshold).to(torch.float32))

    def get_config(self) -> dict[str, Any]:
        return {**Metric.get_config(self), "threshold": self.threshold}


def _categorical(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    if y_true.shape != y_pred.shape:
        raise ValueError(
            "Expected one-hot `y_true` of the shape of `y_pred` for CategoricalAccuracy. "
            f"Received: y_true.shape={list(y_true.shape)}, y_pred.shape={list(y_pred.shape)}"
        )
    return (y_true.argmax(dim=-1) == y_pred.argmax(dim=-1)).to(torch.float32)


class CategoricalAccuracy(MeanMetricWrapper):
    """How often the arg max of the predictions is the one-hot label's (Keras
    ``CategoricalAccuracy``).

    >>> m = CategoricalAccuracy()
    >>> m.update_state([[0, 0, 1], [0, 1, 0]], [[0.1, 0.9, 0.8], [0.05, 0.95, 0]])
    >>> float(m.result())
    0.5
    """

    def __init__(self, name: str = "categorical_accuracy", dtype: Any = None) -> None:
        super().__init__(_categorical, name=name, dtype=dtype)

    def get_config(self) -> dict[str, Any]:
        return Metric.get_config(self)
