"""mpq.training.from_torch: standard torch layers -> mpq layers with the same weights."""

import copy

import pytest
import torch
from torch import nn

import mpq
from mpq.layers import BatchNormalization, Conv1D, Conv2D, Dense, Embedding, LayerNormalization
from mpq.testing import assert_close, sqnr
from mpq.training import from_torch


class CNN(nn.Module):
    def __init__(self, batch_norm=True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8) if batch_norm else nn.Identity(),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),  # not a Keras "same": pad + valid
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, (3, 1), padding="same", groups=4, bias=False),
        )
        self.seq = nn.Conv1d(16, 8, 3, dilation=2)
        self.head = nn.Linear(8 * 4, 5)

    def forward(self, x):
        x = self.features(x)  # [N, 16, 4, 4]
        x = self.seq(x.flatten(2))  # [N, 8, 12]
        return self.head(x[..., :4].flatten(1))


class TextModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.norm = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 16)
        self.gru = nn.GRU(16, 8, batch_first=True)

    def forward(self, ids):
        h = self.proj(self.norm(self.embed(ids)))
        return self.gru(h)[0]


class _ScaledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def _cnn(seed=0, batch_norm=True):
    torch.manual_seed(seed)
    net = CNN(batch_norm)
    if not batch_norm:
        return net
    with torch.no_grad():  # non-trivial BatchNorm statistics
        bn = net.features[1]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return net


def test_cnn_nchw_outputs_match_torch_under_float32():
    net = _cnn()
    model, report = from_torch(net)
    assert report.converted == {
        "features.0": "Conv2d -> Conv2D",
        "features.1": "BatchNorm2d -> BatchNormalization",
        "features.3": "Conv2d -> ConstantPad + Conv2D",
        "features.6": "Conv2d -> Conv2D",
        "seq": "Conv1d -> Conv1D",
        "head": "Linear -> Dense",
    }
    assert report.unsupported == {}
    assert set(report.unchanged) == {"features.2", "features.4", "features.5"}
    assert (
        isinstance(model.features[0], Conv2D) and model.features[0].data_format == "channels_first"
    )
    assert isinstance(model.features[3].conv, Conv2D)
    assert isinstance(model.seq, Conv1D) and isinstance(model.head, Dense)
    assert isinstance(model.features[1], BatchNormalization)
    x = torch.randn(4, 3, 16, 16)
    net.eval()
    model.eval()
    # BatchNorm's CPU kernel fuses its affine map differently: equal to rounding only.
    assert_close(model(x), net(x), "float32", k=16 * 9)
    # Without BatchNorm the convolutions still differ from torch's in how they run: mpq adds the
    # bias in its own epilogue (torch fuses it into the convolution, where oneDNN may start the
    # accumulator from it), and a Conv1D input of height 1 has strides that are also channels_last,
    # so oneDNN may pick another algorithm for it. Which algorithm runs depends on the CPU, the
    # thread count and the layout, so the outputs are equal to rounding only (bit-equal on some
    # machines, 1e-7 apart on an AMD EPYC in a full parallel run): a tolerance derived from the
    # longest reduction (16 channels x 3x3 taps) and float32's epsilon.
    net = _cnn(batch_norm=False)
    model, report = from_torch(net)
    assert "features.1" in report.unchanged
    assert_close(model(x), net(x), "float32", k=16 * 9)


def test_cnn_training_mode_outputs_and_gradients_match():
    net = _cnn()
    model, _ = from_torch(net)
    x = torch.randn(4, 3, 16, 16)
    y_ref, y = net(x), model(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y_ref.square().sum().backward()
    y.square().sum().backward()
    torch.testing.assert_close(
        model.head.kernel.grad, net.head.weight.grad.t(), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        model.features[0].kernel.grad,
        net.features[0].weight.grad.permute(2, 3, 1, 0),
        rtol=1e-4,
        atol=1e-5,
    )
    # BatchNorm moving mean follows torch's running mean (momentum 0.9 <-> torch's 0.1).
    torch.testing.assert_close(model.features[1].moving_mean.detach(), net.features[1].running_mean)


def test_original_is_untouched_and_weights_are_independent():
    net = _cnn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model, _ = from_torch(net)
    with torch.no_grad():
        model.head.kernel.add_(1.0)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert isinstance(net.head, nn.Linear)


def test_text_model_with_example_inputs_and_unsupported_modules():
    torch.manual_seed(0)
    net = TextModel()
    ids = torch.randint(0, 50, (2, 7))
    model, report = from_torch(net, example_inputs=ids)
    assert report.converted == {
        "embed": "Embedding -> Embedding",
        "norm": "LayerNorm -> LayerNormalization",
        "proj": "Linear -> Dense",
    }
    assert report.unsupported == {"gru": "GRU: no mpq equivalent"}
    assert isinstance(model.gru, nn.GRU)
    assert isinstance(model.embed, Embedding) and isinstance(model.norm, LayerNormalization)
    assert torch.equal(model(ids), net(ids))
    assert "gru" in str(report)


def test_layer_norm_without_example_inputs_accepts_every_rank_like_torch():
    net = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 2))
    model, report = from_torch(net)
    assert "0" not in report.notes
    for shape in [(3, 6), (2, 3, 6), (2, 2, 3, 6)]:
        x = torch.randn(shape)
        assert torch.equal(model(x), net(x))
    with pytest.raises(ValueError, match="ndim"):
        model(torch.randn(6))  # rank 1: batch axis missing
    two = from_torch(nn.LayerNorm((3, 6)))[0]
    x = torch.randn(2, 4, 3, 6)
    assert torch.equal(two(x), nn.functional.layer_norm(x, (3, 6), two.gamma, two.beta, 1e-5))


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (nn.Embedding(10, 4, max_norm=1.0), "max_norm=1.0: torch renormalizes"),
        (nn.Embedding(10, 4, sparse=True), "sparse=True"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
        (nn.BatchNorm2d(4, track_running_stats=False), "track_running_stats=False"),
        (nn.BatchNorm2d(4, momentum=None), "momentum=None"),
        (_ScaledLinear(3, 3), "_ScaledLinear: subclass of nn.Linear that overrides forward"),
        (nn.BatchNorm1d(4), "no mpq equivalent"),
        (nn.Conv3d(2, 2, 3), "Conv3d: no mpq equivalent"),
        (nn.MultiheadAttention(4, 2, add_bias_kv=True), "add_bias_kv=True"),
        (nn.MultiheadAttention(4, 2, add_zero_attn=True), "add_zero_attn=True"),
    ],
)
def test_unsupported_options_are_left_and_reported(module, reason):
    wrapper = nn.Sequential(module)
    model, report = from_torch(wrapper)
    assert type(model[0]) is type(module)
    assert reason in report.unsupported["0"]
    assert report.converted == {}


def test_root_module_and_frozen_parameters():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    lin.weight.requires_grad_(False)
    layer, report = from_torch(lin)
    assert isinstance(layer, Dense) and report.converted == {"": "Linear -> Dense"}
    assert not layer.kernel.requires_grad and layer.bias.requires_grad
    x = torch.randn(5, 4)
    assert torch.equal(layer(x), lin(x))


def test_policy_mixed_bfloat16_and_policy_map():
    net = _cnn()
    net.eval()
    x = torch.randn(4, 3, 16, 16)
    model, _ = from_torch(net, "mixed_bfloat16", cast_outputs=False)
    model.eval()
    y = model(x)
    assert y.dtype == torch.bfloat16
    # By default a converted module returns the dtype the torch module returned.
    cast, _ = from_torch(net, "mixed_bfloat16")
    cast.eval()
    assert torch.equal(cast(x), y.float())
    assert model.head.kernel.dtype == torch.float32
    assert sqnr(net(x), y.float()) > 30
    pmap = mpq.policy.DTypePolicyMap(
        default_policy="float32", policy_map={r"features\..*": "mixed_float16"}
    )
    model, _ = from_torch(net, pmap)
    assert model.features[0].dtype_policy.name == "mixed_float16"
    assert model.head.dtype_policy.name == "float32"
    assert model(x).dtype == torch.float32


def test_policy_none_keeps_the_weight_dtype():
    lin = nn.Linear(4, 3).to(torch.bfloat16)
    layer, _ = from_torch(lin)
    assert layer.dtype_policy.name == "bfloat16"
    x = torch.randn(2, 4, dtype=torch.bfloat16)
    assert torch.equal(layer(x), lin(x))


def test_converted_model_trains_with_a_torch_optimizer():
    net = _cnn()
    model, _ = from_torch(net)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, target = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_errors():
    with pytest.raises(TypeError, match="Received: module of type str"):
        from_torch("net")
    with pytest.raises(TypeError, match="Received: example_inputs of type dict"):
        from_torch(nn.Linear(2, 2), example_inputs={"x": 1})
    with pytest.raises(ValueError, match=r"Received: identifier=3 \(of type int\)"):
        from_torch(nn.Linear(2, 2), 3)


def test_quantize_and_policy_map_apply_to_a_converted_torch_model():
    import mpq

    net = _cnn(batch_norm=False)
    net.eval()
    x = torch.randn(4, 3, 16, 16)
    reference = net(x)
    model, _ = from_torch(net)
    model.eval()
    report = mpq.quantize(model, "int8")
    assert sorted(report.quantized) == ["features.0", "features.3", "features.6", "head", "seq"]
    assert model.head.quantization_mode == "int8"
    assert sqnr(reference, model(x)) > 30
    # a DTypePolicyMap at conversion: int8 for the convolutions only
    pmap = mpq.policy.DTypePolicyMap(
        default_policy="float32", policy_map={r"features\..*": "int8_from_float32"}
    )
    mixed, _ = from_torch(net, pmap)
    mixed.eval()
    assert mixed.features[0].quantization_mode == "int8"
    assert mixed.head.quantization_mode is None
    y = mixed(x)
    assert y.dtype == torch.float32 and sqnr(reference, y) > 30


def test_quantize_rejects_a_torch_model_without_mpq_layers():
    import mpq

    with pytest.raises(TypeError, match=r"(?s)holding mpq layers.*\(of type Sequential\)"):
        mpq.quantize(nn.Sequential(nn.Linear(2, 2)), "int8")


def test_converted_layers_stay_on_the_module_device():
    # No GPU in CI: the meta device stands in for "not the CPU".
    net = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)).to("meta")
    model, report = from_torch(net)
    assert len(report.converted) == 2
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model(torch.empty(2, 4, device="meta")).shape == (2, 3)


# ----------------------------------------------------------------------------- issue 13
def _encoder(batch_first=True):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=batch_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def _rel(ref, y):
    return float(
        (y.detach().double() - ref.detach().double()).norm() / ref.detach().double().norm()
    )


@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_transformer_encoder_converts_fully_and_matches(batch_first):
    net = _encoder(batch_first).eval()
    model, report = from_torch(net)
    assert report.coverage == 1.0 and report.unsupported == {}
    assert report.converted["layers.0.self_attn"] == (
        "MultiheadAttention -> MultiheadAttention (4 Dense)"
    )
    assert "layers.0.self_attn.out_proj" not in report.converted  # part of the attention
    attn = model.layers[0].self_attn
    assert all(isinstance(getattr(attn, p), Dense) for p in ("q_proj", "k_proj", "v_proj"))
    x = torch.randn(3, 5, 16)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    if not batch_first:
        x = x.transpose(0, 1)
    model.eval()
    with torch.no_grad():  # eval + no_grad: torch's fused fast path for the original
        for kwargs in ({}, {"src_key_padding_mask": pad}, {"is_causal": True, "mask": None}):
            if kwargs.get("is_causal"):
                kwargs["mask"] = nn.Transformer.generate_square_subsequent_mask(5)
            ref, y = net(x, **kwargs), model(x, **kwargs)
            keep = ~torch.isnan(ref)  # the fast path leaves padded positions at 0 or NaN
            assert _rel(ref[keep], y[keep]) <= 1e-5, kwargs
    # quantized: the attention projections are int8 Dense layers
    q = mpq.quantize(model, "int8")
    assert "layers.1.self_attn.q_proj" in q.quantized
    with torch.no_grad():
        assert sqnr(net(x), model(x)) > 30


def test_multihead_attention_weights_masks_and_training_gradients():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, kdim=6, vdim=4)  # separate q/k/v weights
    model, report = from_torch(mha)
    assert report.coverage == 1.0
    q, k, v = torch.randn(5, 3, 8), torch.randn(7, 3, 6), torch.randn(7, 3, 4)
    mask = torch.rand(5, 7) > 0.7
    mask[:, 0] = False
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[1, -2:] = True
    for kwargs in (
        {},
        {"attn_mask": mask, "key_padding_mask": kpm},
        {"attn_mask": torch.randn(6, 5, 7)},
        {"average_attn_weights": False},
    ):
        (y_ref, w_ref), (y, w) = mha(q, k, v, **kwargs), model(q, k, v, **kwargs)
        assert _rel(y_ref, y) <= 1e-5 and _rel(w_ref, w) <= 1e-5, kwargs
    y, w = model(q, k, v, need_weights=False)
    assert w is None
    # unbatched inputs
    (y_ref, _), (y, _) = mha(q[:, 0], k[:, 0], v[:, 0]), model(q[:, 0], k[:, 0], v[:, 0])
    assert _rel(y_ref, y) <= 1e-5
    # gradients (dropout 0): the same as torch's
    mha(q, k, v)[0].square().sum().backward()
    model(q, k, v)[0].square().sum().backward()
    torch.testing.assert_close(model.q_proj.kernel.grad, mha.q_proj_weight.grad.t())
    torch.testing.assert_close(model.out_proj.kernel.grad, mha.out_proj.weight.grad.t())
    assert model.in_proj_weight.device.type == "meta" and model.in_proj_weight.shape == (24, 8)
    with pytest.raises(TypeError, match=r"Expected an attention mask of dtype bool or a float"):
        model(q, k, v, attn_mask=torch.zeros(5, 7, dtype=torch.int64))


def test_read_only_torch_views_of_converted_layers():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, dilation=1, groups=1),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 7 * 7, 5),
        nn.LayerNorm(5, eps=1e-3),
    )
    emb = nn.Embedding(10, 4, padding_idx=2)
    model, _ = from_torch(net)
    conv, bn, lin, ln = model[0], model[1], model[3], model[4]
    assert torch.equal(conv.weight, net[0].weight) and conv.weight.requires_grad
    assert (conv.in_channels, conv.out_channels, conv.stride, conv.dilation) == (
        3,
        4,
        (2, 2),
        (1, 1),
    )
    assert torch.equal(lin.weight, net[3].weight)
    assert (lin.in_features, lin.out_features) == (196, 5)
    assert torch.equal(bn.running_mean, net[1].running_mean) and bn.eps == net[1].eps
    assert bn.num_features == 4 and bn.affine
    assert ln.eps == 1e-3 and ln.normalized_shape == (5,) and ln.elementwise_affine
    assert torch.equal(ln.weight, net[4].weight) and torch.equal(ln.bias, net[4].bias)
    e, _ = from_torch(emb)
    assert (e.num_embeddings, e.embedding_dim, e.padding_idx) == (10, 4, 2)
    assert torch.equal(e.weight, emb.weight)
    views = ((lin, "in_features"), (conv, "stride"), (ln, "eps"), (ln, "weight"), (e, "weight"))
    for layer, attr in (*views, (bn, "running_mean"), (lin, "weight")):
        with pytest.raises(AttributeError, match="has no setter"):
            setattr(layer, attr, getattr(layer, attr))
    mpq.quantize(model, "int8")
    assert lin.weight.shape == (5, 196) and lin.weight.dtype == torch.float32
    assert lin.weight.device.type == "meta" and conv.weight.shape == (4, 3, 3, 3)
    with pytest.raises(TypeError, match=r"has no float weight"):
        torch.nn.functional.linear(torch.randn(2, 196), lin.weight)  # no stand-in values
    with pytest.raises(TypeError, match=r"Received: the `weight` of a quantized layer in add"):
        torch.add(lin.weight, 1)
    with pytest.raises(TypeError):
        lin.weight * 2
    unbuilt = Dense(3)
    with pytest.raises(AttributeError, match=r"'Dense' object has no attribute 'weight'"):
        unbuilt.weight


def test_embedding_padding_idx_row_gets_no_gradient_like_torch():
    torch.manual_seed(0)
    emb = nn.Embedding(6, 3, padding_idx=1)
    layer, report = from_torch(emb)
    assert "padding_idx=1" in report.notes[""]
    ids = torch.tensor([[0, 1, 1, 4]])
    assert torch.equal(layer(ids), emb(ids))
    emb(ids).sum().backward()
    layer(ids).sum().backward()
    assert torch.equal(layer.embeddings.grad, emb.weight.grad)
    assert not layer.embeddings.grad[1].any()
    copied = copy.deepcopy(layer)  # copies keep the rule
    copied(ids).sum().backward()
    assert torch.equal(copied.embeddings.grad, emb.weight.grad)


def test_tied_embedding_and_head_stay_one_tensor_or_are_untied_on_request():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.alias = self.embed  # one module at two paths
            self.proj = nn.Linear(8, 8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.proj(self.alias(ids)))

    torch.manual_seed(0)
    net = LM()
    ids = torch.randint(0, 20, (2, 5))
    model, report = from_torch(net)
    assert isinstance(model.embed, Embedding) and model.alias is model.embed
    assert isinstance(model.head, nn.Linear) and model.head.weight is model.embed.embeddings
    assert "weight tied to 'embed'" in report.tied["head"]
    assert report.coverage == 1.0
    assert torch.equal(model(ids), net(ids))
    for policy in ("bfloat16", "mixed_float16"):  # the torch head gets and returns its dtypes
        low, _ = from_torch(net, policy)
        assert low.head.weight is low.embed.embeddings
        y = low(ids)
        assert y.dtype == torch.float32 and sqnr(net(ids), y) > 30
    q = mpq.quantize(model, "int8")
    assert q.skipped["embed"].startswith("tied: its variable is also the weight of 'head'")
    assert model.head.weight is model.embed.embeddings
    # a quantized policy at conversion leaves the tied table in float (noted)
    model, report = from_torch(net, "int8_from_float32")
    assert "not quantized (int8_from_float32)" in report.notes["embed"]
    assert model.head.weight is model.embed.embeddings
    # untie=True: each its own copy, all converted and quantizable
    model, report = from_torch(net, untie=True)
    assert isinstance(model.head, Dense) and "untied" in report.notes["head"]
    assert torch.equal(model(ids), net(ids))
    assert sorted(mpq.quantize(model, "int8").quantized) == ["embed", "head", "proj"]
    # two Linears sharing a weight: both left as torch modules, with the reason
    pair = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    pair[1].weight = pair[0].weight
    model, report = from_torch(pair)
    assert "its weight is tied to '1'" in report.unsupported["0"]
    assert model[0].weight is model[1].weight


def test_boundary_casts_give_torch_modules_their_dtypes_under_every_policy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.GRU(16, 8, batch_first=True))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = net

        def forward(self, x):
            return self.inner[1](self.inner[0](x))[0]

    whole = Net().eval()
    x = torch.randn(2, 5, 8)
    ref = whole(x)
    for policy in (
        "float16",
        "bfloat16",
        "mixed_float16",
        "mixed_bfloat16",
        "int8_from_float32",
        "int4/8_from_mixed_bfloat16",
        "float8_from_float32",
    ):
        model, _ = from_torch(whole, policy)
        model.eval()
        y = model(x)  # the GRU (float32 weights) receives float32
        assert y.dtype == torch.float32, policy
        assert sqnr(ref, y) > 20, policy
    model, _ = from_torch(whole, "bfloat16", cast_outputs=False)
    with pytest.raises(ValueError, match="does not match weight dtype"):
        model(x)  # bfloat16 into the float32 GRU


def test_filter_and_option_errors():
    with pytest.raises(
        TypeError, match=r"Expected `filter` to be None, a module type .* Received: filter=3"
    ):
        from_torch(nn.Linear(2, 2), filter=3)
    with pytest.raises(ValueError, match=r"valid regular expression .* Received: filter='\('"):
        from_torch(nn.Linear(2, 2), filter="(")
    with pytest.raises(TypeError, match=r"Expected `untie` to be a bool. Received: untie=1"):
        from_torch(nn.Linear(2, 2), untie=1)
    with pytest.raises(TypeError, match=r"Expected `cast_outputs` to be a bool"):
        from_torch(nn.Linear(2, 2), cast_outputs="yes")
    net = nn.Sequential(nn.Linear(2, 2), nn.Conv1d(2, 2, 1))
    _, report = from_torch(net, filter=(nn.Conv1d,))
    assert report.skipped == {"0": "filtered"} and list(report.converted) == ["1"]
    assert report.linear_weights == 2 * 2 + 2 * 2 and report.coverage == 0.5


def test_coverage_counts_what_stays_in_torch():
    net = nn.Sequential(nn.Linear(3, 4), nn.Conv3d(1, 2, 2), nn.ConvTranspose2d(2, 2, 3))
    _, report = from_torch(net)
    total = 12 + 2 * 1 * 8 + 2 * 2 * 9
    assert report.linear_weights == total
    assert report.converted_linear_weights == 12
    assert report.coverage == 12 / total
    assert f"(12 of {total} elements)" in str(report)


def test_a_linear_without_weight_tensor_is_refused():
    # A module whose `weight` is not a tensor: a TypeError naming it (it used to be an
    # AttributeError on None.numel()).
    lin = torch.nn.Linear(2, 2)
    lin.weight = None
    with pytest.raises(
        TypeError, match=r"Expected a Linear with a weight tensor\. Received: weight=None"
    ):
        from_torch(lin)
