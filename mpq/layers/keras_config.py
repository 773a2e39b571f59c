"""Keras 3.15 configs -> mpq configs: what `keras.layers.X.get_config()` and
`keras.saving.serialize_keras_object` write, translated (as data) to what mpq's `from_config`
and `mpq.layers.deserialize` take.

The `{"module", "class_name", "config", "registered_name"}` wrapper is recognised by its
`module`, which must be one of `KERAS_MODULES` (checked as a string, never imported); class
names then resolve through mpq's own catalogs only. Keras arguments that mpq has no use for
are dropped only when they hold Keras' neutral value (e.g. `quantization_config=None`,
`input_axes=None`); any other value raises ValueError naming the argument.
"""

from __future__ import annotations

from typing import Any

from mpq._errors import describe as _describe

__all__ = [
    "KERAS_MODULES",
    "is_keras_object",
    "translate_layer_config",
    "translate_object",
]

# The module strings Keras 3.15 writes for the objects mpq can stand in for. Anything else
# claiming to be Keras ("keras.src.foo") is refused rather than guessed at.
KERAS_MODULES: frozenset[str] = frozenset(
    {
        "keras",
        "keras.layers",
        "keras.models",
        "keras.src.models.functional",  # what Keras 3.15 writes for a functional Model
        "keras.initializers",
        "keras.regularizers",
        "keras.constraints",
        "keras.activations",
        "keras.dtype_policies",
        "keras.quantizers",
    }
)

# Wrapper keys Keras adds that carry nothing mpq needs.
_WRAPPER_EXTRAS = ("shared_object_id",)

# Keras arguments without an mpq counterpart, accepted only with these (neutral) values.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "input_axes": (None,),  # VarianceScaling family (Keras 3.15)
    "output_axes": (None,),
    "activity_regularizer": (None,),
}
# Keras class names that are other names of mpq classes.
_CLASS_ALIASES = {
    "FloatDTypePolicy": "DTypePolicy",
    "GPTQDTypePolicy": "QuantizedAlgorithmDTypePolicy",
    "AWQDTypePolicy": "QuantizedAlgorithmDTypePolicy",
}

# Keras quantization configs that say nothing beyond the dtype policy: Keras' defaults for the
# mode, which are mpq's defaults too (int8 W8A8 with per-row absmax inputs, int4 weight-only,
# float8 delayed scaling).
_KERAS_INT8_INPUTS = {
    "module": "keras.quantizers",
    "class_name": "AbsMaxQuantizer",
    "config": {"value_range": [-127, 127], "epsilon": 1e-07, "output_dtype": "int8"},
    "registered_name": None,
}


def is_keras_object(config: Any) -> bool:
    """True for a dict in Keras' serialized form: a `module` string `"keras"` or `"keras.*"`."""
    if not isinstance(config, dict):
        return False
    module = config.get("module")
    return isinstance(module, str) and (module == "keras" or module.startswith("keras."))


def check_module(config: dict[str, Any]) -> None:
    """Raise ValueError unless the Keras object's `module` is in `KERAS_MODULES`."""
    module = config.get("module")
    if module not in KERAS_MODULES:
        raise ValueError(
            f"Expected a Keras object from one of the modules {sorted(KERAS_MODULES)} (module "
            "names are checked, never imported). "
            f"Received: module={module!r} for class_name={config.get('class_name')!r}"
        )


def translate_object(config: dict[str, Any]) -> dict[str, Any]:
    """A serialized Keras object (initializer, regularizer, constraint, dtype policy) as
    mpq's `{"class_name", "config"}` form, its inner config translated."""
    check_module(config)
    unknown = set(config) - {"module", "class_name", "config", "registered_name", *_WRAPPER_EXTRAS}
    if unknown:
        raise ValueError(
            "Expected a serialized Keras object with the keys module, class_name, config and "
            f"registered_name. Received: unexpected keys {sorted(unknown)} in config={config!r}"
        )
    registered = config.get("registered_name")
    class_name = config.get("class_name")
    if registered not in (None, class_name):
        raise ValueError(
            "Expected a built-in Keras object (registered_name None). "
            f"Received: registered_name={registered!r} for class_name={class_name!r}"
        )
    inner = config.get("config")
    if isinstance(inner, dict):
        inner = _translate_args(str(class_name), inner)
        if class_name == "DTypePolicyMap" and isinstance(inner.get("policy_map"), dict):
            inner["policy_map"] = {
                key: translate_object(p) if is_keras_object(p) else p
                for key, p in inner["policy_map"].items()
            }
    if isinstance(class_name, str):
        class_name = _CLASS_ALIASES.get(class_name, class_name)
    return {"class_name": class_name, "config": inner}


def _translate_args(class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in _NEUTRAL and _is_neutral(value, _NEUTRAL[key]):
            continue
        if key == "quantization_config":  # its own translation (translate_layer_config)
            out[key] = value
        else:
            out[key] = translate_object(value) if is_keras_object(value) else value
    return out


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    return any(
        value is n if n is None else (type(value) is type(n) and value == n) for n in neutral
    )


def _translate_quantization_config(config: dict[str, Any], class_name: str) -> None:
    """Drop a Keras quantization config that is Keras' default for its mode (mpq's default
    too); raise for anything else (custom quantizers)."""
    qconfig = config.pop("quantization_config", None)
    if qconfig is None or not is_keras_object(qconfig):
        if qconfig is not None:
            config["quantization_config"] = qconfig  # mpq's own form
        return
    check_module(qconfig)
    name, inner = qconfig.get("class_name"), qconfig.get("config")
    inner = inner if isinstance(inner, dict) else {}
    default = (
        (name == "Int8QuantizationConfig" and _int8_default(inner))
        or (
            name == "Int4QuantizationConfig"
            and inner.get("weight_quantizer") is None
            and inner.get("activation_quantizer") is None
            and _int4_block_matches(inner.get("block_size"), config.get("dtype"))
        )
        or (name == "Float8QuantizationConfig" and not inner)
    )
    if not default:
        raise ValueError(
            f"Expected a Keras quantization config that is Keras' default for its mode "
            "(Int8QuantizationConfig with absmax int8 inputs, Int4QuantizationConfig without "
            "quantizers and with the policy's block size, Float8QuantizationConfig): mpq "
            f"cannot translate custom quantizers. Received: quantization_config={qconfig!r} "
            f"on {class_name}"
        )


def _int8_default(inner: dict[str, Any]) -> bool:
    inputs = _json_form(inner.get("activation_quantizer"))
    if isinstance(inputs, dict):
        inputs = {k: v for k, v in inputs.items() if k not in _WRAPPER_EXTRAS}
    return inner.get("weight_quantizer") is None and inputs == _KERAS_INT8_INPUTS


def _json_form(value: Any) -> Any:
    """``value`` as it reads after a JSON round trip (tuples as lists): Keras' ``get_config()``
    holds ``value_range`` as a tuple, its saved files as a list."""
    if isinstance(value, (list, tuple)):
        return [_json_form(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_form(v) for k, v in value.items()}
    return value


def _int4_block_matches(block: Any, dtype: Any) -> bool:
    policy_block = -1
    if isinstance(dtype, dict) and isinstance(dtype.get("config"), dict):
        mode = dtype["config"].get("mode")
        if isinstance(mode, str) and "/" in mode:
            tail = mode.partition("/")[2]
            policy_block = int(tail) if tail.lstrip("-").isdigit() and len(tail) < 12 else 0
    return (-1 if block is None else block) == policy_block


def translate_layer_config(class_name: str, config: Any) -> Any:
    """The inner config a Keras 3.15 layer's `get_config()` returns, as mpq's `from_config`
    takes it (an mpq config passes through unchanged). Sequential: the `InputLayer` entry is
    removed and its `batch_shape` becomes the build shape.

    >>> translate_layer_config("Dense", {"units": 2, "quantization_config": None,
    ...     "dtype": {"module": "keras", "class_name": "DTypePolicy",
    ...               "config": {"name": "float32"}, "registered_name": None}})
    {'units': 2, 'dtype': {'class_name': 'DTypePolicy', 'config': {'name': 'float32'}}}
    """
    if not isinstance(config, dict):
        return config
    config = _translate_args(class_name, config)
    _translate_quantization_config(config, class_name)
    if class_name == "Sequential":
        _translate_sequential(config)
    return config


def _translate_sequential(config: dict[str, Any]) -> None:
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers:
        return
    first = layers[0]
    if not (is_keras_object(first) and first.get("class_name") == "InputLayer"):
        return
    check_module(first)
    inner = first.get("config")
    if not isinstance(inner, dict):
        raise TypeError(
            f"Expected the config of a Keras InputLayer to be a dict. Received: {_describe(inner)}"
        )
    for key, neutral in (("sparse", False), ("ragged", False), ("optional", False)):
        if inner.get(key, neutral) is not neutral:
            raise ValueError(
                f"Expected a Keras InputLayer with {key}=False: mpq has no {key} inputs. "
                f"Received: {key}={inner.get(key)!r}"
            )
    batch_shape = inner.get("batch_shape")
    if not isinstance(batch_shape, list):
        raise TypeError(
            "Expected a Keras InputLayer config with a `batch_shape` list. "
            f"Received: batch_shape={_describe(batch_shape)}"
        )
    config["layers"] = layers[1:]
    config.setdefault("build_input_shape", batch_shape)
