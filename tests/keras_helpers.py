"""Builders shared by the Keras tests."""

from __future__ import annotations

import keras
import numpy as np
import torch

import models_keras
import models_torch
from harness.porting import keras_twin

B, S, T, F, H = 2, 3, 12, 4, 5
KERAS_CELLS = {
    "lstm": models_keras.MultiStateLSTM,
    "gru": models_keras.MultiStateGRU,
    "rnn": models_keras.MultiStateSimpleRNN,
}
TORCH_CELLS = {
    "lstm": models_torch.MultiStateLSTM,
    "gru": models_torch.MultiStateGRU,
    "rnn": models_torch.MultiStateRNN,
}


def torch_and_keras(cell: str, dtype: str = "float32", **kwargs) -> tuple[torch.nn.Module, keras.Model]:
    """A seeded torch multi-state module and its Keras twin (a functional model with the same weights)."""
    torch.manual_seed(0)
    module = TORCH_CELLS[cell](F, H, S, dtype=getattr(torch, dtype), **kwargs)
    return module, keras_twin(module, batch_size=B)


def functional(cell: str = "lstm", dtype: str = "float32", **kwargs) -> keras.Model:
    """A functional model around one multi-state layer with a fixed batch size and free time axis."""
    inputs = keras.Input(batch_shape=(B, S, None, F), dtype=dtype)
    return keras.Model(inputs, KERAS_CELLS[cell](H, S, dtype=dtype, **kwargs)(inputs))


def the_layer(model: keras.Model) -> models_keras.MultiStateBase:
    (layer,) = models_keras.multistate_layers(model)
    return layer


def chunks_of(x: np.ndarray, cut: int) -> list[np.ndarray]:
    return [x[:, :, :cut], x[:, :, cut:]]
