"""Dynamic loss scaling for float16 training: `LossScaler`.

Scale the loss up so float16 gradients do not underflow, unscale the gradients before the
optimizer step, skip steps whose gradients are not finite and adapt the scale.
"""

from __future__ import annotations

import math
from typing import Any, TypedDict

import torch

from mpq._errors import describe as _describe

__all__ = ["LossScaler"]

_READY, _UNSCALED, _STEPPED = "ready", "unscaled", "stepped"


class _OptimizerState(TypedDict):
    """One optimizer's progress through an iteration."""

    stage: str  # _READY, _UNSCALED or _STEPPED
    found_inf: bool


def _positive_float(value: object, name: str, *, above_one: bool = False) -> float:
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 1.0 if above_one else value > 0.0)
    ):
        return float(value)
    bound = "> 1" if above_one else "> 0"
    raise ValueError(
        f"Expected `{name}` to be a finite float {bound}. Received: {name}={_describe(value)}"
    )


class LossScaler:
    """Dynamic loss scaling (float16 mixed precision), usable with any ``torch.optim`` optimizer.

    The scale starts at ``init_scale`` (2**15). :meth:`step` unscales the gradients (unless
    :meth:`unscale_` was already called) and runs ``optimizer.step()`` only if every gradient is
    finite. :meth:`update` then halves the scale (``backoff_factor``) when a step was skipped, or
    doubles it (``growth_factor``) after ``growth_interval`` (2000) consecutive finite steps.
    The scale stays a power of two with the default factors, so scaling and unscaling are exact
    (barring overflow/underflow, which is the point).

    Usage (``scale(loss)`` is ``loss * scale`` in float32)::

        scaler = LossScaler()
        for x, y in data:
            opt.zero_grad()
            loss = loss_fn(model(x).float(), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)          # optional: only needed to inspect/clip true gradients
            scaler.step(opt)              # skipped if a gradient is inf/NaN
            scaler.update()

    Args:
        init_scale: the first scale (a positive float).
        growth_factor: the scale is multiplied by it after ``growth_interval`` finite steps.
        backoff_factor: the scale is multiplied by it after a non-finite step (in (0, 1)).
        growth_interval: number of consecutive finite steps before growing.

    >>> scaler = LossScaler(init_scale=4.0, growth_interval=1)
    >>> scaler.scale(torch.tensor(0.5)).item(), scaler.get_scale()
    (2.0, 4.0)
    """

    def __init__(
        self,
        init_scale: float = 2.0**15,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        self._scale = _positive_float(init_scale, "init_scale")
        self.growth_factor = _positive_float(growth_factor, "growth_factor", above_one=True)
        backoff = _positive_float(backoff_factor, "backoff_factor")
        if backoff >= 1.0:
            raise ValueError(
                "Expected `backoff_factor` to be in (0, 1). "
                f"Received: backoff_factor={_describe(backoff_factor)}"
            )
        self.backoff_factor = backoff
        if (
            not isinstance(growth_interval, int)
            or isinstance(growth_interval, bool)
            or growth_interval < 1
        ):
            raise ValueError(
                "Expected `growth_interval` to be a positive int. "
                f"Received: growth_interval={_describe(growth_interval)}"
            )
        self.growth_interval = growth_interval
        self._growth_tracker = 0
        # Per optimizer (by id) during one iteration: state and whether an inf/NaN was found.
        self._per_optimizer: dict[int, _OptimizerState] = {}
        self._skipped_steps = 0

    # ------------------------------------------------------------------ scaling
    def get_scale(self) -> float:
        """The current scale (a Python float)."""
        return self._scale

    @property
    def skipped_steps(self) -> int:
        """How many optimizer steps were skipped (non-finite gradients) since construction."""
        return self._skipped_steps

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss * scale``, computed in float32 (float64 stays float64): a tensor to ``backward``.

        Raises TypeError for a non-floating tensor (or a non-tensor).
        """
        if not isinstance(loss, torch.Tensor) or not loss.is_floating_point():
            got = loss.dtype if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise TypeError(f"Expected a floating-point loss tensor. Received: loss of type {got}")
        wide = loss if loss.dtype == torch.float64 else loss.float()
        return wide * self._scale

    def _state(self, optimizer: torch.optim.Optimizer) -> _OptimizerState:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "Expected a torch.optim.Optimizer. "
                f"Received: optimizer of type {type(optimizer).__name__}"
            )
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _READY, "found_inf": False})

    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Divide the gradients of ``optimizer``'s parameters by the scale, in place.

        Returns True when every gradient is finite. Call it at most once per optimizer between
        two :meth:`update` calls (e.g. before gradient clipping); :meth:`step` calls it if needed.
        """
        state = self._state(optimizer)
        if state["stage"] != _READY:
            raise RuntimeError(
                "unscale_() was already called on this optimizer since the last update(). "
                f"Received: an optimizer in stage {state['stage']!r}"
            )
        inv = 1.0 / self._scale
        finite = []
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    g = p.grad
                    if g is None:
                        continue
                    if g.is_sparse:
                        g = g.coalesce()
                        p.grad = g
                        g._values().mul_(inv)
                        finite.append(torch.isfinite(g._values()).all())
                    else:
                        g.mul_(inv)
                        finite.append(torch.isfinite(g).all())
        all_finite = bool(torch.stack(finite).all().item()) if finite else True
        state["stage"] = _UNSCALED
        state["found_inf"] = not all_finite
        return all_finite

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> float | None:
        """Unscale (if not done yet), then ``optimizer.step(*args, **kwargs)`` if all gradients
        are finite. Returns what ``optimizer.step`` returned, or None when the step is skipped."""
        state = self._state(optimizer)
        if state["stage"] == _STEPPED:
            raise RuntimeError(
                "step() was already called on this optimizer since the last update(). "
                "Received: a second step() before update()"
            )
        if state["stage"] == _READY:
            self.unscale_(optimizer)
        state["stage"] = _STEPPED
        if state["found_inf"]:
            self._skipped_steps += 1
            return None
        stepped: float | None = optimizer.step(*args, **kwargs)
        return stepped

    def update(self) -> None:
        """Adapt the scale after the iteration's ``step`` calls: halve it if any optimizer found
        a non-finite gradient (and restart the growth count), else count one finite step and
        grow the scale every ``growth_interval`` finite steps."""
        if not self._per_optimizer:
            raise RuntimeError(
                "update() needs a step() (or unscale_()) since the last update(). "
                "Received: no optimizer used in this iteration"
            )
        found_inf = any(s["found_inf"] for s in self._per_optimizer.values())
        self._per_optimizer.clear()
        if found_inf:
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
            return
        self._growth_tracker += 1
        if self._growth_tracker >= self.growth_interval:
            grown = self._scale * self.growth_factor
            if math.isfinite(grown):
                self._scale = grown
            self._growth_tracker = 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval``,
        ``growth_tracker`` and ``skipped_steps`` (plain Python numbers)."""
        return {
            "scale": self._scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "growth_tracker": self._growth_tracker,
            "skipped_steps": self._skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (every key is required; values are validated)."""
        expected = set(self.state_dict())
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"Expected a LossScaler state dict with keys {sorted(expected)}. Received: {got}"
            )
        other = LossScaler(
            init_scale=state["scale"],
            growth_factor=state["growth_factor"],
            backoff_factor=state["backoff_factor"],
            growth_interval=state["growth_interval"],
        )
        for key in ("growth_tracker", "skipped_steps"):
            v = state[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(
                    f"Expected `{key}` to be a non-negative int. Received: {key}={_describe(v)}"
                )
        self._scale = other._scale
        self.growth_factor = other.growth_factor
        self.backoff_factor = other.backoff_factor
        self.growth_interval = other.growth_interval
        self._growth_tracker = state["growth_tracker"]
        self._skipped_steps = state["skipped_steps"]
        self._per_optimizer.clear()

    def __repr__(self) -> str:
        return (
            f"LossScaler(scale={self._scale}, growth_interval={self.growth_interval}, "
            f"growth_tracker={self._growth_tracker})"
        )
