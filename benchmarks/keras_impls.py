"""The Keras implementations on the active backend, each a compiled model run through the fit/predict API.

This module imports Keras; the suite loads it only when a Keras case runs, so torch-only runs need
neither Keras nor TensorFlow.

- ``multistate``: ``harness.porting.layers.keras_twin`` of the torch module, a functional model with
  ``Input(batch_shape=(B, S, None, F))`` around the multi-state layer; it carries each stream's state
  and may take a backend fast path (``models_keras.fast_paths``), recorded as ``kernel``. In an episode
  job the model also takes the job's ``resets`` ``(B, S, None)`` and/or ``lengths`` ``(B, S)`` as inputs.
- ``multistate-plain``: the same model without resets or lengths, the baseline of an episode job.
- ``per-stream``: what a Keras user writes: one plain shared ``LSTM``/``GRU``/``SimpleRNN`` called once
  per stream on ``S`` slices of the input in one functional model (stateless: it cannot carry
  per-stream state, it only shows the cost of ``S`` small calls).
- ``fused``: the plain layer in a functional model on the already-folded ``(B*S, t, F)`` (stateless),
  the plain-Keras reference the multi-state layer is held against.

Inference steps (forward, streaming) call ``predict_on_batch``; training steps call ``train_on_batch``
after ``compile(optimizer=SGD, loss="mse")`` with Keras's default ``jit_compile``. On a GPU the cases run
device-resident: the inputs are put on the device once, outside the timed step, and inference runs
Keras's own predict function without ``predict_on_batch``'s copy of the output to the host
(``resident_predict``; JAX and torch backends); a training step reads back only its scalar loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import keras
import numpy as np

from benchmarks import cases, torch_impls
from benchmarks.cases import Case
from harness.porting import keras_class, keras_twin, port_weights
from models_keras import fast_paths, multistate_layers
from multistate_core.cells import CELLS

Inputs = np.ndarray | list[np.ndarray]


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


def takes_episodes(cell: str) -> bool:
    """Whether the installed multi-state layer's ``call`` accepts ``resets`` and ``lengths``."""
    parameters = inspect.signature(keras_class(cell).call).parameters
    return "resets" in parameters and "lengths" in parameters


def skip_reason(case: Case) -> str | None:
    """Why ``case`` cannot run here: an episode job on a Keras layer that takes no resets, else None."""
    if case.job.episodic and not takes_episodes(case.cell):
        name = f"models_keras.{CELLS[case.cell].keras_multistate}.call"
        return f"{name} does not accept resets=/lengths= (the installed layer predates per-step resets)"
    return None


def _raw_layer(cell: str, module: object) -> keras.layers.Layer:
    """A plain Keras layer of ``cell`` returning sequences, with the torch module's weights."""
    layer_class = getattr(keras.layers, CELLS[cell].keras_class)
    return port_weights(module, layer_class(module.hidden_size, return_sequences=True))


def _multistate(case: Case, module: object) -> tuple[keras.Model, Inputs]:
    shape = case.shape
    x = _input(case, (shape.B, shape.S))
    if case.impl != cases.KERAS_MULTISTATE or not case.job.episodic:
        return keras_twin(module, batch_size=shape.B), x
    resets, lengths = case.job.episodes(shape)
    layer = keras_twin(module)
    x_in = keras.Input(batch_shape=(shape.B, shape.S, None, shape.F))
    inputs, arrays, kwargs = [x_in], [x], {}
    if resets is not None:
        kwargs["resets"] = keras.Input(batch_shape=(shape.B, shape.S, None), dtype="bool")
        inputs.append(kwargs["resets"])
        arrays.append(resets)
    if lengths is not None:
        kwargs["lengths"] = keras.Input(batch_shape=(shape.B, shape.S), dtype="int32")
        inputs.append(kwargs["lengths"])
        arrays.append(lengths.astype("int32"))
    return keras.Model(inputs, layer(x_in, **kwargs)), arrays


def _per_stream(case: Case, module: object) -> tuple[keras.Model, Inputs]:
    shape = case.shape
    inputs = keras.Input(batch_shape=(shape.B, shape.S, None, shape.F))
    layer = _raw_layer(case.cell, module)
    outputs = keras.ops.stack([layer(inputs[:, s]) for s in range(shape.S)], axis=1)
    return keras.Model(inputs, outputs), _input(case, (shape.B, shape.S))


def _fused(case: Case, module: object) -> tuple[keras.Model, Inputs]:
    shape = case.shape
    inputs = keras.Input(batch_shape=(shape.B * shape.S, None, shape.F))
    return keras.Model(inputs, _raw_layer(case.cell, module)(inputs)), _input(case, (shape.B * shape.S,))


def _input(case: Case, lead: tuple[int, ...]) -> np.ndarray:
    """The fixed seeded input of ``case``: ``lead + (steps, F)`` float32."""
    rng = np.random.default_rng(torch_impls.SEED)
    return rng.standard_normal(lead + (case.job.steps(case.shape), case.shape.F)).astype("float32")


MODELS: dict[cases.Impl, Callable[[Case, object], tuple[keras.Model, Inputs]]] = {
    cases.KERAS_MULTISTATE: _multistate,
    cases.KERAS_MULTISTATE_PLAIN: _multistate,
    cases.KERAS_PER_STREAM: _per_stream,
    cases.KERAS_FUSED: _fused,
}


RESIDENT_BACKENDS = ("jax", "torch")  # where resident_predict knows Keras's predict function


def resident_predict(model: keras.Model, x: Inputs) -> Callable[[], object]:
    """A step running ``model`` on ``x`` through Keras's predict function, the output left on the device.

    It is ``predict_on_batch`` without the final copy of the output to the host, then a wait for the
    device: the carried state moves on as there. ``x`` should already be on the device (``on_device``).
    JAX and torch backends only.
    """
    name = backend()
    if name not in RESIDENT_BACKENDS:
        raise ValueError(f"resident_predict runs on the {' and '.join(RESIDENT_BACKENDS)} backends, not {name}")
    model.make_predict_function()
    if name == "torch":
        import torch

        def torch_step() -> object:
            out = model.predict_function([(x,)])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return out

        return torch_step
    import jax

    def jax_step() -> object:
        state = model._get_jax_state(
            trainable_variables=True, non_trainable_variables=True, purge_model_variables=False
        )
        out, (trainable, non_trainable) = model.predict_function(state, iter([(x,)]))
        model._jax_state = {"trainable_variables": trainable, "non_trainable_variables": non_trainable}
        model._jax_state_synced = False
        model.jax_state_sync()
        return jax.block_until_ready(out)

    return jax_step


def on_device(x: Inputs) -> Inputs:
    """``x`` (an array or a list of them) as backend tensors on the backend's default device."""
    return [keras.ops.convert_to_tensor(a) for a in x] if isinstance(x, list) else keras.ops.convert_to_tensor(x)


def build_step(case: Case) -> tuple[Callable[[], object], dict[str, object]]:
    """The timed step of a Keras case, and how it runs (for ``extra_info``).

    The step is ``predict_on_batch`` (inference) or ``train_on_batch`` (training) on one fixed input; on
    a GPU (JAX and torch backends) the inputs live on the device and inference is ``resident_predict``.
    """
    shape = case.shape
    module = torch_impls.make_module(case.cell, shape)
    model, x = MODELS[case.impl](case, module)
    resident = device() == "gpu" and backend() in RESIDENT_BACKENDS
    if resident:
        x = on_device(x)
    if case.job.train:
        model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
        lead = (shape.B * shape.S,) if case.impl == cases.KERAS_FUSED else (shape.B, shape.S)
        y = np.zeros(lead + (case.job.steps(shape), shape.H), dtype="float32")
        y = on_device(y) if resident else y
        step, path = (lambda: model.train_on_batch(x, y)), "train_on_batch"
    elif resident:
        step, path = resident_predict(model, x), "predict_function (device-resident)"
    else:
        step, path = (lambda: model.predict_on_batch(x)), "predict_on_batch"
    return step, {"path": path, "jit_compile": model.jit_compile, "kernel": _kernel(model, case.job.train)}


def _kernel(model: keras.Model, training: bool) -> str:
    """The recurrent kernel the model runs: the multi-state layer's fast path, or plain Keras."""
    layers = multistate_layers(model)
    return fast_paths.path_name(layers[0], training) if layers else "keras"
