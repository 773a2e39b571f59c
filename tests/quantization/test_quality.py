"""Quality bars of the quantized modes: SQNR against float32 layers holding the same random
normal weights, and stored weight bytes against float32 (docs/quantization.md has the table)."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

import mpq.quantization  # noqa: F401  (registers the schemes)
from mpq.layers import Conv2D, Dense, EinsumDense, Embedding
from mpq.quantization import QuantizationConfig, weight_bytes
from mpq.testing import sqnr

# mode -> (config, SQNR floor in dB) from the quality bars
BARS = {
    "int8": ("int8", 35.0),
    "int8_weight_only": (QuantizationConfig("int8", weight_only=True), 40.0),
    "int4/-1": ("int4/-1", 18.0),
    "int4/128": ("int4/128", 20.0),
    "float8": ("float8", 25.0),
}


def _layer_and_inputs(kind: str):
    # Reduction lengths K = 64 (Dense, EinsumDense), 36 (Conv2D 3x3x4), row length 64 (Embedding).
    if kind == "dense":
        return Dense(32), torch.randn(16, 64)
    if kind == "einsum":
        return EinsumDense("abc,cde->abde", (None, 4, 8), bias_axes="de"), torch.randn(2, 8, 64)
    if kind == "conv2d":
        return Conv2D(16, 3, padding="same"), torch.randn(2, 8, 8, 4)
    return Embedding(64, 64), torch.randint(0, 64, (4, 16))


def measure(kind: str, mode: str, seed: int = 0) -> float:
    """SQNR (dB) of the quantized layer's output against the float32 layer's."""
    config = BARS[mode][0]
    torch.manual_seed(seed)
    layer, x = _layer_and_inputs(kind)
    layer(x)
    with torch.no_grad():
        for w in layer.weights:
            w.copy_(torch.randn_like(w))
    reference = layer(x).detach()
    layer.quantize(config)
    if mode == "float8":
        layer(x, training=True)  # one training step sets the delayed scales from the amaxes
    return sqnr(reference, layer(x, training=False) if mode == "float8" else layer(x))


CASES = [
    (kind, mode)
    for kind in ("dense", "einsum", "conv2d", "embedding")
    for mode in BARS
    if not (kind == "embedding" and mode == "int8")  # a table is weight-only
]


@pytest.mark.parametrize(("kind", "mode"), CASES)
def test_sqnr_bar(kind, mode):
    value = measure(kind, mode)
    assert value >= BARS[mode][1], f"{kind} {mode}: {value:.2f} dB < {BARS[mode][1]} dB"


@pytest.mark.parametrize(
    ("mode", "limit"),
    [("int8", 0.26), ("int8_weight_only", 0.26), ("int4/-1", 0.14), ("int4/128", 0.14)],
)
def test_weight_bytes_at_1024x1024(mode, limit):
    layer = Dense(1024)
    layer.build((None, 1024))
    float_bytes = weight_bytes(layer)
    assert float_bytes == (1024 * 1024 + 1024) * 4
    layer.quantize(BARS[mode][0])
    ratio = weight_bytes(layer) / float_bytes
    assert ratio <= limit, f"{mode}: {ratio:.4f}"
    expected = {
        "int8": 1024 * 1024 + 2 * 4 * 1024,  # int8 kernel + float32 scales + float32 bias
        "int8_weight_only": 1024 * 1024 + 2 * 4 * 1024,
        "int4/-1": 512 * 1024 + 2 * 4 * 1024,  # packed kernel + scales + bias
        "int4/128": 512 * 1024 + 8 * 1024 * (4 + 1) + 4 * 1024,  # + [8, 1024] scales and zeros
    }[mode]
    assert weight_bytes(layer) == expected


def test_float8_embedding_weight_bytes_at_1024x1024():
    layer = Embedding(1024, 1024)
    layer.build()
    float_bytes = weight_bytes(layer)
    assert float_bytes == 1024 * 1024 * 4
    layer.quantize("float8")
    assert weight_bytes(layer) == 1024 * 1024 + 4 * 1024  # e4m3fn table + float32 row scales
    assert weight_bytes(layer) / float_bytes <= 0.27


def table_rows() -> list[str]:
    """The measured SQNR values as they appear in docs/quantization.md."""
    rows = []
    for kind in ("dense", "einsum", "conv2d", "embedding"):
        cells = [f"{measure(kind, m):.1f}" for m in BARS if (kind, m) in CASES]
        rows.append(" | ".join(cells))
    return rows


def test_docs_state_the_measured_values():
    docs = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "quantization.md").read_text()
    for row in table_rows():
        assert row in docs, f"update the SQNR table in docs/quantization.md: {row}"


def test_docs_examples_run():
    docs = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "quantization.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", docs, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/quantization.md", "exec"), {})


if __name__ == "__main__":  # prints the measured values of docs/quantization.md
    print("\n".join(table_rows()))
