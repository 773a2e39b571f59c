"""Shared machinery of the quantized layer modes: config resolution, the scheme base class,
quantized variables, the straight-through autograd function and the per-layer-kind ops.

Nothing here is public; each mode file (``int8.py``, ``int4.py``, ``float8.py``) builds its
schemes from these pieces and registers them.
"""

from __future__ import annotations

from typing import Any

import torch

from mpq import activations, kernels
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Embedding
from mpq.layers import autocast as _autocast
from mpq.layers import quantization as _registry
from mpq.layers.variables import POSITIVE_FINITE, ValueRule, set_value_rule
from mpq.quantization._forms import form_of
from mpq.quantization.config import QuantizationConfig

_INT8_EXACT_K = kernels._checks.INT8_EXACT_K

LAYER_CLASSES = (Dense, EinsumDense, Conv1D, Conv2D, Embedding)

# The kernels take float32/float16/bfloat16; a float64 policy computes its quantized ops in
# float32 and casts the result back (documented in docs/quantization.md).
_KERNEL_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in _KERNEL_FLOATS else torch.float32


def kernel_name(layer: Any) -> str:
    return "embeddings" if isinstance(layer, Embedding) else "kernel"


# ------------------------------------------------------------------------------ config
def resolve_config(layer: Any, config: Any, mode: str) -> QuantizationConfig:
    """The ``QuantizationConfig`` a scheme of ``mode`` runs ``layer`` with.

    ``config``: a QuantizationConfig, its config dict, or a quantized policy (the target policy
    when ``Layer.quantize`` got a mode string). A config that contradicts the layer's quantized
    policy (mode, block size, history length) raises.
    """
    from mpq.policy import DTypePolicy

    if isinstance(config, DTypePolicy):
        cfg = QuantizationConfig.from_policy(config)
    else:
        cfg = QuantizationConfig.get(config)
    if cfg.mode != mode:
        raise ValueError(
            f"Expected a quantization config for mode {mode!r} on layer {layer.name!r}. "
            f"Received: config={cfg!r}"
        )
    policy = layer.dtype_policy
    if policy.quantization_mode is not None and not cfg.matches_policy(policy):
        raise ValueError(
            f"Expected the quantization config of layer {layer.name!r} to match its policy "
            f"{policy.name!r}. Received: quantization_config={cfg.get_config()}"
        )
    return cfg


# ------------------------------------------------------------------------------ variables
# int8 codes: the symmetric range mpq's int8 quantizer produces (-128 is never a code).
INT8_CODES = ValueRule("int8 codes", -127, 127)
INT4_ZERO_POINTS = ValueRule("int4 zero points", -8, 7)


def add_state(
    layer: Any,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    initializer: str = "zeros",
    rule: ValueRule | None = None,
) -> Any:
    """A non-trainable, never-autocast variable (quantized values, scales, amax histories);
    ``rule``: the values it may hold, checked on every write (``mpq.layers.variables``)."""
    var = layer.add_weight(
        shape=shape,
        initializer=initializer,
        dtype=dtype,
        trainable=False,
        autocast=False,
        name=name,
    )
    var.requires_grad_(False)
    set_value_rule(var, rule)
    return var


def assign_valid(var: torch.Tensor, value: torch.Tensor) -> None:
    """``var.assign(value)`` for a value valid by construction (mpq's own delayed-scaling
    updates keep the old scale wherever a new one would not be finite and > 0): the shape is
    checked, the values are not, so a training step does not wait on the device for the check.
    ``var``: a variable or its ``read`` value."""
    variable = var.__dict__.get("_variable", var)
    variable._write(variable._check_value(value, "assign"))


def read(layer: Any, name: str) -> torch.Tensor:
    """Read variable ``name`` for the running call (stateless values substituted)."""
    return _autocast.read(layer._parameters[name])


def late_targets(layer: Any, names: tuple[str, ...]) -> list[torch.Tensor]:
    """Where an update that runs after the call returns (a backward pass) writes variables
    ``names``, fixed at call time: the variables themselves, or inside ``stateless_call``
    per-call buffers (copies of the given values) that it returns as their new values, so the
    layer is never written. The update writes them in place, under ``torch.no_grad()``."""
    scope = _autocast.STATE.stateless
    if scope is None:
        return [layer._parameters[name] for name in names]
    return [scope.deferred(layer._parameters[name]) for name in names]


def replace_kernel(layer: Any, new: dict[str, tuple]) -> None:
    """Swap the float kernel for quantized variables, ``new[name] = (shape, dtype, value,
    initializer, rule)`` in creation order (value None: the initializer's placeholder, e.g.
    while building; rule: a ``ValueRule`` or None). The caller computes every value before
    calling: nothing here can fail midway."""
    name = kernel_name(layer)
    del layer._parameters[name]
    for var_name, (shape, dtype, value, init, rule) in new.items():
        var = add_state(layer, var_name, shape, dtype, init, rule)
        if value is not None:
            with torch.no_grad():
                var.copy_(value.to(var.device))
    layer._update_cast_dtypes()


def float_kernel(layer: Any) -> torch.Tensor:
    return layer._parameters[kernel_name(layer)]


# ------------------------------------------------------------------------------ scheme base
class Scheme(_registry.QuantizationScheme):
    """Base of mpq's schemes: ``build`` = the float build, then the same conversion as
    ``quantize`` on placeholder values (zeros, unit scales); the variables (names, order,
    shapes, dtypes) are then identical on both paths. Subclasses implement ``check``
    (validate before anything changes), ``convert`` and ``call``."""

    def check(self, layer: Any, cfg: QuantizationConfig) -> None:
        """Raise before the layer is touched when ``cfg`` cannot run on ``layer``."""

    def convert(self, layer: Any, cfg: QuantizationConfig, form: Any, values: bool) -> None:
        raise NotImplementedError

    def _prepare(self, layer: Any, config: Any) -> tuple[QuantizationConfig, Any]:
        cfg = resolve_config(layer, config, self.mode)
        form = form_of(layer, tuple(float_kernel(layer).shape))
        self.check(layer, cfg)
        return cfg, form

    def quantize(self, layer: Any, config: Any = None) -> None:
        cfg, form = self._prepare(layer, config)
        self.convert(layer, cfg, form, values=float_kernel(layer).device.type != "meta")
        layer.__dict__["_quantization_config"] = cfg
        layer.__dict__["_quant_form"] = form

    def build(self, layer: Any, input_shape: Any, config: Any = None) -> None:
        _registry.float_build(layer, input_shape)
        cfg, form = self._prepare(layer, config)
        self.convert(layer, cfg, form, values=False)
        layer.__dict__["_quantization_config"] = cfg
        layer.__dict__["_quant_form"] = form


def config_of(layer: Any) -> QuantizationConfig:
    return layer.__dict__["_quantization_config"]


def form(layer: Any) -> Any:
    return layer.__dict__["_quant_form"]


def training_flag(kwargs: dict, layer: Any) -> bool:
    """``training`` of the running call: explicit > enclosing call's > torch's module mode."""
    training = kwargs.pop("training", None)
    if training is None:
        frame = _autocast.STATE.frame
        training = frame.training if frame is not None else None
    if training is None:
        training = layer.training
    return bool(training)


def compute_dtype(layer: Any) -> torch.dtype:
    return layer.dtype_policy.torch_compute_dtype


def finish(layer: Any, y: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Add a bias that was not fused, apply the activation, return in the compute dtype."""
    dtype = compute_dtype(layer)
    if y.dtype != dtype:  # (a no-op .to still costs a dispatch per call)
        y = y.to(dtype)
    lora = layer.__dict__.get("_lora_term")  # LoRA's input-path term (mpq.layers.lora)
    if lora is not None:
        y = y + lora
    if bias is not None:
        y = y + bias.to(dtype)
    fn = layer.activation
    return y if fn is activations.linear else fn(y)


# ------------------------------------------------------------------------------ the STE op
class _QuantizedOp(torch.autograd.Function):
    """``run.forward(x, w, bias)`` in the forward pass (quantized kernels, no autograd);
    the backward pass differentiates ``run.float_op`` at ``run.backward_operands(x, w)`` with
    the output gradient ``run.grad_hook(grad)`` (straight-through estimator)."""

    @staticmethod
    def forward(ctx, run, x, w, bias):
        ctx.run = run
        ctx.save_for_backward(x, w, bias)
        return run.forward(x, w, bias)

    @staticmethod
    def backward(ctx, grad):
        x, w, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[1:4]
        grad, gx, gw = ctx.run.input_grads(grad, x, w, need_x, need_w)
        gb = None
        if need_b:
            gb = grad.reshape(-1, grad.shape[-1]).to(torch.float32).sum(0).to(bias.dtype)
        return None, gx, gw, gb


class Run:
    """One quantized forward pass; subclasses set ``forward`` and the backward pieces."""

    def forward(self, x, w, bias):  # pragma: no cover - overridden
        raise NotImplementedError

    def grad_hook(self, grad: torch.Tensor) -> torch.Tensor:
        return grad

    def backward_operands(self, x, w):  # pragma: no cover - overridden
        raise NotImplementedError

    def float_op(self, x, w):  # pragma: no cover - overridden
        raise NotImplementedError

    def input_grads(self, grad, x, w, need_x: bool, need_w: bool):
        """``(grad used for the bias, grad_x, grad_w)``: by default the gradients of
        ``float_op`` at ``backward_operands(x, w)`` for the output gradient ``grad_hook(grad)``."""
        grad = self.grad_hook(grad)
        gx = gw = None
        if need_x or need_w:
            xb, wb = self.backward_operands(x, w)
            with torch.enable_grad():
                xr = xb.detach().requires_grad_(need_x)
                wr = wb.detach().requires_grad_(need_w)
                y = self.float_op(xr, wr)
                wanted = [t for t, need in ((xr, need_x), (wr, need_w)) if need]
                grads = list(torch.autograd.grad(y, wanted, grad.to(y.dtype)))
            if need_x:
                gx = grads.pop(0).to(x.dtype)
            if need_w:
                gw = grads.pop(0).to(w.dtype)
        return grad, gx, gw

    def apply(self, x: torch.Tensor, w: torch.Tensor | None, bias: torch.Tensor | None):
        if not torch.is_grad_enabled() or not any(
            t is not None and t.requires_grad for t in (x, w, bias)
        ):
            # Nothing to differentiate: the forward pass without the autograd.Function's cost
            # (the same tensors, no graph either way).
            return self.forward(x, w, bias)
        return _QuantizedOp.apply(self, x, w, bias)


# ------------------------------------------------------------------------------ linear ops
def linear_rows(layer: Any, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Dense/EinsumDense input -> ``[S, M, K]`` rows in a kernel-friendly float dtype."""
    rows, meta = form(layer).to_rows(x)
    dtype = kernel_dtype(rows.dtype)
    return (rows if rows.dtype == dtype else rows.to(dtype)), meta


def linear_output(layer: Any, y: torch.Tensor, meta: Any, bias_fused: bool) -> torch.Tensor:
    """``[S, M, N]`` -> the layer's output (bias if not fused, activation, compute dtype)."""
    y = form(layer).from_rows(y, meta)
    bias = layer._parameters.get("bias")
    bias = None if (bias is None or bias_fused) else read(layer, "bias")
    return finish(layer, y, bias)


def fusable_bias(layer: Any) -> torch.Tensor | None:
    """Dense's ``[N]`` bias goes into the kernel epilogue; EinsumDense's is added after."""
    if isinstance(layer, Dense) and layer._parameters.get("bias") is not None:
        b = read(layer, "bias")
        return b if b.dtype in _KERNEL_FLOATS else b.to(kernel_dtype(b.dtype))
    return None


def as3(layer: Any, t: torch.Tensor | None) -> torch.Tensor | None:
    """A stored ``[N, ...]`` tensor with a leading S axis of 1 when the form has none."""
    if t is None:
        return None
    return t if form(layer).S else t.unsqueeze(0)


def per_slice(fn, n: int) -> torch.Tensor:
    """``torch.stack([fn(s) for s in range(n)])``; one slice (Dense) is just unsqueezed."""
    if n == 1:
        return fn(0).unsqueeze(0)
    return torch.stack([fn(s) for s in range(n)])


def float_linear(x_rows: torch.Tensor, w_mat: torch.Tensor, bias=None, out_dtype=None):
    """Differentiable ``x_rows [S, M, K] @ w_mat[s].T`` per slice -> ``[S, M, N]``."""
    return per_slice(
        lambda s: kernels.matmul(x_rows[s], w_mat[s].t(), bias=bias, out_dtype=out_dtype),
        x_rows.shape[0],
    )


def quantize_rows_int8(x_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-row (per-token) int8: ``q [S, M, K]`` int8, ``scale [S, M, 1]`` float32."""
    from mpq.quantizers.integer import quantize_rows_int8 as rows_int8

    # The codes and scales of quantize_symmetric(x_rows, "int8", reduce_axes=-1,
    # check_finite=False), bit for bit, without its per-call argument handling.
    return rows_int8(x_rows)


def prevalidated_int8(x_rows: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor) -> bool:
    """True when an int8 layer's matmul may run ``mpq.kernels._cpu.int8_linear`` (no per-call
    argument checks): the CPU backend is selected, and the operands have the layout and dtypes
    ``kernels.matmul`` checks (``x_rows`` [S, M, K] float, ``wq`` [S, N, K] int8 contiguous,
    ``ws`` [S, N] float32, K within one exact int32 chunk). Else the layer calls the checked
    ``kernels.matmul`` (same numbers, or its error)."""
    return (
        x_rows.device.type == "cpu"
        and kernels.selected_backend(x_rows.device) == "cpu"
        and wq.dtype == torch.int8
        and ws.dtype == torch.float32
        and wq.device.type == "cpu"
        and ws.device.type == "cpu"
        and wq.dim() == 3
        and ws.shape == wq.shape[:2]
        and x_rows.shape[0] == wq.shape[0]
        and x_rows.shape[2] == wq.shape[2]
        and 2 <= wq.shape[2] <= _INT8_EXACT_K
        and wq.is_contiguous()
    )


# ------------------------------------------------------------------------------ conv ops
def conv_forward(
    layer: Any,
    x_cl: torch.Tensor,
    w_stored: torch.Tensor,
    *,
    x_scale=None,
    w_scale=None,
    bias=None,
    out_dtype=None,
) -> torch.Tensor:
    """``mpq.kernels.conv2d`` on channels-last inputs for Conv1D (as a 1 x W conv) and Conv2D;
    ``w_stored`` is ``[OC, KH, KW, C/groups]`` (Conv1D ``[OC, KW, C/groups]``)."""
    pads = layer._pads(x_cl.shape[1:-1])
    if layer.rank == 1:
        y = kernels.conv2d(
            x_cl.unsqueeze(1),
            w_stored.unsqueeze(1),
            stride=(1, layer.strides[0]),
            padding=((0, 0), pads[0]),
            dilation=(1, layer.dilation_rate[0]),
            groups=layer.groups,
            x_scale=x_scale,
            w_scale=w_scale,
            bias=bias,
            out_dtype=out_dtype,
        )
        return y.squeeze(1)
    return kernels.conv2d(
        x_cl,
        w_stored,
        stride=layer.strides,
        padding=(pads[0], pads[1]),
        dilation=layer.dilation_rate,
        groups=layer.groups,
        x_scale=x_scale,
        w_scale=w_scale,
        bias=bias,
        out_dtype=out_dtype,
    )


def conv_input(layer: Any, x: torch.Tensor) -> torch.Tensor:
    x = layer._to_channels_last(x)
    return x.to(kernel_dtype(x.dtype)).contiguous()


def conv_bias(layer: Any) -> torch.Tensor | None:
    if layer._parameters.get("bias") is None:
        return None
    b = read(layer, "bias")
    return b.to(kernel_dtype(b.dtype))


def conv_output(layer: Any, y: torch.Tensor) -> torch.Tensor:
    return finish(layer, layer._from_channels_last(y))


__all__ = [
    "INT4_ZERO_POINTS",
    "INT8_CODES",
    "LAYER_CLASSES",
    "POSITIVE_FINITE",
    "Run",
    "Scheme",
    "resolve_config",
]
