"""The built-in models on mpq layers: stable layer paths, policies applied through the layers,
per-layer policies, weight bytes, fine-tuning under mixed policies, quantized variants."""

from __future__ import annotations

import pytest
import torch

import mpq
import mpq.sweep as sweep
from mpq.sweep.config import BUILTIN_VARIANTS, ModelSpec, SweepConfig
from mpq.sweep.experiment import apply_policy, layer_table, train_baseline

CNN = ModelSpec("digits_cnn", epochs=1)
MLP = ModelSpec("digits_mlp", epochs=1)


@pytest.fixture(scope="module")
def cnn_baseline():
    return train_baseline(CNN, seed=0, quick=True)


def test_builtin_models_have_stable_paths(cnn_baseline):
    assert [row["path"] for row in cnn_baseline["layers"]] == [
        "digits_cnn/conv_0", "digits_cnn/conv_1", "digits_cnn/dense",
    ]  # fmt: skip
    assert [row["params"] for row in cnn_baseline["layers"]] == [
        16 * 9 + 16,
        32 * 16 * 9 + 32,
        512 * 10 + 10,
    ]
    model, _, _ = apply_policy(CNN, cnn_baseline["state"], BUILTIN_VARIANTS["float32"])
    assert [row["path"] for row in layer_table(model)] == [
        row["path"] for row in cnn_baseline["layers"]
    ]


def test_float_policies_go_through_the_layers(cnn_baseline):
    model, _, n_q = apply_policy(CNN, cnn_baseline["state"], BUILTIN_VARIANTS["mixed_bfloat16"])
    assert n_q == 0
    assert all(layer.dtype_policy.name == "mixed_bfloat16" for layer in model.layers)
    assert all(w.dtype == torch.float32 for w in model.weights)
    half, _, _ = apply_policy(CNN, cnn_baseline["state"], BUILTIN_VARIANTS["float16"])
    assert all(w.dtype == torch.float16 for w in half.weights)
    # the float32-trained weights, rounded to nearest float16
    for w16, w32 in zip(half.weights, cnn_baseline["state"].values(), strict=True):
        assert torch.equal(w16, w32.to(torch.float16))
    assert sweep.weight_bytes(half) * 2 == cnn_baseline["weight_bytes"]


def test_per_layer_policy_touches_one_layer(cnn_baseline):
    model, _, _ = apply_policy(
        CNN, cnn_baseline["state"], BUILTIN_VARIANTS["bfloat16"], layers=("digits_cnn/conv_1",),
        layer_rows=cnn_baseline["layers"],
    )  # fmt: skip
    policies = {layer.path: layer.dtype_policy.name for layer in model.layers}
    assert policies["digits_cnn/conv_1"] == "bfloat16"
    assert policies["digits_cnn/conv_0"] == policies["digits_cnn/dense"] == "float32"
    dtypes = {row["path"]: row["bytes"] for row in layer_table(model)}
    f32 = {row["path"]: row["bytes"] for row in cnn_baseline["layers"]}
    assert dtypes["digits_cnn/conv_1"] * 2 == f32["digits_cnn/conv_1"]
    assert dtypes["digits_cnn/conv_0"] == f32["digits_cnn/conv_0"]
    with pytest.raises(ValueError, match="digits_cnn/conv_9"):
        apply_policy(CNN, cnn_baseline["state"], BUILTIN_VARIANTS["bfloat16"], layers=("digits_cnn/conv_9",),
                     layer_rows=cnn_baseline["layers"])  # fmt: skip


def test_run_one_on_the_cnn_and_mixed_float16_finetuning(cnn_baseline):
    cfg = SweepConfig(
        models=[CNN], policies=["mixed_float16", "bfloat16"], quick=True, finetune_epochs=1
    )
    ft, bf = (sweep.run_one(rc, baseline=cnn_baseline) for rc in cfg.run_configs())
    assert ft["status"] == bf["status"] == "ok", (ft["error"], bf["error"])
    assert ft["finetune_epochs"] == 1 and 0.0 <= ft["finetune_accuracy"] <= 1.0
    assert bf["finetune_accuracy"] is None
    assert bf["bytes_ratio"] == 0.5
    # bfloat16 keeps 8 significant bits: logits SQNR in the 40-60 dB range, float16 far above
    assert 35.0 < bf["sqnr_db"] < 65.0
    assert ft["sqnr_db"] > bf["sqnr_db"] + 10.0


@pytest.mark.skipif(not hasattr(mpq, "quantize"), reason="mpq.quantize is not built yet")
@pytest.mark.parametrize(
    ("label", "max_ratio"), [("int8", 0.30), ("int8-wo", 0.30), ("int4", 0.2), ("int4-g32", 0.25)]
)
def test_quantized_variants(cnn_baseline, label, max_ratio):
    cfg = SweepConfig(models=[CNN], policies=[label], quick=True)
    rec = sweep.run_one(cfg.run_configs()[0], baseline=cnn_baseline)
    assert rec["status"] == "ok", rec["error"]
    assert rec["quantized_layers"] == 3
    assert rec["bytes_ratio"] <= max_ratio
    assert rec["sqnr_db"] > 10.0
