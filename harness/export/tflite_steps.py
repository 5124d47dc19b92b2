"""The maths of one time step of a Keras multi-state layer as TensorFlow ops, that both forms of the ``.tflite``
chunk are built from: the dynamic ``WHILE`` loop (``harness.export.to_tflite``) and the static unrolled graph
(``harness.export.tflite_static``). The layer's weights are frozen into the graph as constants; the gates are
computed as the Keras cells compute them; resets clear the states with a select (``cleared``).

Example:
    >>> cells = cell_functions(layer)                                   # doctest: +SKIP
    >>> h, states = advance(cells, cells[0][0](x), states, reset)       # one step of the stack  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _weights(cell: Any) -> dict[str, np.ndarray]:
    """``cell``'s weights as numpy arrays (``kernel``, ``recurrent_kernel``, ``bias`` if any), frozen into the file."""
    out = {"kernel": cell.kernel, "recurrent_kernel": cell.recurrent_kernel}
    if cell.use_bias:
        out["bias"] = cell.bias
    return {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in out.items()}


def step_fn(cell_kind: str, cell: Any, weights: dict[str, np.ndarray]) -> tuple[Callable, Callable]:
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


def cell_functions(layer: Any) -> list[tuple[Callable, Callable]]:
    """``(project, step)`` of every layer of the stack, bottom first (``step_fn``, weights frozen)."""
    return [step_fn(layer.cell, rnn.cell, _weights(rnn.cell)) for rnn in layer.rnn_layers]


def advance(cells: list[tuple[Callable, Callable]], xw: Any, states: tuple[Any, ...], reset: Any) -> tuple[Any, tuple]:
    """One time step of the whole stack, the maths both graph forms share.

    ``xw``: the first layer's projected input ``(N, gates)``; ``states``: each carried state ``(L, *rows, H)``
    with ``N`` rows in all (the dynamic form carries ``(L, N, H)``, the static one the file's ``(L, B, S, H)``);
    ``reset``: bools that broadcast to ``(*rows, 1)``, or None. Where ``reset`` is True the row's states are
    zero before the step (``cleared``). Returns the top layer's output ``(N, H)`` and the new states, shaped
    as they came.
    """
    if reset is not None:
        states = tuple(cleared(s, reset) for s in states)
    layers = len(cells)
    per_layer = [_layers(s, layers) for s in states]
    h, new = xw, []
    for k, (project, step) in enumerate(cells):
        h, updated = step(h if k == 0 else project(h), [s[k] for s in per_layer])
        new.append(updated)
    return h, tuple(_stacked(list(per_state), like) for per_state, like in zip(zip(*new), states))


def _layers(state: Any, layers: int) -> list[Any]:
    """A carried state ``(L, *rows, H)`` as ``L`` tensors ``(N, H)`` (for one layer a reshape: no slicing op)."""
    import tensorflow as tf

    units = state.shape[-1]
    return [tf.reshape(part, (-1, units)) for part in (tf.split(state, layers, axis=0) if layers > 1 else [state])]


def _stacked(states: list[Any], like: Any) -> Any:
    """``L`` tensors ``(N, H)`` as one shaped as ``like`` ``(L, *rows, H)`` (at most one size of it unknown)."""
    import tensorflow as tf

    parts = [tf.expand_dims(s, 0) for s in states]
    stacked = parts[0] if len(parts) == 1 else tf.concat(parts, 0)
    return tf.reshape(stacked, [-1 if d is None else d for d in like.shape])


def cleared(state: Any, reset: Any) -> Any:
    """``state`` ``(L, *rows, H)`` with the rows where ``reset`` ``(*rows, 1)`` is True set to zero: a select,
    not a product, so that a NaN or infinite state is cleared too (as the layers' ``resets=`` do)."""
    import tensorflow as tf

    return tf.where(reset, tf.zeros_like(state), state)


def signature(layer: Any, batch: int | None, frames: int | None, resets: bool) -> list[Any]:
    """The chunk's inputs in the file's order: ``x`` ``(B, S, t, F)``, the states ``(L, B, S, H)``, then ``reset``
    ``(B, S, t)`` bool if asked; ``batch``/``frames`` None: a dynamic axis."""
    import tensorflow as tf

    streams, state = layer.num_streams, (layer.num_layers, batch, layer.num_streams, layer.units)
    specs = [tf.TensorSpec((batch, streams, frames, layer.input_size), tf.float32, name="x")]
    specs += [tf.TensorSpec(state, tf.float32, name=n) for n in layer.state_names]
    if resets:
        specs.append(tf.TensorSpec((batch, streams, frames), tf.bool, name="reset"))
    return specs
