"""mpq.initializers, mpq.regularizers, mpq.constraints: names, formulas, seeds, configs, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpq import constraints, initializers, regularizers
from mpq.layers import Conv2D, Dense
from mpq.testing import assert_close

NAMES = [
    "zeros",
    "ones",
    "constant",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_normal",
    "orthogonal",
]


@pytest.mark.parametrize("name", NAMES)
def test_every_name_resolves_and_round_trips_config(name):
    init = initializers.get(name)
    assert isinstance(init, initializers.Initializer)
    out = init((4, 6), dtype="float32")
    assert out.shape == (4, 6) and out.dtype == torch.float32
    clone = initializers.get(initializers.serialize(init))
    assert type(clone) is type(init) and clone.get_config() == init.get_config()


def test_compute_fans_matches_keras_rules():
    assert initializers.compute_fans(()) == (1, 1)
    assert initializers.compute_fans((5,)) == (5, 5)
    assert initializers.compute_fans((3, 7)) == (3, 7)
    assert initializers.compute_fans((3, 3, 16, 32)) == (144, 288)  # conv2d receptive field
    assert initializers.compute_fans((5, 8, 4)) == (40, 20)  # conv1d


def test_seeded_initializers_are_reproducible_and_advance():
    a, b = initializers.GlorotUniform(seed=3), initializers.GlorotUniform(seed=3)
    first_a, first_b = a((8, 8)), b((8, 8))
    assert torch.equal(first_a, first_b)
    assert not torch.equal(a((8, 8)), first_a)  # a seeded initializer draws a sequence
    clone = initializers.get(initializers.serialize(initializers.GlorotUniform(seed=3)))
    assert torch.equal(clone((8, 8)), first_a)
    torch.manual_seed(1)
    u1 = initializers.get("he_normal")((4, 4))
    torch.manual_seed(1)
    assert torch.equal(initializers.get("he_normal")((4, 4)), u1)  # unseeded: torch's RNG


def test_variance_scaling_bounds_and_std():
    shape = (400, 600)
    fan_in, fan_out = shape
    x = initializers.GlorotUniform(seed=0)(shape)
    limit = math.sqrt(6 / (fan_in + fan_out))
    assert float(x.abs().max()) <= limit and float(x.abs().max()) > 0.99 * limit
    he = initializers.HeNormal(seed=0)(shape)
    std = math.sqrt(2 / fan_in)
    assert float(he.abs().max()) <= 2 * std / 0.87962566103423978 + 1e-6
    assert abs(float(he.std()) / std - 1) < 0.02
    ln = initializers.LecunNormal(seed=0)(shape)
    assert abs(float(ln.std()) / math.sqrt(1 / fan_in) - 1) < 0.02
    tn = initializers.TruncatedNormal(mean=1.0, stddev=0.1, seed=0)((1000,))
    assert float(tn.min()) >= 0.8 and float(tn.max()) <= 1.2
    vs = initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal", seed=0)(shape)
    assert abs(float(vs.std()) / math.sqrt(2 / fan_out) - 1) < 0.02


def test_orthogonal_is_orthogonal():
    q = initializers.Orthogonal(gain=2.0, seed=0)((3, 4, 5)).double().reshape(12, 5)
    # float32 entries: the Gram matrix is exact up to float32 rounding over 12 terms.
    assert_close(q.T @ q, 4.0 * torch.eye(5, dtype=torch.float64), "float32", k=12)
    wide = initializers.Orthogonal(seed=0)((3, 8)).double()
    assert_close(wide @ wide.T, torch.eye(3, dtype=torch.float64), "float32", k=8)


def test_dtypes_and_errors():
    assert initializers.Constant(3)((2,), dtype="int32").tolist() == [3, 3]
    assert initializers.get("glorot_uniform")((2, 2), dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="Received: dtype='int32'"):
        initializers.RandomNormal()((2,), dtype="int32")
    with pytest.raises(ValueError, match="Received: initializer='glorot'"):
        initializers.get("glorot")
    with pytest.raises(TypeError, match=r"Received: initializer=3 \(of type int\)"):
        initializers.get(3)
    with pytest.raises(ValueError, match="Received: seed='1'"):
        initializers.RandomUniform(seed="1")
    with pytest.raises(ValueError, match="Received: mode='fan'"):
        initializers.VarianceScaling(mode="fan")
    with pytest.raises(ValueError, match="Received: distribution='normal'"):
        initializers.VarianceScaling(distribution="normal")
    with pytest.raises(ValueError, match=r"Received: shape=\(3,\)"):
        initializers.Orthogonal()((3,))
    with pytest.raises(ValueError, match="Received: config="):
        initializers.deserialize({"class_name": "Nope", "config": {}})


def test_dense_uses_initializers_by_name():
    layer = Dense(3, kernel_initializer="ones", bias_initializer=initializers.Constant(0.5))
    layer.build((None, 2))
    assert layer.kernel.tolist() == [[1.0] * 3] * 2 and layer.bias.tolist() == [0.5] * 3


# ------------------------------------------------------------------------------ regularizers


def test_regularizer_values_exact():
    x = torch.tensor([1.0, -2.0, 3.0])
    assert float(regularizers.get("l1")(x)) == np.float32(0.01) * 6
    assert float(regularizers.get("l2")(x)) == pytest.approx(0.01 * 14, rel=1e-6)
    both = regularizers.get("l1_l2")
    assert (both.l1, both.l2) == (0.01, 0.01)
    assert float(regularizers.L1L2(l1=0.5, l2=0.25)(x)) == pytest.approx(0.5 * 6 + 0.25 * 14)
    assert regularizers.L2(0.1)(x.bfloat16()).dtype == torch.float32  # reductions in float32
    for reg in (regularizers.L1(0.3), regularizers.L2(0.2), regularizers.L1L2(0.1, 0.2)):
        clone = regularizers.get(regularizers.serialize(reg))
        assert type(clone) is type(reg) and clone.get_config() == reg.get_config()


def test_regularizer_errors():
    with pytest.raises(ValueError, match="Received: regularizer='l3'"):
        regularizers.get("l3")
    with pytest.raises(ValueError, match="Received: l1=-1"):
        regularizers.L1(-1)
    with pytest.raises(TypeError, match=r"Received: regularizer=1.5 \(of type float\)"):
        regularizers.get(1.5)


# ------------------------------------------------------------------------------ constraints


def _np_norms(w, axis):
    return np.sqrt(np.sum(w * w, axis=axis, keepdims=True))


def test_constraint_formulas_match_keras():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float64) * 3
    t = torch.tensor(w)
    eps = 1e-7
    norms = _np_norms(w, 0)
    np.testing.assert_allclose(
        constraints.get("max_norm")(t).numpy(),
        w * (np.clip(norms, 0, 2) / (eps + norms)),
        rtol=1e-12,
    )
    np.testing.assert_array_equal(constraints.get("non_neg")(t).numpy(), w * (w >= 0))
    np.testing.assert_allclose(
        constraints.UnitNorm(axis=1)(t).numpy(), w / (eps + _np_norms(w, 1)), rtol=1e-12
    )
    mm = constraints.MinMaxNorm(0.5, 1.5, rate=0.7)(t).numpy()
    desired = 0.7 * np.clip(norms, 0.5, 1.5) + 0.3 * norms
    np.testing.assert_allclose(mm, w * (desired / (eps + norms)), rtol=1e-12)
    for c in (constraints.MaxNorm(3, axis=1), constraints.MinMaxNorm(0.1, 2.0, 0.5, 0)):
        assert constraints.get(constraints.serialize(c)).get_config() == c.get_config()


def test_constraints_applied_after_optimizer_step():
    layer = Dense(2, kernel_constraint="non_neg", kernel_initializer="ones")
    layer.build((None, 3))
    opt = torch.optim.SGD(layer.parameters(), lr=10.0)
    handle = constraints.attach(opt, layer)
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()  # the step drives every kernel entry to 1 - 10 = -9; the constraint clips to 0
    assert layer.kernel.tolist() == [[0.0, 0.0]] * 3
    assert float(layer.bias.detach().min()) < 0  # no constraint on the bias
    handle.remove()
    with pytest.raises(ValueError, match="Received: constraint='positive'"):
        constraints.get("positive")
    with pytest.raises(TypeError, match=r"Received: constraint=0 \(of type int\)"):
        constraints.get(0)


@pytest.mark.parametrize(
    "module, name, cls_name",
    [
        (initializers, "glorot_uniform", "GlorotUniform"),
        (regularizers, "l2", "L2"),
        (constraints, "non_neg", "NonNeg"),
    ],
)
def test_families_share_one_resolver(module, name, cls_name):
    """get / serialize / deserialize behave alike for the three families."""
    obj = module.get(name)
    assert type(obj).__name__ == cls_name
    assert module.get(cls_name).get_config() == obj.get_config()
    config = module.serialize(obj)
    assert config["class_name"] == cls_name
    assert module.deserialize(config).get_config() == obj.get_config()
    assert module.get(None) is None and module.get(obj) is obj
    assert module.get(abs) is abs  # any callable is taken as it is
    with pytest.raises(TypeError, match=r"Received: \w+='x' \(of type str\)"):
        module.serialize("x")
    with pytest.raises(ValueError, match=r"Received: config=\{'class_name': 'Nope'\}"):
        module.deserialize({"class_name": "Nope"})
    # A class_name that is not a string (here unhashable) is refused with the same ValueError
    # (it raised "TypeError: unhashable type: 'list'" from a dict lookup).
    with pytest.raises(ValueError, match=r"Received: config=\{'class_name': \['x'\]\}"):
        module.deserialize({"class_name": ["x"]})


@pytest.mark.parametrize(
    "make",
    [
        lambda init: Dense(2, kernel_initializer=init),
        lambda init: Conv2D(2, 1, kernel_initializer=init),
    ],
)
def test_a_plain_callable_initializer_cannot_be_serialized_in_any_layer(make):
    """The same error, from the same serializer, whichever layer holds the callable."""

    def init(shape, dtype=None):
        return torch.zeros(shape)

    layer = make(init)
    with pytest.raises(
        TypeError, match=r"Received: initializer=<function .*init.* \(of type function\)"
    ):
        layer.get_config()
