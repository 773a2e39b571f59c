"""What every quantization algorithm shares: the algorithm registry, calibration checks, the
per-layer input capture (forward pre-hooks) and writing computed codes into a quantized layer.

An algorithm is a frozen config object (``GPTQConfig(...)``, ...) with ``apply``; ``mpq.quantize``
resolves ``algorithm=`` here and runs it inside its all-or-nothing block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from mpq._errors import describe as _describe
from mpq.layers import Dense, EinsumDense
from mpq.quantization import _common as C
from mpq.quantization._forms import EinsumForm, form_of

__all__ = [
    "Algorithm",
    "AlgorithmContext",
    "algorithm_names",
    "get_algorithm",
    "register_algorithm",
]

_ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: register an `Algorithm` config class under its ``algorithm`` name."""
    name = cls.algorithm
    if name in _ALGORITHMS:
        raise ValueError(
            f"Expected a new algorithm name. Received: {name!r}, already registered by "
            f"{_ALGORITHMS[name].__name__}"
        )
    _ALGORITHMS[name] = cls
    return cls


def algorithm_names() -> tuple[str, ...]:
    return tuple(_ALGORITHMS)


def get_algorithm(identifier: Any) -> Algorithm:
    """An algorithm config from a name (``"gptq"``: its default options) or a config object."""
    if isinstance(identifier, Algorithm):
        return identifier
    if isinstance(identifier, str) and identifier in _ALGORITHMS:
        return _ALGORITHMS[identifier]()
    raise ValueError(
        f"Expected `algorithm` to be one of {sorted(_ALGORITHMS)} or an algorithm config such as "
        f"mpq.quantization.GPTQConfig(...). Received: algorithm={_describe(identifier)}"
    )


@dataclass
class AlgorithmContext:
    """What ``mpq.quantize`` hands an algorithm: the model, the layers to quantize (in model
    order), the target config, the calibration batches, and callbacks that keep the model-level
    quantize all-or-nothing: ``quantize_layer(layer)`` (snapshot, then ``layer.quantize``),
    ``will_modify(layer)`` (snapshot a float layer's values before changing them in place) and
    ``note(path, text)`` (a line in the report)."""

    model: torch.nn.Module
    layers: list[Any]
    config: Any
    batches: list[torch.Tensor]
    quantize_layer: Callable[[Any], None]
    will_modify: Callable[[Any], None]
    note: Callable[[str, str], None]


class Algorithm:
    """Base of the algorithm configs. Subclasses are frozen dataclasses that set ``algorithm``,
    ``modes`` (the quantization modes they produce codes for) and implement ``apply``."""

    algorithm: ClassVar[str] = ""
    modes: ClassVar[tuple[str, ...]] = ()
    needs_calibration: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return self.algorithm

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = asdict(self)  # type: ignore[call-overload]
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Algorithm:
        if not isinstance(config, dict):
            raise TypeError(f"Expected a config dict. Received: config={_describe(config)}")
        return cls(**config)

    def check_mode(self, cfg: Any) -> None:
        """Raise ValueError when this algorithm cannot produce ``cfg``'s mode."""
        if cfg.mode not in self.modes:
            raise ValueError(
                f"Expected a quantization mode that {self.algorithm} produces, one of "
                f"{list(self.modes)}. Received: mode={cfg.mode_spec!r}"
            )

    def check_layer(self, layer: Any, cfg: Any) -> None:
        """Raise NotImplementedError for a layer this algorithm does not handle (it is then
        skipped by ``mpq.quantize`` with the reason)."""
        if not isinstance(layer, (Dense, EinsumDense)):
            raise NotImplementedError(
                f"{self.algorithm} quantizes Dense and EinsumDense layers. "
                f"Received: a {type(layer).__name__}"
            )
        form = form_of(layer, tuple(C.float_kernel(layer).shape))
        if not isinstance(form, EinsumForm) or form.X:
            raise NotImplementedError(
                f"{self.algorithm} needs a kernel contracted with its input directly. "
                f"Received: equation {getattr(layer, 'equation', '...k,kn->...n')!r}"
            )

    def apply(self, ctx: AlgorithmContext) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


# ------------------------------------------------------------------------------ calibration
def check_calibration(calibration: Any, algorithm: str) -> list[torch.Tensor]:
    """The calibration batches as a list of tensors (numpy arrays converted): floating inputs,
    or integer token ids for models that start with an Embedding."""
    if calibration is None:
        raise ValueError(
            f"Expected `calibration` (an iterable of model inputs) for algorithm {algorithm!r}. "
            "Received: calibration=None"
        )
    if isinstance(calibration, (torch.Tensor, np.ndarray)) or not isinstance(calibration, Iterable):
        raise TypeError(
            "Expected `calibration` to be an iterable of input batches (e.g. a list of "
            f"tensors). Received: calibration={_describe_value(calibration)}"
        )
    batches = []
    for i, batch in enumerate(calibration):
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        numeric = isinstance(batch, torch.Tensor) and (
            batch.is_floating_point()
            or (not batch.is_complex() and batch.dtype != torch.bool)  # token ids
        )
        if not numeric:
            raise TypeError(
                "Expected each calibration batch to be a floating (or integer token id) tensor "
                f"or array. Received: batch {i} = {_describe_value(batch)}"
            )
        if batch.is_floating_point() and not bool(torch.isfinite(batch).all()):
            raise ValueError(
                "Expected finite calibration batches. Received: batch "
                f"{i} with {int((~torch.isfinite(batch)).sum())} non-finite value(s)"
            )
        batches.append(batch)
    if not batches:
        raise ValueError("Expected at least one calibration batch. Received: an empty iterable")
    return batches


def _describe_value(x: Any) -> str:
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return f"a {type(x).__name__} of dtype {x.dtype} and shape {tuple(x.shape)}"
    return _describe(x)


class _Stop(Exception):
    """Raised by a capture hook once it has the layer's input: the rest of the model is skipped."""


def run_model(model: torch.nn.Module, batch: torch.Tensor) -> None:
    with torch.no_grad():
        model(batch)


def capture(
    model: torch.nn.Module,
    layer: Any,
    batches: list[torch.Tensor],
    consume: Callable[[torch.Tensor], None],
) -> int:
    """Run ``model`` on every batch (no grad, eval mode) and pass ``layer``'s input, as rows
    ``[S, M, K]`` float64 (S = 1 for Dense), to ``consume``; the model stops at ``layer``.
    Returns the number of rows M seen."""
    form = form_of(layer, tuple(C.float_kernel(layer).shape))
    seen = 0

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        nonlocal seen
        x = args[0] if args else next(iter(kwargs.values()))
        rows, _ = form.to_rows(torch.as_tensor(x).detach().to(torch.float64))
        seen += rows.shape[1]
        consume(rows)
        raise _Stop

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i, batch in enumerate(batches):
            try:
                run_model(model, batch)
            except _Stop:
                continue
            except Exception as e:
                raise ValueError(
                    "Expected calibration batches the model accepts. Received: batch "
                    f"{i} = {_describe_value(batch)}, which raised {type(e).__name__}: {e}"
                ) from e
            raise ValueError(
                f"Expected layer {layer.path!r} to run on the calibration batches. Received: "
                f"batch {i} = {_describe_value(batch)} never reached it"
            )
    finally:
        handle.remove()
        for m, was_training in modes:
            m.training = was_training
    return seen


def hessian(model: torch.nn.Module, layer: Any, batches: list[torch.Tensor]) -> tuple[Any, int]:
    """``H = 2 X^T X / M`` per slice (float64 ``[S, K, K]``) of ``layer``'s calibration inputs."""
    acc: list[torch.Tensor] = []

    def consume(rows: torch.Tensor) -> None:
        h = rows.transpose(1, 2) @ rows
        if acc:
            acc[0] += h
        else:
            acc.append(h)

    m = capture(model, layer, batches, consume)
    return 2.0 * acc[0] / max(m, 1), m


def inputs(model: torch.nn.Module, layer: Any, batches: list[torch.Tensor]) -> torch.Tensor:
    """All of ``layer``'s calibration inputs as rows ``[S, M, K]`` float64."""
    parts: list[torch.Tensor] = []
    capture(model, layer, batches, parts.append)
    return torch.cat(parts, dim=1)


# ------------------------------------------------------------------------------ storing codes
def matrix(layer: Any) -> torch.Tensor:
    """The float kernel as ``[S, N, K]`` float64 (S = 1 for Dense)."""
    form = form_of(layer, tuple(C.float_kernel(layer).shape))
    m: torch.Tensor = form.to_matrix(C.float_kernel(layer).detach()).to(torch.float64)
    return m if form.S else m.unsqueeze(0)


def store_int_codes(
    layer: Any, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None
) -> None:
    """Overwrite a layer just quantized to int8 / int4 with codes computed elsewhere, in the same
    layout as round-to-nearest: ``q [S, N, K]`` int8, ``scale [S, N]`` or grouped ``[S, N, G]``
    float32, ``zero`` ``[S, N, G]`` int8 (grouped int4). Shapes are checked against the stored
    variables before anything is written."""
    params = layer._parameters
    # The scheme knows its stored layout (int4 packs the codes, grouped scales are [G, N]).
    new = layer.quantization_scheme.code_variables(layer, q, scale, zero)
    for key, value in new.items():
        target = params[key]
        if math.prod(target.shape) != value.numel() or target.dtype != value.dtype:
            raise RuntimeError(  # a layout mismatch is a bug in mpq, not a user error
                f"Expected {key} of {tuple(target.shape)} {target.dtype} for layer "
                f"{layer.path!r}. Received: {tuple(value.shape)} {value.dtype}"
            )
    with torch.no_grad():
        for key, value in new.items():
            params[key].copy_(value.reshape(params[key].shape))


# ------------------------------------------------------------------------------ input scales
def check_dense(algorithm: str, layer: Any) -> None:
    """AWQ and SmoothQuant scale the input channels of a Dense kernel."""
    if type(layer) is not Dense:
        raise NotImplementedError(
            f"{algorithm} quantizes Dense layers (it scales their input channels). "
            f"Received: a {type(layer).__name__}"
        )


def _predecessor(model: Any, layer: Any) -> Any:
    """The layer that feeds ``layer`` and nothing else: its predecessor in the Sequential (the
    model or one nested in it) that holds ``layer`` directly."""
    from mpq.layers import Sequential

    for module in model.modules():
        if isinstance(module, Sequential):
            layers = module.layers
            index = next((i for i, la in enumerate(layers) if la is layer), None)
            if index is not None:
                return layers[index - 1] if index else None
    return None


def _foldable(pred: Any, k: int) -> str | None:
    """Which of ``pred``'s variables carry its output channels (all scaled by 1/s), or None."""
    from mpq import activations
    from mpq.layers import LayerNormalization

    if pred is None or getattr(pred, "quantization_scheme", None) is not None:
        return None
    if type(pred) is Dense and pred.activation is activations.linear:
        return "dense" if pred.kernel.shape[-1] == k else None
    if type(pred) is LayerNormalization and pred.axis in (-1, [-1]) and pred.gamma is not None:
        return "norm" if pred.gamma.shape == (k,) else None
    return None


def fold_input_scale(ctx: AlgorithmContext, layer: Any, s: torch.Tensor, algorithm: str) -> bool:
    """Make ``layer(x)`` compute ``(x / s) @ (s * W)``: ``s`` multiplies the kernel's input rows
    and ``1 / s`` goes into the predecessor's output channels (a linear Dense: kernel columns and
    bias; a LayerNormalization over the last axis: gamma and beta). The float model's function
    is unchanged up to one rounding of each changed value. Without such a predecessor nothing
    changes, the report notes it, and False is returned."""
    k = s.numel()
    pred = _predecessor(ctx.model, layer)
    kind = _foldable(pred, k)
    if kind is None:
        ctx.note(
            layer.path,
            f"{algorithm}: no layer to fold 1/s into (needs a linear Dense or a "
            "LayerNormalization right before it in a Sequential); not scaled",
        )
        return False
    ctx.will_modify(pred)
    ctx.will_modify(layer)
    with torch.no_grad():
        kernel = layer._parameters["kernel"]
        kernel.copy_((kernel.to(torch.float64) * s.unsqueeze(1)).to(kernel.dtype))
        names = ("kernel", "bias") if kind == "dense" else ("gamma", "beta")
        for name in names:
            p = pred._parameters.get(name)
            if p is not None:
                p.copy_((p.to(torch.float64) / s).to(p.dtype))
    return True
