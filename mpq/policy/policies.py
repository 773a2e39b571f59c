"""Dtype policies: which dtype a layer stores its variables in, which it computes in, and
whether (and how) it is quantized.

Policies are immutable value objects: hashable, equal by config, picklable, and parsed from
their name exactly once. The name is derived from the fields, never passed around and re-split.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, TypeVar

import torch

from mpq import dtypes
from mpq._errors import MAX_SIZE
from mpq._errors import describe as _describe
from mpq.policy import _state

__all__ = [
    "DEFAULT_INT4_BLOCK_SIZE",
    "FLOAT_POLICY_NAMES",
    "MX_MODES",
    "PER_CHANNEL",
    "QUANTIZATION_MODES",
    "DTypePolicy",
    "Int4DTypePolicy",
    "QuantizedAlgorithmDTypePolicy",
    "QuantizedDTypePolicy",
    "QuantizedFloat8DTypePolicy",
    "dtype_policy",
]

_P = TypeVar("_P", bound="DTypePolicy")

# (variable_dtype, compute_dtype) for every non-quantized policy name. Keras 3 allows exactly
# these: a float dtype for both, or one of the two mixed policies with float32 variables.
_FLOAT_POLICIES: dict[str, tuple[str, str]] = {
    "float16": ("float16", "float16"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "float32": ("float32", "float32"),
    "float64": ("float64", "float64"),
    "mixed_float16": ("float32", "float16"),
    "mixed_bfloat16": ("float32", "bfloat16"),
}
FLOAT_POLICY_NAMES: tuple[str, ...] = tuple(_FLOAT_POLICIES)

# The torch dtypes behind the four float names above, from the formats table.
_TORCH_FLOAT: dict[str, torch.dtype] = {
    name: dtypes.get(name).container for name in ("float16", "bfloat16", "float32", "float64")
}

# Microscaling modes (mpq.quantization.mx): OCP MX v1.0 formats (e8m0 scale per 32) and NVFP4.
MX_MODES: tuple[str, ...] = (
    "mxfp8",
    "mxfp8_e5m2",
    "mxfp6",
    "mxfp6_e3m2",
    "mxfp4",
    "mxint8",
    "nvfp4",
)
QUANTIZATION_MODES: tuple[str, ...] = ("int8", "int4", "float8", *MX_MODES)
# The int4 block size of `quantize("int4")` / `QuantizationConfig("int4")` (Keras 3.15's
# Int4QuantizationConfig default). A *policy* named without a block size ("int4_from_float32")
# is per output channel instead (PER_CHANNEL), as Keras 3.15 reads that (legacy) name.
DEFAULT_INT4_BLOCK_SIZE = 128
PER_CHANNEL = -1
DEFAULT_AMAX_HISTORY_LENGTH = 1024
# Each float8 layer keeps histories of this length: a config must not make them huge.
MAX_AMAX_HISTORY_LENGTH = 2**20

_MODE_RE = re.compile(r"^(?P<mode>[a-z0-9]+(?:_[a-z0-9]+)?)(?:/(?P<block>[^/]*))?$")
# Digits only, at most as many as MAX_SIZE has: no int() of "1_000", " 8" or of 5000 digits.
_BLOCK_RE = re.compile(rf"-?[0-9]{{1,{len(str(MAX_SIZE))}}}")


class _Frozen:
    """Immutability, value equality, hashing, pickling and copying from `get_config()`."""

    __slots__ = ()

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(
            f"{type(self).__name__} is immutable; build a new policy instead. "
            f"Received: an assignment to {key!r}"
        )

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable. Received: del {key!r}")

    def _key(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        return (type(self).__name__, tuple(sorted(self.get_config().items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Frozen):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> tuple[Any, tuple[type[_Frozen], dict[str, Any]]]:
        return (_from_config, (type(self), self.get_config()))

    def __copy__(self) -> _Frozen:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Frozen:
        return self

    def get_config(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


def _from_config(cls: type[DTypePolicy], config: dict[str, Any]) -> DTypePolicy:
    return cls.from_config(config)


class DTypePolicy(_Frozen):
    """A dtype policy: the dtype of a layer's variables and the dtype of its computations.

    Args:
        name: a float dtype name (`"float16"`, `"bfloat16"`, `"float32"`, `"float64"`: variables
            and computations both in it) or a mixed policy (`"mixed_float16"`,
            `"mixed_bfloat16"`: float32 variables, half-precision computations). `None` takes
            the global policy's dtypes (see `mpq.dtype_policy()`) at construction time.

    Example:
        >>> p = DTypePolicy("mixed_bfloat16")
        >>> p.variable_dtype, p.compute_dtype
        ('float32', 'bfloat16')
    """

    __slots__ = ("_compute_dtype", "_name", "_variable_dtype")
    _compute_dtype: str
    _name: str
    _variable_dtype: str

    def __init__(self, name: str | None = None):
        if name is None:
            name = _current_float_name()
        if not isinstance(name, str):
            raise TypeError(
                "Expected `name` to be a string such as 'mixed_bfloat16' or 'float32'. "
                f"Received: name={_describe(name)}"
            )
        if name not in _FLOAT_POLICIES:
            raise ValueError(
                f"Expected a dtype policy name, one of {list(FLOAT_POLICY_NAMES)} "
                "(quantized policies are named like 'int8_from_mixed_bfloat16' and built by "
                f"mpq.policy.get or QuantizedDTypePolicy). Received: name={name!r}"
            )
        variable_dtype, compute_dtype = _FLOAT_POLICIES[name]
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_variable_dtype", variable_dtype)
        object.__setattr__(self, "_compute_dtype", compute_dtype)

    # -- fields ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The policy's name, e.g. `"mixed_bfloat16"`."""
        return self._name

    @property
    def variable_dtype(self) -> str:
        """Canonical format name of the layer's variables, e.g. `"float32"`."""
        return self._variable_dtype

    @property
    def compute_dtype(self) -> str:
        """Canonical format name the layer computes in, e.g. `"bfloat16"`."""
        return self._compute_dtype

    @property
    def torch_variable_dtype(self) -> torch.dtype:
        return _TORCH_FLOAT[self._variable_dtype]

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        return _TORCH_FLOAT[self._compute_dtype]

    @property
    def quantization_mode(self) -> str | None:
        """`None` for float policies; `"int8"`, `"int4"` or `"float8"` for quantized ones."""
        return None

    @property
    def is_mixed(self) -> bool:
        """True when variables and computations use different dtypes."""
        return self._variable_dtype != self._compute_dtype

    def _source_float_name(self) -> str:
        return self._name

    # -- config ------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"name": self._name}

    @classmethod
    def from_config(cls: type[_P], config: object) -> _P:
        if not isinstance(config, dict):
            raise TypeError(f"Expected a config dict. Received: config={_describe(config)}")
        return cls(**config)

    def short_str(self) -> str:
        """A compact tag for run names and plot labels, e.g. `"mixed_bf16"`, `"int4g128<-f32"`."""
        return _short(self._name)

    def __repr__(self) -> str:
        return f'<{type(self).__name__} "{self._name}">'


def _short(float_name: str) -> str:
    return float_name.replace("bfloat", "bf").replace("float", "f")


# The policy in force when none was ever set (one object, so `dtype_policy()` is stable).
_DEFAULT_POLICY = DTypePolicy("float32")


def dtype_policy() -> DTypePolicy:
    """The policy in force: the innermost `policy_scope`, else the global one (`float32`).

    Example:
        >>> dtype_policy().name
        'float32'
    """
    current = _state.current()
    return current if current is not None else _DEFAULT_POLICY


def _current_float_name() -> str:
    """The float policy name behind the policy in force (`DTypePolicy(None)` takes it)."""
    return dtype_policy()._source_float_name()


class QuantizedDTypePolicy(DTypePolicy):
    """A quantized policy: a float source policy plus a quantization mode.

    The name is `"{mode}_from_{source_name}"`, e.g. `"int8_from_mixed_bfloat16"`. Variable and
    compute dtypes come from the source policy (they apply to what stays in float: biases,
    scales, activations).

    Args:
        mode: `"int8"`, `"int4"` or a microscaling mode (`MX_MODES`: `"mxfp8"`, `"mxfp8_e5m2"`,
            `"mxfp6"`, `"mxfp6_e3m2"`, `"mxfp4"`, `"mxint8"`, `"nvfp4"`; their block sizes are
            fixed by the formats); for int4 a block size may follow a slash: `"int4/128"` groups
            of 128 along the input dimension, `"int4/-1"` one scale per output channel. Plain
            `"int4"` means per output channel, as in Keras 3.15, where the policy
            `"int4_from_float32"` is per channel and `Int4DTypePolicy("int4/128")` names groups.
            (float8 has its own class, `QuantizedFloat8DTypePolicy`.)
        source_name: the float policy the quantized layer came from; `None` takes the global
            policy's.
        block_size: the int4 block size as an int (alternative to the `"int4/128"` spelling).

    Example:
        >>> q = QuantizedDTypePolicy("int4/128", "mixed_bfloat16")
        >>> q.name, q.mode, q.block_size, q.compute_dtype
        ('int4/128_from_mixed_bfloat16', 'int4', 128, 'bfloat16')
    """

    __slots__ = ("_block_size", "_mode")
    _block_size: int | None
    _mode: str
    _allowed_modes: ClassVar[tuple[str, ...]] = ("int8", "int4", *MX_MODES)

    def __init__(self, mode: str, source_name: str | None = None, *, block_size: int | None = None):
        mode, block_size = _resolve_mode(
            mode, block_size, self._allowed_modes, type(self).__name__, int4_default=PER_CHANNEL
        )
        if source_name is None:
            source_name = _current_float_name()
        if not isinstance(source_name, str):
            raise TypeError(
                "Expected `source_name` to be a float policy name such as 'mixed_bfloat16'. "
                f"Received: source_name={_describe(source_name)}"
            )
        if source_name not in _FLOAT_POLICIES:
            raise ValueError(
                f"Expected `source_name` to be one of {list(FLOAT_POLICY_NAMES)}. "
                f"Received: source_name={source_name!r}"
            )
        super().__init__(source_name)
        object.__setattr__(self, "_mode", mode)
        object.__setattr__(self, "_block_size", block_size)

    @property
    def name(self) -> str:
        return f"{self.mode_spec}_from_{self._name}"

    @property
    def source_name(self) -> str:
        """The float policy the layer was quantized from, e.g. `"mixed_bfloat16"`."""
        return self._name

    @property
    def mode(self) -> str:
        """`"int8"`, `"int4"` or `"float8"` (without the block size)."""
        return self._mode

    @property
    def block_size(self) -> int | None:
        """int4 only: group size along the input dimension, or -1 for per output channel."""
        return self._block_size

    @property
    def mode_spec(self) -> str:
        """The mode as spelled in names: `"int8"`, `"int4/128"`, `"int4/-1"`, `"float8"`."""
        return self._mode if self._block_size is None else f"{self._mode}/{self._block_size}"

    @property
    def quantization_mode(self) -> str:
        return self._mode

    def get_config(self) -> dict[str, Any]:
        return {"mode": self.mode_spec, "source_name": self._name}

    def short_str(self) -> str:
        spec = self.mode_spec.replace("/-1", "pc").replace("/", "g")
        return f"{spec}<-{_short(self._name)}"

    def __repr__(self) -> str:
        return f'<{type(self).__name__} "{self.name}">'


class Int4DTypePolicy(QuantizedDTypePolicy):
    """Keras 3.15's int4 policy with an explicit block size: `Int4DTypePolicy("int4/128",
    "float32")` (groups of 128 along the input dimension) or `"int4/-1"` (per output channel);
    `block_size=` may give it instead. The same policy as `QuantizedDTypePolicy` with that
    mode (equal to it and hashed alike); `mpq.policy.get` and the configs Keras writes
    (`{"class_name": "Int4DTypePolicy", ...}`) both resolve to it.

    Example:
        >>> p = Int4DTypePolicy("int4/64", "bfloat16")
        >>> p.name, p.block_size, p == QuantizedDTypePolicy("int4/64", "bfloat16")
        ('int4/64_from_bfloat16', 64, True)
    """

    __slots__ = ()
    _allowed_modes: ClassVar[tuple[str, ...]] = ("int4",)

    def __init__(self, mode: str, source_name: str | None = None, *, block_size: int | None = None):
        if isinstance(mode, str) and "/" not in mode and block_size is None:
            raise ValueError(
                "Expected an Int4DTypePolicy mode with a block size, 'int4/<block_size>' (e.g. "
                f"'int4/128', or 'int4/-1' per output channel). Received: mode={mode!r}"
            )
        super().__init__(mode, source_name, block_size=block_size)

    def _key(self) -> tuple[Any, ...]:
        return ("QuantizedDTypePolicy", tuple(sorted(self.get_config().items())))


class QuantizedFloat8DTypePolicy(QuantizedDTypePolicy):
    """float8 with delayed scaling: e4m3fn forward, e5m2 gradients, per-tensor scales computed
    from a history of the last `amax_history_length` absolute maxima.

    Example:
        >>> f = QuantizedFloat8DTypePolicy("float8", "mixed_bfloat16", amax_history_length=16)
        >>> f.name, f.amax_history_length
        ('float8_from_mixed_bfloat16', 16)
    """

    __slots__ = ("_amax_history_length",)
    _amax_history_length: int
    _allowed_modes: ClassVar[tuple[str, ...]] = ("float8",)

    def __init__(
        self,
        mode: str = "float8",
        source_name: str | None = None,
        amax_history_length: int = DEFAULT_AMAX_HISTORY_LENGTH,
    ):
        # bool is an int subclass; a history length of True is a bug, not a length of 1.
        if not isinstance(amax_history_length, int) or isinstance(amax_history_length, bool):
            raise TypeError(
                "Expected `amax_history_length` to be an int. "
                f"Received: amax_history_length={_describe(amax_history_length)}"
            )
        if not 1 <= amax_history_length <= MAX_AMAX_HISTORY_LENGTH:
            raise ValueError(
                f"Expected `amax_history_length` in [1, {MAX_AMAX_HISTORY_LENGTH}]. "
                f"Received: amax_history_length={amax_history_length}"
            )
        super().__init__(mode, source_name)
        object.__setattr__(self, "_amax_history_length", amax_history_length)

    @property
    def amax_history_length(self) -> int:
        return self._amax_history_length

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "amax_history_length": self._amax_history_length}


# Keras 3.15's calibrated-algorithm policy names: "gptq/<bits>/<group>", "awq/4/<group>".
ALGORITHM_BITS: dict[str, tuple[int, ...]] = {"gptq": (2, 3, 4, 8), "awq": (4,)}


class QuantizedAlgorithmDTypePolicy(QuantizedDTypePolicy):
    """A layer quantized by a calibration algorithm, named as Keras 3.15 names it:
    ``"gptq/<bits>/<group>_from_<source>"`` (bits 2, 3, 4, 8) or ``"awq/4/<group>_from_<source>"``
    (group: a positive group size or -1 for per output channel).

    mpq stores such layers in its int4 / int8 layouts, so the policy's ``quantization_mode`` is
    the layout's mode: ``"int4"`` with ``block_size = group`` for 4 bits, ``"int8"`` for 8 bits
    with group -1 (int8 is per output channel). The other combinations (2 or 3 bits, 8 bits
    grouped) parse, but mpq has no layout for them: building or quantizing a layer with one
    raises NotImplementedError (`layout_supported` is False).

    Example:
        >>> p = QuantizedAlgorithmDTypePolicy("gptq/4/128", "bfloat16")
        >>> p.name, p.algorithm, p.bits, p.quantization_mode, p.block_size
        ('gptq/4/128_from_bfloat16', 'gptq', 4, 'int4', 128)
    """

    __slots__ = ("_algorithm", "_bits", "_group_size")
    _algorithm: str
    _bits: int
    _group_size: int

    def __init__(self, mode: str, source_name: str | None = None):
        algorithm, bits, group = _parse_algorithm_mode(mode)
        if bits == 4:
            super().__init__("int4", source_name, block_size=group)
        else:  # int8, or a bit width without a layout (its mode names it: "int2", "int3")
            super().__init__("int8", source_name)
            object.__setattr__(self, "_mode", f"int{bits}")
        object.__setattr__(self, "_algorithm", algorithm)
        object.__setattr__(self, "_bits", bits)
        object.__setattr__(self, "_group_size", group)

    @property
    def name(self) -> str:
        return f"{self.algorithm_spec}_from_{self._name}"

    @property
    def algorithm(self) -> str:
        """``"gptq"`` or ``"awq"``."""
        return self._algorithm

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def group_size(self) -> int:
        return self._group_size

    @property
    def algorithm_spec(self) -> str:
        """The mode as Keras spells it: ``"gptq/4/128"``."""
        return f"{self._algorithm}/{self._bits}/{self._group_size}"

    @property
    def layout_supported(self) -> bool:
        """True when mpq has a layout for it: 4 bits, or 8 bits per output channel."""
        return self._bits == 4 or (self._bits == 8 and self._group_size == -1)

    def get_config(self) -> dict[str, Any]:
        return {"mode": self.algorithm_spec, "source_name": self._name}

    def short_str(self) -> str:
        group = "pc" if self._group_size == -1 else f"g{self._group_size}"
        return f"{self._algorithm}{self._bits}{group}<-{_short(self._name)}"


def _parse_algorithm_mode(mode: object) -> tuple[str, int, int]:
    expected = (
        "Expected a calibrated-algorithm mode 'gptq/<bits>/<group>' (bits 2, 3, 4 or 8) or "
        "'awq/4/<group>', with group a positive even size or -1"
    )
    if not isinstance(mode, str):
        raise TypeError(f"{expected}. Received: mode={_describe(mode)}")
    parts = mode.split("/")
    if len(parts) != 3 or parts[0] not in ALGORITHM_BITS:
        raise ValueError(f"{expected}. Received: mode={mode!r}")
    # The same digits-only rule as int4 block sizes: no int() of "1_000", " 8" or 5000 digits.
    if _BLOCK_RE.fullmatch(parts[1]) is None or _BLOCK_RE.fullmatch(parts[2]) is None:
        raise ValueError(f"{expected}. Received: mode={mode!r}")
    bits, group = int(parts[1]), int(parts[2])
    if (
        group > MAX_SIZE
        or bits not in ALGORITHM_BITS[parts[0]]
        or not (group == -1 or (group >= 2 and group % 2 == 0))
    ):
        raise ValueError(f"{expected}. Received: mode={mode!r}")
    return parts[0], bits, group


def _resolve_mode(
    mode: object,
    block_size: object,
    allowed: tuple[str, ...],
    cls_name: str,
    *,
    int4_default: int = DEFAULT_INT4_BLOCK_SIZE,
) -> tuple[str, int | None]:
    """`(mode, block_size)` from a mode spelling (`"int4/128"`) and an optional separate block
    size, validated: `int4_default` filled in for a bare "int4" (policies: per channel;
    `mpq.quantization.QuantizationConfig`: 128), None for the other modes. Shared with
    `QuantizationConfig`, which accepts the same spellings."""
    mode, parsed_block = _parse_mode(mode, allowed, cls_name)
    if block_size is not None and parsed_block is not None and block_size != parsed_block:
        raise ValueError(
            f"Expected one block size. Received: mode={mode + '/' + str(parsed_block)!r} "
            f"and block_size={block_size!r}"
        )
    block_size = parsed_block if parsed_block is not None else block_size
    if mode == "int4" and block_size is None:
        block_size = int4_default
    return mode, _check_block_size(mode, block_size)


def _parse_mode(mode: object, allowed: tuple[str, ...], cls_name: str) -> tuple[str, int | None]:
    if not isinstance(mode, str):
        raise TypeError(
            f"Expected `mode` to be a string, one of {list(allowed)}. Received: mode={_describe(mode)}"
        )
    match = _MODE_RE.match(mode)
    if match is None or match["mode"] not in allowed:
        hint = ""
        if match is not None and match["mode"] in QUANTIZATION_MODES:
            other = (
                "QuantizedFloat8DTypePolicy"
                if match["mode"] == "float8"
                else "QuantizedDTypePolicy"
            )
            hint = f" ({match['mode']!r} is built by {other}, or by mpq.policy.get)"
        raise ValueError(
            f"Expected `mode` for {cls_name} to be one of {list(allowed)}"
            f"{' (int4 optionally with a block size: int4/128, int4/-1)' if 'int4' in allowed else ''}."
            f"{hint} Received: mode={mode!r}"
        )
    block = match["block"]
    if block is None:
        return match["mode"], None
    if match["mode"] != "int4":
        raise ValueError(
            f"Expected a block size only with mode 'int4' (e.g. 'int4/128'). Received: mode={mode!r}"
        )
    if _BLOCK_RE.fullmatch(block) is None:
        raise ValueError(
            "Expected an integer int4 block size (a positive group size up to "
            f"{MAX_SIZE}, or -1 for per output channel), as in 'int4/128'. Received: mode={mode!r}"
        )
    return "int4", int(block)


def _check_block_size(mode: str, block_size: object) -> int | None:
    if mode != "int4":
        if block_size is not None:
            raise ValueError(
                f"Expected no block size for mode {mode!r} (only int4 has one). "
                f"Received: block_size={block_size!r}"
            )
        return None
    if block_size is None:
        return DEFAULT_INT4_BLOCK_SIZE
    if not isinstance(block_size, int) or isinstance(block_size, bool):
        raise TypeError(
            f"Expected an int block size for int4. Received: block_size={_describe(block_size)}"
        )
    if block_size != -1 and (block_size < 2 or block_size % 2 or block_size > MAX_SIZE):
        raise ValueError(
            "Expected the int4 block size to be -1 (per output channel) or an even group size "
            f"in [2, {MAX_SIZE}] (int4 values pack two per byte). Received: block_size={block_size}"
        )
    return block_size
