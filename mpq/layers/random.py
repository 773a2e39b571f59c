"""Seeded random draws whose state is a variable: ``SeedGenerator`` and ``uniform``.

As Keras 3's ``keras.random.SeedGenerator``: the generator's state is a non-trainable int64
``Variable`` ``[seed, counter]``, so it is listed in ``layer.variables`` /
``non_trainable_variables`` (not in ``weights``), ``stateless_call`` takes and returns it (a call
is reproducible from the values given), and a rematerialized call redraws the same numbers.

The numbers come from a counter-based hash computed with int64 tensor ops on the tensor's own
device (no host round trip, no ``torch.Generator``). Every step is exact integer arithmetic
(no int64 overflow; the 24-bit result times 2**-24 is exact in float32), so the numbers depend
on the seed only, not on the device (checked on CPU; no GPU was available to run it on).
"""

from __future__ import annotations

from typing import Any

import torch

from mpq._errors import describe as _describe
from mpq.layers.autocast import stateless_value
from mpq.layers.variables import Variable

__all__ = ["SeedGenerator", "uniform"]

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow (16-bit halves)."""
    lo = (x & 0xFFFF) * c
    hi = ((x >> 16) * c) & 0xFFFF
    return (lo + (hi << 16)) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (the "lowbias32" mix of C. Wellons), in int64."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class SeedGenerator(torch.nn.Module):
    """A seed and a draw counter in a non-trainable int64 ``Variable`` (``state``); the draws
    use the seed's low 32 bits.

    Each ``next()`` returns the current ``[seed, counter]`` and advances the counter (through
    ``assign_add``: inside ``stateless_call`` the advance is returned, not written).

    >>> g = SeedGenerator(7); g.next().tolist(), g.next().tolist()
    ([7, 0], [7, 1])
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        if not isinstance(seed, int) or isinstance(seed, bool) or not -(2**63) <= seed < 2**63:
            raise ValueError(
                f"Expected `seed` to be an int64 integer. Received: seed={_describe(seed)}"
            )
        state = Variable(
            torch.tensor([seed, 0], dtype=torch.int64),
            name="seed_generator_state",
            trainable=False,
            autocast=False,
        )
        state.__dict__["_kind"] = "seed"
        self.state = state

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("_parameters")
        if params is not None and name in params:
            return stateless_value(params[name])
        return torch.nn.Module.__getattr__(self, name)

    def next(self) -> torch.Tensor:
        state = self.state
        current = state.detach().clone()
        state.assign_add(torch.tensor([0, 1], dtype=torch.int64, device=current.device))
        return current


def uniform(shape: tuple[int, ...], seed: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 values in [0, 1) (multiples of 2**-24) for ``seed = [seed, counter]``: the hash of
    (element index, counter, seed), computed on ``device``."""
    n = 1
    for s in shape:
        n *= int(s)
    seed = seed.to(device)
    key = _hash32((seed[0] & _MASK32) ^ _hash32(seed[1] & _MASK32))
    index = torch.arange(n, dtype=torch.int64, device=device) & _MASK32
    bits = _hash32(_hash32(index ^ key) ^ (key >> 7))
    return ((bits >> 8).to(torch.float32) * (1.0 / (1 << 24))).reshape(shape)
