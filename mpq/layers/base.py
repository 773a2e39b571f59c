"""`Layer`: the Keras 3 Layer API on ``torch.nn.Module`` (weights, policies, config, saving).

Layer authoring contract (what subclasses, built-in or user, can rely on)
--------------------------------------------------------------------------
1. Arguments. ``__init__(self, <own args>, **kwargs)`` calls ``super().__init__(**kwargs)``
   FIRST (it takes ``name``, ``dtype``, ``trainable``, ``autocast``, ``activity_regularizer``,
   ``input_shape``/``input_dim``) and then stores its own arguments. Resolve identifiers once
   here: ``mpq.initializers.get``, ``mpq.regularizers.get``, ``mpq.constraints.get``.
   ``get_config()`` returns ``{**super().get_config(), <own args, JSON-serializable>}`` (use
   ``initializers.serialize`` etc.); ``from_config(config)`` is ``cls(**config)`` by default.
   A subclass that does not override ``get_config`` gets its constructor arguments captured
   automatically (they must be JSON-serializable).
2. Weights. Create them in ``build(self, input_shape)`` (``input_shape`` is a tuple of ints, or a
   list/dict of tuples for several inputs; several ``<arg>_shape`` parameters match ``call``
   arguments by name) with ``self.kernel = self.add_weight(shape=..., initializer=...,
   name="kernel")``. Do not call ``super().build``; ``build`` is wrapped: it sets
   ``self.built = True`` and records the shapes for ``get_build_config``. Set
   ``self.input_spec = InputSpec(...)`` in ``build`` when the input is constrained.
   Variables are ``torch.nn.Parameter``s; the state_dict key is the attribute name.
3. Forward. Implement ``call(self, inputs, training=None, mask=None, ...)`` (never
   ``forward``: ``forward`` is the Keras ``__call__``). ``training`` is only passed if ``call``
   declares it; it is resolved as: explicit argument > explicit value given to an enclosing
   layer call > ``self.training`` (torch's train/eval mode).
4. Autocast. Before ``call`` every floating tensor argument is cast to ``compute_dtype`` (unless
   ``autocast=False``); inside ``call``, reading ``self.kernel`` (or ``var.value``) returns the
   weight cast to ``compute_dtype`` (cast once per call; gradients reach the float master).
   Weights kept in containers must be read via ``.value`` to be autocast. Ops that must run
   wider follow ``mpq.policy.autocast`` rules: ``self._op_dtype("normalization")`` /
   ``("softmax")`` returns the torch dtype to compute them in (None: keep the input dtype).
   Return outputs in ``compute_dtype``.
5. State. Update non-trainable weights with ``var.assign(...)`` / ``assign_add`` (works inside
   ``stateless_call`` too); add extra losses with ``self.add_loss(x)``.
6. Shapes. Override ``compute_output_shape`` when it is cheap to state; the default runs
   ``call`` on the meta device.
7. Quantization. Do not branch on modes in the layer: register a
   ``mpq.layers.quantization.QuantizationScheme`` for (YourLayer, mode).
8. Serialization. Built-in layers use ``@register_layer("mpq")``; user layers
   ``@register_layer()`` (or ``custom_objects=``) to be loadable by name.

Better than Keras: a tracked sublayer created without ``dtype`` inherits its parent's policy;
``dtype=DTypePolicyMap(...)`` resolves each layer's policy by its ``path``; ``stateless_call``
autocasts like ``__call__``; ``autocast=False`` leaves inputs and variables uncast.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable
from typing import Any, cast

import torch

from mpq import _registry
from mpq import constraints as _constraints
from mpq import initializers as _initializers
from mpq import policy as _policy
from mpq import regularizers as _regularizers
from mpq._errors import check_config_depth
from mpq._errors import describe as _describe
from mpq.layers import autocast as _autocast
from mpq.layers import building as _building
from mpq.layers import extras as _extras
from mpq.layers import masking as _masking
from mpq.layers import node as _node
from mpq.layers import quantization as _quantization
from mpq.layers import stateless as _stateless
from mpq.layers import tracking as _tracking
from mpq.layers.input_spec import InputSpec, assert_input_compatibility
from mpq.layers.variables import Variable, check_write, to_numpy, to_tensor, to_torch_dtype

__all__ = ["Layer"]

_LOSS_HOLDERS = _extras.HOLDERS  # layers with per-call losses / updates to clear


def _read_parameter(layer: Layer, name: str, p: Any) -> Any:
    """``layer.<name>`` for its parameter ``p``: the value for the running call (autocast,
    ``stateless_call`` substitution), or ``p`` itself outside any call."""
    frame = _autocast.STATE.frame
    if frame is None or frame.plain or p is None:
        return p
    if not isinstance(p, Variable):
        # A plain tensor put in the variable's place (torch.func.functional_call): cast it as
        # the variable it stands for would be.
        dtype = frame.cast_dtype
        if dtype is not None and p.dtype != dtype and name in layer._autocast_keys:
            return p.to(dtype)
        return p
    return _autocast.read(p)


class _ParameterAttribute:
    """Class attribute that serves ``layer.<name>`` for a parameter without going through
    ``__getattr__`` (reached only after a failed lookup has raised, ~0.5 us per read).

    Installed on a layer class the first time one of its instances reads a parameter by that
    name, where no class in the MRO defines the name. A non-data descriptor: a value in the
    instance ``__dict__`` still wins; where the instance has no such parameter it raises
    AttributeError, so ``__getattr__`` runs as before (buffers, submodules, the error)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    @classmethod
    def install(cls, layer_cls: type, name: str) -> None:
        if not any(name in klass.__dict__ for klass in layer_cls.__mro__):
            setattr(layer_cls, name, cls(name))

    def __get__(self, layer: Layer | None, owner: type | None = None) -> Any:
        if layer is not None:
            params = layer.__dict__.get("_parameters")
            if params is not None:
                p = params.get(self.name, _MISSING)
                if p is not _MISSING:
                    return _read_parameter(layer, self.name, p)
        raise AttributeError(self.name)


_MISSING = object()


class Layer(_node.NodeMixin, _extras.LayerExtras, torch.nn.Module):  # type: ignore[misc]  # apply(): see extras
    """Keras 3 ``Layer`` on ``torch.nn.Module``: subclass it and implement ``build``/``call``.

    Args:
        activity_regularizer: regularizer applied to the outputs (added to ``losses``).
        trainable: whether the weights get gradients (``requires_grad``).
        dtype: anything ``mpq.policy.get`` accepts (name, policy, config, torch dtype,
            ``DTypePolicyMap``); None: the parent's policy once tracked, else the global one.
        autocast: cast floating inputs and variables to ``compute_dtype`` inside ``call``.
        name: unique snake_case default from the class name (``dense``, ``dense_1``, ...).
        quantization_config: with a quantized ``dtype``, the quantization config its scheme
            builds with (``mpq.quantization.QuantizationConfig`` or its config dict; written
            by ``get_config`` of a quantized layer).

    Example (inputs ``[batch, in]`` -> ``[batch, units]``)::

        class SimpleDense(Layer):
            def __init__(self, units=32, **kwargs):
                super().__init__(**kwargs)
                self.units = units
            def build(self, input_shape):
                self.w = self.add_weight(shape=(input_shape[-1], self.units))
                self.b = self.add_weight(shape=(self.units,), initializer="zeros")
            def call(self, inputs):
                return inputs @ self.w + self.b
    """

    _call_has_training = False
    _call_training_index = -1  # position of `training` in call's positional parameters
    _call_has_mask = False
    _call_signature: inspect.Signature | None = None
    _computes_mask = False  # True when a subclass overrides compute_mask (Embedding, merges)
    # What the first input must be: "float" (integer/bool cast to the compute dtype, complex
    # refused: Dense, EinsumDense, Conv, normalization), "index" (Embedding ids), None (any).
    _input_kind: str | None = None

    # Instance state, written into ``__dict__`` by ``__init__`` (past tracking and torch).
    _name: str
    built: bool
    _trainable: bool
    _autocast: bool
    _dtype_policy: _policy.DTypePolicy
    _policy_map: _policy.DTypePolicyMap | None
    _policy_explicit: bool
    _input_cast_dtype: torch.dtype | None  # floating inputs are cast to it (None: not cast)
    _var_cast_dtype: torch.dtype | None  # autocast variables read in it (None: as stored)
    _op_dtypes: dict[tuple[str, torch.dtype | None], torch.dtype]
    _autocast_keys: frozenset[str]
    _build_shapes_dict: dict[str, Any] | None
    _activity_regularizer: _regularizers.Regularizer | Callable[..., Any] | None
    _input_shape_arg: tuple[int | None, ...] | None  # from input_shape= / input_dim=

    def __new__(cls, *args: Any, **kwargs: Any) -> Layer:
        obj = super().__new__(cls)
        # Constructor arguments stand in for get_config() only where it is not overridden.
        auto = (
            _building.capture_init_args(cls, args, kwargs)
            if cls.get_config is Layer.get_config
            else None
        )
        obj.__dict__["_auto_config"] = auto
        return obj

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        build = cls.__dict__.get("build")
        if build is not None and not getattr(build, "_mpq_wrapped", False):
            cls.build = _building.wrap_build(build)  # type: ignore[method-assign]
        if "call" in cls.__dict__:
            sig = inspect.signature(cls.__dict__["call"])
            params = sig.parameters
            var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            cls._call_has_training = "training" in params or var_kw
            positional = [
                n
                for n, p in params.items()
                if p.kind
                in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            ]
            cls._call_training_index = (
                positional.index("training") - 1 if "training" in positional else -1
            )
            cls._call_has_mask = "mask" in params
            cls._call_signature = sig
        cls._computes_mask = cls.compute_mask is not Layer.compute_mask

    def __init__(
        self,
        *,
        activity_regularizer: Any = None,
        trainable: bool = True,
        dtype: Any = None,
        autocast: bool = True,
        name: str | None = None,
        **kwargs: Any,
    ):
        input_dim = kwargs.pop("input_dim", None)
        input_shape = kwargs.pop("input_shape", None)
        batch_size = kwargs.pop("batch_size", None)
        # A quantized layer's config (weight_only, ...) for its scheme; get_config writes it.
        quantization_config = kwargs.pop("quantization_config", None)
        _extras.init_extras(self, kwargs)  # dynamic=, RematScope, name_scope
        if kwargs:
            raise ValueError(
                f"Unrecognized keyword arguments passed to {type(self).__name__}: {kwargs}"
            )
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(
                "Argument `name` must be a non-empty string without '/'. "
                f"Received: name={name!r} (of type {type(name).__name__})"
            )
        torch.nn.Module.__init__(self)
        d = self.__dict__
        d["_name"] = name or _tracking.unique_name(_tracking.to_snake_case(type(self).__name__))
        d["built"] = False
        d["_trainable"] = bool(trainable)
        d["_autocast"] = bool(autocast)
        d["_losses"] = []
        d["_parent"] = None
        # The attached quantization scheme (mpq.layers.quantization), None while float.
        d["quantization_scheme"] = None
        d["_pending_quantization_config"] = quantization_config
        d["_build_shapes_dict"] = None
        d["input_spec"] = None
        d["supports_masking"] = False
        d["_activity_regularizer"] = _regularizers.get(activity_regularizer)
        if input_dim is not None:
            input_shape = (input_dim,)
        d["_input_shape_arg"] = None if input_shape is None else (batch_size, *tuple(input_shape))
        self._set_policy_source(_policy.get(dtype), explicit=dtype is not None)

    # ------------------------------------------------------------------ attribute tracking
    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Variable):
            if _tracking.adopt_variable(self, name, value):
                self._update_autocast_keys()  # the variable may have been re-keyed
                return
            if value.__dict__.get("_owner") is None:
                _tracking.set_owner(value, self)
        super().__setattr__(name, value)
        if isinstance(value, torch.nn.Module) and "_parameters" in self.__dict__:
            _tracking.track(self, value)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not in __dict__: parameters, buffers, submodules.
        params = self.__dict__.get("_parameters")
        if params is not None and name in params:
            _ParameterAttribute.install(type(self), name)
            return _read_parameter(self, name, params[name])
        try:
            return torch.nn.Module.__getattr__(self, name)
        except AttributeError as e:
            # A node accessor (`layer.input`, ...) raised: keep its message, not torch's.
            raise _node.node_attribute_error(self, name) or e from None

    def __deepcopy__(self, memo: dict[int, Any]) -> Layer:
        new = object.__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key == "_parent":
                # The copy of a sublayer is a root, unless its parent is copied along.
                new.__dict__[key] = memo.get(id(value)) if value is not None else None
            else:
                new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        for p in self._parameters.values():
            if isinstance(p, Variable):
                _tracking.set_owner(p, self)

    def _on_tracked(self, parent: Layer, quantize: bool = False) -> None:
        d = self.__dict__
        if not d["_policy_explicit"]:
            source = parent._policy_map or parent._dtype_policy
            if quantize or not (d["built"] and getattr(source, "quantization_mode", None)):
                self._set_policy_source(source, explicit=False, quantize=quantize)
                return
        elif d["_policy_map"] is not None and not d["built"]:
            self._set_policy_source(d["_policy_map"], explicit=True)
            return
        for child in _tracking.direct_sublayers(self):
            child._on_tracked(self)

    # ------------------------------------------------------------------ policy
    def _set_policy_source(self, source: Any, explicit: bool, quantize: bool = False) -> None:
        d = self.__dict__
        d["_policy_explicit"] = explicit
        if isinstance(source, _policy.DTypePolicyMap):
            d["_policy_map"] = source
            policy = source[self.path]
        else:
            d["_policy_map"] = None
            policy = source
        mode = policy.quantization_mode
        current = d.get("_dtype_policy")
        if d["quantization_scheme"] is not None and policy != current:
            raise ValueError(
                f"Layer {self.name!r} is quantized with policy {getattr(current, 'name', None)!r}; its policy "
                f"cannot be changed. Received: dtype_policy={policy.name!r}"
            )
        if (
            mode is not None
            and d["built"]
            and d["quantization_scheme"] is None
            and self._parameters
        ):
            scheme = _quantization.get_scheme(self, mode, type_check=False)
            _quantization.attach(self, scheme, policy, None)
        else:
            self._set_resolved_policy(policy)
        for child in _tracking.direct_sublayers(self):
            child._on_tracked(self, quantize=quantize)

    def _set_resolved_policy(self, policy: Any) -> None:
        d = self.__dict__
        d["_dtype_policy"] = policy
        self._update_cast_dtypes()

    def _update_autocast_keys(self) -> None:
        """Keys of the floating variables that autocast, remembered so that tensors substituted
        for them (``torch.func.functional_call``) are cast the same way."""
        self.__dict__["_autocast_keys"] = frozenset(
            k for k, p in self._parameters.items() if isinstance(p, Variable) and p._autocast_float
        )

    def _update_cast_dtypes(self) -> None:
        self._update_autocast_keys()
        d = self.__dict__
        compute = d["_dtype_policy"].torch_compute_dtype
        d["_input_cast_dtype"] = compute if d["_autocast"] and compute.is_floating_point else None
        # Variables are read through the cast cache only if one of them needs it.
        needs_cast = d["_autocast"] and any(
            isinstance(p, Variable) and p._autocast_float and p.dtype != compute
            for p in self._parameters.values()
        )
        policy_needs = d["_autocast"] and d["_dtype_policy"].torch_variable_dtype != compute
        d["_var_cast_dtype"] = compute if (needs_cast or policy_needs) else None
        d["_op_dtypes"] = {}

    def _op_dtype(self, family: str, input_dtype: torch.dtype | None = None) -> torch.dtype:
        """Torch dtype to run an op family in (``mpq.policy.autocast`` rules): "float32" rules
        give float32 (float64 for float64 inputs), "compute" the compute dtype, "input" the
        input's dtype (``input_dtype``, default the compute dtype).

        >>> from mpq.layers import Dense
        >>> Dense(2, dtype="mixed_bfloat16")._op_dtype("normalization")
        torch.float32
        """
        cache = self._op_dtypes
        key = (family, input_dtype)
        dtype = cache.get(key)
        if dtype is None:
            compute = self._dtype_policy.torch_compute_dtype
            dtype = _policy.autocast.op_dtype(family, compute, input_dtype or compute)
            cache[key] = dtype
        return dtype

    @property
    def dtype_policy(self) -> _policy.DTypePolicy:
        """The resolved ``DTypePolicy`` (settable; a quantized policy quantizes a built layer)."""
        return self._dtype_policy

    @dtype_policy.setter
    def dtype_policy(self, value: Any) -> None:
        self._set_policy_source(_policy.get(value), explicit=True, quantize=True)

    @property
    def dtype(self) -> str:
        """The variable dtype name (Keras: ``layer.dtype == layer.variable_dtype``)."""
        return self.dtype_policy.variable_dtype

    @property
    def variable_dtype(self) -> str:
        return self.dtype_policy.variable_dtype

    @property
    def compute_dtype(self) -> str:
        return self.dtype_policy.compute_dtype

    @property
    def input_dtype(self) -> str:
        """The dtype floating inputs are cast to (== ``compute_dtype``)."""
        return self.dtype_policy.compute_dtype

    @property
    def quantization_mode(self) -> str | None:
        return self.dtype_policy.quantization_mode

    @property
    def autocast(self) -> bool:
        return self._autocast

    @autocast.setter
    def autocast(self, value: bool) -> None:
        self.__dict__["_autocast"] = bool(value)
        self._update_cast_dtypes()

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> str:
        """``"root/.../name"`` along tracked parents; just ``name`` for an untracked layer."""
        return _tracking.layer_path(self)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dtype_policy={self.dtype_policy.name!r}"

    # ------------------------------------------------------------------ weights
    def add_weight(
        self,
        shape: Any = None,
        initializer: Any = None,
        dtype: Any = None,
        trainable: bool = True,
        autocast: bool = True,
        regularizer: Any = None,
        constraint: Any = None,
        aggregation: str = "none",
        overwrite_with_gradient: bool = False,
        name: str | None = None,
    ) -> Variable:
        """Create a weight ``Variable`` owned (and tracked) by this layer.

        Default dtype: ``variable_dtype``; default initializer: glorot_uniform for floats,
        zeros otherwise. The state_dict key is ``name`` (or the attribute it is assigned to).
        """
        shape = () if shape is None else shape
        try:
            shape = tuple(int(s) for s in shape)
            if any(s < 0 for s in shape):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(
                f"Expected `shape` to be a tuple of non-negative ints for weight {name!r} of "
                f"layer {self.name!r}. Received: shape={shape!r}"
            ) from None
        tdtype = to_torch_dtype(dtype if dtype is not None else self.variable_dtype)
        if trainable and not tdtype.is_floating_point:
            raise ValueError(
                f"Only floating weights can be trainable; pass trainable=False for weight "
                f"{name!r} of layer {self.name!r}. Received: dtype={tdtype}"
            )
        if name is not None and (
            not isinstance(name, str) or not name or "/" in name or "." in name
        ):
            raise ValueError(
                "Expected the weight `name` to be a non-empty string without '/' or '.'. "
                f"Received: name={name!r}"
            )
        if initializer is None:
            initializer = "glorot_uniform" if tdtype.is_floating_point else "zeros"
        # Not None: `initializer` is not None here.
        init = cast("Callable[..., Any]", _initializers.get(initializer))
        if _autocast.STATE.meta_build:
            data = torch.empty(shape, dtype=tdtype, device="meta")
        else:
            with torch.no_grad():
                data = to_tensor(init(shape, dtype=tdtype), tdtype)
            if tuple(data.shape) != shape:
                raise ValueError(
                    f"Initializer {init!r} returned shape {tuple(data.shape)} for weight "
                    f"{name!r} of layer {self.name!r}. Expected: shape={shape}"
                )
        key = base = name or "variable"
        i = 0
        while key in self._parameters or key in self._modules or key in self._buffers:
            i += 1
            key = f"{base}_{i}"
        var = Variable(
            data,
            name=key,
            trainable=trainable,
            autocast=autocast,
            regularizer=_regularizers.get(regularizer),
            constraint=_constraints.get(constraint),
            aggregation=aggregation,
            overwrite_with_gradient=overwrite_with_gradient,
        )
        var._name_given = name is not None
        if not self.trainable:
            var.requires_grad_(False)
        _tracking.set_owner(var, self)
        self.register_parameter(key, var)
        self._update_cast_dtypes()
        return var

    add_variable = add_weight

    @property
    def weights(self) -> list[torch.nn.Parameter]:
        """Own weights first, then sublayers' (registration order), without duplicates; no
        metric or seed-generator state (those are in ``variables``)."""
        return [w for w in _tracking.collect_weights(self) if _tracking.is_weight(w)]

    @property
    def trainable_weights(self) -> list[torch.nn.Parameter]:
        return [w for w in self.weights if w.requires_grad]

    @property
    def non_trainable_weights(self) -> list[torch.nn.Parameter]:
        return [w for w in self.weights if not w.requires_grad]

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        _tracking.set_trainable(self, bool(value))

    @property
    def layers(self) -> list[Layer]:
        """Direct sublayers, in registration order."""
        return list(_tracking.direct_sublayers(self))

    def get_weights(self) -> list[Any]:
        """Numpy copies of ``weights`` (ml_dtypes arrays for bfloat16 / float8)."""
        return [to_numpy(w) for w in self.weights]

    def set_weights(self, weights: list[Any]) -> None:
        """Assign numpy arrays (or tensors) in ``weights`` order; all checked before any write
        (shapes, and values as ``Variable.assign`` checks them: no complex into real, no value
        an integer dtype cannot hold, quantization codes and scales in their ranges)."""
        params = self.weights
        if not isinstance(weights, (list, tuple)) or len(weights) != len(params):
            got = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
            names = [getattr(p, "path", "?") for p in params]
            raise ValueError(
                f"You called `set_weights(weights)` on layer {self.name!r} with a weight list of "
                f"length {got}, but the layer was expecting {len(params)} weights: {names}."
            )
        values = []
        for p, w in zip(params, weights, strict=True):
            t = to_tensor(w)
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"Layer {self.name!r} weight {getattr(p, 'path', '?')!r} has shape "
                    f"{tuple(p.shape)}, which is not compatible with the provided weight shape "
                    f"{tuple(t.shape)}."
                )
            check_write(p, t, "set_weights into")
            values.append(t)
        with torch.no_grad():
            for p, t in zip(params, values, strict=True):
                p.copy_(t.to(device=p.device, dtype=p.dtype))

    def count_params(self) -> int:
        """Total number of scalars in ``weights``; raises ValueError if the layer is not built."""
        if not self.built:
            raise ValueError(
                f"You tried to call `count_params` on layer {self.name!r}, but the layer isn't "
                "built. You can build it manually via: `layer.build(input_shape)`. "
                "Received: built=False"
            )
        return sum(w.numel() for w in self.weights)

    # ------------------------------------------------------------------ losses
    def add_loss(self, loss: Any, inputs: Any = None) -> None:
        """Add a loss: a scalar tensor (cleared at the start of the next outermost call), a
        zero-argument callable (kept; evaluated each time ``losses`` is read) or a list of them.
        ``inputs``: the inputs the loss is conditional on (TF1; see ``get_losses_for``)."""
        _extras.add_loss(self, loss, inputs)

    def _clear_losses(self) -> None:
        _extras.clear_call_state(self)

    @property
    def losses(self) -> list[torch.Tensor]:
        """Own and sublayers' added losses, callable losses (evaluated now), then weight
        regularization penalties (trainable weights)."""
        return _extras.collect_losses(self)

    @property
    def activity_regularizer(self) -> Any:
        return self._activity_regularizer

    @activity_regularizer.setter
    def activity_regularizer(self, value: Any) -> None:
        self.__dict__["_activity_regularizer"] = _regularizers.get(value)

    def _add_activity_losses(self, outputs: Any) -> None:
        reg = self._activity_regularizer
        if reg is None:  # (the caller checks; kept for the type checker)
            return
        flat = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for out in flat:
            if isinstance(out, torch.Tensor):
                self.add_loss(reg(out))

    # ------------------------------------------------------------------ build / call
    def build(self, input_shape: Any = None) -> None:
        """Create the weights for ``input_shape`` (override; the default creates none)."""

    def _prepare_build(self) -> None:
        """Before the first build: link sublayers, resolve a DTypePolicyMap by path."""
        _tracking.retrack(self)
        policy_map = self._policy_map
        if policy_map is not None:
            self._set_resolved_policy(policy_map[self.path])

    def call(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"Layer {type(self).__name__} does not have a `call()` method implemented."
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The Keras ``__call__`` (``layer(x)`` runs it through ``nn.Module.__call__``, hooks
        included): convert and autocast inputs, check ``input_spec``, build on first call,
        resolve ``training``, clear losses (outermost call), run ``call``/``quantized_call``."""
        if _node.SYMBOLIC_SEEN and _node.is_symbolic_call(args, kwargs):  # functional graph
            return _node.symbolic_call(self, args, kwargs)
        d = self.__dict__
        dtype = d["_input_cast_dtype"]
        # Keras masking: a mask rides on the tensor that carries it (read before any cast makes
        # a new tensor); an explicit `mask=` wins.
        if kwargs and "mask" in kwargs:
            mask = kwargs["mask"] if self._call_has_mask else kwargs.pop("mask")
        else:
            mask = _masking.get_mask(args[0]) if args else None
            if mask is not None and self._call_has_mask:
                kwargs["mask"] = mask
        if not kwargs and len(args) == 1 and type(args[0]) is torch.Tensor:
            x = args[0]
            if dtype is not None and x.dtype != dtype and x.is_floating_point():
                args = (x.to(dtype),)
        else:
            args, kwargs = _autocast.convert_structure(args, kwargs, dtype)
        kind = self._input_kind
        if kind is not None and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            if kind == "index":
                args = (_autocast.index_input(x, d["_name"]), *args[1:])
            elif not x.is_floating_point():
                compute = d["_dtype_policy"].torch_compute_dtype
                args = (_autocast.float_input(x, compute, d["_name"]), *args[1:])
        spec = d["input_spec"]
        if spec is not None:
            first = args[0] if args else next(iter(kwargs.values()), None)
            if type(spec) is InputSpec:
                spec.check(first, d["_name"])
            else:
                assert_input_compatibility(spec, first, d["_name"])
        if not d["built"]:
            _building.build_on_call(self, args, kwargs)
            if d["_input_cast_dtype"] != dtype:  # a DTypePolicyMap resolved at build
                args, kwargs = _autocast.convert_structure(args, kwargs, d["_input_cast_dtype"])
        state = _autocast.STATE
        parent = state.frame
        training = kwargs.get("training") if kwargs else None
        index = self._call_training_index
        positional_training = 0 <= index < len(args)
        if positional_training:
            training = args[index]
        if training is None and parent is not None:
            training = parent.training
        if positional_training:
            if args[index] is None:
                args = (
                    *args[:index],
                    self.training if training is None else training,
                    *args[index + 1 :],
                )
        elif self._call_has_training:
            kwargs["training"] = self.training if training is None else training
        elif kwargs and "training" in kwargs:
            del kwargs["training"]
        not_stateless = state.stateless is None
        if parent is None and _LOSS_HOLDERS.data and not_stateless:  # type: ignore[attr-defined]
            self._clear_losses()
        state.frame = _autocast.Frame(d["_var_cast_dtype"], training, not_stateless)
        try:
            scheme = d["quantization_scheme"]
            if d.get("_special_call"):  # dynamic=True, or created in a RematScope
                fn = self.call if scheme is None else self.quantized_call
                outputs = _extras.run_call(self, fn, args, kwargs)
            elif scheme is None:
                outputs = self.call(*args, **kwargs)
            elif type(self).quantized_call is Layer.quantized_call:
                outputs = scheme.call(self, *args, **kwargs)  # (what quantized_call does)
            else:
                outputs = self.quantized_call(*args, **kwargs)
        finally:
            state.frame = parent
        if outputs is None:
            # TF1 / tf.keras 2 `__call__`: "ValueError: if the layer's `call` method returns None".
            raise ValueError(
                f"Expected the `call` method of layer {self.name!r} ({type(self).__name__}) to "
                "return a tensor or a structure of tensors. Received: None"
            )
        if d["_activity_regularizer"] is not None:
            self._add_activity_losses(outputs)
        if mask is not None or self._computes_mask:
            _masking.set_mask(outputs, self.compute_mask(args[0] if args else None, mask))
        return outputs

    def compute_mask(self, inputs: Any, previous_mask: Any = None) -> Any:
        """Output mask (Keras: ``previous_mask`` when ``supports_masking``, else None)."""
        return previous_mask if self.supports_masking else None

    # ------------------------------------------------------------------ shapes
    def compute_output_spec(self, *args: Any, **kwargs: Any) -> Any:
        """Meta tensors (shape + dtype, no data) of the outputs for the given inputs."""
        return _stateless.compute_output_spec(self, *args, **kwargs)

    def compute_output_shape(self, input_shape: Any) -> Any:
        """Output shape(s) for ``input_shape`` (``None`` dims allowed), via a meta-device run."""
        return _stateless.compute_output_shape(self, input_shape)

    # ------------------------------------------------------------------ stateless
    def stateless_call(
        self,
        trainable_variables: list[Any],
        non_trainable_variables: list[Any],
        *args: Any,
        return_losses: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Call with the given variable values instead of the layer's own, without side effects.

        Returns ``(outputs, non_trainable_variables)`` (the updated values, e.g. after
        ``assign`` in ``call``), plus ``losses`` with ``return_losses=True``. Autocast applies.
        State updated by a later backward pass (float8 gradient statistics) is returned as fresh
        tensors that this call's backward pass writes in place; the layer is never written.
        """
        return _stateless.stateless_call(
            self,
            trainable_variables,
            non_trainable_variables,
            *args,
            return_losses=return_losses,
            **kwargs,
        )

    # ------------------------------------------------------------------ quantization
    def quantize(self, mode: Any, type_check: bool = True, config: Any = None) -> None:
        """Quantize this built layer in place with the scheme registered for (class, mode).

        ``mode``: ``"int8"``, ``"int4"``, ``"int4/32"``, ``"float8"`` or a quantization config
        (``mpq.quantization.QuantizationConfig``); the policy becomes ``"{mode}_from_{old}"``.
        ``type_check=False`` lets a subclass use its nearest base class's scheme.
        """
        _quantization.quantize(self, mode, type_check=type_check, config=config)

    def quantized_build(self, input_shape: Any, mode: str) -> None:
        """Create quantized weights (the registered scheme's ``build``)."""
        _quantization.quantized_build(self, input_shape, mode)

    def quantized_call(self, *args: Any, **kwargs: Any) -> Any:
        """Forward pass of a quantized layer (the attached scheme's ``call``)."""
        return _quantization.quantized_call(self, *args, **kwargs)

    def _set_quantization_scheme(
        self, scheme: Any, policy: Any = None, explicit: bool = True
    ) -> None:
        """Attach ``scheme`` (None: detach) and, if given, set the layer's resolved ``policy``
        (``explicit``: a parent does not hand the layer its policy afterwards). The one place
        the quantized state of a layer changes (quantize, build, a rolled-back quantize)."""
        d = self.__dict__
        d["quantization_scheme"] = scheme
        if policy is not None:
            d["_policy_explicit"] = explicit
            self._set_resolved_policy(policy)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        """``name``, ``trainable``, serialized ``dtype`` policy, and the layer's own arguments."""
        config: dict[str, Any] = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": _policy.serialize(self.dtype_policy),
        }
        if self.activity_regularizer is not None:
            config["activity_regularizer"] = _regularizers.serialize(self.activity_regularizer)
        if self.__dict__.get("_dynamic"):
            config["dynamic"] = True
        scheme = self.quantization_scheme
        qconfig = None if scheme is None else scheme.get_config()
        if qconfig is None:
            qconfig = self._pending_quantization_config
        if qconfig is not None and self.dtype_policy.quantization_mode is not None:
            config["quantization_config"] = (
                qconfig.get_config() if hasattr(qconfig, "get_config") else dict(qconfig)
            )
        if type(self).get_config is not Layer.get_config:
            return config
        auto = self.__dict__.get("_auto_config")
        extra = {k: v for k, v in (auto or {}).items() if k not in config}
        try:
            json.dumps(extra)
        except TypeError:
            auto = None
        if auto is None:
            raise NotImplementedError(
                f"Layer {type(self).__name__} does not implement get_config() and its constructor "
                f"arguments are not JSON-serializable. Override get_config(). Received: "
                f"arguments={extra!r}"
            )
        config.update(extra)
        return config

    @classmethod
    def from_config(
        cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
    ) -> Layer:
        """``cls(**config)`` (the dtype entry may be a policy config dict). Names in the config
        resolve from mpq's catalogs, registered objects and ``custom_objects`` only."""
        check_config_depth(config)
        if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
            raise TypeError(
                f"Expected a config dict with string keys for {cls.__name__}. "
                f"Received: config={_describe(config)}"
            )
        from mpq.layers import keras_config  # Keras 3.15 configs are accepted as they are

        config = keras_config.translate_layer_config(cls.__name__, config)
        try:
            with _registry.custom_object_scope(custom_objects):
                return cls(**config)
        except (MemoryError, RecursionError):
            raise  # never disguised as a config error
        except Exception as e:
            raise TypeError(
                f"Error when deserializing class {cls.__name__!r} using config={config}.\n\n"
                f"Exception encountered: {e}"
            ) from e

    def get_build_config(self) -> dict[str, Any] | None:
        """``{"input_shape": ...}`` (or ``{"shapes_dict": ...}``) the layer was built with."""
        shapes = self._build_shapes_dict
        if shapes is None:
            return None
        if not shapes:  # built by `build()` with no arguments
            return {"input_shape": None}
        if len(shapes) == 1:
            return {"input_shape": next(iter(shapes.values()))}
        return {"shapes_dict": dict(shapes)}

    def build_from_config(self, config: dict[str, Any] | None) -> None:
        """Build from :meth:`get_build_config` output (JSON lists are turned back into tuples).

        A config the layer cannot build with raises ValueError or TypeError (whatever ``build``
        raised is chained), never a bare IndexError or KeyError."""
        if not config:
            return
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if not isinstance(config, dict):
            raise TypeError(f"Expected a build config dict. Received: config={_describe(config)}")
        if config == {"input_shape": None}:
            pass
        elif "input_shape" in config:
            args = (_building.as_shape(config["input_shape"]),)
        elif "shapes_dict" in config and isinstance(config["shapes_dict"], dict):
            kwargs = {k: _building.as_shape(v) for k, v in config["shapes_dict"].items()}
        else:
            raise ValueError(
                "Expected a build config with 'input_shape' or 'shapes_dict'. "
                f"Received: config={config!r}"
            )
        try:
            self.build(*args, **kwargs)
        except (MemoryError, RecursionError, ValueError, TypeError):
            raise
        except Exception as e:
            raise ValueError(
                f"Expected a build config that {type(self).__name__} {self.name!r} can build "
                f"from. Received: config={config!r}, which failed with {type(e).__name__}: {e}"
            ) from e

    # ------------------------------------------------------------------ saving
    def _own_variables(self) -> dict[str, torch.nn.Parameter]:
        return {
            (p.name if isinstance(p, Variable) else key): p
            for key, p in self._parameters.items()
            if p is not None
        }

    def save_own_variables(self, store: dict[str, Any]) -> None:
        """``store[variable.name] = CPU tensor copy`` for this layer's own variables."""
        for name, p in self._own_variables().items():
            store[name] = p.detach().to("cpu", copy=True)

    def load_own_variables(self, store: dict[str, Any]) -> None:
        """Assign own variables from ``store`` by name; all checked before any write."""
        own = self._own_variables()
        missing = sorted(set(own) - set(store.keys()))
        extra = sorted(set(store.keys()) - set(own))
        if missing or extra:
            raise ValueError(
                f"Layer {self.name!r} expected variables {sorted(own)} in the store. "
                f"Missing: {missing}; unexpected: {extra}."
            )
        values = {}
        for name, p in own.items():
            t = to_tensor(store[name])
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"Layer {self.name!r} variable {name!r} has shape {tuple(p.shape)}, but the "
                    f"store holds shape {tuple(t.shape)}."
                )
            check_write(p, t, "load into")
            values[name] = t
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(values[name].to(device=p.device, dtype=p.dtype))


Layer.build = _building.wrap_build(Layer.__dict__["build"])  # type: ignore[method-assign]


class QuantizationSnapshot:
    """What quantizing changes on one layer (its variables, attached scheme and policy), taken
    before; ``restore`` puts it back through ``Layer._set_quantization_scheme``, the one place a
    layer's quantized state changes. Model-level quantize (``mpq.quantize``,
    ``Functional.quantize``) rolls back with it: nothing is half-applied."""

    __slots__ = ("explicit", "layer", "params", "policy", "scheme")

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.params = dict(layer._parameters)
        self.scheme = layer.quantization_scheme
        self.policy = layer.dtype_policy
        self.explicit = layer._policy_explicit

    def restore(self) -> None:
        self.layer._parameters.clear()
        self.layer._parameters.update(self.params)
        self.layer._update_cast_dtypes()
        self.layer._set_quantization_scheme(self.scheme, self.policy, self.explicit)


_tracking.register_layer_base(Layer)
