"""Embedding: exact lookups under every policy, mask_zero, the `weights` argument, gradients,
errors, and the conformance harness."""

import numpy as np
import pytest
import torch

from mpq.layers.embedding import Embedding
from mpq.testing.layer_test import run_layer_test

POLICIES = ("float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16", "float64")


@pytest.mark.parametrize("policy", POLICIES)
def test_lookup_is_exact(policy):
    layer = Embedding(11, 6, dtype=policy)
    ids = torch.tensor([[0, 3, 10], [3, 3, 1]])
    y = layer(ids)
    compute = getattr(torch, layer.compute_dtype)
    assert y.dtype == compute
    assert y.shape == (2, 3, 6)
    # a gather is exact: the rows of the table, rounded once to the compute dtype
    assert torch.equal(y, layer.embeddings.detach()[ids].to(compute))


def test_default_initializer_is_keras_uniform():
    layer = Embedding(1000, 16)
    layer.build()
    table = layer.embeddings.detach()
    assert table.abs().max() <= 0.05
    assert table.abs().max() > 0.04  # spread over the whole [-0.05, 0.05] range
    assert layer.get_config()["embeddings_initializer"]["class_name"] == "RandomUniform"


def test_mask_zero():
    layer = Embedding(5, 3, mask_zero=True)
    ids = torch.tensor([[1, 0, 4], [0, 0, 2]])
    assert layer.supports_masking
    assert layer.compute_mask(ids).tolist() == [[True, False, True], [False, False, True]]
    assert Embedding(5, 3).compute_mask(ids) is None
    assert not Embedding(5, 3).supports_masking


def test_weights_argument_builds_and_sets():
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    layer = Embedding(4, 3, weights=[table])
    assert layer.built
    y = layer(torch.tensor([2, 0]))
    np.testing.assert_array_equal(y.detach().numpy(), table[[2, 0]])


def test_float_and_int32_indices():
    layer = Embedding(6, 2, dtype="float64")
    ref = layer(torch.tensor([1, 5]))
    assert torch.equal(layer(torch.tensor([1, 5], dtype=torch.int32)), ref)
    assert torch.equal(layer.call(torch.tensor([1.0, 5.0])), ref)


def test_gradient_accumulates_repeated_rows():
    layer = Embedding(4, 2)
    y = layer(torch.tensor([1, 1, 3]), training=True)
    y.sum().backward()
    grad = layer.embeddings.grad
    assert grad.tolist() == [[0, 0], [2, 2], [0, 0], [1, 1]]


def test_compute_output_shape():
    layer = Embedding(4, 7)
    assert layer.compute_output_shape((None, 5)) == (None, 5, 7)
    assert layer.compute_output_shape((2, 3, 5)) == (2, 3, 5, 7)


def test_config_round_trip():
    layer = Embedding(4, 7, mask_zero=True, embeddings_regularizer="l2")
    config = layer.get_config()
    assert config["input_dim"] == 4 and config["output_dim"] == 7 and config["mask_zero"]
    assert Embedding.from_config(config).get_config() == config


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_dim": 0, "output_dim": 3}, r"input_dim=0 \(of type int\)"),
        ({"input_dim": 4, "output_dim": "3"}, r"output_dim='3' \(of type str\)"),
        ({"input_dim": 4.0, "output_dim": 3}, r"input_dim=4.0 \(of type float\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Embedding(**kwargs)


def test_out_of_range_index_raises():
    with pytest.raises(IndexError):
        Embedding(4, 2)(torch.tensor([4]))


@pytest.mark.parametrize("mask_zero", [False, True])
def test_conformance(mask_zero):
    run_layer_test(
        Embedding,
        {"input_dim": 5, "output_dim": 3, "mask_zero": mask_zero},
        (2, 4),
        expected_output_shape=(2, 4, 3),
        input_dtype="int64",
        input_range=(0, 5),
        supports_masking=mask_zero,
        expected_num_trainable_weights=1,
    )


def test_embedding_ids_rule():
    """Integer ids as they are; float ids only when integral (cast to int64); complex refused."""
    import re

    layer = Embedding(5, 2)
    ids = torch.tensor([[0, 4, 1]])
    expected = layer(ids)
    assert torch.equal(layer(ids.to(torch.int32)), expected)
    assert torch.equal(layer(ids.to(torch.float32)), expected)
    with pytest.raises(
        ValueError,
        match=r"Expected integer ids \(or floats with integral values\) for layer 'embedding(_\d+)?'\. "
        r"Received: inputs of dtype torch.float32 with non-integral or non-finite values",
    ):
        layer(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=re.escape("non-integral or non-finite values")):
        layer(torch.tensor([[float("nan")]]))
    with pytest.raises(
        TypeError,
        match=r"Expected integer ids for layer 'embedding(_\d+)?'\. Received: inputs of dtype "
        r"torch.complex64 and shape \[1, 2\]",
    ):
        layer(torch.ones(1, 2, dtype=torch.complex64))
