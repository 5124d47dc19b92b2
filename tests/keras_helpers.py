"""Builders shared by the Keras tests."""

from __future__ import annotations

import keras
import numpy as np
import torch

import models_keras
from harness.porting import keras_class, keras_twin, torch_class
from tests.helpers import B, F, H, S


def torch_and_keras(cell: str, dtype: str = "float32", **kwargs) -> tuple[torch.nn.Module, keras.Model]:
    """A seeded torch multi-state module and its Keras twin (a functional model with the same weights)."""
    torch.manual_seed(0)
    module = torch_class(cell)(F, H, S, dtype=getattr(torch, dtype), **kwargs)
    return module, keras_twin(module, batch_size=B)


def functional(cell: str = "lstm", dtype: str = "float32", **kwargs) -> keras.Model:
    """A functional model around one multi-state layer with a fixed batch size and free time axis."""
    inputs = keras.Input(batch_shape=(B, S, None, F), dtype=dtype)
    return keras.Model(inputs, keras_class(cell)(H, S, dtype=dtype, **kwargs)(inputs))


def the_layer(model: keras.Model) -> models_keras.MultiStateBase:
    (layer,) = models_keras.multistate_layers(model)
    return layer


def chunks_of(x: np.ndarray, cut: int) -> list[np.ndarray]:
    return [x[:, :, :cut], x[:, :, cut:]]
