"""Fixtures shared by the tests and the benchmarks (helpers live in ``tests/helpers.py``)."""

from __future__ import annotations

import numpy as np
import pytest

DTYPES = ("float32", "float64")
SEED = 1234


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded numpy generator, so every test sees the same numbers."""
    return np.random.default_rng(SEED)


@pytest.fixture(params=DTYPES)
def dtype(request: pytest.FixtureRequest) -> str:
    """Runs a test once per supported float dtype."""
    return request.param
