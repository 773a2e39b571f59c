"""Shared machinery of the quantized layer modes: config resolution, the scheme base class,
quantized variables, the straight-through autograd function and the per-layer-kind ops.

Nothing here is public; each mode file (``int8.py``, ``int4.py``, ``float8.py``) builds its
schemes from these pieces and registers them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, cast, overload

import torch

from mpq import activations, kernels
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Embedding
from mpq.layers import autocast as _autocast
from mpq.layers import quantization as _registry
from mpq.layers.quantization import QuantizableLayer, mode_policy
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


def kernel_name(layer: QuantizableLayer) -> str:
    return "embeddings" if isinstance(layer, Embedding) else "kernel"


# ------------------------------------------------------------------------------ config
def resolve_config(layer: QuantizableLayer, config: Any, mode: str) -> QuantizationConfig:
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


def variable(layer: QuantizableLayer, name: str) -> torch.nn.Parameter:
    """The layer's variable ``name`` (a scheme reads only variables it created)."""
    return cast(torch.nn.Parameter, layer._parameters[name])


def read(layer: QuantizableLayer, name: str) -> torch.Tensor:
    """Read variable ``name`` for the running call (stateless values substituted)."""
    return _autocast.read(variable(layer, name))


def late_targets(layer: QuantizableLayer, names: tuple[str, ...]) -> list[torch.Tensor]:
    """Where an update that runs after the call returns (a backward pass) writes variables
    ``names``, fixed at call time: the variables themselves, or inside ``stateless_call``
    per-call buffers (copies of the given values) that it returns as their new values, so the
    layer is never written. The update writes them in place, under ``torch.no_grad()``."""
    scope = _autocast.STATE.stateless
    if scope is None:
        return [variable(layer, name) for name in names]
    return [scope.deferred(variable(layer, name)) for name in names]


VariableSpec = tuple[tuple[int, ...], torch.dtype, "torch.Tensor | None", str, "ValueRule | None"]
"""``(shape, dtype, value, initializer, rule)`` of a quantized variable (``replace_kernel``)."""


def replace_kernel(layer: QuantizableLayer, new: dict[str, VariableSpec]) -> None:
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


def float_kernel(layer: QuantizableLayer) -> torch.Tensor:
    return variable(layer, kernel_name(layer))


# ------------------------------------------------------------------------------ scheme base
class Scheme(_registry.QuantizationScheme):
    """Base of mpq's schemes. The registered object (one per (layer class, mode)) resolves a
    quantize request and returns, from ``quantize`` / ``build``, a new instance per layer that
    holds the layer's quantized state: ``config`` (a ``QuantizationConfig``) and ``form`` (how
    the kernel maps to the matrices the kernels multiply). ``build`` = the float build, then
    the same conversion as ``quantize`` on placeholder values (zeros, unit scales): the
    variables (names, order, shapes, dtypes) are identical on both paths.

    Subclasses implement ``check`` (validate before anything changes), ``convert`` (replace the
    float kernel by quantized variables), ``call`` and ``dequantized_kernel``; ``requantize``
    (``merge_lora``) quantizes a float scratch twin of the layer, unless overridden."""

    config: QuantizationConfig
    form: Any

    def __init__(self, config: QuantizationConfig | None = None, form: Any = None) -> None:
        if config is not None:
            self.config = config
            self.form = form

    # -- the registered object ----------------------------------------------------------
    def resolve(self, layer: QuantizableLayer, mode: str, config: Any) -> tuple[Any, Any]:
        """One ``QuantizationConfig`` and the target policy derived from it (a mode string
        becomes a config once; the config the layer was constructed with, if any, is used as
        before with the policy of the mode string)."""
        source = layer.dtype_policy.name
        if config is None:
            pending = layer._pending_quantization_config
            if pending is not None:
                return pending, mode_policy(mode, source)
            config = QuantizationConfig.get(mode)
        return config, config.to_policy(source)

    def scheme_class(self, cfg: QuantizationConfig) -> type[Scheme]:
        """The class of the per-layer scheme for ``cfg`` (a variant of the mode, e.g. static
        float8 scaling, may have its own)."""
        return type(self)

    def check(self, layer: QuantizableLayer, cfg: QuantizationConfig) -> None:
        """Raise before the layer is touched when ``cfg`` cannot run on ``layer``."""

    def bind(self, layer: QuantizableLayer, config: Any) -> Scheme:
        """The per-layer scheme for ``layer`` and ``config`` (checked; the layer is unchanged)."""
        cfg = resolve_config(layer, config, self.mode)
        form = form_of(layer, tuple(float_kernel(layer).shape))
        self.check(layer, cfg)
        scheme = self.scheme_class(cfg)(cfg, form)
        scheme.mode = self.mode
        return scheme

    def apply(self, layer: QuantizableLayer, mode: str, config: Any) -> tuple[Scheme, Any]:
        """The scheme side of ``layer.quantize(mode, config=config)`` in one call: the request
        resolved once (``resolve``), the per-layer scheme bound and checked (``bind``), the
        layer converted (``convert_layer``); returns ``(scheme, target policy)`` to attach."""
        cfg, policy = self.resolve(layer, mode, config)
        scheme = self.bind(layer, cfg)
        scheme.convert_layer(layer)
        return scheme, policy

    def quantize(self, layer: QuantizableLayer, config: Any = None) -> Scheme:
        scheme = self.bind(layer, config)
        scheme.convert_layer(layer)
        return scheme

    def build(self, layer: QuantizableLayer, input_shape: Any, config: Any = None) -> Scheme:
        _registry.float_build(layer, input_shape)
        scheme = self.bind(layer, config)
        scheme.convert(layer, scheme.config, scheme.form, values=False)
        return scheme

    # -- the per-layer scheme -----------------------------------------------------------
    def convert_layer(self, layer: QuantizableLayer) -> None:
        """Replace ``layer``'s float kernel by this scheme's quantized variables, computed from
        its values (placeholders for a kernel on the meta device)."""
        values = float_kernel(layer).device.type != "meta"
        self.convert(layer, self.config, self.form, values=values)

    def convert(self, layer: Any, cfg: QuantizationConfig, form: Any, values: bool) -> None:
        raise NotImplementedError

    def code_variables(
        self,
        layer: QuantizableLayer,
        q: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The stored variables (name -> value) for integer codes chosen by an algorithm (GPTQ):
        ``q [S, N, K]`` int8, ``scale [S, N]`` or grouped ``[S, N, G]``, ``zero`` ``[S, N, G]``
        (grouped) or None. Integer schemes only."""
        raise NotImplementedError(
            f"Expected an integer quantization scheme (int8, int4) to store integer codes. "
            f"Received: {type(self).__name__} on layer {layer.name!r}"
        )

    def get_config(self) -> dict[str, Any] | None:
        config: QuantizationConfig | None = getattr(self, "config", None)
        return None if config is None else config.get_config()

    def kernel_shape(self) -> tuple[int, ...] | None:
        form = getattr(self, "form", None)
        return None if form is None else tuple(form.kernel_shape)

    def requantize(self, layer: QuantizableLayer, delta: torch.Tensor) -> None:
        """``merge_lora``: a float scratch twin of the layer (no LoRA) takes
        ``dequantized_kernel + delta`` and is quantized with this scheme's config; its
        quantized variables are copied back (lossy: one more rounding)."""
        merged = self.dequantized_kernel(layer) + delta.float()
        config = layer.get_config()
        config.pop("quantization_config", None)
        config["dtype"] = layer.dtype_policy.source_name
        config["lora_rank"] = None
        config["lora_alpha"] = None
        with torch.random.fork_rng(devices=[]):
            scratch = type(layer).from_config(config)
            scratch.build_from_config(copy.deepcopy(layer.get_build_config()))
        with torch.no_grad():
            kernel = variable(scratch, kernel_name(scratch))
            kernel.copy_(merged.to(kernel.dtype))
        scratch.quantize(self.config)
        for name, value in scratch._parameters.items():
            if name == "bias" or value is None:
                continue
            target = variable(layer, name)
            target.copy_(value.detach().to(target.device))

    # -- helpers of ``call`` --------------------------------------------------------------
    def linear_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Dense/EinsumDense input -> ``[S, M, K]`` rows in a kernel-friendly float dtype."""
        rows, meta = self.form.to_rows(x)
        dtype = kernel_dtype(rows.dtype)
        return (rows if rows.dtype == dtype else rows.to(dtype)), meta

    def linear_output(
        self,
        layer: Any,
        y: torch.Tensor,
        meta: Any,
        bias_fused: bool,
        lora: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[S, M, N]`` -> the layer's output (bias if not fused, LoRA term, activation,
        compute dtype)."""
        y = self.form.from_rows(y, meta)
        bias = layer._parameters.get("bias")
        bias = None if (bias is None or bias_fused) else read(layer, "bias")
        return finish(layer, y, bias, lora)

    @overload
    def as3(self, t: torch.Tensor) -> torch.Tensor: ...

    @overload
    def as3(self, t: None) -> None: ...

    def as3(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """A stored ``[N, ...]`` tensor with a leading S axis of 1 when the form has none."""
        if t is None:
            return None
        return t if self.form.S else t.unsqueeze(0)


def lora_term(layer: QuantizableLayer, inputs: torch.Tensor) -> torch.Tensor | None:
    """LoRA's input-path term of a call (``mpq.layers.lora``), None without LoRA."""
    term = getattr(layer, "lora_output", None)
    return None if term is None else term(inputs)


def embedding_ids(inputs: torch.Tensor) -> torch.Tensor:
    """Embedding ids as int32/int64 (other dtypes truncated to int64, as the float layer does)."""
    return inputs if inputs.dtype in (torch.int32, torch.int64) else inputs.to(torch.int64)


def embedding_output(
    layer: QuantizableLayer, ids: torch.Tensor, rows: Callable[[torch.dtype], torch.Tensor]
) -> torch.Tensor:
    """A quantized table's lookup: ``rows(dtype)`` dequantizes the looked-up rows (float32
    math, one cast to ``dtype``). Without LoRA, straight to the compute dtype; with LoRA, the
    float32 rows plus LoRA's float32 rows, cast once to the compute dtype."""
    lora = lora_term(layer, ids)
    dtype = compute_dtype(layer)
    if lora is None:
        return rows(dtype)
    return (rows(torch.float32) + lora).to(dtype)


def training_flag(kwargs: dict[str, Any], layer: QuantizableLayer) -> bool:
    """``training`` of the running call: explicit > enclosing call's > torch's module mode."""
    training = kwargs.pop("training", None)
    if training is None:
        frame = _autocast.STATE.frame
        training = frame.training if frame is not None else None
    if training is None:
        training = layer.training
    return bool(training)


def compute_dtype(layer: QuantizableLayer) -> torch.dtype:
    dtype: torch.dtype = layer.dtype_policy.torch_compute_dtype
    return dtype


def finish(
    layer: Any,
    y: torch.Tensor,
    bias: torch.Tensor | None = None,
    lora: torch.Tensor | None = None,
) -> torch.Tensor:
    """Add LoRA's term and a bias that was not fused, apply the activation, return in the
    compute dtype."""
    dtype = compute_dtype(layer)
    if y.dtype != dtype:  # (a no-op .to still costs a dispatch per call)
        y = y.to(dtype)
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
    def forward(
        ctx: Any,
        run: Run,
        x: torch.Tensor,
        w: torch.Tensor | None,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.run = run
        ctx.save_for_backward(x, w, bias)
        return run.forward(x, w, bias)

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        x, w, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[1:4]
        grad, gx, gw = ctx.run.input_grads(grad, x, w, need_x, need_w)
        gb = None
        if need_b:
            gb = grad.reshape(-1, grad.shape[-1]).to(torch.float32).sum(0).to(bias.dtype)
        return None, gx, gw, gb


def needs_graph(*tensors: torch.Tensor | None) -> bool:
    """True when autograd must record an op on ``tensors`` (grad mode on, one requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class Run:
    """One quantized forward pass; subclasses set ``forward`` and the backward pieces."""

    def forward(
        self, x: torch.Tensor, w: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def grad_hook(self, grad: torch.Tensor) -> torch.Tensor:
        return grad

    def backward_operands(
        self, x: torch.Tensor, w: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError

    def float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def input_grads(
        self,
        grad: torch.Tensor,
        x: torch.Tensor,
        w: torch.Tensor | None,
        need_x: bool,
        need_w: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
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
                gw = grads.pop(0).to(wb.dtype if w is None else w.dtype)
        return grad, gx, gw

    def apply(
        self, x: torch.Tensor, w: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if not needs_graph(x, w, bias):
            # Nothing to differentiate: the forward pass without the autograd.Function's cost
            # (the same tensors, no graph either way).
            return self.forward(x, w, bias)
        out: torch.Tensor = _QuantizedOp.apply(self, x, w, bias)  # type: ignore[no-untyped-call]
        return out


# ------------------------------------------------------------------------------ linear ops
def fusable_bias(layer: Any) -> torch.Tensor | None:
    """Dense's ``[N]`` bias goes into the kernel epilogue; EinsumDense's is added after."""
    if isinstance(layer, Dense) and layer._parameters.get("bias") is not None:
        b = read(layer, "bias")
        return b if b.dtype in _KERNEL_FLOATS else b.to(kernel_dtype(b.dtype))
    return None


def per_slice(fn: Callable[[int], torch.Tensor], n: int) -> torch.Tensor:
    """``torch.stack([fn(s) for s in range(n)])``; one slice (Dense) is just unsqueezed."""
    if n == 1:
        return fn(0).unsqueeze(0)
    return torch.stack([fn(s) for s in range(n)])


def float_linear(
    x_rows: torch.Tensor,
    w_mat: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
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
    x_scale: torch.Tensor | None = None,
    w_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
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


def conv_output(layer: Any, y: torch.Tensor, lora: torch.Tensor | None = None) -> torch.Tensor:
    return finish(layer, layer._from_channels_last(y), None, lora)


__all__ = [
    "INT4_ZERO_POINTS",
    "INT8_CODES",
    "LAYER_CLASSES",
    "POSITIVE_FINITE",
    "Run",
    "Scheme",
    "ValueRule",
    "resolve_config",
]
