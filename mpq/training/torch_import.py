"""`from_torch`: copy a PyTorch module tree with its standard layers replaced by mpq layers.

nn.Linear (and subclasses that keep its forward), Hugging Face ``Conv1D``, nn.MultiheadAttention,
nn.Conv1d/2d, nn.Embedding, nn.LayerNorm and nn.BatchNorm2d become Dense, Conv1D/2D
(channels_first), Embedding, LayerNormalization and BatchNormalization with the same weights,
so mpq policies, ``mpq.quantize``, calibration, QAT and LoRA apply to any PyTorch model.
The rules (selection, tied weights, dtypes at the boundary with torch code): docs/models.md.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
from torch import nn

from mpq import policy as _policy
from mpq._errors import describe as _describe
from mpq.layers import (
    BatchNormalization,
    Conv1D,
    Conv2D,
    Dense,
    Embedding,
    Layer,
    LayerNormalization,
    RMSNormalization,
)
from mpq.layers.variables import Variable
from mpq.policy import DTypePolicy, DTypePolicyMap, QuantizedDTypePolicy
from mpq.training.torch_attention import MultiheadAttention

__all__ = ["FromTorchReport", "from_torch"]

_Policy = DTypePolicy | DTypePolicyMap | None
"""`from_torch`'s policy once resolved: one for all layers, per qualified name, or None."""
_Shape = tuple[int | None, ...] | None
"""A module's recorded input shape (batch dimension None), or None when not recorded."""


@dataclass
class FromTorchReport:
    """What :func:`from_torch` did, keyed by the torch qualified name (``""`` for the root).

    Attributes:
        converted: name -> ``"Linear -> Dense"`` etc.
        unsupported: modules with parameters or buffers that were left as they are -> why.
        skipped: modules that ``filter`` excluded -> ``"filtered"``.
        tied: name -> how a weight shared with another module was kept shared.
        unchanged: parameter-free modules left as they are (ReLU, pooling, Flatten, ...).
        notes: name -> a behaviour difference to know about (e.g. BatchNorm statistics).
        linear_weights: elements of the linear/conv weights of the model (``nn.Linear`` and its
            subclasses, Hugging Face ``Conv1D``, ``nn.Conv*d``, ``nn.MultiheadAttention``'s
            projections), each shared tensor counted once.
        converted_linear_weights: how many of them mpq layers now hold.
    """

    converted: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    unchanged: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)
    linear_weights: int = 0
    converted_linear_weights: int = 0

    @property
    def coverage(self) -> float:
        """Fraction of the linear/conv weight elements held by mpq layers (1.0 when none)."""
        if self.linear_weights == 0:
            return 1.0
        return self.converted_linear_weights / self.linear_weights

    def __str__(self) -> str:
        lines = [
            f"coverage: {100 * self.coverage:.1f}% of linear/conv weights "
            f"({self.converted_linear_weights} of {self.linear_weights} elements)",
            f"converted ({len(self.converted)}):",
        ]
        lines += [f"  {k or '<root>'}: {v}" for k, v in self.converted.items()]
        for title, entries in (
            ("tied", self.tied),
            ("skipped by the filter", self.skipped),
            ("unsupported, left as torch modules", self.unsupported),
            ("notes", self.notes),
        ):
            if entries or title.startswith("unsupported"):
                lines.append(f"{title} ({len(entries)}):")
                lines += [f"  {k or '<root>'}: {v}" for k, v in entries.items()]
        return "\n".join(lines)


class _Unsupported(Exception):
    """A supported module type with options mpq's layer cannot reproduce."""


@dataclass
class _Converted:
    """A converter's result: the module that replaces the torch module, the mpq layers in it
    (each with the quantized policy to apply after the weights are copied, or None), a note."""

    module: nn.Module
    layers: list[tuple[Layer, QuantizedDTypePolicy | None]]
    note: str | None = None
    target: str | None = None


# ----------------------------------------------------------------------------- helpers
def _layer_policy(policy: _Policy, name: str, weight: torch.Tensor) -> DTypePolicy:
    """The policy of the layer for ``name``: None -> the weight's own dtype (a faithful copy)."""
    if policy is None:
        return _policy.get(weight.dtype)
    if isinstance(policy, _policy.DTypePolicyMap):
        return policy[name]
    return policy


_L = TypeVar("_L", bound=Layer)


def _make(
    cls: type[_L], policy: DTypePolicy, name: str, **kwargs: Any
) -> tuple[_L, QuantizedDTypePolicy | None]:
    """Construct under the float source of a quantized policy (weights are copied first, the
    layer is quantized after), else under ``policy``. (``kwargs``: the layer's arguments.)"""
    if isinstance(policy, QuantizedDTypePolicy):
        float_policy = _policy.get(policy.source_name)
        return cls(dtype=float_policy, name=name or None, **kwargs), policy
    return cls(dtype=policy, name=name or None, **kwargs), None


def _assign(var: Variable, value: torch.Tensor) -> None:
    """Give ``var`` a copy of ``value`` in ``var``'s dtype, keeping ``value``'s memory layout
    (e.g. nn.Linear's [out, in] storage seen as an [in, out] view): the BLAS / convolution calls,
    and so the float32 outputs, are then identical to torch's."""
    if tuple(value.shape) != tuple(var.shape):
        raise ValueError(
            f"Internal shape mismatch for {getattr(var, 'path', '?')}: "
            f"{tuple(value.shape)} vs {tuple(var.shape)}"
        )
    var.data = value.detach().to(dtype=var.dtype, copy=True)  # preserve_format keeps strides
    if isinstance(value, nn.Parameter) and not value.requires_grad:
        var.trainable = False


def _to_device_of(layer: Layer, *tensors: torch.Tensor | None) -> None:
    """Move the freshly built ``layer`` to the device of ``tensors`` (before the copy)."""
    device = next((t.device for t in tensors if t is not None), None)
    if device is not None and device.type != "cpu":
        layer.to(device)


def _module_device(m: nn.Module) -> torch.device | None:
    t: torch.Tensor | None = next(iter(m.parameters()), None)
    if t is None:
        t = next(iter(m.buffers()), None)
    return None if t is None else t.device


def _transposed_view(w: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``w.permute(dims)`` backed by a fresh copy of ``w`` in its own layout."""
    return w.detach().clone().permute(dims)


def _copy_grad_flag(var: Variable, weight: torch.Tensor) -> None:
    if not weight.requires_grad:
        var.trainable = False


def _conv_padding(m: nn.Conv1d | nn.Conv2d) -> tuple[str, tuple[int, ...] | None]:
    """(mpq padding, explicit torch padding to apply first or None)."""
    if m.padding_mode != "zeros":
        raise _Unsupported(f"padding_mode={m.padding_mode!r} (only 'zeros')")
    pad = m.padding
    if isinstance(pad, str):
        return pad, None  # "valid" or "same" (torch allows "same" only with stride 1)
    if all(p == 0 for p in pad):
        return "valid", None
    stride_one = all(s == 1 for s in m.stride)
    symmetric_same = all(
        2 * p == d * (k - 1) for p, d, k in zip(pad, m.dilation, m.kernel_size, strict=True)
    )
    if stride_one and symmetric_same:
        return "same", None
    # Other zero paddings: an explicit pad, then a "valid" convolution (same result).
    return "valid", tuple(pad)


# ----------------------------------------------------------------------------- converters
def _dense(
    name: str,
    policy: _Policy,
    kernel: torch.Tensor,
    bias: torch.Tensor | None,
    grad_ref: torch.Tensor,
) -> tuple[Dense, QuantizedDTypePolicy | None]:
    """A Dense layer with ``kernel [in, out]`` (any strides: kept) and ``bias [out]``."""
    p = _layer_policy(policy, name, grad_ref)
    layer, quant = _make(Dense, p, name, units=kernel.shape[1], use_bias=bias is not None)
    layer.build((None, kernel.shape[0]))
    _to_device_of(layer, kernel)
    _assign(layer.kernel, kernel)
    if bias is not None:
        _assign(cast(Variable, layer.bias), bias)  # use_bias=True: a Variable
    _copy_grad_flag(layer.kernel, grad_ref)
    return layer, quant


def _linear(m: nn.Linear, name: str, policy: _Policy, shape: _Shape) -> _Converted:
    layer, quant = _dense(name, policy, m.weight.detach().t(), m.bias, m.weight)
    return _Converted(layer, [(layer, quant)])


def _hf_conv1d(m: Any, name: str, policy: _Policy, shape: _Shape) -> _Converted:
    # `m`: transformers' Conv1D, known by its qualified name only (never imported).
    # Hugging Face's Conv1D (GPT-2) is a linear layer with the weight stored [in, out]:
    # Dense's own layout.
    layer, quant = _dense(name, policy, m.weight.detach(), m.bias, m.weight)
    return _Converted(layer, [(layer, quant)])


def _multihead_attention(
    m: nn.MultiheadAttention, name: str, policy: _Policy, shape: _Shape
) -> _Converted:
    if m.bias_k is not None or m.bias_v is not None:
        raise _Unsupported("add_bias_kv=True (learned key/value biases)")
    if m.add_zero_attn:
        raise _Unsupported("add_zero_attn=True")
    e = m.embed_dim
    if m._qkv_same_embed_dim:
        ws = m.in_proj_weight.detach().chunk(3)
        refs = (m.in_proj_weight,) * 3
    else:
        ws = (m.q_proj_weight.detach(), m.k_proj_weight.detach(), m.v_proj_weight.detach())
        refs = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    bs = m.in_proj_bias.detach().chunk(3) if m.in_proj_bias is not None else (None,) * 3
    layers: list[tuple[Layer, QuantizedDTypePolicy | None]] = []
    for proj, w, b, ref in zip(("q_proj", "k_proj", "v_proj"), ws, bs, refs, strict=True):
        layers.append(_dense(f"{name}.{proj}" if name else proj, policy, w.t(), b, ref))
    out_name = f"{name}.out_proj" if name else "out_proj"
    out = _dense(
        out_name, policy, m.out_proj.weight.detach().t(), m.out_proj.bias, m.out_proj.weight
    )
    layers.append(out)
    module = MultiheadAttention(
        *(layer for layer, _ in layers),
        embed_dim=e,
        num_heads=m.num_heads,
        dropout=m.dropout,
        batch_first=m.batch_first,
        qkv_same_embed_dim=m._qkv_same_embed_dim,
        has_in_bias=m.in_proj_bias is not None,
        dtype=m.out_proj.weight.dtype,
    )
    note = (
        "packed in_proj split into q_proj/k_proj/v_proj Dense layers"
        if m._qkv_same_embed_dim
        else None
    )
    return _Converted(module, layers, note, target="MultiheadAttention (4 Dense)")


def _conv(m: nn.Conv1d | nn.Conv2d, name: str, policy: _Policy, shape: _Shape) -> _Converted:
    padding, explicit = _conv_padding(m)
    rank = 1 if isinstance(m, nn.Conv1d) else 2
    cls: type[Conv1D | Conv2D] = Conv1D if rank == 1 else Conv2D
    p = _layer_policy(policy, name, m.weight)
    layer, quant = _make(
        cls,
        p,
        name,
        filters=m.out_channels,
        kernel_size=m.kernel_size,
        strides=m.stride,
        padding=padding,
        data_format="channels_first",
        dilation_rate=m.dilation,
        groups=m.groups,
        use_bias=m.bias is not None,
    )
    layer.build((None, m.in_channels, *([None] * rank)))
    _to_device_of(layer, m.weight)
    # torch [out, in/g, *k] -> Keras [*k, in/g, out], as a view of torch's layout
    dims = (2, 1, 0) if rank == 1 else (2, 3, 1, 0)
    _assign(layer.kernel, _transposed_view(m.weight, dims))
    if m.bias is not None:
        _assign(cast(Variable, layer.bias), m.bias)  # use_bias=True: a Variable
    _copy_grad_flag(layer.kernel, m.weight)
    if explicit is None:
        return _Converted(layer, [(layer, quant)])
    # F.pad order: last axis first, (before, after) per axis.
    pads = tuple(p for p in reversed(explicit) for _ in (0, 1))
    pad_cls = nn.ConstantPad1d if rank == 1 else nn.ConstantPad2d
    wrapper = nn.Sequential()
    wrapper.add_module("pad", pad_cls(pads, 0.0))  # type: ignore[arg-type]  # 2 or 4 ints
    wrapper.add_module("conv", layer)
    note = f"padding={explicit} (not a Keras 'same'): a zero pad module, then Conv{rank}D 'valid'"
    return _Converted(wrapper, [(layer, quant)], note, target=f"ConstantPad + Conv{rank}D")


class _PaddingRowNoGradient:
    """Forward hook of a converted ``nn.Embedding(padding_idx=i)``: the looked-up rows of ``i``
    are detached, so that row of the table gets no gradient, as in torch (the values are
    unchanged). A module hook, so copies of the model keep it."""

    def __init__(self, idx: int) -> None:
        self.idx = idx

    def __call__(
        self, module: nn.Module, args: tuple[object, ...], output: torch.Tensor
    ) -> torch.Tensor:
        ids = args[0] if args else None
        if not isinstance(ids, torch.Tensor) or not output.requires_grad:
            return output
        mask = (ids == self.idx).unsqueeze(-1)
        return torch.where(mask, output.detach(), output)

    def __repr__(self) -> str:
        return f"_PaddingRowNoGradient(padding_idx={self.idx})"


def _embedding(m: nn.Embedding, name: str, policy: _Policy, shape: _Shape) -> _Converted:
    if m.max_norm is not None:
        raise _Unsupported(
            f"max_norm={m.max_norm!r}: torch renormalizes the looked-up rows of the table in "
            "place at every call; mpq's Embedding does not"
        )
    for attr in ("scale_grad_by_freq", "sparse"):
        if getattr(m, attr):
            raise _Unsupported(f"{attr}=True (mpq's Embedding has no such option)")
    p = _layer_policy(policy, name, m.weight)
    layer, quant = _make(Embedding, p, name, input_dim=m.num_embeddings, output_dim=m.embedding_dim)
    layer.build()
    _to_device_of(layer, m.weight)
    _assign(layer.embeddings, m.weight)
    _copy_grad_flag(layer.embeddings, m.weight)
    note = None
    if m.padding_idx is not None:
        # The lookup is the same; torch also gives the padding row no gradient: so does this.
        layer.__dict__["_padding_idx"] = int(m.padding_idx)
        layer.register_forward_hook(_PaddingRowNoGradient(int(m.padding_idx)))
        note = f"padding_idx={m.padding_idx}: that row gets no gradient (a forward hook)"
    return _Converted(layer, [(layer, quant)], note)


def _layer_norm(m: nn.LayerNorm, name: str, policy: _Policy, shape: _Shape) -> _Converted:
    k = len(m.normalized_shape)
    shape = (None, *m.normalized_shape) if shape is None else shape
    ref = m.weight if m.weight is not None else torch.empty(0)
    p = _layer_policy(policy, name, ref)
    affine = m.elementwise_affine
    has_bias = affine and getattr(m, "bias", None) is not None
    # Axes counted from the end: the layer accepts inputs of any rank, as torch's.
    axis = -1 if k == 1 else list(range(-k, 0))
    layer, quant = _make(
        LayerNormalization, p, name, axis=axis, epsilon=m.eps, center=has_bias, scale=affine
    )
    layer.build(tuple(shape))
    _to_device_of(layer, m.weight)
    if affine:
        _assign(layer.gamma, m.weight)
    if has_bias:
        _assign(layer.beta, m.bias)
    return _Converted(layer, [(layer, quant)])


def _rms_norm(m: Any, name: str, policy: _Policy, shape: _Shape) -> _Converted:
    """``nn.RMSNorm`` and Hugging Face's RMS norms (``LlamaRMSNorm``, ``T5LayerNorm``):
    ``weight * x * rsqrt(mean(x**2, -1) + eps)``, statistics in float32. (``m``: the Hugging
    Face classes are known by qualified name only, never imported.)"""
    if isinstance(m, nn.RMSNorm):
        dims = tuple(m.normalized_shape)
        eps = m.eps if m.eps is not None else torch.finfo(torch.float32).eps
        weight = m.weight
    else:
        weight = m.weight
        dims = tuple(weight.shape)
        eps = m.variance_epsilon
    if weight is None:
        raise _Unsupported("elementwise_affine=False")
    p = _layer_policy(policy, name, weight)
    axis = -1 if len(dims) == 1 else list(range(-len(dims), 0))
    layer, quant = _make(RMSNormalization, p, name, axis=axis, epsilon=float(eps))
    layer.build((None, *dims))
    _to_device_of(layer, weight)
    _assign(layer.gamma, weight)
    return _Converted(layer, [(layer, quant)])


def _batch_norm(m: nn.BatchNorm2d, name: str, policy: _Policy, shape: _Shape) -> _Converted:
    if not m.track_running_stats or m.running_mean is None or m.running_var is None:
        raise _Unsupported(
            "track_running_stats=False (mpq normalizes with moving statistics in eval)"
        )
    if m.momentum is None:
        raise _Unsupported("momentum=None (cumulative moving average)")
    ref = m.weight if m.weight is not None else m.running_mean
    p = _layer_policy(policy, name, ref)
    layer, quant = _make(
        BatchNormalization,
        p,
        name,
        axis=1,
        momentum=1.0 - float(m.momentum),
        epsilon=m.eps,
        center=m.affine,
        scale=m.affine,
    )
    layer.build((None, m.num_features, None, None))
    _to_device_of(layer, m.running_mean)
    if m.affine:
        _assign(layer.gamma, m.weight)
        _assign(layer.beta, m.bias)
    _assign(layer.moving_mean, m.running_mean)
    _assign(layer.moving_variance, m.running_var)
    note = (
        "training updates the moving variance with the biased batch variance (Keras) where "
        "torch uses the unbiased one; momentum is 1 - torch's momentum; float32 outputs agree "
        "to rounding (not bit for bit: different rsqrt/fused order)"
    )
    return _Converted(layer, [(layer, quant)], note)


# Each converter takes its own module type (the first argument), hence Any there.
_Converter = Callable[[Any, str, _Policy, _Shape], _Converted]

_CONVERTERS: dict[type[nn.Module], tuple[str, _Converter]] = {
    nn.Linear: ("Dense", _linear),
    nn.Conv1d: ("Conv1D", _conv),
    nn.Conv2d: ("Conv2D", _conv),
    nn.Embedding: ("Embedding", _embedding),
    nn.LayerNorm: ("LayerNormalization", _layer_norm),
    nn.BatchNorm2d: ("BatchNormalization", _batch_norm),
    nn.RMSNorm: ("RMSNormalization", _rms_norm),
    nn.MultiheadAttention: ("MultiheadAttention", _multihead_attention),
}
# Classes of optional libraries, by qualified name (nothing is imported to recognise them).
_NAMED_CONVERTERS: dict[str, tuple[str, _Converter]] = {
    "transformers.pytorch_utils.Conv1D": ("Dense", _hf_conv1d),
    "transformers.models.llama.modeling_llama.LlamaRMSNorm": (
        "RMSNormalization",
        _rms_norm,
    ),
    "transformers.models.t5.modeling_t5.T5LayerNorm": (
        "RMSNormalization",
        _rms_norm,
    ),
}
# Converters whose modules hold linear/conv weights (what `coverage` counts).
_LINEAR_LIKE = (_linear, _hf_conv1d, _multihead_attention, _conv)


def _converter(m: nn.Module) -> tuple[tuple[str, _Converter] | None, str | None]:
    """``(entry, None)`` for a module to convert; ``(None, why)`` for a subclass that overrides
    ``forward``; ``(None, None)`` otherwise."""
    t = type(m)
    entry = _CONVERTERS.get(t) or _NAMED_CONVERTERS.get(f"{t.__module__}.{t.__qualname__}")
    if entry is not None:
        return entry, None
    for base, base_entry in _CONVERTERS.items():
        if isinstance(m, base):
            if t.forward is base.forward:  # e.g. NonDynamicallyQuantizableLinear
                return base_entry, None
            return None, f"subclass of nn.{base.__name__} that overrides forward"
    return None, None


def _linear_weights(m: nn.Module) -> list[torch.Tensor]:
    """The linear/conv weights of ``m`` that ``coverage`` counts."""
    if isinstance(m, nn.MultiheadAttention):
        names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        ws = [getattr(m, n) for n in names]
        return [w for w in ws if w is not None] + [m.out_proj.weight]
    return [_weight(m)]


def _weight(m: nn.Module) -> torch.Tensor:
    """``m.weight``, which a linear, conv or embedding module holds as a tensor."""
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise TypeError(
            f"Expected a {type(m).__name__} with a weight tensor. Received: weight={_describe(w)}"
        )
    return w


def _lookup_options(m: nn.Embedding) -> tuple[object, ...]:
    return (
        m.num_embeddings,
        m.embedding_dim,
        m.padding_idx,
        m.max_norm,
        m.norm_type,
        m.scale_grad_by_freq,
        m.sparse,
    )


def _has_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) or any(
        True for _ in m.buffers(recurse=False)
    )


def _record_input_shapes(
    model: nn.Module, example_inputs: object
) -> dict[str, tuple[int | None, ...]]:
    """Run ``model`` once (eval mode, no grad) and record each convertible module's input shape,
    batch dimension replaced by None."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError(
            "Expected `example_inputs` to be a tensor or a tuple of tensors. "
            f"Received: example_inputs of type {type(example_inputs).__name__}"
        )
    shapes: dict[str, tuple[int | None, ...]] = {}
    handles = []
    for name, m in model.named_modules():
        if _converter(m)[0] is not None:

            def hook(mod: nn.Module, args: tuple[object, ...], _name: str = name) -> None:
                if args and isinstance(args[0], torch.Tensor):
                    shapes.setdefault(_name, (None, *args[0].shape[1:]))

            handles.append(m.register_forward_pre_hook(hook))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return shapes


def _make_filter(spec: object) -> Callable[[nn.Module, str], bool]:
    """``filter=`` as a predicate ``(module, qualified_name) -> bool``."""
    if spec is None:
        return lambda m, name: True
    if isinstance(spec, type) or (
        isinstance(spec, tuple) and spec and all(isinstance(t, type) for t in spec)
    ):
        return lambda m, name: isinstance(m, spec)
    if isinstance(spec, str):
        try:
            pattern = re.compile(spec)
        except re.error as e:
            raise ValueError(
                "Expected `filter` to be a valid regular expression on qualified names. "
                f"Received: filter={spec!r} ({e})"
            ) from None
        return lambda m, name: pattern.search(name) is not None
    if callable(spec):
        return lambda m, name: bool(spec(m, name))
    raise TypeError(
        "Expected `filter` to be None, a module type or tuple of types, a regular expression "
        "(str) searched in qualified names, or a callable (module, qualified_name) -> bool. "
        f"Received: filter={_describe(spec)}"
    )


class _CastOutput:
    """Forward hook: the converted module returns what the torch module it replaces returned:
    floating outputs in the dtype of its first floating input (an Embedding: its table's
    original dtype), whatever the policy computed in."""

    def __init__(self, fallback: torch.dtype) -> None:
        self.fallback = fallback

    def __call__(
        self,
        module: nn.Module,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        output: object,
    ) -> object:
        dtype = next(
            (
                t.dtype
                for t in (*args, *kwargs.values())
                if isinstance(t, torch.Tensor) and t.is_floating_point()
            ),
            self.fallback,
        )

        def cast(t: object) -> object:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype:
                return t.to(dtype)
            return t

        if isinstance(output, tuple):
            return tuple(cast(t) for t in output)
        return cast(output)

    def __repr__(self) -> str:
        return f"_CastOutput(fallback={self.fallback})"


def _tied_groups(
    candidates: list[tuple[str, nn.Module]],
) -> dict[int, list[tuple[str, nn.Module]]]:
    """Convertible modules whose ``weight`` is one tensor shared with another: id -> users."""
    users: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, m in candidates:
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            users.setdefault(id(w), []).append((name, m))
    return {k: v for k, v in users.items() if len(v) > 1}


# ----------------------------------------------------------------------------- public
def from_torch(
    module: nn.Module,
    policy: object = None,
    *,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    filter: object = None,
    untie: bool = False,
    cast_outputs: bool = True,
) -> tuple[nn.Module, FromTorchReport]:
    """A copy of ``module`` with its standard layers replaced by mpq layers, and a report.

    Replaced: ``nn.Linear`` and subclasses that keep its ``forward`` (e.g.
    ``NonDynamicallyQuantizableLinear``) and Hugging Face's ``Conv1D`` -> ``Dense``;
    ``nn.MultiheadAttention`` -> :class:`~mpq.training.torch_attention.MultiheadAttention` with
    ``Dense`` projections; ``nn.Conv1d``/``nn.Conv2d`` -> ``Conv1D``/``Conv2D`` with
    ``data_format="channels_first"``; ``nn.Embedding`` -> ``Embedding``; ``nn.LayerNorm`` ->
    ``LayerNormalization``; ``nn.BatchNorm2d`` -> ``BatchNormalization(axis=1)``. Each mpq layer
    is named after the torch qualified name (``"features.0"``), so a ``DTypePolicyMap`` can
    address it, carries the same weights (float32 outputs are bit-identical for Linear, Conv,
    Embedding and LayerNorm; BatchNorm agrees to rounding), keeps ``requires_grad`` flags and
    answers the torch attributes model code reads (``.weight``, ``.in_features``, ``.eps``...,
    read-only). A module object used at several paths is converted once. The original module is
    not modified.

    Tied weights: an ``nn.Embedding`` whose weight is also the weight of ``nn.Linear`` modules
    (an output head) is converted; the Linear stays a torch module whose ``weight`` is the
    Embedding layer's variable (one tensor, as before). ``mpq.quantize`` skips such a layer
    rather than untie it. ``untie=True`` gives each user its own copy instead (all converted).

    Boundary dtypes (``cast_outputs=True``): a converted module inside a torch model returns its
    floating outputs in the dtype of its floating input (an Embedding: in its table's original
    dtype), so the torch code around it sees the dtypes it was written for under every policy;
    the policy decides how the layer computes. ``cast_outputs=False`` returns the layers'
    compute dtype (for models made only of converted layers). A converted root is not cast.

    Args:
        module: any ``torch.nn.Module``.
        policy: None (each layer keeps its weights' dtype: a faithful copy), a policy or name
            (``"mixed_bfloat16"``, ``"int8_from_float32"``: quantized policies quantize after
            the weights are copied) or a ``DTypePolicyMap`` keyed by qualified names.
        example_inputs: optional tensor or tuple of tensors to run ``module`` once with, to
            record the input shape of each convertible module (not needed by any converter
            today; kept for layers that are built for their input shape).
        filter: which modules to convert: None (all), a module type or tuple of types, a
            regular expression searched in the qualified name, or a callable
            ``(module, qualified_name) -> bool``. E.g. all linear layers except the output
            head: ``filter=lambda m, name: name != "lm_head"``. Excluded modules are listed in
            ``report.skipped``.
        untie: give each user of a shared weight its own copy (see above).
        cast_outputs: cast converted modules' outputs back to the torch dtypes (see above).

    Returns:
        ``(model, report)``: the converted copy and a :class:`FromTorchReport`.

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> model, report = from_torch(net)
    >>> report.converted
    {'0': 'Linear -> Dense', '2': 'Linear -> Dense'}
    >>> x = torch.randn(3, 4)
    >>> torch.equal(model(x), net(x))
    True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"Expected a torch.nn.Module. Received: module of type {type(module).__name__}"
        )
    for flag, value in (("untie", untie), ("cast_outputs", cast_outputs)):
        if not isinstance(value, bool):
            raise TypeError(f"Expected `{flag}` to be a bool. Received: {flag}={_describe(value)}")
    resolved: _Policy = None if policy is None else _policy.get(policy)
    keep = _make_filter(filter)
    model = copy.deepcopy(module)
    shapes = _record_input_shapes(model, example_inputs) if example_inputs is not None else {}
    report = FromTorchReport()
    paths, order = _module_paths(model)
    counted = _linear_weight_sizes(order)
    report.linear_weights = sum(counted.values())
    ties = _plan_ties(order, untie, report)
    run = _Conversion(report, paths, ties, resolved, shapes, keep, cast_outputs)
    for name, m in order:
        run.convert(name, m)
    run.retie_heads(order)
    report.converted_linear_weights = sum(n for k, n in counted.items() if k in run.covered)
    report.unchanged = tuple(run.unchanged)
    return run.replace_in(model), report


def _module_paths(model: nn.Module) -> tuple[dict[int, list[str]], list[tuple[str, nn.Module]]]:
    """Every path of every module (a module object may sit at several paths, e.g. T5's
    `shared` is also `encoder.embed_tokens`: converted once, replaced at each path), and the
    modules in order, each once at its first path."""
    paths: dict[int, list[str]] = {}
    order: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) not in paths:
            paths[id(m)] = []
            order.append((name, m))
        paths[id(m)].append(name)
    return paths, order


def _linear_weight_sizes(order: list[tuple[str, nn.Module]]) -> dict[int, int]:
    """Linear/conv weights for the coverage figure: tensor id -> elements, each tensor once."""
    counted: dict[int, int] = {}
    linear_like = (nn.Linear, nn.MultiheadAttention, nn.modules.conv._ConvNd)
    for _, m in order:
        entry, _why = _converter(m)
        fn = entry[1] if entry else None
        if fn in _LINEAR_LIKE or isinstance(m, linear_like):  # Conv3d, ConvTranspose: counted
            for w in _linear_weights(m):
                counted.setdefault(id(w), w.numel())
    return counted


@dataclass
class _Ties:
    """What to do with weights tied among the modules that would be converted."""

    tied_to: dict[int, tuple[str, nn.Module]] = field(default_factory=dict)
    """Linear module id -> the Embedding whose table it uses (it stays a torch module)."""
    tied_left: dict[int, str] = field(default_factory=dict)
    """Module id -> why it stays a torch module."""
    tied_embeddings: set[int] = field(default_factory=set)
    """Embeddings whose table is also a Linear's weight (not quantized)."""
    aliases: dict[int, tuple[str, nn.Module]] = field(default_factory=dict)
    """Embedding id -> the tied Embedding with the same lookup that is converted for both."""


def _plan_ties(order: list[tuple[str, nn.Module]], untie: bool, report: FromTorchReport) -> _Ties:
    """Group the candidates by shared weight; with ``untie``, give each user its own copy."""
    candidates = [
        (n, m) for n, m in order if _converter(m)[0] is not None and not isinstance(m, Layer)
    ]
    ties = _Ties()
    for users in _tied_groups(candidates).values():
        if untie:
            for n, m in users[1:]:
                w = _weight(m)
                m.weight = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
                others = ", ".join(repr(u) for u, _ in users if u != n)
                report.notes[n] = f"untied: its weight was shared with {others}; now a copy"
            continue
        embeddings = [(n, m) for n, m in users if isinstance(m, nn.Embedding)]
        linears = [(n, m) for n, m in users if type(m) is nn.Linear and m.bias is None]
        same_lookup = (
            all(_lookup_options(m) == _lookup_options(embeddings[0][1]) for _, m in embeddings)
            if embeddings
            else False
        )
        if same_lookup and len(embeddings) + len(linears) == len(users):
            first = embeddings[0]
            ties.tied_embeddings.add(id(first[1]))
            for _n, m in embeddings[1:]:  # the same lookup: one mpq Embedding serves all
                ties.aliases[id(m)] = first
            for _n, m in linears:
                ties.tied_to[id(m)] = first
        else:
            for n, m in users:
                others = ", ".join(repr(u) for u, _ in users if u != n)
                ties.tied_left[id(m)] = (
                    f"{type(m).__name__}: its weight is tied to {others}; left as torch modules "
                    "(from_torch(..., untie=True) converts each with its own copy)"
                )
    return ties


@dataclass
class _Conversion:
    """One ``from_torch`` run after planning: converts module by module, then re-ties the
    Linear heads and puts the replacements in place."""

    report: FromTorchReport
    paths: dict[int, list[str]]
    ties: _Ties
    resolved: _Policy
    shapes: dict[str, tuple[int | None, ...]]
    keep: Callable[[nn.Module, str], bool]
    cast_outputs: bool
    unchanged: list[str] = field(default_factory=list)
    replacements: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)
    """(torch module, replacement)."""
    new_of: dict[int, nn.Module] = field(default_factory=dict)
    skip_under: list[str] = field(default_factory=list)
    covered: set[int] = field(default_factory=set)
    """Ids of the linear/conv weights mpq layers now hold."""

    def convert(self, name: str, m: nn.Module) -> None:
        """Convert ``m`` at ``name`` if it is convertible, wanted and not tied elsewhere."""
        report, ties = self.report, self.ties
        if any(name == s or name.startswith(s + ".") for s in self.skip_under):
            return
        if isinstance(m, Layer):
            self.skip_under.append(name)
            return
        entry, why = _converter(m)
        if entry is None:
            if any(True for _ in m.parameters(recurse=False)):
                report.unsupported[name] = f"{type(m).__name__}: {why or 'no mpq equivalent'}"
            elif _has_state(m) or not any(True for _ in m.children()):
                self.unchanged.append(name)
            return
        if id(m) in ties.tied_to:
            return  # a torch module on its Embedding's variable (retie_heads; filter or not)
        if not self.keep(m, name):
            report.skipped[name] = "filtered"
            return
        if id(m) in ties.tied_left:
            report.unsupported[name] = ties.tied_left[id(m)]
            return
        if id(m) in ties.aliases:
            first_name, first_module = ties.aliases[id(m)]
            if id(first_module) in self.new_of:
                self.replacements.append((m, self.new_of[id(first_module)]))
                report.tied[name] = (
                    f"Embedding: weight tied to {first_name!r} with the same options; "
                    "replaced by that mpq Embedding layer (one layer, one variable)"
                )
                self.skip_under.extend(self.paths[id(m)])
                return
        target, convert = entry
        try:
            result = convert(m, name, self.resolved, self.shapes.get(name))
        except _Unsupported as e:
            report.unsupported[name] = f"{type(m).__name__}: {e}"
            self.skip_under.extend(self.paths[id(m)])  # its children are its own (MHA out_proj)
            return
        notes = self._apply_policies(m, result)
        replacement = result.module
        replacement.train(m.training)
        device = _module_device(m)
        if device is not None and device.type != "cpu":
            replacement.to(device)
        if self.cast_outputs and name != "":
            fallback = m.weight.dtype if isinstance(m, nn.Embedding) else torch.float32
            replacement.register_forward_hook(_CastOutput(fallback), with_kwargs=True)
        report.converted[name] = f"{type(m).__name__} -> {result.target or target}"
        if len(self.paths[id(m)]) > 1:
            notes.append(f"also at {self.paths[id(m)][1:]} (one module, converted once)")
        if result.note:
            notes.append(result.note)
        if notes:
            report.notes[name] = "; ".join(notes)
        if convert in _LINEAR_LIKE:
            self.covered.update(id(w) for w in _linear_weights(m))
        self.replacements.append((m, replacement))
        self.new_of[id(m)] = replacement
        self.skip_under.extend(self.paths[id(m)])

    def _apply_policies(self, m: nn.Module, result: _Converted) -> list[str]:
        """Give each converted layer its quantized policy (after the weights are copied);
        the notes on what was not quantized and why."""
        notes: list[str] = []
        for converted, quant in result.layers:
            if quant is None:
                continue
            if (
                id(m) in self.ties.tied_embeddings
            ):  # quantizing would untie it from its Linear users
                notes.append(
                    f"not quantized ({quant.name}): its table is also the weight of a tied "
                    "Linear; from_torch(..., untie=True) quantizes them separately"
                )
                continue
            converted.dtype_policy = quant
        return notes

    def retie_heads(self, order: list[tuple[str, nn.Module]]) -> None:
        """Linear heads tied to a converted Embedding: the torch module keeps running, on the
        Embedding layer's variable (one tensor for both)."""
        for name, m in order:
            if id(m) not in self.ties.tied_to:
                continue
            emb_name, emb = self.ties.tied_to[id(m)]
            layer = self.new_of.get(id(emb))
            if layer is None:  # the Embedding was not converted: nothing to re-tie
                continue
            self.covered.add(id(m.weight))  # the shared tensor, now held by the mpq Embedding
            returned = _weight(m).dtype  # what the torch Linear returned (inputs had to match)
            m.weight = layer.embeddings
            if self.cast_outputs:  # computes in the variable's dtype, returns what it returned
                m.register_forward_pre_hook(_CastInputs())
                m.register_forward_hook(_ReturnAs(returned))
            self.report.tied[name] = (
                f"{type(m).__name__}: weight tied to {emb_name!r}; kept as a torch module whose "
                f"weight is that Embedding layer's variable (mpq.quantize skips the pair)"
            )

    def replace_in(self, model: nn.Module) -> nn.Module:
        """Put each replacement at every path of the module it replaces; the new root."""
        for m, replacement in self.replacements:
            for name in self.paths[id(m)]:
                if name == "":
                    model = replacement
                    continue
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, replacement)
        return model


class _CastInputs:
    """Forward pre-hook of a torch Linear left on a tied mpq variable: floating inputs in the
    variable's dtype (what it computes in)."""

    def __call__(self, module: nn.Module, args: tuple[object, ...]) -> tuple[object, ...]:
        dtype = _weight(module).dtype
        return tuple(
            a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args
        )


class _ReturnAs:
    """Forward hook: a floating output in ``dtype`` (what the torch module returned)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, module: nn.Module, args: tuple[object, ...], output: object) -> object:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            return output.to(self.dtype)
        return output
