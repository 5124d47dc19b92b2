"""Export a multi-state model to TFLite (LiteRT) as one streaming chunk, then prove the file.

``harness.export.export(model, "m.tflite")`` lands here (as does ``export_tflite``). The ``.tflite`` file holds one
call of the layer on a chunk, with the carried states explicit, under the signature ``serving_default``; its
tensors are named and shaped as in the ONNX file (the table in ``harness.export.to_onnx``: inputs ``x``, ``h``
[, ``c``][, ``reset``], outputs ``y``, ``h_out`` [, ``c_out``]), and the main graph's inputs and outputs come in
that order.

Two forms, built from the same step maths (``harness.export.tflite_steps``: the layer's weights frozen as
constants, streams folded into the batch, row ``b*S + s``):

- dynamic (this module's ``chunk_function``): ``B`` (batch) and ``t`` (time) dynamic (``-1`` in the shape
  signature), a ``WHILE`` loop over time that grows the
  output by concatenation (the converter lowers Keras's own loop only with a static batch: its
  ``TensorListReserve`` needs a static element shape);
- static (``frames=K``, ``harness.export.tflite_static``): every shape fixed, the ``K`` steps unrolled, no loop;
  checked to run wholly on XNNPACK (``harness.export.xnnpack``) but for the reset's selects on bools.

Only TFLite builtin ops: no Flex/Select TF ops, so the plain LiteRT interpreter runs it.

Sources, on the TensorFlow backend, in float32: a ``models_keras`` layer (built, with a batch size) or a Keras
model that is just that layer, or a ``.keras``/``.weights.h5`` file; a torch module or torch weight file through
its Keras twin (``harness.porting.keras_twin``), the file then proven against the torch module.

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
from collections.abc import Iterator
from typing import Any

import numpy as np

from harness.export import tflite_static, xnnpack
from harness.export import tflite_steps as steps
from harness.export.job import ExportError, Job, Options
from harness.export.sources import file_kind

SIGNATURE = "serving_default"


def _refuse(dst: str | os.PathLike, why: str) -> ExportError:
    return ExportError(f"cannot write {dst}: .tflite export is not supported {why}")


# ---- the chunk function -------------------------------------------------------------------------


def chunk_function(layer: Any, resets: bool = False) -> Any:
    """The layer's chunk as a stateless ``tf.function`` ``(x, h[, c][, reset]) -> {"y", "h_out"[, "c_out"]}``
    with a dynamic batch and time (a ``WHILE`` loop over time; weights frozen); ``resets``: take the ``reset``
    input ``(B, S, t)`` bool, last.

    Example:
        >>> fn = chunk_function(layer)                                                   # doctest: +SKIP
        >>> sorted(fn(x, h).keys())                                                      # doctest: +SKIP
        ['h_out', 'y']
    """
    import tensorflow as tf

    streams, units, layers, features = layer.num_streams, layer.units, layer.num_layers, layer.input_size
    cells = steps.cell_functions(layer)
    names = layer.state_names

    def chunk(x: Any, *inputs: Any) -> dict[str, Any]:
        states, reset = (inputs[:-1], inputs[-1]) if resets else (inputs, None)
        batch, length = tf.shape(x)[0], tf.shape(x)[2]
        rows = batch * streams
        xs = tf.transpose(tf.reshape(x, (rows, length, features)), (1, 0, 2))  # time-major
        carried = tuple(tf.reshape(s, (layers, rows, units)) for s in states)
        if reset is not None:  # time-major (t, rows, 1), a step's rows to select on
            reset = tf.reshape(tf.transpose(tf.reshape(reset, (rows, length))), (length, rows, 1))

        def body(t: Any, y: Any, *carry: Any) -> tuple:
            h, new = steps.advance(cells, xs[t], carry, None if reset is None else reset[t])
            return (t + 1, tf.concat([y, h[None]], 0), *new)

        invariants = (tf.TensorShape([]), tf.TensorShape([None, None, units]))
        invariants += tuple(tf.TensorShape([layers, None, units]) for _ in states)
        start = (tf.constant(0), tf.zeros((0, rows, units), x.dtype), *carried)
        _, y, *finals = tf.while_loop(lambda t, *_: t < length, body, start, shape_invariants=invariants)
        out = {"y": tf.reshape(tf.transpose(y, (1, 0, 2)), (batch, streams, length, units))}
        out.update({f"{n}_out": tf.reshape(f, (layers, batch, streams, units)) for n, f in zip(names, finals)})
        return out

    return tf.function(chunk, input_signature=steps.signature(layer, None, None, resets), autograph=False)


def convert(layer: Any, frames: int | None = None, batch: int | None = None, resets: bool = False) -> bytes:
    """The ``.tflite`` flatbuffer of ``layer``'s chunk (TFLite builtins only; not yet verified): the dynamic form,
    or with ``frames`` the static one for ``batch`` rows (``tflite_static``); ``resets``: with the reset input.

    Example:
        >>> open("gru.tflite", "wb").write(convert(layer, frames=1, batch=1))             # doctest: +SKIP
    """
    import tensorflow as tf

    holder = tf.Module()  # the trackable owner the converter wants (its signature path; without one: no signature)
    if frames is None:
        holder.chunk = chunk_function(layer, resets)
    else:
        holder.chunk = tflite_static.static_chunk_function(layer, frames, batch or layer.batch_size, resets)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([holder.chunk.get_concrete_function()], holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with _quiet_converter():
        data = converter.convert()
    inputs = ["x", *layer.state_names, *(["reset"] if resets else [])]
    return _in_order(data, inputs, ["y", *(f"{n}_out" for n in layer.state_names)])


def _in_order(data: bytes, inputs: list[str], outputs: list[str]) -> bytes:
    """``data`` with its main graph's inputs and outputs in the order given by signature name, and the nodes
    that only read inputs first.

    The converter orders the inputs and outputs its own way (an LSTM's came out ``c, x, h``, the outputs sorted
    by name); a deployment that feeds the interpreter by position expects the ONNX file's order,
    ``x, h[, c][, reset]`` and ``y, h_out[, c_out]``. The signature maps names to tensors, so only the two
    index lists move. The nodes on bools that read nothing but the graph's inputs and constants (the one-frame
    reset's selects) go first: the converter may put nodes of ``x`` alone before them, which cuts the nodes
    XNNPACK takes into two partitions around them (XNNPACK takes no bools), each a delegate call.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    (signature,) = model.signatureDefs
    index = {_text(m.name): int(m.tensorIndex) for m in (*signature.inputs, *signature.outputs)}
    graph = model.subgraphs[signature.subgraphIndex]
    for kind, names in (("inputs", inputs), ("outputs", outputs)):
        ordered = [index[n] for n in names]
        if sorted(ordered) != sorted(int(i) for i in getattr(graph, kind)):
            raise ValueError(f"the converted graph's {kind} are not the signature's {names}")
        setattr(graph, kind, np.array(ordered, np.int32))
    produced = {int(t) for op in graph.operators for t in op.outputs}
    bools = {i for i, t in enumerate(graph.tensors) if t.type == schema.TensorType.BOOL}
    first = [op for op in graph.operators if bools.intersection(op.inputs) and not produced.intersection(op.inputs)]
    graph.operators = first + [op for op in graph.operators if op not in first]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name


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


def _source(model_or_path: Any, dst: str | os.PathLike, options: Options) -> tuple[Any, Any]:
    """``(reference, keras_model)``: what the file is verified against, and the Keras model it is written from.

    A Keras source is both (the caller's model, or the one read from a Keras file). A torch source (a torch
    module, or a torch weight file) is resolved as for ONNX (``to_onnx.resolve_source``: a fresh copy of its
    weights) and written from its Keras twin (``harness.porting.keras_twin``, at the verification batch); the
    file is verified against the torch module itself.
    """
    from harness.export import to_onnx
    from harness.porting import files
    from harness.porting.layers import is_keras, keras_twin

    is_path = isinstance(model_or_path, (str, os.PathLike))
    if is_path and file_kind(model_or_path) == "keras":
        return (model := files.read_keras_model(model_or_path, options.nonlinearity)), model
    if is_keras(model_or_path):
        return model_or_path, model_or_path
    _check_backend(dst)  # before the twin is built on another backend
    source = to_onnx.resolve_source(model_or_path, options)
    return source.module, keras_twin(source.module, batch_size=source.batch_size)


def _check_backend(dst: str | os.PathLike) -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise _refuse(
            dst, f"on the {keras.backend.backend()} Keras backend: the TFLite converter needs KERAS_BACKEND=tensorflow"
        )


def _check_layer(layer: Any, dst: str | os.PathLike) -> None:
    _check_backend(dst)
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
    """The TFLite job for a multi-state model: a Keras one (layer, model that is just that layer, Keras file)
    written as it is, a torch one (module, torch file) through its Keras twin; refused (``ExportError``) on a
    non-TensorFlow backend, for non-float32 models, ``return_sequences=False``, ``go_backwards``.

    ``options.frames``: the static form (``tflite_static``, at the source's batch), verified in chunks of that
    many steps and checked to run wholly on XNNPACK; else the dynamic form, verified on random chunks.
    ``options.resets``: with the ``reset`` input, verified with random resets.
    """
    from harness.porting.layers import only_multistate_layer

    if options.frames is not None and options.frames < 1:
        raise ExportError(f"frames must be a positive number of steps per call, got {options.frames}")
    try:
        reference, model = _source(model_or_path, dst, options)
        layer = only_multistate_layer(model)
    except (ValueError, TypeError, OSError) as e:
        raise e if isinstance(e, ExportError) else ExportError(f"cannot export {model_or_path}: {e}") from e
    _check_layer(layer, dst)
    if options.num_streams is not None and options.num_streams != layer.num_streams:
        raise ExportError(f"num_streams={options.num_streams} but the Keras layer has {layer.num_streams} streams")
    if options.batch_size is not None and options.batch_size != layer.batch_size:
        raise ExportError(f"batch_size={options.batch_size} but the Keras layer carries a batch of {layer.batch_size}")
    frames, batch = options.frames, layer.batch_size
    plan: Any = "random" if frames is None else [frames] * -(-options.verify_steps // frames)
    steps = options.verify_steps if frames is None else sum(plan)
    shape = (batch, layer.num_streams, steps, layer.input_size)
    x = np.random.default_rng(options.seed).standard_normal(shape).astype("float32")

    def write(path: str) -> None:
        try:
            data = convert(layer, frames, batch, options.resets)
        except Exception as e:
            raise ExportError(
                f"cannot write {dst}: the TFLite converter cannot express {layer.name} ({layer.cell}) with "
                f"TFLite builtin ops: {_converter_reason(e)}"
            ) from e
        with open(path, "wb") as f:
            f.write(data)

    def check(runner: Any) -> None:
        """The static form must run wholly on XNNPACK (but the reset input's select on bools, which it cannot)."""
        if frames is not None:
            try:
                xnnpack.check_fully_delegated(runner.path)
            except ValueError as e:
                raise ExportError(f"cannot write {dst}: {e}") from None

    names = tuple(layer.state_names)
    return Job(write, reference, x, plan, "tflite", layer.cell, names, layer.num_streams, check)
