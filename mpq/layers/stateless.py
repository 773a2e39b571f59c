"""Running a layer on values that are not its own: ``stateless_call`` and meta-device shapes.

Both run the ordinary ``__call__`` (autocast included) while variable reads are redirected
through a :class:`~mpq.layers.autocast.StatelessScope`; nothing on the layer is written.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from mpq.layers import autocast as _autocast
from mpq.layers import extras as _extras
from mpq.layers.building import as_shape
from mpq.layers.input_spec import InputSpec
from mpq.layers.variables import Variable

if TYPE_CHECKING:
    from mpq.layers.base import Layer

__all__ = ["compute_output_shape", "compute_output_spec", "stateless_call"]


def _run_in_scope(
    layer: Layer,
    mapping: dict[int, tuple[Any, torch.Tensor]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_losses: bool,
    meta: bool = False,
) -> tuple[Any, _autocast.StatelessScope, list[torch.Tensor] | None]:
    """Call ``layer`` with Variables read from ``mapping``; plain torch parameters are swapped
    with ``torch.func.functional_call``. Returns (outputs, scope, losses or None)."""
    plain: dict[str, torch.Tensor] = {}
    names = {id(p): n for n, p in layer.named_parameters(remove_duplicate=False)}
    for key, (var, value) in list(mapping.items()):
        if not isinstance(var, Variable):
            plain[names[id(var)]] = value
            del mapping[key]
    scope = _autocast.StatelessScope(mapping)
    scope.meta = meta
    state = _autocast.STATE
    previous = state.stateless
    state.stateless = scope
    try:
        if plain:
            outputs = torch.func.functional_call(layer, plain, args, kwargs, strict=False)
        else:
            outputs = layer(*args, **kwargs)
        losses = layer.losses if return_losses else None
    finally:
        state.stateless = previous
    return outputs, scope, losses


def stateless_call(
    layer: Layer,
    trainable_variables: list[Any],
    non_trainable_variables: list[Any],
    *args: Any,
    return_losses: bool = False,
    **kwargs: Any,
) -> tuple[Any, ...]:
    if not layer.built:
        raise ValueError(
            f"To call stateless_call, layer {layer.name!r} must be built (i.e. its variables "
            "must have been already created). You can build it by calling it on some data. "
            "Received: built=False"
        )
    own_t, own_nt = layer.trainable_variables, layer.non_trainable_variables
    for given, own, kind in (
        (trainable_variables, own_t, "trainable_variables"),
        (non_trainable_variables, own_nt, "non_trainable_variables"),
    ):
        if not isinstance(given, (list, tuple)) or len(given) != len(own):
            got = len(given) if isinstance(given, (list, tuple)) else type(given).__name__
            raise ValueError(
                f"Argument `{kind}` must be a list of {len(own)} tensors in the order of "
                f"layer.{kind} (layer {layer.name!r}). Received: {got}"
            )
    mapping: dict[int, tuple[Any, torch.Tensor]] = {}
    for var, value in zip(
        [*own_t, *own_nt], [*trainable_variables, *non_trainable_variables], strict=True
    ):
        if not isinstance(value, torch.Tensor):
            from mpq.layers.variables import to_tensor

            value = to_tensor(value, var.dtype)
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(
                f"Expected a value of shape {tuple(var.shape)} for variable "
                f"{getattr(var, 'path', '?')!r}. Received: shape={tuple(value.shape)}"
            )
        mapping[id(var)] = (var, value)
    outputs, scope, losses = _run_in_scope(layer, mapping, args, kwargs, return_losses)
    new_nt = [scope.get(v) for v in own_nt]
    if return_losses:
        return outputs, new_nt, losses
    return outputs, new_nt


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x if x.device.type == "meta" else torch.empty_like(x, device="meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(i) for i in x)
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    return x


def _meta_parameter(p: torch.nn.Parameter) -> torch.nn.Parameter:
    data = torch.empty_like(p, device="meta")
    if isinstance(p, Variable):
        meta = torch.Tensor._make_subclass(type(p), data, p.requires_grad)
        meta.__dict__.update({k: v for k, v in p.__dict__.items() if k != "_owner"})
        meta.__dict__["_owner"] = None
        return meta
    return torch.nn.Parameter(data, p.requires_grad)


def compute_output_spec(layer: Layer, *args: Any, **kwargs: Any) -> Any:
    """Run ``layer`` on meta tensors (no data allocated) and return meta outputs.

    A built layer reads meta copies of its variables; an unbuilt one is copied and the copy is
    built on the meta device, so the layer itself is never modified.
    """
    args, kwargs = _to_meta(args), _to_meta(kwargs)
    static = _extras.dynamic_output_spec(layer, args)  # dynamic=True: call is not run
    if static is not None:
        return static
    state = _autocast.STATE
    if not layer.built:
        # Copy the layer with meta stand-ins for every existing tensor (built sublayers'
        # weights included), then build the copy on the meta device.
        memo: dict[int, Any] = {}
        for p in layer.parameters():
            memo[id(p)] = _meta_parameter(p)
        for b in layer.buffers():
            memo[id(b)] = torch.empty_like(b, device="meta")
        target = copy.deepcopy(layer, memo)
        previous = state.meta_build
        state.meta_build = True
        try:
            with torch.no_grad():
                return target(*args, **kwargs)
        finally:
            state.meta_build = previous
    mapping = {id(p): (p, torch.empty_like(p, device="meta")) for p in layer.variables}
    with torch.no_grad():
        outputs, _, _ = _run_in_scope(layer, mapping, args, kwargs, False, meta=True)
    return outputs


def compute_output_shape(layer: Layer, input_shape: Any) -> Any:
    """Output shape(s) for ``input_shape`` by a meta-device run; ``None`` dims are found by
    running with two different sizes and keeping the dims that change."""
    spec = layer.input_spec
    in_dtype = spec.dtype if isinstance(spec, InputSpec) and spec.dtype is not None else None
    in_dtype = in_dtype or layer.dtype_policy.torch_compute_dtype

    def has_none(shape: Any) -> bool:
        if isinstance(shape, dict):
            return any(has_none(v) for v in shape.values())
        if isinstance(shape, (list, tuple)):
            return any(s is None or has_none(s) for s in shape)
        return False

    def make(shape: Any, fill: int) -> Any:
        if isinstance(shape, dict):
            return {k: make(v, fill) for k, v in shape.items()}
        if isinstance(shape, list) or (
            isinstance(shape, tuple) and shape and isinstance(shape[0], (tuple, list, dict))
        ):
            return type(shape)(make(s, fill) for s in shape)
        dims = tuple(fill if s is None else int(s) for s in shape)
        return torch.empty(dims, dtype=in_dtype, device="meta")

    def shapes(out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return tuple(out.shape)
        if isinstance(out, (list, tuple)):
            return type(out)(shapes(o) for o in out)
        if isinstance(out, dict):
            return {k: shapes(v) for k, v in out.items()}
        return out

    first = shapes(layer.compute_output_spec(make(as_shape(input_shape), 2)))
    if not has_none(input_shape):
        return first
    second = shapes(layer.compute_output_spec(make(as_shape(input_shape), 3)))

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, tuple) and all(isinstance(v, int) for v in a):
            return tuple(x if x == y else None for x, y in zip(a, b, strict=True))
        if isinstance(a, dict):
            return {k: merge(a[k], b[k]) for k in a}
        return type(a)(merge(x, y) for x, y in zip(a, b, strict=True))

    return merge(first, second)
