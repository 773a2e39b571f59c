"""Shared helpers of the kernel tests: device, tolerances, data, int4 packing."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "").strip().lower() in (
    "1",
    "true",
    "yes",
    "on",
    "y",
)
DEVICE = "cpu" if INTERPRET else "cuda"

requires_triton_device = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(),
    reason="needs TRITON_INTERPRET=1 (set by tests/kernels/conftest.py) or a CUDA device",
)

def tolerance(dtype: torch.dtype, k: int) -> tuple[float, float]:
    """(rtol, atol) for comparing two float32-accumulated results cast to ``dtype``.

    rtol: one unit of ``dtype`` (the final cast may round either way); atol: the float32
    accumulation-order error bound for a length-``k`` reduction of O(1) terms, plus one ulp at 1.
    Local to the kernel tests until ``mpq.testing.tolerance`` lands on main; its float32 atol
    (4 eps sqrt(k)) targets float64 oracles, not two float32 summation orders.
    """
    eps = torch.finfo(dtype).eps
    return eps, max(k, 1) * 2.0**-22 + eps


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, k: int) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    rtol, atol = tolerance(dtype, k)
    torch.testing.assert_close(
        actual.cpu().to(torch.float64),
        expected.cpu().to(torch.float64),
        rtol=rtol,
        atol=atol,
        equal_nan=True,
    )


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
