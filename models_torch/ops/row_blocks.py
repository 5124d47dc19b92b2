"""Running a chunk as blocks of rows, one call each, joined: the result of one call, bit for bit.

Rows of a recurrent chunk are independent sequences, so a chunk can run in blocks of rows one after
another. torch's fused op on a CPU gets slower per row once a chunk's working set outgrows the cache;
blocks keep it there (``paths.block_rows`` says how many rows a block takes; the fused-op runners,
``kernels.run_fused`` and ``saturate.run_saturated``, apply it here).

Every block but the last has ``size`` rows, a multiple of ``paths.ROW_ALIGN``, and the last takes the rest
(``size`` to ``2 * size - 1`` rows): each row then meets the same GEMM kernel as in one call (blocks of odd
sizes did not: GEMM tiles), so outputs and final states equal the one call's bit for bit.

Example:
    >>> import torch
    >>> def call(x, states):  # a stand-in for a fused call: rows times two, states counted
    ...     return 2 * x, tuple(s + 1 for s in states)
    >>> out, (h,) = in_row_blocks(call, torch.arange(5.0)[:, None], (torch.zeros(1, 5, 1),), 2, row_dim=0)
    >>> out[:, 0].tolist(), h[0, :, 0].tolist()
    ([0.0, 2.0, 4.0, 6.0, 8.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    >>> block_bounds(5, 2), block_bounds(700, 256), block_bounds(700, 700)
    ([0, 2, 5], [0, 256, 700], [0, 700])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Call = Callable[[Any, tuple], tuple[Any, tuple]]


def block_bounds(rows: int, size: int) -> list[int]:
    """Where the blocks of ``rows`` start, and ``rows``: every ``size`` rows, the last block taking the rest."""
    if size < 1:
        raise ValueError(f"a row block needs at least 1 row, got size={size}")
    starts = list(range(0, max(rows - size, 0) + 1, size))
    return [*starts, rows]


def in_row_blocks(call: Call, x: Any, states: tuple, size: int, *, row_dim: int) -> tuple[Any, tuple]:
    """``call(x, states) -> (output, final states)`` on blocks of ``size`` rows of ``x``, joined.

    ``x``'s rows lie on ``row_dim`` (0: batch first, 1: time first), and so do the output's; the states'
    (each ``(L, N, H)``) on dim 1. Fewer than two blocks' worth of rows is one plain ``call``.
    """
    bounds = block_bounds(x.shape[row_dim], size)
    if len(bounds) <= 2:
        return call(x, states)
    parts = [
        call(x.narrow(row_dim, start, end - start), tuple(s[:, start:end] for s in states))
        for start, end in zip(bounds[:-1], bounds[1:])
    ]
    outputs, finals = zip(*parts)
    return torch.cat(outputs, row_dim), tuple(torch.cat(block, 1) for block in zip(*finals))
