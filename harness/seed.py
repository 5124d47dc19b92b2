"""The original problem, reproduced: one Keras layer shared by three bands, chunked vs whole.

Example:
    >>> seed_errors()                      # doctest: +SKIP
    {'plain shared LSTM(stateful=True)': 0.21, 'multi-state layer (this project)': 0.0}
"""

from __future__ import annotations

import numpy as np


def _band_graph(shared, bands: int, features: int, per_band: bool):
    import keras

    inputs = keras.Input(batch_shape=(1, bands, None, features))
    calls = [shared(inputs[:, k], stream=k) if per_band else shared(inputs[:, k]) for k in range(bands)]
    return keras.Model(inputs, keras.layers.Concatenate(axis=-1)(calls))


def seed_errors(steps: int = 20, bands: int = 3, features: int = 4, units: int = 3, seed: int = 0) -> dict[str, float]:
    """Max abs difference between predicting ``steps`` whole and in two halves, for both ways of sharing."""
    import keras

    from models_keras import MultiStateLSTM

    x = np.random.default_rng(seed).standard_normal((1, bands, steps, features)).astype("float32")
    errors = {}
    for name, shared, per_band in (
        ("plain shared LSTM(stateful=True)", keras.layers.LSTM(units, stateful=True, return_sequences=True), False),
        ("multi-state layer (this project)", MultiStateLSTM(units, bands), True),
    ):
        model = _band_graph(shared, bands, features, per_band)
        whole = model.predict_on_batch(x)
        shared.reset_state()
        halves = np.concatenate(
            [model.predict_on_batch(x[:, :, : steps // 2]), model.predict_on_batch(x[:, :, steps // 2 :])], 1
        )
        errors[name] = float(np.abs(halves - whole).max())
    return errors
