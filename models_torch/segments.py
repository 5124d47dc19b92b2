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

import torch
from torch import nn

from harness.spec.kernels import Stack, run_plain
from harness.spec.segments import run_segmented

State = tuple[torch.Tensor, ...]


def stack_of(rnn: nn.RNNBase) -> Stack:
    """``rnn`` as the floor's ops take it: its own weights (``rnn._flat_weights``, the list that
    ``forward`` itself passes: views into cuDNN's flat buffer on a GPU; torch has no public spelling
    of it that is not rebuilt per call), its mode and settings."""
    weights, count = rnn._flat_weights, rnn.num_layers
    per_layer = len(weights) // count
    layers = [weights] if count == 1 else [weights[k * per_layer : (k + 1) * per_layer] for k in range(count)]
    cell = "lstm" if isinstance(rnn, nn.LSTM) else "gru" if isinstance(rnn, nn.GRU) else "rnn"
    return Stack(cell, layers, rnn.training, float(rnn.dropout), getattr(rnn, "nonlinearity", "tanh"))


def fused(rnn: nn.RNNBase, x: torch.Tensor | nn.utils.rnn.PackedSequence, states: State) -> tuple[object, State]:
    """One call of ``rnn`` from ``states`` (each ``(L, N, H)``); returns the output and the final states.

    A plain chunk goes straight to the op that ``nn.LSTM``/``GRU``/``RNN.forward`` would call, with
    the same weights and settings (``harness.spec.kernels.run_plain``; a small one-step chunk on the
    CPU through the cell ops): the module's Python checks, already done by the multi-state layer,
    cost more than a one-step chunk itself. ``tests/test_torch_models.py`` holds both paths equal,
    bit for bit, and fails loudly if ``rnn._flat_weights`` moves.
    """
    if isinstance(x, nn.utils.rnn.PackedSequence):
        out, new = rnn(x, tuple(s.contiguous() for s in states) if len(states) > 1 else states[0].contiguous())
        return out, (new if isinstance(new, tuple) else (new,))
    return run_plain(stack_of(rnn), x, states, torch)


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
    stack = None if rnn.training and rnn.dropout else stack_of(rnn)  # saturated gates: no dropout between layers
    return run_segmented(functools.partial(fused, rnn), x, states, resets, lengths, torch, path, stack)
