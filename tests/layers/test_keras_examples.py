"""The examples of the Keras 3 / tf.keras Layer documentation, translated to mpq and torch."""

from __future__ import annotations

import numpy as np
import torch

import mpq
from mpq import initializers
from mpq.layers import Dense, Layer


class SimpleDense(Layer):
    def __init__(self, units=32, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(input_shape[-1], self.units), initializer="random_normal", trainable=True
        )
        self.b = self.add_weight(shape=(self.units,), initializer="random_normal", trainable=True)

    def call(self, inputs):
        return torch.matmul(inputs, self.w) + self.b


class ComputeSum(Layer):
    def __init__(self, input_dim):
        super().__init__()
        self.total = self.add_weight(shape=(input_dim,), initializer="zeros", trainable=False)

    def call(self, inputs):
        self.total.assign(self.total + torch.sum(inputs, dim=0))
        return self.total


class Identity(Layer):
    def call(self, inputs):
        return inputs


def test_simple_dense_add_weight_build_call():
    linear_layer = SimpleDense(4)
    y = linear_layer(torch.ones((2, 2)))
    assert y.shape == (2, 4)
    assert len(linear_layer.weights) == 2
    assert len(linear_layer.trainable_weights) == 2
    # Unnamed weights take the attribute name they are assigned to.
    assert [w.name for w in linear_layer.weights] == ["w", "b"]
    assert list(linear_layer.state_dict()) == ["w", "b"]
    expected = torch.ones((2, 2)) @ linear_layer.w.detach() + linear_layer.b.detach()
    torch.testing.assert_close(y.detach(), expected, rtol=0, atol=0)
    # The auto-captured config recreates the layer.
    clone = SimpleDense.from_config(linear_layer.get_config())
    assert clone.units == 4


def test_compute_sum_non_trainable_weight_assigned_in_call():
    my_sum = ComputeSum(2)
    x = torch.ones((2, 2))
    y = my_sum(x)
    np.testing.assert_array_equal(y.numpy(), [2.0, 2.0])
    y = my_sum(x)
    np.testing.assert_array_equal(y.numpy(), [4.0, 4.0])
    assert my_sum.weights == [my_sum.total]
    assert my_sum.non_trainable_weights == [my_sum.total]
    assert my_sum.trainable_weights == []
    assert my_sum.total.requires_grad is False


def test_float64_input_is_cast_to_float32_layer():
    layer = Identity()
    assert layer.compute_dtype == "float32"
    y = layer(np.ones((2,), dtype="float64"))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    y = layer(torch.ones(2, dtype=torch.float64))
    assert y.dtype == torch.float32


def test_autocast_false_returns_float64():
    layer = Identity(autocast=False)
    y = layer(torch.ones(2, dtype=torch.float64))
    assert y.dtype == torch.float64


def test_nested_layers_under_float64_policy():
    class Block(Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense_1 = Dense(3)
            self.dense_2 = Dense(2)

        def call(self, inputs):
            return self.dense_2(self.dense_1(inputs))

    block = Block(dtype="float64")
    y = block(torch.ones(4, 5))
    assert y.dtype == torch.float64
    assert block.dense_1.dtype_policy.name == "float64"
    assert {w.dtype for w in block.weights} == {torch.float64}
    # Under a float64 policy scope, layers created inside take it (Keras' global policy).
    with mpq.policy_scope("float64"):
        scoped = Dense(2)
    assert scoped(torch.ones(1, 3)).dtype == torch.float64


def test_get_weights_set_weights_copy_dense():
    layer_a = Dense(1, kernel_initializer=initializers.Constant(1.0))
    a_out = layer_a(torch.tensor([[1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(a_out.detach().numpy(), [[6.0]])
    layer_b = Dense(1, kernel_initializer=initializers.Constant(2.0))
    b_out = layer_b(torch.tensor([[10.0, 20.0, 30.0]]))
    np.testing.assert_array_equal(b_out.detach().numpy(), [[120.0]])
    layer_b.set_weights(layer_a.get_weights())
    np.testing.assert_array_equal(layer_b.get_weights()[0], [[1.0], [1.0], [1.0]])
    np.testing.assert_array_equal(
        layer_b(torch.tensor([[10.0, 20.0, 30.0]])).detach().numpy(), [[60.0]]
    )


def test_mixed_precision_variables_autocast_inside_call():
    class MyLayer(Layer):
        def build(self, input_shape):
            self.x = self.add_weight(shape=(), name="x")
            self.y = self.add_weight(shape=(), name="y", autocast=False)

        def call(self, inputs):
            self.seen = (self.x.dtype, self.y.dtype)
            return inputs

    layer = MyLayer(dtype="mixed_float16")
    layer(torch.ones(1))
    assert layer.x.dtype == torch.float32 and layer.y.dtype == torch.float32
    assert layer.seen == (torch.float16, torch.float32)


def test_add_loss_in_call_and_activity_regularizer():
    class MyActivityRegularizer(Layer):
        def call(self, inputs):
            self.add_loss(0.1 * torch.sum(torch.square(inputs)))
            return inputs

    layer = MyActivityRegularizer()
    layer(torch.ones(2, 2))
    assert len(layer.losses) == 1
    assert float(layer.losses[0]) == np.float32(0.1) * 4  # float32 arithmetic
    layer(torch.ones(1, 1))  # losses are reset at the start of each outermost call
    assert [float(x) for x in layer.losses] == [float(np.float32(0.1))]

    dense = Dense(2, kernel_initializer="ones", activity_regularizer="l2")
    dense(torch.ones(1, 3))
    assert len(dense.losses) == 1
    assert abs(dense.losses[0].detach().item() - 0.01 * 2 * 9.0) < 1e-6
