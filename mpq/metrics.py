"""Metric objects, Keras' ``keras.metrics``: ``Metric`` (subclass it), ``Mean``, ``Sum``,
``MeanMetricWrapper``, ``Accuracy``, ``BinaryAccuracy``, ``CategoricalAccuracy``. Defined in ``mpq.layers.metrics`` (their state is layer
``Variable``s); see docs/layers.md "Metrics"."""

from mpq.layers.metrics import (
    Accuracy,
    BinaryAccuracy,
    CategoricalAccuracy,
    Mean,
    MeanMetricWrapper,
    Metric,
    Sum,
)

__all__ = [
    "Accuracy",
    "BinaryAccuracy",
    "CategoricalAccuracy",
    "Mean",
    "MeanMetricWrapper",
    "Metric",
    "Sum",
]
