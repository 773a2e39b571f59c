"""Layer conformance harness: `run_layer_test` checks that a layer (built-in or your own)
honours the mpq Layer contract under every dtype policy.

    >>> from mpq.testing.layer_test import run_layer_test
    >>> from mpq.layers.conv import Conv2D
    >>> report = run_layer_test(Conv2D, {"filters": 4, "kernel_size": 3}, (2, 6, 6, 3))
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard, Union

import numpy as np
import torch

import mpq
from mpq.layers.base import Layer
from mpq.policy import DTypePolicy

if TYPE_CHECKING:
    from mpq.quantization import QuantizationConfig

__all__ = ["DEFAULT_POLICIES", "LayerConformanceError", "LayerTestReport", "run_layer_test"]

DEFAULT_POLICIES: tuple[str, ...] = (
    "float32",
    "float16",
    "bfloat16",
    "mixed_float16",
    "mixed_bfloat16",
)


Shape: TypeAlias = Sequence[int | None]
InputShape: TypeAlias = Shape | Sequence[Shape]
InputDType: TypeAlias = torch.dtype | str | Sequence[torch.dtype | str | None] | None
InputData: TypeAlias = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]
Inputs: TypeAlias = torch.Tensor | list["Inputs"]
"""The inputs a layer is called on: a tensor, or a list of them (multi-input layers)."""
ShapeTree: TypeAlias = tuple[int, ...] | list["ShapeTree"] | None
"""The shapes of a (nested) tensor structure, None where there is no tensor."""
QuantizeMode: TypeAlias = Union[str, "QuantizationConfig"]


class LayerConformanceError(AssertionError):
    """A layer broke the Layer contract; the message names the layer, policy and check."""


@dataclass
class LayerTestReport:
    """What `run_layer_test` did: the checks that passed, per policy name."""

    layer: str
    checks: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # policy name -> reason

    def passed(self, policy: str) -> list[str]:
        return self.checks.get(policy, [])


# ----------------------------------------------------------------------------- helpers
def _flatten(x: object) -> list[object]:
    if isinstance(x, (list, tuple)):
        return [leaf for item in x for leaf in _flatten(item)]
    if isinstance(x, Mapping):
        return [leaf for key in sorted(x) for leaf in _flatten(x[key])]
    return [x]


def _tensors(x: object) -> list[torch.Tensor]:
    return [t for t in _flatten(x) if isinstance(t, torch.Tensor)]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a_flat = a.detach().contiguous().reshape(-1).cpu()
    b_flat = b.detach().contiguous().reshape(-1).cpu()
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return torch.equal(a_flat.view(torch.uint8), b_flat.view(torch.uint8))
    return torch.equal(a_flat, b_flat)


def _same_array_bits(a: object, b: object) -> bool:
    x, y = np.asarray(a), np.asarray(b)
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _is_shape(x: object) -> TypeGuard[Shape]:
    return isinstance(x, (tuple, list, torch.Size)) and all(
        d is None or isinstance(d, int) for d in x
    )


def _shape_tree(x: object) -> ShapeTree:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, (list, tuple)):
        return [_shape_tree(item) for item in x]
    return None


def _normalize_shapes(x: object) -> object:  # shapes -> tuples; anything else unchanged
    if _is_shape(x):
        return tuple(x)
    if isinstance(x, (list, tuple)):
        return [_normalize_shapes(item) for item in x]
    return x


def _json_roundtrip(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(config))
    return out


def _to_torch_dtype(dtype: object) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    named = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if isinstance(named, torch.dtype):
        return named
    raise ValueError(
        "Expected `input_dtype` to be a torch dtype or its name (e.g. 'float32', 'int64'). "
        f"Received: input_dtype={dtype!r} (of type {type(dtype).__name__})"
    )


def _make_inputs(
    input_shape: object,
    input_dtype: object,
    input_range: tuple[float, float] | None,
    gen: torch.Generator,
) -> Inputs:
    if _is_shape(input_shape):
        dtype = _to_torch_dtype(input_dtype if input_dtype is not None else torch.float32)
        shape = tuple(input_shape)
        dims = tuple(d for d in shape if d is not None)
        if len(dims) != len(shape):
            raise ValueError(
                f"Expected a fully defined `input_shape`. Received: input_shape={shape}"
            )
        if dtype.is_floating_point:
            x = torch.randn(dims, generator=gen)
            if input_range is not None:
                low, high = input_range
                x = torch.rand(dims, generator=gen) * (high - low) + low
            return x.to(dtype)
        if dtype == torch.bool:
            return torch.rand(dims, generator=gen) > 0.5
        ilow, ihigh = (0, 2) if input_range is None else (int(input_range[0]), int(input_range[1]))
        return torch.randint(ilow, ihigh, dims, generator=gen).to(dtype)
    if isinstance(input_shape, (list, tuple)) and input_shape:
        dtypes = (
            list(input_dtype)
            if isinstance(input_dtype, (list, tuple))
            else [input_dtype] * len(input_shape)
        )
        return [
            _make_inputs(s, d, input_range, gen) for s, d in zip(input_shape, dtypes, strict=True)
        ]
    raise ValueError(
        "Expected `input_shape` to be a shape tuple or a list of shape tuples. "
        f"Received: input_shape={input_shape!r}"
    )


def _as_tensors(data: object) -> Inputs:
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(data))
    if isinstance(data, (list, tuple)):
        return [_as_tensors(d) for d in data]
    raise ValueError(
        "Expected `input_data` to be a tensor, a numpy array or a list of them. "
        f"Received: input_data of type {type(data).__name__}"
    )


def _clone_inputs(x: Inputs, requires_grad: bool = False) -> Inputs:
    if isinstance(x, torch.Tensor):
        y = x.detach().clone()
        if requires_grad and y.dtype.is_floating_point:
            y.requires_grad_(True)
        return y
    return [_clone_inputs(item, requires_grad) for item in x]


class _Checker:
    """Runs the checks for one policy and words the failures."""

    def __init__(self, layer_name: str, policy_name: str, report: LayerTestReport) -> None:
        self.layer_name = layer_name
        self.policy_name = policy_name
        self.report = report
        self.current = ""

    def fail(self, message: str) -> LayerConformanceError:
        return LayerConformanceError(
            f"run_layer_test({self.layer_name}, policy={self.policy_name!r}), "
            f"check {self.current!r}: {message}"
        )

    def check(self, condition: bool, message: str | Callable[[], str]) -> None:
        if not condition:
            raise self.fail(message() if callable(message) else message)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run one named check: other exceptions become failures of that check."""
        self.current = name
        try:
            yield
        except LayerConformanceError:
            raise
        except Exception as e:
            raise self.fail(f"raised {type(e).__name__}: {e}") from e
        self.report.checks.setdefault(self.policy_name, []).append(name)


# ----------------------------------------------------------------------------- the harness
def run_layer_test(
    layer_cls: type[Layer],
    init_kwargs: Mapping[str, Any],
    input_shape: InputShape | None = None,
    expected_output_shape: InputShape | None = None,
    policies: Iterable[object] = DEFAULT_POLICIES,
    input_dtype: InputDType = None,
    input_data: InputData | None = None,
    *,
    call_kwargs: Mapping[str, Any] | None = None,
    input_range: tuple[float, float] | None = None,
    expected_num_trainable_weights: int | None = None,
    expected_num_non_trainable_weights: int | None = None,
    supports_masking: bool | None = None,
    check_gradients: bool = True,
    quantize_modes: Iterable[QuantizeMode] = (),
    seed: int = 0,
) -> LayerTestReport:
    """Check that `layer_cls(**init_kwargs)` honours the mpq Layer contract under each policy.

    For every policy (a name or a policy object) a fresh layer is built with `dtype=policy`
    and called on the inputs (`input_data`, or random data of `input_shape` and
    `input_dtype`, default float32: standard normal floats, or integers in `input_range`,
    default [0, 2)). `input_shape` may be a list of shapes for multi-input layers. Checks:

    - build/call: the layer is built after its first call; `expected_output_shape` if given;
    - output dtype: every floating output has the policy's compute dtype;
    - variable dtypes: every floating variable has the policy's variable dtype, non-trainable
      variables do not require grad; optional weight counts;
    - compute_output_shape(input_shape) equals the real output shape, and
      compute_output_spec(inputs) the real output shapes and dtypes;
    - config: `get_config()` is JSON-serializable, `from_config` of its JSON round trip gives
      the same config, and the rebuilt layer with `set_weights(get_weights())` gives
      bit-identical outputs;
    - get_weights/set_weights and save_own_variables/load_own_variables round trips are
      bit-exact, on values and on outputs;
    - stateless_call: with the layer's own values it reproduces the output bit for bit, with
      other values it matches a layer holding them, and it leaves the layer untouched; with
      `training=True` its returned non-trainable values match a real training call;
    - gradients (when `check_gradients`): after a training-mode forward and backward, every
      trainable variable has a finite gradient in its own (variable) dtype, and floating
      inputs get a gradient.

    `quantize_modes` (e.g. `("int8", "int4/32")`, or quantization configs such as
    `mpq.quantization.QuantizationConfig("int8", weight_only=True)`): for each mode and policy, a
    built layer is quantized with `layer.quantize(mode)` and the checks above run again on it (the
    policy is then `"{mode}_from_{policy}"`; its variables may be integers, so the variable-dtype and
    weight-count checks are replaced by `quantization_mode == mode`). A mode with no scheme
    registered for `layer_cls` is skipped and the reason recorded in `report.skipped`.

    Raises `LayerConformanceError` (an AssertionError) naming the layer, policy and check.
    Returns a `LayerTestReport` listing the checks run for each policy.

    Example:
        >>> from mpq.layers.core import Dropout
        >>> rep = run_layer_test(Dropout, {"rate": 0.5}, (2, 3), expected_output_shape=(2, 3))
        >>> "config" in rep.passed("mixed_bfloat16")
        True
    """
    layer_cls = _check_layer_cls(layer_cls)
    init_kwargs = dict(init_kwargs)
    if "dtype" in init_kwargs:
        raise ValueError(
            "Expected `init_kwargs` without 'dtype': run_layer_test sets it from `policies`. "
            f"Received: dtype={init_kwargs['dtype']!r}"
        )
    if input_shape is None and input_data is None:
        raise ValueError("Expected `input_shape` or `input_data`. Received: neither")
    call_kwargs = dict(call_kwargs or {})
    report = LayerTestReport(layer=layer_cls.__name__)
    gen = torch.Generator().manual_seed(seed)
    if input_data is not None:
        base_inputs = _as_tensors(input_data)
    else:
        base_inputs = _make_inputs(input_shape, input_dtype, input_range, gen)
    shapes = _shape_tree(base_inputs)
    for policy in policies:
        resolved = _single_policy(policy)
        checker = _Checker(layer_cls.__name__, resolved.name, report)
        options = _Options(
            expected_output_shape=_normalize_shapes(expected_output_shape),
            call_kwargs=call_kwargs,
            n_trainable=expected_num_trainable_weights,
            n_non_trainable=expected_num_non_trainable_weights,
            supports_masking=supports_masking,
            check_gradients=check_gradients,
            seed=seed,
        )
        _run_one_policy(checker, layer_cls, init_kwargs, resolved, base_inputs, shapes, options)
        for mode in quantize_modes:
            from mpq.layers.quantization import get_scheme  # only when quantizing

            # A mode string ("int8", "int4/32") or a quantization config (its `name`).
            spec = mode if isinstance(mode, str) else getattr(mode, "name", str(mode))
            label = f"{spec}_from_{resolved.name}"
            try:
                get_scheme(layer_cls, _base_mode(mode), type_check=True)
            except NotImplementedError as e:
                report.skipped[label] = str(e)
                continue
            checker = _Checker(layer_cls.__name__, label, report)
            _run_one_policy(
                checker, layer_cls, init_kwargs, resolved, base_inputs, shapes, options, mode
            )
    return report


def _check_layer_cls(layer_cls: object) -> type[Layer]:
    if not isinstance(layer_cls, type):
        raise TypeError(
            "Expected a layer class as `layer_cls`. "
            f"Received: layer_cls={layer_cls!r} (of type {type(layer_cls).__name__})"
        )
    return layer_cls


def _single_policy(policy: object) -> DTypePolicy:
    resolved = mpq.policy.get(policy)
    if not isinstance(resolved, DTypePolicy):
        raise TypeError(
            "Expected each of `policies` to name one dtype policy (a DTypePolicyMap maps layer "
            f"paths to policies; give its policies one by one). Received: {policy!r} "
            f"(of type {type(policy).__name__})"
        )
    return resolved


@dataclass(frozen=True)
class _Options:
    expected_output_shape: object
    call_kwargs: dict[str, Any]
    n_trainable: int | None
    n_non_trainable: int | None
    supports_masking: bool | None
    check_gradients: bool
    seed: int


@dataclass
class _Run:
    """One policy's run: what every check step reads, and what the first steps leave for the
    later ones (the layer, its outputs, its weights, its JSON config)."""

    c: _Checker
    layer_cls: type[Layer]
    init_kwargs: dict[str, Any]
    policy: DTypePolicy
    base_inputs: Inputs
    shapes: ShapeTree
    options: _Options
    quantize_mode: QuantizeMode | None
    floating_input: bool = False
    layer: Layer = field(init=False)
    outputs: Any = field(init=False)  # whatever the layer returns
    out_tensors: list[torch.Tensor] = field(init=False)
    weights: list[torch.nn.Parameter] = field(init=False)
    config_json: dict[str, Any] = field(init=False)

    def make(self) -> Layer:
        return self.layer_cls(**self.init_kwargs, dtype=self.policy)

    def run(self, layer: Layer, inputs: Inputs | None = None, training: bool = False) -> Any:
        x = _clone_inputs(self.base_inputs) if inputs is None else inputs
        return layer(x, training=training, **self.options.call_kwargs)

    def rebuilt(self) -> Layer:
        """A new layer from the JSON config, built like the layer under test."""
        new = self.layer_cls.from_config(self.config_json)
        _build_like(new, self.layer, self.shapes)
        return new


def _run_one_policy(
    c: _Checker,
    layer_cls: type[Layer],
    init_kwargs: dict[str, Any],
    policy: DTypePolicy,
    base_inputs: Inputs,
    shapes: ShapeTree,
    options: _Options,
    quantize_mode: QuantizeMode | None = None,
) -> None:
    r = _Run(c, layer_cls, init_kwargs, policy, base_inputs, shapes, options, quantize_mode)
    r.floating_input = any(t.dtype.is_floating_point for t in _tensors(base_inputs))
    _step_build_and_call(r)
    _step_output_dtype(r)
    _step_variable_dtypes(r)
    _step_compute_output_shape(r)
    _step_compute_output_spec(r)
    _step_config(r)
    _step_weights_round_trip(r)
    _step_own_variables_round_trip(r)
    _step_stateless_call(r)
    _step_gradients(r)  # last: a training call may update the layer's state


def _step_build_and_call(r: _Run) -> None:
    c, quantize_mode = r.c, r.quantize_mode
    expected_output_shape = r.options.expected_output_shape
    with c.step("build/call"):
        try:
            layer = r.make()
        except Exception as e:
            raise c.fail(f"constructing the layer raised {type(e).__name__}: {e}") from e
        try:
            outputs = r.run(layer)
        except Exception as e:
            raise c.fail(f"calling the layer raised {type(e).__name__}: {e}") from e
        c.check(layer.built, "expected layer.built to be True after the first call")
        if quantize_mode is not None:
            layer.quantize(quantize_mode)
            c.check(
                layer.quantization_mode == _base_mode(quantize_mode),
                f"expected quantization_mode={quantize_mode!r} after quantize(); "
                f"received {layer.quantization_mode!r}",
            )
            outputs = r.run(layer)
        out_tensors = _tensors(outputs)
        c.check(bool(out_tensors), f"expected the layer to return tensors; received {outputs!r}")
        if expected_output_shape is not None:
            got = _shape_tree(outputs)
            c.check(
                got == expected_output_shape,
                f"expected output shape {expected_output_shape}; received {got}",
            )
    r.layer, r.outputs, r.out_tensors = layer, outputs, out_tensors


def _step_output_dtype(r: _Run) -> None:
    c, compute_dtype = r.c, r.policy.torch_compute_dtype
    with c.step("output dtype"):
        for t in r.out_tensors:
            if r.floating_input or t.dtype.is_floating_point:
                c.check(
                    t.dtype == compute_dtype,
                    f"expected outputs in the compute dtype {compute_dtype}; received {t.dtype}",
                )


def _step_variable_dtypes(r: _Run) -> None:
    c, layer, quantize_mode = r.c, r.layer, r.quantize_mode
    variable_dtype = r.policy.torch_variable_dtype
    n_trainable, n_non_trainable = r.options.n_trainable, r.options.n_non_trainable
    supports_masking = r.options.supports_masking
    with c.step("variable dtypes"):
        weights = r.weights = list(layer.weights)
        for v in weights if quantize_mode is None else ():
            if v.dtype.is_floating_point and v.dtype != variable_dtype:
                raise c.fail(
                    f"expected variable {_vname(v)} in the variable dtype "
                    f"{variable_dtype}; received {v.dtype}"
                )
        trainable_ids = {id(v) for v in layer.trainable_weights}
        for v in layer.non_trainable_weights:
            if v.requires_grad:
                raise c.fail(
                    f"expected non-trainable variable {_vname(v)} to have requires_grad=False"
                )
            c.check(id(v) not in trainable_ids, f"variable {_vname(v)} is both trainable and not")
        c.check(
            len(weights) == len(layer.trainable_weights) + len(layer.non_trainable_weights),
            f"expected weights = trainable_weights + non_trainable_weights; received "
            f"{len(weights)} vs {len(layer.trainable_weights)} + {len(layer.non_trainable_weights)}",
        )
        if n_trainable is not None and quantize_mode is None:
            c.check(
                len(layer.trainable_weights) == n_trainable,
                f"expected {n_trainable} trainable weights; received {len(layer.trainable_weights)}",
            )
        if n_non_trainable is not None and quantize_mode is None:
            c.check(
                len(layer.non_trainable_weights) == n_non_trainable,
                f"expected {n_non_trainable} non-trainable weights; "
                f"received {len(layer.non_trainable_weights)}",
            )
        if supports_masking is not None:
            c.check(
                layer.supports_masking == supports_masking,
                f"expected supports_masking={supports_masking}; received {layer.supports_masking}",
            )


def _step_compute_output_shape(r: _Run) -> None:
    c, shapes = r.c, r.shapes
    with c.step("compute_output_shape"):
        try:
            predicted = r.layer.compute_output_shape(shapes)
        except Exception as e:
            raise c.fail(f"compute_output_shape({shapes}) raised {type(e).__name__}: {e}") from e
        got = _shape_tree(r.outputs)
        c.check(
            _normalize_shapes(predicted) == got,
            f"compute_output_shape({shapes}) returned {predicted}; the real output shape is {got}",
        )


def _step_compute_output_spec(r: _Run) -> None:
    c, out_tensors = r.c, r.out_tensors
    with c.step("compute_output_spec"):
        spec = r.layer.compute_output_spec(
            _clone_inputs(r.base_inputs), training=False, **r.options.call_kwargs
        )
        spec_t = _tensors(spec)
        c.check(
            len(spec_t) == len(out_tensors),
            f"compute_output_spec returned {len(spec_t)} tensors; the layer returns "
            f"{len(out_tensors)}",
        )
        for s_, t in zip(spec_t, out_tensors, strict=True):
            if s_.shape != t.shape or s_.dtype != t.dtype:
                raise c.fail(
                    f"compute_output_spec gave {s_.dtype}{tuple(s_.shape)}; the "
                    f"real output is {t.dtype}{tuple(t.shape)}"
                )


def _step_config(r: _Run) -> None:
    c, layer = r.c, r.layer
    with c.step("config"):
        config = layer.get_config()
        try:
            config_json = r.config_json = _json_roundtrip(config)
        except (TypeError, ValueError) as e:
            raise c.fail(f"get_config() is not JSON-serializable ({e}): {config!r}") from e
        clone = r.layer_cls.from_config(config_json)
        c.check(
            _json_roundtrip(clone.get_config()) == config_json,
            lambda: (
                f"from_config(get_config()).get_config() differs: {clone.get_config()!r} vs {config!r}"
            ),
        )
        _build_like(clone, layer, r.shapes)
        clone.set_weights(layer.get_weights())
        clone_out = r.run(clone)
        _check_same_outputs(c, clone_out, r.outputs, "from_config + set_weights")


def _step_weights_round_trip(r: _Run) -> None:
    c, layer, weights = r.c, r.layer, r.weights
    with c.step("get_weights/set_weights"):
        values = layer.get_weights()
        c.check(
            len(values) == len(weights),
            f"get_weights() returned {len(values)} arrays for {len(weights)} weights",
        )
        other = r.rebuilt()
        other.set_weights(values)
        for i, (a, b) in enumerate(zip(values, other.get_weights(), strict=True)):
            if not _same_array_bits(a, b):
                raise c.fail(
                    f"weight #{i} ({_vname(weights[i])}) changed in the round "
                    f"trip: {np.asarray(a).dtype}{np.shape(a)} -> {np.asarray(b).dtype}{np.shape(b)}"
                )
        for v, w in zip(layer.weights, other.weights, strict=True):
            if not _same_bits(v, w):
                raise c.fail(f"variable {_vname(v)} differs after set_weights")
        _check_same_outputs(c, r.run(other), r.outputs, "set_weights(get_weights())")


def _step_own_variables_round_trip(r: _Run) -> None:
    c, layer = r.c, r.layer
    with c.step("save_own_variables/load_own_variables"):
        store: dict[str, Any] = {}
        layer.save_own_variables(store)
        loaded = r.rebuilt()
        loaded.load_own_variables(store)
        for v, w in zip(layer.weights, loaded.weights, strict=True):
            if not _same_bits(v, w):
                raise c.fail(f"variable {_vname(v)} differs after load_own_variables")
        _check_same_outputs(c, r.run(loaded), r.outputs, "load_own_variables(save_own_variables())")


def _step_stateless_call(r: _Run) -> None:
    c, layer, base_inputs, call_kwargs = r.c, r.layer, r.base_inputs, r.options.call_kwargs
    with c.step("stateless_call"):
        before = [v.detach().clone() for v in layer.weights]
        tv = [v.detach().clone() for v in layer.trainable_variables]
        ntv = [v.detach().clone() for v in layer.non_trainable_variables]
        result = layer.stateless_call(
            tv, ntv, _clone_inputs(base_inputs), training=False, **call_kwargs
        )
        c.check(
            isinstance(result, tuple) and len(result) == 2,
            f"expected stateless_call to return (outputs, non_trainable_variables); "
            f"received {type(result).__name__}",
        )
        s_out, s_ntv = result
        _check_same_outputs(c, s_out, r.outputs, "stateless_call with the layer's own values")
        c.check(
            len(s_ntv) == len(ntv),
            f"expected {len(ntv)} non-trainable values back; received {len(s_ntv)}",
        )
        if tv:
            # Other values: the result must match a layer that holds them.
            shifted = [(t * 0.5 + 0.25).to(t.dtype) if t.dtype.is_floating_point else t for t in tv]
            s_out2, _ = layer.stateless_call(
                shifted, ntv, _clone_inputs(base_inputs), training=False, **call_kwargs
            )
            holder = r.rebuilt()
            holder.set_weights(layer.get_weights())
            with torch.no_grad():
                for v, t in zip(holder.trainable_variables, shifted, strict=True):
                    v.copy_(t)
            _check_same_outputs(
                c, s_out2, r.run(holder), "stateless_call with other trainable values"
            )
        if ntv:
            # Training mode: returned state == the state a real training call leaves behind.
            _, s_ntv_train = layer.stateless_call(
                tv, ntv, _clone_inputs(base_inputs), training=True, **call_kwargs
            )
            twin = r.rebuilt()
            twin.set_weights(layer.get_weights())
            r.run(twin, training=True)
            for v, s in zip(twin.non_trainable_variables, s_ntv_train, strict=True):
                if not _same_bits(v, torch.as_tensor(s)):
                    raise c.fail(
                        f"stateless_call(training=True) returned a value for "
                        f"{_vname(v)} that differs from a real training call"
                    )
        for v, b in zip(layer.weights, before, strict=True):
            if not _same_bits(v, b):
                raise c.fail(f"stateless_call modified variable {_vname(v)}")


def _step_gradients(r: _Run) -> None:
    c, layer = r.c, r.layer
    if not (r.options.check_gradients and (layer.trainable_weights or r.floating_input)):
        return
    with c.step("gradients"):
        for v in layer.trainable_weights:
            v.grad = None
        x = _clone_inputs(r.base_inputs, requires_grad=True)
        out = r.run(layer, inputs=x, training=True)
        gen = torch.Generator().manual_seed(r.options.seed + 1)
        loss = torch.zeros((), dtype=torch.float32)
        for t in _tensors(out):
            if t.dtype.is_floating_point and t.requires_grad:
                noise = torch.randn(t.shape, generator=gen)
                loss = loss + (t.float() * noise).sum()
        c.check(loss.requires_grad, "expected the outputs to depend on something differentiable")
        loss.backward()  # type: ignore[no-untyped-call]  # torch: unannotated
        for v in layer.trainable_weights:
            _check_gradient(c, v)
        for t in _tensors(x):
            if t.requires_grad:
                c.check(t.grad is not None, "expected floating inputs to receive a gradient")
                c.check(
                    t.grad is not None and bool(torch.isfinite(t.grad).all()),
                    "input gradient has non-finite values",
                )


def _check_gradient(c: _Checker, v: torch.nn.Parameter) -> None:
    """A trainable variable's gradient: present, in the variable's dtype, finite."""
    g = v.grad
    if g is None:
        raise c.fail(f"trainable variable {_vname(v)} got no gradient")
    if g.dtype != v.dtype:
        raise c.fail(
            f"gradient of {_vname(v)} is {g.dtype}, expected the variable's own dtype {v.dtype}"
        )
    if not bool(torch.isfinite(g).all()):
        raise c.fail(f"gradient of {_vname(v)} has non-finite values")


def _base_mode(mode: QuantizeMode) -> str:
    """``"int4"`` for ``"int4/32"`` or a config of mode int4."""
    return (mode if isinstance(mode, str) else mode.mode).partition("/")[0]


def _vname(v: torch.Tensor) -> str:
    name = getattr(v, "path", None) or getattr(v, "name", None)
    return repr(name) if name else f"of shape {tuple(v.shape)}"


def _build_like(new: Layer, ref: Layer, shapes: ShapeTree) -> None:
    """Build `new` like `ref`: through its build config when it has one, else from shapes."""
    if new.built:
        return
    build_config = ref.get_build_config() if hasattr(ref, "get_build_config") else None
    if build_config:
        new.build_from_config(build_config)
    else:
        new.build(shapes)


def _check_same_outputs(c: _Checker, got: object, expected: object, what: str) -> None:
    got_t, exp_t = _tensors(got), _tensors(expected)
    c.check(
        len(got_t) == len(exp_t),
        f"{what}: expected {len(exp_t)} output tensors; received {len(got_t)}",
    )
    for i, (a, b) in enumerate(zip(got_t, exp_t, strict=True)):
        if not _same_bits(a, b):
            raise c.fail(
                f"{what}: output #{i} differs from the original layer's "
                f"({a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}, max abs diff "
                f"{_max_diff(a, b)})"
            )


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return "n/a"
    return f"{(a.detach().double() - b.detach().double()).abs().max().item():.3g}"
