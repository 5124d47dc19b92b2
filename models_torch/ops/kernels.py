"""An RNN stack as torch's ATen ops run it, from its weights: the fused sequence op, or the cell ops for one step.

Both model packages hand their stack over as a ``Stack`` (cell, per-layer weights) and run a
plain chunk with ``run_plain``: ``models_torch`` with its ``nn.LSTM``/``GRU``/``RNN``'s own
weight list, the Keras torch backend with tensors built from its variables. ``run_plain`` calls
the op that ``nn.LSTM``/``GRU``/``RNN.forward`` itself calls (``torch.lstm``, ``torch.gru``,
``torch.rnn_tanh``/``relu``: oneDNN on a CPU, cuDNN on a GPU), except for a small one-step chunk
on the CPU, which goes through the cell ops (``torch.lstm_cell``, ...): there the fused op's
fixed cost per call outweighs the step.

Example:
    >>> import torch
    >>> rnn = torch.nn.GRU(3, 5, batch_first=True)
    >>> stack = Stack("gru", [rnn._flat_weights])
    >>> out, (h,) = run_plain(stack, torch.randn(4, 1, 3), (torch.zeros(1, 4, 5),))
    >>> out.shape, h.shape, by_cells(stack, 4, 1, "cpu")
    (torch.Size([4, 1, 5]), torch.Size([1, 4, 5]), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

# Below this many multiply-adds per step (rows x gate rows x (F + H)), a one-step chunk on the CPU runs through
# the cell ops: the fused op's fixed cost per call (oneDNN's setup, ~30-60 µs) outweighs the step itself.
# Measured here, cell ops vs fused op, µs: GRU 33 rows H=16 22 vs 47 (1 thread); LSTM 31 rows H=32 30 vs 83
# (1 thread); LSTM 32 rows F=32 H=128 (2.6M) 106 vs 114 (2 threads), 118 vs 140 (1); LSTM 257 rows H=64 (8.4M)
# 222 vs 180 (2 threads).
CELL_STEP_MACS = 4_000_000


@dataclasses.dataclass(slots=True)
class Stack:
    """An RNN stack as the ops take it: ``cell`` ("lstm", "gru", "rnn"); per layer torch's
    ``[weight_ih, weight_hh(, bias_ih, bias_hh)]``, the stack's own tensors (gradients reach them);
    training mode, dropout between layers and a simple RNN's nonlinearity."""

    cell: str
    layers: Sequence[Sequence[Any]]
    training: bool = False
    dropout: float = 0.0
    nonlinearity: str = "tanh"

    @property
    def kind(self) -> str:
        """The op's name: "lstm", "gru", "rnn_tanh" or "rnn_relu"."""
        return f"rnn_{self.nonlinearity}" if self.cell == "rnn" else self.cell


def by_cells(stack: Stack, rows: int, steps: int, device: str) -> bool:
    """Whether a plain chunk runs faster through the cell ops: one step, on the CPU, small, no dropout."""
    if steps != 1 or device != "cpu" or (stack.training and stack.dropout):
        return False
    weight_ih = stack.layers[0][0]
    return rows * weight_ih.shape[0] * (weight_ih.shape[1] + stack.layers[0][1].shape[1]) <= CELL_STEP_MACS


def step_by_cells(stack: Stack, x: Any, states: tuple) -> tuple[Any, tuple]:
    """One step ``x`` ``(N, F)`` through each layer's cell op from ``states`` (each ``(L, N, H)``).

    Returns the top layer's output ``(N, H)`` and the new states ``(L, N, H)``.
    """
    op = getattr(torch, f"{stack.kind}_cell")
    if len(stack.layers) == 1:  # streaming's common case, without the per-layer bookkeeping
        new = op(x, tuple(s[0] for s in states) if len(states) > 1 else states[0][0], *stack.layers[0])
        new = new if isinstance(new, tuple) else (new,)
        return new[0].clone(), tuple(s[None] for s in new)  # the output must not alias the state carried on
    finals = []
    for k, weights in enumerate(stack.layers):
        new = op(x, tuple(s[k] for s in states) if len(states) > 1 else states[0][k], *weights)
        finals.append(new if isinstance(new, tuple) else (new,))
        x = finals[-1][0]
    return x, tuple(torch.stack(layer_states) for layer_states in zip(*finals))


def run_plain(stack: Stack, x: Any, states: tuple) -> tuple[Any, tuple]:
    """Run ``x`` ``(N, T, F)`` (batch first) from ``states`` (each ``(L, N, H)``) in one call.

    Returns the output ``(N, T, H)`` and the final states ``(L, N, H)``.
    """
    if by_cells(stack, x.shape[0], x.shape[1], x.device.type):
        out, new = step_by_cells(stack, x[:, 0], states)
        return out[:, None], new
    hx = tuple(s.contiguous() for s in states)
    weights = [w for layer in stack.layers for w in layer]
    out, *new = getattr(torch, stack.kind)(
        x,
        hx if len(hx) > 1 else hx[0],
        weights,
        len(stack.layers[0]) == 4,
        len(stack.layers),
        float(stack.dropout),
        stack.training,
        False,
        True,
    )
    return out, tuple(new)
