"""Keras-style mask propagation: masks ride on tensors from layer to layer."""

import pytest
import torch

from mpq.layers import (
    Add,
    Concatenate,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    Layer,
    LayerNormalization,
    Sequential,
    get_mask,
)

TOKENS = torch.tensor([[3, 0, 5], [0, 0, 1]])
EXPECTED = TOKENS != 0


class MaskRecorder(Layer):
    """Records the mask its `call` receives; supports masking (passes it on)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.seen = []

    def call(self, inputs, mask=None):
        self.seen.append(mask)
        return inputs * 2


def test_embedding_mask_reaches_a_layer_whose_call_takes_mask():
    recorder = MaskRecorder()
    model = Sequential([Embedding(10, 4, mask_zero=True), Dense(3), Dropout(0.5), recorder])
    out = model(TOKENS)
    assert torch.equal(recorder.seen[-1], EXPECTED)
    assert torch.equal(get_mask(out), EXPECTED)  # Dense, Dropout and the recorder pass it on


def test_layers_without_masking_support_drop_the_mask():
    model = Sequential([Embedding(10, 4, mask_zero=True), Flatten(), Dense(2)])
    assert get_mask(model(TOKENS)) is None


def test_no_mask_zero_no_mask():
    out = Sequential([Embedding(10, 4), Dense(3), LayerNormalization()])(TOKENS)
    assert get_mask(out) is None


def test_explicit_mask_wins_and_propagates():
    recorder = MaskRecorder()
    emb = Embedding(10, 4, mask_zero=True)
    explicit = torch.ones_like(EXPECTED)
    out = recorder(emb(TOKENS), mask=explicit)
    assert recorder.seen[-1] is explicit
    assert get_mask(out) is explicit
    # A layer whose call takes no `mask` still propagates an explicit one.
    assert get_mask(Dense(2)(torch.randn(2, 3, 4), mask=explicit)) is explicit


def test_merge_layers_combine_masks():
    emb = Embedding(10, 4, mask_zero=True)
    a = emb(TOKENS)
    b = Dense(4)(emb(torch.tensor([[3, 4, 0], [0, 2, 1]])))
    other = torch.tensor([[1, 1, 0], [0, 1, 1]]).bool()
    assert torch.equal(get_mask(Add()([a, b])), EXPECTED | other)  # Keras 3: OR of the masks
    # an unmasked input with a masked one: Keras 3 needs every mask, so none comes out
    assert get_mask(Add()([a, torch.randn(2, 3, 4)])) is None


def test_mask_survives_autocast_of_the_input():
    """The cast to a bfloat16 layer's compute dtype makes a new tensor; the mask follows."""
    recorder = MaskRecorder(dtype="bfloat16")
    emb = Embedding(10, 4, mask_zero=True)  # float32 output
    recorder(emb(TOKENS))
    assert torch.equal(recorder.seen[-1], EXPECTED)


@pytest.mark.parametrize("layer", [Add(), Concatenate()], ids=["Add", "Concatenate"])
@pytest.mark.parametrize("mask", [[EXPECTED], EXPECTED], ids=["too_few", "not_a_list"])
def test_merge_layers_reject_a_mask_list_that_does_not_match_the_inputs(layer, mask):
    inputs = [torch.ones(2, 3), torch.ones(2, 3)]
    with pytest.raises(
        ValueError, match=r"Expected one mask \(or None\) per input \(2\)\. Received: mask="
    ):
        layer.compute_mask(inputs, mask)
