"""mpq layers inside torch machinery: torch.compile, DistributedDataParallel (gloo, 2 CPU
processes), torch.func.functional_call."""

import copy
import os

import pytest
import torch
import torch.multiprocessing as mp

import mpq.quantization
from mpq.layers import Conv2D, Dense, Flatten, Sequential


def _cnn(policy="float32", seed=0):
    torch.manual_seed(seed)
    model = Sequential(
        [
            Conv2D(4, 3, activation="relu", padding="same"),
            Flatten(),
            Dense(16, activation="gelu"),
            Dense(10),
        ],
        dtype=policy,
    )
    model(torch.zeros(1, 8, 8, 1))
    return model


# Dynamo reads `.grad` of every tensor it wraps, including the non-leaf autocast views of the
# variables that mpq layers read inside `call`; torch warns about that read, harmlessly.
_DYNAMO_GRAD_WARNING = "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"
# Dynamo's handling of the quantized layers' autograd.Function (which takes a Python object
# among its arguments) emits this deprecation notice from inside torch.
_DYNAMO_FUNCTION_WARNING = "ignore:.*should not be instantiated:DeprecationWarning"


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.filterwarnings(_DYNAMO_GRAD_WARNING)
@pytest.mark.filterwarnings(_DYNAMO_FUNCTION_WARNING)
@pytest.mark.parametrize("mode", [None, "int8"])
def test_compile_traces_forward_and_backward(mode):
    """Dynamo + AOTAutograd (no code generation: fast) agree with eager bit for bit."""
    model = _cnn()
    if mode:
        mpq.quantization.quantize(model, mode)
    x = torch.randn(6, 8, 8, 1)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    y_eager = model(x)
    y = compiled(x)
    assert torch.equal(y, y_eager)
    y_eager.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    compiled(x).square().sum().backward()
    for k, p in model.named_parameters():
        if k in grads:
            torch.testing.assert_close(p.grad, grads[k], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
# Inductor imports torch.jit helpers that announce their own deprecation.
@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
@pytest.mark.filterwarnings(_DYNAMO_GRAD_WARNING)
@pytest.mark.filterwarnings(_DYNAMO_FUNCTION_WARNING)
@pytest.mark.parametrize("mode", [None, "int8"])
def test_compile_inductor_matches_eager(mode):
    """The default backend (Inductor, C++ code generation on CPU): ~10-20 s per model."""
    model = _cnn()
    if mode:
        mpq.quantization.quantize(model, mode)
    model.eval()
    x = torch.randn(6, 8, 8, 1)
    torch._dynamo.reset()
    y = torch.compile(model)(x)
    # Inductor may fuse float ops differently (it did not on torch 2.13 / x86: equal bits).
    torch.testing.assert_close(y, model(x), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- functional_call
def test_functional_call_and_func_grad():
    model = _cnn()
    x = torch.randn(4, 8, 8, 1)
    params = {k: v.detach() * 1.5 for k, v in model.named_parameters()}
    out = torch.func.functional_call(model, params, (x,))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for k, v in ref.named_parameters():
            v.copy_(params[k])
    assert torch.equal(out, ref(x))
    # the layer's own parameters are untouched
    assert not torch.equal(model(x), out)
    grads = torch.func.grad(lambda p: torch.func.functional_call(model, p, (x,)).sum())(params)
    ref(x).sum().backward()
    for k, v in ref.named_parameters():
        assert torch.equal(grads[k], v.grad)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_functional_call_autocasts_substituted_tensors(policy):
    """Plain float32 tensors put in place of the float32 variables are cast to the compute
    dtype inside `call`, as the variables are; gradients reach the float32 tensors."""
    model = _cnn(policy)
    x = torch.randn(4, 8, 8, 1)
    params = {k: (v.detach() * 1.5).requires_grad_() for k, v in model.named_parameters()}
    out = torch.func.functional_call(model, params, (x,))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for k, v in ref.named_parameters():
            v.copy_(params[k])
    expected = ref(x)
    assert out.dtype == expected.dtype == model.dtype_policy.torch_compute_dtype
    assert torch.equal(out, expected)
    out.float().sum().backward()
    expected.float().sum().backward()
    for k, v in ref.named_parameters():
        assert params[k].grad.dtype == torch.float32
        assert torch.equal(params[k].grad, v.grad)


def test_functional_call_on_an_int8_model():
    model = _cnn()
    mpq.quantization.quantize(model, "int8")
    x = torch.randn(4, 8, 8, 1)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bias_key = next(k for k in state if k.endswith("bias"))
    state[bias_key] = state[bias_key] + 1.0
    out = torch.func.functional_call(model, state, (x,))
    ref = copy.deepcopy(model)
    ref.load_state_dict(state)
    assert torch.equal(out, ref(x))


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank, world, policy, mode, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    # File rendezvous: no TCP port to pick (and to race for with a parallel test run).
    init = "file://" + os.path.join(out_dir, "rendezvous")
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = _cnn(policy, seed=rank)  # different seeds: DDP broadcasts rank 0's weights
        if mode:
            mpq.quantization.quantize(model, mode)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.1)
        g = torch.Generator().manual_seed(100)
        for _ in range(3):
            x = torch.randn(8, 8, 8, 1, generator=g)
            y = torch.randint(0, 10, (8,), generator=g)
            shard = slice(4 * rank, 4 * rank + 4)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(ddp(x[shard]).float(), y[shard])
            loss.backward()
            opt.step()
        torch.save(
            {k: v.detach() for k, v in model.state_dict().items()},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _single_process_reference(policy, mode):
    model = _cnn(policy, seed=0)
    if mode:
        mpq.quantization.quantize(model, mode)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    g = torch.Generator().manual_seed(100)
    for _ in range(3):
        x = torch.randn(8, 8, 8, 1, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        # DDP averages the gradients of the two ranks' shards (each shard its own forward
        # pass: int8's dynamic input scales are per shard too).
        for shard in (slice(0, 4), slice(4, 8)):
            loss = torch.nn.functional.cross_entropy(model(x[shard]).float(), y[shard])
            (loss / 2).backward()
        opt.step()
    return model.state_dict()


@pytest.mark.parametrize(("policy", "mode"), [("mixed_bfloat16", None), ("float32", "int8")])
def test_ddp_two_processes_gloo(tmp_path, policy, mode):
    mp.spawn(
        _ddp_worker,
        args=(2, policy, mode, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # replicas stay identical
    ref = _single_process_reference(policy, mode)
    init = _cnn(policy, seed=0).state_dict()
    # The same gradients, summed in another order (all-reduce vs accumulation): float32
    # rounding only.
    for k in r0:
        torch.testing.assert_close(r0[k], ref[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(r0[k], init[k]) for k in r0 if k.endswith("kernel"))
