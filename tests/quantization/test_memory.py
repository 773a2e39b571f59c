"""No hidden full-precision copy of the weights: what a quantized layer keeps alive after calls
is within 10% of the bytes it reports (its variables, as ``mpq.sweep.weight_bytes`` counts)."""

from __future__ import annotations

import pytest
import torch

import mpq.quantization  # noqa: F401  (registers the schemes)
from mpq.layers import Conv2D, Dense, EinsumDense, Embedding
from mpq.quantization import QuantizationConfig
from mpq.sweep import weight_bytes

MODES = [
    "int8",
    QuantizationConfig("int8", weight_only=True),
    "int4/-1",
    "int4/32",
    QuantizationConfig("int4", block_size=-1, weight_only=False),
    "float8",
]
LAYERS = [
    (Dense, {"units": 256}, (4, 128)),
    (EinsumDense, {"equation": "abc,cd->abd", "output_shape": (3, 128)}, (2, 3, 128)),
    (Conv2D, {"filters": 64, "kernel_size": 3, "padding": "same"}, (2, 6, 6, 32)),
    (Embedding, {"input_dim": 512, "output_dim": 64}, (3, 5)),
]


def resident_bytes(root: object) -> int:
    """Bytes of the distinct storages of every tensor reachable from ``root`` through object
    attributes, dicts, lists and tuples (parameters, buffers, caches, scheme objects)."""
    seen_objects: set[int] = set()
    storages: dict[int, int] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen_objects:
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.extend(vars(obj).values())
    return sum(storages.values())


def test_resident_bytes_finds_hidden_tensors():
    layer = Dense(64)
    layer(torch.ones(1, 32))
    reported = weight_bytes(layer)
    assert resident_bytes(layer) == reported
    layer.__dict__["_hidden"] = {"cache": [layer.kernel.detach().clone()]}
    assert resident_bytes(layer) == reported + 32 * 64 * 4


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize(
    ("cls", "kwargs", "shape"), LAYERS, ids=lambda v: getattr(v, "__name__", "")
)
def test_quantized_layers_keep_no_full_precision_copy(cls, kwargs, shape, mode):
    layer = cls(**kwargs)
    x = torch.randint(0, 512, shape) if cls is Embedding else torch.randn(shape)
    layer(x)
    if cls is Embedding and mode not in ("int8", "int4/-1", "int4/32"):
        pytest.skip("Embedding has int8 and int4 (weight-only) modes")
    layer.quantize(mode)
    with torch.no_grad():
        layer(x, training=False)
        layer(x, training=False)
    layer(x)  # with autograd on, too
    reported = weight_bytes(layer)
    assert reported > 0
    assert resident_bytes(layer) <= 1.10 * reported
