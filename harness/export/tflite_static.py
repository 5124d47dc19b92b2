"""The static form of the ``.tflite`` chunk: every shape fixed and the time steps unrolled, for XNNPACK.

``export(model, "m.tflite", frames=K)`` writes it (batch: ``batch_size``, else the source's). The graph holds ``K``
steps with no loop and no dynamic dimension, in TFLite builtin ops that LiteRT's XNNPACK delegate takes
(``FULLY_CONNECTED``, ``ADD``, ``MUL``, ``SUB``, ``LOGISTIC``, ``TANH``, ``SPLIT``, ``RESHAPE``,
``CONCATENATION``): XNNPACK then runs the whole graph (``harness.export.xnnpack`` checks it). Its inputs and
outputs are those of the dynamic form (``harness.export.to_tflite``), with fixed sizes, so one runner drives both.
The step maths is the dynamic form's (``harness.export.tflite_steps``); only the loop over time differs.

Example:
    >>> fn = static_chunk_function(layer, frames=1, batch=1, resets=False)     # doctest: +SKIP
    >>> fn.input_signature[0].shape                                              # doctest: +SKIP
    TensorShape([1, 33, 1, 16])
"""

from __future__ import annotations

from typing import Any

from harness.export import tflite_steps as steps


def static_chunk_function(layer: Any, frames: int, batch: int, resets: bool) -> Any:
    """The layer's chunk for ``frames`` steps of ``batch`` rows as a ``tf.function`` with fixed shapes,
    ``(x, h[, c][, reset]) -> {"y", "h_out"[, "c_out"]}``, the steps unrolled (weights frozen)."""
    import tensorflow as tf

    streams, units, features = layer.num_streams, layer.units, layer.input_size
    cells = steps.cell_functions(layer)
    names = layer.state_names
    rows = batch * streams

    def chunk(x: Any, *inputs: Any) -> dict[str, Any]:
        carried, reset = (inputs[:-1], inputs[-1]) if resets else (inputs, None)
        xs = [tf.reshape(v, (rows, features)) for v in _per_step(tf.reshape(x, (rows, frames, features)), frames)]
        # The states stay (L, B, S, H) as fed, so that a step's reset (B, S, 1) selects on them directly.
        conds = [None if reset is None or frames == 1 else reset[:, :, t : t + 1] for t in range(frames)]
        ys = []
        for x_t, cond in zip(xs, conds):
            h, carried = steps.advance(cells, x_t, carried, reset if frames == 1 else cond)
            ys.append(h)
        y = ys[0] if frames == 1 else tf.concat([tf.reshape(h, (rows, 1, units)) for h in ys], 1)
        out = {"y": tf.reshape(y, (batch, streams, frames, units))}
        out.update({f"{n}_out": s for n, s in zip(names, carried)})
        return out

    return tf.function(chunk, input_signature=steps.signature(layer, batch, frames, resets), autograph=False)


def _per_step(values: Any, frames: int) -> list[Any]:
    """``(rows, frames, ...)`` as ``frames`` slices ``(rows, 1, ...)`` (one ``SPLIT``; none for one frame)."""
    import tensorflow as tf

    return tf.split(values, frames, axis=1) if frames > 1 else [values]
