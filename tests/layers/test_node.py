"""mpq.layers.node: symbolic tensors, layer calls on them, nodes and the seeds' node accessors.

Seed quotes are from the Layer documentation of TF1 Keras, tf.keras 2.x and Keras 3.
"""

from __future__ import annotations

import pytest
import torch

from mpq import layers as mpq_layers
from mpq.layers import (
    Add,
    Concatenate,
    Dense,
    Embedding,
    Input,
    InputLayer,
    Layer,
    Model,
    Node,
    SymbolicTensor,
    TorchOp,
)
from mpq.layers import node as node_module


class MaskedMean(Layer):
    """Mean over the time axis of the valid steps (a layer that consumes a mask)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return inputs.mean(dim=1)
        m = mask.unsqueeze(-1).to(inputs.dtype)
        return (inputs * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)

    def compute_mask(self, inputs, previous_mask=None):
        return None


# ---------------------------------------------------------------------- Input
def test_input_has_a_none_batch_axis_and_a_dtype():
    """Keras 3 `keras.Input`: "shape: A shape tuple (tuple of integers or None objects), not
    including the batch size. For instance, shape=(32,) indicates that the expected input will
    be batches of 32-dimensional vectors." `batch_size`: "Optional static batch size"."""
    x = Input(shape=(32,))
    assert isinstance(x, SymbolicTensor)
    assert x.shape == (None, 32) and x.ndim == 2 and x.dtype == torch.float32
    assert Input(shape=(32,), batch_size=10).shape == (10, 32)
    assert Input(batch_shape=(4, None, 3), dtype="int32").shape == (4, None, 3)
    assert Input(shape=(3,), dtype="int32").dtype == torch.int32
    named = Input(shape=(3,), name="pixels")
    assert named.name == "pixels"
    layer, node_index, tensor_index = named._keras_history
    assert isinstance(layer, InputLayer) and layer.name == "pixels"
    assert (node_index, tensor_index) == (0, 0)


def test_input_layer_is_a_layer_with_one_node_and_its_output():
    """tf.keras 2 `InputLayer`: "Layer to be used as an entry point into a Network (a graph of
    layers)." It can take `input_shape` (tf.keras 2) or `shape` (Keras 3)."""
    layer = InputLayer(input_shape=(5,), name="entry")
    assert len(layer.inbound_nodes) == 1 and layer.inbound_nodes[0].is_input
    assert layer.output.shape == (None, 5)
    assert layer.get_config() == {
        "batch_shape": [None, 5],
        "dtype": "float32",
        "sparse": False,
        "name": "entry",
    }
    clone = InputLayer.from_config(layer.get_config())
    assert clone.output.shape == (None, 5) and clone.name == "entry"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, r"Expected an input `shape`.*Received: shape=None"),
        ({"shape": (3,), "batch_shape": (None, 3)}, ValueError, r"not both. Received: shape"),
        ({"shape": 3}, ValueError, r"Expected `shape` to be a tuple.*Received: shape=3"),
        ({"shape": (-1,)}, ValueError, r"Expected a shape of None or sizes"),
        ({"shape": (3,), "sparse": True}, ValueError, r"Expected dense inputs.*sparse=True"),
        (
            {"shape": (3,), "optional": "yes"},
            ValueError,
            r"Expected `optional` to be True or False\. Received: optional='yes' \(of type str\)",
        ),
        ({"shape": (3,), "tensor": torch.ones(2, 3)}, ValueError, r"Expected input_tensor=None"),
    ],
)
def test_input_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Input(**kwargs)


def test_input_layer_rejects_unknown_arguments():
    with pytest.raises(ValueError, match=r"Unrecognized keyword arguments.*'foo'"):
        InputLayer(shape=(3,), foo=1)
    with pytest.raises(ValueError, match=r"Expected dense inputs.*ragged=True"):
        InputLayer(shape=(3,), ragged=True)


def test_symbolic_tensor_has_no_values():
    x = Input(shape=(3,))
    for action, what in (
        (lambda: bool(x), "a truth test"),
        (lambda: len(x), r"len\(\)"),
        (lambda: list(x), "iteration"),
        (lambda: x.item(), r"Tensor.item\(\)"),
        (lambda: x.numpy(), r"Tensor.numpy\(\)"),
    ):
        with pytest.raises(TypeError, match=rf"Expected a tensor with values for {what}"):
            action()


def test_symbolic_tensor_refuses_in_place_ops():
    x = Input(shape=(3,))
    with pytest.raises(TypeError, match=r"in-place ops cannot be recorded.*'add_'"):
        x.add_(1)
    with pytest.raises(TypeError, match=r"in-place writes cannot be recorded"):
        x[:, 0] = 1.0
    with pytest.raises(AttributeError, match=r"Received: attribute 'not_a_method'"):
        x.not_a_method


# ---------------------------------------------------------------------- layer calls
def test_layer_call_on_a_symbolic_tensor_builds_it_and_infers_the_output_on_meta():
    """Keras 3 `Layer.__call__` on a KerasTensor: the layer is built from the input's shape
    (batch None) and `compute_output_spec` gives the output's shape and dtype without
    computing."""
    dense = Dense(4)
    assert not dense.built
    y = dense(Input(shape=(3,)))
    assert dense.built and dense.kernel.shape == (3, 4)
    assert dense.kernel.device.type == "cpu"  # real weights, only the graph run is on meta
    assert dense.get_build_config() == {"input_shape": (None, 3)}
    assert y.shape == (None, 4) and y.dtype == torch.float32
    mixed = Dense(4, dtype="mixed_bfloat16")(Input(shape=(3,)))
    assert mixed.dtype == torch.bfloat16  # the compute dtype, as an eager call returns


def test_unknown_axes_other_than_batch_stay_unknown():
    x = Input(shape=(None, 6))
    assert Dense(2)(x).shape == (None, None, 2)
    assert x.reshape(-1, 3).shape == (None, 3)  # depends on the unknown sizes
    assert x.reshape(-1, 6).shape == (None, 6)


def test_symbolic_call_method_records_a_node():
    """Keras 3 `Operation.symbolic_call`: compute the output spec and record the node."""
    dense = Dense(2)
    x = Input(shape=(3,))
    y = dense.symbolic_call(x)
    assert y.shape == (None, 2)
    assert dense.inbound_nodes[0].outputs is y
    assert y._keras_history == (dense, 0, 0)


def test_a_layer_that_cannot_run_on_meta_gets_a_clear_error():
    class DataDependent(Layer):
        def call(self, inputs):
            return inputs[inputs > 0]  # a size that depends on the values

    with pytest.raises(RuntimeError, match=r"Expected layer .* to run on the meta device"):
        DataDependent()(Input(shape=(3,)))


def test_the_layer_own_errors_pass_through_unchanged():
    x = Input(shape=(3,))
    with pytest.raises(ValueError, match=r"Expected inputs of one rank for Concatenate"):
        Concatenate(axis=-1)([x, Input(shape=(3, 2))])


def test_masks_are_propagated_symbolically():
    """tf.keras 2 masking guide, "Mask propagation in the Functional API and Sequential API":
    "a mask generated by an Embedding or Masking layer will be propagated through the network
    for any layer that is capable of using them"."""
    tokens = Input(shape=(None,), dtype="int64")
    embedding = Embedding(10, 4, mask_zero=True)
    x = embedding(tokens)
    assert x._keras_mask is not None and x._keras_mask.shape == (None, None)
    assert x._keras_mask.dtype == torch.bool
    assert embedding.output_mask is x._keras_mask
    assert embedding.input_mask is None
    pooled = MaskedMean()
    y = pooled(x)
    assert pooled.input_mask is x._keras_mask
    assert pooled.output_mask is None and y.shape == (None, 4)
    merged = Add()([x, x])
    assert merged._keras_mask is not None  # Add: OR of the input masks


# ---------------------------------------------------------------------- accessors
def test_accessors_of_a_layer_never_connected_raise_attribute_error():
    """tf.keras 2 `Layer.input`: "Raises: AttributeError: If no inbound nodes are found." and
    `input_shape`: "Raises: AttributeError: if the layer has no defined input_shape."."""
    dense = Dense(2)
    dense(torch.ones(1, 3))  # an eager call makes no node
    for attribute in ("input", "output", "input_mask", "output_mask"):
        with pytest.raises(AttributeError, match=r"never been called in a functional graph"):
            getattr(dense, attribute)
    for attribute in ("input_shape", "output_shape"):
        with pytest.raises(AttributeError, match=r"has never been called and thus has no"):
            getattr(dense, attribute)
    with pytest.raises(AttributeError, match=r"never been called.*0 inbound nodes"):
        dense.get_input_at(0)
    assert dense.inbound_nodes == [] and dense.outbound_nodes == []


def test_input_and_output_are_ill_defined_for_a_layer_called_at_several_nodes():
    """TF1 Keras `Layer.input`: "Raises: AttributeError: if the layer is connected to more than
    one incoming layers." (message: 'has multiple inbound nodes, hence the notion of "layer
    input" is ill-defined. Use `get_input_at(node_index)` instead.')"""
    shared = Dense(3)
    a, b = Input(shape=(4,)), Input(shape=(4,))
    ya, yb = shared(a), shared(b)
    with pytest.raises(AttributeError, match=r'notion of "layer input" is ill-defined'):
        shared.input
    with pytest.raises(AttributeError, match=r"Use `get_output_at\(node_index\)` instead"):
        shared.output
    with pytest.raises(AttributeError, match=r"multiple inbound nodes"):
        shared.input_mask
    assert shared.get_input_at(0) is a and shared.get_input_at(1) is b
    assert shared.get_output_at(0) is ya and shared.get_output_at(1) is yb
    assert shared.get_input_mask_at(1) is None and shared.get_output_mask_at(0) is None
    # tf.keras 2 `input_shape`: "Only applicable if ... all inputs have the same shape."
    assert shared.input_shape == (None, 4) and shared.output_shape == (None, 3)
    assert shared.get_input_shape_at(1) == (None, 4)
    assert shared.get_output_shape_at(0) == (None, 3)


def test_input_shape_is_ill_defined_when_the_nodes_differ():
    """tf.keras 2 `Layer.input_shape`: 'The layer has multiple inbound nodes, with different
    input shapes. Hence the notion of "input shape" is ill-defined for the layer.'"""
    shared = Dense(3)
    shared(Input(shape=(4,)))
    shared(Input(shape=(2, 4)))
    with pytest.raises(AttributeError, match=r'notion of "input shape" is ill-defined'):
        shared.input_shape
    with pytest.raises(AttributeError, match=r'notion of "output shape" is ill-defined'):
        shared.output_shape
    assert shared.get_input_shape_at(1) == (None, 2, 4)
    assert shared.get_output_shape_at(1) == (None, 2, 3)


@pytest.mark.parametrize("index", [2, -1, "0", True])
def test_get_at_a_node_index_out_of_range(index):
    """Keras 3 `_get_node_attribute_at_index`: "Asked to get ... at node ..., but the operation
    has only ... inbound nodes." (a ValueError)."""
    dense = Dense(1)
    dense(Input(shape=(2,)))
    dense(Input(shape=(2,)))
    with pytest.raises(ValueError, match=r"Expected a node index in \[0, 2\).*node_index="):
        dense.get_output_at(index)


def test_inbound_and_outbound_nodes_link_the_graph():
    x = Input(shape=(3,))
    first, second = Dense(4), Dense(2)
    h = first(x)
    second(h)
    (node,) = second.inbound_nodes
    assert isinstance(node, Node)
    assert node.inbound_layers is first and node.parent_nodes == first.inbound_nodes
    assert first.outbound_nodes == [node]
    assert x._keras_history[0].outbound_nodes == first.inbound_nodes
    assert node.input_shapes == (None, 4) and node.output_shapes == (None, 2)


def test_layer_accessor_errors_keep_their_message_through_getattr():
    """A property that raises AttributeError makes Python try ``__getattr__``; the message must
    still be the accessor's, not torch's "has no attribute"."""
    with pytest.raises(AttributeError) as info:
        Dense(1).output
    assert "has no attribute" not in str(info.value)
    with pytest.raises(AttributeError, match=r"has no attribute 'not_there'"):
        Dense(1).not_there


# ---------------------------------------------------------------------- torch ops
def test_torch_ops_on_symbolic_tensors_are_traced_and_replayed():
    """Keras 3 functional guide: ops on KerasTensors become nodes of the graph (here via
    ``__torch_function__`` on symbolic tensors)."""
    a, b = Input(shape=(4,)), Input(shape=(4,))
    s = a + b
    assert s.shape == (None, 4) and isinstance(s._keras_history[0], TorchOp)
    cat = torch.cat([s, a * 2.0], dim=-1)
    assert cat.shape == (None, 8)
    sliced = cat[:, 1:5]
    reshaped = sliced.reshape(-1, 2, 2)
    neg = -torch.tanh(reshaped).transpose(1, 2)
    assert neg.shape == (None, 2, 2)
    model = Model([a, b], neg)
    xa, xb = torch.randn(3, 4), torch.randn(3, 4)
    expected = -torch.tanh(torch.cat([xa + xb, xa * 2.0], -1)[:, 1:5].reshape(-1, 2, 2))
    torch.testing.assert_close(model([xa, xb]), expected.transpose(1, 2), rtol=0, atol=0)


def test_comparison_ops_are_traced_too():
    x = Input(shape=(3,))
    assert (x > 0).dtype == torch.bool and (x == 0).dtype == torch.bool


def test_is_symbolic_call_is_false_for_plain_tensors():
    assert not node_module.is_symbolic_call((torch.ones(1),), {})
    assert node_module.is_symbolic_call(([torch.ones(1), Input(shape=(1,))],), {})


# ---------------------------------------------------------------------- every mpq layer
_EVERY_LAYER = [
    ("Dense", lambda: Dense(3, activation="relu"), (5,), "float32"),
    ("EinsumDense", lambda: mpq_layers.EinsumDense("ab,bc->ac", (3,), bias_axes="c"), (5,), None),
    ("Conv1D", lambda: mpq_layers.Conv1D(4, 3, padding="same"), (7, 2), None),
    ("Conv2D", lambda: mpq_layers.Conv2D(4, 3, strides=2), (9, 9, 2), None),
    ("Embedding", lambda: Embedding(10, 3, mask_zero=True), (6,), "int64"),
    ("LayerNormalization", lambda: mpq_layers.LayerNormalization(), (4, 5), None),
    ("BatchNormalization", lambda: mpq_layers.BatchNormalization(), (4, 5), None),
    ("Dropout", lambda: mpq_layers.Dropout(0.5, seed=1), (5,), None),
    ("Activation", lambda: mpq_layers.Activation("softmax"), (5,), None),
    ("Flatten", lambda: mpq_layers.Flatten(), (2, 3, 4), None),
    ("Reshape", lambda: mpq_layers.Reshape((2, -1)), (6,), None),
    ("Sequential", lambda: mpq_layers.Sequential([Dense(4), Dense(2)]), (5,), None),
    ("Dense int8", lambda: Dense(3, dtype="int8_from_float32"), (5,), None),
    ("Dense bfloat16", lambda: Dense(3, dtype="mixed_bfloat16"), (5,), None),
]


@pytest.mark.parametrize(
    ("make", "shape", "dtype"),
    [case[1:] for case in _EVERY_LAYER],
    ids=[case[0] for case in _EVERY_LAYER],
)
def test_every_mpq_layer_called_on_a_symbolic_tensor(make, shape, dtype):
    """Keras 3: "calling a layer on a symbolic input builds it and returns a symbolic output"
    whose shape and dtype are those of an eager call (the batch axis: None)."""
    layer = make()
    x = Input(shape=shape, dtype=dtype)
    y = layer(x)
    assert layer.built and isinstance(y, SymbolicTensor)
    data = torch.randint(1, 10, (3, *shape)) if dtype == "int64" else torch.randn(3, *shape)
    eager = layer(data, training=False)
    assert y.shape == (None, *eager.shape[1:]) and y.dtype == eager.dtype
    assert (y._keras_mask is None) == (mpq_layers.get_mask(eager) is None)


def test_the_concatenate_and_add_merge_layers_on_symbolic_lists():
    a, b = Input(shape=(2, 3)), Input(shape=(2, 5))
    assert Concatenate()([a, b]).shape == (None, 2, 8)
    assert Add()([a, Input(shape=(1, 3))]).shape == (None, 2, 3)


def test_training_is_recorded_in_the_node():
    x = Input(shape=(8,))
    dropout = mpq_layers.Dropout(0.5)
    y = dropout(x, training=True)
    assert dropout.inbound_nodes[0].call_kwargs == {"training": True}
    model = Model(x, y)
    model.eval()
    out = model(torch.ones(64, 8))
    assert (out == 0).any()  # recorded training=True wins over eval mode, as in Keras


def test_a_sublayer_built_on_its_first_call_during_a_symbolic_call():
    """A layer whose sublayers build lazily in `call` (no `build`): the symbolic call builds
    them with real weights; the meta run reads meta stand-ins of them (compute_output_spec of
    a built layer used to fail with a device mismatch here)."""

    class Block(Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = Dense(3)

        def call(self, inputs):
            return self.inner(inputs) * 2.0

    block = Block()
    y = block(Input(shape=(4,)))
    assert y.shape == (None, 3)
    assert block.inner.built and block.inner.kernel.device.type == "cpu"
    spec = Block().compute_output_spec(torch.ones(2, 4))  # unbuilt: a meta copy is built
    assert spec.device.type == "meta" and tuple(spec.shape) == (2, 3)
    built = Block()
    built.built = True  # built, with a sublayer that builds on its first call
    assert tuple(built.compute_output_spec(torch.ones(5, 4)).shape) == (5, 3)
    assert built.inner.kernel.device.type == "cpu"


# ---------------------------------------------------------------------- more errors
def test_a_mask_has_no_history():
    x = Embedding(5, 2, mask_zero=True)(Input(shape=(3,), dtype="int64"))
    with pytest.raises(AttributeError, match=r"Expected a symbolic tensor made by a layer call"):
        x._keras_mask._keras_history


def test_outputs_that_are_not_tensors_or_change_rank_are_refused():
    class ReturnsInt(Layer):
        def call(self, inputs):
            return 3

    class RankFollowsBatch(Layer):
        def call(self, inputs):
            return inputs if inputs.shape[0] == node_module.STAND_IN_SIZES[0] else inputs[None]

    with pytest.raises(TypeError, match=r"Expected layer .* to return tensors.*Received: 3"):
        ReturnsInt()(Input(shape=(2,)))
    with pytest.raises(ValueError, match=r"to give outputs of one rank.*Received: output shapes"):
        RankFollowsBatch()(Input(shape=(2,)))


def test_tracing_needs_the_op_layer(monkeypatch):
    monkeypatch.setattr(node_module, "_OP_FACTORY", None)
    with pytest.raises(RuntimeError, match=r"Expected mpq.layers.functional to be imported"):
        Input(shape=(2,)) + 1.0


def test_an_op_on_the_same_tensor_twice():
    x = Input(shape=(3,))
    y = x + x
    assert y.shape == (None, 3)
    (node,) = y._keras_history[0].inbound_nodes
    assert len(node.input_tensors) == 1 and node.input_tensors[0] is x
    model = Model(x, y * x)
    torch.testing.assert_close(model(torch.full((1, 3), 3.0)), torch.full((1, 3), 18.0))


def test_sizes_computed_from_an_unknown_size_stay_unknown():
    """The stand-in sizes are two primes (as in Keras' torch backend), so a size derived from
    the batch (a quarter of it, rounded down: 0 for both 2 and 3) differs between the runs."""

    class Quarter(Layer):
        def call(self, inputs):
            return inputs[: inputs.shape[0] // 4]

    x = Input(shape=(4,))
    assert Quarter()(x).shape == (None, 4)
    assert x[::2].shape == (None, 4)
    assert Input(shape=(4,), batch_size=8)[::2].shape == (4, 4)
