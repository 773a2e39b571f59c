"""Quantization-scheme registry: one scheme object per (layer class, mode), e.g. (Dense, "int8").

``Layer.quantize``, ``Layer.quantized_build``, ``Layer.quantized_call``, the ``dtype_policy``
setter (quantized policy on a built layer), building under a quantized policy and deserializing
a quantized layer all resolve their scheme here. A new scheme is a new file that registers itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpq.layers.base import Layer

__all__ = [
    "QuantizationScheme",
    "get_scheme",
    "register_scheme",
    "registered_schemes",
    "unregister_scheme",
]


class QuantizationScheme:
    """How one layer class runs in one quantization mode. Subclass, then register::

        @register_scheme(Dense, "int8")
        class DenseInt8(QuantizationScheme):
            def build(self, layer, input_shape, config=None): ...    # create quantized variables
            def quantize(self, layer, config=None): ...              # convert a built float layer
            def call(self, layer, inputs, *args, **kwargs): ...      # forward pass

    ``config`` is the quantization config given to ``Layer.quantize`` (or to the layer's
    constructor as ``quantization_config``), else the target quantized policy: a scheme reads
    its options (block size, ...) from either.
    ``build`` may create the float weights first with :func:`float_build`.
    The layer's quantized variables must be added with ``layer.add_weight`` so that
    weights, get/set_weights, saving and state_dict see them.
    """

    mode: str = ""

    def build(self, layer: Layer, input_shape: Any, config: Any = None) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} does not implement build() for layer {type(layer).__name__}."
        )

    def quantize(self, layer: Layer, config: Any = None) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} does not implement quantize() for layer {type(layer).__name__}."
        )

    def call(self, layer: Layer, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} does not implement call() for layer {type(layer).__name__}."
        )


_SCHEMES: dict[tuple[type, str], QuantizationScheme] = {}


def _check_mode(mode: Any) -> str:
    if not isinstance(mode, str) or not mode:
        raise TypeError(
            "Expected a quantization mode name such as 'int8', 'int4' or 'float8'. "
            f"Received: mode={mode!r} (of type {type(mode).__name__})"
        )
    return mode


def register_scheme(layer_cls: type, mode: str, scheme: QuantizationScheme | type | None = None):
    """Register ``scheme`` for ``(layer_cls, mode)``; without ``scheme``, a class decorator.

    Registering twice for the same key raises ValueError (unregister first).
    """
    mode = _check_mode(mode)
    if not isinstance(layer_cls, type):
        raise TypeError(
            f"Expected a layer class. Received: layer_cls={layer_cls!r} "
            f"(of type {type(layer_cls).__name__})"
        )

    def add(s):
        instance = s() if isinstance(s, type) else s
        if not isinstance(instance, QuantizationScheme):
            raise TypeError(
                "Expected a QuantizationScheme (subclass or instance). "
                f"Received: scheme={s!r} (of type {type(s).__name__})"
            )
        key = (layer_cls, mode)
        if key in _SCHEMES:
            raise ValueError(
                f"A quantization scheme is already registered for ({layer_cls.__name__}, "
                f"{mode!r}): {type(_SCHEMES[key]).__name__}. Unregister it first."
            )
        instance.mode = mode
        _SCHEMES[key] = instance
        return s

    return add if scheme is None else add(scheme)


def unregister_scheme(layer_cls: type, mode: str) -> None:
    """Remove the scheme of ``(layer_cls, mode)`` (KeyError if none)."""
    try:
        del _SCHEMES[(layer_cls, mode)]
    except KeyError:
        raise KeyError(
            f"No quantization scheme registered for ({getattr(layer_cls, '__name__', layer_cls)}, "
            f"{mode!r})."
        ) from None


def registered_schemes() -> dict[tuple[type, str], QuantizationScheme]:
    """A copy of the registry."""
    return dict(_SCHEMES)


def get_scheme(layer: Any, mode: str, type_check: bool = False) -> QuantizationScheme:
    """The scheme for ``layer``'s class (exact class if ``type_check``, else nearest base class).

    Raises NotImplementedError naming the class and the mode when there is none.
    """
    mode = _check_mode(mode)
    cls = layer if isinstance(layer, type) else type(layer)
    classes = (cls,) if type_check else cls.__mro__
    for c in classes:
        scheme = _SCHEMES.get((c, mode))
        if scheme is not None:
            return scheme
    modes = sorted(m for (c, m) in _SCHEMES if c in classes)
    base = next((c for c in cls.__mro__[1:] if (c, mode) in _SCHEMES), None) if type_check else None
    raise NotImplementedError(
        f"Layer {cls.__name__} has no quantization scheme for mode={mode!r} "
        f"(modes registered for it: {modes or 'none'}"
        + (
            f"; its base class {base.__name__} has one: pass type_check=False to use it"
            if base is not None
            else ""
        )
        + ")."
    )


# --- the Layer hooks (Layer's methods delegate here) ------------------------------------------


def _is_config(obj: Any) -> bool:
    """A quantization config: an object with a ``mode`` string and ``to_policy(source_name)``."""
    return isinstance(getattr(obj, "mode", None), str) and callable(getattr(obj, "to_policy", None))


def quantize(layer: Layer, mode: Any, type_check: bool = True, config: Any = None) -> None:
    """``layer.quantize(mode, type_check, config)``: everything is checked before the layer is
    touched; the scheme gets ``config``, or the target quantized policy when none was given."""
    from mpq import policy as _policy

    if _is_config(mode):
        if config is not None:
            raise ValueError(
                "Expected either a config as `mode` or a mode string plus `config`. "
                f"Received: mode={mode!r} and config={config!r}"
            )
        mode, config = mode.mode, mode
    _check_mode(mode)
    base = mode.partition("/")[0]
    if base not in _policy.QUANTIZATION_MODES:
        raise ValueError(
            f"Expected a quantization mode, one of {list(_policy.QUANTIZATION_MODES)} (int4 "
            f"optionally with a block size, e.g. 'int4/32'). Received: mode={mode!r}"
        )
    if config is not None:
        if not _is_config(config):
            raise TypeError(
                "Expected `config` to be a quantization config (e.g. "
                "mpq.quantization.QuantizationConfig) or None. "
                f"Received: config={config!r} (of type {type(config).__name__})"
            )
        if config.mode != base:
            raise ValueError(
                f"Expected a config for mode {base!r}. Received: config={config!r} "
                f"(mode {config.mode!r})"
            )
    scheme = get_scheme(layer, base, type_check=type_check)
    if not layer.built:
        raise ValueError(
            f"Cannot quantize layer {layer.name!r}: it is not built yet. Call it on an input or "
            f"`build(input_shape)` first. Received: built=False"
        )
    if layer._scheme is not None:
        raise ValueError(
            f"Layer {layer.name!r} is already quantized "
            f"(policy {layer.dtype_policy.name!r}). Received: mode={mode!r}"
        )
    source = layer.dtype_policy.name
    if config is not None:
        target = config.to_policy(source)
    else:  # quantize("int4") groups by 128 as Keras' does; the policy name says so explicitly
        spec = f"int4/{_policy.DEFAULT_INT4_BLOCK_SIZE}" if mode == "int4" else mode
        target = _policy.get(f"{spec}_from_{source}")
    apply_quantized_policy(layer, scheme, target, config)


def apply_quantized_policy(layer: Layer, scheme: QuantizationScheme, policy: Any, config: Any):
    """Quantize ``layer`` with ``scheme`` and give it ``policy``. Without ``config`` the scheme
    gets the config the layer was constructed with, else ``policy`` itself."""
    if config is None:
        config = layer.__dict__.get("_quantization_config") or policy
    scheme.quantize(layer, config)
    layer.__dict__["_scheme"] = scheme
    # A quantized layer's policy is its own from now on: a parent it is later added to does not
    # hand it its policy (a quantized policy cannot change anyway).
    layer.__dict__["_policy_explicit"] = True
    layer._set_resolved_policy(policy)


def quantized_build(layer: Layer, input_shape: Any, mode: str, config: Any = None) -> None:
    """Build ``layer`` quantized (its policy is already quantized). The scheme gets ``config``,
    else the config the layer was constructed with, else the layer's policy."""
    scheme = get_scheme(layer, mode, type_check=False)
    if config is None:
        config = layer.__dict__.get("_quantization_config") or layer.dtype_policy
    scheme.build(layer, input_shape, config)
    layer.__dict__["_scheme"] = scheme


def float_build(layer: Layer, *args: Any, **kwargs: Any) -> None:
    """Run the layer's own (float) ``build`` from inside a scheme's ``build``."""
    d = layer.__dict__
    d["_float_build_depth"] = d.get("_float_build_depth", 0) + 1
    try:
        layer.build(*args, **kwargs)
    finally:
        d["_float_build_depth"] -= 1


def quantized_call(layer: Layer, *args: Any, **kwargs: Any) -> Any:
    scheme = layer._scheme
    if scheme is None:
        mode = layer.quantization_mode
        raise NotImplementedError(
            f"Layer {type(layer).__name__} is not quantized"
            + (f" (its policy says mode={mode!r} but it was not built)" if mode else "")
            + "; quantized_call() needs a quantization scheme. Received: mode="
            + repr(mode)
        )
    return scheme.call(layer, *args, **kwargs)
