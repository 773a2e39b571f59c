"""Quantization-aware training: `prepare(model, mode_or_config)` then `convert(model)`.

A prepared layer keeps its float kernel (trainable) and computes, in its forward pass, exactly
what the real quantized layer (``layer.quantize(config)``) would compute from the current
kernel; gradients flow to the float kernel and the inputs through straight-through fake
quantization (``mpq.quantizers.fake_quantize_dynamic``). ``convert`` then quantizes for real,
and the converted model's outputs are bit-identical to the prepared model's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Layer
from mpq.quantization import QuantizationConfig
from mpq.quantization._forms import form_of
from mpq.quantization.model import _layers, _make_filter
from mpq.quantizers import fake_quantize_dynamic

__all__ = ["QATReport", "convert", "is_prepared", "prepare"]

QAT_MODES = ("int8", "int4")
_SUPPORTED = (Dense, EinsumDense, Conv1D, Conv2D)


@dataclass
class QATReport:
    """What :func:`prepare` / :func:`convert` did: layer paths handled, and skipped ones with
    the reason (``"filtered"``, ``"already quantized (...)"``, ``"LoRA enabled"``, ...)."""

    config: QuantizationConfig
    layers: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"qat({self.config.name}): {len(self.layers)} layers, {len(self.skipped)} skipped"]
        lines += [f"  {p}" for p in self.layers]
        lines += [f"  skipped {p}: {why}" for p, why in self.skipped.items()]
        return "\n".join(lines)


class _ReplaceForward(torch.autograd.Function):
    """Forward: ``exact`` (the real quantized output). Backward: the gradient goes to
    ``surrogate`` (the fake-quantized float graph), as a straight-through estimator.
    (``surrogate + (exact - surrogate).detach()`` would not return ``exact`` bit for bit.)"""

    @staticmethod
    def forward(ctx: Any, surrogate: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
        return exact.to(surrogate.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _QATState:
    """Per-layer QAT state (``layer._qat`` while prepared): the config and the kernel form.
    (No hook handle: it would tie a deep copy of the layer to the original's hook dict.)"""

    def __init__(self, layer: Layer, config: QuantizationConfig) -> None:
        self.config = config
        self.form = form_of(layer, tuple(layer.get_parameter("kernel").shape))

    def fake_kernel(self, kernel: torch.Tensor) -> torch.Tensor:
        """The kernel as the mode quantizes it (per output channel; int4 groups along K), with
        a straight-through gradient."""
        cfg = self.config
        m = self.form.to_matrix(kernel)  # [..., N, K], differentiable
        if cfg.mode == "int8" or cfg.block_size == -1:
            fq = fake_quantize_dynamic(m, cfg.mode, reduce_axes=-1)
        else:
            fq = fake_quantize_dynamic(
                m, "int4", reduce_axes=-1, group_size=cfg.block_size, symmetric=False
            )
        out: torch.Tensor = self.form.from_matrix(fq).to(kernel.dtype)
        return out

    def fake_inputs(self, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        """int8 dynamic inputs (W8A8 / int4 with int8 activations): per row for Dense and
        EinsumDense (over the last axis), per tensor for convolutions, as the real modes."""
        if self.config.weight_only:
            return x
        axes = None if isinstance(layer, (Conv1D, Conv2D)) else -1
        return fake_quantize_dynamic(x, "int8", reduce_axes=axes)

    def apply(
        self, layer: Layer, kernel: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fake_kernel(kernel), self.fake_inputs(layer, inputs)


def _quantized_twin(layer: Layer, state: _QATState) -> Layer:
    """A quantized copy of ``layer`` with its current float weights (no QAT state, no hooks)."""
    saved_hooks = layer._forward_hooks
    del layer._qat
    layer._refresh_call_hooks()
    layer._forward_hooks = type(saved_hooks)()
    try:
        twin = copy.deepcopy(layer)
    finally:
        layer._forward_hooks = saved_hooks
        layer._qat = state
        layer._refresh_call_hooks()
    twin.quantize(state.config)
    return twin


def _qat_forward_hook(
    layer: Layer, args: tuple[object, ...], kwargs: dict[str, object], output: torch.Tensor
) -> torch.Tensor:
    state = getattr(layer, "_qat", None)
    if state is None:
        return output
    with torch.no_grad():
        twin = _quantized_twin(layer, state)
        twin.train(layer.training)
        exact: torch.Tensor = twin(*args, **kwargs)
    if not output.requires_grad:
        return exact.to(output.dtype)
    replaced: torch.Tensor = _ReplaceForward.apply(output, exact)  # type: ignore[no-untyped-call]
    return replaced


def _remove_hook(layer: Layer) -> None:
    for key, hook in list(layer._forward_hooks.items()):
        if hook is _qat_forward_hook:
            del layer._forward_hooks[key]
            layer._forward_hooks_with_kwargs.pop(key, None)


def _resolve(mode_or_config: object) -> QuantizationConfig:
    cfg = QuantizationConfig.get(mode_or_config)
    if cfg.mode not in QAT_MODES:
        raise ValueError(
            f"Expected a QAT mode, one of {list(QAT_MODES)} (float8 trains natively: use a "
            f"float8 policy or layer.quantize('float8')). Received: mode={cfg.mode!r}"
        )
    return cfg


def is_prepared(layer: torch.nn.Module) -> bool:
    """Whether ``layer`` was prepared for QAT (and not converted yet)."""
    return isinstance(layer, Layer) and getattr(layer, "_qat", None) is not None


def prepare(
    model: torch.nn.Module, mode_or_config: str | QuantizationConfig, filter: object = None
) -> QATReport:
    """Prepare every float Dense / EinsumDense / Conv1D / Conv2D of ``model`` for QAT, in place.

    Args:
        model: a built mpq layer or model, or any ``torch.nn.Module`` holding mpq layers
            (e.g. from ``mpq.from_torch``).
        mode_or_config: ``"int8"`` (W8A8), ``"int4"`` / ``"int4/<g>"`` / ``"int4/-1"``
            (weight-only), or a ``QuantizationConfig`` (e.g. ``weight_only=True`` for int8,
            ``False`` for int4 with int8 activations).
        filter: as ``mpq.quantize``: None, a regex on layer paths, a list of names, a callable.

    In training and evaluation, each prepared layer's output is what
    ``layer.quantize(config)`` would compute with the current float weights (bit for bit);
    the backward pass differentiates the float op at fake-quantized kernel and inputs
    (straight-through estimator). Layers already quantized, with LoRA enabled, or filtered
    out are skipped and reported. Nothing changes if a candidate is invalid (unbuilt).

    >>> from mpq.layers import Dense, Sequential
    >>> model = Sequential([Dense(8, activation="relu", name="up"), Dense(2, name="out")], name="net")
    >>> _ = model(torch.ones(1, 4))
    >>> prepare(model, "int8").layers
    ['net/up', 'net/out']
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"Expected a torch.nn.Module (an mpq model or a model holding mpq layers). "
            f"Received: model of type {type(model).__name__}"
        )
    cfg = _resolve(mode_or_config)
    keep = _make_filter(filter)
    report = QATReport(config=cfg)
    todo = []
    for layer in _layers(model):
        if not isinstance(layer, _SUPPORTED):
            continue
        path = layer.path
        if is_prepared(layer):
            report.skipped[path] = f"already prepared ({layer._qat.config.name})"
        elif layer.quantization_scheme is not None:
            report.skipped[path] = f"already quantized ({layer.dtype_policy.name})"
        elif getattr(layer, "lora_enabled", False):
            report.skipped[path] = "LoRA enabled (merge_lora() first, or quantize then LoRA)"
        elif not keep(layer):
            report.skipped[path] = "filtered"
        else:
            todo.append(layer)
    unbuilt = [layer.path for layer in todo if not layer.built]
    if unbuilt:
        raise ValueError(
            f"Cannot prepare {unbuilt} for QAT: not built yet. Call the model on an input or "
            "build it first. Received: built=False"
        )
    states = [_QATState(layer, cfg) for layer in todo]  # validates every form first
    for layer, state in zip(todo, states, strict=True):
        layer._qat = state
        layer._refresh_call_hooks()
        layer.register_forward_hook(_qat_forward_hook, with_kwargs=True)
        report.layers.append(layer.path)
    return report


def convert(model: torch.nn.Module) -> QATReport | None:
    """Quantize every prepared layer of ``model`` for real (``layer.quantize(config)``) and
    remove the QAT state. The converted layers' outputs equal the prepared ones bit for bit.
    Returns a report, or None when nothing was prepared."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"Expected a torch.nn.Module. Received: model of type {type(model).__name__}"
        )
    prepared = [layer for layer in _layers(model) if is_prepared(layer)]
    if not prepared:
        return None
    report = QATReport(config=prepared[0]._qat.config)
    for layer in prepared:
        state = layer._qat
        del layer._qat
        _remove_hook(layer)
        layer._refresh_call_hooks()
        layer.quantize(state.config)
        report.layers.append(layer.path)
    return report
