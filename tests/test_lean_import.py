"""`import mpq` is lean: no triton import (so no kernel compilation), no CUDA initialisation,
no change to the environment, none of the optional extras (matplotlib, scikit-learn, Ray), and a
CPU matmul still imports no triton. Run in a fresh interpreter so nothing else has imported them."""

import json
import subprocess
import sys

PROBE = r"""
import json, os, sys
before = dict(os.environ)
os.environ.pop("MPQ_KERNEL_BACKEND", None)
before.pop("MPQ_KERNEL_BACKEND", None)
import mpq
import mpq.policy
import mpq.sweep
import mpq.sweep.cli
import torch
mpq.kernels.matmul(torch.ones(2, 3), torch.ones(3, 4))
print(json.dumps({
    "triton": sorted(m for m in sys.modules if m == "triton" or m.startswith("triton.")
                     or m.startswith("mpq.kernels._triton")),
    "extras": sorted(m for m in ("matplotlib", "sklearn", "ray") if m in sys.modules),
    "cuda_initialized": torch.cuda.is_initialized(),
    "env_changed": sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)),
    "policy": mpq.policy.get("int4/128_from_mixed_bfloat16").name,
}))
"""


def test_import_mpq_is_lean():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {
        "triton": [],
        "extras": [],
        "cuda_initialized": False,
        "env_changed": [],
        "policy": "int4/128_from_mixed_bfloat16",
    }
