"""Shared helpers of the kernel tests: device, tolerances, data, int4 packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpq import testing
from mpq.testing import device as capability

INTERPRET = capability.triton_interpret_enabled()
DEVICE = "cpu" if INTERPRET else "cuda"

requires_triton_device = pytest.mark.skipif(
    not capability.has_triton() or not (INTERPRET or capability.has_cuda()),
    reason="needs triton, and TRITON_INTERPRET=1 (set by tests/kernels/conftest.py) or a CUDA device",
)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, k: int) -> None:
    """Same shape and dtype, then values within mpq.testing's tolerances of ``dtype`` for a
    length-``k`` reduction (both sides accumulate in float32 and round once to ``dtype``)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    testing.assert_close(actual.cpu(), expected.cpu(), dtype, k=max(k, 1))


def rand(shape, dtype: torch.dtype, gen: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """Random test data in ``dtype``: N(0, 1) for floats (saturated for fp8), uniform for int8."""
    if dtype == torch.int8:
        return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8).to(device)
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        fmax = torch.finfo(dtype).max
        x = (x * 4).clamp(-fmax, fmax)
    return x.to(dtype).to(device)


def k_major(w: torch.Tensor) -> torch.Tensor:
    """The logical [K, N] operand of a contiguous [N, K] weight (b = w.t())."""
    return w.contiguous().t()


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 codes q [K, N] (values in [-8, 7]) two per byte along K -> int8 [ceil(K/2), N].

    Element 2i goes to the low nibble of byte i (test-side packing, written independently of
    the kernels' unpacking).
    """
    qn = q.to(torch.int64).numpy()
    k = qn.shape[0]
    if k % 2:
        qn = np.concatenate([qn, np.zeros((1, *qn.shape[1:]), np.int64)])
    nib = qn & 0xF
    byte = nib[0::2] | (nib[1::2] << 4)
    return torch.from_numpy(byte.astype(np.uint8).view(np.int8).copy())
