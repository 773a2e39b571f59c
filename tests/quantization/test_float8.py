"""The "float8" mode: delayed scaling recurrence step by step, gradients in e5m2, state updated
by the layer in training only, any optimizer, conformance on every supported layer."""

from __future__ import annotations

import copy

import pytest
import torch

import mpq.quantization
from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Layer
from mpq.quantization import QuantizationConfig
from mpq.testing.layer_test import run_layer_test

F32 = torch.float32


def _div(a: float, b: float) -> torch.Tensor:
    """The float32 scale `a / b` (amax / fmt_max), as the quantizers compute it."""
    return torch.tensor(a, dtype=F32) / torch.tensor(b, dtype=F32)


def _state(layer):
    return {
        p: (getattr(layer, f"{p}_amax_history").tolist(), getattr(layer, f"{p}_scale").clone())
        for p in ("inputs", "kernel", "outputs_grad")
    }


def test_delayed_scaling_recurrence_three_steps_by_hand():
    # e4m3fn max 448, e5m2 max 57344, history length 2, input and gradient scales start at 1,
    # their histories at 0; the kernel's scale and history start from the kernel (amax 4).
    layer = Dense(2, use_bias=False)
    layer.build((None, 2))
    w = torch.tensor([[1.0, -2.0], [0.5, 4.0]])  # [K, N]; amax 4
    layer.kernel.assign(w)
    layer.quantize(QuantizationConfig("float8", amax_history_length=2))
    xs = [[[896.0, -10.0]], [[100.0, 3.0]], [[0.5, -7.0]]]
    gs = [[[1000.0, -3.0]], [[2.0, 0.5]], [[-40.0, 8.0]]]
    expected_states = [
        # (inputs history, inputs scale), (kernel ...), (outputs_grad ...) after step t
        (([896, 0], _div(896, 448)), ([4, 4], _div(4, 448)), ([1000, 0], _div(1000, 57344))),
        (([100, 896], _div(896, 448)), ([4, 4], _div(4, 448)), ([2, 1000], _div(1000, 57344))),
        (([7, 100], _div(100, 448)), ([4, 4], _div(4, 448)), ([40, 2], _div(40, 57344))),
    ]
    assert layer.kernel_amax_history.tolist() == [4.0, 0.0]
    assert torch.equal(layer.kernel_scale, _div(4, 448))
    scales = {"x": torch.tensor(1.0), "w": _div(4, 448)}
    for t, (x_list, g_list, want) in enumerate(zip(xs, gs, expected_states, strict=True)):
        x = torch.tensor(x_list, requires_grad=True)
        y = layer(x, training=True)
        # The output uses the scales of the steps before (delayed scaling).
        x8 = (x.detach() / scales["x"]).clamp(-448, 448).to(torch.float8_e4m3fn).float()
        w8 = (w / scales["w"]).clamp(-448, 448).to(torch.float8_e4m3fn).float()
        assert torch.equal(y.detach(), (x8 @ w8) * scales["x"] * scales["w"])
        if t == 0:
            assert x8.tolist() == [[448.0, -10.0]]  # 896 saturates to 448
            # w8 * (4 / 448) is w up to the float32 rounding of the scale (2**-24 relative)
            torch.testing.assert_close(
                y.detach(), torch.tensor([[443.0, -936.0]]), rtol=4 * 2.0**-24, atol=0.0
            )
        y.backward(torch.tensor(g_list))
        state = _state(layer)
        for prefix, (history, scale) in zip(
            ("inputs", "kernel", "outputs_grad"), want, strict=True
        ):
            assert state[prefix][0] == history, (t, prefix)
            assert torch.equal(state[prefix][1], scale), (t, prefix)
        if t == 0:
            # e5m2 gradient with scale 1: 1000 -> 1024; gradients through the fp8 operands.
            torch.testing.assert_close(
                x.grad,
                torch.tensor([[1024 * 1 + 6.0, 1024 * 0.5 - 12.0]]),
                rtol=4 * 2.0**-24,
                atol=0.0,
            )
            assert layer.kernel.grad.tolist() == [[448 * 1024.0, 448 * -3.0], [-10240.0, 30.0]]
        scales = {"x": state["inputs"][1], "w": state["kernel"][1]}


def test_training_false_updates_nothing():
    layer = Dense(3)
    layer.build((None, 4))
    layer.quantize("float8")
    before = [w.clone() for w in layer.non_trainable_weights]
    x = torch.randn(2, 4, requires_grad=True)
    layer(x, training=False).sum().backward()
    layer.eval()
    layer(x).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, layer.non_trainable_weights, strict=True))
    layer.train()
    layer(x).sum().backward()  # torch's train mode is the default `training`
    assert layer.inputs_amax_history[0] > 0 and layer.outputs_grad_amax_history[0] > 0


def test_any_torch_optimizer_trains_the_float_kernel():
    torch.manual_seed(0)
    layer = Dense(1)
    x = torch.randn(64, 4)
    target = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    layer(x)
    layer.quantize("float8")
    opt = torch.optim.SGD(layer.trainable_weights, lr=0.1)
    assert [w.name for w in layer.trainable_weights] == ["kernel", "bias"]
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = ((layer(x, training=True) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    # The scale is exactly the history's largest kernel amax over e4m3's max; that history
    # holds past (pre-step) kernels, hence only approximately the current kernel's amax.
    assert torch.equal(layer.kernel_scale, layer.kernel_amax_history.max() / 448)
    assert layer.kernel_scale.item() == pytest.approx(
        layer.kernel.abs().max().item() / 448, rel=0.2
    )


@pytest.mark.parametrize(
    ("cls", "kwargs", "shape"),
    [
        (Dense, {"units": 3}, (2, 4)),
        (
            EinsumDense,
            {"equation": "abc,cde->abde", "output_shape": (None, 2, 3), "bias_axes": "de"},
            (2, 3, 4),
        ),
        (EinsumDense, {"equation": "abc,bcd->abd", "output_shape": (3, 2)}, (2, 3, 4)),
        (Conv2D, {"filters": 3, "kernel_size": 2, "padding": "same"}, (2, 4, 4, 2)),
        (Conv1D, {"filters": 3, "kernel_size": 2, "data_format": "channels_first"}, (2, 2, 5)),
    ],
    ids=["dense", "einsum", "einsum_shared", "conv2d", "conv1d_channels_first"],
)
def test_run_layer_test_float8(cls, kwargs, shape):
    report = run_layer_test(
        cls, kwargs, shape, policies=("float32", "mixed_bfloat16"), quantize_modes=("float8",)
    )
    assert not report.skipped and len(report.checks) == 4


def _trained_float8_dense():
    """A float8 Dense after one real training step: no state is at its initial value."""
    torch.manual_seed(0)
    layer = Dense(3)
    layer.build((None, 4))
    layer.quantize(QuantizationConfig("float8", amax_history_length=4))
    x = torch.randn(5, 4, requires_grad=True)
    layer(x, training=True).backward(torch.randn(5, 3))
    layer.kernel.grad = layer.bias.grad = None
    return layer


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("how", ["autograd_grad", "backward"])
def test_stateless_call_backward_leaves_the_layer_untouched(how):
    layer = _trained_float8_dense()
    twin = copy.deepcopy(layer)
    before = [_bits(v) for v in layer.weights]
    tv = [v.detach().clone().requires_grad_(True) for v in layer.trainable_variables]
    ntv = [v.detach().clone() for v in layer.non_trainable_variables]
    given = [_bits(v) for v in ntv]
    x = torch.randn(6, 4) * 3
    g = torch.randn(6, 3) * 1000

    out, new_ntv = layer.stateless_call(tv, ntv, x, training=True)
    if how == "backward":
        out.backward(g)
        grads = [t.grad for t in tv]
    else:
        grads = torch.autograd.grad(out, tv, g)

    # The layer itself: every variable bit-identical, no gradient accumulated on it.
    assert [_bits(v) for v in layer.weights] == before
    assert layer.kernel.grad is None and layer.bias.grad is None
    # The given values are not modified either.
    assert [_bits(v) for v in ntv] == given
    # The returned values (the gradient statistics filled in by the backward pass) and the
    # gradients equal those of a real training step on a copy of the layer.
    twin(x, training=True).backward(g)
    names = [v.name for v in twin.non_trainable_variables]
    for name, v, s in zip(names, twin.non_trainable_variables, new_ntv, strict=True):
        assert _bits(v) == _bits(s), name
    assert _bits(twin.outputs_grad_scale) != given[names.index("outputs_grad_scale")]
    for v, gr in zip(twin.trainable_variables, grads, strict=True):
        assert torch.equal(v.grad, gr)


def test_stateless_call_training_false_updates_nothing_and_uses_the_given_state():
    layer = _trained_float8_dense()
    before = [_bits(v) for v in layer.weights]
    tv = [v.detach().clone().requires_grad_(True) for v in layer.trainable_variables]
    ntv = [v.detach().clone() for v in layer.non_trainable_variables]
    names = [v.name for v in layer.non_trainable_variables]
    # A different gradient scale than the layer's own: the backward pass must use this one.
    ntv[names.index("outputs_grad_scale")] = torch.tensor(0.5)
    x = torch.randn(6, 4)
    g = torch.randn(6, 3) * 100
    out, new_ntv = layer.stateless_call(tv, ntv, x, training=False)
    grads = torch.autograd.grad(out, tv, g)
    assert [_bits(v) for v in layer.weights] == before
    assert [_bits(a) for a in new_ntv] == [_bits(b) for b in ntv]
    holder = copy.deepcopy(layer)
    with torch.no_grad():
        holder.outputs_grad_scale.copy_(torch.tensor(0.5))
    holder(x, training=False).backward(g)
    for v, gr in zip(holder.trainable_variables, grads, strict=True):
        assert torch.equal(v.grad, gr)
    assert [_bits(v) for v in layer.weights] == before


class _Twice(Layer):
    """One float8 Dense called twice per step: two backward updates of the same statistics."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = Dense(4)

    def call(self, x):
        return self.inner(torch.tanh(self.inner(x)))


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (_Twice, (3, 4)),
        (lambda: Conv2D(2, 2, padding="same"), (1, 4, 4, 2)),
        (lambda: EinsumDense("abc,cd->abd", (None, 3)), (2, 3, 5)),
    ],
    ids=["dense_called_twice", "conv2d", "einsum"],
)
def test_stateless_call_backward_equals_a_real_step_on_a_copy(make, shape):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(*shape)
    model(x)
    mpq.quantization.quantize(model, "float8")
    model(x, training=True).sum().backward()
    for v in model.trainable_variables:
        v.grad = None
    twin = copy.deepcopy(model)
    before = [_bits(v) for v in model.weights]
    tv = [v.detach().clone().requires_grad_(True) for v in model.trainable_variables]
    ntv = [v.detach().clone() for v in model.non_trainable_variables]
    out, new_ntv = model.stateless_call(tv, ntv, 2 * x, training=True)
    g = torch.randn_like(out) * 50
    grads = torch.autograd.grad(out, tv, g)
    assert [_bits(v) for v in model.weights] == before
    twin(2 * x, training=True).backward(g)
    for v, s in zip(twin.non_trainable_variables, new_ntv, strict=True):
        assert _bits(v) == _bits(s), v.path
    for v, gr in zip(twin.trainable_variables, grads, strict=True):
        assert torch.equal(v.grad, gr), v.path


# --- scales are checked on every write (issue #12) -------------------------------------------

BAD_SCALES = [0.0, -1.0, float("nan"), float("inf")]
SCALE_NAMES = ["inputs_scale", "kernel_scale", "outputs_grad_scale"]


@pytest.mark.parametrize("bad", BAD_SCALES)
@pytest.mark.parametrize("name", SCALE_NAMES)
def test_float8_scales_must_be_finite_and_positive_through_set_weights_and_assign(name, bad):
    layer = Dense(3)
    layer.build((None, 4))
    layer.quantize("float8")
    weights = layer.get_weights()
    index = [w.name for w in layer.weights].index(name)
    before = getattr(layer, name).detach().clone()  # 1, or the kernel's amax / 448
    weights[index] = weights[index] * 0 + bad
    pattern = rf"Expected scales that are finite and > 0 to (set_weights into|assign) variable '.*/{name}'"
    with pytest.raises(ValueError, match=pattern):
        layer.set_weights(weights)
    with pytest.raises(ValueError, match=pattern):
        getattr(layer, name).assign(torch.tensor(bad))
    assert torch.equal(getattr(layer, name).detach(), before)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: Dense(12, input_dim=20), (5, 20)),
        (lambda: EinsumDense("abc,cde->abde", (3, 4, 6), bias_axes="de"), (2, 3, 5)),
        (lambda: Conv2D(4, 3, input_shape=(6, 6, 3)), (2, 6, 6, 3)),
    ],
)
def test_inference_without_gradients_equals_the_autograd_forward_bit_for_bit(make, shape):
    # Without gradients the kernel is quantized in its own layout and its codes transposed:
    # the same codes, then the same kernel call on the same layouts as the autograd path.
    torch.manual_seed(0)
    layer = make()
    layer.build((None, *shape[1:]))
    with torch.no_grad():
        layer.kernel.mul_(50.0)  # a kernel scale away from 1
    layer.quantize("float8")
    x = torch.randn(*shape) * 3
    with torch.no_grad():
        fast = layer(x, training=False)
    slow = layer(x.clone().requires_grad_(True), training=False)  # kernel trainable: autograd
    assert slow.requires_grad
    assert torch.equal(fast, slow.detach())
