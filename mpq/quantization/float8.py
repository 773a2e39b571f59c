"""The ``"float8"`` mode of Dense, EinsumDense, Conv1D and Conv2D: delayed scaling (Transformer
Engine "HYBRID"): inputs and kernel in float8_e4m3fn, output gradients in float8_e5m2, each with a
per-tensor scale from an amax history.

The float kernel stays (trainable); the layer adds six non-trainable float32 variables
``{inputs,kernel,outputs_grad}_scale`` (0-d) and ``..._amax_history`` ([L]) and updates them
itself: training forward passes record the input and kernel amax, the backward pass the output
gradient's (under ``stateless_call``: into the returned values, never the layer).
``training=False`` updates nothing. Recurrence: docs/quantization.md, "Layer modes".
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch

from mpq import kernels
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense
from mpq.layers import quantization as _registry
from mpq.layers.quantization import QuantizableLayer
from mpq.quantization import _common as C
from mpq.quantization._forms import ConvForm
from mpq.quantization.config import QuantizationConfig
from mpq.quantizers import (
    delayed_scaling_update,
    dequantize_float8,
    quantize_dequantize,
    quantize_float8,
)

__all__ = ["FORWARD_FORMAT", "GRADIENT_FORMAT", "STATE_NAMES", "Float8Scheme"]

FORWARD_FORMAT = "float8_e4m3fn"
GRADIENT_FORMAT = "float8_e5m2"
STATE_NAMES = ("inputs", "kernel", "outputs_grad")


class _Float8Run(C.Run):
    # Set by the forward pass, read by the backward pass.
    sx: torch.Tensor
    sw: torch.Tensor
    x8: torch.Tensor
    w8: torch.Tensor

    def __init__(self, layer: QuantizableLayer, training: bool) -> None:
        self.layer = layer
        self.training = training
        # The backward pass runs after the call (and after any stateless scope) has returned,
        # so what it reads and writes is fixed now. Training: the gradient history and scale
        # it updates in place (the layer's variables, or under stateless_call the buffers
        # returned as their new values); otherwise the scale read by this call.
        self.grad_history: torch.Tensor | None = None
        if training:
            self.grad_history, self.grad_scale = C.late_targets(
                layer, ("outputs_grad_amax_history", "outputs_grad_scale")
            )
        else:
            self.grad_scale = C.read(layer, "outputs_grad_scale")

    def _update(self, prefix: str, t: torch.Tensor, fmt: str) -> None:
        history = C.read(self.layer, f"{prefix}_amax_history")
        scale = C.read(self.layer, f"{prefix}_scale")
        new_history, new_scale = delayed_scaling_update(t.detach(), history, scale, fmt)
        C.assign_valid(history, new_history)
        C.assign_valid(scale, new_scale)  # valid by construction: no device sync per step

    def forward(
        self, x: torch.Tensor, w: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        # Delayed scaling: quantize with the scales of the past steps, then record this step.
        w = cast(torch.Tensor, w)  # the float8 runs always get the float kernel
        sw = C.read(self.layer, "kernel_scale").detach().clone()
        w8 = quantize_float8(w, sw, FORWARD_FORMAT)
        if self.training:
            self._update("kernel", w, FORWARD_FORMAT)
        return self.forward_codes(x, w8, sw, bias)

    def forward_codes(
        self, x: torch.Tensor, w8: torch.Tensor, sw: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``forward`` with the kernel already quantized (codes ``w8``, scale ``sw``)."""
        sx = C.read(self.layer, "inputs_scale").detach().clone()
        x8 = quantize_float8(x, sx, FORWARD_FORMAT)
        if self.training:
            self._update("inputs", x, FORWARD_FORMAT)
        self.sx, self.sw, self.x8, self.w8 = sx, sw, x8, w8
        return self.fp8_op(x8, w8, sx, sw, bias, x.dtype)

    def fp8_op(
        self,
        x8: torch.Tensor,
        w8: torch.Tensor,
        sx: torch.Tensor,
        sw: torch.Tensor,
        bias: torch.Tensor | None,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _grad_fp8(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output gradient in e5m2 with the old gradient scale; records its amax."""
        history, scale = self.grad_history, self.grad_scale
        sg = scale.detach().clone()
        g8 = quantize_float8(grad, sg, GRADIENT_FORMAT)
        if history is not None:  # training
            new_history, new_scale = delayed_scaling_update(
                grad.detach(), history, sg, GRADIENT_FORMAT
            )
            with torch.no_grad():
                history.copy_(new_history)
                scale.copy_(new_scale)
        return g8, sg

    def grad_hook(self, grad: torch.Tensor) -> torch.Tensor:
        g8, sg = self._grad_fp8(grad)
        return dequantize_float8(g8, sg, grad.dtype)

    def backward_operands(
        self, x: torch.Tensor, w: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            quantize_dequantize(x, self.sx, FORWARD_FORMAT),
            quantize_dequantize(cast(torch.Tensor, w), self.sw, FORWARD_FORMAT),
        )


class _LinearRun(_Float8Run):
    """Backward GEMMs in float8 too: ``grad_x = g8 @ w8`` (e5m2 x e4m3fn) and
    ``grad_w = g8.T @ x8`` (e5m2 x e4m3fn), scales in the epilogue, float32 accumulation."""

    def input_grads(
        self,
        grad: torch.Tensor,
        x: torch.Tensor,
        w: torch.Tensor | None,
        need_x: bool,
        need_w: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        g8, sg = self._grad_fp8(grad)
        gx = gw = None
        if need_x:
            # b = w8[s] as [N, K] must be K-major for the 8-bit kernels: a [K, N] copy, viewed.
            gx = torch.stack(
                [
                    kernels.matmul(
                        g8[s].contiguous(),
                        self.w8[s].t().contiguous().t(),
                        a_scale=sg,
                        b_scale=self.sw,
                        out_dtype=x.dtype,
                    )
                    for s in range(g8.shape[0])
                ]
            )
        if need_w:
            gw = torch.stack(
                [
                    kernels.matmul(
                        g8[s].t().contiguous(),
                        self.x8[s].t().contiguous().t(),
                        a_scale=sg,
                        b_scale=self.sx,
                        out_dtype=cast(torch.Tensor, w).dtype,
                    )
                    for s in range(g8.shape[0])
                ]
            )
        return dequantize_float8(g8, sg, grad.dtype), gx, gw

    def fp8_op(
        self,
        x8: torch.Tensor,
        w8: torch.Tensor,
        sx: torch.Tensor,
        sw: torch.Tensor,
        bias: torch.Tensor | None,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        outs = [
            kernels.matmul(
                x8[s].contiguous(),
                w8[s].t(),
                a_scale=sx,
                b_scale=sw,
                bias=bias,
                out_dtype=out_dtype,
            )
            for s in range(x8.shape[0])
        ]
        return torch.stack(outs)

    def float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return C.float_linear(x, w)


class _ConvRun(_Float8Run):
    def fp8_op(
        self,
        x8: torch.Tensor,
        w8: torch.Tensor,
        sx: torch.Tensor,
        sw: torch.Tensor,
        bias: torch.Tensor | None,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        return C.conv_forward(
            self.layer, x8, w8, x_scale=sx, w_scale=sw, bias=bias, out_dtype=out_dtype
        )

    def float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return C.conv_forward(self.layer, x, w)


class Float8Scheme(C.Scheme):
    """float8 delayed scaling for one layer kind (history length from the config)."""

    def convert(
        self, layer: QuantizableLayer, cfg: QuantizationConfig, form: Any, values: bool
    ) -> None:
        length = cast(int, cfg.amax_history_length)  # set for delayed scaling
        for prefix in STATE_NAMES:
            C.add_state(layer, f"{prefix}_scale", (), torch.float32, "ones", C.POSITIVE_FINITE)
            C.add_state(layer, f"{prefix}_amax_history", (length,), torch.float32, "zeros")
        if values:
            # The kernel's scale starts from the kernel (as if one step had recorded it), not
            # at 1: a layer used before any training step does not saturate its weights.
            # Input and gradient scales start at 1 until training passes record them; for
            # inference use scaling="static" and mpq.calibrate (docs/quantization.md).
            kernel = C.float_kernel(layer).detach()
            history = C.variable(layer, "kernel_amax_history")
            scale = C.variable(layer, "kernel_scale")
            new_history, new_scale = delayed_scaling_update(
                kernel, history.detach(), scale.detach(), FORWARD_FORMAT
            )
            with torch.no_grad():
                history.copy_(new_history)
                scale.copy_(new_scale)
        layer._update_cast_dtypes()

    variants: ClassVar[dict[str, type[C.Scheme]]] = {}
    """Per-layer scheme classes of the float8 scaling variants other than delayed scaling,
    by ``QuantizationConfig.scaling`` (``float8_static.py`` adds ``"static"``)."""

    def scheme_class(self, cfg: QuantizationConfig) -> type[C.Scheme]:
        return self.variants.get(cfg.scaling or "delayed", type(self))

    def call(
        self, layer: QuantizableLayer, inputs: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        training = C.training_flag(kwargs, layer)
        form = self.form
        lora = C.lora_term(layer, inputs)
        kernel = C.read(layer, "kernel")
        if isinstance(form, ConvForm):
            x = C.conv_input(layer, inputs)
            bias = C.conv_bias(layer)
            run = _ConvRun(layer, training)
            if _inference(training, x, kernel, bias):
                w8, sw = _kernel_codes(layer, kernel, x.dtype)
                y = run.forward_codes(x, form.to_stored(w8), sw, bias)
                return C.conv_output(layer, y, lora)
            y = run.apply(x, form.to_stored(kernel).to(x.dtype), bias)
            return C.conv_output(layer, y, lora)
        x, meta = self.linear_rows(inputs)
        bias = C.fusable_bias(layer)
        linear = _LinearRun(layer, training)
        if _inference(training, x, kernel, bias):
            w8, sw = _kernel_codes(layer, kernel, x.dtype)
            y = linear.forward_codes(x, self.as3(form.to_matrix(w8)), sw, bias)
        else:
            y = linear.apply(x, self.as3(form.to_matrix(kernel)).to(x.dtype), bias)
        return self.linear_output(layer, y, meta, bias is not None, lora)

    def dequantized_kernel(self, layer: QuantizableLayer) -> torch.Tensor:
        """Delayed scaling keeps the float kernel: returned as is (float32)."""
        return C.float_kernel(layer).detach().float()

    def requantize(self, layer: QuantizableLayer, delta: torch.Tensor) -> None:
        """The float kernel gets ``+ delta``; its scale records the merged kernel's amax (one
        delayed-scaling step) so that it does not saturate."""
        merged = self.dequantized_kernel(layer) + delta.float()
        kernel = C.variable(layer, "kernel")
        kernel.copy_(merged.to(kernel.dtype))
        history = C.variable(layer, "kernel_amax_history")
        scale = C.variable(layer, "kernel_scale")
        new_history, new_scale = delayed_scaling_update(
            kernel.detach(), history.detach(), scale.detach(), FORWARD_FORMAT
        )
        history.copy_(new_history)
        scale.copy_(new_scale)


def _inference(training: bool, x: torch.Tensor, kernel: torch.Tensor, bias: Any) -> bool:
    """No state update and no gradient (``C.Run.apply``'s condition for skipping autograd)."""
    return not training and (
        not torch.is_grad_enabled()
        or not any(t is not None and t.requires_grad for t in (x, kernel, bias))
    )


def _kernel_codes(
    layer: QuantizableLayer, kernel: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scale)`` of the kernel in its own (float) layout. Quantization is elementwise,
    so these are the codes of the transposed copy the kernels take; transposing the 1-byte
    codes afterwards moves 4x fewer bytes than transposing the float kernel first."""
    sw = C.read(layer, "kernel_scale").detach().clone()
    return quantize_float8(kernel.detach().to(dtype), sw, FORWARD_FORMAT), sw


for _cls in (Dense, EinsumDense, Conv1D, Conv2D):
    _registry.register_scheme(_cls, "float8", Float8Scheme())
