"""``ResetStates``: a Keras callback that zeroes every multi-state layer of a model between epochs (and every N
batches), on the active backend. The state at each batch's start is read by a recording callback after it."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models_keras import MultiStateLSTM, ResetStates, multistate_layers

pytestmark = pytest.mark.keras

B, S, T, F, U, BATCHES = 2, 2, 3, 3, 4, 4


class _StateAtBatchStart(keras.callbacks.Callback):
    """Records the largest carried state (abs) of every multi-state layer at each training batch's start."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[tuple[int, int], float] = {}
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        states = [s for layer in multistate_layers(self.model) for s in layer.get_states()]
        self.seen[self.epoch, batch] = max(float(np.abs(s).max()) for s in states)


def _fit(*callbacks: keras.callbacks.Callback) -> dict[tuple[int, int], float]:
    keras.utils.set_random_seed(0)
    inputs = keras.Input(batch_shape=(B, S, T, F))
    hidden = MultiStateLSTM(U, num_streams=S)(inputs)
    model = keras.Model(inputs, MultiStateLSTM(U, num_streams=S)(hidden))  # two layers: both are reset
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B * BATCHES, S, T, F)).astype("float32")
    y = rng.standard_normal((B * BATCHES, S, T, U)).astype("float32")
    recorder = _StateAtBatchStart()
    model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, callbacks=[*callbacks, recorder])
    return recorder.seen


def test_reset_states_zeroes_every_layer_at_each_epoch_and_every_n_batches():
    """Epoch starts are reset by ``on_epoch_begin``, batch 2 by the period; batches 1 and 3 carry state."""
    carried = _fit()  # the control: without the callback the second epoch starts on the first's last state
    assert carried[1, 0] > 1e-3, f"no state carried into epoch 2 to reset: {carried}"
    every_two = _fit(ResetStates(every_n_batches=2))
    zero = {key for key, value in every_two.items() if value == 0.0}
    assert zero == {(0, 0), (0, 2), (1, 0), (1, 2)}, f"largest state at each (epoch, batch) start: {every_two}"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_reset_states_refuses_a_bad_period(bad):
    with pytest.raises(ValueError, match=f"every_n_batches must be a positive integer or None, got {bad!r}"):
        ResetStates(every_n_batches=bad)
