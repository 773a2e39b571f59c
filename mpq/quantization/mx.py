"""The microscaling modes of Dense, EinsumDense, Conv1D and Conv2D: ``mxfp8`` (e4m3),
``mxfp8_e5m2``, ``mxfp6`` (e2m3), ``mxfp6_e3m2``, ``mxfp4`` (e2m1), ``mxint8`` (OCP MX v1.0:
a float8_e8m0 scale per block of 32 along K) and ``nvfp4`` (e2m1, an e4m3 scale per 16, a
float32 tensor scale), emulated exactly on CPU: stored codes are dequantized exactly to float32
and multiplied in float32. Weight-only by default; ``weight_only=False`` also quantizes the inputs
(per row along K, dynamically). See docs/quantization.md, "Microscaling formats".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from mpq import dtypes
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense
from mpq.layers import quantization as _registry
from mpq.layers.quantization import QuantizableLayer
from mpq.quantization import _common as C
from mpq.quantization._forms import ConvForm
from mpq.quantization.config import QuantizationConfig
from mpq.quantizers import pack_int4, unpack_int4
from mpq.quantizers.mx import (
    MX_BLOCK_SIZE,
    NVFP4_BLOCK_SIZE,
    dequantize_mx,
    dequantize_nvfp4,
    quantize_mx,
    quantize_nvfp4,
)

__all__ = ["MX_FORMATS", "MXFormat", "MXScheme"]


@dataclass(frozen=True)
class MXFormat:
    """What one microscaling mode stores: the element format, the block size, whether codes pack
    two per byte (4-bit elements) and whether a float32 tensor scale comes with it (NVFP4)."""

    elem: str
    block_size: int
    packed: bool
    tensor_scale: bool


# The modes, as data: the scheme below reads this table and never switches on mode names.
MX_FORMATS: dict[str, MXFormat] = {
    "mxfp8": MXFormat("float8_e4m3fn", MX_BLOCK_SIZE, False, False),
    "mxfp8_e5m2": MXFormat("float8_e5m2", MX_BLOCK_SIZE, False, False),
    "mxfp6": MXFormat("float6_e2m3fn", MX_BLOCK_SIZE, False, False),
    "mxfp6_e3m2": MXFormat("float6_e3m2fn", MX_BLOCK_SIZE, False, False),
    "mxfp4": MXFormat("float4_e2m1fn", MX_BLOCK_SIZE, True, False),
    "mxint8": MXFormat("int8", MX_BLOCK_SIZE, False, False),
    "nvfp4": MXFormat("float4_e2m1fn", NVFP4_BLOCK_SIZE, True, True),
}


_NVFP4_SCALE_CODES = C.ValueRule("nvfp4 e4m3 scale codes", 0, 0x7E)


def _code_rule(mode: str, fmt: MXFormat) -> C.ValueRule | None:
    """Element codes narrower than their uint8 container (6-bit formats) stay in range; packed
    4-bit pairs and 8-bit codes fill the byte."""
    bits = dtypes.get(fmt.elem).bits
    if fmt.packed or bits >= 8:
        return None
    return C.ValueRule(f"{mode} element codes", 0, 2**bits - 1)


def _pack(codes: torch.Tensor) -> torch.Tensor:
    # 4-bit codes 0..15 as the int4 nibbles of the same bits, packed two per byte.
    return pack_int4(((codes.to(torch.int16) ^ 8) - 8).to(torch.int8), axis=-1)


def _unpack(packed: torch.Tensor, k: int) -> torch.Tensor:
    return (unpack_int4(packed, axis=-1, size=k).view(torch.uint8) & 0xF).contiguous()


def quantize_codes(fmt: MXFormat, m: torch.Tensor) -> dict[str, torch.Tensor]:
    """``m [..., K]`` -> the stored tensors ``{"codes", "scale"[, "tensor_scale"]}``."""
    if fmt.tensor_scale:
        codes, scale, t = quantize_nvfp4(m)
        out = {"codes": codes, "scale": scale, "tensor_scale": t.reshape(1)}
    else:
        codes, scale = quantize_mx(m, fmt.elem, fmt.block_size)
        out = {"codes": codes, "scale": scale}
    if fmt.packed:
        out["codes"] = _pack(out["codes"])
    return out


def dequantize_codes(
    fmt: MXFormat,
    codes: torch.Tensor,
    scale: torch.Tensor,
    tensor_scale: torch.Tensor | None,
    k: int,
) -> torch.Tensor:
    """Stored tensors -> float32 ``[..., K]`` (exact: every MX/NVFP4 value is a float32)."""
    if fmt.packed:
        codes = _unpack(codes, k)
    if fmt.tensor_scale:
        ts = cast(torch.Tensor, tensor_scale)  # NVFP4 layers always store one
        return dequantize_nvfp4(codes, scale, ts.reshape(()), torch.float32)
    return dequantize_mx(codes, scale, fmt.elem, fmt.block_size, torch.float32)


def fake_quantize(fmt: MXFormat, x: torch.Tensor) -> torch.Tensor:
    """``x`` quantized to ``fmt`` along its last axis and dequantized (float32), with a
    straight-through gradient."""
    x32 = x.to(torch.float32)
    q = quantize_codes(fmt, x32)
    deq = dequantize_codes(fmt, q["codes"], q["scale"], q.get("tensor_scale"), x.shape[-1])
    return x32 + (deq - x32).detach()


class MXScheme(C.Scheme):
    """One microscaling mode (the format from `MX_FORMATS`) for one layer kind.

    Stored: ``kernel`` uint8 codes ``[..., N, K]`` (4-bit formats packed two per byte along K:
    ``[..., N, ceil(K/2)]``; 6-bit codes one per byte), ``kernel_scale`` uint8 scale codes
    ``[..., N, ceil(K/block)]`` (e8m0, or NVFP4's e4m3 bits) and, for NVFP4,
    ``kernel_tensor_scale`` float32 ``[1]``. A block size that does not divide K: the last block
    is partial (the same codes as zero padding to a multiple of the block).
    """

    def check(self, layer: QuantizableLayer, cfg: QuantizationConfig) -> None:
        if isinstance(layer, (Conv1D, Conv2D)) and not cfg.weight_only:
            raise NotImplementedError(
                f"Layer {type(layer).__name__} supports {cfg.mode} weight-only (the microscaling "
                "blocks run along K of a matmul; quantized conv inputs are not implemented). "
                f"Received: mode={cfg.mode!r}, weight_only=False"
            )

    def convert(
        self, layer: QuantizableLayer, cfg: QuantizationConfig, form: Any, values: bool
    ) -> None:
        fmt = MX_FORMATS[cfg.mode]
        name = C.kernel_name(layer)
        shape = tuple(form.matrix_shape)  # [..., N, K]
        lead, k = shape[:-1], shape[-1]
        stored = None
        if values:
            stored = quantize_codes(fmt, form.to_matrix(C.float_kernel(layer).detach()))
        codes_shape = (*lead, (k + 1) // 2 if fmt.packed else k)
        scale_shape = (*lead, -(-k // fmt.block_size))
        new = {
            name: (
                codes_shape,
                torch.uint8,
                None if stored is None else stored["codes"],
                "zeros",
                _code_rule(cfg.mode, fmt),
            ),
            f"{name}_scale": (
                scale_shape,
                torch.uint8,
                None if stored is None else stored["scale"],
                "zeros",
                # NVFP4's e4m3 block scales are >= 0 and finite (0x7F is NaN); any e8m0 code is
                # a scale (0xFF, NaN, marks a block that held NaN or inf).
                _NVFP4_SCALE_CODES if fmt.tensor_scale else None,
            ),
        }
        if fmt.tensor_scale:
            t = None if stored is None else stored["tensor_scale"]
            new[f"{name}_tensor_scale"] = ((1,), torch.float32, t, "ones", C.POSITIVE_FINITE)
        C.replace_kernel(layer, new)

    def weight(self, layer: QuantizableLayer, fmt: MXFormat, form: Any) -> torch.Tensor:
        name = C.kernel_name(layer)
        t = C.read(layer, f"{name}_tensor_scale") if fmt.tensor_scale else None
        k = form.matrix_shape[-1]
        return dequantize_codes(fmt, C.read(layer, name), C.read(layer, f"{name}_scale"), t, k)

    def call(
        self, layer: QuantizableLayer, inputs: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        cfg = self.config
        fmt = MX_FORMATS[cfg.mode]
        form = self.form
        lora = C.lora_term(layer, inputs)
        w = self.weight(layer, fmt, form)  # float32 [..., N, K]
        if isinstance(form, ConvForm):
            x = C.conv_input(layer, inputs).to(torch.float32)
            bias = C.conv_bias(layer)
            bias = None if bias is None else bias.to(torch.float32)
            y = C.conv_forward(layer, x, w.reshape(form.stored_shape), bias=bias)
            return C.conv_output(layer, y, lora)
        x, meta = self.linear_rows(inputs)
        x = x.to(torch.float32) if cfg.weight_only else fake_quantize(fmt, x)
        bias = C.fusable_bias(layer)
        bias = None if bias is None else bias.to(torch.float32)
        y = C.float_linear(x, self.as3(w), bias=bias)
        return self.linear_output(layer, y, meta, bias is not None, lora)

    def dequantized_kernel(self, layer: QuantizableLayer) -> torch.Tensor:
        """The decoded codes times their block scales in float32, in the float layer's
        layout."""
        with torch.no_grad():
            w = self.weight(layer, MX_FORMATS[self.config.mode], self.form)
        kernel: torch.Tensor = self.form.from_matrix(w.detach())
        return kernel


for _mode in MX_FORMATS:
    for _cls in (Dense, EinsumDense, Conv1D, Conv2D):
        _registry.register_scheme(_cls, _mode, MXScheme())
