"""`QuantizationConfig`: what a quantized layer does (mode, int4 block size, weight-only or not,
float8 history length), as a frozen, hashable value with a derived name and a config round trip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mpq import policy as _policy
from mpq._errors import describe as _describe
from mpq.policy.policies import (
    DEFAULT_AMAX_HISTORY_LENGTH,
    MAX_AMAX_HISTORY_LENGTH,
    MX_MODES,
    QUANTIZATION_MODES,
    _resolve_mode,
)

__all__ = ["MODES", "SCALINGS", "QuantizationConfig"]

MODES: tuple[str, ...] = QUANTIZATION_MODES
SCALINGS: tuple[str, ...] = ("delayed", "static")


@dataclass(frozen=True)
class QuantizationConfig:
    """How a layer is quantized. Frozen and hashable; equal by fields.

    Args:
        mode: ``"int8"``, ``"int4"``, ``"float8"`` or a microscaling mode (``"mxfp8"``,
            ``"mxfp8_e5m2"``, ``"mxfp6"``, ``"mxfp6_e3m2"``, ``"mxfp4"``, ``"mxint8"``,
            ``"nvfp4"``). A string ``"int4/32"`` sets the block size.
        block_size: int4 only: ``-1`` for one symmetric scale per output channel, or an even
            group size ``g`` for asymmetric groups of ``g`` along the reduction axis (scale and
            int4 zero point per group and output channel). Default 128.
        weight_only: int8 and int4 only. int8 default False: W8A8, inputs quantized per row
            (per token) at call time and an int8 x int8 matmul; True: W8A16, activations stay
            in the compute dtype. int4 default True; False: int8 dynamic activations.
            Microscaling modes default True; False: the inputs are quantized to the same
            format along K at call time too.
            (Embedding tables are weight-only whatever this says.)
        amax_history_length: float8 with ``scaling="delayed"`` only: length of the amax
            histories (default 1024).
        scaling: float8 only. ``"delayed"`` (default): training-time delayed scaling, the float
            kernel kept, scales from amax histories. ``"static"``: for inference: the kernel
            stored as float8_e4m3fn codes with a scale set from the weights at quantize time,
            the input scale set by ``mpq.calibrate`` (dynamic per call until calibrated), no
            histories. See docs/quantization.md, "float8 for inference".

    Example:
        >>> c = QuantizationConfig("int4/32")
        >>> c.name, c.block_size, c.weight_only, c.short_str()
        ('int4/32', 32, True, 'w4a16g32')
        >>> QuantizationConfig.from_config(c.get_config()) == c
        True
    """

    mode: str
    block_size: int | None = None
    weight_only: bool | None = None
    amax_history_length: int | None = None
    scaling: str | None = None

    def __post_init__(self) -> None:
        mode, block = _resolve_mode(self.mode, self.block_size, MODES, "QuantizationConfig")
        weight_only = self.weight_only
        if mode == "float8":
            if weight_only:
                raise ValueError(
                    "Expected weight_only=None or False for mode 'float8' (inputs and kernel are "
                    f"both quantized). Received: weight_only={weight_only!r}"
                )
            weight_only = False
        elif weight_only is None:
            weight_only = mode == "int4" or mode in MX_MODES
        elif not isinstance(weight_only, bool):
            raise TypeError(
                f"Expected `weight_only` to be a bool or None. "
                f"Received: weight_only={_describe(weight_only)}"
            )
        scaling = self.scaling
        if mode == "float8":
            scaling = "delayed" if scaling is None else scaling
            if scaling not in SCALINGS:
                raise ValueError(
                    f"Expected `scaling` to be one of {list(SCALINGS)} for mode 'float8'. "
                    f"Received: scaling={_describe(scaling)}"
                )
        elif scaling is not None:
            raise ValueError(
                f"Expected no `scaling` for mode {mode!r} (float8 only). "
                f"Received: scaling={scaling!r}"
            )
        history = self.amax_history_length
        if scaling == "static":
            if history is not None:
                raise ValueError(
                    "Expected no amax_history_length with scaling='static' (static float8 keeps "
                    f"no amax histories). Received: amax_history_length={history!r}"
                )
        elif mode == "float8":
            history = DEFAULT_AMAX_HISTORY_LENGTH if history is None else history
            if (
                not isinstance(history, int)
                or isinstance(history, bool)
                or not 1 <= history <= MAX_AMAX_HISTORY_LENGTH
            ):
                raise ValueError(
                    f"Expected `amax_history_length` to be an int in [1, {MAX_AMAX_HISTORY_LENGTH}]. "
                    f"Received: amax_history_length={_describe(history)}"
                )
        elif history is not None:
            raise ValueError(
                f"Expected no amax_history_length for mode {mode!r} (float8 only). "
                f"Received: amax_history_length={history!r}"
            )
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "block_size", block)
        object.__setattr__(self, "weight_only", weight_only)
        object.__setattr__(self, "amax_history_length", history)
        object.__setattr__(self, "scaling", scaling)

    # -- derived names ---------------------------------------------------------------------
    @property
    def mode_spec(self) -> str:
        """The mode as policy names spell it: ``"int8"``, ``"int4/128"``, ``"float8"``."""
        return self.mode if self.block_size is None else f"{self.mode}/{self.block_size}"

    @property
    def name(self) -> str:
        """``mode_spec`` plus what differs from the mode's default, e.g. ``"int8_weight_only"``,
        ``"int4/128_int8_activations"``, ``"float8_h16"``, ``"float8_static"``."""
        name = self.mode_spec
        if self.scaling == "static":
            return name + "_static"
        if self.mode == "int8" and self.weight_only:
            name += "_weight_only"
        elif self.mode == "int4" and not self.weight_only:
            name += "_int8_activations"
        elif self.mode in MX_MODES and not self.weight_only:
            name += "_quantized_activations"
        elif self.mode == "float8" and self.amax_history_length != DEFAULT_AMAX_HISTORY_LENGTH:
            name += f"_h{self.amax_history_length}"
        return name

    def short_str(self) -> str:
        """A compact tag for run names and plot series: ``w8a8``, ``w8a16``, ``w4a16g128``,
        ``w4a8pc``, ``fp8``, ``fp8s`` (static), ``mxfp4-w`` (weight-only), ``mxfp4-wa``
        (weights and inputs)."""
        if self.scaling == "static":
            return "fp8s"
        if self.mode in MX_MODES:
            return f"{self.mode}-{'w' if self.weight_only else 'wa'}"
        if self.mode == "float8":
            return (
                "fp8"
                if self.amax_history_length == DEFAULT_AMAX_HISTORY_LENGTH
                else (f"fp8h{self.amax_history_length}")
            )
        bits = "8" if self.mode == "int8" else "4"
        acts = "16" if self.weight_only else "8"
        tag = f"w{bits}a{acts}"
        if self.mode == "int4":
            tag += "pc" if self.block_size == -1 else f"g{self.block_size}"
        return tag

    # -- config round trip -----------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> QuantizationConfig:
        if not isinstance(config, dict):
            raise TypeError(f"Expected a config dict. Received: config={_describe(config)}")
        return cls(**config)

    @classmethod
    def from_policy(cls, policy: Any, weight_only: bool | None = None) -> QuantizationConfig:
        """The config of a quantized policy (block size, history length) with ``weight_only``.

        >>> import mpq
        >>> QuantizationConfig.from_policy(mpq.policy.get("int4/-1_from_float32")).name
        'int4/-1'
        """
        policy = _policy.get(policy)
        if not getattr(policy, "layout_supported", True):
            raise NotImplementedError(
                "Expected a gptq/awq policy with an mpq layout (4 bits, or 8 bits per output "
                f"channel: group -1). Received: policy={policy.name!r}"
            )
        mode = policy.quantization_mode
        if mode is None:
            raise ValueError(
                "Expected a quantized policy such as 'int8_from_float32'. "
                f"Received: policy={policy.name!r}"
            )
        return cls(
            mode,
            block_size=getattr(policy, "block_size", None),
            weight_only=weight_only,
            amax_history_length=getattr(policy, "amax_history_length", None),
        )

    def to_policy(self, source_name: str) -> Any:
        """The quantized policy ``"{mode}_from_{source_name}"`` for this config."""
        if self.scaling == "static":  # the policy's history length plays no part
            return _policy.QuantizedFloat8DTypePolicy("float8", source_name)
        if self.mode == "float8":
            length = self.amax_history_length
            if length is None:  # __post_init__ sets it for float8
                return _policy.QuantizedFloat8DTypePolicy("float8", source_name)
            return _policy.QuantizedFloat8DTypePolicy(
                "float8", source_name, amax_history_length=length
            )
        return _policy.QuantizedDTypePolicy(self.mode_spec, source_name)

    def matches_policy(self, policy: Any) -> bool:
        """True when ``policy`` has this config's mode, block size and history length (static
        float8 has none: any float8 policy)."""
        return (
            policy.quantization_mode == self.mode
            and getattr(policy, "block_size", None) == self.block_size
            and (
                self.scaling == "static"
                or getattr(policy, "amax_history_length", None) == self.amax_history_length
            )
        )

    @classmethod
    def get(cls, identifier: Any) -> QuantizationConfig:
        """Resolve a mode string (``"int8"``, ``"int4/32"``), a config dict, a quantized policy
        or a ``QuantizationConfig`` (returned as is)."""
        if isinstance(identifier, cls):
            return identifier
        if isinstance(identifier, str):
            return cls(identifier)
        if isinstance(identifier, dict):
            return cls.from_config(identifier)
        if isinstance(identifier, _policy.DTypePolicy) and identifier.quantization_mode:
            return cls.from_policy(identifier)
        raise TypeError(
            "Expected a quantization mode ('int8', 'int4', 'int4/32', 'float8'), a "
            "QuantizationConfig, a config dict or a quantized policy. "
            f"Received: {_describe(identifier)}"
        )
