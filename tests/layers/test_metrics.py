"""mpq.layers.metrics (public as mpq.metrics) and the metric API of Layer: add_metric, metrics,
metrics_variables, metric state among variables / non_trainable_variables, reset, stateless."""

from __future__ import annotations

import pytest
import torch

import mpq
from mpq.layers import Dense, Layer, Sequential
from mpq.metrics import (
    Accuracy,
    BinaryAccuracy,
    CategoricalAccuracy,
    Mean,
    MeanMetricWrapper,
    Metric,
    Sum,
)


class BinaryTruePositives(Metric):
    """The Keras 3 `Metric` docstring's example subclass, in torch."""

    def __init__(self, name="binary_true_positives", **kwargs):
        super().__init__(name=name, **kwargs)
        self.true_positives = self.add_variable(
            shape=(), initializer="zeros", name="true_positives"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = (y_true.bool() & y_pred.bool()).to(self.torch_dtype)
        if sample_weight is not None:
            values = values * torch.broadcast_to(sample_weight.to(self.torch_dtype), values.shape)
        self.true_positives.assign(self.true_positives + values.sum())

    def result(self):
        return self.true_positives


def test_keras3_metric_subclass_example():
    """Keras 3 `Metric`: "All state variables should be created in this method by calling
    `self.add_variable()` [...] `update_state()`: Has all updates to the state variables like:
    `self.var.assign(...)`. `result()`: Computes and returns a scalar value"."""
    m = BinaryTruePositives()
    m.update_state(torch.tensor([1, 0, 1, 1]), torch.tensor([1, 1, 0, 1]))
    assert float(m.result()) == 2.0
    m.update_state(
        torch.tensor([1, 1]), torch.tensor([1, 1]), sample_weight=torch.tensor([0.5, 2.0])
    )
    assert float(m.result()) == 4.5
    assert [v.name for v in m.variables] == ["true_positives"]
    assert all(not v.requires_grad for v in m.variables)
    m.reset_state()
    assert float(m.result()) == 0.0


def test_mean_and_sum_exact_with_and_without_weights():
    """tf.keras 2 `Mean` / `Sum`: weighted mean sum(w*x)/sum(w), weighted sum sum(w*x); values
    exactly representable, so the oracle is exact."""
    m = Mean()
    assert float(m.result()) == 0.0  # Keras divide_no_nan: 0 before any value
    m.update_state([1.0, 3.0, 5.0, 7.0])
    assert float(m.result()) == 4.0
    m.update_state(torch.tensor([[2.0, 4.0], [8.0, 8.0]]), sample_weight=torch.tensor([1.0, 0.5]))
    # total = 16 + (2 + 4) + 0.5 * 16 = 30; count = 4 + 2 + 1 = 7
    assert float(m.total) == 30.0 and float(m.count) == 7.0
    assert torch.equal(m.result(), torch.tensor(30.0 / 7.0))
    s = Sum()
    s.update_state([1.0, 3.0], sample_weight=[2.0, 0.0])
    assert float(s.result()) == 2.0
    assert m(torch.tensor([2.0])).item() == pytest.approx(32.0 / 8.0, abs=0)


def test_metric_call_is_update_then_result_and_wrapper_and_accuracy():
    mae = MeanMetricWrapper(lambda t, p: (t - p).abs(), name="mae")
    out = mae(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
    assert float(out) == 1.5 and float(mae.result()) == 1.5
    acc = Accuracy()
    acc.update_state([[1], [2], [3], [4]], [[0], [2], [3], [4]])
    assert float(acc.result()) == 0.75
    assert Accuracy.from_config(acc.get_config()).name == "accuracy"


def test_binary_and_categorical_accuracy_keras_examples():
    """The Keras `BinaryAccuracy` / `CategoricalAccuracy` docstring examples (standalone usage,
    with and without `sample_weight`)."""
    m = BinaryAccuracy()
    m.update_state([[1], [1], [0], [0]], [[0.98], [1], [0], [0.6]])
    assert float(m.result()) == 0.75
    m.reset_state()
    m.update_state([[1], [1], [0], [0]], [[0.98], [1], [0], [0.6]], sample_weight=[1, 0, 0, 1])
    assert float(m.result()) == 0.5
    c = CategoricalAccuracy()
    c.update_state([[0, 0, 1], [0, 1, 0]], [[0.1, 0.9, 0.8], [0.05, 0.95, 0]])
    assert float(c.result()) == 0.5
    c.reset_state()
    c.update_state(
        [[0, 0, 1], [0, 1, 0]], [[0.1, 0.9, 0.8], [0.05, 0.95, 0]], sample_weight=[0.7, 0.3]
    )
    assert torch.equal(c.result(), torch.tensor(0.3) / torch.tensor(1.0))
    assert BinaryAccuracy.from_config(BinaryAccuracy(threshold=0.7).get_config()).threshold == 0.7
    with pytest.raises(TypeError, match=r"`threshold` to be a number. Received: threshold='x'"):
        BinaryAccuracy(threshold="x")
    with pytest.raises(ValueError, match=r"one-hot `y_true`.*y_true.shape=\[2\]"):
        CategoricalAccuracy().update_state(torch.ones(2), torch.ones(2, 2))


def test_metric_errors():
    with pytest.raises(ValueError, match=r"Expected a floating `dtype`.*dtype='int32'"):
        Mean(dtype="int32")
    with pytest.raises(ValueError, match=r"non-empty string. Received: name=3 \(of type int\)"):
        Mean(name=3)
    with pytest.raises(TypeError, match=r"Expected `fn` to be a callable. Received: fn=1"):
        MeanMetricWrapper(1)
    with pytest.raises(ValueError, match=r"Expected `sample_weight` broadcastable.*\[3\]"):
        Mean().update_state(torch.ones(2, 2), sample_weight=torch.ones(3))
    with pytest.raises(ValueError, match=r"same shape for Accuracy.*y_pred.shape=\[3\]"):
        Accuracy().update_state(torch.ones(2), torch.ones(3))
    with pytest.raises(NotImplementedError, match="update_state"):
        Metric().update_state(1)
    with pytest.raises(NotImplementedError, match="result"):
        Metric().result()
    with pytest.raises(NotImplementedError, match="has no config"):
        MeanMetricWrapper(abs).get_config()
    with pytest.raises(ValueError, match=r"list of 2 tensors.*Received: 1"):
        Mean().stateless_update_state([torch.zeros(())], torch.ones(2))


def test_stateless_update_result_reset_write_nothing():
    """Keras 3 `Metric.stateless_update_state` / `stateless_result` / `stateless_reset_state`."""
    m = Mean()
    m.update_state([2.0])
    new = m.stateless_update_state(
        [torch.tensor(10.0), torch.tensor(2.0)], torch.tensor([2.0, 4.0])
    )
    assert [float(v) for v in new] == [16.0, 4.0]
    assert (float(m.total), float(m.count)) == (2.0, 1.0)  # untouched
    assert float(m.stateless_result(new)) == 4.0
    assert [float(v) for v in m.stateless_reset_state()] == [0.0, 0.0]
    assert float(m.result()) == 2.0


class MetricLayer(Layer):
    """The tf.keras 2 `add_metric` docstring's layer (`self.mean` tracked, a named sum added)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mean = Mean(name="metric_1")

    def call(self, inputs):
        self.add_metric(self.mean(inputs))
        self.add_metric(inputs.sum(), name="metric_2")
        return inputs


def test_add_metric_tf_keras2_example_and_metrics_of_sublayers():
    """tf.keras 2 `Layer.add_metric`: "When the `value` tensor provided is not the result of
    calling a `keras.Metric` instance, it will be aggregated by default using a
    `keras.Metric.Mean`"; `Layer.metrics` lists the sublayers' metrics too."""
    layer = MetricLayer()
    layer(torch.tensor([1.0, 2.0, 3.0]))
    layer(torch.tensor([5.0]))
    assert [m.name for m in layer.metrics] == ["metric_1", "metric_2"]
    metric_1, metric_2 = layer.metrics
    assert float(metric_1.result()) == 11.0 / 4.0  # updated once per call, not twice
    assert isinstance(metric_2, Mean) and float(metric_2.result()) == (6.0 + 5.0) / 2.0
    model = Sequential([Dense(2), MetricLayer()])
    model(torch.ones(1, 3))
    assert [m.name for m in model.metrics] == ["metric_1", "metric_2"]
    assert model.metrics_variables == [v for m in model.metrics for v in m.variables]
    assert len(model.metrics_variables) == 4


def test_metric_state_is_variables_not_weights_and_reset():
    """Keras 3: `weights` "excludes metric state and random seeds"; `non_trainable_variables`
    "include [...] `Metric` state". Reset: `reset_state()` zeros a metric; the layer does not
    reset its metrics by itself."""
    layer = MetricLayer()
    dense = Dense(2)
    model = Sequential([dense, layer])
    model(torch.ones(1, 3))
    assert model.weights == [dense.kernel, dense.bias]
    assert model.get_weights()[0].shape == (3, 2) and len(model.get_weights()) == 2
    state = model.metrics_variables
    assert all(any(v is s for v in model.non_trainable_variables) for s in state)
    assert all(any(v is s for v in model.variables) for s in state)
    assert len(model.variables) == len(model.trainable_variables) + len(
        model.non_trainable_variables
    )
    assert model.count_params() == 3 * 2 + 2
    # Attribute metrics are submodules: their state is in state_dict; add_metric ones are not.
    keys = list(model.state_dict())
    assert "1.mean.total" in keys and "1.mean.count" in keys
    assert not any("metric_2" in k for k in keys)
    model(torch.ones(1, 3))
    assert float(layer.mean.count) == 2.0 * 2  # two calls of two values each
    for m in model.metrics:
        m.reset_state()
    assert all(float(v) == 0.0 for v in model.metrics_variables)


def test_stateless_call_does_not_create_metrics():
    layer = MetricLayer()
    layer(torch.tensor([1.0]))
    fresh = MetricLayer()
    fresh.build(None)
    nt = [v.detach().clone() for v in fresh.non_trainable_variables]
    fresh.stateless_call([], nt, torch.tensor([3.0]))
    assert [m.name for m in fresh.metrics] == ["metric_1"]  # metric_2 not created


def test_metric_state_through_stateless_call():
    """Keras 3 `stateless_call`: the returned non_trainable_variables include `Metric` state; the
    layer itself is not written."""
    layer = MetricLayer()
    layer(torch.tensor([1.0]))  # creates metric_2
    nt = [v.detach().clone() for v in layer.non_trainable_variables]
    out, new_nt = layer.stateless_call([], nt, torch.tensor([3.0, 5.0]))
    assert torch.equal(out, torch.tensor([3.0, 5.0]))
    by_path = {v.name: float(n) for v, n in zip(layer.non_trainable_variables, new_nt, strict=True)}
    assert float(layer.mean.total) == 1.0 and float(layer.mean.count) == 1.0  # untouched
    totals = sorted(
        float(n)
        for v, n in zip(layer.non_trainable_variables, new_nt, strict=True)
        if v.name == "total"
    )
    assert totals == [1.0 + 8.0, 1.0 + 8.0]
    assert set(by_path) == {"total", "count"}


def test_add_metric_errors():
    """tf.keras 2 `add_metric` errors: a name is required for a plain value; only 'mean'
    aggregation; unknown keyword arguments raise."""

    class Bad(Layer):
        def __init__(self, **kwargs):
            super().__init__()
            self.kw = kwargs

        def call(self, x):
            self.add_metric(x.sum(), **self.kw)
            return x

    cases = [
        ({}, ValueError, r"Expected a name for the metric.*Received: name=None"),
        (
            {"name": "s", "aggregation": "sum"},
            ValueError,
            r"aggregation='mean'.*Received: aggregation='sum'",
        ),
        ({"name": "s", "aggregation": None}, ValueError, r"not the result of a metric object"),
        ({"name": "s", "foo": 1}, TypeError, r"unknown keyword arguments \['foo'\]"),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            Bad(**kw)(torch.ones(2))
    with pytest.raises(ValueError, match=r"inside the layer's `call`.*Received: value="):
        Dense(2).add_metric(torch.ones(()), name="outside")


def test_mpq_metrics_is_the_layers_metrics_module():
    assert mpq.metrics.Mean is Mean and mpq.metrics.Sum is Sum
