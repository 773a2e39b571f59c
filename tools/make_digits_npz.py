#!/usr/bin/env python3
"""Write `mpq/sweep/_data/digits.npz`, the digits data the sweeps use, ONCE, from scikit-learn.

    python tools/make_digits_npz.py            # needs scikit-learn; rewrites the file
    python tools/make_digits_npz.py --check    # compares the bundled file with scikit-learn's

Why: `mpq sweep` used to import scikit-learn (and SciPy with it) in every worker process only
to read 1797 small images; the bundled file makes the default sweep independent of scikit-learn
at run time. The arrays are exactly what `sklearn.datasets.load_digits(return_X_y=True)`
returns, stored without loss: the pixel values are integers 0..16 (kept as uint8; scikit-learn
returns them as float64) and the labels 0..9 (uint8). `mpq.sweep.data` converts them back,
`images / 16.0` in float64 then float32, exactly as it did with scikit-learn's arrays, so the
sweep's inputs are bit-identical (tests/sweep/test_data.py checks this against scikit-learn when
it is installed, and the SHA-256 of the arrays' bytes always).

Provenance and licence:
- The data ships inside scikit-learn itself (`sklearn/datasets/data/digits.csv.gz`);
  scikit-learn is distributed under the BSD 3-Clause licence.
- scikit-learn's description (`sklearn/datasets/descr/digits.rst`) says it is "a copy of the
  test set of the UCI ML hand-written digits datasets": Optical Recognition of Handwritten
  Digits, E. Alpaydin and C. Kaynak (1998), Bogazici University, file `optdigits.tes`,
  https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits
  (the UCI Machine Learning Repository's terms apply; cite Kaynak (1995) and Alpaydin and
  Kaynak (1998) when publishing results on it).

The file is written with `numpy.savez_compressed` and read with `allow_pickle=False`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "mpq" / "sweep" / "_data" / "digits.npz"


def from_sklearn() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as `(images uint8 [1797, 64], labels uint8 [1797])`, checked to be
    lossless."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    images, labels = x.astype(np.uint8), y.astype(np.uint8)
    if not (
        np.array_equal(images.astype(x.dtype), x) and np.array_equal(labels.astype(y.dtype), y)
    ):
        raise ValueError(
            "Expected integer pixels 0..16 and labels 0..9 from load_digits. "
            f"Received: x of dtype {x.dtype} in [{x.min()}, {x.max()}], y in [{y.min()}, {y.max()}]"
        )
    return images, labels


def encode(images: np.ndarray, labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels)
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    images, labels = from_sklearn()
    if args.check:
        with np.load(OUT, allow_pickle=False) as f:
            same = np.array_equal(f["images"], images) and np.array_equal(f["labels"], labels)
        print(f"{OUT}: {'identical to' if same else 'DIFFERS from'} scikit-learn's load_digits")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(encode(images, labels))
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes; sha256 of images + labels bytes {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
