"""Where per-step resets and per-stream lengths cut the rows of a chunk: one plan, in numpy, for both frameworks.

Each folded row ``n`` of a chunk ``(N, T)`` is cut into segments: one starts at step 0 and at
every reset, and steps ``>= lengths[n]`` belong to none. A segment after a reset starts from
zeros; the first one from the carried state (zeros too if the row resets at step 0). The
segments then run together as one packed sequence, and each row's carried state is the final
state of its last segment (a row without a valid step keeps its state). The model packages
gather and scatter their tensors with the indices of a ``SegmentPlan``. An LSTM or GRU on a
CPU instead keeps every row whole (``models_torch.ops.saturate``); ``run_segmented`` picks the path.

Example:
    >>> resets = np.zeros((2, 5), bool); resets[0, 3] = True
    >>> p = plan_segments(resets, np.array([5, 2]))
    >>> p.rows.tolist(), p.begins.tolist(), p.lengths.tolist(), p.last.tolist()
    ([0, 0, 1], [0, 3, 0], [3, 2, 2], [1, 2])
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from models_torch.ops.kernels import Stack
from models_torch.ops.saturate import SATURATED_GATES, drive_dominates, run_saturated


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


def needs_segments(resets: np.ndarray | None, lengths: np.ndarray | None, steps: int) -> bool:
    """False when one plain call serves: no reset after step 0 and every length full."""
    inner = resets is not None and bool(resets[:, 1:].any())
    return inner or (lengths is not None and bool((lengths != steps).any()))


def plan_segments(resets: np.ndarray | None, lengths: np.ndarray | None, steps: int | None = None) -> SegmentPlan:
    """Cut the rows of a chunk at ``resets`` ``(N, T)`` bools and ``lengths`` ``(N,)`` ints in ``[0, T]``."""
    if resets is None and steps is None:
        raise ValueError("plan_segments needs resets or the number of steps")
    rows_n, steps = resets.shape if resets is not None else (len(lengths), steps)
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
    (each ``(L, n, H)``); ``x`` is the chunk ``(N, T, F)``; ``torch`` is the torch module, passed
    in because this floor imports no framework. Returns the output ``(N, T, H)`` (zeros at
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


# Measured on 2 CPU cores (LSTM, 32 rows, H=128): a fused call costs about 110 µs plus 50 µs per step,
# and a packed call about 3x the plain one. Cutting the time axis wins while it makes fewer calls than this
# many per step (cost cuts*110 + T*50 against 3*T*50); on a GPU cuDNN runs packed sequences natively.
# An LSTM or GRU on a CPU takes neither: saturated gates keep it on the plain call (``saturate``).
CUTS_PER_STEP = 0.9


def cut_points(resets: np.ndarray | None, lengths: np.ndarray | None, steps: int) -> list[int]:
    """Where the time axis must be cut so that inside each piece every row runs from its state unchanged:
    0, every step where some valid row resets, every length inside the chunk, and ``steps``."""
    cuts = {0, steps}
    valid = np.ones((1, steps), bool) if lengths is None else np.arange(steps) < np.asarray(lengths)[:, None]
    if resets is not None:
        cuts |= {int(t) for t in np.nonzero((np.asarray(resets, bool) & valid).any(0))[0]}
    if lengths is not None:
        cuts |= {int(n) for n in np.asarray(lengths) if 0 < n < steps}
    return sorted(cuts)


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
    fused: Any,
    x: Any,
    states: tuple,
    resets: Any,
    lengths: Any,
    path: str | None = None,
    stack: Stack | None = None,
) -> tuple[Any, tuple]:
    """Run ``x`` ``(N, T, F)`` from ``states`` with ``resets`` ``(N, T)`` and ``lengths`` ``(N,)`` (tensors or None).

    One plain call when no reset falls after step 0 and every length is full. Otherwise, where
    ``saturable``, an LSTM or GRU ``stack`` runs with saturated gates (``saturate.run_saturated``: one
    plain call per layer); else the time axis is cut (``run_cuts``) while that makes fewer than
    ``CUTS_PER_STEP`` calls per step on a CPU, or the segments are packed (``run_packed``). ``path``
    forces one: "saturated" (where ``saturable``, else as default), "cuts" or "packed".
    ``fused(x_or_packed, states)`` runs the stack once; ``torch`` is the torch module (this floor
    imports no framework).
    """
    host_resets = None if resets is None else resets.cpu().numpy().astype(bool)
    host_lengths = None if lengths is None else lengths.cpu().numpy()
    steps = x.shape[1]
    if not needs_segments(host_resets, host_lengths, steps):
        if resets is not None:
            first = torch.as_tensor(host_resets[:, 0], device=x.device)[None, :, None]
            states = tuple(torch.where(first, 0, s) for s in states)
        return fused(x, states)
    if path in (None, "saturated") and saturable(x, states, stack):
        return run_saturated(stack, x, states, host_resets, host_lengths)
    cuts = cut_points(host_resets, host_lengths, steps)
    if path in (None, "saturated"):
        path = "cuts" if x.device.type == "cpu" and len(cuts) - 1 < CUTS_PER_STEP * steps else "packed"
    if path == "cuts":
        return run_cuts(fused, x, states, host_resets, host_lengths, cuts)
    return run_packed(fused, x, states, plan_segments(host_resets, host_lengths, steps))


def saturable(x: Any, states: tuple, stack: Stack | None) -> bool:
    """Whether saturated gates can run this chunk exactly: an LSTM or GRU on a CPU, its input and states
    finite (a zero step cannot clear NaN: 0 * NaN = NaN; only ``torch.where`` on the other paths does),
    and the flag columns' drive larger than any pre-activation its weights, input and state can reach
    (``saturate.drive_dominates``: a bias of 1e38 in float32, or an infinite weight, would leak the state).

    Example:
        >>> import torch
        >>> x, h = torch.zeros(2, 3, 4), (torch.zeros(1, 2, 5),)
        >>> saturable(x, h, Stack("gru", [])), saturable(x, h, Stack("rnn", []))
        (True, False)
        >>> saturable(x.fill_(float("nan")), h, Stack("gru", []))
        False
    """
    if x.device.type != "cpu" or stack is None or stack.cell not in SATURATED_GATES:
        return False
    return drive_dominates(stack.layers, x, states)
