"""The maths of one time step of a Keras multi-state layer as TensorFlow ops, that both forms of the ``.tflite``
chunk are built from: the dynamic ``WHILE`` loop (``harness.export.to_tflite``) and the static unrolled graph
(``harness.export.tflite_static``). The layer's weights are frozen into the graph as constants; the gates are
computed as the Keras cells compute them, from one product of ``[x, h]`` per layer and step; resets clear the
states with a select (``cleared``).

Example:
    >>> cells = cell_functions(layer)                                   # doctest: +SKIP
    >>> h, states = advance(cells, x, states, reset)                    # one step of the stack  # doctest: +SKIP
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


def step_fn(cell_kind: str, cell: Any, weights: dict[str, np.ndarray]) -> Callable:
    """``step(x, states) -> (h, new_states)``: one step of a Keras cell, as the cell computes it, with the input
    and recurrent products in one matmul of ``[x, h]`` (``joined_weights``: one ``FULLY_CONNECTED`` and no ``ADD`` per
    step, which XNNPACK runs faster than two products of the small sizes of a frame)."""
    import tensorflow as tf

    act = cell.activation
    joined, joined_bias = joined_weights(cell_kind, weights)
    weight, bias = tf.constant(joined), None if joined_bias is None else tf.constant(joined_bias)

    def step(x: Any, states: list) -> tuple[Any, list]:
        gates = tf.matmul(tf.concat([x, states[0]], -1), weight)
        gates = gates if bias is None else gates + bias
        if cell_kind == "lstm":
            rec = cell.recurrent_activation
            i, f, g, o = tf.split(gates, 4, axis=-1)
            c = rec(f) * states[1] + rec(i) * act(g)
            h = rec(o) * act(c)
            return h, [h, c]
        if cell_kind == "gru":
            rec = cell.recurrent_activation
            z, r, x_n, h_n = tf.split(gates, 4, axis=-1)
            n, z = act(x_n + rec(r) * h_n), rec(z)
            h = n + z * (states[0] - n)  # the cell's z * h + (1 - z) * n, one node fewer
            return h, [h]
        h = act(gates)
        return h, [h]

    return step


def joined_weights(cell_kind: str, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """A Keras cell's ``kernel`` ``(F, G)`` and ``recurrent_kernel`` ``(H, G)`` as one weight for ``[x, h]``, and
    its bias. LSTM and simple RNN: the two stacked, ``(F + H, G)``. GRU (``reset_after``): the reset gate scales
    only the candidate's recurrent part, so that part stays apart: columns ``[z, r, x_n, h_n]`` of ``H`` each,
    ``(F + H, 4H)``, zeros where ``x_n`` would meet ``h`` and ``h_n`` would meet ``x``; the bias ``(2, 3H)`` as
    ``[b_z, b_r, b_xn, b_hn]`` (input and recurrent biases of ``z`` and ``r`` summed).

    Example:
        >>> w = {"kernel": np.ones((2, 3), "f4"), "recurrent_kernel": np.ones((1, 3), "f4")}
        >>> joined_weights("gru", w)[0]
        array([[1., 1., 1., 0.],
               [1., 1., 1., 0.],
               [1., 1., 0., 1.]], dtype=float32)
    """
    kernel, recurrent, bias = weights["kernel"], weights["recurrent_kernel"], weights.get("bias")
    if cell_kind != "gru":
        return np.concatenate([kernel, recurrent]), bias
    features, units = kernel.shape[0], recurrent.shape[0]
    joined = np.zeros((features + units, 4 * units), np.float32)
    joined[:features, : 3 * units] = kernel
    joined[features:, : 2 * units] = recurrent[:, : 2 * units]
    joined[features:, 3 * units :] = recurrent[:, 2 * units :]
    if bias is not None:
        bias = np.concatenate([bias[0, : 2 * units] + bias[1, : 2 * units], bias[0, 2 * units :], bias[1, 2 * units :]])
    return joined, bias


def cell_functions(layer: Any) -> list[Callable]:
    """The ``step`` of every layer of the stack, bottom first (``step_fn``, weights frozen)."""
    return [step_fn(layer.cell, rnn.cell, _weights(rnn.cell)) for rnn in layer.rnn_layers]


def advance(cells: list[Callable], x: Any, states: tuple[Any, ...], reset: Any) -> tuple[Any, tuple]:
    """One time step of the whole stack, the maths both graph forms share.

    ``x``: the step's input ``(N, F)``; ``states``: each carried state ``(L, *rows, H)``
    with ``N`` rows in all (the dynamic form carries ``(L, N, H)``, the static one the file's ``(L, B, S, H)``);
    ``reset``: bools that broadcast to ``(*rows, 1)``, or None. Where ``reset`` is True the row's states are
    zero before the step (``cleared``). Returns the top layer's output ``(N, H)`` and the new states, shaped
    as they came.
    """
    if reset is not None:
        states = tuple(cleared(s, reset) for s in states)
    layers = len(cells)
    per_layer = [_layers(s, layers) for s in states]
    h, new = x, []
    for k, step in enumerate(cells):
        h, updated = step(h, [s[k] for s in per_layer])
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
