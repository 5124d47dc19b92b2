"""``layer.streaming_step()``: one chunk on the carried state without Keras's per-call machinery (issue 14).

Held against ``layer(x)`` itself on a twin layer with the same weights: outputs and every carried
state after each chunk, one-frame and longer chunks, every cell, 1 and 2 layers.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from harness.porting import keras_class
from tests.helpers import CELLS, B, F, H, S

pytestmark = pytest.mark.keras


def twins(cell: str, **kwargs) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """Two layers with the same weights and zero states."""
    first, second = (keras_class(cell)(H, S, batch_size=B, dtype="float64", **kwargs) for _ in range(2))
    for layer in (first, second):
        layer.build((B, S, None, F))
    second.set_weights(first.get_weights())
    return first, second


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_streaming_step_equals_the_layer_call(cell, layers, rng):
    stepped, called = twins(cell, num_layers=layers)
    step = stepped.streaming_step()
    for steps in (1, 1, 3, 1):
        x = rng.standard_normal((B, S, steps, F))
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(step(x)), keras.ops.convert_to_numpy(called(x)), atol=1e-12
        )
        for got, want in zip(stepped.get_states(), called.get_states(), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-12)


def test_streaming_step_without_sequences_and_after_a_weight_change(rng):
    """``return_sequences=False`` gives the last step; new weights are picked up (the torch path caches them)."""
    stepped, called = twins("lstm", return_sequences=False)
    step = stepped.streaming_step()
    x = rng.standard_normal((B, S, 2, F))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(step(x)), keras.ops.convert_to_numpy(called(x)), atol=1e-12)
    new_weights = [w + 0.1 for w in stepped.get_weights()[: len(stepped.get_weights()) - 2]]
    for layer in (stepped, called):
        layer.set_weights(new_weights + layer.get_weights()[len(new_weights) :])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(step(x)), keras.ops.convert_to_numpy(called(x)), atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((B, S + 1, 1, F), "streams"), ((B + 1, S, 1, F), "batch"), ((B, S, 1, F + 1), "feature size")],
)
def test_streaming_step_refuses_bad_input_before_any_state_moves(shape, message, rng):
    stepped, _ = twins("gru")
    step = stepped.streaming_step()
    step(rng.standard_normal((B, S, 1, F)))
    before = stepped.get_states()
    with pytest.raises(ValueError, match=message):
        step(rng.standard_normal(shape))
    for got, want in zip(stepped.get_states(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_streaming_step_bypasses_the_keras_call(rng, monkeypatch):
    """The step never enters ``Layer.__call__`` (Keras's per-call machinery), yet carries the state."""
    stepped, called = twins("lstm")
    step = stepped.streaming_step()
    x = rng.standard_normal((B, S, 1, F))
    want = keras.ops.convert_to_numpy(called(x))

    def refuse(*args, **kwargs):
        raise AssertionError("Layer.__call__ was entered")

    monkeypatch.setattr(type(stepped), "__call__", refuse)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(step(x)), want, atol=1e-12)
