"""How layers get built: the ``build`` wrapper, shapes from the first call, constructor capture.

``build`` is wrapped once per class: it resolves the policy, dispatches to a quantization
scheme under a quantized policy, records the build shapes and sets ``built``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from mpq._errors import MAX_SIZE
from mpq.layers import quantization as _quantization
from mpq.layers import tracking as _tracking

if TYPE_CHECKING:
    from mpq.layers.base import Layer

__all__ = ["as_shape", "build_on_call", "capture_init_args", "shape_of", "wrap_build"]

_INIT_SIGNATURES: dict[type, inspect.Signature] = {}


def capture_init_args(
    cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any] | None:
    """Constructor arguments by name (``**kwargs`` flattened), or None if they do not bind."""
    sig = _INIT_SIGNATURES.get(cls)
    if sig is None:
        # cls.__init__ through the MRO (mypy: unsound on an instance; cls is a class here).
        sig = _INIT_SIGNATURES[cls] = inspect.signature(cls.__init__)  # type: ignore[misc]
    try:
        bound = sig.bind(None, *args, **kwargs).arguments
    except TypeError:
        return None
    out: dict[str, Any] = {}
    params = sig.parameters
    for i, (k, v) in enumerate(bound.items()):
        if i == 0:
            continue  # self
        kind = params[k].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(v)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if v:
                return None
        else:
            out[k] = v
    return out


def shape_of(value: Any) -> Any:
    """Tuple shape of a tensor, or a list/tuple/dict of them; None if not all tensors."""
    if isinstance(value, torch.Tensor) or getattr(type(value), "_mpq_symbolic", False):
        return tuple(value.shape)  # a tensor, or a symbolic one (None for unknown sizes)
    if isinstance(value, (list, tuple)) and value:
        shapes = [shape_of(v) for v in value]
        return None if any(s is None for s in shapes) else type(value)(shapes)
    if isinstance(value, dict) and value:
        shape_map = {k: shape_of(v) for k, v in value.items()}
        return None if any(s is None for s in shape_map.values()) else shape_map
    return None


def as_shape(value: Any) -> Any:
    """JSON lists back to tuples: ``[None, 4]`` -> ``(None, 4)``; lists of shapes stay lists."""
    if isinstance(value, (list, tuple)):
        if all(v is None or isinstance(v, int) for v in value):
            if any(
                v is not None and (isinstance(v, bool) or not 0 <= v <= MAX_SIZE) for v in value
            ):
                raise ValueError(
                    f"Expected a shape of None or sizes in [0, {MAX_SIZE}]. "
                    f"Received: shape={tuple(value)}"
                )
            return tuple(value)
        return [as_shape(v) for v in value]
    if isinstance(value, dict):
        return {k: as_shape(v) for k, v in value.items()}
    return value


def _is_plain_container(layer: Layer, mode: str) -> bool:
    """A layer with sublayers and no scheme of its own for ``mode`` (e.g. Sequential)."""
    if next(_tracking.direct_sublayers(layer), None) is None:
        return False
    try:
        _quantization.get_scheme(layer, mode)
    except NotImplementedError:
        return True
    return False


def wrap_build(fn: Callable[..., None]) -> Callable[..., None]:
    """Wrap a class's ``build``: policy resolution, quantized dispatch, shapes, ``built``."""

    @functools.wraps(fn)
    def build(self: Layer, *args: Any, **kwargs: Any) -> None:
        d = self.__dict__
        depth = d.get("_build_depth", 0)
        if depth == 0:
            self._prepare_build()
        mode = d["_dtype_policy"].quantization_mode
        d["_build_depth"] = depth + 1
        try:
            if (
                depth == 0
                and mode is not None
                and d["quantization_scheme"] is None
                and not d.get("_float_build_depth")
                and not _is_plain_container(self, mode)
            ):
                shape = args[0] if args else next(iter(kwargs.values()), None)
                self.quantized_build(shape, mode=mode)
            else:
                fn(self, *args, **kwargs)
                if mode is not None and d["quantization_scheme"] is None and self._parameters:
                    # A container without a scheme passes a quantized policy on to its
                    # layers; it must not silently keep float weights of its own.
                    _quantization.get_scheme(self, mode)
        finally:
            d["_build_depth"] = depth
        if depth == 0:
            shapes: dict[str, Any] | None
            try:
                shapes = inspect.signature(fn).bind(self, *args, **kwargs).arguments
                shapes.pop(next(iter(shapes)))
            except TypeError:
                shapes = None
            # `build()` with no arguments (Embedding, say) records an empty dict, not None: the
            # layer is built and its build config must say so for loading.
            d["_build_shapes_dict"] = shapes
            d["built"] = True

    build._mpq_wrapped = True  # type: ignore[attr-defined]  # marks a wrapped build
    return build


def build_on_call(self: Layer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Build ``self`` from the arguments of its first call (Keras rules for the shapes)."""
    sig = self._call_signature
    shapes: dict[str, Any] = {}
    if sig is not None:
        try:
            bound = sig.bind(None, *args, **kwargs).arguments
        except TypeError:
            bound = {}
        params = sig.parameters
        for i, (key, value) in enumerate(bound.items()):
            kind = params[key].kind
            if i == 0 or kind in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ):
                continue
            if key in ("training", "mask") or key.endswith("_mask"):
                continue
            shape = shape_of(value)
            if shape is not None:
                shapes[f"{key}_shape"] = shape
    if not shapes and args:
        shape = shape_of(args[0])
        if shape is not None:
            shapes["input_shape"] = shape
    build_params = [
        p
        for p in list(inspect.signature(self.build).parameters.values())
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if len(build_params) <= 1:
        first = next(iter(shapes.values()), None)
        if build_params:
            self.build(first)
        else:
            self.build()
        return
    build_kwargs = {}
    for p in build_params:
        if not p.name.endswith("_shape") or sig is None or p.name[:-6] not in sig.parameters:
            raise ValueError(
                f"For a `build()` method with more than one argument, all arguments should "
                f"have a `_shape` suffix and match an argument from `call()`, e.g. "
                f"`build(self, foo_shape, bar_shape)`. Received: {p.name!r} in "
                f"{type(self).__name__}.build"
            )
        if p.name in shapes:
            build_kwargs[p.name] = shapes[p.name]
    self.build(**build_kwargs)
