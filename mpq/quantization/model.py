"""`quantize(model, mode_or_config, filter=None)`: quantize every supported layer of a model in
one go (all or nothing) and report what was done; `weight_bytes` measures the stored size.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from mpq.layers import Layer
from mpq.layers import quantization as _registry
from mpq.layers import tracking as _tracking
from mpq.layers.base import QuantizationSnapshot
from mpq.quantization import _common as C
from mpq.quantization.algorithms import AlgorithmContext, check_calibration, get_algorithm
from mpq.quantization.config import QuantizationConfig

__all__ = ["QuantizationReport", "quantize", "weight_bytes"]


def weight_bytes(layer: torch.nn.Module) -> int:
    """Bytes stored by all of ``layer``'s variables (sublayers included, each counted once):
    quantized kernels, scales, zero points, amax histories, biases.

    >>> from mpq.layers import Dense
    >>> layer = Dense(4)
    >>> layer.build((None, 8))
    >>> weight_bytes(layer)            # float32 kernel [8, 4] + bias [4]
    144
    """
    if not isinstance(layer, torch.nn.Module):
        raise TypeError(
            f"Expected a layer (torch.nn.Module). Received: {layer!r} (of type "
            f"{type(layer).__name__})"
        )
    params = layer.weights if isinstance(layer, Layer) else list(layer.parameters())
    seen: set[int] = set()
    total = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


@dataclass
class QuantizationReport:
    """What `quantize` did: layer paths quantized, layer paths skipped with the reason, and the
    stored weight bytes before and after.

    Reasons: ``"filtered"`` (the filter excluded it), ``"already quantized (<policy>)"``,
    ``"unsupported: <why>"`` (no scheme for the mode: a layer without weights, a container, a
    subclass of a supported layer, ...).
    """

    config: QuantizationConfig
    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0
    algorithm: str = "rtn"
    notes: dict[str, str] = field(default_factory=dict)
    """Per layer path, what an algorithm did differently from its defaults (e.g. GPTQ damping
    escalated, AWQ scales that had no layer to fold into)."""

    def __str__(self) -> str:
        algo = "" if self.algorithm == "rtn" else f", {self.algorithm}"
        lines = [
            f"quantize({self.config.name}{algo}): {len(self.quantized)} quantized, "
            f"{len(self.skipped)} skipped; weight bytes {self.bytes_before} -> "
            f"{self.bytes_after}"
        ]
        lines += [f"  quantized  {path}" for path in self.quantized]
        lines += [f"  skipped    {path}: {why}" for path, why in self.skipped.items()]
        lines += [f"  note       {path}: {text}" for path, text in self.notes.items()]
        return "\n".join(lines)


def _layers(model: torch.nn.Module) -> list[Layer]:
    out: list[Layer] = []
    seen: set[int] = set()

    def visit(layer: Layer) -> None:
        if id(layer) in seen:  # one layer at several paths (e.g. tied embeddings): once
            return
        seen.add(id(layer))
        out.append(layer)
        for child in _tracking.direct_sublayers(layer):
            visit(child)

    if isinstance(model, Layer):
        visit(model)
    else:  # a plain torch module holding mpq layers (e.g. from mpq.from_torch)
        for child in _tracking.direct_sublayers(model):
            visit(child)
    return out


def _shared_variables(model: torch.nn.Module) -> dict[int, str]:
    """id of an mpq variable that a torch module (not an mpq layer) also holds as a parameter
    -> that module's qualified name (e.g. a Linear head tied to an Embedding by from_torch)."""
    out: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, Layer):
            continue
        for p in module._parameters.values():
            if p is not None:
                out.setdefault(id(p), repr(name or "<root>"))
    if not out:
        return out
    variables = {id(v) for layer in _layers(model) for v in layer._parameters.values()}
    return {k: v for k, v in out.items() if k in variables}


def _make_filter(spec: Any) -> Callable[[Layer], bool]:
    if spec is None:
        return lambda layer: True
    if isinstance(spec, str):
        try:
            pattern = re.compile(spec)
        except re.error as e:
            raise ValueError(
                f"Expected `filter` to be a valid regular expression on layer paths. "
                f"Received: filter={spec!r} ({e})"
            ) from None
        return lambda layer: pattern.search(layer.path) is not None
    if callable(spec):
        return lambda layer: bool(spec(layer))
    if isinstance(spec, Iterable):
        names = list(spec)
        if not all(isinstance(n, str) for n in names):
            raise TypeError(
                f"Expected `filter` as a list of layer names or paths (strings). "
                f"Received: filter={names!r}"
            )
        wanted = set(names)
        return lambda layer: layer.name in wanted or layer.path in wanted
    raise TypeError(
        "Expected `filter` to be None, a regular expression (str) on layer paths, a list of "
        f"layer names or a callable(layer) -> bool. Received: filter={spec!r} (of type "
        f"{type(spec).__name__})"
    )


@dataclass(frozen=True)
class _Plan:
    """One layer of a model-level quantize, validated: ``bound`` is the per-layer scheme to
    attach (mpq's schemes: config, form, checked; the layer is still unchanged), ``policy`` the
    layer's quantized policy. A scheme that is not one of mpq's cannot be bound without
    converting: ``bound`` is None and applying asks ``registered.apply``."""

    layer: Layer
    registered: _registry.QuantizationScheme
    bound: C.Scheme | None
    policy: Any

    def apply(self, cfg: QuantizationConfig) -> None:
        """Convert the layer and attach its scheme and policy (one attribute)."""
        layer = self.layer
        scheme: _registry.QuantizationScheme
        if self.bound is not None:
            self.bound.convert_layer(layer)
            scheme, policy = self.bound, self.policy
        else:
            scheme, policy = self.registered.apply(layer, cfg.mode, cfg)
        layer._set_quantization_scheme(scheme, policy)


def _validate(
    layer: Layer, registered: _registry.QuantizationScheme, cfg: QuantizationConfig
) -> _Plan:
    """Everything ``layer.quantize(cfg)`` checks, without changing the layer: the plan that
    applies it."""
    bound = registered.bind(layer, cfg) if isinstance(registered, C.Scheme) else None
    return _Plan(layer, registered, bound, cfg.to_policy(layer.dtype_policy.name))


def _resolve(mode_or_config: Any, config: Any) -> QuantizationConfig:
    if config is None:
        return QuantizationConfig.get(mode_or_config)
    if not isinstance(mode_or_config, str):
        raise TypeError(
            "Expected a mode string such as 'int8' with `config=`. "
            f"Received: mode_or_config={mode_or_config!r} and config={config!r}"
        )
    if isinstance(config, dict):
        return QuantizationConfig(mode_or_config, **config)
    if isinstance(config, QuantizationConfig):
        named = QuantizationConfig(mode_or_config)
        explicit_block = "/" in mode_or_config
        if config.mode != named.mode or (explicit_block and config.block_size != named.block_size):
            raise ValueError(
                f"Expected a config for mode {mode_or_config!r}. Received: config={config!r}"
            )
        return config
    raise TypeError(
        "Expected `config` to be a dict of QuantizationConfig options, a QuantizationConfig or "
        f"None. Received: config={config!r} (of type {type(config).__name__})"
    )


def quantize(
    model: torch.nn.Module,
    mode_or_config: Any,
    filter: Any = None,
    *,
    config: Any = None,
    algorithm: Any = "rtn",
    calibration: Any = None,
) -> QuantizationReport:
    """Quantize every supported layer of ``model`` in place; returns a `QuantizationReport`.

    Args:
        model: a built ``mpq.layers.Layer`` (a Sequential, your own model, or one layer), or
            a plain ``torch.nn.Module`` holding mpq layers (e.g. from ``mpq.from_torch``).
        mode_or_config: ``"int8"``, ``"int4"``, ``"int4/32"``, ``"float8"``, a config dict or a
            ``QuantizationConfig`` (e.g. ``QuantizationConfig("int8", weight_only=True)``).
        filter: which layers to quantize: None (all), a regular expression searched in each
            layer's ``path`` (anchor it with ``^...$``), a list of layer names or paths, or a
            callable ``(layer) -> bool``.
        config: with a mode string, the other options as a dict (``{"weight_only": True}``) or
            a matching ``QuantizationConfig``.
        algorithm: how the codes are chosen: ``"rtn"`` (round-to-nearest, the default),
            ``"gptq"``, ``"awq"``, ``"smoothquant"``, or an options object such as
            ``mpq.quantization.GPTQConfig(act_order=True)``. Layers an algorithm does not handle
            are skipped with the reason.
        calibration: for the calibration-based algorithms, an iterable of model inputs
            (floating tensors or arrays), e.g. a list of batches.

    Every candidate is validated before the first layer changes: an unbuilt candidate raises
    ValueError; one whose kind cannot run the config (an einsum equation or an option it does
    not support) is skipped with the reason, like layers with no scheme for the mode
    (containers, layers without weights, subclasses of supported layers: use
    ``layer.quantize(..., type_check=False)`` for those). If a layer still fails while
    converting, the layers already converted are restored: nothing is half-applied.

    Example:
        >>> from mpq.layers import Dense, Sequential
        >>> model = Sequential([Dense(8, name="up"), Dense(2, name="out")], name="net")
        >>> _ = model(torch.ones(1, 4))
        >>> report = quantize(model, "int8", filter=r"/up$")
        >>> report.quantized, report.skipped["net/out"]
        (['net/up'], 'filtered')
    """
    if not isinstance(model, Layer) and not (isinstance(model, torch.nn.Module) and _layers(model)):
        raise TypeError(
            "Expected an mpq.layers.Layer, or a torch.nn.Module holding mpq layers (see "
            f"mpq.from_torch), to quantize. Received: {model!r} (of type {type(model).__name__})"
        )
    cfg = _resolve(mode_or_config, config)
    algo = get_algorithm(algorithm)
    algo.check_mode(cfg)
    if algo.needs_calibration:
        batches = check_calibration(calibration, algo.name)
    elif calibration is not None:
        raise ValueError(
            f"Expected no `calibration` for algorithm {algo.name!r} (it reads only the weights). "
            f"Received: calibration of type {type(calibration).__name__}"
        )
    else:
        batches = []
    keep = _make_filter(filter)
    report = QuantizationReport(config=cfg, bytes_before=weight_bytes(model), algorithm=algo.name)
    todo: list[tuple[Layer, _registry.QuantizationScheme]] = []
    shared = _shared_variables(model)
    for layer in _layers(model):
        path = layer.path
        tied = next((shared[id(v)] for v in layer._parameters.values() if id(v) in shared), None)
        if tied is not None:
            report.skipped[path] = (
                f"tied: its variable is also the weight of {tied}; quantizing would untie them "
                "(mpq.from_torch(..., untie=True) gives each its own copy)"
            )
            continue
        if layer.quantization_scheme is not None:
            report.skipped[path] = f"already quantized ({layer.dtype_policy.name})"
            continue
        try:
            registered = _registry.get_scheme(layer, cfg.mode, type_check=True)
        except NotImplementedError as e:
            container = next(_tracking.direct_sublayers(layer), None) is not None
            if not container or layer._parameters:  # pure containers are not listed
                report.skipped[path] = f"unsupported: {e}"
            continue
        if not keep(layer):
            report.skipped[path] = "filtered"
            continue
        todo.append((layer, registered))
    if any(not layer.built for layer, _ in todo):
        names = [layer.path for layer, _ in todo if not layer.built]
        raise ValueError(
            f"Cannot quantize {names}: not built yet. Call the model on an input or build it "
            "first. Received: built=False"
        )
    plans: dict[int, _Plan] = {}
    for layer, registered in todo:
        try:
            plan = _validate(layer, registered, cfg)
            algo.check_layer(layer, cfg)
        except NotImplementedError as e:  # this option on this layer kind: skipped, not fatal
            report.skipped[layer.path] = f"unsupported: {e}"
            continue
        plans[id(layer)] = plan
    # What Layer.quantize changes on a layer, restored if a later layer fails: its variables,
    # its attached scheme and its policy.
    snapshots: list[QuantizationSnapshot] = []
    values: list[tuple[torch.Tensor, torch.Tensor]] = []

    def quantize_layer(layer: Layer) -> None:
        plan = plans.get(id(layer))
        if plan is None or layer.quantization_scheme is not None:
            raise RuntimeError(  # a bug in the algorithm, not a user error
                "Expected a layer that mpq.quantize validated and has not quantized yet. "
                f"Received: layer {layer.path!r} ("
                + ("not validated" if plan is None else "already quantized")
                + ")"
            )
        snapshots.append(QuantizationSnapshot(layer))
        plan.apply(cfg)
        report.quantized.append(layer.path)

    def will_modify(layer: Layer) -> None:
        values.extend((p, p.detach().clone()) for p in layer._parameters.values() if p is not None)

    ctx = AlgorithmContext(
        model=model,
        layers=[plan.layer for plan in plans.values()],
        config=cfg,
        batches=batches,
        quantize_layer=quantize_layer,
        will_modify=will_modify,
        note=report.notes.__setitem__,
    )
    try:
        algo.apply(ctx)
    except BaseException:
        for snapshot in reversed(snapshots):
            snapshot.restore()
        with torch.no_grad():
            for param, saved in reversed(values):
                param.copy_(saved)
        report.quantized.clear()
        raise
    report.bytes_after = weight_bytes(model)
    return report
