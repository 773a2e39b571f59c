"""mpq.training.LossScaler: underflow rescue, skipped steps, growth, state."""

import copy

import pytest
import torch

from mpq.layers import Dense, Sequential
from mpq.training import LossScaler

# A loss of order 2**-24: its float16 gradients (below 2**-25) flush to zero unless scaled.
TINY = 2.0**-24


def _model(seed=0):
    torch.manual_seed(seed)
    return Sequential(
        [Dense(16, activation="tanh", input_shape=(8,)), Dense(1)], dtype="mixed_float16"
    )


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    y = torch.sin(x.sum(-1, keepdim=True))
    return x, y


def _loss(model, x, y):
    return TINY * torch.nn.functional.mse_loss(model(x).float(), y)


def test_float16_gradients_underflow_without_scaler_and_train_with_it():
    x, y = _data()
    model = _model()
    _loss(model, x, y).backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())

    model = _model()
    scaler = LossScaler()
    # The true gradient is of order 2**-24: an SGD rate of 2**24 * 0.05 makes steps of ~0.05.
    opt = torch.optim.SGD(model.parameters(), lr=0.05 / TINY)
    first = _loss(model, x, y).item()
    scaler.scale(_loss(model, x, y)).backward()
    scaler.unscale_(opt)
    assert all(p.grad.any() for p in model.parameters())
    scaler.step(opt)
    scaler.update()
    for _ in range(40):
        opt.zero_grad()
        scaler.scale(_loss(model, x, y)).backward()
        scaler.step(opt)
        scaler.update()
    last = _loss(model, x, y).item()
    assert last < 0.5 * first, (first, last)
    assert scaler.skipped_steps == 0


def test_injected_inf_skips_exactly_one_step_and_halves_the_scale():
    x, y = _data()
    model = _model()
    scaler = LossScaler(growth_interval=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    snapshots = []
    for step in range(4):
        opt.zero_grad()
        scaler.scale(_loss(model, x, y)).backward()
        if step == 2:
            model.layers[0].kernel.grad[0, 0] = float("inf")
        before = [p.detach().clone() for p in model.parameters()]
        scale_before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
        snapshots.append((changed, scale_before, scaler.get_scale()))
    for step, (changed, s0, s1) in enumerate(snapshots):
        if step == 2:
            assert not any(changed)
            assert s1 == s0 / 2
        else:
            assert all(changed)
            assert s1 == s0
    assert scaler.skipped_steps == 1
    assert opt.state[model.layers[0].kernel]["step"].item() == 3


def test_nan_gradient_is_skipped_too():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=1.0)
    scaler = LossScaler(init_scale=8.0)
    scaler.scale((p * float("nan")).sum()).backward()
    assert scaler.step(opt) is None
    scaler.update()
    assert torch.equal(p.detach(), torch.ones(3))
    assert scaler.get_scale() == 4.0


def test_growth_after_growth_interval_finite_steps_and_reset_by_overflow():
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.0)
    scaler = LossScaler(init_scale=4.0, growth_interval=3)
    scales = []
    for step in range(8):
        opt.zero_grad()
        loss = p.sum() * (float("inf") if step == 4 else 1.0)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    # 3 finite steps -> x2; step 4 overflows -> /2 and the count restarts; 3 more -> x2.
    assert scales == [4.0, 4.0, 8.0, 8.0, 4.0, 4.0, 4.0, 8.0]


def test_default_hyperparameters():
    s = LossScaler()
    assert s.get_scale() == 2.0**15
    assert s.growth_interval == 2000
    assert (s.growth_factor, s.backoff_factor) == (2.0, 0.5)


def test_scale_is_float32_and_exact():
    s = LossScaler()
    loss = torch.tensor(0.1, dtype=torch.float16)
    out = s.scale(loss)
    assert out.dtype == torch.float32
    assert out.item() == loss.float().item() * 2.0**15


def test_unscaled_gradients_equal_the_true_gradients_exactly():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    x = torch.randn(5)
    (w * x).sum().backward()
    ref = w.grad.clone()
    w.grad = None
    opt = torch.optim.SGD([w], lr=0.1)
    s = LossScaler()
    s.scale((w * x).sum()).backward()
    assert s.unscale_(opt)
    assert torch.equal(w.grad, ref)


def test_state_dict_round_trip_resumes_the_schedule():
    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=0.0)
    a = LossScaler(init_scale=2.0, growth_interval=4)
    for _ in range(3):
        a.scale(p.sum()).backward()
        a.step(opt)
        a.update()
    b = LossScaler()
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.state_dict() == a.state_dict()
    for s in (a, b):
        s.scale(p.sum()).backward()
        s.step(opt)
        s.update()
    assert a.get_scale() == b.get_scale() == 4.0


def test_works_with_several_optimizers():
    p1, p2 = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    o1, o2 = torch.optim.SGD([p1], lr=1.0), torch.optim.Adam([p2], lr=1.0)
    s = LossScaler(init_scale=16.0)
    s.scale(p1.sum() + p2.sum() * float("inf")).backward()
    s.step(o1)
    s.step(o2)
    s.update()
    assert p1.item() == 0.0 and p2.item() == 1.0  # only the optimizer with the inf skips
    assert s.get_scale() == 8.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"init_scale": 0.0}, "init_scale=0.0"),
        ({"init_scale": "big"}, "init_scale='big'"),
        ({"growth_factor": 1.0}, "growth_factor=1.0"),
        ({"backoff_factor": 1.5}, "backoff_factor=1.5"),
        ({"growth_interval": 0}, "growth_interval=0"),
        ({"growth_interval": 2.5}, "growth_interval=2.5"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name.replace("(", r"\(")):
        LossScaler(**kwargs)


def test_misuse_errors():
    s = LossScaler()
    with pytest.raises(TypeError, match="Received: loss of type int"):
        s.scale(3)
    with pytest.raises(TypeError, match=r"torch\.int64"):
        s.scale(torch.tensor(3))
    with pytest.raises(TypeError, match="optimizer of type list"):
        s.step([])
    with pytest.raises(RuntimeError, match="no optimizer used"):
        s.update()
    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=0.1)
    s.scale(p.sum()).backward()
    s.unscale_(opt)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) was already called"):
        s.unscale_(opt)
    s.step(opt)
    with pytest.raises(RuntimeError, match="second step"):
        s.step(opt)
    with pytest.raises(ValueError, match="Received: \\['scale'\\]"):
        s.load_state_dict({"scale": 2.0})
    bad = {**s.state_dict(), "growth_tracker": -1}
    with pytest.raises(ValueError, match="growth_tracker=-1"):
        s.load_state_dict(bad)
