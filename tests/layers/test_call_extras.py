"""Call and module extras of Layer: dynamic=True, a call returning None, apply, name_scope,
submodules, compute_output_signature, compute_output_shape of an unbuilt layer."""

from __future__ import annotations

import pytest
import torch

from mpq.layers import Dense, Dropout, Layer, Sequential, Variable, name_scope


class Probe(Layer):
    """Records whether its call ran inside a torch.compile trace."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.compiling = []

    def call(self, x):
        self.compiling.append(torch.compiler.is_compiling())
        if float(x.sum()) > 0:  # Python control flow on a tensor value
            return x * 2
        return x


def test_dynamic_layers_run_eagerly_under_torch_compile():
    """tf.keras 2 `Layer(dynamic=...)`: "Set this to `True` if your layer should only be run
    eagerly, and should not be used to generate a static computation graph. This would be the
    case for a Tree-RNN or a recursive network, for example, or generally for any layer that
    manipulates tensors using Python control flow." `dynamic` is true when any sublayer is."""
    torch._dynamo.reset()
    static, dynamic = Probe(), Probe(dynamic=True)
    x = torch.ones(3)
    assert torch.equal(torch.compile(static, backend="eager")(x), x * 2)
    assert torch.equal(torch.compile(dynamic, backend="eager")(x), x * 2)
    assert static.compiling[-1] is True  # traced by dynamo
    assert dynamic.compiling == [False]  # excluded: ran eagerly
    assert dynamic.dynamic and not static.dynamic
    assert Sequential([Dense(3), Probe(dynamic=True)]).dynamic
    torch._dynamo.reset()


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_dynamic_layers_refuse_jit_tracing_and_keep_dynamic_in_config():
    layer = Probe(dynamic=True)
    with pytest.raises(TypeError, match=r"created with dynamic=True.*Received: a torch.jit.trace"):
        torch.jit.trace(layer, torch.ones(2))
    assert layer.get_config()["dynamic"] is True
    assert Probe.from_config(layer.get_config()).dynamic
    assert "dynamic" not in Probe().get_config()
    with pytest.raises(TypeError, match=r"Expected `dynamic` to be a bool. Received: dynamic=1"):
        Probe(dynamic=1)


def test_dynamic_layers_refuse_torch_fx_tracing():
    """A dynamic layer inside a module that torch.fx traces raises the same TypeError as under
    torch.jit.trace (fx would otherwise record one branch of its Python control flow)."""
    layer = Probe(dynamic=True)
    layer(torch.ones(2))

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = layer

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(TypeError, match=r"created with dynamic=True.*Received: a torch.jit.trace"):
        torch.fx.symbolic_trace(Wrapper())
    assert layer.compiling == [False]  # the refusal came before its call ran


def test_call_returning_none_is_rejected():
    """TF1 and tf.keras 2 `Layer.__call__`: "Raises: ValueError: if the layer's `call` method
    returns None (an invalid value)"."""

    class Nothing(Layer):
        def call(self, x):
            return None

    with pytest.raises(
        ValueError, match=r"layer 'nothing\w*' \(Nothing\) to return a tensor.*Received: None"
    ):
        Nothing()(torch.ones(1))


def test_apply_is_call_for_inputs_and_module_apply_for_functions():
    """TF1 `Layer.apply`: "Apply the layer on a input. This simply wraps `self.__call__`";
    torch's `Module.apply(fn)` keeps working for a function."""
    model = Sequential([Dense(2, kernel_initializer="ones"), Dense(1, kernel_initializer="ones")])
    x = torch.ones(1, 3)
    assert torch.equal(model.apply(x), model(x))
    assert torch.equal(model.layers[0].apply(x, training=False), torch.full((1, 2), 3.0))
    seen = []
    assert model.apply(seen.append) is model
    assert seen[-1] is model and model.layers[0] in seen and model.layers[1] in seen

    def zero(m):
        if isinstance(m, Dense):
            with torch.no_grad():
                m.kernel.zero_()

    model.apply(zero)
    assert torch.equal(model(x), torch.zeros(1, 1))
    with pytest.raises(TypeError, match=r"either inputs.*or a function alone"):
        model.apply(zero, 1)


def test_name_scope_prefixes_paths_of_layers_and_variables_created_inside():
    """tf.Module `name_scope` / Keras 3 `keras.name_scope`: names are unchanged, paths gain the
    scope (mpq: the scope active when the layer or standalone variable is created)."""
    with name_scope("encoder"):
        proj = Dense(2, name="proj")
        with name_scope("inner"):
            v = Variable(torch.zeros(1), name="v")
    plain = Dense(2, name="plain")
    proj(torch.ones(1, 3))
    assert proj.name == "proj" and proj.path == "encoder/proj"
    assert proj.kernel.name == "kernel" and proj.kernel.path == "encoder/proj/kernel"
    assert v.name == "v" and v.path == "encoder/inner/v"
    assert plain.path == "plain"
    block = Dense(4, name="block")
    with block.name_scope as scope:
        assert scope == "block"
        child = Dense(1, name="child")
    assert child.path == "block/child"
    Sequential([child], name="seq")  # tracked: the parent chain gives the path
    assert child.path == "seq/child"
    with pytest.raises(ValueError, match=r"without '/'. Received: name='a/b'"):
        with name_scope("a/b"):
            pass


def test_submodules_are_all_modules_below():
    """tf.Module `submodules`: "Submodules are modules which are properties of this module, or
    found as properties of modules which are properties of this module (and so on)"."""
    c = Dense(1)
    b = Sequential([c])
    a = Sequential([b, Dropout(0.5, seed=1)])
    subs = a.submodules
    assert subs[0] is b and subs[1] is c and isinstance(subs[2], Dropout)
    assert b.submodules == (c,)
    assert c.submodules == ()


def test_compute_output_signature():
    """tf.keras 2 `compute_output_signature`: "Unlike a TensorShape object, a TensorSpec object
    contains both shape and dtype information [...] Raises: TypeError: If input_signature
    contains a non-TensorSpec object." mpq's TensorSpec is a (meta) tensor."""
    layer = Dense(3, dtype="mixed_bfloat16")
    spec = layer.compute_output_signature(torch.empty(5, 4, device="meta"))
    assert spec.shape == (5, 3) and spec.dtype == torch.bfloat16 and spec.device.type == "meta"
    assert not layer.built  # nothing built, nothing allocated
    with pytest.raises(TypeError, match=r"Expected tensors.*Received: 5 \(of type int\)"):
        layer.compute_output_signature([(5, 4)])


def test_compute_output_shape_of_an_unbuilt_layer_does_not_build_it():
    """tf.keras 2 `compute_output_shape`: "If the layer has not been built, this method will
    call `build` on the layer"; Keras 3 computes shapes without building. mpq follows Keras 3:
    the shape comes from a meta-device copy and the layer stays unbuilt (no weights created
    for a shape that may never be used)."""
    layer = Dense(3)
    assert layer.compute_output_shape((None, 7)) == (None, 3)
    assert not layer.built and layer.weights == []
    layer(torch.ones(2, 5))  # built later for another input size
    assert layer.kernel.shape == (5, 3)


def test_dynamic_layer_shapes_come_from_compute_output_shape():
    """tf.keras 2 (functional construction of a dynamic layer): "We will use static shape
    inference to return symbolic tensors matching the specifications of the layer outputs.
    Since `self.dynamic` is True, we will never attempt to run the underlying TF graph"."""

    class ValueDependent(Layer):
        def call(self, x):
            n = int(x.abs().sum())  # needs values: cannot run on the meta device
            return x[..., :1].repeat_interleave(1, dim=-1) * n

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], 1)

    dynamic = ValueDependent(dynamic=True, dtype="mixed_bfloat16")
    spec = dynamic.compute_output_spec(torch.ones(4, 3))
    assert spec.shape == (4, 1) and spec.dtype == torch.bfloat16 and spec.device.type == "meta"
    model = Sequential([Dense(3), dynamic, Dense(2)])
    assert model.compute_output_shape((None, 5)) == (None, 2)
    assert model(torch.ones(2, 5)).shape == (2, 2)
    with pytest.raises(RuntimeError, match="meta"):  # not dynamic: the call runs on meta
        ValueDependent().compute_output_spec(torch.ones(4, 3))
