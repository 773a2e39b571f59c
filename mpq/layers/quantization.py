"""Quantization schemes as seen from the layers: the scheme base class, the registry of
(layer class, mode) -> scheme, and the few hooks ``Layer`` delegates to.

A layer knows one thing about quantization: a scheme may be attached to it
(``layer.quantization_scheme``, None for a float layer). The registry maps (layer class, mode)
to a registered scheme object; quantizing a layer asks it once (``apply``) for the scheme to
attach and the layer's quantized policy (mpq's own schemes return a new object per layer that
holds the layer's quantization config and kernel form) and then calls that scheme for the
layer's forward pass. The schemes themselves live in
``mpq.quantization``, a package above this one, which registers them when it is imported; they
reach a layer through the small :class:`QuantizableLayer` protocol, and this package never
imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import torch

from mpq import policy as _policy

if TYPE_CHECKING:
    from mpq.layers.base import Layer

__all__ = [
    "QuantizableLayer",
    "QuantizationScheme",
    "get_scheme",
    "mode_policy",
    "register_scheme",
    "registered_schemes",
    "unregister_scheme",
]


@runtime_checkable
class QuantizableLayer(Protocol):
    """What a quantization scheme needs from a weighted layer (Dense, EinsumDense, Conv1D,
    Conv2D, Embedding): its policy, its variables (``_parameters``, ``add_weight``), building
    and config, and the activation applied after the contraction. Layer-kind specifics (the
    einsum equation, conv strides and padding) are read by the form of that kind."""

    @property
    def name(self) -> str: ...

    @property
    def dtype_policy(self) -> Any: ...

    built: bool
    training: bool
    _parameters: dict[str, torch.nn.Parameter | None]
    _pending_quantization_config: Any
    """The ``quantization_config`` the layer was constructed with (None: none)."""
    quantization_scheme: Any
    """The attached scheme (None: float)."""

    def add_weight(self, *args: Any, **kwargs: Any) -> Any: ...

    def build(self, *args: Any, **kwargs: Any) -> None: ...

    def quantize(self, mode: Any, type_check: bool = True, config: Any = None) -> None: ...

    def get_config(self) -> dict[str, Any]: ...

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any: ...

    def get_build_config(self) -> dict[str, Any] | None: ...

    def build_from_config(self, config: dict[str, Any]) -> None: ...

    def _update_cast_dtypes(self) -> None: ...


def mode_policy(mode: str, source: str) -> Any:
    """The quantized policy ``layer.quantize(mode)`` gives a layer whose policy is ``source``:
    ``"{mode}_from_{source}"``, except that a bare ``"int4"`` quantizes in groups of
    ``DEFAULT_INT4_BLOCK_SIZE`` (128), as Keras 3's ``quantize("int4")`` does, while the policy
    name ``int4_from_...`` alone means per output channel (as in Keras)."""
    spec = f"int4/{_policy.DEFAULT_INT4_BLOCK_SIZE}" if mode == "int4" else mode
    return _policy.get(f"{spec}_from_{source}")


class QuantizationScheme:
    """How one layer class runs in one quantization mode. Subclass, then register::

        @register_scheme(Dense, "int8")
        class DenseInt8(QuantizationScheme):
            def build(self, layer, input_shape, config=None): ...    # create quantized variables
            def quantize(self, layer, config=None): ...              # convert a built float layer
            def call(self, layer, inputs, *args, **kwargs): ...      # forward pass

    ``layer.quantize(mode, config=...)`` asks the registered object once, :meth:`apply`
    (by default :meth:`resolve`, then ``quantize``), for the scheme to attach and the layer's
    quantized policy.

    ``build`` and ``quantize`` return the scheme object to attach to the layer
    (``layer.quantization_scheme``): a new object per layer that holds the layer's state
    (mpq's schemes: its config and kernel form), or None to attach the registered object
    itself (a stateless scheme that reads everything from the layer).

    ``config`` is what :meth:`resolve` returned: by default the quantization config given to
    ``Layer.quantize`` (or to the layer's constructor as ``quantization_config``), else the
    target quantized policy. ``build`` may create the float weights first with
    :func:`float_build`. The layer's quantized variables must be added with
    ``layer.add_weight`` so that weights, get/set_weights, saving and state_dict see them.
    """

    mode: str = ""

    def resolve(self, layer: QuantizableLayer, mode: str, config: Any) -> tuple[Any, Any]:
        """``(config, target policy)`` for ``layer.quantize(mode, config=config)``, resolved
        once: the config the scheme's ``quantize`` gets and the layer's quantized policy. By
        default the policy is ``"{mode}_from_{source}"`` (or ``config.to_policy(source)``) and
        the config is ``config`` itself, else that policy."""
        source = layer.dtype_policy.name
        if config is not None:
            return config, config.to_policy(source)
        policy = mode_policy(mode, source)
        return policy, policy

    def apply(
        self, layer: QuantizableLayer, mode: str, config: Any
    ) -> tuple[QuantizationScheme, Any]:
        """``layer.quantize(mode, config=config)`` on the scheme side, in one call: resolve the
        request, convert the layer, and return ``(scheme to attach, target policy)``; the
        caller attaches them. By default :meth:`resolve`, then :meth:`quantize` (a None from it
        attaches this registered object)."""
        resolved, policy = self.resolve(layer, mode, config)
        if resolved is None:
            resolved = layer._pending_quantization_config or policy
        scheme = self.quantize(layer, resolved)
        return (self if scheme is None else scheme), policy

    def build(
        self, layer: QuantizableLayer, input_shape: Any, config: Any = None
    ) -> QuantizationScheme | None:
        raise NotImplementedError(
            f"{type(self).__name__} does not implement build() for layer {type(layer).__name__}."
        )

    def quantize(self, layer: QuantizableLayer, config: Any = None) -> QuantizationScheme | None:
        raise NotImplementedError(
            f"{type(self).__name__} does not implement quantize() for layer {type(layer).__name__}."
        )

    def call(self, layer: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} does not implement call() for layer {type(layer).__name__}."
        )

    def dequantized_kernel(self, layer: QuantizableLayer) -> torch.Tensor:
        """The float32 kernel the quantized layer computes with, in the float layer's layout."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement dequantized_kernel() for layer "
            f"{type(layer).__name__}."
        )

    def requantize(self, layer: QuantizableLayer, delta: torch.Tensor) -> None:
        """Replace the quantized kernel by the quantization of ``dequantized_kernel + delta``
        (``merge_lora`` on a quantized layer)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement requantize() (merge_lora) for layer "
            f"{type(layer).__name__}."
        )

    def kernel_shape(self) -> tuple[int, ...] | None:
        """The float kernel's shape, when the scheme stores it in another shape (packed,
        transposed); None: the layer's ``kernel`` has it."""
        return None

    def get_config(self) -> dict[str, Any] | None:
        """The layer's quantization config as a dict (``get_config`` of the layer writes it as
        ``quantization_config``); None when the scheme has none of its own."""
        return None


_S = TypeVar("_S", bound="QuantizationScheme | type[QuantizationScheme]")

_SCHEMES: dict[tuple[type, str], QuantizationScheme] = {}


def _check_mode(mode: Any) -> str:
    if not isinstance(mode, str) or not mode:
        raise TypeError(
            "Expected a quantization mode name such as 'int8', 'int4' or 'float8'. "
            f"Received: mode={mode!r} (of type {type(mode).__name__})"
        )
    return mode


def register_scheme(layer_cls: type, mode: str, scheme: Any = None) -> Callable[[Any], Any] | Any:
    """Register ``scheme`` for ``(layer_cls, mode)``; without ``scheme``, a class decorator.

    Registering twice for the same key raises ValueError (unregister first).
    """
    mode = _check_mode(mode)
    if not isinstance(layer_cls, type):
        raise TypeError(
            f"Expected a layer class. Received: layer_cls={layer_cls!r} "
            f"(of type {type(layer_cls).__name__})"
        )

    def add(s: Any) -> Any:
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
    """The registered scheme for ``layer``'s class (exact class if ``type_check``, else nearest
    base class). Raises NotImplementedError naming the class and the mode when there is none.
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


def _check_request(mode: Any, config: Any) -> tuple[str, str, Any]:
    """``(mode, base mode, config)`` of ``Layer.quantize(mode, config=config)``, checked."""
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
    return mode, base, config


def quantize(layer: Layer, mode: Any, type_check: bool = True, config: Any = None) -> None:
    """``layer.quantize(mode, type_check, config)``: the request is checked, the registered
    scheme is asked once (``apply``: resolve, check, convert) and what it returns is attached
    with the layer's quantized policy."""
    mode, base, config = _check_request(mode, config)
    registered = get_scheme(layer, base, type_check=type_check)
    if not layer.built:
        raise ValueError(
            f"Cannot quantize layer {layer.name!r}: it is not built yet. Call it on an input or "
            f"`build(input_shape)` first. Received: built=False"
        )
    if layer.quantization_scheme is not None:
        raise ValueError(
            f"Layer {layer.name!r} is already quantized "
            f"(policy {layer.dtype_policy.name!r}). Received: mode={mode!r}"
        )
    scheme, policy = registered.apply(layer, mode, config)
    # A quantized layer's policy is its own from now on: a parent it is later added to does not
    # hand it its policy (a quantized policy cannot change anyway).
    layer._set_quantization_scheme(scheme, policy)


def attach(layer: Layer, registered: QuantizationScheme, policy: Any, config: Any) -> None:
    """Quantize ``layer`` with ``registered`` and give it ``policy`` (without ``config``: the
    config the layer was constructed with, else ``policy``)."""
    if config is None:
        config = layer._pending_quantization_config or policy
    scheme = registered.quantize(layer, config)
    # A quantized layer's policy is its own from now on: a parent it is later added to does not
    # hand it its policy (a quantized policy cannot change anyway).
    layer._set_quantization_scheme(registered if scheme is None else scheme, policy)


def quantized_build(layer: Layer, input_shape: Any, mode: str, config: Any = None) -> None:
    """Build ``layer`` quantized (its policy is already quantized). The scheme gets ``config``,
    else the config the layer was constructed with, else the layer's policy."""
    registered = get_scheme(layer, mode, type_check=False)
    if config is None:
        config = layer._pending_quantization_config or layer.dtype_policy
    scheme = registered.build(layer, input_shape, config)
    layer._set_quantization_scheme(registered if scheme is None else scheme)


def float_build(layer: QuantizableLayer, *args: Any, **kwargs: Any) -> None:
    """Run the layer's own (float) ``build`` from inside a scheme's ``build``."""
    d = layer.__dict__
    d["_float_build_depth"] = d.get("_float_build_depth", 0) + 1
    try:
        layer.build(*args, **kwargs)
    finally:
        d["_float_build_depth"] -= 1


def quantized_call(layer: Layer, *args: Any, **kwargs: Any) -> Any:
    scheme = layer.quantization_scheme
    if scheme is None:
        mode = layer.quantization_mode
        raise NotImplementedError(
            f"Layer {type(layer).__name__} is not quantized"
            + (f" (its policy says mode={mode!r} but it was not built)" if mode else "")
            + "; quantized_call() needs a quantization scheme. Received: mode="
            + repr(mode)
        )
    return scheme.call(layer, *args, **kwargs)
