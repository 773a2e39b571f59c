"""The language-model task's corpus: the bytes of a fixed list of Python standard-library source
files (present offline on every machine), split by file, cut into next-byte windows. numpy only.

    >>> train, val, digest = corpus()
    >>> x, y = windows(val, context=8, stride=8)
    >>> bool((x[:, 1:] == y[:, :-1]).all())
    True
"""

from __future__ import annotations

import hashlib
import os
import sysconfig

import numpy as np

__all__ = ["TRAIN_FILES", "VAL_FILES", "corpus", "windows"]

#: Training files (about 40 KB), relative to the stdlib directory; present in CPython 3.10-3.13.
TRAIN_FILES: tuple[str, ...] = ("textwrap.py", "string.py", "fnmatch.py", "bisect.py")
#: Validation files: held out by file, not by position.
VAL_FILES: tuple[str, ...] = ("csv.py",)


def _read_files(names: tuple[str, ...], root: str) -> bytes:
    missing = [n for n in names if not os.path.isfile(os.path.join(root, n))]
    if missing:
        raise FileNotFoundError(
            "Expected the Python standard-library sources of the language-model task under "
            f"{root!r} (sysconfig.get_paths()['stdlib']). Received: missing {missing}; use a "
            "Python installation that keeps its .py sources, or pass stdlib=PATH"
        )
    parts = []
    for n in names:
        with open(os.path.join(root, n), "rb") as f:
            parts.append(f.read())
    return b"\n".join(parts)


def corpus(stdlib: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """`(train_bytes, val_bytes, sha256)`: uint8 arrays of the concatenated train and validation
    files, and a digest of both (the files differ between Python versions; caches key on it)."""
    root = stdlib if stdlib is not None else sysconfig.get_paths()["stdlib"]
    train = _read_files(TRAIN_FILES, root)
    val = _read_files(VAL_FILES, root)
    digest = hashlib.sha256(train + b"\0" + val).hexdigest()[:16]
    return np.frombuffer(train, np.uint8), np.frombuffer(val, np.uint8), digest


def windows(stream: np.ndarray, context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs `[N, context]` and next-byte targets `[N, context]` (int64) from one byte stream."""
    n = (len(stream) - 1 - context) // stride + 1
    if n < 1:
        raise ValueError(
            f"Expected a corpus longer than context={context} bytes. Received: {len(stream)} bytes"
        )
    starts = np.arange(n) * stride
    idx = starts[:, None] + np.arange(context + 1)[None, :]
    win = stream[idx].astype(np.int64)
    return win[:, :-1], win[:, 1:]
