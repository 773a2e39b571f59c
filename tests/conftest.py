"""Strict, reproducible test set-up: warnings are errors (pyproject), TF32 off, one torch thread
per process, seeded RNGs, and a derandomized hypothesis profile when HYPOTHESIS_PROFILE=ci (set by
.ci/run)."""

import random

import numpy as np
import pytest
import torch

from mpq.testing import load_hypothesis_profile

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# One intra-op thread per test process: `make test` runs one process per core (pytest-xdist),
# and oversubscribed torch thread pools make small CPU ops many times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_global_policy():
    """A test that sets the global policy must not leak it into the next test."""
    import mpq

    before = mpq.dtype_policy()
    yield
    mpq.set_dtype_policy(before)


# $HYPOTHESIS_PROFILE (".ci/run" sets "ci": derandomized, bounded), else "ci" when $CI is set,
# else "dev".
load_hypothesis_profile()
