"""Fixtures shared by the tests and the benchmarks (helpers live in ``tests/helpers.py``)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from tests.helpers import cuda_available, shard

DTYPES = ("float32", "float64")
SEED = 1234
KERAS_PACKAGE = pathlib.Path(__file__).resolve().parent / "models_keras"


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded numpy generator, so every test sees the same numbers."""
    return np.random.default_rng(SEED)


@pytest.fixture(params=DTYPES)
def dtype(request: pytest.FixtureRequest) -> str:
    """Runs a test once per supported float dtype."""
    return request.param


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the tests marked slow (long acceptance runs)")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark the examples in ``models_keras``'s docstrings (collected by ``--doctest-modules``) ``keras``: like the
    Keras tests, they run in the Keras jobs, once per backend."""
    if isinstance(item, pytest.DoctestItem) and KERAS_PACKAGE in item.path.parents:
        item.add_marker(pytest.mark.keras)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep this process's share of the tests where ``SUITE_SHARD="k/n"`` (every n-th from the k-th: how
    ``tests/run_all.sh`` splits its longest job over the cores); skip the tests marked ``gpu`` where torch
    sees no CUDA device (torch is imported only if there are some), and those marked ``slow`` without
    ``--run-slow``."""
    if os.environ.get("SUITE_SHARD"):
        kept, dropped = shard(items, os.environ["SUITE_SHARD"])
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    if not config.getoption("--run-slow"):
        skip_slow = pytest.mark.skip(reason="a long acceptance run: pytest --run-slow")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(skip_slow)
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
