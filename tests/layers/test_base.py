"""mpq.layers.Layer: names, paths, policies, autocast, tracking, weights, losses, config, calls."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mpq
from mpq.layers import Dense, InputSpec, Layer, Sequential, Variable, tracking
from mpq.testing import assert_close


class Probe(Layer):
    """Records what it sees inside call."""

    def __init__(self, units=2, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.count = self.add_weight(shape=(), dtype="int64", trainable=False, name="count")

    def call(self, inputs, training=None):
        k1, k2 = self.kernel, self.kernel
        self.seen = {"k_dtype": k1.dtype, "same_cast": k1 is k2, "training": training}
        self.count.assign_add(1)
        return inputs @ k1


class Outer(Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = Block(name="block")
        self.head = Dense(1, name="head")

    def call(self, inputs, training=None):
        return self.head(self.block(inputs, training=training))


class Block(Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = Dense(3, name="dense_in_block")
        self.probe = Probe(name="probe")

    def call(self, inputs, training=None):
        return self.probe(self.dense(inputs))


# ---------------------------------------------------------------------------------- names


def test_default_names_are_unique_snake_case():
    class FancyMLPBlock(Layer):
        pass

    a, b = FancyMLPBlock(), FancyMLPBlock()
    assert a.name == "fancy_mlp_block" and b.name == "fancy_mlp_block_1"
    assert tracking.to_snake_case("LayerNormalization") == "layer_normalization"
    assert tracking.to_snake_case("Conv2D") == "conv2d"
    assert tracking.to_snake_case("EinsumDense") == "einsum_dense"


@pytest.mark.parametrize("bad", ["a/b", "", 3])
def test_bad_name_raises(bad):
    with pytest.raises(ValueError, match=f"Received: name={bad!r}"):
        Layer(name=bad)


def test_unknown_kwarg_raises():
    with pytest.raises(
        ValueError, match=r"Unrecognized keyword arguments passed to Dense: {'foo': 1}"
    ):
        Dense(2, foo=1)


def test_paths_follow_tracking():
    outer = Outer(name="model")
    assert outer.block.dense.path == "model/block/dense_in_block"
    assert outer.head.path == "model/head"
    lone = Dense(2, name="lone")
    assert lone.path == "lone"
    outer(torch.ones(2, 4))
    assert outer.block.probe.kernel.path == "model/block/probe/kernel"

    class WithList(Layer):
        def __init__(self):
            super().__init__(name="with_list")
            self.items = torch.nn.ModuleList([Dense(2, name="first")])
            self.items.append(Dense(2, name="second"))  # added after assignment

        def call(self, x):
            for layer in self.items:
                x = layer(x)
            return x

    wl = WithList()
    wl(torch.ones(1, 2))
    assert [m.path for m in wl.items] == ["with_list/first", "with_list/second"]


# ---------------------------------------------------------------------------------- policies


def test_policy_defaults_and_explicit():
    layer = Dense(2)
    assert layer.dtype_policy.name == "float32"
    assert (layer.dtype, layer.variable_dtype, layer.compute_dtype, layer.input_dtype) == (
        "float32",
        "float32",
        "float32",
        "float32",
    )
    mixed = Dense(2, dtype="mixed_bfloat16")
    assert (mixed.variable_dtype, mixed.compute_dtype) == ("float32", "bfloat16")
    assert Dense(2, dtype=mpq.policy.get("bfloat16")).variable_dtype == "bfloat16"
    assert mixed.quantization_mode is None


def test_sublayer_inherits_parent_policy_unless_explicit():
    class Parent(Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.free = Dense(2)
            self.pinned = Dense(2, dtype="float32")

    parent = Parent(dtype="mixed_float16")
    assert parent.free.dtype_policy.name == "mixed_float16"
    assert parent.pinned.dtype_policy.name == "float32"
    parent.dtype_policy = "bfloat16"  # the setter reaches non-explicit children
    assert parent.free.dtype_policy.name == "bfloat16"
    assert parent.pinned.dtype_policy.name == "float32"
    seq = Sequential([Dense(2), Dense(3)], dtype="mixed_bfloat16")
    assert [layer.dtype_policy.name for layer in seq] == ["mixed_bfloat16"] * 2


def test_dtype_policy_map_resolves_by_path():
    policy_map = mpq.policy.DTypePolicyMap(
        default_policy="float32", policy_map={"model/block/.*": "mixed_bfloat16"}
    )
    outer = Outer(name="model", dtype=policy_map)
    assert outer.block.dense.dtype_policy.name == "mixed_bfloat16"
    assert outer.head.dtype_policy.name == "float32"
    assert outer.dtype_policy.name == "float32"
    y = outer(torch.ones(2, 4))
    assert outer.block.probe.seen["k_dtype"] == torch.bfloat16
    assert y.dtype == torch.float32  # the head runs in float32


def test_setting_dtype_policy_recomputes_casts():
    layer = Probe()
    layer(torch.ones(1, 3))
    layer.dtype_policy = "mixed_bfloat16"
    y = layer(torch.ones(1, 3))
    assert y.dtype == torch.bfloat16 and layer.kernel.dtype == torch.float32
    with pytest.raises((TypeError, ValueError)):
        layer.dtype_policy = 3


# ---------------------------------------------------------------------------------- autocast


def test_inputs_cast_in_nested_structures_only_floating():
    class Echo(Layer):
        def call(self, inputs, extra=None, scale=1.0):
            return inputs, extra, scale

    layer = Echo(dtype="bfloat16")
    ints = torch.arange(3)
    (a, b), extra, scale = layer(
        [torch.ones(2, dtype=torch.float64), np.ones(2, np.float32)],
        extra={"i": ints, "f": (torch.zeros(1),), "m": torch.ones(1, dtype=torch.bool)},
        scale=2.5,
    )
    assert a.dtype == b.dtype == torch.bfloat16
    assert extra["i"] is ints and extra["m"].dtype == torch.bool
    assert extra["f"][0].dtype == torch.bfloat16
    assert scale == 2.5
    no_cast = Echo(dtype="bfloat16", autocast=False)
    out, _, _ = no_cast(np.ones(2, np.float64))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64


def test_variables_autocast_inside_call_only_and_cached():
    layer = Probe(dtype="mixed_bfloat16")
    y = layer(torch.ones(2, 3))
    assert y.dtype == torch.bfloat16
    assert layer.seen["k_dtype"] == torch.bfloat16 and layer.seen["same_cast"] is True
    assert layer.kernel.dtype == torch.float32  # outside call: own dtype
    assert layer.count.dtype == torch.int64 and int(layer.count) == 1
    y.float().sum().backward()
    assert layer.kernel.grad is not None and layer.kernel.grad.dtype == torch.float32
    expected = torch.ones(2, 3).bfloat16() @ layer.kernel.detach().bfloat16()
    torch.testing.assert_close(y.detach(), expected, rtol=0, atol=0)


def test_autocast_false_keeps_variables_in_own_dtype():
    layer = Probe(dtype="mixed_bfloat16", autocast=False)
    y = layer(torch.ones(2, 3))
    assert layer.seen["k_dtype"] == torch.float32 and y.dtype == torch.float32


def test_value_reads_autocast_and_cache_is_invalidated_by_assign():
    class Holder(Layer):
        def build(self, input_shape):
            self.vs = [self.add_weight(shape=(2,), initializer="ones", name="v")]

        def call(self, inputs):
            v = self.vs[0]
            before = v.value
            v.assign(v.detach() * 3)
            after = v.value
            return before, after

    layer = Holder(dtype="mixed_float16")
    before, after = layer(torch.ones(2))
    assert before.dtype == after.dtype == torch.float16
    assert before.tolist() == [1.0, 1.0] and after.tolist() == [3.0, 3.0]
    assert layer.vs[0].dtype == torch.float32
    assert layer.vs[0].value is layer.vs[0]  # outside call


# ---------------------------------------------------------------------------------- tracking


def test_weights_order_own_first_then_sublayers():
    class Mixed(Layer):
        def __init__(self):
            super().__init__()
            self.sub = Dense(2, name="sub")
            self.own = self.add_weight(shape=(1,), name="own")

        def call(self, x):
            return self.sub(x) + self.own

    layer = Mixed()
    layer(torch.ones(1, 2))
    assert [w.path.split("/", 1)[1] for w in layer.weights] == ["own", "sub/kernel", "sub/bias"]

    class StateFirst(Layer):
        def build(self, input_shape):
            self.steps = self.add_weight(shape=(), dtype="int64", trainable=False, name="steps")
            self.w = self.add_weight(shape=(2,), name="w")

        def call(self, x):
            return x * self.w

    state_first = StateFirst()
    state_first.build((2,))
    # Keras order: own trainable-created weights, then non-trainable ones; state_dict keeps
    # creation order.
    assert [w.name for w in state_first.weights] == ["w", "steps"]
    assert list(state_first.state_dict()) == ["steps", "w"]
    state_first.trainable = False
    assert [w.name for w in state_first.weights] == ["w", "steps"]
    assert layer.variables == layer.weights
    assert layer.layers == [layer.sub]


def test_trainable_is_recursive_and_stops_gradients():
    outer = Outer()
    x = torch.ones(2, 4)
    outer(x)
    n_all = len(outer.weights)
    n_trainable = len(outer.trainable_weights)
    assert n_trainable == n_all - 1  # the probe's int counter
    outer.block.trainable = False
    assert outer.block.trainable is False and outer.block.dense.trainable is False
    assert all(not w.requires_grad for w in outer.block.weights)
    assert len(outer.trainable_weights) == 2  # head kernel + bias
    assert len(outer.non_trainable_weights) == n_all - 2
    outer(x).sum().backward()
    assert outer.block.dense.kernel.grad is None and outer.head.kernel.grad is not None
    outer.trainable = True
    assert len(outer.trainable_weights) == n_trainable  # the int counter stays non-trainable
    assert outer.trainable_variables == outer.trainable_weights


def test_get_set_weights_roundtrip_and_errors():
    layer = Dense(3)
    layer(torch.ones(1, 2))
    weights = layer.get_weights()
    assert [w.shape for w in weights] == [(2, 3), (3,)]
    layer.set_weights([np.full((2, 3), 0.5, np.float32), np.arange(3, dtype=np.float32)])
    np.testing.assert_array_equal(layer.bias.numpy(), [0, 1, 2])
    with pytest.raises(ValueError, match=r"weight list of length 1, but the layer was expecting 2"):
        layer.set_weights([weights[0]])
    with pytest.raises(
        ValueError, match=r"'dense.*/bias' has shape \(3,\).*provided weight shape \(4,\)"
    ):
        layer.set_weights([weights[0], np.zeros(4, np.float32)])
    np.testing.assert_array_equal(layer.bias.numpy(), [0, 1, 2])  # nothing half-written


def test_get_weights_bfloat16_are_ml_dtypes_bit_exact():
    import ml_dtypes

    layer = Dense(3, dtype="bfloat16")
    layer.build((None, 2))
    weights = layer.get_weights()
    assert weights[0].dtype == ml_dtypes.bfloat16
    other = Dense(3, dtype="bfloat16")
    other.build((None, 2))
    other.set_weights(weights)
    assert torch.equal(other.kernel.view(torch.int16), layer.kernel.view(torch.int16))


def test_count_params():
    layer = Dense(3)
    with pytest.raises(ValueError, match=r"count_params` on layer 'dense.*isn't built"):
        layer.count_params()
    layer.build((None, 4))
    assert layer.count_params() == 15


def test_add_weight_validation():
    layer = Layer()
    with pytest.raises(ValueError, match=r"Received: shape=\(2, -1\)"):
        layer.add_weight(shape=(2, -1))
    with pytest.raises(ValueError, match=r"Received: dtype=torch.int32"):
        layer.add_weight(shape=(2,), dtype="int32")
    with pytest.raises(ValueError, match=r"Received: name='a.b'"):
        layer.add_weight(shape=(2,), name="a.b")
    with pytest.raises(ValueError, match=r"glorot_uniform"):
        layer.add_weight(shape=(2,), initializer="nope")
    v = layer.add_weight(shape=(2,), dtype="int32", trainable=False)
    assert v.dtype == torch.int32 and v.tolist() == [0, 0]  # default zeros for ints
    w = layer.add_weight(shape=(2,))
    assert (v.name, w.name) == ("variable", "variable_1")
    assert layer.add_variable is not None


# ---------------------------------------------------------------------------------- losses


def test_losses_collected_and_cleared_at_outermost_call():
    class Lossy(Layer):
        def call(self, x):
            self.add_loss(x.sum())
            return x

    class Parent(Layer):
        def __init__(self):
            super().__init__()
            self.a, self.b = Lossy(), Dense(2, kernel_regularizer="l1", kernel_initializer="ones")

        def call(self, x):
            return self.b(self.a(self.a(x)))

    parent = Parent()
    parent(torch.ones(1, 2))
    losses = parent.losses
    assert len(losses) == 3  # two calls of a (shared layer) + the kernel regularizer
    assert [float(v.detach()) for v in losses[:2]] == [2.0, 2.0]
    assert abs(float(losses[2].detach()) - 0.01 * 4) < 1e-7
    parent(torch.zeros(1, 2))
    assert [float(v.detach()) for v in parent.losses[:2]] == [0.0, 0.0]
    assert len(parent.losses) == 3


# ---------------------------------------------------------------------------------- calls


def test_training_resolution():
    outer = Outer()
    x = torch.ones(1, 4)
    outer.train()
    outer(x)
    assert outer.block.probe.seen["training"] is True
    outer.eval()
    outer(x)
    assert outer.block.probe.seen["training"] is False
    outer(x, training=True)  # explicit reaches nested calls
    assert outer.block.probe.seen["training"] is True

    class NoTraining(Layer):
        def call(self, x):
            return x

    NoTraining()(x, training=True)  # dropped: call does not take it


def test_input_spec_checked_with_clear_errors():
    layer = Dense(3)
    layer(torch.ones(2, 4))
    with pytest.raises(
        ValueError, match=r"expected axis -1 of input shape to have value 4.*\(2, 5\)"
    ):
        layer(torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"expected min_ndim=2, found ndim=1"):
        Dense(2)(torch.ones(3))

    class Ranked(Layer):
        def __init__(self):
            super().__init__()
            self.input_spec = InputSpec(ndim=3, dtype="float32")

        def call(self, x):
            return x

    with pytest.raises(ValueError, match=r"expected ndim=3, found ndim=2"):
        Ranked()(torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"expected dtype=torch.float32, found dtype=torch.int64"):
        Ranked()(torch.ones(1, 2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"should be a tensor"):
        Ranked()("x")
    assert InputSpec.from_config(InputSpec(min_ndim=2, axes={-1: 4}).get_config()).axes == {-1: 4}


def test_build_from_call_with_several_inputs():
    class Pair(Layer):
        def build(self, a_shape, b_shape):
            self.shapes = (a_shape, b_shape)

        def call(self, a, b):
            return a + b

    layer = Pair()
    layer(torch.ones(2, 3), torch.ones(2, 3))
    assert layer.shapes == ((2, 3), (2, 3)) and layer.built
    assert layer.get_build_config() == {"shapes_dict": {"a_shape": (2, 3), "b_shape": (2, 3)}}

    class ListInput(Layer):
        def build(self, input_shape):
            self.shapes = input_shape

        def call(self, inputs):
            return inputs[0]

    li = ListInput()
    li([torch.ones(1, 2), torch.ones(1, 3)])
    assert li.shapes == [(1, 2), (1, 3)]

    class BadBuild(Layer):
        def build(self, a, b):
            pass

        def call(self, a, b):
            return a

    with pytest.raises(ValueError, match=r"_shape` suffix.*Received: 'a'"):
        BadBuild()(torch.ones(1), torch.ones(1))


def test_forward_hooks_run():
    layer = Dense(2)
    seen = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    layer(torch.ones(1, 3))
    assert seen == [torch.Size([1, 2])]


# ---------------------------------------------------------------------------------- shapes


def test_default_compute_output_shape_runs_on_meta_without_side_effects():
    class Double(Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 5))
            self.total = self.add_weight(shape=(), trainable=False, initializer="zeros")

        def call(self, x):
            self.total.assign_add(1.0)
            self.add_loss(x.sum())
            return torch.cat([x @ self.w, x @ self.w], dim=0)

    layer = Double()
    assert layer.compute_output_shape((None, 3)) == (None, 5)
    assert layer.compute_output_shape((4, 3)) == (8, 5)
    assert not layer.built  # an unbuilt layer is built on a meta copy
    layer(torch.ones(1, 3))
    total = float(layer.total)
    spec = layer.compute_output_spec(torch.ones(2, 3))
    assert (
        spec.device.type == "meta" and tuple(spec.shape) == (4, 5) and spec.dtype == torch.float32
    )
    assert float(layer.total) == total and len(layer._losses) == 1


# ---------------------------------------------------------------------------------- stateless


def test_stateless_call_uses_given_values_and_has_no_side_effects():
    layer = Probe(dtype="mixed_bfloat16")
    x = torch.ones(2, 3)
    layer(x)
    kernel = torch.full((3, 2), 2.0, requires_grad=True)
    count = torch.tensor(10)
    before = layer.kernel.detach().clone()
    out, (new_count,) = layer.stateless_call([kernel], [count], x)
    assert out.dtype == torch.bfloat16  # same autocast as __call__
    assert out.tolist() == [[6.0, 6.0], [6.0, 6.0]]
    assert int(new_count) == 11 and int(count) == 10 and int(layer.count) == 1
    assert torch.equal(layer.kernel.detach(), before)
    out.float().sum().backward()
    assert kernel.grad is not None and layer.kernel.grad is None

    reg = Dense(2, kernel_regularizer="l2", kernel_initializer="ones")
    reg.build((None, 3))
    out, nt, losses = reg.stateless_call(
        [torch.zeros(3, 2), torch.zeros(2)], [], x, return_losses=True
    )
    assert nt == [] and out.tolist() == [[0.0, 0.0]] * 2
    assert [float(v) for v in losses] == [0.0]
    with pytest.raises(ValueError, match=r"list of 2 tensors.*Received: 1"):
        reg.stateless_call([torch.zeros(3, 2)], [], x)
    with pytest.raises(ValueError, match=r"shape \(3, 2\).*Received: shape=\(2, 2\)"):
        reg.stateless_call([torch.zeros(2, 2), torch.zeros(2)], [], x)
    with pytest.raises(ValueError, match=r"must be built"):
        Dense(2).stateless_call([], [], x)


# ---------------------------------------------------------------------------------- config


def test_get_config_from_config_and_build_config():
    layer = Dense(3, activation="relu", dtype="mixed_bfloat16", name="cfg", trainable=False)
    layer(torch.ones(2, 5))
    config = layer.get_config()
    assert config["name"] == "cfg" and config["trainable"] is False
    assert mpq.policy.get(config["dtype"]).name == "mixed_bfloat16"
    clone = Dense.from_config(config)
    assert clone.get_config() == config
    build_config = layer.get_build_config()
    assert build_config == {"input_shape": (2, 5)}
    clone.build_from_config({"input_shape": [None, 5]})
    assert clone.kernel.shape == (5, 3)
    with pytest.raises(TypeError, match=r"Error when deserializing class 'Dense'"):
        Dense.from_config({"units": 2, "bogus": 1})
    with pytest.raises(ValueError, match=r"Received: config={'nope': 1}"):
        Dense(2).build_from_config({"nope": 1})


def test_auto_config_needs_json_serializable_args():
    class Custom(Layer):
        def __init__(self, fn, **kwargs):
            super().__init__(**kwargs)
            self.fn = fn

    with pytest.raises(NotImplementedError, match=r"Custom does not implement get_config"):
        Custom(fn=len).get_config()
    config = Probe(units=7, name="p7").get_config()
    assert config["units"] == 7 and config["name"] == "p7"


def test_save_load_own_variables_by_name():
    layer = Probe()
    layer(torch.ones(1, 3))
    store = {}
    layer.save_own_variables(store)
    assert sorted(store) == ["count", "kernel"]
    other = Probe()
    other.build((1, 3))
    other.load_own_variables(dict(reversed(list(store.items()))))  # order does not matter
    assert torch.equal(other.kernel, layer.kernel) and int(other.count) == 1
    with pytest.raises(ValueError, match=r"Missing: \['count'\]; unexpected: \[\]"):
        other.load_own_variables({"kernel": store["kernel"]})
    with pytest.raises(ValueError, match=r"unexpected: \['extra'\]"):
        other.load_own_variables({**store, "extra": torch.ones(1)})
    with pytest.raises(
        ValueError, match=r"'kernel' has shape \(3, 2\), but the store holds shape \(2, 2\)"
    ):
        other.load_own_variables({**store, "kernel": torch.ones(2, 2)})


# ---------------------------------------------------------------------------------- torch interop


def test_state_dict_deepcopy_pickle_optimizer():
    layer = Probe(dtype="mixed_bfloat16")
    layer(torch.ones(2, 3))
    assert isinstance(layer.kernel, torch.nn.Parameter) and isinstance(layer.kernel, Variable)
    clone = copy.deepcopy(layer)
    assert isinstance(clone.kernel, Variable) and clone.kernel.path == clone.path + "/kernel"
    assert clone.kernel is not layer.kernel and torch.equal(clone.kernel, layer.kernel)
    assert clone.kernel.__dict__["_owner"]() is clone
    y = clone(torch.ones(2, 3))
    assert y.dtype == torch.bfloat16 and clone.seen["k_dtype"] == torch.bfloat16
    restored = pickle.loads(pickle.dumps(layer))
    assert isinstance(restored.kernel, Variable) and restored.kernel.path.endswith("/kernel")
    assert torch.equal(restored.kernel, layer.kernel) and restored.count.requires_grad is False
    fresh = Probe()
    fresh.build((2, 3))
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.kernel, layer.kernel) and isinstance(fresh.kernel, Variable)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.kernel.detach().clone()
    layer(torch.ones(2, 3)).float().sum().backward()
    opt.step()
    assert not torch.equal(layer.kernel.detach(), before) and isinstance(layer.kernel, Variable)
    sub = copy.deepcopy(Outer(name="o").block)
    assert sub.path == "block"  # a deep-copied sublayer is a root


def test_op_dtype_rules():
    mixed = Dense(2, dtype="mixed_bfloat16")
    assert mixed._op_dtype("normalization") == torch.float32
    assert mixed._op_dtype("matmul") == torch.bfloat16
    assert mixed._op_dtype("elementwise", torch.float16) == torch.float16
    assert Dense(2, dtype="float64")._op_dtype("softmax", torch.float64) == torch.float64


def test_dtype_given_as_torch_dtype():
    pytest.importorskip("mpq.dtypes")  # mpq.policy resolves torch dtypes through mpq.dtypes
    assert Dense(2, dtype=torch.float16).compute_dtype == "float16"


def test_stateless_call_with_torch_func_grad_and_plain_torch_submodules():
    layer = Dense(3, dtype="mixed_bfloat16")
    layer.build((None, 4))
    x = torch.randn(2, 4)

    def loss(kernel, bias):
        out, _ = layer.stateless_call([kernel, bias], [], x)
        return out.float().sum()

    grad_k = torch.func.grad(loss)(torch.ones(4, 3), torch.zeros(3))
    expected = x.bfloat16().double().sum(0, keepdim=True).T.expand(4, 3)
    assert grad_k.dtype == torch.float32  # the master's dtype
    assert_close(grad_k, expected, "bfloat16", k=2)

    class Wrapper(Layer):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)
            self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

        def call(self, x):
            return self.linear(x) * self.scale

    wrapper = Wrapper()
    wrapper(x)
    names = [getattr(w, "path", "plain") for w in wrapper.trainable_weights]
    assert names == [f"{wrapper.name}/scale", "plain", "plain"]
    values = [torch.tensor(2.0), torch.zeros(2, 4), torch.ones(2)]
    out, _ = wrapper.stateless_call(values, [], x)
    assert out.tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert not torch.equal(wrapper(x), out)  # the layer's own parameters are untouched
    assert wrapper.compute_output_shape((None, 4)) == (None, 2)


def test_training_passed_positionally_is_respected():
    class Flag(Layer):
        def call(self, x, training=None):
            return training

    layer = Flag()
    layer.eval()
    assert layer(torch.ones(1), True) is True
    assert layer(torch.ones(1), None) is False
    assert layer(torch.ones(1)) is False


@settings(max_examples=30, deadline=None)
@given(
    policy=st.sampled_from(mpq.policy.FLOAT_POLICY_NAMES),
    in_dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    autocast=st.booleans(),
)
def test_autocast_property_over_policies(policy, in_dtype, autocast):
    layer = Probe(dtype=policy, autocast=autocast)
    p = layer.dtype_policy
    x = torch.ones(2, 3, dtype=in_dtype)
    ints = torch.arange(3)

    class Pass(Layer):
        def call(self, x, ints):
            return x, ints

    out_x, out_i = Pass(dtype=policy, autocast=autocast)(x, ints)
    assert out_i is ints
    assert out_x.dtype == (p.torch_compute_dtype if autocast else in_dtype)
    layer.build((2, 3))
    assert layer.kernel.dtype == p.torch_variable_dtype and layer.count.dtype == torch.int64
    layer(x.to(layer.kernel.dtype) if not autocast else x)
    expected = p.torch_compute_dtype if autocast else p.torch_variable_dtype
    assert layer.seen["k_dtype"] == expected


def test_output_shape_of_unbuilt_parent_with_built_sublayers_allocates_nothing():
    class Wrap(Layer):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def build(self, input_shape):
            self.gain = self.add_weight(shape=(), name="gain")

        def call(self, x):
            return self.inner(x) * self.gain

    inner = Dense(6)
    inner.build((None, 4))
    wrap = Wrap(inner)
    copies = []
    original = torch.Tensor.clone

    def spy(self, *args, **kwargs):
        copies.append(self.device.type)
        return original(self, *args, **kwargs)

    torch.Tensor.clone = spy
    try:
        assert wrap.compute_output_shape((3, 4)) == (3, 6)
    finally:
        torch.Tensor.clone = original
    assert "cpu" not in copies and not wrap.built and inner.kernel.device.type == "cpu"


class _WeightOrSublayer(Layer):
    """`w` is a weight on some instances and a sublayer on others."""

    def __init__(self, sublayer=False, **kwargs):
        super().__init__(**kwargs)
        if sublayer:
            self.w = Dense(2)
        else:
            self.w = self.add_weight(shape=(2,), name="w")


def test_weight_attributes_after_the_class_level_fast_path_is_installed():
    with_bias = Dense(2)
    with_bias.build((1, 3))
    assert with_bias.bias is with_bias._parameters["bias"]  # first read installs Dense.bias
    without_bias = Dense(2, use_bias=False)
    without_bias.build((1, 3))
    assert without_bias.bias is None
    with pytest.raises(AttributeError, match="'Dense' object has no attribute 'kernel'"):
        Dense(2).kernel  # not built
    weight = _WeightOrSublayer()
    assert weight.w is weight._parameters["w"]
    sub = _WeightOrSublayer(sublayer=True)
    assert isinstance(sub.w, Dense)
    # Inside a call the fast path still serves the autocast copy, cast once per call.
    layer = Probe(dtype="mixed_bfloat16")
    layer(torch.ones(2, 3))
    assert layer.seen["k_dtype"] == torch.bfloat16 and layer.seen["same_cast"]
    assert layer.kernel.dtype == torch.float32


# --- input dtype rule (issue #12) -------------------------------------------------------------

_FLOAT_INPUT_LAYERS = [
    ("Dense", lambda: mpq.layers.Dense(2), (2, 3)),
    (
        "EinsumDense",
        lambda: mpq.layers.EinsumDense("ab,bc->ac", output_shape=2),
        (2, 3),
    ),
    ("Conv1D", lambda: mpq.layers.Conv1D(2, 2), (1, 4, 3)),
    ("Conv2D", lambda: mpq.layers.Conv2D(2, 1), (1, 2, 2, 3)),
    (
        "LayerNormalization",
        lambda: mpq.layers.LayerNormalization(),
        (2, 3),
    ),
    (
        "BatchNormalization",
        lambda: mpq.layers.BatchNormalization(),
        (2, 3),
    ),
]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool])
@pytest.mark.parametrize(
    "make, shape", [p[1:] for p in _FLOAT_INPUT_LAYERS], ids=[p[0] for p in _FLOAT_INPUT_LAYERS]
)
def test_float_layers_cast_integer_and_bool_inputs_to_the_compute_dtype(make, shape, dtype, policy):
    """Keras 3's rule (its ops promote integer inputs to the float kernel's dtype): the result
    equals the layer applied to the inputs cast to the compute dtype, exactly."""
    from mpq.layers import BatchNormalization

    layer = make()
    layer.dtype_policy = policy
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2 if dtype == torch.bool else 5, shape, generator=gen).to(dtype)
    y = layer(x, training=False) if isinstance(layer, BatchNormalization) else layer(x)
    compute = layer.dtype_policy.torch_compute_dtype
    x_float = x.to(compute)
    want = (
        layer(x_float, training=False) if isinstance(layer, BatchNormalization) else layer(x_float)
    )
    assert y.dtype == compute and torch.equal(y, want)


@pytest.mark.parametrize(
    "make, shape", [p[1:] for p in _FLOAT_INPUT_LAYERS], ids=[p[0] for p in _FLOAT_INPUT_LAYERS]
)
def test_float_layers_refuse_complex_inputs(make, shape):
    layer = make()
    with pytest.raises(
        TypeError,
        match=r"Expected a real \(floating, integer or bool\) input for layer '.*', which computes "
        rf"in torch.float32\. Received: inputs of dtype torch.complex64 and shape {list(shape)}".replace(
            "[", r"\["
        ).replace("]", r"\]"),
    ):
        layer(torch.ones(shape, dtype=torch.complex64))


def test_int8_dense_casts_integer_inputs_too():
    import mpq.quantization  # noqa: F401  (registers the schemes)
    from mpq.layers import Dense

    layer = Dense(2)
    layer.build((None, 3))
    layer.quantize("int8")
    x = torch.tensor([[1, -2, 3]])
    assert torch.equal(layer(x), layer(x.to(torch.float32)))
    with pytest.raises(TypeError, match=r"Expected a real \(floating, integer or bool\) input"):
        layer(x.to(torch.complex64))
