"""LoRA on Dense / EinsumDense / Conv1D / Conv2D: Keras 3 semantics, saving, merge_lora."""

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
