"""The Keras layer's one path chooser: ``fast_paths.path_for`` names the path from the facts of a call."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from models_keras import MultiStateGRU, fast_paths
from models_keras.fast_paths import Facts, Path
from tests.helpers import B, F, H, S, keras_backend, random_input

pytestmark = pytest.mark.keras

PLAIN = {"cell": "lstm", "dtype": "float32", "mixed": False, "on_gpu": False, "fusable": True, "torch_computes": True}

# (backend, facts that differ from PLAIN, the path): every fact that decides appears on both sides.
EXPECTED = [
    ("torch", {}, Path.TORCH_FUSED),
    ("torch", {"fusable": False}, Path.GENERIC),
    ("torch", {"torch_computes": False}, Path.GENERIC),
    ("torch", {"stepped": True}, Path.TORCH_SEGMENTS),
    ("torch", {"stepped": True, "concrete": False}, Path.SCAN),
    ("torch", {"streaming": True}, Path.BACKEND_STEP),
    ("torch", {"streaming": True, "mixed": True}, Path.LAYER_CALL),
    ("torch", {"streaming": True, "torch_computes": False}, Path.LAYER_CALL),
    ("jax", {"on_gpu": True}, Path.JAX_CUDNN),
    ("jax", {}, Path.GENERIC),
    ("jax", {"on_gpu": True, "cell": "gru"}, Path.GENERIC),
    ("jax", {"on_gpu": True, "dtype": "float64"}, Path.GENERIC),
    ("jax", {"on_gpu": True, "torch_computes": False}, Path.GENERIC),
    ("jax", {"on_gpu": True, "stepped": True}, Path.SCAN),
    ("jax", {"streaming": True}, Path.BACKEND_STEP),
    ("tensorflow", {}, Path.TF_XLA),
    ("tensorflow", {"training": True}, Path.GENERIC),
    ("tensorflow", {"symbolic": True}, Path.GENERIC),
    ("tensorflow", {"fusable": False}, Path.GENERIC),
    ("tensorflow", {"stepped": True}, Path.TF_XLA_SCAN),
    ("tensorflow", {"stepped": True, "symbolic": True}, Path.SCAN),
    ("tensorflow", {"stepped": True, "training": True}, Path.SCAN),
    ("tensorflow", {"streaming": True}, Path.BACKEND_STEP),
    ("numpy", {}, Path.GENERIC),
    ("numpy", {"stepped": True}, Path.SCAN),
]


def _wrong_paths(chooser) -> list[str]:
    wrong = []
    for backend, facts, expected in EXPECTED:
        got = chooser(Facts(backend=backend, **{**PLAIN, **facts}))
        if got is not expected:
            wrong.append(f"{backend} {facts}: {got}, expected {expected}")
    return wrong


def test_path_for_names_the_path_from_the_facts():
    wrong = _wrong_paths(fast_paths.path_for)
    assert not wrong, "\n".join(wrong)


def test_planted_chooser_that_ignores_a_trace_is_caught():
    """A chooser that takes every call for an eager one would run torch's segments on a traced input."""
    wrong = _wrong_paths(lambda facts: fast_paths.path_for(dataclasses.replace(facts, concrete=True)))
    assert wrong == ["torch {'stepped': True, 'concrete': False}: Path.TORCH_SEGMENTS, expected Path.SCAN"]


def test_every_chunk_path_has_a_runner():
    chunk_paths = {p for _, facts, p in EXPECTED if not facts.get("streaming")}
    assert chunk_paths <= set(fast_paths.RUNNERS), sorted(p.value for p in chunk_paths - set(fast_paths.RUNNERS))


def test_the_layer_takes_the_chosen_path(rng, monkeypatch):
    """The path ``path_for`` names for this backend is the runner the layer's call runs (counted, not replaced)."""
    layer = MultiStateGRU(H, S, batch_size=B)
    x = random_input(rng, (B, S, 4, F))
    ran = []
    for path, runner in list(fast_paths.RUNNERS.items()):

        def counted(*args, _path=path, _runner=runner):
            ran.append(_path)
            return _runner(*args)

        monkeypatch.setitem(fast_paths.RUNNERS, path, counted)
    layer(x)
    resets = np.zeros((B, S, 4), bool)
    resets[0, 1, 2] = True
    layer(x, resets=resets)
    plain, stepped = (fast_paths.path_for(fast_paths.facts_for(layer, stepped=s)) for s in (False, True))
    assert ran == [plain, stepped], f"ran {ran}, chosen {[plain, stepped]}"


@pytest.mark.skipif(keras_backend() != "torch", reason="only the torch backend compiles a streaming step itself")
def test_compiled_step_that_cannot_be_had_is_reported(rng):
    """``compiled=True`` on a layer without a torch step (dropout): a warning, and the step is ``layer(x)``."""
    layer = MultiStateGRU(H, S, batch_size=B, dropout=0.1)
    with pytest.warns(UserWarning, match="no compiled step"):
        step = layer.streaming_step(compiled=True)
    assert step is layer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert layer.streaming_step() is layer
