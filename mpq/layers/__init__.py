"""Keras 3 style layers on ``torch.nn.Module``: the ``Layer`` base, variables, core layers.

See ``docs/layers.md``; the authoring contract for new layers is in ``mpq.layers.base``.
"""

from mpq.layers.base import Layer
from mpq.layers.conv import Conv1D, Conv2D
from mpq.layers.core import Activation, Dropout, Flatten, Reshape
from mpq.layers.dense import Dense
from mpq.layers.einsum_dense import EinsumDense
from mpq.layers.embedding import Embedding
from mpq.layers.extras import name_scope
from mpq.layers.functional import Functional, Input, InputLayer, Model, TorchOp
from mpq.layers.input_spec import InputSpec
from mpq.layers.masking import get_mask
from mpq.layers.merging import Add, Concatenate
from mpq.layers.node import Node, SymbolicTensor
from mpq.layers.normalization import BatchNormalization, LayerNormalization, RMSNormalization
from mpq.layers.quantization import QuantizationScheme, get_scheme, register_scheme
from mpq.layers.random import SeedGenerator
from mpq.layers.rematerialization import RematScope, remat
from mpq.layers.sequential import Sequential
from mpq.layers.serialization import deserialize, get_registered_layer, register_layer, serialize
from mpq.layers.tracking import reset_name_counters
from mpq.layers.variables import Variable

__all__ = [
    "Activation",
    "Add",
    "BatchNormalization",
    "Concatenate",
    "Conv1D",
    "Conv2D",
    "Dense",
    "Dropout",
    "EinsumDense",
    "Embedding",
    "Flatten",
    "Functional",
    "Input",
    "InputLayer",
    "InputSpec",
    "Layer",
    "LayerNormalization",
    "Model",
    "Node",
    "QuantizationScheme",
    "RMSNormalization",
    "RematScope",
    "Reshape",
    "SeedGenerator",
    "Sequential",
    "SymbolicTensor",
    "TorchOp",
    "Variable",
    "deserialize",
    "get_mask",
    "get_registered_layer",
    "get_scheme",
    "name_scope",
    "register_layer",
    "register_scheme",
    "remat",
    "reset_name_counters",
    "serialize",
]
