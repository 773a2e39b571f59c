"""float8 for inference (``QuantizationConfig("float8", scaling="static")``) of Dense, EinsumDense,
Conv1D and Conv2D: the kernel stored as float8_e4m3fn codes, the inputs quantized to e4m3fn with
a static scale set by calibration.

Stored (non-trainable): ``kernel`` float8_e4m3fn in the K-major layout of ``mpq.kernels`` (as
int8 stores its codes: Dense ``[units, input_dim]``, Conv ``[filters, *kernel_size, channels]``;
no per-call transposed copy), ``kernel_scale``
(0-d float32, ``amax(|kernel|) / 448`` at quantize time: the weights never saturate) and
``inputs_amax`` (0-d float32: the largest ``|input|`` seen by ``mpq.calibrate``; 0 until then).
A call quantizes its input with ``inputs_amax / 448`` (values beyond the calibrated range
saturate to +-448) or, while ``inputs_amax`` is 0 (not calibrated), with this call's own
``amax(|x|) / 448`` (dynamic scaling: accurate, never a unit-scale default). No amax history,
no gradient scale: 1 byte per weight plus three scalars. Gradients flow to the inputs only
(straight-through, through the dequantized kernel). ``Float8Scheme`` hands layers whose config
says ``scaling="static"`` to this file. See docs/quantization.md, "float8 for inference".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from mpq.layers.quantization import QuantizableLayer
from mpq.layers.variables import ValueRule
from mpq.quantization import _common as C
from mpq.quantization._forms import ConvForm
from mpq.quantization.config import QuantizationConfig
from mpq.quantization.float8 import FORWARD_FORMAT, Float8Scheme, _ConvRun, _Float8Run, _LinearRun
from mpq.quantizers import (
    compute_float8_scale,
    dequantize_float8,
    quantize_dequantize,
    quantize_float8,
)

__all__ = ["Float8StaticScheme", "is_static", "observing", "quantize_kernel"]

_STATE = threading.local()
# inputs_amax: a finite range >= 0 (0: not calibrated; NaN and inf are refused on every write).
INPUTS_AMAX_RULE = ValueRule("input ranges", low=0.0, high=float(torch.finfo(torch.float32).max))


def is_static(layer: QuantizableLayer) -> bool:
    """True for a layer quantized with ``QuantizationConfig("float8", scaling="static")``."""
    return isinstance(layer.quantization_scheme, Float8StaticScheme)


@contextmanager
def observing() -> Iterator[None]:
    """Inside: static float8 layers record ``max(inputs_amax, amax(|x|))`` at every call
    (``mpq.calibrate`` runs the batches in here)."""
    previous = getattr(_STATE, "observing", False)
    _STATE.observing = True
    try:
        yield
    finally:
        _STATE.observing = previous


def quantize_kernel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scale)``: ``scale = amax(|w|) / 448`` (float32, 0-d; 1 for an all-zero kernel)
    and ``codes = e4m3fn(clip(w / scale))``. Raises ValueError for a non-finite kernel."""
    w32 = w.detach().to(torch.float32)
    bad = int((~torch.isfinite(w32)).sum())
    if bad:
        raise ValueError(
            "Expected a finite kernel to quantize to float8. "
            f"Received: a kernel with {bad} non-finite element(s) (NaN or inf)"
        )
    scale = compute_float8_scale(
        w32.abs().amax(), torch.ones((), dtype=torch.float32), FORWARD_FORMAT
    )
    return quantize_float8(w32, scale, FORWARD_FORMAT), scale


def _input_scale(layer: QuantizableLayer, x: torch.Tensor) -> torch.Tensor:
    amax_var = C.read(layer, "inputs_amax")
    x_amax = x.detach().abs().amax().to(torch.float32)
    if getattr(_STATE, "observing", False):
        with torch.no_grad():
            amax_var.copy_(torch.maximum(amax_var, x_amax))
    amax = amax_var.detach()
    if float(amax) <= 0:  # not calibrated: this call's own range (dynamic scaling)
        amax = x_amax
    one = torch.ones((), dtype=torch.float32, device=x.device)
    return compute_float8_scale(amax, one, FORWARD_FORMAT)


class _StaticMixin(_Float8Run):
    """Forward with the stored codes; backward: plain straight-through float gradients."""

    def __init__(self, layer: QuantizableLayer, w8: torch.Tensor, sw: torch.Tensor) -> None:
        self.layer = layer
        self.w8 = w8
        self.sw = sw

    def forward(
        self, x: torch.Tensor, w: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        self.sx = _input_scale(self.layer, x)
        self.x8 = quantize_float8(x, self.sx, FORWARD_FORMAT)
        return self.fp8_op(self.x8, self.w8, self.sx, self.sw, bias, x.dtype)

    def grad_hook(self, grad: torch.Tensor) -> torch.Tensor:
        return grad

    def backward_operands(
        self, x: torch.Tensor, w: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = dequantize_float8(self.w8, self.sw, x.dtype)
        return quantize_dequantize(x, self.sx, FORWARD_FORMAT), w

    input_grads = C.Run.input_grads


class _StaticLinearRun(_StaticMixin, _LinearRun):
    pass


class _StaticConvRun(_StaticMixin, _ConvRun):
    pass


class Float8StaticScheme(Float8Scheme):
    """float8 inference with calibrated static scales (``QuantizationConfig("float8",
    scaling="static")``): the per-layer scheme ``Float8Scheme`` picks for that config."""

    def convert(
        self, layer: QuantizableLayer, cfg: QuantizationConfig, form: Any, values: bool
    ) -> None:
        """Replace the float kernel by codes + scale and add ``inputs_amax`` (0: not
        calibrated)."""
        kernel = C.float_kernel(layer)
        codes = scale = None
        if values:
            codes, scale = quantize_kernel(kernel)
            codes = form.to_stored(codes)
        C.replace_kernel(
            layer,
            {
                "kernel": (tuple(form.stored_shape), torch.float8_e4m3fn, codes, "zeros", None),
                "kernel_scale": ((), torch.float32, scale, "ones", C.POSITIVE_FINITE),
                "inputs_amax": ((), torch.float32, None, "zeros", INPUTS_AMAX_RULE),
            },
        )

    def call(
        self, layer: QuantizableLayer, inputs: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        kwargs.pop("training", None)  # nothing is updated by training passes
        form = self.form
        lora = C.lora_term(layer, inputs)
        codes = C.read(layer, "kernel")
        sw = C.read(layer, "kernel_scale").detach()
        if isinstance(form, ConvForm):
            x = C.conv_input(layer, inputs)
            y = _StaticConvRun(layer, codes, sw).apply(x, None, C.conv_bias(layer))
            return C.conv_output(layer, y, lora)
        x, meta = self.linear_rows(inputs)
        w8 = self.as3(codes)  # [S, N, K]: b = w8[s].t() is K-major, no copy
        bias = C.fusable_bias(layer)
        y = _StaticLinearRun(layer, w8, sw).apply(x, None, bias)
        return self.linear_output(layer, y, meta, bias is not None, lora)

    def dequantized_kernel(self, layer: QuantizableLayer) -> torch.Tensor:
        """The float32 kernel (float layout) the layer computes with: ``codes * scale``."""
        codes = C.variable(layer, "kernel").detach()
        w = dequantize_float8(codes, C.variable(layer, "kernel_scale").detach(), torch.float32)
        kernel: torch.Tensor = self.form.from_matrix(w)  # stored (K-major) -> float layout
        return kernel

    def requantize(self, layer: QuantizableLayer, delta: torch.Tensor) -> None:
        codes, scale = quantize_kernel(self.dequantized_kernel(layer) + delta.float())
        C.variable(layer, "kernel").copy_(self.form.to_stored(codes))
        C.variable(layer, "kernel_scale").copy_(scale)


Float8Scheme.variants["static"] = Float8StaticScheme
