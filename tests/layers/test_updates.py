"""Layer updates and conditional / callable losses: add_update, updates, get_updates_for,
get_losses_for, add_loss(callable), add_loss(..., inputs=)."""

from __future__ import annotations

import pytest
import torch

from mpq import regularizers
from mpq.layers import Dense, Layer, Sequential


class Counter(Layer):
    """Counts its calls with a callable update (the tf.keras 2 eager idiom)."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x):
        self.add_update(lambda: self.calls.assign_add(1.0))
        return x


def test_add_update_runs_eagerly_and_is_skipped_when_frozen():
    """tf.keras 2 `add_update`: "A zero-arg callable should be passed in order to disable
    running the updates by setting `trainable=False` on this Layer, when executing in Eager
    mode." mpq runs updates eagerly, at once."""
    layer = Counter()
    x = torch.ones(2)
    layer(x)
    layer(x)
    assert float(layer.calls) == 2.0
    assert len(layer.updates) == 1 and callable(layer.updates[0])  # the last call's updates
    layer.trainable = False
    layer(x)
    assert float(layer.calls) == 2.0  # frozen: skipped
    assert layer.updates == []


def test_update_values_already_run_are_recorded_and_sublayers_collected():
    """tf.keras 2 `Layer.updates` collects the sublayers' updates, skipping frozen layers."""

    class Assigning(Layer):
        def build(self, input_shape):
            self.total = self.add_weight(shape=(), initializer="zeros", trainable=False)

        def call(self, x):
            self.add_update(self.total.assign_add(x.sum()))
            return x

    inner = Assigning()
    model = Sequential([Counter(), inner])
    model(torch.ones(3))
    assert float(inner.total) == 3.0
    assert len(model.updates) == 2
    assert model.updates[1] is inner.total  # assign returns the variable
    inner.trainable = False
    assert len(model.updates) == 1


def test_get_updates_for_and_get_losses_for_by_inputs():
    """TF1 `get_updates_for` / `get_losses_for`: "inputs: Input tensor or list/tuple of input
    tensors. Must match the `inputs` argument passed to the `__call__` method at the time the
    updates were created. If you pass `inputs=None`, unconditional updates are returned"; for
    losses, "unconditional losses are returned, such as weight regularization losses"."""

    class Conditional(Layer):
        def call(self, a, b):
            self.add_update(lambda: None, inputs=a)
            self.add_update(lambda: None)
            self.add_loss(a.sum(), inputs=[a])
            self.add_loss(b.sum(), inputs=(a, b))
            self.add_loss(torch.tensor(7.0))
            return a + b

    layer = Conditional()
    a, b = torch.ones(2), torch.full((2,), 2.0)
    layer(a, b)
    assert len(layer.get_updates_for(a)) == 1
    assert len(layer.get_updates_for(None)) == 1
    assert layer.get_updates_for(torch.ones(2)) == []  # an equal tensor is not the input
    assert [float(v.detach()) for v in layer.get_losses_for(a)] == [2.0]
    assert [float(v.detach()) for v in layer.get_losses_for([a, b])] == [4.0]
    assert [float(v.detach()) for v in layer.get_losses_for(None)] == [7.0]
    assert [float(v.detach()) for v in layer.losses] == [2.0, 4.0, 7.0]

    dense = Dense(1, kernel_initializer="ones", kernel_regularizer=regularizers.L2(0.5))
    dense(torch.ones(1, 2))
    assert [float(v.detach()) for v in dense.get_losses_for(None)] == [0.5 * 2.0]  # the L2 penalty
    assert dense.get_losses_for(torch.ones(1)) == []


def test_losses_docstring_example():
    """tf.keras 2 `Layer.losses` example: `l(np.ones((10, 1)))` then `l.losses == [1.0]`."""
    import numpy as np

    class MyLayer(Layer):
        def call(self, inputs):
            self.add_loss(torch.abs(torch.mean(inputs)))
            return inputs

    layer = MyLayer()
    layer(np.ones((10, 1)))
    assert [float(v) for v in layer.losses] == [1.0]


def test_add_loss_callable_is_evaluated_when_losses_is_read():
    """tf.keras 2 `add_loss`: "Rather than tensors, losses may also be zero-argument callables
    which create a loss tensor", e.g. `model.add_loss(lambda: tf.reduce_mean(d.kernel))`; and
    `losses`: "Variable regularization tensors are created when this property is accessed"."""
    d = Dense(10, kernel_initializer="ones")
    model = Sequential([d, Dense(1)])
    model(torch.ones(1, 10))
    model.add_loss(lambda: d.kernel.mean())
    assert [float(v.detach()) for v in model.losses] == [1.0]  # the docstring's value
    with torch.no_grad():
        d.kernel.mul_(3.0)
    assert [float(v.detach()) for v in model.losses] == [3.0]  # evaluated now, not at add time
    model(torch.ones(1, 10))  # callable losses are kept across calls
    assert [float(v.detach()) for v in model.losses] == [3.0]
    loss = model.losses[0]
    loss.backward()
    assert torch.equal(d.kernel.grad, torch.full((10, 10), 0.01))
    model.add_loss([lambda: None, 2.0])  # None results are dropped; numbers become tensors
    assert [float(v.detach()) for v in model.losses] == [2.0, 3.0]  # added tensors first


def test_add_loss_rejects_what_is_not_a_loss():
    class Bad(Layer):
        def call(self, x):
            self.add_loss("high")
            return x

    with pytest.raises(TypeError, match=r"Expected a loss tensor.*Received: loss='high'"):
        Bad()(torch.ones(1))
