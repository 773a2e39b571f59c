"""mpq.training.qat: prepare -> train -> convert; converted outputs equal the QAT outputs."""

import copy

import pytest
import torch
from torch import nn

import mpq.quantization
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Flatten, Sequential
from mpq.quantization import QuantizationConfig
from mpq.training import from_torch, qat

MODES = [
    "int8",
    QuantizationConfig("int8", weight_only=True),
    "int4",
    "int4/-1",
    "int4/4",
    QuantizationConfig("int4/-1", weight_only=False),
]


def _ids(mode):
    return mode if isinstance(mode, str) else mode.name


def _model(policy):
    torch.manual_seed(0)
    model = Sequential(
        [
            Conv2D(6, 3, activation="relu", data_format="channels_first"),
            Flatten(),
            Dense(16, activation="gelu"),
            EinsumDense("ab,bc->ac", 5, bias_axes="c"),
        ],
        dtype=policy,
    )
    x = torch.randn(4, 3, 6, 6)
    model(x)
    return model, x


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("mode", MODES, ids=_ids)
def test_convert_reproduces_the_qat_outputs_bit_for_bit(mode, policy):
    model, x = _model(policy)
    report = qat.prepare(model, mode)
    assert len(report.layers) == 3
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):  # the float kernels move: convert must follow them
        opt.zero_grad()
        model(x).float().square().mean().backward()
        opt.step()
    y_train = model(x)
    model.eval()
    y_eval = model(x)
    assert torch.equal(y_train.detach(), y_eval)
    ptq = copy.deepcopy(model)  # the same float weights, quantized directly
    qat.convert(model)
    assert model.layers[0].quantization_mode == QuantizationConfig.get(mode).mode
    assert not qat.is_prepared(model.layers[0])
    assert torch.equal(model(x), y_eval)
    for layer in ptq.layers:  # a prepared copy converts like the original
        assert qat.is_prepared(layer) or isinstance(layer, Flatten)
    qat.convert(ptq)
    assert torch.equal(ptq(x), y_eval)


def test_a_deep_copy_converts_independently():
    model, x = _model("float32")
    qat.prepare(model, "int4")
    model.eval()
    y = model(x)
    clone = copy.deepcopy(model)
    qat.convert(clone)
    assert torch.equal(clone(x), y)
    assert torch.equal(model(x), y)  # the original is still prepared, its hooks intact
    assert all(qat.is_prepared(layer) for layer in (model.layers[0], model.layers[2]))
    qat.convert(model)
    assert torch.equal(model(x), y)
    assert not any(layer._forward_hooks for layer in model.layers)


def test_conv1d_channels_last_exact_too():
    torch.manual_seed(0)
    layer = Conv1D(4, 3, padding="causal")
    x = torch.randn(2, 7, 5)
    layer(x)
    qat.prepare(layer, "int4/-1")
    y = layer(x)
    qat.convert(layer)
    assert torch.equal(layer(x), y)


def test_weight_only_kernel_gradient_is_straight_through():
    torch.manual_seed(0)
    ref = Dense(3)
    x = torch.randn(5, 4)
    ref(x)
    layer = copy.deepcopy(ref)
    qat.prepare(layer, QuantizationConfig("int8", weight_only=True))
    ref(x).sum().backward()
    y = layer(x)
    y.sum().backward()
    # d sum(x @ fq(W)) / dW = x^T 1 whatever fq does: the STE passes it through unchanged.
    assert torch.equal(layer.kernel.grad, ref.kernel.grad)
    assert torch.equal(layer.bias.grad, ref.bias.grad)
    assert not torch.equal(y, ref(x))  # but the forward pass is quantized


def test_w8a8_gradients_flow_to_inputs_and_kernel():
    model, x = _model("float32")
    qat.prepare(model, "int8")
    x = x.clone().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for layer in (model.layers[0], model.layers[2], model.layers[3]):
        assert layer.kernel.grad.abs().sum() > 0


def _digits():
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0, dtype=torch.float32).reshape(-1, 8, 8, 1)
    y = torch.tensor(labels)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]


def _train(model, x, y, epochs, lr, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def _accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def digits_qat_vs_ptq(seed=0):
    """Float, post-training int4 and QAT int4 test accuracies of a narrow digits CNN.

    Harsh on purpose: int4 per output channel on a 4-filter conv and a 6-unit hidden layer
    (wider models lose < 1 point to int4 post-training quantization on digits, too little to
    test). Float: 8 epochs of Adam; QAT: 3 more epochs from the float weights.
    """
    xtr, ytr, xte, yte = _digits()
    torch.manual_seed(seed)
    model = Sequential(
        [Conv2D(4, 3, activation="relu"), Flatten(), Dense(6, activation="relu"), Dense(10)]
    )
    model(xtr[:1])
    _train(model, xtr, ytr, epochs=8, lr=1e-2, seed=seed)
    float_acc = _accuracy(model, xte, yte)
    ptq = copy.deepcopy(model)
    mpq.quantization.quantize(ptq, "int4/-1")
    ptq_acc = _accuracy(ptq, xte, yte)
    qat.prepare(model, "int4/-1")
    _train(model, xtr, ytr, epochs=3, lr=3e-3, seed=seed + 1)
    qat_acc = _accuracy(model, xte, yte)
    qat.convert(model)
    converted_acc = _accuracy(model, xte, yte)
    return float_acc, ptq_acc, qat_acc, converted_acc


def test_digits_qat_int4_recovers_what_post_training_int4_loses():
    # Two seeds, averaged: one run's accuracy on 397 test images moves by a point or two.
    runs = [digits_qat_vs_ptq(seed) for seed in (0, 1)]
    for _, _, qat_acc, converted_acc in runs:
        assert converted_acc == qat_acc
    float_acc, ptq_acc, qat_acc, _ = (sum(v) / len(runs) for v in zip(*runs, strict=True))
    assert ptq_acc < float_acc - 0.01, runs
    assert qat_acc > ptq_acc + 0.01, runs
    assert qat_acc >= float_acc - 0.01, runs


def test_prepare_a_converted_torch_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    model, _ = from_torch(net)
    report = qat.prepare(model, "int8")
    assert report.layers == ["0", "2"]
    x = torch.randn(4, 6)
    y = model(x)
    qat.convert(model)
    assert torch.equal(model(x), y)
    assert model[0].quantization_mode == "int8"


def test_skipped_layers_are_reported():
    model, _ = _model("float32")
    model.layers[0].quantize("int8")
    model.layers[2].enable_lora(2)
    report = qat.prepare(model, "int4", filter=lambda layer: not isinstance(layer, EinsumDense))
    assert report.layers == []
    skipped = report.skipped
    assert skipped[model.layers[0].path].startswith("already quantized (int8_from_float32)")
    assert skipped[model.layers[2].path].startswith("LoRA enabled")
    assert skipped[model.layers[3].path] == "filtered"
    assert qat.convert(model) is None
    model, _ = _model("float32")
    qat.prepare(model, "int8")
    again = qat.prepare(model, "int8")
    assert again.skipped[model.layers[2].path] == "already prepared (int8)"
    assert "already prepared" in str(again)


def test_errors():
    with pytest.raises(ValueError, match="Received: mode='float8'"):
        qat.prepare(Dense(2), "float8")
    with pytest.raises(ValueError, match="Received: mode='int3'"):
        qat.prepare(Dense(2), "int3")
    with pytest.raises(TypeError, match="Received: model of type list"):
        qat.prepare([], "int8")
    with pytest.raises(TypeError, match="Received: model of type str"):
        qat.convert("model")
    with pytest.raises(ValueError, match=r"not built yet.*Received: built=False"):
        qat.prepare(Sequential([Dense(2)]), "int8")
