"""Real model families through mpq: tiny random-weight Hugging Face GPT-2, BERT, T5, ViT, Llama
(tied and untied embeddings), ResNet and MobileNetV2 built from configs (nothing downloaded),
converted with `mpq.from_torch`, run under float and quantized policies, calibrated, saved.

Needs the `models` extra (transformers); skipped without it. The vision models are transformers'
own ResNet and MobileNetV2: the torchvision wheels on the package index are CUDA builds that do
not load with the CPU torch (docs/models.md).

SQNR floors (dB, output against the float32 model) are stated per model below: the measured
value on a 2-core AMD EPYC minus a 6 dB margin (a factor 4 in noise power), so a kernel that
rounds differently on another CPU passes and a broken path (a lost scale, a wrong layout:
SQNR near 0) fails. bfloat16 keeps 8 significant bits (one rounding: ~54 dB); the floors allow
for the accumulation through 2 blocks.
"""

from __future__ import annotations

import copy

import pytest
import torch

import mpq
from mpq.quantization import QuantizationConfig, weight_bytes
from mpq.testing import sqnr
from mpq.training import from_torch

transformers = pytest.importorskip("transformers")

VOCAB = 100


def _bn_statistics(net: torch.nn.Module, x: torch.Tensor) -> None:
    """Random-init BatchNorm statistics (mean 0, var 1) make activations vanish through a deep
    CNN (1e-25 at MobileNetV2's head): set them from one training-mode pass instead."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(pixel_values=x)
    for m in bns:
        m.momentum = 0.1
        # channels that ReLU6 killed have a variance near 0: BatchNorm would amplify any
        # rounding by 1 / sqrt(eps) (x30) at each such layer; a trained network has none.
        m.running_var.clamp_(min=0.05)
    net.eval()


def _gpt2():
    cfg = transformers.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg), {"input_ids": torch.randint(0, VOCAB, (2, 9))}


def _bert():
    cfg = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=32,
    )
    ids = torch.randint(1, VOCAB, (2, 9))
    ids[1, -3:] = 0  # padding (BERT's padding_idx 0)
    return transformers.BertModel(cfg), {"input_ids": ids, "attention_mask": (ids != 0).long()}


def _t5():
    cfg = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    inputs = {
        "input_ids": torch.randint(0, VOCAB, (2, 9)),
        "decoder_input_ids": torch.randint(0, VOCAB, (2, 5)),
    }
    return transformers.T5ForConditionalGeneration(cfg), inputs


def _vit():
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    return transformers.ViTModel(cfg), {"pixel_values": torch.randn(2, 3, 32, 32)}


def _llama(tie):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tie,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg), {"input_ids": torch.randint(0, VOCAB, (2, 9))}


def _resnet():
    cfg = transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=5
    )
    net, x = transformers.ResNetForImageClassification(cfg), torch.randn(4, 3, 32, 32)
    _bn_statistics(net, x)
    return net, {"pixel_values": x}


def _mobilenet_v2():
    cfg = transformers.MobileNetV2Config(depth_multiplier=0.35, image_size=32, num_labels=5)
    net, x = transformers.MobileNetV2ForImageClassification(cfg), torch.randn(4, 3, 32, 32)
    _bn_statistics(net, x)
    return net, {"pixel_values": x}


# name -> (factory, tied (embedding, head) qualified names or None,
#          SQNR floors in dB: bfloat16, mixed_bfloat16, w8a8, w8a16, w4a16 g16, fp8 static)
MODELS = {
    "gpt2": (_gpt2, ("transformer.wte", "lm_head"), (40, 42, 38, 40, 18, 26)),
    "bert": (_bert, None, (38, 38, 38, 38, 16, 26)),
    "t5": (_t5, ("shared", "lm_head"), (36, 37, 30, 33, 11, 15)),
    "vit": (_vit, None, (40, 40, 32, 36, 16, 20)),
    "llama_tied": (
        lambda: _llama(True),
        ("model.embed_tokens", "lm_head"),
        (40, 42, 40, 42, 22, 24),
    ),
    "llama": (lambda: _llama(False), None, (40, 40, 32, 34, 12, 17)),
    "resnet": (_resnet, None, (34, 34, 30, 32, 10, 14)),
    "mobilenet_v2": (_mobilenet_v2, None, (43, 47, 40, 45, 20, 10)),
}
QUANTIZED = {
    "w8a8": QuantizationConfig("int8"),
    "w8a16": QuantizationConfig("int8", weight_only=True),
    "w4a16g16": QuantizationConfig("int4/16"),
}

_CACHE: dict[str, tuple] = {}


def _model(name):
    """(eval-mode torch model, inputs, float32 reference output), built once per process."""
    if name not in _CACHE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net, inputs = MODELS[name][0]()
            net.eval()
            with torch.no_grad():
                ref = _out(net, inputs)
        _CACHE[name] = (net, inputs, ref)
    return _CACHE[name]


def _out(model, inputs):
    out = model(**inputs)
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


def _run(model, inputs):
    model.eval()
    with torch.no_grad():
        return _out(model, inputs)


def _unique_bytes(model):
    params = {id(p): p for p in model.parameters()}
    return sum(p.numel() * p.element_size() for p in params.values())


def _rel_err(ref, y):
    """``||y - ref|| / ||ref||`` in float64."""
    return float((y.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("name", list(MODELS))
def test_converts_every_linear_and_conv_weight_and_matches_float32(name):
    net, inputs, ref = _model(name)
    model, report = from_torch(net)
    assert report.coverage == 1.0, str(report)
    assert "coverage: 100.0% of linear/conv weights" in str(report)
    allowed = {"embeddings": "ViTEmbeddings: no mpq equivalent"} if name == "vit" else {}
    assert report.unsupported == allowed
    y = _run(model, inputs)
    assert y.dtype == torch.float32
    assert _rel_err(ref, y) <= 1e-5
    # tied weights stay one tensor: the same unique parameter bytes as the original
    assert _unique_bytes(model) == _unique_bytes(net) + _bn_buffers_as_variables(net)
    tied = MODELS[name][1]
    if tied is not None:
        emb, head = (model.get_submodule(n) for n in tied)
        assert head.weight is emb.embeddings
        assert tied[1] in report.tied


def _bn_buffers_as_variables(net):
    """mpq's BatchNormalization holds the running statistics as (non-trainable) variables."""
    return sum(
        m.running_mean.numel() * 4 + m.running_var.numel() * 4
        for m in net.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_bfloat16_and_mixed_bfloat16_run_end_to_end(name):
    net, inputs, ref = _model(name)
    floors = MODELS[name][2]
    for policy, floor in (("bfloat16", floors[0]), ("mixed_bfloat16", floors[1])):
        model, _ = from_torch(net, policy)
        y = _run(model, inputs)
        value = sqnr(ref, y.float())
        print(f"{name} {policy}: SQNR {value:.1f} dB (floor {floor})")
        assert value >= floor, (policy, value)


@pytest.mark.parametrize("name", list(MODELS))
def test_int8_and_int4_quantized_sqnr(name):
    net, inputs, ref = _model(name)
    floors = dict(zip(QUANTIZED, MODELS[name][2][2:5], strict=True))
    for tag, cfg in QUANTIZED.items():
        model, _ = from_torch(net)
        report = mpq.quantize(model, cfg)
        tied = MODELS[name][1]
        if tied is not None:
            assert report.skipped[tied[0]].startswith("tied: its variable is also the weight")
        assert report.quantized
        y = _run(model, inputs)
        value = sqnr(ref, y)
        print(f"{name} {tag}: SQNR {value:.1f} dB (floor {floors[tag]}), {report.bytes_after} B")
        assert value >= floors[tag], (tag, value)
        assert report.bytes_after < report.bytes_before
        if tied is not None:  # still one tensor
            emb, head = (model.get_submodule(n) for n in tied)
            assert head.weight is emb.embeddings


@pytest.mark.parametrize("name", ["gpt2", "bert", "resnet"])
def test_float8_static_calibrated_is_accurate_and_smaller_than_float32(name):
    net, inputs, ref = _model(name)
    floor = MODELS[name][2][5]
    model, _ = from_torch(net)
    float_bytes = weight_bytes(model)
    report = mpq.quantize(model, QuantizationConfig("float8", scaling="static"))
    assert float_bytes > report.bytes_after
    calibration = mpq.calibrate(model, [inputs, inputs])
    assert calibration.batches == 2 and not calibration.uncalibrated
    # every quantized Dense/Conv has its input range (an Embedding's table is weight-only)
    static = {
        p for p in report.quantized if not isinstance(model.get_submodule(p), mpq.layers.Embedding)
    }
    assert static and set(calibration.inputs_amax) == static
    y = _run(model, inputs)
    value = sqnr(ref, y)
    print(
        f"{name} fp8 static: SQNR {value:.1f} dB (floor {floor}), bytes {float_bytes} -> "
        f"{report.bytes_after}"
    )
    assert value >= floor
    # delayed scaling keeps float kernels and 3 x 1024-entry histories: more than float32
    delayed, _ = from_torch(net)
    r = mpq.quantize(delayed, "float8")
    assert r.bytes_after > float_bytes


def test_calibrate_has_no_training_side_effects():
    net, inputs, _ = _model("resnet")
    model, _ = from_torch(net)
    mpq.quantize(model, QuantizationConfig("float8", scaling="static"))
    model.train()
    bn = [m for m in model.modules() if isinstance(m, mpq.layers.BatchNormalization)]
    before = [(m.moving_mean.clone(), m.moving_variance.clone()) for m in bn]
    mpq.calibrate(model, [inputs["pixel_values"]])
    assert all(m.training for m in model.modules())  # modes restored
    for m, (mean, var) in zip(bn, before, strict=True):
        assert torch.equal(m.moving_mean, mean) and torch.equal(m.moving_variance, var)
    # dropout was off: BERT calibrated twice on the same batch gives the same scales
    net, inputs, _ = _model("bert")
    model, _ = from_torch(net)
    model.train()
    mpq.quantize(model, QuantizationConfig("float8", scaling="static"))
    a = mpq.calibrate(model, [inputs]).inputs_amax
    b = mpq.calibrate(model, [inputs]).inputs_amax
    assert a == b


@pytest.mark.parametrize("name", ["gpt2", "t5", "llama_tied", "resnet"])
def test_save_and_load_bit_identical_with_ties(name, tmp_path):
    net, inputs, _ = _model(name)

    def build():
        model, _ = from_torch(net)
        mpq.quantize(model, "int8")
        return model

    model = build()
    with torch.no_grad():  # make the copy differ from a fresh conversion
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(0.25)
    y = _run(model, inputs)
    path = tmp_path / "model.safetensors"
    mpq.saving.save(model, path)
    fresh = build()
    mpq.saving.load_weights(fresh, path)
    assert torch.equal(_run(fresh, inputs), y)
    # a plain state_dict round trip into a freshly converted model
    again = build()
    again.load_state_dict(model.state_dict())
    assert torch.equal(_run(again, inputs), y)
    tied = MODELS[name][1]
    for m in (fresh, again):
        if tied is not None:
            emb, head = (m.get_submodule(n) for n in tied)
            assert head.weight is emb.embeddings
    with pytest.raises(ValueError, match=r"holds the weights of a torch module .*load_weights"):
        mpq.saving.load(path)


def test_loading_into_a_different_architecture_is_a_clear_error(tmp_path):
    gpt2, _, _ = _model("gpt2")
    model, _ = from_torch(gpt2)
    path = tmp_path / "gpt2.safetensors"
    mpq.saving.save(model, path)
    other, _ = from_torch(_model("llama")[0])
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="do not match the model: missing"):
        mpq.saving.load_weights(other, path)
    after = other.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    quantized, _ = from_torch(gpt2)
    mpq.quantize(quantized, "int8")
    with pytest.raises(ValueError, match="do not match the model"):
        mpq.saving.load_weights(quantized, path)


def test_filter_all_linear_layers_except_the_head_in_one_argument():
    net, inputs, ref = _model("llama")
    model, report = from_torch(
        net, filter=lambda m, name: isinstance(m, torch.nn.Linear) and name != "lm_head"
    )
    assert report.skipped["lm_head"] == "filtered"
    assert isinstance(model.lm_head, torch.nn.Linear)
    assert "model.embed_tokens" in report.skipped
    assert all(v.endswith("-> Dense") for v in report.converted.values())
    assert len(report.converted) == 2 * 7
    assert 0 < report.coverage < 1
    assert _rel_err(ref, _run(model, inputs)) <= 1e-5
    # by qualified-name regex, and by type
    _, by_regex = from_torch(net, filter=r"\.mlp\.")
    assert set(by_regex.converted) == {
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")
    }
    _, by_type = from_torch(net, filter=torch.nn.Embedding)
    assert set(by_type.converted) == {"model.embed_tokens"}


@pytest.mark.parametrize(
    "policy",
    [
        "float16",
        "bfloat16",
        "mixed_float16",
        "mixed_bfloat16",
        "int8_from_float32",
        "int8_from_mixed_bfloat16",
        "int4/16_from_float32",
        "float8_from_float32",
    ],
)
def test_partially_converted_models_run_under_every_policy(policy):
    # Only the MLP layers are mpq layers; attention, norms and the head stay torch modules.
    for name in ("gpt2", "t5", "llama"):
        net, inputs, ref = _model(name)
        model, report = from_torch(net, policy, filter=r"\.(mlp|DenseReluDense)\.")
        assert report.converted and report.skipped
        y = _run(model, inputs)
        assert y.dtype == ref.dtype
        assert sqnr(ref, y) > 10, (name, policy)


def test_hugging_face_conv1d_and_read_only_views():
    net, _, _ = _model("gpt2")
    model, report = from_torch(net)
    assert report.converted["transformer.h.0.attn.c_attn"] == "Conv1D -> Dense"
    c_attn = model.transformer.h[0].attn.c_attn
    orig = net.transformer.h[0].attn.c_attn
    assert torch.equal(c_attn.kernel, orig.weight)  # Conv1D stores [in, out]: Dense's layout
    assert c_attn.weight.shape == (96, 32)  # torch Linear layout [out, in]
    assert (c_attn.in_features, c_attn.out_features) == (32, 96)
    with pytest.raises(AttributeError, match="has no setter"):
        c_attn.weight = torch.zeros(96, 32)
    mpq.quantize(model, "int8")
    assert c_attn.weight.shape == (96, 32) and c_attn.weight.dtype == torch.float32
    assert c_attn.weight.device.type == "meta"  # no float weight exists: arithmetic fails
    ln = model.transformer.h[0].ln_1
    assert ln.eps == net.transformer.h[0].ln_1.eps and ln.normalized_shape == (32,)
