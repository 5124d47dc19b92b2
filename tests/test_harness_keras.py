"""Training parity, property-based torch-vs-Keras parity and the CLI on the active Keras backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import assert_parity, check_training_parity
from harness.cli import main
from harness.porting import keras_twin, torch_class
from tests.helpers import CELLS, B, F, H, S, keras_backend, random_input

pytestmark = pytest.mark.keras


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_training_parity_float64(cell, layers, rng):
    """Streams that share weights train identically in torch and Keras: losses, weights and states."""
    torch.manual_seed(0)
    module = torch_class(cell)(F, H, S, num_layers=layers, dtype=torch.float64)
    x, target = random_input(rng, (B, S, 12, F), "float64"), random_input(rng, (B, S, 12, H), "float64")
    report = check_training_parity(module, x, target, "random", lr=0.3, steps=8)
    print(report.table())
    assert report.ok, report.table()
    assert report.max_rel_weight_error <= 1e-9 and len(report.keras_losses) == 8


@settings(max_examples=6, deadline=None)
@given(
    streams=st.integers(1, 3),
    steps=st.integers(1, 10),
    units=st.integers(1, 5),
    cell=st.sampled_from(list(CELLS)),
    layers=st.integers(1, 2),
    seed=st.integers(0, 100),
)
def test_property_torch_and_keras_agree(streams, steps, units, cell, layers, seed):
    torch.manual_seed(seed)
    module = torch_class(cell)(F, units, streams, num_layers=layers)
    x = np.random.default_rng(seed).standard_normal((B, streams, steps, F)).astype("float32")
    assert_parity({"torch": module, "keras": keras_twin(module)}, x, "random", seed=seed, whole_state_checks=None)


def test_cli_seed_shows_the_problem_and_the_fix(capsys):
    assert main(["seed", "--steps", "12"]) == 0
    out = capsys.readouterr().out
    plain = float(out.split("plain shared LSTM(stateful=True)")[1].split("max abs error")[1].split()[0])
    assert plain > 1e-3, out


def test_cli_parity_on_this_backend(capsys):
    assert main(["parity", "--backend", f"keras-{keras_backend()}", "--cell", "rnn", "--dtype", "float32"]) == 0
    assert "PASS" in capsys.readouterr().out
