"""mpq.layers.rematerialization: RematScope, remat, Layer.rematerialized_call (activation checkpointing)."""

from __future__ import annotations

import pytest
import torch

from mpq.layers import BatchNormalization, Dense, Dropout, Layer, RematScope, Sequential, remat


class Counting(Layer):
    """A weighted layer that counts how often its call runs (forward and recomputations)."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.runs = 0

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform")

    def call(self, x):
        self.runs += 1
        return torch.tanh(x @ self.w)


def _model(scope=None):
    def make():
        return Sequential(
            [
                Counting(8, name="c1"),
                BatchNormalization(),
                Dropout(0.5, seed=3),
                Counting(8, name="c2"),
                Dense(2, activation="relu"),
            ]
        )

    if scope is None:
        return make()
    with scope:
        return make()


def _grads(model, x):
    model.train()
    loss = (model(x) ** 2).sum()
    loss.backward()
    return [p.grad for p in model.trainable_weights]


def test_full_remat_recomputes_activations_with_equal_gradients():
    """Keras 3 `RematScope`: "Rematerialization (gradient checkpointing) trades memory for
    computation by recomputing intermediate activations during the backward pass" and "This
    should be used when initializing the layer"."""
    torch.manual_seed(0)
    plain = _model()
    x = torch.randn(6, 5)
    plain(x)  # build
    remat_model = _model(RematScope(mode="full"))
    remat_model(x)
    remat_model.set_weights(plain.get_weights())
    for layer in (plain, remat_model):
        for c in (layer.layers[0], layer.layers[3]):
            c.runs = 0
    g_plain = _grads(plain, x)
    g_remat = _grads(remat_model, x)
    # Same ops on the same data in the same layout: the gradients are bit-identical.
    assert all(torch.equal(a, b) for a, b in zip(g_plain, g_remat, strict=True))
    assert plain.layers[0].runs == 1
    # The model and each layer are rematerialized: forward, the model's recomputation, and each
    # layer's own recomputation inside it.
    assert remat_model.layers[0].runs >= 2 and remat_model.layers[3].runs >= 2
    # Side effects happen once: BatchNormalization moving statistics, the seed generator.
    bn_p, bn_r = plain.layers[1], remat_model.layers[1]
    assert torch.equal(bn_p.moving_mean, bn_r.moving_mean)
    assert torch.equal(bn_p.moving_variance, bn_r.moving_variance)
    assert torch.equal(
        remat_model.layers[2].seed_generator.state, plain.layers[2].seed_generator.state
    )


def test_list_of_layers_and_larger_than_select_layers():
    """Keras 3 `RematScope`: "`list_of_layers`: Apply rematerialization to a specific list of
    layer names", "`larger_than`: Apply rematerialization to layers with output sizes larger
    than `output_size_threshold`"."""
    x = torch.randn(4, 5)
    with RematScope(mode="list_of_layers", layer_names=["picked"]):
        picked, other = Counting(3, name="picked"), Counting(3, name="other")
    for layer in (picked, other):
        layer(x).sum().backward()
    assert (picked.runs, other.runs) == (2, 1)
    with RematScope(mode="larger_than", output_size_threshold=4 * 3 - 1):
        big = Counting(3)
    with RematScope(mode="larger_than", output_size_threshold=4 * 3):
        small = Counting(3)
    for layer in (big, small):
        layer(x).sum().backward()
    # Each first ran once on the meta device (the output size), then forward; `big` once more
    # in the backward pass.
    assert (big.runs, small.runs) == (3, 2)


def test_activations_mode_rematerializes_the_activation_only():
    """Keras 3: "`activations`: Apply rematerialization to activations on any layers that
    contain `keras.activations` (e.g., `Dense(..., activation=relu)`)"."""
    calls = []

    def act(x):
        calls.append(1)
        return torch.relu(x)

    x = torch.randn(3, 4)
    with RematScope(mode="activations"):
        dense = Dense(2, activation=act)
    plain = Dense(2, activation=act)
    dense(x)
    plain(x)
    plain.set_weights(dense.get_weights())
    calls.clear()
    dense(x).sum().backward()
    assert len(calls) == 2  # forward + recomputation in backward
    g = dense.kernel.grad.clone()
    calls.clear()
    plain(x).sum().backward()
    assert len(calls) == 1
    assert torch.equal(plain.kernel.grad, g)
    assert dense.activation is act  # restored after the call


def test_no_remat_without_grad_and_nested_scopes():
    """Keras 3 "Nested scopes for fine-grained control": the innermost scope applies;
    `mode=None` disables rematerialization."""
    with RematScope(mode="full"):
        with RematScope(mode=None):
            off = Counting(2)
        on = Counting(2)
    x = torch.randn(2, 3)
    with torch.no_grad():
        on(x)
    assert on.runs == 1  # nothing to recompute without autograd
    for layer in (on, off):
        layer.runs = 0
        layer(x).sum().backward()
    assert (on.runs, off.runs) == (2, 1)


def test_remat_function_keras_example():
    """Keras 3 `keras.remat`: the `CustomRematLayer` example (`self.remat_function =
    remat(self.intermediate_function)`)."""

    class CustomRematLayer(Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.remat_function = remat(self.intermediate_function)
            self.runs = 0

        def intermediate_function(self, x):
            self.runs += 1
            for _ in range(2):
                x = x + x * 0.1
            return torch.sin(x)  # mpq: an op that saves its input, so there is a recomputation

        def call(self, inputs):
            return self.remat_function(inputs)

    layer = CustomRematLayer()
    x = torch.randn(4, requires_grad=True)
    layer(x).sum().backward()
    assert layer.runs == 2
    expected = torch.cos((x + x * 0.1) * 1.1) * torch.tensor(1.1) * torch.tensor(1.1)
    assert torch.allclose(x.grad, expected.detach(), rtol=0, atol=4e-7)


def test_remat_inside_stateless_call_uses_the_given_values():
    with RematScope(mode="full"):
        layer = Counting(2)
    x = torch.randn(3, 2)
    layer(x)
    w = torch.randn(2, 2, requires_grad=True)
    out, _ = layer.stateless_call([w], [], x)
    out.sum().backward()
    expected = torch.autograd.grad(torch.tanh(x @ w).sum(), w)[0]
    assert torch.equal(w.grad, expected)
    assert layer.w.grad is None  # the layer's own variable took no part


def test_remat_scope_errors():
    with pytest.raises(ValueError, match=r"one of 'full'.*Received: mode='all' \(of type str\)"):
        RematScope(mode="all")
    with pytest.raises(TypeError, match=r"`output_size_threshold` to be an int.*1.5"):
        RematScope(mode="larger_than", output_size_threshold=1.5)
    with pytest.raises(TypeError, match=r"list of layer names.*Received: layer_names=\[1\]"):
        RematScope(mode="list_of_layers", layer_names=[1])


def _saved_bytes(model, x):
    """Bytes of the tensors autograd keeps for the backward pass of ``model(x)``: each distinct
    storage once (torch.autograd.graph.saved_tensors_hooks)."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return out, sum(storages.values())


def test_full_remat_keeps_only_the_inputs_of_each_layer():
    """What rematerialization is for (Keras 3 `keras.remat`: "Instead of storing intermediate
    results (e.g. activations) for backpropagation, they are recomputed"): a 4-layer gelu MLP
    keeps its hidden activations without a scope, only the model input with one."""
    x = torch.randn(64, 256)

    def make():
        return Sequential([Dense(256, activation="gelu") for _ in range(4)])

    plain = make()
    plain(x)
    with RematScope(mode="full"):
        remat_model = make()
    remat_model(x)
    remat_model.set_weights(plain.get_weights())
    out_plain, kept_plain = _saved_bytes(plain, x)
    out_remat, kept_remat = _saved_bytes(remat_model, x)
    assert torch.equal(out_plain, out_remat)
    activation = 64 * 256 * 4
    # Without remat: at least the input and every gelu input/output per layer.
    assert kept_plain >= 4 * activation
    # With remat: the checkpointed model keeps its input (and the weights it reads) only.
    weights = sum(w.numel() * 4 for w in plain.weights)
    assert kept_remat <= activation + weights
    out_remat.sum().backward()
    out_plain.sum().backward()
    for a, b in zip(plain.weights, remat_model.weights, strict=True):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("mode", ["int8", "int4", "float8"])
def test_remat_of_quantized_layers_matches_and_updates_state_once(mode):
    """A rematerialized `quantized_call` (Keras 3 `stateless_call` / `quantized_call` use the
    layer's remat mode too): the same input gradients and the same quantized state (float8 scales
    and amax histories, written by forward and backward) as without remat, after two steps."""
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    plain = Dense(4)
    plain(x)
    plain.quantize(mode)
    with RematScope(mode="full"):
        rematted = Dense(4)
    rematted(x)
    rematted.quantize(mode)
    rematted.load_state_dict(plain.state_dict())
    x_plain, x_remat = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    for _ in range(2):
        (plain(x_plain) ** 2).sum().backward()
        (rematted(x_remat) ** 2).sum().backward()
    assert torch.equal(x_plain.grad, x_remat.grad)
    for (name, a), b in zip(
        plain.state_dict().items(), rematted.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
