"""The bundled digits (mpq/sweep/_data/digits.npz): exactly scikit-learn's, read without pickle;
and what sweep workers import and how they are set up."""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path

import numpy as np
import pytest

from mpq.sweep import data as data_mod
from mpq.sweep import experiment
from mpq.sweep.config import SweepConfig
from mpq.sweep.data import digits, digits_flat, load_digits_arrays
from mpq.sweep.runner import WorkerPool, make_executor

# sha256 of images.tobytes() + labels.tobytes(), as tools/make_digits_npz.py prints it.
DIGITS_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


def test_bundled_digits_are_the_recorded_arrays():
    images, labels = load_digits_arrays()
    assert (images.shape, labels.shape) == ((1797, 64), (1797,))
    assert hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest() == DIGITS_SHA256


def test_bundled_digits_are_bit_identical_to_scikit_learns():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    images, labels = load_digits_arrays()
    assert np.array_equal(images.astype(x.dtype), x) and np.array_equal(labels.astype(y.dtype), y)
    # The sweep's inputs, as they were computed from scikit-learn's arrays before.
    x32, y64 = (x / 16.0).astype(np.float32), y.astype(np.int64)
    order = np.random.default_rng(12345).permutation(len(x32))
    test, train = order[:359], order[359:]
    flat = digits_flat()
    for got, want in ((flat.x_train, x32[train]), (flat.x_test, x32[test])):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    assert np.array_equal(flat.y_train, y64[train]) and flat.y_train.dtype == np.int64
    assert digits().x_test.tobytes() == x32[test].tobytes()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((1797, 64), np.uint8)}, "Received: missing"),
        (
            {"images": np.zeros((1797, 64), np.float64), "labels": np.zeros(1797, np.uint8)},
            "Received: shape (1797, 64), dtype float64",
        ),
        (
            {"images": np.full((1797, 64), 17, np.uint8), "labels": np.zeros(1797, np.uint8)},
            "Received: pixels up to 17",
        ),
    ],
)
def test_a_broken_bundled_file_is_refused(tmp_path, monkeypatch, arrays, message):
    (tmp_path / "_data").mkdir()
    np.savez(tmp_path / "_data" / "digits.npz", **arrays)
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_digits_arrays()


def test_the_bundled_file_is_read_without_pickle(tmp_path, monkeypatch):
    (tmp_path / "_data").mkdir()
    objects = np.array([object()] * 3, dtype=object)
    np.savez(tmp_path / "_data" / "digits.npz", images=objects, labels=objects)
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_digits_arrays()


def test_the_digits_do_not_import_scikit_learn():
    assert "sklearn" not in data_mod.__dict__
    code = Path(data_mod.__file__).read_text().split('"""', 2)[2]  # after the docstring
    assert "sklearn" not in code


def test_workers_import_little_run_one_thread_and_ignore_ctrl_c():
    from tests.sweep._helpers import worker_report

    pool = make_executor(SweepConfig(workers=2))
    assert isinstance(pool, WorkerPool)
    with pool:
        report = pool.submit(worker_report).result(timeout=300)
    assert report == {
        "extras": [],
        "threads": 1,
        "sigint_ignored": True,
        "sigint_blocked": True,
    }


def test_quick_times_latency_over_the_full_repeats(monkeypatch):
    seen = []
    real = experiment._latency_ms

    def spy(model, data, device, repeats):
        seen.append(repeats)
        return real(model, data, device, repeats)

    monkeypatch.setattr(experiment, "_latency_ms", spy)
    rc = SweepConfig(models=["digits_mlp"], policies=["float32"], quick=True).run_configs()[0]
    assert rc.latency_repeats >= 5
    record = experiment.run_one(rc)
    assert record["status"] == "ok", record.get("error")
    assert seen == [rc.latency_repeats]
