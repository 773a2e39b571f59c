"""Checks of the sweep tests' own helper models (tests/sweep/_helpers.py)."""

from __future__ import annotations

import torch

from tests.sweep._helpers import TinyNet, nan_in_half


def test_tiny_net_honours_policy():
    m = TinyNet("mixed_float16")
    assert m.fc1.weight.dtype == torch.float32
    assert m(torch.zeros(2, 4)).dtype == torch.float16
    assert TinyNet("bfloat16").fc2.weight.dtype == torch.bfloat16


def test_nan_model_is_finite_in_float32_only():
    x = torch.ones(2, 4)
    torch.manual_seed(0)
    m32, _ = nan_in_half("float32")
    m16, _ = nan_in_half("float16")
    m16.load_state_dict({k: v.half() for k, v in m32.state_dict().items()})
    assert torch.isfinite(m32(x)).all()
    assert torch.isnan(m16(x)).any()
