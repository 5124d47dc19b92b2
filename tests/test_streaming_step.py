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


def _new_storage(layer: keras.layers.Layer) -> None:
    """On the torch backend a variable is a torch Parameter: ``param.data = ...`` swaps its storage."""
    import torch

    torch.nn.utils.vector_to_parameters(
        torch.nn.utils.parameters_to_vector(layer.parameters()) * 0.5, layer.parameters()
    )


@pytest.mark.parametrize("compiled", [False, True])
def test_streaming_step_sees_weights_and_states_changed_between_calls(compiled, rng):
    """New weights and states set between calls are picked up (the torch path plans on them; ``compiled``:
    AOTInductor there); ``return_sequences=False`` gives the last step; no output aliases a carried state."""
    if compiled and keras.backend.backend() != "torch":
        pytest.skip("compiled=True differs from the plain step on the torch backend only")
    stepped, called = twins("lstm", num_layers=2, return_sequences=False)
    step = stepped.streaming_step(compiled=compiled)
    x = rng.standard_normal((B, S, 2, F))
    shifted = [w + 0.1 for w in stepped.get_weights()[: len(stepped.get_weights()) - 2]]
    changes = [
        lambda layer: layer.set_weights(shifted + layer.get_weights()[len(shifted) :]),
        lambda layer: layer.set_states([np.full((2, B, S, H), 0.3)] * 2),
        lambda layer: layer.reset_states(streams=[1]),
        lambda layer: layer(x),  # the layer itself moves the state
        *([_new_storage] if keras.backend.backend() == "torch" else []),
    ]
    for change in [lambda layer: None, *changes]:
        change(stepped), change(called)
        y = keras.ops.convert_to_numpy(step(x))
        np.testing.assert_allclose(y, keras.ops.convert_to_numpy(called(x)), atol=1e-12)
        for got, want in zip(stepped.get_states(), called.get_states(), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-12)
    if compiled:
        assert len(step.programs) == 1, "one input shape, one compiled program"


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
