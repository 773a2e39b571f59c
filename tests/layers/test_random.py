"""mpq.layers.random: SeedGenerator state as a variable, the counter-based uniform draws, and
seeded Dropout's state among variables (stateless_call reproducible)."""

from __future__ import annotations

import math

import pytest
import torch

from mpq.layers import Dense, Dropout, SeedGenerator, Sequential
from mpq.layers.random import uniform


def test_seed_generator_state_advances_and_is_a_non_trainable_variable():
    g = SeedGenerator(7)
    assert g.next().tolist() == [7, 0]
    assert g.next().tolist() == [7, 1]
    assert g.state.tolist() == [7, 2]
    assert g.state.dtype == torch.int64 and not g.state.requires_grad
    with pytest.raises(ValueError, match=r"int64 integer. Received: seed=1.5 \(of type float\)"):
        SeedGenerator(1.5)
    with pytest.raises(ValueError, match=r"Received: seed=True"):
        SeedGenerator(True)


def test_uniform_is_reproducible_in_range_and_uniform():
    """Draws are a function of (seed, counter, index): equal inputs, equal numbers; in [0, 1) on
    the 2**-24 grid; their mean and a coarse histogram within 6 standard deviations."""
    n = 1 << 16
    seed = torch.tensor([3, 0])
    u = uniform((n,), seed, torch.device("cpu"))
    assert torch.equal(u, uniform((n,), seed.clone(), torch.device("cpu")))
    assert not torch.equal(u, uniform((n,), torch.tensor([3, 1]), torch.device("cpu")))
    assert not torch.equal(u, uniform((n,), torch.tensor([4, 0]), torch.device("cpu")))
    assert u.dtype == torch.float32 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert torch.equal(u * 2**24, torch.round(u * 2**24))
    sigma = math.sqrt(1 / 12 / n)
    assert abs(float(u.double().mean()) - 0.5) < 6 * sigma
    counts = torch.histc(u, bins=16, min=0.0, max=1.0)
    p = 1 / 16
    assert float((counts - n * p).abs().max()) < 6 * math.sqrt(n * p * (1 - p))
    assert uniform((2, 3), seed, torch.device("cpu")).shape == (2, 3)


def test_seeded_dropout_state_is_a_variable_not_a_weight():
    """Keras 3 `Layer.variables`: "List of all layer state, including random seeds"; `weights`
    excludes "metric state and random seeds"."""
    drop = Dropout(0.5, seed=11)
    model = Sequential([Dense(3), drop])
    model(torch.ones(2, 4))
    state = drop.seed_generator.state
    assert drop.variables == [state] and drop.weights == []
    assert any(v is state for v in model.non_trainable_variables)
    assert all(v is not state for v in model.weights)
    assert state.path == f"{drop.path}/seed_generator_state"
    store: dict = {}
    drop.save_own_variables(store)
    assert store == {}  # not saved with the weights (as Keras)
    assert Dropout(0.5).variables == []  # unseeded: torch's global RNG, no state


def test_stateless_call_with_seed_state_is_reproducible():
    """Keras 3 `stateless_call`: "`non_trainable_variables` include [...] RNG seed state (if
    there are any random operations part of the layer, such as dropout)"."""
    drop = Dropout(0.5, seed=5)
    x = torch.ones(64)
    nt = [v.detach().clone() for v in drop.non_trainable_variables]
    a, nt_a = drop.stateless_call([], nt, x, training=True)
    b, nt_b = drop.stateless_call([], nt, x, training=True)
    assert torch.equal(a, b)  # the same state gives the same mask
    assert nt_a[0].tolist() == [5, 1] and nt_b[0].tolist() == [5, 1]
    assert drop.seed_generator.state.tolist() == [5, 0]  # the layer was not written
    c, _ = drop.stateless_call([], nt_a, x, training=True)
    assert not torch.equal(a, c)  # the advanced state draws the next mask
    assert torch.equal(drop(x, training=True), a)  # the layer's own first draw is the same
    assert torch.equal(drop(x, training=True), c)
    assert set(a.tolist()) <= {0.0, 2.0}


def test_seeded_dropout_shape_inference_draws_nothing():
    drop = Dropout(0.5, seed=1)
    spec = drop.compute_output_spec(torch.ones(2, 3), training=True)
    assert spec.shape == (2, 3) and spec.device.type == "meta"
    assert drop.seed_generator.state.tolist() == [1, 0]
