"""Weight initializers with Keras 3 names, arguments and fan rules, producing torch tensors.

Use them by name (``"glorot_uniform"``), by config dict or as objects; ``seed=`` makes them
deterministic (a seeded initializer draws a reproducible sequence, Keras 3 semantics).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from typing_extensions import Self

from mpq import dtypes as _dtypes
from mpq._catalog import Catalog
from mpq.dtypes import DTypeLike

__all__ = [
    "Constant",
    "GlorotNormal",
    "GlorotUniform",
    "HeNormal",
    "HeUniform",
    "Identity",
    "Initializer",
    "LecunNormal",
    "LecunUniform",
    "Ones",
    "Orthogonal",
    "RandomNormal",
    "RandomUniform",
    "TruncatedNormal",
    "VarianceScaling",
    "Zeros",
    "compute_fans",
    "deserialize",
    "get",
    "serialize",
]


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` of a weight shape, as Keras computes them.

    Scalars: (1, 1); vectors: (n, n); matrices ``[in, out]``: (in, out); conv kernels
    ``[*spatial, in, out]``: in and out each times the receptive field ``prod(spatial)``.

    >>> compute_fans((3, 3, 16, 32))
    (144, 288)
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def _torch_dtype(dtype: Any) -> torch.dtype:
    return _dtypes.to_torch_dtype(dtype if dtype is not None else "float32")


def _check_seed(seed: object) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(
            f"Expected `seed` to be None or an int. Received: seed={seed!r} (of type {type(seed).__name__})"
        )
    return seed


class Initializer:
    """Base class: ``init(shape, dtype=None) -> torch.Tensor`` on the default device."""

    def __call__(self, shape: Sequence[int], dtype: DTypeLike | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(shape, dtype).")

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(**config)

    def clone(self) -> Self:
        return type(self).from_config(self.get_config())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class _RandomInitializer(Initializer):
    """Random initializer: ``seed=None`` uses torch's global RNG, an int seed a private one."""

    def __init__(self, seed: int | None = None):
        self.seed = _check_seed(seed)
        self._generator: torch.Generator | None = None

    def _gen(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def __call__(self, shape: Sequence[int], dtype: DTypeLike | None = None) -> torch.Tensor:
        tdtype = _torch_dtype(dtype)
        if not tdtype.is_floating_point:
            raise ValueError(
                f"{type(self).__name__} only produces floating values. Expected a float dtype. "
                f"Received: dtype={dtype!r}"
            )
        dims = tuple(int(d) for d in shape)
        # Draw in float32 (float64 for float64 variables) on the CPU, then cast: the values
        # then do not depend on the target dtype or device, and the seed stays reproducible.
        work = torch.float64 if tdtype == torch.float64 else torch.float32
        values = self._draw(dims, work, self._gen())
        return values.to(device=torch.get_default_device(), dtype=tdtype)

    def _draw(
        self, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"seed": self.seed}


class Zeros(Initializer):
    """All zeros (any dtype)."""

    def __call__(self, shape: Sequence[int], dtype: DTypeLike | None = None) -> torch.Tensor:
        return torch.zeros(tuple(shape), dtype=_torch_dtype(dtype))


class Ones(Initializer):
    """All ones (any dtype)."""

    def __call__(self, shape: Sequence[int], dtype: DTypeLike | None = None) -> torch.Tensor:
        return torch.ones(tuple(shape), dtype=_torch_dtype(dtype))


class Constant(Initializer):
    """Every entry set to ``value`` (a scalar)."""

    def __init__(self, value: float = 0.0):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"Expected `value` to be a Python scalar. Received: value={value!r} "
                f"(of type {type(value).__name__})"
            )
        self.value = value

    def __call__(self, shape: Sequence[int], dtype: DTypeLike | None = None) -> torch.Tensor:
        return torch.full(tuple(shape), self.value, dtype=_torch_dtype(dtype))

    def get_config(self) -> dict[str, Any]:
        return {"value": self.value}


class Identity(Initializer):
    """``gain * eye`` for a 2D shape."""

    def __init__(self, gain: float = 1.0):
        self.gain = gain

    def __call__(self, shape: Sequence[int], dtype: DTypeLike | None = None) -> torch.Tensor:
        if len(shape) != 2:
            raise ValueError(
                f"Identity initializer requires a 2D shape. Received: shape={tuple(shape)}"
            )
        return (self.gain * torch.eye(*shape, dtype=torch.float64)).to(_torch_dtype(dtype))

    def get_config(self) -> dict[str, Any]:
        return {"gain": self.gain}


class RandomNormal(_RandomInitializer):
    """Normal(mean, stddev)."""

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None):
        super().__init__(seed)
        self.mean, self.stddev = mean, stddev

    def _draw(
        self, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator | None
    ) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype).normal_(self.mean, self.stddev, generator=gen)

    def get_config(self) -> dict[str, Any]:
        return {"mean": self.mean, "stddev": self.stddev, **super().get_config()}


class RandomUniform(_RandomInitializer):
    """Uniform[minval, maxval)."""

    def __init__(self, minval: float = -0.05, maxval: float = 0.05, seed: int | None = None):
        super().__init__(seed)
        self.minval, self.maxval = minval, maxval

    def _draw(
        self, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator | None
    ) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype).uniform_(self.minval, self.maxval, generator=gen)

    def get_config(self) -> dict[str, Any]:
        return {"minval": self.minval, "maxval": self.maxval, **super().get_config()}


def _truncated_normal(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    gen: torch.Generator | None,
    mean: float,
    stddev: float,
) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype)
    return torch.nn.init.trunc_normal_(
        out, mean, stddev, a=mean - 2 * stddev, b=mean + 2 * stddev, generator=gen
    )


class TruncatedNormal(_RandomInitializer):
    """Normal(mean, stddev) with values beyond 2 stddev redrawn (Keras semantics)."""

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None):
        super().__init__(seed)
        self.mean, self.stddev = mean, stddev

    def _draw(
        self, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator | None
    ) -> torch.Tensor:
        return _truncated_normal(shape, dtype, gen, self.mean, self.stddev)

    def get_config(self) -> dict[str, Any]:
        return {"mean": self.mean, "stddev": self.stddev, **super().get_config()}


_MODES = ("fan_in", "fan_out", "fan_avg")
_DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")


class VarianceScaling(_RandomInitializer):
    """Scale ``/ fan`` variance; the base of Glorot, He and LeCun initializers."""

    def __init__(
        self,
        scale: float = 1.0,
        mode: str = "fan_in",
        distribution: str = "truncated_normal",
        seed: int | None = None,
    ):
        super().__init__(seed)
        if not scale > 0.0:
            raise ValueError(f"Expected `scale` > 0. Received: scale={scale!r}")
        if mode not in _MODES:
            raise ValueError(f"Expected `mode` in {_MODES}. Received: mode={mode!r}")
        if distribution not in _DISTRIBUTIONS:
            raise ValueError(
                f"Expected `distribution` in {_DISTRIBUTIONS}. Received: distribution={distribution!r}"
            )
        self.scale, self.mode, self.distribution = scale, mode, distribution

    def _draw(
        self, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator | None
    ) -> torch.Tensor:
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, fan)
        if self.distribution == "truncated_normal":
            # Stddev of a unit normal truncated to [-2, 2]: undo its shrinkage.
            stddev = math.sqrt(scale) / 0.87962566103423978
            return _truncated_normal(shape, dtype, gen, 0.0, stddev)
        if self.distribution == "untruncated_normal":
            return torch.empty(shape, dtype=dtype).normal_(0.0, math.sqrt(scale), generator=gen)
        limit = math.sqrt(3.0 * scale)
        return torch.empty(shape, dtype=dtype).uniform_(-limit, limit, generator=gen)

    def get_config(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
            **super().get_config(),
        }


class _FixedVarianceScaling(VarianceScaling):
    _args: tuple[float, str, str] = (1.0, "fan_in", "truncated_normal")

    def __init__(self, seed: int | None = None):
        super().__init__(*self._args, seed=seed)

    def get_config(self) -> dict[str, Any]:
        return {"seed": self.seed}


class GlorotUniform(_FixedVarianceScaling):
    """Uniform in ``±sqrt(6 / (fan_in + fan_out))``."""

    _args = (1.0, "fan_avg", "uniform")


class GlorotNormal(_FixedVarianceScaling):
    """Truncated normal, stddev ``sqrt(2 / (fan_in + fan_out))``."""

    _args = (1.0, "fan_avg", "truncated_normal")


class HeUniform(_FixedVarianceScaling):
    """Uniform in ``±sqrt(6 / fan_in)``."""

    _args = (2.0, "fan_in", "uniform")


class HeNormal(_FixedVarianceScaling):
    """Truncated normal, stddev ``sqrt(2 / fan_in)``."""

    _args = (2.0, "fan_in", "truncated_normal")


class LecunNormal(_FixedVarianceScaling):
    """Truncated normal, stddev ``sqrt(1 / fan_in)``."""

    _args = (1.0, "fan_in", "truncated_normal")


class LecunUniform(_FixedVarianceScaling):
    """Uniform in ``±sqrt(3 / fan_in)``."""

    _args = (1.0, "fan_in", "uniform")


class Orthogonal(_RandomInitializer):
    """(Semi-)orthogonal matrix of the flattened shape ``[prod(shape[:-1]), shape[-1]]``, times gain."""

    def __init__(self, gain: float = 1.0, seed: int | None = None):
        super().__init__(seed)
        self.gain = gain

    def _draw(
        self, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator | None
    ) -> torch.Tensor:
        if len(shape) < 2:
            raise ValueError(
                f"Orthogonal initializer requires a shape of rank >= 2. Received: shape={shape}"
            )
        rows, cols = math.prod(shape[:-1]), shape[-1]
        flat = torch.empty((max(rows, cols), min(rows, cols)), dtype=torch.float64)
        flat.normal_(0.0, 1.0, generator=gen)
        q: torch.Tensor
        r: torch.Tensor
        q, r = torch.linalg.qr(flat)
        q = q * torch.sign(torch.diagonal(r))
        if rows < cols:
            q = q.T
        return (self.gain * q).reshape(shape).to(dtype)

    def get_config(self) -> dict[str, Any]:
        return {"gain": self.gain, **super().get_config()}


_ALIASES: dict[str, type[Initializer]] = {
    "zeros": Zeros,
    "ones": Ones,
    "constant": Constant,
    "identity": Identity,
    "random_normal": RandomNormal,
    "random_uniform": RandomUniform,
    "truncated_normal": TruncatedNormal,
    "variance_scaling": VarianceScaling,
    "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal,
    "he_uniform": HeUniform,
    "he_normal": HeNormal,
    "lecun_normal": LecunNormal,
    "lecun_uniform": LecunUniform,
    "orthogonal": Orthogonal,
}


_CATALOG = Catalog("initializer", Initializer, _ALIASES, _ALIASES.values())


def serialize(initializer: Initializer | Callable[..., Any] | None) -> dict[str, Any] | None:
    """Config dict ``{"class_name", "config"}`` (None stays None)."""
    return _CATALOG.serialize(initializer)


def deserialize(config: dict[str, Any]) -> Initializer:
    """Inverse of :func:`serialize`."""
    return _CATALOG.deserialize(config)


def get(identifier: object) -> Initializer | Callable[..., Any] | None:
    """Resolve a name, a config dict, an Initializer or a callable; None stays None.

    >>> get("he_normal")(( 4, 8)).shape
    torch.Size([4, 8])
    """
    return _CATALOG.get(identifier)
