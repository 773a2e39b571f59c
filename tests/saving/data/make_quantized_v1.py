"""Writes tests/saving/data/quantized_v1.* with the code of the commit that introduced them
(before quantized state became one scheme object, issue 18): the previous on-disk format of
quantized layers, kept so that tests/saving/test_saving_compat.py can check that it still loads.

Run once from the repository root: ``PYTHONPATH=$PWD python tests/saving/data/make_quantized_v1.py``.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

import mpq
from mpq.layers import Conv2D, Dense, EinsumDense, Sequential

HERE = os.path.dirname(os.path.abspath(__file__))


def build() -> tuple[dict[str, torch.nn.Module], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    layers: dict[str, torch.nn.Module] = {}
    inputs: dict[str, torch.Tensor] = {}

    def dense(mode: str, units: int = 6, k: int = 8) -> Sequential:
        m = Sequential([Dense(units, activation="relu", name=f"d_{mode.replace('/', '_')}")])
        m.build((None, k))
        m.layers[0].quantize(mode)
        return m

    layers["dense_int8"] = dense("int8")
    inputs["dense_int8"] = torch.randn(3, 8)
    layers["dense_int4"] = dense("int4")
    inputs["dense_int4"] = torch.randn(3, 8)
    layers["dense_int4_g"] = dense("int4/4")
    inputs["dense_int4_g"] = torch.randn(3, 8)
    layers["dense_float8"] = dense("float8")
    inputs["dense_float8"] = torch.randn(3, 8)

    conv = Sequential([Conv2D(4, 3, name="conv_int8")])
    conv.build((None, 6, 6, 2))
    conv.layers[0].quantize("int8")
    layers["conv_int8"] = conv
    inputs["conv_int8"] = torch.randn(2, 6, 6, 2)

    ed = Sequential(
        [
            EinsumDense(
                "abc,cde->abde", output_shape=(None, 3, 4), bias_axes="de", name="einsum_int8"
            )
        ]
    )
    ed.build((None, 5, 8))
    ed.layers[0].quantize("int8")
    layers["einsum_int8"] = ed
    inputs["einsum_int8"] = torch.randn(2, 5, 8)

    lora = Sequential([Dense(6, name="lora_int8")])
    lora.build((None, 8))
    lora.layers[0].quantize("int8")
    lora.layers[0].enable_lora(2)
    with torch.no_grad():
        lora.layers[0].lora_kernel_b.copy_(torch.randn(2, 6) * 0.1)
    layers["lora_int8"] = lora
    inputs["lora_int8"] = torch.randn(3, 8)
    return layers, inputs


def main() -> None:
    layers, inputs = build()
    expected: dict[str, torch.Tensor] = {}
    keys: dict[str, list[str]] = {}
    for name, model in layers.items():
        model.eval()
        with torch.no_grad():
            expected[f"{name}/input"] = inputs[name]
            expected[f"{name}/output"] = model(inputs[name]).contiguous()
        mpq.saving.save(model, os.path.join(HERE, f"quantized_v1_{name}.safetensors"))
        sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, os.path.join(HERE, f"quantized_v1_{name}.state_dict.safetensors"))
        keys[name] = sorted(sd)
    save_file(expected, os.path.join(HERE, "quantized_v1_expected.safetensors"))
    with open(os.path.join(HERE, "quantized_v1_keys.json"), "w") as f:
        json.dump(keys, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
