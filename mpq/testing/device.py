"""Capability markers for tests, in one place: CUDA, fp8-capable GPUs, Triton, the interpreter.

Each is a ``pytest.mark.skipif`` with a reason. Nothing here initialises CUDA on a machine
without a GPU: ``torch.cuda.is_available()`` is asked first, the device capability only after it.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

__all__ = [
    "cuda_capability",
    "has_cuda",
    "has_triton",
    "interpreter",
    "requires_cuda",
    "requires_sm89",
    "requires_triton",
    "triton_interpret_enabled",
]


def has_cuda() -> bool:
    """True when torch sees a CUDA device."""
    return torch.cuda.is_available()


def cuda_capability() -> tuple[int, int] | None:
    """Compute capability of the current CUDA device, or None without one."""
    if not has_cuda():
        return None
    major, minor = torch.cuda.get_device_capability()
    return (major, minor)


def has_triton() -> bool:
    """True when the triton package is installed (it is not imported)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpret_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1``, so Triton kernels run in the interpreter on CPU."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


requires_cuda = pytest.mark.skipif(not has_cuda(), reason="needs a CUDA device")
requires_sm89 = pytest.mark.skipif(
    (cuda_capability() or (0, 0)) < (8, 9),
    reason="needs a CUDA device of compute capability >= 8.9 (fp8 tensor cores: Ada, Hopper)",
)
requires_triton = pytest.mark.skipif(not has_triton(), reason="needs the triton package")
interpreter = pytest.mark.skipif(
    not (has_triton() and triton_interpret_enabled()),
    reason="runs Triton kernels in the interpreter on CPU: needs triton and TRITON_INTERPRET=1 "
    "set before the kernels are imported",
)
