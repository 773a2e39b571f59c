"""Tiny torch-only models and data for the sweep tests (module-level, so process pools and Ray
workers can import them by name). tests/sweep/test_helpers.py checks the helpers themselves."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import mpq
from mpq.sweep.config import SweepConfig
from mpq.sweep.data import Data

TINY = "tests.sweep._helpers:tiny_factory"


def tiny_config(tmp_path, **kw) -> SweepConfig:
    """A serial sweep of the tiny torch factory under four float policies, into tmp_path/out."""
    kw.setdefault(
        "models", [{"name": "tiny", "factory": TINY, "epochs": 3, "lr": 0.05, "batch_size": 32}]
    )
    kw.setdefault("policies", ["float32", "float16", "bfloat16", "mixed_bfloat16"])
    kw.setdefault("executor", "serial")
    kw.setdefault("finetune_epochs", 1)
    kw.setdefault("plot", False)
    return SweepConfig(out=str(tmp_path / "out"), **kw)


def blobs(n_train: int = 96, n_test: int = 48, seed: int = 0) -> Data:
    """Three Gaussian blobs in 4-D: easy, fast, deterministic."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 4)).astype(np.float32) * 3
    y = rng.integers(0, 3, n_train + n_test)
    x = (centers[y] + rng.standard_normal((len(y), 4))).astype(np.float32)
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], name="blobs")


class TinyNet(torch.nn.Module):
    """A 4 -> 8 -> 3 MLP in plain torch that honours a float dtype policy: variables in the
    policy's variable dtype, computations in its compute dtype."""

    def __init__(self, dtype=None, scale: float = 1.0):
        super().__init__()
        pol = mpq.policy.get(dtype if dtype is not None else "float32")
        self.compute = pol.torch_compute_dtype
        self.scale = scale
        self.fc1 = torch.nn.Linear(4, 8, dtype=pol.torch_variable_dtype)
        self.fc2 = torch.nn.Linear(8, 3, dtype=pol.torch_variable_dtype)

    def forward(self, x):
        c = self.compute
        h = F.relu(F.linear(x.to(c), self.fc1.weight.to(c), self.fc1.bias.to(c)))
        if self.scale != 1.0:  # overflows half precision: inf - inf = nan
            h = h * self.scale - h * self.scale
        return F.linear(h, self.fc2.weight.to(c), self.fc2.bias.to(c))


def tiny_factory(dtype=None):
    """A user factory returning (model, data)."""
    return TinyNet(dtype), blobs()


def tiny_model(dtype=None, scale: float = 1.0):
    """A user factory returning only the model (data named in the ModelSpec)."""
    return TinyNet(dtype, scale=scale)


def nan_in_half(dtype=None):
    """Finite in float32, NaN logits in float16 (x * 1e6 overflows to inf)."""
    return TinyNet(dtype, scale=1e6), blobs()


def broken_factory(dtype=None):
    raise RuntimeError("factory exploded on purpose")


def tiny_mpq_factory(dtype=None):
    """The same 4 -> 8 -> 3 MLP from mpq layers (per-layer policies and quantization)."""
    from mpq.layers import Dense, Sequential

    model = Sequential(
        [Dense(8, activation="relu", name="fc1"), Dense(3, name="fc2")], dtype=dtype, name="tiny"
    )
    return model, blobs()


def held_factory(dtype=None):
    """`tiny_factory`, except that once the file named by $SWEEP_TEST_HOLD (a results.jsonl)
    holds a record, every later build waits (up to 10 minutes): a sweep that cannot finish
    before the test interrupts it, however loaded the machine."""
    import os
    import time
    from pathlib import Path

    hold = os.environ.get("SWEEP_TEST_HOLD")
    deadline = time.monotonic() + 600
    while hold and time.monotonic() < deadline:
        path = Path(hold)
        if not (path.exists() and b"\n" in path.read_bytes()):
            break
        time.sleep(0.05)
    return tiny_factory(dtype)


def worker_report() -> dict:
    """What a sweep worker process has imported and how it is set up (run inside a worker)."""
    import signal
    import sys

    from mpq.sweep.data import digits

    digits()  # the digits the default sweep loads in its workers
    return {
        "extras": sorted(m for m in ("sklearn", "scipy", "matplotlib") if m in sys.modules),
        "threads": torch.get_num_threads(),
        "sigint_ignored": signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
        "sigint_blocked": signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []),
    }
