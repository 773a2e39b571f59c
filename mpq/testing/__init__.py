"""Test helpers for mpq and for users' own layers and kernels.

Format-aware tolerances (`tolerance`, `assert_close`), `sqnr` in dB, hypothesis strategies
(`mpq.testing.strategies`, imported on demand), capability markers (`mpq.testing.device`)
and `run_layer_test`, the conformance harness for layers.

Example:
    >>> import torch
    >>> from mpq.testing import assert_close, sqnr, tolerance
    >>> rtol, atol = tolerance("bfloat16", k=256)
"""

from __future__ import annotations

import os
from typing import TypedDict

from mpq.testing.layer_test import (
    DEFAULT_POLICIES,
    LayerConformanceError,
    LayerTestReport,
    run_layer_test,
)
from mpq.testing.tolerances import TOLERANCES, Tolerance, assert_close, sqnr, tolerance

__all__ = [
    "DEFAULT_POLICIES",
    "HYPOTHESIS_PROFILES",
    "TOLERANCES",
    "LayerConformanceError",
    "LayerTestReport",
    "Tolerance",
    "assert_close",
    "load_hypothesis_profile",
    "register_hypothesis_profiles",
    "run_layer_test",
    "sqnr",
    "tolerance",
]


class HypothesisProfile(TypedDict, total=False):
    """The hypothesis settings a profile sets."""

    derandomize: bool
    max_examples: int
    deadline: None
    print_blob: bool
    database: None


HYPOTHESIS_PROFILES: dict[str, HypothesisProfile] = {
    # Reproducible and bounded: the same examples on every run, no example database.
    "ci": {"derandomize": True, "max_examples": 50, "deadline": None, "print_blob": True,
           "database": None},
    # Local work: random, with the example database so failures replay.
    "dev": {"max_examples": 100, "deadline": None, "print_blob": True, "derandomize": False},
    # Occasional deep runs: HYPOTHESIS_PROFILE=thorough make test.
    "thorough": {"max_examples": 1000, "deadline": None, "print_blob": True,
                 "derandomize": False},
}  # fmt: skip
"""Settings of the hypothesis profiles that `register_hypothesis_profiles` registers."""


def register_hypothesis_profiles() -> None:
    """Register the ``ci``, ``dev`` and ``thorough`` hypothesis profiles (loads none of them).

    Example (tests/conftest.py):
        >>> from mpq.testing import load_hypothesis_profile
        >>> load_hypothesis_profile()  # doctest: +SKIP
        'dev'
    """
    from hypothesis import HealthCheck, settings

    for name, options in HYPOTHESIS_PROFILES.items():
        if name == "ci":
            settings.register_profile(name, **options, suppress_health_check=[HealthCheck.too_slow])
        else:
            settings.register_profile(name, **options)


def load_hypothesis_profile(name: str | None = None) -> str:
    """Register the profiles and load one; returns its name.

    ``name`` defaults to ``$HYPOTHESIS_PROFILE``, else ``"ci"`` when ``$CI`` is set, else ``"dev"``.

    Raises:
        ValueError: an unknown profile name.
    """
    from hypothesis import settings

    if name is None:
        name = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
    if name not in HYPOTHESIS_PROFILES:
        raise ValueError(
            f"Expected a hypothesis profile, one of {tuple(HYPOTHESIS_PROFILES)}. "
            f"Received: name={name!r}"
        )
    register_hypothesis_profiles()
    settings.load_profile(name)
    return name
