"""The multi-state layer's inner ``nn.LSTM``/``GRU``/``RNN`` as the torch ops take it, and one chunk run on it.

``stack_of`` reads the inner RNN into a ``kernels.Stack`` (its cell from the cell table, the weights it
would run with: hooks and parametrizations included); ``run`` runs a folded chunk, with per-step resets
and per-stream lengths, on the path ``models_torch.ops.paths.path_for`` names (``ops.segments.RUNNERS``);
``fused`` is the one call of the whole stack that the cutting runners make. No Python loop over time steps
on any path.

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
import operator
from typing import cast

import torch
from torch import nn

from models_torch.ops.kernels import Stack, run_plain
from models_torch.ops.paths import Path
from models_torch.ops.segments import run_segmented
from multistate_core.cells import cell_of_class

State = tuple[torch.Tensor, ...]


def stack_of(rnn: nn.RNNBase, x: torch.Tensor, states: State) -> Stack:
    """``rnn`` as the floor's ops take it for the chunk ``x`` ``(..., T, F)`` from ``states`` (each
    ``(L, N, H)``): the weights ``rnn`` would run it with (``weights_of``), its mode and settings. Its cell
    is the cell table's for ``rnn``'s class; an RNN of no known cell is refused."""
    cell = cell_of_class(rnn)
    if cell is None:
        raise TypeError(f"expected an nn.LSTM, nn.GRU or nn.RNN (or a subclass), got {type(rnn).__name__}")
    weights, count = weights_of(rnn, x, states), rnn.num_layers
    per_layer = len(weights) // count
    layers = [weights] if count == 1 else [weights[k * per_layer : (k + 1) * per_layer] for k in range(count)]
    return Stack(cell, layers, rnn.training, float(rnn.dropout), getattr(rnn, "nonlinearity", "tanh"))


def plain_weights(rnn: nn.RNNBase) -> list[torch.Tensor] | None:
    """``rnn._flat_weights`` (the list ``forward`` passes to the op: views into cuDNN's flat buffer on a GPU)
    when that list is what ``rnn(...)`` would run with: no hook on ``rnn`` and its registered Parameters are
    that list. Otherwise None: a hook, a parametrization, pruning, ``weight_norm``, or a Parameter swapped in
    ``rnn._parameters`` decides the weights (``weights_of``)."""
    if rnn._forward_pre_hooks or rnn._forward_hooks or rnn._backward_hooks or rnn._backward_pre_hooks:
        return None
    flat, params = rnn._flat_weights, rnn._parameters
    # Registered in the list's order (RNNBase.__init__); another order only costs the slow path.
    same = len(params) == len(flat) and all(map(operator.is_, params.values(), flat))
    return cast("list[torch.Tensor]", flat) if same else None  # the Parameters themselves: no None among them


def weights_of(rnn: nn.RNNBase, x: torch.Tensor, states: State) -> list[torch.Tensor]:
    """The weights ``rnn`` would run the chunk ``x`` ``(..., T, F)`` from ``states`` (each ``(L, N, H)``)
    with, in ``rnn._flat_weights_names`` order.

    As ``nn.Module.__call__`` and ``nn.LSTM``/``GRU``/``RNN.forward`` do: ``rnn``'s forward pre-hooks run on
    ``(x, hx)`` as ``rnn`` takes them (``x`` folded to ``(N, T, F)``; the hook forms of ``weight_norm``,
    ``spectral_norm`` and pruning write the weight there), then each weight is read by its name (a
    parametrization computes it then, with its graph). Without hooks and parametrizations that is
    ``plain_weights(rnn)``, at no cost. Hooks that could not act as in ``rnn(...)`` are refused, before any
    state moves: forward and backward hooks on ``rnn`` (the ops are called, not ``rnn``), and a forward
    pre-hook that returns new inputs.
    """
    flat = plain_weights(rnn)
    if flat is not None:
        return flat
    if rnn._forward_hooks or rnn._backward_hooks or rnn._backward_pre_hooks:
        raise ValueError(
            "module.rnn has forward or backward hooks: a multi-state module runs the inner RNN's ops, not "
            "module.rnn(...), so they would never fire; register them on the multi-state module instead"
        )
    args = (x.reshape(-1, *x.shape[-2:]), tuple(states) if len(states) > 1 else states[0])
    for key, hook in rnn._forward_pre_hooks.items():
        changed = hook(rnn, args, {}) if key in rnn._forward_pre_hooks_with_kwargs else hook(rnn, args)
        if changed is not None:
            raise ValueError(
                "a forward pre-hook on module.rnn returned new inputs: a multi-state module cannot pass them on "
                "(it runs the inner RNN's ops); register input-changing hooks on the multi-state module instead"
            )
    return [getattr(rnn, name) for name in rnn._flat_weights_names]


def fused(
    rnn: nn.RNNBase,
    x: torch.Tensor | nn.utils.rnn.PackedSequence,
    states: State,
    stack: Stack | None = None,
) -> tuple[object, State]:
    """One call of ``rnn`` from ``states`` (each ``(L, N, H)``); returns the output and the final states.

    A plain chunk goes straight to the op that ``nn.LSTM``/``GRU``/``RNN.forward`` would call, with
    the same weights and settings (``stack``, as ``stack_of`` reads it; a small one-step chunk on the
    CPU through the cell ops): the module's Python checks, already done by the multi-state layer,
    cost more than a one-step chunk itself. ``tests/models_torch/test_modules.py`` holds both paths equal,
    bit for bit, and fails loudly if ``rnn._flat_weights`` moves.
    """
    if isinstance(x, nn.utils.rnn.PackedSequence):
        out, new = rnn(x, tuple(s.contiguous() for s in states) if len(states) > 1 else states[0].contiguous())
        return out, (new if isinstance(new, tuple) else (new,))
    return run_plain(stack or stack_of(rnn, x, states), x, states)


def run(
    rnn: nn.RNNBase,
    x: torch.Tensor,
    states: State,
    *,
    resets: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    stack: Stack | None = None,
    path: Path | None = None,
) -> tuple[torch.Tensor, State]:
    """Run ``x`` ``(N, T, F)`` from ``states``; ``resets`` ``(N, T)`` bool zeroes a row's state before
    step t; steps ``>= lengths[n]`` neither move row n's state nor produce output (zeros there).

    Returns the output ``(N, T, H)`` and each row's state after its last valid step, on the path
    ``paths.path_for`` names (``models_torch.ops.segments.run_segmented``). ``stack``:
    ``stack_of(rnn, x, states)`` and ``path``: a plain chunk's path, where the caller read them already.
    """
    stack = stack or stack_of(rnn, x, states)
    plain = resets is None and lengths is None  # only the cutting runners call ``fused``: no partial per plain chunk
    cutting = None if plain else functools.partial(fused, rnn, stack=stack)
    return run_segmented(cutting, x, states, resets, lengths, stack=stack, path=path)
