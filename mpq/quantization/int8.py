"""The ``"int8"`` mode of Dense, EinsumDense, Conv1D, Conv2D and Embedding: per-output-channel
int8 kernels; W8A8 (dynamic int8 inputs, int8 x int8 -> int32 matmul) or weight-only (W8A16).

Stored (non-trainable): ``kernel`` int8 in the K-major layout of ``mpq.kernels`` and
``kernel_scale`` float32 per output channel (Embedding: ``embeddings`` / ``embeddings_scale``
per row). See docs/quantization.md, "Layer modes".
"""

from __future__ import annotations

from typing import Any

import torch

from mpq import kernels
from mpq.kernels import _cpu
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Embedding
from mpq.layers import quantization as _registry
from mpq.layers.quantization import QuantizableLayer
from mpq.quantization import _common as C
from mpq.quantization._forms import ConvForm, EmbeddingForm
from mpq.quantization.config import QuantizationConfig
from mpq.quantizers import quantize_symmetric

__all__ = ["Int8Scheme"]


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``q * scale`` (scale per leading channel, broadcast over the trailing axes) in float32,
    cast once to ``dtype``."""
    s = scale.reshape(*scale.shape, *([1] * (q.dim() - scale.dim())))
    return (q.to(torch.float32) * s).to(dtype)


class _LinearW8A8(C.Run):
    def __init__(self, wq: torch.Tensor, ws: torch.Tensor) -> None:
        self.wq, self.ws = wq, ws  # [S, N, K] int8, [S, N] float32

    def forward(
        self, x: torch.Tensor, w: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        q, xs = C.quantize_rows_int8(x)
        if C.prevalidated_int8(x, self.wq, self.ws):
            # The checks of kernels.matmul hold by construction: its CPU path, unchecked.
            M, N = x.shape[1], self.wq.shape[1]
            if x.shape[0] == 1:
                y = _cpu.int8_linear(q[0], self.wq[0].t(), xs.reshape(M), self.ws[0], bias, x.dtype)
                return y.reshape(1, M, N)
            return C.per_slice(
                lambda s: _cpu.int8_linear(
                    q[s].contiguous(),
                    self.wq[s].t(),
                    xs[s].reshape(M),
                    self.ws[s],
                    bias,
                    x.dtype,
                ).reshape(M, N),
                x.shape[0],
            )
        return C.per_slice(
            lambda s: kernels.matmul(
                q[s].contiguous(),
                self.wq[s].t(),
                a_scale=xs[s],
                b_scale=self.ws[s],
                bias=bias,
                out_dtype=x.dtype,
            ),
            x.shape[0],
        )

    def backward_operands(
        self, x: torch.Tensor, w: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, dequantize_int8(self.wq, self.ws, x.dtype)

    def float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return C.float_linear(x, w)


class _ConvW8A8(C.Run):
    def __init__(self, layer: QuantizableLayer, wq: torch.Tensor, ws: torch.Tensor) -> None:
        self.layer, self.wq, self.ws = layer, wq, ws

    def forward(
        self, x: torch.Tensor, w: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        # Per-tensor dynamic input scale: the int8 conv kernel takes one input scale.
        q, xs = quantize_symmetric(x, "int8", check_finite=False)
        return C.conv_forward(
            self.layer,
            q,
            self.wq,
            x_scale=xs.reshape(()),
            w_scale=self.ws,
            bias=bias,
            out_dtype=x.dtype,
        )

    def backward_operands(
        self, x: torch.Tensor, w: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, dequantize_int8(self.wq, self.ws, x.dtype)

    def float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return C.conv_forward(self.layer, x, w)


class Int8Scheme(C.Scheme):
    """int8 for one layer kind: kernel per output channel (symmetric, [-127, 127])."""

    def convert(
        self, layer: QuantizableLayer, cfg: QuantizationConfig, form: Any, values: bool
    ) -> None:
        name = C.kernel_name(layer)
        shape = tuple(form.stored_shape)
        channels = shape[: form.channel_axes]
        q = scale = None
        if values:
            w = form.to_stored(C.float_kernel(layer).detach())
            q, scale = quantize_symmetric(
                w, "int8", reduce_axes=tuple(range(form.channel_axes, w.dim()))
            )
            scale = scale.reshape(channels)
        C.replace_kernel(
            layer,
            {
                name: (shape, torch.int8, q, "zeros", C.INT8_CODES),
                f"{name}_scale": (channels, torch.float32, scale, "ones", C.POSITIVE_FINITE),
            },
        )

    def call(
        self, layer: QuantizableLayer, inputs: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        form = self.form
        if isinstance(form, EmbeddingForm):
            return _embedding_call(layer, inputs)
        lora = C.lora_term(layer, inputs)
        if isinstance(form, ConvForm):
            x = C.conv_input(layer, inputs)
            wq, ws = C.read(layer, "kernel"), C.read(layer, "kernel_scale")
            bias = C.conv_bias(layer)
            if self.config.weight_only:
                y = C.conv_forward(layer, x, dequantize_int8(wq, ws, x.dtype), bias=bias)
            else:
                y = _ConvW8A8(layer, wq, ws).apply(x, None, bias)
            return C.conv_output(layer, y, lora)
        x, meta = self.linear_rows(inputs)
        wq = self.as3(C.read(layer, "kernel"))
        ws = self.as3(C.read(layer, "kernel_scale"))
        bias = C.fusable_bias(layer)
        if self.config.weight_only:
            y = _weight_only_linear(x, wq, ws, bias)
        else:
            run = _LinearW8A8(wq, ws)
            # Without a graph to record, the forward pass itself (Run.apply's shortcut, one
            # frame less on the hot path).
            y = run.apply(x, None, bias) if C.needs_graph(x, bias) else run.forward(x, None, bias)
        return self.linear_output(layer, y, meta, bias is not None, lora)

    def code_variables(
        self,
        layer: QuantizableLayer,
        q: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        name = C.kernel_name(layer)
        return {name: q, f"{name}_scale": scale}

    def dequantized_kernel(self, layer: QuantizableLayer) -> torch.Tensor:
        """``q * scale`` in float32, in the float layer's layout."""
        name = C.kernel_name(layer)
        q = C.variable(layer, name).detach()
        stored = dequantize_int8(q, C.variable(layer, f"{name}_scale").detach(), torch.float32)
        form = self.form
        kernel: torch.Tensor = (
            form.from_stored(stored) if isinstance(form, ConvForm) else form.from_matrix(stored)
        )
        return kernel


WEIGHT_CHUNK = 1 << 19
"""Weight elements dequantized at a time by the weight-only forward pass without gradients:
the kernel is multiplied in N-chunks of at most this many elements (2 MiB of float32, reused
for every chunk), so no float copy of the whole kernel is made."""


def _weight_only_linear(
    x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x [S, M, K] @ (wq * ws)[s].T`` per slice (+ ``bias``) -> ``[S, M, N]``; in N-chunks of
    ``WEIGHT_CHUNK`` elements when nothing needs a gradient (same weight values per chunk)."""
    S, N, K = wq.shape
    rows = max(1, WEIGHT_CHUNK // max(K, 1))
    if torch.is_grad_enabled() and x.requires_grad:
        return C.float_linear(x, dequantize_int8(wq, ws, x.dtype), bias=bias)
    graph = torch.is_grad_enabled() and bias is not None and bias.requires_grad
    if x.dtype == torch.float32 and not graph and (bias is None or bias.dtype == torch.float32):
        return _weight_only_chunks(x, wq, ws, bias, max(1, min(rows, N)))
    if rows >= N:
        return C.float_linear(x, dequantize_int8(wq, ws, x.dtype), bias=bias)
    out = torch.empty(S, x.shape[1], N, dtype=x.dtype)
    for s in range(S):
        for n0 in range(0, N, rows):
            n1 = min(n0 + rows, N)
            w = dequantize_int8(wq[s, n0:n1], ws[s, n0:n1], x.dtype)
            b = None if bias is None else bias[n0:n1]
            out[s, :, n0:n1] = kernels.matmul(x[s], w.t(), bias=b)
    return out


def _weight_only_chunks(
    x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor | None, rows: int
) -> torch.Tensor:
    """float32 ``_weight_only_linear`` without gradients: each N-chunk of the kernel is
    dequantized in place in one reused float32 buffer (``copy_`` int8 -> float32 is exact and
    the fast conversion on CPU; then ``* scale``, the values of ``dequantize_int8``), then
    multiplied by the float32 GEMM of ``kernels.matmul`` (``addmm``/``mm`` on the same layouts;
    one chunk when the kernel fits, else N-chunks: same weights, float32 tolerance)."""
    S, N, K = wq.shape
    M = x.shape[1]
    if x.device.type != "cpu" or kernels.selected_backend(x.device) != "cpu":
        w = dequantize_int8(wq, ws, x.dtype)
        return C.float_linear(x, w, bias=bias)
    out = torch.empty(S, M, N, dtype=torch.float32)
    buf = torch.empty(rows * K, dtype=torch.float32)
    for s in range(S):
        xs = x[s]
        for n0 in range(0, N, rows):
            n1 = min(n0 + rows, N)
            w = buf[: (n1 - n0) * K].view(n1 - n0, K)
            w.copy_(wq[s, n0:n1])
            w.mul_(ws[s, n0:n1, None])
            dest = out[s] if n1 - n0 == N else out[s, :, n0:n1]
            if bias is None:
                torch.mm(xs, w.t(), out=dest)
            else:
                torch.addmm(bias[n0:n1], xs, w.t(), out=dest)
    return out


def _embedding_call(layer: QuantizableLayer, inputs: torch.Tensor) -> torch.Tensor:
    ids = C.embedding_ids(inputs)
    table, scale = C.read(layer, "embeddings"), C.read(layer, "embeddings_scale")
    rows = table[ids]  # [..., output_dim] int8: only the looked-up rows are dequantized
    return C.embedding_output(layer, ids, lambda dtype: dequantize_int8(rows, scale[ids], dtype))


for _cls in (Dense, EinsumDense, Conv1D, Conv2D, Embedding):
    _registry.register_scheme(_cls, "int8", Int8Scheme())
