"""Layer conformance harness: `run_layer_test` checks that a layer (built-in or your own)
honours the mpq Layer contract under every dtype policy.

    >>> from mpq.testing.layer_test import run_layer_test
    >>> from mpq.layers.conv import Conv2D
    >>> report = run_layer_test(Conv2D, {"filters": 4, "kernel_size": 3}, (2, 6, 6, 3))
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import mpq

__all__ = ["DEFAULT_POLICIES", "LayerConformanceError", "LayerTestReport", "run_layer_test"]

DEFAULT_POLICIES: tuple[str, ...] = (
    "float32",
    "float16",
    "bfloat16",
    "mixed_float16",
    "mixed_bfloat16",
)


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
def _flatten(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [leaf for item in x for leaf in _flatten(item)]
    if isinstance(x, Mapping):
        return [leaf for key in sorted(x) for leaf in _flatten(x[key])]
    return [x]


def _tensors(x: Any) -> list[torch.Tensor]:
    return [t for t in _flatten(x) if isinstance(t, torch.Tensor)]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a = a.detach().contiguous().reshape(-1).cpu()
    b = b.detach().contiguous().reshape(-1).cpu()
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)


def _same_array_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _is_shape(x: Any) -> bool:
    return isinstance(x, (tuple, list, torch.Size)) and all(
        d is None or isinstance(d, int) for d in x
    )


def _shape_tree(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, (list, tuple)):
        return [_shape_tree(item) for item in x]
    return None


def _normalize_shapes(x: Any) -> Any:
    if _is_shape(x):
        return tuple(x)
    if isinstance(x, (list, tuple)):
        return [_normalize_shapes(item) for item in x]
    return x


def _json_roundtrip(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config))


def _to_torch_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(
        "Expected `input_dtype` to be a torch dtype or its name (e.g. 'float32', 'int64'). "
        f"Received: input_dtype={dtype!r} (of type {type(dtype).__name__})"
    )


def _make_inputs(
    input_shape: Any,
    input_dtype: Any,
    input_range: tuple[float, float] | None,
    gen: torch.Generator,
) -> Any:
    if _is_shape(input_shape):
        dtype = _to_torch_dtype(input_dtype if input_dtype is not None else torch.float32)
        shape = tuple(input_shape)
        if any(d is None for d in shape):
            raise ValueError(
                f"Expected a fully defined `input_shape`. Received: input_shape={shape}"
            )
        if dtype.is_floating_point:
            x = torch.randn(shape, generator=gen)
            if input_range is not None:
                low, high = input_range
                x = torch.rand(shape, generator=gen) * (high - low) + low
            return x.to(dtype)
        if dtype == torch.bool:
            return torch.rand(shape, generator=gen) > 0.5
        low, high = (0, 2) if input_range is None else (int(input_range[0]), int(input_range[1]))
        return torch.randint(low, high, shape, generator=gen).to(dtype)
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


def _as_tensors(data: Any) -> Any:
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


def _clone_inputs(x: Any, requires_grad: bool = False) -> Any:
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
    layer_cls: type,
    init_kwargs: Mapping[str, Any],
    input_shape: Any = None,
    expected_output_shape: Any = None,
    policies: Iterable[Any] = DEFAULT_POLICIES,
    input_dtype: Any = None,
    input_data: Any = None,
    *,
    call_kwargs: Mapping[str, Any] | None = None,
    input_range: tuple[float, float] | None = None,
    expected_num_trainable_weights: int | None = None,
    expected_num_non_trainable_weights: int | None = None,
    supports_masking: bool | None = None,
    check_gradients: bool = True,
    quantize_modes: Iterable[str] = (),
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

    `quantize_modes` (e.g. `("int8", "int4")`): for each mode and policy, a built layer is
    quantized with `layer.quantize(mode)` and the checks above run again on it (the policy is
    then `"{mode}_from_{policy}"`; its variables may be integers, so the variable-dtype and
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
    if not isinstance(layer_cls, type):
        raise TypeError(
            "Expected a layer class as `layer_cls`. "
            f"Received: layer_cls={layer_cls!r} (of type {type(layer_cls).__name__})"
        )
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
        resolved = mpq.policy.get(policy)
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

            label = f"{mode}_from_{resolved.name}"
            try:
                get_scheme(layer_cls, mode, type_check=True)
            except NotImplementedError as e:
                report.skipped[label] = str(e)
                continue
            checker = _Checker(layer_cls.__name__, label, report)
            _run_one_policy(
                checker, layer_cls, init_kwargs, resolved, base_inputs, shapes, options, mode
            )
    return report


@dataclass(frozen=True)
class _Options:
    expected_output_shape: Any
    call_kwargs: dict[str, Any]
    n_trainable: int | None
    n_non_trainable: int | None
    supports_masking: bool | None
    check_gradients: bool
    seed: int


def _run_one_policy(
    c: _Checker,
    layer_cls: type,
    init_kwargs: dict[str, Any],
    policy: Any,
    base_inputs: Any,
    shapes: Any,
    options: _Options,
    quantize_mode: str | None = None,
) -> None:
    expected_output_shape = options.expected_output_shape
    call_kwargs = options.call_kwargs
    n_trainable, n_non_trainable = options.n_trainable, options.n_non_trainable
    supports_masking = options.supports_masking
    check_gradients, seed = options.check_gradients, options.seed
    compute_dtype = policy.torch_compute_dtype
    variable_dtype = policy.torch_variable_dtype
    floating_input = any(t.dtype.is_floating_point for t in _tensors(base_inputs))

    def make() -> Any:
        return layer_cls(**init_kwargs, dtype=policy)

    def run(layer: Any, inputs: Any = None, training: bool = False) -> Any:
        x = _clone_inputs(base_inputs) if inputs is None else inputs
        return layer(x, training=training, **call_kwargs)

    # -- build and call
    with c.step("build/call"):
        try:
            layer = make()
        except Exception as e:
            raise c.fail(f"constructing the layer raised {type(e).__name__}: {e}") from e
        try:
            outputs = run(layer)
        except Exception as e:
            raise c.fail(f"calling the layer raised {type(e).__name__}: {e}") from e
        c.check(layer.built, "expected layer.built to be True after the first call")
        if quantize_mode is not None:
            layer.quantize(quantize_mode)
            c.check(
                layer.quantization_mode == quantize_mode,
                f"expected quantization_mode={quantize_mode!r} after quantize(); "
                f"received {layer.quantization_mode!r}",
            )
            outputs = run(layer)
        out_tensors = _tensors(outputs)
        c.check(bool(out_tensors), f"expected the layer to return tensors; received {outputs!r}")
        if expected_output_shape is not None:
            got = _shape_tree(outputs)
            c.check(
                got == expected_output_shape,
                f"expected output shape {expected_output_shape}; received {got}",
            )

    with c.step("output dtype"):
        for t in out_tensors:
            if floating_input or t.dtype.is_floating_point:
                c.check(
                    t.dtype == compute_dtype,
                    f"expected outputs in the compute dtype {compute_dtype}; received {t.dtype}",
                )

    with c.step("variable dtypes"):
        weights = list(layer.weights)
        for v in weights if quantize_mode is None else ():
            if v.dtype.is_floating_point:
                c.check(
                    v.dtype == variable_dtype,
                    lambda v=v: (
                        f"expected variable {_vname(v)} in the variable dtype "
                        f"{variable_dtype}; received {v.dtype}"
                    ),
                )
        trainable_ids = {id(v) for v in layer.trainable_weights}
        for v in layer.non_trainable_weights:
            c.check(
                not v.requires_grad,
                lambda v=v: (
                    f"expected non-trainable variable {_vname(v)} to have requires_grad=False"
                ),
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

    with c.step("compute_output_shape"):
        try:
            predicted = layer.compute_output_shape(shapes)
        except Exception as e:
            raise c.fail(f"compute_output_shape({shapes}) raised {type(e).__name__}: {e}") from e
        got = _shape_tree(outputs)
        c.check(
            _normalize_shapes(predicted) == got,
            f"compute_output_shape({shapes}) returned {predicted}; the real output shape is {got}",
        )

    with c.step("compute_output_spec"):
        spec = layer.compute_output_spec(_clone_inputs(base_inputs), training=False, **call_kwargs)
        spec_t = _tensors(spec)
        c.check(
            len(spec_t) == len(out_tensors),
            f"compute_output_spec returned {len(spec_t)} tensors; the layer returns "
            f"{len(out_tensors)}",
        )
        for s_, t in zip(spec_t, out_tensors, strict=True):
            c.check(
                s_.shape == t.shape and s_.dtype == t.dtype,
                lambda s_=s_, t=t: (
                    f"compute_output_spec gave {s_.dtype}{tuple(s_.shape)}; the "
                    f"real output is {t.dtype}{tuple(t.shape)}"
                ),
            )

    # -- config round trip
    with c.step("config"):
        config = layer.get_config()
        try:
            config_json = _json_roundtrip(config)
        except (TypeError, ValueError) as e:
            raise c.fail(f"get_config() is not JSON-serializable ({e}): {config!r}") from e
        clone = layer_cls.from_config(config_json)
        c.check(
            _json_roundtrip(clone.get_config()) == config_json,
            lambda: (
                f"from_config(get_config()).get_config() differs: {clone.get_config()!r} vs {config!r}"
            ),
        )
        _build_like(clone, layer, shapes)
        clone.set_weights(layer.get_weights())
        clone_out = run(clone)
        _check_same_outputs(c, clone_out, outputs, "from_config + set_weights")

    # -- weights round trips
    with c.step("get_weights/set_weights"):
        values = layer.get_weights()
        c.check(
            len(values) == len(weights),
            f"get_weights() returned {len(values)} arrays for {len(weights)} weights",
        )
        other = layer_cls.from_config(config_json)
        _build_like(other, layer, shapes)
        other.set_weights(values)
        for i, (a, b) in enumerate(zip(values, other.get_weights(), strict=True)):
            c.check(
                _same_array_bits(a, b),
                lambda i=i, a=a, b=b: (
                    f"weight #{i} ({_vname(weights[i])}) changed in the round "
                    f"trip: {np.asarray(a).dtype}{np.shape(a)} -> {np.asarray(b).dtype}{np.shape(b)}"
                ),
            )
        for v, w in zip(layer.weights, other.weights, strict=True):
            c.check(_same_bits(v, w), lambda v=v: f"variable {_vname(v)} differs after set_weights")
        _check_same_outputs(c, run(other), outputs, "set_weights(get_weights())")

    with c.step("save_own_variables/load_own_variables"):
        store: dict[str, Any] = {}
        layer.save_own_variables(store)
        loaded = layer_cls.from_config(config_json)
        _build_like(loaded, layer, shapes)
        loaded.load_own_variables(store)
        for v, w in zip(layer.weights, loaded.weights, strict=True):
            c.check(
                _same_bits(v, w),
                lambda v=v: f"variable {_vname(v)} differs after load_own_variables",
            )
        _check_same_outputs(c, run(loaded), outputs, "load_own_variables(save_own_variables())")

    # -- stateless_call
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
        _check_same_outputs(c, s_out, outputs, "stateless_call with the layer's own values")
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
            holder = layer_cls.from_config(config_json)
            _build_like(holder, layer, shapes)
            holder.set_weights(layer.get_weights())
            with torch.no_grad():
                for v, t in zip(holder.trainable_variables, shifted, strict=True):
                    v.copy_(t)
            _check_same_outputs(
                c, s_out2, run(holder), "stateless_call with other trainable values"
            )
        if ntv:
            # Training mode: returned state == the state a real training call leaves behind.
            _, s_ntv_train = layer.stateless_call(
                tv, ntv, _clone_inputs(base_inputs), training=True, **call_kwargs
            )
            twin = layer_cls.from_config(config_json)
            _build_like(twin, layer, shapes)
            twin.set_weights(layer.get_weights())
            run(twin, training=True)
            for v, s in zip(twin.non_trainable_variables, s_ntv_train, strict=True):
                c.check(
                    _same_bits(v, torch.as_tensor(s)),
                    lambda v=v: (
                        f"stateless_call(training=True) returned a value for "
                        f"{_vname(v)} that differs from a real training call"
                    ),
                )
        for v, b in zip(layer.weights, before, strict=True):
            c.check(_same_bits(v, b), lambda v=v: f"stateless_call modified variable {_vname(v)}")

    # -- gradients (last: a training call may update the layer's state)
    if check_gradients and (layer.trainable_weights or floating_input):
        with c.step("gradients"):
            for v in layer.trainable_weights:
                v.grad = None
            x = _clone_inputs(base_inputs, requires_grad=True)
            out = run(layer, inputs=x, training=True)
            gen = torch.Generator().manual_seed(seed + 1)
            loss = torch.zeros((), dtype=torch.float32)
            for t in _tensors(out):
                if t.dtype.is_floating_point and t.requires_grad:
                    r = torch.randn(t.shape, generator=gen)
                    loss = loss + (t.float() * r).sum()
            c.check(
                loss.requires_grad, "expected the outputs to depend on something differentiable"
            )
            loss.backward()
            for v in layer.trainable_weights:
                g = v.grad
                c.check(
                    g is not None, lambda v=v: f"trainable variable {_vname(v)} got no gradient"
                )
                c.check(
                    g.dtype == v.dtype,
                    lambda v=v, g=g: (
                        f"gradient of {_vname(v)} is {g.dtype}, expected the "
                        f"variable's own dtype {v.dtype}"
                    ),
                )
                c.check(
                    bool(torch.isfinite(g).all()),
                    lambda v=v: f"gradient of {_vname(v)} has non-finite values",
                )
            for t in _tensors(x):
                if t.requires_grad:
                    c.check(t.grad is not None, "expected floating inputs to receive a gradient")
                    c.check(
                        bool(torch.isfinite(t.grad).all()), "input gradient has non-finite values"
                    )


def _vname(v: Any) -> str:
    name = getattr(v, "path", None) or getattr(v, "name", None)
    return repr(name) if name else f"of shape {tuple(v.shape)}"


def _build_like(new: Any, ref: Any, shapes: Any) -> None:
    """Build `new` like `ref`: through its build config when it has one, else from shapes."""
    if new.built:
        return
    build_config = ref.get_build_config() if hasattr(ref, "get_build_config") else None
    if build_config:
        new.build_from_config(build_config)
    else:
        new.build(shapes)


def _check_same_outputs(c: _Checker, got: Any, expected: Any, what: str) -> None:
    got_t, exp_t = _tensors(got), _tensors(expected)
    c.check(
        len(got_t) == len(exp_t),
        f"{what}: expected {len(exp_t)} output tensors; received {len(got_t)}",
    )
    for i, (a, b) in enumerate(zip(got_t, exp_t, strict=True)):
        c.check(
            _same_bits(a, b),
            lambda i=i, a=a, b=b: (
                f"{what}: output #{i} differs from the original layer's "
                f"({a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}, max abs diff "
                f"{_max_diff(a, b)})"
            ),
        )


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return "n/a"
    return f"{(a.detach().double() - b.detach().double()).abs().max().item():.3g}"
