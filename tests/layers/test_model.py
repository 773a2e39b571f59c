"""The layers together: small models built from them train in a plain PyTorch loop under a
mixed policy, and round-trip through state_dict and mpq.saving."""

import pytest
import torch

import mpq.saving
from mpq.layers.conv import Conv2D
from mpq.layers.core import Activation, Dropout, Flatten, Reshape
from mpq.layers.dense import Dense
from mpq.layers.einsum_dense import EinsumDense
from mpq.layers.embedding import Embedding
from mpq.layers.normalization import BatchNormalization, LayerNormalization
from mpq.layers.sequential import Sequential


def _conv_net(policy):
    return Sequential(
        [
            Conv2D(4, 3, padding="same"),
            BatchNormalization(),
            Activation("relu"),
            Conv2D(4, 3, strides=2, groups=2, padding="same"),
            Flatten(),
            Dropout(0.1, seed=0),
            Dense(3),
        ],
        dtype=policy,
    )


def _token_net(policy):
    return Sequential(
        [
            Embedding(16, 8),
            EinsumDense("abc,cd->abd", (None, 8), bias_axes="d", activation="gelu"),
            LayerNormalization(),
            Reshape((-1,)),
            Dense(2),
        ],
        dtype=policy,
    )


@pytest.mark.parametrize(
    ("factory", "make_x"),
    [
        (_conv_net, lambda g: torch.randn(8, 6, 6, 2, generator=g)),
        (_token_net, lambda g: torch.randint(0, 16, (8, 5), generator=g)),
    ],
)
def test_trains_under_mixed_bfloat16_with_float32_masters(factory, make_x):
    g = torch.Generator().manual_seed(0)
    model = factory("mixed_bfloat16")
    x = make_x(g)
    target = torch.randn(8, 3 if factory is _conv_net else 2, generator=g)
    model(x)  # build
    assert all(w.dtype == torch.float32 for w in model.weights)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        y = model(x, training=True)
        assert y.dtype == torch.bfloat16
        loss = torch.nn.functional.mse_loss(y.float(), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(w.dtype == torch.float32 for w in model.weights)


@pytest.mark.parametrize(
    ("factory", "x"),
    [
        (_conv_net, torch.randn(2, 6, 6, 2)),
        (_token_net, torch.randint(0, 16, (2, 5))),
    ],
)
def test_state_dict_and_saving_round_trip(factory, x, tmp_path):
    model = factory("mixed_float16")
    model(x, training=True)  # build and move the batch-norm statistics
    expected = model(x, training=False)

    fresh = factory("mixed_float16")
    fresh(x, training=False)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x, training=False), expected)

    path = tmp_path / "model.mpq"
    mpq.saving.save(model, path)
    loaded = mpq.saving.load(path)
    assert type(loaded) is Sequential
    assert [type(a) for a in loaded.layers] == [type(b) for b in model.layers]
    assert torch.equal(loaded(x, training=False), expected)
    for a, b in zip(loaded.weights, model.weights, strict=True):
        assert torch.equal(a, b)
