"""Keras callbacks for models with multi-state layers.

A multi-state layer carries its state from one batch to the next, also in ``fit``, and also from the
last batch of an epoch into the first of the next: an epoch does not start from zero unless told.
``ResetStates`` zeroes every multi-state layer of the model at each epoch's start (and, given
``every_n_batches``, every that many batches, for sequences cut into that many consecutive chunks).

Carried state only makes sense when consecutive batches continue each other: pass ``shuffle=False`` to
``fit``. Keras 3 shows a callback neither ``fit``'s ``shuffle`` nor its data order, so nothing here can
warn about ``shuffle=True`` (``fit``'s default).

Example:
    >>> import keras, numpy as np
    >>> from models_keras import MultiStateLSTM, ResetStates
    >>> model = keras.Sequential([keras.Input(batch_shape=(2, 3, 5, 4)), MultiStateLSTM(8, num_streams=3)])
    >>> model.compile("sgd", "mse")
    >>> x, y = np.zeros((4, 3, 5, 4), "float32"), np.zeros((4, 3, 5, 8), "float32")
    >>> _ = model.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0, callbacks=[ResetStates()])
"""

from __future__ import annotations

import keras

from models_keras.multistate import reset_all_states


class ResetStates(keras.callbacks.Callback):
    """Zero the carried state of every multi-state layer of the model at the start of each epoch, and, with
    ``every_n_batches=N``, before every N-th batch of an epoch as well (batches 0, N, 2N, ...)."""

    def __init__(self, every_n_batches: int | None = None) -> None:
        super().__init__()
        if every_n_batches is not None and (
            isinstance(every_n_batches, bool) or not isinstance(every_n_batches, int) or every_n_batches < 1
        ):
            raise ValueError(f"every_n_batches must be a positive integer or None, got {every_n_batches!r}")
        self.every_n_batches = every_n_batches

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        reset_all_states(self.model)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self.every_n_batches and batch and batch % self.every_n_batches == 0:
            reset_all_states(self.model)
