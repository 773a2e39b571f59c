"""Files saved by the previous format of quantized layers (before issue 18 made a layer's
quantized state one scheme object) still load and compute the same outputs.

The files in tests/saving/data/quantized_v1_* were written by data/make_quantized_v1.py with the
code of the commit that added them: an mpq.saving file and a torch ``state_dict`` (safetensors)
per model, and the inputs and outputs of each model.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from mpq import saving
from mpq.testing import assert_close
from tests.saving.data.make_quantized_v1 import build

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
EXPECTED = load_file(os.path.join(DATA, "quantized_v1_expected.safetensors"))
with open(os.path.join(DATA, "quantized_v1_keys.json")) as _f:
    KEYS: dict[str, list[str]] = json.load(_f)

# Integer-accumulated paths (int8 x int8 -> int32, then elementwise float scales) give the same
# bits on every CPU; float-accumulated ones (weight-only int4, float8 emulation, LoRA's float
# term) may not across CPUs (oneDNN picks algorithms by CPU): compared within float32 tolerance
# for their K = 8 reduction.
EXACT = {"dense_int8", "conv_int8", "einsum_int8"}
NAMES = sorted(KEYS)


def _check_output(name: str, model: torch.nn.Module) -> None:
    model.eval()
    with torch.no_grad():
        out = model(EXPECTED[f"{name}/input"])
    want = EXPECTED[f"{name}/output"]
    if name in EXACT:
        assert out.dtype == want.dtype and out.shape == want.shape
        assert torch.equal(out, want), name
    else:
        assert_close(out, want, torch.float32, k=8, msg=name)


def _check_state(name: str, model: torch.nn.Module) -> None:
    sd = load_file(os.path.join(DATA, f"quantized_v1_{name}.state_dict.safetensors"))
    params = dict(model.named_parameters())
    for key, value in sd.items():
        got = params[key] if key in params else model.state_dict()[key]
        assert got.dtype == value.dtype and got.shape == value.shape, key
        assert torch.equal(
            got.detach().view(-1).view(torch.uint8), value.view(-1).view(torch.uint8)
        ), key


def test_fixture_set_is_complete():
    assert (
        sorted(
            [
                "conv_int8",
                "dense_float8",
                "dense_int4",
                "dense_int4_g",
                "dense_int8",
                "einsum_int8",
                "lora_int8",
            ]
        )
        == NAMES
    )


@pytest.mark.parametrize("name", NAMES)
def test_previous_format_file_loads(name):
    model = saving.load(os.path.join(DATA, f"quantized_v1_{name}.safetensors"))
    _check_state(name, model)
    _check_output(name, model)


@pytest.mark.parametrize("name", NAMES)
def test_previous_state_dict_keys_load(name):
    """A ``state_dict`` of the previous format loads (strict) into a freshly quantized model."""
    model = build()[0][name]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    sd = load_file(os.path.join(DATA, f"quantized_v1_{name}.state_dict.safetensors"))
    model.load_state_dict(sd, strict=True)
    _check_state(name, model)
    _check_output(name, model)
