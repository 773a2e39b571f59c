"""Data for sweeps: a small `Data` container (arrays or loaders), the 8x8 digits (bundled with
mpq, as scikit-learn ships them) with a fixed split, and a synthetic classification set sized
for GPU timing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Data",
    "as_data",
    "digits",
    "digits_flat",
    "resolve_data",
    "stdlib_bytes",
    "synthetic",
    "synthetic_regression",
]


@dataclass
class Data:
    """Classification data: train and test splits as arrays, or as loaders.

    Arrays: `x_*` float arrays (any shape with the batch first, e.g. `[N, 8, 8, 1]` NHWC images
    or `[N, 64]` features) and `y_*` int class ids `[N]`. Loaders: any re-iterable of `(x, y)`
    batches (a `torch.utils.data.DataLoader`); then `x_*`/`y_*` are None.

    Example:
        >>> d = Data(np.zeros((4, 3), np.float32), np.zeros(4, np.int64),
        ...          np.zeros((2, 3), np.float32), np.zeros(2, np.int64))
        >>> [x.shape for x, _ in d.test_batches(1)]
        [(1, 3), (1, 3)]
    """

    x_train: Any = None
    y_train: Any = None
    x_test: Any = None
    y_test: Any = None
    train_loader: Iterable[tuple[Any, Any]] | None = None
    test_loader: Iterable[tuple[Any, Any]] | None = None
    name: str = "data"

    def __post_init__(self) -> None:
        arrays = (self.x_train, self.y_train, self.x_test, self.y_test)
        loaders = (self.train_loader, self.test_loader)
        if all(a is not None for a in arrays):
            for key, x, y in (
                ("train", self.x_train, self.y_train),
                ("test", self.x_test, self.y_test),
            ):
                if len(x) != len(y) or len(x) == 0:
                    raise ValueError(
                        f"Expected x_{key} and y_{key} of the same non-zero length. "
                        f"Received: len(x_{key})={len(x)}, len(y_{key})={len(y)}"
                    )
        elif not all(ld is not None for ld in loaders):
            raise ValueError(
                "Expected either four arrays (x_train, y_train, x_test, y_test) or two loaders "
                f"(train_loader, test_loader). Received: arrays given={[a is not None for a in arrays]}, "
                f"loaders given={[ld is not None for ld in loaders]}"
            )

    @property
    def uses_loaders(self) -> bool:
        return self.x_train is None

    def train_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[tuple[Any, Any]]:
        """Shuffled training batches; the order depends only on (seed, epoch)."""
        if self.uses_loaders:
            yield from self.train_loader  # type: ignore[misc]
            return
        order = np.random.default_rng([seed, epoch]).permutation(len(self.x_train))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield self.x_train[idx], self.y_train[idx]

    def test_batches(self, batch_size: int) -> Iterator[tuple[Any, Any]]:
        if self.uses_loaders:
            yield from self.test_loader  # type: ignore[misc]
            return
        for i in range(0, len(self.x_test), batch_size):
            yield self.x_test[i : i + batch_size], self.y_test[i : i + batch_size]

    def subset(self, n_train: int, n_test: int) -> Data:
        """The first n samples of each split (`--quick`); loaders are returned unchanged."""
        if self.uses_loaders:
            return self
        return Data(
            self.x_train[:n_train],
            self.y_train[:n_train],
            self.x_test[:n_test],
            self.y_test[:n_test],
            name=self.name,
        )


def as_data(obj: Any) -> Data:
    """A `Data` from a Data, a 4-tuple of arrays, or a 2-tuple of loaders."""
    if isinstance(obj, Data):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) == 4:
        return Data(*obj)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return Data(train_loader=obj[0], test_loader=obj[1])
    raise TypeError(
        "Expected data as mpq.sweep.data.Data, (x_train, y_train, x_test, y_test) arrays, or "
        f"(train_loader, test_loader). Received: {obj!r:.200} (of type {type(obj).__name__})"
    )


_DIGITS_CACHE: dict[str, tuple[np.ndarray, ...]] = {}


#: The digits as bundled: `images` uint8 [1797, 64] (0..16), `labels` uint8 [1797] (0..9).
DIGITS_SHAPES = {"images": (1797, 64), "labels": (1797,)}


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits, `(images, labels)` as uint8 arrays: exactly the values of
    scikit-learn's `load_digits(return_X_y=True)` (a copy of the UCI optdigits test set;
    provenance in tools/make_digits_npz.py), read without pickle and checked."""
    from importlib import resources

    ref = resources.files("mpq.sweep") / "_data" / "digits.npz"
    with ref.open("rb") as fh, np.load(fh, allow_pickle=False) as f:
        arrays = {k: f[k] for k in DIGITS_SHAPES if k in f.files}
    for key, shape in DIGITS_SHAPES.items():
        a = arrays.get(key)
        if a is None or a.shape != shape or a.dtype != np.uint8:
            got = "missing" if a is None else f"shape {a.shape}, dtype {a.dtype}"
            raise ValueError(
                f"Expected {key!r} of shape {shape} and dtype uint8 in the bundled digits.npz "
                f"(a broken install?). Received: {got}"
            )
    images, labels = arrays["images"], arrays["labels"]
    if images.max() > 16 or labels.max() > 9:
        raise ValueError(
            "Expected pixels in 0..16 and labels in 0..9 in the bundled digits.npz. "
            f"Received: pixels up to {images.max()}, labels up to {labels.max()}"
        )
    return images, labels


def _digits_arrays(test_fraction: float) -> tuple[np.ndarray, ...]:
    key = f"{test_fraction}"
    if key not in _DIGITS_CACHE:
        images, labels = load_digits_arrays()
        # As scikit-learn's float64 pixels were divided: the same float32 values, bit for bit.
        x = (images.astype(np.float64) / 16.0).astype(np.float32)
        y = labels.astype(np.int64)
        # Fixed, stratified-by-shuffle split that does not depend on the run's seed, so every
        # seed and policy is scored on the same held-out samples.
        order = np.random.default_rng(12345).permutation(len(x))
        n_test = round(len(x) * test_fraction)
        test, train = order[:n_test], order[n_test:]
        _DIGITS_CACHE[key] = (x[train], y[train], x[test], y[test])
    return _DIGITS_CACHE[key]


def digits(test_fraction: float = 0.2) -> Data:
    """The 8x8 digits (1797 images, 10 classes; the UCI optdigits test set that scikit-learn
    ships, bundled with mpq) as NHWC `[N, 8, 8, 1]` images in [0, 1]; fixed split (20% held
    out: 359 test, 1438 train)."""
    xtr, ytr, xte, yte = _digits_arrays(test_fraction)
    return Data(xtr.reshape(-1, 8, 8, 1), ytr, xte.reshape(-1, 8, 8, 1), yte, name="digits")


def digits_flat(test_fraction: float = 0.2) -> Data:
    """The digits as flat `[N, 64]` feature vectors, same split as `digits`."""
    xtr, ytr, xte, yte = _digits_arrays(test_fraction)
    return Data(xtr, ytr, xte, yte, name="digits_flat")


def synthetic(
    n_features: int = 512,
    n_classes: int = 16,
    n_train: int = 8192,
    n_test: int = 2048,
    separation: float = 0.18,
    seed: int = 0,
) -> Data:
    """A synthetic classification set: one Gaussian cluster per class, `x = mu[y] + noise`,
    with class means drawn from N(0, separation^2) per feature and unit noise. Sized to give
    matmuls that show kernel speed on a GPU; `separation` sets how hard it is (0.18: the
    synthetic MLP reaches about 95% in 3 epochs).

    Example:
        >>> d = synthetic(n_features=8, n_classes=3, n_train=10, n_test=5)
        >>> d.x_train.shape, d.y_test.shape
        ((10, 8), (5,))
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    means = rng.standard_normal((n_classes, n_features)).astype(np.float32) * separation
    y = rng.integers(0, n_classes, n).astype(np.int64)
    x = (means[y] + rng.standard_normal((n, n_features))).astype(np.float32)
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], name="synthetic")


def synthetic_regression(
    n_features: int = 16, n_train: int = 1024, n_test: int = 256, noise: float = 0.1, seed: int = 0
) -> Data:
    """A regression set: `y = tanh(x @ w) + noise`, `x ~ N(0, 1)` `[N, n_features]`, targets
    `[N, 1]` float32 (the `regression` task, scored by MSE).

    Example:
        >>> d = synthetic_regression(n_train=8, n_test=4)
        >>> d.x_train.shape, d.y_test.shape
        ((8, 16), (4, 1))
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    w = rng.standard_normal((n_features, 1)).astype(np.float32) / np.sqrt(n_features)
    x = rng.standard_normal((n, n_features)).astype(np.float32)
    y = (np.tanh(x @ w) + noise * rng.standard_normal((n, 1))).astype(np.float32)
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], name="synthetic_regression")


def stdlib_bytes(context: int = 32, stride: int | None = None, stdlib: str | None = None) -> Data:
    """The language-model task's data: `context`-byte windows `[N, context]` (int64 byte ids)
    and next-byte targets of a fixed list of Python standard-library sources
    (`mpq.sweep.tasks.corpus`), training and validation split by file. Training windows overlap
    when `stride` < context; validation windows never do.

    Example:
        >>> d = stdlib_bytes(context=32)
        >>> d.x_train.shape[1], d.y_test.dtype
        (32, dtype('int64'))
    """
    from mpq.sweep.tasks.corpus import corpus, windows

    for key, size in (("context", context), ("stride", 1 if stride is None else stride)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"Expected `{key}` to be an int >= 1. Received: {key}={size!r}")
    train, val, _ = corpus(stdlib)
    xtr, ytr = windows(train, context, stride or context)
    xte, yte = windows(val, context, context)
    return Data(xtr, ytr, xte, yte, name="stdlib_bytes")


BUILTIN_DATA: dict[str, Callable[..., Data]] = {
    "digits": digits,
    "digits_flat": digits_flat,
    "synthetic": synthetic,
    "synthetic_regression": synthetic_regression,
    "stdlib_bytes": stdlib_bytes,
}


def resolve_data(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """A data callable from a built-in name, a `"module:function"` string, or a callable."""
    if callable(ref):
        return ref
    if isinstance(ref, str):
        if ref in BUILTIN_DATA:
            return BUILTIN_DATA[ref]
        if ":" in ref:
            return _import_ref(ref, "data")
        raise ValueError(
            f"Expected a data name from {sorted(BUILTIN_DATA)} or 'package.module:function'. "
            f"Received: data={ref!r}"
        )
    raise TypeError(
        f"Expected a data name or callable. Received: data={ref!r} (of type {type(ref).__name__})"
    )


def _import_ref(ref: str, what: str) -> Callable[..., Any]:
    """Resolve `"package.module:attr"` like an entry point, with the current directory
    importable (as `python -m` does). Only for names the user gives on the command line, in a
    sweep file or in Python; never for names read from results or saved models."""
    import os
    import sys

    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ValueError(f"Expected {what} as 'package.module:function'. Received: {ref!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"Expected an importable module for {what} {ref!r}. Received: {type(e).__name__}: {e}"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(
                f"Expected {what} {ref!r}: module {module_name!r} has no attribute {attr!r}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(
            f"Expected {what} {ref!r} to be callable. Received: {obj!r} (of type {type(obj).__name__})"
        )
    function: Callable[..., Any] = obj
    return function
