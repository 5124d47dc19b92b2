"""The Keras implementations on the active backend, each a compiled model run through the fit/predict API.

- ``multistate``: ``harness.porting.keras_twin`` of the torch module, a functional model with
  ``Input(batch_shape=(B, S, None, F))`` around the multi-state layer; it carries each stream's state
  and may take a backend fast path (``models_keras.fast_paths``), recorded as ``kernel``.
- ``per-stream``: what a Keras user writes: one plain shared ``LSTM``/``GRU``/``SimpleRNN`` called once
  per stream on ``S`` slices of the input in one functional model (stateless: it cannot carry
  per-stream state, it only shows the cost of ``S`` small calls).
- ``fused``: the plain layer in a functional model on the already-folded ``(B*S, t, F)`` (stateless),
  the plain-Keras reference the multi-state layer is held against.

Inference steps (forward, streaming) call ``predict_on_batch``; training steps call ``train_on_batch``
after ``compile(optimizer=SGD, loss="mse")`` with Keras's default ``jit_compile``.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from benchmarks import torch_impls
from benchmarks.cases import Case, Shape
from harness.porting import keras_twin, port_weights
from models_keras import fast_paths, multistate_layers

RAW_LAYERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "rnn": keras.layers.SimpleRNN}


def backend() -> str:
    """The active Keras backend (fixed at import by ``KERAS_BACKEND``)."""
    return keras.backend.backend()


def device() -> str:
    """``"gpu"`` when the active Keras backend computes on a GPU, else ``"cpu"``."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    if name == "jax":
        import jax

        return "gpu" if jax.default_backend() == "gpu" else "cpu"
    return torch_impls.device()


def _raw_layer(cell: str, module: object) -> keras.layers.Layer:
    """A plain Keras layer of ``cell`` returning sequences, with the torch module's weights."""
    return port_weights(module, RAW_LAYERS[cell](module.hidden_size, return_sequences=True))


def _per_stream(cell: str, module: object, shape: Shape) -> keras.Model:
    inputs = keras.Input(batch_shape=(shape.B, shape.S, None, shape.F))
    layer = _raw_layer(cell, module)
    outputs = keras.ops.stack([layer(inputs[:, s]) for s in range(shape.S)], axis=1)
    return keras.Model(inputs, outputs)


def _fused(cell: str, module: object, shape: Shape) -> keras.Model:
    inputs = keras.Input(batch_shape=(shape.B * shape.S, None, shape.F))
    return keras.Model(inputs, _raw_layer(cell, module)(inputs))


MODELS: dict[str, Callable[[str, object, Shape], keras.Model]] = {
    "multistate": lambda cell, module, shape: keras_twin(module, batch_size=shape.B),
    "per-stream": _per_stream,
    "fused": _fused,
}


def build_step(case: Case) -> tuple[Callable[[], object], dict[str, object]]:
    """The timed step of a ``keras-*`` case, and how it runs (for ``extra_info``).

    The step is ``predict_on_batch`` (inference) or ``train_on_batch`` (training) on one fixed input.
    """
    shape = case.shape
    module = torch_impls.make_module(case.cell, shape)
    model = MODELS[case.variant](case.cell, module, shape)
    steps = case.job.steps(shape)
    lead = (shape.B * shape.S,) if case.variant == "fused" else (shape.B, shape.S)
    x = np.random.default_rng(torch_impls.SEED).standard_normal(lead + (steps, shape.F)).astype("float32")
    if case.job.train:
        model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
        y = np.zeros(lead + (steps, shape.H), dtype="float32")
        step, path = (lambda: model.train_on_batch(x, y)), "train_on_batch"
    else:
        step, path = (lambda: model.predict_on_batch(x)), "predict_on_batch"
    return step, {"path": path, "jit_compile": model.jit_compile, "kernel": _kernel(model, case.job.train)}


def _kernel(model: keras.Model, training: bool) -> str:
    """The recurrent kernel the model runs: the multi-state layer's fast path, or plain Keras."""
    layers = multistate_layers(model)
    return fast_paths.path_name(layers[0], training) if layers else "keras"
