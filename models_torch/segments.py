"""Running the shared torch RNN on folded streams, with per-step resets and per-stream lengths.

Without resets inside the chunk and with full lengths, one fused call does it all
(``run``'s common path). Otherwise every row is cut into segments at its resets and
at its length; the segments run together as ONE packed sequence (``pack_padded_sequence``
gives each segment's state at its last valid step), a segment after a reset starting
from zeros. No Python loop over time steps on any path.

Example:
    >>> rnn = torch.nn.GRU(3, 5, batch_first=True)
    >>> x, h = torch.randn(4, 10, 3), (torch.zeros(1, 4, 5),)
    >>> resets = torch.zeros(4, 10, dtype=torch.bool); resets[1, 6] = True
    >>> y, (h_new,) = run(rnn, x, h, resets=resets, lengths=torch.tensor([10, 10, 3, 0]))
    >>> y.shape, bool(y[2, 3:].eq(0).all()), bool(h_new[:, 3].eq(0).all())
    (torch.Size([4, 10, 5]), True, True)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

State = tuple[torch.Tensor, ...]


def fused(rnn: nn.RNNBase, x: torch.Tensor | nn.utils.rnn.PackedSequence, states: State) -> tuple[object, State]:
    """One call of ``rnn`` from ``states`` (each ``(L, N, H)``); returns the output and the final states."""
    hx = tuple(s.contiguous() for s in states)
    out, new = rnn(x, hx if len(hx) > 1 else hx[0])
    return out, (new if isinstance(new, tuple) else (new,))


def run(
    rnn: nn.RNNBase,
    x: torch.Tensor,
    states: State,
    *,
    resets: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, State]:
    """Run ``x`` ``(N, T, F)`` from ``states``; ``resets`` ``(N, T)`` bool zeroes a row's state before
    step t; steps ``>= lengths[n]`` neither move row n's state nor produce output (zeros there).

    Returns the output ``(N, T, H)`` and each row's state after its last valid step.
    """
    steps = x.shape[1]
    inner_resets = resets is not None and bool(resets[:, 1:].any())
    ragged = lengths is not None and bool((lengths != steps).any())
    if not inner_resets and not ragged:
        if resets is not None:
            states = tuple(torch.where(resets[None, :, :1], 0, s) for s in states)
        return fused(rnn, x, states)
    return _segments(rnn, x, states, resets, lengths)


def _segments(
    rnn: nn.RNNBase, x: torch.Tensor, states: State, resets: torch.Tensor | None, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, State]:
    rows_n, steps, features = x.shape
    time = torch.arange(steps, device=x.device)
    lengths = torch.full((rows_n,), steps, device=x.device) if lengths is None else lengths.to(x.device)
    resets = torch.zeros(rows_n, steps, dtype=torch.bool, device=x.device) if resets is None else resets
    valid = time < lengths[:, None]
    starts = valid & (resets | (time == 0))
    rows, begins = starts.nonzero(as_tuple=True)  # one segment each, row-major
    segment_of = starts.reshape(-1).cumsum(0).reshape(rows_n, steps) - 1
    valid_rows, valid_steps = valid.nonzero(as_tuple=True)
    segment = segment_of[valid_rows, valid_steps]
    position = valid_steps - begins[segment]
    seg_lengths = torch.bincount(segment, minlength=rows.numel())

    padded = x.new_zeros(rows.numel(), int(seg_lengths.max()), features)
    padded[segment, position] = x[valid_rows, valid_steps]
    fresh = resets[rows, begins][None, :, None]
    initial = tuple(torch.where(fresh, 0, s[:, rows]) for s in states)
    packed = pack_padded_sequence(padded, seg_lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, finals = fused(rnn, packed, initial)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])

    y = out.new_zeros(rows_n, steps, out.shape[-1])
    y[valid_rows, valid_steps] = out[segment, position]
    last = segment_of[torch.arange(rows_n, device=x.device), (lengths - 1).clamp(min=0)]
    moved = (lengths > 0)[None, :, None]
    return y, tuple(torch.where(moved, f[:, last], s) for f, s in zip(finals, states))
