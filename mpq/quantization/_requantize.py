"""``merge_lora`` on a quantized layer: dequantize the stored kernel, add the LoRA update and
quantize the sum again with the layer's own scheme and config (lossy: one more rounding)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from mpq.quantization import _common as C
from mpq.quantization import float8_static
from mpq.quantization._forms import ConvForm
from mpq.quantization.float8 import FORWARD_FORMAT
from mpq.quantization.int4 import _grouped_scale_layout, dequantize_int4
from mpq.quantization.int8 import dequantize_int8
from mpq.quantizers import delayed_scaling_update

__all__ = ["dequantized_kernel", "requantize_with_delta"]


def dequantized_kernel(layer: Any) -> torch.Tensor:
    """The float32 kernel a quantized int8 / int4 / float8 layer computes with, in the float
    layer's layout (float8 keeps its float kernel: returned as is)."""
    cfg = C.config_of(layer)
    form = C.form(layer)
    if float8_static.is_static(layer):
        return float8_static.dequantized_kernel(layer)
    if cfg.mode == "float8":
        return layer._parameters["kernel"].detach().float()
    q = layer._parameters["kernel"].detach()
    scale = layer._parameters["kernel_scale"].detach()
    if cfg.mode == "int8":
        stored = dequantize_int8(q, scale, torch.float32)
        return form.from_stored(stored) if isinstance(form, ConvForm) else form.from_matrix(stored)
    k = form.matrix_shape[-1]
    zero = layer._parameters["kernel_zero"].detach() if cfg.block_size != -1 else None
    layout = _grouped_scale_layout(form)
    m = dequantize_int4(q, scale, zero, k, cfg.block_size, layout, torch.float32)
    return form.from_matrix(m)


def requantize_with_delta(layer: Any, delta: torch.Tensor) -> None:
    """Replace ``layer``'s quantized kernel state with the quantization of
    ``dequantized_kernel(layer) + delta`` (float8: the float kernel gets ``+ delta``)."""
    cfg = C.config_of(layer)
    merged = dequantized_kernel(layer) + delta.float()
    if float8_static.is_static(layer):
        codes, scale = float8_static.quantize_kernel(merged)
        layer._parameters["kernel"].copy_(C.form(layer).to_stored(codes))
        layer._parameters["kernel_scale"].copy_(scale)
        return
    if cfg.mode == "float8":
        kernel = layer._parameters["kernel"]
        kernel.copy_(merged.to(kernel.dtype))
        # The kernel scale was set by the old kernel's amax: record the merged kernel's (one
        # delayed-scaling step) so that it does not saturate.
        history = layer._parameters["kernel_amax_history"]
        scale = layer._parameters["kernel_scale"]
        new_history, new_scale = delayed_scaling_update(
            kernel.detach(), history.detach(), scale.detach(), FORWARD_FORMAT
        )
        history.copy_(new_history)
        scale.copy_(new_scale)
        return
    # A float scratch twin of the layer (no LoRA) takes the merged kernel and is quantized by
    # the layer's scheme; its quantized variables are copied back.
    config = layer.get_config()
    config.pop("quantization_config", None)
    config["dtype"] = layer.dtype_policy.source_name
    config["lora_rank"] = None
    config["lora_alpha"] = None
    with torch.random.fork_rng(devices=[]):
        scratch = type(layer).from_config(config)
        scratch.build_from_config(copy.deepcopy(layer.get_build_config()))
    with torch.no_grad():
        scratch._parameters["kernel"].copy_(merged.to(scratch._parameters["kernel"].dtype))
    scratch.quantize(cfg)
    for name, value in scratch._parameters.items():
        if name in ("bias",) or value is None:
            continue
        target = layer._parameters[name]
        target.copy_(value.detach().to(target.device))
