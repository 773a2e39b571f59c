"""mpq.layers.functional: ``Model(inputs, outputs)`` as an mpq Layer (call, config, weights,
quantize, policy maps, saving, losses), traced torch ops on save, and the seed documents'
functional-API examples (Keras 3 / tf.keras 2 "The Functional API" guide), ported to mpq.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mpq
from mpq.layers import (
    Add,
    Concatenate,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    Input,
    InputLayer,
    Layer,
    LayerNormalization,
    Model,
    Reshape,
    Sequential,
    TorchOp,
    register_layer,
)
from mpq.layers.functional import OPS, Functional
from mpq.policy import DTypePolicyMap
from mpq.testing import sqnr
from tests.layers.test_node import MaskedMean


def _mlp(name="mlp"):
    x = Input(shape=(8,), name=f"{name}_in")
    h = Dense(16, activation="relu", name=f"{name}_hidden")(x)
    y = Dense(4, name=f"{name}_out")(h)
    return Model(x, y, name=name)


def _round_trip(model, custom_objects=None):
    config = json.loads(json.dumps(model.get_config()))
    return Model.from_config(config, custom_objects=custom_objects)


# ---------------------------------------------------------------------- eager call
def test_model_is_a_layer_and_calls_its_layers_in_order():
    model = _mlp()
    assert isinstance(model, Layer) and isinstance(model, torch.nn.Module) and model.built
    x = torch.randn(5, 8)
    hidden, out = model.get_layer("mlp_hidden"), model.get_layer("mlp_out")
    torch.testing.assert_close(model(x), out(hidden(x)), rtol=0, atol=0)
    assert [type(m).__name__ for m in model.layers] == ["InputLayer", "Dense", "Dense"]
    assert model.get_layer(index=1) is hidden
    assert model.input is model.inputs[0] and model.output is model.outputs[0]
    assert model.input_names == ["mlp_in"] and model.output_names == ["mlp_out"]
    assert model.compute_output_shape((None, 8)) == (None, 4)


def test_multi_input_multi_output_nested_structures():
    """Keras 3 Functional: "inputs" and "outputs" may be nested structures; the call returns
    the structure of `outputs`."""
    a, b = Input(shape=(3,), name="a"), Input(shape=(5,), name="b")
    da, db = Dense(2), Dense(2)
    ya, yb = da(a), db(b)
    total = Add()([ya, yb])
    model = Model({"a": a, "b": b}, {"total": total, "parts": (ya, [yb])})
    xa, xb = torch.randn(4, 3), torch.randn(4, 5)
    out = model({"a": xa, "b": xb})
    assert set(out) == {"total", "parts"} and isinstance(out["parts"], tuple)
    torch.testing.assert_close(out["total"], da(xa) + db(xb), rtol=0, atol=0)
    torch.testing.assert_close(out["parts"][1][0], db(xb), rtol=0, atol=0)
    listed = Model([a, b], total)
    torch.testing.assert_close(listed([xa, xb]), out["total"], rtol=0, atol=0)
    # Inputs by Input name, as Keras accepts a dict for a list of named inputs.
    torch.testing.assert_close(listed({"b": xb, "a": xa}), out["total"], rtol=0, atol=0)


def test_inputs_take_the_dtype_of_their_input():
    """Keras 3 Functional converts each input to its Input's dtype (numpy too)."""
    tokens = Input(shape=(3,), dtype="int64")
    model = Model(tokens, Embedding(10, 2)(tokens))
    ids = torch.tensor([[1, 2, 3]], dtype=torch.int32)
    torch.testing.assert_close(model(ids), model(ids.long()), rtol=0, atol=0)
    x = Input(shape=(2,))
    ident = Model(x, x * 1.0)
    assert ident(torch.ones(1, 2, dtype=torch.float64)).dtype == torch.float32
    import numpy as np

    assert ident(np.ones((1, 2))).dtype == torch.float32


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (torch.tensor([[2**40, 1]]), ValueError, r"values of torch.int32 in .*first value=1099"),
        (torch.tensor([[1.5, 2.0]]), ValueError, r"integral, finite values.*first value=1.5"),
        (torch.tensor([[1 + 1j, 2]]), TypeError, r"Expected a real value"),
    ],
)
def test_inputs_the_input_dtype_cannot_hold_are_refused(data, error, match):
    """Never a wrong number: the conversion to the Input's dtype does not wrap or truncate."""
    ids = Input(shape=(2,), dtype="int32", name="ids")
    model = Model(ids, Embedding(10, 2)(ids))
    with pytest.raises(error, match=r"A model converts each input to its Input's dtype.*" + match):
        model(data)


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ([torch.ones(1, 3)], r"Expected 2 input tensor\(s\).*Received: 1"),
        ({"a": torch.ones(1, 3)}, r"Expected inputs named \['a', 'b'\]"),
    ],
)
def test_call_with_the_wrong_inputs(inputs, match):
    a, b = Input(shape=(3,), name="a"), Input(shape=(3,), name="b")
    model = Model([a, b], a + b)
    with pytest.raises(ValueError, match=match):
        model(inputs)


def test_training_reaches_the_layers_of_the_graph():
    x = Input(shape=(64,))
    model = Model(x, Dropout(0.5)(x))
    data = torch.ones(4, 64)
    assert torch.equal(model(data, training=False), data)
    dropped = model(data, training=True)
    assert set(dropped.unique().tolist()) <= {0.0, 2.0} and (dropped == 0).any()
    model.eval()
    assert torch.equal(model(data), data)


def test_masks_flow_through_the_eager_call():
    """tf.keras 2 masking guide: the Embedding mask reaches the layer that consumes it."""
    tokens = Input(shape=(None,), dtype="int64")
    embedding = Embedding(10, 4, mask_zero=True)
    model = Model(tokens, MaskedMean()(embedding(tokens)))
    ids = torch.tensor([[3, 4, 0, 0]])
    vectors = embedding(torch.tensor([[3, 4]]))
    torch.testing.assert_close(model(ids), vectors.mean(dim=1), rtol=1e-6, atol=0)


def test_a_mask_argument_reaches_the_first_layer():
    """Keras 3 `Functional.call(inputs, training=None, mask=None)`."""
    x = Input(shape=(3, 2))
    model = Model(x, MaskedMean()(x))
    data = torch.arange(12.0).reshape(2, 3, 2)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    out = model(data, mask=mask)
    torch.testing.assert_close(out[0], data[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(out[1], data[1].mean(dim=0), rtol=0, atol=0)
    assert mpq.layers.get_mask(data) is None  # the caller's tensor is not marked


def test_shared_layer_has_one_set_of_weights():
    """Keras functional guide, "Shared layers": "Shared layers are layer instances that are
    reused multiple times in the same model"."""
    shared = Dense(3)
    a, b = Input(shape=(4,)), Input(shape=(4,))
    model = Model([a, b], Concatenate()([shared(a), shared(b)]))
    assert len(model.weights) == 2
    xa, xb = torch.randn(2, 4), torch.randn(2, 4)
    torch.testing.assert_close(
        model([xa, xb]), torch.cat([shared(xa), shared(xb)], -1), rtol=0, atol=0
    )
    clone = _round_trip(model)
    assert len(clone.weights) == 2
    clone.set_weights(model.get_weights())
    torch.testing.assert_close(clone([xa, xb]), model([xa, xb]), rtol=0, atol=0)


def test_gradients_reach_every_layer():
    model = _mlp()
    model(torch.randn(3, 8)).sum().backward()
    assert all(w.grad is not None for w in model.trainable_weights)


# ---------------------------------------------------------------------- construction errors
def test_graph_disconnected():
    """tf.keras 2: "Graph disconnected: cannot obtain value for tensor ... at layer ..."."""
    a, b = Input(shape=(3,)), Input(shape=(3,))
    with pytest.raises(ValueError, match=r"Graph disconnected: cannot obtain value for tensor"):
        Model(a, Add()([a, b]))


def test_model_inputs_must_be_symbolic():
    with pytest.raises(ValueError, match=r"Expected `inputs` to be symbolic tensors.*Received"):
        Model(torch.ones(1, 3), Input(shape=(3,)))
    x = Input(shape=(3,))
    with pytest.raises(ValueError, match=r"Expected `outputs` to be symbolic tensors"):
        Model(x, [Dense(1)(x), 3])
    with pytest.raises(ValueError, match=r"Expected each input tensor once"):
        Model([x, x], x)


def test_layer_names_must_be_unique():
    x = Input(shape=(3,))
    y = Dense(2, name="same")(Dense(3, name="same")(x))
    with pytest.raises(ValueError, match=r'The name "same" is used 2 times in the model'):
        Model(x, y)


def test_get_layer_errors():
    model = _mlp("errs")
    with pytest.raises(ValueError, match=r"No such layer: 'nope'. Expected one of"):
        model.get_layer("nope")
    with pytest.raises(ValueError, match=r"Expected an index in \[0, 3\). Received: index=7"):
        model.get_layer(index=7)


# ---------------------------------------------------------------------- config and saving
def test_config_round_trip_is_keras_3_shaped():
    """Keras 3 `Functional.get_config()`: "layers" (each with "inbound_nodes" whose tensors are
    `__keras_tensor__` entries with a "keras_history"), "input_layers", "output_layers"."""
    model = _mlp("cfg")
    config = model.get_config()
    assert config["input_layers"] == [["cfg_in", 0, 0]]
    assert config["output_layers"] == [["cfg_out", 0, 0]]
    hidden = config["layers"][1]
    assert hidden["name"] == "cfg_hidden" and hidden["class_name"] == "Dense"
    (node,) = hidden["inbound_nodes"]
    assert node["args"][0] == {
        "class_name": "__keras_tensor__",
        "config": {"shape": [None, 8], "dtype": "float32", "keras_history": ["cfg_in", 0, 0]},
    }
    assert config["layers"][0]["inbound_nodes"] == []
    clone = _round_trip(model)
    assert isinstance(clone, Functional) and clone.name == "cfg"
    assert [m.name for m in clone.layers] == [m.name for m in model.layers]
    clone.set_weights(model.get_weights())
    x = torch.randn(2, 8)
    torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    assert json.loads(json.dumps(clone.get_config())) == json.loads(json.dumps(config))


def test_nested_model_and_shared_layer_round_trip_with_node_indices():
    inner = _mlp("inner")
    shared = Dense(4, name="shared_dense")
    x = Input(shape=(8,), name="outer_in")
    first = inner(x)
    y = shared(shared(first))
    model = Model(x, y, name="outer")
    config = model.get_config()
    entry = next(e for e in config["layers"] if e["name"] == "shared_dense")
    assert [n["args"][0]["config"]["keras_history"] for n in entry["inbound_nodes"]] == [
        ["inner", 0, 0],
        ["shared_dense", 0, 0],
    ]
    clone = _round_trip(model)
    clone.set_weights(model.get_weights())
    data = torch.randn(3, 8)
    torch.testing.assert_close(clone(data), model(data), rtol=0, atol=0)


def test_save_and_load_round_trip_bit_exact(tmp_path):
    """mpq.saving: one file; the loaded model gives the same outputs (same ops, same layout)."""
    a, b = Input(shape=(6,), name="left"), Input(shape=(6,), name="right")
    h = Concatenate()([Dense(5)(a), LayerNormalization()(b)])
    out = torch.relu(h[:, :8]).reshape(-1, 2, 4)
    model = Model([a, b], {"out": out, "h": h}, name="saved")
    path = tmp_path / "model.safetensors"
    mpq.saving.save(model, path)
    loaded = mpq.saving.load(path)
    data = [torch.randn(3, 6), torch.randn(3, 6)]
    for key in ("out", "h"):
        torch.testing.assert_close(loaded(data)[key], model(data)[key], rtol=0, atol=0)
    for w, v in zip(loaded.weights, model.weights, strict=True):
        assert torch.equal(w, v)


def test_custom_layer_in_a_saved_graph_needs_registration(tmp_path):
    """Keras functional guide, "Using custom layers": `from_config(config,
    custom_objects={"CustomDense": CustomDense})`; nothing is imported by name."""

    class Twice(Layer):
        def call(self, inputs):
            return 2 * inputs

    x = Input(shape=(3,))
    model = Model(x, Twice(name="twice")(x))
    config = json.loads(json.dumps(model.get_config()))
    with pytest.raises(ValueError, match=r"Unknown layer class 'Twice'"):
        Model.from_config(config)
    clone = Model.from_config(config, custom_objects={"Twice": Twice})
    torch.testing.assert_close(clone(torch.ones(1, 3)), 2 * torch.ones(1, 3), rtol=0, atol=0)
    path = tmp_path / "custom.safetensors"
    mpq.saving.save(model, path)
    with pytest.raises(ValueError, match=r"Unknown layer class 'Twice'"):
        mpq.saving.load(path)
    loaded = mpq.saving.load(path, custom_objects={"Twice": Twice})
    torch.testing.assert_close(loaded(torch.ones(1, 3)), 2 * torch.ones(1, 3), rtol=0, atol=0)


def test_traced_ops_save_by_name_from_a_fixed_table():
    x = Input(shape=(4, 3))
    y = torch.cat([x[..., 0:2], x.transpose(1, 2)[:, :2, :2].to(torch.float32)], dim=1)
    model = Model(x, torch.nn.functional.relu(y.sum(dim=(1,), keepdim=True)))
    config = json.loads(json.dumps(model.get_config()))
    functions = [e["config"]["function"] for e in config["layers"] if e["class_name"] == "TorchOp"]
    assert functions == [
        "Tensor.__getitem__",
        "Tensor.transpose",
        "Tensor.__getitem__",
        "Tensor.to",
        "torch.cat",
        "Tensor.sum",
        "torch.nn.functional.relu",
    ]
    assert all(name in OPS for name in functions)
    clone = Model.from_config(config)
    data = torch.randn(2, 4, 3)
    torch.testing.assert_close(clone(data), model(data), rtol=0, atol=0)


def test_a_graph_with_an_op_outside_the_table_runs_but_cannot_be_saved(tmp_path):
    """What happens on save: get_config (hence mpq.saving.save) raises a clear ValueError; the
    model keeps working eagerly."""
    x = Input(shape=(4,))
    model = Model(x, torch.cumsum(x, dim=1))
    torch.testing.assert_close(model(torch.ones(1, 4)), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    with pytest.raises(ValueError, match=r"Expected a traced torch op that mpq can save.*cumsum"):
        mpq.saving.save(model, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_a_traced_op_with_a_tensor_constant_cannot_be_saved():
    x = Input(shape=(2,))
    model = Model(x, x + torch.ones(2))
    with pytest.raises(ValueError, match=r"Expected the arguments of traced op.*JSON constants"):
        model.get_config()


def test_loading_an_op_name_outside_the_table_is_refused():
    with pytest.raises(ValueError, match=r"Expected a torch op mpq can load.*'torch.save'"):
        TorchOp("torch.save", [[{"__input__": 0}, "/tmp/x"], {}])
    with pytest.raises(ValueError, match=r"Expected `arguments` as \[args, kwargs\]"):
        TorchOp("torch.cat", "nope")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda c: c.pop("layers"), r"Expected a functional model config with a 'layers' list"),
        (
            lambda c: c["layers"][1].update(
                inbound_nodes=[
                    {
                        "args": [
                            {
                                "class_name": "__keras_tensor__",
                                "config": {"keras_history": ["ghost", 0, 0]},
                            }
                        ],
                        "kwargs": {},
                    }
                ]
            ),
            r"Expected a config whose nodes can all be computed from its inputs",
        ),
        (
            lambda c: c.update(output_layers=[["bad_out", 5, 0]]),
            r"Expected references to tensors of the graph",
        ),
        (
            lambda c: c["layers"][1].update(inbound_nodes=[{"args": [["x", "y"]]}]),
            r'Input 0 of layer "bad_out" should be a tensor',
        ),
    ],
)
def test_bad_configs_raise_clear_errors(mutate, match):
    x = Input(shape=(2,), name="bad_in")
    config = json.loads(json.dumps(Model(x, Dense(1, name="bad_out")(x)).get_config()))
    mutate(config)
    with pytest.raises((ValueError, TypeError), match=match):
        Model.from_config(config)


# ---------------------------------------------------------------------- weights, quantize, policies
def test_weights_get_set_and_state_dict():
    model = _mlp("wts")
    assert len(model.weights) == 4 and model.count_params() == 8 * 16 + 16 + 16 * 4 + 4
    keys = list(model.state_dict())
    assert keys == ["1.kernel", "1.bias", "2.kernel", "2.bias"]
    other = _mlp("wts2")
    other.load_state_dict(model.state_dict())
    x = torch.randn(2, 8)
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    model.trainable = False
    assert model.trainable_weights == [] and len(model.non_trainable_weights) == 4


@pytest.mark.parametrize(("mode", "floor_db"), [("int8", 30.0), ("int4", 12.0)])
def test_quantize_every_layer_with_a_scheme(mode, floor_db, tmp_path):
    """Keras 3 `Model.quantize(mode)`: every layer that supports the mode is quantized; the
    others (InputLayer, Add, traced ops) are left as they are."""
    torch.manual_seed(0)
    x = Input(shape=(64,))
    h = Dense(64, activation="relu")(x)
    model = Model(x, Add()([h, Dense(64)(h)]) * 0.5)
    data = torch.randn(32, 64)
    reference = model(data).detach()
    model.quantize(mode)
    modes = {type(m).__name__: m.quantization_mode for m in model.layers}
    assert modes["Dense"] == mode and modes["Add"] is None and modes["InputLayer"] is None
    out = model(data).detach()
    assert sqnr(reference, out) > floor_db
    path = tmp_path / "q.safetensors"
    mpq.saving.save(model, path)
    torch.testing.assert_close(mpq.saving.load(path)(data), out, rtol=0, atol=0)


def test_quantize_a_model_without_quantizable_layers():
    x = Input(shape=(3,))
    with pytest.raises(ValueError, match=r"Expected model .* to hold a layer with a quantization"):
        Model(x, x * 2.0).quantize("int8")


class _QuantizesThenFails(Dense):
    """A Dense whose quantize raises after converting its own kernel (a failure midway)."""

    def __init__(self, *args, error=RuntimeError, **kwargs):
        super().__init__(*args, **kwargs)
        self._error = error

    def quantize(self, mode, type_check=True, config=None):
        super().quantize(mode, type_check=False, config=config)
        assert self.quantization_mode == mode  # (the test's premise: its state did change)
        raise self._error("quantize failed midway")


def _graph_with(last):
    torch.manual_seed(0)
    x = Input(shape=(16,))
    h = Dense(16, activation="relu")(x)
    h = Sequential([Dense(16)])(h)  # a nested container: its Dense is quantized on its own
    return Model(x, last(h))


def _leaf_state(model):
    leaves = [m for m in model.modules() if isinstance(m, Dense)]
    return [
        (m.quantization_scheme, m.dtype_policy, dict(m._parameters), m._policy_explicit)
        for m in leaves
    ]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantize_rolls_back_when_a_layer_fails_midway(mode):
    """Nothing half-applied, as `mpq.quantize`: when a layer's quantize raises after earlier
    layers (and itself) were converted, every layer gets back its variables (the very same
    Parameters), its scheme (None) and its policy, and the model computes what it computed."""
    model = _graph_with(_QuantizesThenFails(8))
    data = torch.randn(4, 16)
    reference = model(data).detach()
    before = _leaf_state(model)
    with pytest.raises(RuntimeError, match="quantize failed midway"):
        model.quantize(mode)
    after = _leaf_state(model)
    assert len(after) == 3
    for (scheme, policy, params, explicit), (scheme2, policy2, params2, explicit2) in zip(
        before, after, strict=True
    ):
        assert scheme is None and scheme2 is None
        assert policy2 == policy and policy2.name == "float32" and explicit2 == explicit
        assert list(params2) == list(params) and all(params2[k] is params[k] for k in params)
    assert all(m.quantization_mode is None for m in model.modules() if isinstance(m, Layer))
    torch.testing.assert_close(model(data).detach(), reference, rtol=0, atol=0)
    plain = _graph_with(Dense(8))  # the same model without the failing layer still quantizes
    plain.quantize(mode)
    assert all(m.quantization_mode == mode for m in plain.modules() if isinstance(m, Dense))


def test_quantize_skips_a_layer_that_refuses_midway_and_restores_it():
    """A layer whose quantize raises NotImplementedError is skipped as a layer without a
    scheme; if it changed before refusing, it is restored first. The other layers quantize."""
    model = _graph_with(_QuantizesThenFails(8, error=NotImplementedError))
    data = torch.randn(4, 16)
    model.quantize("int8")
    leaves = [m for m in model.modules() if isinstance(m, Dense)]
    assert [m.quantization_mode for m in leaves] == ["int8", "int8", None]
    last = leaves[-1]
    assert set(last._parameters) == {"kernel", "bias"} and last.dtype_policy.name == "float32"
    assert model(data).shape == (4, 8)


@register_layer("tests")
class _AddOptional(Layer):
    """`x + bias`, or `x` when the optional `bias` is None (a layer that accepts None)."""

    def call(self, x, bias=None):
        return x if bias is None else x + bias


def _optional_model():
    torch.manual_seed(0)
    x = Input(shape=(4,), name="x")
    b = Input(shape=(3,), optional=True, name="b")
    h = Dense(3)(x)
    return Model([x, b], Dense(2)(_AddOptional()(h, b))), x, b


def test_optional_input_may_be_none():
    """Keras 3 `Input(optional=True)`: "whether the input is optional or not. An optional
    input can accept `None` values." The layers reading it get None at call time."""
    model, _, b = _optional_model()
    assert b.node.operation.optional is True
    first, last = (m for m in model.layers if isinstance(m, Dense))
    data, bias = torch.randn(5, 4), torch.randn(5, 3)
    with torch.no_grad():
        torch.testing.assert_close(model([data, bias]), last(first(data) + bias), rtol=0, atol=0)
        torch.testing.assert_close(model([data, None]), last(first(data)), rtol=0, atol=0)
        torch.testing.assert_close(model({"x": data, "b": None}), last(first(data)), rtol=0, atol=0)
    config = model.get_config()
    inputs = [layer["config"] for layer in config["layers"] if layer["class_name"] == "InputLayer"]
    assert [c.get("optional", False) for c in inputs] == [False, True]
    clone = Model.from_config(config)
    clone.set_weights(model.get_weights())
    with torch.no_grad():
        torch.testing.assert_close(clone([data, None]), model([data, None]), rtol=0, atol=0)


def test_none_for_a_required_input_or_with_a_mask_is_refused():
    model, _, _ = _optional_model()
    data = torch.randn(5, 4)
    with pytest.raises(
        ValueError,
        match=r"Expected a tensor for input 'x' of model '.*' \(only an Input\(optional=True\) "
        r"may be None\)\. Received: None",
    ):
        model([None, torch.randn(5, 3)])
    with pytest.raises(
        ValueError,
        match=r"Expected no mask for the optional input 'b' passed as None\. Received: mask=",
    ):
        model([data, None], mask=[None, torch.ones(5, dtype=torch.bool)])


def test_model_policy_and_policy_map_reach_its_layers():
    """A DTypePolicyMap on the model resolves each layer's policy by its path in the model."""
    x = Input(shape=(4,))
    first, second = Dense(4, name="pm_first"), Dense(2, name="pm_second")
    y = second(first(x))
    policy_map = DTypePolicyMap(default_policy="float32")
    policy_map["pm_model/pm_second"] = "mixed_bfloat16"
    model = Model(x, y, name="pm_model", dtype=policy_map)
    assert first.dtype_policy.name == "float32"
    assert second.dtype_policy.name == "mixed_bfloat16"
    assert model(torch.randn(3, 4)).dtype == torch.bfloat16
    x2 = Input(shape=(4,))
    mixed = Model(x2, Dense(2)(x2), dtype="mixed_bfloat16")
    assert mixed.layers[1].dtype_policy.name == "mixed_bfloat16"
    assert mixed(torch.randn(1, 4)).dtype == torch.bfloat16


def test_summary_lists_layers_shapes_params_and_connections():
    lines = []
    _mlp("summ").summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert 'Model: "summ"' in text
    assert "summ_hidden (Dense)" in text and "(None, 16)" in text and "144" in text
    assert "summ_in" in next(line for line in lines if line.startswith("summ_hidden"))
    assert "Total params: 212" in text


def test_model_in_a_sequential_and_a_sequential_in_a_model():
    inner = Sequential([Dense(4), Dense(3)])
    x = Input(shape=(5,))
    model = Model(x, inner(x))
    data = torch.randn(2, 5)
    torch.testing.assert_close(model(data), inner(data), rtol=0, atol=0)
    outer = Sequential([model, Dense(1)])
    assert outer(data).shape == (2, 1)


# ---------------------------------------------------------------------- add_loss
def test_add_loss_with_a_symbolic_tensor_is_evaluated_at_each_call():
    """tf.keras 2 `Layer.add_loss` docstring:

    inputs = tf.keras.Input(shape=(10,))
    x = tf.keras.layers.Dense(10)(inputs)
    outputs = tf.keras.layers.Dense(1)(x)
    model = tf.keras.Model(inputs, outputs)
    # Activity regularization.
    model.add_loss(tf.abs(tf.reduce_mean(x)))
    """
    inputs = Input(shape=(10,))
    dense = Dense(10)
    x = dense(inputs)
    outputs = Dense(1)(x)
    model = Model(inputs, outputs)
    model.add_loss(torch.abs(torch.mean(x)))
    data = torch.randn(4, 10)
    model(data)
    (loss,) = model.losses
    torch.testing.assert_close(loss, torch.abs(torch.mean(dense(data))), rtol=0, atol=0)
    model(2 * data)
    (loss,) = model.losses  # replaced, not accumulated
    torch.testing.assert_close(loss, torch.abs(torch.mean(dense(2 * data))), rtol=0, atol=0)


def test_add_loss_with_a_zero_argument_callable():
    """tf.keras 2 `Layer.add_loss` docstring:

    d = tf.keras.layers.Dense(10)
    ...
    # Weight regularization.
    model.add_loss(lambda: tf.reduce_mean(d.kernel))
    """
    inputs = Input(shape=(10,))
    d = Dense(10)
    x = d(inputs)
    model = Model(inputs, Dense(1)(x))
    model.add_loss(lambda: torch.mean(d.kernel))
    (loss,) = model.losses
    torch.testing.assert_close(loss, torch.mean(d.kernel), rtol=0, atol=0)
    with torch.no_grad():
        d.kernel.mul_(2.0)
    torch.testing.assert_close(model.losses[0], torch.mean(d.kernel), rtol=0, atol=0)
    model.add_loss(lambda: 3.0)  # numbers become float32 tensors, as in Layer.add_loss
    assert torch.equal(model.losses[1], torch.tensor(3.0))


def test_add_loss_from_the_training_guide_endpoint_style():
    """tf.keras 2 guide "Training & evaluation with the built-in methods":

    x1 = layers.Dense(64, activation="relu", name="dense_1")(inputs)
    ...
    model.add_loss(tf.reduce_sum(x1) * 0.1)
    """
    inputs = Input(shape=(784,), name="digits")
    dense_1 = Dense(64, activation="relu", name="dense_1")
    x1 = dense_1(inputs)
    x2 = Dense(64, activation="relu", name="dense_2")(x1)
    outputs = Dense(10, name="predictions")(x2)
    model = Model(inputs=inputs, outputs=outputs)
    model.add_loss(torch.sum(x1) * 0.1)
    data = torch.randn(2, 784)
    model(data)
    torch.testing.assert_close(model.losses[0], torch.sum(dense_1(data)) * 0.1, rtol=0, atol=0)


def test_add_loss_errors():
    inputs = Input(shape=(3,))
    model = Model(inputs, Dense(1)(inputs))
    with pytest.raises(ValueError, match=r"Graph disconnected"):
        model.add_loss(torch.mean(Input(shape=(3,))))
    model.add_loss(torch.mean(inputs))
    with pytest.raises(ValueError, match=r"has losses added with add_loss.*Received"):
        model.get_config()


# ---------------------------------------------------------------------- the guide's examples
def test_guide_mnist_model(tmp_path):
    """Keras functional API guide, "Introduction":

    inputs = keras.Input(shape=(784,))
    dense = layers.Dense(64, activation="relu")
    x = dense(inputs)
    x = layers.Dense(64, activation="relu")(x)
    outputs = layers.Dense(10)(x)
    model = keras.Model(inputs=inputs, outputs=outputs, name="mnist_model")
    """
    inputs = Input(shape=(784,))
    assert inputs.shape == (None, 784) and inputs.dtype == torch.float32
    dense = Dense(64, activation="relu")
    x = dense(inputs)
    x = Dense(64, activation="relu")(x)
    outputs = Dense(10)(x)
    model = Model(inputs=inputs, outputs=outputs, name="mnist_model")
    lines = []
    model.summary(print_fn=lines.append)
    assert "Total params: 55050" in lines[-1]  # the guide's count
    assert model(torch.randn(2, 784)).shape == (2, 10)
    # "Training, evaluation, and inference ... work exactly in the same way for models built
    # using the functional API as for Sequential models" (compile/fit as a torch loop here).
    torch.manual_seed(0)
    x_train = torch.randn(128, 784)
    y_train = (x_train[:, :10] * 3).argmax(dim=1)  # a learnable 10-class rule
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x_train), y_train)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # "Save and serialize": the guide saves the model, deletes it and recreates it.
    mpq.saving.save(model, tmp_path / "my_model.safetensors")
    expected = model(x_train[:4])
    del model
    model = mpq.saving.load(tmp_path / "my_model.safetensors")
    torch.testing.assert_close(model(x_train[:4]), expected, rtol=0, atol=0)
    config = model.get_config()
    assert Model.from_config(config)(torch.randn(1, 784)).shape == (1, 10)


def test_guide_all_models_are_callable_just_like_layers():
    """Keras functional API guide, "All models are callable, just like layers": an encoder
    model called inside an autoencoder (mpq lacks pooling layers: Dense/Reshape stand in)."""
    encoder_input = Input(shape=(28, 28, 1), name="original_img")
    x = Conv2D(16, 3, activation="relu")(encoder_input)
    x = Conv2D(4, 3, strides=2, activation="relu")(x)
    encoder_output = Dense(16)(Flatten()(x))
    encoder = Model(encoder_input, encoder_output, name="encoder")
    assert encoder_output.shape == (None, 16)

    decoder_input = Input(shape=(16,), name="encoded_img")
    decoder_output = Reshape((28, 28, 1))(Dense(784)(decoder_input))
    decoder = Model(decoder_input, decoder_output, name="decoder")

    autoencoder_input = Input(shape=(28, 28, 1), name="img")
    encoded_img = encoder(autoencoder_input)
    decoded_img = decoder(encoded_img)
    autoencoder = Model(autoencoder_input, decoded_img, name="autoencoder")
    data = torch.randn(2, 28, 28, 1)
    torch.testing.assert_close(autoencoder(data), decoder(encoder(data)), rtol=0, atol=0)
    assert encoder.inbound_nodes[0].outputs is encoded_img  # the model is a node too


def test_guide_ensembling():
    """Keras functional API guide: "ensembling ... models into a single model that averages
    their predictions" (``layers.average`` written as a traced op)."""

    def get_model():
        inputs = Input(shape=(128,))
        outputs = Dense(1)(inputs)
        return Model(inputs, outputs)

    model1, model2, model3 = get_model(), get_model(), get_model()
    inputs = Input(shape=(128,))
    y1, y2, y3 = model1(inputs), model2(inputs), model3(inputs)
    outputs = (y1 + y2 + y3) / 3
    ensemble_model = Model(inputs=inputs, outputs=outputs)
    data = torch.randn(4, 128)
    expected = (model1(data) + model2(data) + model3(data)) / 3
    torch.testing.assert_close(ensemble_model(data), expected, rtol=0, atol=0)


def test_guide_multi_input_multi_output_ticket_model():
    """Keras functional API guide, "Models with multiple inputs and outputs" (the ticket
    ranking model; the LSTMs are replaced by a masked mean, mpq has no recurrent layers)."""
    num_tags, num_words, num_departments = 12, 100, 4
    title_input = Input(shape=(None,), name="title", dtype="int64")
    body_input = Input(shape=(None,), name="body", dtype="int64")
    tags_input = Input(shape=(num_tags,), name="tags")
    title_features = MaskedMean()(Embedding(num_words, 64, mask_zero=True)(title_input))
    body_features = MaskedMean()(Embedding(num_words, 64, mask_zero=True)(body_input))
    x = Concatenate()([title_features, body_features, tags_input])
    priority_pred = Dense(1, name="priority")(x)
    department_pred = Dense(num_departments, name="department")(x)
    model = Model(
        inputs=[title_input, body_input, tags_input],
        outputs={"priority": priority_pred, "department": department_pred},
    )
    out = model(
        {
            "title": torch.randint(1, num_words, (5, 10)),
            "body": torch.randint(1, num_words, (5, 100)),
            "tags": torch.randint(0, 2, (5, num_tags)).float(),
        }
    )
    assert out["priority"].shape == (5, 1) and out["department"].shape == (5, num_departments)
    clone = _round_trip(model, custom_objects={"MaskedMean": MaskedMean})
    assert [t.name for t in clone.inputs] == ["title", "body", "tags"]


def test_guide_toy_resnet():
    """Keras functional API guide, "A toy ResNet model": residual connections with `add`
    (pooling written as traced ops)."""
    inputs = Input(shape=(32, 32, 3), name="img")
    x = Conv2D(32, 3, activation="relu")(inputs)
    block_1_output = Conv2D(64, 3, activation="relu")(x)
    x = Conv2D(64, 3, activation="relu", padding="same")(block_1_output)
    x = Conv2D(64, 3, activation="relu", padding="same")(x)
    block_2_output = Add()([x, block_1_output])
    x = Conv2D(64, 3, activation="relu")(block_2_output)
    x = x.mean(dim=(1, 2))  # GlobalAveragePooling2D
    x = Dense(256, activation="relu")(x)
    x = Dropout(0.5)(x)
    outputs = Dense(10)(x)
    model = Model(inputs, outputs, name="toy_resnet")
    assert block_2_output.shape == (None, 28, 28, 64)
    assert model(torch.randn(2, 32, 32, 3), training=False).shape == (2, 10)
    assert _round_trip(model).count_params() == model.count_params()


def test_guide_shared_layers():
    """Keras functional API guide, "Shared layers":

    shared_embedding = layers.Embedding(1000, 128)
    text_input_a = keras.Input(shape=(None,), dtype="int32")
    text_input_b = keras.Input(shape=(None,), dtype="int32")
    encoded_input_a = shared_embedding(text_input_a)
    encoded_input_b = shared_embedding(text_input_b)
    """
    shared_embedding = Embedding(1000, 128)
    text_input_a = Input(shape=(None,), dtype="int32")
    text_input_b = Input(shape=(None,), dtype="int32")
    encoded_input_a = shared_embedding(text_input_a)
    encoded_input_b = shared_embedding(text_input_b)
    assert encoded_input_a.shape == encoded_input_b.shape == (None, None, 128)
    assert len(shared_embedding.inbound_nodes) == 2


def test_guide_extract_and_reuse_nodes():
    """Keras functional API guide, "Extract and reuse nodes in the graph of layers":

    features_list = [layer.output for layer in vgg19.layers]
    feat_extraction_model = keras.Model(inputs=vgg19.input, outputs=features_list)
    """
    base = _mlp("vgg")
    features_list = [layer.output for layer in base.layers]
    feat_extraction_model = Model(inputs=base.input, outputs=features_list)
    img = torch.randn(3, 8)
    extracted = feat_extraction_model(img)
    assert [tuple(t.shape) for t in extracted] == [(3, 8), (3, 16), (3, 4)]
    torch.testing.assert_close(extracted[-1], base(img), rtol=0, atol=0)


def test_guide_custom_layer_with_get_config():
    """Keras functional API guide, "Using custom layers": CustomDense with get_config, and
    ``keras.Model.from_config(config, custom_objects={"CustomDense": CustomDense})``."""

    @register_layer("guide_test")
    class CustomDense(Layer):
        def __init__(self, units=32, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], self.units))
            self.b = self.add_weight(shape=(self.units,), initializer="random_normal")

        def call(self, inputs):
            return torch.matmul(inputs, self.w) + self.b

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    inputs = Input((4,))
    outputs = CustomDense(10)(inputs)
    model = Model(inputs, outputs)
    config = model.get_config()
    new_model = Model.from_config(config, custom_objects={"CustomDense": CustomDense})
    assert new_model(torch.ones(1, 4)).shape == (1, 10)
    assert isinstance(new_model.layers[0], InputLayer)


# ---------------------------------------------------------------------- more of the Layer API
def test_tf_keras_2_config_format_loads():
    """tf.keras 2 functional configs: InputLayer with `batch_input_shape`, nodes as
    ``[[layer name, node index, tensor index, kwargs]]`` (several entries: a list input)."""
    dense = {"class_name": "Dense", "config": {"name": "d", "units": 2}}
    config = {
        "name": "k2",
        "layers": [
            {
                "class_name": "InputLayer",
                "config": {"batch_input_shape": [None, 3], "dtype": "float32", "name": "input_1"},
                "name": "input_1",
                "inbound_nodes": [],
            },
            {**dense, "name": "d", "inbound_nodes": [[["input_1", 0, 0, {}]]]},
            {
                "class_name": "Concatenate",
                "config": {"name": "cat", "axis": -1},
                "name": "cat",
                "inbound_nodes": [[["d", 0, 0, {}], ["input_1", 0, 0, {}]]],
            },
        ],
        "input_layers": [["input_1", 0, 0]],
        "output_layers": [["cat", 0, 0]],
    }
    model = Model.from_config(config)
    data = torch.randn(2, 3)
    dense_layer = model.get_layer("d")
    torch.testing.assert_close(
        model(data), torch.cat([dense_layer(data), data], -1), rtol=0, atol=0
    )
    config["layers"][1]["inbound_nodes"] = [[["input_1", 0]]]
    with pytest.raises(ValueError, match=r"Expected a tf.keras 2 node entry"):
        Model.from_config(config)


def test_deepcopy_and_torch_pickling_copy_the_graph():
    import copy
    import io

    model = _mlp("copied")
    clone = copy.deepcopy(model)
    assert clone.layers[1] is not model.layers[1]
    assert clone.layers[1].inbound_nodes[0].operation is clone.layers[1]
    data = torch.randn(2, 8)
    torch.testing.assert_close(clone(data), model(data), rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(restored(data), model(data), rtol=0, atol=0)


def test_stateless_call_of_a_model():
    """Keras 3 `Layer.stateless_call` works on a functional model like on any layer."""
    model = _mlp("stateless")
    data = torch.randn(3, 8)
    doubled = [2 * w.detach() for w in model.trainable_variables]
    out, _ = model.stateless_call(doubled, [], data)
    hidden, last = model.layers[1], model.layers[2]
    expected = torch.relu(data @ doubled[0] + doubled[1]) @ doubled[2] + doubled[3]
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(hidden.kernel, doubled[0] / 2) and last.built  # the model is unchanged


def test_symbolic_size_and_dim():
    x = Input(shape=(None, 5))
    assert x.size() == (None, None, 5) and x.size(-1) == 5 and x.size(0) is None
    assert x.dim() == 3


# ---------------------------------------------------------------------- property
@given(
    batch=st.integers(1, 7),
    steps=st.integers(1, 5),
    features=st.integers(1, 6),
    units=st.integers(1, 5),
)
def test_symbolic_shapes_match_eager_shapes(batch, steps, features, units):
    """Shapes inferred on symbolic tensors are those an eager call gives, for any batch size
    (the stand-in sizes of the meta runs never leak into a known axis)."""
    x = Input(shape=(steps, features))
    flat = Flatten()(x)
    dense = Dense(units)(flat)
    both = Concatenate()([dense, flat[:, :1] * 2.0])
    rows = Reshape((-1, 1))(both).transpose(1, 2)
    outputs = [flat, dense, both, rows]
    model = Model(x, outputs)
    eager = model(torch.randn(batch, steps, features))
    for symbolic, value in zip(outputs, eager, strict=True):
        assert symbolic.shape[0] is None
        assert symbolic.shape[1:] == tuple(value.shape[1:])
        assert value.shape[0] == batch and symbolic.dtype == value.dtype


def test_a_graph_deeper_than_the_recursion_limit():
    import sys

    depth = sys.getrecursionlimit() + 50
    x = Input(shape=(2,))
    y = x
    for _ in range(depth):
        y = y + 1.0
    model = Model(x, y)
    assert len(model.layers) == depth + 1
    torch.testing.assert_close(model(torch.zeros(1, 2)), torch.full((1, 2), float(depth)))


def test_torch_op_arguments_are_validated():
    with pytest.raises(ValueError, match=r"inputs to be numbered 0, 1, .*Received: input numbers"):
        TorchOp("torch.cat", [[[{"__input__": 1}]], {}])
    op = TorchOp("torch.cat", [[[{"__input__": 0}, {"__input__": 1}]], {"dim": 0}])
    with pytest.raises(ValueError, match=r"Expected 2 input tensor\(s\) for op .*Received: 1"):
        op(torch.ones(1))
    torch.testing.assert_close(op(torch.ones(1), torch.zeros(1)), torch.tensor([1.0, 0.0]))


def test_guide_mix_and_match_api_styles():
    """Keras functional API guide, "Mix-and-match API styles": a functional model used inside
    a subclassed layer (CustomRNN) that is itself called in a functional model with a fixed
    `batch_shape` (`ops.zeros` becomes `inputs.new_zeros`, the torch idiom that follows the
    inputs' device; GlobalAveragePooling1D a traced mean)."""
    units, timesteps, input_dim, batch_size = 32, 10, 5, 4

    inputs = Input((None, units))
    x = inputs.mean(dim=1)
    outputs = Dense(1)(x)
    model = Model(inputs, outputs)

    class CustomRNN(Layer):
        def __init__(self):
            super().__init__()
            self.units = units
            self.projection_1 = Dense(units=units, activation="tanh")
            self.projection_2 = Dense(units=units, activation="tanh")
            self.classifier = model

        def call(self, inputs):
            outputs = []
            state = inputs.new_zeros((inputs.shape[0], self.units))
            for t in range(inputs.shape[1]):
                x = inputs[:, t, :]
                h = self.projection_1(x)
                y = h + self.projection_2(state)
                state = y
                outputs.append(y)
            features = torch.stack(outputs, dim=1)
            return self.classifier(features)

    inputs = Input(batch_shape=(batch_size, timesteps, input_dim))
    x = mpq.layers.Conv1D(32, 3)(inputs)
    rnn = CustomRNN()
    outputs = rnn(x)
    assert x.shape == (batch_size, timesteps - 2, 32) and outputs.shape == (batch_size, 1)
    model = Model(inputs, outputs)
    data = torch.randn(batch_size, timesteps, input_dim)
    assert model(data).shape == (batch_size, 1)
    assert rnn.classifier.layers[-1].built
    # The sublayers built during the symbolic call have real weights (read as meta there).
    assert rnn.projection_1.kernel.device.type == "cpu"
    assert rnn.projection_1.kernel.shape == (32, units)


# ---------------------------------------------------------------------- more errors
def test_more_input_layer_and_op_errors():
    with pytest.raises(ValueError, match=r"Expected `batch_shape` to be a tuple.*batch_shape=3"):
        InputLayer(batch_shape=3)
    with pytest.raises(
        TypeError, match=r"Expected a torch op name or callable. Received: function=3"
    ):
        TorchOp(3, [[{"__input__": 0}], {}])
    with pytest.raises(ValueError, match=r"Expected an encoded op argument. Received"):
        TorchOp("torch.cat", [[{"__what__": 1}], {}])


def test_call_errors_for_dict_inputs_masks_and_structure():
    a, b = Input(shape=(2,)), Input(shape=(2,))
    by_key = Model({"a": a, "b": b}, a + b)
    with pytest.raises(ValueError, match=r"Expected inputs with keys \['a', 'b'\]. Received"):
        by_key({"a": torch.ones(1, 2)})
    with pytest.raises(ValueError, match=r"Expected one mask \(or None\) per input \(2\)"):
        by_key({"a": torch.ones(1, 2), "b": torch.ones(1, 2)}, mask=[None])

    class TrainingShape(Layer):
        def call(self, inputs, training=None):
            return [inputs, inputs] if training else inputs

    x = Input(shape=(2,))
    model = Model(x, TrainingShape()(x))  # traced in training mode (a fresh module)
    with pytest.raises(ValueError, match=r"to return the structure it returned on symbolic"):
        model(torch.ones(1, 2), training=False)


def test_a_tensor_argument_to_a_layer_call_cannot_be_serialized():
    class Scale(Layer):
        def call(self, inputs, scale):
            return inputs * scale

    x = Input(shape=(2,))
    model = Model(x, Scale()(x, scale=torch.tensor(2.0)))
    torch.testing.assert_close(model(torch.ones(1, 2)), torch.full((1, 2), 2.0))
    with pytest.raises(ValueError, match=r"symbolic tensors or JSON constants.*Received: tensor"):
        model.get_config()


_TENSOR = {"class_name": "__keras_tensor__", "config": {"keras_history": ["bad_in", 0, 0]}}


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda c: c["layers"].append(3), r"Expected a layer entry dict. Received: 3"),
        (
            lambda c: c["layers"].append({**c["layers"][1], "inbound_nodes": []}),
            r"Expected unique layer names in the config. Received: name='bad_out'",
        ),
        (
            lambda c: c["layers"][1].update(inbound_nodes=5),
            r"Expected 'inbound_nodes' to be a list. Received: 5",
        ),
        (
            lambda c: c["layers"][1].update(inbound_nodes=["node"]),
            r"Expected a node config dict .*Received: 'node'",
        ),
        (
            lambda c: c["layers"][1].update(inbound_nodes=[{"args": _TENSOR, "kwargs": {}}]),
            r"Expected node 'args' as a list and 'kwargs' as a dict",
        ),
        (
            lambda c: c["layers"][1].update(
                inbound_nodes=[{"args": [{"class_name": "__keras_tensor__", "config": 1}]}]
            ),
            r"Expected a tensor config. Received",
        ),
        (
            lambda c: c["layers"][1].update(
                inbound_nodes=[
                    {"args": [{"class_name": "__keras_tensor__", "config": {"keras_history": 1}}]}
                ]
            ),
            r"Expected a tensor reference \[layer name, node index, tensor index\]",
        ),
        (lambda c: c.update(output_layers=7), r"Expected tensor references. Received: 7"),
        (
            lambda c: c["layers"][1].update(inbound_nodes=[[["bad_in", 0, 0, 1]]]),
            r"Expected the call kwargs of a node entry as a dict",
        ),
        (
            lambda c: c["layers"][1].update(inbound_nodes=[[]]),
            r"Expected a tf.keras 2 node with at least one input",
        ),
    ],
)
def test_more_bad_configs(mutate, match):
    x = Input(shape=(2,), name="bad_in")
    config = json.loads(json.dumps(Model(x, Dense(1, name="bad_out")(x)).get_config()))
    mutate(config)
    with pytest.raises((ValueError, TypeError), match=match):
        Model.from_config(config)


def test_model_level_quantize_walks_a_functional_model():
    """`mpq.quantize(model, mode)` reports the graph's layers by path and skips the ones
    without a scheme (InputLayer, Add, traced ops)."""
    x = Input(shape=(16,))
    h = Dense(16)(x)
    model = Model(x, Add()([h, Dense(16)(h)]) * 0.5, name="walked")
    data = torch.randn(8, 16)
    reference = model(data).detach()
    mpq.quantize(model, "int8")
    assert [m.quantization_mode for m in model.layers] == [None, "int8", "int8", None, None]
    assert sqnr(reference, model(data).detach()) > 30.0


def test_a_saved_graph_cannot_make_the_first_call_allocate_without_bound():
    """Loading validates sizes before allocating: a traced op whose output would exceed
    MAX_SIZE per axis is refused when the graph is rebuilt (on the meta device)."""
    from mpq._errors import MAX_SIZE

    x = Input(shape=(2,), name="pad_in")
    with pytest.raises(ValueError, match=r"Expected output sizes of at most 2147483647"):
        torch.nn.functional.pad(x, (0, MAX_SIZE))
    config = json.loads(json.dumps(Model(x, torch.nn.functional.pad(x, (0, 3))).get_config()))
    op = next(e for e in config["layers"] if e["class_name"] == "TorchOp")
    assert op["config"]["arguments"][0] == [{"__input__": 0}, {"__tuple__": [0, 3]}]
    op["config"]["arguments"][0][1] = {"__tuple__": [0, MAX_SIZE]}
    with pytest.raises(ValueError, match=r"Expected output sizes of at most"):
        Model.from_config(config)


def test_a_model_on_intermediate_tensors():
    """Keras 3 Functional: inputs may be intermediate tensors of a larger graph (a sub-model);
    the layer that made such an input is not part of the sub-model."""
    x = Input(shape=(4,))
    first, second = Dense(3, name="inter_first"), Dense(2, name="inter_second")
    h = first(x)
    tail = Model(h, second(h))
    assert [m.name for m in tail.layers] == ["inter_second"] and len(tail.weights) == 2
    data = torch.randn(2, 3)
    torch.testing.assert_close(tail(data), second(data), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"to come from Input\(...\) to serialize.*inter_first"):
        tail.get_config()


def test_quantize_reaches_layers_of_nested_models_and_sequentials():
    x = Input(shape=(8,))
    inner = _mlp("qinner")
    stack = Sequential([Dense(8), Dense(8)])
    model = Model(x, stack(inner(Dense(8)(x))[:, :1].expand(-1, 8)))
    model.quantize("int8")
    dense_modes = [m.quantization_mode for m in model.modules() if type(m) is Dense]
    assert dense_modes == ["int8"] * 5
    assert model(torch.randn(2, 8)).shape == (2, 8)
