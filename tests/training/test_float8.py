"""float8 training end to end: a float8_from_mixed_bfloat16 model in a plain AdamW loop; the
delayed-scaling state evolves, is saved, and resuming reproduces the next step bit for bit."""

import copy

import pytest
import torch

import mpq.quantization  # noqa: F401  (registers the float8 scheme)
from mpq import saving
from mpq.layers import Conv2D, Dense, Flatten, Sequential

POLICY = "float8_from_mixed_bfloat16"
STATE_SUFFIXES = ("_scale", "_amax_history")


def _model():
    torch.manual_seed(0)
    model = Sequential(
        [
            Conv2D(4, 3, activation="relu", padding="same"),
            Flatten(),
            Dense(32, activation="relu"),
            Dense(10),
        ],
        dtype=POLICY,
    )
    model.eval()  # build without a training step (which would record amaxes)
    model(torch.zeros(1, 8, 8, 1))
    model.train()
    return model


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, 8, 8, 1, generator=g)
    out = []
    for _ in range(n):
        y = torch.randint(0, 10, (32,), generator=g)
        x = centers[y] + 0.5 * torch.randn(32, 8, 8, 1, generator=g)
        out.append((x, y))
    return out


def _step(model, opt, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    opt.step()
    return loss.item()


def _float8_state(model):
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.endswith(STATE_SUFFIXES) and "lora" not in k
    }


def test_policy_builds_float8_layers_with_float32_masters():
    model = _model()
    for layer in (model.layers[0], model.layers[2], model.layers[3]):
        assert layer.quantization_mode == "float8"
        assert layer.dtype_policy.name == POLICY
        assert layer.kernel.dtype == torch.float32 and layer.kernel.requires_grad
    assert model(torch.zeros(2, 8, 8, 1)).dtype == torch.bfloat16


def test_trains_with_adamw_and_the_scales_evolve():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert all(
        k.endswith(STATE_SUFFIXES) for k, p in model.named_parameters() if id(p) not in trainable
    )
    initial = _float8_state(model)
    assert all(not v.any() for k, v in initial.items() if k.endswith("history"))
    assert all(torch.equal(v, torch.ones(())) for k, v in initial.items() if k.endswith("_scale"))
    batches = _batches(30)
    losses = [_step(model, opt, x, y) for x, y in batches]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    state = _float8_state(model)
    for k, v in state.items():
        assert not torch.equal(v, initial[k]), k  # inputs, kernel and outputs_grad all moved
        if k.endswith("amax_history"):
            assert (v[:30] > 0).all() and not v[30:].any(), k  # one amax per step, newest first
    # the scales follow the amax history: scale = max(history) / fmt_max
    for prefix in ("0.inputs", "2.kernel", "3.outputs_grad"):
        history, scale = state[f"{prefix}_amax_history"], state[f"{prefix}_scale"]
        fmt_max = 57344.0 if "grad" in prefix else 448.0
        assert scale.item() == pytest.approx(history.max().item() / fmt_max, rel=1e-6)
    model.eval()  # evaluation updates nothing
    model(batches[0][0])
    assert all(torch.equal(v, state[k]) for k, v in _float8_state(model).items())


def test_save_restore_resume_is_bit_exact(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = _batches(6)
    for x, y in batches[:5]:
        _step(model, opt, x, y)
    path = tmp_path / "fp8.safetensors"
    saving.save(model, path)
    opt_state = copy.deepcopy(opt.state_dict())
    # the next step, from the live objects
    _step(model, opt, *batches[5])
    expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # the next step, from the files
    resumed = saving.load(path)
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=3e-3)
    resumed_opt.load_state_dict(opt_state)
    saved_state = _float8_state(resumed)
    assert any(v.any() for v in saved_state.values())
    _step(resumed, resumed_opt, *batches[5])
    got = resumed.state_dict()
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_float8_with_lora_trains_only_the_factors():
    model = _model()
    for i in (2, 3):
        model.layers[i].enable_lora(4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    frozen = model.layers[2].kernel.detach().clone()
    before = _float8_state(model)
    for x, y in _batches(3):
        _step(model, opt, x, y)
    assert torch.equal(model.layers[2].kernel.detach(), frozen)
    assert model.layers[2].lora_kernel_b.detach().any()
    after = _float8_state(model)
    assert not torch.equal(after["2.kernel_amax_history"], before["2.kernel_amax_history"])
