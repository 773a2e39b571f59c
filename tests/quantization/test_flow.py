"""How ``mpq.quantize(model, "int4")`` flows: the layer-side hooks (``mpq/layers/quantization.py``)
and the scheme side (the ``mpq/quantization`` package) are not interleaved. A profiler probe
counts the calls into either side and the calls that cross from one side to the other."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

import torch

import mpq
from mpq.layers import Dense, Sequential
from mpq.quantization import QuantizationConfig

_ROOT = Path(mpq.__file__).resolve().parent
_LAYER_SIDE = str(_ROOT / "layers" / "quantization.py")
_SCHEME_SIDE = str(_ROOT / "quantization") + "/"


def _side(frame: FrameType | None) -> str | None:
    if frame is None:
        return None
    path = frame.f_code.co_filename
    if path == _LAYER_SIDE:
        return "layer"
    if path.startswith(_SCHEME_SIDE):
        return "scheme"
    return None


def _nearest_side(frame: FrameType | None) -> str | None:
    while frame is not None:
        side = _side(frame)
        if side is not None:
            return side
        frame = frame.f_back
    return None


def probe(fn: Any, *args: Any, **kwargs: Any) -> dict[str, int]:
    """Run ``fn(*args, **kwargs)`` under ``sys.setprofile``: the number of Python calls into each
    side, and of crossings (a call into one side whose nearest calling frame on either side is
    on the other side)."""
    counts = {"layer": 0, "scheme": 0, "crossings": 0}

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        side = _side(frame)
        if side is None:
            return
        counts[side] += 1
        caller = _nearest_side(frame.f_back)
        if caller is not None and caller != side:
            counts["crossings"] += 1

    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        fn(*args, **kwargs)
    finally:
        sys.setprofile(previous)
    return counts


def three_dense() -> Sequential:
    model = Sequential([Dense(8), Dense(8), Dense(4)])
    model(torch.ones(2, 16))
    return model


def test_model_quantize_crosses_sides_once_per_layer():
    """Each layer of the model is looked up once in the registry (the only call from the scheme
    side into the layer side); validation binds the per-layer schemes and applying attaches
    them without going back through ``Layer.quantize``. Before the one-pass redesign the same
    call crossed 16 times (the registry twice per layer, then resolve and quantize per layer)."""
    model = three_dense()
    counts = probe(mpq.quantize, model, "int4")
    layers = 4  # the Sequential and its three Dense layers
    assert counts["crossings"] == layers
    assert counts["layer"] <= 3 * layers  # the registry lookups and the mode check in them
    assert all(layer.quantization_scheme is not None for layer in model.layers)


def test_layer_quantize_asks_the_scheme_once():
    layer = Dense(8)
    layer.build((None, 16))
    counts = probe(layer.quantize, "int4")
    assert counts["crossings"] == 1
    assert layer.quantization_mode == "int4"


def test_the_probe_counts_a_crossing_in_each_direction():
    """The probe sees calls both ways: the scheme side calling a layer-side function counts."""
    from mpq.layers.quantization import get_scheme

    layer = Dense(2)  # built by the scheme: Scheme.build -> float_build (layer side)
    counts = probe(get_scheme(Dense, "int8").build, layer, (None, 3), QuantizationConfig("int8"))
    assert counts["crossings"] == 1
    assert layer.built
