"""Keras 3.15 configs into mpq (issue 16, "Keras 3.15 interoperability"): "`from_config` accepts
configs produced by Keras 3's `get_config()` / `serialize_keras_object` for every layer mpq
has: the `module` / `class_name` / `registered_name` wrapper, initializers with their full
configs, `DTypePolicy` configs, `InputLayer`. [...] Names resolve through mpq's catalogs only
(no imports from the file)."
"""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch

import mpq
from mpq.layers import deserialize, get_registered_layer
from mpq.layers.keras_config import KERAS_MODULES, translate_layer_config
from tests._keras import import_keras


def _keras_layers(keras):
    layers, init = keras.layers, keras.initializers
    return {
        "Dense": layers.Dense(
            3,
            activation="gelu",
            kernel_initializer=init.HeNormal(seed=2),
            kernel_regularizer=keras.regularizers.L1L2(0.1, 0.2),
            bias_constraint=keras.constraints.NonNeg(),
        ),
        "EinsumDense": layers.EinsumDense(
            "ab,bc->ac",
            4,
            bias_axes="c",
            kernel_initializer=init.VarianceScaling(2.0, "fan_out", "uniform", seed=1),
        ),
        "Embedding": layers.Embedding(
            10, 4, mask_zero=True, embeddings_initializer=init.RandomUniform(-1, 1, seed=4)
        ),
        "Conv1D": layers.Conv1D(2, 3, kernel_initializer=init.Orthogonal(seed=1)),
        "Conv2D": layers.Conv2D(
            2, 3, padding="same", strides=2, kernel_constraint=keras.constraints.UnitNorm(axis=0)
        ),
        "LayerNormalization": layers.LayerNormalization(
            axis=[1, 2], gamma_initializer=init.Constant(2.0)
        ),
        "BatchNormalization": layers.BatchNormalization(
            momentum=0.9,
            moving_variance_initializer=init.TruncatedNormal(1.0, 0.1, seed=0),
            renorm=True,
            renorm_clipping={"rmax": 2.0, "rmin": 0.5, "dmax": 1.0},
            renorm_momentum=0.9,
        ),
        "Dropout": layers.Dropout(0.2, seed=3),
        "Flatten": layers.Flatten(),
        "Reshape": layers.Reshape((2, 3)),
        "Activation": layers.Activation("sparse_plus"),
        "Add": layers.Add(),
        "Concatenate": layers.Concatenate(axis=1),
    }


# What each translated config must keep (mpq's get_config after from_config).
_KEPT = {
    "Dense": {
        "units": 3,
        "activation": "gelu",
        "kernel_initializer": {"class_name": "HeNormal", "config": {"seed": 2}},
        "kernel_regularizer": {"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}},
        "bias_constraint": {"class_name": "NonNeg", "config": {}},
    },
    "EinsumDense": {
        "equation": "ab,bc->ac",
        "bias_axes": "c",
        "kernel_initializer": {
            "class_name": "VarianceScaling",
            "config": {"scale": 2.0, "mode": "fan_out", "distribution": "uniform", "seed": 1},
        },
    },
    "Embedding": {"input_dim": 10, "output_dim": 4, "mask_zero": True},
    "Conv1D": {"filters": 2, "kernel_size": (3,)},
    "Conv2D": {"filters": 2, "padding": "same", "strides": (2, 2)},
    "LayerNormalization": {
        "axis": [1, 2],
        "gamma_initializer": {"class_name": "Constant", "config": {"value": 2.0}},
    },
    "BatchNormalization": {
        "momentum": 0.9,
        "renorm": True,
        "renorm_clipping": {"rmax": 2.0, "rmin": 0.5, "dmax": 1.0},
        "renorm_momentum": 0.9,
    },
    "Dropout": {"rate": 0.2, "seed": 3},
    "Flatten": {},
    "Reshape": {"target_shape": (2, 3)},
    "Activation": {"activation": "sparse_plus"},
    "Add": {},
    "Concatenate": {"axis": 1},
}


def _kept(config, expected):
    for key, value in expected.items():
        got = config[key]
        if isinstance(value, tuple):
            got = tuple(got)
        assert got == value, (key, got, value)


@pytest.mark.parametrize("name", sorted(_KEPT))
def test_every_mpq_layer_takes_keras_get_config_and_serialize_keras_object(name):
    """Keras 3.15 `layer.get_config()` -> `Class.from_config`, and
    `serialize_keras_object(layer)` (JSON) -> `mpq.layers.deserialize`: the same layer."""
    keras = import_keras()
    from keras.saving import serialize_keras_object

    k_layer = _keras_layers(keras)[name]
    cls = get_registered_layer(name)
    layer = cls.from_config(k_layer.get_config())
    assert type(layer) is cls and layer.name == k_layer.name
    assert layer.dtype_policy == mpq.policy.get("float32")
    _kept(layer.get_config(), _KEPT[name])
    wrapped = json.loads(json.dumps(serialize_keras_object(k_layer)))
    assert wrapped["module"] in KERAS_MODULES
    again = deserialize(wrapped)
    assert again.get_config() == layer.get_config()


@pytest.mark.parametrize(
    "policy",
    [
        "mixed_bfloat16",
        "float16",
        "int8_from_float32",
        "int4/32_from_float32",
        "float8_from_bfloat16",
    ],
)
def test_keras_dtype_policy_configs(policy):
    """Keras 3.15 `DTypePolicy`, `QuantizedDTypePolicy`, `Int4DTypePolicy` and
    `QuantizedFloat8DTypePolicy` configs inside a layer config resolve to the same mpq policy."""
    keras = import_keras()
    k_policy = keras.dtype_policies.get(policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = keras.layers.Dense(2, dtype=k_policy).get_config()
    assert (
        config["dtype"]["module"] == "keras.dtype_policies" or config["dtype"]["module"] == "keras"
    )
    layer = mpq.layers.Dense.from_config(config)
    assert layer.dtype_policy == mpq.policy.get(policy)


def test_sequential_with_input_layer_builds_from_its_batch_shape():
    """Keras 3 Sequential configs start with an `InputLayer` (`batch_shape`): mpq builds the
    Sequential with that shape (F's InputLayer class is not needed for this)."""
    keras = import_keras()
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    config = json.loads(json.dumps(model.get_config()))
    assert config["layers"][0]["class_name"] == "InputLayer"
    mpq_model = mpq.layers.Sequential.from_config(config)
    assert mpq_model.built
    assert [type(layer).__name__ for layer in mpq_model.layers] == ["Dense", "Dense"]
    assert tuple(mpq_model.layers[0].kernel.shape) == (5, 3)
    assert mpq_model(torch.zeros(4, 5)).shape == (4, 2)


def _keras_dense_config(**overrides):
    config = {
        "module": "keras.layers",
        "class_name": "Dense",
        "config": {
            "name": "d",
            "units": 2,
            "dtype": {
                "module": "keras",
                "class_name": "DTypePolicy",
                "config": {"name": "float32"},
                "registered_name": None,
            },
            "kernel_initializer": {
                "module": "keras.initializers",
                "class_name": "GlorotUniform",
                "config": {"seed": 5, "input_axes": None, "output_axes": None},
                "registered_name": None,
            },
            "quantization_config": None,
        },
        "registered_name": None,
        "build_config": {"input_shape": [None, 3]},
    }
    config.update(overrides)
    return config


def test_keras_wrapper_without_keras_installed():
    """The translation is data only: it needs no Keras."""
    layer = deserialize(_keras_dense_config())
    assert layer.built and tuple(layer.kernel.shape) == (3, 2)
    assert layer.kernel_initializer.get_config() == {"seed": 5}


def test_module_names_are_checked_never_imported():
    modules_before = set(sys.modules)
    with pytest.raises(
        ValueError,
        match=r"Expected a Keras object from one of the modules \[.*\] \(module names are "
        r"checked, never imported\)\. Received: module='keras\.src\.not_a_module_xyz' for "
        r"class_name='Dense'",
    ):
        deserialize(_keras_dense_config(module="keras.src.not_a_module_xyz"))
    config = _keras_dense_config()
    config["config"]["kernel_initializer"]["module"] = "keras.evil"
    with pytest.raises(ValueError, match=r"Received: module='keras\.evil' for class_name="):
        deserialize(config)
    assert not {m for m in set(sys.modules) - modules_before if "not_a_module" in m or "evil" in m}


def test_keras_object_errors():
    config = _keras_dense_config()
    config["config"]["kernel_initializer"]["registered_name"] = "pkg>Init"
    with pytest.raises(
        ValueError,
        match=r"Expected a built-in Keras object \(registered_name None\)\. Received: "
        r"registered_name='pkg>Init' for class_name='GlorotUniform'",
    ):
        deserialize(config)
    config = _keras_dense_config()
    config["config"]["kernel_initializer"]["extra"] = 1
    with pytest.raises(ValueError, match=r"Received: unexpected keys \['extra'\]"):
        deserialize(config)
    config = _keras_dense_config()
    config["config"]["kernel_initializer"]["config"]["input_axes"] = [0]
    with pytest.raises(TypeError, match="input_axes"):  # not neutral: mpq cannot honour it
        deserialize(config)


def test_custom_quantizers_are_refused():
    config = _keras_dense_config()
    config["config"]["dtype"] = {
        "module": "keras.dtype_policies",
        "class_name": "QuantizedDTypePolicy",
        "config": {"mode": "int8", "source_name": "float32"},
        "registered_name": None,
    }
    config["config"]["quantization_config"] = {
        "module": "keras.quantizers",
        "class_name": "Int8QuantizationConfig",
        "config": {"weight_quantizer": None, "activation_quantizer": None},
        "registered_name": None,
    }
    with pytest.raises(
        ValueError,
        match=r"Expected a Keras quantization config that is Keras' default for its mode .*"
        r"Received: quantization_config=\{.*Int8QuantizationConfig.*\} on Dense",
    ):
        deserialize(config)


def test_keras_default_int8_config_is_accepted_before_and_after_json():
    """Keras' `get_config()` of an int8 layer holds the input quantizer's `value_range` as a
    tuple; after a JSON round trip (a saved file) it is a list. Both are Keras' default."""
    config = _keras_dense_config()
    config["config"]["dtype"] = {
        "module": "keras.dtype_policies",
        "class_name": "QuantizedDTypePolicy",
        "config": {"mode": "int8", "source_name": "float32"},
        "registered_name": None,
    }
    for value_range in ((-127, 127), [-127, 127]):
        config["config"]["quantization_config"] = {
            "module": "keras.quantizers",
            "class_name": "Int8QuantizationConfig",
            "config": {
                "weight_quantizer": None,
                "activation_quantizer": {
                    "module": "keras.quantizers",
                    "class_name": "AbsMaxQuantizer",
                    "config": {
                        "value_range": value_range,
                        "epsilon": 1e-07,
                        "output_dtype": "int8",
                    },
                    "registered_name": None,
                },
            },
            "registered_name": None,
        }
        layer = deserialize(config)
        assert layer.quantization_mode == "int8"


def _sequential(first):
    return {
        "name": "s",
        "layers": [
            {"module": "keras.layers", "class_name": "InputLayer", "config": first},
            _keras_dense_config(),
        ],
    }


def test_input_layer_errors():
    with pytest.raises(
        ValueError, match=r"Expected a Keras InputLayer with sparse=False.*Received: sparse=True"
    ):
        mpq.layers.Sequential.from_config(_sequential({"batch_shape": [None, 3], "sparse": True}))
    with pytest.raises(
        TypeError,
        match=r"Expected a Keras InputLayer config with a `batch_shape` list\. "
        r"Received: batch_shape=None \(of type NoneType\)",
    ):
        mpq.layers.Sequential.from_config(_sequential({"shape": [3]}))
    with pytest.raises(
        TypeError, match=r"Expected the config of a Keras InputLayer to be a dict\. Received: 3"
    ):
        mpq.layers.Sequential.from_config(_sequential(3))


def test_mpq_configs_pass_through_unchanged():
    layer = mpq.layers.Dense(2, kernel_initializer="he_normal", dtype="mixed_bfloat16")
    config = layer.get_config()
    assert translate_layer_config("Dense", config) == config


def test_saving_deserialize_takes_mpq_and_keras_configs():
    """`mpq.saving.deserialize`: the config half of `load`, for either format."""
    keras_layer = mpq.saving.deserialize(_keras_dense_config())
    assert keras_layer.built and keras_layer.units == 2
    own = mpq.layers.serialize(keras_layer)
    again = mpq.saving.deserialize(own)
    assert again.get_config() == keras_layer.get_config()
    with pytest.raises(ValueError, match=r"Unknown layer class 'GRU'"):
        mpq.saving.deserialize({"module": "keras.layers", "class_name": "GRU", "config": {}})


def test_keras_dtype_policy_map_config():
    """Keras 3.15 `DTypePolicyMap` configs (`default_policy`, `policy_map` of Keras policy
    configs) translate to mpq's map, in a layer config too."""
    keras = import_keras()
    from keras.saving import serialize_keras_object

    from mpq.layers.keras_config import translate_object

    k_map = keras.dtype_policies.DTypePolicyMap(
        default_policy="mixed_bfloat16", policy_map={"seq/dense": "int8_from_mixed_bfloat16"}
    )
    wrapped = json.loads(json.dumps(serialize_keras_object(k_map)))
    policy_map = mpq.policy.deserialize(translate_object(wrapped))
    assert isinstance(policy_map, mpq.policy.DTypePolicyMap)
    assert policy_map.get_config() == {
        "default_policy": {"class_name": "DTypePolicy", "config": {"name": "mixed_bfloat16"}},
        "policy_map": {
            "seq/dense": {
                "class_name": "QuantizedDTypePolicy",
                "config": {"mode": "int8", "source_name": "mixed_bfloat16"},
            }
        },
    }
    layer = mpq.layers.Dense.from_config({"name": "other", "units": 2, "dtype": wrapped})
    assert layer.dtype_policy.name == "mixed_bfloat16"  # its path is not in the map
