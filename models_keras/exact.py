"""Workarounds that keep float64 exact on every Keras 3.15 backend.

Keras 3.15 computes some float64 ops in float32: on JAX ``ops.tanh`` (its
``result_type(x.dtype, float)`` gives float32), on torch ``ops.matmul`` (its
``result_type`` forces 64-bit dtypes to 32-bit). Plain Keras ``SimpleRNN`` in
float64 then fails inside ``lax.scan`` on JAX (carry dtype mismatch) and is off
by ~1e-7 on torch; LSTM/GRU lose float64 precision in ``tanh`` on JAX; and in
JAX's x64 mode Keras's fused JAX LSTM/GRU without bias fail for float32.
"""

from __future__ import annotations

import keras
from keras import ops

from models_keras import backends


@keras.saving.register_keras_serializable(package="multistate_rnn")
def tanh(x):
    """``tanh`` computed in ``x``'s own dtype on every backend.

    Example:
        >>> tuple(tanh(keras.ops.zeros((2,), dtype="float32")).shape)
        (2,)
    """
    return backends.active.exact_tanh(x)


def safe_rnn_kwargs(rnn_class: type, use_bias: bool, rnn_kwargs: dict) -> dict:
    """``rnn_kwargs`` for ``rnn_class`` adjusted around the backend's float64 bugs (on JAX: the exact ``tanh``
    for the default activation, and no fused LSTM/GRU without a bias in x64 mode)."""
    return backends.active.rnn_kwargs(rnn_class, use_bias, rnn_kwargs, tanh)


class SimpleRNNCell(keras.layers.SimpleRNNCell):
    """Keras's ``SimpleRNNCell`` with its products done by ``einsum``, which keeps float64 on every backend."""

    def call(self, sequence, states, training=False):
        if self.dropout or self.recurrent_dropout:
            return super().call(sequence, states, training=training)
        prev = states[0] if isinstance(states, (list, tuple)) else states
        h = ops.einsum("bf,fh->bh", sequence, self.kernel) + ops.einsum("bg,gh->bh", prev, self.recurrent_kernel)
        if self.bias is not None:
            h = h + self.bias
        output = self.activation(h) if self.activation is not None else h
        return output, [output] if isinstance(states, (list, tuple)) else output


class SimpleRNN(keras.layers.RNN):
    """``keras.layers.SimpleRNN`` built on the exact ``SimpleRNNCell`` (same weights, same arguments)."""

    def __init__(
        self,
        units: int,
        *,
        return_sequences: bool = False,
        return_state: bool = False,
        dtype: object = None,
        name: str | None = None,
        **cell_kwargs: object,
    ) -> None:
        cell = SimpleRNNCell(units, dtype=dtype, name="simple_rnn_cell", **cell_kwargs)
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state, dtype=dtype, name=name)
