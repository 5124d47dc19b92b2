"""Resets and lengths inside ONE plain call per layer: two extra input columns that shut or hold the gates.

On a CPU a packed sequence leaves oneDNN (about 3x slower than a plain call) and cutting the
time axis costs one call per reset. Instead each row of the chunk is laid out again: a *zero
step* goes in before every reset inside the row, and the steps after its last real one (its
length, or the end of a shorter row in the new layout) are *hold steps*. Two 0/1 input columns
flag them, and their weights drive gate pre-activations to ± a quarter of the dtype's largest
value, where a sigmoid is exactly 0 or 1:

- LSTM (gates i, f, g, o): a zero step shuts i, f and o: ``c = 0·c + 0·g = 0``, ``h = 0·tanh(0) = 0``.
  A hold step shuts i and opens f: ``c = 1·c + 0·g = c``; h is read from the output at the last
  real step.
- GRU (gates r, z, n): a zero step shuts r and z and cancels n's input bias: ``h = 1·tanh(0) + 0·h = 0``.
  A hold step opens z: ``h = 0·n + 1·h = h``.

The drive shuts or opens a gate only where it dominates the gate's own pre-activation: a bias of
1e38 in float32, or an infinite weight, would win over it (or turn ``0 x Inf`` into NaN) and leak the
state through a reset. ``drive_dominates`` bounds every pre-activation of the chunk from the weights,
the input and the carried state, and the saturated path runs only where the drive is four times that
bound; other chunks take the exact paths (``paths.saturable`` decides).

A simple RNN has no gate, so it cannot be reset this way (``tanh`` never reaches 0 exactly).
Each layer runs as one plain call of torch's op on the stack's own weights with the two
columns appended (a large chunk on the CPU: one per block of rows, ``row_blocks``), so gradients
reach those weights; none crosses a zero step (a saturated gate's derivative is exactly 0). The
plan is numpy. Which gates each flag drives is the cell table's ``Cell.saturation``.

Example:
    >>> resets = np.zeros((2, 4), bool); resets[0, 2] = True
    >>> lay = plan_layout(resets, np.array([4, 3]), 4)
    >>> lay.steps, lay.flags[..., 0].T.astype(int).tolist(), lay.flags[..., 1].T.astype(int).tolist()
    (5, [[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]])
    >>> lay.last.tolist()  # time-major: step 4 of row 0, step 2 of row 1
    [8, 5]
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models_torch.ops.row_blocks import in_row_blocks
from multistate_core.cells import CELLS

if TYPE_CHECKING:
    from models_torch.ops.kernels import Stack

# The flag columns' weight is the dtype's largest value over DRIVE_SHARE: adding a pre-activation of at most
# drive / DOMINANCE keeps it finite (no overflow to Inf) and at least 3/4 of the drive (a saturated sigmoid).
DRIVE_SHARE = 4
DOMINANCE = 4


def drive(dtype: Any) -> float:
    """The magnitude of the flag columns' weights for ``dtype``: a quarter of its largest finite value."""
    return torch.finfo(dtype).max / DRIVE_SHARE


def preactivation_bound(layers: Sequence[Sequence[Any]], sizes: Sequence[float], x_size: float, h_size: float) -> float:
    """A bound on every gate pre-activation of every layer at every step, flag columns left out.

    ``layers``: torch's ``[weight_ih, weight_hh(, bias_ih, bias_hh)]`` per layer, and ``sizes`` the
    largest magnitude of each of these tensors, in that order; ``x_size``: the largest ``|x|`` of the
    chunk; ``h_size``: a bound on ``|h|`` at every step of every layer, at most ``max(1, |h| carried
    in)`` (LSTM: ``|o tanh(c)| <= 1``; GRU: a mix of the old ``h`` and ``tanh``). Per layer:
    ``F max|W_ih| |input| + H max|W_hh| |h| + max|b_ih| + max|b_hh|``: coarse (every weight taken at
    its matrix's largest), so that one pass per tensor serves.
    """
    bound, size_of_next = 0.0, iter(sizes)
    for k, layer in enumerate(layers):
        weight_ih, weight_hh, *biases = (next(size_of_next) for _ in layer)
        inputs = x_size if k == 0 else h_size
        drive_in = weight_ih * layer[0].shape[1] * inputs + weight_hh * layer[1].shape[1] * h_size
        bound = max(bound, drive_in + sum(biases))
    return bound


def magnitudes(tensors: Sequence[Any]) -> list[float]:
    """``max |t|`` of each tensor: one ``aminmax`` pass each, one read back to the host; NaN where ``t`` holds one."""
    extremes = torch.stack([torch.stack(torch.aminmax(t.detach())) for t in tensors]).tolist()
    return [max(-low, high) for low, high in extremes]


def drive_dominates(layers: Sequence[Sequence[Any]], x: Any, states: tuple) -> bool:
    """Whether the flag columns provably shut and hold the gates exactly on this chunk.

    True where the input ``x``, every carried state (each ``(L, N, H)``, ``h`` first) and every
    weight are finite (a zero step keeps NaN: ``0 x NaN``) and ``preactivation_bound`` is at most
    ``drive / DOMINANCE``.

    Example:
        >>> import torch
        >>> rnn = torch.nn.GRU(3, 4)
        >>> x, h = torch.randn(2, 5, 3), (torch.zeros(1, 2, 4),)
        >>> drive_dominates([rnn._flat_weights], x, h)
        True
        >>> with torch.no_grad(): _ = rnn.bias_hh_l0.fill_(1e38)
        >>> drive_dominates([rnn._flat_weights], x, h)
        False
    """
    sizes = magnitudes([x, *states, *(w for layer in layers for w in layer)])
    if not all(math.isfinite(size) for size in sizes):
        return False
    bound = preactivation_bound(layers, sizes[1 + len(states) :], sizes[0], max(1.0, sizes[1]))
    return bound <= drive(x.dtype) / DOMINANCE


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the steps of a chunk ``(N, T)`` go in the saturated layout, time-major ``(steps, N)``.

    Indices are flat. ``source`` ``(steps*N,)``: per new position, its row of the chunk's
    ``(N*T, F)`` steps, or ``N*T`` for a zero step and ``N*T + 1`` for a hold step. ``flags``
    ``(steps, N, 2)``: zero step, hold step. ``real`` / ``placed``: every valid step of the
    chunk, row-major, and its new position. ``last``: per row, the new position of its last real
    step (of step 0 for a row without one). ``moved``: the row has a valid step. ``fresh``: its
    state is zeroed before step 0.
    """

    steps: int
    source: np.ndarray
    flags: np.ndarray
    real: np.ndarray
    placed: np.ndarray
    last: np.ndarray
    moved: np.ndarray
    fresh: np.ndarray


def plan_layout(resets: np.ndarray | None, lengths: np.ndarray | None, steps: int) -> Layout:
    """Lay out a chunk of ``steps`` with ``resets`` ``(N, T)`` bools and ``lengths`` ``(N,)`` in ``[0, T]``."""
    if resets is not None:
        rows_n = len(resets)
    elif lengths is not None:
        rows_n = len(lengths)
    else:
        raise ValueError("plan_layout needs resets or lengths")
    time, rows = np.arange(steps), np.arange(rows_n)
    lengths = np.full(rows_n, steps) if lengths is None else np.asarray(lengths, np.int64)
    valid = time < lengths[:, None]
    inner = np.zeros((rows_n, steps), bool) if resets is None else np.asarray(resets, bool) & valid
    fresh = inner[:, 0].copy()
    inner[:, 0] = False
    position = time + inner.cumsum(1)  # each real step moves right by the zero steps before it
    ends = lengths + inner.sum(1)
    width = int(ends.max(initial=0))
    flags = np.zeros((width, rows_n, 2), bool)
    zero_rows, zero_steps = np.nonzero(inner)
    flags[position[zero_rows, zero_steps] - 1, zero_rows, 0] = True
    flags[..., 1] = np.arange(width)[:, None] >= ends
    real_rows, real_steps = np.nonzero(valid)
    placed = position[real_rows, real_steps] * rows_n + real_rows
    source = np.where(flags[..., 1], rows_n * steps + 1, rows_n * steps).reshape(-1)
    real = real_rows * steps + real_steps
    source[placed] = real
    last = np.maximum(ends - 1, 0) * rows_n + rows
    return Layout(width, source, flags, real, placed, last, lengths > 0, fresh)


def flag_columns(cell: str, layer: Sequence[Any]) -> Any:
    """The two weight columns ``(G*H, 2)`` appended to a layer's ``weight_ih``: zero flag, hold flag.

    The gates each flag drives are the cell table's ``Cell.saturation``. A GRU's zero column carries
    ``-bias_ih`` of the n gate (``cancelled_bias``), so that the step's n pre-activation is
    ``b_in - b_in = 0`` exactly and its gradient cancels.
    """
    spec = CELLS[cell]
    saturation = spec.saturation
    if saturation is None:
        raise ValueError(f"a {cell} cell has no gates to saturate: expected one of those with a Cell.saturation")
    weight_ih = layer[0]
    rows = weight_ih.shape[0]
    size = rows // spec.gates
    big = drive(weight_ih.dtype)  # where ``drive_dominates``, it leaves every gate finite and saturated
    columns = []
    for flag in (saturation.zero, saturation.hold):
        values = np.zeros(rows)
        for gate, sign in flag.items():
            values[gate * size : (gate + 1) * size] = sign * big
        column = torch.as_tensor(values, dtype=weight_ih.dtype, device=weight_ih.device)
        if flag is saturation.zero and saturation.cancelled_bias is not None and len(layer) == 4:
            cancelled = slice(saturation.cancelled_bias * size, (saturation.cancelled_bias + 1) * size)
            column = torch.cat([column[: cancelled.start], -layer[2][cancelled], column[cancelled.stop :]])
        columns.append(column)
    return torch.stack(columns, 1)


def run_saturated(
    stack: Stack, x: Any, states: tuple, resets: np.ndarray | None, lengths: np.ndarray | None, block_rows: int
) -> tuple[Any, tuple]:
    """Run ``stack`` on ``x`` ``(N, T, F)`` from ``states`` (each ``(L, N, H)``) with ``resets``/``lengths`` (numpy),
    each layer's call in blocks of ``block_rows`` rows (``paths.block_rows``; ``N``: one call).

    Returns the output ``(N, T, H)`` (zeros at invalid steps) and each row's state after
    its last valid step (unchanged for a row without one). Same contract as ``segments.run_packed``.
    """
    rows_n, steps, features = x.shape
    lay = plan_layout(resets, lengths, steps)
    if lay.steps == 0:  # no row has a valid step
        return x.new_zeros(rows_n, steps, states[0].shape[-1]), states
    index = {k: torch.as_tensor(getattr(lay, k), device=x.device) for k in ("source", "real", "placed", "last")}
    if lay.fresh.any():
        states = _where_rows(lay.fresh, 0, states)
    # The chunk's steps with two zero flag columns, then one zero step and one hold step, gathered into place.
    flag_rows = x.new_tensor([[0.0] * features + [1, 0], [0.0] * features + [0, 1]])
    table = torch.cat([torch.nn.functional.pad(x.reshape(-1, features), (0, 2)), flag_rows])
    laid = table.index_select(0, index["source"]).reshape(lay.steps, rows_n, features + 2)
    flags = torch.as_tensor(lay.flags, dtype=x.dtype, device=x.device)
    op = stack.fused_op
    finals: list[list] = [[] for _ in states]
    for k, layer in enumerate(stack.layers):
        weights = [torch.cat([layer[0], flag_columns(stack.cell, layer)], 1), *layer[1:]]
        initial = tuple(s[k : k + 1] for s in states)
        call = functools.partial(_layer_call, op, weights, stack.training)
        out, held = in_row_blocks(call, laid, initial, block_rows, row_dim=1)
        flat = out.reshape(-1, out.shape[-1])
        reached = (flat.index_select(0, index["last"])[None], *held[1:])  # h at the last real step; c held since
        for final, state in zip(finals, _where_rows(lay.moved, reached, initial)):
            final.append(state)
        if k + 1 < len(stack.layers):
            laid = torch.cat([out, flags], 2)
    y = flat.index_select(0, index["placed"])
    if len(lay.real) < rows_n * steps:
        y = y.new_zeros(rows_n * steps, y.shape[-1]).index_copy(0, index["real"], y)
    return y.reshape(rows_n, steps, -1), tuple(torch.cat(f, 0) for f in finals)


def _layer_call(op: Any, weights: list, training: bool, laid: Any, initial: tuple) -> tuple[Any, tuple]:
    """One layer's fused call on the time-first ``laid`` ``(T, n, F + 2)`` from ``initial`` (each ``(1, n, H)``)."""
    hx = tuple(s.contiguous() for s in initial)
    out, *held = op(laid, hx if len(hx) > 1 else hx[0], weights, len(weights) == 4, 1, 0.0, training, False, False)
    return out, tuple(held)


def _where_rows(rows: np.ndarray, new: tuple | int, old: tuple) -> tuple:
    """The states ``old`` (each ``(L, N, H)``) with the rows where ``rows`` holds taken from ``new``
    (states like ``old``, or a number)."""
    new = new if isinstance(new, tuple) else tuple(torch.full_like(s, new) for s in old)
    if rows.all():
        return new
    mask = torch.as_tensor(rows, device=old[0].device)[None, :, None]
    return tuple(torch.where(mask, n, s) for n, s in zip(new, old))
