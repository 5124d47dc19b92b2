"""Fixtures and helpers shared by the tests and the benchmarks."""

from __future__ import annotations

import os

import numpy as np
import pytest

DTYPES = ("float32", "float64")
SEED = 1234


def keras_backend() -> str:
    """The Keras backend this process runs (fixed at import time by KERAS_BACKEND)."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded numpy generator, so every test sees the same numbers."""
    return np.random.default_rng(SEED)


@pytest.fixture(params=DTYPES)
def dtype(request: pytest.FixtureRequest) -> str:
    """Runs a test once per supported float dtype."""
    return request.param


def random_input(rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """Standard-normal input of ``shape`` and ``dtype``."""
    return rng.standard_normal(shape).astype(dtype)
