"""Write the Keras 3.15 fixtures of tests/saving/data/keras/ with real Keras (torch backend).

Each fixture is `<name>.keras` (what `model.save` writes) and `<name>.npz` (an input batch `x`
and Keras' output `y` for it; loaded with allow_pickle=False). Weights are random (seeded), so
normalization statistics and quantization scales are not trivial.

    KERAS_BACKEND=torch python tools/make_keras_fixtures.py [--out DIR]

tests/saving/test_keras_files.py checks that the committed files are what this script makes
(configs and weights; the zip's timestamps differ) when Keras is installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "saving", "data", "keras")


def _randomize(model: Any, seed: int) -> None:
    """Every float variable drawn from N(0, 0.5) (variances: |.| + 0.5), seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "int" in str(v.dtype):
            continue
        value = rng.normal(0.0, 0.5, size=tuple(v.shape)).astype("float32")
        if "variance" in v.path or "stddev" in v.path:
            value = np.abs(value) + 0.5
        v.assign(value)


def mlp() -> tuple[Any, Any]:
    import keras
    import numpy as np

    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8,)),
            layers.Dense(
                16,
                activation="relu",
                kernel_initializer=keras.initializers.GlorotUniform(seed=1),
                kernel_regularizer=keras.regularizers.L2(0.01),
                kernel_constraint=keras.constraints.MaxNorm(2.0),
            ),
            layers.LayerNormalization(),
            layers.Dropout(0.1, seed=2),
            layers.Dense(8, activation="hard_silu"),
            layers.LayerNormalization(rms_scaling=True),
            layers.Dense(4, activation="softmax"),
        ],
        name="mlp",
    )
    _randomize(model, 0)
    return model, np.random.default_rng(1).normal(size=(3, 8)).astype("float32")


def cnn() -> tuple[Any, Any]:
    import keras
    import numpy as np

    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.Reshape((25, 4)),
            layers.Conv1D(3, 2, dilation_rate=2),
            layers.BatchNormalization(renorm=True, renorm_clipping={"rmax": 2.0, "dmax": 1.0}),
            layers.Flatten(),
            layers.Dense(5, activation="gelu"),
        ],
        name="cnn",
    )
    _randomize(model, 2)
    return model, np.random.default_rng(3).normal(size=(2, 10, 10, 3)).astype("float32")


def text() -> tuple[Any, Any]:
    import keras
    import numpy as np

    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            layers.Embedding(20, 8),
            layers.EinsumDense("abc,cd->abd", (6, 12), bias_axes="d", activation="tanh"),
            layers.LayerNormalization(axis=[1, 2]),
            layers.Flatten(),
            layers.Dense(4),
        ],
        name="text",
    )
    _randomize(model, 4)
    return model, np.random.default_rng(5).integers(0, 20, size=(3, 6)).astype("int32")


def functional() -> tuple[Any, Any]:
    import keras
    import numpy as np

    layers = keras.layers
    inputs = keras.Input((6,))
    hidden = layers.Dense(8, activation="relu")(inputs)
    merged = layers.Concatenate()([hidden, inputs])
    outputs = layers.Dense(3)(layers.LayerNormalization()(merged))
    model = keras.Model(inputs, outputs, name="functional")
    _randomize(model, 8)
    return model, np.random.default_rng(9).normal(size=(2, 6)).astype("float32")


def _quantized(
    make: Callable[[], tuple[Any, Any]], mode: str, block_size: int | None = 0
) -> Callable[[], tuple[Any, Any]]:
    """`make`'s model quantized with `mode` (int4: `block_size` None per channel, 0 Keras'
    default 128)."""

    def build() -> tuple[Any, Any]:
        import keras

        model, x = make()
        if mode == "int4" and block_size != 0:
            config = keras.quantizers.Int4QuantizationConfig(block_size=block_size)
            model.quantize(mode, config=config)
        else:
            model.quantize(mode)
        return model, x

    return build


def quant_mlp() -> tuple[Any, Any]:
    import keras
    import numpy as np

    layers = keras.layers
    model = keras.Sequential(
        [keras.Input((32,)), layers.Dense(16, activation="relu"), layers.Dense(4)],
        name="quant_mlp",
    )
    _randomize(model, 6)
    return model, np.random.default_rng(7).normal(size=(4, 32)).astype("float32")


def einsum() -> tuple[Any, Any]:
    """EinsumDense with two contracted letters (kept in the input's order: "cd"), a shared
    letter ("b" of "abe,ebf->abf") and a group count that does not divide K (5 by 2)."""
    import keras
    import numpy as np

    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((3, 4, 6)),
            layers.EinsumDense("abcd,cde->abe", (3, 5), bias_axes="e"),
            layers.EinsumDense("abe,ebf->abf", (3, 7), bias_axes="bf"),
        ],
        name="einsum",
    )
    _randomize(model, 10)
    return model, np.random.default_rng(11).normal(size=(2, 3, 4, 6)).astype("float32")


def einsum_swapped() -> tuple[Any, Any]:
    """EinsumDense whose kernel lists its contracted letters in another order than the input
    ("dc" against "cd"): per channel only in mpq (Keras groups along the kernel's order)."""
    import keras
    import numpy as np

    layers = keras.layers
    model = keras.Sequential(
        [keras.Input((3, 4, 6)), layers.EinsumDense("abcd,dce->abe", (3, 5), bias_axes="e")],
        name="einsum_swapped",
    )
    _randomize(model, 12)
    return model, np.random.default_rng(13).normal(size=(2, 3, 4, 6)).astype("float32")


FIXTURES: dict[str, Callable[[], tuple[Any, Any]]] = {
    "mlp": mlp,
    "cnn": cnn,
    "text": text,
    "functional": functional,
    "dense_int8": _quantized(quant_mlp, "int8"),
    "dense_float8": _quantized(quant_mlp, "float8"),
    "text_int8": _quantized(text, "int8"),
    "dense_int4": _quantized(quant_mlp, "int4"),
    "dense_int4_g8": _quantized(quant_mlp, "int4", 8),
    "dense_int4_pc": _quantized(quant_mlp, "int4", None),
    "text_int4": _quantized(text, "int4"),
    "text_int4_g4": _quantized(text, "int4", 4),
    "text_int4_pc": _quantized(text, "int4", None),
    "einsum_int4_g2": _quantized(einsum, "int4", 2),
    "einsum_int4_pc": _quantized(einsum, "int4", None),
    "einsum_swapped_int4_pc": _quantized(einsum_swapped, "int4", None),
}


def make(name: str) -> tuple[Any, Any, Any]:
    """(model, x, y) of fixture `name`, built afresh with Keras' seeds set."""
    import keras

    keras.backend.clear_session()  # layer names count from zero whatever ran before
    keras.utils.set_random_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rms_scaling's deprecation, Keras' own notices
        model, x = FIXTURES[name]()
        y = keras.ops.convert_to_numpy(model(x, training=False))
    return model, x, y


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name in FIXTURES:
        model, x, y = make(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(os.path.join(args.out, f"{name}.keras"))
        np.savez(os.path.join(args.out, f"{name}.npz"), x=x, y=y)
        print(f"wrote {name}.keras and {name}.npz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
