"""Running the shared torch RNN on folded streams, with per-step resets and per-stream lengths.

Without resets inside the chunk and with full lengths, one fused call does it all
(``run``'s common path). Otherwise, on a CPU, an LSTM or GRU runs one plain call per layer
with two extra input columns whose weights shut or hold its gates (``harness.spec.saturate``);
elsewhere, and for a simple RNN, every row is cut into segments at its resets and at its length
(``harness.spec.segments``), and the segments run as ONE packed sequence or between cuts of the
time axis. No Python loop over time steps on any path.

Example:
    >>> rnn = torch.nn.GRU(3, 5, batch_first=True)
    >>> x, h = torch.randn(4, 10, 3), (torch.zeros(1, 4, 5),)
    >>> resets = torch.zeros(4, 10, dtype=torch.bool); resets[1, 6] = True
    >>> y, (h_new,) = run(rnn, x, h, resets=resets, lengths=torch.tensor([10, 10, 3, 0]))
    >>> y.shape, bool(y[2, 3:].eq(0).all()), bool(h_new[:, 3].eq(0).all())
    (torch.Size([4, 10, 5]), True, True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from harness.spec.saturate import Stack
from harness.spec.segments import run_segmented

State = tuple[torch.Tensor, ...]


def _op(rnn: nn.RNNBase) -> Callable:
    """The ATen op that ``rnn``'s own forward calls (``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh``/``relu``)."""
    if isinstance(rnn, nn.LSTM):
        return torch.lstm
    if isinstance(rnn, nn.GRU):
        return torch.gru
    return torch.rnn_tanh if rnn.nonlinearity == "tanh" else torch.rnn_relu


# Below this many multiply-adds per step (rows x gate rows x (F + H)), a one-step chunk on the CPU runs through
# torch's cell ops: the fused op's fixed cost per call (oneDNN's setup, ~30-60 µs) outweighs the step itself.
# Measured on one thread: GRU 33 rows H=16 22 µs vs 47 µs; LSTM 31 rows H=32 30 vs 83; LSTM 257 rows H=64 322 vs 286.
CELL_STEP_MACS = 2_000_000


def _cell_op(rnn: nn.RNNBase) -> Callable:
    """The ATen op of one step of ``rnn``'s cell (``torch.lstm_cell``, ``gru_cell``, ``rnn_tanh_cell``/``relu``)."""
    if isinstance(rnn, nn.LSTM):
        return torch.lstm_cell
    if isinstance(rnn, nn.GRU):
        return torch.gru_cell
    return torch.rnn_tanh_cell if rnn.nonlinearity == "tanh" else torch.rnn_relu_cell


def by_cells(rnn: nn.RNNBase, rows: int, steps: int, device: torch.device) -> bool:
    """Whether a plain chunk runs faster through the cell ops: one step, on the CPU, small, no dropout."""
    if steps != 1 or device.type != "cpu" or (rnn.training and rnn.dropout):
        return False
    return rows * rnn._flat_weights[0].shape[0] * (rnn.input_size + rnn.hidden_size) <= CELL_STEP_MACS


def step_by_cells(rnn: nn.RNNBase, x: torch.Tensor, states: State) -> tuple[torch.Tensor, State]:
    """One step ``x`` ``(N, F)`` through each layer's cell op from ``states`` (each ``(L, N, H)``).

    Returns the top layer's output ``(N, H)`` and the new states ``(L, N, H)``.
    """
    op, layers, weights = _cell_op(rnn), rnn.num_layers, rnn._flat_weights
    if layers == 1:  # streaming's common case, without the per-layer bookkeeping
        new = op(x, tuple(s[0] for s in states) if len(states) > 1 else states[0][0], *weights)
        new = new if isinstance(new, tuple) else (new,)
        return new[0], tuple(s[None] for s in new)
    per_layer, finals = len(weights) // layers, []
    for k in range(layers):
        new = op(
            x,
            tuple(s[k] for s in states) if len(states) > 1 else states[0][k],
            *weights[k * per_layer : (k + 1) * per_layer],
        )
        finals.append(new if isinstance(new, tuple) else (new,))
        x = finals[-1][0]
    return x, tuple(torch.stack(layer_states) for layer_states in zip(*finals))


def fused(rnn: nn.RNNBase, x: torch.Tensor | nn.utils.rnn.PackedSequence, states: State) -> tuple[object, State]:
    """One call of ``rnn`` from ``states`` (each ``(L, N, H)``); returns the output and the final states.

    A plain chunk goes straight to the op that ``nn.LSTM``/``GRU``/``RNN.forward`` would call, with
    the same weights and settings: the module's Python checks, already done by the multi-state
    layer, cost more than a one-step chunk itself. The weights are ``rnn._flat_weights``, the list
    that ``forward`` itself passes (views into cuDNN's flat buffer on a GPU); torch has no public
    spelling of it that is not rebuilt per call. ``tests/test_torch_models.py`` holds both paths
    equal, bit for bit, and fails loudly if that attribute moves. A small one-step chunk on the CPU
    takes the cell ops instead (``by_cells``), to rounding the same numbers.
    """
    if isinstance(x, nn.utils.rnn.PackedSequence):
        out, new = rnn(x, tuple(s.contiguous() for s in states) if len(states) > 1 else states[0].contiguous())
        return out, (new if isinstance(new, tuple) else (new,))
    if by_cells(rnn, x.shape[0], x.shape[1], x.device):
        out, new = step_by_cells(rnn, x[:, 0], states)
        return out[:, None], new
    hx = tuple(s.contiguous() for s in states)
    weights = rnn._flat_weights
    out, *new = _op(rnn)(
        x,
        hx if len(hx) > 1 else hx[0],
        weights,
        rnn.bias,
        rnn.num_layers,
        float(rnn.dropout),
        rnn.training,
        False,
        True,
    )
    return out, tuple(new)


def run(
    rnn: nn.RNNBase,
    x: torch.Tensor,
    states: State,
    *,
    resets: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    path: str | None = None,
) -> tuple[torch.Tensor, State]:
    """Run ``x`` ``(N, T, F)`` from ``states``; ``resets`` ``(N, T)`` bool zeroes a row's state before
    step t; steps ``>= lengths[n]`` neither move row n's state nor produce output (zeros there).

    Returns the output ``(N, T, H)`` and each row's state after its last valid step. ``path`` forces
    "saturated", "cuts" or "packed" (``harness.spec.segments.run_segmented``; default: the cheaper here).
    """
    if resets is None and lengths is None:
        return fused(rnn, x, states)
    return run_segmented(functools.partial(fused, rnn), x, states, resets, lengths, torch, path, saturable(rnn))


def saturable(rnn: nn.RNNBase) -> Stack | None:
    """``rnn`` as ``harness.spec.saturate`` runs it, or None where it cannot: a simple RNN, a projection,
    dropout between layers in training."""
    if not isinstance(rnn, nn.LSTM | nn.GRU) or getattr(rnn, "proj_size", 0) or (rnn.training and rnn.dropout):
        return None
    per_layer = len(rnn._flat_weights) // rnn.num_layers
    layers = [rnn._flat_weights[k * per_layer : (k + 1) * per_layer] for k in range(rnn.num_layers)]
    return Stack("lstm" if isinstance(rnn, nn.LSTM) else "gru", layers, rnn.training)
