"""Import Keras 3 (torch backend) for the tests that compare against it; skip them when the
`keras` extra is not installed (`make setup` installs it)."""

from __future__ import annotations

import os
from types import ModuleType

import pytest


def import_keras() -> ModuleType:
    """`keras` on its torch backend, or skip the test (Keras absent, or another backend set)."""
    backend = os.environ.setdefault("KERAS_BACKEND", "torch")
    if backend != "torch":
        pytest.skip(f"Keras comparisons need KERAS_BACKEND=torch (set: {backend!r})")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras was imported with the {keras.backend.backend()!r} backend")
    return keras
