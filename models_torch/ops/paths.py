"""The one choice of how torch runs a chunk: ``path_for`` names a ``Path`` from the facts of the chunk.

The facts: the stack (cell, weights' sizes, training with dropout), the chunk's rows and steps, the device,
the resets and lengths (host arrays), the chunk's numbers where the saturated path must prove itself exact,
and whether a streaming step was asked to be compiled. The runners live with their ops
(``models_torch.ops.segments.RUNNERS`` for a chunk, ``models_torch.ops.step_runs.RUN_MAKERS`` for a
streaming step); each table maps a ``Path`` to its runner, and nothing else chooses. Beside the path,
``block_rows`` says how many rows each call of the fused op takes: a large chunk on the CPU runs in row
blocks (``ops.row_blocks``), on every path that calls the fused op on the rows as they are (plain, first-step
reset, cuts, saturated; packed sequences stay one call). The thresholds are measured:
``docs/measurements.md`` keeps the numbers.

Example:
    >>> import torch
    >>> from models_torch.ops.kernels import Stack
    >>> stack = Stack("gru", [torch.nn.GRU(3, 5)._flat_weights])
    >>> path_for(stack, 4, 1, "cpu"), path_for(stack, 4, 10, "cpu")
    (<Path.CELL_OPS: 'cell ops'>, <Path.PLAIN: 'plain'>)
    >>> resets = np.zeros((4, 10), bool); resets[1, 6] = True
    >>> path_for(stack, 4, 10, "cpu", resets=resets, chunk=(torch.zeros(4, 10, 3), (torch.zeros(1, 4, 5),)))
    <Path.SATURATED: 'saturated'>
    >>> block_rows(stack, 100, 16, "cpu"), block_rows(stack, 100_000, 16, "cpu") % ROW_ALIGN
    (100, 0)
"""

from __future__ import annotations

import enum
import functools
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from models_torch.ops.saturate import drive_dominates
from multistate_core.cells import CELLS

if TYPE_CHECKING:
    from models_torch.ops.kernels import Stack


class Path(enum.Enum):
    """How a chunk runs."""

    CELL_OPS = "cell ops"  # one small step on the CPU: each layer's cell op (torch.lstm_cell, ...)
    PLAIN = "plain"  # one call of the fused op (torch.lstm, torch.gru, torch.rnn_tanh, ...)
    FIRST_STEP_RESET = "first-step reset"  # resets at step 0 only, full lengths: rows zeroed, then plain
    SATURATED = "saturated"  # resets/lengths inside one plain call per layer (ops.saturate)
    CUTS = "cuts"  # one plain call per piece between the steps where some row resets or ends
    PACKED = "packed"  # every row cut into segments, run as ONE packed sequence
    COMPILED = "compiled"  # a streaming step compiled ahead of time by AOTInductor (asked for, CPU only)


# Below this many multiply-adds per step (rows x gate rows x (F + H)), a one-step chunk on the CPU runs through the
# cell ops: the fused op's fixed cost per call outweighs the step (docs/measurements.md, "cell ops").
CELL_STEP_MACS = 4_000_000
# Cutting the time axis beats packing on a CPU while it makes fewer calls than this per step
# (docs/measurements.md, "cuts or packed"); on a GPU cuDNN runs packed sequences natively.
CUTS_PER_STEP = 0.9
# Row blocks (``block_rows``): torch's fused op on a CPU slows down per row once a chunk's working set outgrows
# the cache; in blocks whose working set is a quarter of the last-level cache, the cost per stream-step stays
# within 1.13-1.20x from 256 to 65,536 rows (one call: 1.5-2.4x; quiet machine, 1 thread; docs/measurements.md,
# "Row blocks").
CACHE_SHARE = 4  # a block's working set: at most the last-level cache over this
MIN_BLOCKS = 8  # a chunk blocks only with this many blocks' worth of rows (at 5-6 blocks, 2 threads ran slower)
FALLBACK_CACHE_BYTES = 32 * 2**20  # where the machine does not say
MIN_BLOCK_ROWS = 256  # below this the fused op's fixed cost per call shows
ROW_ALIGN = 64  # block sizes are multiples of this: the one call's result, bit for bit (``ops.row_blocks``)


def path_for(
    stack: Stack,
    rows: int,
    steps: int,
    device: str,
    *,
    resets: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    chunk: tuple[Any, tuple] | None = None,
    compiled: bool = False,
) -> Path:
    """The path for a chunk of ``rows`` x ``steps`` on ``device`` (a ``torch.device.type``) with ``resets``
    ``(N, T)`` bools and ``lengths`` ``(N,)`` ints (host arrays, or None).

    ``chunk``: the input ``(N, T, F)`` and states (each ``(L, N, H)``), read only where resets or lengths
    fall inside the chunk (``saturable``); without it the saturated path is not considered. ``compiled``: a
    streaming step asked to be compiled; it runs on the CPU only, and anywhere else this is an error (an
    asked-for path is never replaced).
    """
    if compiled:
        if device != "cpu":
            raise ValueError(f"a compiled streaming step runs on the CPU, not {device}: on a GPU use GraphStep")
        return Path.COMPILED
    if resets is None and lengths is None or not needs_segments(resets, lengths, steps):
        if resets is not None:
            return Path.FIRST_STEP_RESET
        if steps != 1 or device != "cpu" or (stack.training and stack.dropout):
            return Path.PLAIN
        weight_ih, weight_hh = stack.layers[0][0], stack.layers[0][1]  # one small step: the cell ops pay
        return (
            Path.CELL_OPS
            if rows * weight_ih.shape[0] * (weight_ih.shape[1] + weight_hh.shape[1]) <= CELL_STEP_MACS
            else Path.PLAIN
        )
    if chunk is not None and saturable(stack, *chunk):
        return Path.SATURATED
    cuts = cut_points(resets, lengths, steps)
    return Path.CUTS if device == "cpu" and len(cuts) - 1 < CUTS_PER_STEP * steps else Path.PACKED


def block_rows(stack: Stack, rows: int, steps: int, device: str) -> int:
    """How many rows each call of the fused op takes for a chunk of ``rows`` x ``steps`` on ``device``: ``rows``
    (one call), or a block size, a multiple of ``ROW_ALIGN`` (``ops.row_blocks.in_row_blocks``).

    Blocks on the CPU only, without dropout in training (its random numbers follow the rows), at least
    ``MIN_BLOCKS`` blocks' worth of rows and at least ``MIN_BLOCK_ROWS`` a block. A block's working set, rows x
    steps x (input + gates + output) x the weights' bytes (the widest layer), stays within ``cache_bytes() /
    CACHE_SHARE``.
    """
    if rows < MIN_BLOCKS * MIN_BLOCK_ROWS or device != "cpu" or (stack.training and stack.dropout):
        return rows
    itemsize = stack.layers[0][0].element_size()
    width = max(w_ih.shape[1] + w_ih.shape[0] + w_hh.shape[1] for w_ih, w_hh, *_ in stack.layers)
    fitting = cache_bytes() // CACHE_SHARE // (max(steps, 1) * width * itemsize)
    size = max(MIN_BLOCK_ROWS, fitting // ROW_ALIGN * ROW_ALIGN)
    return size if rows >= MIN_BLOCKS * size else rows


@functools.cache
def cache_bytes() -> int:
    """The CPU's last-level cache in bytes: the largest data or unified cache that
    ``/sys/devices/system/cpu/cpu0/cache`` lists; ``FALLBACK_CACHE_BYTES`` where it cannot be read."""
    sizes = []
    for entry in pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (entry / "type").read_text().strip() in ("Data", "Unified"):
                sizes.append(_size_bytes((entry / "size").read_text()))
        except (OSError, ValueError):
            continue
    return max(sizes, default=FALLBACK_CACHE_BYTES)


def _size_bytes(text: str) -> int:
    """A cache size as sysfs writes it (``"32768K"``; also ``"1M"``, ``"512"``) in bytes."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def needs_segments(resets: np.ndarray | None, lengths: np.ndarray | None, steps: int) -> bool:
    """False when one plain call serves: no reset after step 0 and every length full."""
    inner = resets is not None and bool(resets[:, 1:].any())
    return inner or (lengths is not None and bool((lengths != steps).any()))


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


def saturable(stack: Stack, x: Any, states: tuple) -> bool:
    """Whether saturated gates can run this chunk exactly: a cell with gates (``Cell.saturation``) on a CPU,
    no dropout between layers (the flag columns would be dropped), the input and states finite (a zero step
    cannot clear NaN: 0 * NaN = NaN; only ``torch.where`` on the other paths does), and the flag columns'
    drive larger than any pre-activation its weights, input and state can reach (``saturate.drive_dominates``:
    a bias of 1e38 in float32, or an infinite weight, would leak the state).

    Example:
        >>> import torch
        >>> from models_torch.ops.kernels import Stack
        >>> x, h = torch.zeros(2, 3, 4), (torch.zeros(1, 2, 5),)
        >>> saturable(Stack("gru", []), x, h), saturable(Stack("rnn", []), x, h)
        (True, False)
        >>> saturable(Stack("gru", []), x.fill_(float("nan")), h)
        False
    """
    if x.device.type != "cpu" or CELLS[stack.cell].saturation is None or (stack.training and stack.dropout):
        return False
    return drive_dominates(stack.layers, x, states)
