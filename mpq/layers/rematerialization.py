"""Rematerialization (activation checkpointing) for layer calls: ``RematScope`` and ``remat``.

Keras 3 ``keras.RematScope`` / ``keras.remat`` on ``torch.utils.checkpoint`` (non-reentrant): the
activations of a rematerialized call are not kept for the backward pass but recomputed in it.
The recomputation runs in the call's own state (autocast frame, ``stateless_call`` values, the
variable values the call started from) and its side effects (``assign``, ``add_loss``,
``add_metric``, updates, seed draws) are discarded, so gradients equal those of a plain call.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.utils.checkpoint

from mpq._errors import describe as _describe
from mpq.layers import autocast as _autocast

__all__ = ["RematMode", "RematScope", "get_current_remat_mode", "remat"]

_MODES = ("full", "activations", "larger_than", "list_of_layers", None)


class RematMode(NamedTuple):
    """The remat settings a layer captured when it was created (``layer._remat_mode``)."""

    mode: str
    output_size_threshold: int
    layer_names: tuple[str, ...]


class _Stack(threading.local):
    scopes: list[RematScope]

    def __init__(self) -> None:
        self.scopes = []


_STACK = _Stack()


class RematScope:
    """Context manager: layers *created* inside it rematerialize their calls.

    Keras 3 (``keras.RematScope``): "Rematerialization (gradient checkpointing) trades memory
    for computation by recomputing intermediate activations during the backward pass"; the
    mode is read when the layer is initialized.

    Args:
        mode: ``"full"`` (every layer created inside), ``"activations"`` (the ``activation`` of
            layers that have one, e.g. ``Dense(..., activation="relu")``), ``"larger_than"``
            (layers whose output has more than ``output_size_threshold`` elements),
            ``"list_of_layers"`` (the layers named in ``layer_names``) or None (off).
        output_size_threshold: for ``"larger_than"``; default 1024.
        layer_names: for ``"list_of_layers"``.

    Example::

        with RematScope(mode="full"):
            block = Sequential([Dense(512, activation="gelu"), Dense(512)])
        block(x).sum().backward()   # Dense activations recomputed in the backward pass
    """

    def __init__(
        self,
        mode: str | None = "full",
        output_size_threshold: int = 1024,
        layer_names: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(
                "Expected `mode` to be one of 'full', 'activations', 'larger_than', "
                f"'list_of_layers' or None. Received: mode={_describe(mode)}"
            )
        if not isinstance(output_size_threshold, int) or isinstance(output_size_threshold, bool):
            raise TypeError(
                "Expected `output_size_threshold` to be an int. "
                f"Received: output_size_threshold={_describe(output_size_threshold)}"
            )
        names = tuple(layer_names or ())
        if not all(isinstance(n, str) for n in names):
            raise TypeError(
                "Expected `layer_names` to be a list of layer names (strings). "
                f"Received: layer_names={_describe(layer_names)}"
            )
        self.mode = mode
        self.output_size_threshold = output_size_threshold
        self.layer_names = names

    def __enter__(self) -> RematScope:
        _STACK.scopes.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _STACK.scopes.pop()


def get_current_remat_mode() -> RematMode | None:
    """The innermost active ``RematScope`` as a ``RematMode`` (None: no scope, or mode None)."""
    if not _STACK.scopes:
        return None
    scope = _STACK.scopes[-1]
    if scope.mode is None:
        return None
    return RematMode(scope.mode, scope.output_size_threshold, scope.layer_names)


@contextlib.contextmanager
def _recompute_state(
    frame: _autocast.Frame | None, mapping: dict[int, tuple[Any, torch.Tensor]]
) -> Iterator[None]:
    """The state a recomputation runs in: a frame like the forward one and a stateless scope
    holding the values the forward call read, so its writes, losses and draws are discarded."""
    state = _autocast.STATE
    saved = (state.frame, state.stateless)
    if frame is not None:
        state.frame = _autocast.Frame(frame.cast_dtype, frame.training, False)
    state.stateless = _autocast.StatelessScope(dict(mapping))
    try:
        yield
    finally:
        state.frame, state.stateless = saved


def _forward_mapping(state_vars: list[torch.Tensor]) -> dict[int, tuple[Any, torch.Tensor]]:
    """Values of ``state_vars`` at the start of the forward call (copies: a call may assign
    them), and of every variable an enclosing ``stateless_call`` substitutes."""
    outer = _autocast.STATE.stateless
    mapping: dict[int, tuple[Any, torch.Tensor]] = {}
    if outer is not None:
        mapping.update(outer.values)
    for v in state_vars:
        value = v if outer is None else outer.get(v)
        mapping[id(v)] = (v, value.detach().clone())
    return mapping


def remat(f: Callable[..., Any], state: Callable[[], list[torch.Tensor]] | None = None) -> Any:
    """``f`` wrapped so that its activations are recomputed in the backward pass.

    Keras 3 (``keras.remat``): "Instead of storing intermediate results (e.g. activations) for
    backpropagation, they are recomputed during the backward pass." Runs
    ``torch.utils.checkpoint.checkpoint(f, ..., use_reentrant=False)``; the global RNG state is
    restored for the recomputation (torch's ``preserve_rng_state``). ``state``: a function
    returning the variables whose forward-time values the recomputation must reuse (a layer's
    ``non_trainable_variables``).
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        frame = _autocast.STATE.frame
        mapping = _forward_mapping(state() if state is not None else [])

        def contexts() -> tuple[Any, Any]:
            return contextlib.nullcontext(), _recompute_state(frame, mapping)

        return torch.utils.checkpoint.checkpoint(
            f, *args, use_reentrant=False, context_fn=contexts, **kwargs
        )

    return wrapper
