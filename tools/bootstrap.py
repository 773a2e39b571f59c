#!/usr/bin/env python3
"""Create (or reuse) the project's virtual environment with mpq installed in editable mode.

    python3 tools/bootstrap.py --extras test       # what `make test` runs first

torch: a torch that is already importable from this Python is reused (the venv then sees the
system site-packages); otherwise a torch from local wheel directories (pip's --find-links, e.g.
a CPU build) is tried first; `MPQ_TORCH_INDEX_URL` (e.g. PyTorch's CPU index) is honoured;
only then the default index, which on Linux serves the large CUDA build. The extras are then
installed with that torch pinned (a constraints file), so no extra can swap it for another build.
Re-running is cheap: a stamp records what was installed and nothing is redone if it matches.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_SPEC = "torch>=2.4"


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, **kwargs)


def _has_torch(python: str) -> bool:
    return subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0


def _venv_python(env: Path) -> str:
    return str(env / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(ROOT / ".venv"), help="where the venv lives")
    parser.add_argument("--extras", default="test", help="comma-separated extras, e.g. test,sweep")
    args = parser.parse_args()
    env = Path(args.venv)
    extras = ",".join(sorted(filter(None, args.extras.split(","))))
    stamp_text = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + extras.encode() + sys.version.encode()
    ).hexdigest()
    stamp = env / ".mpq-stamp"
    python = _venv_python(env)
    if stamp.exists() and stamp.read_text() == stamp_text and Path(python).exists():
        return 0

    if not Path(python).exists():
        reuse = _has_torch(sys.executable)
        print(
            f"Creating {env} ("
            + ("reusing the torch installed for this Python" if reuse else "no torch found yet")
            + ")",
            flush=True,
        )
        venv.EnvBuilder(with_pip=True, system_site_packages=reuse).create(env)

    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    if not _has_torch(python):
        # A local torch wheel first (a CPU build on this project's machines), without its
        # dependencies, which the editable install below takes from the index; then an
        # explicit index; then the default one.
        if _run([*pip, "install", "--no-index", "--no-deps", TORCH_SPEC]).returncode != 0:
            index = os.environ.get("MPQ_TORCH_INDEX_URL")
            if index:
                cmd = [*pip, "install", TORCH_SPEC, "--index-url", index]
            else:
                print(
                    "No local torch wheel found; installing torch from the default index. On "
                    "Linux that is the CUDA build (several GB). For the CPU build set "
                    "MPQ_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu",
                    flush=True,
                )
                cmd = [*pip, "install", TORCH_SPEC]
            if _run(cmd).returncode != 0:
                print("Could not install torch; see the messages above.", file=sys.stderr)
                return 1
    target = f".[{extras}]" if extras else "."
    # Pin the torch now installed: an extra that asks for a newer torch (transformers' deps,
    # say) fails clearly instead of replacing the CPU build with the index's CUDA one.
    version = subprocess.run(
        # From the installed metadata: a torch installed just now without its dependencies
        # cannot be imported before the install below brings them.
        [python, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    constraints = env / "mpq-constraints.txt"
    constraints.write_text(f"torch=={version}\n")
    cmd = [*pip, "install", "-e", target, "-c", str(constraints)]
    if _run(cmd, cwd=ROOT).returncode != 0:
        print(f"Could not install mpq{target[1:]}; see the messages above.", file=sys.stderr)
        return 1
    stamp.write_text(stamp_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
