"""The ``"int4"`` mode of Dense, EinsumDense, Conv1D, Conv2D and Embedding: int4 kernels packed
two per byte along the reduction axis, per output channel (symmetric, ``int4/-1``) or per group
of ``g`` with zero points (asymmetric, ``int4/<g>``); weight-only by default, int8 dynamic
activations with ``weight_only=False``. See docs/quantization.md, "Layer modes".
"""

from __future__ import annotations

from typing import Any, cast

import torch

from mpq import kernels
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Embedding
from mpq.layers import quantization as _registry
from mpq.layers.quantization import QuantizableLayer
from mpq.quantization import _common as C
from mpq.quantization._forms import ConvForm, EinsumForm, EmbeddingForm
from mpq.quantization.config import QuantizationConfig
from mpq.quantizers import (
    dequantize,
    pack_int4,
    quantize_asymmetric,
    quantize_symmetric,
    unpack_int4,
)

__all__ = ["Int4Scheme"]


def _grouped_scale_layout(form: Any) -> str:
    """Grouped scales/zeros: ``[G, N]`` for Dense/EinsumDense (``mpq.kernels.matmul_int4``'s
    layout), ``[N, G]`` for Conv and Embedding (channel / row first)."""
    return "GN" if isinstance(form, EinsumForm) else "NG"


def dequantize_int4(
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    k: int,
    block_size: int,
    layout: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Stored int4 ``[..., N, ceil(K/2)]`` -> ``[..., N, K]`` in ``dtype``: ``q * scale`` per
    channel, ``(q - zero) * scale`` per group (``layout`` of the grouped scale/zero: "GN" or
    "NG"); float32 math, one cast."""
    q = unpack_int4(packed, axis=-1, size=k)
    if block_size == -1:
        return (q.to(torch.float32) * scale.unsqueeze(-1)).to(dtype)
    if layout == "GN":
        scale = scale.transpose(-1, -2)
        zero = None if zero is None else zero.transpose(-1, -2)
    return dequantize(q, scale, zero, group_size=block_size, group_axis=-1, dtype=dtype)


class _LinearWeightOnly(C.Run):
    """``mpq.kernels.matmul_int4`` per slice (K-major packed weight ``packed[s].t()``)."""

    def __init__(
        self,
        packed: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor | None,
        k: int,
        block_size: int,
    ) -> None:
        self.packed, self.scale, self.zero = packed, scale, zero  # [S, N, K/2], [S, (G,) N]
        self.k, self.block_size = k, block_size

    def forward(
        self, x: torch.Tensor, w: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        grouped = self.block_size != -1  # (zero points exactly when grouped)
        outs = [
            kernels.matmul_int4(
                x[s],
                self.packed[s].t(),
                self.scale[s],
                b_zero=self.zero[s] if self.zero is not None else None,
                group_size=self.block_size if grouped else None,
                bias=bias,
                out_dtype=x.dtype,
            )
            for s in range(x.shape[0])
        ]
        return torch.stack(outs)

    def backward_operands(
        self, x: torch.Tensor, w: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grouped = self.block_size != -1
        w = dequantize_int4(
            self.packed,
            self.scale,
            self.zero if grouped else None,
            self.k,
            self.block_size,
            "GN",
            x.dtype,
        )
        return x, w

    def float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return C.float_linear(x, w)


class _LinearA8(_LinearWeightOnly):
    """int8 dynamic per-row inputs x int4 weights (unpacked to int8) on the int8 matmul.

    Per channel: one int8 matmul with ``b_scale = scale``. Grouped: one int8 matmul per group
    of ``q - zero`` (in [-15, 15]) with that group's scale, summed in float32."""

    def forward(
        self, x: torch.Tensor, w: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        xq, xs = C.quantize_rows_int8(x)
        outs = []
        for s in range(x.shape[0]):
            wq = unpack_int4(self.packed[s], axis=-1, size=self.k)  # [N, K] int8, contiguous
            if self.block_size == -1:
                y = kernels.matmul(
                    xq[s].contiguous(),
                    wq.t(),
                    a_scale=xs[s],
                    b_scale=self.scale[s],
                    bias=bias,
                    out_dtype=x.dtype,
                )
            else:
                g = self.block_size
                zero = cast(torch.Tensor, self.zero)  # grouped int4 has zero points
                acc: torch.Tensor | None = None
                for j, start in enumerate(range(0, self.k, g)):
                    stop = min(start + g, self.k)
                    centred = (wq[:, start:stop].to(torch.int16) - zero[s][j][:, None]).to(
                        torch.int8
                    )
                    part = kernels.matmul(
                        xq[s][:, start:stop].contiguous(),
                        centred.contiguous().t(),
                        a_scale=xs[s],
                        b_scale=self.scale[s][j],
                        out_dtype=torch.float32,
                    )
                    acc = part if acc is None else acc + part
                acc = cast(torch.Tensor, acc)  # K >= 1: at least one group
                if bias is not None:
                    acc = acc + bias.to(torch.float32)
                y = acc.to(x.dtype)
            outs.append(y)
        return torch.stack(outs)


class _ConvA8(C.Run):
    """int8 dynamic per-tensor inputs x per-channel int4 weights (as int8) on the int8 conv."""

    def __init__(
        self,
        layer: QuantizableLayer,
        packed: torch.Tensor,
        scale: torch.Tensor,
        k: int,
        stored_shape: tuple[int, ...],
    ) -> None:
        self.layer, self.packed, self.scale = layer, packed, scale
        self.k, self.stored_shape = k, stored_shape

    def forward(
        self, x: torch.Tensor, w: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        xq, xs = quantize_symmetric(x, "int8", check_finite=False)
        wq = unpack_int4(self.packed, axis=-1, size=self.k).reshape(self.stored_shape)
        return C.conv_forward(
            self.layer,
            xq,
            wq.contiguous(),
            x_scale=xs.reshape(()),
            w_scale=self.scale,
            bias=bias,
            out_dtype=x.dtype,
        )

    def backward_operands(
        self, x: torch.Tensor, w: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = dequantize_int4(self.packed, self.scale, None, self.k, -1, "NG", x.dtype)
        return x, w.reshape(self.stored_shape)

    def float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return C.conv_forward(self.layer, x, w)


class Int4Scheme(C.Scheme):
    """int4 for one layer kind (block size and activations from the config)."""

    def check(self, layer: QuantizableLayer, cfg: QuantizationConfig) -> None:
        if isinstance(layer, (Conv1D, Conv2D)) and cfg.block_size != -1 and not cfg.weight_only:
            raise NotImplementedError(
                f"Layer {type(layer).__name__} supports int4 with int8 activations only per "
                "output channel (block_size=-1); grouped int4 runs weight-only there. "
                f"Received: mode={cfg.mode_spec!r}, weight_only=False"
            )

    def convert(
        self, layer: QuantizableLayer, cfg: QuantizationConfig, form: Any, values: bool
    ) -> None:
        name = C.kernel_name(layer)
        shape = tuple(form.matrix_shape)  # [..., N, K]
        lead, k = shape[:-1], shape[-1]
        packed_shape = (*lead, (k + 1) // 2)
        g = cfg.block_size
        packed = scale = zero = None
        if values:
            m = form.to_matrix(C.float_kernel(layer).detach())
            if g == -1:
                q, scale = quantize_symmetric(m, "int4", reduce_axes=-1)
                scale = scale.squeeze(-1)
            else:
                q, scale, zero = quantize_asymmetric(m, "int4", reduce_axes=-1, group_size=g)
                if _grouped_scale_layout(form) == "GN":
                    scale = scale.transpose(-1, -2).contiguous()
                    zero = zero.transpose(-1, -2).contiguous()
            packed = pack_int4(q, axis=-1)
        # Packed bytes: any uint8 holds two int4 codes (the dtype's [0, 255] is checked on write).
        new: dict[str, C.VariableSpec] = {name: (packed_shape, torch.uint8, packed, "zeros", None)}
        if g == -1:
            new[f"{name}_scale"] = (lead, torch.float32, scale, "ones", C.POSITIVE_FINITE)
        else:
            groups = -(-k // g)
            ng = (*lead, groups)
            gn = (*lead[:-1], groups, lead[-1])
            param_shape = gn if _grouped_scale_layout(form) == "GN" else ng
            new[f"{name}_scale"] = (param_shape, torch.float32, scale, "ones", C.POSITIVE_FINITE)
            new[f"{name}_zero"] = (param_shape, torch.int8, zero, "zeros", C.INT4_ZERO_POINTS)
        C.replace_kernel(layer, new)

    def call(
        self, layer: QuantizableLayer, inputs: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        cfg = self.config
        form = self.form
        g = cast(int, cfg.block_size)  # int4 configs always have one (-1: per channel)
        name = C.kernel_name(layer)
        packed = C.read(layer, name)
        scale = C.read(layer, f"{name}_scale")
        zero = C.read(layer, f"{name}_zero") if g != -1 else None
        k = form.matrix_shape[-1]
        if isinstance(form, EmbeddingForm):
            ids = C.embedding_ids(inputs)
            rows = dequantize_int4(
                packed[ids],
                scale[ids],
                None if zero is None else zero[ids],
                k,
                g,
                "NG",
                torch.float32,
            )
            return C.embedding_output(layer, ids, rows.to)
        lora = C.lora_term(layer, inputs)
        if isinstance(form, ConvForm):
            x = C.conv_input(layer, inputs)
            bias = C.conv_bias(layer)
            if cfg.weight_only:
                w = dequantize_int4(packed, scale, zero, k, g, "NG", x.dtype)
                y = C.conv_forward(layer, x, w.reshape(form.stored_shape), bias=bias)
            else:
                y = _ConvA8(layer, packed, scale, k, form.stored_shape).apply(x, None, bias)
            return C.conv_output(layer, y, lora)
        x, meta = self.linear_rows(inputs)
        bias = C.fusable_bias(layer)
        run_cls = _LinearWeightOnly if cfg.weight_only else _LinearA8
        run = run_cls(self.as3(packed), self.as3(scale), self.as3(zero), k, g)
        y = run.apply(x, None, bias)
        return self.linear_output(layer, y, meta, bias is not None, lora)

    def code_variables(
        self,
        layer: QuantizableLayer,
        q: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        name = C.kernel_name(layer)
        new = {name: pack_int4(q, axis=-1)}
        if zero is None:
            new[f"{name}_scale"] = scale
        else:  # Dense/EinsumDense keep grouped scales and zeros as [..., G, N]
            new[f"{name}_scale"] = scale.transpose(-1, -2)
            new[f"{name}_zero"] = zero.transpose(-1, -2)
        return new

    def dequantized_kernel(self, layer: QuantizableLayer) -> torch.Tensor:
        """The unpacked codes times their scales (minus zero points per group) in float32, in
        the float layer's layout."""
        form = self.form
        g = cast(int, self.config.block_size)
        name = C.kernel_name(layer)
        q = C.variable(layer, name).detach()
        scale = C.variable(layer, f"{name}_scale").detach()
        zero = C.variable(layer, f"{name}_zero").detach() if g != -1 else None
        layout = _grouped_scale_layout(form)
        m = dequantize_int4(q, scale, zero, form.matrix_shape[-1], g, layout, torch.float32)
        kernel: torch.Tensor = form.from_matrix(m)
        return kernel


for _cls in (Dense, EinsumDense, Conv1D, Conv2D, Embedding):
    _registry.register_scheme(_cls, "int4", Int4Scheme())
