"""Dense and Sequential: math, config, containers, summary, and training in a plain torch loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mpq
from mpq.layers import Dense, Layer, Sequential, deserialize, register_layer, serialize
from mpq.testing import assert_close


def test_dense_matches_reference_exactly():
    layer = Dense(5, activation="relu")
    x = torch.randn(4, 3)
    y = layer(x)
    expected = torch.relu(torch.addmm(layer.bias.detach(), x, layer.kernel.detach()))
    assert torch.equal(y.detach(), expected)
    assert layer.kernel.shape == (3, 5) and layer.bias.shape == (5,)
    x3 = torch.randn(2, 4, 3)
    y3 = layer(x3)
    assert torch.equal(y3.detach(), layer(x3.reshape(8, 3)).detach().reshape(2, 4, 5))


@pytest.mark.parametrize(
    ("name", "fn"),
    [
        ("linear", lambda x: x),
        ("relu", torch.relu),
        ("gelu", torch.nn.functional.gelu),
        ("silu", torch.nn.functional.silu),
        ("sigmoid", torch.sigmoid),
        ("tanh", torch.tanh),
        ("softmax", lambda x: torch.softmax(x, -1)),
    ],
)
def test_dense_activations_by_name(name, fn):
    layer = Dense(4, activation=name)
    x = torch.randn(3, 2)
    out = layer(x).detach()
    expected = fn(torch.addmm(layer.bias, x, layer.kernel)).detach()
    if name in ("gelu", "silu"):
        # Fused into the matmul epilogue: the kernels' formula, within float32 rounding of torch's.
        assert_close(out, expected, "float32")
    else:
        assert torch.equal(out, expected)
    assert layer.get_config()["activation"] == name


def test_dense_no_bias_and_callable_activation():
    layer = Dense(2, use_bias=False, activation=mpq.activations.relu)
    layer.build((None, 3))
    assert layer.bias is None and [w.name for w in layer.weights] == ["kernel"]
    assert layer.get_config()["activation"] == "relu"
    custom = Dense(2, activation=lambda x: x * 2)
    x = torch.ones(1, 3)
    assert torch.equal(custom(x), 2 * (x @ custom.kernel + custom.bias))
    with pytest.raises(ValueError, match="lambdas"):
        custom.get_config()


@pytest.mark.parametrize("units", [0, -1, 2.5, True, "3"])
def test_dense_units_validation(units):
    with pytest.raises(ValueError, match=f"Received: units={units!r}"):
        Dense(units)


def test_dense_rejects_unknown_activation_and_lora():
    with pytest.raises(ValueError, match="Received: activation='swishy'"):
        Dense(2, activation="swishy")
    with pytest.raises(TypeError, match=r"Received: activation=3 \(of type int\)"):
        Dense(2, activation=3)
    with pytest.raises(ValueError, match=r"Received: lora_rank=0 \(of type int\)"):
        Dense(2, lora_rank=0)


def test_dense_compute_output_shape_and_config_round_trip():
    layer = Dense(
        7,
        activation="gelu",
        kernel_initializer="he_normal",
        kernel_regularizer="l2",
        bias_constraint="non_neg",
        dtype="mixed_float16",
    )
    assert layer.compute_output_shape((None, 3, 5)) == (None, 3, 7)
    clone = deserialize(serialize(layer))
    assert type(clone) is Dense and clone.get_config() == layer.get_config()
    assert clone.dtype_policy.name == "mixed_float16"


def test_dense_mixed_precision_forward_backward():
    layer = Dense(3, dtype="mixed_bfloat16")
    x = torch.randn(2, 4)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    ref = torch.addmm(
        layer.bias.detach().bfloat16(), x.bfloat16(), layer.kernel.detach().bfloat16()
    )
    assert torch.equal(y.detach(), ref)
    y.float().sum().backward()
    assert layer.kernel.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32


# ---------------------------------------------------------------------------------- Sequential


def test_sequential_container_api():
    a, b, c = Dense(4, name="a"), Dense(3, name="b"), Dense(2, name="c")
    model = Sequential([a, b], name="seq")
    model.add(c)
    assert len(model) == 3 and model[0] is a and model[-1] is c and model[1:] == [b, c]
    assert list(model) == [a, b, c] and model.layers == [a, b, c]
    assert [layer.path for layer in model] == ["seq/a", "seq/b", "seq/c"]
    y = model(torch.ones(5, 6))
    assert y.shape == (5, 2) and model.built
    assert model.pop() is c and len(model) == 2 and c.path == "c"
    with pytest.raises(IndexError, match="Received: index=5"):
        model[5]
    with pytest.raises(TypeError, match=r"Received: index='a' \(of type str\)"):
        model["a"]
    with pytest.raises(ValueError, match=r"unique names.*'a'"):
        model.add(Dense(2, name="a"))
    with pytest.raises(TypeError, match=r"Received: 3 \(of type int\)"):
        model.add(3)
    assert list(model.state_dict()) == ["0.kernel", "0.bias", "1.kernel", "1.bias"]


def test_sequential_builds_from_input_shape_and_summary(capsys):
    model = Sequential(
        [Dense(8, input_shape=(4,), activation="relu"), Dense(2, dtype="float32")],
        dtype="mixed_bfloat16",
        name="tiny",
    )
    assert model.built and model.count_params() == 4 * 8 + 8 + 8 * 2 + 2
    model.summary()
    out = capsys.readouterr().out
    assert 'Model: "tiny"' in out
    assert "(None, 8)" in out and "(None, 2)" in out
    assert "40" in out and "18" in out
    assert "mixed_bfloat16" in out and "float32" in out
    assert "Total params: 58" in out


def test_sequential_config_round_trip_and_registry():
    @register_layer("tests")
    class Scale(Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

    model = Sequential([Dense(3), Scale(3.0), Dense(1)])
    model(torch.ones(2, 5))
    config = serialize(model)
    clone = deserialize(config)
    assert [type(layer).__name__ for layer in clone] == ["Dense", "Scale", "Dense"]
    assert clone[1].factor == 3.0 and clone.built and clone[2].kernel.shape == (3, 1)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 5)
    assert torch.equal(clone(x), model(x))
    with pytest.raises(ValueError, match="Unknown layer class 'Nope'"):
        deserialize({"class_name": "Nope", "config": {}})
    with pytest.raises(ValueError, match="Received: config=3"):
        deserialize(3)


def _mlp(policy: str) -> Sequential:
    return Sequential(
        [Dense(32, activation="relu"), Dense(32, activation="gelu"), Dense(1)], dtype=policy
    )


def test_three_layer_sequential_trains_in_plain_torch_loop_under_mixed_bfloat16():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    true_w = torch.randn(8, 1)
    y = torch.sin(x @ true_w)
    model = _mlp("mixed_bfloat16")
    model(x[:1])
    assert all(w.dtype == torch.float32 for w in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        pred = model(x)
        assert pred.dtype == torch.bfloat16
        loss = torch.nn.functional.mse_loss(pred.float(), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert all(w.dtype == torch.float32 for w in model.parameters())
    fresh = _mlp("mixed_bfloat16")
    fresh(x[:1])
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))
    twin = copy.deepcopy(model)
    assert torch.equal(twin(x), model(x))


def test_global_policy_applies_at_construction():
    mpq.set_dtype_policy("mixed_float16")
    layer = Dense(2)
    mpq.set_dtype_policy("float32")
    assert layer.dtype_policy.name == "mixed_float16"
    assert layer(np.ones((1, 2), np.float32)).dtype == torch.float16


def test_works_under_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = _mlp("mixed_bfloat16")
        model(torch.ones(1, 3))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        out = ddp(torch.ones(2, 3))
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    finally:
        dist.destroy_process_group()


def test_summary_of_unbuilt_model_and_name_counters(capsys):
    from mpq.layers import reset_name_counters

    model = Sequential([Dense(3, name="first")], name="lazy")
    model.summary()
    out = capsys.readouterr().out
    assert "first (Dense)" in out and "unbuilt" in out and "?" in out
    with pytest.raises(ValueError, match="count_params` on layer 'lazy'"):
        model.count_params()

    class CounterCheck(Layer):
        pass

    assert CounterCheck().name == "counter_check"
    reset_name_counters()
    assert CounterCheck().name == "counter_check"


def test_custom_objects_reach_nested_layers():
    class Unregistered(Layer):
        def call(self, x):
            return -x

    model = Sequential([Dense(2), Unregistered()])
    config = serialize(model)
    with pytest.raises(ValueError, match="Unknown layer class 'Unregistered'"):
        deserialize(config)
    clone = deserialize(config, custom_objects={"Unregistered": Unregistered})
    assert type(clone[1]) is Unregistered


def test_sequential_starting_with_an_input():
    """Keras 3 Sequential guide, "Specifying the input shape in advance":

        model = keras.Sequential()
        model.add(keras.Input(shape=(4,)))
        model.add(layers.Dense(2, activation="relu"))

    (an `InputLayer` does the same; it is not one of `model.layers`)."""
    from mpq.layers import Input, InputLayer

    model = Sequential()
    model.add(Input(shape=(4,)))
    model.add(Dense(2, activation="relu"))
    assert model.built and len(model.layers) == 1 and model.layers[0].kernel.shape == (4, 2)
    assert model.get_config()["build_input_shape"] == (None, 4)
    other = Sequential([InputLayer(input_shape=(3,)), Dense(5)])
    assert other.compute_output_shape((None, 3)) == (None, 5) and other.built
    with pytest.raises(ValueError, match=r"Expected an Input / InputLayer only as the first"):
        Sequential([Dense(1), Input(shape=(3,))])
    with pytest.raises(TypeError, match=r"Expected the output of Input\(...\) to start"):
        Sequential([Dense(2)(Input(shape=(3,)))])


def test_summary_counts_weights_not_seed_or_metric_state(capsys):
    """Keras `summary` counts parameters (weights); a seeded Dropout's generator state and metric
    state are variables, not parameters."""
    from mpq.layers import Dropout
    from mpq.metrics import Mean

    class Tracked(Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.tracker = Mean()

        def call(self, x):
            return x

    model = Sequential([Dense(3, input_shape=(2,)), Dropout(0.5, seed=1), Tracked()])
    model.summary()
    out = capsys.readouterr().out
    assert "Total params: 9  (trainable: 9, non-trainable: 0)" in out
    for prefix in ("dropout", "tracked"):
        row = next(line for line in out.splitlines() if line.startswith(prefix))
        assert row.split()[-2] == "0"
