"""`calibrate(model, batches)`: run sample data through a model to set the static activation
scales of its float8 inference layers (``QuantizationConfig("float8", scaling="static")``).

The batches run in eval mode under ``torch.no_grad()``: no dropout, no BatchNorm statistics
update, no delayed-scaling history moves, no gradients; only ``inputs_amax`` of the static layers
changes. Each module's training flag is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from mpq._errors import describe as _describe
from mpq.layers import Layer
from mpq.quantization import _common as C
from mpq.quantization import float8_static

__all__ = ["CalibrationReport", "calibrate"]


@dataclass
class CalibrationReport:
    """What :func:`calibrate` did.

    Attributes:
        batches: how many batches ran.
        inputs_amax: layer path -> the largest ``|input|`` it saw (its static input scale is
            that / 448).
        uncalibrated: static layers that no batch reached: they keep dynamic per-call scaling.
    """

    batches: int = 0
    inputs_amax: dict[str, float] = field(default_factory=dict)
    uncalibrated: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"calibrate: {self.batches} batches, {len(self.inputs_amax)} static layers"]
        lines += [f"  {path}: inputs amax {v:.6g}" for path, v in self.inputs_amax.items()]
        lines += [f"  {path}: not reached (dynamic scaling)" for path in self.uncalibrated]
        return "\n".join(lines)


def _static_layers(model: torch.nn.Module) -> list[tuple[str, Layer]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, Layer) and float8_static.is_static(m)
    ]


def _run(model: torch.nn.Module, batch: Any) -> None:
    if isinstance(batch, torch.Tensor):
        model(batch)
    elif isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        raise TypeError(
            "Expected each calibration batch to be a tensor, a tuple/list of positional "
            f"arguments or a dict of keyword arguments. Received: batch={_describe(batch)}"
        )


def calibrate(model: torch.nn.Module, batches: Iterable[Any]) -> CalibrationReport:
    """Set the static input scales of ``model``'s float8 inference layers from ``batches``.

    Args:
        model: an mpq layer or model, or a torch module holding mpq layers (``from_torch``),
            with layers quantized as ``QuantizationConfig("float8", scaling="static")``.
        batches: an iterable of model inputs: each a tensor (``model(batch)``), a tuple/list
            (``model(*batch)``) or a dict (``model(**batch)``).

    Every static layer's ``inputs_amax`` is reset, then set to the largest ``|input|`` it sees
    over all batches; its calls then quantize inputs with ``inputs_amax / 448`` (larger
    values saturate). A batch that raises leaves every layer as it was before the call.

    Returns:
        a :class:`CalibrationReport`.

    Example:
        >>> import mpq
        >>> from mpq.layers import Dense, Sequential
        >>> from mpq.quantization import QuantizationConfig
        >>> model = Sequential([Dense(8), Dense(2)])
        >>> _ = model(torch.ones(1, 4))
        >>> _ = mpq.quantize(model, QuantizationConfig("float8", scaling="static"))
        >>> report = mpq.calibrate(model, [torch.full((3, 4), 2.0), torch.full((3, 4), -5.0)])
        >>> report.batches, list(report.inputs_amax.values())[0]
        (2, 5.0)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"Expected a torch.nn.Module to calibrate. Received: model={_describe(model)}"
        )
    if isinstance(batches, (torch.Tensor, dict)) or not isinstance(batches, Iterable):
        raise TypeError(
            "Expected `batches` to be an iterable of batches (e.g. a list of tensors or a "
            f"DataLoader). Received: batches={_describe(batches)}"
        )
    layers = _static_layers(model)
    if not layers:
        raise ValueError(
            "Expected a model with float8 inference layers to calibrate (quantized with "
            "QuantizationConfig('float8', scaling='static')). Received: a model with none"
        )
    variables = [(name, C.variable(layer, "inputs_amax")) for name, layer in layers]
    before = [v.detach().clone() for _, v in variables]
    modes = {m: m.training for m in model.modules()}
    report = CalibrationReport()
    try:
        with torch.no_grad():
            for _, v in variables:
                v.zero_()
            model.eval()
            with float8_static.observing():
                for batch in batches:
                    _run(model, batch)
                    report.batches += 1
        if report.batches == 0:
            raise ValueError("Expected at least one calibration batch. Received: an empty iterable")
    except BaseException:
        with torch.no_grad():
            for (_, v), old in zip(variables, before, strict=True):
                v.copy_(old)
        raise
    finally:
        for m, mode in modes.items():
            m.training = mode
    for (name, layer), (_, v) in zip(layers, variables, strict=True):
        path = layer.path if layer.path else name
        amax = float(v)
        if amax > 0:
            report.inputs_amax[path] = amax
        else:
            report.uncalibrated.append(path)
    return report
