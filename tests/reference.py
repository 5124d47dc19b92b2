"""A slow, obviously correct reference for per-step resets and lengths, for the tests.

The module's inner ``nn.LSTM``/``nn.GRU``/``nn.RNN`` is stepped ONE time step at a time
over every (row, stream) pair, with ``torch.where`` doing the resets and the length masking:

- where ``resets[b, s, t]``, the state of (b, s) is zeroed before step t;
- steps ``t >= lengths[b, s]`` leave the state as it was and output zeros.

Example:
    >>> module = MultiStateGRU(4, 5, num_streams=2)                        # doctest: +SKIP
    >>> out, states = reference_run(module, torch.randn(1, 2, 6, 4), resets=..., lengths=...)  # doctest: +SKIP
"""

from __future__ import annotations

import torch

State = tuple[torch.Tensor, ...]


def reference_run(
    module: torch.nn.Module,
    x: torch.Tensor,
    states: State | None = None,
    *,
    resets: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, State]:
    """Run ``module.rnn`` step by step over ``x`` ``(B, S, T, F)`` from ``states`` (``(L, B, S, H)`` each; None: zeros).

    ``resets`` ``(B, S, T)`` bools, ``lengths`` ``(B, S)`` ints; for one stream pass ``x`` ``(B, T, F)``,
    states ``(L, B, H)``, resets ``(B, T)`` and lengths ``(B,)``. Returns the output (same leading shape as
    ``x``, ``H`` features, zeros past each length) and the final states. Leaves the module's carried state alone.
    """
    one_stream = x.dim() == 3
    if one_stream:
        x = x.unsqueeze(1)
        states = None if states is None else tuple(s.unsqueeze(2) for s in states)
        resets = None if resets is None else torch.as_tensor(resets).unsqueeze(1)
        lengths = None if lengths is None else torch.as_tensor(lengths).unsqueeze(1)
    rnn = module.rnn
    batch, streams, steps, features = x.shape
    layers, hidden, rows = rnn.num_layers, rnn.hidden_size, batch * streams
    count = 2 if isinstance(rnn, torch.nn.LSTM) else 1
    if states is None:
        states = tuple(x.new_zeros(layers, batch, streams, hidden) for _ in range(count))
    state = [s.reshape(layers, rows, hidden) for s in states]
    resets = torch.zeros(rows, steps, dtype=torch.bool) if resets is None else torch.as_tensor(resets)
    resets = resets.reshape(rows, steps)
    lengths = torch.full((rows,), steps) if lengths is None else torch.as_tensor(lengths).reshape(rows)
    flat = x.reshape(rows, steps, features)
    outputs = []
    for t in range(steps):
        reset = resets[:, t][None, :, None]
        valid = (t < lengths)[None, :, None]
        started = [torch.where(reset, torch.zeros_like(s), s) for s in state]
        out, new = rnn(flat[:, t : t + 1], tuple(started) if count == 2 else started[0])
        new = new if isinstance(new, tuple) else (new,)
        state = [torch.where(valid, n, s) for n, s in zip(new, state)]
        outputs.append(torch.where(valid[0], out[:, 0], torch.zeros_like(out[:, 0])))
    out = torch.stack(outputs, 1).reshape(batch, streams, steps, hidden)
    final = tuple(s.reshape(layers, batch, streams, hidden) for s in state)
    if one_stream:
        return out[:, 0], tuple(s[:, :, 0] for s in final)
    return out, final


class ReferenceRunner:
    """``reference_run`` as a parity-engine runner: carries the states between chunks, takes resets and lengths."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.reset()

    def reset(self) -> None:
        self.carried: State | None = None

    def run(self, x, resets=None, lengths=None):
        with torch.no_grad():
            out, self.carried = reference_run(
                self.module, torch.from_numpy(x), self.carried, resets=resets, lengths=lengths
            )
        return out.numpy()

    def states(self) -> dict:
        return {name: s.numpy() for name, s in zip(self.module.state_names, self.carried)}
