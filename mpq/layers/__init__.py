"""Keras 3 style layers on ``torch.nn.Module``: the ``Layer`` base, variables, core layers.

See ``docs/layers.md``; the authoring contract for new layers is in ``mpq.layers.base``.
"""

from mpq.layers.base import Layer
from mpq.layers.dense import Dense
from mpq.layers.input_spec import InputSpec
from mpq.layers.quantization import QuantizationScheme, get_scheme, register_scheme
from mpq.layers.sequential import Sequential
from mpq.layers.serialization import deserialize, get_registered_layer, register_layer, serialize
from mpq.layers.tracking import reset_name_counters
from mpq.layers.variables import Variable

__all__ = [
    "Dense",
    "InputSpec",
    "Layer",
    "QuantizationScheme",
    "Sequential",
    "Variable",
    "deserialize",
    "get_registered_layer",
    "get_scheme",
    "register_layer",
    "register_scheme",
    "reset_name_counters",
    "serialize",
]
