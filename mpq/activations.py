"""Activation functions by name, with Keras 3 names, defaults and (de)serialization.

`get(identifier)` resolves a name, a config or a callable; `serialize(fn)` gives it back.
A config resolves to a built-in or to a function the user registered
(`mpq.saving.register_serializable`) or passed in `custom_objects`; nothing is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mpq import _registry
from mpq._errors import describe as _describe
from mpq.policy import autocast

__all__ = [
    "ALL_ACTIVATIONS",
    "celu",
    "elu",
    "exponential",
    "gelu",
    "get",
    "glu",
    "hard_shrink",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "hard_tanh",
    "leaky_relu",
    "linear",
    "log_sigmoid",
    "log_softmax",
    "mish",
    "relu",
    "relu6",
    "selu",
    "serialize",
    "sigmoid",
    "silu",
    "soft_shrink",
    "softmax",
    "softplus",
    "softsign",
    "sparse_plus",
    "sparse_sigmoid",
    "sparsemax",
    "squareplus",
    "swish",
    "tanh",
    "tanh_shrink",
    "threshold",
]


def _stats_dtype(family: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype an op of `family` runs in for inputs of `dtype`, per the autocast rules
    (float16/bfloat16 -> float32 for "softmax"; float32/float64 kept)."""
    return autocast.op_dtype(family, dtype, dtype)


def relu(
    x: torch.Tensor,
    negative_slope: float = 0.0,
    max_value: float | None = None,
    threshold: float = 0.0,
) -> torch.Tensor:
    """Rectified linear unit, Keras 3 signature.

    `max(x, 0)` by default; values below `threshold` get `negative_slope * (x - threshold)`,
    and the result is capped at `max_value` when given. Any shape, dtype kept.

    >>> relu(torch.tensor([-1.0, 2.0]))
    tensor([0., 2.])
    """
    if negative_slope == 0.0 and max_value is None and threshold == 0.0:
        return F.relu(x)
    # positive part: x where x > threshold (else 0), capped at max_value
    pos = x * (x > threshold).to(x.dtype) if threshold != 0.0 else F.relu(x)
    if max_value is not None:
        pos = torch.clamp(pos, min=0.0, max=max_value)
    if negative_slope == 0.0:
        return pos
    return pos - negative_slope * F.relu(threshold - x)


def gelu(x: torch.Tensor, approximate: bool = False) -> torch.Tensor:
    """Gaussian error linear unit; exact erf form by default (Keras 3: `approximate=False`).

    >>> gelu(torch.zeros(2))
    tensor([0., 0.])
    """
    return F.gelu(x, approximate="tanh" if approximate else "none")


def silu(x: torch.Tensor) -> torch.Tensor:
    """`x * sigmoid(x)` (also known as swish). Any shape, dtype kept."""
    return F.silu(x)


swish = silu


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """`1 / (1 + exp(-x))`. Any shape, dtype kept."""
    return torch.sigmoid(x)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """Hyperbolic tangent. Any shape, dtype kept."""
    return torch.tanh(x)


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Softmax along `axis`; float16/bfloat16 inputs are computed in float32 (autocast rule
    "softmax") and the result is cast back to the input dtype.

    >>> softmax(torch.zeros(2, 4)).sum(-1)
    tensor([1., 1.])
    """
    out_dtype = x.dtype
    return torch.softmax(x, dim=axis, dtype=_stats_dtype("softmax", x.dtype)).to(out_dtype)


def log_softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Log-softmax along `axis`, computed like `softmax` (float32 for half inputs)."""
    out_dtype = x.dtype
    return torch.log_softmax(x, dim=axis, dtype=_stats_dtype("softmax", x.dtype)).to(out_dtype)


def linear(x: torch.Tensor) -> torch.Tensor:
    """Identity: returns `x` unchanged."""
    return x


def relu6(x: torch.Tensor) -> torch.Tensor:
    """`min(max(x, 0), 6)`."""
    return F.relu6(x)


def leaky_relu(x: torch.Tensor, negative_slope: float = 0.2) -> torch.Tensor:
    """Leaky ReLU with Keras 3's default slope 0.2."""
    return F.leaky_relu(x, negative_slope)


def elu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Exponential linear unit."""
    return F.elu(x, alpha)


def selu(x: torch.Tensor) -> torch.Tensor:
    """Scaled exponential linear unit."""
    return F.selu(x)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """`log(1 + exp(x))`."""
    return F.softplus(x)


def softsign(x: torch.Tensor) -> torch.Tensor:
    """`x / (1 + |x|)`."""
    return F.softsign(x)


def exponential(x: torch.Tensor) -> torch.Tensor:
    """`exp(x)`."""
    return torch.exp(x)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Piecewise linear sigmoid `clip(x / 6 + 0.5, 0, 1)` (Keras 3 definition)."""
    return F.hardsigmoid(x)


def mish(x: torch.Tensor) -> torch.Tensor:
    """`x * tanh(softplus(x))`."""
    return F.mish(x)


# --- The activations Keras 3 added (Keras 3.15 names, definitions and default arguments) ---


def hard_silu(x: torch.Tensor) -> torch.Tensor:
    """Hard SiLU (hard swish): `0` for `x < -3`, `x` for `x > 3`, `x * (x + 3) / 6` between.

    >>> hard_silu(torch.tensor([-4.0, 0.0, 4.0]))
    tensor([-0., 0., 4.])
    """
    return F.hardswish(x)


hard_swish = hard_silu


def celu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Continuously differentiable ELU: `x` for `x >= 0`, `alpha * (exp(x / alpha) - 1)` below."""
    return F.celu(x, alpha)


def glu(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Gated linear unit: `a * sigmoid(b)` where `a, b` are the first and second halves of `x`
    along `axis` (its size must be even; the output has half of it).

    >>> glu(torch.zeros(2, 4)).shape
    torch.Size([2, 2])
    """
    return F.glu(x, dim=axis)


def hard_shrink(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """`x` where `|x| > threshold`, else `0`."""
    return F.hardshrink(x, threshold)


def hard_tanh(x: torch.Tensor) -> torch.Tensor:
    """`clip(x, -1, 1)`."""
    return F.hardtanh(x, -1.0, 1.0)


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """`log(1 / (1 + exp(-x)))`, computed stably (`-softplus(-x)`)."""
    return F.logsigmoid(x)


def soft_shrink(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """`x - threshold` above `threshold`, `x + threshold` below `-threshold`, else `0`."""
    return F.softshrink(x, threshold)


def sparse_plus(x: torch.Tensor) -> torch.Tensor:
    """`0` for `x <= -1`, `(x + 1)**2 / 4` for `-1 < x < 1`, `x` for `x >= 1`."""
    return torch.where(x <= -1, torch.zeros_like(x), torch.where(x < 1, 0.25 * (x + 1) ** 2, x))


def sparse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """`0` for `x <= -1`, `(x + 1) / 2` for `-1 < x < 1`, `1` for `x >= 1`."""
    return torch.clamp(0.5 * (x + 1), 0.0, 1.0)


def sparsemax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Sparsemax (Martins and Astudillo, 2016): the Euclidean projection of `x` onto the
    probability simplex along `axis`, `max(x - tau, 0)` with `tau` chosen so the result sums
    to 1. Computed in float32 for float16/bfloat16 inputs (like softmax).

    Keras 3.15's backends compute `tau` from the sum of the cumulative sums over the support
    instead of the cumulative sum at its end, which agrees with the definition only when the
    support has one element (else the result does not sum to 1); mpq follows the definition
    (docs/layers.md, "Coming from Keras").

    >>> sparsemax(torch.tensor([1.0, 0.5, 0.0]))
    tensor([0.7500, 0.2500, 0.0000])
    """
    out_dtype = x.dtype
    z = x.to(_stats_dtype("softmax", x.dtype))
    z_sorted = torch.sort(z, dim=axis, descending=True).values
    cumsum = torch.cumsum(z_sorted, dim=axis)
    shape = [1] * z.ndim
    shape[axis] = -1
    r = torch.arange(1, z.shape[axis] + 1, device=z.device, dtype=z.dtype).reshape(shape)
    support = 1 + r * z_sorted > cumsum  # a prefix of the sorted values (never empty)
    k = support.sum(dim=axis, keepdim=True)
    cumsum_k = torch.gather(cumsum, axis if axis >= 0 else z.ndim + axis, k - 1)
    tau = (cumsum_k - 1) / k.to(z.dtype)
    return torch.clamp(z - tau, min=0.0).to(out_dtype)


def squareplus(x: torch.Tensor, b: float = 4) -> torch.Tensor:
    """`(x + sqrt(x**2 + b)) / 2`, a smooth approximation of relu (`b >= 0`)."""
    return (x + torch.sqrt(x**2 + b)) / 2


def tanh_shrink(x: torch.Tensor) -> torch.Tensor:
    """`x - tanh(x)`."""
    return F.tanhshrink(x)


def threshold(x: torch.Tensor, threshold: float, default_value: float) -> torch.Tensor:
    """`x` where `x > threshold`, else `default_value` (both arguments required, as in Keras).

    >>> threshold(torch.tensor([1.0, 0.5, 0.0]), 0.5, -1.0)
    tensor([ 1., -1., -1.])
    """
    return F.threshold(x, threshold, default_value)


ALL_ACTIVATIONS: dict[str, Callable[..., torch.Tensor]] = {
    fn.__name__: fn
    for fn in (
        relu,
        gelu,
        silu,
        sigmoid,
        tanh,
        softmax,
        log_softmax,
        linear,
        relu6,
        leaky_relu,
        elu,
        selu,
        softplus,
        softsign,
        exponential,
        hard_sigmoid,
        mish,
        hard_silu,
        celu,
        glu,
        hard_shrink,
        hard_tanh,
        log_sigmoid,
        soft_shrink,
        sparse_plus,
        sparse_sigmoid,
        sparsemax,
        squareplus,
        tanh_shrink,
        threshold,
    )
}
# Keras' aliases: resolve by name, serialize as the function's own name
_ALIASES = {"swish": silu, "hard_swish": hard_silu}
ALL_ACTIVATIONS.update(_ALIASES)

_NAME_OF = {id(fn): name for name, fn in ALL_ACTIVATIONS.items() if name not in _ALIASES}


def get(identifier: str | dict[str, Any] | Callable[..., Any] | None) -> Callable[..., Any]:
    """Resolve an activation: None -> `linear`, a name (e.g. "gelu", or the name of a function
    registered with `mpq.saving.register_serializable` or in a `custom_objects` scope), a
    callable (returned as is), or a dict produced by `serialize`.

    >>> get("relu") is relu
    True
    >>> get(None) is linear
    True
    """
    if identifier is None:
        return linear
    if isinstance(identifier, str):
        fn = ALL_ACTIVATIONS.get(identifier) or _callable(_registry.lookup(identifier))
        if fn is None:
            raise ValueError(
                f"Expected an activation name among {sorted(ALL_ACTIVATIONS)}, the name of a "
                "registered or custom object, a callable or None. "
                f"Received: activation={_describe(identifier)}"
            )
        return fn
    if isinstance(identifier, dict):
        return _from_config(identifier)
    if callable(identifier):
        return identifier
    raise TypeError(
        "Expected an activation name, a callable, a serialized activation dict or None. "
        f"Received: activation={_describe(identifier)}"
    )


def _callable(obj: Any) -> Callable[..., Any] | None:
    return obj if callable(obj) else None


def serialize(activation: str | Callable[..., Any] | None) -> str | dict[str, str] | None:
    """The config form of an activation: its name for built-ins, else a dict
    `{"module": ..., "function_name": ...}` naming a module-level function, plus
    `"registered_name"` when it was registered with `mpq.saving.register_serializable`.
    `get` resolves the dict from the registered name or from `custom_objects`
    (`function_name` as the key), never by importing `module`. Lambdas and nested functions
    cannot be serialized.

    >>> serialize(gelu)
    'gelu'
    """
    if activation is None:
        return None
    if isinstance(activation, str):
        return serialize(get(activation))
    name = _NAME_OF.get(id(activation))
    if name is not None:
        return name
    qualname = getattr(activation, "__qualname__", None)
    module = getattr(activation, "__module__", None)
    registered = _registry.registered_name(activation)
    if registered is not None:  # resolved by this name, so any function (nested too) will do
        return {
            "module": str(module),
            "function_name": activation.__name__,
            "registered_name": registered,
        }
    if not callable(activation) or qualname is None or module is None:
        raise TypeError(
            "Expected a built-in activation or a module-level function to serialize. "
            f"Received: activation={_describe(activation)}"
        )
    if "<" in qualname or "." in qualname:
        raise ValueError(
            "Expected a built-in activation or a module-level function to serialize; "
            f"lambdas, nested functions and methods cannot be rebuilt from a config. "
            f"Received: activation={activation!r} (qualified name {qualname!r})"
        )
    return {"module": module, "function_name": qualname}


_CONFIG_KEYS = ("module", "function_name", "registered_name")


def _from_config(config: dict[str, Any]) -> Callable[..., Any]:
    if not {"module", "function_name"} <= set(config) <= set(_CONFIG_KEYS) or not all(
        isinstance(config[k], str) for k in config
    ):
        raise ValueError(
            "Expected a serialized activation: a dict with the string keys 'module' and "
            f"'function_name' (and optionally 'registered_name'). Received: activation={config!r}"
        )
    fn = _callable(_registry.lookup(config.get("registered_name"), config["function_name"]))
    if fn is None:
        raise ValueError(
            "Expected an activation registered with @mpq.saving.register_serializable() or "
            "passed in custom_objects (nothing is imported by name from a config). "
            f"Received: activation={config!r}"
        )
    return fn
