"""A user's own trained Keras ``LSTM``/``GRU``/``SimpleRNN`` made multi-state: ``from_layer``, on the active backend.

The reference is the user's plain layer itself, called once per stream with its own state
(the sequence in two chunks).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models_keras import MultiStateBase, MultiStateGRU, MultiStateLSTM, MultiStateSimpleRNN
from tests.conformance import assert_twins_match
from tests.helpers import B, F, H, T, random_input

pytestmark = pytest.mark.keras

S = 2  # streams: each is one eager call of the plain layer per chunk (slow on JAX)
CUT = T // 2  # two chunks of one shape: one trace per layer on each backend

PLAIN = {
    "lstm": lambda **kw: keras.layers.LSTM(H, **kw),
    "gru relu hard_sigmoid, last step only": lambda **kw: keras.layers.GRU(
        H, activation="relu", recurrent_activation="hard_sigmoid", **{**kw, "return_sequences": False}
    ),
    "simple rnn relu, no bias": lambda **kw: keras.layers.SimpleRNN(H, activation="relu", use_bias=False, **kw),
}
OURS = {"LSTM": MultiStateLSTM, "GRU": MultiStateGRU, "SimpleRNN": MultiStateSimpleRNN}


def plain(name: str) -> keras.layers.Layer:
    """A seeded, built plain layer that also returns its state (for the per-stream loop)."""
    keras.utils.set_random_seed(0)
    layer = PLAIN[name](return_sequences=True, return_state=True)
    layer.build((None, None, F))
    return layer


def to_numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("name", PLAIN)
def test_from_layer_equals_the_plain_layer_per_stream(name, rng):
    layer = plain(name)
    made = MultiStateBase.from_layer(layer, num_streams=S, batch_size=B)
    assert type(made) is OURS[type(layer).__name__]
    x = random_input(rng, (B, S, T, F))
    states = [None] * S
    for i, chunk in enumerate((x[:, :, :CUT], x[:, :, CUT:])):
        per_stream = [layer(chunk[:, s], initial_state=states[s]) for s in range(S)]
        states = [final for _, *final in per_stream]
        assert_twins_match(made(chunk), np.stack([to_numpy(out) for out, *_ in per_stream], 1), f"output of chunk {i}")
        for k, state in enumerate(made.get_states()):
            expected = np.stack([to_numpy(final[k]) for final in states], 1)[None]
            assert_twins_match(state, expected, f"state {made.state_names[k]} after chunk {i}")


def test_from_layer_copies_the_weights_and_passes_options_on():
    layer = plain("lstm")
    before = [to_numpy(w).copy() for w in layer.weights]
    made = MultiStateLSTM.from_layer(layer, num_streams=S, return_sequences=False, name="bands")
    assert (made.return_sequences, made.name, made.num_layers) == (False, "bands", 1)
    copied = made.rnn_layers[0].cell
    assert all(np.array_equal(to_numpy(a), to_numpy(b)) for a, b in zip(copied.weights, layer.weights, strict=True))
    copied.kernel.assign(np.zeros(copied.kernel.shape, "float32"))  # training the copy ...
    changed = max(float(np.max(np.abs(to_numpy(w) - b))) for w, b in zip(layer.weights, before))
    assert changed == 0.0, f"the user's layer changed by {changed:.3g}: its weights were shared, not copied"


def built(layer: keras.layers.Layer) -> keras.layers.Layer:
    layer.build((None, None, F))
    return layer


REFUSALS = {
    "unbuilt": (
        lambda: MultiStateLSTM.from_layer(keras.layers.LSTM(H), num_streams=S),
        ValueError,
        r"has no weights yet: build it first \(call it on an input, or layer.build",
    ),
    "GRU into MultiStateLSTM": (
        lambda: MultiStateLSTM.from_layer(built(keras.layers.GRU(H)), num_streams=S),
        TypeError,
        "MultiStateLSTM.from_layer expects a keras.layers.LSTM, got GRU; for it use MultiStateGRU.from_layer",
    ),
    "bidirectional": (
        lambda: MultiStateBase.from_layer(built(keras.layers.Bidirectional(keras.layers.LSTM(H))), num_streams=S),
        TypeError,
        "expects a keras.layers.LSTM or keras.layers.GRU or keras.layers.SimpleRNN, got Bidirectional",
    ),
    "go_backwards": (
        lambda: MultiStateGRU.from_layer(built(keras.layers.GRU(H, go_backwards=True)), num_streams=S),
        ValueError,
        "expects a layer that runs forward in time, got go_backwards=True",
    ),
    "GRU reset_after=False": (
        lambda: MultiStateGRU.from_layer(built(keras.layers.GRU(H, reset_after=False)), num_streams=S),
        ValueError,
        "supports only reset_after=True .*got reset_after=False",
    ),
    "an option the weights fix": (
        lambda: MultiStateSimpleRNN.from_layer(built(keras.layers.SimpleRNN(H)), num_streams=S, num_layers=2),
        ValueError,
        "takes these from the source layer, .*expected num_layers=1, got num_layers=2",
    ),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_from_layer_refusals_name_what_was_expected(name):
    call, error, message = REFUSALS[name]
    with pytest.raises(error, match=message):
        call()
