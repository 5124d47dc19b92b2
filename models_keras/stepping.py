"""Per-step resets and per-stream lengths for the multi-state layers, kept apart from the layer.

Semantics (the same as ``models_torch``): where ``resets[n, t]`` is True, row n's state is
zeroed before step t; steps ``>= lengths[n]`` neither change row n's state nor produce
output (zeros there), so the final state is the state after the row's last valid step
(the initial state for length 0) and resets at steps ``>= lengths[n]`` are ignored.
No gradient flows across a reset: the reset state is a constant zero.

Two implementations:

- ``scan``: portable, every backend, eager and compiled: ONE ``keras.ops.scan`` over time
  for the whole stack, calling each inner Keras cell with ``where(reset_t, 0, state)``
  before the step and ``where(valid_t, new, state)`` after it.
- the torch backend's fused path extended the way ``models_torch.inner_rnn`` does it
  (``run_fused_stepped`` in ``backends/torch.py``).

The layer takes these only when resets inside the chunk or ragged lengths are given (path
``SCAN``, ``TF_XLA_SCAN`` or ``TORCH_SEGMENTS`` of ``fast_paths.path_for``); without them it keeps
its usual fast path.

Example:
    >>> layer = MultiStateGRU(5, num_streams=2)                      # doctest: +SKIP
    >>> x = np.zeros((1, 2, 6, 3), "float32")                        # doctest: +SKIP
    >>> y = layer(x, resets=np.eye(2, 6, dtype=bool)[None], lengths=np.array([[6, 4]]))  # doctest: +SKIP
    >>> float(np.abs(y[0, 1, 4:]).max())                             # doctest: +SKIP
    0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from models_keras import backends


def valid_steps(lengths: Any, steps: Any) -> Any:
    """``(N, T)`` bools: step t of row n is valid where ``t < lengths[n]``.

    Example:
        >>> ops.convert_to_numpy(valid_steps(ops.convert_to_tensor([2, 0]), 3)).tolist()
        [[True, True, False], [False, False, False]]
    """
    time = ops.arange(steps, dtype="int32")
    return time[None, :] < ops.cast(lengths, "int32")[:, None]


def mask_to_lengths(mask: Any) -> Any:
    """Lengths ``(...,)`` from a right-padded ``(..., T)`` mask: the count of leading True steps.

    Eager calls first check that the mask is right-padded (True then False along time) and
    raise ``ValueError`` otherwise; TensorFlow graphs get an assertion; a compiled JAX step
    cannot raise, so there a mask that is not right-padded is cut at its first False.

    Example:
        >>> ops.convert_to_numpy(mask_to_lengths(ops.convert_to_tensor([[True, True, False]]))).tolist()
        [2]
    """
    mask = ops.cast(mask, "int32")
    leading = ops.sum(ops.cumprod(mask, axis=-1), axis=-1)
    message = "mask must be right-padded (True for the first steps, then False) along time, to be read as lengths"

    def right_padded() -> Any:
        return ops.all(leading == ops.sum(mask, axis=-1))

    return backends.active.guard(leading, right_padded, message, backends.is_concrete(mask))


def scan(
    cells: Sequence[keras.layers.Layer],
    x: Any,
    initial: list,
    resets: Any,
    lengths: Any,
    training: bool | None,
) -> tuple[Any, list]:
    """Run the stack of ``cells`` over ``x`` ``(N, T, F)`` from ``initial`` (each ``(L, N, H)``), one step at a time.

    ``resets`` ``(N, T)`` bools or None, ``lengths`` ``(N,)`` ints or None. Returns the top layer's
    output ``(N, T, H)`` (zeros at steps past a row's length) and each final state ``(L, N, H)``.
    """
    steps = ops.shape(x)[1]
    rows = ops.shape(x)[0]
    resets = ops.zeros((rows, steps), dtype="bool") if resets is None else ops.cast(resets, "bool")
    valid = ops.ones((rows, steps), dtype="bool") if lengths is None else valid_steps(lengths, steps)
    carry = [[s[i] for s in initial] for i in range(len(cells))]  # carry[layer][state] (N, H)
    _config_dropout(cells, x[:, 0], carry, training)

    def step(carry: list, inputs: tuple) -> tuple[list, Any]:
        h, reset_t, valid_t = inputs
        reset_t, valid_t = reset_t[:, None], valid_t[:, None]
        new_carry = []
        for cell, states in zip(cells, carry):
            started = [ops.where(reset_t, ops.zeros_like(s), s) for s in states]
            h, new = cell(h, started, training=training)
            new = list(new) if isinstance(new, (list, tuple)) else [new]
            new_carry.append([ops.where(valid_t, n, s) for n, s in zip(new, states)])
        return new_carry, ops.where(valid_t, h, ops.zeros_like(h))

    time_major = (ops.transpose(x, (1, 0, 2)), ops.transpose(resets, (1, 0)), ops.transpose(valid, (1, 0)))
    final, out = backends.active.scan(step, carry, time_major, ops.zeros_like(initial[0][-1]))
    _reset_dropout(cells)
    return ops.transpose(out, (1, 0, 2)), [ops.stack([f[k] for f in final]) for k in range(len(initial))]


def _config_dropout(cells: Sequence[Any], first: Any, carry: list, training: bool | None) -> None:
    """Make the cells' dropout masks before the loop, as Keras's RNN does (the loop body stays stateless)."""
    if not training:
        return
    h = first
    for cell, states in zip(cells, carry):
        if getattr(cell, "dropout", 0) or getattr(cell, "recurrent_dropout", 0):
            cell.get_dropout_mask(h)
            cell.get_recurrent_dropout_mask(states[0])
        h, _ = cell(h, list(states), training=training)


def _reset_dropout(cells: Sequence[Any]) -> None:
    for cell in cells:
        if hasattr(cell, "reset_dropout_mask"):
            cell.reset_dropout_mask()
            cell.reset_recurrent_dropout_mask()
