"""Running a chunk on its path: the runner table (``RUNNERS``), and the runners that cut rows at resets and lengths.

``run_segmented`` is the one entry for a chunk with or without resets and lengths, for both model packages:
``paths.path_for`` names the path, ``RUNNERS`` runs it. The runners of the plain chunk (``kernels``) and of
saturated gates (``saturate``) live with their ops; the two that cut live here:

Each folded row ``n`` of a chunk ``(N, T)`` is cut into segments: one starts at step 0 and at
every reset, and steps ``>= lengths[n]`` belong to none. A segment after a reset starts from
zeros; the first one from the carried state (zeros too if the row resets at step 0). The
segments then run together as one packed sequence, and each row's carried state is the final
state of its last segment (a row without a valid step keeps its state). The model packages
gather and scatter their tensors with the indices of a ``SegmentPlan``. An LSTM or GRU on a
CPU instead keeps every row whole (``models_torch.ops.saturate``). Or the time axis is cut where
some row resets or ends, and the pieces run as plain calls (``run_cuts``).

Example:
    >>> resets = np.zeros((2, 5), bool); resets[0, 3] = True
    >>> p = plan_segments(resets, np.array([5, 2]))
    >>> p.rows.tolist(), p.begins.tolist(), p.lengths.tolist(), p.last.tolist()
    ([0, 0, 1], [0, 3, 0], [3, 2, 2], [1, 2])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from models_torch.ops import paths
from models_torch.ops.kernels import Stack, run_cells, run_fused, run_plain
from models_torch.ops.paths import Path, cut_points
from models_torch.ops.saturate import run_saturated


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """The segments of a chunk, and where each valid (row, step) goes.

    ``rows``, ``begins``, ``lengths``, ``fresh``: per segment, its row, first step, number of
    steps and whether it starts from zeros. ``valid_rows``, ``valid_steps``: every valid
    (row, step), row-major; ``segment``, ``position``: its segment and place in it. ``last``:
    per row, its last segment, or -1 for a row without a valid step.
    """

    rows: np.ndarray
    begins: np.ndarray
    lengths: np.ndarray
    fresh: np.ndarray
    valid_rows: np.ndarray
    valid_steps: np.ndarray
    segment: np.ndarray
    position: np.ndarray
    last: np.ndarray


def plan_segments(resets: np.ndarray | None, lengths: np.ndarray | None, steps: int | None = None) -> SegmentPlan:
    """Cut the rows of a chunk at ``resets`` ``(N, T)`` bools and ``lengths`` ``(N,)`` ints in ``[0, T]``."""
    if resets is not None:
        rows_n, steps = resets.shape
    elif lengths is not None and steps is not None:
        rows_n = len(lengths)
    else:
        raise ValueError("plan_segments needs resets, or lengths and the number of steps")
    resets = np.zeros((rows_n, steps), bool) if resets is None else np.asarray(resets, bool)
    lengths = np.full(rows_n, steps) if lengths is None else np.asarray(lengths, np.int64)
    time = np.arange(steps)
    valid = time < lengths[:, None]
    starts = valid & (resets | (time == 0))
    rows, begins = np.nonzero(starts)
    segment_of = starts.reshape(-1).cumsum().reshape(rows_n, steps) - 1
    valid_rows, valid_steps = np.nonzero(valid)
    segment = segment_of[valid_rows, valid_steps]
    last = np.where(lengths > 0, segment_of[np.arange(rows_n), np.maximum(lengths - 1, 0)], -1)
    return SegmentPlan(
        rows=rows,
        begins=begins,
        lengths=np.bincount(segment, minlength=len(rows)),
        fresh=resets[rows, begins],
        valid_rows=valid_rows,
        valid_steps=valid_steps,
        segment=segment,
        position=valid_steps - begins[segment],
        last=last,
    )


def run_packed(fused: Any, x: Any, states: tuple, plan: SegmentPlan) -> tuple[Any, tuple]:
    """Run the segments of ``plan`` as ONE packed sequence; the torch side of both model packages.

    ``fused(x_or_packed, states) -> (output, finals)`` runs the whole stack once from ``states``
    (each ``(L, n, H)``); ``x`` is the chunk ``(N, T, F)``. Returns the output ``(N, T, H)`` (zeros at
    invalid steps) and each row's state after its last valid step.
    """
    pack, unpack = torch.nn.utils.rnn.pack_padded_sequence, torch.nn.utils.rnn.pad_packed_sequence
    if len(plan.rows) == 0:  # no row has a valid step
        return x.new_zeros(x.shape[:2] + states[0].shape[-1:]), states
    index = {k: torch.as_tensor(getattr(plan, k), device=x.device) for k in ("rows", "valid_rows", "valid_steps")}
    segment, position = (torch.as_tensor(a, device=x.device) for a in (plan.segment, plan.position))
    padded = x.new_zeros(len(plan.rows), int(plan.lengths.max()), x.shape[-1])
    padded[segment, position] = x[index["valid_rows"], index["valid_steps"]]
    fresh = torch.as_tensor(plan.fresh, device=x.device)[None, :, None]
    initial = tuple(torch.where(fresh, 0, s[:, index["rows"]]) for s in states)
    out, finals = fused(pack(padded, torch.as_tensor(plan.lengths), batch_first=True, enforce_sorted=False), initial)
    out, _ = unpack(out, batch_first=True, total_length=padded.shape[1])
    y = out.new_zeros(x.shape[:2] + out.shape[-1:])
    y[index["valid_rows"], index["valid_steps"]] = out[segment, position]
    last = torch.as_tensor(np.maximum(plan.last, 0), device=x.device)
    moved = torch.as_tensor(plan.last >= 0, device=x.device)[None, :, None]
    return y, tuple(torch.where(moved, f[:, last], s) for f, s in zip(finals, states))


def run_cuts(
    fused: Any,
    x: Any,
    states: tuple,
    resets: np.ndarray | None,
    lengths: np.ndarray | None,
    cuts: list[int],
) -> tuple[Any, tuple]:
    """Run ``x`` ``(N, T, F)`` as one plain fused call per piece between ``cuts``; resets zero the rows'
    states at a cut, rows past their length keep their state and output zeros. Same contract as ``run_packed``."""
    device = x.device
    lengths = np.full(x.shape[0], x.shape[1]) if lengths is None else np.asarray(lengths)
    outputs = []
    for start, end in zip(cuts[:-1], cuts[1:]):
        valid = lengths > start  # a row is valid through the whole piece, or not at all
        if resets is not None and (cleared := np.asarray(resets[:, start], bool) & valid).any():
            mask = torch.as_tensor(cleared, device=device)[None, :, None]
            states = tuple(torch.where(mask, 0, s) for s in states)
        out, new = fused(x[:, start:end], states)
        if valid.all():
            states = tuple(new)
        else:
            keep = torch.as_tensor(valid, device=device)
            states = tuple(torch.where(keep[None, :, None], n, s) for n, s in zip(new, states))
            out = torch.where(keep[:, None, None], out, 0)
        outputs.append(out)
    return torch.cat(outputs, 1), states


def run_segmented(
    fused: Any, x: Any, states: tuple, resets: Any, lengths: Any, *, stack: Stack, path: paths.Path | None = None
) -> tuple[Any, tuple]:
    """Run ``x`` ``(N, T, F)`` from ``states`` (each ``(L, N, H)``) with ``resets`` ``(N, T)`` and ``lengths``
    ``(N,)`` (tensors or None) on the path ``paths.path_for`` names for it (``RUNNERS``).

    ``stack``: the stack's cell, weights and settings (``kernels.Stack``); ``fused(x_or_packed, states)`` runs
    it once, a ``PackedSequence`` included (the cutting runners call it). ``path``: a plain chunk's path where
    the caller read it already (``path_for`` without resets or lengths). Returns the output ``(N, T, H)``
    (zeros at steps past a row's length) and each row's state after its last valid step.
    """
    if resets is None and lengths is None:  # the common chunk: no host copies, no chunk facts
        path = path or paths.path_for(stack, x.shape[0], x.shape[1], x.device.type)
        return RUNNERS[path](stack, fused, x, states, None, None)
    host_resets = None if resets is None else resets.cpu().numpy().astype(bool)
    host_lengths = None if lengths is None else lengths.cpu().numpy()
    path = paths.path_for(
        stack, x.shape[0], x.shape[1], x.device.type, resets=host_resets, lengths=host_lengths, chunk=(x, states)
    )
    return RUNNERS[path](stack, fused, x, states, host_resets, host_lengths)


Runner = Callable[[Stack, Any, Any, tuple, "np.ndarray | None", "np.ndarray | None"], tuple[Any, tuple]]


def _cells(stack: Stack, fused: Any, x: Any, states: tuple, resets: Any, lengths: Any) -> tuple[Any, tuple]:
    return run_cells(stack, x, states)


def _plain(stack: Stack, fused: Any, x: Any, states: tuple, resets: Any, lengths: Any) -> tuple[Any, tuple]:
    return run_fused(stack, x, states)


def _first_step_reset(stack: Stack, fused: Any, x: Any, states: tuple, resets: Any, lengths: Any) -> tuple[Any, tuple]:
    first = torch.as_tensor(resets[:, 0], device=x.device)[None, :, None]
    return run_plain(stack, x, tuple(torch.where(first, 0, s) for s in states))


def _saturated(stack: Stack, fused: Any, x: Any, states: tuple, resets: Any, lengths: Any) -> tuple[Any, tuple]:
    block_rows = paths.block_rows(stack, x.shape[0], x.shape[1], x.device.type)
    return run_saturated(stack, x, states, resets, lengths, block_rows)


def _cuts(stack: Stack, fused: Any, x: Any, states: tuple, resets: Any, lengths: Any) -> tuple[Any, tuple]:
    return run_cuts(fused, x, states, resets, lengths, cut_points(resets, lengths, x.shape[1]))


def _packed(stack: Stack, fused: Any, x: Any, states: tuple, resets: Any, lengths: Any) -> tuple[Any, tuple]:
    return run_packed(fused, x, states, plan_segments(resets, lengths, x.shape[1]))


# Each path a chunk can take, and its runner: ``runner(stack, fused, x, states, resets, lengths)`` with the
# resets and lengths as host arrays. ``Path.COMPILED`` is a streaming step's (``step_runs.RUN_MAKERS``).
RUNNERS: dict[Path, Runner] = {
    Path.CELL_OPS: _cells,
    Path.PLAIN: _plain,
    Path.FIRST_STEP_RESET: _first_step_reset,
    Path.SATURATED: _saturated,
    Path.CUTS: _cuts,
    Path.PACKED: _packed,
}
