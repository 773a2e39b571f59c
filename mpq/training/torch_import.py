"""`from_torch`: copy a PyTorch module tree with its standard layers replaced by mpq layers.

nn.Linear, nn.Conv1d/2d, nn.Embedding, nn.LayerNorm and nn.BatchNorm2d become Dense, Conv1D/2D
(channels_first), Embedding, LayerNormalization and BatchNormalization with the same weights,
so mpq policies, ``mpq.quantize``, QAT and LoRA apply to any PyTorch model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mpq import policy as _policy
from mpq.layers import (
    BatchNormalization,
    Conv1D,
    Conv2D,
    Dense,
    Embedding,
    Layer,
    LayerNormalization,
)

__all__ = ["FromTorchReport", "from_torch"]


@dataclass
class FromTorchReport:
    """What :func:`from_torch` did, keyed by the torch qualified name (``""`` for the root).

    Attributes:
        converted: name -> ``"Linear -> Dense"`` etc.
        unsupported: modules with parameters or buffers that were left as they are -> why.
        unchanged: parameter-free modules left as they are (ReLU, pooling, Flatten, ...).
        notes: name -> a behaviour difference to know about (e.g. BatchNorm statistics).
    """

    converted: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    unchanged: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"converted ({len(self.converted)}):"]
        lines += [f"  {k or '<root>'}: {v}" for k, v in self.converted.items()]
        lines.append(f"unsupported, left as torch modules ({len(self.unsupported)}):")
        lines += [f"  {k or '<root>'}: {v}" for k, v in self.unsupported.items()]
        if self.notes:
            lines.append("notes:")
            lines += [f"  {k or '<root>'}: {v}" for k, v in self.notes.items()]
        return "\n".join(lines)


class _Unsupported(Exception):
    """A supported module type with options mpq's layer cannot reproduce."""


# ----------------------------------------------------------------------------- helpers
def _layer_policy(policy: Any, name: str, weight: torch.Tensor) -> Any:
    """The policy of the layer for ``name``: None -> the weight's own dtype (a faithful copy)."""
    if policy is None:
        return _policy.get(weight.dtype)
    if isinstance(policy, _policy.DTypePolicyMap):
        return policy[name]
    return policy


def _make(cls: type, policy: Any, name: str, **kwargs: Any) -> tuple[Layer, Any]:
    """Construct under the float source of a quantized policy (weights are copied first, the
    layer is quantized after), else under ``policy``."""
    if policy.quantization_mode is not None:
        float_policy = _policy.get(policy.source_name)
        return cls(dtype=float_policy, name=name or None, **kwargs), policy
    return cls(dtype=policy, name=name or None, **kwargs), None


def _assign(var: torch.nn.Parameter, value: torch.Tensor) -> None:
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


def _to_device_of(layer: Layer, m: nn.Module) -> None:
    """Move the freshly built ``layer`` to the device of ``m``'s weights (before the copy)."""
    device = next((t.device for t in m.parameters()), None)
    if device is None:
        device = next((t.device for t in m.buffers()), None)
    if device is not None and device.type != "cpu":
        layer.to(device)


def _transposed_view(w: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``w.permute(dims)`` backed by a fresh copy of ``w`` in its own layout."""
    return w.detach().clone().permute(dims)


def _conv_padding(m: nn.Module) -> tuple[str, tuple[int, ...] | None]:
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
def _linear(m: nn.Linear, name: str, policy: Any, shape: Any) -> tuple[Layer, Any, str | None]:
    p = _layer_policy(policy, name, m.weight)
    layer, quant = _make(Dense, p, name, units=m.out_features, use_bias=m.bias is not None)
    layer.build((None, m.in_features))
    _to_device_of(layer, m)
    _assign(layer.kernel, m.weight.detach().t())
    if m.bias is not None:
        _assign(layer.bias, m.bias)
    _copy_grad_flag(layer.kernel, m.weight)
    return layer, quant, None


def _conv(m: nn.Module, name: str, policy: Any, shape: Any) -> tuple[Layer, Any, str | None]:
    padding, explicit = _conv_padding(m)
    rank = 1 if isinstance(m, nn.Conv1d) else 2
    cls = Conv1D if rank == 1 else Conv2D
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
    _to_device_of(layer, m)
    # torch [out, in/g, *k] -> Keras [*k, in/g, out], as a view of torch's layout
    dims = (2, 1, 0) if rank == 1 else (2, 3, 1, 0)
    _assign(layer.kernel, _transposed_view(m.weight, dims))
    if m.bias is not None:
        _assign(layer.bias, m.bias)
    _copy_grad_flag(layer.kernel, m.weight)
    if explicit is None:
        return layer, quant, None
    # F.pad order: last axis first, (before, after) per axis.
    pads = tuple(p for p in reversed(explicit) for _ in (0, 1))
    pad_cls = nn.ConstantPad1d if rank == 1 else nn.ConstantPad2d
    wrapper = nn.Sequential()
    wrapper.add_module("pad", pad_cls(pads, 0.0))
    wrapper.add_module("conv", layer)
    note = f"padding={explicit} (not a Keras 'same'): a zero pad module, then Conv{rank}D 'valid'"
    return _Padded(wrapper, layer), quant, note


class _Padded:
    """A converted module made of a torch pad and an mpq layer (``module`` replaces the torch
    module; ``layer`` is the mpq layer to quantize/train)."""

    def __init__(self, module: nn.Module, layer: Layer) -> None:
        self.module = module
        self.layer = layer


def _embedding(m: nn.Embedding, name: str, policy: Any, shape: Any):
    for attr, default in (("max_norm", None), ("scale_grad_by_freq", False), ("sparse", False)):
        if getattr(m, attr) != default:
            raise _Unsupported(f"{attr}={getattr(m, attr)!r} (mpq's Embedding has no such option)")
    if m.padding_idx is not None:
        raise _Unsupported(
            f"padding_idx={m.padding_idx}: torch gives that row no gradient, mpq's Embedding "
            "does not mask it"
        )
    p = _layer_policy(policy, name, m.weight)
    layer, quant = _make(Embedding, p, name, input_dim=m.num_embeddings, output_dim=m.embedding_dim)
    layer.build()
    _to_device_of(layer, m)
    _assign(layer.embeddings, m.weight)
    return layer, quant, None


def _layer_norm(m: nn.LayerNorm, name: str, policy: Any, shape: Any):
    k = len(m.normalized_shape)
    if shape is None:
        shape = (None, *m.normalized_shape)
        note = (
            f"built for inputs of rank {len(shape)} (batch + normalized_shape); pass "
            "example_inputs to build it for the rank it is really called with"
        )
    else:
        note = None
    ref = m.weight if m.weight is not None else torch.empty(0)
    p = _layer_policy(policy, name, ref)
    affine = m.elementwise_affine
    has_bias = affine and getattr(m, "bias", None) is not None
    axis = -1 if k == 1 else list(range(-k, 0))
    layer, quant = _make(
        LayerNormalization, p, name, axis=axis, epsilon=m.eps, center=has_bias, scale=affine
    )
    layer.build(tuple(shape))
    _to_device_of(layer, m)
    if affine:
        _assign(layer.gamma, m.weight)
    if has_bias:
        _assign(layer.beta, m.bias)
    return layer, quant, note


def _batch_norm(m: nn.BatchNorm2d, name: str, policy: Any, shape: Any):
    if not m.track_running_stats or m.running_mean is None:
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
    _to_device_of(layer, m)
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
    return layer, quant, note


def _copy_grad_flag(var: torch.nn.Parameter, weight: torch.Tensor) -> None:
    if not weight.requires_grad:
        var.trainable = False


_CONVERTERS: dict[type, tuple[str, Callable[..., tuple[Layer, Any, str | None]]]] = {
    nn.Linear: ("Dense", _linear),
    nn.Conv1d: ("Conv1D", _conv),
    nn.Conv2d: ("Conv2D", _conv),
    nn.Embedding: ("Embedding", _embedding),
    nn.LayerNorm: ("LayerNormalization", _layer_norm),
    nn.BatchNorm2d: ("BatchNormalization", _batch_norm),
}


def _has_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) or any(
        True for _ in m.buffers(recurse=False)
    )


def _record_input_shapes(model: nn.Module, example_inputs: Any) -> dict[str, tuple]:
    """Run ``model`` once (eval mode, no grad) and record each convertible module's input shape,
    batch dimension replaced by None."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError(
            "Expected `example_inputs` to be a tensor or a tuple of tensors. "
            f"Received: example_inputs of type {type(example_inputs).__name__}"
        )
    shapes: dict[str, tuple] = {}
    handles = []
    for name, m in model.named_modules():
        if type(m) in _CONVERTERS:

            def hook(mod, args, _name=name):
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


# ----------------------------------------------------------------------------- public
def from_torch(
    module: nn.Module, policy: Any = None, *, example_inputs: Any = None
) -> tuple[nn.Module, FromTorchReport]:
    """A copy of ``module`` with its standard layers replaced by mpq layers, and a report.

    Replaced (exact type match; subclasses may override ``forward`` and are left alone):
    ``nn.Linear`` -> ``Dense``, ``nn.Conv1d``/``nn.Conv2d`` -> ``Conv1D``/``Conv2D`` with
    ``data_format="channels_first"`` (NCL / NCHW inputs, as torch), ``nn.Embedding`` ->
    ``Embedding``, ``nn.LayerNorm`` -> ``LayerNormalization``, ``nn.BatchNorm2d`` ->
    ``BatchNormalization(axis=1)``. Each mpq layer is named after the torch qualified name
    (``"features.0"``), so a ``DTypePolicyMap`` can address it, and carries the same weights
    (kernels as views of torch's memory layout: float32 outputs are bit-identical for
    Linear, Conv, Embedding and LayerNorm; BatchNorm agrees to rounding). ``requires_grad``
    flags are kept. The original module is not modified.

    Args:
        module: any ``torch.nn.Module``.
        policy: None (each layer keeps its weights' dtype: a faithful copy), a policy or name
            (``"mixed_bfloat16"``, ``"int8_from_float32"``: quantized policies quantize after
            the weights are copied) or a ``DTypePolicyMap`` keyed by qualified names.
        example_inputs: optional tensor or tuple of tensors to run ``module`` once with, to
            build each layer for the input rank it sees (needed for ``nn.LayerNorm`` used on
            inputs of rank other than ``len(normalized_shape) + 1``).

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
    if policy is not None and not isinstance(policy, _policy.DTypePolicyMap):
        policy = _policy.get(policy)
    model = copy.deepcopy(module)
    shapes = _record_input_shapes(model, example_inputs) if example_inputs is not None else {}
    report = FromTorchReport()
    unchanged: list[str] = []
    replacements: list[tuple[str, nn.Module]] = []
    skip_under: list[str] = []
    for name, m in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip_under):
            continue
        if isinstance(m, Layer):
            skip_under.append(name)
            continue
        entry = _CONVERTERS.get(type(m))
        if entry is None:
            if _has_state(m):
                base = next((t.__name__ for t in _CONVERTERS if isinstance(m, t)), None)
                why = (
                    f"subclass of nn.{base} (it may override forward)"
                    if base
                    else "no mpq equivalent"
                )
                report.unsupported[name] = f"{type(m).__name__}: {why}"
            elif not any(True for _ in m.children()):
                unchanged.append(name)
            continue
        target, convert = entry
        try:
            layer, quant, note = convert(m, name, policy, shapes.get(name))
        except _Unsupported as e:
            report.unsupported[name] = f"{type(m).__name__}: {e}"
            continue
        replacement = layer
        if isinstance(layer, _Padded):
            replacement, layer = layer.module, layer.layer
            target = f"ConstantPad + {target}"
        if quant is not None:
            layer.dtype_policy = quant
        replacement.train(m.training)
        device = next((t.device for t in m.parameters()), None)
        if device is not None and device.type != "cpu":
            replacement.to(device)
        report.converted[name] = f"{type(m).__name__} -> {target}"
        if note:
            report.notes[name] = note
        replacements.append((name, replacement))
    for name, layer in replacements:
        if name == "":
            model = layer
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
    report.unchanged = tuple(unchanged)
    return model, report
