"""An RNN stack as torch's ATen ops run it, from its weights: the fused sequence op, or the cell ops for one step.

Both model packages hand their stack over as a ``Stack`` (cell, per-layer weights) and run a
plain chunk with ``run_plain``: ``models_torch`` with its ``nn.LSTM``/``GRU``/``RNN``'s own
weight list, the Keras torch backend with tensors built from its variables. ``run_fused`` calls
the op that ``nn.LSTM``/``GRU``/``RNN.forward`` itself calls (``torch.lstm``, ``torch.gru``,
``torch.rnn_tanh``/``relu``: oneDNN on a CPU, cuDNN on a GPU), once or, for a large chunk on the CPU,
once per block of rows (``paths.block_rows``, ``row_blocks``); ``run_cells`` the cell ops
(``torch.lstm_cell``, ...) for one step. ``run_plain`` takes the one ``paths.path_for`` names.

Example:
    >>> rnn = torch.nn.GRU(3, 5, batch_first=True)
    >>> stack = Stack("gru", [rnn._flat_weights])
    >>> out, (h,) = run_plain(stack, torch.randn(4, 1, 3), (torch.zeros(1, 4, 5),))
    >>> out.shape, h.shape, stack.fused_op.__name__, stack.cell_op.__name__
    (torch.Size([4, 1, 5]), torch.Size([1, 4, 5]), 'gru', 'gru_cell')
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import torch

from models_torch.ops import paths
from models_torch.ops.paths import Path, path_for
from models_torch.ops.row_blocks import in_row_blocks
from multistate_core.cells import CELLS


@dataclasses.dataclass(slots=True)
class Stack:
    """An RNN stack as the ops take it: ``cell`` (a key of ``multistate_core.cells.CELLS``); per layer torch's
    ``[weight_ih, weight_hh(, bias_ih, bias_hh)]``, the stack's own tensors (gradients reach them);
    training mode, dropout between layers and a simple RNN's nonlinearity."""

    cell: str
    layers: Sequence[Sequence[Any]]
    training: bool = False
    dropout: float = 0.0
    nonlinearity: str = "tanh"

    @property
    def kind(self) -> str:
        """The fused op's name: "lstm", "gru", "rnn_tanh" or "rnn_relu"."""
        return op_names(self.cell, self.nonlinearity)[0]

    @property
    def fused_op(self) -> Any:
        """Torch's fused sequence op for the stack (``torch.lstm``, ``torch.rnn_relu``, ...)."""
        return getattr(torch, op_names(self.cell, self.nonlinearity)[0])

    @property
    def cell_op(self) -> Any:
        """Torch's one-step op for the stack (``torch.lstm_cell``, ``torch.rnn_relu_cell``, ...)."""
        return getattr(torch, op_names(self.cell, self.nonlinearity)[1])


@functools.cache
def op_names(cell: str, nonlinearity: str) -> tuple[str, str]:
    """The names of torch's fused op and cell op for ``cell`` with ``nonlinearity``, from the cell table."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}: expected one of {sorted(CELLS)}")
    return CELLS[cell].fused_op(nonlinearity), CELLS[cell].cell_op(nonlinearity)


def step_by_cells(stack: Stack, x: Any, states: tuple) -> tuple[Any, tuple]:
    """One step ``x`` ``(N, F)`` through each layer's cell op from ``states`` (each ``(L, N, H)``).

    Returns the top layer's output ``(N, H)`` and the new states ``(L, N, H)``.
    """
    op = stack.cell_op
    if len(stack.layers) == 1:  # streaming's common case, without the per-layer bookkeeping
        new = op(x, tuple(s[0] for s in states) if len(states) > 1 else states[0][0], *stack.layers[0])
        new = new if isinstance(new, tuple) else (new,)
        return new[0].clone(), tuple(s.unsqueeze(0) for s in new)  # the output must not alias the carried state
    finals = []
    for k, weights in enumerate(stack.layers):
        new = op(x, tuple(s[k] for s in states) if len(states) > 1 else states[0][k], *weights)
        finals.append(new if isinstance(new, tuple) else (new,))
        x = finals[-1][0]
    return x, tuple(torch.stack(layer_states) for layer_states in zip(*finals))


def run_cells(stack: Stack, x: Any, states: tuple) -> tuple[Any, tuple]:
    """``Path.CELL_OPS``: the one-step chunk ``x`` ``(N, 1, F)`` through ``step_by_cells``; output ``(N, 1, H)``."""
    out, new = step_by_cells(stack, x.squeeze(1), states)  # squeeze/unsqueeze: cheaper than indexing per call
    return out.unsqueeze(1), new


def run_fused(stack: Stack, x: Any, states: tuple) -> tuple[Any, tuple]:
    """``Path.PLAIN``: ``x`` ``(N, T, F)`` (batch first) from ``states`` (each ``(L, N, H)``) through the fused op:
    one call, or one per block of rows where ``paths.block_rows`` says (the same result, bit for bit). Returns the
    output ``(N, T, H)`` and the final states ``(L, N, H)``."""
    size = paths.block_rows(stack, x.shape[0], x.shape[1], x.device.type)
    if size >= x.shape[0]:  # one call, without the blocks' bookkeeping (a small chunk's cost shows it)
        return fused_call(stack, x, states)
    return in_row_blocks(functools.partial(fused_call, stack), x, states, size, row_dim=0)


def fused_call(stack: Stack, x: Any, states: tuple, *, batch_first: bool = True) -> tuple[Any, tuple]:
    """One call of the fused op on ``x`` (``(N, T, F)``, or ``(T, N, F)`` unless ``batch_first``) from ``states``
    (each ``(L, N, H)``). Returns the output (rows where ``x`` has them) and the final states."""
    hx = tuple(s.contiguous() for s in states)
    weights = [w for layer in stack.layers for w in layer]
    out, *new = stack.fused_op(
        x,
        hx if len(hx) > 1 else hx[0],
        weights,
        len(stack.layers[0]) == 4,
        len(stack.layers),
        float(stack.dropout),
        stack.training,
        False,
        batch_first,
    )
    return out, tuple(new)


def run_plain(stack: Stack, x: Any, states: tuple) -> tuple[Any, tuple]:
    """Run ``x`` ``(N, T, F)`` (batch first) from ``states`` (each ``(L, N, H)``), no resets or lengths, on the
    path ``paths.path_for`` names (cell ops or the fused op). Returns the output ``(N, T, H)`` and the final
    states ``(L, N, H)``."""
    if path_for(stack, x.shape[0], x.shape[1], x.device.type) is Path.CELL_OPS:
        return run_cells(stack, x, states)
    return run_fused(stack, x, states)
