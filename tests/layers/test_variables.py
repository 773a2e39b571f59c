"""mpq.layers.Variable: the Keras variable API on a torch Parameter."""

from __future__ import annotations

import copy
import pickle

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpq.layers import Layer, Variable


def test_assign_family_and_numpy():
    v = Variable(torch.zeros(3), name="v")
    assert v.name == "v" and v.path == "v" and v.trainable and v.autocast
    v.assign(np.array([1.0, 2.0, 3.0]))
    v.assign_add(torch.ones(3))
    v.assign_sub(0.5)
    np.testing.assert_array_equal(v.numpy(), np.array([1.5, 2.5, 3.5], np.float32))
    assert v.dtype == torch.float32 and v.grad is None and v.is_leaf
    assert v.value is v  # outside any call


def test_assign_errors_name_the_variable():
    v = Variable(torch.zeros(3), name="w")
    with pytest.raises(
        ValueError, match=r"shape \(3,\) to assign variable 'w'. Received: value.shape=\(2,\)"
    ):
        v.assign(torch.zeros(2))
    with pytest.raises(TypeError, match=r"Received: value='x'"):
        v.assign("x")


def test_integer_variables_are_not_trainable():
    with pytest.raises(ValueError, match=r"Received: dtype=torch.int32"):
        Variable(torch.zeros(2, dtype=torch.int32), trainable=True)
    v = Variable(torch.zeros(2, dtype=torch.int32), trainable=False, name="i")
    assert not v.requires_grad
    with pytest.raises(ValueError, match="Received: trainable=True for variable 'i'"):
        v.trainable = True
    v.assign_add(torch.tensor([1, 2], dtype=torch.int32))
    assert v.tolist() == [1, 2]


def test_trainable_setter_toggles_requires_grad():
    v = Variable(torch.zeros(2))
    v.trainable = False
    assert not v.requires_grad and not v.trainable
    v.trainable = True
    assert v.requires_grad


@settings(max_examples=25, deadline=None)
@given(bits=st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=16))
def test_numpy_bfloat16_is_bit_exact(bits):
    raw = torch.tensor(np.array(bits, np.uint16).view(np.int16))
    v = Variable(raw.view(torch.bfloat16), trainable=False)
    out = v.numpy()
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out.view(np.uint16), np.array(bits, np.uint16))


def test_float8_numpy_and_assign_roundtrip():
    codes = torch.arange(256, dtype=torch.uint8)
    v = Variable(codes.view(torch.float8_e4m3fn), trainable=False)
    arr = v.numpy()
    assert arr.dtype == ml_dtypes.float8_e4m3fn
    w = Variable(torch.zeros(256, dtype=torch.float8_e4m3fn), trainable=False)
    w.assign(arr)
    # Every code survives, NaNs included (compare bits, not values).
    assert torch.equal(w.view(torch.uint8), codes)


def test_deepcopy_and_pickle_keep_the_subclass_and_attributes():
    v = Variable(torch.arange(3.0), name="k", autocast=False, trainable=False)
    for clone in (copy.deepcopy(v), pickle.loads(pickle.dumps(v))):
        assert type(clone) is Variable
        assert clone.name == "k" and clone.autocast is False and not clone.requires_grad
        assert torch.equal(clone, v) and clone.data_ptr() != v.data_ptr()


def test_variable_path_and_owner():
    layer = Layer(name="owner")
    v = layer.add_weight(shape=(2,), name="w")
    assert v.path == "owner/w"
    assert "Variable path=owner/w shape=(2,)" in repr(v)


def test_module_to_keeps_variables():
    layer = Layer()
    v = layer.add_weight(shape=(2,), name="w")
    layer.to(torch.float64)
    assert layer.w is v and v.dtype == torch.float64 and isinstance(layer.w, Variable)


def test_dtype_resolution_errors_name_the_dtype():
    from mpq.layers.variables import to_torch_dtype

    assert to_torch_dtype("bfloat16") == torch.bfloat16
    assert to_torch_dtype(np.dtype("int16")) == torch.int16
    assert to_torch_dtype(ml_dtypes.bfloat16) == torch.bfloat16
    assert to_torch_dtype("bool") == torch.bool
    with pytest.raises(ValueError, match=r"Received: dtype='nope' \(of type str\)"):
        to_torch_dtype("nope")
    with pytest.raises(ValueError, match="Received: dtype='nn'"):
        Layer().add_weight(shape=(1,), dtype="nn")


def test_scalar_and_read_only_numpy_weights_round_trip():
    """0-d weights keep their shape through get_weights/set_weights; read-only arrays load."""
    import numpy as np

    from mpq.layers import Layer

    class Counter(Layer):
        def build(self, input_shape):
            self.count = self.add_weight(
                shape=(), initializer="zeros", trainable=False, name="count"
            )

        def call(self, x):
            self.count.assign_add(1.0)
            return x

    layer = Counter()
    layer(np.ones((2, 2), np.float32))
    weights = layer.get_weights()
    assert weights[0].shape == () and weights[0] == 1.0
    frozen = np.array(5.0, np.float32)
    frozen.setflags(write=False)
    layer.set_weights([frozen])
    assert layer.count.shape == () and float(layer.count) == 5.0


# --- value checks on every write (issue #12) -------------------------------------------------


def _int_var(dtype=torch.int8, shape=(3,)):
    return Variable(torch.zeros(shape, dtype=dtype), name="codes", trainable=False)


@pytest.mark.parametrize(
    "dtype, value, shown",
    [
        (torch.int8, 1000, "1000"),  # torch's cast would give -24
        (torch.int8, 128, "128"),  # -128
        (torch.int8, -129, "-129"),
        (torch.uint8, 256, "256"),  # 0
        (torch.uint8, -1, "-1"),  # 255
        (torch.int32, 2**31, "2147483648"),
    ],
)
def test_integer_variables_refuse_values_their_dtype_cannot_hold(dtype, value, shown):
    v = _int_var(dtype)
    info = torch.iinfo(dtype)
    pattern = (
        rf"Expected values of {dtype} in \[{info.min}, {info.max}\] to assign variable 'codes' "
        rf"of dtype {dtype}\. Received: 3 value\(s\) out of range, the first value={shown} at "
        r"index \[0\]"
    )
    with pytest.raises(ValueError, match=pattern):
        v.assign(torch.full((3,), value, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"Expected values of"):
        v.assign(np.full((3,), value, dtype=np.int64))
    assert torch.equal(v, torch.zeros(3, dtype=dtype))  # nothing written


def test_integer_variables_refuse_non_integral_and_non_finite_floats():
    v = _int_var()
    for bad, shown in ((1.5, "1.5"), (float("nan"), "nan"), (float("inf"), "inf")):
        with pytest.raises(
            ValueError,
            match=rf"Expected integral, finite values to assign integer variable 'codes' of dtype "
            rf"torch.int8\. Received: 1 value\(s\) not integral, the first value={shown} at index \[1\]",
        ):
            v.assign(torch.tensor([1.0, bad, 2.0]))
    v.assign(torch.tensor([-3.0, 0.0, 127.0]))  # integral floats are exact: accepted
    assert v.tolist() == [-3, 0, 127]


def test_integer_assign_add_checks_the_exact_result():
    v = _int_var()
    v.assign(torch.tensor([100, 0, 0], dtype=torch.int8))
    with pytest.raises(
        ValueError,
        match=r"Expected values of torch.int8 in \[-128, 127\] to assign_add to variable 'codes'.*"
        r"first value=200 at index \[0\]",
    ):
        v.assign_add(torch.tensor([100, 1, 1], dtype=torch.int8))
    assert v.tolist() == [100, 0, 0]
    v.assign_add(torch.tensor([27, -128, 1], dtype=torch.int8))
    assert v.tolist() == [127, -128, 1]


def test_complex_values_into_real_variables_raise_type_error():
    v = Variable(torch.zeros(2), name="w")
    with pytest.raises(
        TypeError,
        match=r"Expected a real value to assign variable 'w' of dtype torch.float32\. Received: a "
        r"complex value of dtype torch.complex64; pass value.real explicitly",
    ):
        v.assign(torch.ones(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"Expected a real value to assign_add to variable 'w'"):
        v.assign_add(np.ones(2, dtype=np.complex128))
    assert torch.equal(v, torch.zeros(2))


def test_value_rules_bound_codes_and_scales():
    from mpq.layers.variables import POSITIVE_FINITE, ValueRule, set_value_rule

    codes = _int_var()
    set_value_rule(codes, ValueRule("int8 codes", -127, 127))
    with pytest.raises(
        ValueError,
        match=r"Expected int8 codes in \[-127, 127\] to assign variable 'codes' of dtype "
        r"torch.int8\. Received: 1 value\(s\) out of range, the first value=-128 at index \[2\]",
    ):
        codes.assign(torch.tensor([0, 1, -128], dtype=torch.int8))
    scale = Variable(torch.ones(4), name="scale", trainable=False)
    set_value_rule(scale, POSITIVE_FINITE)
    for bad in (0.0, -1.0, float("nan"), float("inf"), -0.0):
        with pytest.raises(
            ValueError,
            match=r"Expected scales that are finite and > 0 to assign variable 'scale' of dtype "
            r"torch.float32\. Received: 1 value\(s\) out of range",
        ):
            scale.assign(torch.tensor([1.0, 2.0, bad, 3.0]))
    scale.assign(torch.tensor([1e-7 / 127, 1.0, 3e38, 1e-45]))  # tiny and huge finite: fine
    assert torch.equal(scale, torch.tensor([1e-7 / 127, 1.0, 3e38, 1e-45]))


def test_set_weights_and_load_own_variables_check_values_before_any_write():
    class Codes(Layer):
        def build(self, input_shape=None):
            self.w = self.add_weight((2,), initializer="ones", name="w")
            self.q = self.add_weight((2,), dtype="int8", trainable=False, name="q")

    layer = Codes()
    layer.build()
    with pytest.raises(
        ValueError,
        match=r"Expected values of torch.int8 in \[-128, 127\] to set_weights into variable",
    ):
        layer.set_weights([np.full(2, 5.0, np.float32), np.array([1, 300])])
    with pytest.raises(
        ValueError, match=r"Expected values of torch.int8 in \[-128, 127\] to load into variable"
    ):
        layer.load_own_variables({"w": torch.full((2,), 5.0), "q": torch.tensor([1, 300])})
    assert torch.equal(layer.w, torch.ones(2)) and torch.equal(
        layer.q, torch.zeros(2, dtype=torch.int8)
    )


@settings(deadline=None, max_examples=60)
@given(
    dtype=st.sampled_from([torch.int8, torch.uint8, torch.int16, torch.int32]),
    values=st.lists(st.integers(-(2**40), 2**40) | st.integers(-300, 300), min_size=1, max_size=6),
)
def test_integer_assign_stores_exactly_or_raises(dtype, values):
    """Property: assign into an integer variable either stores every value exactly or raises
    ValueError (and writes nothing); it raises exactly when a value is outside the dtype."""
    info = torch.iinfo(dtype)
    v = Variable(torch.zeros(len(values), dtype=dtype), name="codes", trainable=False)
    fits = all(info.min <= x <= info.max for x in values)
    if fits:
        v.assign(torch.tensor(values, dtype=torch.int64))
        assert v.tolist() == values
    else:
        with pytest.raises(ValueError, match=r"Expected values of"):
            v.assign(torch.tensor(values, dtype=torch.int64))
        assert v.tolist() == [0] * len(values)


def test_assign_inside_a_meta_shape_run_stays_on_meta():
    """compute_output_spec of a built layer that assigns in `call` (BatchNormalization's moving
    statistics in training) runs on meta values: the recorded write stays there (it used to
    raise "Cannot copy out of meta tensor"), and the layer is not written."""
    from mpq.layers import BatchNormalization

    layer = BatchNormalization()
    layer.build((None, 3))
    before = layer.moving_mean.detach().clone()
    spec = layer.compute_output_spec(torch.ones(4, 3), training=True)
    assert spec.device.type == "meta" and tuple(spec.shape) == (4, 3)
    assert torch.equal(layer.moving_mean.detach(), before)


@pytest.mark.parametrize("aggregation", [None, "none", "mean", "sum", "only_first_replica"])
def test_aggregation_accepts_the_keras_values(aggregation):
    """Keras 3 `add_weight`: "aggregation: Optional string, one of `None`, `"none"`, `"mean"`,
    `"sum"` or `"only_first_replica"`"; None is stored as "none"."""
    layer = Layer()
    var = layer.add_weight(shape=(2,), aggregation=aggregation, name="w")
    assert var.aggregation == (aggregation or "none")
    assert Variable(torch.zeros(1), aggregation=aggregation).aggregation == (aggregation or "none")


@pytest.mark.parametrize("bad", ["max", "MEAN", 1, ""])
def test_aggregation_rejects_other_values(bad):
    with pytest.raises(
        ValueError, match=r"`aggregation` to be one of None, 'none'.*Received: aggregation="
    ):
        Layer().add_weight(shape=(1,), aggregation=bad, name="w")
    with pytest.raises(ValueError, match=rf"Received: aggregation={bad!r}"):
        Variable(torch.zeros(1), aggregation=bad)


class _Amax(Layer):
    """A layer with an `overwrite_with_gradient` variable, as Keras 3 float8 amax histories."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(3,), initializer="ones", name="w")
        self.history = self.add_weight(
            shape=(3,), initializer="zeros", overwrite_with_gradient=True, name="history"
        )

    def call(self, x):
        return (x * self.w).sum() + (x * self.history).sum() * 2.0


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.5),
        lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=0.1),
        lambda ps: torch.optim.AdamW(ps, lr=0.1),
    ],
    ids=["sgd_momentum_wd", "adam", "adamw"],
)
def test_overwrite_with_gradient_writes_the_gradient_with_plain_optimizers(make_opt):
    """Keras 3 `add_weight`: "overwrite_with_gradient: Boolean, whether to overwrite the variable
    with the computed gradient. This is useful for float8 training." With a torch optimizer
    (momentum, weight decay, Adam moments), the value after the step is exactly the gradient."""
    layer = _Amax()
    x = torch.tensor([1.0, -2.0, 3.0])
    layer(x)
    opt = make_opt(layer.parameters())
    for step in range(3):
        opt.zero_grad()
        layer(x * (step + 1)).backward()
        assert layer.history.grad is None  # nothing left for the optimizer
        opt.step()
        assert torch.equal(layer.history.detach(), x * (step + 1) * 2.0)
    assert not torch.equal(layer.w.detach(), torch.ones(3))  # the other weight trained as usual
    assert layer.history.overwrite_with_gradient
    # Copies keep the behaviour; switching it off leaves a plain trainable variable.
    clone = copy.deepcopy(layer)
    clone(x).backward()
    assert torch.equal(clone.history.detach(), x * 2.0)
    clone.history.overwrite_with_gradient = False
    clone(x).backward()
    assert torch.equal(clone.history.grad, x * 2.0)


def test_overwrite_with_gradient_must_be_a_bool():
    with pytest.raises(TypeError, match=r"to be a bool. Received: overwrite_with_gradient='yes'"):
        Variable(torch.zeros(1), overwrite_with_gradient="yes")
