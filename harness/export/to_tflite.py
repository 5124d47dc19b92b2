"""Export a Keras multi-state layer to TFLite (LiteRT) as one streaming chunk, then prove the file.

``harness.export.export(model, "m.tflite")`` lands here (as does ``export_tflite``). The ``.tflite`` file holds one
call of the layer on a chunk, with the carried states explicit, under the signature ``serving_default``; its
tensors are named and shaped as in the ONNX file (the table in ``harness.export.to_onnx``: inputs ``x``, ``h``
[, ``c``], outputs ``y``, ``h_out`` [, ``c_out``]).

``B`` (batch) and ``t`` (time) are dynamic (``-1`` in the shape signature); ``S``, ``F``, ``L``, ``H``
are fixed. The graph is built from the layer's weights (frozen as constants) and its cells'
activations: streams folded into the batch (row ``b*S + s``), the input projection of every step in
one matmul, then a ``WHILE`` loop over time that grows the output by concatenation (the converter
lowers Keras's own loop only with a static batch: its ``TensorListReserve`` needs a static element
shape). Only TFLite builtin ops: no Flex/Select TF ops, so the plain LiteRT interpreter runs it.

Sources: a ``models_keras`` layer (built, with a batch size) or a Keras model that is just that layer,
or a ``.keras``/``.weights.h5`` file, on the TensorFlow backend, in float32. torch modules and torch
weight files are refused (export them to ``.onnx``, or port them with ``harness.porting.layers.keras_twin``
and export the Keras twin).

Example:
    >>> from models_keras import MultiStateGRU
    >>> layer = MultiStateGRU(16, num_streams=33, batch_size=1)
    >>> _ = layer(np.zeros((1, 33, 1, 16), "float32"))
    >>> result = export_tflite(layer, "gru.tflite")                 # doctest: +SKIP
    >>> result.report.max_abs_error < 1e-5                           # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from harness.export.job import ExportError, Job, Options
from harness.export.sources import file_kind

SIGNATURE = "serving_default"


def _refuse(dst: str | os.PathLike, why: str) -> ExportError:
    return ExportError(f"cannot write {dst}: .tflite export is not supported {why}")


# ---- the chunk function -------------------------------------------------------------------------


def _weights(cell: Any) -> dict[str, np.ndarray]:
    """``cell``'s weights as numpy arrays (``kernel``, ``recurrent_kernel``, ``bias`` if any), frozen into the file."""
    out = {"kernel": cell.kernel, "recurrent_kernel": cell.recurrent_kernel}
    if cell.use_bias:
        out["bias"] = cell.bias
    return {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in out.items()}


def _step_fn(cell_kind: str, cell: Any, weights: dict[str, np.ndarray]) -> tuple[Callable, Callable]:
    """``(project, step)`` for one Keras cell: ``project(x)`` is the input part of every step at once
    (``(N, F)`` -> gates), ``step(xw, states) -> (h, new_states)`` the recurrence, as the Keras cell computes it."""
    import tensorflow as tf

    act, kernel, recurrent = cell.activation, tf.constant(weights["kernel"]), tf.constant(weights["recurrent_kernel"])
    bias = weights.get("bias")
    if cell_kind == "gru":  # reset_after=True: bias (2, 3H), the recurrent bias inside the reset gate's product
        input_bias = None if bias is None else tf.constant(bias[0])
        recurrent_bias = None if bias is None else tf.constant(bias[1])
    else:
        input_bias, recurrent_bias = (None if bias is None else tf.constant(bias)), None

    def project(x: Any) -> Any:
        xw = tf.matmul(x, kernel)
        return xw if input_bias is None else xw + input_bias

    def step(xw: Any, states: list) -> tuple[Any, list]:
        hw = tf.matmul(states[0], recurrent)
        if cell_kind == "lstm":
            i, f, g, o = tf.split(xw + hw, 4, axis=-1)
            rec = cell.recurrent_activation
            c = rec(f) * states[1] + rec(i) * act(g)
            h = rec(o) * act(c)
            return h, [h, c]
        if cell_kind == "gru":
            rec = cell.recurrent_activation
            hw = hw if recurrent_bias is None else hw + recurrent_bias
            x_z, x_r, x_h = tf.split(xw, 3, axis=-1)
            h_z, h_r, h_h = tf.split(hw, 3, axis=-1)
            z, r = rec(x_z + h_z), rec(x_r + h_r)
            h = z * states[0] + (1 - z) * act(x_h + r * h_h)
            return h, [h]
        h = act(xw + hw)
        return h, [h]

    return project, step


def chunk_function(layer: Any) -> Any:
    """The layer's chunk as a stateless ``tf.function`` ``(x, h[, c]) -> {"y", "h_out"[, "c_out"]}`` (weights frozen).

    Example:
        >>> fn = chunk_function(layer)                                                   # doctest: +SKIP
        >>> sorted(fn(x, h).keys())                                                      # doctest: +SKIP
        ['h_out', 'y']
    """
    import tensorflow as tf

    streams, units, layers, features = layer.num_streams, layer.units, layer.num_layers, layer.input_size
    cells = [_step_fn(layer.cell, rnn.cell, _weights(rnn.cell)) for rnn in layer.rnn_layers]
    names = layer.state_names

    def chunk(x: Any, *states: Any) -> dict[str, Any]:
        batch, steps = tf.shape(x)[0], tf.shape(x)[2]
        rows = batch * streams
        # Time-major, and the first layer's input projection for all steps in one matmul.
        xs = tf.transpose(tf.reshape(x, (rows, steps, features)), (1, 0, 2))
        xw = tf.reshape(cells[0][0](tf.reshape(xs, (-1, features))), (steps, rows, -1))
        carried = tuple(tf.reshape(s, (layers, rows, units)) for s in states)

        def body(t: Any, y: Any, *carry: Any) -> tuple:
            h, new = xw[t], []
            for k, (project, step) in enumerate(cells):
                h, per_layer = step(h if k == 0 else project(h), [s[k] for s in carry])
                new.append(per_layer)
            return (t + 1, tf.concat([y, h[None]], 0), *(tf.stack(per_state) for per_state in zip(*new)))

        invariants = (tf.TensorShape([]), tf.TensorShape([None, None, units]))
        invariants += tuple(tf.TensorShape([layers, None, units]) for _ in states)
        start = (tf.constant(0), tf.zeros((0, rows, units), x.dtype), *carried)
        _, y, *finals = tf.while_loop(lambda t, *_: t < steps, body, start, shape_invariants=invariants)
        out = {"y": tf.reshape(tf.transpose(y, (1, 0, 2)), (batch, streams, steps, units))}
        out.update({f"{n}_out": tf.reshape(f, (layers, batch, streams, units)) for n, f in zip(names, finals)})
        return out

    signature = [tf.TensorSpec((None, streams, None, features), tf.float32, name="x")]
    signature += [tf.TensorSpec((layers, None, streams, units), tf.float32, name=n) for n in names]
    return tf.function(chunk, input_signature=signature, autograph=False)


def convert(layer: Any) -> bytes:
    """The ``.tflite`` flatbuffer of ``layer``'s chunk (TFLite builtins only; not yet verified).

    Example:
        >>> open("gru.tflite", "wb").write(convert(layer))                               # doctest: +SKIP
    """
    import tensorflow as tf

    holder = tf.Module()  # the trackable owner the converter wants (its signature path; without one: no signature)
    holder.chunk = chunk_function(layer)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([holder.chunk.get_concrete_function()], holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with _quiet_converter():
        return converter.convert()


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """The converter logs through absl at WARNING on every call; keep its chatter out of the caller's output."""
    import absl.logging

    level = absl.logging.get_verbosity()
    absl.logging.set_verbosity(absl.logging.ERROR)
    try:
        yield
    finally:
        absl.logging.set_verbosity(level)


def _converter_reason(error: Exception) -> str:
    """The line of a converter error that says what failed (its full text is pages of MLIR locations)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if line.startswith(("Custom ops:", "Flex ops:"))]
    return f"{type(error).__name__}: {(named or lines or [''])[0][:300]}"


# ---- sources ------------------------------------------------------------------------------------


def _keras_source(model_or_path: Any, dst: str | os.PathLike, nonlinearity: str | None) -> Any:
    """The Keras model the file is verified against (the caller's, or the one read from a Keras file)."""
    from harness.porting import files
    from harness.porting.layers import is_keras

    if isinstance(model_or_path, (str, os.PathLike)):
        if file_kind(model_or_path) == "torch":
            raise _refuse(dst, "from a torch weight file: export it to .onnx, or port it to Keras first")
        return files.read_keras_model(model_or_path, nonlinearity)
    if is_keras(model_or_path):
        return model_or_path
    raise _refuse(
        dst,
        f"from {type(model_or_path).__name__}: the TFLite converter takes TensorFlow graphs, so only Keras "
        "multi-state models export to it (export .onnx, or export harness.porting.keras_twin(model, batch_size=B))",
    )


def _check_layer(layer: Any, dst: str | os.PathLike) -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise _refuse(
            dst, f"on the {keras.backend.backend()} Keras backend: the TFLite converter needs KERAS_BACKEND=tensorflow"
        )
    if layer.variable_dtype != "float32" or layer.compute_dtype != "float32":
        raise _refuse(
            dst,
            f"for a {layer.variable_dtype}/{layer.compute_dtype} (variable/compute) layer: the export is float32 "
            "(TFLite's builtin matmul kernels take no float64)",
        )
    if not layer.return_sequences:
        raise _refuse(dst, "for return_sequences=False: the chunk model outputs every step")
    if any(rnn.go_backwards for rnn in layer.rnn_layers):
        raise _refuse(dst, "for go_backwards=True: a streaming chunk cannot run a stream backwards")
    if not layer.state_variables:
        raise ExportError(
            f"cannot export {layer.name}: it has no carried state yet to verify against; give it batch_size= and "
            "call it once (or build it with keras.Input(batch_shape=...))"
        )


# ---- the job ------------------------------------------------------------------------------------


def prepare(model_or_path: Any, dst: str | os.PathLike, options: Options) -> Job:
    """The TFLite job for a Keras multi-state model (layer, model that is just that layer, or Keras file): refused
    (``ExportError``) for torch sources, a non-TensorFlow backend, non-float32 layers, ``return_sequences=False``,
    ``go_backwards``; verified at the layer's carried batch on random chunks."""
    from harness.porting.layers import only_multistate_layer

    try:
        model = _keras_source(model_or_path, dst, options.nonlinearity)
        layer = only_multistate_layer(model)
    except (ValueError, TypeError, OSError) as e:
        raise e if isinstance(e, ExportError) else ExportError(f"cannot export {model_or_path}: {e}") from e
    _check_layer(layer, dst)
    if options.num_streams is not None and options.num_streams != layer.num_streams:
        raise ExportError(f"num_streams={options.num_streams} but the Keras layer has {layer.num_streams} streams")
    if options.batch_size is not None and options.batch_size != layer.batch_size:
        raise ExportError(f"batch_size={options.batch_size} but the Keras layer carries a batch of {layer.batch_size}")
    shape = (layer.batch_size, layer.num_streams, options.verify_steps, layer.input_size)
    x = np.random.default_rng(options.seed).standard_normal(shape).astype("float32")

    def write(path: str) -> None:
        try:
            data = convert(layer)
        except Exception as e:
            raise ExportError(
                f"cannot write {dst}: the TFLite converter cannot express {layer.name} ({layer.cell}) with "
                f"TFLite builtin ops: {_converter_reason(e)}"
            ) from e
        with open(path, "wb") as f:
            f.write(data)

    return Job(write, model, x, "random", "tflite", layer.cell, tuple(layer.state_names), layer.num_streams)
