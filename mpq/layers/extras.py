"""The seed Layer API beyond weights and calls: metrics, updates, input-conditional losses,
callable losses, all state variables, ``dynamic`` and rematerialized calls, ``apply``,
``name_scope``, ``submodules`` and ``compute_output_signature``.

``LayerExtras`` is a mixin of ``mpq.layers.Layer`` (it holds no state of its own: everything
lives in the layer's ``__dict__``); the module functions are what ``Layer`` delegates to.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch

from mpq import activations as _activations
from mpq._errors import describe as _describe
from mpq.layers import autocast as _autocast
from mpq.layers import rematerialization as _remat
from mpq.layers import tracking as _tracking
from mpq.layers.metrics import Mean, Metric
from mpq.layers.variables import to_tensor

if TYPE_CHECKING:
    from mpq.layers.base import Layer

__all__ = ["HOLDERS", "LayerExtras", "current_name_scope", "name_scope"]

# Layers holding per-call state (losses, updates) that the next outermost call clears.
HOLDERS: weakref.WeakSet[Any] = weakref.WeakSet()


# ---------------------------------------------------------------------- name scopes
@contextlib.contextmanager
def name_scope(name: str) -> Iterator[str]:
    """Prefix ``name`` to the ``path`` of the layers and standalone variables created inside
    (Keras 3 ``keras.name_scope``; tf.Module ``name_scope``). Names are unchanged; scopes nest.

    >>> from mpq.layers import Dense
    >>> with name_scope("encoder"):
    ...     d = Dense(2, name="proj")
    >>> d.path
    'encoder/proj'
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(
            f"Expected a non-empty name scope without '/'. Received: name={_describe(name)}"
        )
    state = _autocast.STATE
    previous = state.name_scopes
    state.name_scopes = (*previous, name)
    try:
        yield "/".join(state.name_scopes)
    finally:
        state.name_scopes = previous


def current_name_scope() -> str | None:
    """The path of the active name scopes (``"a/b"``), or None outside any."""
    scopes = _autocast.STATE.name_scopes
    return "/".join(scopes) if scopes else None


# ---------------------------------------------------------------------- helpers
def _flatten(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [i for item in x for i in _flatten(item)]
    return [x]


def _inputs_key(inputs: Any) -> tuple[Any, ...] | None:
    """The inputs a loss or update is conditional on (compared by identity), None: none."""
    if inputs is None:
        return None
    flat = _flatten(inputs)
    return tuple(flat) if flat else None


def _same_key(a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _is_layer(m: Any) -> bool:
    return "_losses" in m.__dict__ and "_dtype_policy" in m.__dict__


def _as_module(layer: Any) -> torch.nn.Module:
    return cast(torch.nn.Module, layer)


def _tree(layer: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``layer`` and every module under it, not descending into metrics."""
    yield layer
    for child in layer._modules.values():
        if child is not None and not isinstance(child, Metric):
            yield from _tree(child)


def init_extras(layer: Layer, kwargs: dict[str, Any]) -> None:
    """``Layer.__init__``'s part for this module: pop ``dynamic``, capture the remat mode and
    the name scope active at creation."""
    dynamic = kwargs.pop("dynamic", False)
    if not isinstance(dynamic, bool):
        raise TypeError(f"Expected `dynamic` to be a bool. Received: dynamic={_describe(dynamic)}")
    d = layer.__dict__
    d["_dynamic"] = dynamic
    d["_remat_mode"] = _remat.get_current_remat_mode()
    d["_special_call"] = dynamic or d["_remat_mode"] is not None
    d["_scope_prefix"] = current_name_scope()


def clear_call_state(layer: Layer) -> None:
    """Forget the losses and updates of the last outermost call, in the whole tree."""
    for m in layer.modules():
        d = m.__dict__
        if d.get("_losses") or d.get("_updates"):
            d["_losses"].clear()
            d.get("_loss_inputs", {}).clear()
            if "_updates" in d:
                d["_updates"].clear()
            HOLDERS.discard(m)


# ---------------------------------------------------------------------- losses
def add_loss(layer: Layer, loss: Any, inputs: Any = None) -> None:
    """``Layer.add_loss``: tensors (or numbers), zero-argument callables, or lists of them."""
    key = _inputs_key(inputs)
    d = layer.__dict__
    stateless = _autocast.STATE.stateless
    for item in _flatten(loss):
        if item is None:
            continue
        if callable(item) and not isinstance(item, torch.Tensor):
            d.setdefault("_callable_losses", []).append(item)
            continue
        try:
            value = item if isinstance(item, torch.Tensor) else to_tensor(item, torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                "Expected a loss tensor, a number, a zero-argument callable or a list of them. "
                f"Received: loss={_describe(item)}"
            ) from None
        if stateless is not None:
            stateless.losses.append(value)
            continue
        d["_losses"].append(value)
        if key is not None:
            d.setdefault("_loss_inputs", {})[id(value)] = key
        HOLDERS.add(layer)


def _callable_losses(layer: Layer) -> list[torch.Tensor]:
    out = []
    for m in layer.modules():
        for fn in m.__dict__.get("_callable_losses", ()):
            value = fn()
            if value is not None:
                out.append(
                    value if isinstance(value, torch.Tensor) else to_tensor(value, torch.float32)
                )
    return out


def _eager_losses(layer: Layer) -> list[tuple[torch.Tensor, tuple[Any, ...] | None]]:
    out = []
    for m in layer.modules():
        d = m.__dict__
        keys = d.get("_loss_inputs", {})
        for loss in d.get("_losses", ()):
            out.append((loss, keys.get(id(loss))))
    return out


def _regularization_losses(layer: Layer) -> list[torch.Tensor]:
    stateless = _autocast.STATE.stateless
    out = []
    for w in layer.trainable_weights:
        reg = w.__dict__.get("regularizer")
        if reg is not None:
            out.append(reg(w if stateless is None else stateless.get(w)))
    return out


def collect_losses(layer: Layer) -> list[torch.Tensor]:
    """``Layer.losses``: losses added in the last outermost call (own and sublayers'), callable
    losses evaluated now, then weight regularization penalties."""
    stateless = _autocast.STATE.stateless
    if stateless is not None:
        out = list(stateless.losses)
    else:
        out = [loss for loss, _ in _eager_losses(layer)]
    return out + _callable_losses(layer) + _regularization_losses(layer)


# ---------------------------------------------------------------------- calls
def _eager_call_impl(
    layer: Layer, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A ``dynamic=True`` layer's call: never compiled (torch.compile breaks the graph here and
    runs it eagerly), never traced (torch.jit.trace / torch.fx raise)."""
    if torch._C._get_tracing_state() is not None or any(
        isinstance(a, torch.fx.Proxy) for a in _flatten([*args, *kwargs.values()])
    ):
        raise TypeError(
            f"Expected layer {layer.name!r} to run eagerly: it was created with dynamic=True "
            "(Python control flow on tensor values), so it cannot be traced. Received: a "
            "torch.jit.trace / torch.fx tracing call"
        )
    return fn(*args, **kwargs)


_EAGER: list[Callable[..., Any]] = []  # the torch.compiler.disable'd call, made on first use


def _eager_call(
    layer: Layer, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    # torch.compiler.disable imports torch._dynamo (and Triton): not at `import mpq`.
    if not _EAGER:
        _EAGER.append(torch.compiler.disable(_eager_call_impl))  # type: ignore[no-untyped-call]
    return _EAGER[0](layer, fn, args, kwargs)


def run_call(
    layer: Layer, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``call`` of a layer that is ``dynamic`` or was created in a ``RematScope``."""
    d = layer.__dict__
    if d["_remat_mode"] is not None and torch.is_grad_enabled():
        fn = layer.rematerialized_call(fn, *args, **kwargs)
    if d["_dynamic"]:
        return _eager_call(layer, fn, args, kwargs)
    return fn(*args, **kwargs)


def dynamic_output_spec(layer: Layer, args: tuple[Any, ...]) -> Any:
    """Meta outputs of a ``dynamic=True`` layer that states ``compute_output_shape``, without
    running its ``call`` (tf.keras 2: "we will use static shape inference to return symbolic
    tensors matching the specifications of the layer outputs"), in the compute dtype; None
    when the layer is not dynamic or does not state its shapes (its call then runs on meta)."""
    if not layer.__dict__.get("_dynamic") or not args:
        return None
    if type(layer).compute_output_shape.__module__ == "mpq.layers.base":  # the generic default
        return None

    def shape_of(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return tuple(x.shape)
        if isinstance(x, (list, tuple)):
            return type(x)(shape_of(i) for i in x)
        if isinstance(x, dict):
            return {k: shape_of(v) for k, v in x.items()}
        return x

    dtype = layer.dtype_policy.torch_compute_dtype

    def spec(shape: Any) -> Any:
        if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
            return torch.empty(shape, dtype=dtype, device="meta")
        if isinstance(shape, (list, tuple)):
            return type(shape)(spec(s) for s in shape)
        if isinstance(shape, dict):
            return {k: spec(v) for k, v in shape.items()}
        raise ValueError(
            f"Expected compute_output_shape of dynamic layer {layer.name!r} to return shapes "
            f"with int dimensions for concrete inputs. Received: {_describe(shape)}"
        )

    return spec(layer.compute_output_shape(shape_of(args[0])))


def _size(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return math.prod(x.shape)
    if isinstance(x, (list, tuple)):
        return sum(_size(i) for i in x)
    if isinstance(x, dict):
        return sum(_size(i) for i in x.values())
    return 0


class LayerExtras:
    """Mixin of ``Layer``: metrics, updates, state variables, ``apply``, remat, name scopes."""

    if TYPE_CHECKING:
        __dict__: dict[str, Any]

        @property
        def name(self) -> str: ...
        @property
        def trainable(self) -> bool: ...
        @property
        def weights(self) -> list[torch.nn.Parameter]: ...
        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
        def compute_output_spec(self, *args: Any, **kwargs: Any) -> Any: ...
        @property
        def losses(self) -> list[torch.Tensor]: ...

    # ------------------------------------------------------------------ metrics
    def add_metric(
        self, value: Any, name: str | None = None, aggregation: str | None = "mean", **kwargs: Any
    ) -> None:
        """Track a metric value computed in ``call``, aggregated by a ``Mean`` per ``name``.

        tf.keras 2 (``Layer.add_metric``): "When the `value` tensor provided is not the result of
        calling a `keras.Metric` instance, it will be aggregated by default using a
        `keras.Metric.Mean`." ``value`` may also be the result of calling a metric object
        (``self.add_metric(self.mean(x))``): that metric is tracked, not updated again.
        Only ``aggregation="mean"`` exists (None for a metric object's result); a name is
        required for a plain value; eager values are accepted inside a layer call only.
        """
        if kwargs:
            raise TypeError(
                "Expected only `value`, `name` and `aggregation` for add_metric. "
                f"Received: unknown keyword arguments {sorted(kwargs)}"
            )
        if aggregation not in ("mean", None):
            raise ValueError(
                "Expected aggregation='mean' (the only sample-wise aggregation add_metric "
                "supports; for others, call a metric object such as mpq.metrics.Sum and pass "
                f"its result). Received: aggregation={_describe(aggregation)}"
            )
        metric_obj = value.__dict__.get("_metric_obj") if isinstance(value, torch.Tensor) else None
        if metric_obj is None and name is None:
            raise ValueError(
                "Expected a name for the metric, e.g. "
                "`self.add_metric(x.sum(), name='mean_activation')`. Received: name=None"
            )
        if metric_obj is None and aggregation is None:
            raise ValueError(
                "Expected aggregation='mean' for a value that is not the result of a metric "
                "object (without the metric object its state could not be reset). "
                "Received: aggregation=None"
            )
        if _autocast.STATE.frame is None:
            raise ValueError(
                "Expected add_metric to be called inside the layer's `call` (an eager value "
                f"added outside a call has no call to belong to). Received: value={value!r}"
            )
        own: list[Metric] = self.__dict__.setdefault("_metrics", [])
        if metric_obj is not None:
            if all(m is not metric_obj for m in self.metrics):
                own.append(metric_obj)
            return
        matches = [m for m in own if m.name == name]
        if len(matches) > 1:
            raise ValueError(
                f"Expected one metric named {name!r} in layer {self.name!r}. Received: "
                f"{len(matches)} metrics with that name"
            )
        t = to_tensor(value).detach()
        if t.device.type == "meta":  # a shape-inference run: no values to aggregate
            return
        if matches:
            metric = matches[0]
        elif _autocast.STATE.stateless is not None:
            return  # stateless_call leaves no trace: no new metric (existing ones update there)
        else:
            dtype = t.dtype if t.is_floating_point() else torch.float32
            metric = Mean(name=name, dtype=dtype).to(t.device)
            own.append(metric)
        metric.update_state(t)

    @property
    def metrics(self) -> list[Metric]:
        """Metric objects: those assigned as attributes and those made by ``add_metric``, this
        layer's first, then its sublayers' (tf.keras 2 and Keras 3 ``Layer.metrics``)."""
        out: list[Metric] = []
        seen: set[int] = set()
        for m in _tree(self):  # type: ignore[arg-type]
            candidates = [c for c in m._modules.values() if isinstance(c, Metric)]
            candidates += m.__dict__.get("_metrics", [])
            for metric in candidates:
                if id(metric) not in seen:
                    seen.add(id(metric))
                    out.append(metric)
        return out

    @property
    def metrics_variables(self) -> list[torch.nn.Parameter]:
        """The state variables of ``metrics`` (Keras 3 ``Layer.metrics_variables``)."""
        return [v for m in self.metrics for v in m.variables]

    # ------------------------------------------------------------------ variables
    @property
    def variables(self) -> list[torch.nn.Parameter]:
        """All state: ``weights``, seed-generator state (seeded ``Dropout``) and metric state.

        Keras 3 ``Layer.variables``: "List of all layer state, including random seeds". Unlike
        Keras 3 metric state is included too, so that ``variables`` is exactly
        ``trainable_variables`` + ``non_trainable_variables`` (as sets)."""
        out = _tracking.collect_weights(self)  # type: ignore[arg-type]
        seen = {id(v) for v in out}
        for v in self.metrics_variables:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    @property
    def trainable_variables(self) -> list[torch.nn.Parameter]:
        """Trainable state (== ``trainable_weights``)."""
        return [v for v in self.variables if v.requires_grad]

    @property
    def non_trainable_variables(self) -> list[torch.nn.Parameter]:
        """Non-trainable state: non-trainable weights, seed-generator and metric state.

        Keras 3 ``stateless_call``: "`non_trainable_variables` include not only non-trainable
        weights such as `BatchNormalization` statistics, but also RNG seed state [...] and
        `Metric` state"."""
        return [v for v in self.variables if not v.requires_grad]

    # ------------------------------------------------------------------ updates
    def add_update(self, updates: Any, inputs: Any = None) -> None:
        """Run update callables now, unless the layer is frozen (``trainable=False``).

        tf.keras 2: "updates: Update op, or list/tuple of update ops, or zero-arg callable
        that returns an update op. A zero-arg callable should be passed in order to disable
        running the updates by setting `trainable=False` on this Layer, when executing in Eager
        mode." Values that are not callable (an ``assign`` already run) are only recorded.
        TF1: "inputs: Optional input tensor(s) that the update(s) depend on. [...] If `None` is
        passed, the updates are assumed to be unconditional" (see ``get_updates_for``).
        """
        key = _inputs_key(inputs)
        frozen = not self.trainable
        record = _autocast.STATE.stateless is None  # a stateless call leaves no trace
        for item in _flatten(updates):
            if item is None:
                continue
            if callable(item) and not isinstance(item, torch.Tensor):
                if frozen:
                    continue
                item()
            if record:
                self.__dict__.setdefault("_updates", []).append((item, key))
                HOLDERS.add(self)

    @property
    def updates(self) -> list[Any]:
        """Updates added in the last outermost call, own and sublayers', skipping frozen layers
        (tf.keras 2 ``Layer.updates``). Callables are listed, not run again."""
        out: list[Any] = []
        for m in _as_module(self).modules():
            if _is_layer(m) and m.trainable:
                out.extend(u for u, _ in m.__dict__.get("_updates", ()))
        return out

    def get_updates_for(self, inputs: Any) -> list[Any]:
        """TF1 ``Layer.get_updates_for``: "Retrieves updates relevant to a specific set of
        inputs. [...] If you pass `inputs=None`, unconditional updates are returned." Inputs
        match by identity (the same tensor objects passed to ``add_update(..., inputs=)``)."""
        key = _inputs_key(inputs)
        out: list[Any] = []
        for m in _as_module(self).modules():
            if _is_layer(m) and m.trainable:
                out.extend(u for u, k in m.__dict__.get("_updates", ()) if _same_key(k, key))
        return out

    def get_losses_for(self, inputs: Any) -> list[torch.Tensor]:
        """TF1 ``Layer.get_losses_for``: "If you pass `inputs=None`, unconditional losses are
        returned, such as weight regularization losses." Otherwise the losses added with
        ``add_loss(..., inputs=)`` for these inputs (by identity)."""
        key = _inputs_key(inputs)
        eager = [loss for loss, k in _eager_losses(self) if _same_key(k, key)]  # type: ignore[arg-type]
        if key is not None:
            return eager
        return eager + _callable_losses(self) + _regularization_losses(self)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ calls
    @property
    def dynamic(self) -> bool:
        """Whether this layer or a sublayer was created with ``dynamic=True`` (tf.keras 2: "Set
        this to `True` if your layer should only be run eagerly, and should not be used to
        generate a static computation graph")."""
        return any(m.__dict__.get("_dynamic", False) for m in _as_module(self).modules())

    def rematerialized_call(self, layer_call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``layer_call`` rematerialized as the layer's ``RematScope`` mode asks (Keras 3: "Enable
        rematerialization dynamically for layer's call method"); ``layer_call`` itself when the
        mode does not select this layer."""
        mode = self.__dict__.get("_remat_mode")
        if mode is None:
            return layer_call

        def state() -> list[torch.Tensor]:
            return [*self.non_trainable_variables]

        if mode.mode == "full" or (mode.mode == "list_of_layers" and self.name in mode.layer_names):
            return _remat.remat(layer_call, state)
        if mode.mode == "larger_than":
            size = _size(self.compute_output_spec(*args, **kwargs))
            if size > mode.output_size_threshold:
                return _remat.remat(layer_call, state)
            return layer_call
        activation = self.__dict__.get("activation")
        if mode.mode == "activations" and activation not in (None, _activations.linear):
            # The activation runs unfused (Dense fuses relu/gelu/silu into its matmul
            # otherwise), rematerialized on its own.
            d = self.__dict__
            wrapped = _remat.remat(activation)
            override: dict[str, Any] = {"activation": wrapped}
            if "_activation_fn" in d:
                override.update(_activation_fn=wrapped, _fused_activation=None)
            saved = {k: d[k] for k in override}

            def call_with_remat_activation(*a: Any, **k: Any) -> Any:
                d.update(override)
                try:
                    return layer_call(*a, **k)
                finally:
                    d.update(saved)

            return call_with_remat_activation
        return layer_call

    def apply(self, fn_or_inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """``layer.apply(inputs, ...)`` is ``layer(inputs, ...)`` (TF1: "Apply the layer on a
        input. This simply wraps `self.__call__`."); ``layer.apply(fn)`` with a function and no
        other argument is ``torch.nn.Module.apply``: ``fn`` on every submodule, then the layer."""
        if callable(fn_or_inputs) and not isinstance(fn_or_inputs, torch.Tensor):
            if args or kwargs:
                raise TypeError(
                    "Expected either inputs (layer.apply(inputs, ...)) or a function alone "
                    "(torch's Module.apply(fn)). Received: a callable with extra arguments "
                    f"{args!r} {kwargs!r}"
                )
            return torch.nn.Module.apply(_as_module(self), fn_or_inputs)
        return self(fn_or_inputs, *args, **kwargs)

    @property
    def name_scope(self) -> contextlib.AbstractContextManager[str]:
        """A name scope named after this layer (tf.Module ``name_scope``): layers and standalone
        variables created inside get ``path`` ``"<scopes>/<layer name>/..."``."""
        return name_scope(self.name)

    @property
    def submodules(self) -> tuple[torch.nn.Module, ...]:
        """Every module under this one, recursively, without it (tf.Module ``submodules``)."""
        return tuple(m for m in _as_module(self).modules() if id(m) != id(self))

    def compute_output_signature(self, input_signature: Any) -> Any:
        """Meta tensors (shape and dtype) of the outputs for inputs described by tensors.

        tf.keras 2: "Unlike a TensorShape object, a TensorSpec object contains both shape and
        dtype information for a tensor." mpq's TensorSpec is a tensor (a meta tensor costs
        nothing); the result is what ``compute_output_spec`` gives."""
        for leaf in _flatten(
            list(input_signature.values()) if isinstance(input_signature, dict) else input_signature
        ):
            if not isinstance(leaf, torch.Tensor):
                raise TypeError(
                    "Expected tensors (e.g. torch.empty(shape, dtype=..., device='meta')) in "
                    f"input_signature. Received: {_describe(leaf)}"
                )
        return self.compute_output_spec(input_signature)
