"""LoRA on Dense / EinsumDense / Conv1D / Conv2D: Keras 3 semantics, saving, merge_lora."""

import json

import numpy as np
import pytest
import torch

from mpq import saving
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Sequential
from mpq.testing import assert_close, sqnr

CASES = {
    "dense": (lambda **kw: Dense(6, activation="relu", **kw), (5, 7)),
    "dense_linear": (lambda **kw: Dense(6, **kw), (3, 4, 7)),
    "einsum": (
        lambda **kw: EinsumDense("abc,cde->abde", (None, 3, 4), bias_axes="de", **kw),
        (2, 5, 7),
    ),
    "conv1d": (lambda **kw: Conv1D(6, 3, padding="causal", **kw), (2, 9, 4)),
    "conv2d": (lambda **kw: Conv2D(6, 3, padding="same", **kw), (2, 5, 5, 4)),
    "conv2d_nchw": (
        lambda **kw: Conv2D(6, (3, 2), data_format="channels_first", groups=2, **kw),
        (2, 4, 6, 5),
    ),
}


def _built(case, seed=0, **kw):
    make, shape = CASES[case]
    torch.manual_seed(seed)
    layer = make(**kw)
    x = torch.randn(shape)
    layer(x)
    return layer, x


def _reference_kernel(layer):
    a = layer.lora_kernel_a.detach().double()
    b = layer.lora_kernel_b.detach().double()
    ab = (a.reshape(-1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[-1])
    return layer.kernel.detach().double() + layer.lora_alpha / layer.lora_rank * ab


@pytest.mark.parametrize("case", sorted(CASES))
def test_enable_lora_freezes_kernel_and_adds_zero_update(case):
    layer, x = _built(case)
    before = layer(x)
    layer.enable_lora(2)
    k = layer.kernel
    assert not k.requires_grad
    a, b = layer.lora_kernel_a, layer.lora_kernel_b
    assert a.shape == (*k.shape[:-1], 2) and b.shape == (2, k.shape[-1])
    assert a.dtype == b.dtype == torch.float32 and a.requires_grad and b.requires_grad
    assert not b.detach().any() and a.detach().any()
    assert layer.lora_enabled and layer.lora_rank == 2 and layer.lora_alpha == 2
    assert torch.equal(layer(x), before)  # B = 0: the output is unchanged, bit for bit
    names = [w.name for w in layer.trainable_weights]
    assert "kernel" not in names and {"lora_kernel_a", "lora_kernel_b"} <= set(names)


@pytest.mark.parametrize("case", sorted(CASES))
def test_lora_output_is_the_layer_with_the_adapted_kernel(case):
    layer, x = _built(case)
    layer.enable_lora(3, lora_alpha=6.0)
    with torch.no_grad():
        layer.lora_kernel_b.normal_()
    ref = CASES[case][0]()
    ref(x)
    ref.set_weights(layer.get_weights()[:2] if layer.bias is not None else layer.get_weights()[:1])
    with torch.no_grad():
        ref.kernel.copy_(_reference_kernel(layer).float())
    # float32 math in both; the adapted kernel is formed in a different order (1 rounding).
    assert_close(layer(x), ref(x), "float32", k=int(np.prod(layer.kernel.shape[:-1])))


@pytest.mark.parametrize("case", ["dense", "conv2d"])
def test_training_updates_only_a_b_and_bias(case):
    layer, x = _built(case)
    layer.enable_lora(2)
    frozen = layer.kernel.detach().clone()
    opt = torch.optim.SGD(layer.trainable_weights, lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
    assert torch.equal(layer.kernel.detach(), frozen)
    assert layer.kernel.grad is None
    assert layer.lora_kernel_b.detach().any()


def test_lora_under_mixed_bfloat16_keeps_float32_factors_with_gradients():
    layer, x = _built("dense", dtype="mixed_bfloat16")
    layer.enable_lora(4)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.lora_kernel_a.grad.dtype == torch.float32
    assert layer.lora_kernel_b.grad.abs().sum() > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_config_and_saving_keep_a_and_b_exactly(case, tmp_path):
    layer, x = _built(case)
    layer.enable_lora(2, lora_alpha=3)
    with torch.no_grad():
        layer.lora_kernel_b.normal_()
    config = layer.get_config()
    assert config["lora_rank"] == 2 and config["lora_alpha"] == 3
    clone = type(layer).from_config(config)
    clone(x)
    assert clone.lora_enabled and not clone.kernel.requires_grad
    clone.set_weights(layer.get_weights())
    assert torch.equal(clone(x), layer(x))
    model = Sequential([layer])
    path = tmp_path / "m.safetensors"
    saving.save(model, path)
    loaded = saving.load(path)
    inner = loaded.layers[0]
    assert inner.lora_enabled
    for name in ("kernel", "lora_kernel_a", "lora_kernel_b"):
        assert torch.equal(getattr(inner, name).detach(), getattr(layer, name).detach())
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("case", sorted(CASES))
def test_merge_lora_float_is_exact_under_float32(case):
    layer, x = _built(case)
    layer.enable_lora(2)
    with torch.no_grad():
        layer.lora_kernel_b.normal_()
    before = layer(x)
    layer.merge_lora()
    assert not layer.lora_enabled and layer.kernel.requires_grad
    assert "lora_kernel_a" not in dict(layer.named_parameters())
    # call forms kernel + delta in float32 exactly like the merge does: same bits.
    assert torch.equal(layer(x), before)
    assert layer.get_config()["lora_rank"] is None


def test_merge_lora_keeps_a_non_trainable_layer_frozen():
    layer, _ = _built("dense")
    layer.enable_lora(2)
    layer.trainable = False
    layer.merge_lora()
    assert not layer.kernel.requires_grad


def test_lora_errors():
    with pytest.raises(ValueError, match="not built"):
        Dense(2).enable_lora(2)
    layer, _ = _built("dense")
    for bad in (0, -1, 2.0, True, "2"):
        with pytest.raises(ValueError, match=f"Received: rank={bad!r}"):
            layer.enable_lora(bad)
    with pytest.raises(ValueError, match=r"Received: lora_alpha=0 \(of type int\)"):
        layer.enable_lora(2, lora_alpha=0)
    with pytest.raises(ValueError, match="LoRA is not enabled"):
        layer.merge_lora()
    layer.enable_lora(2)
    with pytest.raises(ValueError, match=r"already enabled.*Received: rank=3"):
        layer.enable_lora(3)
    constrained = Dense(2, kernel_constraint="non_neg")
    constrained.build((None, 3))
    with pytest.raises(ValueError, match="kernel_constraint="):
        constrained.enable_lora(2)
    with pytest.raises(ValueError, match=r"Received: lora_rank=-2 \(of type int\)"):
        Conv2D(2, 3, lora_rank=-2)
    with pytest.raises(ValueError, match=r"Received: lora_alpha='a'"):
        EinsumDense("ab,bc->ac", 3, lora_alpha="a")


# ----------------------------------------------------------------------------- quantized
QMODES = ["int8", "int4", "int4/-1", "float8"]
QCASES = ["dense_linear", "einsum", "conv2d_nchw"]


def _quantized_lora(case, mode, order):
    import mpq.quantization  # noqa: F401  (registers the modes)

    layer, x = _built(case)
    if order == "lora_first":
        layer.enable_lora(2)
        layer.quantize(mode)
    else:
        layer.quantize(mode)
        layer.enable_lora(2)
    return layer, x


def _linear_term(layer, x):
    """The LoRA term the layer should add: op(x, scaling * A @ B) in float64."""
    a = layer.lora_kernel_a.detach().double()
    b = layer.lora_kernel_b.detach().double()
    delta = (a.reshape(-1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[-1])
    return layer._linear(x.double(), delta * (layer.lora_alpha / layer.lora_rank))


@pytest.mark.parametrize("order", ["lora_first", "quantize_first"])
@pytest.mark.parametrize("mode", QMODES)
@pytest.mark.parametrize("case", QCASES)
def test_lora_on_quantized_layers(case, mode, order):
    layer, x = _quantized_lora(case, mode, order)
    layer.eval()
    assert layer.quantization_mode == mode.split("/")[0] and layer.lora_enabled
    a, b = layer.lora_kernel_a, layer.lora_kernel_b
    assert a.dtype == b.dtype == torch.float32 and a.requires_grad and b.requires_grad
    assert not any(
        w.requires_grad
        for w in layer.weights
        if w.name not in ("bias", "lora_kernel_a", "lora_kernel_b")
    )
    y0 = layer(x)
    with torch.no_grad():
        b.normal_(std=0.1)
    assert not torch.equal(layer(x), y0)
    # B = 0 adds exactly nothing; then the output moves by the LoRA term (before activation:
    # these cases have none), computed on the float input path.
    layer.lora_kernel_b.data.zero_()
    assert torch.equal(layer(x), y0)
    with torch.no_grad():
        b.normal_(std=0.1, generator=torch.Generator().manual_seed(0))
    y1 = layer(x)
    expected = y0.double() + _linear_term(layer, x)
    assert_close(y1, expected, "float32", k=int(np.prod(a.shape[:-1])))
    layer.train()
    layer(x).square().sum().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_lora_on_dense_with_activation_is_added_before_it():
    import mpq.quantization  # noqa: F401

    layer, x = _built("dense")  # relu
    layer.quantize("int8")
    layer.eval()
    with torch.no_grad():
        pre = layer.activation  # identity run: the same layer without its activation
    plain = Dense(6)
    plain(x)
    plain.quantize("int8")
    plain.set_weights([w for w in layer.get_weights()])
    layer.enable_lora(2)
    plain.enable_lora(2)
    with torch.no_grad():
        layer.lora_kernel_a.copy_(plain.lora_kernel_a)
        layer.lora_kernel_b.normal_()
        plain.lora_kernel_b.copy_(layer.lora_kernel_b)
    assert torch.equal(layer(x), pre(plain(x)))


@pytest.mark.parametrize("mode", QMODES)
def test_quantized_lora_saves_and_loads_exactly(mode, tmp_path):
    import mpq.quantization  # noqa: F401

    make, shape = CASES["conv2d"]
    torch.manual_seed(0)
    model = Sequential([make()])
    x = torch.randn(shape)
    model(x)
    layer = model.layers[0]
    layer.quantize(mode)
    layer.enable_lora(2)
    model.eval()
    with torch.no_grad():
        layer.lora_kernel_b.normal_(std=0.1)
    path = tmp_path / "q.safetensors"
    saving.save(model, path)
    loaded = saving.load(path)
    inner = loaded.layers[0]
    assert inner.lora_enabled and inner.quantization_mode == mode.split("/")[0]
    for w_loaded, w in zip(inner.weights, layer.weights, strict=True):
        assert w_loaded.name == w.name and torch.equal(w_loaded.detach(), w.detach())
    loaded.eval()
    assert torch.equal(loaded(x), model(x))
    clone = type(layer).from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    clone.eval()
    assert torch.equal(clone(x), layer(x))


# merge_lora on a quantized layer requantizes: SQNR of the merged layer's output against the
# LoRA layer's (measured: int8 ~46 dB, int4 ~23 dB, float8 ~29 dB on these shapes).
MERGE_FLOORS = {"int8": 38.0, "int4": 18.0, "int4/-1": 18.0, "float8": 24.0}


@pytest.mark.parametrize("mode", QMODES)
@pytest.mark.parametrize("case", QCASES)
def test_merge_lora_on_quantized_layers_requantizes(case, mode):
    layer, x = _quantized_lora(case, mode, "quantize_first")
    with torch.no_grad():
        layer.lora_kernel_b.normal_(std=0.1, generator=torch.Generator().manual_seed(1))
    layer.train()
    layer(x)  # float8: one training step records amaxes
    layer.eval()
    before = layer(x)
    names = [w.name for w in layer.weights]
    layer.merge_lora()
    assert not layer.lora_enabled
    assert [w.name for w in layer.weights] == [
        n for n in names if n not in ("lora_kernel_a", "lora_kernel_b")
    ]
    after = layer(x)
    assert sqnr(before, after) > MERGE_FLOORS[mode]
    assert layer.quantization_mode == mode.split("/")[0]


@pytest.mark.parametrize(
    ("cls", "kwargs", "shape"),
    [
        (Dense, {"units": 3, "lora_rank": 2}, (2, 4)),
        (Conv2D, {"filters": 3, "kernel_size": 2, "lora_rank": 2, "lora_alpha": 4.0}, (2, 5, 5, 3)),
        (EinsumDense, {"equation": "ab,bc->ac", "output_shape": 3, "lora_rank": 2}, (2, 4)),
    ],
)
def test_conformance_harness_with_lora_in_every_mode(cls, kwargs, shape):
    import mpq.quantization  # noqa: F401
    from mpq.testing import run_layer_test

    report = run_layer_test(
        cls,
        kwargs,
        input_shape=shape,
        policies=["float32", "mixed_bfloat16"],
        quantize_modes=["int8", "int4", "float8"],
    )
    assert len(report.checks) == 8 and not report.skipped


def test_lora_factors_follow_the_layer_device():
    # No GPU in CI: the meta device stands in for "not the CPU".
    layer, _ = _built("dense")
    layer.to("meta")
    layer.enable_lora(2)
    assert layer.lora_kernel_a.device.type == layer.lora_kernel_b.device.type == "meta"


# ----------------------------------------------------------------------------- Embedding
# Keras 3.15 `Embedding.enable_lora(rank, lora_alpha=None, a_initializer="he_uniform",
# b_initializer="zeros")`: `lora_embeddings_a` (input_dim, rank), `lora_embeddings_b`
# (rank, output_dim), output `embeddings[ids] + (lora_alpha / rank) * (A @ B)[ids]`.
EMB_MODES = [None, "int8", "int4", "int4/-1", "float8"]


def _embedding(mode=None, order="quantize_first", rank=3, alpha=None, seed=0, **kw):
    import mpq.quantization  # noqa: F401  (registers the modes)
    from mpq.layers import Embedding

    torch.manual_seed(seed)
    layer = Embedding(40, 16, **kw)
    ids = torch.randint(0, 40, (4, 7))
    layer(ids)
    if order == "lora_first":
        layer.enable_lora(rank, lora_alpha=alpha)
    if mode is not None:
        layer.quantize(mode)
    if order != "lora_first":
        layer.enable_lora(rank, lora_alpha=alpha)
    return layer, ids


def _embedding_lora_rows(layer, ids):
    """scaling * A[ids] @ B in float64 (the oracle of the LoRA term)."""
    a = layer.lora_embeddings_a.detach().double()
    b = layer.lora_embeddings_b.detach().double()
    return a[ids] @ b * (layer.lora_alpha / layer.lora_rank)


def test_embedding_enable_lora_as_in_keras():
    layer, ids = _embedding(rank=3)
    names = [w.name for w in layer.trainable_weights]
    assert names == ["lora_embeddings_a", "lora_embeddings_b"]
    a, b = layer.lora_embeddings_a, layer.lora_embeddings_b
    assert a.shape == (40, 3) and b.shape == (3, 16)
    assert a.dtype == b.dtype == torch.float32 and a.detach().any() and not b.detach().any()
    assert not layer.embeddings.requires_grad
    assert layer.lora_enabled and layer.lora_rank == 3 and layer.lora_alpha == 3
    # B = 0: the lookup is the table's rows, bit for bit
    assert torch.equal(layer(ids), layer.embeddings.detach()[ids])
    config = layer.get_config()
    assert config["lora_rank"] == 3 and config["lora_alpha"] == 3


@pytest.mark.parametrize("policy", ["float32", "float64", "mixed_bfloat16", "float16"])
def test_embedding_lora_float_is_gather_plus_low_rank_rows(policy):
    layer, ids = _embedding(rank=4, alpha=6.0, dtype=policy)
    with torch.no_grad():
        layer.lora_embeddings_b.normal_()
    y = layer(ids)
    assert y.dtype == getattr(torch, layer.compute_dtype)
    assert layer.lora_embeddings_a.dtype == torch.float32
    expected = layer.embeddings.detach().double()[ids] + _embedding_lora_rows(layer, ids)
    # a float32 sum of `rank` products, added to the row in max(variable dtype, float32),
    # rounded once to the compute dtype
    fmt = "float32" if policy in ("float32", "float64") else layer.compute_dtype
    assert_close(y, expected, fmt, k=4)


def test_embedding_lora_training_updates_only_the_factors():
    layer, ids = _embedding(rank=2)
    table = layer.embeddings.detach().clone()
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        layer(ids).square().mean().backward()
        opt.step()
    assert layer.embeddings.grad is None and torch.equal(layer.embeddings.detach(), table)
    assert layer.lora_embeddings_b.detach().any()
    # rows that were never looked up get no gradient in A
    unused = sorted(set(range(40)) - set(ids.flatten().tolist()))
    assert unused and not layer.lora_embeddings_a.grad[unused].any()


def test_embedding_lora_regularizes_the_factors_as_keras():
    # Keras 3.15 passes `embeddings_regularizer` to A and B; the frozen table adds no loss.
    layer, ids = _embedding(rank=2, embeddings_regularizer="l2")
    layer(ids)
    a, b = layer.lora_embeddings_a.detach(), layer.lora_embeddings_b.detach()
    expected = 0.01 * (a.double().square().sum() + b.double().square().sum())
    assert len(layer.losses) == 2
    assert_close(
        sum(float(x.detach()) for x in layer.losses), float(expected), "float32", k=a.numel()
    )


@pytest.mark.parametrize("mode", EMB_MODES)
def test_embedding_lora_config_state_dict_and_saving_round_trip(mode, tmp_path):
    from mpq.layers import Embedding

    layer, ids = _embedding(mode, rank=2, alpha=3)
    with torch.no_grad():
        layer.lora_embeddings_b.normal_()
    config = layer.get_config()
    assert config["lora_rank"] == 2 and config["lora_alpha"] == 3
    clone = Embedding.from_config(config)
    clone(ids)
    assert clone.lora_enabled and [w.name for w in clone.weights] == [w.name for w in layer.weights]
    clone.set_weights(layer.get_weights())
    assert torch.equal(clone(ids), layer(ids))
    state = layer.state_dict()
    assert {"lora_embeddings_a", "lora_embeddings_b"} <= set(state)
    twin = Embedding.from_config(config)
    twin(ids)
    twin.load_state_dict(state)
    assert torch.equal(twin(ids), layer(ids))
    model = Sequential([layer])
    path = tmp_path / "e.safetensors"
    saving.save(model, path)
    inner = saving.load(path).layers[0]
    assert inner.lora_enabled and inner.quantization_mode == (mode and mode.split("/")[0])
    for w_loaded, w in zip(inner.weights, layer.weights, strict=True):
        assert w_loaded.name == w.name and torch.equal(w_loaded.detach(), w.detach())
    assert torch.equal(inner(ids), layer(ids))


# SQNR of a quantized LoRA Embedding against the float LoRA Embedding with the same table and
# factors (the table's quantization error only). Measured on these shapes (2-core AMD EPYC):
# int8 52.4 dB, int4 28.5 dB (one asymmetric group per 16-wide row), int4/-1 27.2 dB,
# float8 35.6 dB; the floors leave about 6 dB.
EMB_QUANT_FLOORS = {"int8": 46.0, "int4": 22.0, "int4/-1": 21.0, "float8": 30.0}


@pytest.mark.parametrize("order", ["lora_first", "quantize_first"])
@pytest.mark.parametrize("mode", EMB_MODES[1:])
def test_embedding_lora_on_quantized_tables(mode, order):
    layer, ids = _embedding(mode, order, rank=3)
    float_layer, _ = _embedding(None, order, rank=3)
    assert layer.quantization_mode == mode.split("/")[0]
    assert [w.name for w in layer.trainable_weights] == ["lora_embeddings_a", "lora_embeddings_b"]
    y0 = layer(ids)
    with torch.no_grad():
        layer.lora_embeddings_b.normal_(std=0.1, generator=torch.Generator().manual_seed(0))
        float_layer.lora_embeddings_a.copy_(layer.lora_embeddings_a)
        float_layer.lora_embeddings_b.copy_(layer.lora_embeddings_b)
    y1 = layer(ids)
    # the float32 dequantized rows (y0, exact: no LoRA term) plus the float32 LoRA rows
    assert_close(y1, y0.double() + _embedding_lora_rows(layer, ids), "float32", k=3)
    assert sqnr(float_layer(ids), y1) > EMB_QUANT_FLOORS[mode]
    y1.square().sum().backward()
    assert layer.lora_embeddings_b.grad.abs().sum() > 0
    assert layer.lora_embeddings_a.grad.abs().sum() > 0


def test_embedding_merge_lora_float():
    layer, ids = _embedding(rank=2)
    with torch.no_grad():
        layer.lora_embeddings_b.normal_()
    before = layer(ids)
    expected = layer.embeddings.detach().double() + (
        layer.lora_embeddings_a.detach().double() @ layer.lora_embeddings_b.detach().double()
    )
    layer.merge_lora()
    assert not layer.lora_enabled and layer.embeddings.requires_grad
    assert [w.name for w in layer.weights] == ["embeddings"]
    assert layer.get_config()["lora_rank"] is None
    # the merged table: one float32 rounding of the float64 sum (A @ B of length 2)
    assert_close(layer.embeddings, expected, "float32", k=2)
    assert_close(layer(ids), before.double(), "float32", k=2)


# merge_lora requantizes the table: SQNR of the merged layer's lookups against the LoRA layer's
# (measured on these shapes: int8 47.7 dB, int4 23.4 dB, int4/-1 22.3 dB, float8 32.6 dB).
EMB_MERGE_FLOORS = {"int8": 42.0, "int4": 18.0, "int4/-1": 17.0, "float8": 27.0}


@pytest.mark.parametrize("mode", EMB_MODES[1:])
def test_embedding_merge_lora_on_quantized_tables_requantizes(mode):
    layer, ids = _embedding(mode, rank=2)
    with torch.no_grad():
        layer.lora_embeddings_b.normal_(std=0.05, generator=torch.Generator().manual_seed(1))
    before = layer(ids)
    names = [w.name for w in layer.weights]
    layer.merge_lora()
    assert not layer.lora_enabled and layer.quantization_mode == mode.split("/")[0]
    assert [w.name for w in layer.weights] == [n for n in names if not n.startswith("lora_")]
    assert not any(w.requires_grad for w in layer.weights)
    assert sqnr(before, layer(ids)) > EMB_MERGE_FLOORS[mode]


# mpq.quantize of Embedding + Dense, both with LoRA: SQNR against the float model (measured:
# int8 44.2 dB, int4 23.2 dB, float8 28.8 dB).
MODEL_FLOORS = {"int8": 38.0, "int4": 18.0, "float8": 23.0}


@pytest.mark.parametrize("mode", sorted(MODEL_FLOORS))
def test_model_quantize_keeps_a_lora_embedding(mode):
    import mpq
    from mpq.layers import Embedding

    torch.manual_seed(0)
    model = Sequential([Embedding(30, 8, lora_rank=2), Dense(4, lora_rank=2)])
    ids = torch.randint(0, 30, (3, 5))
    model(ids)
    emb = model.layers[0]
    with torch.no_grad():
        emb.lora_embeddings_b.normal_(std=0.1)
    a, b = emb.lora_embeddings_a.detach().clone(), emb.lora_embeddings_b.detach().clone()
    before = model(ids)
    mpq.quantize(model, mode)
    assert emb.quantization_mode == mode and emb.lora_enabled
    assert torch.equal(emb.lora_embeddings_a.detach(), a)
    assert torch.equal(emb.lora_embeddings_b.detach(), b)
    assert model.layers[1].quantization_mode == mode and model.layers[1].lora_enabled
    assert sqnr(before, model(ids)) > MODEL_FLOORS[mode]


def test_embedding_lora_errors():
    from mpq.layers import Embedding

    with pytest.raises(ValueError, match=r"not built yet\. .*Received: built=False"):
        Embedding(4, 2).enable_lora(2)
    constrained = Embedding(4, 2, embeddings_constraint="non_neg")
    constrained.build()
    with pytest.raises(
        ValueError,
        match=r"LoRA is incompatible with embeddings constraints .*"
        r"Received: embeddings_constraint=",
    ):
        constrained.enable_lora(2)
    with pytest.raises(ValueError, match=r"Received: lora_rank=0 \(of type int\)"):
        Embedding(4, 2, lora_rank=0)
    with pytest.raises(ValueError, match=r"Received: lora_alpha=-1 \(of type int\)"):
        Embedding(4, 2, lora_alpha=-1)
    layer, _ = _embedding(rank=2)
    with pytest.raises(ValueError, match=r"already enabled.*Received: rank=2"):
        layer.enable_lora(2)
    layer.merge_lora()
    with pytest.raises(ValueError, match=r"LoRA is not enabled\. Received: lora_enabled=False"):
        layer.merge_lora()


# ----------------------------------------------------------------------------- live Keras
# Keras 3.15's `quantize` calls `np.array` on torch tensors (numpy 2 warns about `copy`).
_KERAS_QUANTIZE_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def _keras_set(variable, value):
    variable.assign(np.asarray(value, dtype=np.float32))


def _kn(variable):
    """A Keras (torch backend) variable or output as numpy (its torch value, detached)."""
    value = getattr(variable, "value", variable)
    return value.detach().cpu().numpy()


def test_embedding_lora_matches_keras_float_and_config():
    from mpq.layers import Embedding
    from tests._keras import import_keras

    keras = import_keras()
    rng = np.random.default_rng(0)
    ke = keras.layers.Embedding(20, 8, embeddings_regularizer="l2")
    ke.build()
    ke.enable_lora(3, lora_alpha=6)
    _keras_set(ke.lora_embeddings_b, rng.standard_normal((3, 8)))
    ids = rng.integers(0, 20, (3, 5))
    # Keras' config (lora_rank, lora_alpha, quantization_config) builds the same layer in mpq
    layer = Embedding.from_config(ke.get_config())
    layer.build()
    assert layer.lora_enabled and layer.lora_rank == 3 and layer.lora_alpha == 6
    assert [w.name for w in layer.weights] == [w.name for w in ke.weights]
    layer.set_weights([_kn(w) for w in ke.weights])
    expected = layer.embeddings.detach().double()[ids] + _embedding_lora_rows(layer, ids)
    y, ky = layer(torch.tensor(ids)), torch.as_tensor(_kn(ke(ids)))
    assert_close(y, expected, "float32", k=3)
    assert_close(ky, expected, "float32", k=3)  # Keras forms A @ B for the whole table
    assert len(layer.losses) == len(ke.losses) == 2


@_KERAS_QUANTIZE_WARNING
def test_embedding_lora_matches_keras_int8():
    from mpq.layers import Embedding
    from tests._keras import import_keras

    keras = import_keras()
    rng = np.random.default_rng(1)
    ke = keras.layers.Embedding(20, 8)
    ke.build()
    layer = Embedding(20, 8)
    layer.build()
    layer.set_weights([_kn(ke.embeddings)])
    ke.quantize("int8")
    layer.quantize("int8")
    ke.enable_lora(2)
    layer.enable_lora(2)
    _keras_set(ke.lora_embeddings_a, 0.1 * rng.standard_normal((20, 2)))
    _keras_set(ke.lora_embeddings_b, rng.standard_normal((2, 8)))
    with torch.no_grad():
        layer.lora_embeddings_a.copy_(torch.tensor(_kn(ke.lora_embeddings_a)))
        layer.lora_embeddings_b.copy_(torch.tensor(_kn(ke.lora_embeddings_b)))
    # the same int8 codes (Keras stores 1 / scale)
    assert np.array_equal(layer.embeddings.detach().numpy(), _kn(ke._embeddings))
    ids = rng.integers(0, 20, (3, 5))
    ky = torch.as_tensor(_kn(ke(ids)))
    # both: dequantized row (one rounding each way of the scale) + a length-2 float32 sum
    assert_close(layer(torch.tensor(ids)), ky.double(), "float32", k=2)


@_KERAS_QUANTIZE_WARNING
@pytest.mark.parametrize("mode", [None, "int8"])
def test_einsum_dense_lora_matches_keras(mode):
    import mpq.quantization  # noqa: F401
    from tests._keras import import_keras

    keras = import_keras()
    rng = np.random.default_rng(2)
    kwargs = {"equation": "abc,cde->abde", "output_shape": (None, 3, 4), "bias_axes": "de"}
    ke = keras.layers.EinsumDense(**kwargs)
    x = rng.standard_normal((2, 5, 7)).astype(np.float32)
    ke(x)
    layer = EinsumDense(**kwargs)
    layer(torch.tensor(x))
    layer.set_weights([_kn(w) for w in ke.weights])
    if mode is not None:
        ke.quantize(mode)
        layer.quantize(mode)
    ke.enable_lora(2, lora_alpha=3)
    layer.enable_lora(2, lora_alpha=3)
    assert [w.name for w in layer.trainable_weights] == [w.name for w in ke.trainable_weights]
    assert layer.lora_kernel_a.shape == tuple(ke.lora_kernel_a.shape) == (7, 3, 2)
    assert layer.lora_kernel_b.shape == tuple(ke.lora_kernel_b.shape) == (2, 4)
    _keras_set(ke.lora_kernel_a, 0.3 * rng.standard_normal((7, 3, 2)))
    _keras_set(ke.lora_kernel_b, rng.standard_normal((2, 4)))
    with torch.no_grad():
        layer.lora_kernel_a.copy_(torch.tensor(_kn(ke.lora_kernel_a)))
        layer.lora_kernel_b.copy_(torch.tensor(_kn(ke.lora_kernel_b)))
    layer.eval()
    y = layer(torch.tensor(x))
    ky = torch.as_tensor(_kn(ke(x)))
    if mode is None:
        expected = torch.einsum("abc,cde->abde", torch.tensor(x).double(), _reference_kernel(layer))
        expected = expected + layer.bias.detach().double()
        assert_close(y, expected, "float32", k=7)
        assert_close(ky, expected, "float32", k=7)
    else:
        # the same int8 kernel codes and per-token int8 inputs on both sides (measured: 138 dB
        # apart): Keras' output within float32 rounding of a length-7 int32 dot product
        assert_close(y, ky.double(), "float32", k=7)
    # as a .keras file holds it (JSON: Keras' tuples become lists)
    config = json.loads(json.dumps(ke.get_config()))
    clone = EinsumDense.from_config(config)
    clone(torch.tensor(x))
    assert clone.lora_enabled and clone.lora_rank == 2 and clone.lora_alpha == 3


@_KERAS_QUANTIZE_WARNING
@pytest.mark.parametrize("mode", [None, "int8"])
def test_keras_file_with_lora_loads_as_keras_loads_it(mode, tmp_path):
    """Keras 3.15 saves a LoRA layer with A @ B merged into its kernel / table (requantized
    when quantized) and no factors; its load enables LoRA from the config and zeros both
    factors. mpq loads the file the same way: Keras' reloaded outputs within float32 rounding."""
    from tests._keras import import_keras

    pytest.importorskip("h5py")
    keras = import_keras()
    rng = np.random.default_rng(3)
    model = keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(20, 8),
            keras.layers.EinsumDense("abc,cd->abd", (None, 4), bias_axes="d"),
        ]
    )
    ids = rng.integers(0, 20, (3, 5)).astype(np.int32)
    model(ids)
    for layer in model.layers:
        if mode is not None:
            layer.quantize(mode)
        layer.enable_lora(2)
    _keras_set(model.layers[0].lora_embeddings_b, rng.standard_normal((2, 8)))
    _keras_set(model.layers[1].lora_kernel_b, rng.standard_normal((2, 4)))
    path = str(tmp_path / "lora.keras")
    model.save(path)
    expected = torch.as_tensor(_kn(keras.saving.load_model(path)(ids))).double()
    loaded = saving.load(path)
    emb, dense = loaded.layers
    assert emb.lora_enabled and dense.lora_enabled and emb.quantization_mode == mode
    for layer in (emb, dense):
        for name in layer._lora_names():
            assert not getattr(layer, name).detach().any()
    assert_close(loaded(torch.tensor(ids)), expected, "float32", k=8)


def test_lora_factors_take_the_kernel_regularizer_as_keras():
    """Keras 3.15's Dense / EinsumDense `enable_lora` pass `kernel_regularizer` to A and B; a
    frozen kernel adds no loss."""
    from tests._keras import import_keras

    keras = import_keras()
    ke = keras.layers.Dense(3, kernel_regularizer="l2")
    ke.build((None, 4))
    ke.enable_lora(2)
    ke(np.ones((1, 4), np.float32))
    layer = Dense(3, kernel_regularizer="l2", lora_rank=2)
    layer(torch.ones(1, 4))
    a, b = layer.lora_kernel_a.detach().double(), layer.lora_kernel_b.detach().double()
    assert len(layer.losses) == len(ke.losses) == 2
    total = sum(float(x.detach()) for x in layer.losses)
    assert_close(total, 0.01 * float(a.square().sum() + b.square().sum()), "float32", k=a.numel())


@pytest.mark.parametrize("lora_alpha", [None, 4.0])
def test_conformance_harness_with_lora_embedding_in_every_mode(lora_alpha):
    import mpq.quantization  # noqa: F401
    from mpq.layers import Embedding
    from mpq.testing import run_layer_test

    report = run_layer_test(
        Embedding,
        {"input_dim": 5, "output_dim": 3, "lora_rank": 2, "lora_alpha": lora_alpha},
        (2, 4),
        input_dtype="int64",
        input_range=(0, 5),
        policies=["float32", "mixed_bfloat16"],
        quantize_modes=["int8", "int4", "float8"],
        expected_num_trainable_weights=2,
    )
    assert not report.skipped
